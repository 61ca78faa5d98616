//! `gd check [--repair]`: verify a store against the disk, and tell the user what the
//! recovery at open repaired (docs/recovery.md).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{bail, Result};
use driver_api::store::Problem;
use driver_api::LayerStore;
use serde_json::json;

use crate::drivers;
use crate::output::Stdout;

/// Print one `gd: recovered: <sentence>` line on standard error per thing the recovery at
/// open repaired, so that a user learns that a crash happened and what it cost.
pub fn report_recovery(store: &LayerStore) {
    let mut err = io::stderr().lock();
    for sentence in store.recovery_report() {
        let _ = writeln!(err, "gd: recovered: {sentence}");
    }
}

/// Run `gd check`. The store is opened without the recovery, so that the check sees it as a
/// crash left it. Prints one line per problem (`problem: ...`, or `repaired: ...` for those
/// `--repair` fixed); fails (exit 1) when a problem remains.
pub fn run(
    root: &Path,
    driver: Option<&str>,
    plugin_given: bool,
    opts: &BTreeMap<String, String>,
    repair: bool,
    json: bool,
    out: &mut Stdout,
) -> Result<()> {
    if plugin_given || driver.is_some_and(|d| !drivers::builtin().iter().any(|f| f.name == d)) {
        bail!("gd check works on the built-in drivers only; a plugin's store is checked by the plugin");
    }
    let factory = drivers::choose(root, driver)?;
    let home = drivers::home_of(root, factory.name);
    let backend = (factory.open)(&home, opts)?;
    let store = LayerStore::open_for_check(&home, backend)?;
    let problems = store.check(repair)?;
    let remaining: Vec<&Problem> = problems.iter().filter(|p| !p.repaired).collect();
    if json {
        let doc = json!({
            "driver": factory.name,
            "home": home,
            "problems": problems,
            "remaining": remaining.len(),
        });
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    } else {
        for p in &problems {
            if p.repaired {
                writeln!(out, "repaired: {}", p.what)?;
            } else if p.repairable && !repair {
                writeln!(out, "problem: {} (gd check --repair fixes it)", p.what)?;
            } else if p.repairable {
                writeln!(out, "problem: {} (the repair failed)", p.what)?;
            } else {
                writeln!(out, "problem: {} (needs a person)", p.what)?;
            }
        }
        if problems.is_empty() {
            writeln!(
                out,
                "ok: the {} store in {} has no problems",
                factory.name,
                home.display()
            )?;
        }
    }
    out.flush()?;
    if !remaining.is_empty() {
        bail!(
            "{} problem(s) remain in {}{}",
            remaining.len(),
            home.display(),
            if !repair && remaining.iter().all(|p| p.repairable) {
                "; run `gd check --repair`"
            } else {
                ""
            }
        );
    }
    Ok(())
}
