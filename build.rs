//! Two generated inputs of the crate:
//!
//! - the schema migrations, listed from their folder (`src/accounts/migrations/NNNN_name.sql`,
//!   in name order) into `$OUT_DIR/migrations.rs`, so a new migration is one new file and
//!   nothing else (a name without a four-digit version, a repeated version and a gap are
//!   refused);
//! - the gRPC protos (`proto/gpuproxy/v1`), compiled into their messages and service traits
//!   (`api::grpc::pb`) and a file descriptor set for server reflection. protox parses them in
//!   Rust, so building needs no `protoc`.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    migrations();
    protos().expect("compile the protos in proto/");
}

fn migrations() {
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

/// The gRPC API's protos, in `proto/` (a buf module: `buf lint`, `buf breaking`).
const PROTOS: &[&str] = &[
    "gpuproxy/v1/offers.proto",
    "gpuproxy/v1/instances.proto",
    "gpuproxy/v1/events.proto",
    "gpuproxy/v1/account.proto",
    "gpuproxy/v1/usage.proto",
    "gpuproxy/v1/commands.proto",
    "gpuproxy/v1/ssh_keys.proto",
    "gpuproxy/v1/volumes.proto",
    "gpuproxy/v1/webhooks.proto",
    "gpuproxy/v1/watches.proto",
];

fn protos() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(&std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files: Vec<_> = PROTOS.iter().map(|f| root.join(f)).collect();
    let fds = protox::compile(&files, [&root])?;
    let out = Path::new(&std::env::var("OUT_DIR")?).join("gpuproxy_v1_descriptor.bin");
    std::fs::write(out, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        // prost's codec with smaller buffers (`api::grpc::codec`)
        .codec_path("crate::api::grpc::codec::Codec")
        // written by hand: its offers are encoded once per rendered page
        .extern_path(
            ".gpuproxy.v1.SearchOffersResponse",
            "crate::api::grpc::offers_page::SearchOffersResponse",
        )
        .compile_fds(fds)?;
    Ok(())
}
