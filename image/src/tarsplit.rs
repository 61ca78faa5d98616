//! Reproducing a layer's original tar bytes, the way Docker's tar-split does.
//!
//! While a layer is imported, its uncompressed tar passes through a [`SplitRecorder`] on its
//! way to `apply_diff`. The recorder keeps every byte that is not regular-file content
//! (headers, PAX and GNU extension records, padding, the end-of-archive blocks and whatever
//! follows them) and, for each file's content, only its path, length and sha256. At export,
//! [`reassemble`] writes the headers back and reads each file's content from the layer's
//! mounted view, where the applier put it, so the tar comes out byte-identical (and its diff
//! id holds) while the store keeps only one copy of the content.
//!
//! The record file is a zstd stream:
//!
//! ```text
//! "GDTS1\n"
//! 'S' len:varint bytes                          raw bytes, written as they are
//! 'F' size:varint sha256:32 len:varint path     `size` bytes of content, from the view at `path`
//! 'E' sha256:32 size:varint                     the end: diff id and length of the whole tar
//! ```
//!
//! Content that the applier does not put at its own path in the view (whiteout files, aufs
//! hardlink targets under `.wh..wh.*`, GNU sparse entries, content of non-file entries) is
//! kept as raw bytes. Memory stays bounded: raw bytes are flushed every [`SEGMENT_MAX`] bytes.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use driver_api::archive::beneath;
use rustix::fs::OFlags;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{ImageError, Result};

const MAGIC: &[u8] = b"GDTS1\n";
/// Raw bytes are written out in records of at most this many bytes.
const SEGMENT_MAX: usize = 1 << 20;
/// Most bytes of one entry's extension headers (PAX, GNU long names) that are parsed; the
/// applier refuses the same budget.
const META_MAX: u64 = 16 << 20;
const BLOCK: usize = 512;

enum State {
    /// Collecting the next 512-byte header block.
    Header,
    /// Content of a PAX or GNU long-name header: kept raw and parsed for the next entry.
    Meta {
        kind: u8,
        remaining: u64,
        pad: u64,
        buf: Vec<u8>,
    },
    /// Content kept as raw bytes.
    Raw { remaining: u64, pad: u64 },
    /// A regular file's content: hashed, not kept.
    File {
        remaining: u64,
        pad: u64,
        size: u64,
        path: Vec<u8>,
        hash: Sha256,
    },
    /// Padding after content.
    Pad { remaining: u64 },
    /// Old GNU sparse extension headers (512-byte blocks between a sparse entry's header and
    /// its data, not counted in its size), then `size` bytes of data kept raw.
    SparseExt { size: u64 },
    /// After the first zero block: everything is kept raw.
    Trailer,
}

/// What the extension headers say about the next entry.
#[derive(Default)]
struct Overrides {
    path: Option<Vec<u8>>,
    size: Option<u64>,
    sparse: bool,
}

/// Passes a decompressed layer tar through, hashing it (the diff id) and recording the split.
pub struct SplitRecorder<R> {
    inner: R,
    hash: Sha256,
    size: u64,
    state: State,
    header: Vec<u8>,
    next: Overrides,
    seg: Vec<u8>,
    out: zstd::stream::write::Encoder<'static, BufWriter<File>>,
    files: u64,
}

impl<R: Read> SplitRecorder<R> {
    /// Record into `out` (a fresh file).
    pub fn new(inner: R, out: File) -> io::Result<Self> {
        let mut enc = zstd::stream::write::Encoder::new(BufWriter::new(out), 3)?;
        enc.write_all(MAGIC)?;
        Ok(SplitRecorder {
            inner,
            hash: Sha256::new(),
            size: 0,
            state: State::Header,
            header: Vec::with_capacity(BLOCK),
            next: Overrides::default(),
            seg: Vec::new(),
            out: enc,
            files: 0,
        })
    }

