//! AWS providers (feature `aws`): object storage on S3 through object_store, data keys from
//! AWS KMS, notifications on SQS. Credentials come from the standard AWS chain (environment,
//! profile, web identity for Kubernetes service accounts, instance metadata).

mod credentials;
mod kms;
mod s3;
mod sqs;

// The SDK clients, for operators' tooling and tests that set up keys and queues.
pub use {aws_config, aws_sdk_kms, aws_sdk_sqs};

pub use aws_credential_types::provider::SharedCredentialsProvider;
pub use kms::AwsKms;
pub use s3::{S3Config, s3_storage};
pub use sqs::SqsNotifier;

/// Fixed credentials, for code that passes them instead of the standard chain (a test
/// against a local stand-in, an embedding application).
pub fn static_credentials(access_key_id: &str, secret_access_key: &str) -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
        access_key_id,
        secret_access_key,
        None,
        None,
        "udim-static",
    ))
}

/// Bounds on every call of the AWS SDK clients made from this configuration (KMS, SQS, and
/// the legacy QLDB driver). The SDK's defaults bound only the connect, so a service
/// that took the connection and never answered would hold an upload waiting for its data key,
/// or the relay waiting on a publish, for ever. Both answer in milliseconds when well.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// One call with its retries.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Loads the shared SDK configuration: the standard credential chain unless `credentials`
/// are given, an optional region and endpoint (for S3-compatible stores and local
/// stand-ins), and bounded calls.
pub async fn sdk_config(
    region: Option<&str>,
    endpoint: Option<&str>,
    credentials: Option<&SharedCredentialsProvider>,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(CALL_TIMEOUT)
            .build(),
    );
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials.clone());
    }
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}
