//! The built-in drivers and how `gd` picks one when `--driver` is not given.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use driver_api::{DriverFactory, LayerStore};

/// Every driver compiled into this `gd`, in no particular order (selection uses `priority`).
pub fn builtin() -> Vec<DriverFactory> {
    vec![
        driver_vfs::factory(),
        driver_overlay::factory(),
        driver_aufs_compat::factory(),
        driver_devmapper::factory(),
    ]
}

/// The directory holding a driver's files: `<root>/<driver-name>`.
pub fn home_of(root: &Path, driver: &str) -> PathBuf {
    root.join(driver)
}

/// What a driver's probe says about this host, for `gd drivers` and automatic selection.
pub struct ProbeResult {
    pub name: &'static str,
    pub priority: u32,
    pub usable: std::result::Result<(), String>,
}

/// Probe every built-in driver, highest priority first.
pub fn probe_all(root: &Path) -> Vec<ProbeResult> {
    let mut out: Vec<ProbeResult> = builtin()
        .into_iter()
        .map(|f| ProbeResult {
            name: f.name,
            priority: f.priority,
            usable: (f.probe)(&home_of(root, f.name)),
        })
        .collect();
    out.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(b.name)));
    out
}

/// Names of the drivers that already have layers under `root` (directories
/// `<root>/<name>/store/layers` holding at least one layer record), sorted.
pub fn drivers_with_layers(root: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", root.display()))?;
        let layers = entry.path().join("store").join("layers");
        let Ok(records) = fs::read_dir(&layers) else {
            continue;
        };
        let has_layer = records
            .flatten()
            .any(|r| r.file_name().to_string_lossy().ends_with(".json"));
        if has_layer {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found.sort();
    Ok(found)
}

/// The driver to use: the one named, else the only one with layers under `root` (as dockerd
/// keeps using the driver it used before), else the highest-priority one this host can run.
pub fn choose(root: &Path, named: Option<&str>) -> Result<DriverFactory> {
    let mut all = builtin();
    let known = || {
        let mut names: Vec<&str> = builtin().iter().map(|f| f.name).collect();
        names.sort();
        names.join(", ")
    };
    if let Some(name) = named {
        let Some(i) = all.iter().position(|f| f.name == name) else {
            bail!("unknown driver {name:?} (built in: {})", known());
        };
        let f = all.swap_remove(i);
        let home = home_of(root, f.name);
        // A store this driver made before is opened without the probe, as when the driver is
        // found by its layers: the probe makes a test mount (overlay, aufs), which cost more
        // than most commands, and fails on a full disk, where a user must still be able to
        // list and remove layers. Were the driver unsupported now, the operation itself
        // reports it; `gd drivers` runs every probe.
        if !home.join("store").join("layers").is_dir() {
            if let Err(reason) = (f.probe)(&home) {
                bail!("driver {name} is not supported on this host: {reason}");
            }
        }
        return Ok(f);
    }
    let existing = drivers_with_layers(root)?;
    match existing.as_slice() {
        [] => {}
        [one] => {
            let Some(i) = all.iter().position(|f| f.name == one) else {
                bail!(
                    "{} holds layers of driver {one:?}, which this gd does not have (built in: {})",
                    root.display(),
                    known()
                );
            };
            return Ok(all.swap_remove(i));
        }
        several => bail!(
            "{} holds layers of several drivers ({}); choose one with --driver",
            root.display(),
            several.join(", ")
        ),
    }
    all.sort_by_key(|f| std::cmp::Reverse(f.priority));
    let mut reasons = Vec::new();
    for f in all {
        match (f.probe)(&home_of(root, f.name)) {
            Ok(()) => return Ok(f),
            Err(r) => reasons.push(format!("{}: {r}", f.name)),
        }
    }
    Err(anyhow!(
        "no driver can run on this host ({})",
        reasons.join("; ")
    ))
}

/// Open the store of `factory` under `root`, passing the `-o` options to the backend.
pub fn open_store(
    root: &Path,
    factory: &DriverFactory,
    opts: &BTreeMap<String, String>,
) -> Result<LayerStore> {
    let home = home_of(root, factory.name);
    let backend = (factory.open)(&home, opts)?;
    let store = LayerStore::open(&home, backend)?;
    crate::check::report_recovery(&store);
    Ok(store)
}
