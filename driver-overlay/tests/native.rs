//! Native changes (walking only `diff/`) equal the generic comparer's on real mounts, for
//! the cases overlayfs makes tricky: copy-up without change, chmod only, a directory removed
//! and re-created (opaque), hardlinks broken or kept by copy-up, renames, whiteouts.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use driver_api::view::MountedView;
use driver_api::{Access, Backend, LayerKind, LayerRef};
use driver_overlay::OverlayBackend;

fn new_key() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:016x}{:08x}{:08x}",
        0xbeef_u64,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

struct Fixture {
    backend: OverlayBackend,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.backend.cleanup();
    }
}

fn fixture() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    if let Err(why) = (driver_overlay::factory().probe)(dir.path()) {
        eprintln!("SKIPPED: overlay backend unavailable: {why}");
        return None;
    }
    let backend = OverlayBackend::open(dir.path(), &BTreeMap::new()).unwrap();
    Some(Fixture { backend, _dir: dir })
}

fn layer(fx: &Fixture, parent: Option<&LayerRef>, kind: LayerKind) -> LayerRef {
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
    fx.backend.create(&l).unwrap();
    l
}

/// The lower layers every scenario starts from: a base and one layer above it.
fn lowers(root: &Path) {
    std::fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root\n").unwrap();
    std::fs::write(root.join("etc/conf.d/a"), "a").unwrap();
    std::fs::write(root.join("etc/conf.d/b"), "b").unwrap();
    std::fs::create_dir_all(root.join("etc/conf.d/sub")).unwrap();
    std::fs::write(root.join("etc/conf.d/sub/deep"), "deep").unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/sh"), "shell").unwrap();
    std::fs::hard_link(root.join("bin/sh"), root.join("bin/sh-link")).unwrap();
    std::fs::hard_link(root.join("bin/sh"), root.join("etc/sh-too")).unwrap();
    std::fs::write(root.join("moved"), "to be renamed").unwrap();
    std::fs::write(root.join("untouched"), "same").unwrap();
}

/// Each scenario writes through the rw view of a layer on top of `lowers`.
fn scenarios() -> Vec<(&'static str, fn(&Path))> {
    vec![
        ("copy-up without change", |v| {
            // Opening for writing copies the file up; nothing changes in the view.
            std::fs::OpenOptions::new()
                .write(true)
                .open(v.join("untouched"))
                .unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(v.join("etc/passwd"))
                .unwrap();
        }),
        ("chmod only", |v| {
            std::fs::set_permissions(v.join("etc/passwd"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }),
        ("opaque dir via rm -rf + mkdir", |v| {
            std::fs::remove_dir_all(v.join("etc/conf.d")).unwrap();
            std::fs::create_dir(v.join("etc/conf.d")).unwrap();
            std::fs::write(v.join("etc/conf.d/a"), "a").unwrap();
            std::fs::create_dir(v.join("etc/conf.d/sub")).unwrap();
        }),
        ("hardlink written through one name", |v| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(v.join("bin/sh"))
                .unwrap();
            std::io::Write::write_all(&mut f, b" v2").unwrap();
        }),
        ("hardlink name removed", |v| {
            std::fs::remove_file(v.join("bin/sh-link")).unwrap();
        }),
        ("hardlink dir removed", |v| {
            std::fs::remove_dir_all(v.join("etc")).unwrap();
        }),
        ("rename of a file", |v| {
            std::fs::rename(v.join("moved"), v.join("bin/moved")).unwrap();
        }),
        ("new tree with new hardlinks", |v| {
            std::fs::create_dir_all(v.join("opt/app")).unwrap();
            std::fs::write(v.join("opt/app/x"), "x").unwrap();
            std::fs::hard_link(v.join("opt/app/x"), v.join("opt/y")).unwrap();
            std::fs::remove_file(v.join("untouched")).unwrap();
            std::fs::create_dir(v.join("untouched")).unwrap();
        }),
        ("type change dir to file", |v| {
            std::fs::remove_dir_all(v.join("etc/conf.d")).unwrap();
            std::fs::write(v.join("etc/conf.d"), "now a file").unwrap();
        }),
        ("same content rewritten, mtime kept", |v| {
            let p = v.join("etc/conf.d/a");
            let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
            std::fs::write(&p, "A").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }),
    ]
}

#[test]
fn native_changes_equal_the_comparer_on_real_mounts() {
    let Some(fx) = fixture() else { return };
    let base = layer(&fx, None, LayerKind::Ro);
    lowers(&fx.backend.home().join(&base.key).join("diff"));
    let mid = layer(&fx, Some(&base), LayerKind::Ro);
    std::fs::write(
        fx.backend.home().join(&mid.key).join("diff/mid-file"),
        "mid",
    )
    .unwrap();
    for (name, write) in scenarios() {
        let l = layer(&fx, Some(&mid), LayerKind::Rw);
        let view = fx.backend.mount(&l, Access::ReadWrite).unwrap();
        write(&view);
        fx.backend.unmount(&l).unwrap();
        // As the store does: both views mounted, then ask.
        let parent_view = fx.backend.mount(&mid, Access::ReadOnly).unwrap();
        let child_view = fx.backend.mount(&l, Access::ReadOnly).unwrap();
        let want = driver_api::tree::changes(Some(&parent_view), &child_view).unwrap();
        let got = fx
            .backend
            .native_changes(
                &l,
                Some(&MountedView::new(&parent_view)),
                &MountedView::new(&child_view),
            )
            .expect("overlay has native changes")
            .unwrap();
        fx.backend.unmount(&l).unwrap();
        fx.backend.unmount(&mid).unwrap();
        assert!(
            !want.is_empty() || name == "copy-up without change",
            "{name}: no change seen"
        );
        assert_eq!(got, want, "scenario {name:?}");
        eprintln!("{name}: {} change(s) agree", want.len());
    }
}
