//! Timing (not a test): native changes vs the generic comparer for a 10-file change over a
//! 10,000-file lower layer, and mount time against chain depth. Run as root:
//! `cargo bench -p driver-overlay --bench overlay`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use driver_api::view::MountedView;
use driver_api::{Access, Backend, LayerKind, LayerRef};
use driver_overlay::OverlayBackend;

fn key(n: usize) -> String {
    format!("{:024x}{:08x}", 0xbe7c_u64, n)
}

fn layer(b: &OverlayBackend, n: usize, parent: Option<&LayerRef>, kind: LayerKind) -> LayerRef {
    let ancestors = match parent {
        Some(p) => std::iter::once(p.key.clone())
            .chain(p.ancestors.iter().cloned())
            .collect(),
        None => Vec::new(),
    };
    let l = LayerRef {
        id: format!("bench-{n}"),
        key: key(n),
        ancestors,
        kind,
    };
    b.create(&l).unwrap();
    l
}

/// Best of `runs` timings of `f`.
fn best(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    if let Err(why) = (driver_overlay::factory().probe)(dir.path()) {
        eprintln!("SKIPPED: overlay backend unavailable: {why}");
        return;
    }
    let b = OverlayBackend::open(dir.path(), &BTreeMap::new()).unwrap();

    // 1. Diff of a small change over a big lower layer.
    let base = layer(&b, 0, None, LayerKind::Ro);
    let base_diff = dir.path().join(&base.key).join("diff");
    for d in 0..100 {
        let sub = base_diff.join(format!("dir{d:03}"));
        std::fs::create_dir(&sub).unwrap();
        for f in 0..100 {
            std::fs::write(
                sub.join(format!("file{f:03}")),
                format!("content {d} {f}\n"),
            )
            .unwrap();
        }
    }
    let top = layer(&b, 1, Some(&base), LayerKind::Rw);
    let view = b.mount(&top, Access::ReadWrite).unwrap();
    for i in 0..10 {
        let p = view.join(format!("dir{:03}/file{:03}", i * 10, i));
        if i % 2 == 0 {
            std::fs::write(&p, "changed\n").unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    b.unmount(&top).unwrap();
    let parent_view = b.mount(&base, Access::ReadOnly).unwrap();
    let child_view = b.mount(&top, Access::ReadOnly).unwrap();
    let mut n_native = 0;
    let native = best(5, || {
        n_native = b
            .native_changes(
                &top,
                Some(&MountedView::new(&parent_view)),
                &MountedView::new(&child_view),
            )
            .unwrap()
            .unwrap()
            .len();
    });
    let mut n_generic = 0;
    let generic = best(5, || {
        n_generic = driver_api::tree::changes(Some(&parent_view), &child_view)
            .unwrap()
            .len();
    });
    b.unmount(&top).unwrap();
    assert_eq!(n_native, n_generic);
    println!("diff of a 10-file change over a 10,000-file lower layer ({n_native} changes)");
    println!("| method           | time       |");
    println!("|------------------|------------|");
    println!("| native (diff/)   | {:>10.3?} |", native);
    println!("| generic comparer | {:>10.3?} |", generic);
    println!();

    // 2. Mount time against chain depth.
    println!("mount time of the top layer of a chain (read-only view, best of 5)");
    println!("| depth | mount      | unmount    |");
    println!("|-------|------------|------------|");
    let mut chain: Vec<LayerRef> = Vec::new();
    let mut n = 100;
    for depth in [1usize, 16, 128, 500] {
        while chain.len() < depth {
            let l = layer(&b, n, chain.last(), LayerKind::Ro);
            n += 1;
            let d = dir.path().join(&l.key).join("diff");
            std::fs::write(d.join(format!("f{}", chain.len())), "x").unwrap();
            chain.push(l);
        }
        let top = chain.last().unwrap();
        let (mut m, mut u) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            let t = Instant::now();
            let v = b.mount(top, Access::ReadOnly).unwrap();
            m = m.min(t.elapsed());
            assert!(Path::new(&v).join("f0").exists());
            let t = Instant::now();
            b.unmount(top).unwrap();
            u = u.min(t.elapsed());
        }
        let note = if depth == 1 {
            "  (base layer: its diff/, no mount)"
        } else {
            ""
        };
        println!("| {depth:>5} | {m:>10.3?} | {u:>10.3?} |{note}");
    }
    b.cleanup().unwrap();
}
