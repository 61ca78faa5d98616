//! Ctrl-C (and SIGTERM, SIGHUP) during an operation that holds something: a mount count
//! (`manifest` of a layer), a half-written `FILE.tmp` (`diff -o`), a layer being applied.
//! Dying on the spot would leave those behind, so while such an operation runs the signals
//! only raise a flag, and the operation's reader or writer fails at its next call; the error
//! unwinds through the store's rollback and our own clean-up like any other.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNAL.store(sig, Ordering::Relaxed);
}

/// From now on, SIGINT, SIGTERM and SIGHUP set the flag instead of killing the process.
pub fn catch() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic. No
        // SA_RESTART, so a read blocked on a stalled pipe returns EINTR and sees the flag.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The signal received since `catch`, if any.
pub fn received() -> Option<i32> {
    match SIGNAL.load(Ordering::Relaxed) {
        0 => None,
        sig => Some(sig),
    }
}

fn check() -> io::Result<()> {
    match received() {
        // Not ErrorKind::Interrupted: readers retry that.
        Some(sig) => Err(io::Error::other(format!("interrupted by signal {sig}"))),
        None => Ok(()),
    }
}

/// A reader or writer that fails once a signal was received.
pub struct Checked<T>(pub T);

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        check()?;
        let r = self.0.read(buf);
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::Interrupted) {
            check()?;
        }
        r
    }
}

impl<W: Write> Write for Checked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        check()?;
        let r = self.0.write(buf);
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::Interrupted) {
            check()?;
        }
        r
    }
    fn flush(&mut self) -> io::Result<()> {
        check()?;
        self.0.flush()
    }
}
