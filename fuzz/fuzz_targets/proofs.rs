//! Inclusion and consistency proofs as a verifier receives them: any index, tree size, leaf,
//! root and list of hashes. Never a panic, and no proof makes a leaf verify against the
//! all-zero root (finding one would be a SHA-256 preimage).
#![no_main]

use libfuzzer_sys::fuzz_target;
use udim_ledger::merkle;

fuzz_target!(|input: (u64, u64, [u8; 32], [u8; 32], Vec<[u8; 32]>)| {
    let (a, b, leaf, root, proof) = input;
    let _ = merkle::verify_inclusion(a, b, &leaf, &proof, &root);
    let _ = merkle::verify_consistency(a, b, &leaf, &root, &proof);
    let zero = [0u8; 32];
    if leaf != zero {
        assert!(merkle::verify_inclusion(a, b, &leaf, &proof, &zero).is_err());
    }
});
