//! Benchmark (not a test): walking and reading a union view of three generated layers, served
//! by gd's aufs server, by fuse-overlayfs, and by kernel overlayfs, on the same directories.
//!
//! `cargo bench -p driver-aufs-compat --bench view` (as root). Each round mounts afresh (so
//! no FUSE cache is warm; the backing files are in the page cache for every contender
//! alike), then times a full walk with lstat of every entry (`find`), then a walk reading
//! every file. Prints the median of the rounds.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use driver_api::{Access, LayerKind, LayerRef};

const DIRS: usize = 100;
const FILES_PER_DIR: usize = 100;
const ROUNDS: usize = 5;

fn generate(home: &Path) -> Vec<PathBuf> {
    // base: DIRS x FILES_PER_DIR files of 1-16 KiB; mid overrides every 10th file and adds a
    // directory; top adds one file per directory.
    let base = home.join("diff/base");
    let mid = home.join("diff/mid");
    let top = home.join("diff/top");
    let mut content = vec![0u8; 16384];
    for (i, b) in content.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    for d in 0..DIRS {
        let dir = base.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES_PER_DIR {
            let len = 1024 * (1 + (d * 7 + f) % 16);
            fs::write(dir.join(format!("f{f:03}")), &content[..len]).unwrap();
        }
        let mdir = mid.join(format!("d{d:03}"));
        fs::create_dir_all(&mdir).unwrap();
        for f in (0..FILES_PER_DIR).step_by(10) {
            fs::write(mdir.join(format!("f{f:03}")), &content[..2048]).unwrap();
        }
        let tdir = top.join(format!("d{d:03}"));
        fs::create_dir_all(&tdir).unwrap();
        fs::write(tdir.join("added"), b"top").unwrap();
    }
    fs::create_dir_all(mid.join("extra")).unwrap();
    vec![top, mid, base]
}

/// Walk with lstat of every entry; returns the number of entries.
fn walk(dir: &Path, read: bool, buf: &mut Vec<u8>) -> usize {
    let mut n = 0;
    for ent in fs::read_dir(dir).unwrap() {
        let ent = ent.unwrap();
        let meta = fs::symlink_metadata(ent.path()).unwrap();
        n += 1;
        if meta.is_dir() {
            n += walk(&ent.path(), read, buf);
        } else if read && meta.is_file() {
            buf.clear();
            fs::File::open(ent.path())
                .unwrap()
                .read_to_end(buf)
                .unwrap();
        }
    }
    n
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn umount(path: &Path) {
    let _ = Command::new("umount").arg(path).status();
}

fn bench(name: &str, mount: &mut dyn FnMut() -> PathBuf, unmount: &mut dyn FnMut(&Path)) {
    let mut find_t = Vec::new();
    let mut read_t = Vec::new();
    let mut entries = 0;
    let mut buf = Vec::new();
    for _ in 0..ROUNDS {
        let m = mount();
        let t = Instant::now();
        entries = walk(&m, false, &mut buf);
        find_t.push(t.elapsed());
        unmount(&m);
        let m = mount();
        let t = Instant::now();
        walk(&m, true, &mut buf);
        read_t.push(t.elapsed());
        unmount(&m);
    }
    println!(
        "{name:<16} entries {entries:>6}   find {:>8.1} ms   find+read {:>8.1} ms",
        median(find_t).as_secs_f64() * 1e3,
        median(read_t).as_secs_f64() * 1e3
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: the view benchmark mounts file systems and needs root");
        return;
    }
    std::env::set_var("GD_AUFS_SERVER", env!("CARGO_BIN_EXE_gd-aufs-server"));
    let tmp = tempfile::Builder::new()
        .prefix("gd-aufs-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let home = tmp.path().join("aufs");
    let backend = (driver_aufs_compat::factory().open)(&home, &BTreeMap::new()).unwrap();
    let layer = |key: &str, anc: &[&str]| LayerRef {
        id: key.into(),
        key: key.into(),
        ancestors: anc.iter().map(|s| s.to_string()).collect(),
        kind: LayerKind::Ro,
    };
    let (base, mid, top) = (
        layer("base", &[]),
        layer("mid", &["base"]),
        layer("top", &["mid", "base"]),
    );
    for l in [&base, &mid, &top] {
        backend.create(l).unwrap();
    }
    let branches = generate(&home);
    let lowerdir = branches
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    // Warm the page cache of the backing files for everyone.
    walk(&branches[2], true, &mut Vec::new());

    println!(
        "{} dirs x {} files, 3 layers, median of {ROUNDS} fresh mounts",
        DIRS, FILES_PER_DIR
    );
    bench(
        "gd aufs (FUSE)",
        &mut || backend.mount(&top, Access::ReadOnly).unwrap(),
        &mut |_| backend.unmount(&top).unwrap(),
    );

    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    if Command::new("fuse-overlayfs")
        .arg("--version")
        .output()
        .is_ok()
    {
        bench(
            "fuse-overlayfs",
            &mut || {
                let ok = Command::new("fuse-overlayfs")
                    .arg("-o")
                    .arg(format!("lowerdir={lowerdir}"))
                    .arg(&mnt)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "fuse-overlayfs mount failed");
                mnt.clone()
            },
            &mut |m| umount(m),
        );
    } else {
        eprintln!("SKIPPED: fuse-overlayfs is not installed");
    }
    let kernel_ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={lowerdir}"))
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if kernel_ok {
        umount(&mnt);
        bench(
            "kernel overlayfs",
            &mut || {
                Command::new("mount")
                    .args(["-t", "overlay", "overlay", "-o"])
                    .arg(format!("lowerdir={lowerdir}"))
                    .arg(&mnt)
                    .status()
                    .unwrap();
                mnt.clone()
            },
            &mut |m| umount(m),
        );
    } else {
        eprintln!("SKIPPED: kernel overlayfs mount failed");
    }
    let _ = backend.cleanup();
}
