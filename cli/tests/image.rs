//! `gd image ...` and `gd commit`, run for real on a small OCI image built with umoci from the
//! machine's busybox (nothing is downloaded).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const GD: &str = env!("CARGO_BIN_EXE_gd");

struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        Root {
            dir: tempfile::Builder::new()
                .prefix("gd-cli-image-")
                .tempdir_in("/var/tmp")
                .unwrap(),
        }
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(GD);
        c.env_remove("GD_ROOT")
            .env_remove("GD_DRIVER")
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .args(["--driver", "vfs"])
            .args(args)
            .stdin(Stdio::null());
        c
    }
    fn ok(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "gd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_slice(&self.ok(&a).stdout).unwrap()
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OCI layout `tiny:latest` with busybox in one layer.
fn tiny_image(dir: &Path) -> PathBuf {
    let layout = dir.join("tiny");
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    fs::write(rootfs.join("etc/motd"), "tiny\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    fs::remove_dir_all(&bundle).unwrap();
    layout
}

#[test]
fn image_commands_end_to_end() {
    let root = Root::new();
    let layout = tiny_image(root.dir.path());
    let archive = root.dir.path().join("tiny.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));

    // From standard input, in a pipe: no progress on stderr.
    let out = root
        .cmd(&["image", "import", "-"])
        .stdin(fs::File::open(&archive).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A layout that names its image only by tag, read from standard input, is called `image`.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Loaded image: image:latest\n"
    );
    assert!(
        out.stderr.is_empty(),
        "quiet in a pipe: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = root.ok(&["image", "import", layout.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Loaded image: tiny:latest\n"
    );
    let list = root.json(&["image", "ls"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        list[0]["refs"],
        serde_json::json!(["image:latest", "tiny:latest"])
    );
    let layers = root.json(&["ls"]);
    assert_eq!(
        layers.as_array().unwrap().len(),
        1,
        "one shared layer: {layers}"
    );

    let path = String::from_utf8(root.ok(&["image", "mount", "tiny"]).stdout).unwrap();
    assert_eq!(
        fs::read_to_string(Path::new(path.trim()).join("etc/motd")).unwrap(),
        "tiny\n"
    );
    root.ok(&["image", "umount", "tiny"]);

    let rw = String::from_utf8(root.ok(&["image", "mount", "tiny", "--rw", "c1"]).stdout).unwrap();
    fs::write(Path::new(rw.trim()).join("etc/motd"), "changed\n").unwrap();
    root.ok(&["umount", "c1"]);
    let id = String::from_utf8(root.ok(&["commit", "c1", "--tag", "tiny:changed"]).stdout).unwrap();
    let inspect = root.json(&["image", "inspect", "tiny:changed"]);
    assert_eq!(inspect["id"].as_str().unwrap(), id.trim());
    assert_eq!(inspect["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        inspect["config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let out = root.ok(&["image", "verify", "tiny", "tiny:changed"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tiny: 1 layer(s) intact\ntiny:changed: 2 layer(s) intact\n"
    );

    let flat = root.dir.path().join("flat.tar");
    root.ok(&[
        "image",
        "flatten",
        "tiny:changed",
        "-o",
        flat.to_str().unwrap(),
    ]);
    let listing = Command::new("tar").arg("-tf").arg(&flat).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("etc/motd"));

    let exported = root.dir.path().join("out.tar");
    root.ok(&[
        "image",
        "export",
        "tiny",
        "tiny:changed",
        "-o",
        exported.to_str().unwrap(),
    ]);
    // To standard output, the same bytes.
    let piped = root.ok(&["image", "export", "tiny", "tiny:changed", "tiny"]);
    assert!(
        piped.stdout == fs::read(&exported).unwrap(),
        "export to a pipe = export to a file"
    );
    let root2 = Root::new();
    let out = root2.ok(&["image", "import", exported.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Loaded image: tiny:latest\nLoaded image: tiny:changed\n"
    );
    assert_eq!(
        root2.json(&["image", "inspect", "tiny:changed"])["id"],
        inspect["id"]
    );

    // rm: the tags, then the images; a container layer keeps its base until it goes.
    root.ok(&["image", "rm", "image:latest", "tiny:changed"]);
    let out = root.ok(&["image", "rm", "tiny"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Kept layer"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    root.ok(&["rm", "c1"]);
    root.ok(&["image", "prune"]);
    assert_eq!(root.json(&["ls"]), serde_json::json!([]));
    assert_eq!(root.json(&["image", "ls"]), serde_json::json!([]));
}

/// On a terminal, import shows layers and bytes with a rate; `--quiet` shows nothing.
#[test]
fn progress_only_on_a_terminal() {
    let root = Root::new();
    let layout = tiny_image(root.dir.path());
    let shell = |quiet: &str| {
        let args: Vec<String> = root
            .cmd(&["image", "import", quiet, layout.to_str().unwrap()])
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .filter(|a| !a.is_empty())
            .collect();
        let line = format!("{GD} {}", args.join(" "));
        let out = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = shell("");
    assert!(shown.contains("import: layer 1/1"), "{shown:?}");
    assert!(shown.contains("/s"), "a rate: {shown:?}");
    let root_dir = root.dir.path().join("root");
    fs::remove_dir_all(&root_dir).unwrap();
    let quiet = shell("--quiet");
    assert!(!quiet.contains("import:"), "{quiet:?}");
}
