//! The devmapper backend against a real kernel thin pool (loop-backed, under /tmp).
//!
//! These need device-mapper with thin provisioning. On a host kernel without it each test
//! prints a loud SKIPPED line; `ci/devmapper-tests.sh` runs them inside a user-mode-linux
//! guest that has it, where (GD_IN_GUEST=1) a missing device-mapper is a failure.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use driver_api::{Access, Backend, LayerKind, LayerRef};
use driver_devmapper::DevmapperBackend;

fn dm_available() -> bool {
    match driver_devmapper::probe(Path::new("/")) {
        Ok(()) => true,
        Err(why) => {
            if std::env::var_os("GD_IN_GUEST").is_some() {
                panic!("device-mapper must be available in the test guest: {why}");
            }
            // Straight to fd 2: the test harness captures eprintln! of passing tests.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: device-mapper not available in this kernel (run ci/devmapper-tests.sh): {why}"
            );
            false
        }
    }
}

/// A small loop pool in a temporary home; everything is torn down on drop.
struct Pool {
    home: tempfile::TempDir,
    backend: Option<DevmapperBackend>,
}

fn small_opts(data: &str) -> BTreeMap<String, String> {
    [
        ("dm.loopdatasize", data),
        ("dm.loopmetadatasize", "16M"),
        ("dm.basesize", "128M"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Pool {
    fn new() -> Pool {
        Pool::with(small_opts("512M"))
    }
    fn with(opts: BTreeMap<String, String>) -> Pool {
        let home = tempfile::Builder::new()
            .prefix("gd-dm-test")
            .tempdir_in("/tmp")
            .unwrap();
        let backend = DevmapperBackend::open(home.path(), &opts).expect("open the pool");
        Pool {
            home,
            backend: Some(backend),
        }
    }
    fn b(&self) -> &DevmapperBackend {
        self.backend.as_ref().unwrap()
    }
    /// Drop the backend (as a process exit would) and open the same home again.
    fn reopen(&mut self) {
        self.backend = None;
        self.backend = Some(
            DevmapperBackend::open(self.home.path(), &BTreeMap::new()).expect("reopen the pool"),
        );
    }
    fn pool_name(&self) -> String {
        self.b()
            .status()
            .into_iter()
            .find(|(k, _)| k == "Pool Name")
            .unwrap()
            .1
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(b) = &self.backend {
            if let Err(e) = b.cleanup() {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

fn layer(n: u32, ancestors: &[&LayerRef]) -> LayerRef {
    LayerRef {
        id: format!("layer{n}"),
        key: format!("{n:032x}"),
        ancestors: ancestors.iter().map(|a| a.key.clone()).collect(),
        kind: LayerKind::Ro,
    }
}

/// Mounts `l`, runs `f` on its view, unmounts.
fn with_view<T>(
    b: &DevmapperBackend,
    l: &LayerRef,
    access: Access,
    f: impl FnOnce(&Path) -> T,
) -> T {
    let view = b.mount(l, access).expect("mount");
    assert!(b.is_mounted(l));
    let out = f(&view);
    b.unmount(l).expect("unmount");
    assert!(!b.is_mounted(l));
    out
}

fn dmsetup(args: &[&str]) -> (bool, String) {
    let out = Command::new("dmsetup")
        .args(args)
        .output()
        .expect("run dmsetup");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn pool_is_made_and_empty_layer_has_clean_view() {
    if !dm_available() {
        return;
    }
    let pool = Pool::new();
    let b = pool.b();
    assert!(pool.home.path().join("pool/data").exists());
    assert!(b.keys().unwrap().is_empty());
    let status: BTreeMap<_, _> = b.status().into_iter().collect();
    assert_eq!(status["Backing Filesystem"], "ext4");
    assert_eq!(status["Pool Mode"], "rw");
    let a = layer(1, &[]);
    b.create(&a).unwrap();
    assert_eq!(b.keys().unwrap(), vec![a.key.clone()]);
    let entries = with_view(b, &a, Access::ReadOnly, |v| {
        fs::read_dir(v).unwrap().count()
    });
    assert_eq!(entries, 0, "the view must be empty (no lost+found)");
    let meta = b.metadata(&a).unwrap();
    assert_eq!(meta["DeviceSize"], (128u64 << 20).to_string());
    assert!(meta["DeviceName"].ends_with(&a.key));
}

#[test]
fn snapshot_sees_parent_and_writes_are_isolated() {
    if !dm_available() {
        return;
    }
    let pool = Pool::new();
    let b = pool.b();
    let a = layer(1, &[]);
    b.create(&a).unwrap();
    with_view(b, &a, Access::ReadWrite, |v| {
        fs::write(v.join("file"), "from a").unwrap();
        fs::create_dir(v.join("dir")).unwrap();
    });
    let c = layer(2, &[&a]);
    b.create(&c).unwrap();
    // Parent and child mounted at once, as the store's diff does.
    let va = b.mount(&a, Access::ReadOnly).unwrap();
    let vc = b.mount(&c, Access::ReadWrite).unwrap();
    assert_eq!(fs::read_to_string(vc.join("file")).unwrap(), "from a");
    fs::write(vc.join("file"), "from c").unwrap();
    fs::write(vc.join("dir/new"), "new").unwrap();
    assert_eq!(fs::read_to_string(va.join("file")).unwrap(), "from a");
    assert!(!va.join("dir/new").exists());
    b.unmount(&c).unwrap();
    b.unmount(&a).unwrap();

    // A snapshot of a mounted parent is consistent (the parent is frozen for it).
    let va = b.mount(&a, Access::ReadWrite).unwrap();
    fs::write(va.join("late"), "written while mounted").unwrap();
    let d = layer(3, &[&a]);
    b.create(&d).unwrap();
    b.unmount(&a).unwrap();
    with_view(b, &d, Access::ReadOnly, |v| {
        assert_eq!(
            fs::read_to_string(v.join("late")).unwrap(),
            "written while mounted"
        );
        assert_eq!(fs::read_to_string(v.join("file")).unwrap(), "from a");
    });

    // clone_layer: the copy holds exactly what the source holds, and is independent.
    let c2 = LayerRef {
        key: format!("{:032x}", 22),
        ..c.clone()
    };
    b.clone_layer(&c.key, &c2).unwrap();
    with_view(b, &c2, Access::ReadWrite, |v| {
        assert_eq!(fs::read_to_string(v.join("file")).unwrap(), "from c");
        fs::remove_file(v.join("dir/new")).unwrap();
    });
    with_view(b, &c, Access::ReadOnly, |v| {
        assert!(v.join("dir/new").exists())
    });
}

#[test]
fn remove_frees_the_device_and_is_idempotent() {
    if !dm_available() {
        return;
    }
    let mut pool = Pool::new();
    let a = layer(1, &[]);
    let c = layer(2, &[&a]);
    pool.b().create(&a).unwrap();
    pool.b().create(&c).unwrap();
    let id: u32 = pool.b().metadata(&c).unwrap()["DeviceId"].parse().unwrap();
    // Removing a mounted layer unmounts it first.
    pool.b().mount(&c, Access::ReadWrite).unwrap();
    pool.b().remove(&c.key).unwrap();
    assert!(!pool.b().is_mounted(&c));
    assert_eq!(pool.b().keys().unwrap(), vec![a.key.clone()]);
    pool.b().remove(&c.key).unwrap();
    // The thin id is free in the pool again: creating it by hand succeeds.
    let pool_name = pool.pool_name();
    let (ok, out) = dmsetup(&["message", &pool_name, "0", &format!("create_thin {id}")]);
    assert!(ok, "thin id {id} should be free after remove: {out}");
    let (ok, out) = dmsetup(&["message", &pool_name, "0", &format!("delete {id}")]);
    assert!(ok, "{out}");
    // Layers and their content survive a restart of the process and a cleanup.
    with_view(pool.b(), &a, Access::ReadWrite, |v| {
        fs::write(v.join("kept"), "yes").unwrap()
    });
    pool.b().cleanup().unwrap();
    let (_, ls) = dmsetup(&["ls"]);
    assert!(
        !ls.contains(&pool_name),
        "cleanup must remove the pool: {ls}"
    );
    pool.reopen();
    assert_eq!(pool.b().keys().unwrap(), vec![a.key.clone()]);
    with_view(pool.b(), &a, Access::ReadOnly, |v| {
        assert_eq!(fs::read_to_string(v.join("kept")).unwrap(), "yes")
    });
}

fn pool_transaction_id(pool: &str) -> u64 {
    let (ok, out) = dmsetup(&["status", pool]);
    assert!(ok, "{out}");
    out.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn half_done_create_is_rolled_back_at_start_up() {
    if !dm_available() {
        return;
    }
    let mut pool = Pool::new();
    let a = layer(1, &[]);
    pool.b().create(&a).unwrap();
    let pool_name = pool.pool_name();
    let a_id: u32 = pool.b().metadata(&a).unwrap()["DeviceId"].parse().unwrap();
    let txn = pool_transaction_id(&pool_name);

    // A crash after the snapshot was made in the pool and its metadata written, but before
    // the pool's transaction id moved: exactly what `create` leaves at that point.
    let half: PathBuf = pool
        .home
        .path()
        .join("devices")
        .join(format!("{:032x}.json", 9));
    let new_id = 1000;
    let (ok, out) = dmsetup(&[
        "message",
        &pool_name,
        "0",
        &format!("create_snap {new_id} {a_id}"),
    ]);
    assert!(ok, "{out}");
    fs::write(
        pool.home.path().join("transaction.json"),
        format!(
            r#"{{"transaction_id":{},"device_id":{new_id},"name":"{:032x}","op":"create"}}"#,
            txn + 1,
            9
        ),
    )
    .unwrap();
    fs::write(
        &half,
        format!(
            r#"{{"device_id":{new_id},"size":134217728,"transaction_id":{}}}"#,
            txn + 1
        ),
    )
    .unwrap();
    pool.reopen();
    assert!(
        !half.exists(),
        "the half-made device's metadata must be gone"
    );
    assert!(!pool.home.path().join("transaction.json").exists());
    assert_eq!(pool.b().keys().unwrap(), vec![a.key.clone()]);
    let (ok, out) = dmsetup(&["message", &pool_name, "0", &format!("create_thin {new_id}")]);
    assert!(
        ok,
        "the half-made thin device {new_id} must be deleted: {out}"
    );
    let (ok, out) = dmsetup(&["message", &pool_name, "0", &format!("delete {new_id}")]);
    assert!(ok, "{out}");
    assert_eq!(pool_transaction_id(&pool_name), txn);

    // A crash after the pool reached the transaction but before the record was removed:
    // the operation is complete and is kept.
    let c = layer(2, &[&a]);
    pool.b().create(&c).unwrap();
    let c_id: u32 = pool.b().metadata(&c).unwrap()["DeviceId"].parse().unwrap();
    let txn = pool_transaction_id(&pool_name);
    fs::write(
        pool.home.path().join("transaction.json"),
        format!(
            r#"{{"transaction_id":{txn},"device_id":{c_id},"name":"{}","op":"create"}}"#,
            c.key
        ),
    )
    .unwrap();
    pool.reopen();
    assert!(!pool.home.path().join("transaction.json").exists());
    let mut keys = pool.b().keys().unwrap();
    keys.sort();
    assert_eq!(keys, vec![a.key.clone(), c.key.clone()]);
    with_view(pool.b(), &c, Access::ReadOnly, |_| ());
}

#[test]
fn full_pool_is_reported_in_plain_words() {
    if !dm_available() {
        return;
    }
    // 48 MiB of data blocks behind a 128 MiB filesystem.
    let pool = Pool::with(small_opts("48M"));
    let b = pool.b();
    let a = layer(1, &[]);
    b.create(&a).unwrap();
    let view = b.mount(&a, Access::ReadWrite).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut failed = None;
    {
        use std::io::Write;
        let path = view.join("big");
        let mut f = fs::File::create(&path).unwrap();
        for _ in 0..100 {
            if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
                failed = Some(e);
                break;
            }
        }
    }
    assert!(
        failed.is_some(),
        "writing 100 MiB into a 48 MiB pool must fail"
    );
    let status: BTreeMap<_, _> = b.status().into_iter().collect();
    let trouble = status
        .get("Pool Trouble")
        .expect("status names the trouble");
    assert!(trouble.contains("is full"), "{trouble}");
    assert!(trouble.contains("dm.loopdatasize"), "{trouble}");
    eprintln!("pool-full message: {trouble}");
    let _ = b.unmount(&a);
}

#[test]
fn remove_of_a_busy_layer_is_deferred_then_finished() {
    if !dm_available() {
        return;
    }
    let pool = Pool::new();
    let b = pool.b();
    let a = layer(1, &[]);
    let c = layer(2, &[&a]);
    b.create(&a).unwrap();
    b.create(&c).unwrap();
    let id: u32 = b.metadata(&c).unwrap()["DeviceId"].parse().unwrap();
    let view = b.mount(&c, Access::ReadWrite).unwrap();
    // Something (a leaked process) still holds a file open in the layer.
    let holder = fs::File::create(view.join("held")).unwrap();
    b.remove(&c.key).unwrap();
    assert!(
        !b.keys().unwrap().contains(&c.key),
        "a removed key is gone at once"
    );
    let pool_name = pool.pool_name();
    let (ok, _) = dmsetup(&["message", &pool_name, "0", &format!("create_thin {id}")]);
    assert!(!ok, "the thin device must still exist while it is busy");
    drop(holder);
    // A later removal (of anything) finishes the deferred one, once the kernel has let go of
    // the lazily unmounted filesystem (which happens asynchronously after the last close):
    // allow it a few seconds.
    let mut last = String::new();
    let freed = (0..50).any(|_| {
        b.remove(&format!("{:032x}", 77)).unwrap();
        let (ok, out) = dmsetup(&["message", &pool_name, "0", &format!("create_thin {id}")]);
        last = out;
        if !ok {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        ok
    });
    assert!(
        freed,
        "the deferred delete must have freed thin id {id}: {last}"
    );
    let (ok, out) = dmsetup(&["message", &pool_name, "0", &format!("delete {id}")]);
    assert!(ok, "{out}");
}

#[test]
fn half_done_delete_is_finished_at_start_up() {
    if !dm_available() {
        return;
    }
    let mut pool = Pool::new();
    let a = layer(1, &[]);
    pool.b().create(&a).unwrap();
    let pool_name = pool.pool_name();
    let a_id: u32 = pool.b().metadata(&a).unwrap()["DeviceId"].parse().unwrap();
    let txn = pool_transaction_id(&pool_name);
    // A crash after the delete was recorded and sent, before the metadata went.
    fs::write(
        pool.home.path().join("transaction.json"),
        format!(
            r#"{{"transaction_id":{},"device_id":{a_id},"name":"{}","op":"delete"}}"#,
            txn + 1,
            a.key
        ),
    )
    .unwrap();
    let (ok, out) = dmsetup(&["message", &pool_name, "0", &format!("delete {a_id}")]);
    assert!(ok, "{out}");
    pool.reopen();
    assert!(pool.b().keys().unwrap().is_empty());
    assert!(!pool.home.path().join("transaction.json").exists());
    // The store's view of it: removing the key again is a no-op.
    pool.b().remove(&a.key).unwrap();
}

#[test]
fn xfs_layers_snapshot_too() {
    if !dm_available() {
        return;
    }
    let mut opts = small_opts("512M");
    opts.insert("dm.fs".into(), "xfs".into());
    opts.insert("dm.basesize".into(), "320M".into());
    let pool = Pool::with(opts);
    let b = pool.b();
    let a = layer(1, &[]);
    let c = layer(2, &[&a]);
    b.create(&a).unwrap();
    with_view(b, &a, Access::ReadWrite, |v| {
        fs::write(v.join("f"), "xfs").unwrap()
    });
    b.create(&c).unwrap();
    // Parent and child carry the same filesystem UUID: both mounted at once needs nouuid.
    let va = b.mount(&a, Access::ReadOnly).unwrap();
    let vc = b.mount(&c, Access::ReadWrite).unwrap();
    assert_eq!(fs::read_to_string(vc.join("f")).unwrap(), "xfs");
    assert_eq!(fs::read_dir(&va).unwrap().count(), 1);
    b.unmount(&c).unwrap();
    b.unmount(&a).unwrap();
}

#[test]
fn probe_and_options_speak_plainly() {
    // Runs everywhere: on a kernel without device-mapper the probe says so.
    match driver_devmapper::probe(Path::new("/")) {
        Ok(()) => assert!(Path::new("/dev/mapper/control").exists()),
        Err(why) => assert!(
            why.contains("device-mapper") || why.contains("dm_thin_pool"),
            "{why}"
        ),
    }
    let f = driver_devmapper::factory();
    assert_eq!(f.name, "devmapper");
    if !dm_available() {
        return;
    }
    let home = tempfile::tempdir_in("/tmp").unwrap();
    let mut opts = BTreeMap::new();
    opts.insert("dm.fs".to_string(), "btrfs".to_string());
    let err = DevmapperBackend::open(home.path(), &opts)
        .err()
        .expect("btrfs is refused");
    assert!(err.to_string().contains("ext4 or xfs"), "{err}");
    // Options that contradict the pool's are refused on reopen.
    let pool = Pool::new();
    let mut opts = BTreeMap::new();
    opts.insert("dm.basesize".to_string(), "1G".to_string());
    let err = DevmapperBackend::open(pool.home.path(), &opts)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("cannot change"), "{err}");
}

#[test]
fn apply_into_a_full_pool_fails_naming_the_layer_and_the_pool() {
    if !dm_available() {
        return;
    }
    let pool = Pool::with(small_opts("48M"));
    let b = pool.b();
    let a = layer(1, &[]);
    b.create(&a).unwrap();
    // A layer tar with 80 MiB of content: more than the pool has.
    let mut builder = tar::Builder::new(Vec::new());
    let content = vec![0xa5u8; 80 << 20];
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut h, "big", &content[..]).unwrap();
    let tar = builder.into_inner().unwrap();
    let err = b
        .apply(&a, &mut &tar[..])
        .expect_err("applying 80 MiB into a 48 MiB pool must fail");
    let msg = err.to_string();
    eprintln!("apply into a full pool: {msg}");
    assert!(msg.contains("layer1"), "{msg}");
    assert!(msg.contains("is full"), "{msg}");
    assert!(
        !b.is_mounted(&a),
        "a failed apply leaves the layer unmounted"
    );
}
