//! The in-memory backend: both ports over maps in this process, for fast
//! tests of the domain and of the contract suite. Nothing survives the
//! process, and it serves no download URLs.
//!
//! [`Faults`] makes chosen calls fail, so that tests can reach every
//! compensation path of the use cases (a store that fails after the bytes
//! were written, a journal that cannot be cleared).
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::domain::audit::{ActionPage, ModerationAction, action_position, review_position};
use crate::domain::event::{ChangeKind, EventRead, EventStart, ImageEvent, StoredEvent};
use crate::domain::image::{ImageState, Timestamp};
use crate::domain::listing::ListFilter;
use crate::domain::ports::{
    BlobStore, BlobWriter, ByteStream, CreateOutcome, ListPage, MetadataStore, ObjectKey,
    PendingEncodings, PendingWrite, PresignRequest, PresignedUrl, SessionAdmission, SessionQuota,
    StorageError, StoredObject, WriteSize,
};
use crate::domain::session::{UploadId, UploadSessionRecord};
use crate::domain::similar::{self, PdqHash, SimilarFound, SimilarImage};
use crate::domain::usage::{ErasureRecord, QuotaOverride, UsageCeiling, UsageChange, UsageRecord};
use crate::domain::{ImageId, ImageRecord, UserId};

/// Largest piece a read yields, like a store's network reads.
const READ_PIECE: usize = 64 * 1024;

/// A call of either store, for [`Faults`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    StartWrite,
    Write,
    Finish,
    Read,
    DeleteObject,
    Create,
    Get,
    Replace,
    DeleteRecord,
    List,
    RecordPendingWrite,
    ClearPendingWrite,
}

/// Calls made to fail: after a given number of successes, every further
/// call of that kind fails with `Unavailable`. Shared by the stores made
/// with it.
#[derive(Clone, Debug, Default)]
pub struct Faults(
    Arc<Mutex<HashMap<Call, u32>>>,
    Arc<Mutex<HashMap<Call, (u32, Hold)>>>,
);

/// A call made to wait (see [`Faults::hold_after`]), like a replica that
/// stalls there.
#[derive(Clone, Debug)]
pub struct Hold {
    reached: Arc<tokio::sync::Semaphore>,
    released: Arc<tokio::sync::Semaphore>,
}

impl Hold {
    /// Waits until the held call has been made.
    pub async fn reached(&self) {
        self.reached.acquire().await.expect("never closed").forget();
    }

    /// Lets the held call go on.
    pub fn release(&self) {
        self.released.add_permits(1);
    }
}

