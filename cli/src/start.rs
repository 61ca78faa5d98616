//! How the `gd` process starts.
//!
//! A container runtime starts `gd` once per command, often many times a second, so the start
//! is a visible part of every short command: `gd mount` of a layer whose view needs no mount
//! takes about 1.3 ms here, and std's own start before `main` took 0.03-0.1 ms of it
//! (medians of 1,000 runs, of gd and of a Rust hello world), most of that in glibc reading
//! and parsing /proc/self/maps to find the main thread's stack (std uses it to print a
//! message on stack overflow). So the binary has its own C `main` (see main.rs)
//! and does here the parts of std's start that gd depends on: file descriptors 0-2 open, and
//! SIGPIPE ignored. What is given up: a stack overflow of the main thread ends in SIGSEGV
//! instead of a message and SIGABRT.

/// Make sure descriptors 0, 1 and 2 are open, on /dev/null when they were not: otherwise the
/// first file gd opens would get one of them, and its output or messages would land in it.
pub fn standard_fds_open() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is an array of three initialised pollfd; poll only writes `revents`.
    let polled = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    for p in fds {
        let closed = if polled == -1 {
            // SAFETY: F_GETFD only asks whether the descriptor number is open.
            unsafe { libc::fcntl(p.fd, libc::F_GETFD) == -1 }
        } else {
            p.revents & libc::POLLNVAL != 0
        };
        // The lowest free number is this one: the ones below it are open by now.
        if closed
            && std::fs::File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(std::mem::forget)
                .is_err()
        {
            std::process::abort();
        }
    }
}

/// Ignore SIGPIPE, as std does: a closed reader (`gd diff L | head -c 10`) then shows up as
/// an EPIPE error that gd handles (see `output::stdout_broken`) rather than as a kill. Child
/// processes still start with SIGPIPE at its default (std's `Command` resets it).
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}
