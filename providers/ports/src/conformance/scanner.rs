//! The malware-scanner suite ([`MalwareScanner`]).

use crate::scanner::{MalwareScanner, Verdict};

/// The standard 68-byte EICAR anti-virus test file: harmless, and detected by every scanner
/// (with ClamAV's stock signatures, or a custom one where none can be downloaded).
pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// Malware scanner: the verdicts on streams fed in pieces, as uploads arrive.
///
/// With `detects` (a real scanner, which must accept streams of 400 kB):
/// - 300 kB of clean bytes fed in several uneven pieces are `Clean`;
/// - the EICAR test string alone is `Infected`, with a signature name;
/// - EICAR inside a 300 kB stream, split across two feeds, is `Infected`;
/// - a detection does not carry over: the next session's clean stream is `Clean`.
///
/// Without `detects` (a scanner that does not look, like
/// [`crate::scanner::ScanningDisabled`]), every one of those streams must be `NotScanned`,
/// never `Clean`: a stream nobody looked at must not be reported as looked at.
pub async fn malware_scanner(scanner: &dyn MalwareScanner, detects: bool) {
    let clean = noise(300_000);
    let pieces = [1, 4095, 65_536, 100_000, 130_368];
    assert_eq!(pieces.iter().sum::<usize>(), clean.len());
    let mut start = 0;
    let clean_feeds: Vec<&[u8]> = pieces
        .iter()
        .map(|len| {
            start += len;
            &clean[start - len..start]
        })
        .collect();

    let mut embedded = clean.clone();
    let at = 150_000;
    embedded.splice(at..at, EICAR.iter().copied());
    let split = at + EICAR.len() / 2;

    // (what, whether it holds EICAR, the verdict)
    let verdicts = [
        ("clean bytes in five pieces", false, scan(scanner, &clean_feeds).await),
        ("the EICAR test string alone", true, scan(scanner, &[EICAR]).await),
        (
            "EICAR inside a larger stream, split across feeds",
            true,
            scan(
                scanner,
                &[&embedded[..100_000], &embedded[100_000..split], &embedded[split..]],
            )
            .await,
        ),
        ("clean bytes after a detection", false, scan(scanner, &[&clean]).await),
    ];
    for (what, infected, verdict) in verdicts {
        if !detects {
            assert!(
                matches!(verdict, Verdict::NotScanned { .. }),
                "{what}: a scanner that does not look must say NotScanned, not {verdict:?}"
            );
        } else if infected {
            assert!(
                matches!(&verdict, Verdict::Infected { signature } if !signature.is_empty()),
                "{what} must be Infected, with a signature name: {verdict:?}"
            );
        } else {
            assert_eq!(verdict, Verdict::Clean, "{what} must be Clean");
        }
    }
}

async fn scan(scanner: &dyn MalwareScanner, feeds: &[&[u8]]) -> Verdict {
    let mut session = scanner.start().await.expect("start a scan");
    for feed in feeds {
        session.feed(feed).await.expect("feed the scan");
    }
    session.finish().await.expect("finish the scan")
}

/// `len` bytes that look like nothing in particular (xorshift), the same every run.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect()
}
