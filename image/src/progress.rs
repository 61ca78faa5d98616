//! Progress of long work (import, export): bytes and layers with rates on a terminal, nothing
//! in a pipe or with `--quiet`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// What long operations report. Every method has a default that does nothing.
pub trait Progress {
    /// Work begins: `layers` layers to process, `bytes` bytes to read (0 when unknown).
    fn start(&mut self, _what: &str, _layers: usize, _bytes: u64) {}
    /// Layer `index` (from 0) begins; `reused` when it is already stored and costs nothing.
    fn layer(&mut self, _index: usize, _id: &str, _reused: bool) {}
    /// `n` more bytes were read (or written).
    fn bytes(&mut self, _n: u64) {}
    fn finish(&mut self) {}
    /// Why the work should stop now (a signal), checked as bytes flow; the operation then
    /// fails and cleans up like after any other error.
    fn interrupted(&self) -> Option<String> {
        None
    }
}

/// Reports nothing.
pub struct Quiet;
impl Progress for Quiet {}

/// One status line on standard error, redrawn at most ten times a second:
/// `import: layer 2/5  34.1 MiB / 80.0 MiB  12.3 MiB/s`.
pub struct TerminalProgress {
    what: String,
    layers: usize,
    layer: usize,
    reused: usize,
    total: u64,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
}

impl TerminalProgress {
    /// A reporter that draws only when standard error is a terminal and `quiet` is false.
    pub fn for_stderr(quiet: bool) -> Box<dyn Progress> {
        if quiet || !std::io::stderr().is_terminal() {
            Box::new(Quiet)
        } else {
            Box::new(TerminalProgress {
                what: String::new(),
                layers: 0,
                layer: 0,
                reused: 0,
                total: 0,
                done: 0,
                started: Instant::now(),
                drawn: None,
            })
        }
    }

    fn draw(&mut self, force: bool) {
        let now = Instant::now();
        if !force
            && self
                .drawn
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.drawn = Some(now);
        let secs = (now - self.started).as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let total = if self.total > 0 {
            format!(" / {}", human(self.total as f64))
        } else {
            String::new()
        };
        let line = format!(
            "{}: layer {}/{}{}  {}{}  {}/s",
            self.what,
            self.layer.min(self.layers),
            self.layers,
            if self.reused > 0 {
                format!(" ({} already stored)", self.reused)
            } else {
                String::new()
            },
            human(self.done as f64),
            total,
            human(rate),
        );
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[K{line}");
        let _ = e.flush();
    }
}

impl Progress for TerminalProgress {
    fn start(&mut self, what: &str, layers: usize, bytes: u64) {
        self.what = what.to_string();
        self.layers = layers;
        self.total = bytes;
        self.started = Instant::now();
        self.draw(true);
    }
    fn layer(&mut self, index: usize, _id: &str, reused: bool) {
        self.layer = index + 1;
        if reused {
            self.reused += 1;
        }
        self.draw(true);
    }
    fn bytes(&mut self, n: u64) {
        self.done += n;
        self.draw(false);
    }
    fn finish(&mut self) {
        self.draw(true);
        let _ = writeln!(std::io::stderr());
    }
}

/// `12.3 MiB`.
pub fn human(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}