    /// Read the rest of the stream (the applier stops at the end-of-archive block; the diff
    /// id covers every byte).
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    /// Finish the record file; returns the diff id and the length of the tar.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        match &self.state {
            State::Header | State::Trailer => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the layer tar ends in the middle of an entry",
                ))
            }
        }
        if !self.header.is_empty() {
            // A partial block at the very end: keep it as it is.
            let h = std::mem::take(&mut self.header);
            self.raw(&h)?;
        }
        self.flush_segment()?;
        let digest = Digest::from_hash(self.hash.clone());
        self.out.write_all(b"E")?;
        self.out
            .write_all(&hex::decode(digest.hex()).expect("hex"))?;
        write_varint(&mut self.out, self.size)?;
        let mut w = self.out.finish()?;
        w.flush()?;
        w.get_ref().sync_all()?;
        Ok((digest, self.size))
    }

    /// After a failed apply: read the rest of the stream without parsing it, for the diff id
    /// of the whole tar (a corrupt tar is better reported as not the one the image names).
    pub fn digest_rest(mut self) -> io::Result<(Digest, u64)> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.inner.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.hash.update(&buf[..n]);
            self.size += n as u64;
        }
        Ok((Digest::from_hash(self.hash), self.size))
    }

    /// Regular files whose content is referenced rather than kept.
    pub fn files(&self) -> u64 {
        self.files
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.seg.extend_from_slice(bytes);
        if self.seg.len() >= SEGMENT_MAX {
            self.flush_segment()?;
        }
        Ok(())
    }

    fn flush_segment(&mut self) -> io::Result<()> {
        if self.seg.is_empty() {
            return Ok(());
        }
        self.out.write_all(b"S")?;
        write_varint(&mut self.out, self.seg.len() as u64)?;
        self.out.write_all(&self.seg)?;
        self.seg.clear();
        Ok(())
    }

    /// Run the parser over bytes that just went through.
    fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                State::Trailer => {
                    let d = data;
                    data = &[];
                    self.raw(d)?;
                }
                State::Header => {
                    let take = (BLOCK - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.header.len() == BLOCK {
                        let h = std::mem::take(&mut self.header);
                        self.raw(&h)?;
                        self.on_header(&h)?;
                        self.header = h;
                        self.header.clear();
                    }
                }
                State::SparseExt { size } => {
                    let size = *size;
                    let take = (BLOCK - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    let d = &data[..take];
                    data = &data[take..];
                    if self.header.len() == BLOCK {
                        // `isextended` of this block: another one follows.
                        if self.header[504] == 0 {
                            self.state = content_state_raw(size, pad_of(size));
                        }
                        self.header.clear();
                    }
                    self.raw(d)?;
                }
                State::Pad { remaining } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                    let d = &data[..take];
                    data = &data[take..];
                    self.raw(d)?;
                }
                State::Raw { remaining, pad } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = after_content(*pad);
                    }
                    let d = &data[..take];
                    data = &data[take..];
                    self.raw(d)?;
                }
                State::Meta {
                    kind,
                    remaining,
                    pad,
                    buf,
                } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    buf.extend_from_slice(&data[..take]);
                    *remaining -= take as u64;
                    let d = &data[..take];
                    data = &data[take..];
                    if *remaining == 0 {
                        let (kind, pad, buf) = (*kind, *pad, std::mem::take(buf));
                        self.state = after_content(pad);
                        self.on_meta(kind, &buf);
                    }
                    self.raw(d)?;
                }
                State::File {
                    remaining,
                    pad,
                    size,
                    path,
                    hash,
                } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    hash.update(&data[..take]);
                    *remaining -= take as u64;
                    data = &data[take..];
                    if *remaining == 0 {
                        let (pad, size, path, hash) =
                            (*pad, *size, std::mem::take(path), hash.clone());
                        self.state = after_content(pad);
                        self.flush_segment()?;
                        self.out.write_all(b"F")?;
                        write_varint(&mut self.out, size)?;
                        self.out.write_all(&hash.finalize())?;
                        write_varint(&mut self.out, path.len() as u64)?;
                        self.out.write_all(&path)?;
                        self.files += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn on_header(&mut self, h: &[u8]) -> io::Result<()> {
        if h.iter().all(|&b| b == 0) {
            self.state = State::Trailer;
            return Ok(());
        }
        let typeflag = h[156];
        let next = std::mem::take(&mut self.next);
        let header_size = parse_size(&h[124..136]).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "tar header with an invalid size field",
            )
        })?;
        let pad = |size: u64| (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        match typeflag {
            b'x' | b'L' => {
                if header_size > META_MAX {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("extension header of {header_size} bytes (more than {META_MAX})"),
                    ));
                }
                // Extension headers add up until the entry they describe.
                self.next = next;
                self.state = if header_size == 0 {
                    State::Header
                } else {
                    State::Meta {
                        kind: typeflag,
                        remaining: header_size,
                        pad: pad(header_size),
                        buf: Vec::new(),
                    }
                };
                return Ok(());
            }
            b'g' | b'K' => {
                self.next = next;
                self.state = content_state_raw(header_size, pad(header_size));
                return Ok(());
            }
            _ => {}
        }
        let size = next.size.unwrap_or(header_size);
        if typeflag == b'S' && h[482] != 0 {
            self.state = State::SparseExt { size };
            return Ok(());
        }
        let path = next.path.unwrap_or_else(|| header_path(h));
        let regular = matches!(typeflag, b'0' | 0 | b'7');
        if regular && size > 0 && !next.sparse && content_lands_at_path(&path) {
            self.state = State::File {
                remaining: size,
                pad: pad(size),
                size,
                path,
                hash: Sha256::new(),
            };
        } else {
            self.state = content_state_raw(size, pad(size));
        }
        Ok(())
    }

    fn on_meta(&mut self, kind: u8, buf: &[u8]) {
        match kind {
            b'L' => {
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                self.next.path = Some(buf[..end].to_vec());
            }
            _ => {
                for (key, value) in pax_records(buf) {
                    match key {
                        b"path" => self.next.path = Some(value.to_vec()),
                        b"size" => {
                            self.next.size =
                                std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
                        }
                        k if k.starts_with(b"GNU.sparse.") => self.next.sparse = true,
                        _ => {}
                    }
                }
            }
        }
    }
}

