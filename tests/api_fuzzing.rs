//! API fuzzing: schemathesis (from PyPI; `scripts/test` installs it into .venv) against the
//! real binary's served `/openapi.json`, with a token holding every scope and a consent
//! granted, every check on: no 5xx, no status, header, content type or body the document
//! does not describe, no schema-violating request accepted, no authentication ignored. The
//! few expectations this API is right to differ on are in `tests/schemathesis/schemathesis.toml`.

mod common;

use std::process::Command;

use common::process::{Process, embedded};

const SECRET: &str = "api-fuzzing-shares-this-hs256-secret";

/// Test cases per operation and phase: about a minute on this machine type. Set
/// `UDIM_TEST_SCHEMATHESIS_EXAMPLES` (and `UDIM_TEST_SCHEMATHESIS_SEED`) for a longer run.
const EXAMPLES: &str = "30";
/// A fixed seed keeps CI's run the same from one commit to the next.
const SEED: &str = "1";

fn schemathesis() -> String {
    std::env::var("UDIM_TEST_SCHEMATHESIS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/schemathesis").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_document_does_not_describe() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::serve(|| {
        let mut command = embedded(dir.path());
        command
            .env("UDIM_AUTH__HS256_SECRET", SECRET)
            // The fuzzer sends as fast as it can; the limits have tests of their own.
            .env("UDIM_LIMITS__UPLOADS_PER_SECOND_PER_USER", "0")
            .env("UDIM_LIMITS__CONSENT_CHANGES_PER_SECOND_PER_USER", "0");
        command
    })
    .await;
    let token = common::token_on(SECRET, "fuzzer", &["udim:upload", "udim:read", "udim:admin"]);
    let http = reqwest::Client::new();
    common::grant_on(
        &http,
        &server.base,
        &token,
        &["documents", "text", "images", "audio", "video"],
    )
    .await;

    let here = env!("CARGO_MANIFEST_DIR");
    let examples = std::env::var("UDIM_TEST_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| EXAMPLES.into());
    let seed = std::env::var("UDIM_TEST_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
    let mut command = Command::new(schemathesis());
    command
        .current_dir(here)
        .env("SCHEMATHESIS_HOOKS", format!("{here}/tests/schemathesis/hooks.py"))
        .args(["--config-file", "tests/schemathesis/schemathesis.toml", "run"])
        .arg(format!("{}/openapi.json", server.base))
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .args(["--checks", "all", "--max-examples", &examples, "--seed", &seed])
        // One worker: hypothesis on this Python parses lambdas' sources, which is not
        // thread-safe; more workers fail with a SystemError inside the fuzzer itself.
        .args(["--workers", "1", "--request-timeout", "30", "--no-shrink"]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("schemathesis (scripts/test installs it into .venv; UDIM_TEST_SCHEMATHESIS)");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains(" passed"), "schemathesis ran test cases:\n{report}");
    let lines: Vec<&str> = report.lines().collect();
    eprintln!("{}", lines[lines.len().saturating_sub(6)..].join("\n"));
}
