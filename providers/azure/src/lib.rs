//! Azure providers (feature `azure`): object storage on Azure Blob through object_store.

use std::sync::Arc;

use object_store::azure::MicrosoftAzureBuilder;
use udim_ports::storage::ObjectStoreBlobs;
use udim_ports::{PortError, Result};

const AZURE_PART_SIZE: usize = 16 * 1024 * 1024;

/// Credentials come from the environment (`AZURE_STORAGE_ACCESS_KEY`, workload identity, ...);
/// `use_emulator` targets Azurite with its well-known development account.
pub fn blob_storage(
    account: &str,
    container: &str,
    endpoint: Option<&str>,
    use_emulator: bool,
) -> Result<ObjectStoreBlobs> {
    let mut builder = MicrosoftAzureBuilder::from_env()
        .with_account(account)
        .with_container_name(container)
        .with_use_emulator(use_emulator);
    if let Some(endpoint) = endpoint {
        builder = builder
            .with_endpoint(endpoint.to_owned())
            .with_allow_http(endpoint.starts_with("http://"));
    }
    let store = builder.build().map_err(|e| PortError::generic("azure blob", e))?;
    Ok(ObjectStoreBlobs::new(
        Arc::new(store),
        "azure blob",
        format!("azure://{account}/{container}"),
        AZURE_PART_SIZE,
    ))
}
