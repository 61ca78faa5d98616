//! `gd`: manage container image layers in a graph-driver store from the command line.

// gd's own C `main` instead of std's start: see start.rs. (Its unit tests keep the harness's.)
#![cfg_attr(not(test), no_main)]

mod check;
mod drivers;
mod image_cmd;
mod interrupt;
mod output;
mod plugins;
#[cfg(not(test))]
mod start;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use driver_api::{CreateOptions, GraphDriver, LayerInfo};
use serde_json::json;

use interrupt::Checked;
use output::Stdout;

const DEFAULT_ROOT: &str = "/var/lib/gd";

const ABOUT: &str = "Store container image layers the way Docker's graph drivers do, \
on vfs, overlay, aufs or devmapper, with byte-identical changesets on every driver";

const MAIN_HELP: &str = "\
Driver selection:
  Each driver keeps its files in ROOT/NAME. Without --driver, gd uses the driver that already
  has layers under ROOT; if none has, the highest-priority driver this host can run
  (see `gd drivers`).

Plugins:
  A driver can also come from a plugin: `--plugin PATH.so`, or by name (`--driver NAME`) from
  a file libgd_NAME.so or NAME.so in $GD_PLUGIN_PATH (colon-separated), /usr/local/lib/gd/plugins
  or /usr/lib/gd/plugins. `gd drivers` lists them with their ABI version (docs/plugin-abi.md).

Examples:
  gd create base                      # an empty read-only layer
  gd apply base < rootfs.tar.gz       # fill it from a layer tar
  gd create --parent base --rw c1     # a container layer on top of it
  gd mount c1                         # prints the merged directory
  gd umount c1
  gd diff c1 -o c1.tar                # its changes as a canonical layer tar
  gd --driver vfs --root /tmp/gd ls";

