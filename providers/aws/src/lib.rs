//! AWS providers (feature `aws`): object storage on S3 through object_store.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use udim_ports::storage::ObjectStoreBlobs;
use udim_ports::{PortError, Result};

/// S3 needs every multipart part but the last to be at least 5 MiB; 16 MiB parts fit
/// objects up to 156 GiB in S3's 10,000 parts.
const S3_PART_SIZE: usize = 16 * 1024 * 1024;

/// S3 (or an S3-compatible store) settings; credentials come from the standard AWS chain
/// (environment, profile, web identity, instance metadata).
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub allow_http: bool,
}

pub fn s3_storage(config: &S3Config) -> Result<ObjectStoreBlobs> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&config.bucket)
        .with_allow_http(config.allow_http);
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let store = builder.build().map_err(|e| PortError::generic("s3", e))?;
    Ok(ObjectStoreBlobs::new(
        Arc::new(store),
        "s3",
        format!("s3://{}", config.bucket),
        S3_PART_SIZE,
    ))
}
