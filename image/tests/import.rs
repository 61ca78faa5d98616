//! Import, mount, export and remove images on every driver, checked against an independent
//! unpacker (umoci) and against the bytes that went in.

mod common;

use std::fs;
use std::io::Read;

use common::*;
use gd_image::{Digest, ImageError, ImportOptions, Quiet};

/// The merged view of an imported umoci image has exactly the manifest of `umoci unpack`'s
/// rootfs, on every driver.
#[test]
fn umoci_image_mounts_like_umoci_unpacks_it() {
    let work = tmpdir();
    let layout = umoci_image(work.path());
    let expected = umoci_unpack_manifest(&layout, "t", work.path());
    for f in factories() {
        let Some(env) = Env::new(f) else { continue };
        let store = env.store();
        let done = store
            .import(&layout, &ImportOptions::default(), &mut Quiet)
            .unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0].refs,
            vec!["layout:t".to_string()],
            "[{}]",
            env.h.name
        );
        assert_eq!(done[0].layers, 3);
        let view = store.mount("layout:t", None).unwrap();
        let got = manifest_of(&view);
        store.unmount("layout:t").unwrap();
        assert_eq!(
            got, expected,
            "[{}] mounted view differs from umoci unpack",
            env.h.name
        );
        // A container layer on top sees the same, and writes stay in it.
        let rw = store.mount("layout:t", Some("c1")).unwrap();
        assert_eq!(manifest_of(&rw), expected, "[{}] rw view", env.h.name);
        fs::write(rw.join("etc/new"), "x").unwrap();
        env.driver().put("c1").unwrap();
        let view = store.mount("layout:t", None).unwrap();
        assert!(
            !view.join("etc/new").exists(),
            "[{}] the rw layer leaked into the image",
            env.h.name
        );
        store.unmount("layout:t").unwrap();
        env.driver().remove("c1").unwrap();
    }
}

/// Importing the same image twice creates nothing new and reads no layer.
#[test]
fn importing_twice_costs_nothing() {
    let work = tmpdir();
    let layout = work.path().join("img");
    oci_layout(&layout, &[base_layer(), second_layer()], Comp::Gzip, "v1");
    let env = Env::vfs();
    let store = env.store();
    let first = store
        .import(&layout, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    assert_eq!(first[0].reused, 0);
    let layers = env.layer_ids();
    assert_eq!(layers.len(), 2);
    let second = store
        .import(&layout, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    assert_eq!(second[0].reused, 2);
    assert_eq!(second[0].bytes_read, 0);
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(env.layer_ids(), layers);
    // A second image sharing the base layer shares its storage.
    let other = work.path().join("other");
    oci_layout(
        &other,
        &[base_layer(), python_layer(work.path())],
        Comp::Zstd,
        "v2",
    );
    let third = store
        .import(&other, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    assert_eq!(third[0].reused, 1);
    assert_eq!(env.layer_ids().len(), 3);
    assert_eq!(store.list().unwrap().len(), 2);
}

/// A corrupted blob is a clear error naming both digests, and nothing of the import is kept
/// (not even the layers before the bad one).
#[test]
fn corrupt_blob_fails_and_keeps_nothing() {
    let work = tmpdir();
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let layout = work.path().join(format!("img-{comp:?}"));
        oci_layout(&layout, &[base_layer(), second_layer()], comp, "v1");
        // Flip one byte in the middle of the second layer's blob.
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let md = Digest::parse(idx["manifests"][0]["digest"].as_str().unwrap()).unwrap();
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(md.hex())).unwrap())
                .unwrap();
        let ld = Digest::parse(m["layers"][1]["digest"].as_str().unwrap()).unwrap();
        let p = layout.join("blobs/sha256").join(ld.hex());
        let mut b = fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x55;
        fs::write(&p, &b).unwrap();

        let env = Env::vfs();
        let store = env.store();
        let err = store
            .import(&layout, &ImportOptions::default(), &mut Quiet)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ImageError::DigestMismatch { .. }),
            "[{comp:?}] {msg}"
        );
        assert!(
            msg.contains(ld.as_str()),
            "[{comp:?}] message names the expected digest: {msg}"
        );
        assert!(
            env.layer_ids().is_empty(),
            "[{comp:?}] layers kept: {:?}",
            env.layer_ids()
        );
        assert!(store.list().unwrap().is_empty());
        let leftovers: Vec<_> = fs::read_dir(env.images.path().join("tarsplit"))
            .unwrap()
            .collect();
        assert!(leftovers.is_empty(), "[{comp:?}] tar-split files kept");
    }
}

