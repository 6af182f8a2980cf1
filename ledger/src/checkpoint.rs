//! C2SP transparency-log checkpoints (<https://c2sp.org/tlog-checkpoint>): the signed body of
//! a log's state.
//!
//! ```text
//! <origin>
//! <tree size, decimal>
//! <base64 root hash>
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::merkle::Hash;
use crate::note::{self, NoteError, Signer, VerifierKey};

/// A log's size and root, named by its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text (the part that is signed).
    pub fn to_text(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// Parses a checkpoint body. Extension lines after the root are allowed and ignored.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::Malformed("missing origin"))?;
        let size = lines
            .next()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s.len() == 1 || !s.starts_with('0')))
            .and_then(|s| s.parse().ok())
            .ok_or(NoteError::Malformed("the tree size is not a canonical decimal"))?;
        let root: Hash = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::Malformed("the root is not base64 of 32 bytes"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Signs this checkpoint into a signed note.
    pub fn sign(&self, signer: &Signer) -> Result<String, NoteError> {
        signer.sign(&self.to_text())
    }

    /// Verifies a signed checkpoint note and parses it. The origin must be the key's name, as
    /// the spec recommends, so a note for another log cannot pass.
    pub fn open(signed: &str, key: &VerifierKey) -> Result<Self, NoteError> {
        let checkpoint = Self::parse(note::open(signed, key)?)?;
        if checkpoint.origin != key.name() {
            return Err(NoteError::Malformed("the origin is not the verifier key's name"));
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_checkpoints_round_trip_and_bind_origin_size_and_root() {
        let signer = Signer::generate("udim.test/ledger").unwrap();
        let cp = Checkpoint {
            origin: "udim.test/ledger".into(),
            size: 12345,
            root: [7; 32],
        };
        let signed = cp.sign(&signer).unwrap();
        assert!(signed.starts_with("udim.test/ledger\n12345\nBwcH"));
        assert_eq!(Checkpoint::open(&signed, &signer.verifier()).unwrap(), cp);
        let forged = signed.replace("12345", "12346");
        assert!(Checkpoint::open(&forged, &signer.verifier()).is_err());
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            "",
            "o\n",
            "o\n-1\nAAAA\n",
            "o\n01\n",
            "o\n1\nnot base64\n",
            "o\n1\nAAAA\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
