//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys, and the key
//! encodings of Go's `golang.org/x/mod/sumdb/note` that the transparency-log ecosystem uses:
//!
//! - verifier key: `<name>+<hex key id>+<base64(0x01 || 32-byte public key)>`
//! - signer key:   `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || 32-byte seed)>`
//! - key id:       `SHA-256(name || 0x0A || 0x01 || public key)[..4]`, big-endian

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

const ED25519_TYPE: u8 = 0x01;
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// Bounds the work a hostile note can cause; the spec requires accepting at least 16.
const MAX_SIGNATURES: usize = 100;

/// Why a key or note was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoteError {
    /// The key string is not a valid signer or verifier key.
    BadKey(&'static str),
    /// The note is not well-formed.
    Malformed(&'static str),
    /// A signature by the trusted key is present but does not verify.
    BadSignature,
    /// No signature by the trusted key is present.
    NotSigned,
}

impl std::fmt::Display for NoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadKey(why) => write!(f, "bad key: {why}"),
            Self::Malformed(why) => write!(f, "malformed note: {why}"),
            Self::BadSignature => f.write_str("the note's signature does not verify"),
            Self::NotSigned => f.write_str("the note carries no signature by the trusted key"),
        }
    }
}

impl std::error::Error for NoteError {}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The key id of an Ed25519 key named `name`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut input = Vec::with_capacity(name.len() + 34);
    input.extend_from_slice(name.as_bytes());
    input.push(b'\n');
    input.push(ED25519_TYPE);
    input.extend_from_slice(public_key);
    let hash = digest(&SHA256, &input);
    u32::from_be_bytes(hash.as_ref()[..4].try_into().expect("4 bytes"))
}

/// A trusted Ed25519 public key with its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    id: u32,
    public_key: [u8; 32],
}

impl VerifierKey {
    /// Parses `<name>+<hex id>+<base64(0x01 || key)>`, checking that the id matches.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(encoded)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadKey("expected name+keyid+key"));
        };
        if !valid_name(name) {
            return Err(NoteError::BadKey("invalid key name"));
        }
        if id_hex.len() != 8 {
            return Err(NoteError::BadKey("the key id must be 8 hex digits"));
        }
        let id = u32::from_str_radix(id_hex, 16).map_err(|_| NoteError::BadKey("the key id is not hex"))?;
        let raw = B64
            .decode(encoded)
            .map_err(|_| NoteError::BadKey("the key is not base64"))?;
        let (kind, key) = raw.split_first().ok_or(NoteError::BadKey("empty key"))?;
        if *kind != ED25519_TYPE {
            return Err(NoteError::BadKey("not an Ed25519 key"));
        }
        let public_key: [u8; 32] = key
            .try_into()
            .map_err(|_| NoteError::BadKey("an Ed25519 key is 32 bytes"))?;
        if key_id(name, &public_key) != id {
            return Err(NoteError::BadKey("the key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            public_key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ED25519_TYPE);
        raw.extend_from_slice(&self.public_key);
        write!(f, "{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }
}

/// An Ed25519 signing key with its name. Its `Debug` never shows the seed.
pub struct Signer {
    name: String,
    id: u32,
    pair: Ed25519KeyPair,
    seed: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id))
            .finish()
    }
}

impl Signer {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::BadKey("invalid key name"));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| NoteError::BadKey("unusable seed"))?;
        let public_key: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes");
        Ok(Self {
            name: name.to_owned(),
            id: key_id(name, &public_key),
            pair,
            seed,
        })
    }

    /// A signer with a fresh random seed.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        let mut seed = [0u8; 32];
        aws_lc_rs::rand::fill(&mut seed).map_err(|_| NoteError::BadKey("the random generator failed"))?;
        Self::from_seed(name, seed)
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::BadKey("expected PRIVATE+KEY+…"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(encoded)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadKey("expected PRIVATE+KEY+name+keyid+key"));
        };
        let raw = B64
            .decode(encoded)
            .map_err(|_| NoteError::BadKey("the key is not base64"))?;
        let (kind, seed) = raw.split_first().ok_or(NoteError::BadKey("empty key"))?;
        if *kind != ED25519_TYPE {
            return Err(NoteError::BadKey("not an Ed25519 key"));
        }
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| NoteError::BadKey("an Ed25519 seed is 32 bytes"))?;
        let signer = Self::from_seed(name, seed)?;
        if format!("{:08x}", signer.id) != id_hex.to_ascii_lowercase() {
            return Err(NoteError::BadKey("the key id does not match the key"));
        }
        Ok(signer)
    }

    /// The `PRIVATE+KEY+…` encoding. A secret: store it like one.
    pub fn to_secret_string(&self) -> String {
        let mut raw = Vec::with_capacity(33);
        raw.push(ED25519_TYPE);
        raw.extend_from_slice(&self.seed);
        format!("PRIVATE+KEY+{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }

    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            id: self.id,
            public_key: self.pair.public_key().as_ref().try_into().expect("32 bytes"),
        }
    }

    /// Signs `text` (which must end in a newline) into a signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let signature = self.pair.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(4 + 64);
        blob.extend_from_slice(&self.id.to_be_bytes());
        blob.extend_from_slice(signature.as_ref());
        Ok(format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::Malformed("the text must end with a newline"));
    }
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("control characters are not allowed"));
    }
    Ok(())
}