/// A config whose diff id does not match the (intact) layer is refused the same way.
#[test]
fn wrong_diff_id_fails_and_keeps_nothing() {
    let work = tmpdir();
    let save = work.path().join("save.tar");
    // Build the archive with the second layer's diff id claimed for other content.
    let mut layers = vec![base_layer(), second_layer()];
    docker_save(&save, &layers, "bad:1");
    // Rebuild with a tampered layer but the original config.
    let dir = work.path().join("x");
    fs::create_dir_all(&dir).unwrap();
    let mut ar = tar::Archive::new(fs::File::open(&save).unwrap());
    ar.unpack(&dir).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let p = dir.join(manifest[0]["Layers"][1].as_str().unwrap());
    layers[1] = second_layer();
    let n = layers[1].len();
    layers[1][n - 1030] ^= 1; // inside the zero blocks at the end
    fs::write(&p, &layers[1]).unwrap();
    let env = Env::vfs();
    let store = env.store();
    let err = store
        .import(&dir, &ImportOptions::default(), &mut Quiet)
        .unwrap_err();
    assert!(err.to_string().contains("diff id"), "{err}");
    assert!(env.layer_ids().is_empty());
}

/// import -> export -> import gives the same image id and diff ids, and exporting again gives
/// the very same archive bytes. Layers that came uncompressed come out byte-identical.
#[test]
fn export_round_trip_keeps_digests() {
    let work = tmpdir();
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let layers = vec![base_layer(), second_layer(), python_layer(work.path())];
        let layout = work.path().join(format!("img-{comp:?}"));
        let id = oci_layout(&layout, &layers, comp, "v1");
        let env = Env::vfs();
        let store = env.store();
        store
            .import(&layout, &ImportOptions::default(), &mut Quiet)
            .unwrap();
        let out1 = work.path().join(format!("out1-{comp:?}.tar"));
        store
            .export(
                &["img-".to_string() + &format!("{comp:?}").to_lowercase() + ":v1"],
                &out1,
                &mut Quiet,
            )
            .unwrap();

        // The exported layer blobs are the original tars, byte for byte.
        let mut ar = tar::Archive::new(fs::File::open(&out1).unwrap());
        let mut found = 0;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            if layers.contains(&bytes) {
                found += 1;
            }
            assert!(!name.contains(".."));
        }
        assert_eq!(found, 3, "[{comp:?}] every layer comes out byte-identical");

        let env2 = Env::vfs();
        let store2 = env2.store();
        let again = store2
            .import(&out1, &ImportOptions::default(), &mut Quiet)
            .unwrap();
        assert_eq!(again[0].id, id, "[{comp:?}] image id");
        let r1 = store.resolve(&id.to_string()).unwrap();
        let r2 = store2.resolve(&id.to_string()).unwrap();
        let d1: Vec<_> = r1
            .layers
            .iter()
            .map(|l| (&l.diff_id, &l.chain_id))
            .collect();
        let d2: Vec<_> = r2
            .layers
            .iter()
            .map(|l| (&l.diff_id, &l.chain_id))
            .collect();
        assert_eq!(d1, d2, "[{comp:?}] diff ids and chain ids");
        if comp == Comp::None {
            assert_eq!(
                r1.manifest, r2.manifest,
                "uncompressed: the original manifest goes out as it came"
            );
        }
        let out2 = work.path().join(format!("out2-{comp:?}.tar"));
        store2.export(&[id.to_string()], &out2, &mut Quiet).unwrap();
        let out3 = work.path().join(format!("out3-{comp:?}.tar"));
        store2.export(&[id.to_string()], &out3, &mut Quiet).unwrap();
        assert_eq!(
            fs::read(&out2).unwrap(),
            fs::read(&out3).unwrap(),
            "export is deterministic"
        );
        // The same views on both sides.
        let v1 = manifest_of(&store.mount(&id.to_string(), None).unwrap());
        let v2 = manifest_of(&store2.mount(&id.to_string(), None).unwrap());
        assert_eq!(v1, v2);
        store.unmount(&id.to_string()).unwrap();
        store2.unmount(&id.to_string()).unwrap();
    }
}

