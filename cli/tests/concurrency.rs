//! Several `gd` processes on one root at once: create, apply, mount/umount, diff, changes and
//! rm on overlapping chains (every worker builds on the same two shared layers), bounded by
//! a count of operations and a deadline. Every call has a time limit, so a deadlock fails
//! the test naming the command. At the end: no layer lost or left over, every layer reads
//! with the view it should have, the shared layers' changesets are byte-identical to before,
//! every mount count is 0, nothing is mounted under the root, and `gd check` is clean.
//!
//! Runs on vfs, overlay and aufs where the host can (drivers in GD_REQUIRE_DRIVERS must).

mod reliability;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use reliability::{digest_of, drivers, write_tar, Gd, Rng};

const WORKERS: usize = 5;
const OPS_PER_WORKER: usize = 14;
/// No worker starts an operation after this (the count is the usual bound; this one keeps
/// a slow, loaded machine under a minute per driver).
const DEADLINE: Duration = Duration::from_secs(12);

/// base, mid (on base), leaf (on mid) and base2 (on base, another way): their tars and digests.
struct Fixture {
    _dir: tempfile::TempDir,
    tars: BTreeMap<&'static str, std::path::PathBuf>,
    digests: BTreeMap<&'static str, String>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let base = p("base");
    for i in 0..40 {
        let d = base.join(format!("d{}", i % 4));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i}")), format!("base {i}\n").repeat(50)).unwrap();
    }
    fs::write(base.join("marker-base"), "base").unwrap();
    let mid = p("mid");
    driver_api::copy::copy_tree(&base, &mid).unwrap();
    fs::write(mid.join("d0/f0"), "changed in mid").unwrap();
    fs::remove_dir_all(mid.join("d1")).unwrap();
    fs::write(mid.join("marker-mid"), "mid").unwrap();
    let leaf = p("leaf");
    driver_api::copy::copy_tree(&mid, &leaf).unwrap();
    fs::remove_file(leaf.join("d2/f2")).unwrap();
    fs::create_dir(leaf.join("d1")).unwrap();
    fs::write(leaf.join("d1/again"), "leaf").unwrap();
    let base2 = p("base2");
    driver_api::copy::copy_tree(&base, &base2).unwrap();
    fs::write(base2.join("d3/f3"), "base2").unwrap();
    fs::remove_file(base2.join("marker-base")).unwrap();

    let mut tars = BTreeMap::new();
    for (name, from, to) in [
        ("base", None, &base),
        ("mid", Some(&base), &mid),
        ("leaf", Some(&mid), &leaf),
        ("base2", Some(&base), &base2),
    ] {
        let t = p(&format!("{name}.tar"));
        write_tar(from.map(|f: &std::path::PathBuf| f.as_path()), to, &t);
        tars.insert(name, t);
    }
    let mut digests = BTreeMap::new();
    for (name, d) in [
        ("base", &base),
        ("mid", &mid),
        ("leaf", &leaf),
        ("base2", &base2),
    ] {
        digests.insert(name, digest_of(d));
    }
    Fixture {
        _dir: dir,
        tars,
        digests,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What one worker leaves: its layers that must still exist, with the view each must have.
type Owned = Vec<(String, &'static str)>;

fn worker(gd: &Gd, fx: &Fixture, w: usize, mid_diff: &[u8], start: Instant) -> (Owned, usize) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((w as u64 + 1) * 0x9e37_79b9));
    let mut owned: Owned = Vec::new();
    let scratch = tempfile::tempdir().unwrap();
    let mut done = 0;
    for n in 0..OPS_PER_WORKER {
        if start.elapsed() > DEADLINE {
            break;
        }
        let id = format!("w{w}-{n}");
        match rng.below(8) {
            // A child of the shared mid layer, applied and read back.
            0 | 1 => {
                gd.ok(&["create", "--parent", "mid", &id]);
                gd.ok(&["apply", &id, s(&fx.tars["leaf"])]);
                assert_eq!(gd.digest(&id), fx.digests["leaf"], "[{}] {id}", gd.driver);
                owned.push((id, "leaf"));
            }
            // A sibling of mid on base.
            2 => {
                gd.ok(&["create", "--parent", "base", &id]);
                gd.ok(&["apply", &id, s(&fx.tars["base2"])]);
                owned.push((id, "base2"));
            }
            // Mount a shared or own layer, read it, release it.
            3 => {
                let (target, marker) = match rng.below(3) {
                    0 => ("base".to_string(), "marker-base"),
                    1 => ("mid".to_string(), "marker-mid"),
                    _ => match owned.iter().find(|(_, v)| *v == "leaf") {
                        Some((o, _)) => (o.clone(), "d1/again"),
                        None => ("mid".to_string(), "marker-mid"),
                    },
                };
                let path = gd.ok(&["mount", &target]);
                assert!(
                    Path::new(path.trim()).join(marker).exists(),
                    "[{}] {target} mounted at {} lacks {marker}",
                    gd.driver,
                    path.trim()
                );
                gd.ok(&["umount", &target]);
            }
            // The shared layer's changeset, while others mount it and build on it.
            4 => {
                let out = scratch.path().join("mid.tar");
                gd.ok(&["diff", "mid", "-o", s(&out)]);
                assert!(
                    fs::read(&out).unwrap() == mid_diff,
                    "[{}] worker {w}: mid's changeset changed under concurrency",
                    gd.driver
                );
            }
            // Remove one of ours.
            5 => {
                if !owned.is_empty() {
                    let (gone, _) = owned.remove(rng.below(owned.len() as u64) as usize);
                    gd.ok(&["rm", &gone]);
                }
            }
            // A container layer: mount read-write, write, release, see the change, remove.
            6 => {
                gd.ok(&["create", "--rw", "--parent", "mid", &id]);
                let path = gd.ok(&["mount", &id]);
                fs::write(Path::new(path.trim()).join("written"), &id).unwrap();
                gd.ok(&["umount", &id]);
                let changes = gd.ok(&["changes", &id]);
                assert!(
                    changes.lines().any(|l| l == "A /written"),
                    "[{}] {id}: changes {changes:?}",
                    gd.driver
                );
                gd.ok(&["rm", &id]);
            }
            // What must be refused stays refused: base has a child (mid).
            _ => {
                let out = gd.run(&["rm", "base"]);
                assert!(!out.status.success(), "[{}] rm base succeeded", gd.driver);
                let out = gd.run(&["apply", "base", s(&fx.tars["base2"])]);
                assert!(
                    !out.status.success(),
                    "[{}] apply base succeeded",
                    gd.driver
                );
                gd.layers();
            }
        }
        done += 1;
    }
    (owned, done)
}

