//! A RabbitMQ node of one test's own: the machine's broker started from a temporary
//! directory on its own ports, for faults that would break every other test on the shared
//! broker (a broker killed and started again under load).
//!
//! The node runs as the calling user from `/usr/lib/rabbitmq/bin/rabbitmq-server`
//! (`UDIM_TEST_RABBITMQ_SERVER`); `/usr/sbin/rabbitmq-server` would switch to the `rabbitmq`
//! user and that user's shared directories. With `detached` set the script `exec`s the Erlang
//! VM, so the child is the broker itself: killing it takes the node down at once (its helper
//! processes end with it).
//! Its state (durable queues, persisted messages) lives in the directory and survives a kill.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take: the VM boots in 5 to 10 s on this machine type.
const BOOT: Duration = Duration::from_secs(90);

/// The ports the broker's own CLI tools use for their distribution connections.
const CLI_DIST_PORTS: std::ops::RangeInclusive<u16> = 35672..=35682;

pub struct Node {
    dir: tempfile::TempDir,
    port: u16,
    dist_port: u16,
    child: Option<Child>,
}

fn server() -> String {
    std::env::var("UDIM_TEST_RABBITMQ_SERVER").unwrap_or_else(|_| "/usr/lib/rabbitmq/bin/rabbitmq-server".into())
}

fn free_port() -> u16 {
    loop {
        let port = super::port_for_child();
        if !CLI_DIST_PORTS.contains(&port) {
            return port;
        }
    }
}

impl Node {
    /// Creates the node and starts it; blocks until it accepts AMQP connections.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(dir.path().join("home")).expect("the node's home");
        std::fs::write(dir.path().join("empty"), "").expect("an empty env file");
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("the plugins file");
        std::fs::write(dir.path().join("advanced.config"), "[].\n").expect("the advanced config");
        let mut node = Self {
            dir,
            port: 0,
            dist_port: 0,
            child: None,
        };
        for _ in 0..super::START_ATTEMPTS {
            node.port = free_port();
            node.dist_port = free_port();
            if node.boot() {
                return node;
            }
        }
        panic!(
            "the private RabbitMQ node did not start ({}; UDIM_TEST_RABBITMQ_SERVER): {}",
            server(),
            node.log_text()
        );
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// SIGKILL to the node: nothing is flushed or closed cleanly, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed node again from the same directory, on the same ports.
    pub fn resume(&mut self) {
        assert!(
            self.boot(),
            "the private RabbitMQ node did not start again: {}",
            self.log_text()
        );
    }

    fn boot(&mut self) -> bool {
        let d = self.dir.path();
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{}\nloopback_users.guest = true\n",
                self.port
            ),
        )
        .expect("the node's config");
        let log = std::fs::File::create(d.join("node.log")).expect("the node's log");
        let path = |name: &str| d.join(name).into_os_string();
        let mut command = Command::new(server());
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LANG", "C.UTF-8")
            .env("HOME", path("home"))
            .env("detached", "1")
            .env("RABBITMQ_NODENAME", format!("udimtest_{}@localhost", self.port))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", path("empty"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_MNESIA_DIR", path("mnesia/node"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_ENABLED_PLUGINS", "")
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", path("plugins"))
            .env("RABBITMQ_PID_FILE", path("node.pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log, twice"))
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{} (set UDIM_TEST_RABBITMQ_SERVER): {e}", server()));
        self.child = Some(child);
        let deadline = Instant::now() + BOOT;
        while Instant::now() < deadline {
            if !self.running() {
                self.child = None;
                return false;
            }
            if answers_amqp(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.kill();
        false
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(Path::new(self.dir.path()).join("node.log")).unwrap_or_default()
    }
}

/// Whether the broker on `port` answers the AMQP 0-9-1 protocol header with a method frame
/// (its `Connection.Start`): not only is the listener open, the broker behind it serves.
fn answers_amqp(port: u16) -> bool {
    let Ok(mut socket) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut frame_type = [0u8; 1];
    socket.set_read_timeout(Some(Duration::from_secs(2))).is_ok()
        && socket.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
        && socket.read_exact(&mut frame_type).is_ok()
        && frame_type[0] == 1
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
