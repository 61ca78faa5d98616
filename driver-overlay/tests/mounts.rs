//! Real overlay mounts through the `Backend` interface: deep chains, whiteouts and opaque
//! directories, writable views, unmount, clone, keys, and the kernel's depth limit.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use driver_api::{Access, Backend, LayerKind, LayerRef};
use driver_overlay::OverlayBackend;

fn new_key() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:016x}{:08x}{:08x}",
        0xfeed_u64,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A backend in a fresh directory; unmounts everything it holds when dropped.
struct Fixture {
    backend: OverlayBackend,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        if let Err(why) = (driver_overlay::factory().probe)(dir.path()) {
            eprintln!("SKIPPED: overlay backend unavailable: {why}");
            return None;
        }
        let backend = OverlayBackend::open(dir.path(), &BTreeMap::new()).unwrap();
        Some(Fixture { backend, _dir: dir })
    }

    /// Create a layer on top of `parent` (nearest ancestor first in its ref).
    fn layer(&self, parent: Option<&LayerRef>, kind: LayerKind) -> LayerRef {
        let ancestors = match parent {
            Some(p) => std::iter::once(p.key.clone())
                .chain(p.ancestors.iter().cloned())
                .collect(),
            None => Vec::new(),
        };
        let key = new_key();
        let l = LayerRef {
            id: format!("layer-{key}"),
            key,
            ancestors,
            kind,
        };
        self.backend.create(&l).unwrap();
        l
    }

    fn diff(&self, l: &LayerRef) -> PathBuf {
        self.backend.home().join(&l.key).join("diff")
    }

    /// A chain of `depth` read-only layers; layer i holds `layer-i` and the bottom one also `bottom`.
    fn chain(&self, depth: usize) -> Vec<LayerRef> {
        let mut out: Vec<LayerRef> = Vec::new();
        for i in 0..depth {
            let l = self.layer(out.last(), LayerKind::Ro);
            std::fs::write(self.diff(&l).join(format!("layer-{i}")), i.to_string()).unwrap();
            if i == 0 {
                std::fs::write(self.diff(&l).join("bottom"), b"from the bottom").unwrap();
            }
            out.push(l);
        }
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.backend.cleanup();
    }
}

fn mknod_whiteout(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn check_chain(depth: usize) {
    let Some(fx) = Fixture::new() else { return };
    let chain = fx.chain(depth);
    let top = chain.last().unwrap();
    let t = std::time::Instant::now();
    let view = fx.backend.mount(top, Access::ReadOnly).unwrap();
    eprintln!("depth {depth}: mounted in {:?}", t.elapsed());
    assert_eq!(
        std::fs::read(view.join("bottom")).unwrap(),
        b"from the bottom"
    );
    assert_eq!(names(&view).len(), depth + 1);
    assert!(fx.backend.is_mounted(top));
    if depth > 1 {
        // A read-only view cannot be written.
        assert!(std::fs::write(view.join("new"), b"x").is_err());
    }
    fx.backend.unmount(top).unwrap();
    if depth > 1 {
        assert!(!fx.backend.is_mounted(top));
        assert!(names(&view).is_empty(), "merged/ is empty once unmounted");
    }
}

#[test]
fn chain_depth_1() {
    check_chain(1);
}

#[test]
fn chain_depth_16() {
    check_chain(16);
}

#[test]
fn chain_depth_128() {
    check_chain(128);
}

#[test]
fn chain_depth_500() {
    check_chain(500);
}

#[test]
fn beyond_the_kernel_limit_is_refused_clearly() {
    let Some(fx) = Fixture::new() else { return };
    let Some(max) = fx.backend.max_lowers() else {
        eprintln!("SKIPPED: the kernel's overlay depth limit could not be measured");
        return;
    };
    eprintln!("measured overlay stack limit: {max}");
    let chain = fx.chain(max + 1);
    let top = chain.last().unwrap();
    let e = fx
        .backend
        .mount(top, Access::ReadOnly)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("at most {max}")), "{e}");
    assert!(e.contains(&top.id), "{e}");
    assert!(!fx.backend.is_mounted(top));
    // The layer just below the top still mounts (it has exactly `max` lowers).
    let below = &chain[chain.len() - 2];
    let view = fx.backend.mount(below, Access::ReadOnly).unwrap();
    assert_eq!(
        std::fs::read(view.join("bottom")).unwrap(),
        b"from the bottom"
    );
    fx.backend.unmount(below).unwrap();
}

