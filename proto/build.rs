//! Compiles `proto/corral/v1/corral.proto` with protox (a pure-Rust protobuf compiler, so no
//! `protoc` is needed) and generates prost messages and tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/corral/v1/corral.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Shared buffers for stdin, outputs and module chunks; ordered maps for labels and env.
        .bytes(".corral.v1")
        .btree_map(".corral.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
