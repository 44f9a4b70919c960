//! Image records in redb, an embedded transactional B-tree store.
//!
//! Every listing filter is served from one index read in key order: for
//! each combination of the equality filters (owner, tag, location, content
//! type) a record has one index entry (one per tag for combinations with a
//! tag), keyed `combination | values | create_time | id`. A listing reads
//! the keys of its combination backwards between the time bounds, so it
//! reads as many index entries and records as it returns (plus one entry to
//! know whether another page follows), whatever the filters. Records and
//! their entries change in one transaction, so the index is never stale.
//!
//! The images not `Active` have one more entry each, `REVIEW | state |
//! state_time | id`, which the moderators' review reads in key order.
//! A record with a PDQ hash has one entry per band of it (see
//! [`crate::domain::similar`]), `PDQ | band | value | hash | id`: a search
//! for similar images reads the 32 key ranges of its hash's bands (each up
//! to its share of `--max-similar-candidates`, from the query's own hash on,
//! so that its exact copies come first, then from the range's start) and
//! computes the distances from the keys, reading only the matches' records.
//! The moderation audit trail is a table of its own, keyed by time and id,
//! only ever appended to.
//!
//! Each change's event is written in the change's transaction, at the next
//! number of one sequence ([`EVENTS`]): a change and its event are
//! committed together or not at all, and the sequence is the log's order.
//! A position is that number (8 bytes, big-endian). After each commit the
//! [`tokio::sync::watch`] signal carries the last number, so watchers in
//! this process wake at once.
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::domain::audit::{
    ActionPage, ModerationAction, ORDER_LEN, action_position, review_position,
};
use crate::domain::event::{ChangeKind, EventRead, EventStart, ImageEvent, StoredEvent};
use crate::domain::image::{ImageState, Timestamp};
use crate::domain::listing::ListFilter;
use crate::domain::ports::{
    CreateOutcome, ListPage, MetadataStore, PendingEncodings, PendingWrite, SessionAdmission,
    SessionQuota, StorageError,
};
use crate::domain::session::{UploadId, UploadSessionRecord};
use crate::domain::similar::{self, HASH_BYTES, PdqHash, SimilarFound, SimilarImage};
use crate::domain::usage::{ErasureRecord, QuotaOverride, UsageCeiling, UsageChange, UsageRecord};
use crate::domain::{ImageId, ImageRecord, UserId};

/// image id (16 bytes) → the record as JSON.
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// Index entries (see the module documentation); no value.
const INDEX: TableDefinition<&[u8], ()> = TableDefinition::new("index");
/// owner + idempotency key → image id.
const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");
/// image id + pending id → the journaled unfinished write, as JSON.
const PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending_writes");
/// image id → the encodings it still needs, as JSON.
const ENCODINGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending_encodings");
/// upload id (16 bytes) → the upload session as JSON.
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("upload_sessions");
/// Open upload sessions by owner: (owner, expiry, id) → the bytes the
/// session may stage. An entry goes when its session commits or is
/// removed, unless the session's part URLs still live: it is then keyed
/// by [`UploadSessionRecord::charge_until`] instead (a tombstone). An
/// expired entry is past the range a count reads; a few are swept by each
/// new session of their owner.
const OPEN_SESSIONS: TableDefinition<&[u8], u64> = TableDefinition::new("open_upload_sessions");
/// user id → the user's usage item as JSON (see [`UsageRecord`]).
const USAGE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("usage");
/// The moderation audit trail: time and id (see
/// [`crate::domain::audit::action_position`]) → the action as JSON.
const ACTIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("moderation_actions");
/// The event log: sequence number → the event as JSON.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// The log's bookkeeping: [`SWEPT_THROUGH`] → the last number removed by
/// the retention sweep (0 when none was); and [`REMOVED_LEFT_BANDS`].
const EVENT_MARKS: TableDefinition<&str, u64> = TableDefinition::new("event_marks");
const SWEPT_THROUGH: &str = "swept_through";
/// Present once the band entries of removed images were taken out of the
/// index ([`remove_bands_of_removed`]).
const REMOVED_LEFT_BANDS: &str = "removed_left_bands";
/// A position is a sequence number.
const POSITION_LEN: usize = 8;

const BY_OWNER: u8 = 1;
const BY_TAG: u8 = 2;
const BY_LOCATION: u8 = 4;
const BY_CONTENT_TYPE: u8 = 8;
/// The first byte of the review entries of the records not `Active`
/// (above every combination of the listing filters).
const REVIEW: u8 = 0x40;
/// The first byte of the PDQ band entries.
const PDQ: u8 = 0x41;
/// A PDQ band entry: [`PDQ`], band, value, hash, id.
const PDQ_KEY_LEN: usize = 3 + HASH_BYTES + 16;
/// Page cache of the database. redb's default (1 GiB) would let the
/// process's memory grow with the catalogue; listings touch few pages.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// A cursor is the time and id suffix of the last index key returned.
const CURSOR_LEN: usize = 8 + 16;

/// Image records in a redb file.
pub struct EmbeddedMetadataStore {
    db: Arc<Database>,
    /// The last event number committed.
    events: Arc<tokio::sync::watch::Sender<u64>>,
}

