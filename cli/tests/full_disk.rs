//! A store on a small loop-mounted ext4 that runs out of space, or of inodes, in the middle
//! of a layer. The apply must fail with an error naming the layer and the lack of space;
//! the layer must be as it was before (empty, or with its earlier content), every other
//! layer unchanged, the space and inodes given back (within a small margin), and the store
//! clean for `gd check` and still usable.
//!
//! Runs on vfs, overlay and aufs where the host can (drivers in GD_REQUIRE_DRIVERS must);
//! needs root and loop devices, and says SKIPPED without them.

mod reliability;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use reliability::{digest_of, drivers, write_tar, Gd, Rng};

/// An ext4 on a file, loop-mounted; unmounted (after `gd cleanup`) when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    gd: Option<Gd>,
}

impl SmallFs {
    /// `size_mib` MiB, with `inodes` inodes if given; None (after a SKIPPED line) when this
    /// host cannot loop-mount.
    fn new(size_mib: u64, inodes: Option<u32>) -> Option<SmallFs> {
        let dir = tempfile::Builder::new()
            .prefix("gd-full-disk-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        fs::File::create(&img)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        let mut mkfs = Command::new("mkfs.ext4");
        // No blocks reserved for root: the test runs as root and counts every block.
        mkfs.args(["-q", "-F", "-m", "0"]);
        if let Some(n) = inodes {
            mkfs.args(["-N", &n.to_string()]);
        }
        let st = mkfs.arg(&img).status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: full-disk test: mkfs.ext4 is missing or failed");
            return None;
        }
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "SKIPPED: full-disk test: cannot loop-mount an ext4 here (root and loop devices needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallFs { dir, mnt, gd: None })
    }

    /// Free blocks and free inodes, after the filesystem has committed what was freed.
    fn free(&self) -> (u64, u64) {
        let _ = Command::new("sync").arg("-f").arg(&self.mnt).status();
        let st = rustix_statvfs(&self.mnt);
        (st.0 * st.2, st.1)
    }
}

/// (free blocks, free inodes, block size) of the filesystem holding `p`.
fn rustix_statvfs(p: &Path) -> (u64, u64, u64) {
    let out = Command::new("stat")
        .args(["-f", "-c", "%f %d %S"])
        .arg(p)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (v[0], v[1], v[2])
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if let Some(gd) = &self.gd {
            gd.cleanup();
        }
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = &self.dir;
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The layer tars: `base` (a few files), `more` (base plus changes), and the two that do
/// not fit: `big` (small files, then 96 MiB of incompressible data, then more files) and
/// `many` (thousands of empty files, for a filesystem with few inodes).
struct Tars {
    dir: tempfile::TempDir,
    base_digest: String,
    more_digest: String,
    empty_digest: String,
}

impl Tars {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.tar"))
    }
}

fn tars() -> Tars {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let more = dir.path().join("more");
    let empty = dir.path().join("empty");
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::create_dir_all(&empty).unwrap();
    for i in 0..8 {
        fs::write(base.join(format!("etc/f{i}")), format!("{i}\n").repeat(300)).unwrap();
    }
    driver_api::copy::copy_tree(&base, &more).unwrap();
    fs::write(more.join("etc/f0"), "changed").unwrap();
    fs::write(more.join("added"), "added").unwrap();
    write_tar(None, &base, &dir.path().join("base.tar"));
    write_tar(Some(&base), &more, &dir.path().join("more.tar"));

    // big: written entry by entry, the data generated rather than kept in memory.
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let f = fs::File::create(dir.path().join("big.tar")).unwrap();
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    let add = |b: &mut tar::Builder<_>, name: &str, size: u64, rng: &mut Rng| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let mut left = size;
        let data = std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 8.min(left);
            Some(rng.next().to_le_bytes())
        })
        .flatten()
        .take(size as usize)
        .collect::<Vec<u8>>();
        b.append_data(&mut h, name, &data[..]).unwrap();
    };
    for i in 0..20 {
        add(&mut b, &format!("first/f{i}"), 4096, &mut rng);
    }
    for i in 0..6 {
        add(&mut b, &format!("huge{i}"), 16 << 20, &mut rng);
    }
    for i in 0..20 {
        add(&mut b, &format!("after/f{i}"), 4096, &mut rng);
    }
    b.into_inner().unwrap().flush().unwrap();

    let f = fs::File::create(dir.path().join("many.tar")).unwrap();
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    for i in 0..3000 {
        add(&mut b, &format!("d{}/f{i}", i % 10), 0, &mut rng);
    }
    b.into_inner().unwrap().flush().unwrap();
    Tars {
        base_digest: digest_of(&base),
        more_digest: digest_of(&more),
        empty_digest: digest_of(&empty),
        dir,
    }
}

