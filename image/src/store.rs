//! The image store: image records over any `GraphDriver`.
//!
//! On disk, under the directory given to [`ImageStore::open`] (the CLI uses
//! `<root>/images/<driver>/`, next to the driver's own `<root>/<driver>/`):
//!
//! ```text
//! lock                    flock: shared to read, exclusive to change anything below
//! refs.json               reference -> image id
//! images/<hex>.json       one image: its config digest (the id), layers, original blobs
//! blobs/sha256/<hex>      configs and original manifests, byte for byte
//! tarsplit/<chain>.zst    what reproduces a layer's original tar (see `tarsplit`)
//! tmp/                    spooled archives and half-written record files
//! ```
//!
//! Layers live in the driver under their chain id (64 hex digits), so images that share
//! layers share storage. A layer is complete when it exists in the driver and has its
//! tar-split record (written last, after every digest was checked); a layer the store has
//! but without a record is a leftover of an interrupted import and is rebuilt.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, BufRead, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use driver_api::archive::Compression;
use driver_api::fsutil::{atomic_write, LockGuard, LockMode, OutputFile};
use driver_api::{CreateOptions, GraphDriver};
use serde::{Deserialize, Serialize};

use crate::digest::{chain_id, chain_ids, Digest, HashingReader, HashingWriter};
use crate::error::{ImageError, Result};
use crate::format::{self, ImagePlan, LayerPlan};
use crate::progress::Progress;
use crate::source::Source;
use crate::tarsplit::{self, SplitRecorder};

/// The blob a layer was imported from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRecord {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// The layer's id in the driver is this digest's hex.
    pub chain_id: Digest,
    pub diff_id: Digest,
    /// Length of the uncompressed tar.
    pub size: u64,
    /// What it was imported from (for a committed layer: the uncompressed tar itself).
    pub blob: BlobRecord,
}

impl LayerRecord {
    pub fn layer_id(&self) -> &str {
        self.chain_id.hex()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The config's digest, as Docker defines an image id.
    pub id: Digest,
    pub config_media_type: String,
    /// The manifest the image came with, kept byte for byte.
    pub manifest: Option<ManifestRecord>,
    pub layers: Vec<LayerRecord>,
    /// Seconds since the epoch when it was imported or committed.
    pub added: i64,
    /// `oci`, `docker` or `commit`.
    pub source: String,
}

impl ImageRecord {
    pub fn top_layer(&self) -> Option<&str> {
        self.layers.last().map(|l| l.layer_id())
    }
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// An image and the references naming it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    pub refs: Vec<String>,
    #[serde(flatten)]
    pub record: ImageRecord,
}

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Name the (single) imported image with this reference instead of the archive's.
    pub tag: Option<String>,
    /// From a multi-platform index, import the image for this platform (default: this
    /// machine's, `linux/amd64` on x86-64).
    pub platform: Option<format::Platform>,
}

/// What one import did.
#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    pub id: Digest,
    pub refs: Vec<String>,
    pub layers: usize,
    /// Layers that were already stored (shared with another image or imported before).
    pub reused: usize,
    pub bytes_read: u64,
}

/// What `gc` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub removed: Vec<String>,
    /// Layers no image uses that stay because a container layer sits on them or they are mounted.
    pub kept: Vec<(String, String)>,
}

pub struct ImageStore<'d> {
    dir: PathBuf,
    driver: &'d dyn GraphDriver,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Check a reference (`name:tag`, `registry/name:tag`, `name@sha256:...`) and add `:latest`
/// when it has neither a tag nor a digest.
pub fn normalize_ref(r: &str) -> Result<String> {
    let bad = |reason| {
        Err(ImageError::BadReference {
            reference: r.to_string(),
            reason,
        })
    };
    if r.is_empty() {
        return bad("it is empty");
    }
    if r.len() > 255 {
        return bad("it is longer than 255 bytes");
    }
    if !r
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
    {
        return bad("only letters, digits and '.', '_', '-', '/', ':', '@' are allowed");
    }
    if !r.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("it must start with a letter or digit");
    }
    if r.starts_with("sha256:") {
        return bad("it looks like an image id");
    }
    let last = r.rsplit('/').next().unwrap_or(r);
    if last.contains(':') || r.contains('@') {
        Ok(r.to_string())
    } else {
        Ok(format!("{r}:latest"))
    }
}

