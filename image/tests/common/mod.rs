//! Test images built here, with the project's own code, Python's `tarfile` and `umoci`:
//! nothing is downloaded.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use driver_api::manifest::write_manifest;
use driver_api::{DriverFactory, GraphDriver};
use gd_conformance::Harness;
use gd_image::{Digest, ImageStore};

/// Every built-in driver; those the host cannot run are skipped by the harness (loudly).
pub fn factories() -> Vec<DriverFactory> {
    vec![
        driver_vfs::factory(),
        driver_overlay::factory(),
        driver_aufs_compat::factory(),
        driver_devmapper::factory(),
    ]
}

/// A driver store and an image store directory next to it.
pub struct Env {
    pub h: Harness,
    pub images: tempfile::TempDir,
}

impl Env {
    pub fn new(f: DriverFactory) -> Option<Env> {
        let h = Harness::new(f)?;
        let images = tempfile::Builder::new()
            .prefix("gd-images-")
            .tempdir_in("/var/tmp")
            .unwrap();
        Some(Env { h, images })
    }
    pub fn vfs() -> Env {
        Env::new(driver_vfs::factory()).expect("vfs always runs")
    }
    pub fn store(&self) -> ImageStore<'_> {
        ImageStore::open(self.images.path(), &*self.h.store).unwrap()
    }
    pub fn driver(&self) -> &dyn GraphDriver {
        &*self.h.store
    }
    pub fn layer_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .driver()
            .list()
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        v.sort();
        v
    }
}

pub fn manifest_of(dir: &Path) -> String {
    let mut out = Vec::new();
    write_manifest(dir, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gd-imgtest-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- layer tars ---------------------------------------------------------------------------

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h
}

/// Content that does not compress to nothing.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 3) as u8
        })
        .collect()
}

/// A base layer: directories, files (one large, one with a name over 100 bytes, one with a
/// PAX mtime and xattr), a symlink, a hardlink, a fifo.
pub fn base_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let long_dir = format!("usr/share/{}/", "a-very-long-directory-name".repeat(5));
    for d in ["etc/", "bin/", "usr/", "usr/share/", &long_dir] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, d, &[][..]).unwrap();
    }
    let mut h = header(tar::EntryType::Regular, 0o644, 9);
    b.append_data(&mut h, "etc/hostname", &b"gd-image\n"[..])
        .unwrap();
    let big = noise(300_000, 1);
    let mut h = header(tar::EntryType::Regular, 0o755, big.len() as u64);
    b.append_data(&mut h, "bin/tool", &big[..]).unwrap();
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "bin/link", "tool").unwrap();
    let mut h = header(tar::EntryType::Link, 0o755, 0);
    b.append_link(&mut h, "bin/hard", "bin/tool").unwrap();
    let long = format!(
        "usr/share/{}/file.txt",
        "a-very-long-directory-name".repeat(5)
    );
    let mut h = header(tar::EntryType::Regular, 0o644, 5);
    b.append_data(&mut h, &long, &b"long\n"[..]).unwrap();
    let mut h = header(tar::EntryType::Fifo, 0o600, 0);
    b.append_data(&mut h, "etc/fifo", &[][..]).unwrap();
    b.append_pax_extensions([
        ("mtime", &b"1600000000.5"[..]),
        ("SCHILY.xattr.user.gd", &b"yes"[..]),
    ])
    .unwrap();
    let mut h = header(tar::EntryType::Regular, 0o600, 6);
    b.append_data(&mut h, "etc/secret", &b"s3cret"[..]).unwrap();
    b.into_inner().unwrap()
}

/// A layer on top of `base_layer`: a whiteout, an opaque directory, a changed file, a new one.
pub fn second_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "etc/", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0, 0);
    b.append_data(&mut h, "etc/.wh.hostname", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, 4);
    b.append_data(&mut h, "etc/secret", &b"new\n"[..]).unwrap();
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "usr/share/", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0, 0);
    b.append_data(&mut h, "usr/share/.wh..wh..opq", &[][..])
        .unwrap();
    let data = noise(70_000, 2);
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    b.append_data(&mut h, "usr/share/data.bin", &data[..])
        .unwrap();
    // An empty file and a file whose content sits at the end of the tar.
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    b.append_data(&mut h, "empty", &[][..]).unwrap();
    b.into_inner().unwrap()
}

