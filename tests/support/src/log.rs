//! Test logs: quiet unless `TEST_LOG` is set, so a failing test can be rerun with its logs.

use std::sync::Once;

use tracing_subscriber::EnvFilter;

/// With `TEST_LOG` set (to anything), installs a tracing subscriber that writes through the
/// test harness's capture (shown for failing tests, or all with `--nocapture`), filtered by
/// `RUST_LOG` (default `info`). Does nothing without it. Call it at the start of every test:
/// only the first call in a process installs anything.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_none() {
            return;
        }
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        // Another subscriber may already be installed (a test's own): keep it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