impl<R: Read> Read for SplitRecorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        self.feed(&buf[..n])?;
        Ok(n)
    }
}

fn pad_of(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn after_content(pad: u64) -> State {
    if pad == 0 {
        State::Header
    } else {
        State::Pad { remaining: pad }
    }
}

fn content_state_raw(size: u64, pad: u64) -> State {
    if size == 0 {
        State::Header
    } else {
        State::Raw {
            remaining: size,
            pad,
        }
    }
}

/// Whether the applier leaves a file entry's content at the entry's own path in the view.
/// Whiteouts and aufs metadata (`.wh.*`) are not files of the view.
fn content_lands_at_path(path: &[u8]) -> bool {
    !path
        .split(|&b| b == b'/')
        .any(|c| c.starts_with(driver_api::archive::WHITEOUT_PREFIX.as_bytes()))
}

/// The entry name of a ustar/GNU/v7 header (the ustar prefix joined when the magic says so).
fn header_path(h: &[u8]) -> Vec<u8> {
    let field = |r: std::ops::Range<usize>| {
        let f = &h[r];
        let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
        f[..end].to_vec()
    };
    let name = field(0..100);
    if &h[257..263] == b"ustar\0" {
        let prefix = field(345..500);
        if !prefix.is_empty() {
            let mut p = prefix;
            p.push(b'/');
            p.extend_from_slice(&name);
            return p;
        }
    }
    name
}

/// A numeric header field: octal (NUL/space terminated), or GNU base-256.
fn parse_size(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        if f[0] == 0xff {
            return None; // negative
        }
        let mut v: u64 = (f[0] & 0x7f) as u64;
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let s: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

/// `LEN KEY=VALUE\n` records; stops at the first malformed one (the applier rejects it).
fn pax_records(mut buf: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let Some(sp) = buf.iter().position(|&b| b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&buf[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp + 1 || len > buf.len() || buf[len - 1] != b'\n' {
            break;
        }
        let rec = &buf[sp + 1..len - 1];
        if let Some(eq) = rec.iter().position(|&b| b == b'=') {
            out.push((&rec[..eq], &rec[eq + 1..]));
        }
        buf = &buf[len..];
    }
    out
}

fn write_varint(w: &mut dyn Write, mut v: u64) -> io::Result<()> {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            return w.write_all(&[b]);
        }
        w.write_all(&[b | 0x80])?;
    }
}

fn read_varint(r: &mut dyn Read) -> io::Result<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8];
        r.read_exact(&mut b)?;
        v |= ((b[0] & 0x7f) as u64) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "varint too long",
    ))
}

