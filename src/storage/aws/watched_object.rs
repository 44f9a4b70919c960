//! One S3 object read whole, and again only when it changes: the block
//! list's (`--block-list s3://BUCKET/KEY`).
//!
//! A change is told by the object's ETag, asked with `HeadObject` at every
//! poll; the bytes are fetched with `GetObject` only when it differs from
//! the one read before. A conditional `GetObject` (`If-None-Match`) would
//! do it in one request, but S3-compatible stores are free to ignore the
//! header (s3s-fs does), and then every poll would download the whole
//! list; in AWS both requests are billed alike, a 304 included. The ETag
//! kept is the `GetObject`'s, so a change between the two requests is seen
//! at the next poll rather than lost.
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;

use super::settings::AwsSettings;

/// Why the object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectReadError {
    #[error("no such object")]
    NotFound,
    #[error(
        "access denied: the service's role needs s3:GetObject on it (and s3:ListBucket on its \
         bucket, or S3 answers a missing object this way too)"
    )]
    AccessDenied,
    #[error("larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("cannot be read: {0}")]
    Failed(String),
}

/// An S3 object and the version (see [`version`]) of its bytes read last.
pub struct WatchedObject {
    client: Client,
    bucket: String,
    key: String,
    /// The version read last (refused ones included, so that each
    /// version is refused once).
    seen: Option<String>,
}

impl WatchedObject {
    /// The object `key` of `bucket`, through the S3 client the backend's
    /// settings make (endpoint, region, credentials, checksums). No request
    /// is made until the first read.
    pub async fn new(settings: &AwsSettings, bucket: &str, key: &str) -> Self {
        let (shared, region) = settings.sdk_config().await;
        Self {
            client: super::s3::client_for(
                &shared,
                region,
                settings.s3_endpoint.as_deref(),
                settings.checksums,
            ),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            seen: None,
        }
    }

    /// The object's bytes when its ETag differs from the one read before
    /// (always at the first read); `None` when it has not changed. More
    /// than `max_bytes` is refused without reading past the bound.
    pub async fn read_if_changed(
        &mut self,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, ObjectReadError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
            .map_err(read_error)?;
        let head_version = version(head.e_tag, head.last_modified, head.content_length);
        if head_version.is_some() && head_version == self.seen {
            return Ok(None);
        }
        if head.content_length.is_some_and(|n| n as u64 > max_bytes) {
            self.seen = head_version;
            return Err(ObjectReadError::TooLarge { max: max_bytes });
        }
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
            .map_err(read_error)?;
        let got_version = version(object.e_tag, object.last_modified, object.content_length);
        let read = read_bounded(object.body, max_bytes).await;
        // A version cut short is read again at the next poll; one too
        // large is refused once.
        if !matches!(read, Err(ObjectReadError::Failed(_))) {
            self.seen = got_version;
        }
        read.map(Some)
    }
}

/// What tells a version of the object: its ETag, or, from a store that
/// gives none, its modification time and length.
fn version(
    e_tag: Option<String>,
    modified: Option<aws_sdk_s3::primitives::DateTime>,
    length: Option<i64>,
) -> Option<String> {
    e_tag.or_else(|| Some(format!("{:?} {:?}", modified?, length?)))
}

/// The body's bytes, refused once they pass `max_bytes` (a length the
/// head did not announce).
async fn read_bounded(mut body: SdkByteStream, max_bytes: u64) -> Result<Vec<u8>, ObjectReadError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| ObjectReadError::Failed(crate::telemetry::error_chain(&e)))?
    {
        if (bytes.len() + chunk.len()) as u64 > max_bytes {
            return Err(ObjectReadError::TooLarge { max: max_bytes });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// What an operator can act on: a missing object and a refusal are named,
/// anything else keeps the SDK's text.
fn read_error<E>(
    error: aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> ObjectReadError
where
    E: std::error::Error + Send + Sync + 'static,
{
    match error.raw_response().map(|r| r.status().as_u16()) {
        Some(404) => ObjectReadError::NotFound,
        Some(403) => ObjectReadError::AccessDenied,
        _ => ObjectReadError::Failed(crate::telemetry::error_chain(&error)),
    }
}