/// Verifies `note` against `key` and returns its text. Signatures by other keys are ignored,
/// as the spec requires; a bad signature by `key` rejects the note.
pub fn open<'a>(note: &'a str, key: &VerifierKey) -> Result<&'a str, NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let text = &note[..split + 1];
    let signatures = &note[split + 2..];
    check_text(text)?;
    if !signatures.ends_with('\n') {
        return Err(NoteError::Malformed("the signatures must end with a newline"));
    }
    let mut verified = false;
    for (n, line) in signatures.lines().enumerate() {
        if n >= MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(NoteError::Malformed("bad signature line"))?;
        let (name, encoded) = rest.split_once(' ').ok_or(NoteError::Malformed("bad signature line"))?;
        let blob = B64
            .decode(encoded)
            .map_err(|_| NoteError::Malformed("the signature is not base64"))?;
        if blob.len() < 4 {
            return Err(NoteError::Malformed("the signature is too short"));
        }
        let id = u32::from_be_bytes(blob[..4].try_into().expect("4 bytes"));
        if name != key.name || id != key.id {
            continue;
        }
        UnparsedPublicKey::new(&ED25519, &key.public_key)
            .verify(text.as_bytes(), &blob[4..])
            .map_err(|_| NoteError::BadSignature)?;
        verified = true;
    }
    if verified { Ok(text) } else { Err(NoteError::NotSigned) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of golang.org/x/mod/sumdb/note, reproduced by every implementation of the
    // format: Ed25519 is deterministic, so signing must give this note byte for byte.
    const SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const TEXT: &str =
        "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn signs_the_go_sumdb_example_byte_for_byte() {
        let signer = Signer::parse(SKEY).unwrap();
        assert_eq!(signer.to_secret_string(), SKEY);
        assert_eq!(signer.verifier().to_string(), VKEY);
        assert_eq!(signer.sign(TEXT).unwrap(), NOTE);
    }

    #[test]
    fn opens_the_go_sumdb_example_and_refuses_changes() {
        let key = VerifierKey::parse(VKEY).unwrap();
        assert_eq!(open(NOTE, &key).unwrap(), TEXT);
        assert_eq!(
            open(&NOTE.replace("cryptography", "cryptographY"), &key),
            Err(NoteError::BadSignature)
        );
        let other = Signer::generate("PeterNeumann").unwrap().verifier();
        assert_eq!(
            open(NOTE, &other),
            Err(NoteError::NotSigned),
            "same name, other key: ignored"
        );
        assert!(open(&NOTE.replace("\n\n", "\n"), &key).is_err());
    }

    #[test]
    fn keys_with_a_wrong_id_or_mangled_bytes_are_refused() {
        assert!(VerifierKey::parse("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").is_err());
        assert!(VerifierKey::parse("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").is_err());
        for cut in 1..VKEY.len() {
            assert!(VerifierKey::parse(&VKEY[..cut]).is_err(), "{}", &VKEY[..cut]);
        }
    }

    #[test]
    fn generated_keys_round_trip_and_sign_what_they_verify() {
        let signer = Signer::generate("udim.example/ledger").unwrap();
        let again = Signer::parse(&signer.to_secret_string()).unwrap();
        assert_eq!(again.verifier(), signer.verifier());
        let key = VerifierKey::parse(&signer.verifier().to_string()).unwrap();
        let note = signer.sign("hello\n").unwrap();
        assert_eq!(open(&note, &key).unwrap(), "hello\n");
        assert!(!format!("{signer:?}").contains(&signer.to_secret_string()[20..]));
    }
}
