//! Starts a real clamd for one test, on a free loopback port, with only the EICAR test
//! signatures (no signature download is possible here, and a full database takes a minute to
//! load).
//!
//! `/usr/sbin/clamd` (Debian's `clamav-daemon`, which `scripts/test` installs); `UDIM_TEST_CLAMD`
//! overrides it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// ClamAV's hash signature of the 68-byte EICAR file and a body signature of the same bytes,
/// so EICAR is found alone and inside a larger stream.
const EICAR_SIGNATURES: [(&str, &str); 2] = [
    (
        "eicar.hdb",
        "44d88612fea8a8f36de82e1278abb02f:68:Custom.EICAR-Test-File-hdb\n",
    ),
    (
        "eicar.ndb",
        "Custom.EICAR-Test-File-ndb:0:*:58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152442d414e544956495255532d544553542d46494c452124482b482a\n",
    ),
];

fn clamd_binary() -> String {
    std::env::var("UDIM_TEST_CLAMD").unwrap_or_else(|_| "/usr/sbin/clamd".into())
}

/// A running clamd with only the EICAR signatures; killed on drop.
pub struct Clamd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Clamd {
    /// Starts clamd scanning streams up to `max_stream` (clamd's `StreamMaxLength`: `10M`,
    /// `1M`, ...) and waits until it answers `PING`.
    pub async fn start(max_stream: &str) -> Self {
        for _ in 0..super::START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let port = super::port_for_child();
            let child = spawn(dir.path(), port, max_stream);
            let mut clamd = Self { child, port, _dir: dir };
            for _ in 0..300 {
                if ping(port).await {
                    return clamd;
                }
                if clamd.child.try_wait().ok().flatten().is_some() {
                    // It exited: most likely another process took the port meanwhile.
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("clamd did not start; run it by hand with the configuration of Clamd::start to see why");
    }

    /// The TCP port clamd listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: clamd dies at once, in the middle of whatever it was scanning.
    pub fn kill(&mut self) {
        self.child.kill().expect("clamd is killed");
        self.child.wait().expect("clamd is reaped");
    }
}

fn spawn(dir: &Path, port: u16, max_stream: &str) -> Child {
    let db = dir.join("db");
    std::fs::create_dir_all(&db).expect("create the signature directory");
    for (file, signature) in EICAR_SIGNATURES {
        std::fs::write(db.join(file), signature).expect("write a signature file");
    }
    let conf = dir.join("clamd.conf");
    std::fs::write(
        &conf,
        format!(
            "Foreground yes\nTCPSocket {port}\nTCPAddr 127.0.0.1\nDatabaseDirectory {}\nUser root\n\
             StreamMaxLength {max_stream}\nLogFile {}\nPidFile {}\n",
            db.display(),
            dir.join("clamd.log").display(),
            dir.join("clamd.pid").display()
        ),
    )
    .expect("write clamd.conf");
    Command::new(clamd_binary())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("clamd must be installed for the tests (apt-get install clamav-daemon; UDIM_TEST_CLAMD)")
}

/// `zPING` → `PONG`: clamd has loaded its signatures and accepts scans.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"zPING\0").await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        std::io::Result::Ok(reply.starts_with(b"PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}