/// Fill the store on `small` with `tar` once onto an empty layer and once onto a layer with
/// content; check everything the module doc promises after each failure.
fn run_out(driver: &str, small: &mut SmallFs, t: &Tars, tar: &str, what: &str) {
    let gd = Gd::new(small.mnt.join("root"), driver);
    small.gd = Some(gd.clone());
    gd.ok(&["create", "base"]);
    gd.ok(&["apply", "base", s(&t.path("base"))]);
    gd.ok(&["create", "--parent", "base", "fresh"]);
    gd.ok(&["create", "--parent", "base", "full"]);
    gd.ok(&["apply", "full", s(&t.path("more"))]);
    let ls_before = gd.layers();
    let free_before = small.free();

    for (target, view_before) in [("fresh", &t.base_digest), ("full", &t.more_digest)] {
        let out = gd.run(&["apply", target, s(&t.path(tar))]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "[{driver}] {what}: applying {tar} onto {target} succeeded on a full filesystem"
        );
        assert!(
            stderr.contains(&format!("layer {target}")) || stderr.contains(target),
            "[{driver}] {what}: the error does not name layer {target}: {stderr}"
        );
        assert!(
            stderr.contains("No space left on device"),
            "[{driver}] {what}: the error does not say the disk is full: {stderr}"
        );
        assert!(
            !stderr.contains("gd: recovered:"),
            "[{driver}] {what}: {stderr}"
        );
        eprintln!("[{driver}] {what} onto {target}: {}", stderr.trim());

        assert_eq!(
            gd.layers(),
            ls_before,
            "[{driver}] {what}: gd ls changed after the failed apply onto {target}"
        );
        assert_eq!(gd.digest("base"), t.base_digest, "[{driver}] {what}: base");
        assert_eq!(
            gd.digest(target),
            *view_before,
            "[{driver}] {what}: {target} is not as before"
        );
        let other = if target == "fresh" { "full" } else { "fresh" };
        let other_view = if other == "fresh" {
            &t.base_digest
        } else {
            &t.more_digest
        };
        assert_eq!(gd.digest(other), *other_view, "[{driver}] {what}: {other}");

        let free_after = small.free();
        // A little slack: directories the driver keeps (work dirs, lock files) and the
        // filesystem's own bookkeeping.
        let block_margin = 512 << 10;
        let inode_margin = 8;
        assert!(
            free_after.0 + block_margin >= free_before.0,
            "[{driver}] {what}: {} KiB not given back after the failed apply onto {target}",
            (free_before.0 - free_after.0) >> 10
        );
        assert!(
            free_after.1 + inode_margin >= free_before.1,
            "[{driver}] {what}: {} inodes not given back after the failed apply onto {target}",
            free_before.1 - free_after.1
        );
        gd.assert_check_clean(what);
    }
    // The store still works: the layers take a tar that fits.
    gd.ok(&["apply", "fresh", s(&t.path("more"))]);
    assert_eq!(gd.digest("fresh"), t.more_digest);
    gd.ok(&["rm", "fresh"]);
    let _ = &t.empty_digest;
}

/// Fill the filesystem of `dir` from outside gd: blocks, then inodes.
fn fill(dir: &Path) {
    let mut f = fs::File::create(dir.join("filler")).unwrap();
    let mut rng = Rng(7);
    let chunk: Vec<u8> = (0..1 << 16).map(|_| rng.next() as u8).collect();
    for size in [1 << 16, 4096, 512] {
        while f.write_all(&chunk[..size]).is_ok() {}
    }
    let _ = f.sync_all();
    for i in 0.. {
        if fs::File::create(dir.join(format!("filler-{i}"))).is_err() {
            break;
        }
    }
}

/// A disk that someone else filled: gd still lists, checks and removes layers (to free
/// space), and everything works again once there is space.
fn filled_from_outside(driver: &str, t: &Tars) {
    let Some(mut small) = SmallFs::new(64, None) else {
        return;
    };
    let gd = Gd::new(small.mnt.join("root"), driver);
    small.gd = Some(gd.clone());
    gd.ok(&["create", "base"]);
    gd.ok(&["apply", "base", s(&t.path("base"))]);
    gd.ok(&["create", "--parent", "base", "b"]);
    gd.ok(&["apply", "b", s(&t.path("more"))]);
    gd.ok(&["create", "--rw", "--parent", "b", "c"]);
    let path = gd.ok(&["mount", "c"]);
    fs::write(Path::new(path.trim()).join("data"), vec![7u8; 1 << 20]).unwrap();
    gd.ok(&["umount", "c"]);
    let filler = small.mnt.join("filler-dir");
    fs::create_dir(&filler).unwrap();
    fill(&filler);
    let full = small.free();

    assert_eq!(gd.ids().len(), 3, "[{driver}] gd ls on a full disk");
    gd.assert_check_clean("full disk");
    let out = gd.run(&["rm", "c"]);
    assert!(
        out.status.success(),
        "[{driver}] gd rm on a full disk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let freed = small.free();
    assert!(
        freed.0 >= full.0 + (1 << 20),
        "[{driver}] rm on a full disk gave back {} bytes, not the layer's 1 MiB",
        freed.0 - full.0
    );
    gd.assert_check_clean("full disk, after rm");
    eprintln!(
        "[{driver}] disk filled from outside: ls, check and rm work; rm gave back {} KiB",
        (freed.0 - full.0) >> 10
    );

    fs::remove_dir_all(&filler).unwrap();
    assert_eq!(
        gd.digest("b"),
        t.more_digest,
        "[{driver}] b after the disk filled"
    );
    gd.ok(&["create", "--parent", "b", "c"]);
    gd.assert_check_clean("space again");
}

#[test]
fn full_disk_still_lets_layers_be_removed() {
    let t = tars();
    for d in drivers("full-disk test") {
        filled_from_outside(&d, &t);
    }
}

#[test]
fn full_disk_rolls_the_layer_back_and_gives_the_space_back() {
    let t = tars();
    let mut ran = 0;
    for d in drivers("full-disk test") {
        // Out of blocks: 64 MiB, a layer of 96 MiB.
        let Some(mut small) = SmallFs::new(64, None) else {
            return;
        };
        run_out(&d, &mut small, &t, "big", "out of space");
        drop(small);
        // Out of inodes: 128 inodes (the store and the overlay probe's test mount need
        // about 60), a layer of 3,000 files.
        let Some(mut small) = SmallFs::new(64, Some(128)) else {
            return;
        };
        run_out(&d, &mut small, &t, "many", "out of inodes");
        ran += 1;
    }
    assert!(ran > 0, "no driver could run");
}
