//! The union read in place from the branches (`driver_api::view::BranchUnion` with the aufs
//! format) against the FUSE server's view of the same branches, on random branch stacks
//! written by hand: whiteouts, opaque markers, a whiteout beside a directory, aufs's own
//! `.wh..wh.` names, hardlinks, directories over files and files over directories. Every
//! entry of both views, the change list of the top layer and its tar must agree.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::{dump, fixture, write};
use driver_api::archive::changeset::write_changeset_from_source;
use driver_api::view::MountedView;
use driver_api::{tree, Access, LayerKind, LayerRef};
use proptest::prelude::*;

/// One thing written into a branch by hand.
#[derive(Debug, Clone)]
enum Put {
    File {
        content: u8,
        mode: u32,
    },
    Dir,
    Symlink,
    /// `.wh.NAME` beside where NAME would be.
    Whiteout,
    /// `.wh..wh..opq` inside the directory at the path.
    Opaque,
    /// A second name for the file at the path, in the same directory, named NAME + "2".
    Hardlink,
    /// aufs's own metadata directory `.wh..wh.plnk` with a file in it.
    Meta,
}

fn put() -> impl Strategy<Value = Put> {
    prop_oneof![
        4 => (0u8..3, prop_oneof![Just(0o644u32), Just(0o600), Just(0o755)])
            .prop_map(|(content, mode)| Put::File { content, mode }),
        3 => Just(Put::Dir),
        1 => Just(Put::Symlink),
        3 => Just(Put::Whiteout),
        1 => Just(Put::Opaque),
        1 => Just(Put::Hardlink),
        1 => Just(Put::Meta),
    ]
}

/// (branch, path of 1 to 3 names from a small set, what): small sets make the branches
/// collide on the same paths, which is where union rules matter.
fn ops() -> impl Strategy<Value = Vec<(usize, Vec<&'static str>, Put)>> {
    let name = prop_oneof![Just("a"), Just("b"), Just("c")];
    prop::collection::vec((0usize..3, prop::collection::vec(name, 1..4), put()), 1..24)
}

/// Write one op into `branch`; skipped when the path runs through a non-directory.
fn apply(branch: &Path, names: &[&str], what: &Put) {
    let rel: std::path::PathBuf = names.iter().collect();
    let path = branch.join(&rel);
    let parent = path.parent().unwrap();
    if fs::create_dir_all(parent).is_err() {
        return;
    }
    if fs::symlink_metadata(&path).is_ok() && !matches!(what, Put::Opaque | Put::Hardlink) {
        return;
    }
    let name = names.last().unwrap();
    match what {
        Put::File { content, mode } => {
            write(&path, &format!("content {content}\n"));
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
        }
        Put::Dir => fs::create_dir(&path).unwrap(),
        Put::Symlink => symlink("a/b", &path).unwrap(),
        Put::Whiteout => write(&parent.join(format!(".wh.{name}")), ""),
        Put::Opaque => {
            if path.is_dir() {
                write(&path.join(".wh..wh..opq"), "");
            }
        }
        Put::Hardlink => {
            let md = fs::symlink_metadata(&path);
            let other = parent.join(format!("{name}2"));
            if md.is_ok_and(|m| m.is_file()) && fs::symlink_metadata(&other).is_err() {
                fs::hard_link(&path, &other).unwrap();
            }
        }
        Put::Meta => write(&parent.join(".wh..wh.plnk").join("1.2"), "x"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn branches_read_in_place_agree_with_the_fuse_view(ops in ops()) {
        let Some(mut f) = fixture() else { return Ok(()) };
        let mut layers: Vec<LayerRef> = Vec::new();
        for n in 0..3u32 {
            let ancestors: Vec<String> = layers.iter().rev().map(|l| l.key.clone()).collect();
            let l = LayerRef {
                id: format!("l{n}"),
                key: format!("{n:032x}"),
                ancestors,
                kind: if n == 2 { LayerKind::Rw } else { LayerKind::Ro },
            };
            f.backend.create(&l).unwrap();
            layers.push(l);
        }
        // Branch 0 of an op is the top layer's.
        for (b, names, what) in &ops {
            apply(&f.diff(&layers[2 - b].key), names, what);
        }
        let (parent, top) = (layers[1].clone(), layers[2].clone());
        let pv = f.mount(&parent, Access::ReadOnly);
        let cv = f.mount(&top, Access::ReadOnly);
        let (pm, cm) = (MountedView::new(&pv), MountedView::new(&cv));
        let in_place = f.backend.views_in_place(&top).expect("aufs reads in place");
        prop_assert_eq!(dump(&*in_place.parent), dump(&pm), "parent view: in place (left), FUSE (right)");
        prop_assert_eq!(dump(&*in_place.child), dump(&cm), "top view: in place (left), FUSE (right)");
        let generic = tree::changes(Some(&pv), &cv).unwrap();
        let native = f
            .backend
            .native_changes(&top, Some(&*in_place.parent), &*in_place.child)
            .expect("aufs has native changes")
            .unwrap();
        prop_assert_eq!(&native, &generic, "changes: in place (left), comparer on FUSE (right)");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let wa = write_changeset_from_source(&*in_place.child, &generic, &mut a);
        let wb = write_changeset_from_source(&cm, &generic, &mut b);
        prop_assert_eq!(wa.is_ok(), wb.is_ok(), "the tar can be written from one view only");
        prop_assert!(a == b, "the tars differ");
    }
}
