//! Object storage on the local filesystem (object_store's `LocalFileSystem`).

use std::path::Path;
use std::sync::Arc;

use udim_ports::storage::ObjectStoreBlobs;
use udim_ports::{PortError, Result};

/// Part size for local multipart writes: small enough to keep memory flat, large enough
/// that per-part overhead does not matter.
const LOCAL_PART_SIZE: usize = 4 * 1024 * 1024;

/// Builds filesystem object storage rooted at `root`, creating the directory if needed.
pub fn build(root: &Path) -> Result<ObjectStoreBlobs> {
    std::fs::create_dir_all(root).map_err(|e| PortError::generic("filesystem", e))?;
    let root = root.canonicalize().map_err(|e| PortError::generic("filesystem", e))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
        .map_err(|e| PortError::generic("filesystem", e))?;
    Ok(ObjectStoreBlobs::new(
        Arc::new(store),
        "filesystem",
        format!("file://{}", root.display()),
        LOCAL_PART_SIZE,
    ))
}
