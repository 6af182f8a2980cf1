//! Object storage on the local filesystem (object_store's `LocalFileSystem`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use udim_ports::storage::{BlobStore, BlobWriter, ByteStream, ObjectStoreBlobs};
use udim_ports::{PortError, Result};

/// Part size for local multipart writes: small enough to keep memory flat, large enough
/// that per-part overhead does not matter.
const LOCAL_PART_SIZE: usize = 4 * 1024 * 1024;

/// Filesystem object storage. A multipart write stages its bytes in `<object>#<n>` next to
/// the object and renames it on completion; a writer dropped or aborted removes its staging
/// file, but a killed process cannot. So `delete` also removes the object's staging files:
/// deleting the key of an upload a crash abandoned (as the sweeper does) leaves nothing.
///
/// A finished write is durable before `finish` returns: the file and its directory are
/// fsynced (object_store's local store does neither), so a package is never marked `stored`
/// over an object a power cut could still take away.
#[derive(Debug, Clone)]
pub struct FsBlobs {
    inner: ObjectStoreBlobs,
    root: PathBuf,
}

/// Builds filesystem object storage rooted at `root`, creating the directory if needed.
pub fn build(root: &Path) -> Result<FsBlobs> {
    std::fs::create_dir_all(root).map_err(|e| PortError::generic("filesystem", e))?;
    let root = root.canonicalize().map_err(|e| PortError::generic("filesystem", e))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
        .map_err(|e| PortError::generic("filesystem", e))?;
    Ok(FsBlobs {
        inner: ObjectStoreBlobs::new(
            Arc::new(store),
            "filesystem",
            format!("file://{}", root.display()),
            LOCAL_PART_SIZE,
        ),
        root,
    })
}

impl FsBlobs {
    /// Removes `key`'s staging files (`<key>#<anything>`), if a crash left any.
    async fn remove_staging(&self, key: &str) -> Result<()> {
        let object = self.root.join(key);
        let (Some(dir), Some(name)) = (object.parent(), object.file_name()) else {
            return Ok(());
        };
        let (dir, prefix) = (dir.to_owned(), format!("{}#", name.to_string_lossy()));
        tokio::task::spawn_blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| PortError::generic("filesystem", e))?
        .map_err(|e| PortError::unavailable("filesystem", e))
    }
}

#[async_trait]
impl BlobStore for FsBlobs {
    async fn create(&self, key: &str, size_hint: Option<u64>) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(DurableWriter {
            inner: self.inner.create(key, size_hint).await?,
            path: self.root.join(key),
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<ByteStream> {
        self.inner.get_range(key, range).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await?;
        self.remove_staging(key).await
    }

    fn uri(&self, key: &str) -> String {
        self.inner.uri(key)
    }

    fn buffer_bound(&self, size_hint: Option<u64>) -> u64 {
        self.inner.buffer_bound(size_hint)
    }
}

/// A writer whose `finish` returns only once the object survives a power cut.
struct DurableWriter {
    inner: Box<dyn BlobWriter>,
    path: PathBuf,
}

#[async_trait]
impl BlobWriter for DurableWriter {
    async fn write(&mut self, data: bytes::Bytes) -> Result<()> {
        self.inner.write(data).await
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        let written = self.inner.finish().await?;
        let path = self.path;
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&path)?.sync_all()?;
            // The rename that made the object visible lives in its directory.
            match path.parent() {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| PortError::generic("filesystem", e))?
        .map_err(|e| PortError::unavailable("filesystem", e))?;
        Ok(written)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deleting_a_key_also_removes_the_staging_files_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = build(dir.path()).unwrap();
        let packages = dir.path().join("packages");
        std::fs::create_dir_all(&packages).unwrap();
        // What a process killed mid-write leaves: staged parts, no object.
        for leftover in ["abc#1", "abc#7", "abcd#1", "abcd"] {
            std::fs::write(packages.join(leftover), b"partial").unwrap();
        }
        store.delete("packages/abc").await.unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&packages)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["abcd", "abcd#1"], "only abc's staging files go");
        store
            .delete("missing/dir/key")
            .await
            .expect("nothing to remove is fine");
    }
}
