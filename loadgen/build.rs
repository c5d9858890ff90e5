//! Generates the etcd client from the hand-written subset of etcd's API. A
//! fresh machine has no protoc, so the vendored one is used unless the
//! `PROTOC` environment variable names another.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => path.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        // The tool only calls etcd; it never serves its API.
        .build_server(false)
        .compile_with_config(config, &["proto/etcd.proto"], &["proto"])?;
    Ok(())
}