impl<'d> ImageStore<'d> {
    pub fn open(dir: &Path, driver: &'d dyn GraphDriver) -> Result<Self> {
        for sub in ["images", "blobs/sha256", "tarsplit", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| ImageError::io("creating", &p, e))?;
        }
        Ok(ImageStore {
            dir: dir.to_path_buf(),
            driver,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn driver(&self) -> &dyn GraphDriver {
        self.driver
    }

    fn lock(&self, mode: LockMode) -> Result<LockGuard> {
        let p = self.dir.join("lock");
        LockGuard::acquire(&p, mode).map_err(|e| ImageError::io("locking", p, e))
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.dir.join("images").join(format!("{}.json", id.hex()))
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    /// Where the tar-split record of a layer lives.
    pub fn split_path(&self, layer_id: &str) -> PathBuf {
        self.dir.join("tarsplit").join(format!("{layer_id}.zst"))
    }

    fn write_json(&self, path: &Path, v: &impl Serialize) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(v).expect("serializable");
        bytes.push(b'\n');
        atomic_write(path, &bytes).map_err(|e| ImageError::io("writing", path, e))
    }

    fn read_refs(&self) -> Result<BTreeMap<String, Digest>> {
        let p = self.dir.join("refs.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                ImageError::io("parsing", &p, io::Error::new(io::ErrorKind::InvalidData, e))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ImageError::io("reading", p, e)),
        }
    }

    fn write_refs(&self, refs: &BTreeMap<String, Digest>) -> Result<()> {
        self.write_json(&self.dir.join("refs.json"), refs)
    }

    fn load(&self, id: &Digest) -> Result<ImageRecord> {
        let p = self.record_path(id);
        let b = fs::read(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::UnknownImage {
                    reference: id.to_string(),
                }
            } else {
                ImageError::io("reading", &p, e)
            }
        })?;
        serde_json::from_slice(&b).map_err(|e| {
            ImageError::io("parsing", &p, io::Error::new(io::ErrorKind::InvalidData, e))
        })
    }