impl EmbeddedMetadataStore {
    /// Opens (or creates) the database file. Only one process may hold it.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(StorageError::internal)?;
        let txn = db.begin_write().map_err(StorageError::internal)?;
        {
            txn.open_table(RECORDS).map_err(StorageError::internal)?;
            txn.open_table(INDEX).map_err(StorageError::internal)?;
            txn.open_table(IDEMPOTENCY)
                .map_err(StorageError::internal)?;
            txn.open_table(PENDING).map_err(StorageError::internal)?;
            txn.open_table(ENCODINGS).map_err(StorageError::internal)?;
            txn.open_table(SESSIONS).map_err(StorageError::internal)?;
            txn.open_table(OPEN_SESSIONS)
                .map_err(StorageError::internal)?;
            txn.open_table(USAGE).map_err(StorageError::internal)?;
            txn.open_table(EVENTS).map_err(StorageError::internal)?;
            txn.open_table(ACTIONS).map_err(StorageError::internal)?;
            txn.open_table(EVENT_MARKS)
                .map_err(StorageError::internal)?;
        }
        let last = last_event(&txn).map_err(StorageError::internal)?;
        remove_bands_of_removed(&txn).map_err(StorageError::internal)?;
        txn.commit().map_err(StorageError::internal)?;
        Ok(Self {
            db: Arc::new(db),
            events: Arc::new(tokio::sync::watch::Sender::new(last)),
        })
    }

    /// Runs a write transaction that appends events and returns the number
    /// of the last one it committed, and wakes this process's watchers.
    async fn write_events<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<Result<(T, Option<u64>), StorageError>, redb::Error>
            + Send
            + 'static,
    {
        let (value, last) = self.run(work).await?;
        if let Some(last) = last {
            self.events.send_if_modified(|seen| {
                let newer = last > *seen;
                *seen = (*seen).max(last);
                newer
            });
        }
        Ok(value)
    }

    /// Adds many records in one transaction (bulk imports, benchmarks):
    /// each as [`MetadataStore::create`] would, all or none.
    pub async fn import(&self, records: Vec<ImageRecord>) -> Result<(), StorageError> {
        self.write_events(move |db| {
            let txn = db.begin_write()?;
            let mut last = None;
            for record in &records {
                let bytes = match encode(record) {
                    Ok(bytes) => bytes,
                    Err(error) => return Ok(Err(error)),
                };
                match insert(&txn, record, &bytes)? {
                    Ok(CreateOutcome::Created) => {}
                    Ok(CreateOutcome::IdempotencyKeyTaken(_)) => {
                        return Ok(Err(StorageError::AlreadyExists));
                    }
                    Err(error) => return Ok(Err(error)),
                }
                match append_event(&txn, &ImageEvent::of_change(ChangeKind::Created, record))? {
                    Ok(number) => last = Some(number),
                    Err(error) => return Ok(Err(error)),
                }
            }
            txn.commit()?;
            Ok(Ok(((), last)))
        })
        .await
    }

    /// Removes one entry of `table`.
    async fn remove(
        &self,
        table: TableDefinition<'static, &'static [u8], &'static [u8]>,
        key: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.run(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(table)?.remove(key.as_slice())?;
            txn.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    /// Every JSON value of `table` that `keep` accepts (for the repair
    /// pass: it reads the whole table).
    async fn scan_json<T, F>(
        &self,
        table: TableDefinition<'static, &'static [u8], &'static [u8]>,
        keep: F,
    ) -> Result<Vec<T>, StorageError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(&T) -> bool + Send + 'static,
    {
        self.run(move |db| {
            let txn = db.begin_read()?;
            let mut found = Vec::new();
            for entry in txn.open_table(table)?.iter()? {
                let (_, value) = entry?;
                match serde_json::from_slice::<T>(value.value()) {
                    Ok(item) if keep(&item) => found.push(item),
                    Ok(_) => {}
                    Err(error) => return Ok(Err(StorageError::internal(error))),
                }
            }
            Ok(Ok(found))
        })
        .await
    }

    /// Changes the user's usage item in one transaction: `change` returns
    /// the error that leaves it as it was.
    async fn update_usage<F>(&self, user: &UserId, change: F) -> Result<(), StorageError>
    where
        F: FnOnce(&mut UsageRecord) -> Result<(), StorageError> + Send + 'static,
    {
        let key = user.as_str().as_bytes().to_vec();
        self.run(move |db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(USAGE)?;
                let mut usage = match table.get(key.as_slice())? {
                    None => UsageRecord::default(),
                    Some(stored) => match serde_json::from_slice(stored.value()) {
                        Ok(usage) => usage,
                        Err(error) => return Ok(Err(StorageError::internal(error))),
                    },
                };
                if let Err(error) = change(&mut usage) {
                    return Ok(Err(error));
                }
                let value = match serde_json::to_vec(&usage) {
                    Ok(value) => value,
                    Err(error) => return Ok(Err(StorageError::internal(error))),
                };
                table.insert(key.as_slice(), value.as_slice())?;
            }
            txn.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    /// Runs blocking database work off the async workers.
    async fn run<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<Result<T, StorageError>, redb::Error> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(StorageError::internal)?
            .map_err(StorageError::internal)?
    }
}

/// Writes a new record and its index entries into `txn`, unless its id or
/// idempotency key is taken.
fn insert(
    txn: &redb::WriteTransaction,
    record: &ImageRecord,
    bytes: &[u8],
) -> Result<Result<CreateOutcome, StorageError>, redb::Error> {
    let mut records = txn.open_table(RECORDS)?;
    if records.get(record.id.as_bytes().as_slice())?.is_some() {
        return Ok(Err(StorageError::AlreadyExists));
    }
    let mut idempotency = txn.open_table(IDEMPOTENCY)?;
    if let Some(key) = &record.idempotency_key {
        let key = idempotency_key(&record.owner, key);
        if let Some(existing) = idempotency.get(key.as_slice())? {
            let existing_record = records.get(existing.value())?;
            return Ok(match existing_record {
                Some(found) => {
                    decode(found.value()).map(|r| CreateOutcome::IdempotencyKeyTaken(Box::new(r)))
                }
                None => Err(StorageError::internal(
                    "idempotency entry without its record",
                )),
            });
        }
        idempotency.insert(key.as_slice(), record.id.as_bytes().as_slice())?;
    }
    let mut index = txn.open_table(INDEX)?;
    for key in index_keys(record) {
        index.insert(key.as_slice(), ())?;
    }
    records.insert(record.id.as_bytes().as_slice(), bytes)?;
    Ok(Ok(CreateOutcome::Created))
}

/// The number of the last event written: the last in the log, or the last
/// swept when the log is empty.
fn last_event<T: EventTables>(txn: &T) -> Result<u64, redb::Error> {
    if let Some((number, _)) = txn.events()?.last()? {
        return Ok(number.value());
    }
    txn.swept_through()
}

/// The two event tables, from a read or a write transaction.
trait EventTables {
    fn events(&self) -> Result<impl ReadableTable<u64, &'static [u8]>, redb::Error>;
    fn swept_through(&self) -> Result<u64, redb::Error>;
}

impl EventTables for redb::ReadTransaction {
    fn events(&self) -> Result<impl ReadableTable<u64, &'static [u8]>, redb::Error> {
        Ok(self.open_table(EVENTS)?)
    }
    fn swept_through(&self) -> Result<u64, redb::Error> {
        Ok(self
            .open_table(EVENT_MARKS)?
            .get(SWEPT_THROUGH)?
            .map_or(0, |v| v.value()))
    }
}