/// A classic `docker save` tarball (and a gzip of it, and standard-input-like spooling) imports;
/// its export is readable as docker save (manifest.json) and as OCI (index.json).
#[test]
fn docker_save_archives_import_and_export() {
    let work = tmpdir();
    let layers = vec![base_layer(), python_layer(work.path())];
    let save = work.path().join("save.tar");
    let id = docker_save(&save, &layers, "example/app:1.0");
    let gz = work.path().join("save.tar.gz");
    let (z, _) = compress(&fs::read(&save).unwrap(), Comp::Gzip);
    fs::write(&gz, z).unwrap();
    for input in [&save, &gz] {
        let env = Env::vfs();
        let store = env.store();
        let done = store
            .import(input, &ImportOptions::default(), &mut Quiet)
            .unwrap();
        assert_eq!(done[0].id, id);
        assert_eq!(done[0].refs, vec!["example/app:1.0".to_string()]);
        let out = work.path().join("exported.tar");
        store
            .export(&["example/app:1.0".into()], &out, &mut Quiet)
            .unwrap();
        let dir = work.path().join("exported");
        let _ = fs::remove_dir_all(&dir);
        tar::Archive::new(fs::File::open(&out).unwrap())
            .unpack(&dir)
            .unwrap();
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m[0]["RepoTags"][0], "example/app:1.0");
        for (i, l) in m[0]["Layers"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                fs::read(dir.join(l.as_str().unwrap())).unwrap(),
                layers[i],
                "layer {i} byte-identical"
            );
        }
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            idx["manifests"][0]["annotations"]["io.containerd.image.name"],
            "example/app:1.0"
        );
        // Export as an OCI layout that umoci reads.
        let got = umoci_unpack_manifest(&dir, "1.0", work.path());
        let view = store.mount("example/app:1.0", None).unwrap();
        assert_eq!(
            manifest_of(&view),
            got,
            "umoci unpack of our export equals our view"
        );
        store.unmount("example/app:1.0").unwrap();
    }
}

