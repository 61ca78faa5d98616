//! Drivers loaded from plugins (`--plugin PATH`, or by name from the plugin directories:
//! `GD_PLUGIN_PATH`, then /usr/local/lib/gd/plugins and /usr/lib/gd/plugins), and opening
//! whichever driver — built in or plugin — the command line asks for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use driver_api::plugin::host::{find_plugin, plugin_dirs, plugin_files, Plugin};
use driver_api::GraphDriver;

use crate::drivers;

/// Load the plugins named with `--plugin`.
pub fn load_explicit(paths: &[PathBuf]) -> Result<Vec<Arc<Plugin>>> {
    paths
        .iter()
        .map(|p| Plugin::load(p).map_err(anyhow::Error::from))
        .collect()
}

fn is_builtin(name: &str) -> bool {
    drivers::builtin().iter().any(|f| f.name == name)
}

/// Find and load the plugin for driver `name` in the plugin directories.
fn load_by_name(name: &str) -> Result<Arc<Plugin>> {
    let path = find_plugin(name, &plugin_dirs())?;
    let plugin = Plugin::load(&path)?;
    if plugin.name() != name {
        bail!(
            "plugin {} is driver {:?}, not {name:?}",
            path.display(),
            plugin.name()
        );
    }
    Ok(plugin)
}

fn open_plugin(
    root: &Path,
    plugin: &Arc<Plugin>,
    opts: &BTreeMap<String, String>,
) -> Result<Box<dyn GraphDriver>> {
    let home = drivers::home_of(root, plugin.name());
    if let Err(reason) = plugin.probe(&home) {
        bail!(
            "driver {} (plugin {}) is not supported on this host: {reason}",
            plugin.name(),
            plugin.path().display()
        );
    }
    let driver = plugin
        .open(&home, opts)
        .with_context(|| format!("opening plugin {}", plugin.path().display()))?;
    Ok(Box::new(driver))
}

/// The driver the command line selects, opened: `--driver NAME` (built in, a `--plugin`, or
/// a plugin found by name), else the first `--plugin`, else the driver that already has
/// layers under `root` (a plugin if no built-in has that name), else the built-in choice.
pub fn open_selected(
    root: &Path,
    named: Option<&str>,
    explicit: &[Arc<Plugin>],
    opts: &BTreeMap<String, String>,
) -> Result<Box<dyn GraphDriver>> {
    let wanted = named
        .map(str::to_string)
        .or_else(|| explicit.first().map(|p| p.name().to_string()));
    if let Some(name) = wanted {
        if let Some(p) = explicit.iter().find(|p| p.name() == name) {
            return open_plugin(root, p, opts);
        }
        if !is_builtin(&name) {
            let plugin = load_by_name(&name).with_context(|| {
                format!("unknown driver {name:?}: not built in, no --plugin, and no plugin file")
            })?;
            return open_plugin(root, &plugin, opts);
        }
        let factory = drivers::choose(root, Some(&name))?;
        return Ok(Box::new(drivers::open_store(root, &factory, opts)?));
    }
    if let [one] = drivers::drivers_with_layers(root)?.as_slice() {
        if !is_builtin(one) {
            let plugin = load_by_name(one).with_context(|| {
                format!(
                    "{} holds layers of driver {one:?}, which is neither built in nor an installed plugin",
                    root.display()
                )
            })?;
            return open_plugin(root, &plugin, opts);
        }
    }
    let factory = drivers::choose(root, None)?;
    Ok(Box::new(drivers::open_store(root, &factory, opts)?))
}

/// One plugin for `gd drivers`.
pub struct PluginRow {
    pub name: String,
    pub path: PathBuf,
    pub abi: Result<(u32, u32), String>,
    pub usable: Result<(), String>,
}

/// Every plugin given with `--plugin` or found in the plugin directories; one that fails to
/// load is listed with the reason, not fatal.
pub fn list(root: &Path, explicit_paths: &[PathBuf]) -> Vec<PluginRow> {
    let mut paths: Vec<PathBuf> = explicit_paths.to_vec();
    for p in plugin_files(&plugin_dirs()) {
        if !paths.contains(&p) {
            paths.push(p);
        }
    }
    paths
        .into_iter()
        .map(|path| match Plugin::load(&path) {
            Ok(p) => PluginRow {
                name: p.name().to_string(),
                usable: p.probe(&drivers::home_of(root, p.name())),
                abi: Ok(p.abi_version()),
                path,
            },
            Err(e) => PluginRow {
                name: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                abi: Err(e.to_string()),
                usable: Err(e.to_string()),
                path,
            },
        })
        .collect()
}
