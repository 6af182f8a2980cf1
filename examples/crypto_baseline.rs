//! Baseline for the upload benchmark: the same SHA-256 + envelope encryption the service
//! does, in process, over the same file, with no HTTP, database or storage.
//!
//! `cargo run --release --example crypto_baseline -- FILE`

use std::io::Read;
use std::time::Instant;

use udim::formats::envelope::{Binding, Encryptor, Header};
use udim_ports::kms::PlainKey;

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).expect("usage: crypto_baseline FILE");
    let mut file = std::fs::File::open(&path)?;
    let header = Header::new("baseline".into());
    let key = PlainKey::from_bytes([7; 32]);
    let binding = Binding {
        package_id: uuid::Uuid::nil(),
        user_id: "baseline",
    };
    let mut encryptor = Encryptor::new(&key, &header, binding);
    let mut sha = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    // The same piece size hyper hands the service for a large body.
    let mut buf = vec![0u8; 64 * 1024];
    let (mut total, mut sealed) = (0u64, 0u64);
    let started = Instant::now();
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        sha.update(&buf[..n]);
        sealed += encryptor.push(&buf[..n]).expect("encrypt").len() as u64;
    }
    sealed += encryptor.finish().expect("encrypt").len() as u64;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"bytes\": {total}, \"ciphertext_bytes\": {sealed}, \"seconds\": {secs:.3}, \"mb_per_s\": {:.1}, \"sha256\": \"{}\"}}",
        total as f64 / secs / 1e6,
        hex::encode(sha.finish().as_ref())
    );
    Ok(())
}
