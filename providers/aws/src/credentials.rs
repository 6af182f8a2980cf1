//! S3 request signing with credentials from the AWS SDK's default chain.
//!
//! object_store resolves credentials itself from the environment, web identity and instance
//! metadata, but not from shared `~/.aws/config` and `~/.aws/credentials` profiles, assume-role
//! profiles or `credential_process`. Bridging to the SDK chain gives S3 exactly the credentials KMS and SQS
//! already use.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use object_store::CredentialProvider;
use object_store::aws::AwsCredential;
use tokio::sync::{Mutex, OnceCell};

/// Temporary credentials are replaced this long before they expire, so a request signed now
/// is not refused mid-flight.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

#[derive(Debug)]
pub(crate) struct SdkChainCredentials {
    region: Option<String>,
    /// Used instead of the chain when given.
    explicit: Option<SharedCredentialsProvider>,
    chain: OnceCell<DefaultCredentialsChain>,
    // The chain does not cache: without this every S3 request would ask IMDS or STS again.
    cached: Mutex<Option<(Credentials, Arc<AwsCredential>)>>,
}

impl SdkChainCredentials {
    pub(crate) fn new(region: Option<String>, explicit: Option<SharedCredentialsProvider>) -> Self {
        Self {
            region,
            explicit,
            chain: OnceCell::new(),
            cached: Mutex::new(None),
        }
    }

    async fn chain(&self) -> &DefaultCredentialsChain {
        self.chain
            .get_or_init(|| async {
                let mut builder = DefaultCredentialsChain::builder();
                if let Some(region) = &self.region {
                    builder = builder.region(aws_config::Region::new(region.clone()));
                }
                builder.build().await
            })
            .await
    }
}

fn still_fresh(credentials: &Credentials, now: SystemTime) -> bool {
    credentials.expiry().is_none_or(|expiry| expiry > now + REFRESH_MARGIN)
}

#[async_trait::async_trait]
impl CredentialProvider for SdkChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credentials, signing)) = cached.as_ref()
            && still_fresh(credentials, SystemTime::now())
        {
            return Ok(Arc::clone(signing));
        }
        let provided = match &self.explicit {
            Some(explicit) => explicit.provide_credentials().await,
            None => self.chain().await.provide_credentials().await,
        };
        let credentials = provided.map_err(|source| object_store::Error::Generic {
            store: "S3",
            source: Box::new(source),
        })?;
        let signing = Arc::new(AwsCredential {
            key_id: credentials.access_key_id().to_owned(),
            secret_key: credentials.secret_access_key().to_owned(),
            token: credentials.session_token().map(str::to_owned),
        });
        *cached = Some((credentials, Arc::clone(&signing)));
        Ok(signing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiring_at(expiry: Option<SystemTime>) -> Credentials {
        Credentials::new("AKID", "secret", None, expiry, "test")
    }

    #[test]
    fn long_lived_credentials_stay_cached() {
        assert!(still_fresh(&expiring_at(None), SystemTime::now()));
    }

    #[test]
    fn credentials_are_replaced_before_they_expire() {
        let now = SystemTime::now();
        assert!(still_fresh(&expiring_at(Some(now + Duration::from_secs(3600))), now));
        assert!(!still_fresh(&expiring_at(Some(now + Duration::from_secs(60))), now));
        assert!(!still_fresh(&expiring_at(Some(now)), now));
    }

    /// The only test in this binary that touches the process environment.
    #[tokio::test]
    async fn reads_a_named_profile_from_the_shared_files_and_caches_it() {
        let dir = std::env::temp_dir().join(format!("udim-aws-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let credentials_file = dir.join("credentials");
        let config_file = dir.join("config");
        std::fs::write(
            &credentials_file,
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = wrong\n\n\
             [udim-test]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = s3cret\n",
        )
        .unwrap();
        std::fs::write(&config_file, "[profile udim-test]\nregion = eu-west-1\n").unwrap();
        // SAFETY: no other test in this binary reads or writes the environment.
        unsafe {
            for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
                std::env::remove_var(name);
            }
            std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &credentials_file);
            std::env::set_var("AWS_CONFIG_FILE", &config_file);
            std::env::set_var("AWS_PROFILE", "udim-test");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }

        let provider = SdkChainCredentials::new(None, None);
        let first = provider.get_credential().await.unwrap();
        assert_eq!(first.key_id, "AKIDFROMPROFILE");
        assert_eq!(first.secret_key, "s3cret");
        assert_eq!(first.token, None);
        let second = provider.get_credential().await.unwrap();
        assert!(Arc::ptr_eq(&first, &second), "long-lived credentials are reused");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
