//! The ABI is plain C: a toy plugin written in C against plugin-sdk/include/gd_plugin.h
//! (tests/c/toy_plugin.c), built with `cc`, loads and works through the same host adapter,
//! errors map to the same typed variants, and every buffer it hands out is freed.

use std::io::Cursor;
use std::path::Path;
use std::process::Command;

use driver_api::plugin::host::Plugin;
use driver_api::{Error, GraphDriver};

fn live_buffers(d: &dyn GraphDriver) -> String {
    let status = d.status().unwrap();
    assert!(status.contains(&("Language".to_string(), "C".to_string())));
    status
        .into_iter()
        .find(|(k, _)| k == "Live buffers")
        .unwrap()
        .1
}

#[test]
fn c_plugin_through_the_host_adapter() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let so = tmp.path().join("libgd_ctoy.so");
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-O1", "-I",
        ])
        .arg(root.join("plugin-sdk/include"))
        .arg("-o")
        .arg(&so)
        .arg(root.join("tests/c/toy_plugin.c"))
        .arg("-lpthread")
        .output()
        .expect("running cc (a C compiler is needed to link Rust anyway)");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let plugin = Plugin::load(&so).unwrap();
    assert_eq!(plugin.name(), "ctoy");
    assert_eq!(plugin.abi_version(), (1, 0));
    let home = tmp.path().join("home");
    plugin.probe(&home).unwrap();
    let d = plugin.open(&home, &Default::default()).unwrap();

    d.create("base", None, &Default::default()).unwrap();
    d.create("child", Some("base"), &Default::default())
        .unwrap();
    assert!(d.exists("base").unwrap());
    assert!(!d.exists("nope").unwrap());
    assert!(matches!(
        d.create("base", None, &Default::default()),
        Err(Error::AlreadyExists { id }) if id == "base"
    ));
    assert!(matches!(
        d.create("x", Some("nope"), &Default::default()),
        Err(Error::ParentNotFound { parent, .. }) if parent == "nope"
    ));
    assert!(matches!(d.info("nope"), Err(Error::NotFound { id }) if id == "nope"));
    match d.remove("base") {
        Err(Error::HasChildren { id, children }) => {
            assert_eq!((id.as_str(), children.as_str()), ("base", "child"))
        }
        other => panic!("{other:?}"),
    }
    let ids: Vec<_> = d
        .list()
        .unwrap()
        .into_iter()
        .map(|l| (l.id, l.parent))
        .collect();
    assert_eq!(
        ids,
        vec![("base".into(), None), ("child".into(), Some("base".into()))]
    );
    assert_eq!(d.get("child").unwrap(), home);
    d.put("child").unwrap();
    assert_eq!(d.metadata("child").unwrap()["Toy"], "child");
    // Streams: 1 MiB in through the reader, the empty tar out through the writer.
    let big = vec![7u8; 1 << 20];
    assert_eq!(
        d.apply_diff("child", &mut Cursor::new(&big)).unwrap(),
        1 << 20
    );
    let mut tar = Vec::new();
    assert_eq!(d.diff("child", &mut tar).unwrap(), 1024);
    assert_eq!(tar, vec![0u8; 1024]);
    assert!(d.changes("child").unwrap().is_empty());
    assert_eq!(d.diff_size("child").unwrap(), 0);
    d.remove("child").unwrap();
    d.remove("base").unwrap();
    d.cleanup().unwrap();
    // Every buffer the plugin handed out (results and error reports) was given back.
    assert_eq!(live_buffers(&d), "0");
}