/// An OCI layout given as a tar file (and a zstd-compressed one) imports like the directory.
#[test]
fn oci_layout_as_tar() {
    let work = tmpdir();
    let layout = work.path().join("img");
    let id = oci_layout(&layout, &[base_layer(), second_layer()], Comp::Zstd, "v1");
    let t = work.path().join("img.tar");
    tar_dir(&layout, &t);
    let tz = work.path().join("img.tar.zst");
    fs::write(&tz, compress(&fs::read(&t).unwrap(), Comp::Zstd).0).unwrap();
    let env = Env::vfs();
    let store = env.store();
    let a = store
        .import(
            &layout,
            &ImportOptions {
                tag: Some("dir".into()),
                ..Default::default()
            },
            &mut Quiet,
        )
        .unwrap();
    let b = store
        .import(&t, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    let c = store
        .import(&tz, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    assert_eq!(a[0].id, id);
    assert_eq!(b[0].id, id);
    assert_eq!(c[0].id, id);
    assert_eq!(a[0].refs, vec!["dir:latest".to_string()]);
    assert_eq!(b[0].refs, vec!["img:v1".to_string()]);
    assert_eq!(store.list().unwrap()[0].refs.len(), 2);
}

/// rm: a tag goes alone while others remain; the image's layers go with it unless another
/// image or a container layer uses them.
#[test]
fn remove_keeps_what_is_still_used() {
    let work = tmpdir();
    let a = work.path().join("a");
    let b = work.path().join("b");
    oci_layout(&a, &[base_layer(), second_layer()], Comp::Gzip, "1");
    oci_layout(
        &b,
        &[base_layer(), python_layer(work.path())],
        Comp::Gzip,
        "1",
    );
    let env = Env::vfs();
    let store = env.store();
    store
        .import(&a, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    store
        .import(
            &a,
            &ImportOptions {
                tag: Some("alias".into()),
                ..Default::default()
            },
            &mut Quiet,
        )
        .unwrap();
    store
        .import(&b, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    assert_eq!(env.layer_ids().len(), 3);
    // Untag only.
    let (gone, _) = store.remove("alias").unwrap();
    assert!(gone.is_none());
    assert_eq!(env.layer_ids().len(), 3);
    // A container on b keeps b's layers after b is removed.
    store.mount("b:1", Some("ctr")).unwrap();
    env.driver().put("ctr").unwrap();
    let (gone, report) = store.remove("b:1").unwrap();
    assert!(gone.is_some());
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.kept.len(), 1, "{report:?}");
    // Removing a: its own layer goes, the shared base stays (b's top layer still sits on it).
    let (_, report) = store.remove("a:1").unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
    // Once the container is gone, gc frees the rest.
    env.driver().remove("ctr").unwrap();
    let report = store.gc().unwrap();
    assert_eq!(report.removed.len(), 2, "{report:?}");
    assert_eq!(env.layer_ids(), Vec::<String>::new());
}

/// commit turns a container layer into a new image; flatten gives the merged view as one tar.
#[test]
fn commit_and_flatten() {
    let work = tmpdir();
    let layout = work.path().join("img");
    oci_layout(&layout, &[base_layer(), second_layer()], Comp::Gzip, "1");
    for f in factories() {
        let Some(env) = Env::new(f) else { continue };
        let name = env.h.name;
        let store = env.store();
        store
            .import(&layout, &ImportOptions::default(), &mut Quiet)
            .unwrap();
        let rw = store.mount("img:1", Some("work")).unwrap();
        fs::write(rw.join("etc/added"), "added\n").unwrap();
        fs::remove_file(rw.join("bin/link")).unwrap();
        let expected = manifest_of(&rw);
        env.driver().put("work").unwrap();
        let id = store.commit("work", "img:2", &mut Quiet).unwrap();
        let rec = store.resolve("img:2").unwrap();
        assert_eq!(rec.id, id);
        assert_eq!(rec.layers.len(), 3);
        let view = store.mount("img:2", None).unwrap();
        assert_eq!(
            manifest_of(&view),
            expected,
            "[{name}] committed image view"
        );
        store.unmount("img:2").unwrap();

        // flatten, applied to an empty directory, is the same view.
        let mut tar = Vec::new();
        store.flatten("img:2", &mut tar).unwrap();
        let dir = work.path().join(format!("flat-{name}"));
        fs::create_dir(&dir).unwrap();
        driver_api::archive::apply_tar(&dir, &mut &tar[..], &Default::default()).unwrap();
        assert_eq!(manifest_of(&dir), expected, "[{name}] flattened");

        // The committed image exports and re-imports with the same digests.
        let out = work.path().join(format!("c-{name}.tar"));
        store.export(&["img:2".into()], &out, &mut Quiet).unwrap();
        let env2 = Env::vfs();
        let again = env2
            .store()
            .import(&out, &ImportOptions::default(), &mut Quiet)
            .unwrap();
        assert_eq!(again[0].id, id);
        env.driver().remove("work").unwrap();
    }
}

/// An archive of two images whose second is corrupt: neither is kept, nor any layer.
#[test]
fn failure_in_a_later_image_keeps_nothing() {
    let work = tmpdir();
    let layout = work.path().join("two");
    oci_layout(&layout, &[base_layer(), second_layer()], Comp::Gzip, "a");
    let first: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    oci_layout(&layout, &[python_layer(work.path())], Comp::Gzip, "b");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let second = index["manifests"][0].clone();
    index["manifests"] = serde_json::json!([first["manifests"][0], second]);
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    // Truncate the second image's only layer.
    let md = Digest::parse(second["digest"].as_str().unwrap()).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(md.hex())).unwrap())
            .unwrap();
    let ld = Digest::parse(m["layers"][0]["digest"].as_str().unwrap()).unwrap();
    let p = layout.join("blobs/sha256").join(ld.hex());
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..b.len() / 2]).unwrap();

    let env = Env::vfs();
    let store = env.store();
    let err = store
        .import(&layout, &ImportOptions::default(), &mut Quiet)
        .unwrap_err();
    assert!(err.to_string().contains(ld.as_str()), "{err}");
    assert!(env.layer_ids().is_empty(), "{:?}", env.layer_ids());
    assert!(store.list().unwrap().is_empty());
    // The intact image alone imports.
    index["manifests"] = serde_json::json!([first["manifests"][0]]);
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let done = store
        .import(&layout, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    assert_eq!(done[0].refs, vec!["two:a".to_string()]);
}

