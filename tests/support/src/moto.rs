//! Starts moto in server mode (the S3, KMS and SQS stand-in) for one test, on a free port.
//!
//! `scripts/test` installs moto into the workspace's `.venv`; `UDIM_TEST_MOTO` overrides it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// Starts moto and waits until it answers; sets the test credentials and region for the AWS
/// SDK's default chain.
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
                // SAFETY: set before any AWS client exists, the same values in every test of a binary.
                unsafe {
                    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
                    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
                    std::env::set_var("AWS_REGION", "us-east-1");
                }
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
