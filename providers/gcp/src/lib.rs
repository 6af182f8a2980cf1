//! Google Cloud providers (feature `gcp`): object storage on GCS through object_store.

use std::sync::Arc;

use object_store::gcp::GoogleCloudStorageBuilder;
use udim_ports::storage::ObjectStoreBlobs;
use udim_ports::{PortError, Result};

const GCS_PART_SIZE: usize = 16 * 1024 * 1024;

/// `base_url` points at an emulator; credentials come from the standard Google chain.
pub fn gcs_storage(bucket: &str, base_url: Option<&str>) -> Result<ObjectStoreBlobs> {
    let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
    if let Some(url) = base_url {
        builder = builder
            .with_base_url(url)
            .with_client_options(object_store::ClientOptions::new().with_allow_http(url.starts_with("http://")));
    }
    let store = builder.build().map_err(|e| PortError::generic("gcs", e))?;
    Ok(ObjectStoreBlobs::new(
        Arc::new(store),
        "gcs",
        format!("gs://{bucket}"),
        GCS_PART_SIZE,
    ))
}