#[derive(Parser)]
#[command(name = "gd", version, about = ABOUT, after_help = MAIN_HELP, args_override_self = true)]
struct Cli {
    /// Directory holding the stores (each driver uses ROOT/NAME)
    #[arg(
        long,
        env = "GD_ROOT",
        default_value = DEFAULT_ROOT,
        value_name = "DIR",
        global = true
    )]
    root: PathBuf,

    /// Driver to use: vfs, overlay, aufs, devmapper, or a plugin's [default: chosen automatically]
    #[arg(long, env = "GD_DRIVER", value_name = "NAME", global = true)]
    driver: Option<String>,

    /// Load a driver plugin (repeatable); without --driver, the first plugin's driver is used
    #[arg(long = "plugin", value_name = "PATH", global = true)]
    plugins: Vec<PathBuf>,

    /// Driver option passed when opening the store (repeatable; before the command)
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    opts: Vec<(String, String)>,

    /// Print machine-readable JSON (ls, inspect, status, drivers, changes, manifest,
    /// diff-size, apply, mount, check)
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an empty layer, or a layer on top of PARENT
    Create {
        /// The layer below the new one
        #[arg(long, value_name = "PARENT")]
        parent: Option<String>,
        /// Make a read-write (container) layer instead of a read-only image layer
        #[arg(long)]
        rw: bool,
        /// Fill the new layer from this layer tar (`-`: standard input) and print the bytes
        /// applied, as `gd apply` does; if the apply fails, the layer is removed again
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// Id of the new layer (letters, digits, '.', '_', '-', ':')
        id: String,
    },
    /// Remove a layer (it must have no children and not be mounted)
    #[command(visible_alias = "remove")]
    Rm { id: String },
    /// List the layers: id, parent, kind, size, mounted
    #[command(visible_alias = "list")]
    Ls,
    /// Show everything known about a layer, as JSON
    Inspect { id: String },
    /// Show the driver, the store's home and facts about the backend
    Status,
    /// List the built-in drivers and whether this host can run them
    Drivers,
    /// Unmount everything the driver holds on this host
    Cleanup,
    /// Mount a layer's merged view and print its path (counted: one umount per mount)
    #[command(after_help = "Example:\n  dir=$(gd mount c1) && ls \"$dir\" && gd umount c1")]
    Mount { id: String },
    /// Release one mount of a layer (the view goes away with the last one)
    #[command(visible_alias = "unmount")]
    Umount { id: String },
    /// Apply a layer tar (plain, gzip or zstd) onto a layer; prints the bytes applied
    #[command(
        after_help = "Example:\n  gd create base && curl -sL https://example.com/rootfs.tar.gz | gd apply base\n\n\
        If the tar cannot be applied, the layer is left exactly as it was."
    )]
    Apply {
        id: String,
        /// The tar to read; `-` or nothing reads standard input
        file: Option<PathBuf>,
    },
    /// Write the layer's changes against its parent as a canonical layer tar
    #[command(
        after_help = "Example:\n  gd diff c1 -o c1.tar        # or: gd diff c1 | gzip > c1.tar.gz\n\n\
        The same two views give the same bytes on every driver. gd will not write the tar \
        to a terminal."
    )]
    Diff {
        id: String,
        /// Write to FILE (a regular file appears only once complete); `-` is standard output
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List the paths the layer added (A), changed (C) or deleted (D), like `docker diff`
    Changes { id: String },
    /// Print the bytes of file content the layer added or changed
    DiffSize { id: String },
    /// Print the canonical listing of a layer's view (or of any directory with --path)
    Manifest {
        #[arg(required_unless_present = "path", conflicts_with = "path")]
        id: Option<String>,
        /// List this directory instead of a layer (no store needed)
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// Print only the manifest's digest
        #[arg(long)]
        digest: bool,
    },
    /// Verify the store against the disk (metadata, storage, mounts); --repair fixes what it
    /// safely can. Exits 1 if a problem remains (docs/recovery.md)
    Check {
        /// Fix what can be fixed without touching anything in use
        #[arg(long)]
        repair: bool,
    },
    /// Images: import a `docker save` or OCI archive, list, mount, flatten, export, remove
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// Make a read-write layer's changes a new image layer, tagged REF
    Commit(image_cmd::CommitArgs),
}

fn parse_key_value(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    start::standard_fds_open();
    start::ignore_sigpipe();
    // A panic is reported by the panic hook and ends the process with 101, as under std's
    // start; it must not unwind out of this C function.
    let code = std::panic::catch_unwind(gd_main).unwrap_or(101);
    // `exit` flushes stdout, as returning from std's start would.
    std::process::exit(code)
}

/// The test harness brings its own start; this keeps the rest of the binary in use there.
#[cfg(test)]
fn main() {
    std::process::exit(gd_main())
}

fn gd_main() -> i32 {
    let mut cli = Cli::parse();
    // An empty GD_ROOT or GD_DRIVER (`GD_DRIVER= gd ls`) means "not set", as in most tools.
    if cli.root.as_os_str().is_empty() {
        cli.root = PathBuf::from(DEFAULT_ROOT);
    }
    cli.driver = cli.driver.filter(|d| !d.is_empty());
    let code = match run(cli) {
        Ok(()) => 0,
        // The reader went away (`gd diff x | head -c 10`): what it wanted, it got.
        Err(_) if output::stdout_broken() => 0,
        Err(_) if interrupt::received().is_some() => {
            let sig = interrupt::received().unwrap_or(libc::SIGINT);
            let _ = writeln!(
                io::stderr(),
                "gd: interrupted by signal {sig}; nothing was changed"
            );
            128 + sig
        }
        Err(e) => {
            let _ = writeln!(io::stderr(), "gd: {}", output::one_line(&e));
            1
        }
    };
    code
}

