//! The cases of the suite. Each takes a fresh `Harness` for the driver under test.

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use driver_api::Error;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::steps::{apply_steps, Step};
use crate::{assert_manifest_eq, changeset, manifest_text, scenarios, Harness};

/// An empty tar: two zero blocks.
const EMPTY_TAR: [u8; 1024] = [0; 1024];

pub fn empty_layer(h: &Harness) {
    h.create("base", None, false);
    assert!(h.store.exists("base").unwrap());
    assert_eq!(
        h.diff("base"),
        EMPTY_TAR.to_vec(),
        "[{}] diff of an empty layer",
        h.name
    );
    assert!(h.store.changes("base").unwrap().is_empty());
    assert_eq!(h.store.diff_size("base").unwrap(), 0);
    assert_eq!(h.manifest("base"), "");
    h.create("child", Some("base"), true);
    assert_eq!(
        h.diff("child"),
        EMPTY_TAR.to_vec(),
        "[{}] diff of an empty child",
        h.name
    );
    let ids: Vec<_> = h.store.list().unwrap().into_iter().map(|l| l.id).collect();
    assert_eq!(ids, ["base", "child"]);
}

pub fn root_permissions(h: &Harness) {
    h.create("base", None, false);
    h.create("rw", Some("base"), true);
    for id in ["base", "rw"] {
        let view = h.store.get(id).unwrap();
        let md = fs::metadata(&view).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o755, "[{}] root mode of {id}", h.name);
        assert_eq!(
            (md.uid(), md.gid()),
            (0, 0),
            "[{}] root owner of {id}",
            h.name
        );
        h.store.put(id).unwrap();
    }
}

/// A tar made by another tool (GNU tar, PAX with xattrs) applies to the same view.
pub fn base_layer_from_gnu_tar(h: &Harness) {
    let reference = h.ref_dir();
    apply_steps(&reference, &scenarios::basic()[0], 0);
    let out = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--format=pax",
            "--numeric-owner",
            "-C",
        ])
        .arg(&reference)
        .args(["-cf", "-", "."])
        .output()
        .expect("GNU tar runs");
    assert!(
        out.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.create("base", None, false);
    h.apply("base", &out.stdout);
    assert_manifest_eq(
        &h.manifest("base"),
        &manifest_text(&reference),
        &format!("[{}] GNU tar base", h.name),
    );
}

pub fn snapshot_sees_parent(h: &Harness) {
    let empty = h.ref_dir();
    let r1 = h.layer_via_tar("base", None, &empty, &[Step::write("hello", "world")], 0);
    h.create("snap", Some("base"), false);
    assert_manifest_eq(
        &h.manifest("snap"),
        &manifest_text(&r1),
        &format!("[{}] snapshot", h.name),
    );
    assert_eq!(h.diff("snap"), EMPTY_TAR.to_vec());
}

pub fn rw_writes_stay_in_layer(h: &Harness) {
    let empty = h.ref_dir();
    let r1 = h.layer_via_tar("base", None, &empty, &[Step::write("a", "1")], 0);
    let r2 = h.layer_via_mount(
        "c1",
        Some("base"),
        &r1,
        &[Step::write("b", "2"), Step::remove("a")],
        1,
    );
    // The parent and a sibling still see the parent's content only.
    assert_manifest_eq(
        &h.manifest("base"),
        &manifest_text(&r1),
        &format!("[{}] parent after child wrote", h.name),
    );
    h.create("c2", Some("base"), true);
    assert_manifest_eq(
        &h.manifest("c2"),
        &manifest_text(&r1),
        &format!("[{}] sibling", h.name),
    );
    h.check_layer("c1", Some("base"), &r1, &r2);
}

