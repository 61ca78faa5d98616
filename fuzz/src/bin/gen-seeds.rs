//! Write a seed corpus: `gen-seeds [TARGET [DIR]]` for TARGET `apply` (the default) or
//! `changeset`, into DIR (default: fuzz/corpus/TARGET). `gen-seeds DIR` writes the apply
//! seeds into DIR.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (target, dir) = match args.first().map(String::as_str) {
        Some(t @ ("apply" | "changeset")) => (t.to_string(), args.get(1).cloned()),
        Some(dir) => ("apply".to_string(), Some(dir.to_string())),
        None => ("apply".to_string(), None),
    };
    let dir = dir.unwrap_or_else(|| format!("{}/corpus/{target}", env!("CARGO_MANIFEST_DIR")));
    std::fs::create_dir_all(&dir).unwrap();
    let seeds = match target.as_str() {
        "changeset" => gd_fuzz::changeset::seeds(),
        _ => gd_fuzz::seeds(),
    };
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(format!("{dir}/seed-{i:03}"), s).unwrap();
    }
    println!("{} {target} seeds in {dir}", seeds.len());
}
