//! Signed notes and checkpoints as a verifier receives them (from the API, a file, a
//! witness): verifier keys, notes, checkpoint bodies and signature opening. Never a panic; a
//! note that opens under a key is signed by it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use udim_ledger::checkpoint::Checkpoint;
use udim_ledger::note::{self, Signer, VerifierKey};

fn key() -> &'static VerifierKey {
    static KEY: OnceLock<VerifierKey> = OnceLock::new();
    KEY.get_or_init(|| Signer::from_seed("udim.fuzz/ledger", [9; 32]).unwrap().verifier())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = VerifierKey::parse(text);
    let _ = Signer::parse(text);
    let _ = Checkpoint::parse(text);
    let _ = Checkpoint::open(text, key());
    if let Ok(body) = note::open(text, key()) {
        assert!(text.starts_with(body));
    }
});