pub fn deep_chain_128(h: &Harness) {
    let mut prev = h.ref_dir();
    let mut parent: Option<String> = None;
    for i in 0..128 {
        let id = format!("l{i:03}");
        let steps = if i == 0 {
            vec![Step::write("bottom", "from the bottom layer")]
        } else {
            vec![Step::write(&format!("f{i:03}"), &format!("layer {i}"))]
        };
        prev = h.layer_via_tar(&id, parent.as_deref(), &prev, &steps, i);
        parent = Some(id);
    }
    let top = parent.unwrap();
    let view = h.store.get(&top).unwrap();
    assert_eq!(
        fs::read_to_string(view.join("bottom")).unwrap(),
        "from the bottom layer"
    );
    h.store.put(&top).unwrap();
    assert_manifest_eq(
        &h.manifest(&top),
        &manifest_text(&prev),
        &format!("[{}] top of 128 layers", h.name),
    );
}

pub fn refcounted_mounts(h: &Harness) {
    h.create("base", None, false);
    h.create("rw", Some("base"), true);
    let p1 = h.store.get("rw").unwrap();
    let p2 = h.store.get("rw").unwrap();
    assert_eq!(p1, p2);
    assert_eq!(h.store.info("rw").unwrap().mounts, 2);
    h.store.put("rw").unwrap();
    assert_eq!(h.store.info("rw").unwrap().mounts, 1);
    fs::write(p1.join("still-mounted"), "yes").expect("the view is still usable after one put");
    h.store.put("rw").unwrap();
    assert_eq!(h.store.info("rw").unwrap().mounts, 0);
    assert!(
        matches!(h.store.put("rw"), Err(Error::NotMounted { .. })),
        "[{}] a third put must fail",
        h.name
    );
}

