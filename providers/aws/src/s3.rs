//! Object storage on S3 (or an S3-compatible store) through object_store.

use std::sync::Arc;

use object_store::ClientConfigKey;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use udim_ports::storage::ObjectStoreBlobs;
use udim_ports::{PortError, Result};

use crate::credentials::SdkChainCredentials;

/// S3 needs every multipart part but the last to be at least 5 MiB. 16 MiB parts fit objects
/// up to 156 GiB in S3's 10,000 parts; the store grows parts for larger declared sizes.
const S3_PART_SIZE: usize = 16 * 1024 * 1024;

/// Per request. object_store's default of 30 s is too short for `CompleteMultipartUpload`,
/// which S3 documents can take minutes for a large object; a timed-out completion is retried,
/// and the retry can find the upload already gone. Measured: moto took over 30 s to
/// complete a 5.3 GiB object, and the upload failed until this was raised.
const REQUEST_TIMEOUT: &str = "600s";

/// S3 (or an S3-compatible store) settings; credentials come from the AWS SDK's default chain
/// (environment, shared profiles with assume-role and `credential_process`, web identity, ECS and
/// EKS container credentials, instance metadata), as for KMS and SQS.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub allow_http: bool,
    /// Adds S3's own SSE-KMS encryption with this key on top of UDIM's envelope encryption.
    pub sse_kms_key_id: Option<String>,
    /// Signs with these instead of the SDK's default chain.
    pub credentials: Option<crate::SharedCredentialsProvider>,
}

pub fn s3_storage(config: &S3Config) -> Result<ObjectStoreBlobs> {
    let mut builder = AmazonS3Builder::from_env()
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), REQUEST_TIMEOUT)
        .with_bucket_name(&config.bucket)
        .with_allow_http(config.allow_http)
        .with_credentials(Arc::new(SdkChainCredentials::new(
            config.region.clone(),
            config.credentials.clone(),
        )));
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(key) = &config.sse_kms_key_id {
        builder = builder.with_sse_kms_encryption(key);
    }
    let store = builder.build().map_err(|e| PortError::generic("s3", e))?;
    Ok(ObjectStoreBlobs::new(
        Arc::new(store),
        "s3",
        format!("s3://{}", config.bucket),
        S3_PART_SIZE,
    ))
}