/// Mount points under `root` in this mount namespace.
fn mounts_under(root: &Path) -> Vec<String> {
    let root = fs::canonicalize(root).unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(&root))
        .collect()
}

fn stress(driver: &str, fx: &Fixture) -> usize {
    let (root, gd) = Gd::on_temp_root("gd-concurrency-", driver);
    struct Cleanup<'a>(&'a Gd);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            self.0.cleanup();
        }
    }
    let _cleanup = Cleanup(&gd);
    gd.ok(&["create", "base"]);
    gd.ok(&["apply", "base", s(&fx.tars["base"])]);
    gd.ok(&["create", "--parent", "base", "mid"]);
    gd.ok(&["apply", "mid", s(&fx.tars["mid"])]);
    let scratch = tempfile::tempdir().unwrap();
    let mid_tar = scratch.path().join("mid.tar");
    gd.ok(&["diff", "mid", "-o", s(&mid_tar)]);
    let mid_diff = fs::read(&mid_tar).unwrap();

    let start = Instant::now();
    let results: Vec<(Owned, usize)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let gd = &gd;
                let mid_diff = &mid_diff;
                sc.spawn(move || worker(gd, fx, w, mid_diff, start))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ops: usize = results.iter().map(|(_, n)| n).sum();
    eprintln!(
        "concurrency on {driver}: {WORKERS} workers, {ops} operations in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Exactly the layers that should exist, each with its view, none mounted.
    let mut want: BTreeMap<String, &str> =
        BTreeMap::from([("base".to_string(), "base"), ("mid".to_string(), "mid")]);
    for (owned, _) in &results {
        for (id, view) in owned {
            want.insert(id.clone(), view);
        }
    }
    let layers = gd.layers();
    let mut have: Vec<String> = layers
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    have.sort();
    assert_eq!(
        have,
        want.keys().cloned().collect::<Vec<_>>(),
        "[{driver}] lost or left-over layers"
    );
    for l in &layers {
        assert_eq!(
            l["mounts"], 0,
            "[{driver}] {} is still counted mounted",
            l["id"]
        );
    }
    assert_eq!(
        mounts_under(root.path()),
        Vec::<String>::new(),
        "[{driver}] mounts left under the root after every umount"
    );
    for (id, view) in &want {
        assert_eq!(gd.digest(id), fx.digests[view], "[{driver}] layer {id}");
    }
    gd.ok(&["diff", "mid", "-o", s(&mid_tar)]);
    assert!(
        fs::read(&mid_tar).unwrap() == mid_diff,
        "[{driver}] mid changed"
    );
    gd.assert_check_clean("after the stress run");
    ops
}

#[test]
fn concurrent_gd_processes_lose_nothing() {
    let fx = fixture();
    let mut total = 0;
    for d in drivers("concurrency test") {
        total += stress(&d, &fx);
    }
    assert!(total > 0, "no driver could run");
}