/// Tars from other writers (Python PAX, GNU tar sparse in both formats) come out of export
/// byte-identical.
#[test]
fn foreign_tar_formats_round_trip_byte_identical() {
    let work = tmpdir();
    let mut cases = vec![
        ("python-pax", python_pax_layer(work.path())),
        ("python-gnu", python_layer(work.path())),
    ];
    for format in ["gnu", "posix"] {
        cases.push((format, gnu_tar_sparse_layer(work.path(), format)));
    }
    for (name, layer) in cases {
        let layout = work.path().join(format!("img-{name}"));
        oci_layout(&layout, std::slice::from_ref(&layer), Comp::Gzip, "1");
        let env = Env::vfs();
        let store = env.store();
        store
            .import(&layout, &ImportOptions::default(), &mut Quiet)
            .unwrap_or_else(|e| panic!("[{name}] import: {e}"));
        let out = work.path().join(format!("out-{name}.tar"));
        store
            .export(&[format!("img-{name}:1")], &out, &mut Quiet)
            .unwrap_or_else(|e| panic!("[{name}] export: {e}"));
        let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
        let want = format!("blobs/sha256/{}", Digest::of(&layer).hex());
        let mut found = false;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_string_lossy() == want {
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                assert!(bytes == layer, "[{name}] layer differs");
                found = true;
            }
        }
        assert!(found, "[{name}] layer blob in the export");
    }
}