/// A layer tar written by Python's tarfile in GNU format (long names as `L` entries) with
/// the default 10240-byte record padding at the end.
pub fn python_layer(dir: &Path) -> Vec<u8> {
    let out = dir.join("py-layer.tar");
    let script = r##"
import io, sys, tarfile
out = sys.argv[1]
with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as t:
    def add(name, data=None, kind=tarfile.REGTYPE, mode=0o644, link=""):
        i = tarfile.TarInfo(name)
        i.type = kind; i.mode = mode; i.mtime = 1500000000; i.uid = 1000; i.gid = 1000
        i.uname = "user"; i.gname = "user"; i.linkname = link
        if data is not None:
            i.size = len(data)
            t.addfile(i, io.BytesIO(data))
        else:
            t.addfile(i)
    add("opt/", kind=tarfile.DIRTYPE, mode=0o755)
    add("opt/app/", kind=tarfile.DIRTYPE, mode=0o755)
    add("opt/app/" + "n" * 150, b"python long name\n")
    add("opt/app/run.sh", b"#!/bin/sh\necho hi\n" * 100, mode=0o755)
    add("opt/app/current", kind=tarfile.SYMTYPE, mode=0o777, link="run.sh")
"##;
    run(Command::new("python3").arg("-c").arg(script).arg(&out));
    fs::read(out).unwrap()
}

// ---- archives -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn compress(tar: &[u8], c: Comp) -> (Vec<u8>, &'static str) {
    match c {
        Comp::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(tar).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Comp::Zstd => (
            zstd::encode_all(tar, 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

pub fn config_for(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let p = dir.join("blobs/sha256");
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join(d.hex()), bytes).unwrap();
    d
}

/// Write an OCI image layout at `dir` with one image of these (uncompressed) layers.
/// Returns the config digest (the image id).
pub fn oci_layout(dir: &Path, layers: &[Vec<u8>], comp: Comp, tag: &str) -> Digest {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = config_for(layers);
    let cd = put_blob(dir, &config);
    let descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let (blob, mt) = compress(l, comp);
            let d = put_blob(dir, &blob);
            serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = put_blob(dir, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    cd
}

/// Pack a directory into a tar file (as `tar -C dir -cf out .` would).
pub fn tar_dir(dir: &Path, out: &Path) {
    let f = fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// A classic `docker save` tarball (`<id>/layer.tar`, `<config>.json`, manifest.json).
pub fn docker_save(out: &Path, layers: &[Vec<u8>], tag: &str) -> Digest {
    let config = config_for(layers);
    let cd = Digest::of(&config);
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let id = Digest::of(format!("v1-id-{i}").as_bytes());
        let p = format!("{}/layer.tar", id.hex());
        let mut h = tar::Header::new_ustar();
        h.set_size(l.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, &p, &l[..]).unwrap();
        paths.push(p);
    }
    let mut h = tar::Header::new_ustar();
    h.set_size(config.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, format!("{}.json", cd.hex()), &config[..])
        .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{}.json", cd.hex()),
        "RepoTags": [tag],
        "Layers": paths,
    }]))
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "manifest.json", &manifest[..])
        .unwrap();
    b.into_inner().unwrap();
    cd
}

// ---- umoci --------------------------------------------------------------------------------

/// An OCI layout built with umoci from a busybox rootfs in three layers (the second deletes
/// and changes files, the third adds a directory tree). Returns the layout directory.
pub fn umoci_image(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci")
        .args(["new", "--image"])
        .arg(format!("{}:t", layout.display())));
    let image = format!("{}:t", layout.display());
    // umoci repack makes one layer of everything changed since the unpack: unpack afresh
    // for each layer.
    let step = |n: u32, change: &dyn Fn(&Path)| {
        let bundle = work.join(format!("bundle{n}"));
        run(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle));
        change(&bundle.join("rootfs"));
        run(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle));
        fs::remove_dir_all(&bundle).unwrap();
    };
    step(0, &|rootfs| {
        for d in ["bin", "etc", "tmp", "usr/lib"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for app in ["sh", "ls", "cat", "echo"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(app)).unwrap();
        }
        fs::hard_link(rootfs.join("bin/busybox"), rootfs.join("bin/bb")).unwrap();
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(rootfs.join("etc/motd"), "hello from gd\n").unwrap();
        fs::write(rootfs.join("usr/lib/data"), noise(50_000, 7)).unwrap();
    });
    step(1, &|rootfs| {
        fs::remove_file(rootfs.join("etc/motd")).unwrap();
        fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .unwrap();
        fs::remove_dir_all(rootfs.join("usr/lib")).unwrap();
    });
    step(2, &|rootfs| {
        fs::create_dir_all(rootfs.join("home/user/.config")).unwrap();
        fs::write(rootfs.join("home/user/.config/app.toml"), "x = 1\n").unwrap();
        std::os::unix::fs::chown(rootfs.join("home/user"), Some(1000), Some(1000)).unwrap();
    });
    layout
}

