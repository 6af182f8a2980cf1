//! Starts moto in server mode (the S3, KMS and SQS stand-in) for one test, on a free port.
//!
//! `scripts/test` installs moto into the workspace's `.venv`; `UDIM_TEST_MOTO` overrides it.

use std::process::{Child, Command};

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

/// Starts moto and waits until it answers.
pub async fn start() -> Moto {
    let program = super::installed_program("UDIM_TEST_MOTO", ".venv/bin/moto_server");
    let (child, port) = super::start_http_child(
        "moto",
        |port| {
            let mut command = Command::new(&program);
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            command
        },
        |port| format!("http://127.0.0.1:{port}/moto-api/"),
        100,
    )
    .await;
    Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    }
}
