//! What an image archive holds: the OCI image layout and `docker save` formats, parsed into
//! plans (refs, config, manifest, layers with their expected digests), every JSON document
//! verified against the digest that names it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::source::Source;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The annotation holding a tag (or a full reference) in an OCI index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd and Docker use for the full reference.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The part of an image config gd reads.
#[derive(Debug, Deserialize)]
pub struct ConfigRootfs {
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// One layer to import.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// Path of the blob in the archive.
    pub blob: String,
    /// Digest of the blob as stored (compressed), when the archive names it.
    pub digest: Option<Digest>,
    pub size: Option<u64>,
    pub media_type: String,
    pub diff_id: Digest,
}

/// One image to import.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    pub refs: Vec<String>,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub config_media_type: String,
    /// The OCI/Docker manifest as it was, when the archive had one.
    pub manifest: Option<(Vec<u8>, Digest, String)>,
    pub layers: Vec<LayerPlan>,
    pub format: &'static str,
}

fn parse_digest(src: &Source, s: &str, what: &str) -> Result<Digest> {
    Digest::parse(s).map_err(|e| ImageError::bad_input(&src.input, format!("{what}: {e}")))
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Read a JSON document named by a descriptor and check its digest and size.
fn read_verified(
    src: &Source,
    name: &str,
    digest: &Digest,
    size: Option<u64>,
    what: &str,
) -> Result<Vec<u8>> {
    let bytes = src.read_small(name)?;
    let actual = Digest::of(&bytes);
    if &actual != digest {
        return Err(ImageError::DigestMismatch {
            what: format!("{what} {name}"),
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    if let Some(s) = size {
        if s != bytes.len() as u64 {
            return Err(ImageError::DigestMismatch {
                what: format!("{what} {name} (size)"),
                expected: format!("{s} bytes"),
                actual: format!("{} bytes", bytes.len()),
            });
        }
    }
    Ok(bytes)
}

fn json<T: serde::de::DeserializeOwned>(src: &Source, bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImageError::bad_input(&src.input, format!("{what} is not valid: {e}")))
}

/// The diff ids of a config.
pub fn diff_ids_of(config: &[u8]) -> std::result::Result<Vec<Digest>, String> {
    let c: ConfigRootfs =
        serde_json::from_slice(config).map_err(|e| format!("image config: {e}"))?;
    if c.rootfs.kind != "layers" {
        return Err(format!(
            "image config: rootfs type {:?} (only \"layers\" is known)",
            c.rootfs.kind
        ));
    }
    c.rootfs.diff_ids.iter().map(|d| Digest::parse(d)).collect()
}

impl Platform {
    /// `OS/ARCH` or `OS/ARCH/VARIANT` (`linux/arm64/v8`).
    pub fn parse(s: &str) -> std::result::Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()),
            }),
            _ => Err(format!(
                "{s:?} is not a platform (OS/ARCH or OS/ARCH/VARIANT)"
            )),
        }
    }

    /// Whether an index entry's platform is this one (any variant when none is asked for).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The platform gd picks from a multi-platform index by default: this machine's.
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        architecture: arch.to_string(),
        os: "linux".to_string(),
        variant: None,
    }
}

/// Read every image the archive holds; from a multi-platform index, the image for `platform`.
pub fn plan(src: &Source, platform: &Platform) -> Result<Vec<ImagePlan>> {
    if src.exists("oci-layout") {
        plan_oci(src, platform)
    } else if src.exists("manifest.json") {
        plan_docker(src)
    } else {
        Err(ImageError::bad_input(
            &src.input,
            "neither an OCI image layout (no oci-layout file) nor a `docker save` archive (no manifest.json)",
        ))
    }
}

fn plan_oci(src: &Source, platform: &Platform) -> Result<Vec<ImagePlan>> {
    let layout: serde_json::Value = json(src, &src.read_small("oci-layout")?, "oci-layout")?;
    let version = layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if !version.starts_with("1.") {
        return Err(ImageError::bad_input(
            &src.input,
            format!("OCI image layout version {version:?} (gd reads 1.x)"),
        ));
    }
    let index: Index = json(src, &src.read_small("index.json")?, "index.json")?;
    let mut out = Vec::new();
    for desc in &index.manifests {
        let refs = refs_of(src, desc);
        oci_descriptor(src, desc, refs, platform, 0, &mut out)?;
    }
    Ok(out)
}

fn refs_of(src: &Source, desc: &Descriptor) -> Vec<String> {
    let Some(ann) = &desc.annotations else {
        return Vec::new();
    };
    if let Some(full) = ann.get(CONTAINERD_NAME) {
        return vec![full.clone()];
    }
    match ann.get(REF_NAME) {
        None => Vec::new(),
        // A full reference.
        Some(r) if r.contains('/') || r.contains(':') => vec![r.clone()],
        // A bare tag: name the image after the archive, as `oci:DIR:TAG` would.
        Some(tag) => vec![format!("{}:{tag}", stem(&src.input))],
    }
}

/// The archive's name without directories and extensions, lowercased: the repository of an
/// image whose layout gives only a tag.
pub fn stem(input: &Path) -> String {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let mut s = name.as_str();
    for ext in [".gz", ".zst", ".tgz", ".tar", ".oci"] {
        s = s.strip_suffix(ext).unwrap_or(s);
    }
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() || s == "-" {
        "image".into()
    } else {
        s
    }
}