impl EventTables for redb::WriteTransaction {
    fn events(&self) -> Result<impl ReadableTable<u64, &'static [u8]>, redb::Error> {
        Ok(self.open_table(EVENTS)?)
    }
    fn swept_through(&self) -> Result<u64, redb::Error> {
        Ok(self
            .open_table(EVENT_MARKS)?
            .get(SWEPT_THROUGH)?
            .map_or(0, |v| v.value()))
    }
}

/// Appends `event` to the log inside `txn`, at the next number, and
/// returns the number.
fn append_event(
    txn: &redb::WriteTransaction,
    event: &ImageEvent,
) -> Result<Result<u64, StorageError>, redb::Error> {
    let value = match serde_json::to_vec(event) {
        Ok(value) => value,
        Err(error) => return Ok(Err(StorageError::internal(error))),
    };
    let next = last_event(txn)? + 1;
    txn.open_table(EVENTS)?.insert(next, value.as_slice())?;
    Ok(Ok(next))
}

fn position(number: u64) -> Vec<u8> {
    number.to_be_bytes().to_vec()
}

fn encode(record: &ImageRecord) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(record).map_err(StorageError::internal)
}

fn decode(bytes: &[u8]) -> Result<ImageRecord, StorageError> {
    serde_json::from_slice(bytes).map_err(StorageError::internal)
}

/// Appends a length-prefixed value, so concatenated values cannot be
/// confused with one another.
fn push_value(key: &mut Vec<u8>, value: &str) {
    key.extend_from_slice(&(value.len() as u32).to_be_bytes());
    key.extend_from_slice(value.as_bytes());
}

/// The start of every [`OPEN_SESSIONS`] key of `owner`.
fn open_session_prefix(owner: &UserId) -> Vec<u8> {
    let mut key = Vec::new();
    push_value(&mut key, owner.as_str());
    key
}

/// The [`OPEN_SESSIONS`] key of `session`.
fn open_session_key(session: &UploadSessionRecord) -> Vec<u8> {
    open_entry_key(session, session.expire_time)
}

/// The [`OPEN_SESSIONS`] key of `session` counted until `until`.
fn open_entry_key(session: &UploadSessionRecord, until: Timestamp) -> Vec<u8> {
    let mut key = open_session_prefix(&session.owner);
    key.extend_from_slice(&time_bytes(until));
    key.extend_from_slice(session.id.as_bytes());
    key
}

/// Past [`OPEN_SESSIONS`] entries removed by each new session of their
/// owner: more than one per session, so they cannot pile up.
const SWEPT_PER_SESSION: usize = 4;

/// `session` closes (commits or goes): its open entry goes, and if its
/// part URLs still live its charge stays as a tombstone until they are
/// over ([`UploadSessionRecord::charge_until`]).
fn close_open_entry(
    txn: &redb::WriteTransaction,
    session: &UploadSessionRecord,
) -> Result<(), redb::Error> {
    let mut open = txn.open_table(OPEN_SESSIONS)?;
    open.remove(open_session_key(session).as_slice())?;
    if let Some(until) = session.held_after_close(Timestamp::now()) {
        open.insert(
            open_entry_key(session, until).as_slice(),
            session.staged_bytes,
        )?;
    }
    Ok(())
}

/// Times as big-endian with the sign bit flipped sort like the numbers.
fn time_bytes(time: Timestamp) -> [u8; 8] {
    ((time.as_micros() as u64) ^ (1 << 63)).to_be_bytes()
}

/// The part of an index key before time and id.
fn index_prefix(
    combination: u8,
    owner: &str,
    tag: &str,
    location: &str,
    content_type: &str,
) -> Vec<u8> {
    let mut key = vec![combination];
    for (bit, value) in [
        (BY_OWNER, owner),
        (BY_TAG, tag),
        (BY_LOCATION, location),
        (BY_CONTENT_TYPE, content_type),
    ] {
        if combination & bit != 0 {
            push_value(&mut key, value);
        }
    }
    key
}

/// Every index key of a record.
fn index_keys(record: &ImageRecord) -> Vec<Vec<u8>> {
    let suffix = [&time_bytes(record.create_time)[..], record.id.as_bytes()].concat();
    let mut keys = Vec::new();
    for combination in 0..16u8 {
        if combination & BY_LOCATION != 0 && record.location.is_empty() {
            continue;
        }
        let tags: Vec<&str> = if combination & BY_TAG != 0 {
            record.tags.iter().map(String::as_str).collect()
        } else {
            vec![""]
        };
        for tag in tags {
            let mut key = index_prefix(
                combination,
                record.owner.as_str(),
                tag,
                &record.location,
                &record.content_type,
            );
            key.extend_from_slice(&suffix);
            keys.push(key);
        }
    }
    if let Some(order) = review_position(record) {
        keys.push([&review_prefix(record.state)[..], &order].concat());
    }
    if let Some(hash) = similar::indexed_hash(record) {
        keys.extend(band_keys(&hash, &record.id));
    }
    keys
}

/// The 32 PDQ band entries of an image with `hash`.
fn band_keys<'a>(hash: &'a PdqHash, id: &'a ImageId) -> impl Iterator<Item = Vec<u8>> + 'a {
    hash.bands().map(move |(band, value)| {
        [&[PDQ, band, value][..], hash.as_bytes(), id.as_bytes()].concat()
    })
}

/// Every index entry `record` may have in the store: [`index_keys`], and
/// for a removed image with a hash its band entries, which stores written
/// before removed images left the band index still hold. Removing an
/// entry that is not there does nothing.
fn stored_index_keys(record: &ImageRecord) -> Vec<Vec<u8>> {
    let mut keys = index_keys(record);
    if similar::indexed_hash(record).is_none()
        && let Some(hash) = similar::hash_of(record)
    {
        keys.extend(band_keys(&hash, &record.id));
    }
    keys
}

/// Removes the band entries of removed images, which a store written
/// before removed images left the band index holds: once, at the first
/// open that finds them ([`REMOVED_LEFT_BANDS`] then marks it done).
fn remove_bands_of_removed(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut marks = txn.open_table(EVENT_MARKS)?;
    if marks.get(REMOVED_LEFT_BANDS)?.is_some() {
        return Ok(());
    }
    let mut stale = Vec::new();
    for entry in txn.open_table(RECORDS)?.iter()? {
        let (_, value) = entry?;
        let Ok(record) = decode(value.value()) else {
            continue;
        };
        if similar::indexed_hash(&record).is_none()
            && let Some(hash) = similar::hash_of(&record)
        {
            stale.extend(band_keys(&hash, &record.id));
        }
    }
    let mut index = txn.open_table(INDEX)?;
    for key in &stale {
        index.remove(key.as_slice())?;
    }
    if !stale.is_empty() {
        tracing::info!(
            entries = stale.len(),
            "removed images' entries taken out of the PDQ band index"
        );
    }
    marks.insert(REMOVED_LEFT_BANDS, 1)?;
    Ok(())
}

