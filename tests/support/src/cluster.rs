//! A PostgreSQL cluster of one test's own: `initdb` into a temporary directory, its own port,
//! for faults that would break every other test on the shared cluster (a restart, an outage).
//! The binaries are the machine's (`UDIM_TEST_PG_BIN`, or the newest under
//! `/usr/lib/postgresql/*/bin`); as root the cluster runs as the `postgres` user, since
//! PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn binaries() -> PathBuf {
    if let Ok(dir) = std::env::var("UDIM_TEST_PG_BIN") {
        return dir.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    found
        .pop()
        .expect("no PostgreSQL binaries under /usr/lib/postgresql: set UDIM_TEST_PG_BIN")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

impl Cluster {
    /// Creates the cluster and starts it; blocks until it accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let as_postgres = running_as_root();
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                chown.success(),
                "cannot hand the cluster's directory to the postgres user"
            );
        }
        let mut cluster = Self {
            bin: binaries(),
            port: super::port_for_child(),
            as_postgres,
            dir,
        };
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]);
        for _ in 0..super::START_ATTEMPTS {
            if cluster.start_server() {
                return cluster;
            }
            // Most likely another process took the port meanwhile: try a fresh one.
            cluster.port = super::port_for_child();
        }
        panic!("the private cluster did not start: {}", cluster.log_text());
    }

    fn start_server(&self) -> bool {
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &self.log(), "-o", &self.options()])
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the cluster (fast shutdown: open connections are terminated).
    pub fn stop(&self) {
        assert!(self.pg_ctl(&["stop", "-w", "-m", "fast"]), "{}", self.log_text());
    }

    /// Starts the stopped cluster again, on the same port.
    pub fn resume(&self) {
        assert!(
            self.start_server(),
            "the private cluster did not start again: {}",
            self.log_text()
        );
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn log(&self) -> String {
        self.dir.path().join("postgres.log").to_string_lossy().into_owned()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        )
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let data = self.data();
        let mut all = vec!["-D", &data];
        all.extend_from_slice(args);
        self.command("pg_ctl", &all)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program, args).output().expect(program);
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command.args(args).current_dir(Path::new("/"));
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-w", "-m", "immediate"]);
    }
}
