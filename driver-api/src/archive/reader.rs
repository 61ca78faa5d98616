//! gd's own streaming tar reader: the entries of a layer tar with their metadata fully parsed.
//!
//! Why not the `tar` crate: its PAX parser splits records at `'\n'` instead of using each
//! record's length prefix, so a record whose value holds a newline byte (binary xattrs such as
//! `system.posix_acl_access` or `security.capability`, where uid 10 is byte 0x0a) is refused.
//! POSIX says a record is `"%d %s=%s\n"` where the decimal length counts the whole record; that
//! length is the only thing that delimits it, and that is how records are read here.
//!
//! Formats read: v7, ustar (name + prefix), GNU (`L`/`K` long names, base-256 numbers, old
//! `S` sparse entries with their extension blocks), PAX (`x` records: `path`, `linkpath`,
//! `size`, `uid`, `gid`, `mtime` with a fraction and a sign, `SCHILY.xattr.*` with raw byte
//! values, GNU sparse 0.0, 0.1 and 1.0).
//!
//! PAX global headers (`g`) are parsed (a malformed one is an error) but not applied: Docker
//! and containerd (Go's archive/tar callers) ignore them, and a layer must give the same view
//! in gd as in the tools that made its diff id.
//!
//! Memory is bounded: content is never buffered, and the extension headers of one entry (PAX
//! records, long names, sparse maps) together may take at most [`HEADER_BUDGET`] bytes.
//! Every malformed header is an [`ArchiveError::BadEntry`] naming the entry (or the offset when
//! no name is known yet); sizes are added with checked arithmetic.

use std::io::{self, Read};

use crate::error::ArchiveError;

const BLOCK: usize = 512;
/// Most bytes the extension headers (PAX records, GNU long names, sparse maps) of one entry
/// may take. Without it a PAX header claiming gigabytes would be read into memory.
pub const HEADER_BUDGET: u64 = 16 << 20;

/// What an entry is, from its type flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    /// `0`, NUL (v7) and `7` (contiguous); also old GNU `S` and PAX sparse files, whose
    /// content the reader expands (holes read as zeros).
    Regular,
    Hardlink,
    Symlink,
    Char,
    Block,
    Directory,
    Fifo,
    /// Any other type flag (GNU `D`, `V`, `M`, vendor types): the caller decides.
    Other(u8),
}

/// Fully parsed metadata of one entry (extension headers applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// The entry's name as raw bytes, as the tar has it (not normalized).
    pub path: Vec<u8>,
    /// Target of a symlink or hardlink (empty for other entries).
    pub link_name: Vec<u8>,
    pub entry_type: EntryType,
    /// The raw type flag byte.
    pub type_flag: u8,
    /// The mode field as written (may carry file-type bits; callers mask with 0o7777).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Length of the content that [`Entry`] reads (for a sparse file, its full size).
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Device numbers; `None` in a v7 header, which has no such fields.
    pub dev_major: Option<u32>,
    pub dev_minor: Option<u32>,
    /// `SCHILY.xattr.NAME` records in archive order: name and raw value bytes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether the content is expanded from a sparse map.
    pub sparse: bool,
}

/// A streaming reader of tar entries over any `Read`.
pub struct TarReader<R> {
    inner: R,
    /// Bytes consumed from `inner` so far.
    offset: u64,
    /// Archive bytes (content, then padding) of the current entry not read yet.
    data_left: u64,
    pad_left: u64,
    /// Logical content state of the current entry.
    content: Content,
    /// Entries returned so far (for error messages).
    count: u64,
    last_path: Option<Vec<u8>>,
    done: bool,
}

/// How the current entry's content maps onto its archive bytes.
#[derive(Default)]
struct Content {
    /// Logical bytes left to hand out.
    left: u64,
    /// Logical position (sparse files only need it).
    pos: u64,
    /// Data regions (offset, length) of a sparse file, in order; empty for a plain entry.
    regions: Vec<(u64, u64)>,
    next_region: usize,
    sparse: bool,
}

/// One entry: its header, and its content as a `Read` of exactly `header.size` bytes.
pub struct Entry<'a, R> {
    pub header: EntryHeader,
    reader: &'a mut TarReader<R>,
}

impl<R: Read> Entry<'_, R> {
    /// Bytes of hole (zeros that the archive does not store) at the current position of a
    /// sparse file; 0 in data or for any other entry.
    pub fn hole_ahead(&self) -> u64 {
        let c = &self.reader.content;
        if !c.sparse {
            return 0;
        }
        match c.regions.get(c.next_region) {
            Some(&(off, _)) if c.pos >= off => 0,
            Some(&(off, _)) => off - c.pos,
            None => c.left,
        }
    }

    /// Skip the hole at the current position (see [`Self::hole_ahead`]); returns its length.
    pub fn skip_hole(&mut self) -> u64 {
        let hole = self.hole_ahead();
        let c = &mut self.reader.content;
        c.pos += hole;
        c.left -= hole;
        hole
    }

    /// Bytes of stored data from the current position up to the next hole (or the end).
    pub fn data_ahead(&self) -> u64 {
        let c = &self.reader.content;
        if !c.sparse {
            return c.left;
        }
        match c.regions.get(c.next_region) {
            Some(&(off, len)) if c.pos >= off => off + len - c.pos,
            _ => 0,
        }
    }
}

impl<R: Read> Read for Entry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read_content(buf)
    }
}

/// What the extension headers seen so far say about the next real entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link_name: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: SparsePax,
    /// Bytes of extension headers read for this entry.
    spent: u64,
    /// The first bad PAX value: reported once the entry's name is known.
    bad_value: Option<String>,
}