pub fn remove_refused_with_children_or_mounted(h: &Harness) {
    h.create("base", None, false);
    h.create("child", Some("base"), true);
    match h.store.remove("base") {
        Err(Error::HasChildren { id, children }) => {
            assert_eq!(id, "base");
            assert_eq!(children, "child");
        }
        other => panic!("[{}] removing a layer with children: {other:?}", h.name),
    }
    h.store.get("child").unwrap();
    assert!(matches!(
        h.store.remove("child"),
        Err(Error::Mounted { .. })
    ));
    h.store.put("child").unwrap();
    h.store.remove("child").unwrap();
    h.store.remove("base").unwrap();
    assert!(matches!(
        h.store.remove("base"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        h.store.create("x", Some("nope"), &Default::default()),
        Err(Error::ParentNotFound { .. })
    ));
    assert!(matches!(
        h.store.create("../x", None, &Default::default()),
        Err(Error::InvalidId { .. })
    ));
    assert!(h.store.list().unwrap().is_empty());
}

/// A tar that fails half-way leaves the layer exactly as it was, both a fresh layer and one
/// that already had content.
pub fn failed_apply_rolls_back(h: &Harness) {
    let empty = h.ref_dir();
    let r1 = h.layer_via_tar("base", None, &empty, &scenarios::basic()[0], 0);
    // Cut the good tar in the middle of a file's data: the stream ends early.
    let mut bad = changeset(&empty, &r1);
    bad.truncate(bad.len() - 1024 - 100);
    h.create("fresh", None, false);
    assert!(
        h.store.apply_diff("fresh", &mut Cursor::new(&bad)).is_err(),
        "[{}] truncated tar must fail",
        h.name
    );
    assert_eq!(
        h.manifest("fresh"),
        "",
        "[{}] a failed apply onto a fresh layer leaves it empty",
        h.name
    );
    // And the layer is usable afterwards.
    h.apply("fresh", &changeset(&empty, &r1));
    assert_manifest_eq(&h.manifest("fresh"), &manifest_text(&r1), "after retry");
    // A layer with content: a failing second apply changes nothing.
    let before = h.manifest("base");
    assert!(h.store.apply_diff("base", &mut Cursor::new(&bad)).is_err());
    assert_manifest_eq(
        &h.manifest("base"),
        &before,
        &format!("[{}] layer with content after a failed apply", h.name),
    );
}

/// Applying onto a layer that already has content (two tars in a row) gives their sum.
pub fn apply_onto_layer_with_content(h: &Harness) {
    let empty = h.ref_dir();
    let r1 = h.ref_copy(&empty);
    apply_steps(&r1, &scenarios::basic()[0], 0);
    let r2 = h.ref_copy(&r1);
    apply_steps(&r2, &scenarios::basic()[1], 100);
    h.create("l", None, false);
    h.apply("l", &changeset(&empty, &r1));
    h.apply("l", &changeset(&r1, &r2));
    assert_manifest_eq(
        &h.manifest("l"),
        &manifest_text(&r2),
        &format!("[{}] two applies", h.name),
    );
    let size = h.store.info("l").unwrap().size;
    assert!(size.unwrap_or(0) > 0);
}

/// Hostile tars: each fails (or is made harmless), and nothing outside the layer changes.
pub fn hostile_tars_rejected(h: &Harness) {
    let outside = h.ref_dir();
    fs::write(outside.join("victim"), "untouched").unwrap();
    let before = manifest_text(&outside);
    let target = outside.join("victim");
    let target = target.to_str().unwrap();
    let tars: Vec<(&str, Vec<u8>)> = vec![
        (
            "absolute path",
            raw_tar(&[RawEntry::file(target, b"pwned")]),
        ),
        (
            "dotdot",
            raw_tar(&[RawEntry::file(
                "../../../../../../../../../../tmp/gd-escape",
                b"x",
            )]),
        ),
        (
            "symlink then write through it",
            raw_tar(&[
                RawEntry::symlink("evil", outside.to_str().unwrap()),
                RawEntry::file("evil/victim", b"pwned"),
            ]),
        ),
        (
            "hardlink to outside",
            raw_tar(&[RawEntry::hardlink("link", target)]),
        ),
        (
            "whiteout outside",
            raw_tar(&[RawEntry::file("../.wh.victim", b"")]),
        ),
        ("garbage", vec![0x42; 4096]),
        ("absurd size", {
            let mut t = raw_tar(&[RawEntry::file("big", b"small")]);
            // Claim 8 GiB in the size field.
            t[124..136].copy_from_slice(b"100000000000");
            fix_checksum(&mut t[..512]);
            t.truncate(1024);
            t
        }),
    ];
    for (i, (what, tar)) in tars.iter().enumerate() {
        let id = format!("hostile{i}");
        h.create(&id, None, false);
        let r = h.store.apply_diff(&id, &mut Cursor::new(tar));
        // Each either fails with an error naming the layer, or applied harmlessly inside.
        if let Err(e) = &r {
            let msg = e.to_string();
            assert!(
                msg.contains(&id),
                "[{}] {what}: error {msg:?} must name the layer",
                h.name
            );
        }
        assert_eq!(
            manifest_text(&outside),
            before,
            "[{}] {what}: something outside the layer changed",
            h.name
        );
        assert!(
            !Path::new("/tmp/gd-escape").exists(),
            "[{}] {what}: escaped to /tmp",
            h.name
        );
    }
}

/// Property test: random steps, made through the mounted view of a read-write layer and
/// through a tar, always give the reference's manifest and the canonical diff.
pub fn random_steps_match_reference(h: &Harness) {
    let names = ["a", "b", "c", "d/e", "d/f", "d", "g"];
    let step = prop_oneof![
        (0..names.len(), "[a-z]{0,40}").prop_map(move |(i, c)| Step::write(names[i], &c)),
        (0..names.len()).prop_map(move |i| Step::mkdir(names[i])),
        (0..names.len()).prop_map(move |i| Step::remove(names[i])),
        (
            0..names.len(),
            prop_oneof![Just(0o600u32), Just(0o755), Just(0o4711)]
        )
            .prop_map(move |(i, m)| Step::Chmod {
                path: names[i].into(),
                mode: m
            }),
        (0..names.len(), 0..names.len()).prop_map(move |(i, j)| Step::Hardlink {
            path: names[i].into(),
            target: names[j].into()
        }),
        (0..names.len(), 0..names.len()).prop_map(move |(i, j)| Step::Rename {
            from: names[i].into(),
            to: names[j].into()
        }),
        (0..names.len()).prop_map(move |i| Step::Symlink {
            path: names[i].into(),
            target: "../x".into()
        }),
    ];
    let layers = proptest::collection::vec(proptest::collection::vec(step, 1..8), 1..4);
    let cases: u32 = std::env::var("GD_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let counter = std::cell::Cell::new(0u32);
    runner
        .run(&layers, |layers| {
            let run = counter.get();
            counter.set(run + 1);
            let mut prev_tar = h.ref_dir();
            let mut prev_mount = prev_tar.clone();
            let mut parent_tar: Option<String> = None;
            let mut parent_mount: Option<String> = None;
            for (li, steps) in layers.iter().enumerate() {
                // Keep only the steps that make sense on the reference (the rest would fail
                // the same way everywhere).
                let probe = h.ref_copy(&prev_tar);
                let mut valid = Vec::new();
                for (si, s) in steps.iter().enumerate() {
                    if crate::steps::apply_step(&probe, s, li * 10 + si).is_ok() {
                        valid.push(s.clone());
                    }
                }
                let first = li * 10;
                let id_t = format!("p{run}t{li}");
                let id_m = format!("p{run}m{li}");
                // Renumber so that times match `probe`'s.
                let next_t =
                    h.layer_via_tar(&id_t, parent_tar.as_deref(), &prev_tar, &valid, first);
                h.check_layer(&id_t, parent_tar.as_deref(), &prev_tar, &next_t);
                let next_m =
                    h.layer_via_mount(&id_m, parent_mount.as_deref(), &prev_mount, &valid, first);
                h.check_layer(&id_m, parent_mount.as_deref(), &prev_mount, &next_m);
                prev_tar = next_t;
                prev_mount = next_m;
                parent_tar = Some(id_t);
                parent_mount = Some(id_m);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("[{}] {e}", h.name));
}

fn run_scenario(h: &Harness, layers: &[Vec<Step>], via_mount: bool) {
    let mut prev = h.ref_dir();
    let mut parent: Option<String> = None;
    for (i, steps) in layers.iter().enumerate() {
        let id = format!("layer{i}");
        let next = if via_mount {
            h.layer_via_mount(&id, parent.as_deref(), &prev, steps, i * 100)
        } else {
            h.layer_via_tar(&id, parent.as_deref(), &prev, steps, i * 100)
        };
        h.check_layer(&id, parent.as_deref(), &prev, &next);
        prev = next;
        parent = Some(id);
    }
}

macro_rules! scenario_cases {
    ($($scenario:ident => $tar:ident, $mount:ident;)*) => {
        $(
            pub fn $tar(h: &Harness) {
                run_scenario(h, &scenarios::$scenario(), false);
            }
            pub fn $mount(h: &Harness) {
                run_scenario(h, &scenarios::$scenario(), true);
            }
        )*
    };
}

scenario_cases! {
    basic => scenario_basic_via_tar, scenario_basic_via_mount;
    nested_recreate => scenario_nested_recreate_via_tar, scenario_nested_recreate_via_mount;
        hardlinks => scenario_hardlinks_via_tar, scenario_hardlinks_via_mount;
    hardlinked_non_files => scenario_hardlinked_non_files_via_tar,
        scenario_hardlinked_non_files_via_mount;
    type_changes => scenario_type_changes_via_tar, scenario_type_changes_via_mount;
    odd_modes => scenario_odd_modes_via_tar, scenario_odd_modes_via_mount;
    long_names => scenario_long_names_via_tar, scenario_long_names_via_mount;
    same_second => scenario_same_second_via_tar, scenario_same_second_via_mount;
}

/// What the cross-driver test compares: for every scenario and both ways of building,
/// each layer's diff bytes and manifest digest.
pub fn fingerprints(h: &Harness) -> Vec<(String, Vec<u8>, String)> {
    let mut out = Vec::new();
    for (name, layers) in scenarios::all() {
        for via_mount in [false, true] {
            let mut prev = h.ref_dir();
            let mut parent: Option<String> = None;
            for (i, steps) in layers.iter().enumerate() {
                let id = format!("{name}-{}-{i}", if via_mount { "m" } else { "t" });
                prev = if via_mount {
                    h.layer_via_mount(&id, parent.as_deref(), &prev, steps, i * 100)
                } else {
                    h.layer_via_tar(&id, parent.as_deref(), &prev, steps, i * 100)
                };
                let view = h.store.get(&id).unwrap();
                let digest = driver_api::manifest::manifest_digest(&view).unwrap();
                h.store.put(&id).unwrap();
                out.push((id.clone(), h.diff(&id), digest));
                parent = Some(id);
            }
        }
    }
    out
}

/// Every driver that can run here gives the same diff bytes and manifest digests, layer by
/// layer, for every scenario built both ways.
pub fn cross_driver(factories: Vec<driver_api::DriverFactory>) {
    cross_driver_harnesses(
        factories
            .into_iter()
            .map(|f| Box::new(move || Harness::new(f)) as _)
            .collect(),
    );
}

/// `cross_driver` over harnesses made by the caller (drivers loaded as plugins among them).
/// Each is made, fingerprinted and dropped in turn, so only one driver's store exists at once.
pub fn cross_driver_harnesses(makers: Vec<Box<dyn FnOnce() -> Option<Harness>>>) {
    let mut results = Vec::new();
    for make in makers {
        if let Some(h) = make() {
            results.push((h.name, fingerprints(&h)));
        }
    }
    assert!(!results.is_empty(), "no driver could run");
    let (first_name, first) = &results[0];
    for (name, fp) in &results[1..] {
        assert_eq!(fp.len(), first.len());
        for ((id, tar_a, dig_a), (_, tar_b, dig_b)) in first.iter().zip(fp) {
            assert_eq!(
                dig_a, dig_b,
                "layer {id}: manifest digest differs between {first_name} and {name}"
            );
            if tar_a != tar_b {
                panic!(
                    "layer {id}: diff bytes differ between {first_name} and {name}\n{first_name}: {:?}\n{name}: {:?}",
                    crate::tar_listing(tar_a),
                    crate::tar_listing(tar_b)
                );
            }
        }
    }
    let names: Vec<_> = results.iter().map(|(n, _)| *n).collect();
    eprintln!(
        "cross-driver: {} layers identical across {names:?}",
        first.len()
    );
}

// ---- raw tar building for hostile cases ------------------------------------------------

pub struct RawEntry {
    name: String,
    kind: u8,
    link: String,
    data: Vec<u8>,
}

impl RawEntry {
    pub fn file(name: &str, data: &[u8]) -> RawEntry {
        RawEntry {
            name: name.into(),
            kind: b'0',
            link: String::new(),
            data: data.to_vec(),
        }
    }
    pub fn symlink(name: &str, target: &str) -> RawEntry {
        RawEntry {
            name: name.into(),
            kind: b'2',
            link: target.into(),
            data: vec![],
        }
    }
    pub fn hardlink(name: &str, target: &str) -> RawEntry {
        RawEntry {
            name: name.into(),
            kind: b'1',
            link: target.into(),
            data: vec![],
        }
    }
}

fn fix_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A ustar archive with exactly these entries, no cleaning of names (that's the point).
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = [0u8; 512];
        let n = e.name.as_bytes();
        h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", e.data.len()).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = e.kind;
        let l = e.link.as_bytes();
        h[157..157 + l.len().min(100)].copy_from_slice(&l[..l.len().min(100)]);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        fix_checksum(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}
