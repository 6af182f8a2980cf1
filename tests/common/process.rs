//! The real `udim` binary as a child process, for what only a process shows: a SIGKILL, a
//! SIGTERM, several replicas, its memory.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const UDIM: &str = env!("CARGO_BIN_EXE_udim");

/// `udim serve`, killed when dropped.
pub struct Process {
    pub child: Child,
    pub base: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `udim serve` with `command`'s environment and a port of its own. A port another
    /// process took between being picked and being bound makes the child exit: then another
    /// port is tried. The process must answer `/healthz` and still be running.
    pub async fn serve(command: impl Fn() -> Command) -> Self {
        for _ in 0..3 {
            let port = udim_testkit::port_for_child();
            let child = command()
                .env("UDIM_SERVER__LISTEN", format!("127.0.0.1:{port}"))
                .arg("serve")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("the udim binary");
            let mut process = Self {
                child,
                base: format!("http://127.0.0.1:{port}"),
            };
            for _ in 0..400 {
                if process.child.try_wait().unwrap().is_some() {
                    break;
                }
                if reqwest::get(format!("{}/healthz", process.base))
                    .await
                    .is_ok_and(|r| r.status() == 200)
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if process.child.try_wait().unwrap().is_none() {
                        return process;
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("udim serve did not start");
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill_9(mut self) {
        self.signal("KILL");
        self.child.wait().unwrap();
    }

    /// The most memory the process has held resident so far (VmHWM), in bytes.
    pub fn peak_resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kib * 1024
    }
}

/// A command for the binary with nothing from the test's environment but `PATH`.
pub fn udim() -> Command {
    let mut command = Command::new(UDIM);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}
