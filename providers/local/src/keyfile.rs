//! Key management with a local key file: AES-256-GCM key wrapping under key-encryption keys
//! kept in a file with mode 0600.
//!
//! File format: one key per line, `<key id> <base64 of 32 bytes>`; the last line is the
//! current key. Earlier lines keep unwrapping data keys written before a rotation.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest::{SHA256, digest};
use udim_ports::kms::{DataKey, KeyContext, KeyService, PlainKey};
use udim_ports::{PortError, Result};

const PROVIDER: &str = "local key file";
/// First byte of every wrapped key, so the format can change without guessing.
const WRAP_FORMAT_V1: u8 = 1;

struct Kek {
    id: String,
    key: LessSafeKey,
}

/// [`KeyService`] backed by a local key file.
pub struct LocalKeyFile {
    path: PathBuf,
    keys: Vec<Kek>,
}

impl std::fmt::Debug for LocalKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyFile")
            .field("path", &self.path)
            .field("key_ids", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

fn key_id_for(material: &[u8; 32]) -> String {
    let fingerprint = digest(&SHA256, material);
    format!("local:{}", hex_prefix(fingerprint.as_ref(), 8))
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes[..n].iter().map(|b| format!("{b:02x}")).collect()
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).expect("the system random generator failed");
    key
}

fn key_line(material: &[u8; 32]) -> String {
    use base64::Engine as _;
    format!(
        "{} {}\n",
        key_id_for(material),
        base64::engine::general_purpose::STANDARD.encode(material)
    )
}

impl LocalKeyFile {
    /// Opens the key file, creating it with one fresh key (mode 0600) if it does not exist.
    pub fn open_or_create(path: &Path) -> Result<Self> {
        // One key line is an id, a space and 44 base64 characters.
        let text = crate::secret_file::load_or_create(path, 46, || key_line(&random_key()).into_bytes())
            .map_err(|e| PortError::generic(PROVIDER, e))?;
        let text = String::from_utf8(text).map_err(|_| invalid(path, "the key file is not UTF-8"))?;
        let keys = parse_keys(path, &text)?;
        Ok(Self {
            path: path.to_owned(),
            keys,
        })
    }

    /// Appends a new key that becomes current; earlier keys keep unwrapping.
    pub fn rotate(path: &Path) -> Result<String> {
        use std::io::Write;
        let existing = Self::open_or_create(path)?;
        let material = random_key();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&existing.path)
            .map_err(|e| PortError::generic(PROVIDER, e))?;
        file.write_all(key_line(&material).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| PortError::generic(PROVIDER, e))?;
        Ok(key_id_for(&material))
    }

    fn current(&self) -> &Kek {
        self.keys.last().expect("parse_keys guarantees at least one key")
    }
}

fn invalid(path: &Path, why: &str) -> PortError {
    PortError::generic(PROVIDER, format!("{}: {why}", path.display()))
}

fn parse_keys(path: &Path, text: &str) -> Result<Vec<Kek>> {
    use base64::Engine as _;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |why: &str| invalid(path, &format!("line {}: {why}", n + 1));
        let (id, encoded) = line.split_once(' ').ok_or_else(|| bad("expected `<id> <key>`"))?;
        let material: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| bad("the key is not base64 of 32 bytes"))?;
        if key_id_for(&material) != id {
            return Err(bad("the key id does not match the key"));
        }
        let key = UnboundKey::new(&AES_256_GCM, &material).map_err(|_| bad("unusable key"))?;
        keys.push(Kek {
            id: id.to_owned(),
            key: LessSafeKey::new(key),
        });
    }
    if keys.is_empty() {
        return Err(invalid(path, "the key file holds no key"));
    }
    Ok(keys)
}

fn associated_data(key_id: &str, ctx: &KeyContext) -> Vec<u8> {
    let mut aad = ctx.to_bytes();
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

#[async_trait]
impl KeyService for LocalKeyFile {
    async fn generate_data_key(&self, ctx: &KeyContext) -> Result<DataKey> {
        let kek = self.current();
        let plaintext = random_key();
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| PortError::generic(PROVIDER, "rng failed"))?;
        let mut sealed = plaintext.to_vec();
        kek.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(&kek.id, ctx)),
                &mut sealed,
            )
            .map_err(|_| PortError::generic(PROVIDER, "wrapping failed"))?;
        let mut wrapped = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        wrapped.push(WRAP_FORMAT_V1);
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(&sealed);
        Ok(DataKey {
            plaintext: PlainKey::from_bytes(plaintext),
            wrapped,
            key_id: kek.id.clone(),
        })
    }

    async fn unwrap_data_key(&self, key_id: &str, wrapped: &[u8], ctx: &KeyContext) -> Result<PlainKey> {
        let kek = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| PortError::NotFound(format!("key {key_id}")))?;
        let (version, rest) = wrapped
            .split_first()
            .ok_or_else(|| PortError::Integrity("empty wrapped key".into()))?;
        if *version != WRAP_FORMAT_V1 || rest.len() != NONCE_LEN + 32 + 16 {
            return Err(PortError::Integrity("unknown wrapped key format".into()));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| PortError::Integrity("bad nonce".into()))?;
        let mut buf = sealed.to_vec();
        let opened = kek
            .key
            .open_in_place(nonce, Aad::from(associated_data(key_id, ctx)), &mut buf)
            .map_err(|_| PortError::Integrity("the data key does not unwrap in this context".into()))?;
        let plaintext: [u8; 32] = opened
            .try_into()
            .map_err(|_| PortError::Integrity("unwrapped key has the wrong length".into()))?;
        buf.iter_mut().for_each(|b| *b = 0);
        Ok(PlainKey::from_bytes(plaintext))
    }

    /// The keys are held in memory once loaded: nothing can be out of reach.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn current_key_id(&self) -> &str {
        &self.current().id
    }
}
