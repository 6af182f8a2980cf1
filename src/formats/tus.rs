//! tus 1.0.0 header parsing (pure: header values in, values out). See
//! <https://tus.io/protocols/resumable-upload>.

use std::collections::BTreeMap;

use base64::Engine as _;

/// The protocol version this server speaks.
pub const VERSION: &str = "1.0.0";
/// The extensions this server implements.
pub const EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
/// Checksum algorithms accepted in `Upload-Checksum`.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256";
/// The media type of PATCH bodies.
pub const PATCH_CONTENT_TYPE: &str = "application/offset+octet-stream";

/// A malformed or unsupported tus header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TusHeaderError {
    /// Not a non-negative decimal integer (the spec allows nothing else).
    NotANumber(&'static str),
    BadMetadata(&'static str),
    BadChecksum(&'static str),
    UnsupportedChecksum(String),
}

impl std::fmt::Display for TusHeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotANumber(header) => write!(f, "{header} must be a non-negative integer"),
            Self::BadMetadata(why) => write!(f, "Upload-Metadata: {why}"),
            Self::BadChecksum(why) => write!(f, "Upload-Checksum: {why}"),
            Self::UnsupportedChecksum(alg) => write!(f, "Upload-Checksum: unsupported algorithm `{alg}`"),
        }
    }
}

impl std::error::Error for TusHeaderError {}

/// Parses `Upload-Offset` / `Upload-Length`: decimal digits only, no sign, no spaces.
pub fn parse_size(header: &'static str, value: &str) -> Result<u64, TusHeaderError> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TusHeaderError::NotANumber(header));
    }
    value.parse().map_err(|_| TusHeaderError::NotANumber(header))
}

/// The longest `Upload-Metadata` accepted: file names, types and a few client keys fit many
/// times over, and it is stored with the upload.
pub const MAX_METADATA_BYTES: usize = 4096;

/// Parses `Upload-Metadata`: comma-separated `key` or `key base64(value)` pairs. Keys are
/// unique, non-empty and without spaces or commas; values must be valid base64 of UTF-8.
pub fn parse_metadata(value: &str) -> Result<BTreeMap<String, String>, TusHeaderError> {
    if value.len() > MAX_METADATA_BYTES {
        return Err(TusHeaderError::BadMetadata("longer than 4 KiB"));
    }
    let mut pairs = BTreeMap::new();
    if value.trim().is_empty() {
        return Ok(pairs);
    }
    for pair in value.split(',') {
        let pair = pair.trim();
        let mut parts = pair.split(' ');
        let key = parts
            .next()
            .filter(|k| !k.is_empty())
            .ok_or(TusHeaderError::BadMetadata("empty key"))?;
        let decoded = match parts.next() {
            None => String::new(),
            Some(encoded) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| TusHeaderError::BadMetadata("a value is not base64"))?;
                String::from_utf8(bytes).map_err(|_| TusHeaderError::BadMetadata("a value is not UTF-8"))?
            }
        };
        if parts.next().is_some() {
            return Err(TusHeaderError::BadMetadata("a pair has more than a key and a value"));
        }
        if pairs.insert(key.to_owned(), decoded).is_some() {
            return Err(TusHeaderError::BadMetadata("a key appears twice"));
        }
    }
    Ok(pairs)
}

/// A checksum algorithm of the checksum extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Sha1,
    Sha256,
}

/// A parsed `Upload-Checksum`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: Vec<u8>,
}

/// Parses `Upload-Checksum: <algorithm> <base64 digest>`.
/// `Upload-Metadata` for `pairs`, as HEAD must return it: `key base64(value)` (or the bare
/// key for an empty value), comma-separated, in key order.
pub fn encode_metadata(pairs: &BTreeMap<String, String>) -> String {
    pairs
        .iter()
        .map(|(key, value)| {
            if value.is_empty() {
                key.clone()
            } else {
                format!("{key} {}", base64::engine::general_purpose::STANDARD.encode(value))
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn parse_checksum(value: &str) -> Result<Checksum, TusHeaderError> {
    let (alg, encoded) = value
        .trim()
        .split_once(' ')
        .ok_or(TusHeaderError::BadChecksum("expected `<algorithm> <base64>`"))?;
    let (algorithm, len) = match alg {
        "sha1" => (ChecksumAlgorithm::Sha1, 20),
        "sha256" => (ChecksumAlgorithm::Sha256, 32),
        other => return Err(TusHeaderError::UnsupportedChecksum(other.to_owned())),
    };
    let digest = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| TusHeaderError::BadChecksum("the digest is not base64"))?;
    if digest.len() != len {
        return Err(TusHeaderError::BadChecksum("the digest has the wrong length"));
    }
    Ok(Checksum { algorithm, digest })
}

/// Formats a time as an RFC 9110 HTTP date (`Upload-Expires`).
pub fn http_date(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_encodes_back_to_what_parses_to_the_same_pairs() {
        let header = "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential,data_category dGV4dA==";
        let pairs = parse_metadata(header).unwrap();
        let encoded = encode_metadata(&pairs);
        assert_eq!(
            encoded,
            "data_category dGV4dA==,filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential"
        );
        assert_eq!(parse_metadata(&encoded).unwrap(), pairs);
        assert_eq!(encode_metadata(&BTreeMap::new()), "");
    }

    #[test]
    fn sizes_are_plain_non_negative_integers() {
        assert_eq!(parse_size("Upload-Length", "0"), Ok(0));
        assert_eq!(parse_size("Upload-Length", "18446744073709551615"), Ok(u64::MAX));
        for bad in ["", "-1", "+1", " 1", "1 ", "1.0", "0x10", "abc", "18446744073709551616"] {
            assert!(parse_size("Upload-Offset", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metadata_pairs_decode_and_bad_ones_are_refused() {
        let m = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential").unwrap();
        assert_eq!(m["filename"], "world_domination_plan.pdf");
        assert_eq!(m["is_confidential"], "");
        assert!(parse_metadata("").unwrap().is_empty());
        for bad in ["filename !!!", "a YQ==,a Yg==", ",a", "a YQ== extra", "a /w=="] {
            assert!(parse_metadata(bad).is_err(), "{bad:?}");
        }
        let at_limit = format!("kk {}", "QUFB".repeat(1023));
        assert!(at_limit.len() <= MAX_METADATA_BYTES && parse_metadata(&at_limit).is_ok());
        let past = format!("kk {}", "QUFB".repeat(1024));
        assert!(parse_metadata(&past).is_err(), "past 4 KiB");
    }

    #[test]
    fn checksums_need_a_known_algorithm_and_a_digest_of_its_length() {
        let c = parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").unwrap();
        assert_eq!((c.algorithm, c.digest.len()), (ChecksumAlgorithm::Sha1, 20));
        assert!(matches!(
            parse_checksum("md5 AAAA"),
            Err(TusHeaderError::UnsupportedChecksum(_))
        ));
        assert!(parse_checksum("sha1 AAAA").is_err());
        assert!(parse_checksum("sha256").is_err());
        assert!(parse_checksum("sha256 ***").is_err());
    }

    #[test]
    fn expiry_dates_are_http_dates() {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(http_date(t), "Tue, 14 Nov 2023 22:13:20 GMT");
    }
}
