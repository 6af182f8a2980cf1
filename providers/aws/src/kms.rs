//! Data keys from AWS KMS: `GenerateDataKey` (AES-256) per package, `Decrypt` to unwrap, both
//! with an encryption context binding the package and its owner.

use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use udim_ports::kms::{DataKey, KeyContext, KeyService, PlainKey};
use udim_ports::{PortError, Result};

const PROVIDER: &str = "aws kms";

/// [`KeyService`] on AWS KMS.
#[derive(Debug, Clone)]
pub struct AwsKms {
    client: aws_sdk_kms::Client,
    /// The key's ARN: recorded as each package's `encryptionKeyID`.
    key_arn: String,
}

fn sdk_error<E>(e: aws_sdk_kms::error::SdkError<E>) -> PortError
where
    E: std::error::Error + Send + Sync + 'static + aws_sdk_kms::error::ProvideErrorMetadata,
{
    use aws_sdk_kms::error::SdkError;
    let code = match &e {
        SdkError::ServiceError(service) => service.err().code().map(str::to_owned),
        _ => None,
    };
    match code.as_deref() {
        Some("InvalidCiphertextException" | "IncorrectKeyException") => {
            PortError::Integrity("the data key does not unwrap in this context".into())
        }
        Some("NotFoundException") => PortError::NotFound("kms key".into()),
        Some("ThrottlingException" | "KMSInternalException" | "DependencyTimeoutException") => {
            PortError::unavailable(PROVIDER, e)
        }
        _ if matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)) => {
            PortError::unavailable(PROVIDER, e)
        }
        _ => PortError::generic(PROVIDER, e),
    }
}

/// The 32-byte data key in a KMS answer.
fn key_bytes(blob: Option<&Blob>, operation: &str) -> Result<[u8; 32]> {
    blob.and_then(|b| b.as_ref().try_into().ok())
        .ok_or_else(|| PortError::generic(PROVIDER, format!("{operation} returned no 32-byte key")))
}

impl AwsKms {
    /// Resolves `key_id` (id, ARN or alias) to the key's ARN.
    pub async fn new(config: &aws_config::SdkConfig, key_id: &str) -> Result<Self> {
        let client = aws_sdk_kms::Client::new(config);
        let described = client.describe_key().key_id(key_id).send().await.map_err(sdk_error)?;
        let key_arn = described
            .key_metadata()
            .and_then(|m| m.arn())
            .ok_or_else(|| PortError::generic(PROVIDER, "DescribeKey returned no ARN"))?
            .to_owned();
        Ok(Self { client, key_arn })
    }
}

#[async_trait]
impl KeyService for AwsKms {
    async fn generate_data_key(&self, ctx: &KeyContext) -> Result<DataKey> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_arn)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context("udim:package_id", ctx.package_id.to_string())
            .encryption_context("udim:user_id", &ctx.user_id)
            .send()
            .await
            .map_err(sdk_error)?;
        let plaintext = key_bytes(out.plaintext(), "GenerateDataKey")?;
        let wrapped = out
            .ciphertext_blob()
            .ok_or_else(|| PortError::generic(PROVIDER, "GenerateDataKey returned no ciphertext"))?
            .as_ref()
            .to_vec();
        Ok(DataKey {
            plaintext: PlainKey::from_bytes(plaintext),
            wrapped,
            key_id: out.key_id().unwrap_or(&self.key_arn).to_owned(),
        })
    }

    async fn unwrap_data_key(&self, key_id: &str, wrapped: &[u8], ctx: &KeyContext) -> Result<PlainKey> {
        // Keys written before a rotation or under another key id still decrypt: KMS finds the
        // key from the ciphertext, and naming it makes KMS refuse a swapped one.
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(wrapped))
            .encryption_context("udim:package_id", ctx.package_id.to_string())
            .encryption_context("udim:user_id", &ctx.user_id)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(PlainKey::from_bytes(key_bytes(out.plaintext(), "Decrypt")?))
    }

    async fn ping(&self) -> Result<()> {
        let described = self
            .client
            .describe_key()
            .key_id(&self.key_arn)
            .send()
            .await
            .map_err(sdk_error)?;
        match described.key_metadata().and_then(|m| m.key_state()) {
            Some(aws_sdk_kms::types::KeyState::Enabled) => Ok(()),
            state => Err(PortError::unavailable(
                PROVIDER,
                format!("key {} is {state:?}, not enabled", self.key_arn),
            )),
        }
    }

    fn current_key_id(&self) -> &str {
        &self.key_arn
    }
}
