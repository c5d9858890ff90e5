//! Generates the gRPC code. A fresh machine has no protoc, so the vendored
//! one is used unless the `PROTOC` environment variable names another.
//!
//! The public service is generated twice: once whole (messages, client,
//! server), and once as a server only whose Subscribe stream carries
//! pre-encoded messages. The node answers Subscribe with a route of its own
//! (`node/src/subscribe_route.rs`), which sends every subscriber the same
//! frames; the generated method is what a server without that route uses.

use std::path::PathBuf;

fn config() -> Result<prost_build::Config, Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => path.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    Ok(config)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        // Sorted maps keep metadata in a stable order in every output.
        .btree_map(".")
        .compile_with_config(
            config()?,
            &["proto/fuddle.proto", "proto/raft.proto"],
            &["proto"],
        )?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("shared_server");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&out)
        .extern_path(
            ".fuddle.v1.SubscribeResponse",
            "crate::encoded::EncodedSubscribeResponse",
        )
        .extern_path(".fuddle.v1", "crate::registry")
        .compile_with_config(config()?, &["proto/fuddle.proto"], &["proto"])?;
    Ok(())
}
