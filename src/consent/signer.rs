//! The log's Ed25519 checkpoint signer: configured as a secret or a secret file, or (on
//! SQLite) generated into `data_dir` on first start.

use secrecy::ExposeSecret;
use udim_ledger::checkpoint::Checkpoint;
use udim_ledger::note::{Signer, VerifierKey};
use udim_ports::BoxError;
use udim_ports::ledger::{CheckpointSigner, Hash};

use crate::config::SigningKeySource;

/// Signs and opens this log's checkpoints.
#[derive(Debug)]
pub struct LedgerSigner {
    signer: Signer,
    verifier: VerifierKey,
}

impl LedgerSigner {
    /// Loads the key from `source`, generating it if the source says so. The key's name must
    /// be `origin`.
    pub fn load(origin: &str, source: &SigningKeySource) -> anyhow::Result<Self> {
        // `PRIVATE+KEY+<origin>+<id>+<base64 of 33 bytes>`: never shorter than this.
        const MIN_LEN: usize = 60;
        let signer = match source {
            SigningKeySource::Configured(secret) => Signer::parse(secret.expose_secret())
                .map_err(|e| anyhow::anyhow!("configuration error: `ledger.signing_key`: {e}"))?,
            SigningKeySource::File(path) => {
                let bytes = udim_local::secret_file::load(path, MIN_LEN).map_err(|e| {
                    anyhow::anyhow!("configuration error: `ledger.signing_key_file` {}: {e}", path.display())
                })?;
                let text = String::from_utf8(bytes)?;
                Signer::parse(text.trim()).map_err(|e| anyhow::anyhow!("the ledger key {}: {e}", path.display()))?
            }
            SigningKeySource::Generated(path) => {
                let bytes = udim_local::secret_file::load_or_create(path, MIN_LEN, || {
                    Signer::generate(origin)
                        .map(|s| s.to_secret_string().into_bytes())
                        .unwrap_or_default()
                })
                .map_err(|e| anyhow::anyhow!("cannot read or create the ledger key {}: {e}", path.display()))?;
                let text = String::from_utf8(bytes)?;
                Signer::parse(text.trim()).map_err(|e| anyhow::anyhow!("the ledger key {}: {e}", path.display()))?
            }
        };
        let verifier = signer.verifier();
        anyhow::ensure!(
            verifier.name() == origin,
            "configuration error: `ledger.origin` is `{origin}` but the signing key is named `{}`",
            verifier.name()
        );
        Ok(Self { signer, verifier })
    }

    /// The verifier key in the signed-note form `name+keyid+base64(0x01 || key)`.
    pub fn verifier(&self) -> &VerifierKey {
        &self.verifier
    }
}

impl CheckpointSigner for LedgerSigner {
    fn sign(&self, size: u64, root: &Hash) -> Result<String, BoxError> {
        let checkpoint = Checkpoint {
            origin: self.verifier.name().to_owned(),
            size,
            root: *root,
        };
        Ok(checkpoint.sign(&self.signer)?)
    }

    fn open(&self, note: &str) -> Result<(u64, Hash), BoxError> {
        let checkpoint = Checkpoint::open(note, &self.verifier)?;
        Ok((checkpoint.size, checkpoint.root))
    }
}
