//! A plugin that breaks the ABI gets a clear error naming it, and the host goes on: each case
//! loads `libgd_testbad.so` through one of its broken entry symbols (see plugins/testbad).

use std::io::Cursor;
use std::path::PathBuf;

use driver_api::plugin::host::{Plugin, PluginError};
use driver_api::{Error, GraphDriver};
use gd_conformance::plugins::build_plugin;

fn testbad() -> PathBuf {
    build_plugin("gd-plugin-testbad", "gd_testbad")
}

fn load_err(symbol: &str) -> PluginError {
    match Plugin::load_with_entry(&testbad(), symbol) {
        Ok(p) => panic!("{symbol}: loaded a broken plugin: {p:?}"),
        Err(e) => {
            eprintln!("{symbol}: {e}");
            e
        }
    }
}

#[test]
fn wrong_abi_major_is_refused() {
    let e = load_err("gd_plugin_entry_wrong_major");
    assert!(
        matches!(e, PluginError::AbiMismatch { major: 99, .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("libgd_testbad.so") && msg.contains("99.0") && msg.contains("1.0"),
        "{msg}"
    );
}

#[test]
fn short_table_is_refused() {
    let e = load_err("gd_plugin_entry_short_table");
    assert!(
        matches!(e, PluginError::TableTooSmall { size: 16, .. }),
        "{e:?}"
    );
}

#[test]
fn null_table_is_refused() {
    assert!(matches!(
        load_err("gd_plugin_entry_null"),
        PluginError::NullTable { .. }
    ));
}

#[test]
fn null_function_is_refused() {
    let e = load_err("gd_plugin_entry_null_function");
    assert!(
        matches!(
            e,
            PluginError::MissingFunction {
                function: "list",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn unsafe_driver_name_is_refused() {
    let e = load_err("gd_plugin_entry_bad_name");
    assert!(matches!(e, PluginError::BadName { .. }), "{e:?}");
}

#[test]
fn missing_entry_symbol_is_refused() {
    // Any shared library that is not a plugin: the C library itself.
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("a libc.so.6 on this host");
    let e = Plugin::load(&libc).unwrap_err();
    assert!(matches!(e, PluginError::MissingSymbol { .. }), "{e:?}");
    assert!(e.to_string().contains("is not a gd plugin"), "{e}");
    // A symbol this very plugin lacks.
    assert!(matches!(
        load_err("no_such_symbol"),
        PluginError::MissingSymbol { .. }
    ));
}

#[test]
fn not_a_shared_library_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("libgd_fake.so");
    std::fs::write(&fake, b"#!/bin/sh\necho not an ELF\n").unwrap();
    let e = Plugin::load(&fake).unwrap_err();
    assert!(matches!(e, PluginError::Load { .. }), "{e:?}");
    assert!(e.to_string().contains("libgd_fake.so"), "{e}");
}

fn opened(symbol: &str) -> (tempfile::TempDir, driver_api::plugin::host::PluginDriver) {
    let plugin = Plugin::load_with_entry(&testbad(), symbol).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    plugin.probe(tmp.path()).unwrap();
    let d = plugin.open(tmp.path(), &Default::default()).unwrap();
    (tmp, d)
}

fn driver_msg(r: driver_api::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::Driver { message, .. }) => message,
        other => panic!("expected a driver error, got {other:?}"),
    }
}

#[test]
fn panics_inside_the_plugin_become_errors() {
    let (_tmp, d) = opened("gd_plugin_entry");
    assert!(driver_msg(d.list()).contains("panicked in list: list exploded"));
    assert!(driver_msg(d.status()).contains("status exploded"));
    assert!(driver_msg(d.create("a", None, &Default::default())).contains("create of a exploded"));
    assert!(driver_msg(d.get("a")).contains("get exploded"));
    assert!(driver_msg(d.exists("a")).contains("exists exploded"));
    assert!(driver_msg(d.info("a")).contains("info exploded"));
    assert!(driver_msg(d.changes("a")).contains("changes exploded"));
    assert!(driver_msg(d.diff_size("a")).contains("diff_size exploded"));
    // Mid-stream panics: the part already streamed arrived, then the error.
    let mut out = Vec::new();
    assert!(driver_msg(d.diff("a", &mut out)).contains("diff exploded mid-stream"));
    let mut tar = Cursor::new(vec![0u8; 4096]);
    assert!(driver_msg(d.apply_diff("a", &mut tar)).contains("apply_diff exploded"));
    // And the plugin is still usable afterwards.
    assert!(driver_msg(d.list()).contains("list exploded"));
    d.cleanup().unwrap();
}

#[test]
fn garbage_results_become_errors() {
    let (_tmp, d) = opened("gd_plugin_entry_garbage");
    let garbage = |m: String, what: &str| {
        assert!(
            m.contains("returned garbage") || m.contains(what),
            "{what}: {m}"
        );
    };
    garbage(driver_msg(d.status()), "status: invalid UTF-8");
    garbage(driver_msg(d.list()), "list: truncated JSON");
    garbage(driver_msg(d.info("x")), "info: wrong shape");
    garbage(driver_msg(d.metadata("x")), "metadata: empty buffer");
    garbage(driver_msg(d.changes("x")), "changes: unknown kind");
    garbage(driver_msg(d.get("x")), "get: relative path");
    garbage(driver_msg(d.exists("x")), "exists: not a boolean");
    let m = driver_msg(d.create("x", None, &Default::default()));
    assert!(
        m.contains("unknown status 4242") && m.contains("not valid JSON"),
        "{m}"
    );
    // A known status whose report lacks its fields falls back to the message.
    assert!(driver_msg(d.remove("x")).contains("no id here"));
    // A failure without any report still says which call failed.
    let e = d.put("x").unwrap_err();
    assert!(
        e.to_string().contains("testbad") || e.to_string().contains("garbage"),
        "{e}"
    );
    let m = driver_msg(d.diff_size("x"));
    assert!(m.contains("panicked in diff_size"), "{m}");
    let mut tar = Cursor::new(Vec::new());
    assert_eq!(driver_msg(d.apply_diff("x", &mut tar)), "disk on fire");
}

#[test]
fn host_stream_errors_are_reported_as_the_hosts() {
    struct Failing;
    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("network went away"))
        }
    }
    // A real driver through the boundary, reading from a host stream that fails.
    let plugin = gd_conformance::plugins::load_plugin("gd-plugin-vfs", "gd_vfs");
    let tmp = tempfile::tempdir().unwrap();
    let d = plugin.open(tmp.path(), &Default::default()).unwrap();
    d.create("l", None, &Default::default()).unwrap();
    let e = d.apply_diff("l", &mut Failing).unwrap_err();
    assert!(
        e.to_string().contains("network went away") && e.to_string().contains("l"),
        "{e}"
    );
    assert!(
        d.changes("l").unwrap().is_empty(),
        "a failed apply left the layer unchanged"
    );
    // Typed errors survive the boundary.
    assert!(matches!(d.remove("nope"), Err(Error::NotFound { .. })));
    assert!(matches!(
        d.create("x", Some("nope"), &Default::default()),
        Err(Error::ParentNotFound { .. })
    ));
    assert_eq!(plugin.abi_version(), (1, 0));
    assert_eq!(d.name(), "vfs");
}

