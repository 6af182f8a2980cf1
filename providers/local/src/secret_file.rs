//! Secrets generated on first start and kept in files only the service's user can read.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Reads the secret at `path`, or creates it with `generate()` (mode 0600, parent directories
/// 0700) when it does not exist. Creation is atomic: concurrent first starts agree on one
/// secret, because only one `create_new` succeeds and the others read its result.
pub fn load_or_create(path: &Path, generate: impl FnOnce() -> Vec<u8>) -> std::io::Result<Vec<u8>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let secret = generate();
            file.write_all(&secret)?;
            file.sync_all()?;
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is readable by group or others (mode {:o}); make it 0600",
                        path.display(),
                        mode & 0o777
                    ),
                ));
            }
            std::fs::read(path)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_with_owner_only_permissions_and_then_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/secret");
        let first = load_or_create(&path, || b"one".to_vec()).unwrap();
        let second = load_or_create(&path, || b"two".to_vec()).unwrap();
        assert_eq!(first, b"one");
        assert_eq!(second, b"one");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_a_secret_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path, Vec::new).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    }
}