/// The manifest of `umoci unpack`'s rootfs: the independent unpacker's view.
pub fn umoci_unpack_manifest(layout: &Path, tag: &str, work: &Path) -> String {
    let bundle = work.join("unpacked");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle));
    let m = manifest_of(&bundle.join("rootfs"));
    fs::remove_dir_all(&bundle).unwrap();
    m
}

/// A layer tar written by Python's tarfile in PAX format: non-ASCII names, a long symlink
/// target, a long path, a file with uid over 2^21 (PAX `uid`).
pub fn python_pax_layer(dir: &Path) -> Vec<u8> {
    let out = dir.join("py-pax-layer.tar");
    let script = r##"
import io, sys, tarfile
out = sys.argv[1]
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
    def add(name, data=None, kind=tarfile.REGTYPE, mode=0o644, link="", uid=0):
        i = tarfile.TarInfo(name)
        i.type = kind; i.mode = mode; i.mtime = 1500000000.25; i.uid = uid; i.gid = 0
        i.linkname = link
        if data is not None:
            i.size = len(data)
            t.addfile(i, io.BytesIO(data))
        else:
            t.addfile(i)
    add("srv/", kind=tarfile.DIRTYPE, mode=0o755)
    add("srv/caf\u00e9-\u00fcber-\u65e5\u672c.txt", b"unicode\n")
    add("srv/" + "d" * 120 + "/", kind=tarfile.DIRTYPE, mode=0o755)
    add("srv/" + "d" * 120 + "/deep.bin", bytes(range(256)) * 40)
    add("srv/far", kind=tarfile.SYMTYPE, mode=0o777, link="/" + "t" * 200)
    add("srv/big-uid", b"owned\n", uid=3000000)
"##;
    run(Command::new("python3").arg("-c").arg(script).arg(&out));
    fs::read(out).unwrap()
}

/// A layer tar written by GNU tar with a sparse file, in `format` (gnu or posix).
pub fn gnu_tar_sparse_layer(dir: &Path, format: &str) -> Vec<u8> {
    let src = dir.join(format!("sparse-src-{format}"));
    fs::create_dir_all(src.join("var")).unwrap();
    let f = fs::File::create(src.join("var/sparse.img")).unwrap();
    f.set_len(4 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(b"middle", 2 << 20).unwrap();
    f.write_all_at(b"end", (4 << 20) - 3).unwrap();
    // Many data regions: old GNU sparse headers hold 4, the rest go in extension blocks.
    let g = fs::File::create(src.join("var/many-holes.img")).unwrap();
    g.set_len(64 << 20).unwrap();
    for i in 0..60u64 {
        g.write_all_at(format!("region {i}").as_bytes(), i << 20)
            .unwrap();
    }
    fs::write(src.join("var/plain"), "plain\n").unwrap();
    let out = dir.join(format!("sparse-{format}.tar"));
    run(Command::new("tar")
        .arg(format!("--format={format}"))
        .args(["--sparse", "--numeric-owner", "-C"])
        .arg(&src)
        .args(["-cf"])
        .arg(&out)
        .arg("var"));
    fs::read(out).unwrap()
}

/// A layer tar in which the same file appears twice (the second entry wins when applied).
pub fn duplicate_entry_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, 0o644, 6);
    b.append_data(&mut h, "dup.txt", &b"first\n"[..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, 7);
    b.append_data(&mut h, "dup.txt", &b"second\n"[..]).unwrap();
    b.into_inner().unwrap()
}
