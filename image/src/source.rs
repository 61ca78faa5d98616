//! Reading an image archive: a directory or a tar (plain or compressed, file or standard
//! input) holding an OCI image layout or a `docker save` archive.
//!
//! A tar is not extracted: it is indexed once (name -> offset and length of the member's
//! data) and members are then read in place with `pread`, one at a time, in whatever order
//! the image needs them. Only a compressed archive or standard input is first spooled,
//! decompressed, to a temporary file (one pass, bounded memory).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use driver_api::archive::beneath;
use rustix::fs::OFlags;

use crate::error::{ImageError, Result};

/// Largest JSON document (index, manifest, config) gd reads into memory.
pub const JSON_MAX: u64 = 64 << 20;

pub struct Source {
    /// What the user named, for messages.
    pub input: PathBuf,
    kind: Kind,
}

enum Kind {
    Dir {
        root: std::os::fd::OwnedFd,
    },
    Tar {
        file: File,
        members: HashMap<Vec<u8>, Member>,
        /// Keeps the spooled copy alive (deleted on drop).
        _spool: Option<tempfile::NamedTempFile>,
    },
}

#[derive(Debug, Clone)]
enum Member {
    Data { offset: u64, size: u64 },
    Link(Vec<u8>),
}

impl Source {
    /// Open `input`: a directory, a tar file (plain, gzip or zstd), or `-` for standard input.
    /// `spool_dir` holds the temporary copy when one is needed.
    pub fn open(input: &Path, spool_dir: &Path) -> Result<Source> {
        if input == Path::new("-") {
            let stdin = io::stdin();
            let spool = spool(stdin.lock(), input, spool_dir)?;
            return Source::from_tar(
                input,
                spool
                    .reopen()
                    .map_err(|e| ImageError::io("reopening", spool.path(), e))?,
                Some(spool),
            );
        }
        let md = std::fs::metadata(input).map_err(|e| ImageError::io("opening", input, e))?;
        if md.is_dir() {
            let root =
                beneath::open_root(input).map_err(|e| ImageError::io("opening", input, e))?;
            return Ok(Source {
                input: input.to_path_buf(),
                kind: Kind::Dir { root },
            });
        }
        let mut file = File::open(input).map_err(|e| ImageError::io("opening", input, e))?;
        let mut magic = [0u8; 4];
        let n =
            read_full(&mut file, &mut magic).map_err(|e| ImageError::io("reading", input, e))?;
        let compressed = magic[..n].starts_with(&[0x1f, 0x8b])
            || magic[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        file.seek(SeekFrom::Start(0))
            .map_err(|e| ImageError::io("reading", input, e))?;
        if compressed {
            let spool = spool(file, input, spool_dir)?;
            let f = spool
                .reopen()
                .map_err(|e| ImageError::io("reopening", spool.path(), e))?;
            return Source::from_tar(input, f, Some(spool));
        }
        Source::from_tar(input, file, None)
    }

    fn from_tar(
        input: &Path,
        file: File,
        spool: Option<tempfile::NamedTempFile>,
    ) -> Result<Source> {
        let bad = |m: String| ImageError::bad_input(input, m);
        let mut members = HashMap::new();
        let mut archive = tar::Archive::new(&file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| bad(format!("not a readable tar archive: {e}")))?;
            let name = match beneath::normalize(&entry.path_bytes()) {
                Ok(n) if !n.is_empty() => n,
                _ => continue,
            };
            let header = entry.header();
            let member = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::Data {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink => {
                    let Some(target) = entry.link_name_bytes() else {
                        continue;
                    };
                    // Relative to the link's directory, or to the archive root when absolute.
                    let (dir, _) = beneath::split_last(&name);
                    let joined = if target.starts_with(b"/") {
                        target.to_vec()
                    } else {
                        [dir, b"/", &target].concat()
                    };
                    match beneath::normalize(&joined) {
                        Ok(t) => Member::Link(t),
                        Err(_) => continue,
                    }
                }
                tar::EntryType::Link => {
                    let Some(target) = entry.link_name_bytes() else {
                        continue;
                    };
                    match beneath::normalize(&target) {
                        Ok(t) => Member::Link(t),
                        Err(_) => continue,
                    }
                }
                _ => continue,
            };
            members.insert(name, member);
        }
        Ok(Source {
            input: input.to_path_buf(),
            kind: Kind::Tar {
                file,
                members,
                _spool: spool,
            },
        })
    }

    /// Whether the archive has a file `name` (relative, `/`-separated).
    pub fn exists(&self, name: &str) -> bool {
        self.open_member(name).is_ok()
    }

    /// A member's content and length.
    pub fn open_member(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64)> {
        let rel = beneath::normalize(name.as_bytes())
            .map_err(|e| ImageError::bad_input(&self.input, format!("{name:?}: {e}")))?;
        let missing = || ImageError::bad_input(&self.input, format!("has no file {name:?}"));
        match &self.kind {
            Kind::Dir { root } => {
                use std::os::fd::AsFd;
                let fd =
                    beneath::open_beneath(root.as_fd(), &rel, OFlags::RDONLY).map_err(|e| {
                        if e.kind() == io::ErrorKind::NotFound {
                            missing()
                        } else {
                            ImageError::io("opening", self.input.join(name), e)
                        }
                    })?;
                let f = File::from(fd);
                let md = f
                    .metadata()
                    .map_err(|e| ImageError::io("reading", self.input.join(name), e))?;
                if !md.is_file() {
                    return Err(ImageError::bad_input(
                        &self.input,
                        format!("{name:?} is not a regular file"),
                    ));
                }
                Ok((Box::new(f), md.len()))
            }
            Kind::Tar { file, members, .. } => {
                let mut key = rel;
                for _ in 0..40 {
                    match members.get(&key) {
                        None => return Err(missing()),
                        Some(Member::Link(t)) => key = t.clone(),
                        Some(Member::Data { offset, size }) => {
                            return Ok((
                                Box::new(MemberReader {
                                    file,
                                    pos: *offset,
                                    end: offset + size,
                                }),
                                *size,
                            ))
                        }
                    }
                }
                Err(ImageError::bad_input(
                    &self.input,
                    format!("{name:?}: too many links"),
                ))
            }
        }
    }

    /// A small member read whole (JSON documents), refusing anything over `JSON_MAX`.
    pub fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let (mut r, size) = self.open_member(name)?;
        if size > JSON_MAX {
            return Err(ImageError::bad_input(
                &self.input,
                format!(
                    "{name:?} is {size} bytes, more than the {JSON_MAX} a JSON document may have"
                ),
            ));
        }
        let mut v = Vec::with_capacity(size as usize);
        r.read_to_end(&mut v)
            .map_err(|e| ImageError::io("reading", self.input.join(name), e))?;
        Ok(v)
    }
}

/// Reads one member of the archive file with `pread` (no shared file position).
struct MemberReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member is truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Copy `r` (decompressed if it is gzip or zstd) to a temporary file under `dir`.
fn spool(r: impl Read, input: &Path, dir: &Path) -> Result<tempfile::NamedTempFile> {
    std::fs::create_dir_all(dir).map_err(|e| ImageError::io("creating", dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| ImageError::io("creating a file in", dir, e))?;
    let (_, mut plain) =
        driver_api::archive::decompress(r).map_err(|e| ImageError::io("reading", input, e))?;
    io::copy(&mut plain, tmp.as_file_mut())
        .map_err(|e| ImageError::io("decompressing", input, e))?;
    Ok(tmp)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