fn oci_descriptor(
    src: &Source,
    desc: &Descriptor,
    refs: Vec<String>,
    platform: &Platform,
    depth: u32,
    out: &mut Vec<ImagePlan>,
) -> Result<()> {
    let digest = parse_digest(src, &desc.digest, "manifest digest")?;
    let name = blob_path(&digest);
    match desc.media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            if depth > 4 {
                return Err(ImageError::bad_input(&src.input, "indexes nested too deep"));
            }
            let bytes = read_verified(src, &name, &digest, Some(desc.size), "image index")?;
            let index: Index = json(src, &bytes, "image index")?;
            let chosen = index
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)));
            let Some(chosen) = chosen else {
                let have: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                    .collect();
                return Err(ImageError::bad_input(
                    &src.input,
                    format!(
                        "index {digest} has no image for {platform} (it has: {}); choose one with --platform",
                        have.join(", ")
                    ),
                ));
            };
            oci_descriptor(src, chosen, refs, platform, depth + 1, out)
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let bytes = read_verified(src, &name, &digest, Some(desc.size), "image manifest")?;
            let m: Manifest = json(src, &bytes, "image manifest")?;
            if let Some(mt) = &m.media_type {
                if mt != &desc.media_type {
                    return Err(ImageError::bad_input(
                        &src.input,
                        format!("manifest {digest} says it is {mt}, the index says {}", desc.media_type),
                    ));
                }
            }
            let config_digest = parse_digest(src, &m.config.digest, "config digest")?;
            let config = read_verified(src, &blob_path(&config_digest), &config_digest, Some(m.config.size), "image config")?;
            let diff_ids = diff_ids_of(&config).map_err(|e| ImageError::bad_input(&src.input, e))?;
            if diff_ids.len() != m.layers.len() {
                return Err(ImageError::bad_input(
                    &src.input,
                    format!(
                        "manifest {digest} lists {} layers but its config has {} diff ids",
                        m.layers.len(),
                        diff_ids.len()
                    ),
                ));
            }
            let mut layers = Vec::new();
            for (l, diff_id) in m.layers.iter().zip(diff_ids) {
                check_layer_media_type(src, &l.media_type)?;
                let d = parse_digest(src, &l.digest, "layer digest")?;
                layers.push(LayerPlan {
                    blob: blob_path(&d),
                    digest: Some(d),
                    size: Some(l.size),
                    media_type: l.media_type.clone(),
                    diff_id,
                });
            }
            out.push(ImagePlan {
                refs,
                config,
                config_digest,
                config_media_type: m.config.media_type.clone(),
                manifest: Some((bytes, digest, desc.media_type.clone())),
                layers,
                format: "oci",
            });
            Ok(())
        }
        other => Err(ImageError::bad_input(
            &src.input,
            format!("index entry {digest} has media type {other:?}, which is not an image manifest or index"),
        )),
    }
}

fn check_layer_media_type(src: &Source, mt: &str) -> Result<()> {
    let known = [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ];
    if known.contains(&mt) {
        Ok(())
    } else {
        Err(ImageError::bad_input(
            &src.input,
            format!("layer media type {mt:?} is not a layer tar gd can read (plain, gzip or zstd)"),
        ))
    }
}

fn plan_docker(src: &Source) -> Result<Vec<ImagePlan>> {
    let entries: Vec<DockerEntry> = json(src, &src.read_small("manifest.json")?, "manifest.json")?;
    let mut out = Vec::new();
    for e in entries {
        // `<hex>.json` (classic) or `blobs/sha256/<hex>` (Docker 25 and later): the name
        // carries the digest.
        let hex = e
            .config
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".json")
            .to_string();
        let config_digest = parse_digest(
            src,
            &format!("sha256:{hex}"),
            &format!("config {:?}", e.config),
        )?;
        let config = read_verified(src, &e.config, &config_digest, None, "image config")?;
        let diff_ids =
            diff_ids_of(&config).map_err(|err| ImageError::bad_input(&src.input, err))?;
        if diff_ids.len() != e.layers.len() {
            return Err(ImageError::bad_input(
                &src.input,
                format!(
                    "manifest.json lists {} layers for {} but its config has {} diff ids",
                    e.layers.len(),
                    e.config,
                    diff_ids.len()
                ),
            ));
        }
        let layers = e
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(path, diff_id)| {
                // In the newer layout the path names the blob's digest; in the classic one
                // (`<id>/layer.tar`) the diff id is all there is to check.
                let digest = path
                    .strip_prefix("blobs/sha256/")
                    .and_then(|h| Digest::parse(&format!("sha256:{h}")).ok());
                LayerPlan {
                    blob: path.clone(),
                    digest,
                    size: None,
                    media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
                    diff_id,
                }
            })
            .collect();
        out.push(ImagePlan {
            refs: e.repo_tags.unwrap_or_default(),
            config,
            config_digest,
            config_media_type: "application/vnd.docker.container.image.v1+json".into(),
            manifest: None,
            layers,
            format: "docker",
        });
    }
    Ok(out)
}
