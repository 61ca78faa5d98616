//! Runs the fuzz target as a plain test (stable toolchain): over the generated seeds, every
//! file of corpus/apply and artifacts/apply if present, and truncations/bit flips of the
//! seeds.

#[test]
fn seeds_and_mutations() {
    let seeds = gd_fuzz::seeds();
    let mut inputs = seeds.clone();
    for dir in ["regressions/apply", "corpus/apply", "artifacts/apply"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd {
                let p = e.unwrap().path();
                // Not the .keep that holds an empty regressions/ in git.
                if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                    inputs.push(std::fs::read(p).unwrap());
                }
            }
        }
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for s in &seeds {
        for _ in 0..20 {
            let mut m = s.clone();
            match next() % 3 {
                0 => m.truncate((next() as usize) % m.len().max(1)),
                1 => {
                    let i = (next() as usize) % m.len();
                    m[i] ^= 1 << (next() % 8);
                }
                _ => {
                    let i = (next() as usize) % m.len();
                    m[i] = next() as u8;
                }
            }
            inputs.push(m);
        }
    }
    eprintln!("{} inputs", inputs.len());
    for input in &inputs {
        gd_fuzz::apply_one(input);
        gd_fuzz::read_one(input);
    }
}
