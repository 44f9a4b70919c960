//! Code generated from `proto/` by `build.rs`. Only the transports and startup use it.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("imageservice.v1");

/// The encoded descriptor set of the protos (`image_service.proto`,
/// `moderation_service.proto`), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/image_service_descriptor.bin"));
