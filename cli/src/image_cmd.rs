//! `gd image ...` and `gd commit`: whole images over the chosen driver (the `gd-image` crate).
//! Image records live in ROOT/images/DRIVER, next to the driver's own ROOT/DRIVER.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use driver_api::GraphDriver;
use gd_image::{ImageStore, ImportOptions, Progress, TerminalProgress};
use serde_json::json;

use crate::interrupt::{self, Checked};
use crate::output::{self, Stdout};

const IMAGE_HELP: &str = "\
Examples:
  gd image import busybox.tar            # a `docker save` tarball or an OCI layout (dir or tar)
  gd image ls
  cd \"$(gd image mount busybox)\"         # the merged view, read-only use
  gd image mount busybox --rw c1         # a read-write container layer on top
  gd commit c1 --tag busybox:changed     # its changes become a new image
  gd image flatten busybox -o rootfs.tar # the merged view as one tar
  gd image export busybox -o out.tar     # docker load / OCI readable, layers byte-identical
  gd image rm busybox";

#[derive(Subcommand)]
#[command(after_help = IMAGE_HELP)]
pub enum ImageCommand {
    /// Import a `docker save` tarball or an OCI image layout (directory or tar; plain, gzip
    /// or zstd). Every digest is checked; on any mismatch nothing is kept
    #[command(
        after_help = "Layers already stored (from another image, or an earlier import) cost nothing.\n\
        Progress is shown on a terminal; `-` reads the archive from standard input."
    )]
    Import {
        /// Archive file, OCI layout directory, or `-`
        input: PathBuf,
        /// Name the imported image REF instead of the names the archive gives
        #[arg(long, value_name = "REF")]
        tag: Option<String>,
        /// From a multi-platform index, the image for OS/ARCH[/VARIANT] [default: this machine's]
        #[arg(long, value_name = "PLATFORM", value_parser = gd_image::format::Platform::parse)]
        platform: Option<gd_image::format::Platform>,
        /// No progress line
        #[arg(short, long)]
        quiet: bool,
    },
    /// List images: reference, id, layers, size
    #[command(visible_alias = "list")]
    Ls,
    /// Show an image as JSON: id, references, config, layers (chain ids, diff ids, sizes, blobs)
    Inspect { reference: String },
    /// Remove references; an image goes with its last one, and its layers unless another
    /// image or a container layer uses them
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Mount an image's merged view and print its path (release it with `gd image umount`)
    Mount {
        reference: String,
        /// Mount a read-write container layer NAME on top instead (created if needed;
        /// release it with `gd umount NAME`)
        #[arg(long, value_name = "NAME")]
        rw: Option<String>,
    },
    /// Release one mount of an image's view
    #[command(visible_alias = "unmount")]
    Umount { reference: String },
    /// Write the image's merged view as one canonical tar
    Flatten {
        reference: String,
        /// Write to FILE (via FILE.tmp, renamed when complete) instead of standard output
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write images as one archive readable by `docker load` and OCI tools; layers are the
    /// very tars they were imported from
    Export {
        #[arg(required = true)]
        references: Vec<String>,
        /// Write to FILE (complete or not at all); `-` or nothing writes standard output
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// No progress line
        #[arg(short, long)]
        quiet: bool,
    },
    /// Check that images are intact: every layer's view still reproduces the layer's
    /// original tar (each file's content, then the diff id the config names)
    Verify {
        #[arg(required = true)]
        references: Vec<String>,
        /// No progress line
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove image layers that no image uses and no container layer sits on
    Prune,
}

#[derive(Args)]
pub struct CommitArgs {
    /// The read-write layer (made with `gd image mount REF --rw NAME`)
    layer: String,
    /// Reference of the new image
    #[arg(long, value_name = "REF")]
    tag: String,
    /// No progress line
    #[arg(short, long)]
    quiet: bool,
}

/// The terminal progress line, stopping at Ctrl-C.
struct CliProgress(Box<dyn Progress>);

impl Progress for CliProgress {
    fn start(&mut self, what: &str, layers: usize, bytes: u64) {
        self.0.start(what, layers, bytes)
    }
    fn layer(&mut self, index: usize, id: &str, reused: bool) {
        self.0.layer(index, id, reused)
    }
    fn bytes(&mut self, n: u64) {
        self.0.bytes(n)
    }
    fn finish(&mut self) {
        self.0.finish()
    }
    fn interrupted(&self) -> Option<String> {
        interrupt::received().map(|sig| format!("interrupted by signal {sig}"))
    }
}

fn progress(quiet: bool) -> CliProgress {
    interrupt::catch();
    CliProgress(TerminalProgress::for_stderr(quiet))
}

fn open<'a>(store: &'a dyn GraphDriver, root: &Path) -> Result<ImageStore<'a>> {
    let dir = root.join("images").join(store.name());
    Ok(ImageStore::open(&dir, store)?)
}

fn print_json(out: &mut impl Write, v: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)?;
    Ok(())
}

