//! Content digests (`sha256:HEX`), hashing readers and writers, and OCI chain ids.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// A `sha256:` digest with 64 lowercase hex digits (the only algorithm gd accepts: it is the
/// one Docker and every OCI tool write, and the one chain ids are defined with).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, String> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            return Err(format!(
                "{s:?} is not a sha256 digest (only sha256 is supported)"
            ));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "{s:?} is not a sha256 digest (64 lowercase hex digits)"
            ));
        }
        Ok(Digest(s.to_string()))
    }

    pub fn from_hash(h: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(h.finalize())))
    }

    pub fn of(bytes: &[u8]) -> Digest {
        let mut h = Sha256::new();
        h.update(bytes);
        Digest::from_hash(h)
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, as `docker images` shows ids.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The OCI chain id of a layer stack: chain(L0) = diff(L0); chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln)).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The chain id of one more layer on top of `parent`.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(p) => Digest::of(format!("{p} {diff_id}").as_bytes()),
    }
}

/// Hashes and counts what is read through it; reports each chunk to `on_read`, whose error
/// (an interruption) fails the read.
pub struct HashingReader<'a, R> {
    inner: R,
    /// None: counting only (the digest is known from elsewhere).
    hash: Option<Sha256>,
    count: u64,
    on_read: Option<&'a mut dyn FnMut(u64) -> io::Result<()>>,
}

impl<'a, R: Read> HashingReader<'a, R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hash: Some(Sha256::new()),
            count: 0,
            on_read: None,
        }
    }
    /// Hashing (when `hash`) and counting, with `on_read` told of every read.
    pub fn with_progress(
        inner: R,
        hash: bool,
        on_read: &'a mut dyn FnMut(u64) -> io::Result<()>,
    ) -> Self {
        HashingReader {
            inner,
            hash: hash.then(Sha256::new),
            count: 0,
            on_read: Some(on_read),
        }
    }
    /// Read the rest of the stream (so that the digest covers all of it).
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }
    /// The digest (None when only counting) and the number of bytes read.
    pub fn finish(self) -> (Option<Digest>, u64) {
        (self.hash.map(Digest::from_hash), self.count)
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hash {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        if let Some(f) = self.on_read.as_mut() {
            f(n as u64)?;
        }
        Ok(n)
    }
}

/// Hashes and counts what is written through it.
pub struct HashingWriter<W> {
    pub inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }
    pub fn finish(self) -> (Digest, u64, W) {
        (Digest::from_hash(self.hash), self.count, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert_eq!(chain_id(Some(&ids[0]), &b), ids[1]);
    }

    #[test]
    fn parse_rejects_other_algorithms_and_bad_hex() {
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse("sha256:ABC").is_err());
        assert!(Digest::parse(Digest::of(b"").as_str()).is_ok());
    }
}
