//! Starts moto in server mode (the S3, KMS and SQS stand-in) for one test, on a free port.
//!
//! `scripts/test` installs moto into the workspace's `.venv`; `UDIM_TEST_MOTO` overrides it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The credentials and region moto accepts (any will do); tests pass them to the AWS
/// clients they build and to the service's settings, never through the environment.
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";

/// A running moto server; killed on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`: the endpoint for every AWS client of the test.
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> PathBuf {
    if let Some(binary) = std::env::var_os("UDIM_TEST_MOTO") {
        return binary.into();
    }
    // This crate's manifest directory lies inside the workspace that holds `.venv`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join(".venv/bin/moto_server"))
        .find(|binary| binary.exists())
        .expect("moto_server must be installed (scripts/test puts it in .venv; UDIM_TEST_MOTO)")
}

/// Starts moto and waits until it answers.
pub async fn start() -> Moto {
    for _ in 0..super::START_ATTEMPTS {
        let port = super::port_for_child();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must start");
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if reqwest::get(format!("{}/moto-api/", moto.endpoint)).await.is_ok() {
                return moto;
            }
            if moto.child.try_wait().ok().flatten().is_some() {
                // It exited: most likely another process took the port meanwhile.
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("moto did not start");
}