fn run(cli: Cli) -> Result<()> {
    let mut out = Stdout;
    match &cli.command {
        Command::Drivers => return cmd_drivers(&cli, &mut out),
        Command::Check { repair } => {
            let opts: BTreeMap<String, String> = cli.opts.iter().cloned().collect();
            let (driver, plugin) = (cli.driver.as_deref(), !cli.plugins.is_empty());
            return check::run(
                &cli.root, driver, plugin, &opts, *repair, cli.json, &mut out,
            );
        }
        Command::Manifest {
            path: Some(dir),
            digest,
            ..
        } => {
            let meta =
                fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
            if !meta.is_dir() {
                bail!("{} is not a directory", dir.display());
            }
            return print_manifest(dir, *digest, cli.json, &mut out)
                .map_err(|e| anyhow::Error::from(driver_api::Error::from(e)));
        }
        _ => {}
    }

    let opts: BTreeMap<String, String> = cli.opts.iter().cloned().collect();
    let explicit = plugins::load_explicit(&cli.plugins)?;
    let store = plugins::open_selected(&cli.root, cli.driver.as_deref(), &explicit, &opts)?;
    let store: &dyn GraphDriver = &*store;
    let json = cli.json;

    match cli.command {
        Command::Drivers | Command::Check { .. } => unreachable!("handled above"),
        Command::Create {
            parent,
            rw,
            from,
            id,
        } => {
            let opts = CreateOptions {
                rw,
                ..Default::default()
            };
            store.create(&id, parent.as_deref(), &opts)?;
            if let Some(file) = from {
                let bytes = match apply_from(store, &id, Some(&file)) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        return Err(match store.remove(&id) {
                            Ok(()) => e,
                            Err(rm) => e.context(format!(
                                "the new layer {id} could not be removed again ({rm}): remove it with `gd rm {id}`"
                            )),
                        })
                    }
                };
                print_applied(&mut out, json, &id, bytes)?;
            }
        }
        Command::Rm { id } => store.remove(&id)?,
        Command::Ls => cmd_ls(store, json, &mut out)?,
        Command::Inspect { id } => {
            let info = store.info(&id)?;
            let metadata = store.metadata(&id)?;
            let mut v = serde_json::to_value(info)?;
            v["metadata"] = serde_json::to_value(metadata)?;
            print_json(&mut out, &v)?;
        }
        Command::Status => {
            let status = store.status()?;
            if json {
                let map: serde_json::Map<String, serde_json::Value> = status
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                print_json(&mut out, &map)?;
            } else {
                let width = status.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                for (k, v) in status {
                    writeln!(out, "{:width$}  {v}", format!("{k}:"), width = width + 1)?;
                }
            }
        }
        Command::Cleanup => store.cleanup()?,
        Command::Mount { id } => {
            let path = store.get(&id)?;
            if json {
                print_json(&mut out, &json!({ "id": id, "path": path }))?;
            } else {
                // One write, so that a reader never sees the path without its newline.
                out.write_all(format!("{}\n", path.display()).as_bytes())?;
            }
        }
        Command::Umount { id } => store.put(&id)?,
        Command::Apply { id, file } => {
            let bytes = apply_from(store, &id, file.as_deref())?;
            print_applied(&mut out, json, &id, bytes)?;
        }
        Command::Diff { id, output } => cmd_diff(store, &id, output.as_deref())?,
        Command::Changes { id } => {
            let changes = store.changes(&id)?;
            if json {
                print_json(&mut out, &changes)?;
            } else {
                let mut w = BufWriter::new(&mut out);
                for c in &changes {
                    writeln!(w, "{c}")?;
                }
                w.flush()?;
            }
        }
        Command::DiffSize { id } => {
            let size = store.diff_size(&id)?;
            if json {
                print_json(&mut out, &json!({ "id": id, "size": size }))?;
            } else {
                writeln!(out, "{size}")?;
            }
        }
        Command::Manifest { id, digest, .. } => {
            let id = id.expect("clap requires an id without --path");
            interrupt::catch();
            let view = store.get(&id)?;
            let listed = print_manifest(&view, digest, json, &mut out)
                .map_err(|e| driver_api::Error::from(e).in_layer(&id));
            // Release the view even when the listing failed; report the listing's error first.
            let released = store.put(&id);
            listed?;
            released?;
        }
        Command::Image(cmd) => image_cmd::run(cmd, store, &cli.root, json)?,
        Command::Commit(args) => image_cmd::commit(args, store, &cli.root, json)?,
    }
    out.flush()?;
    Ok(())
}

