//! Throughput and memory of the applier on a real tree (ignored by default: it needs a big
//! tar). Run: GD_APPLY_TAR=/path/to/layer.tar cargo test -p driver-api --release \
//!   --test apply_perf -- --ignored --nocapture
//! and watch the peak RSS with /usr/bin/time -v: it must not follow file sizes.

use std::time::Instant;

use driver_api::archive::{apply_tar, ApplyOptions};

#[test]
#[ignore = "a measurement, not a test: needs GD_APPLY_TAR pointing at a big layer tar"]
fn apply_a_big_tar() {
    let Ok(path) = std::env::var("GD_APPLY_TAR") else {
        eprintln!("SKIPPED: set GD_APPLY_TAR to a layer tar");
        return;
    };
    let dest = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let start = Instant::now();
    let stats = apply_tar(dest.path(), &mut f, &ApplyOptions::default()).unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "applied {} entries, {} bytes in {secs:.2}s ({:.0} MB/s)",
        stats.entries,
        stats.bytes,
        stats.bytes as f64 / secs / 1e6
    );
}
