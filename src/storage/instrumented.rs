//! Metrics around any backend: latency and errors of every storage call,
//! by store and operation. Wraps the trait objects, so each backend gets
//! them without code of its own.
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tracing::Instrument;

use crate::domain::audit::{ActionPage, ModerationAction};
use crate::domain::event::{ChangeKind, EventRead, EventStart};
use crate::domain::image::{ImageState, Timestamp};
use crate::domain::listing::ListFilter;
use crate::domain::ports::{
    BlobStore, BlobWriter, ByteStream, CreateOutcome, ListPage, MetadataStore, ObjectKey,
    PresignRequest, PresignedUrl, StorageError, WriteSize,
};
use crate::domain::ports::{
    PendingEncodings, PendingWrite, SessionAdmission, SessionQuota, StoredObject,
};
use crate::domain::session::{UploadId, UploadSessionRecord};
use crate::domain::similar::{PdqHash, SimilarFound};
use crate::domain::usage::{ErasureRecord, QuotaOverride, UsageCeiling, UsageChange, UsageRecord};
use crate::domain::{ImageId, ImageRecord, UserId};

/// `(store, system)`: which port ("blob", "metadata") and what serves it
/// ("s3", "files", "dynamodb", "redb"), for metrics and trace spans.
type Store = (&'static str, &'static str);

async fn timed<T>(
    (store, system): Store,
    operation: &'static str,
    call: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let start = Instant::now();
    let span = crate::telemetry::trace::store_span(store, system, operation);
    let result = call.instrument(span.clone()).await;
    metrics::histogram!(
        "imageservice_backend_request_duration_seconds",
        "store" => store,
        "operation" => operation
    )
    .record(start.elapsed().as_secs_f64());
    if let Err(error) = &result {
        if !matches!(
            error,
            StorageError::NotFound | StorageError::AlreadyExists | StorageError::ConditionFailed
        ) {
            span.record("otel.status_code", "ERROR");
        }
        let kind = match error {
            StorageError::NotFound => "not_found",
            StorageError::AlreadyExists => "already_exists",
            StorageError::ConditionFailed => "condition_failed",
            StorageError::Unavailable(_) => "unavailable",
            StorageError::Internal(_) => "internal",
        };
        metrics::counter!(
            "imageservice_backend_errors_total",
            "store" => store,
            "operation" => operation,
            "kind" => kind
        )
        .increment(1);
    }
    result
}