#[derive(Default)]
struct SparsePax {
    major: Option<Vec<u8>>,
    minor: Option<Vec<u8>>,
    name: Option<Vec<u8>>,
    real_size: Option<u64>,
    map: Option<Vec<u8>>,
    /// GNU sparse 0.0: repeated offset / numbytes records, in order.
    pairs: Vec<u64>,
    any: bool,
}

/// One PAX record: key and raw value bytes.
pub type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// Parse the records of a PAX extended header, by their length prefixes.
/// Returns (key, value) pairs in order.
pub fn parse_pax_records(mut data: &[u8]) -> Result<Vec<PaxRecord<'_>>, String> {
    let mut out = Vec::new();
    // GNU tar and others pad the last block with NULs; a record never starts with NUL.
    while !data.is_empty() && data[0] != 0 {
        let space = data
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or("PAX record without a length")?;
        let digits = &data[..space];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "PAX record length {:?} is not a decimal number",
                String::from_utf8_lossy(digits)
            ));
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record length out of range")?;
        if len <= space + 1 || len > data.len() {
            return Err(format!(
                "PAX record length {len} does not fit the header ({} bytes left)",
                data.len()
            ));
        }
        let record = &data[space + 1..len];
        let Some((&b'\n', body)) = record.split_last() else {
            return Err("PAX record does not end with a newline".into());
        };
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or("PAX record without '='")?;
        if eq == 0 {
            return Err("PAX record with an empty key".into());
        }
        out.push((&body[..eq], &body[eq + 1..]));
        data = &data[len..];
    }
    if data.iter().any(|&b| b != 0) {
        return Err("garbage after the PAX records".into());
    }
    Ok(out)
}

/// Parse a PAX time (`SECONDS[.FRACTION]`, possibly negative) as seconds and nanoseconds,
/// the nanoseconds always positive (-1.5 is -2 s + 500000000 ns).
pub fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if int.is_empty() || !int.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs: i64 = std::str::from_utf8(int).ok()?.parse().ok()?;
    let mut nanos: u32 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    if !neg {
        return Some((secs, nanos));
    }
    if nanos == 0 {
        Some((secs.checked_neg()?, 0))
    } else {
        Some((secs.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nanos))
    }
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A numeric header field: octal text (leading spaces, ended by space or NUL) or GNU
/// base-256 (high bit of the first byte set; 0xff starts a negative number).
fn parse_number(field: &[u8]) -> Result<i128, String> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            let negative = first == 0xff;
            let mut v: i128 = if negative {
                -1
            } else {
                i128::from(first & 0x7f)
            };
            for &b in &field[1..] {
                v = v
                    .checked_mul(256)
                    .ok_or("base-256 number out of range")?
                    .checked_add(i128::from(b))
                    .ok_or("base-256 number out of range")?;
            }
            // Starting a negative number at -1 and shifting each byte in reads the bytes as
            // two's complement with all-ones sign extension.
            return Ok(v);
        }
    }
    let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    let digits = &field[start..];
    let end = digits
        .iter()
        .position(|&b| b == b' ' || b == 0)
        .unwrap_or(digits.len());
    if digits[end..].iter().any(|&b| b != b' ' && b != 0) {
        return Err(format!(
            "numeric field {:?} is not octal",
            String::from_utf8_lossy(field)
        ));
    }
    let mut v: i128 = 0;
    for &b in &digits[..end] {
        if !(b'0'..=b'7').contains(&b) {
            return Err(format!(
                "numeric field {:?} is not octal",
                String::from_utf8_lossy(field)
            ));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(i128::from(b - b'0')))
            .ok_or("octal number out of range")?;
    }
    Ok(v)
}

fn unsigned<T: TryFrom<i128>>(field: &[u8], what: &str) -> Result<T, String> {
    let v = parse_number(field).map_err(|e| format!("{what}: {e}"))?;
    T::try_from(v).map_err(|_| format!("{what} {v} is out of range"))
}

/// A NUL-terminated string field.
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn is_zero_block(b: &[u8; BLOCK]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Check the header checksum: the sum of all bytes with the checksum field read as spaces, as
/// unsigned bytes (POSIX) or as signed bytes (some old writers).
fn checksum_ok(h: &[u8; BLOCK]) -> Result<(), String> {
    let stored = parse_number(&h[148..156]).map_err(|e| format!("checksum field: {e}"))?;
    let mut unsigned_sum: i128 = 0;
    let mut signed_sum: i128 = 0;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned_sum += i128::from(b);
        signed_sum += i128::from(b as i8);
    }
    if stored == unsigned_sum || stored == signed_sum {
        Ok(())
    } else {
        Err(format!(
            "header checksum mismatch (stored {stored}, computed {unsigned_sum})"
        ))
    }
}

