//! Compiles `proto/assay/v1/*.proto` with protox (pure Rust, no protoc needed).

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<_> = ["common", "events", "execution", "results", "api"]
        .iter()
        .map(|f| root.join(format!("assay/v1/{f}.proto")))
        .collect();
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}
