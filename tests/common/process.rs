//! The real `udim` binary as a child process, for what only a process shows: a SIGKILL, a
//! SIGTERM, several replicas, its memory.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const UDIM: &str = env!("CARGO_BIN_EXE_udim");

/// `udim serve`, killed when dropped.
pub struct Process {
    pub child: Child,
    pub base: String,
    /// Every log line the process has written so far.
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `udim serve` with `command`'s environment on a port the child binds itself (port
    /// 0), and learns the port from the child's own log line: no other process can take it
    /// meanwhile. The process must answer `/healthz`.
    pub async fn serve(command: impl Fn() -> Command) -> Self {
        use std::io::BufRead as _;
        let mut child = command()
            .env("UDIM_SERVER__LISTEN", "127.0.0.1:0")
            .env("UDIM_LOG__FORMAT", "json")
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the udim binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // Reads the log for the address, and keeps every line (draining it, so the child never
        // blocks on a full pipe).
        let kept = logs.clone();
        let reader = std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(sender) = &tx
                    && let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line)
                    && entry["fields"]["message"] == "udim is listening"
                {
                    let _ = sender.send(entry["fields"]["addr"].as_str().unwrap_or_default().to_owned());
                    tx = None;
                }
                kept.lock().unwrap().push(line);
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("udim serve logs the address it listens on");
        let process = Self {
            child,
            base: format!("http://{addr}"),
            logs,
            reader: Some(reader),
        };
        for _ in 0..400 {
            if reqwest::get(format!("{}/healthz", process.base))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("udim serve did not answer /healthz");
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

    /// Stops the process and returns everything it logged, one line per entry.
    pub fn stop_and_read_logs(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.logs.lock().unwrap().join("\n")
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

/// The binary on the embedded default over `data_dir`, with the repository's `config/`.
pub fn embedded(data_dir: &std::path::Path) -> Command {
    let mut command = udim();
    command
        .env("UDIM_DATA_DIR", data_dir)
        .env("UDIM_CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
    command
}

/// A command for the binary with nothing from the test's environment but `PATH`.
pub fn udim() -> Command {
    let mut command = Command::new(UDIM);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}
