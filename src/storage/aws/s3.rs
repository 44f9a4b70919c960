//! Image bytes in S3. An upload that fits in one part is a single
//! PutObject; a larger one is a multipart upload with a bounded number of
//! parts in flight, so memory per upload is at most part size × (parts in
//! flight + 1) whatever the image size. Anything short of a completed
//! upload aborts it.
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::StreamExt;

use super::body::{PayloadHash, body_of};
use super::errors::classify;
use super::settings::{AwsSettings, S3Checksums};
use crate::domain::image::Timestamp;
use crate::domain::ports::{
    BlobStore, BlobWriter, ByteStream, ObjectKey, PresignRequest, PresignedUrl, StorageError,
    StoredObject, WriteSize,
};
use crate::domain::session::UploadId;
use crate::storage::multipart::{MultipartWriter, PartBuffer, PartPlan, PartUpload};

/// S3's limits on multipart uploads.
const MAX_PARTS: u64 = 10_000;
/// Presigned URLs cannot live longer than this with SigV4.
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);
/// `Cache-Control` of stored objects: an object never changes under its
/// key (an image's bytes are fixed under its id), so whatever reads it
/// straight from the bucket (a CDN with origin access, say) may keep it.
const STORED_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` a presigned download URL asks S3 to answer with; its
/// `Expires` is the URL's expiry, so a cache keeps the response as long as
/// the URL works and no longer.
const URL_CACHE_CONTROL: &str = "public, immutable";

/// The time from `start` to `end` (zero if `end` is earlier), in whole
/// seconds as SigV4 signs them.
fn micros_between(start: Timestamp, end: Timestamp) -> Duration {
    let micros = end.as_micros().saturating_sub(start.as_micros()).max(0);
    Duration::from_secs((micros / 1_000_000) as u64)
}
/// Longest wait for one attempt of an abort.
const ABORT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// A URL is not handed out if its credentials die sooner than this.
const CREDENTIAL_MARGIN: Duration = Duration::from_secs(60);

/// An object's modification time as a listing gives it (now when absent,
/// so that the repair pass waits).
fn modified_time(time: Option<aws_sdk_s3::primitives::DateTime>) -> Timestamp {
    time.map(|t| Timestamp::from_micros(t.secs().saturating_mul(1_000_000)))
        .unwrap_or_else(Timestamp::now)
}

pub struct S3BlobStore {
    client: Client,
    /// Signs URLs for the endpoint callers reach.
    presign_client: Client,
    credentials: Option<SharedCredentialsProvider>,
    bucket: String,
    part_size: u64,
    parts_in_flight: usize,
    max_object_bytes: u64,
    /// How object bytes are covered when sent (see [`S3Parts`]).
    payload: PayloadHash,
}

pub(super) fn client_for(
    shared: &aws_config::SdkConfig,
    region: Region,
    endpoint: Option<&str>,
    checksums: S3Checksums,
) -> Client {
    use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
    let (request, response) = match checksums {
        S3Checksums::WhenSupported => (
            RequestChecksumCalculation::WhenSupported,
            ResponseChecksumValidation::WhenSupported,
        ),
        S3Checksums::WhenRequired => (
            RequestChecksumCalculation::WhenRequired,
            ResponseChecksumValidation::WhenRequired,
        ),
    };
    let mut builder = aws_sdk_s3::config::Builder::from(shared)
        .region(region)
        .request_checksum_calculation(request)
        .response_checksum_validation(response);
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint).force_path_style(true);
    }
    Client::from_conf(builder.build())
}

impl S3BlobStore {
    pub fn new(shared: &aws_config::SdkConfig, region: Region, settings: &AwsSettings) -> Self {
        let endpoint = settings.s3_endpoint.as_deref();
        let client = client_for(shared, region.clone(), endpoint, settings.checksums);
        // Presigned URLs carry no checksum mode: browsers and curl could not
        // satisfy one.
        let public = settings.s3_public_endpoint.as_deref().or(endpoint);
        let presign_client = client_for(shared, region, public, S3Checksums::WhenRequired);
        Self {
            client,
            presign_client,
            credentials: shared.credentials_provider(),
            bucket: settings.bucket.clone(),
            part_size: settings.part_size,
            parts_in_flight: settings.parts_in_flight.max(1),
            max_object_bytes: settings.max_object_bytes,
            payload: PayloadHash::new(
                settings.payload_signing,
                endpoint,
                settings.checksums == S3Checksums::WhenSupported,
            ),
        }
    }

    /// Creates the bucket; an existing bucket of ours is fine.
    pub async fn create_bucket(&self) -> Result<(), StorageError> {
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => {
                use aws_smithy_types::error::metadata::ProvideErrorMetadata;
                let exists = matches!(
                    error.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                );
                if exists
                    || self
                        .client
                        .head_bucket()
                        .bucket(&self.bucket)
                        .send()
                        .await
                        .is_ok()
                {
                    Ok(())
                } else {
                    Err(classify(error))
                }
            }
        }
    }

    /// The part size for an object of (at most) `size` bytes: the configured
    /// one, grown so that the object needs no more than 10 000 parts.
    fn part_size_for(&self, size: Option<u64>) -> usize {
        let size = size.unwrap_or(self.max_object_bytes);
        let needed = size.div_ceil(MAX_PARTS).next_multiple_of(1024 * 1024);
        self.part_size.max(needed) as usize
    }

    /// How long a URL signed now can stay valid, given the credentials.
    /// The presigning configuration for a URL asked to last `expires_in`,
    /// and how long it will actually last.
    async fn presigning(
        &self,
        expires_in: Duration,
    ) -> Result<(PresigningConfig, Duration), StorageError> {
        let limit = self.presign_limit().await?;
        if limit.is_zero() {
            return Err(StorageError::Unavailable(
                "the signing credentials are about to expire".into(),
            ));
        }
        let expires_in = expires_in.min(limit);
        let config = PresigningConfig::expires_in(expires_in).map_err(StorageError::internal)?;
        Ok((config, expires_in))
    }

    /// Every object under `prefix`, with its modification time (paginated).
    async fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, Timestamp)>, StorageError> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for object in page.map_err(classify)?.contents.unwrap_or_default() {
                if let Some(key) = object.key {
                    found.push((key, modified_time(object.last_modified)));
                }
            }
        }
        Ok(found)
    }

    /// Deletes one object; a missing one is already deleted.
    async fn delete_key(&self, key: &str) -> Result<(), StorageError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => match classify(error) {
                StorageError::NotFound => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn presign_limit(&self) -> Result<Duration, StorageError> {
        let Some(provider) = &self.credentials else {
            return Ok(MAX_PRESIGN);
        };
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| StorageError::Unavailable(Box::new(e)))?;
        match credentials.expiry() {
            None => Ok(MAX_PRESIGN),
            Some(expiry) => {
                let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
                Ok(left.saturating_sub(CREDENTIAL_MARGIN).min(MAX_PRESIGN))
            }
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    fn write_memory(&self, size_hint: Option<u64>) -> u64 {
        let size = size_hint.unwrap_or(self.max_object_bytes);
        let parts = self.part_size_for(size_hint) as u64 * (self.parts_in_flight as u64 + 1);
        parts.min(size)
    }

    async fn start_write(
        &self,
        key: &ObjectKey,
        size_hint: Option<u64>,
    ) -> Result<Box<dyn BlobWriter>, StorageError> {
        let parts = S3Parts {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.as_str().to_owned(),
            payload: self.payload,
        };
        let plan = PartPlan {
            part_size: self.part_size_for(size_hint),
            parts_in_flight: self.parts_in_flight,
            max_parts: MAX_PARTS as u32,
        };
        Ok(Box::new(MultipartWriter::new(parts, plan)))
    }

    async fn read(
        &self,
        key: &ObjectKey,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, StorageError> {
        let last = offset + length.max(1) - 1;
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .range(format!("bytes={offset}-{last}"))
            .send()
            .await
            .map_err(classify)?;
        let body = response.body;
        Ok(
            futures::stream::unfold(body, |mut body: SdkByteStream| async move {
                match body.next().await {
                    Some(Ok(bytes)) => Some((Ok(bytes), body)),
                    Some(Err(error)) => {
                        Some((Err(StorageError::Unavailable(Box::new(error))), body))
                    }
                    None => None,
                }
            })
            .boxed(),
        )
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.delete_key(key.as_str()).await
    }

    async fn presign_read(&self, request: &PresignRequest) -> Result<PresignedUrl, StorageError> {
        let limit = self.presign_limit().await?;
        let now = Timestamp::now();
        let expires = request.signed_at.saturating_add(request.expires_in);
        let credentials_end = now.saturating_add(limit);
        // Signed from the window's start while the signing credentials
        // outlive the URL; otherwise (temporary credentials about to
        // rotate) from now, until they end: a URL of its own.
        let (signed_at, expires) = if expires <= credentials_end {
            (request.signed_at, expires)
        } else {
            (now, credentials_end)
        };
        let expires_in = micros_between(signed_at, expires);
        if expires <= now || expires_in.is_zero() {
            return Err(StorageError::Unavailable(
                "the signing credentials are about to expire".into(),
            ));
        }
        let config = PresigningConfig::builder()
            .start_time(signed_at.into())
            .expires_in(expires_in)
            .build()
            .map_err(StorageError::internal)?;
        let presigned = self
            .presign_client
            .get_object()
            .bucket(&self.bucket)
            .key(request.key.as_str())
            .response_content_type(&request.content_type)
            .response_content_disposition(request.disposition.header_value(&request.filename))
            // Cacheable until the URL expires, and no longer: the cache
            // lifetime is the URL's, as on the embedded backend.
            .response_cache_control(URL_CACHE_CONTROL)
            .response_expires(aws_sdk_s3::primitives::DateTime::from_secs(
                expires.as_micros().div_euclid(1_000_000),
            ))
            .presigned(config)
            .await
            .map_err(classify)?;
        Ok(PresignedUrl {
            url: presigned.uri().to_owned(),
            expire_time: expires,
        })
    }

    async fn object_size(&self, key: &ObjectKey) -> Result<Option<u64>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
        {
            Ok(head) => Ok(Some(head.content_length.unwrap_or(0).max(0) as u64)),
            Err(error) => match classify(error) {
                StorageError::NotFound => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn presign_write(
        &self,
        key: &ObjectKey,
        expires_in: Duration,
        size: WriteSize,
    ) -> Result<PresignedUrl, StorageError> {
        let (config, expires_in) = self.presigning(expires_in).await?;
        let now = Timestamp::now();
        // An exact length is signed as `Content-Length`: the store refuses
        // a body of any other size. An upper bound cannot be signed, so it
        // is not offered (`bounds_presigned_parts`).
        let WriteSize::Exact(length) = size else {
            return Err(StorageError::internal(
                "S3 bounds a presigned PUT only by an exact length",
            ));
        };
        let length = Some(length);
        let presigned = self
            .presign_client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .set_content_length(length.map(|n| n as i64))
            .presigned(config)
            .await
            .map_err(classify)?;
        Ok(PresignedUrl {
            url: presigned.uri().to_owned(),
            expire_time: now.saturating_add(expires_in),
        })
    }

    async fn delete_staged(&self, upload: &UploadId) -> Result<(), StorageError> {
        for (key, _) in self.list_prefix(&ObjectKey::staged_prefix(upload)).await? {
            self.delete_key(&key).await?;
        }
        Ok(())
    }

    async fn list_staged(&self) -> Result<Vec<(UploadId, Timestamp)>, StorageError> {
        let mut newest: std::collections::HashMap<UploadId, Timestamp> = Default::default();
        for (key, modified) in self.list_prefix("uploads/").await? {
            if let Some(id) = ObjectKey::parse_staged(&key) {
                let time = newest.entry(id).or_insert(modified);
                *time = (*time).max(modified);
            }
        }
        Ok(newest.into_iter().collect())
    }

    async fn list_objects(&self) -> Result<Vec<StoredObject>, StorageError> {
        let mut found = Vec::new();
        for (key, modified) in self.list_prefix("images/").await? {
            if let Some((image_id, object)) = ObjectKey::parse(&key) {
                found.push(StoredObject {
                    image_id,
                    object,
                    modified,
                });
            }
        }
        Ok(found)
    }

    async fn abort_pending(&self, key: &ObjectKey, pending_id: &str) -> Result<(), StorageError> {
        abort_multipart(&self.client, &self.bucket, key.as_str(), pending_id).await;
        Ok(())
    }

    async fn remove_unfinished_writes(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<Option<Vec<String>>, StorageError> {
        let mut removed = Vec::new();
        let (mut key_marker, mut upload_id_marker) = (None, None);
        loop {
            let listed = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix("images/")
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_id_marker.take())
                .send()
                .await;
            let page = match listed {
                Ok(page) => page,
                Err(error) => {
                    use aws_smithy_types::error::metadata::ProvideErrorMetadata;
                    // Some S3-compatible stores cannot list multipart uploads.
                    if matches!(error.code(), Some("NotImplemented" | "NotSupported")) {
                        return Ok(None);
                    }
                    if error.code() == Some("AccessDenied") {
                        return Err(StorageError::internal(anyhow::Error::new(error).context(
                            format!(
                                "listing the unfinished multipart uploads of bucket {} was refused: \
                                 the service's role needs s3:ListBucketMultipartUploads on the \
                                 bucket (the policy in deploy/aws/image-service.yaml grants it)",
                                self.bucket
                            ),
                        )));
                    }
                    return Err(classify(error));
                }
            };
            for upload in page.uploads.unwrap_or_default() {
                let (Some(key), Some(upload_id)) = (upload.key, upload.upload_id) else {
                    continue;
                };
                let initiated = upload
                    .initiated
                    .map(|t| Timestamp::from_micros(t.secs().saturating_mul(1_000_000)));
                if initiated.is_some_and(|t| t < older_than) {
                    if !dry_run {
                        abort_multipart(&self.client, &self.bucket, &key, &upload_id).await;
                    }
                    removed.push(key);
                }
            }
            if page.is_truncated != Some(true) {
                return Ok(Some(removed));
            }
            key_marker = page.next_key_marker;
            upload_id_marker = page.next_upload_id_marker;
        }
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        // One attempt: a health check wants the state now, not after retries.
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::new()
                    .retry_config(aws_config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    fn max_presign_expiry(&self) -> Duration {
        MAX_PRESIGN
    }

    /// A presigned `PUT` is bounded only by the `Content-Length` signed
    /// into it: direct uploads name their parts' exact sizes.
    fn bounds_presigned_parts(&self) -> bool {
        false
    }
}

/// The multipart calls on one S3 object (see [`MultipartWriter`]).
struct S3Parts {
    client: Client,
    bucket: String,
    key: String,
    /// Whether the payload is signed and carries its CRC32C.
    payload: PayloadHash,
}

/// The media type an added encoding's object (`small.webp`) is stored
/// with, read from its key, so the bucket serves it as what it holds to a
/// reader without a presigned URL's `response-content-type` (a CDN with
/// origin access). Other objects' types are in their records, and signed
/// into each URL.
fn stored_content_type(key: &str) -> Option<String> {
    let (_, name) = ObjectKey::parse(key)?;
    name.encoding().map(|e| e.content_type().to_owned())
}

#[async_trait]
impl PartUpload for S3Parts {
    type Part = CompletedPart;

    async fn create(&self) -> Result<String, StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            // S3 refuses parts with a checksum the upload was not created
            // for.
            .set_checksum_algorithm(self.payload.checksum_algorithm())
            .cache_control(STORED_CACHE_CONTROL)
            .set_content_type(stored_content_type(&self.key))
            .send()
            .await
            .map_err(classify)?;
        created
            .upload_id
            .ok_or_else(|| StorageError::internal("no upload id from S3"))
    }

    async fn upload_part(
        &self,
        upload_id: &str,
        number: u32,
        part: PartBuffer,
    ) -> Result<CompletedPart, StorageError> {
        // The checksums are computed here, in the part's own task: parts in
        // flight hash in parallel, not on the receiving path.
        let protection = self.payload.protect(&part, None);
        let mut request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .content_length(part.len() as i64)
            .set_checksum_crc32_c(protection.crc32c.clone())
            .body(body_of(part))
            .customize();
        if let Some(signing) = protection.signing {
            request = request.interceptor(signing);
        }
        let response = request.send().await.map_err(classify)?;
        // Completing an upload created with a checksum algorithm names each
        // part's checksum.
        Ok(CompletedPart::builder()
            .set_e_tag(response.e_tag)
            .set_checksum_crc32_c(protection.crc32c)
            .part_number(number as i32)
            .build())
    }

    async fn complete(
        &self,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<(), StorageError> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn abort(&self, upload_id: &str) {
        abort_multipart(&self.client, &self.bucket, &self.key, upload_id).await;
    }

    async fn put(
        &self,
        object: PartBuffer,
        whole: Option<(String, u32)>,
    ) -> Result<(), StorageError> {
        let protection = self.payload.protect(&object, whole);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .content_length(object.len() as i64)
            .cache_control(STORED_CACHE_CONTROL)
            .set_content_type(stored_content_type(&self.key))
            .set_checksum_crc32_c(protection.crc32c)
            .body(body_of(object))
            .customize();
        if let Some(signing) = protection.signing {
            request = request.interceptor(signing);
        }
        request.send().await.map_err(classify)?;
        Ok(())
    }
}

async fn abort_multipart(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let result = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        // A small call: if a pooled connection does not answer quickly, the
        // retry goes out on a fresh one rather than waiting for the read
        // timeout.
        .customize()
        .config_override(
            aws_sdk_s3::config::Builder::new().timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(ABORT_ATTEMPT_TIMEOUT)
                    .build(),
            ),
        )
        .send()
        .await;
    match result.map_err(classify) {
        Ok(_) | Err(StorageError::NotFound) => {}
        Err(error) => {
            tracing::warn!(key, upload_id, error = %crate::telemetry::error_chain(&error), "could not abort a multipart upload; its parts stay until a lifecycle rule or repair removes them")
        }
    }
}
