//! AWS providers (feature `aws`): object storage on S3 through object_store, data keys from
//! AWS KMS, notifications on SQS. Credentials come from the standard AWS chain (environment,
//! profile, web identity for Kubernetes service accounts, instance metadata).

mod credentials;
mod kms;
mod s3;
mod sqs;

// The SDK clients, for operators' tooling and tests that set up keys and queues.
pub use {aws_config, aws_sdk_kms, aws_sdk_sqs};

pub use kms::AwsKms;
pub use s3::{S3Config, s3_storage};
pub use sqs::SqsNotifier;

/// Loads the shared SDK configuration: the standard credential chain, and an optional
/// region and endpoint (for S3-compatible stores and local stand-ins).
pub async fn sdk_config(region: Option<&str>, endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}