#[test]
fn later_minor_with_a_longer_table_is_accepted() {
    let p = Plugin::load_with_entry(&testbad(), "gd_plugin_entry_future_minor").unwrap();
    assert_eq!(p.abi_version(), (1, 7));
    assert_eq!(p.name(), "future");
}

#[test]
fn concurrent_calls_through_one_handle() {
    use gd_conformance::cases::{raw_tar, RawEntry};
    let plugin = gd_conformance::plugins::load_plugin("gd-plugin-vfs", "gd_vfs");
    let tmp = tempfile::tempdir().unwrap();
    let d = plugin.open(tmp.path(), &Default::default()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let d = &d;
            s.spawn(move || {
                let mut parent: Option<String> = None;
                for i in 0..8 {
                    let id = format!("t{t}-{i}");
                    d.create(&id, parent.as_deref(), &Default::default())
                        .unwrap();
                    let tar = raw_tar(&[RawEntry::file(&format!("f{t}-{i}"), b"data")]);
                    assert_eq!(d.apply_diff(&id, &mut Cursor::new(tar)).unwrap(), 4);
                    let view = d.get(&id).unwrap();
                    assert!(view.join(format!("f{t}-{i}")).is_file());
                    d.put(&id).unwrap();
                    parent = Some(id);
                }
            });
        }
    });
    assert_eq!(d.list().unwrap().len(), 32);
    assert_eq!(d.changes("t3-7").unwrap().len(), 1);
}