/// What a record file says about its tar, without reading any content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSummary {
    pub diff_id: Digest,
    pub size: u64,
}

/// Write the original tar of `layer` to `out`: raw bytes from the record file at `split`,
/// file content from the layer's view at `view`. Every file's content is checked against the
/// digest recorded at import; returns the diff id and length of what was written (the caller
/// compares them with the image's).
pub fn reassemble(
    split: &Path,
    view: &Path,
    layer: &str,
    out: &mut dyn Write,
) -> Result<SplitSummary> {
    let fail = |reason: String| ImageError::Reproduce {
        layer: layer.to_string(),
        reason,
    };
    let file = File::open(split).map_err(|e| ImageError::io("opening", split, e))?;
    let dec =
        zstd::stream::read::Decoder::new(file).map_err(|e| ImageError::io("reading", split, e))?;
    let mut r = BufReader::with_capacity(1 << 20, dec);
    let rerr = |e: io::Error| ImageError::io("reading", split, e);
    let mut magic = [0u8; 6];
    r.read_exact(&mut magic).map_err(rerr)?;
    if magic != MAGIC {
        return Err(fail(format!(
            "{} is not a tar-split record",
            split.display()
        )));
    }
    let root = beneath::open_root(view).map_err(|e| ImageError::io("opening", view, e))?;
    let mut hash = Sha256::new();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    let oerr = |e: io::Error| ImageError::io("writing the layer tar", "-", e);
    loop {
        let mut tag = [0u8];
        r.read_exact(&mut tag).map_err(rerr)?;
        match tag[0] {
            b'S' => {
                let mut len = read_varint(&mut r).map_err(rerr)?;
                while len > 0 {
                    let n = (len as usize).min(buf.len());
                    r.read_exact(&mut buf[..n]).map_err(rerr)?;
                    hash.update(&buf[..n]);
                    out.write_all(&buf[..n]).map_err(oerr)?;
                    len -= n as u64;
                    total += n as u64;
                }
            }
            b'F' => {
                let size = read_varint(&mut r).map_err(rerr)?;
                let mut want = [0u8; 32];
                r.read_exact(&mut want).map_err(rerr)?;
                let plen = read_varint(&mut r).map_err(rerr)?;
                if plen > 1 << 20 {
                    return Err(fail(format!(
                        "{} is corrupt (path of {plen} bytes)",
                        split.display()
                    )));
                }
                let mut path = vec![0u8; plen as usize];
                r.read_exact(&mut path).map_err(rerr)?;
                let shown = String::from_utf8_lossy(&path).into_owned();
                let rel =
                    beneath::normalize(&path).map_err(|e| fail(format!("file {shown:?}: {e}")))?;
                let fd = beneath::open_beneath(
                    root.as_fd_ref(),
                    &rel,
                    OFlags::RDONLY | OFlags::NOFOLLOW,
                )
                .map_err(|e| fail(format!("file {shown:?} is not in the layer's view: {e}")))?;
                let mut f = File::from(fd);
                let mut fh = Sha256::new();
                let mut left = size;
                while left > 0 {
                    let n = (left as usize).min(buf.len());
                    let got = f
                        .read(&mut buf[..n])
                        .map_err(|e| fail(format!("reading file {shown:?}: {e}")))?;
                    if got == 0 {
                        return Err(fail(format!(
                            "file {shown:?} in the view is shorter than the {size} bytes the tar holds"
                        )));
                    }
                    fh.update(&buf[..got]);
                    hash.update(&buf[..got]);
                    out.write_all(&buf[..got]).map_err(oerr)?;
                    left -= got as u64;
                    total += got as u64;
                }
                if fh.finalize().as_slice() != want {
                    return Err(fail(format!(
                        "file {shown:?} in the view differs from the content the tar held (a later entry of the same tar replaced it, or the layer was changed)"
                    )));
                }
            }
            b'E' => {
                let mut d = [0u8; 32];
                r.read_exact(&mut d).map_err(rerr)?;
                let size = read_varint(&mut r).map_err(rerr)?;
                let recorded = Digest::parse(&format!("sha256:{}", hex::encode(d))).expect("hex");
                let actual = Digest::from_hash(hash);
                if actual != recorded || size != total {
                    return Err(ImageError::DigestMismatch {
                        what: format!("reassembled tar of layer {layer}"),
                        expected: format!("{recorded} ({size} bytes)"),
                        actual: format!("{actual} ({total} bytes)"),
                    });
                }
                return Ok(SplitSummary {
                    diff_id: actual,
                    size: total,
                });
            }
            other => {
                return Err(fail(format!(
                    "{} is corrupt (record tag {other:#x})",
                    split.display()
                )))
            }
        }
    }
}

