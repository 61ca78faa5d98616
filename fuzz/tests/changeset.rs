//! Runs the `changeset` fuzz target as a plain test (stable toolchain): over its seeds,
//! every file of corpus/changeset, regressions/changeset and artifacts/changeset if present,
//! and mutations of the seeds for a bounded time (GD_FUZZ_SECONDS, default 10) or count
//! (GD_FUZZ_RUNS, default 300), whichever ends first. Without libFuzzer's coverage feedback
//! this finds less than `cargo fuzz run changeset`; it keeps every known input passing and
//! gives stable-only CI a bounded random search.

use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn files_in(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn seeds_regressions_and_bounded_mutations() {
    let seeds = gd_fuzz::changeset::seeds();
    let mut known: Vec<(String, Vec<u8>)> = seeds
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("seed {i}"), s.clone()))
        .collect();
    for dir in [
        "regressions/changeset",
        "corpus/changeset",
        "artifacts/changeset",
    ] {
        known.extend(files_in(dir));
    }
    for (name, input) in &known {
        eprintln!("changeset: {name}");
        gd_fuzz::changeset::changeset_one(input);
    }

    let limit = Duration::from_secs(env_num("GD_FUZZ_SECONDS", 10));
    let max_runs = env_num("GD_FUZZ_RUNS", 300);
    let mut rng = env_num("GD_FUZZ_SEED", 0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let start = Instant::now();
    let mut runs = 0;
    while runs < max_runs && start.elapsed() < limit {
        let mut m = seeds[(next() as usize) % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let len = m.len().max(1);
            match next() % 6 {
                0 => m.truncate((next() as usize) % len),
                1 if !m.is_empty() => {
                    let i = (next() as usize) % m.len();
                    m[i] ^= 1 << (next() % 8);
                }
                2 if !m.is_empty() => {
                    let i = (next() as usize) % m.len();
                    m[i] = next() as u8;
                }
                3 => {
                    let i = (next() as usize) % len.min(m.len() + 1);
                    m.insert(i, next() as u8);
                }
                4 if !m.is_empty() => {
                    // Repeat a chunk: more steps of the same kind.
                    let a = (next() as usize) % m.len();
                    let b = (a + 1 + (next() as usize) % 16).min(m.len());
                    let chunk = m[a..b].to_vec();
                    m.splice(a..a, chunk);
                }
                _ => {
                    // Splice in the tail of another seed.
                    let other = &seeds[(next() as usize) % seeds.len()];
                    let from = (next() as usize) % other.len().max(1);
                    m.extend_from_slice(&other[from.min(other.len())..]);
                }
            }
        }
        // Printed first, so that a crash names the input that caused it.
        let hex: String = m.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!("changeset mutation {runs}: {hex}");
        gd_fuzz::changeset::changeset_one(&m);
        runs += 1;
    }
    eprintln!(
        "changeset: {} known inputs, {runs} mutations in {:.1} s",
        known.len(),
        start.elapsed().as_secs_f64()
    );
}
