//! The framing of the portability archive: a POSIX ustar stream, readable by `tar` and every
//! archive tool. Each file is a 512-byte header, its bytes, and zero padding to the next
//! block; two zero blocks end the archive. Only the framing lives here (bytes in, bytes out),
//! so the files' contents can stream between the frames without ever being held whole.

use uuid::Uuid;

/// The tar block size.
pub const BLOCK: u64 = 512;

/// What ends every archive: two zero blocks.
pub const END: [u8; 2 * BLOCK as usize] = [0; 2 * BLOCK as usize];

const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];

/// The longest file name kept from an original name, in bytes; the path stays well inside
/// ustar's 100-byte name field.
const MAX_NAME: usize = 48;

/// The header block of a regular file at `path` (relative, `/`-separated, ASCII, under 100
/// bytes) of `size` bytes, modified at `mtime` (Unix seconds), mode 0644.
pub fn header(path: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK as usize], String> {
    let plain = path.split('/').all(|part| !matches!(part, "" | "." | ".."));
    if !plain || path.len() >= 100 || !path.is_ascii() {
        return Err(format!("`{path}` is not a plain relative ASCII path under 100 bytes"));
    }
    let mut header = tar::Header::new_ustar();
    header.set_path(path).map_err(|e| format!("`{path}`: {e}"))?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(*header.as_bytes())
}

/// The zero bytes that follow a file of `size` bytes up to the next block boundary.
pub fn padding(size: u64) -> &'static [u8] {
    &ZEROS[..((BLOCK - size % BLOCK) % BLOCK) as usize]
}

/// How many bytes a file of `size` bytes takes in the archive, header and padding included.
pub fn framed_len(size: u64) -> u64 {
    BLOCK + size + padding(size).len() as u64
}

/// The archive path of a package's content: its id, so names never collide, and as much of
/// the original name as is safe on every file system (letters, digits, `.`, `-`, `_`).
pub fn package_path(id: Uuid, original_name: &str) -> String {
    let safe: String = original_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    let mut end = safe.len().min(MAX_NAME);
    while !safe.is_char_boundary(end) {
        end -= 1;
    }
    let safe = &safe[..end];
    if safe.is_empty() {
        format!("files/{id}")
    } else {
        format!("files/{id}-{safe}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_one_checksummed_ustar_block() {
        let block = header("files/a.txt", 1234, 1_700_000_000).unwrap();
        assert_eq!(&block[..11], b"files/a.txt");
        assert_eq!(&block[257..263], b"ustar\0");
        let parsed = tar::Header::from_byte_slice(&block);
        assert_eq!(parsed.size().unwrap(), 1234);
        assert_eq!(parsed.mtime().unwrap(), 1_700_000_000);
        let sum: u32 = block
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    u32::from(b' ')
                } else {
                    u32::from(*b)
                }
            })
            .sum();
        assert_eq!(parsed.cksum().unwrap(), sum);
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for path in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/",
            "é",
            &"a".repeat(100),
        ] {
            assert!(header(path, 0, 0).is_err(), "{path:?}");
        }
    }

    #[test]
    fn padding_fills_to_the_block_and_framing_adds_up() {
        assert_eq!(padding(0).len(), 0);
        assert_eq!(padding(1).len(), 511);
        assert_eq!(padding(512).len(), 0);
        assert_eq!(padding(513).len(), 511);
        for size in [0, 1, 511, 512, 513, 10_000] {
            assert_eq!(framed_len(size) % BLOCK, 0);
            assert!(framed_len(size) >= BLOCK + size);
        }
    }

    #[test]
    fn package_paths_are_safe_unique_and_short() {
        let id = Uuid::from_u128(42);
        assert_eq!(package_path(id, "report.pdf"), format!("files/{id}-report.pdf"));
        assert_eq!(
            package_path(id, "../../etc/passwd"),
            format!("files/{id}-_.._etc_passwd")
        );
        assert_eq!(package_path(id, ""), format!("files/{id}"));
        assert_eq!(package_path(id, "..."), format!("files/{id}"));
        let long = package_path(id, &"ä".repeat(200));
        assert!(long.len() < 100 && long.is_ascii());
        for name in ["a b/c", "ü.txt", &"x".repeat(300), "..hidden", "a..b", ".."] {
            let path = package_path(id, name);
            assert!(header(&path, 0, 0).is_ok(), "{path}");
        }
    }
}