/// The diff id and length recorded in a record file (reads only its end).
pub fn summary(split: &Path) -> Result<SplitSummary> {
    let file = File::open(split).map_err(|e| ImageError::io("opening", split, e))?;
    let dec =
        zstd::stream::read::Decoder::new(file).map_err(|e| ImageError::io("reading", split, e))?;
    let mut r = BufReader::new(dec);
    let rerr = |e: io::Error| ImageError::io("reading", split, e);
    let mut magic = [0u8; 6];
    r.read_exact(&mut magic).map_err(rerr)?;
    loop {
        let mut tag = [0u8];
        r.read_exact(&mut tag).map_err(rerr)?;
        match tag[0] {
            b'S' => {
                let len = read_varint(&mut r).map_err(rerr)?;
                skip(&mut r, len).map_err(rerr)?;
            }
            b'F' => {
                read_varint(&mut r).map_err(rerr)?;
                skip(&mut r, 32).map_err(rerr)?;
                let plen = read_varint(&mut r).map_err(rerr)?;
                skip(&mut r, plen).map_err(rerr)?;
            }
            b'E' => {
                let mut d = [0u8; 32];
                r.read_exact(&mut d).map_err(rerr)?;
                let size = read_varint(&mut r).map_err(rerr)?;
                let diff_id = Digest::parse(&format!("sha256:{}", hex::encode(d))).expect("hex");
                return Ok(SplitSummary { diff_id, size });
            }
            _ => {
                return Err(rerr(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad record tag",
                )))
            }
        }
    }
}

fn skip(r: &mut dyn BufRead, n: u64) -> io::Result<()> {
    let got = io::copy(&mut r.take(n), &mut io::sink())?;
    if got != n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

trait AsFdRef {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_>;
}
impl AsFdRef for std::os::fd::OwnedFd {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_octal_and_base256() {
        assert_eq!(parse_size(b"00000001750\0"), Some(1000));
        assert_eq!(parse_size(b"        \0\0\0\0"), Some(0));
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 5;
        f[10] = 1;
        assert_eq!(parse_size(&f), Some(261));
    }

    #[test]
    fn pax_records_parse() {
        let recs = pax_records(b"12 path=abc\n11 size=10\n");
        assert_eq!(
            recs,
            vec![(&b"path"[..], &b"abc"[..]), (&b"size"[..], &b"10"[..])]
        );
    }
}