/// A tar whose file is replaced by a later entry of the same tar cannot be reproduced from
/// the view: export says so, naming the file, and writes nothing.
#[test]
fn unreproducible_layer_is_a_clear_export_error() {
    let work = tmpdir();
    let layout = work.path().join("dup");
    oci_layout(&layout, &[duplicate_entry_layer()], Comp::None, "1");
    let env = Env::vfs();
    let store = env.store();
    store
        .import(&layout, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    let out = work.path().join("out.tar");
    let err = store
        .export(&["dup:1".into()], &out, &mut Quiet)
        .unwrap_err();
    assert!(err.to_string().contains("dup.txt"), "{err}");
    assert!(!out.exists());
    // The image itself is fine: its view has the second content.
    let view = store.mount("dup:1", None).unwrap();
    assert_eq!(fs::read(view.join("dup.txt")).unwrap(), b"second\n");
    store.unmount("dup:1").unwrap();
}

/// Names in an archive that climb out of it are refused, as a directory and as a tar.
#[test]
fn archive_paths_cannot_escape() {
    let work = tmpdir();
    let dir = work.path().join("evil");
    fs::create_dir_all(&dir).unwrap();
    let config = config_for(&[]);
    let name = format!("{}.json", Digest::of(&config).hex());
    fs::write(work.path().join(&name), &config).unwrap();
    let manifest = serde_json::json!([{
        "Config": format!("../{name}"),
        "RepoTags": ["evil:1"],
        "Layers": [],
    }]);
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    // And a symlink that points out of the directory.
    std::os::unix::fs::symlink(format!("../{name}"), dir.join(&name)).unwrap();
    let env = Env::vfs();
    let store = env.store();
    let err = store
        .import(&dir, &ImportOptions::default(), &mut Quiet)
        .unwrap_err();
    assert!(err.to_string().contains("climbs above"), "{err}");
    let manifest = serde_json::json!([{"Config": name, "RepoTags": ["evil:1"], "Layers": []}]);
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    // The link resolves inside the directory (as if it were `/`), where there is no such file.
    let err = store
        .import(&dir, &ImportOptions::default(), &mut Quiet)
        .unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
    let t = work.path().join("evil.tar");
    tar_dir(&dir, &t);
    let err = store
        .import(&t, &ImportOptions::default(), &mut Quiet)
        .unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
    assert!(store.list().unwrap().is_empty());
}

/// A layer left without its tar-split record (an import killed after the apply) is rebuilt
/// by the next import instead of being trusted.
#[test]
fn interrupted_layer_is_rebuilt() {
    let work = tmpdir();
    let layout = work.path().join("img");
    oci_layout(&layout, &[base_layer(), second_layer()], Comp::Zstd, "1");
    let env = Env::vfs();
    let store = env.store();
    store
        .import(&layout, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    let rec = store.resolve("img:1").unwrap();
    let top = rec.top_layer().unwrap().to_string();
    let expected = env.h.manifest(&top);
    // What a crash between the apply and the record leaves: the layer, without its record,
    // and with whatever half-applied content (here: a stray file).
    store.remove("img:1").unwrap();
    let base = rec.layers[0].layer_id().to_string();
    assert!(env.layer_ids().is_empty());
    store
        .import(&layout, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    fs::remove_file(store.split_path(&top)).unwrap();
    let view = env.driver().get(&top).unwrap();
    fs::write(view.join("stray"), "half-applied").unwrap();
    env.driver().put(&top).unwrap();
    let done = store
        .import(&layout, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    assert_eq!(done[0].reused, 1, "only {base} is trusted");
    assert_eq!(env.h.manifest(&top), expected);
    let out = work.path().join("out.tar");
    store.export(&["img:1".into()], &out, &mut Quiet).unwrap();
}

/// A multi-platform index: the machine's platform by default, another with `platform`, and a
/// clear error naming what there is when the platform is missing.
#[test]
fn multi_platform_index_picks_a_platform() {
    let work = tmpdir();
    let layout = work.path().join("multi");
    // Two single-platform images in one layout, then an index over both.
    oci_layout(&layout, &[base_layer()], Comp::Gzip, "x");
    let amd: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    oci_layout(&layout, &[base_layer(), second_layer()], Comp::Gzip, "x");
    let arm: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut a = amd["manifests"][0].clone();
    a["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    a.as_object_mut().unwrap().remove("annotations");
    let mut b = arm["manifests"][0].clone();
    b["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    b.as_object_mut().unwrap().remove("annotations");
    let inner = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [a, b],
    }))
    .unwrap();
    let d = Digest::of(&inner);
    fs::write(layout.join("blobs/sha256").join(d.hex()), &inner).unwrap();
    let outer = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": d, "size": inner.len(),
            "annotations": {"org.opencontainers.image.ref.name": "example.com/multi:1"},
        }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&outer).unwrap(),
    )
    .unwrap();

    let env = Env::vfs();
    let store = env.store();
    let host = gd_image::format::host_platform();
    if host.architecture == "amd64" {
        let done = store
            .import(&layout, &ImportOptions::default(), &mut Quiet)
            .unwrap();
        assert_eq!(done[0].layers, 1);
        assert_eq!(done[0].refs, vec!["example.com/multi:1".to_string()]);
    }
    let arm64 = gd_image::format::Platform::parse("linux/arm64").unwrap();
    let opts = ImportOptions {
        tag: Some("multi:arm".into()),
        platform: Some(arm64),
    };
    let done = store.import(&layout, &opts, &mut Quiet).unwrap();
    assert_eq!(done[0].layers, 2);
    let s390 = gd_image::format::Platform::parse("linux/s390x").unwrap();
    let opts = ImportOptions {
        tag: None,
        platform: Some(s390),
    };
    let err = store
        .import(&layout, &opts, &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linux/s390x") && err.contains("linux/arm64/v8"),
        "{err}"
    );
}