fn print_json(out: &mut Stdout, value: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

fn cmd_drivers(cli: &Cli, out: &mut Stdout) -> Result<()> {
    let plugin_rows = plugins::list(&cli.root, &cli.plugins);
    // A --driver or --plugin naming a plugin selects it; otherwise the built-in choice.
    let first_plugin = cli
        .plugins
        .first()
        .and_then(|p| plugin_rows.iter().find(|r| &r.path == p))
        .map(|r| r.name.clone());
    let selected: Option<String> = match cli.driver.clone().or(first_plugin) {
        Some(name) if plugin_rows.iter().any(|r| r.name == name) => Some(name),
        named => drivers::choose(&cli.root, named.as_deref())
            .ok()
            .map(|f| f.name.to_string()),
    };
    let selected = selected.as_deref();
    let probes = drivers::probe_all(&cli.root);
    if cli.json {
        let mut list: Vec<_> = probes
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "priority": p.priority,
                    "usable": p.usable.is_ok(),
                    "reason": p.usable.as_ref().err(),
                    "selected": Some(p.name) == selected,
                    "source": "built-in",
                })
            })
            .collect();
        list.extend(plugin_rows.iter().map(|r| {
            json!({
                "name": r.name,
                "usable": r.usable.is_ok(),
                "reason": r.usable.as_ref().err(),
                "selected": Some(r.name.as_str()) == selected,
                "source": "plugin",
                "path": r.path,
                "abi": r.abi.as_ref().ok().map(|(ma, mi)| format!("{ma}.{mi}")),
            })
        }));
        return print_json(out, &list);
    }
    let mut rows: Vec<[String; 5]> = probes
        .iter()
        .map(|p| {
            let mark = if Some(p.name) == selected { " *" } else { "" };
            [
                format!("{}{mark}", p.name),
                p.priority.to_string(),
                if p.usable.is_ok() { "yes" } else { "no" }.to_string(),
                p.usable.as_ref().err().cloned().unwrap_or_default(),
                "built-in".to_string(),
            ]
        })
        .collect();
    rows.extend(plugin_rows.iter().map(|r| {
        let mark = if Some(r.name.as_str()) == selected {
            " *"
        } else {
            ""
        };
        [
            format!("{}{mark}", r.name),
            "-".to_string(),
            if r.usable.is_ok() { "yes" } else { "no" }.to_string(),
            r.usable.as_ref().err().cloned().unwrap_or_default(),
            match &r.abi {
                Ok((ma, mi)) => format!("plugin ABI {ma}.{mi} {}", r.path.display()),
                Err(_) => format!("plugin {}", r.path.display()),
            },
        ]
    }));
    output::table(
        out,
        ["DRIVER", "PRIORITY", "USABLE", "WHY NOT", "SOURCE"],
        &rows,
    )?;
    if selected.is_some() {
        writeln!(
            out,
            "(* the driver gd uses with the current --root and --driver)"
        )?;
    }
    Ok(())
}

fn cmd_ls(store: &dyn GraphDriver, json: bool, out: &mut Stdout) -> Result<()> {
    let layers = tree_order(store.list()?);
    if json {
        return print_json(out, &layers);
    }
    let rows: Vec<[String; 5]> = layers
        .iter()
        .map(|l| {
            [
                l.id.clone(),
                l.parent.clone().unwrap_or_else(|| "-".into()),
                l.kind.as_str().to_string(),
                l.size.map(output::human_size).unwrap_or_else(|| "-".into()),
                match l.mounts {
                    0 => "no".to_string(),
                    1 => "yes".to_string(),
                    n => format!("yes ({n})"),
                },
            ]
        })
        .collect();
    output::table(out, ["ID", "PARENT", "KIND", "SIZE", "MOUNTED"], &rows)
}

