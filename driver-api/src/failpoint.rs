//! Crash injection for the reliability tests.
//!
//! `GD_FAILPOINT=NAME[:N]` makes the process kill itself with SIGKILL the N-th time (default:
//! the first) execution passes the point NAME, so a test can stop `gd` exactly between two
//! steps of an operation and check that the store recovers. When the variable is unset the
//! cost is one initialised `OnceLock` read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn config() -> &'static Option<(String, u64)> {
    static CONF: OnceLock<Option<(String, u64)>> = OnceLock::new();
    CONF.get_or_init(|| {
        let v = std::env::var("GD_FAILPOINT").ok()?;
        match v.split_once(':') {
            Some((name, n)) => Some((name.to_string(), n.parse().unwrap_or(1))),
            None => Some((v, 1)),
        }
    })
}

/// Pass the point `name`.
pub fn hit(name: &str) {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    if let Some((want, n)) = config() {
        if want == name && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            // SIGKILL, not abort or exit: nothing of ours runs after it, as in a real crash.
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    }
}

/// A reader that passes the point `name` on every read (to kill an apply mid-stream).
pub struct FailpointReader<R> {
    pub inner: R,
    pub name: &'static str,
}

impl<R: std::io::Read> std::io::Read for FailpointReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        hit(self.name);
        self.inner.read(buf)
    }
}
