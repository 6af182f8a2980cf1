//! Starts moto in server mode (the S3, KMS and SQS stand-in) for one test, on a free port.
//! Shared by the root crate's `aws` test and the AWS providers' conformance tests via `#[path]`.
//!
//! `scripts/test` installs moto into the workspace's `.venv`; `UDIM_TEST_MOTO` overrides it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Moto {
    child: Child,
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
    // Either crate's manifest directory lies inside the workspace that holds `.venv`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join(".venv/bin/moto_server"))
        .find(|binary| binary.exists())
        .expect("moto_server must be installed (scripts/test puts it in .venv; UDIM_TEST_MOTO)")
}

pub async fn start() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(moto_binary())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server must start");
    let moto = Moto {
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto did not start");
}