/// The start of every review entry of `state`.
fn review_prefix(state: ImageState) -> [u8; 2] {
    let index = ImageState::ALL
        .iter()
        .position(|s| *s == state)
        .unwrap_or_default();
    [REVIEW, index as u8]
}

fn idempotency_key(owner: &UserId, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    push_value(&mut out, owner.as_str());
    push_value(&mut out, key);
    out
}

fn pending_key(write: &PendingWrite) -> Vec<u8> {
    [&write.image_id.as_bytes()[..], write.pending_id.as_bytes()].concat()
}

fn image_id_from_index_key(key: &[u8]) -> ImageId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&key[key.len() - 16..]);
    ImageId::from_bytes(id)
}

#[async_trait]
impl MetadataStore for EmbeddedMetadataStore {
    async fn get_usage(&self, user: &UserId) -> Result<UsageRecord, StorageError> {
        let key = user.as_str().as_bytes().to_vec();
        self.run(move |db| {
            let txn = db.begin_read()?;
            let usage = match txn.open_table(USAGE)?.get(key.as_slice())? {
                None => Ok(UsageRecord::default()),
                Some(stored) => {
                    serde_json::from_slice(stored.value()).map_err(StorageError::internal)
                }
            };
            Ok(usage)
        })
        .await
    }

    async fn change_usage(
        &self,
        user: &UserId,
        change: &UsageChange,
        ceiling: Option<UsageCeiling>,
    ) -> Result<(), StorageError> {
        let change = change.clone();
        self.update_usage(user, move |usage| {
            if usage.apply(&change, ceiling) {
                Ok(())
            } else {
                Err(StorageError::ConditionFailed)
            }
        })
        .await
    }

    async fn set_user_quota(
        &self,
        user: &UserId,
        quota: QuotaOverride,
    ) -> Result<(), StorageError> {
        self.update_usage(user, move |usage| {
            usage.quota = quota;
            usage.revision += 1;
            Ok(())
        })
        .await
    }

    async fn replace_usage(
        &self,
        user: &UserId,
        usage: &UsageRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        let recomputed = usage.clone();
        self.update_usage(user, move |stored| {
            if stored.revision != expected_revision {
                return Err(StorageError::ConditionFailed);
            }
            *stored = stored.replaced_by(&recomputed);
            Ok(())
        })
        .await
    }

    async fn list_usage(&self) -> Result<Vec<(UserId, UsageRecord)>, StorageError> {
        self.run(move |db| {
            let txn = db.begin_read()?;
            let mut found = Vec::new();
            for entry in txn.open_table(USAGE)?.iter()? {
                let (key, value) = entry?;
                let user = std::str::from_utf8(key.value())
                    .ok()
                    .and_then(|text| UserId::parse(text).ok());
                let usage = serde_json::from_slice::<UsageRecord>(value.value());
                match (user, usage) {
                    (Some(user), Ok(usage)) => found.push((user, usage)),
                    (_, Err(error)) => return Ok(Err(StorageError::internal(error))),
                    (None, _) => {
                        return Ok(Err(StorageError::internal("a usage item of no valid user")));
                    }
                }
            }
            Ok(Ok(found))
        })
        .await
    }

    async fn set_erasure(
        &self,
        user: &UserId,
        erasure: &ErasureRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        let erasure = erasure.clone();
        self.update_usage(user, move |stored| {
            if stored.revision != expected_revision {
                return Err(StorageError::ConditionFailed);
            }
            *stored = stored.with_erasure(&erasure);
            Ok(())
        })
        .await
    }

    async fn upload_sessions_of(
        &self,
        owner: &UserId,
    ) -> Result<Vec<UploadSessionRecord>, StorageError> {
        let owner = owner.clone();
        self.scan_json(SESSIONS, move |session: &UploadSessionRecord| {
            session.owner == owner
        })
        .await
    }

    async fn redact_events(&self, owner: &UserId) -> Result<usize, StorageError> {
        let owner = owner.clone();
        // One transaction: a reader sees the log before or after, whole.
        self.run(move |db| {
            let txn = db.begin_write()?;
            let mut redacted = 0;
            {
                let mut events = txn.open_table(EVENTS)?;
                let mut changed = Vec::new();
                for entry in events.iter()? {
                    let (number, value) = entry?;
                    let mut event = match serde_json::from_slice::<ImageEvent>(value.value()) {
                        Ok(event) => event,
                        Err(error) => return Ok(Err(StorageError::internal(error))),
                    };
                    if event.owner == owner && event.image.take().is_some() {
                        match serde_json::to_vec(&event) {
                            Ok(bytes) => changed.push((number.value(), bytes)),
                            Err(error) => return Ok(Err(StorageError::internal(error))),
                        }
                    }
                }
                for (number, bytes) in changed {
                    events.insert(number, bytes.as_slice())?;
                    redacted += 1;
                }
            }
            txn.commit()?;
            Ok(Ok(redacted))
        })
        .await
    }

