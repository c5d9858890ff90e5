//! Generates the gRPC code. A fresh machine has no protoc, so the vendored
//! one is used unless the `PROTOC` environment variable names another.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => path.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        // Sorted maps keep metadata in a stable order in every output.
        .btree_map(".")
        .compile_with_config(
            config,
            &["proto/fuddle.proto", "proto/raft.proto"],
            &["proto"],
        )?;
    Ok(())
}
