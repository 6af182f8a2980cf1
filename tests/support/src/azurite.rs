//! Starts Azurite's blob service (the Azure Blob Storage stand-in) for one test, on a free
//! port, in memory.
//!
//! `scripts/test` installs Azurite 3.35 (the last for Node 20) into `tests/azurite`;
//! `UDIM_TEST_AZURITE_BLOB` overrides the `azurite-blob` program.

use std::process::{Child, Command};

/// Azurite's well-known development account and its key.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCESS_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite blob service; killed on drop.
pub struct Azurite {
    child: Child,
    /// `http://127.0.0.1:<port>`: what object_store's emulator mode reads from
    /// `AZURITE_BLOB_STORAGE_URL`.
    pub url: String,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Azurite's blob service and waits until it answers.
pub async fn start() -> Azurite {
    let program = super::installed_program("UDIM_TEST_AZURITE_BLOB", "tests/azurite/node_modules/.bin/azurite-blob");
    let (child, port) = super::start_http_child(
        "azurite-blob",
        |port| {
            let mut command = Command::new(&program);
            command
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                // Never to the internet (it reports telemetry otherwise), nothing on disk.
                .args([
                    "--inMemoryPersistence",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--silent",
                ]);
            command
        },
        // Any HTTP answer (an unsigned request gets 4xx) means it is up.
        |port| format!("http://127.0.0.1:{port}/{ACCOUNT}?comp=list"),
        150,
    )
    .await;
    Azurite {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

impl Azurite {
    /// Creates `container` in the development account.
    pub async fn create_container(&self, container: &str) {
        let response = self
            .signed(reqwest::Method::PUT, container, &[("restype", "container")])
            .send()
            .await
            .expect("Azurite answers");
        assert!(
            response.status().is_success(),
            "container {container}: {}",
            response.status()
        );
    }

    /// The names of the committed blobs in `container`.
    pub async fn blob_names(&self, container: &str) -> Vec<String> {
        let listing = self
            .signed(
                reqwest::Method::GET,
                container,
                &[("comp", "list"), ("restype", "container")],
            )
            .send()
            .await
            .expect("Azurite answers")
            .text()
            .await
            .expect("a listing");
        listing
            .split("<Name>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Name>").map(|(name, _)| name.to_owned()))
            .collect()
    }

    /// A request to `path` under the account, signed with its key (Shared Key, as Azure
    /// Storage defines it for a request without a body). `query` is in the canonical order:
    /// sorted by name.
    fn signed(&self, method: reqwest::Method, path: &str, query: &[(&str, &str)]) -> reqwest::RequestBuilder {
        use base64::Engine as _;
        const VERSION: &str = "2021-08-06";
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let mut resource = format!("/{ACCOUNT}/{ACCOUNT}/{path}");
        for (name, value) in query {
            resource.push_str(&format!("\n{name}:{value}"));
        }
        // The verb, eleven standard headers left empty, the x-ms- headers, the resource.
        let to_sign = format!("{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{VERSION}\n{resource}");
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &b64.decode(ACCESS_KEY).expect("the development key is base64"),
        );
        let signature = b64.encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()));
        let query: Vec<String> = query.iter().map(|(name, value)| format!("{name}={value}")).collect();
        reqwest::Client::new()
            .request(method, format!("{}/{ACCOUNT}/{path}?{}", self.url, query.join("&")))
            .header("x-ms-date", date)
            .header("x-ms-version", VERSION)
            .header("authorization", format!("SharedKey {ACCOUNT}:{signature}"))
    }
}
