//! What the workspace's tests share: fresh PostgreSQL databases ([`postgres`]), a private
//! PostgreSQL cluster to restart ([`cluster`]), a private RabbitMQ node to kill
//! ([`rabbitmq`]), a real clamd ([`clamd`]), moto ([`moto`]) and Azurite ([`azurite`]) started
//! per test, free ports ([`free_listener`]) and test logs ([`log`]).
//!
//! Every stand-in is the real program on loopback; a test that cannot start one fails with
//! the override to set, it never skips. Each launcher is a feature (all on by default) so a
//! crate's tests build only what they start.

#[cfg(feature = "azurite")]
pub mod azurite;
#[cfg(feature = "clamd")]
pub mod clamd;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod log;
#[cfg(feature = "moto")]
pub mod moto;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

use std::net::TcpListener;

/// Runs `cleanup` to the end on a thread with a runtime of its own, for `Drop`: it cannot
/// await, and may run inside (or outside) a test's runtime. Never panics, since it may run
/// while the test is already panicking: a failure is printed with `what`.
pub fn clean_up_aside<F>(what: &str, cleanup: F)
where
    F: Future<Output = Result<(), String>> + Send + 'static,
{
    let finished = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(cleanup)
    })
    .join();
    match finished {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("udim-testkit: could not clean up {what}: {e}"),
        Err(_) => eprintln!("udim-testkit: cleaning up {what} panicked"),
    }
}

/// A listener bound to a free port on 127.0.0.1, to hand to the server under test (for
/// tokio: `set_nonblocking(true)` then `tokio::net::TcpListener::from_std`). Keeping the
/// bound socket, instead of noting port 0's choice and binding it again, leaves no moment in
/// which another test can take the port.
pub fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1")
}

/// A free port for something that binds its own socket (a child process such as clamd,
/// moto or `udim serve`, or a stand-in opened later): it cannot take over a listener, so the
/// port is released for it. Another test may take it meanwhile; the launchers here retry on a
/// fresh port when their child exits at once for that reason.
pub fn port_for_child() -> u16 {
    free_listener().local_addr().expect("the listener's address").port()
}

/// A program `scripts/test` installs inside the workspace, at `in_workspace` below its root,
/// unless the environment variable `override_var` names another.
#[cfg(any(feature = "moto", feature = "azurite"))]
fn installed_program(override_var: &str, in_workspace: &str) -> std::path::PathBuf {
    if let Some(program) = std::env::var_os(override_var) {
        return program.into();
    }
    // This crate's manifest directory lies inside the workspace.
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join(in_workspace))
        .find(|program| program.exists())
        .unwrap_or_else(|| panic!("{in_workspace} must be installed (scripts/test installs it; {override_var})"))
}

/// Starts an HTTP stand-in: `command` for a free port, spawned with its output discarded,
/// until `probe` at that port gets any HTTP answer (within `patience` tenths of a second).
/// A child that exits at once most likely lost its port to another process meanwhile: it is
/// tried again on a fresh one. Returns the child and its port.
#[cfg(any(feature = "moto", feature = "azurite"))]
async fn start_http_child(
    what: &str,
    command: impl Fn(u16) -> std::process::Command,
    probe: impl Fn(u16) -> String,
    patience: usize,
) -> (std::process::Child, u16) {
    use std::process::Stdio;
    for _ in 0..START_ATTEMPTS {
        let port = port_for_child();
        let mut child = command(port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} must start: {e}"));
        for _ in 0..patience {
            if reqwest::get(probe(port)).await.is_ok() {
                return (child, port);
            }
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("{what} did not start");
}

/// How often a launcher tries a fresh port before giving up.
#[cfg(any(
    feature = "clamd",
    feature = "moto",
    feature = "cluster",
    feature = "rabbitmq",
    feature = "azurite"
))]
const START_ATTEMPTS: usize = 3;
