//! Lists the schema migrations from their folder (`src/accounts/migrations/NNNN_name.sql`, in
//! name order) into `$OUT_DIR/migrations.rs`, so a new migration is one new file and nothing
//! else. Refuses a name without a four-digit version, a repeated version and a gap.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // read when the script runs, not when it is compiled: a compiled build script is reused by
    // every checkout sharing a target directory (CARGO_TARGET_DIR), each in its own place
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&root).join("src/accounts/migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("src/accounts/migrations")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut out = String::from(
        "/// The migrations, in order: (version, name, SQL), from src/accounts/migrations.\n\
         pub const MIGRATIONS: &[(i64, &str, &str)] = &[\n",
    );
    for (i, path) in files.iter().enumerate() {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let (version, name) = stem
            .split_once('_')
            .filter(|(v, n)| v.len() == 4 && v.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty())
            .unwrap_or_else(|| panic!("migration {stem}: name it NNNN_name.sql"));
        let version: i64 = version.parse().expect("four digits");
        assert_eq!(
            version,
            i as i64 + 1,
            "migration {stem}: versions must count from 0001 without gaps or repeats"
        );
        writeln!(
            out,
            "    ({version}, {name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .expect("a String");
    }
    out += "];\n";
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("migrations.rs");
    std::fs::write(dest, out).expect("write migrations.rs");
}
