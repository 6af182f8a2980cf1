//! The stock tus clients, each driven by its script under `tests/tus`: tuspy (from PyPI) and
//! tus-js-client (from npm), installed by `scripts/test`. Both take
//! `ENDPOINT TOKEN FILE CHUNK_SIZE STOP_AT [UPLOAD_URL]`, upload FILE in CHUNK_SIZE PATCHes up to
//! byte STOP_AT (resuming UPLOAD_URL when given) and print `{"url", "offset", ...}` as JSON; a
//! client that reports failure exits non-zero and prints `{"url", "error"}`.

use std::process::Command;

use serde_json::Value;

pub struct StockClient {
    pub name: &'static str,
    program: String,
    script: &'static str,
    pub chunk_size: u64,
    install_hint: &'static str,
    /// The data category its script's metadata names.
    pub category: &'static str,
}

impl StockClient {
    pub fn tuspy() -> Self {
        Self {
            name: "tuspy",
            program: std::env::var("UDIM_TEST_PYTHON")
                .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into()),
            script: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tus/client.py"),
            chunk_size: 256 * 1024,
            install_hint: "python with tuspy (scripts/test installs it into .venv; UDIM_TEST_PYTHON)",
            category: "video",
        }
    }

    pub fn tus_js() -> Self {
        Self {
            name: "tus-js-client",
            program: std::env::var("UDIM_TEST_NODE").unwrap_or_else(|_| "node".into()),
            script: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tus/js/client.mjs"),
            chunk_size: 192 * 1024,
            install_hint: "node with tus-js-client (scripts/test installs it into tests/tus/js; UDIM_TEST_NODE)",
            category: "documents",
        }
    }

    pub fn both() -> [Self; 2] {
        [Self::tuspy(), Self::tus_js()]
    }

    /// `len` bytes that the type sniffing admits for the file type its script declares.
    pub fn sample(&self, len: usize) -> Vec<u8> {
        let mut data = if self.category == "documents" {
            b"%PDF-1.7\n".to_vec()
        } else {
            Vec::new()
        };
        data.extend(super::distinctive_bytes(len - data.len()));
        data
    }

    /// Runs the client; `Err` with the JSON it printed (the upload's `url` and the `error`)
    /// when it reports failure.
    pub fn try_run(
        &self,
        endpoint: &str,
        token: &str,
        file: &std::path::Path,
        stop_at: u64,
        url: Option<&str>,
    ) -> Result<Value, Value> {
        let mut cmd = Command::new(&self.program);
        cmd.arg(self.script)
            .arg(endpoint)
            .arg(token)
            .arg(file)
            .arg(self.chunk_size.to_string())
            .arg(stop_at.to_string());
        if let Some(url) = url {
            cmd.arg(url);
        }
        let output = cmd.output().expect(self.install_hint);
        let printed: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
            panic!(
                "{} printed no JSON: {}{}",
                self.name,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        if output.status.success() {
            Ok(printed)
        } else {
            Err(printed)
        }
    }

    /// Runs the client, which must succeed.
    pub fn run(&self, endpoint: &str, token: &str, file: &std::path::Path, stop_at: u64, url: Option<&str>) -> Value {
        self.try_run(endpoint, token, file, stop_at, url)
            .unwrap_or_else(|e| panic!("{} failed: {e}", self.name))
    }
}
