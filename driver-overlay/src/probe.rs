//! What the host offers: done once when the backend opens, shown by `status()`, and the
//! factory's `probe` (which also makes a real test mount).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::mount;

/// Facts about the kernel and the backing filesystem of `home`.
#[derive(Debug, Clone)]
pub(crate) struct HostFacts {
    pub backing_fs: String,
    pub d_type: Result<(), String>,
    /// `fsconfig` takes `lowerdir+` (Linux 6.8+): chain depth is not bounded by a page.
    pub lowerdir_add: bool,
    /// The kernel's overlay stack limit, measured (None when it cannot be measured).
    pub max_lowers: Option<usize>,
    /// The overlay module's defaults (`/sys/module/overlay/parameters`), name and value.
    pub module_defaults: Vec<(String, String)>,
}

pub(crate) fn overlay_in_kernel() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

/// Whether the filesystem of `home` reports entry types (overlay needs d_type). The home's
/// own entries answer without writing (it holds at least `l/`), so that a full disk does not
/// make an existing store look unsupported; only an empty home gets a scratch directory.
pub(crate) fn d_type(home: &Path) -> Result<(), String> {
    if let Some(verdict) = d_type_of_entries(home) {
        return verdict;
    }
    let scratch = home.join(format!(".probe-dtype.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let verdict = check_d_type(&scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    verdict
}

/// Everything `status()` shows. The depth measurement costs one fsconfig call per layer the
/// kernel accepts (500), so it is gathered only when asked for, not at every open.
pub(crate) fn gather(home: &Path) -> HostFacts {
    // Per process: several `gd` opening one home at once must not remove each other's.
    let scratch = home.join(format!(".probe-facts.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let made = std::fs::create_dir_all(&scratch).is_ok();
    let (lowerdir_add, max_lowers) = if made && overlay_in_kernel() {
        (
            mount::has_lowerdir_add(&scratch),
            mount::measure_max_lowers(&scratch),
        )
    } else {
        (false, None)
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let d_type = d_type(home);
    let mut module_defaults = Vec::new();
    for name in [
        "redirect_dir",
        "metacopy",
        "index",
        "xino_auto",
        "nfs_export",
    ] {
        if let Ok(v) = std::fs::read_to_string(format!("/sys/module/overlay/parameters/{name}")) {
            module_defaults.push((name.to_string(), v.trim().to_string()));
        }
    }
    HostFacts {
        backing_fs: backing_fs_name(home),
        d_type,
        lowerdir_add,
        max_lowers,
        module_defaults,
    }
}

/// The name of the filesystem holding `path`, from its statfs magic.
pub(crate) fn backing_fs_name(path: &Path) -> String {
    let Ok(st) = rustix::fs::statfs(path) else {
        return "unknown".into();
    };
    match st.f_type as u64 {
        0xEF53 => "extfs".into(),
        0x58465342 => "xfs".into(),
        0x9123683E => "btrfs".into(),
        0x01021994 => "tmpfs".into(),
        0x794c7630 => "overlayfs".into(),
        0x65735546 => "fuse".into(),
        0x2fc12fc1 => "zfs".into(),
        0x6969 => "nfs".into(),
        0xf2f52010 => "f2fs".into(),
        other => format!("unknown (0x{other:x})"),
    }
}

/// Whether the entries already in `dir` carry their file type (None: it has no entries).
fn d_type_of_entries(dir: &Path) -> Option<Result<(), String>> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let mut seen = false;
    for entry in rustix::fs::Dir::read_from(&fd).ok()?.flatten() {
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if entry.file_type() == rustix::fs::FileType::Unknown {
            return Some(Err(format!(
                "the filesystem of {} does not report file types in directory entries \
                 (d_type); overlay needs it (for xfs: mkfs.xfs -n ftype=1)",
                dir.display()
            )));
        }
        seen = true;
    }
    seen.then_some(Ok(()))
}

/// overlayfs needs the backing filesystem to fill in `d_type` in directory entries (xfs
/// formatted with ftype=0 does not, and whiteouts then go unnoticed).
pub(crate) fn check_d_type(scratch: &Path) -> Result<(), String> {
    let dir = scratch.join("d_type");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(dir.join("f"), b"")
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let fd = rustix::fs::open(
        &dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    let mut found = false;
    for entry in rustix::fs::Dir::read_from(&fd)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
    {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if entry.file_name().to_bytes() == b"f" {
            found = true;
            if entry.file_type() == rustix::fs::FileType::Unknown {
                return Err(format!(
                    "the filesystem of {} does not report file types in directory entries \
                     (d_type); overlay needs it (for xfs: mkfs.xfs -n ftype=1)",
                    scratch.display()
                ));
            }
        }
    }
    if !found {
        return Err(format!(
            "a file written in {} was not listed",
            dir.display()
        ));
    }
    Ok(())
}

/// The factory's probe: overlay in the kernel, d_type, and a real mount that writes into its
/// upper directory, all in a scratch directory under `home`.
pub(crate) fn probe(home: &Path) -> Result<(), String> {
    if !overlay_in_kernel() {
        return Err(
            "the kernel has no overlay filesystem (it is not listed in /proc/filesystems; \
                    try `modprobe overlay`)"
                .into(),
        );
    }
    std::fs::create_dir_all(home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".probe-")
        .tempdir_in(home)
        .map_err(|e| {
            format!(
                "cannot create a scratch directory in {}: {e}",
                home.display()
            )
        })?;
    check_d_type(scratch.path())?;
    let dir = |name: &str| -> Result<std::path::PathBuf, String> {
        let p = scratch.path().join(name);
        std::fs::create_dir(&p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        Ok(p)
    };
    let (lower, upper, work, merged) = (dir("lower")?, dir("upper")?, dir("work")?, dir("merged")?);
    std::fs::write(lower.join("probe"), b"lower")
        .map_err(|e| format!("cannot write in {}: {e}", lower.display()))?;
    let lowers = [lower.clone()];
    let spec = mount::OverlaySpec {
        lowers: &lowers,
        upper: Some((&upper, &work)),
        target: &merged,
        index: true,
    };
    mount::mount_overlay(&spec, || lowers.to_vec()).map_err(|e| {
        format!(
            "a test overlay mount in {} failed: {e} (the backing filesystem is {})",
            scratch.path().display(),
            backing_fs_name(home)
        )
    })?;
    let check = (|| {
        let seen = std::fs::read(merged.join("probe"))
            .map_err(|e| format!("the test mount does not show its lower file: {e}"))?;
        if seen != b"lower" {
            return Err("the test mount shows wrong content for its lower file".to_string());
        }
        std::fs::write(merged.join("written"), b"upper")
            .map_err(|e| format!("cannot write through the test mount: {e}"))?;
        if !upper.join("written").exists() {
            return Err(
                "a file written through the test mount did not land in its upper directory".into(),
            );
        }
        Ok(())
    })();
    let un = mount::unmount_all(&merged)
        .map_err(|e| format!("cannot unmount the test mount {}: {e}", merged.display()));
    check?;
    un
}