/// A [`BlobStore`] with metrics and trace spans, and what serves it.
pub struct InstrumentedBlobs(pub Arc<dyn BlobStore>, pub &'static str);

#[async_trait]
impl BlobStore for InstrumentedBlobs {
    async fn start_write(
        &self,
        key: &ObjectKey,
        size_hint: Option<u64>,
    ) -> Result<Box<dyn BlobWriter>, StorageError> {
        let writer = timed(
            ("blob", self.1),
            "start_write",
            self.0.start_write(key, size_hint),
        )
        .await?;
        Ok(Box::new(InstrumentedWriter(writer, self.1)))
    }

    async fn read(
        &self,
        key: &ObjectKey,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, StorageError> {
        timed(("blob", self.1), "read", self.0.read(key, offset, length)).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        timed(("blob", self.1), "delete", self.0.delete(key)).await
    }

    async fn presign_read(&self, request: &PresignRequest) -> Result<PresignedUrl, StorageError> {
        timed(
            ("blob", self.1),
            "presign_read",
            self.0.presign_read(request),
        )
        .await
    }

    fn max_presign_expiry(&self) -> Duration {
        self.0.max_presign_expiry()
    }

    fn bounds_presigned_parts(&self) -> bool {
        self.0.bounds_presigned_parts()
    }

    fn revokes_presigned_writes(&self) -> bool {
        self.0.revokes_presigned_writes()
    }

    fn write_memory(&self, size_hint: Option<u64>) -> u64 {
        self.0.write_memory(size_hint)
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        timed(("blob", self.1), "check_health", self.0.check_health()).await
    }

    async fn object_size(&self, key: &ObjectKey) -> Result<Option<u64>, StorageError> {
        timed(("blob", self.1), "object_size", self.0.object_size(key)).await
    }

    async fn presign_write(
        &self,
        key: &ObjectKey,
        expires_in: Duration,
        size: WriteSize,
    ) -> Result<PresignedUrl, StorageError> {
        timed(
            ("blob", self.1),
            "presign_write",
            self.0.presign_write(key, expires_in, size),
        )
        .await
    }

    async fn delete_staged(&self, upload: &UploadId) -> Result<(), StorageError> {
        timed(
            ("blob", self.1),
            "delete_staged",
            self.0.delete_staged(upload),
        )
        .await
    }

    async fn list_staged(&self) -> Result<Vec<(UploadId, Timestamp)>, StorageError> {
        timed(("blob", self.1), "list_staged", self.0.list_staged()).await
    }

    async fn list_objects(&self) -> Result<Vec<StoredObject>, StorageError> {
        timed(("blob", self.1), "list_objects", self.0.list_objects()).await
    }

    async fn abort_pending(&self, key: &ObjectKey, pending_id: &str) -> Result<(), StorageError> {
        timed(
            ("blob", self.1),
            "abort_pending",
            self.0.abort_pending(key, pending_id),
        )
        .await
    }

    async fn remove_unfinished_writes(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<Option<Vec<String>>, StorageError> {
        timed(
            ("blob", self.1),
            "remove_unfinished_writes",
            self.0.remove_unfinished_writes(older_than, dry_run),
        )
        .await
    }
}

struct InstrumentedWriter(Box<dyn BlobWriter>, &'static str);

#[async_trait]
impl BlobWriter for InstrumentedWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        timed(("blob", self.1), "write", self.0.write(chunk)).await
    }

    async fn finish(self: Box<Self>) -> Result<(), StorageError> {
        timed(("blob", self.1), "finish_write", self.0.finish()).await
    }

    fn pending_id(&self) -> Option<String> {
        self.0.pending_id()
    }

    fn written_checksums(&mut self, sha256_hex: &str, crc32c: u32) {
        self.0.written_checksums(sha256_hex, crc32c);
    }

    async fn abort(self: Box<Self>) {
        let start = Instant::now();
        self.0.abort().await;
        metrics::histogram!(
            "imageservice_backend_request_duration_seconds",
            "store" => "blob",
            "operation" => "abort_write"
        )
        .record(start.elapsed().as_secs_f64());
    }
}

/// A [`MetadataStore`] with metrics and trace spans, and what serves it.
pub struct InstrumentedMetadata(pub Arc<dyn MetadataStore>, pub &'static str);

#[async_trait]
impl MetadataStore for InstrumentedMetadata {
    async fn create(&self, record: &ImageRecord) -> Result<CreateOutcome, StorageError> {
        timed(("metadata", self.1), "create", self.0.create(record)).await
    }

    async fn get(&self, id: &ImageId) -> Result<Option<ImageRecord>, StorageError> {
        timed(("metadata", self.1), "get", self.0.get(id)).await
    }

    async fn keyed_image(
        &self,
        owner: &UserId,
        idempotency_key: &str,
    ) -> Result<Option<ImageRecord>, StorageError> {
        timed(
            ("metadata", self.1),
            "keyed_image",
            self.0.keyed_image(owner, idempotency_key),
        )
        .await
    }

    async fn get_many(&self, ids: &[ImageId]) -> Result<Vec<ImageRecord>, StorageError> {
        timed(("metadata", self.1), "get_many", self.0.get_many(ids)).await
    }

    async fn replace(
        &self,
        record: &ImageRecord,
        expected_revision: u64,
        change: ChangeKind,
    ) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "replace",
            self.0.replace(record, expected_revision, change),
        )
        .await
    }

    async fn delete(&self, id: &ImageId, owner: &UserId) -> Result<ImageRecord, StorageError> {
        timed(("metadata", self.1), "delete", self.0.delete(id, owner)).await
    }

    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StorageError> {
        let page = timed(
            ("metadata", self.1),
            "list",
            self.0.list(filter, cursor, limit),
        )
        .await?;
        metrics::counter!("imageservice_list_records_read_total").increment(page.records_read);
        metrics::counter!("imageservice_list_records_returned_total")
            .increment(page.records.len() as u64);
        Ok(page)
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        timed(("metadata", self.1), "check_health", self.0.check_health()).await
    }

    async fn list_for_review(
        &self,
        state: ImageState,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StorageError> {
        timed(
            ("metadata", self.1),
            "list_for_review",
            self.0.list_for_review(state, cursor, limit),
        )
        .await
    }

    async fn find_similar(
        &self,
        hash: &PdqHash,
        max_distance: u32,
        limit: usize,
        per_band: usize,
    ) -> Result<SimilarFound, StorageError> {
        timed(
            ("metadata", self.1),
            "find_similar",
            self.0.find_similar(hash, max_distance, limit, per_band),
        )
        .await
    }

    async fn append_moderation_action(
        &self,
        action: &ModerationAction,
    ) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "append_moderation_action",
            self.0.append_moderation_action(action),
        )
        .await
    }

    async fn list_moderation_actions(
        &self,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ActionPage, StorageError> {
        timed(
            ("metadata", self.1),
            "list_moderation_actions",
            self.0.list_moderation_actions(cursor, limit),
        )
        .await
    }

    async fn record_pending_write(&self, write: &PendingWrite) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "record_pending_write",
            self.0.record_pending_write(write),
        )
        .await
    }

    async fn clear_pending_write(&self, write: &PendingWrite) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "clear_pending_write",
            self.0.clear_pending_write(write),
        )
        .await
    }

    async fn pending_writes(
        &self,
        older_than: Timestamp,
    ) -> Result<Vec<PendingWrite>, StorageError> {
        timed(
            ("metadata", self.1),
            "pending_writes",
            self.0.pending_writes(older_than),
        )
        .await
    }

    async fn record_pending_encodings(
        &self,
        pending: &PendingEncodings,
    ) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "record_pending_encodings",
            self.0.record_pending_encodings(pending),
        )
        .await
    }

    async fn clear_pending_encodings(&self, image_id: &ImageId) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "clear_pending_encodings",
            self.0.clear_pending_encodings(image_id),
        )
        .await
    }

    async fn pending_encodings(
        &self,
        older_than: Timestamp,
    ) -> Result<Vec<PendingEncodings>, StorageError> {
        timed(
            ("metadata", self.1),
            "pending_encodings",
            self.0.pending_encodings(older_than),
        )
        .await
    }

    async fn create_upload_session(
        &self,
        session: &UploadSessionRecord,
        quota: SessionQuota,
    ) -> Result<SessionAdmission, StorageError> {
        timed(
            ("metadata", self.1),
            "create_upload_session",
            self.0.create_upload_session(session, quota),
        )
        .await
    }

    async fn get_upload_session(
        &self,
        id: &UploadId,
    ) -> Result<Option<UploadSessionRecord>, StorageError> {
        timed(
            ("metadata", self.1),
            "get_upload_session",
            self.0.get_upload_session(id),
        )
        .await
    }

    async fn replace_upload_session(
        &self,
        session: &UploadSessionRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "replace_upload_session",
            self.0.replace_upload_session(session, expected_revision),
        )
        .await
    }

    async fn delete_upload_session(&self, id: &UploadId) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "delete_upload_session",
            self.0.delete_upload_session(id),
        )
        .await
    }

    async fn expired_upload_sessions(
        &self,
        now: Timestamp,
    ) -> Result<Vec<UploadSessionRecord>, StorageError> {
        timed(
            ("metadata", self.1),
            "expired_upload_sessions",
            self.0.expired_upload_sessions(now),
        )
        .await
    }

    async fn get_usage(&self, user: &UserId) -> Result<UsageRecord, StorageError> {
        timed(("metadata", self.1), "get_usage", self.0.get_usage(user)).await
    }

    async fn change_usage(
        &self,
        user: &UserId,
        change: &UsageChange,
        ceiling: Option<UsageCeiling>,
    ) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "change_usage",
            self.0.change_usage(user, change, ceiling),
        )
        .await
    }

    async fn set_user_quota(
        &self,
        user: &UserId,
        quota: QuotaOverride,
    ) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "set_user_quota",
            self.0.set_user_quota(user, quota),
        )
        .await
    }

    async fn replace_usage(
        &self,
        user: &UserId,
        usage: &UsageRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "replace_usage",
            self.0.replace_usage(user, usage, expected_revision),
        )
        .await
    }

    async fn list_usage(&self) -> Result<Vec<(UserId, UsageRecord)>, StorageError> {
        timed(("metadata", self.1), "list_usage", self.0.list_usage()).await
    }

    async fn set_erasure(
        &self,
        user: &UserId,
        erasure: &ErasureRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        timed(
            ("metadata", self.1),
            "set_erasure",
            self.0.set_erasure(user, erasure, expected_revision),
        )
        .await
    }

    async fn upload_sessions_of(
        &self,
        owner: &UserId,
    ) -> Result<Vec<UploadSessionRecord>, StorageError> {
        timed(
            ("metadata", self.1),
            "upload_sessions_of",
            self.0.upload_sessions_of(owner),
        )
        .await
    }

    async fn redact_events(&self, owner: &UserId) -> Result<usize, StorageError> {
        timed(
            ("metadata", self.1),
            "redact_events",
            self.0.redact_events(owner),
        )
        .await
    }

    async fn remove_stale_index_entries(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<usize, StorageError> {
        timed(
            ("metadata", self.1),
            "remove_stale_index_entries",
            self.0.remove_stale_index_entries(older_than, dry_run),
        )
        .await
    }

    async fn read_events(
        &self,
        start: &EventStart,
        limit: usize,
    ) -> Result<EventRead, StorageError> {
        timed(
            ("metadata", self.1),
            "read_events",
            self.0.read_events(start, limit),
        )
        .await
    }

    async fn event_head(&self) -> Result<Vec<u8>, StorageError> {
        timed(("metadata", self.1), "event_head", self.0.event_head()).await
    }

    async fn remove_expired_events(&self, older_than: Timestamp) -> Result<usize, StorageError> {
        timed(
            ("metadata", self.1),
            "remove_expired_events",
            self.0.remove_expired_events(older_than),
        )
        .await
    }

    async fn write_missing_events(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<usize, StorageError> {
        timed(
            ("metadata", self.1),
            "write_missing_events",
            self.0.write_missing_events(older_than, dry_run),
        )
        .await
    }

    fn event_lookback(&self) -> Option<Duration> {
        self.0.event_lookback()
    }

    fn event_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.0.event_signal()
    }
}