pub fn run(cmd: ImageCommand, store: &dyn GraphDriver, root: &Path, json: bool) -> Result<()> {
    let images = open(store, root)?;
    let mut out = Stdout;
    match cmd {
        ImageCommand::Import {
            input,
            tag,
            platform,
            quiet,
        } => {
            if input == Path::new("-") && io::stdin().is_terminal() {
                bail!(
                    "refusing to read an image archive from a terminal; give a FILE or pipe one in"
                );
            }
            let done = images.import(
                &input,
                &ImportOptions { tag, platform },
                &mut progress(quiet),
            )?;
            if json {
                print_json(&mut out, &done)?;
            } else {
                for i in &done {
                    if i.refs.is_empty() {
                        writeln!(out, "Loaded image ID: {}", i.id)?;
                    }
                    for r in &i.refs {
                        writeln!(out, "Loaded image: {r}")?;
                    }
                }
            }
        }
        ImageCommand::Ls => {
            let list = images.list()?;
            if json {
                print_json(&mut out, &list)?;
            } else {
                let mut rows = Vec::new();
                for s in &list {
                    let names: Vec<String> = if s.refs.is_empty() {
                        vec!["<none>".into()]
                    } else {
                        s.refs.clone()
                    };
                    for n in names {
                        rows.push([
                            n,
                            s.record.id.short().to_string(),
                            s.record.layers.len().to_string(),
                            output::human_size(s.record.size()),
                        ]);
                    }
                }
                output::table(&mut out, ["REFERENCE", "IMAGE ID", "LAYERS", "SIZE"], &rows)?;
            }
        }
        ImageCommand::Inspect { reference } => {
            let rec = images.resolve(&reference)?;
            let config: serde_json::Value = serde_json::from_slice(&images.config(&rec)?)
                .with_context(|| format!("config of image {} is not JSON", rec.id))?;
            let refs = images.refs_of(&rec.id)?;
            print_json(
                &mut out,
                &json!({
                    "id": rec.id,
                    "refs": refs,
                    "size": rec.size(),
                    "source": rec.source,
                    "added": rec.added,
                    "manifest": rec.manifest,
                    "config_media_type": rec.config_media_type,
                    "layers": rec.layers,
                    "config": config,
                }),
            )?;
        }
        ImageCommand::Rm { references } => {
            for r in references {
                let (deleted, report) = images.remove(&r)?;
                match deleted {
                    None => writeln!(out, "Untagged: {r}")?,
                    Some(id) => {
                        writeln!(out, "Deleted: {id}")?;
                        for l in &report.removed {
                            writeln!(out, "Deleted layer: {l}")?;
                        }
                        for (l, why) in &report.kept {
                            writeln!(out, "Kept layer: {l} ({why})")?;
                        }
                    }
                }
            }
        }
        ImageCommand::Mount { reference, rw } => {
            let path = images.mount(&reference, rw.as_deref())?;
            if json {
                print_json(
                    &mut out,
                    &json!({ "reference": reference, "layer": rw, "path": path }),
                )?;
            } else {
                writeln!(out, "{}", path.display())?;
            }
        }
        ImageCommand::Umount { reference } => images.unmount(&reference)?,
        ImageCommand::Flatten { reference, output } => {
            flatten(&images, &reference, output.as_deref())?
        }
        ImageCommand::Export {
            references,
            output,
            quiet,
        } => match output.filter(|p| p != Path::new("-")) {
            Some(path) => images.export(&references, &path, &mut progress(quiet))?,
            None => {
                if io::stdout().is_terminal() {
                    bail!("refusing to write an image archive to a terminal; redirect standard output or use -o FILE");
                }
                let mut p = progress(quiet);
                let mut w = Checked(BufWriter::with_capacity(1 << 20, Stdout));
                images.export_to(&references, &mut w, &mut p)?;
                w.flush()?;
            }
        },
        ImageCommand::Verify { references, quiet } => {
            let mut results = Vec::new();
            for r in &references {
                let layers = images.verify(r, &mut progress(quiet))?;
                results.push(json!({ "reference": r, "layers": layers.len() }));
                if !json {
                    writeln!(out, "{r}: {} layer(s) intact", layers.len())?;
                }
            }
            if json {
                print_json(&mut out, &results)?;
            }
        }
        ImageCommand::Prune => {
            let report = images.gc()?;
            if json {
                print_json(&mut out, &report)?;
            } else {
                for l in &report.removed {
                    writeln!(out, "Deleted layer: {l}")?;
                }
                for (l, why) in &report.kept {
                    writeln!(out, "Kept layer: {l} ({why})")?;
                }
            }
        }
    }
    Ok(())
}

fn flatten(images: &ImageStore, reference: &str, output: Option<&Path>) -> Result<()> {
    output::write_archive(output, |w| Ok(images.flatten(reference, w).map(drop)?))
}

pub fn commit(args: CommitArgs, store: &dyn GraphDriver, root: &Path, json: bool) -> Result<()> {
    let images = open(store, root)?;
    let id = images.commit(&args.layer, &args.tag, &mut progress(args.quiet))?;
    let mut out = Stdout;
    if json {
        print_json(
            &mut out,
            &json!({ "id": id, "tag": gd_image::normalize_ref(&args.tag)? }),
        )?;
    } else {
        writeln!(out, "{id}")?;
    }
    Ok(())
}