#[test]
fn base_layer_is_its_diff_dir() {
    let Some(fx) = Fixture::new() else { return };
    let base = fx.layer(None, LayerKind::Ro);
    let view = fx.backend.mount(&base, Access::ReadWrite).unwrap();
    assert_eq!(view, fx.diff(&base));
    fx.backend.unmount(&base).unwrap();
}

#[test]
fn whiteouts_and_opaque_dirs_show_as_the_kernel_reads_them() {
    let Some(fx) = Fixture::new() else { return };
    let base = fx.layer(None, LayerKind::Ro);
    let d = fx.diff(&base);
    std::fs::create_dir(d.join("a")).unwrap();
    std::fs::write(d.join("a/x"), b"x").unwrap();
    std::fs::write(d.join("a/y"), b"y").unwrap();
    std::fs::write(d.join("b"), b"b").unwrap();
    std::fs::write(d.join("c"), b"c").unwrap();
    let top = fx.layer(Some(&base), LayerKind::Ro);
    let t = fx.diff(&top);
    mknod_whiteout(&t.join("b"));
    std::fs::create_dir(t.join("a")).unwrap();
    rustix::fs::lsetxattr(
        t.join("a"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::write(t.join("a/z"), b"z").unwrap();
    let view = fx.backend.mount(&top, Access::ReadOnly).unwrap();
    assert_eq!(names(&view), ["a", "c"]);
    assert_eq!(names(&view.join("a")), ["z"]);
    fx.backend.unmount(&top).unwrap();
}

#[test]
fn writable_views_write_into_diff() {
    let Some(fx) = Fixture::new() else { return };
    let base = fx.layer(None, LayerKind::Ro);
    std::fs::write(fx.diff(&base).join("gone"), b"below").unwrap();
    std::fs::write(fx.diff(&base).join("kept"), b"below").unwrap();
    for (kind, access) in [
        (LayerKind::Rw, Access::ReadOnly),
        (LayerKind::Ro, Access::ReadWrite),
    ] {
        let l = fx.layer(Some(&base), kind);
        let view = fx.backend.mount(&l, access).unwrap();
        std::fs::write(view.join("new"), b"written").unwrap();
        std::fs::remove_file(view.join("gone")).unwrap();
        fx.backend.unmount(&l).unwrap();
        let d = fx.diff(&l);
        assert_eq!(std::fs::read(d.join("new")).unwrap(), b"written");
        let wh = std::fs::symlink_metadata(d.join("gone")).unwrap();
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "a 0/0 whiteout"
        );
        assert!(!d.join("kept").exists());
        // Mounted again read-only, the layer shows what was written.
        let view = fx.backend.mount(&l, Access::ReadOnly).unwrap();
        assert_eq!(names(&view), ["kept", "new"]);
        fx.backend.unmount(&l).unwrap();
    }
}

#[test]
fn a_read_only_mount_is_not_reused_for_writing() {
    let Some(fx) = Fixture::new() else { return };
    let base = fx.layer(None, LayerKind::Ro);
    let l = fx.layer(Some(&base), LayerKind::Ro);
    let view = fx.backend.mount(&l, Access::ReadOnly).unwrap();
    assert_eq!(fx.backend.mount(&l, Access::ReadOnly).unwrap(), view);
    assert!(fx.backend.mount(&l, Access::ReadWrite).is_err());
    fx.backend.unmount(&l).unwrap();
    assert!(!fx.backend.is_mounted(&l));
}

#[test]
fn clone_keeps_whiteouts_opaque_markers_and_hardlinks() {
    let Some(fx) = Fixture::new() else { return };
    let base = fx.layer(None, LayerKind::Ro);
    std::fs::write(fx.diff(&base).join("gone"), b"below").unwrap();
    let l = fx.layer(Some(&base), LayerKind::Ro);
    let d = fx.diff(&l);
    mknod_whiteout(&d.join("gone"));
    std::fs::create_dir(d.join("opaque")).unwrap();
    rustix::fs::lsetxattr(
        d.join("opaque"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::write(d.join("f"), b"f").unwrap();
    std::fs::hard_link(d.join("f"), d.join("g")).unwrap();
    let copy = LayerRef {
        id: l.id.clone(),
        key: new_key(),
        ancestors: l.ancestors.clone(),
        kind: l.kind,
    };
    fx.backend.clone_layer(&l.key, &copy).unwrap();
    let c = fx.diff(&copy);
    let wh = std::fs::symlink_metadata(c.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let mut buf = [0u8; 4];
    let n =
        rustix::fs::lgetxattr(c.join("opaque"), "trusted.overlay.opaque", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"y");
    assert_eq!(
        std::fs::metadata(c.join("f")).unwrap().ino(),
        std::fs::metadata(c.join("g")).unwrap().ino()
    );
    let view = fx.backend.mount(&copy, Access::ReadOnly).unwrap();
    assert_eq!(names(&view), ["f", "g", "opaque"]);
    fx.backend.unmount(&copy).unwrap();
}

#[test]
fn keys_list_half_made_layers_and_remove_cleans_up() {
    let Some(fx) = Fixture::new() else { return };
    let base = fx.layer(None, LayerKind::Ro);
    let l = fx.layer(Some(&base), LayerKind::Rw);
    // A key whose creation stopped right after its directory was made.
    let half = new_key();
    std::fs::create_dir(fx.backend.home().join(&half)).unwrap();
    let mut want = vec![base.key.clone(), l.key.clone(), half.clone()];
    want.sort();
    assert_eq!(fx.backend.keys().unwrap(), want);
    fx.backend.mount(&l, Access::ReadWrite).unwrap();
    fx.backend.remove(&l.key).unwrap(); // unmounts first
    fx.backend.remove(&half).unwrap();
    fx.backend.remove(&half).unwrap(); // already gone: fine
    assert_eq!(fx.backend.keys().unwrap(), [base.key.clone()]);
    assert_eq!(
        names(&fx.backend.home().join("l")).len(),
        1,
        "only the base's short link is left"
    );
}

#[test]
fn status_reports_the_probe() {
    let Some(fx) = Fixture::new() else { return };
    let status: BTreeMap<String, String> = fx.backend.status().into_iter().collect();
    eprintln!("{status:#?}");
    assert_eq!(status["Supports d_type"], "true");
    assert!(status["Mount Options"].contains("redirect_dir=off"));
    assert!(status.contains_key("Max Layer Depth"));
}

/// A tar with one entry per (path, content); a path ending in `/` is a directory.
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut h = tar::Header::new_ustar();
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(content.len() as u64);
        }
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, path, *content).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn native_apply_writes_the_kernel_format_into_diff() {
    let Some(fx) = Fixture::new() else { return };
    let base = fx.layer(None, LayerKind::Ro);
    let base_tar = tar_of(&[
        ("a/", b""),
        ("a/x", b"x"),
        ("a/y", b"y"),
        ("gone", b"g"),
        ("kept", b"k"),
    ]);
    fx.backend.apply(&base, &mut &base_tar[..]).unwrap();
    assert_eq!(names(&fx.diff(&base)), ["a", "gone", "kept"]);

    let l = fx.layer(Some(&base), LayerKind::Ro);
    let tar = tar_of(&[
        (".wh.gone", b""),
        ("a/", b""),
        ("a/.wh..wh..opq", b""),
        ("a/z", b"z"),
        ("new", b"new"),
    ]);
    let bytes = fx.backend.apply(&l, &mut &tar[..]).unwrap();
    assert_eq!(bytes, 4);
    let d = fx.diff(&l);
    let wh = std::fs::symlink_metadata(d.join("gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0/0 device"
    );
    let mut buf = [0u8; 4];
    let n = rustix::fs::lgetxattr(d.join("a"), "trusted.overlay.opaque", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"y");
    let view = fx.backend.mount(&l, Access::ReadOnly).unwrap();
    assert_eq!(names(&view), ["a", "kept", "new"]);
    assert_eq!(names(&view.join("a")), ["z"]);
    fx.backend.unmount(&l).unwrap();
}
