//! Secrets generated on first start and kept in files only the service's user can read.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Reads the secret at `path`, or creates it with `generate()` (mode 0600, parent directories
/// created) when it does not exist. A secret shorter than `min_len` bytes is refused, with
/// the file left alone: an empty or cut secret (a disk that filled, a hand edit) would
/// otherwise be used as a key.
///
/// Creation is atomic twice over: the secret is written to a temporary file, fsynced, and
/// linked into place only when complete, so a crash never leaves a partial secret; and the
/// link fails if the file appeared meanwhile, so concurrent first starts agree on one secret
/// (the losers read the winner's).
pub fn load_or_create(path: &Path, min_len: usize, generate: impl FnOnce() -> Vec<u8>) -> std::io::Result<Vec<u8>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match read_checked(path, min_len) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let secret = generate();
    if secret.len() < min_len {
        return Err(std::io::Error::other("the generated secret is too short"));
    }
    let temporary = temporary_path(path)?;
    let written = write_synced(&temporary, &secret).and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match written {
        Ok(()) => {
            if let Some(parent) = path.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_checked(path, min_len),
        Err(e) => Err(e),
    }
}

/// Reads the secret at `path`, which must exist, be readable by its owner only and hold at
/// least `min_len` bytes (a secret provided by the operator, say a mounted one).
pub fn load(path: &Path, min_len: usize) -> std::io::Result<Vec<u8>> {
    read_checked(path, min_len)
}

fn read_checked(path: &Path, min_len: usize) -> std::io::Result<Vec<u8>> {
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
    let secret = std::fs::read(path)?;
    if secret.trim_ascii().len() < min_len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} holds {} bytes, fewer than the {min_len} a secret needs: restore it, or remove it to generate a \
                 new one (anything made with the old one stops verifying)",
                path.display(),
                secret.len()
            ),
        ));
    }
    Ok(secret)
}

/// A fresh name beside `path`, so the final link stays on one filesystem.
fn temporary_path(path: &Path) -> std::io::Result<PathBuf> {
    let mut suffix = [0u8; 8];
    aws_lc_rs::rand::fill(&mut suffix).map_err(|_| std::io::Error::other("the system random generator failed"))?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("a secret file needs a name"))?;
    Ok(path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        u64::from_be_bytes(suffix)
    )))
}

fn write_synced(path: &Path, secret: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_with_owner_only_permissions_and_then_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/secret");
        let first = load_or_create(&path, 3, || b"one".to_vec()).unwrap();
        let second = load_or_create(&path, 3, || b"two".to_vec()).unwrap();
        assert_eq!(first, b"one");
        assert_eq!(second, b"one");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file stays behind");
    }

    #[test]
    fn refuses_a_secret_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"xyz").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path, 3, Vec::new).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn refuses_an_empty_or_short_secret_and_leaves_it_for_the_operator() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        for short in [&b""[..], b"\n", b"abc"] {
            std::fs::write(&path, short).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = load_or_create(&path, 32, || vec![b'x'; 64]).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{short:?}");
            assert!(err.to_string().contains("fewer than the 32"), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), short, "the file is not replaced");
        }
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let secrets: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|n| {
                    let path = &path;
                    s.spawn(move || load_or_create(path, 4, || vec![b'a' + n; 16]).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.iter().all(|s| s == &secrets[0]), "{secrets:?}");
    }
}