    fn all_records(&self) -> Result<Vec<ImageRecord>> {
        let d = self.dir.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&d).map_err(|e| ImageError::io("reading", &d, e))? {
            let e = e.map_err(|e| ImageError::io("reading", &d, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(id) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            out.push(self.load(&id)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The raw config of an image.
    pub fn config(&self, rec: &ImageRecord) -> Result<Vec<u8>> {
        let p = self.blob_path(&rec.id);
        fs::read(&p).map_err(|e| ImageError::io("reading", p, e))
    }

    /// Find an image by reference, full id, or a unique prefix of the id's hex (4 digits or more).
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord> {
        let _l = self.lock(LockMode::Shared)?;
        self.resolve_locked(reference)
    }

    fn resolve_locked(&self, reference: &str) -> Result<ImageRecord> {
        let refs = self.read_refs()?;
        if let Some(id) = refs.get(reference) {
            return self.load(id);
        }
        if let Ok(n) = normalize_ref(reference) {
            if let Some(id) = refs.get(&n) {
                return self.load(id);
            }
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hex = hex.to_ascii_lowercase();
            let matches: Vec<ImageRecord> = self
                .all_records()?
                .into_iter()
                .filter(|r| r.id.hex().starts_with(&hex))
                .collect();
            match matches.len() {
                0 => {}
                1 => return Ok(matches.into_iter().next().expect("one")),
                _ => {
                    return Err(ImageError::AmbiguousImage {
                        reference: reference.to_string(),
                        matches: matches
                            .iter()
                            .map(|r| r.id.short().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            }
        }
        Err(ImageError::UnknownImage {
            reference: reference.to_string(),
        })
    }

    /// Every image with its references, by first reference (untagged last).
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let _l = self.lock(LockMode::Shared)?;
        let refs = self.read_refs()?;
        let mut by_id: HashMap<Digest, Vec<String>> = HashMap::new();
        for (r, id) in refs {
            by_id.entry(id).or_default().push(r);
        }
        let mut out: Vec<ImageSummary> = self
            .all_records()?
            .into_iter()
            .map(|record| ImageSummary {
                refs: by_id.remove(&record.id).unwrap_or_default(),
                record,
            })
            .collect();
        out.sort_by(|a, b| {
            (a.refs.is_empty(), a.refs.first(), &a.record.id).cmp(&(
                b.refs.is_empty(),
                b.refs.first(),
                &b.record.id,
            ))
        });
        Ok(out)
    }

    /// The references naming an image.
    pub fn refs_of(&self, id: &Digest) -> Result<Vec<String>> {
        Ok(self
            .read_refs()?
            .into_iter()
            .filter(|(_, d)| d == id)
            .map(|(r, _)| r)
            .collect())
    }

    /// Whether a layer is stored completely (exists and has its tar-split record).
    fn layer_complete(&self, layer_id: &str) -> Result<bool> {
        Ok(self.driver.exists(layer_id)? && self.split_path(layer_id).is_file())
    }

    // ---- import ------------------------------------------------------------------------

    /// Import every image of an archive (directory, tar, compressed tar, or `-`).
    pub fn import(
        &self,
        input: &Path,
        opts: &ImportOptions,
        progress: &mut dyn Progress,
    ) -> Result<Vec<Imported>> {
        let tag = opts.tag.as_deref().map(normalize_ref).transpose()?;
        let _l = self.lock(LockMode::Exclusive)?;
        let src = Source::open(input, &self.dir.join("tmp"))?;
        let platform = opts.platform.clone().unwrap_or_else(format::host_platform);
        let plans = format::plan(&src, &platform)?;
        if plans.is_empty() {
            return Err(ImageError::bad_input(input, "holds no image"));
        }
        if tag.is_some() && plans.len() != 1 {
            return Err(ImageError::Usage(format!(
                "{} holds {} images; --tag names only one",
                input.display(),
                plans.len()
            )));
        }
        // Work out what must be read, for the progress line.
        let mut todo_layers = 0;
        let mut todo_bytes = 0;
        let mut seen = BTreeSet::new();
        for p in &plans {
            let diffs: Vec<Digest> = p.layers.iter().map(|l| l.diff_id.clone()).collect();
            for (l, c) in p.layers.iter().zip(chain_ids(&diffs)) {
                todo_layers += 1;
                if seen.insert(c.clone()) && !self.layer_complete(c.hex())? {
                    todo_bytes += src.open_member(&l.blob).map(|(_, s)| s).unwrap_or(0);
                }
            }
        }
        progress.start("import", todo_layers, todo_bytes);
        // Every reference is checked before any work.
        let refs: Vec<Vec<String>> = plans
            .iter()
            .map(|p| match &tag {
                Some(t) => Ok(vec![t.clone()]),
                None => p
                    .refs
                    .iter()
                    .map(|r| normalize_ref(r))
                    .collect::<Result<Vec<_>>>(),
            })
            .collect::<Result<_>>()?;
        let mut created: Vec<String> = Vec::new();
        let mut done = Vec::new();
        let mut index = 0;
        let result = (|| -> Result<()> {
            let mut records = Vec::new();
            for (p, r) in plans.iter().zip(&refs) {
                let (imported, record) =
                    self.import_one(&src, p, r, &mut created, &mut index, progress)?;
                done.push(imported);
                records.push(record);
            }
            // Records only once every layer of every image is stored: a failure above
            // leaves no image pointing at layers that are then removed.
            for ((p, r), record) in plans.iter().zip(&refs).zip(&records) {
                self.record_image(p, record, r)?;
            }
            Ok(())
        })();
        progress.finish();
        if let Err(e) = result {
            // Nothing of a failed import is kept: remove what it created, newest first
            // (except what an image recorded before the failure uses).
            let in_use: BTreeSet<String> = self
                .all_records()
                .unwrap_or_default()
                .iter()
                .flat_map(|r| r.layers.iter().map(|l| l.layer_id().to_string()))
                .collect();
            for id in created.iter().rev().filter(|id| !in_use.contains(*id)) {
                let _ = self.driver.remove(id);
                let _ = fs::remove_file(self.split_path(id));
            }
            return Err(e);
        }
        Ok(done)
    }

    /// Store the layers of one image; returns what was done and the image's record (written
    /// by the caller once every image of the archive is stored).
    fn import_one(
        &self,
        src: &Source,
        plan: &ImagePlan,
        refs: &[String],
        created: &mut Vec<String>,
        index: &mut usize,
        progress: &mut dyn Progress,
    ) -> Result<(Imported, ImageRecord)> {
        let diffs: Vec<Digest> = plan.layers.iter().map(|l| l.diff_id.clone()).collect();
        let chains = chain_ids(&diffs);
        let mut layers = Vec::new();
        let mut reused = 0;
        let mut bytes_read = 0;
        for (i, (lp, chain)) in plan.layers.iter().zip(&chains).enumerate() {
            let id = chain.hex().to_string();
            let parent = i.checked_sub(1).map(|p| chains[p].hex());
            let (record, read) = if self.layer_complete(&id)? {
                progress.layer(*index, &id, true);
                reused += 1;
                (self.known_layer(src, lp, chain)?, 0)
            } else {
                progress.layer(*index, &id, false);
                self.import_layer(src, lp, chain, parent, created, progress)?
            };
            *index += 1;
            bytes_read += read;
            layers.push(record);
        }
        let manifest = plan
            .manifest
            .as_ref()
            .map(|(_, digest, media_type)| ManifestRecord {
                digest: digest.clone(),
                media_type: media_type.clone(),
            });
        let record = ImageRecord {
            id: plan.config_digest.clone(),
            config_media_type: if plan.format == "docker" {
                format::OCI_CONFIG.to_string()
            } else {
                plan.config_media_type.clone()
            },
            manifest,
            layers,
            added: now_secs(),
            source: plan.format.to_string(),
        };
        let imported = Imported {
            id: record.id.clone(),
            refs: refs.to_vec(),
            layers: plan.layers.len(),
            reused,
            bytes_read,
        };
        Ok((imported, record))
    }

    /// Record an image whose layers are all stored: config and manifest byte for byte, the
    /// record, the references.
    fn record_image(&self, plan: &ImagePlan, record: &ImageRecord, refs: &[String]) -> Result<()> {
        self.put_blob(&plan.config_digest, &plan.config)?;
        if let Some((bytes, digest, _)) = &plan.manifest {
            self.put_blob(digest, bytes)?;
        }
        // An image imported again keeps its first record (and its `added` time).
        if !self.record_path(&record.id).exists() {
            self.write_json(&self.record_path(&record.id), record)?;
        }
        let mut all = self.read_refs()?;
        for r in refs {
            all.insert(r.clone(), record.id.clone());
        }
        self.write_refs(&all)
    }

    fn put_blob(&self, d: &Digest, bytes: &[u8]) -> Result<()> {
        let p = self.blob_path(d);
        if p.exists() {
            return Ok(());
        }
        atomic_write(&p, bytes).map_err(|e| ImageError::io("writing", p, e))
    }

    /// The record of a layer that is already stored, described by this archive's blob.
    fn known_layer(&self, src: &Source, lp: &LayerPlan, chain: &Digest) -> Result<LayerRecord> {
        let summary = tarsplit::summary(&self.split_path(chain.hex()))?;
        let size = match lp.size {
            Some(s) => s,
            None => src.open_member(&lp.blob).map(|(_, s)| s)?,
        };
        Ok(LayerRecord {
            chain_id: chain.clone(),
            diff_id: lp.diff_id.clone(),
            size: summary.size,
            blob: BlobRecord {
                digest: lp.digest.clone().unwrap_or_else(|| lp.diff_id.clone()),
                media_type: lp.media_type.clone(),
                size,
            },
        })
    }

    /// Create the layer `chain` on `parent` and fill it from the blob, checking the blob's
    /// digest and the diff id while streaming. Returns its record and the bytes read.
    fn import_layer(
        &self,
        src: &Source,
        lp: &LayerPlan,
        chain: &Digest,
        parent: Option<&str>,
        created: &mut Vec<String>,
        progress: &mut dyn Progress,
    ) -> Result<(LayerRecord, u64)> {
        let id = chain.hex();
        if self.driver.exists(id)? {
            // Left by an interrupted import (no tar-split record): rebuild it.
            self.driver.remove(id)?;
        }
        let (reader, _) = src.open_member(&lp.blob)?;
        let mut reader = io::BufReader::with_capacity(256 * 1024, reader);
        let head = reader
            .fill_buf()
            .map_err(|e| ImageError::io("reading", src.input.join(&lp.blob), e))?;
        // An uncompressed blob is the layer tar itself: its digest is the diff id, which the
        // recorder computes, so hashing it here too would cost a second SHA-256 pass.
        let compressed = Compression::of(head) != Compression::None;
        self.driver.create(id, parent, &CreateOptions::default())?;
        created.push(id.to_string());
        let mut on_read = |n: u64| {
            progress.bytes(n);
            match progress.interrupted() {
                Some(why) => Err(io::Error::other(why)),
                None => Ok(()),
            }
        };
        let mut blob = HashingReader::with_progress(reader, compressed, &mut on_read);
        let (split_tmp, applied, diff) = self.apply_recorded(id, &mut blob)?;
        // What the applier did not read (trailing bytes of the compressed stream) counts too.
        let drained = blob.drain();
        let (blob_digest, blob_size) = blob.finish();
        let blob_digest = blob_digest.or_else(|| diff.as_ref().ok().map(|(d, _)| d.clone()));
        let expected_blob = lp.digest.clone();
        let blob_bad = match (&expected_blob, &blob_digest) {
            (Some(want), Some(got)) => drained.is_ok() && got != want,
            _ => false,
        };
        let what = format!("layer blob {}", lp.blob);
        if blob_bad {
            return Err(ImageError::DigestMismatch {
                what,
                expected: expected_blob.expect("checked").to_string(),
                actual: blob_digest.expect("checked").to_string(),
            });
        }
        if let Ok((d, _)) = &diff {
            if d != &lp.diff_id {
                return Err(ImageError::DigestMismatch {
                    what: format!("{what} (uncompressed: its diff id)"),
                    expected: lp.diff_id.to_string(),
                    actual: d.to_string(),
                });
            }
        }
        applied?;
        drained.map_err(|e| ImageError::io("reading", src.input.join(&lp.blob), e))?;
        let (diff_id, tar_size) =
            diff.map_err(|e| ImageError::io("reading", src.input.join(&lp.blob), e))?;
        let blob_digest = blob_digest.unwrap_or_else(|| diff_id.clone());
        if let Some(s) = lp.size {
            if s != blob_size {
                return Err(ImageError::DigestMismatch {
                    what: format!("{what} (size)"),
                    expected: format!("{s} bytes"),
                    actual: format!("{blob_size} bytes"),
                });
            }
        }
        let dest = self.split_path(id);
        split_tmp
            .persist(&dest)
            .map_err(|e| ImageError::io("writing", &dest, e.error))?;
        driver_api::fsutil::sync_dir(&self.dir.join("tarsplit"))
            .map_err(|e| ImageError::io("syncing", &dest, e))?;
        Ok((
            LayerRecord {
                chain_id: chain.clone(),
                diff_id,
                size: tar_size,
                blob: BlobRecord {
                    digest: expected_blob.unwrap_or(blob_digest),
                    media_type: lp.media_type.clone(),
                    size: blob_size,
                },
            },
            blob_size,
        ))
    }

    /// Decompress `blob` and apply it onto the (new) layer `id` through a tar-split recorder.
    /// Returns the record file, the apply's result, and the diff id and length of the tar
    /// (when the whole tar could be read).
    #[allow(clippy::type_complexity)]
    fn apply_recorded(
        &self,
        id: &str,
        blob: &mut dyn Read,
    ) -> Result<(
        tempfile::NamedTempFile,
        Result<u64>,
        io::Result<(Digest, u64)>,
    )> {
        let dir = self.dir.join("tarsplit");
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(|e| ImageError::io("creating a file in", &dir, e))?;
        let out = tmp
            .reopen()
            .map_err(|e| ImageError::io("opening", tmp.path(), e))?;
        let (_, plain) = driver_api::archive::decompress(blob)
            .map_err(|e| ImageError::io("reading", "layer blob", e))?;
        let mut rec =
            SplitRecorder::new(plain, out).map_err(|e| ImageError::io("writing", tmp.path(), e))?;
        let applied = self
            .driver
            .apply_diff(id, &mut rec)
            .map_err(ImageError::from);
        let diff = match &applied {
            Ok(_) => rec.drain().and_then(|()| rec.finish()),
            Err(_) => rec.digest_rest(),
        };
        Ok((tmp, applied, diff))
    }

    // ---- views -------------------------------------------------------------------------

    /// Mount an image's merged view and return its path: its top layer's (read-only), or with
    /// `rw` a read-write container layer of that name on top (created if needed).
    pub fn mount(&self, reference: &str, rw: Option<&str>) -> Result<PathBuf> {
        let _l = self.lock(LockMode::Shared)?;
        let rec = self.resolve_locked(reference)?;
        let top = rec.top_layer().ok_or_else(|| {
            ImageError::Usage(format!(
                "image {} has no layers: there is nothing to mount",
                rec.id.short()
            ))
        })?;
        match rw {
            None => Ok(self.driver.get(top)?),
            Some(name) => {
                if self.driver.exists(name)? {
                    let info = self.driver.info(name)?;
                    if info.parent.as_deref() != Some(top) {
                        return Err(ImageError::Usage(format!(
                            "layer {name} exists and is not a container layer of image {} (its parent is {})",
                            rec.id.short(),
                            info.parent.as_deref().unwrap_or("none")
                        )));
                    }
                } else {
                    self.driver.create(
                        name,
                        Some(top),
                        &CreateOptions {
                            rw: true,
                            ..Default::default()
                        },
                    )?;
                }
                Ok(self.driver.get(name)?)
            }
        }
    }

    /// Release one mount of an image's top layer (what `mount` without `rw` took).
    pub fn unmount(&self, reference: &str) -> Result<()> {
        let rec = self.resolve(reference)?;
        let top = rec
            .top_layer()
            .ok_or_else(|| ImageError::Usage("image has no layers".into()))?;
        Ok(self.driver.put(top)?)
    }

    /// Write the image's merged view as one canonical tar (docs/changeset.md §3, against an
    /// empty parent).
    pub fn flatten(&self, reference: &str, out: &mut dyn Write) -> Result<u64> {
        let rec = self.resolve(reference)?;
        let Some(top) = rec.top_layer() else {
            // An image without layers is an empty tree.
            return driver_api::archive::pax::write_end(out)
                .map_err(|e| ImageError::io("writing", "-", e));
        };
        let view = self.driver.get(top)?;
        let res = driver_api::archive::write_changeset(None, &view, out);
        let put = self.driver.put(top);
        let n = res?;
        put?;
        Ok(n)
    }

    // ---- remove ------------------------------------------------------------------------

    /// Remove a reference; the image goes with its last reference (or when named by id), and
    /// its layers with it unless another image or a container layer uses them.
    pub fn remove(&self, reference: &str) -> Result<(Option<Digest>, GcReport)> {
        let _l = self.lock(LockMode::Exclusive)?;
        let rec = self.resolve_locked(reference)?;
        let mut refs = self.read_refs()?;
        let by_ref = refs.contains_key(reference)
            || normalize_ref(reference).is_ok_and(|n| refs.contains_key(&n));
        let named: Vec<String> = refs
            .iter()
            .filter(|(_, d)| **d == rec.id)
            .map(|(r, _)| r.clone())
            .collect();
        if by_ref && named.len() > 1 {
            let key = if refs.contains_key(reference) {
                reference.to_string()
            } else {
                normalize_ref(reference)?
            };
            refs.remove(&key);
            self.write_refs(&refs)?;
            return Ok((None, GcReport::default()));
        }
        refs.retain(|_, d| *d != rec.id);
        self.write_refs(&refs)?;
        let p = self.record_path(&rec.id);
        driver_api::fsutil::durable_remove(&p).map_err(|e| ImageError::io("removing", &p, e))?;
        // The config goes unless another record is the same image (it cannot be: same id).
        let _ = fs::remove_file(self.blob_path(&rec.id));
        if let Some(m) = &rec.manifest {
            if !self
                .all_records()?
                .iter()
                .any(|r| r.manifest.as_ref() == Some(m))
            {
                let _ = fs::remove_file(self.blob_path(&m.digest));
            }
        }
        let report = self.gc_locked()?;
        Ok((Some(rec.id), report))
    }

    /// Remove every image layer (a layer with a tar-split record) that no image uses and on
    /// which no other layer sits.
    pub fn gc(&self) -> Result<GcReport> {
        let _l = self.lock(LockMode::Exclusive)?;
        self.gc_locked()
    }

    fn gc_locked(&self) -> Result<GcReport> {
        let in_use: BTreeSet<String> = self
            .all_records()?
            .iter()
            .flat_map(|r| r.layers.iter().map(|l| l.layer_id().to_string()))
            .collect();
        let mut report = GcReport::default();
        loop {
            let layers = self.driver.list()?;
            let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
            for l in &layers {
                if let Some(p) = &l.parent {
                    children.entry(p.as_str()).or_default().push(&l.id);
                }
            }
            let mut progress = false;
            report.kept.clear();
            for l in &layers {
                if in_use.contains(&l.id) || !self.split_path(&l.id).is_file() {
                    continue;
                }
                if let Some(c) = children.get(l.id.as_str()) {
                    report
                        .kept
                        .push((l.id.clone(), format!("layer {} sits on it", c.join(", "))));
                    continue;
                }
                if l.mounts > 0 {
                    report
                        .kept
                        .push((l.id.clone(), format!("mounted {} time(s)", l.mounts)));
                    continue;
                }
                self.driver.remove(&l.id)?;
                let _ = fs::remove_file(self.split_path(&l.id));
                report.removed.push(l.id.clone());
                progress = true;
            }
            if !progress {
                return Ok(report);
            }
        }
    }

    // ---- commit ------------------------------------------------------------------------

    /// Turn `layer` (usually a container layer made by `mount --rw`) into a new image: its
    /// changes become one more image layer on top of the image it sits on.
    pub fn commit(&self, layer: &str, tag: &str, progress: &mut dyn Progress) -> Result<Digest> {
        let tag = normalize_ref(tag)?;
        let _l = self.lock(LockMode::Exclusive)?;
        let info = self.driver.info(layer)?;
        let base = match &info.parent {
            None => None,
            Some(p) => Some(
                self.all_records()?
                    .into_iter()
                    .filter(|r| r.top_layer() == Some(p.as_str()))
                    .min_by_key(|r| (self.refs_of(&r.id).map(|v| v.is_empty()).unwrap_or(true), r.id.clone()))
                    .ok_or_else(|| {
                        ImageError::Usage(format!(
                            "layer {layer} sits on {p}, which is not the top layer of any image; commit needs a layer made on an image (gd image mount REF --rw NAME)"
                        ))
                    })?,
            ),
        };
        progress.start("commit", 1, 0);
        // The changes, to a temporary file: their digest names the new layer before it exists.
        let tmpdir = self.dir.join("tmp");
        let mut tmp = tempfile::tempfile_in(&tmpdir)
            .map_err(|e| ImageError::io("creating a file in", &tmpdir, e))?;
        let mut w = HashingWriter::new(BufWriter::new(&mut tmp));
        self.driver.diff(layer, &mut w)?;
        let (diff_id, tar_size, bw) = w.finish();
        bw.into_inner()
            .map_err(|e| ImageError::io("writing", &tmpdir, e.into_error()))?;
        let parent_chain = base
            .as_ref()
            .and_then(|b| b.layers.last())
            .map(|l| l.chain_id.clone());
        let chain = chain_id(parent_chain.as_ref(), &diff_id);
        let id = chain.hex().to_string();
        progress.layer(0, &id, false);
        if !self.layer_complete(&id)? {
            if self.driver.exists(&id)? {
                self.driver.remove(&id)?;
            }
            tmp.rewind()
                .map_err(|e| ImageError::io("reading", &tmpdir, e))?;
            self.driver
                .create(&id, info.parent.as_deref(), &CreateOptions::default())?;
            let res = (|| {
                let (split, applied, diff) = self.apply_recorded(&id, &mut tmp)?;
                applied?;
                let (d, _) = diff.map_err(|e| ImageError::io("reading", &tmpdir, e))?;
                if d != diff_id {
                    return Err(ImageError::DigestMismatch {
                        what: format!("changes of layer {layer}"),
                        expected: diff_id.to_string(),
                        actual: d.to_string(),
                    });
                }
                let dest = self.split_path(&id);
                split
                    .persist(&dest)
                    .map_err(|e| ImageError::io("writing", &dest, e.error))?;
                Ok(())
            })();
            if let Err(e) = res {
                let _ = self.driver.remove(&id);
                return Err(e);
            }
        }
        progress.finish();
        let mut config: serde_json::Value = match &base {
            Some(b) => serde_json::from_slice(&self.config(b)?)
                .map_err(|e| ImageError::Usage(format!("config of image {}: {e}", b.id.short())))?,
            None => {
                let p = format::host_platform();
                serde_json::json!({
                    "architecture": p.architecture,
                    "os": p.os,
                    "config": {},
                    "rootfs": {"type": "layers", "diff_ids": []},
                    "history": [],
                })
            }
        };
        let created = rfc3339(now_secs());
        config["created"] = created.clone().into();
        let diffs = config["rootfs"]["diff_ids"]
            .as_array_mut()
            .ok_or_else(|| ImageError::Usage("base image config has no rootfs.diff_ids".into()))?;
        diffs.push(diff_id.to_string().into());
        let entry =
            serde_json::json!({"created": created, "created_by": format!("gd commit {layer}")});
        match config.get_mut("history").and_then(|h| h.as_array_mut()) {
            Some(h) => h.push(entry),
            None => config["history"] = serde_json::json!([entry]),
        }
        let bytes = serde_json::to_vec(&config).expect("serializable");
        let image_id = Digest::of(&bytes);
        self.put_blob(&image_id, &bytes)?;
        let mut layers = base.map(|b| b.layers).unwrap_or_default();
        layers.push(LayerRecord {
            chain_id: chain,
            diff_id: diff_id.clone(),
            size: tar_size,
            blob: BlobRecord {
                digest: diff_id,
                media_type: format::OCI_LAYER_TAR.into(),
                size: tar_size,
            },
        });
        let record = ImageRecord {
            id: image_id.clone(),
            config_media_type: format::OCI_CONFIG.into(),
            manifest: None,
            layers,
            added: now_secs(),
            source: "commit".into(),
        };
        if !self.record_path(&image_id).exists() {
            self.write_json(&self.record_path(&image_id), &record)?;
        }
        let mut refs = self.read_refs()?;
        refs.insert(tag, image_id.clone());
        self.write_refs(&refs)?;
        Ok(image_id)
    }

    // ---- export ------------------------------------------------------------------------

    /// Write images as one archive that is both an OCI image layout and a `docker save`
    /// tarball. Layers are written uncompressed, byte-identical to the tar they were imported
    /// from (see docs/images.md). `out` is written whole or not at all.
    pub fn export(
        &self,
        references: &[String],
        out: &Path,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let _l = self.lock(LockMode::Shared)?;
        let images = self.export_plan(references)?;
        let mut file = OutputFile::create(out).map_err(|e| ImageError::io("creating", out, e))?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, file.file());
            self.write_archive(&images, &mut w, progress)?;
            w.flush().map_err(|e| ImageError::io("writing", out, e))?;
        }
        file.commit().map_err(|e| ImageError::io("writing", out, e))
    }

    /// The same archive, streamed to `w` (standard output, a pipe into `docker load`).
    pub fn export_to(
        &self,
        references: &[String],
        w: &mut dyn Write,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let _l = self.lock(LockMode::Shared)?;
        let images = self.export_plan(references)?;
        self.write_archive(&images, w, progress)
    }

    /// The images to export with the references to give them: a reference names itself, an
    /// id names the image with all its references. An image named twice goes out once.
    fn export_plan(&self, references: &[String]) -> Result<Vec<(ImageRecord, Vec<String>)>> {
        let all_refs = self.read_refs()?;
        let mut images: Vec<(ImageRecord, Vec<String>)> = Vec::new();
        for r in references {
            let rec = self.resolve_locked(r)?;
            let named = if all_refs.contains_key(r.as_str()) {
                Some(r.clone())
            } else {
                normalize_ref(r).ok().filter(|n| all_refs.contains_key(n))
            };
            let refs = match named {
                Some(n) => vec![n],
                None => self.refs_of(&rec.id)?,
            };
            match images.iter_mut().find(|(i, _)| i.id == rec.id) {
                Some((_, have)) => {
                    for n in refs {
                        if !have.contains(&n) {
                            have.push(n);
                        }
                    }
                }
                None => images.push((rec, refs)),
            }
        }
        Ok(images)
    }

    fn write_archive(
        &self,
        images: &[(ImageRecord, Vec<String>)],
        w: &mut dyn Write,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let werr = |e: io::Error| ImageError::io("writing", "the archive", e);
        let total: u64 = images
            .iter()
            .flat_map(|(r, _)| r.layers.iter().map(|l| l.size))
            .sum();
        let nlayers = images.iter().map(|(r, _)| r.layers.len()).sum();
        progress.start("export", nlayers, total);
        let mut written: BTreeSet<Digest> = BTreeSet::new();
        let mut index_entries = Vec::new();
        let mut docker_entries = Vec::new();
        let mut n = 0;
        write_member(w, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr)?;
        write_dir(w, "blobs/").map_err(werr)?;
        write_dir(w, "blobs/sha256/").map_err(werr)?;
        for (rec, refs) in images {
            for l in &rec.layers {
                progress.layer(n, l.layer_id(), false);
                n += 1;
                if !written.insert(l.diff_id.clone()) {
                    continue;
                }
                self.write_layer(l, w, progress)?;
            }
            let config = self.config(rec)?;
            if written.insert(rec.id.clone()) {
                write_member(w, &format!("blobs/sha256/{}", rec.id.hex()), &config)
                    .map_err(werr)?;
            }
            let (manifest, mdigest, mtype) = self.manifest_for(rec, config.len() as u64)?;
            if written.insert(mdigest.clone()) {
                write_member(w, &format!("blobs/sha256/{}", mdigest.hex()), &manifest)
                    .map_err(werr)?;
            }
            let names: Vec<Option<&String>> = if refs.is_empty() {
                vec![None]
            } else {
                refs.iter().map(Some).collect()
            };
            for r in names {
                let annotations = r.map(|r| {
                    let tag = r
                        .rsplit_once(':')
                        .filter(|(n, _)| !n.contains('@'))
                        .map(|(_, t)| t.to_string())
                        .unwrap_or_else(|| r.clone());
                    BTreeMap::from([
                        (format::CONTAINERD_NAME.to_string(), r.clone()),
                        (format::REF_NAME.to_string(), tag),
                    ])
                });
                index_entries.push(format::Descriptor {
                    media_type: mtype.clone(),
                    digest: mdigest.to_string(),
                    size: manifest.len() as u64,
                    annotations,
                    platform: None,
                    urls: None,
                });
            }
            docker_entries.push(serde_json::json!({
                "Config": format!("blobs/sha256/{}", rec.id.hex()),
                "RepoTags": refs.iter().filter(|r| !r.contains('@')).collect::<Vec<_>>(),
                "Layers": rec.layers.iter().map(|l| format!("blobs/sha256/{}", l.diff_id.hex())).collect::<Vec<_>>(),
            }));
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": format::OCI_INDEX,
            "manifests": index_entries,
        });
        write_member(w, "index.json", &serde_json::to_vec(&index).expect("json")).map_err(werr)?;
        write_member(
            w,
            "manifest.json",
            &serde_json::to_vec(&docker_entries).expect("json"),
        )
        .map_err(werr)?;
        w.write_all(&[0u8; 1024]).map_err(werr)?;
        progress.finish();
        Ok(())
    }

    /// The manifest to export: the original one when every layer goes out as the very blob
    /// it names (uncompressed imports), else a new OCI manifest for the uncompressed layers.
    fn manifest_for(
        &self,
        rec: &ImageRecord,
        config_size: u64,
    ) -> Result<(Vec<u8>, Digest, String)> {
        if let Some(m) = &rec.manifest {
            if rec.layers.iter().all(|l| l.blob.digest == l.diff_id) {
                let p = self.blob_path(&m.digest);
                let bytes = fs::read(&p).map_err(|e| ImageError::io("reading", p, e))?;
                return Ok((bytes, m.digest.clone(), m.media_type.clone()));
            }
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": format::OCI_MANIFEST,
            "config": {"mediaType": rec.config_media_type, "digest": rec.id, "size": config_size},
            "layers": rec.layers.iter().map(|l| serde_json::json!({
                "mediaType": format::OCI_LAYER_TAR,
                "digest": l.diff_id,
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&manifest).expect("json");
        let d = Digest::of(&bytes);
        Ok((bytes, d, format::OCI_MANIFEST.into()))
    }

    /// Write one layer's original tar as an archive member, rebuilt from its tar-split record
    /// and its view, and check its diff id.
    fn write_layer(
        &self,
        l: &LayerRecord,
        w: &mut dyn Write,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let werr = |e: io::Error| ImageError::io("writing", "the archive", e);
        write_header(
            w,
            &format!("blobs/sha256/{}", l.diff_id.hex()),
            l.size,
            b'0',
        )
        .map_err(werr)?;
        self.reproduce(l, w, progress)?;
        w.write_all(&vec![0u8; pad(l.size)]).map_err(werr)?;
        Ok(())
    }
}

impl ImageStore<'_> {
    /// Write a layer's original tar to `w` (tar-split record + view) and check it against the
    /// layer's diff id and size.
    fn reproduce(
        &self,
        l: &LayerRecord,
        w: &mut dyn Write,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let id = l.layer_id();
        let split = self.split_path(id);
        if !split.is_file() {
            return Err(ImageError::Reproduce {
                layer: id.to_string(),
                reason: format!("its tar-split record {} is missing", split.display()),
            });
        }
        let view = self.driver.get(id)?;
        let res = {
            let mut counting = ProgressWriter {
                inner: &mut *w,
                progress: &mut *progress,
            };
            tarsplit::reassemble(&split, &view, id, &mut counting)
        };
        let put = self.driver.put(id);
        let summary = res?;
        put?;
        if summary.diff_id != l.diff_id || summary.size != l.size {
            return Err(ImageError::DigestMismatch {
                what: format!("reassembled tar of layer {id}"),
                expected: format!("{} ({} bytes)", l.diff_id, l.size),
                actual: format!("{} ({} bytes)", summary.diff_id, summary.size),
            });
        }
        Ok(())
    }

    /// Check that an image is intact: its config has its digest, and every layer's view
    /// still reproduces the layer's original tar (every file's content and the diff id).
    /// Returns the layers checked, bottom first.
    pub fn verify(&self, reference: &str, progress: &mut dyn Progress) -> Result<Vec<LayerRecord>> {
        let _l = self.lock(LockMode::Shared)?;
        let rec = self.resolve_locked(reference)?;
        let config = self.config(&rec)?;
        let actual = Digest::of(&config);
        if actual != rec.id {
            return Err(ImageError::DigestMismatch {
                what: format!("config of image {}", rec.id.short()),
                expected: rec.id.to_string(),
                actual: actual.to_string(),
            });
        }
        progress.start("verify", rec.layers.len(), rec.size());
        for (i, l) in rec.layers.iter().enumerate() {
            progress.layer(i, l.layer_id(), false);
            self.reproduce(l, &mut io::sink(), progress)?;
        }
        progress.finish();
        Ok(rec.layers)
    }
}

struct ProgressWriter<'a> {
    inner: &'a mut dyn Write,
    progress: &'a mut dyn Progress,
}

impl Write for ProgressWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(why) = self.progress.interrupted() {
            return Err(io::Error::other(why));
        }
        let n = self.inner.write(buf)?;
        self.progress.bytes(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pad(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

/// A ustar header with fixed metadata (mode 0644/0755, owner 0:0, mtime 0), so that the same
/// images always give the same archive bytes.
fn write_header(w: &mut dyn Write, name: &str, size: u64, kind: u8) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(if kind == b'5' { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_cksum();
    w.write_all(h.as_bytes())
}

fn write_member(w: &mut dyn Write, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_header(w, name, bytes.len() as u64, b'0')?;
    w.write_all(bytes)?;
    w.write_all(&vec![0u8; pad(bytes.len() as u64)])
}

fn write_dir(w: &mut dyn Write, name: &str) -> io::Result<()> {
    write_header(w, name, 0, b'5')
}

/// `2006-01-02T15:04:05Z` for seconds since the epoch (UTC), as image configs write times.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_get_latest() {
        assert_eq!(normalize_ref("busybox").unwrap(), "busybox:latest");
        assert_eq!(
            normalize_ref("localhost:5000/a/b").unwrap(),
            "localhost:5000/a/b:latest"
        );
        assert_eq!(normalize_ref("a/b:1.0").unwrap(), "a/b:1.0");
        assert!(normalize_ref("a b").is_err());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951782400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1700000000), "2023-11-14T22:13:20Z");
    }
}
