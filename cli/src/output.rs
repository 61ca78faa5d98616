//! Writing to standard output: broken-pipe detection, tables, sizes and one-line errors.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_BROKEN: AtomicBool = AtomicBool::new(false);

/// Standard output, remembering whether the reader went away, so that `gd diff x | head`
/// ends quietly instead of reporting an error the user caused on purpose.
pub struct Stdout;

fn note<T>(r: io::Result<T>) -> io::Result<T> {
    if let Err(e) = &r {
        if e.kind() == io::ErrorKind::BrokenPipe {
            STDOUT_BROKEN.store(true, Ordering::Relaxed);
        }
    }
    r
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        note(io::stdout().write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        note(io::stdout().flush())
    }
}

pub fn stdout_broken() -> bool {
    STDOUT_BROKEN.load(Ordering::Relaxed)
}

/// The error as one line. The library's messages already include their causes, so a cause
/// is appended only when its text is not there yet.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table<const N: usize>(
    out: &mut impl Write,
    header: [&str; N],
    rows: &[[String; N]],
) -> anyhow::Result<()> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 < N {
                l.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                l.push_str(cell);
            }
        }
        text.push_str(l.trim_end());
        text.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// Sizes as `docker` prints them: SI units, three significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else if value < 10.0 {
        format!("{value:.2}{}", UNITS[unit])
    } else if value < 100.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1.00kB");
        assert_eq!(human_size(12_345), "12.3kB");
        assert_eq!(human_size(123_456_789), "123MB");
    }

    #[test]
    fn one_line_does_not_repeat_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(io).context("cannot open x.tar");
        assert_eq!(one_line(&e), "cannot open x.tar: No such file");
        let lib = driver_api::Error::io("reading", "/a", std::io::Error::other("boom"));
        assert_eq!(one_line(&anyhow::Error::new(lib)), "reading on /a: boom");
    }
}

/// Write the archive that `produce` makes to `output`, or to stdout when that is None or
/// `-` (refused on a terminal: a tar there is never what the user meant). A regular file
/// appears whole or not at all, and a device or fifo is written in place (see
/// [`OutputFile`]). Ctrl-C is caught for the duration, so the producer unwinds cleanly.
pub fn write_archive(
    output: Option<&std::path::Path>,
    produce: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use driver_api::fsutil::OutputFile;
    use std::io::{BufWriter, IsTerminal};

    use crate::interrupt::{self, Checked};

    let Some(path) = output.filter(|p| *p != std::path::Path::new("-")) else {
        if io::stdout().is_terminal() {
            anyhow::bail!(
                "refusing to write a tar archive to a terminal; redirect standard output or use -o FILE"
            );
        }
        interrupt::catch();
        let mut w = Checked(BufWriter::with_capacity(1 << 20, Stdout));
        produce(&mut w)?;
        w.flush()?;
        return Ok(());
    };
    interrupt::catch();
    let mut out =
        OutputFile::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = Checked(BufWriter::with_capacity(1 << 20, out.file()));
    produce(&mut w)?;
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    drop(w);
    out.commit()
        .with_context(|| format!("cannot write {}", path.display()))
}
