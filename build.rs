//! Generates the gRPC code from `proto/` with protox (a pure-Rust protobuf
//! compiler), so a build needs no system `protoc`. The encoded descriptor set
//! is written beside the generated code for server reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/imageservice/v1/image_service.proto",
        "proto/imageservice/v1/moderation_service.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("image_service_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `bytes` fields as `Bytes`: chunks pass through without copies.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