    async fn record_pending_write(&self, write: &PendingWrite) -> Result<(), StorageError> {
        let key = pending_key(write);
        let value = serde_json::to_vec(write).map_err(StorageError::internal)?;
        self.run(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(PENDING)?
                .insert(key.as_slice(), value.as_slice())?;
            txn.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    async fn clear_pending_write(&self, write: &PendingWrite) -> Result<(), StorageError> {
        self.remove(PENDING, pending_key(write)).await
    }

    async fn pending_writes(
        &self,
        older_than: Timestamp,
    ) -> Result<Vec<PendingWrite>, StorageError> {
        self.scan_json(PENDING, move |write: &PendingWrite| {
            write.started < older_than
        })
        .await
    }

    async fn record_pending_encodings(
        &self,
        pending: &PendingEncodings,
    ) -> Result<(), StorageError> {
        let key = pending.image_id.as_bytes().to_vec();
        let value = serde_json::to_vec(pending).map_err(StorageError::internal)?;
        self.run(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(ENCODINGS)?
                .insert(key.as_slice(), value.as_slice())?;
            txn.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    async fn clear_pending_encodings(&self, image_id: &ImageId) -> Result<(), StorageError> {
        self.remove(ENCODINGS, image_id.as_bytes().to_vec()).await
    }

    async fn pending_encodings(
        &self,
        older_than: Timestamp,
    ) -> Result<Vec<PendingEncodings>, StorageError> {
        self.scan_json(ENCODINGS, move |pending: &PendingEncodings| {
            pending.started < older_than
        })
        .await
    }

    async fn create_upload_session(
        &self,
        session: &UploadSessionRecord,
        quota: SessionQuota,
    ) -> Result<SessionAdmission, StorageError> {
        let id = *session.id.as_bytes();
        let value = serde_json::to_vec(session).map_err(StorageError::internal)?;
        let owner = open_session_prefix(&session.owner);
        let entry = open_session_key(session);
        let staged = session.staged_bytes;
        self.run(move |db| {
            let txn = db.begin_write()?;
            let admission = {
                let mut sessions = txn.open_table(SESSIONS)?;
                if sessions.get(id.as_slice())?.is_some() {
                    return Ok(Err(StorageError::AlreadyExists));
                }
                let mut open = txn.open_table(OPEN_SESSIONS)?;
                let mut from = owner.clone();
                from.extend_from_slice(&time_bytes(Timestamp::now()));
                // Entries past their time count no more: a few go with
                // each new session, so they do not pile up.
                let past: Vec<Vec<u8>> = open
                    .range(owner.as_slice()..from.as_slice())?
                    .take(SWEPT_PER_SESSION)
                    .map(|found| found.map(|(key, _)| key.value().to_vec()))
                    .collect::<Result<_, _>>()?;
                for key in past {
                    open.remove(key.as_slice())?;
                }
                let mut to = owner;
                to.extend_from_slice(&[0xff; 8 + 16]);
                let mut held = Vec::new();
                for found in open
                    .range(from.as_slice()..=to.as_slice())?
                    .take(quota.max_open as usize)
                {
                    held.push(found?.1.value());
                }
                let admission = quota.admits(held.into_iter().chain([staged]));
                if admission == SessionAdmission::Created {
                    open.insert(entry.as_slice(), staged)?;
                    sessions.insert(id.as_slice(), value.as_slice())?;
                }
                admission
            };
            txn.commit()?;
            Ok(Ok(admission))
        })
        .await
    }

    async fn get_upload_session(
        &self,
        id: &UploadId,
    ) -> Result<Option<UploadSessionRecord>, StorageError> {
        let id = *id.as_bytes();
        self.run(move |db| {
            let txn = db.begin_read()?;
            let sessions = txn.open_table(SESSIONS)?;
            let found = sessions.get(id.as_slice())?;
            Ok(found
                .map(|value| serde_json::from_slice(value.value()))
                .transpose()
                .map_err(StorageError::internal))
        })
        .await
    }

    async fn replace_upload_session(
        &self,
        session: &UploadSessionRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        let id = *session.id.as_bytes();
        let value = serde_json::to_vec(session).map_err(StorageError::internal)?;
        let (closed, closing) = (session.is_closed(), session.clone());
        self.run(move |db| {
            let txn = db.begin_write()?;
            {
                let mut sessions = txn.open_table(SESSIONS)?;
                let current = match sessions.get(id.as_slice())? {
                    None => return Ok(Err(StorageError::NotFound)),
                    Some(stored) => serde_json::from_slice::<UploadSessionRecord>(stored.value()),
                };
                match current {
                    Ok(current) if current.revision == expected_revision => {}
                    Ok(_) => return Ok(Err(StorageError::ConditionFailed)),
                    Err(error) => return Ok(Err(StorageError::internal(error))),
                }
                sessions.insert(id.as_slice(), value.as_slice())?;
                if closed {
                    close_open_entry(&txn, &closing)?;
                }
            }
            txn.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    async fn delete_upload_session(&self, id: &UploadId) -> Result<(), StorageError> {
        let id = *id.as_bytes();
        self.run(move |db| {
            let txn = db.begin_write()?;
            {
                let mut sessions = txn.open_table(SESSIONS)?;
                let removed = sessions.remove(id.as_slice())?;
                if let Some(stored) = removed {
                    match serde_json::from_slice::<UploadSessionRecord>(stored.value()) {
                        Ok(session) => close_open_entry(&txn, &session)?,
                        Err(error) => return Ok(Err(StorageError::internal(error))),
                    }
                }
            }
            txn.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    async fn expired_upload_sessions(
        &self,
        now: Timestamp,
    ) -> Result<Vec<UploadSessionRecord>, StorageError> {
        self.scan_json(SESSIONS, move |session: &UploadSessionRecord| {
            session.is_expired(now)
        })
        .await
    }

    async fn remove_stale_index_entries(
        &self,
        _older_than: Timestamp,
        _dry_run: bool,
    ) -> Result<usize, StorageError> {
        // Records and their index entries change in one transaction.
        Ok(0)
    }

    async fn read_events(
        &self,
        start: &EventStart,
        limit: usize,
    ) -> Result<EventRead, StorageError> {
        let after = match start {
            EventStart::Oldest => None,
            EventStart::After(position) => match <[u8; POSITION_LEN]>::try_from(&position[..]) {
                Ok(bytes) => Some(u64::from_be_bytes(bytes)),
                Err(_) => return Ok(EventRead::Malformed),
            },
            // The log is read by number, not by time.
            EventStart::Since(_) => return Ok(EventRead::Malformed),
        };
        self.run(move |db| {
            let txn = db.begin_read()?;
            let swept = txn.swept_through()?;
            let after = match after {
                Some(after) if after < swept => {
                    return Ok(Ok(EventRead::Expired {
                        oldest: position(swept),
                    }));
                }
                // A position past the last event was not made here: read
                // from, it would skip every event until the log reached it.
                Some(after) if after > last_event(&txn)? => return Ok(Ok(EventRead::Malformed)),
                Some(after) => after,
                None => swept,
            };
            let mut events = Vec::new();
            for entry in txn.events()?.range(after.saturating_add(1)..)?.take(limit) {
                let (number, value) = entry?;
                match serde_json::from_slice::<ImageEvent>(value.value()) {
                    Ok(event) => events.push(StoredEvent {
                        position: position(number.value()),
                        event,
                    }),
                    Err(error) => return Ok(Err(StorageError::internal(error))),
                }
            }
            Ok(Ok(EventRead::Events(events)))
        })
        .await
    }

    async fn event_head(&self) -> Result<Vec<u8>, StorageError> {
        self.run(|db| Ok(Ok(position(last_event(&db.begin_read()?)?))))
            .await
    }

    async fn remove_expired_events(&self, older_than: Timestamp) -> Result<usize, StorageError> {
        self.run(move |db| {
            // Events are in time order but for clock steps: the sweep
            // stops at the first one still retained.
            let expired: Vec<u64> = {
                let txn = db.begin_read()?;
                let mut expired = Vec::new();
                for entry in txn.events()?.iter()? {
                    let (number, value) = entry?;
                    match serde_json::from_slice::<ImageEvent>(value.value()) {
                        Ok(event) if event.time < older_than => expired.push(number.value()),
                        Ok(_) => break,
                        Err(error) => return Ok(Err(StorageError::internal(error))),
                    }
                }
                expired
            };
            let Some(&last) = expired.last() else {
                return Ok(Ok(0));
            };
            let txn = db.begin_write()?;
            {
                let mut events = txn.open_table(EVENTS)?;
                for number in &expired {
                    events.remove(number)?;
                }
                txn.open_table(EVENT_MARKS)?.insert(SWEPT_THROUGH, last)?;
            }
            txn.commit()?;
            Ok(Ok(expired.len()))
        })
        .await
    }

    fn event_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.events.subscribe())
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        self.run(|db| {
            db.begin_read()?.open_table(RECORDS)?;
            Ok(Ok(()))
        })
        .await
    }

    async fn list_for_review(
        &self,
        state: ImageState,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StorageError> {
        let prefix = review_prefix(state);
        let lower = match cursor {
            Some(cursor) if cursor.len() != ORDER_LEN => {
                return Err(StorageError::internal("malformed review cursor"));
            }
            // Just after the cursor's entry.
            Some(cursor) => [&prefix[..], cursor, &[0]].concat(),
            None => prefix.to_vec(),
        };
        let upper = [&prefix[..], &[0xFF; ORDER_LEN + 1]].concat();
        self.run(move |db| {
            let txn = db.begin_read()?;
            let index = txn.open_table(INDEX)?;
            let records = txn.open_table(RECORDS)?;
            let mut page = ListPage::default();
            for entry in index.range::<&[u8]>(lower.as_slice()..upper.as_slice())? {
                let key = entry?.0.value().to_vec();
                if page.records.len() == limit {
                    page.next_cursor = page.record_cursors.last().cloned();
                    break;
                }
                let id = image_id_from_index_key(&key);
                page.records_read += 1;
                if let Some(guard) = records.get(id.as_bytes().as_slice())? {
                    match decode(guard.value()) {
                        Ok(record) if record.state == state => {
                            page.records.push(record);
                            page.record_cursors
                                .push(key[key.len() - ORDER_LEN..].to_vec());
                        }
                        Ok(_) => {}
                        Err(error) => return Ok(Err(error)),
                    }
                }
            }
            Ok(Ok(page))
        })
        .await
    }

    async fn find_similar(
        &self,
        hash: &PdqHash,
        max_distance: u32,
        limit: usize,
        per_band: usize,
    ) -> Result<SimilarFound, StorageError> {
        let query = *hash;
        self.run(move |db| {
            let txn = db.begin_read()?;
            let index = txn.open_table(INDEX)?;
            let mut candidates = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut truncated = false;
            for (band, value) in query.bands() {
                // The bucket from the query's own hash on, then the rest
                // of it: its exact copies are read first.
                let lower = [PDQ, band, value];
                let start = [&lower[..], query.as_bytes()].concat();
                let upper = [&lower[..], &[0xFF; PDQ_KEY_LEN - 2]].concat();
                let entries = index
                    .range::<&[u8]>(start.as_slice()..upper.as_slice())?
                    .chain(index.range::<&[u8]>(&lower[..]..start.as_slice())?);
                for (read, entry) in entries.enumerate() {
                    if read == per_band {
                        truncated = true;
                        break;
                    }
                    let key = entry?.0.value().to_vec();
                    if key.len() != PDQ_KEY_LEN {
                        return Ok(Err(StorageError::internal("malformed PDQ band entry")));
                    }
                    let mut bytes = [0u8; HASH_BYTES];
                    bytes.copy_from_slice(&key[3..3 + HASH_BYTES]);
                    let (id, hash) = (image_id_from_index_key(&key), PdqHash::from_bytes(bytes));
                    // Only the matches are kept, each once (a near copy is
                    // in many of the buckets read): the memory of a search
                    // follows its matches, not the entries it reads.
                    if query.distance(&hash) <= max_distance && seen.insert(id) {
                        candidates.push((id, hash));
                    }
                }
            }
            let records = txn.open_table(RECORDS)?;
            let mut found = Vec::new();
            for (id, hash, distance) in similar::nearest(&query, candidates, max_distance, limit) {
                let Some(guard) = records.get(id.as_bytes().as_slice())? else {
                    continue;
                };
                match decode(guard.value()) {
                    Ok(record) if similar::indexed_hash(&record) == Some(hash) => {
                        found.push(SimilarImage { record, distance });
                    }
                    Ok(_) => {}
                    Err(error) => return Ok(Err(error)),
                }
            }
            Ok(Ok(SimilarFound {
                images: found,
                truncated,
            }))
        })
        .await
    }

    async fn append_moderation_action(
        &self,
        action: &ModerationAction,
    ) -> Result<(), StorageError> {
        let key = action_position(action);
        let value = serde_json::to_vec(action).map_err(StorageError::internal)?;
        self.run(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(ACTIONS)?
                .insert(key.as_slice(), value.as_slice())?;
            txn.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    async fn list_moderation_actions(
        &self,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ActionPage, StorageError> {
        let lower = match cursor {
            Some(cursor) => [cursor, &[0]].concat(),
            None => Vec::new(),
        };
        self.run(move |db| {
            let txn = db.begin_read()?;
            let mut page = ActionPage::default();
            for entry in txn
                .open_table(ACTIONS)?
                .range::<&[u8]>(lower.as_slice()..)?
            {
                let (_, value) = entry?;
                if page.actions.len() == limit {
                    page.next_cursor = page.actions.last().map(action_position);
                    break;
                }
                match serde_json::from_slice(value.value()) {
                    Ok(action) => page.actions.push(action),
                    Err(error) => return Ok(Err(StorageError::internal(error))),
                }
            }
            Ok(Ok(page))
        })
        .await
    }

    async fn create(&self, record: &ImageRecord) -> Result<CreateOutcome, StorageError> {
        let record = record.clone();
        let bytes = encode(&record)?;
        let event = ImageEvent::of_change(ChangeKind::Created, &record);
        self.write_events(move |db| {
            let txn = db.begin_write()?;
            let outcome = match insert(&txn, &record, &bytes)? {
                Ok(outcome) => outcome,
                Err(error) => return Ok(Err(error)),
            };
            if !matches!(outcome, CreateOutcome::Created) {
                return Ok(Ok((outcome, None)));
            }
            let number = match append_event(&txn, &event)? {
                Ok(number) => number,
                Err(error) => return Ok(Err(error)),
            };
            txn.commit()?;
            Ok(Ok((outcome, Some(number))))
        })
        .await
    }

    async fn get(&self, id: &ImageId) -> Result<Option<ImageRecord>, StorageError> {
        let id = *id;
        self.run(move |db| {
            let txn = db.begin_read()?;
            let records = txn.open_table(RECORDS)?;
            let found = records.get(id.as_bytes().as_slice())?;
            Ok(found.map(|guard| decode(guard.value())).transpose())
        })
        .await
    }

    async fn keyed_image(
        &self,
        owner: &UserId,
        idempotency_key: &str,
    ) -> Result<Option<ImageRecord>, StorageError> {
        let key = self::idempotency_key(owner, idempotency_key);
        self.run(move |db| {
            let txn = db.begin_read()?;
            let Some(id) = txn.open_table(IDEMPOTENCY)?.get(key.as_slice())? else {
                return Ok(Ok(None));
            };
            let records = txn.open_table(RECORDS)?;
            let found = records.get(id.value())?;
            Ok(found.map(|guard| decode(guard.value())).transpose())
        })
        .await
    }

    async fn get_many(&self, ids: &[ImageId]) -> Result<Vec<ImageRecord>, StorageError> {
        let ids = ids.to_vec();
        self.run(move |db| {
            // One read transaction: one consistent snapshot for the batch.
            let txn = db.begin_read()?;
            let records = txn.open_table(RECORDS)?;
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(guard) = records.get(id.as_bytes().as_slice())? {
                    found.push(decode(guard.value()));
                }
            }
            Ok(found.into_iter().collect())
        })
        .await
    }

    async fn replace(
        &self,
        record: &ImageRecord,
        expected_revision: u64,
        change: ChangeKind,
    ) -> Result<(), StorageError> {
        let record = record.clone();
        let bytes = encode(&record)?;
        let event = ImageEvent::of_change(change, &record);
        self.write_events(move |db| {
            let txn = db.begin_write()?;
            {
                let mut records = txn.open_table(RECORDS)?;
                let current = match records.get(record.id.as_bytes().as_slice())? {
                    Some(guard) => decode(guard.value()),
                    None => return Ok(Err(StorageError::NotFound)),
                };
                let current = match current {
                    Ok(current) => current,
                    Err(error) => return Ok(Err(error)),
                };
                if current.revision != expected_revision {
                    return Ok(Err(StorageError::ConditionFailed));
                }
                let mut index = txn.open_table(INDEX)?;
                for key in stored_index_keys(&current) {
                    index.remove(key.as_slice())?;
                }
                for key in index_keys(&record) {
                    index.insert(key.as_slice(), ())?;
                }
                records.insert(record.id.as_bytes().as_slice(), bytes.as_slice())?;
            }
            let number = match append_event(&txn, &event)? {
                Ok(number) => number,
                Err(error) => return Ok(Err(error)),
            };
            txn.commit()?;
            Ok(Ok(((), Some(number))))
        })
        .await
    }

    async fn delete(&self, id: &ImageId, owner: &UserId) -> Result<ImageRecord, StorageError> {
        let id = *id;
        let owner = owner.clone();
        self.write_events(move |db| {
            let txn = db.begin_write()?;
            let current = {
                let mut records = txn.open_table(RECORDS)?;
                let current = match records.get(id.as_bytes().as_slice())? {
                    Some(guard) => decode(guard.value()),
                    None => return Ok(Err(StorageError::NotFound)),
                };
                let current = match current {
                    Ok(current) => current,
                    Err(error) => return Ok(Err(error)),
                };
                if current.owner != owner {
                    return Ok(Err(StorageError::ConditionFailed));
                }
                records.remove(id.as_bytes().as_slice())?;
                let mut index = txn.open_table(INDEX)?;
                for key in stored_index_keys(&current) {
                    index.remove(key.as_slice())?;
                }
                if let Some(key) = &current.idempotency_key {
                    txn.open_table(IDEMPOTENCY)?
                        .remove(idempotency_key(&current.owner, key).as_slice())?;
                }
                current
            };
            let event = ImageEvent::of_change(ChangeKind::Deleted, &current);
            let number = match append_event(&txn, &event)? {
                Ok(number) => number,
                Err(error) => return Ok(Err(error)),
            };
            txn.commit()?;
            Ok(Ok((current, Some(number))))
        })
        .await
    }

    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StorageError> {
        let mut combination = 0;
        for (bit, set) in [
            (BY_OWNER, filter.owner.is_some()),
            (BY_TAG, filter.tag.is_some()),
            (BY_LOCATION, filter.location.is_some()),
            (BY_CONTENT_TYPE, filter.content_type.is_some()),
        ] {
            if set {
                combination |= bit;
            }
        }
        let prefix = index_prefix(
            combination,
            filter.owner.as_ref().map_or("", UserId::as_str),
            filter.tag.as_deref().unwrap_or(""),
            filter.location.as_deref().unwrap_or(""),
            filter.content_type.as_deref().unwrap_or(""),
        );
        let lower = [
            &prefix[..],
            &time_bytes(
                filter
                    .created_after
                    .unwrap_or(Timestamp::from_micros(i64::MIN)),
            ),
        ]
        .concat();
        let upper = match (cursor, filter.created_before) {
            (Some(cursor), _) if cursor.len() != CURSOR_LEN => {
                return Err(StorageError::internal("malformed listing cursor"));
            }
            (Some(cursor), _) => [&prefix[..], cursor].concat(),
            (None, Some(before)) => [&prefix[..], &time_bytes(before)].concat(),
            (None, None) => [&prefix[..], &[0xFF; CURSOR_LEN + 1]].concat(),
        };
        if lower >= upper {
            return Ok(ListPage::default());
        }
        self.run(move |db| {
            let txn = db.begin_read()?;
            let index = txn.open_table(INDEX)?;
            let records = txn.open_table(RECORDS)?;
            let mut page = ListPage::default();
            let mut last_key: Option<Vec<u8>> = None;
            for entry in index
                .range::<&[u8]>(lower.as_slice()..upper.as_slice())?
                .rev()
            {
                let (key, ()) = (entry?.0.value().to_vec(), ());
                if page.records.len() == limit {
                    page.next_cursor = last_key.map(|k| k[k.len() - CURSOR_LEN..].to_vec());
                    break;
                }
                let id = image_id_from_index_key(&key);
                page.records_read += 1;
                if let Some(guard) = records.get(id.as_bytes().as_slice())? {
                    match decode(guard.value()) {
                        Ok(record) => {
                            page.records.push(record);
                            page.record_cursors
                                .push(key[key.len() - CURSOR_LEN..].to_vec());
                        }
                        Err(error) => return Ok(Err(error)),
                    }
                }
                last_key = Some(key);
            }
            Ok(Ok(page))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::contract::sample_record;

    /// The band entries of `id` in the index.
    fn bands_of(store: &EmbeddedMetadataStore, id: &ImageId) -> usize {
        let txn = store.db.begin_read().expect("a read transaction");
        let index = txn.open_table(INDEX).expect("the index");
        index
            .range(&[PDQ][..]..&[PDQ + 1][..])
            .expect("a range")
            .filter(|entry| {
                entry
                    .as_ref()
                    .expect("an entry")
                    .0
                    .value()
                    .ends_with(id.as_bytes())
            })
            .count()
    }

    /// A store written before removed images left the band index holds
    /// their entries: the next open takes them out, once, and a delete
    /// takes out what is left of one.
    #[tokio::test]
    async fn removed_images_band_entries_from_before_are_taken_out() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("metadata.redb");
        let store = EmbeddedMetadataStore::open(&path).expect("opened");
        let owner = UserId::parse("alice").expect("a user");
        let mut removed = Vec::new();
        for i in 0..2 {
            let mut record = sample_record(&owner, 1_000_000 + i);
            record.state = ImageState::Removed;
            assert!(similar::hash_of(&record).is_some(), "a hash");
            store.create(&record).await.expect("created");
            assert_eq!(bands_of(&store, &record.id), 0);
            removed.push(record);
        }
        // As an older store wrote them, and without the mark.
        let txn = store.db.begin_write().expect("a write transaction");
        {
            let mut index = txn.open_table(INDEX).expect("the index");
            for record in &removed {
                let hash = similar::hash_of(record).expect("a hash");
                for key in band_keys(&hash, &record.id) {
                    index.insert(key.as_slice(), ()).expect("inserted");
                }
            }
            let mut marks = txn.open_table(EVENT_MARKS).expect("the marks");
            marks.remove(REMOVED_LEFT_BANDS).expect("unmarked");
        }
        txn.commit().expect("committed");
        assert_eq!(bands_of(&store, &removed[0].id), 32);
        // A delete takes out the entries of the record it deletes.
        store.delete(&removed[0].id, &owner).await.expect("deleted");
        assert_eq!(bands_of(&store, &removed[0].id), 0);
        assert_eq!(bands_of(&store, &removed[1].id), 32);
        drop(store);

        let store = EmbeddedMetadataStore::open(&path).expect("opened again");
        assert_eq!(bands_of(&store, &removed[1].id), 0);
        let txn = store.db.begin_read().expect("a read transaction");
        let marks = txn.open_table(EVENT_MARKS).expect("the marks");
        assert!(marks.get(REMOVED_LEFT_BANDS).expect("read").is_some());
    }

    /// A record stored before `thumbhash` was kept (its JSON has no such
    /// key) reads back with an empty one and everything else as stored.
    #[tokio::test]
    async fn a_record_from_before_the_thumbhash_reads_back_without_one() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = EmbeddedMetadataStore::open(&dir.path().join("metadata.redb")).expect("opened");
        let record = sample_record(&UserId::parse("alice").expect("a user"), 1_000_000);
        assert!(!record.thumbhash.is_empty());
        let mut old = serde_json::to_value(&record).expect("a record serializes");
        old.as_object_mut()
            .expect("a JSON object")
            .remove("thumbhash")
            .expect("a thumbhash key");
        let old = serde_json::to_vec(&old).expect("JSON");
        let txn = store.db.begin_write().expect("a write transaction");
        insert(&txn, &record, &old)
            .expect("written")
            .expect("inserted");
        txn.commit().expect("committed");

        let read = store.get(&record.id).await.expect("read").expect("found");
        assert_eq!(read.thumbhash, "");
        let expected = ImageRecord {
            thumbhash: String::new(),
            ..record
        };
        assert_eq!(read, expected);
        let many = store.get_many(&[expected.id]).await.expect("read");
        assert_eq!(many, [expected]);
    }

    /// A crowded bucket is read from the query's own hash on: its exact
    /// copies are found first, even when every bucket of the query holds
    /// more entries of lesser hashes than its share.
    #[tokio::test]
    async fn a_crowded_bucket_gives_the_querys_exact_copies_first() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = EmbeddedMetadataStore::open(&dir.path().join("metadata.redb")).expect("opened");
        let owner = UserId::parse("alice").expect("a user");
        let query = PdqHash::from_bytes([0x55; HASH_BYTES]);
        // The low bit off in bands 16 to 31 (or 0 to 15): a lesser hash
        // that shares the query's other 16 buckets.
        let lesser = |bands: std::ops::Range<usize>| {
            let mut bytes = *query.as_bytes();
            for band in bands {
                bytes[band] ^= 1;
            }
            PdqHash::from_bytes(bytes)
        };
        let mut micros = 1_000_000;
        for hash in [lesser(16..32), lesser(0..16)] {
            for _ in 0..3 {
                let mut record = sample_record(&owner, micros);
                record.pdq_hash = hash.to_hex();
                store.create(&record).await.expect("created");
                micros += 1;
            }
        }
        let mut copy = sample_record(&owner, micros);
        copy.pdq_hash = query.to_hex();
        store.create(&copy).await.expect("created");

        let found = store
            .find_similar(&query, similar::MAX_DISTANCE, 10, 2)
            .await
            .expect("a search");
        assert!(found.truncated);
        assert_eq!(found.images[0].record.id, copy.id, "{found:?}");
        assert_eq!(found.images[0].distance, 0);
    }
}
