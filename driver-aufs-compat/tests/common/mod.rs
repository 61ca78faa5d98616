//! What the aufs backend's tests share: the backend in a temporary home, whose views are
//! unmounted when the fixture is dropped (a failing test leaves no FUSE server behind).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use driver_api::view::ViewSource;
use driver_api::{tree, Access, Backend, LayerRef};

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub home: PathBuf,
    pub backend: Box<dyn Backend>,
    /// Unmounted on drop.
    pub mounted: Vec<LayerRef>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for l in self.mounted.drain(..) {
            let _ = self.backend.unmount(&l);
        }
    }
}

/// The backend with the FUSE server built beside the tests; None (said loudly) when the
/// host cannot run it.
pub fn fixture() -> Option<Fixture> {
    std::env::set_var("GD_AUFS_SERVER", env!("CARGO_BIN_EXE_gd-aufs-server"));
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("aufs");
    if let Err(why) = (driver_aufs_compat::factory().probe)(&home) {
        eprintln!("SKIPPED: aufs backend cannot run here: {why}");
        return None;
    }
    let backend = (driver_aufs_compat::factory().open)(&home, &BTreeMap::new()).unwrap();
    Some(Fixture {
        _dir: dir,
        home,
        backend,
        mounted: Vec::new(),
    })
}

impl Fixture {
    /// The branch of storage key `key`.
    pub fn diff(&self, key: &str) -> PathBuf {
        self.home.join("diff").join(key)
    }

    pub fn mount(&mut self, l: &LayerRef, access: Access) -> PathBuf {
        let p = self.backend.mount(l, access).unwrap();
        self.will_unmount(l);
        p
    }

    /// Unmount `l` when the fixture is dropped (once, however often it was mounted).
    pub fn will_unmount(&mut self, l: &LayerRef) {
        if !self.mounted.iter().any(|m| m.key == l.key) {
            self.mounted.push(l.clone());
        }
    }

    pub fn unmount(&mut self, l: &LayerRef) {
        self.backend.unmount(l).unwrap();
        self.mounted.retain(|m| m.key != l.key);
    }
}

pub fn write(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// Every entry of a view as the comparer sees it, with its hardlink label (the inode numbers
/// themselves differ between a mount and the branches), sorted.
pub fn dump(view: &dyn ViewSource) -> Vec<String> {
    let groups = view.hardlink_labels().unwrap();
    let mut out = Vec::new();
    let mut stack = vec![Vec::new()];
    while let Some(dir) = stack.pop() {
        let mut names = view.list(&dir).unwrap();
        names.reverse();
        for name in names {
            let mut rel = dir.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            if view.locate(&rel).unwrap().is_none() {
                out.push(format!(
                    "{} listed, but absent",
                    String::from_utf8_lossy(&rel)
                ));
                continue;
            }
            let Some(e) = view.entry(&rel).unwrap() else {
                continue; // a socket
            };
            let label = groups
                .get(&(e.dev, e.ino))
                .map(|first| String::from_utf8_lossy(first).into_owned());
            out.push(format!(
                "{} {:?} {:o} {}:{} size {} mtime {:?} xattrs {:?} link {:?} rdev {:?} group {:?}",
                String::from_utf8_lossy(&rel),
                e.kind,
                e.mode,
                e.uid,
                e.gid,
                e.size,
                e.mtime,
                e.xattrs,
                e.link_target,
                e.rdev,
                label,
            ));
            if e.kind == tree::Kind::Dir {
                stack.push(rel);
            }
        }
    }
    out.sort();
    out
}
