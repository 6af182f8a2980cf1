//! Key management: envelope encryption's key-encryption side.

use async_trait::async_trait;
use uuid::Uuid;

use crate::Result;

/// What a data key is bound to. Providers must authenticate it (AWS KMS encryption context,
/// AES-GCM associated data, ...) so a wrapped key moved to another package or user does not
/// unwrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyContext {
    pub package_id: Uuid,
    pub user_id: String,
}

impl KeyContext {
    /// Stable byte encoding of the context, for providers that bind it as associated data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.user_id.len());
        out.extend_from_slice(b"udim-key-context-v1");
        out.extend_from_slice(self.package_id.as_bytes());
        out.extend_from_slice(&(self.user_id.len() as u32).to_be_bytes());
        out.extend_from_slice(self.user_id.as_bytes());
        out
    }
}

/// A 256-bit plaintext data key. Zeroed on drop; never logged (its `Debug` is redacted).
pub struct PlainKey([u8; 32]);

impl PlainKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for PlainKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlainKey(<redacted>)")
    }
}

/// A freshly generated data key: the plaintext for immediate use and its wrapped form to
/// store beside the object.
#[derive(Debug)]
pub struct DataKey {
    pub plaintext: PlainKey,
    pub wrapped: Vec<u8>,
    /// Identifier of the key-encryption key (local key fingerprint, KMS key ARN, Cloud KMS
    /// resource name, Key Vault key id) recorded as the package's `encryptionKeyID`.
    pub key_id: String,
}

/// Generates and unwraps per-package data keys under a key-encryption key.
///
/// # Contract
/// - `generate_data_key` returns 32 random bytes and their wrapped form under the current
///   key; two calls never return the same plaintext.
/// - `unwrap_data_key(key_id, wrapped, ctx)` returns the plaintext only when `wrapped` was
///   produced by this service's key `key_id` with an equal `ctx`; a different context,
///   key id or any modified byte gives [`crate::PortError::Integrity`] (or `NotFound` for an
///   unknown key id).
/// - Keys that were current earlier keep unwrapping after the current key changes.
/// - Reachability problems are [`crate::PortError::Unavailable`].
#[async_trait]
pub trait KeyService: Send + Sync + std::fmt::Debug {
    async fn generate_data_key(&self, ctx: &KeyContext) -> Result<DataKey>;
    async fn unwrap_data_key(&self, key_id: &str, wrapped: &[u8], ctx: &KeyContext) -> Result<PlainKey>;
    /// Checks that the current key can be used now (for readiness probes), without making a
    /// data key.
    async fn ping(&self) -> Result<()>;
    /// The id new data keys are wrapped under.
    fn current_key_id(&self) -> &str;
}