/// Parents before their children, siblings by id, so that a listing reads like the layer tree.
fn tree_order(mut layers: Vec<LayerInfo>) -> Vec<LayerInfo> {
    layers.sort_by(|a, b| a.id.cmp(&b.id));
    let ids: std::collections::HashSet<String> = layers.iter().map(|l| l.id.clone()).collect();
    let mut children: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
    for (i, l) in layers.iter().enumerate() {
        // A layer whose parent is missing is listed as a root rather than dropped.
        let parent = l.parent.clone().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(i);
    }
    let mut order = Vec::with_capacity(layers.len());
    let mut stack: Vec<usize> = children.get(&None).cloned().unwrap_or_default();
    stack.reverse();
    while let Some(i) = stack.pop() {
        order.push(i);
        if let Some(kids) = children.get(&Some(layers[i].id.clone())) {
            stack.extend(kids.iter().rev());
        }
    }
    let mut slots: Vec<Option<LayerInfo>> = layers.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Apply the layer tar `file` (standard input for None or `-`, never a terminal) onto `id`.
fn apply_from(store: &dyn GraphDriver, id: &str, file: Option<&Path>) -> Result<u64> {
    Ok(match file {
        Some(p) if p != Path::new("-") => {
            let f = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            if f.metadata().is_ok_and(|m| m.is_dir()) {
                bail!("{} is a directory, not a layer tar", p.display());
            }
            interrupt::catch();
            store.apply_diff(id, &mut Checked(f))?
        }
        _ => {
            let stdin = io::stdin();
            if stdin.is_terminal() {
                bail!("refusing to read a layer tar from a terminal; give a FILE or pipe one in");
            }
            interrupt::catch();
            store.apply_diff(id, &mut Checked(stdin.lock()))?
        }
    })
}

fn print_applied(out: &mut Stdout, json: bool, id: &str, bytes: u64) -> Result<()> {
    if json {
        print_json(out, &json!({ "id": id, "bytes": bytes }))
    } else {
        writeln!(out, "{bytes}")?;
        Ok(())
    }
}

fn cmd_diff(store: &dyn GraphDriver, id: &str, output: Option<&Path>) -> Result<()> {
    output::write_archive(output, |w| Ok(store.diff(id, w).map(drop)?))
}

/// Print the manifest of the view at `root`: the listing, or only its digest.
fn print_manifest(
    root: &Path,
    digest_only: bool,
    json: bool,
    out: &mut Stdout,
) -> std::result::Result<(), driver_api::ArchiveError> {
    use driver_api::manifest;
    let stream = driver_api::ArchiveError::Stream;
    if digest_only {
        // What `manifest_digest` does, with a sink that notices Ctrl-C between entries.
        let digest = manifest::write_manifest(root, &mut Checked(io::sink()))?;
        let text = if json {
            format!("{}\n", json!({ "digest": digest }))
        } else {
            format!("{digest}\n")
        };
        return out.write_all(text.as_bytes()).map_err(stream);
    }
    if json {
        // One document a script can load whole: the digest and every entry.
        let mut lines = Vec::new();
        let digest = manifest::write_manifest_json(root, &mut Checked(&mut lines))?;
        let entries: Vec<serde_json::Value> = lines
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(serde_json::from_slice)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| stream(e.into()))?;
        let doc = json!({ "digest": digest, "entries": entries });
        let mut text = serde_json::to_vec_pretty(&doc).map_err(|e| stream(e.into()))?;
        text.push(b'\n');
        return out.write_all(&text).map_err(stream);
    }
    let mut w = Checked(BufWriter::new(&mut *out));
    manifest::write_manifest(root, &mut w)?;
    w.flush().map_err(stream)
}