impl Faults {
    /// Lets `passing` more calls of `call` through, then holds the next
    /// one until [`Hold::release`]; later calls pass.
    pub fn hold_after(&self, call: Call, passing: u32) -> Hold {
        let hold = Hold {
            reached: Arc::new(tokio::sync::Semaphore::new(0)),
            released: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        self.holds().insert(call, (passing, hold.clone()));
        hold
    }

    /// Waits here if this call is the one held.
    async fn wait(&self, call: Call) {
        let held = {
            let mut holds = self.holds();
            match holds.get_mut(&call) {
                Some((0, _)) => holds.remove(&call).map(|(_, hold)| hold),
                Some((passing, _)) => {
                    *passing -= 1;
                    None
                }
                None => None,
            }
        };
        if let Some(hold) = held {
            hold.reached.add_permits(1);
            hold.released
                .acquire()
                .await
                .expect("never closed")
                .forget();
        }
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, HashMap<Call, (u32, Hold)>> {
        self.1
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lets `successes` more calls of `call` succeed, then fails the rest.
    pub fn fail_after(&self, call: Call, successes: u32) {
        self.lock().insert(call, successes);
    }

    /// Fails every further call of `call`.
    pub fn fail(&self, call: Call) {
        self.fail_after(call, 0);
    }

    /// Lets every call succeed again.
    pub fn heal(&self) {
        self.lock().clear();
    }

    fn check(&self, call: Call) -> Result<(), StorageError> {
        let mut faults = self.lock();
        match faults.get_mut(&call) {
            Some(0) => Err(StorageError::Unavailable(
                format!("{call:?} was made to fail").into(),
            )),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Call, u32>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Image bytes in a map.
#[derive(Clone, Debug, Default)]
pub struct MemoryBlobStore {
    objects: Arc<Mutex<BTreeMap<String, (Bytes, Timestamp)>>>,
    faults: Faults,
}

impl MemoryBlobStore {
    pub fn new(faults: Faults) -> Self {
        Self {
            objects: Arc::default(),
            faults,
        }
    }

    /// The keys of every finished object, in order.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Bytes, Timestamp)>> {
        self.objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An unfinished object: its pieces, out of sight until `finish`.
struct MemoryWriter {
    store: MemoryBlobStore,
    key: ObjectKey,
    pieces: Vec<Bytes>,
    /// Like a multipart upload's id, so that the journal is exercised.
    pending_id: String,
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn start_write(
        &self,
        key: &ObjectKey,
        _size_hint: Option<u64>,
    ) -> Result<Box<dyn BlobWriter>, StorageError> {
        self.faults.wait(Call::StartWrite).await;
        self.faults.check(Call::StartWrite)?;
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            key: key.clone(),
            pieces: Vec::new(),
            pending_id: uuid::Uuid::new_v4().to_string(),
        }))
    }

    /// The whole object is held until it is finished.
    fn write_memory(&self, size_hint: Option<u64>) -> u64 {
        size_hint.unwrap_or(u64::MAX)
    }

    async fn read(
        &self,
        key: &ObjectKey,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, StorageError> {
        self.faults.check(Call::Read)?;
        let (bytes, _) = self
            .lock()
            .get(key.as_str())
            .cloned()
            .ok_or(StorageError::NotFound)?;
        let start = usize::try_from(offset).map_err(StorageError::internal)?;
        let end = start
            .saturating_add(usize::try_from(length).map_err(StorageError::internal)?)
            .min(bytes.len());
        let range = bytes.slice(start.min(end)..end);
        let pieces: Vec<_> = (0..range.len())
            .step_by(READ_PIECE)
            .map(|at| Ok(range.slice(at..(at + READ_PIECE).min(range.len()))))
            .collect();
        Ok(futures::stream::iter(pieces).boxed())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.faults.check(Call::DeleteObject)?;
        self.lock().remove(key.as_str());
        Ok(())
    }

    async fn presign_read(&self, _request: &PresignRequest) -> Result<PresignedUrl, StorageError> {
        Err(StorageError::internal(
            "the in-memory store serves no download URLs",
        ))
    }

    fn max_presign_expiry(&self) -> Duration {
        Duration::ZERO
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        Ok(())
    }

    async fn object_size(&self, key: &ObjectKey) -> Result<Option<u64>, StorageError> {
        self.faults.check(Call::Read)?;
        Ok(self
            .lock()
            .get(key.as_str())
            .map(|(bytes, _)| bytes.len() as u64))
    }

    async fn presign_write(
        &self,
        _key: &ObjectKey,
        _expires_in: Duration,
        _size: WriteSize,
    ) -> Result<PresignedUrl, StorageError> {
        Err(StorageError::internal(
            "the in-memory store serves no upload URLs",
        ))
    }

    async fn delete_staged(&self, upload: &UploadId) -> Result<(), StorageError> {
        self.faults.check(Call::DeleteObject)?;
        let prefix = ObjectKey::staged_prefix(upload);
        self.lock().retain(|key, _| !key.starts_with(&prefix));
        Ok(())
    }

    async fn list_staged(&self) -> Result<Vec<(UploadId, Timestamp)>, StorageError> {
        let mut newest: HashMap<UploadId, Timestamp> = HashMap::new();
        for (key, (_, modified)) in self.lock().iter() {
            if let Some(id) = ObjectKey::parse_staged(key) {
                let time = newest.entry(id).or_insert(*modified);
                *time = (*time).max(*modified);
            }
        }
        Ok(newest.into_iter().collect())
    }

    async fn list_objects(&self) -> Result<Vec<StoredObject>, StorageError> {
        Ok(self
            .lock()
            .iter()
            .filter_map(|(key, (_, modified))| {
                let (image_id, object) = ObjectKey::parse(key)?;
                Some(StoredObject {
                    image_id,
                    object,
                    modified: *modified,
                })
            })
            .collect())
    }

    async fn abort_pending(&self, _key: &ObjectKey, _pending_id: &str) -> Result<(), StorageError> {
        // Unfinished writes live in their writers and go with them.
        Ok(())
    }

    async fn remove_unfinished_writes(
        &self,
        _older_than: Timestamp,
        _dry_run: bool,
    ) -> Result<Option<Vec<String>>, StorageError> {
        Ok(Some(Vec::new()))
    }
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        self.store.faults.check(Call::Write)?;
        self.pieces.push(chunk);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<(), StorageError> {
        self.store.faults.check(Call::Finish)?;
        let bytes = Bytes::from(self.pieces.concat());
        self.store
            .lock()
            .insert(self.key.as_str().to_owned(), (bytes, Timestamp::now()));
        Ok(())
    }

    async fn abort(self: Box<Self>) {}

    fn pending_id(&self) -> Option<String> {
        Some(self.pending_id.clone())
    }
}

/// Image records in maps; listings scan them newest first. Events are
/// numbered in one sequence under the same lock as the change.
#[derive(Clone, Debug, Default)]
pub struct MemoryMetadataStore {
    state: Arc<Mutex<Records>>,
    faults: Faults,
    /// The last event number written.
    signal: Arc<tokio::sync::watch::Sender<u64>>,
}

#[derive(Debug, Default)]
struct Records {
    /// By (creation time, id): the listing order, reversed.
    by_time: BTreeMap<(i64, ImageId), ImageRecord>,
    times: HashMap<ImageId, i64>,
    idempotency: HashMap<(UserId, String), ImageId>,
    pending: Vec<PendingWrite>,
    encodings: HashMap<ImageId, PendingEncodings>,
    sessions: HashMap<UploadId, UploadSessionRecord>,
    /// Removed sessions still charged to their owner: (owner, staged
    /// bytes, until when).
    tombstones: Vec<(UserId, u64, Timestamp)>,
    usage: HashMap<UserId, UsageRecord>,
    /// The moderation audit trail by position.
    actions: BTreeMap<Vec<u8>, ModerationAction>,
    /// The event log by number.
    events: BTreeMap<u64, ImageEvent>,
    /// The last number written, and the last one swept.
    last_event: u64,
    swept_through: u64,
}

impl MemoryMetadataStore {
    pub fn new(faults: Faults) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// Appends the event of a change made under `records`' lock.
    fn append(&self, records: &mut Records, kind: ChangeKind, record: &ImageRecord) {
        records.last_event += 1;
        let number = records.last_event;
        records
            .events
            .insert(number, ImageEvent::of_change(kind, record));
        self.signal.send_replace(number);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces `user`'s usage item by `next(item)` if it is still at
    /// `expected_revision` (`ConditionFailed` otherwise).
    fn usage_at(
        &self,
        user: &UserId,
        expected_revision: u64,
        next: impl FnOnce(&UsageRecord) -> UsageRecord,
    ) -> Result<(), StorageError> {
        let mut records = self.lock();
        let stored = records.usage.entry(user.clone()).or_default();
        if stored.revision != expected_revision {
            return Err(StorageError::ConditionFailed);
        }
        *stored = next(stored);
        Ok(())
    }
}

impl Records {
    fn get(&self, id: &ImageId) -> Option<&ImageRecord> {
        let time = self.times.get(id)?;
        self.by_time.get(&(*time, *id))
    }
}

/// A listing cursor: the creation time and id of the last record returned.
fn cursor_of(record: &ImageRecord) -> Vec<u8> {
    let mut cursor = record.create_time.as_micros().to_be_bytes().to_vec();
    cursor.extend_from_slice(record.id.as_bytes());
    cursor
}

fn parse_cursor(cursor: &[u8]) -> Result<(i64, ImageId), StorageError> {
    let (time, id) = cursor
        .split_at_checked(8)
        .filter(|(_, id)| id.len() == 16)
        .ok_or_else(|| StorageError::internal("a listing cursor of another store"))?;
    let time = i64::from_be_bytes(time.try_into().map_err(StorageError::internal)?);
    let id = ImageId::from_bytes(id.try_into().map_err(StorageError::internal)?);
    Ok((time, id))
}

#[async_trait]
impl MetadataStore for MemoryMetadataStore {
    async fn get_usage(&self, user: &UserId) -> Result<UsageRecord, StorageError> {
        Ok(self.lock().usage.get(user).cloned().unwrap_or_default())
    }

    async fn change_usage(
        &self,
        user: &UserId,
        change: &UsageChange,
        ceiling: Option<UsageCeiling>,
    ) -> Result<(), StorageError> {
        let mut records = self.lock();
        let usage = records.usage.entry(user.clone()).or_default();
        if usage.apply(change, ceiling) {
            Ok(())
        } else {
            Err(StorageError::ConditionFailed)
        }
    }

    async fn set_user_quota(
        &self,
        user: &UserId,
        quota: QuotaOverride,
    ) -> Result<(), StorageError> {
        let mut records = self.lock();
        let usage = records.usage.entry(user.clone()).or_default();
        usage.quota = quota;
        usage.revision += 1;
        Ok(())
    }

    async fn replace_usage(
        &self,
        user: &UserId,
        usage: &UsageRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        self.usage_at(user, expected_revision, |stored| stored.replaced_by(usage))
    }

    async fn list_usage(&self) -> Result<Vec<(UserId, UsageRecord)>, StorageError> {
        let records = self.lock();
        Ok(records
            .usage
            .iter()
            .map(|(user, usage)| (user.clone(), usage.clone()))
            .collect())
    }

    async fn set_erasure(
        &self,
        user: &UserId,
        erasure: &ErasureRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        self.usage_at(user, expected_revision, |stored| {
            stored.with_erasure(erasure)
        })
    }

    async fn upload_sessions_of(
        &self,
        owner: &UserId,
    ) -> Result<Vec<UploadSessionRecord>, StorageError> {
        let records = self.lock();
        Ok(records
            .sessions
            .values()
            .filter(|session| session.owner == *owner)
            .cloned()
            .collect())
    }

    async fn redact_events(&self, owner: &UserId) -> Result<usize, StorageError> {
        let mut records = self.lock();
        let mut redacted = 0;
        for event in records.events.values_mut() {
            if event.owner == *owner && event.image.take().is_some() {
                redacted += 1;
            }
        }
        Ok(redacted)
    }

    async fn keyed_image(
        &self,
        owner: &UserId,
        idempotency_key: &str,
    ) -> Result<Option<ImageRecord>, StorageError> {
        let records = self.lock();
        let key = (owner.clone(), idempotency_key.to_owned());
        Ok(records
            .idempotency
            .get(&key)
            .and_then(|id| records.get(id).cloned()))
    }

    async fn create(&self, record: &ImageRecord) -> Result<CreateOutcome, StorageError> {
        self.faults.check(Call::Create)?;
        let mut records = self.lock();
        if records.times.contains_key(&record.id) {
            return Err(StorageError::AlreadyExists);
        }
        if let Some(key) = &record.idempotency_key {
            let owner_key = (record.owner.clone(), key.clone());
            if let Some(existing) = records.idempotency.get(&owner_key) {
                let existing = records.get(existing).cloned().ok_or_else(|| {
                    StorageError::internal("an idempotency key of a missing record")
                })?;
                return Ok(CreateOutcome::IdempotencyKeyTaken(Box::new(existing)));
            }
            records.idempotency.insert(owner_key, record.id);
        }
        let time = record.create_time.as_micros();
        records.times.insert(record.id, time);
        records.by_time.insert((time, record.id), record.clone());
        self.append(&mut records, ChangeKind::Created, record);
        Ok(CreateOutcome::Created)
    }

    async fn get(&self, id: &ImageId) -> Result<Option<ImageRecord>, StorageError> {
        self.faults.check(Call::Get)?;
        Ok(self.lock().get(id).cloned())
    }

    async fn get_many(&self, ids: &[ImageId]) -> Result<Vec<ImageRecord>, StorageError> {
        self.faults.check(Call::Get)?;
        let records = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| records.get(id).cloned())
            .collect())
    }

    async fn replace(
        &self,
        record: &ImageRecord,
        expected_revision: u64,
        change: ChangeKind,
    ) -> Result<(), StorageError> {
        self.faults.check(Call::Replace)?;
        let mut records = self.lock();
        let time = *records
            .times
            .get(&record.id)
            .ok_or(StorageError::NotFound)?;
        let current = records
            .by_time
            .get_mut(&(time, record.id))
            .ok_or(StorageError::NotFound)?;
        if current.revision != expected_revision || record.create_time != current.create_time {
            return Err(StorageError::ConditionFailed);
        }
        *current = record.clone();
        self.append(&mut records, change, record);
        Ok(())
    }

    async fn delete(&self, id: &ImageId, owner: &UserId) -> Result<ImageRecord, StorageError> {
        self.faults.check(Call::DeleteRecord)?;
        let mut records = self.lock();
        let record = records.get(id).ok_or(StorageError::NotFound)?;
        if record.owner != *owner {
            return Err(StorageError::ConditionFailed);
        }
        let time = record.create_time.as_micros();
        let record = records
            .by_time
            .remove(&(time, *id))
            .ok_or(StorageError::NotFound)?;
        records.times.remove(id);
        if let Some(key) = &record.idempotency_key {
            records
                .idempotency
                .remove(&(record.owner.clone(), key.clone()));
        }
        self.append(&mut records, ChangeKind::Deleted, &record);
        Ok(record)
    }

    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StorageError> {
        self.faults.check(Call::List)?;
        let after = cursor.map(parse_cursor).transpose()?;
        let records = self.lock();
        let mut page = ListPage::default();
        let newest_first = records
            .by_time
            .iter()
            .rev()
            .filter(|(key, _)| after.is_none_or(|after| **key < after));
        for (_, record) in newest_first {
            page.records_read += 1;
            if !filter.matches(record) {
                continue;
            }
            if page.records.len() == limit {
                page.next_cursor = page.record_cursors.last().cloned();
                break;
            }
            page.record_cursors.push(cursor_of(record));
            page.records.push(record.clone());
        }
        Ok(page)
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        Ok(())
    }

    async fn list_for_review(
        &self,
        state: ImageState,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StorageError> {
        self.faults.check(Call::List)?;
        let records = self.lock();
        let mut in_state: Vec<(Vec<u8>, &ImageRecord)> = records
            .by_time
            .values()
            .filter(|r| r.state == state)
            .filter_map(|r| Some((review_position(r)?, r)))
            .filter(|(position, _)| cursor.is_none_or(|after| position.as_slice() > after))
            .collect();
        in_state.sort_by(|a, b| a.0.cmp(&b.0));
        let mut page = ListPage::default();
        for (position, record) in in_state {
            page.records_read += 1;
            if page.records.len() == limit {
                page.next_cursor = page.record_cursors.last().cloned();
                break;
            }
            page.record_cursors.push(position);
            page.records.push(record.clone());
        }
        Ok(page)
    }

    async fn find_similar(
        &self,
        hash: &PdqHash,
        max_distance: u32,
        limit: usize,
        per_band: usize,
    ) -> Result<SimilarFound, StorageError> {
        self.faults.check(Call::List)?;
        // The test double makes each bucket from every record, ordered as
        // the embedded index reads it (from the query's hash on, then the
        // rest, by hash and id), and keeps its share: the contract is the
        // result, which the stores' band indexes give without a scan.
        let records = self.lock();
        let hashed: Vec<(ImageId, PdqHash)> = records
            .by_time
            .values()
            .filter_map(|r| Some((r.id, similar::indexed_hash(r)?)))
            .collect();
        let mut candidates = Vec::new();
        let mut truncated = false;
        for (band, value) in hash.bands() {
            let mut bucket: Vec<(ImageId, PdqHash)> = hashed
                .iter()
                .filter(|(_, h)| h.as_bytes()[usize::from(band)] == value)
                .copied()
                .collect();
            bucket.sort_by_key(|(id, h)| (h.as_bytes() < hash.as_bytes(), *h.as_bytes(), *id));
            truncated |= bucket.len() > per_band;
            bucket.truncate(per_band);
            candidates.extend(bucket);
        }
        let images = similar::nearest(hash, candidates, max_distance, limit)
            .into_iter()
            .filter_map(|(id, _, distance)| {
                let record = records.get(&id)?.clone();
                Some(SimilarImage { record, distance })
            })
            .collect();
        Ok(SimilarFound { images, truncated })
    }

    async fn append_moderation_action(
        &self,
        action: &ModerationAction,
    ) -> Result<(), StorageError> {
        self.lock()
            .actions
            .insert(action_position(action), action.clone());
        Ok(())
    }

    async fn list_moderation_actions(
        &self,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ActionPage, StorageError> {
        let records = self.lock();
        let start = match cursor {
            Some(after) => Bound::Excluded(after.to_vec()),
            None => Bound::Unbounded,
        };
        let mut page = ActionPage::default();
        for action in records
            .actions
            .range((start, Bound::Unbounded))
            .map(|(_, a)| a)
        {
            if page.actions.len() == limit {
                page.next_cursor = page.actions.last().map(action_position);
                break;
            }
            page.actions.push(action.clone());
        }
        Ok(page)
    }

    async fn record_pending_write(&self, write: &PendingWrite) -> Result<(), StorageError> {
        self.faults.check(Call::RecordPendingWrite)?;
        let mut records = self.lock();
        if !records.pending.contains(write) {
            records.pending.push(write.clone());
        }
        Ok(())
    }

    async fn clear_pending_write(&self, write: &PendingWrite) -> Result<(), StorageError> {
        self.faults.check(Call::ClearPendingWrite)?;
        self.lock().pending.retain(|pending| pending != write);
        Ok(())
    }

    async fn pending_writes(
        &self,
        older_than: Timestamp,
    ) -> Result<Vec<PendingWrite>, StorageError> {
        Ok(self
            .lock()
            .pending
            .iter()
            .filter(|write| write.started < older_than)
            .cloned()
            .collect())
    }

    async fn record_pending_encodings(
        &self,
        pending: &PendingEncodings,
    ) -> Result<(), StorageError> {
        self.faults.check(Call::RecordPendingWrite)?;
        self.lock()
            .encodings
            .insert(pending.image_id, pending.clone());
        Ok(())
    }

    async fn clear_pending_encodings(&self, image_id: &ImageId) -> Result<(), StorageError> {
        self.faults.check(Call::ClearPendingWrite)?;
        self.lock().encodings.remove(image_id);
        Ok(())
    }

    async fn pending_encodings(
        &self,
        older_than: Timestamp,
    ) -> Result<Vec<PendingEncodings>, StorageError> {
        Ok(self
            .lock()
            .encodings
            .values()
            .filter(|pending| pending.started < older_than)
            .cloned()
            .collect())
    }

    async fn create_upload_session(
        &self,
        session: &UploadSessionRecord,
        quota: SessionQuota,
    ) -> Result<SessionAdmission, StorageError> {
        let mut records = self.lock();
        if records.sessions.contains_key(&session.id) {
            return Err(StorageError::AlreadyExists);
        }
        let now = Timestamp::now();
        records.tombstones.retain(|(_, _, until)| *until > now);
        let open = records
            .sessions
            .values()
            .filter(|s| {
                s.owner == session.owner
                    && (s.is_open(now) || (s.is_closed() && s.held_after_close(now).is_some()))
            })
            .map(|s| s.staged_bytes)
            .chain(
                records
                    .tombstones
                    .iter()
                    .filter(|(owner, _, _)| *owner == session.owner)
                    .map(|(_, staged, _)| *staged),
            )
            .chain([session.staged_bytes]);
        let admission = quota.admits(open);
        if admission == SessionAdmission::Created {
            records.sessions.insert(session.id, session.clone());
        }
        Ok(admission)
    }

    async fn get_upload_session(
        &self,
        id: &UploadId,
    ) -> Result<Option<UploadSessionRecord>, StorageError> {
        Ok(self.lock().sessions.get(id).cloned())
    }

    async fn replace_upload_session(
        &self,
        session: &UploadSessionRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        let mut records = self.lock();
        let stored = records
            .sessions
            .get_mut(&session.id)
            .ok_or(StorageError::NotFound)?;
        if stored.revision != expected_revision {
            return Err(StorageError::ConditionFailed);
        }
        *stored = session.clone();
        Ok(())
    }

    async fn delete_upload_session(&self, id: &UploadId) -> Result<(), StorageError> {
        let mut records = self.lock();
        if let Some(removed) = records.sessions.remove(id)
            && let Some(until) = removed.held_after_close(Timestamp::now())
        {
            let tombstone = (removed.owner, removed.staged_bytes, until);
            records.tombstones.push(tombstone);
        }
        Ok(())
    }

    async fn expired_upload_sessions(
        &self,
        now: Timestamp,
    ) -> Result<Vec<UploadSessionRecord>, StorageError> {
        Ok(self
            .lock()
            .sessions
            .values()
            .filter(|session| session.is_expired(now))
            .cloned()
            .collect())
    }

    async fn remove_stale_index_entries(
        &self,
        _older_than: Timestamp,
        _dry_run: bool,
    ) -> Result<usize, StorageError> {
        // The records are their own index.
        Ok(0)
    }

    async fn read_events(
        &self,
        start: &EventStart,
        limit: usize,
    ) -> Result<EventRead, StorageError> {
        let records = self.lock();
        let after = match start {
            EventStart::Oldest => records.swept_through,
            EventStart::After(position) => match <[u8; 8]>::try_from(&position[..]) {
                Ok(bytes) => u64::from_be_bytes(bytes),
                Err(_) => return Ok(EventRead::Malformed),
            },
            // The log is read by number, not by time.
            EventStart::Since(_) => return Ok(EventRead::Malformed),
        };
        if after < records.swept_through {
            return Ok(EventRead::Expired {
                oldest: records.swept_through.to_be_bytes().to_vec(),
            });
        }
        // A position past the last event was not made here: read from, it
        // would skip every event until the log reached it.
        if after > records.last_event {
            return Ok(EventRead::Malformed);
        }
        Ok(EventRead::Events(
            records
                .events
                .range(after.saturating_add(1)..)
                .take(limit)
                .map(|(number, event)| StoredEvent {
                    position: number.to_be_bytes().to_vec(),
                    event: event.clone(),
                })
                .collect(),
        ))
    }

    async fn event_head(&self) -> Result<Vec<u8>, StorageError> {
        Ok(self.lock().last_event.to_be_bytes().to_vec())
    }

    async fn remove_expired_events(&self, older_than: Timestamp) -> Result<usize, StorageError> {
        let mut records = self.lock();
        let expired: Vec<u64> = records
            .events
            .iter()
            .take_while(|(_, event)| event.time < older_than)
            .map(|(number, _)| *number)
            .collect();
        for number in &expired {
            records.events.remove(number);
        }
        if let Some(&last) = expired.last() {
            records.swept_through = last;
        }
        Ok(expired.len())
    }

    fn event_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.signal.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::contract;

    #[tokio::test]
    async fn the_memory_blob_store_keeps_the_contract() {
        contract::blob_store(&MemoryBlobStore::default()).await;
    }

    #[tokio::test]
    async fn the_memory_metadata_store_keeps_the_contract() {
        contract::metadata_store(&MemoryMetadataStore::default()).await;
    }

    #[tokio::test]
    async fn a_failing_call_fails_after_its_successes_and_heals() {
        let faults = Faults::default();
        let store = MemoryBlobStore::new(faults.clone());
        let key = ObjectKey::new(&ImageId::new(), &crate::domain::VariantName::original());
        faults.fail_after(Call::DeleteObject, 1);
        assert!(store.delete(&key).await.is_ok());
        assert!(matches!(
            store.delete(&key).await,
            Err(StorageError::Unavailable(_))
        ));
        faults.heal();
        assert!(store.delete(&key).await.is_ok());
    }
}
