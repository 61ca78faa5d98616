//! Mount life cycle of the aufs backend: access modes of an existing mount, and servers
//! reaped by the process that started them (no zombie left, whatever PID 1 does).

mod common;

use std::fs;
use std::path::PathBuf;

use common::{fixture, Fixture};
use driver_api::{Access, LayerKind, LayerRef};

impl Fixture {
    fn layer(&mut self, n: u32) -> LayerRef {
        let l = LayerRef {
            id: format!("layer{n}"),
            key: format!("{n:032x}"),
            ancestors: Vec::new(),
            kind: LayerKind::Rw,
        };
        self.backend.create(&l).unwrap();
        self.will_unmount(&l);
        l
    }
}

/// Which of `pids` are zombies (exited, not reaped). Tests of this binary may run in one
/// process, so only the servers a test started itself are looked at.
fn zombies(pids: &[i32]) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    == Some("Z")
            })
        })
        .collect()
}

fn server_pid(f: &Fixture, l: &LayerRef) -> i32 {
    f.backend.metadata(l).unwrap()["ServerPid"].parse().unwrap()
}

#[test]
fn mounting_again_in_the_other_access_mode_is_an_error() {
    let Some(mut f) = fixture() else { return };
    let l = f.layer(1);
    let ro = f.backend.mount(&l, Access::ReadOnly).unwrap();
    // The same mode again: the same view.
    assert_eq!(f.backend.mount(&l, Access::ReadOnly).unwrap(), ro);
    let err = f.backend.mount(&l, Access::ReadWrite).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("read-only") && msg.contains("layer1"),
        "unexpected error: {msg}"
    );
    // Still read-only, still served.
    assert_eq!(
        fs::write(ro.join("x"), "x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    f.backend.unmount(&l).unwrap();

    let rw = f.backend.mount(&l, Access::ReadWrite).unwrap();
    fs::write(rw.join("x"), "x").unwrap();
    assert_eq!(f.backend.mount(&l, Access::ReadWrite).unwrap(), rw);
    let msg = f
        .backend
        .mount(&l, Access::ReadOnly)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("read-write"), "unexpected error: {msg}");
    f.backend.unmount(&l).unwrap();
}

#[test]
fn servers_are_reaped_by_the_process_that_started_them() {
    let Some(mut f) = fixture() else { return };
    let layers: Vec<LayerRef> = (1..=3).map(|n| f.layer(n)).collect();
    let mut pids = Vec::new();
    for round in 0..4 {
        let mut views: Vec<PathBuf> = Vec::new();
        for l in &layers {
            views.push(f.backend.mount(l, Access::ReadWrite).unwrap());
            pids.push(server_pid(&f, l));
        }
        for (l, v) in layers.iter().zip(&views) {
            fs::write(v.join(format!("r{round}")), "x").unwrap();
            f.backend.unmount(l).unwrap();
        }
        assert_eq!(zombies(&pids), Vec::<i32>::new(), "round {round}");
    }
    // A view still in use is detached at unmount; its server exits when the last user lets
    // go, and is reaped by the next mount or unmount.
    let v = f.backend.mount(&layers[0], Access::ReadWrite).unwrap();
    let held_pid = server_pid(&f, &layers[0]);
    let held = fs::File::open(v.join("r0")).unwrap();
    f.backend.unmount(&layers[0]).unwrap();
    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // Any mount or unmount reaps.
        f.backend.unmount(&layers[1]).unwrap();
        let gone = fs::metadata(format!("/proc/{held_pid}")).is_err();
        if gone {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server {held_pid} of the detached view neither exited nor was reaped (zombie: {:?})",
            zombies(&[held_pid])
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_server_killed_under_a_mount_is_reaped_and_the_view_remounted() {
    let Some(mut f) = fixture() else { return };
    let l = f.layer(1);
    let v = f.backend.mount(&l, Access::ReadWrite).unwrap();
    fs::write(v.join("kept"), "k").unwrap();
    let pid = server_pid(&f, &l);
    // SAFETY: kill has no memory effects; the pid is our own child (the server).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f.backend.is_mounted(&l) {
        assert!(
            std::time::Instant::now() < deadline,
            "dead server still counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let v = f.backend.mount(&l, Access::ReadWrite).unwrap();
    assert_eq!(fs::read_to_string(v.join("kept")).unwrap(), "k");
    assert_eq!(zombies(&[pid]), Vec::<i32>::new());
    f.backend.unmount(&l).unwrap();
}
