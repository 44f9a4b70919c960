//! What the tests, the benchmarks and image-soak share to drive the
//! service from outside (feature `testkit`): the S3 and DynamoDB test
//! servers ([`servers`]), the service binary started with flags
//! ([`service`]), readings of a process's CPU time and memory
//! ([`process`]), percentiles and medians ([`stats`]), and the requests
//! every caller builds: a user's identity ([`as_user`]) and the messages of
//! an upload ([`upload_messages`]).

pub mod process;
pub mod servers;
pub mod service;
pub mod stats;

use bytes::Bytes;
use tonic::Request;

use crate::pb;
use crate::pb::upload_image_request::Data;

/// A request carrying `user` as the trusted-header identity.
pub fn as_user<T>(user: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-user-id", user.parse().expect("ascii user id"));
    request
}

/// The messages of an upload: the spec, the bytes in `chunk_size` pieces
/// (slices of `bytes`, not copies), `finish_write` on the last message.
pub fn upload_messages(
    spec: pb::ImageSpec,
    bytes: Bytes,
    chunk_size: usize,
) -> Vec<pb::UploadImageRequest> {
    let mut messages = vec![pb::UploadImageRequest {
        data: Some(Data::Spec(spec)),
        ..Default::default()
    }];
    messages.extend(
        bytes
            .chunks(chunk_size)
            .map(|chunk| pb::UploadImageRequest {
                data: Some(Data::Chunk(bytes.slice_ref(chunk))),
                ..Default::default()
            }),
    );
    messages.last_mut().expect("at least the spec").finish_write = true;
    messages
}