fn pad_of(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            offset: 0,
            data_left: 0,
            pad_left: 0,
            content: Content::default(),
            count: 0,
            last_path: None,
            done: false,
        }
    }

    /// Bytes consumed from the underlying stream.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Entries returned so far.
    pub fn entries_read(&self) -> u64 {
        self.count
    }

    /// The underlying stream (after the end of the archive, what follows it).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// How to name the entry being read when no name is known.
    fn where_(&self) -> String {
        match &self.last_path {
            Some(p) => format!(
                "#{} (after {}, at offset {})",
                self.count + 1,
                String::from_utf8_lossy(p),
                self.offset
            ),
            None => format!("#{} (at offset {})", self.count + 1, self.offset),
        }
    }

    fn bad(&self, reason: impl Into<String>) -> ArchiveError {
        ArchiveError::bad(self.where_(), reason)
    }

    /// Read exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before the first byte.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<bool, ArchiveError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => {
                    if got == 0 {
                        return Ok(false);
                    }
                    return Err(self.bad(format!(
                        "truncated: the stream ends {got} bytes into a {}-byte block",
                        buf.len()
                    )));
                }
                Ok(n) => {
                    got += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ArchiveError::Stream(e)),
            }
        }
        Ok(true)
    }

    fn read_block(&mut self, what: &str) -> Result<[u8; BLOCK], ArchiveError> {
        let mut b = [0u8; BLOCK];
        if !self.read_full(&mut b)? {
            return Err(self.bad(format!("truncated: the stream ends before {what}")));
        }
        Ok(b)
    }

    /// Discard `n` bytes of the stream.
    fn skip(&mut self, n: u64) -> Result<(), ArchiveError> {
        let mut scratch = [0u8; 8192];
        let mut left = n;
        while left > 0 {
            let want = usize::try_from(left.min(scratch.len() as u64)).unwrap_or(scratch.len());
            match self.inner.read(&mut scratch[..want]) {
                Ok(0) => {
                    return Err(self.bad(format!(
                        "truncated: the stream ends {left} bytes before the entry's end"
                    )))
                }
                Ok(k) => {
                    left -= k as u64;
                    self.offset += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ArchiveError::Stream(e)),
            }
        }
        Ok(())
    }

    /// Content of an extension header (`size` bytes plus padding), charged to the budget.
    fn read_ext(&mut self, size: u64, pending: &mut Pending) -> Result<Vec<u8>, ArchiveError> {
        let spent = pending
            .spent
            .checked_add(size)
            .filter(|&s| s <= HEADER_BUDGET)
            .ok_or_else(|| {
                self.bad(format!(
                    "extension headers (PAX, GNU long names) of an entry exceed {HEADER_BUDGET} bytes"
                ))
            })?;
        pending.spent = spent;
        let len = usize::try_from(size).map_err(|_| self.bad("extension header too large"))?;
        let mut buf = vec![0u8; len];
        if !self.read_full(&mut buf)? && len > 0 {
            return Err(self.bad("truncated: the stream ends inside an extension header"));
        }
        self.skip(pad_of(size))?;
        Ok(buf)
    }

    /// The next entry, or `None` at the end of the archive. Whatever the previous entry's
    /// content had left unread is skipped first.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'_, R>>, ArchiveError> {
        if self.done {
            return Ok(None);
        }
        // The rest of the previous entry.
        let rest = self
            .data_left
            .checked_add(self.pad_left)
            .ok_or_else(|| self.bad("entry size out of range"))?;
        self.data_left = 0;
        self.pad_left = 0;
        self.content = Content::default();
        self.skip(rest)?;
        match self.read_header()? {
            None => {
                self.done = true;
                Ok(None)
            }
            Some(header) => {
                self.count += 1;
                self.last_path = Some(header.path.clone());
                Ok(Some(Entry {
                    header,
                    reader: self,
                }))
            }
        }
    }

    fn read_header(&mut self) -> Result<Option<EntryHeader>, ArchiveError> {
        let mut pending = Pending::default();
        loop {
            let mut h = [0u8; BLOCK];
            if !self.read_full(&mut h)? {
                if self.offset == 0 {
                    return Ok(None); // an empty stream is an empty layer
                }
                return Err(
                    self.bad("truncated: the stream ends without the end-of-archive blocks")
                );
            }
            if is_zero_block(&h) {
                // End of archive: a second zero block, or (as GNU tar accepts) a clean end.
                let mut second = [0u8; BLOCK];
                if !self.read_full(&mut second)? || is_zero_block(&second) {
                    if pending.spent > 0 {
                        return Err(self.bad("the archive ends after an extension header"));
                    }
                    return Ok(None);
                }
                return Err(self.bad("a zero block is not followed by a second one"));
            }
            checksum_ok(&h).map_err(|e| self.bad(e))?;
            let type_flag = h[156];
            let size: u64 = unsigned(&h[124..136], "size").map_err(|e| self.bad(e))?;
            match type_flag {
                b'x' | b'g' => {
                    let data = self.read_ext(size, &mut pending)?;
                    let records = parse_pax_records(&data).map_err(|e| self.bad(e))?;
                    if type_flag == b'x' {
                        if let Err(e) = apply_pax(&records, &mut pending) {
                            pending.bad_value.get_or_insert(e);
                        }
                    }
                    continue;
                }
                b'L' | b'K' => {
                    let data = self.read_ext(size, &mut pending)?;
                    let name = cstr(&data).to_vec();
                    if type_flag == b'L' {
                        pending.path = Some(name);
                    } else {
                        pending.link_name = Some(name);
                    }
                    continue;
                }
                _ => {}
            }
            return self.finish_header(&h, type_flag, size, pending).map(Some);
        }
    }

    fn finish_header(
        &mut self,
        h: &[u8; BLOCK],
        type_flag: u8,
        header_size: u64,
        mut p: Pending,
    ) -> Result<EntryHeader, ArchiveError> {
        let magic = &h[257..263];
        let ustar = magic == b"ustar\0";
        let gnu = magic == b"ustar ";
        let mut path = match p.path.take() {
            Some(path) => path,
            None => {
                let name = cstr(&h[0..100]);
                let prefix = if ustar { cstr(&h[345..500]) } else { &[][..] };
                if prefix.is_empty() {
                    name.to_vec()
                } else {
                    let mut full = prefix.to_vec();
                    full.push(b'/');
                    full.extend_from_slice(name);
                    full
                }
            }
        };
        // From here on, errors name the entry.
        let shown = String::from_utf8_lossy(&path).into_owned();
        let bad = |reason: String| ArchiveError::bad(&shown, reason);
        if let Some(reason) = p.bad_value.take() {
            return Err(bad(reason));
        }
        let link_name = p
            .link_name
            .take()
            .unwrap_or_else(|| cstr(&h[157..257]).to_vec());
        let mode: u32 = unsigned(&h[100..108], "mode").map_err(bad)?;
        let uid = match p.uid {
            Some(v) => v,
            None => unsigned(&h[108..116], "uid").map_err(bad)?,
        };
        let gid = match p.gid {
            Some(v) => v,
            None => unsigned(&h[116..124], "gid").map_err(bad)?,
        };
        let (mtime_sec, mtime_nsec) = match p.mtime {
            Some(t) => t,
            None => {
                let v = parse_number(&h[136..148]).map_err(|e| bad(format!("mtime: {e}")))?;
                let s = i64::try_from(v).map_err(|_| bad(format!("mtime {v} is out of range")))?;
                (s, 0)
            }
        };
        let (dev_major, dev_minor) = if ustar || gnu {
            (
                Some(unsigned(&h[329..337], "device major").map_err(bad)?),
                Some(unsigned(&h[337..345], "device minor").map_err(bad)?),
            )
        } else {
            (None, None)
        };
        let stored = p.size.unwrap_or(header_size);
        let entry_type = match type_flag {
            b'0' | 0 | b'7' | b'S' => EntryType::Regular,
            b'1' => EntryType::Hardlink,
            b'2' => EntryType::Symlink,
            b'3' => EntryType::Char,
            b'4' => EntryType::Block,
            b'5' => EntryType::Directory,
            b'6' => EntryType::Fifo,
            other => EntryType::Other(other),
        };

        self.data_left = stored;
        self.pad_left = pad_of(stored);
        let mut content = Content {
            left: stored,
            ..Content::default()
        };
        let mut size = stored;
        if type_flag == b'S' {
            // Old GNU sparse: up to 4 regions in the header, more in extension blocks that
            // follow it (not counted in its size).
            let real: u64 = unsigned(&h[483..495], "sparse real size").map_err(bad)?;
            let mut regions = Vec::new();
            push_regions(&h[386..482], &mut regions).map_err(bad)?;
            let mut extended = h[482] != 0;
            let mut spent = p.spent;
            while extended {
                spent = spent
                    .checked_add(BLOCK as u64)
                    .filter(|&s| s <= HEADER_BUDGET)
                    .ok_or_else(|| bad("GNU sparse map too large".into()))?;
                let ext = self
                    .read_block("a GNU sparse extension block")
                    .map_err(|e| rename(e, &shown))?;
                push_regions(&ext[..504], &mut regions).map_err(bad)?;
                extended = ext[504] != 0;
            }
            size = real;
            content = sparse_content(regions, real, stored).map_err(bad)?;
        } else if p.sparse.any && entry_type == EntryType::Regular {
            if let Some(name) = p.sparse.name.take() {
                path = name;
            }
            let real = p
                .sparse
                .real_size
                .ok_or_else(|| bad("GNU sparse file without its real size".into()))?;
            let major = p.sparse.major.as_deref();
            let minor = p.sparse.minor.as_deref();
            let regions = if major == Some(b"1") && minor == Some(b"0") {
                // 1.0: the map is decimal text at the start of the content, padded to a block.
                let (regions, used) = self.read_sparse_map_1_0(stored, p.spent, &shown)?;
                self.data_left = stored - used;
                regions
            } else if let Some(map) = &p.sparse.map {
                let nums = map
                    .split(|&b| b == b',')
                    .map(parse_decimal)
                    .collect::<Option<Vec<u64>>>()
                    .ok_or_else(|| bad("bad GNU.sparse.map".into()))?;
                pairs_to_regions(&nums).map_err(bad)?
            } else if major.is_none() || major == Some(b"0") {
                pairs_to_regions(&p.sparse.pairs).map_err(bad)?
            } else {
                return Err(bad(format!(
                    "unsupported GNU sparse format {}.{}",
                    String::from_utf8_lossy(major.unwrap_or(b"?")),
                    String::from_utf8_lossy(minor.unwrap_or(b"?"))
                )));
            };
            size = real;
            content = sparse_content(regions, real, self.data_left).map_err(bad)?;
        }
        self.content = content;
        Ok(EntryHeader {
            path,
            link_name,
            entry_type,
            type_flag,
            mode,
            uid,
            gid,
            size,
            mtime_sec,
            mtime_nsec,
            dev_major,
            dev_minor,
            xattrs: p.xattrs,
            sparse: self.content.sparse,
        })
    }

    /// GNU sparse 1.0: `count\n` then `offset\nlength\n` pairs at the start of the content,
    /// padded to a block. Returns the regions and the bytes of content they took.
    fn read_sparse_map_1_0(
        &mut self,
        stored: u64,
        spent: u64,
        shown: &str,
    ) -> Result<(Vec<(u64, u64)>, u64), ArchiveError> {
        let bad = |reason: &str| ArchiveError::bad(shown, reason.to_string());
        let mut used = 0u64;
        let mut text: Vec<u8> = Vec::new();
        let mut pos = 0usize;
        let mut spent = spent;
        let mut next_number = |this: &mut Self, text: &mut Vec<u8>, used: &mut u64| loop {
            if let Some(nl) = text[pos..].iter().position(|&b| b == b'\n') {
                let v =
                    parse_decimal(&text[pos..pos + nl]).ok_or_else(|| bad("bad GNU sparse map"))?;
                pos += nl + 1;
                return Ok::<u64, ArchiveError>(v);
            }
            if *used + BLOCK as u64 > stored {
                return Err(bad("GNU sparse map runs past the content"));
            }
            spent = spent
                .checked_add(BLOCK as u64)
                .filter(|&s| s <= HEADER_BUDGET)
                .ok_or_else(|| bad("GNU sparse map too large"))?;
            let b = this
                .read_block("the GNU sparse map")
                .map_err(|e| rename(e, shown))?;
            *used += BLOCK as u64;
            text.extend_from_slice(&b);
        };
        let count = next_number(self, &mut text, &mut used)?;
        let mut nums = Vec::new();
        for _ in 0..count
            .checked_mul(2)
            .ok_or_else(|| bad("GNU sparse map too large"))?
        {
            nums.push(next_number(self, &mut text, &mut used)?);
        }
        Ok((
            pairs_to_regions(&nums).map_err(|e| ArchiveError::bad(shown, e))?,
            used,
        ))
    }

    fn read_content(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.content.left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.content.left.min(buf.len() as u64)).unwrap_or(buf.len());
        if !self.content.sparse {
            let n = self.read_data(&mut buf[..want])?;
            self.content.left -= n as u64;
            return Ok(n);
        }
        // Sparse: a data region reads from the archive, a hole reads as zeros.
        let pos = self.content.pos;
        let region = self.content.regions.get(self.content.next_region).copied();
        let n = match region {
            Some((off, len)) if pos >= off => {
                let end = off + len; // checked when the map was read
                let take = usize::try_from((end - pos).min(want as u64)).unwrap_or(want);
                let n = self.read_data(&mut buf[..take])?;
                if pos + n as u64 == end {
                    self.content.next_region += 1;
                }
                n
            }
            other => {
                let hole_end = other.map_or(pos + self.content.left, |(off, _)| off);
                let take = usize::try_from((hole_end - pos).min(want as u64)).unwrap_or(want);
                buf[..take].fill(0);
                take
            }
        };
        self.content.pos += n as u64;
        self.content.left -= n as u64;
        Ok(n)
    }

    /// Read archive content bytes of the current entry (never past its stored size).
    fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.data_left.min(buf.len() as u64)).unwrap_or(buf.len());
        if want == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "sparse map describes more data than the entry holds",
            ));
        }
        loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "truncated: the stream ends {} bytes before the entry's end",
                            self.data_left
                        ),
                    ))
                }
                Ok(n) => {
                    self.data_left -= n as u64;
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Take what PAX records say about the next entry.
fn apply_pax(records: &[(&[u8], &[u8])], p: &mut Pending) -> Result<(), String> {
    let num = |key: &[u8], v: &[u8]| {
        parse_decimal(v).ok_or_else(|| {
            format!(
                "bad PAX {} {:?}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(v)
            )
        })
    };
    for &(key, value) in records {
        // An empty value removes what an earlier header said: the ustar field counts.
        match key {
            b"path" => p.path = (!value.is_empty()).then(|| value.to_vec()),
            b"linkpath" => p.link_name = (!value.is_empty()).then(|| value.to_vec()),
            b"size" if value.is_empty() => p.size = None,
            b"size" => p.size = Some(num(key, value)?),
            b"uid" if value.is_empty() => p.uid = None,
            b"uid" => p.uid = Some(num(key, value)?),
            b"gid" if value.is_empty() => p.gid = None,
            b"gid" => p.gid = Some(num(key, value)?),
            b"mtime" if value.is_empty() => p.mtime = None,
            b"mtime" => {
                p.mtime =
                    Some(parse_pax_time(value).ok_or_else(|| {
                        format!("bad PAX mtime {:?}", String::from_utf8_lossy(value))
                    })?)
            }
            b"GNU.sparse.major" => {
                p.sparse.any = true;
                p.sparse.major = Some(value.to_vec())
            }
            b"GNU.sparse.minor" => {
                p.sparse.any = true;
                p.sparse.minor = Some(value.to_vec())
            }
            b"GNU.sparse.name" => p.sparse.name = Some(value.to_vec()),
            b"GNU.sparse.size" | b"GNU.sparse.realsize" => {
                p.sparse.any = true;
                p.sparse.real_size = Some(num(key, value)?)
            }
            b"GNU.sparse.map" => {
                p.sparse.any = true;
                p.sparse.map = Some(value.to_vec())
            }
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                p.sparse.any = true;
                // Offsets and lengths alternate, offset first.
                let is_offset = key == b"GNU.sparse.offset";
                if is_offset != p.sparse.pairs.len().is_multiple_of(2) {
                    return Err("GNU sparse 0.0 offset and numbytes out of order".into());
                }
                let v = num(key, value)?;
                if p.sparse.pairs.len() as u64 * 8 >= HEADER_BUDGET {
                    return Err("GNU sparse map too large".into());
                }
                p.sparse.pairs.push(v);
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    p.xattrs.retain(|(n, _)| n != name);
                    p.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
    Ok(())
}

/// Re-label a reader error with the entry's name.
fn rename(e: ArchiveError, shown: &str) -> ArchiveError {
    match e {
        ArchiveError::BadEntry { reason, .. } => ArchiveError::bad(shown, reason),
        other => other,
    }
}

/// Old GNU sparse slots: (offset[12], numbytes[12]) pairs; an empty offset ends the list.
fn push_regions(slots: &[u8], out: &mut Vec<(u64, u64)>) -> Result<(), String> {
    for slot in slots.chunks_exact(24) {
        if slot[0] == 0 {
            break;
        }
        let off: u64 = unsigned(&slot[..12], "sparse offset")?;
        let len: u64 = unsigned(&slot[12..], "sparse length")?;
        out.push((off, len));
    }
    Ok(())
}

fn pairs_to_regions(nums: &[u64]) -> Result<Vec<(u64, u64)>, String> {
    if !nums.len().is_multiple_of(2) {
        return Err("GNU sparse map with an odd number of values".into());
    }
    Ok(nums.chunks_exact(2).map(|p| (p[0], p[1])).collect())
}

/// Validate a sparse map against the real size and the stored data; empty regions dropped.
fn sparse_content(regions: Vec<(u64, u64)>, real: u64, stored: u64) -> Result<Content, String> {
    let mut end = 0u64;
    let mut total = 0u64;
    let mut kept = Vec::with_capacity(regions.len());
    for (off, len) in regions {
        let region_end = off.checked_add(len).ok_or("sparse region out of range")?;
        if off < end || region_end > real {
            return Err(format!(
                "sparse region {off}+{len} overlaps another or passes the size {real}"
            ));
        }
        end = region_end;
        total = total.checked_add(len).ok_or("sparse map out of range")?;
        if len > 0 {
            kept.push((off, len));
        }
    }
    if total != stored {
        return Err(format!(
            "sparse map holds {total} bytes of data, the entry {stored}"
        ));
    }
    Ok(Content {
        left: real,
        pos: 0,
        regions: kept,
        next_region: 0,
        sparse: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A ustar header block with a valid checksum.
    fn header(name: &[u8], type_flag: u8, size: u64) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name);
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0001750");
        h[116..123].copy_from_slice(b"0000012");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"14712345670");
        h[156] = type_flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        seal(&mut h);
        h
    }

    fn seal(h: &mut [u8; BLOCK]) {
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    }

    fn push_entry(out: &mut Vec<u8>, h: [u8; BLOCK], data: &[u8]) {
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len() + pad_of(data.len() as u64) as usize, 0);
    }

    fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
        // The length counts itself: find the fixed point.
        let body = key.len() + value.len() + 3;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        let mut r = format!("{len} ").into_bytes();
        r.extend_from_slice(key);
        r.push(b'=');
        r.extend_from_slice(value);
        r.push(b'\n');
        assert_eq!(r.len(), len);
        r
    }

    fn push_pax(out: &mut Vec<u8>, flag: u8, records: &[(&[u8], &[u8])]) {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        push_entry(out, header(b"PaxHeaders/x", flag, data.len() as u64), &data);
    }

    fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 2 * BLOCK]);
    }

    /// Every entry's header and content.
    fn read_all(tar: &[u8]) -> Result<Vec<(EntryHeader, Vec<u8>)>, ArchiveError> {
        let mut r = TarReader::new(tar);
        let mut out = Vec::new();
        while let Some(mut e) = r.next_entry()? {
            let mut data = Vec::new();
            e.read_to_end(&mut data)
                .map_err(|err| ArchiveError::entry_io("content", err))?;
            assert_eq!(data.len() as u64, e.header.size);
            out.push((e.header.clone(), data));
        }
        Ok(out)
    }

    fn sample() -> Vec<u8> {
        let mut t = Vec::new();
        push_entry(&mut t, header(b"dir/", b'5', 0), b"");
        push_pax(&mut t, b'x', &[(b"SCHILY.xattr.user.a", b"x\ny")]);
        push_entry(&mut t, header(b"dir/file", b'0', 5), b"hello");
        let mut l = header(b"dir/link", b'2', 0);
        l[157..161].copy_from_slice(b"file");
        seal(&mut l);
        push_entry(&mut t, l, b"");
        end(&mut t);
        t
    }

    #[test]
    fn plain_entries() {
        let got = read_all(&sample()).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0.entry_type, EntryType::Directory);
        assert_eq!(got[1].0.path, b"dir/file");
        assert_eq!(got[1].1, b"hello");
        assert_eq!((got[1].0.uid, got[1].0.gid), (1000, 10));
        assert_eq!(got[1].0.mode, 0o644);
        assert_eq!(got[1].0.mtime_sec, 0o14712345670);
        assert_eq!(
            got[1].0.xattrs,
            vec![(b"user.a".to_vec(), b"x\ny".to_vec())]
        );
        assert_eq!(got[2].0.entry_type, EntryType::Symlink);
        assert_eq!(got[2].0.link_name, b"file");
        assert!(
            got[2].0.xattrs.is_empty(),
            "PAX records apply to one entry only"
        );
    }

    #[test]
    fn pax_values_with_newline_equals_and_nul() {
        let value = b"a\nb=c\0d\n\n=";
        let mut t = Vec::new();
        push_pax(
            &mut t,
            b'x',
            &[
                (b"SCHILY.xattr.system.posix_acl_access", value),
                (b"SCHILY.xattr.user.k=v", b"="),
                (b"mtime", b"-1.25"),
                (b"uid", b"4294967294"),
                (b"gid", b"70000"),
                (b"path", b"p\nq"),
            ],
        );
        push_entry(&mut t, header(b"short", b'0', 0), b"");
        end(&mut t);
        let got = read_all(&t).unwrap();
        let h = &got[0].0;
        assert_eq!(h.path, b"p\nq");
        assert_eq!(
            h.xattrs,
            vec![
                (b"system.posix_acl_access".to_vec(), value.to_vec()),
                // The key ends at the first '='.
                (b"user.k".to_vec(), b"v==".to_vec()),
            ]
        );
        assert_eq!((h.mtime_sec, h.mtime_nsec), (-2, 750_000_000));
        assert_eq!((h.uid, h.gid), (4294967294, 70000));
    }

    #[test]
    fn long_names_gnu_and_pax_and_prefix() {
        let long: Vec<u8> = (0..300).map(|i| b'a' + (i % 26) as u8).collect();
        let target: Vec<u8> = (0..250).map(|i| b'A' + (i % 26) as u8).collect();
        let mut t = Vec::new();
        let mut name = long.clone();
        name.push(0);
        push_entry(
            &mut t,
            header(b"././@LongLink", b'L', name.len() as u64),
            &name,
        );
        push_entry(
            &mut t,
            header(b"././@LongLink", b'K', target.len() as u64),
            &target,
        );
        push_entry(&mut t, header(b"trunc", b'1', 0), b"");
        push_pax(
            &mut t,
            b'x',
            &[(b"path", &long[..]), (b"linkpath", &target[..])],
        );
        push_entry(&mut t, header(b"trunc", b'2', 0), b"");
        let mut h = header(b"name", b'0', 0);
        h[345..351].copy_from_slice(b"prefix");
        seal(&mut h);
        push_entry(&mut t, h, b"");
        end(&mut t);
        let got = read_all(&t).unwrap();
        assert_eq!(got[0].0.path, long);
        assert_eq!(got[0].0.link_name, target);
        assert_eq!(got[0].0.entry_type, EntryType::Hardlink);
        assert_eq!(got[1].0.path, long);
        assert_eq!(got[1].0.link_name, target);
        assert_eq!(got[2].0.path, b"prefix/name");
    }

    #[test]
    fn base256_numbers() {
        let mut h = header(b"big", b'0', 0);
        // size 600 in base-256
        h[124..136].fill(0);
        h[124] = 0x80;
        h[134] = 0x02;
        h[135] = 0x58;
        // uid 2^40
        h[108..116].fill(0);
        h[108] = 0x80;
        h[110] = 0x01;
        // mtime -2
        h[136..148].fill(0xff);
        h[147] = 0xfe;
        seal(&mut h);
        let mut t = Vec::new();
        push_entry(&mut t, h, &[7u8; 600]);
        end(&mut t);
        let got = read_all(&t).unwrap();
        assert_eq!(got[0].0.size, 600);
        assert_eq!(got[0].1, vec![7u8; 600]);
        assert_eq!(got[0].0.uid, 1 << 40);
        assert_eq!(got[0].0.mtime_sec, -2);
        assert_eq!(parse_number(&[0xff; 8]).unwrap(), -1);
        assert!(parse_number(&[
            0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff
        ])
        .is_err());
        assert!(unsigned::<u64>(&[0xff; 12], "size").is_err());
    }

    #[test]
    fn checksums() {
        let mut t = sample();
        t[3] ^= 1;
        let err = read_all(&t).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        // A header whose sum was taken over signed bytes (old writers) is accepted.
        let mut h = header(b"caf\xc3\xa9", b'0', 0);
        h[148..156].fill(b' ');
        let sum: i32 = h.iter().map(|&b| i32::from(b as i8)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut t = Vec::new();
        push_entry(&mut t, h, b"");
        end(&mut t);
        assert_eq!(read_all(&t).unwrap()[0].0.path, b"caf\xc3\xa9");
    }

    #[test]
    fn truncation_at_every_offset_is_an_error() {
        let t = sample();
        for cut in 0..t.len() {
            let r = read_all(&t[..cut]);
            // Valid ends: nothing at all, or a clean end after the first zero block.
            if cut == 0 || cut == t.len() - BLOCK {
                assert!(r.is_ok(), "cut {cut}: {:?}", r.err());
            } else {
                assert!(r.is_err(), "cut {cut} of {} read as complete", t.len());
            }
        }
        assert_eq!(read_all(&t).unwrap().len(), 3);
    }

    #[test]
    fn end_of_archive() {
        let mut t = Vec::new();
        push_entry(&mut t, header(b"a", b'0', 1), b"x");
        t.extend_from_slice(&[0u8; BLOCK]);
        push_entry(&mut t, header(b"b", b'0', 0), b"");
        let err = read_all(&t).unwrap_err().to_string();
        assert!(err.contains("zero block"), "{err}");
        // Bytes after the two zero blocks are not read as entries.
        let mut t = sample();
        t.extend_from_slice(b"trailing garbage");
        assert_eq!(read_all(&t).unwrap().len(), 3);
        // An extension header with no entry after it.
        let mut t = Vec::new();
        push_pax(&mut t, b'x', &[(b"path", b"x")]);
        end(&mut t);
        assert!(read_all(&t).is_err());
    }

    #[test]
    fn global_headers_are_parsed_and_ignored() {
        let mut t = Vec::new();
        push_pax(&mut t, b'g', &[(b"comment", b"abc\n"), (b"mtime", b"5")]);
        push_entry(&mut t, header(b"f", b'0', 0), b"");
        end(&mut t);
        let got = read_all(&t).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.mtime_sec, 0o14712345670);
        let mut t = Vec::new();
        let junk = b"9 a=b\n";
        push_entry(&mut t, header(b"g", b'g', junk.len() as u64), junk);
        push_entry(&mut t, header(b"f", b'0', 0), b"");
        end(&mut t);
        assert!(read_all(&t).is_err());
    }

    #[test]
    fn malformed_pax_records() {
        for bad in [
            &b"5 a=b\n"[..],
            b"7 a=b\n",
            b"x a=b\n",
            b"6 a=b ",
            b"5 ab\n",
            b"4 =\n",
            b"99999999999999999999999 a=b\n",
            b"6 a=b\nzz",
        ] {
            assert!(
                parse_pax_records(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_pax_records(b"6 a=b\n\0\0").unwrap(),
            vec![(&b"a"[..], &b"b"[..])]
        );
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.123456789"),
            Some((1700000000, 123456789))
        );
        assert_eq!(parse_pax_time(b"5.5"), Some((5, 500000000)));
        assert_eq!(parse_pax_time(b"-1.500000000"), Some((-2, 500000000)));
        assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time(b"1.1234567899"), Some((1, 123456789)));
        assert!(parse_pax_time(b"x").is_none());
        assert!(parse_pax_time(b"1.2.3").is_none());
        assert!(parse_pax_time(b"").is_none());
        assert!(parse_pax_time(b"99999999999999999999999").is_none());
    }

    #[test]
    fn header_budget() {
        let mut t = Vec::new();
        let big = (HEADER_BUDGET / 2 + 1) as usize;
        for _ in 0..2 {
            let name = vec![b'n'; big];
            push_entry(&mut t, header(b"L", b'L', name.len() as u64), &name);
        }
        push_entry(&mut t, header(b"f", b'0', 0), b"");
        end(&mut t);
        let err = read_all(&t).unwrap_err().to_string();
        assert!(err.contains("exceed"), "{err}");
        // A size claiming more than the budget is refused before anything is read.
        let mut t = Vec::new();
        t.extend_from_slice(&header(b"p", b'x', 1 << 32));
        assert!(read_all(&t).is_err());
    }

    /// Every byte of every header (and of the PAX data) set to awkward values, the checksum
    /// fixed up so the parser really sees it: errors, never panics.
    #[test]
    fn mutated_headers_never_panic() {
        let mut t = Vec::new();
        push_pax(
            &mut t,
            b'x',
            &[(b"path", b"p"), (b"size", b"3"), (b"mtime", b"1.5")],
        );
        push_entry(&mut t, header(b"f", b'0', 3), b"abc");
        let mut s = header(b"s", b'S', 2);
        s[386..397].copy_from_slice(b"00000000004");
        s[398..409].copy_from_slice(b"00000000002");
        s[483..494].copy_from_slice(b"00000000010");
        seal(&mut s);
        push_entry(&mut t, s, b"zz");
        end(&mut t);
        assert_eq!(read_all(&t).unwrap()[1].1, b"\0\0\0\0zz\0\0");
        let headers: Vec<usize> = (0..t.len() / BLOCK)
            .filter(|&b| {
                let block: &[u8; BLOCK] = t[b * BLOCK..(b + 1) * BLOCK].try_into().unwrap();
                !is_zero_block(block) && checksum_ok(block).is_ok()
            })
            .collect();
        assert_eq!(headers.len(), 3);
        for i in 0..t.len() {
            for v in [0u8, 0xff, 0x80, b'\n', b' ', b'7', b'9', b'S', b'x', b'L'] {
                let mut m = t.clone();
                m[i] = v;
                let b = i / BLOCK;
                if headers.contains(&b) {
                    let block: &mut [u8; BLOCK] =
                        (&mut m[b * BLOCK..(b + 1) * BLOCK]).try_into().unwrap();
                    seal(block);
                }
                // Content bounded: a mutated sparse size may claim a hole of exabytes.
                let mut r = TarReader::new(&m[..]);
                while let Ok(Some(mut e)) = r.next_entry() {
                    let mut sink = Vec::new();
                    if (&mut e).take(1 << 16).read_to_end(&mut sink).is_err() {
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn sparse_map_is_validated() {
        assert!(sparse_content(vec![(0, 5), (3, 2)], 10, 7).is_err()); // overlap
        assert!(sparse_content(vec![(8, 5)], 10, 5).is_err()); // past the end
        assert!(sparse_content(vec![(0, 5)], 10, 6).is_err()); // data mismatch
        assert!(sparse_content(vec![(u64::MAX, 5)], u64::MAX, 5).is_err());
        assert!(sparse_content(vec![(2, 3), (10, 0)], 10, 3).is_ok());
    }

    /// Real GNU tar sparse archives, old GNU (`S` with extension blocks) and PAX 1.0.
    #[test]
    fn gnu_tar_sparse_files() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let f = std::fs::File::create(src.join("s.img")).unwrap();
        let size = 40u64 << 20;
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        let mut want = vec![0u8; size as usize];
        for i in 0..30u64 {
            let text = format!("region {i}");
            f.write_all_at(text.as_bytes(), i << 20 | 7).unwrap();
            let at = (i << 20 | 7) as usize;
            want[at..at + text.len()].copy_from_slice(text.as_bytes());
        }
        drop(f);
        for format in ["gnu", "posix"] {
            let out = dir.path().join(format!("{format}.tar"));
            let status = Command::new("tar")
                .arg(format!("--format={format}"))
                .args(["--sparse", "-C"])
                .arg(&src)
                .arg("-cf")
                .arg(&out)
                .arg("s.img")
                .status();
            match status {
                Ok(s) if s.success() => {}
                _ => {
                    eprintln!("SKIPPED: GNU tar is not available to write sparse archives");
                    return;
                }
            }
            let tar = std::fs::read(&out).unwrap();
            assert!(tar.len() < 1 << 20, "{format}: the archive is sparse");
            let got = read_all(&tar).unwrap();
            assert_eq!(got.len(), 1, "{format}");
            assert_eq!(got[0].0.path, b"s.img", "{format}");
            assert!(got[0].0.sparse, "{format}");
            assert!(got[0].1 == want, "{format}: content differs");
            // Truncated inside the data or the map: an error.
            for cut in [600, 1100, tar.len() / 2] {
                assert!(read_all(&tar[..cut]).is_err(), "{format} cut {cut}");
            }
        }
    }
}