/// A Docker 25+ `docker save` without the OCI files (manifest.json pointing into
/// blobs/sha256/): each blob is checked against the digest its name carries.
#[test]
fn docker_25_layout_without_oci_files() {
    let work = tmpdir();
    let layout = work.path().join("img");
    oci_layout(&layout, &[base_layer(), second_layer()], Comp::None, "1");
    let env = Env::vfs();
    let store = env.store();
    store
        .import(&layout, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    let out = work.path().join("out.tar");
    store.export(&["img:1".into()], &out, &mut Quiet).unwrap();
    let dir = work.path().join("d25");
    tar::Archive::new(fs::File::open(&out).unwrap())
        .unpack(&dir)
        .unwrap();
    fs::remove_file(dir.join("oci-layout")).unwrap();
    fs::remove_file(dir.join("index.json")).unwrap();
    let env2 = Env::vfs();
    let done = env2
        .store()
        .import(&dir, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    assert_eq!(done[0].refs, vec!["img:1".to_string()]);
    // Corrupt the second layer blob: its name is its digest.
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let p = dir.join(m[0]["Layers"][1].as_str().unwrap());
    let mut b = fs::read(&p).unwrap();
    b[600] ^= 1;
    fs::write(&p, b).unwrap();
    let env3 = Env::vfs();
    let err = env3
        .store()
        .import(&dir, &ImportOptions::default(), &mut Quiet)
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(env3.layer_ids().is_empty());
}

/// verify: intact images pass on every driver; a file changed behind gd's back is named.
#[test]
fn verify_finds_changed_layers() {
    let work = tmpdir();
    let layout = work.path().join("img");
    oci_layout(&layout, &[base_layer(), second_layer()], Comp::Gzip, "1");
    for f in factories() {
        let Some(env) = Env::new(f) else { continue };
        let store = env.store();
        store
            .import(&layout, &ImportOptions::default(), &mut Quiet)
            .unwrap();
        assert_eq!(
            store.verify("img:1", &mut Quiet).unwrap().len(),
            2,
            "[{}]",
            env.h.name
        );
    }
    // On vfs the read-only view is the layer itself: write through it, and verify says where.
    let env = Env::vfs();
    let store = env.store();
    store
        .import(&layout, &ImportOptions::default(), &mut Quiet)
        .unwrap();
    let view = store.mount("img:1", None).unwrap();
    fs::write(view.join("usr/share/data.bin"), "tampered").unwrap();
    store.unmount("img:1").unwrap();
    let err = store.verify("img:1", &mut Quiet).unwrap_err().to_string();
    assert!(err.contains("usr/share/data.bin"), "{err}");
}

/// Two imports of the same image at once: one waits for the other, then costs nothing.
#[test]
fn concurrent_imports_share_the_work() {
    let work = tmpdir();
    let layout = work.path().join("img");
    oci_layout(
        &layout,
        &[base_layer(), second_layer(), python_layer(work.path())],
        Comp::Gzip,
        "1",
    );
    let env = Env::vfs();
    // Each thread opens the store on its own, as two processes would.
    let home = env.h.home.clone();
    let images = env.images.path().to_path_buf();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let backend = (driver_vfs::factory().open)(&home, &Default::default()).unwrap();
                    let driver = driver_api::LayerStore::open(&home, backend).unwrap();
                    let store = gd_image::ImageStore::open(&images, &driver).unwrap();
                    store
                        .import(&layout, &ImportOptions::default(), &mut Quiet)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut reused: Vec<usize> = results.iter().map(|r| r[0].reused).collect();
    reused.sort();
    assert_eq!(reused, vec![0, 3]);
    assert_eq!(env.layer_ids().len(), 3);
}
