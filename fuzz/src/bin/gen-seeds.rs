//! Write the seed corpus for `cargo fuzz run apply` (default: fuzz/corpus/apply).
fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/apply").to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let seeds = gd_fuzz::seeds();
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(format!("{dir}/seed-{i:03}"), s).unwrap();
    }
    println!("{} seeds in {dir}", seeds.len());
}
