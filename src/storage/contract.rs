//! The contract every adapter keeps: the guarantees documented on the
//! ports ([`crate::domain::ports`]), checked through the traits alone. Each
//! backend's tests call these functions on a store of theirs (memory and
//! embedded in their unit tests, aws in `tests/` against real S3- and
//! DynamoDB-compatible servers), so a new backend is one test away from
//! knowing it behaves like the others.
//!
//! The functions panic on the first broken promise. They share the store
//! with whatever else is in it: every record belongs to a fresh user and
//! every object to a fresh image. Download URLs are not covered here: they
//! are fetched over HTTP by the API tests of the backends that serve them.
use bytes::Bytes;
use futures::TryStreamExt;

use crate::domain::audit::{ActionKind, ModerationAction};
use crate::domain::event::{ChangeKind, EventRead, EventStart, StoredEvent};
use crate::domain::image::{Encoding, NewImage, ObjectName};
use crate::domain::image::{ImageState, Timestamp};
use crate::domain::listing::ListFilter;
use crate::domain::ports::{
    BlobStore, BlobWriter, CreateOutcome, MAX_BATCH_GET, MetadataStore, ObjectKey,
    PendingEncodings, PendingWrite, SessionAdmission, SessionQuota, StorageError,
};
use crate::domain::session::{Delivery, UploadId, UploadSessionRecord};
use crate::domain::similar::{self, MAX_DISTANCE, PdqHash};
use crate::domain::usage::{
    ErasureRecord, QuotaOverride, UsageCeiling, UsageChange, UsageRecord, UsageReservation,
};
use crate::domain::{ImageId, ImageRecord, UserId, VariantName};

/// Every promise of [`BlobStore`] but download URLs.
pub async fn blob_store(store: &dyn BlobStore) {
    finished_writes_are_read_back_whole_and_by_range(store).await;
    unfinished_writes_are_invisible_and_aborts_leave_nothing(store).await;
    deleting_is_final_and_deleting_a_missing_object_succeeds(store).await;
    a_sessions_objects_are_sized_and_deleted_together(store).await;
    store
        .check_health()
        .await
        .expect("a usable store is healthy");
}

/// Every promise of [`MetadataStore`].
pub async fn metadata_store(store: &dyn MetadataStore) {
    created_records_are_read_back_and_ids_are_unique(store).await;
    many_records_are_read_at_once_and_missing_ones_left_out(store).await;
    a_taken_idempotency_key_stores_nothing(store).await;
    replacing_needs_the_expected_revision(store).await;
    only_the_owner_deletes_and_deleted_records_are_gone(store).await;
    listings_are_newest_first_and_pages_continue_where_they_stopped(store).await;
    listings_apply_filters_and_never_return_deleted_records(store).await;
    upload_sessions_change_only_from_the_revision_read(store).await;
    open_upload_sessions_are_capped_per_owner(store).await;
    a_closed_session_counts_until_its_urls_are_over(store).await;
    journaled_writes_are_listed_by_age_until_cleared(store).await;
    usage_changes_stay_under_the_ceiling_even_at_once(store).await;
    a_reservation_ends_once(store).await;
    quota_overrides_and_recomputed_usage_keep_each_other(store).await;
    an_erasure_mark_refuses_reservations_and_its_end_resets_the_usage(store).await;
    a_users_sessions_are_found_and_their_events_lose_their_images(store).await;
    journaled_encodings_are_one_entry_per_image_until_cleared(store).await;
    every_change_has_one_event_in_order_after_the_head(store).await;
    the_review_lists_a_state_oldest_first_from_its_index(store).await;
    the_audit_trail_pages_oldest_first(store).await;
    similar_images_are_found_by_their_hashes_bands(store).await;
    a_crowded_bucket_is_read_up_to_its_share(store).await;
    store
        .check_health()
        .await
        .expect("a usable store is healthy");
}

/// Every event after `start`, read a page of two at a time (so that a read
/// resumes from its last position), until `want` events of `owner` are seen.
async fn events_of(
    store: &dyn MetadataStore,
    start: EventStart,
    owner: &UserId,
    want: usize,
) -> Vec<StoredEvent> {
    let mut start = start;
    let mut seen: Vec<StoredEvent> = Vec::new();
    for _ in 0..1000 {
        let page = match store.read_events(&start, 2).await.expect("events read") {
            EventRead::Events(page) => page,
            other => panic!("a fresh position reads events, not {other:?}"),
        };
        let Some(last) = page.last() else {
            if seen.len() >= want {
                break;
            }
            // A store that polls may show a write a moment later.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        start = EventStart::After(last.position.clone());
        seen.extend(page.into_iter().filter(|e| e.event.owner == *owner));
    }
    seen
}

async fn every_change_has_one_event_in_order_after_the_head(store: &dyn MetadataStore) {
    let head = store.event_head().await.expect("the head is read");
    let owner = fresh_user();
    let record = sample_record(&owner, now_micros());
    create(store, &record).await;
    let mut changed = record.clone();
    changed.title = "edited".into();
    changed.revision = 2;
    store
        .replace(&changed, 1, ChangeKind::Updated)
        .await
        .expect("replaced");
    let mut rendered = changed.clone();
    rendered.revision = 3;
    store
        .replace(&rendered, 2, ChangeKind::VariantsAdded)
        .await
        .expect("replaced");
    assert!(
        matches!(
            store.replace(&rendered, 2, ChangeKind::Updated).await,
            Err(StorageError::ConditionFailed)
        ),
        "a refused change is refused"
    );
    store.delete(&record.id, &owner).await.expect("deleted");

    let events = events_of(store, EventStart::After(head), &owner, 4).await;
    let kinds: Vec<(ChangeKind, u64)> = events
        .iter()
        .map(|e| (e.event.kind, e.event.revision))
        .collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::Created, 1),
            (ChangeKind::Updated, 2),
            (ChangeKind::VariantsAdded, 3),
            (ChangeKind::Deleted, 3),
        ],
        "one event per acknowledged change, in the order of the changes, none for a refused one"
    );
    assert_eq!(events[1].event.image.as_ref(), Some(&changed));
    let deleted = &events[3].event;
    assert_eq!(deleted.image, None, "a deleted image is not in its event");
    assert_eq!(deleted.objects, ["original"], "the objects a purge needs");
    assert!(
        matches!(
            store
                .read_events(&EventStart::After(vec![1, 2, 3]), 10)
                .await,
            Ok(EventRead::Malformed)
        ),
        "a position of another store is malformed"
    );
    if store.event_lookback().is_none() {
        // A log with one order: a position past its last event was never
        // given (read from, it would skip every event until then).
        let last = events[3].position.clone();
        let mut ahead = last.clone();
        if let Some(byte) = ahead.first_mut() {
            *byte = byte.saturating_add(1);
        }
        for position in [ahead, vec![0xFF; last.len()]] {
            assert!(
                matches!(
                    store.read_events(&EventStart::After(position), 10).await,
                    Ok(EventRead::Malformed)
                ),
                "a position past the log's end is malformed"
            );
        }
    }
}

/// Bytes of a test object: not a run of one value, so that a misplaced
/// range shows.
fn sample_bytes(len: usize) -> Bytes {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn fresh_key(variant: &str) -> ObjectKey {
    ObjectKey::new(
        &ImageId::new(),
        &VariantName::parse(variant).expect("a variant name"),
    )
}

async fn read(
    store: &dyn BlobStore,
    key: &ObjectKey,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, StorageError> {
    let stream = store.read(key, offset, length).await?;
    let pieces: Vec<Bytes> = stream.try_collect().await?;
    Ok(pieces.concat())
}

async fn write(store: &dyn BlobStore, key: &ObjectKey, bytes: &Bytes, piece: usize) {
    let mut writer = store
        .start_write(key, Some(bytes.len() as u64))
        .await
        .expect("a write starts");
    for at in (0..bytes.len()).step_by(piece) {
        writer
            .write(bytes.slice(at..(at + piece).min(bytes.len())))
            .await
            .expect("bytes are written");
    }
    writer.finish().await.expect("the write finishes");
}

async fn finished_writes_are_read_back_whole_and_by_range(store: &dyn BlobStore) {
    let key = fresh_key("original");
    let bytes = sample_bytes(300 * 1024 + 5);
    write(store, &key, &bytes, 64 * 1024 + 1).await;
    let whole = read(store, &key, 0, bytes.len() as u64)
        .await
        .expect("the object is read");
    assert!(whole == bytes, "the object read back is the one written");
    let range = read(store, &key, 70_000, 10_000)
        .await
        .expect("a range is read");
    assert_eq!(range, bytes[70_000..80_000], "a range read is that range");
    // An added encoding's object, keyed with its extension, is an image
    // object too: the repair pass would otherwise never see it.
    let (id, _) = ObjectKey::parse(key.as_str()).expect("an image key");
    let encoded = ObjectKey::of(
        &id,
        &ObjectName::encoded(VariantName::parse("small").expect("a name"), Encoding::WebP),
    );
    write(store, &encoded, &bytes.slice(..1000), 512).await;
    let listed = store.list_objects().await.expect("objects are listed");
    for key in [&key, &encoded] {
        let (id, object) = ObjectKey::parse(key.as_str()).expect("an image key");
        assert!(
            listed
                .iter()
                .any(|o| o.image_id == id && o.object == object),
            "a finished object is listed: {key:?}"
        );
        store.delete(key).await.expect("the object is deleted");
    }
}

/// A write of 1000 bytes to a fresh key, not finished.
async fn unfinished_write(
    store: &dyn BlobStore,
    variant: &str,
) -> (ObjectKey, Box<dyn BlobWriter>) {
    let key = fresh_key(variant);
    let mut writer = store
        .start_write(&key, Some(1000))
        .await
        .expect("a write starts");
    writer
        .write(sample_bytes(1000))
        .await
        .expect("bytes are written");
    (key, writer)
}

async fn assert_not_found(store: &dyn BlobStore, key: &ObjectKey, why: &str) {
    let read = read(store, key, 0, 1000).await;
    assert!(matches!(read, Err(StorageError::NotFound)), "{why}");
}

async fn unfinished_writes_are_invisible_and_aborts_leave_nothing(store: &dyn BlobStore) {
    let (aborted, writer) = unfinished_write(store, "original").await;
    assert_not_found(store, &aborted, "nothing is visible before finish").await;
    writer.abort().await;
    assert_not_found(store, &aborted, "nothing is visible after an abort").await;
    let (dropped, writer) = unfinished_write(store, "small").await;
    drop(writer);
    assert_not_found(store, &dropped, "a dropped writer leaves nothing visible").await;
    let listed = store.list_objects().await.expect("objects are listed");
    for key in [&aborted, &dropped] {
        let (id, _) = ObjectKey::parse(key.as_str()).expect("an image key");
        assert!(
            !listed.iter().any(|o| o.image_id == id),
            "an unfinished object is not listed"
        );
    }
}

async fn deleting_is_final_and_deleting_a_missing_object_succeeds(store: &dyn BlobStore) {
    let key = fresh_key("medium");
    write(store, &key, &sample_bytes(10), 4).await;
    store.delete(&key).await.expect("the object is deleted");
    assert_not_found(store, &key, "a deleted object is not found").await;
    store
        .delete(&key)
        .await
        .expect("deleting a missing object succeeds");
}

fn fresh_user() -> UserId {
    UserId::parse(&format!("contract-{}", uuid::Uuid::new_v4())).expect("a user id")
}

/// A record of `owner`, created at `micros`: see [`ImageRecord::sample`].
pub fn sample_record(owner: &UserId, micros: i64) -> ImageRecord {
    ImageRecord::sample(owner, micros)
}

fn now_micros() -> i64 {
    Timestamp::now().as_micros()
}

/// Every record `list_for_review` returns for `state`, a page of two at a
/// time.
async fn review_of(store: &dyn MetadataStore, state: ImageState) -> Vec<ImageRecord> {
    let mut all = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = store
            .list_for_review(state, cursor.as_deref(), 2)
            .await
            .expect("a review page");
        assert!(page.records.len() <= 2);
        all.extend(page.records);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

async fn the_review_lists_a_state_oldest_first_from_its_index(store: &dyn MetadataStore) {
    let owner = fresh_user();
    let start = now_micros();
    let mut records = Vec::new();
    for i in 0..5 {
        let record = sample_record(&owner, start + i);
        create(store, &record).await;
        records.push(record);
    }
    // Quarantined in the reverse order of their creation.
    let mut quarantined = Vec::new();
    for (i, record) in records.iter().rev().enumerate() {
        let mut next = record.clone();
        next.state = ImageState::Quarantined;
        next.state_reason = "spam".into();
        next.state_time = Some(Timestamp::from_micros(start + 100 + i as i64));
        next.revision = 2;
        store
            .replace(&next, 1, ChangeKind::StateChanged)
            .await
            .expect("quarantined");
        quarantined.push(next);
    }
    let ids = |records: &[ImageRecord]| -> Vec<ImageId> {
        records
            .iter()
            .filter(|r| r.owner == owner)
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(
        ids(&review_of(store, ImageState::Quarantined).await),
        ids(&quarantined)
    );
    // A record that leaves the state leaves its review; one removed is in
    // the review of its new state.
    let mut approved = quarantined[0].clone();
    approved.state = ImageState::Active;
    approved.state_time = None;
    approved.revision = 3;
    store
        .replace(&approved, 2, ChangeKind::StateChanged)
        .await
        .expect("approved");
    let mut removed = quarantined[1].clone();
    removed.state = ImageState::Removed;
    removed.revision = 3;
    store
        .replace(&removed, 2, ChangeKind::StateChanged)
        .await
        .expect("removed");
    assert_eq!(
        ids(&review_of(store, ImageState::Quarantined).await),
        ids(&quarantined[2..])
    );
    assert_eq!(
        ids(&review_of(store, ImageState::Removed).await),
        [removed.id]
    );
    // A deleted record is in no review.
    store.delete(&removed.id, &owner).await.expect("deleted");
    assert!(ids(&review_of(store, ImageState::Removed).await).is_empty());
}

async fn the_audit_trail_pages_oldest_first(store: &dyn MetadataStore) {
    let start = now_micros();
    let moderator = fresh_user();
    let mut appended = Vec::new();
    for i in 0..5 {
        let action = ModerationAction {
            id: ImageId::new(),
            // Two in the same microsecond: ordered by id.
            time: Timestamp::from_micros(start + i / 2),
            moderator: moderator.clone(),
            kind: ActionKind::SetState,
            image_id: ImageId::new(),
            owner: fresh_user(),
            from: ImageState::Active,
            to: ImageState::Quarantined,
            reason: format!("reason-{i}"),
        };
        store
            .append_moderation_action(&action)
            .await
            .expect("appended");
        appended.push(action);
    }
    let mut read = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = store
            .list_moderation_actions(cursor.as_deref(), 2)
            .await
            .expect("a page of the trail");
        assert!(page.actions.len() <= 2);
        read.extend(page.actions);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    read.retain(|a| a.moderator == moderator);
    appended.sort_by_key(|a| (a.time, a.id));
    assert_eq!(read, appended);
}

/// A random PDQ hash with the top bit of every band clear: neither it nor
/// the hashes a few low bits off it share a band with the sample records'
/// hash (all ones), whose buckets the many sample records in the store
/// crowd.
fn random_hash() -> PdqHash {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    for byte in &mut bytes {
        *byte &= 0x7F;
    }
    PdqHash::from_bytes(bytes)
}

/// `hash` with one bit flipped in each of `bands`.
fn one_bit_off_in(hash: &PdqHash, bands: std::ops::Range<usize>) -> PdqHash {
    let mut bytes = *hash.as_bytes();
    for band in bands {
        bytes[band] ^= 1;
    }
    PdqHash::from_bytes(bytes)
}

/// A share of each bucket no bucket of these tests fills.
const WHOLE_BUCKETS: usize = 1000;

/// The ids and distances `find_similar` answers.
async fn similar_to(
    store: &dyn MetadataStore,
    hash: &PdqHash,
    max_distance: u32,
    limit: usize,
) -> Vec<(ImageId, u32)> {
    let found = store
        .find_similar(hash, max_distance, limit, WHOLE_BUCKETS)
        .await
        .expect("a search for similar images");
    assert!(!found.truncated, "no bucket is crowded");
    found
        .images
        .into_iter()
        .map(|found| (found.record.id, found.distance))
        .collect()
}

async fn similar_images_are_found_by_their_hashes_bands(store: &dyn MetadataStore) {
    let owner = fresh_user();
    let start = now_micros();
    let query = random_hash();
    let with_hash = |i: i64, hash: &PdqHash| {
        let mut record = sample_record(&owner, start + i);
        record.pdq_hash = hash.to_hex();
        record
    };
    let same = with_hash(0, &query);
    // 31 bits off, one in each of 31 bands: the one band left is shared.
    let edge = with_hash(1, &one_bit_off_in(&query, 0..31));
    // A few bits off in one band: the other 31 are shared.
    let mut bytes = *query.as_bytes();
    bytes[7] ^= 0b1011;
    let near = with_hash(2, &PdqHash::from_bytes(bytes));
    // 32 bits off, one in every band, and an unrelated hash: not found.
    let far = with_hash(3, &one_bit_off_in(&query, 0..32));
    let unrelated = with_hash(4, &random_hash());
    let mut unhashed = with_hash(5, &query);
    unhashed.pdq_hash.clear();
    for record in [&same, &edge, &near, &far, &unrelated, &unhashed] {
        create(store, record).await;
    }
    assert_eq!(
        similar_to(store, &query, MAX_DISTANCE, 10).await,
        [(same.id, 0), (near.id, 3), (edge.id, 31)],
        "nearest first, up to the distance"
    );
    assert_eq!(
        similar_to(store, &query, 3, 10).await,
        [(same.id, 0), (near.id, 3)]
    );
    assert_eq!(
        similar_to(store, &query, MAX_DISTANCE, 1).await,
        [(same.id, 0)]
    );
    let far_hash = similar::hash_of(&far).expect("a hash");
    assert_eq!(
        similar_to(store, &far_hash, MAX_DISTANCE, 10).await,
        [(far.id, 0), (edge.id, 1)]
    );

    // A new hash moves the image in the index; a removed image keeps its
    // hash on its record but leaves the index (a purged flood of copies
    // no longer takes a search's share of the buckets).
    let mut moved = near.clone();
    let elsewhere = random_hash();
    moved.pdq_hash = elsewhere.to_hex();
    moved.revision = 2;
    store
        .replace(&moved, 1, ChangeKind::Updated)
        .await
        .expect("replaced");
    let mut removed = same.clone();
    removed.state = ImageState::Removed;
    removed.state_time = Some(Timestamp::from_micros(start + 10));
    removed.revision = 2;
    store
        .replace(&removed, 1, ChangeKind::Purged)
        .await
        .expect("removed");
    let found = store
        .find_similar(&query, MAX_DISTANCE, 10, WHOLE_BUCKETS)
        .await
        .expect("a search for similar images");
    assert_eq!(
        found
            .images
            .iter()
            .map(|f| (f.record.id, f.record.state))
            .collect::<Vec<_>>(),
        [(edge.id, ImageState::Active)]
    );
    assert_eq!(removed.pdq_hash, same.pdq_hash);
    assert_eq!(similar_to(store, &elsewhere, 0, 10).await, [(near.id, 0)]);

    // A deleted record is found no more.
    for record in [&same, &edge] {
        store.delete(&record.id, &owner).await.expect("deleted");
    }
    assert!(similar_to(store, &query, MAX_DISTANCE, 10).await.is_empty());
}

async fn a_crowded_bucket_is_read_up_to_its_share(store: &dyn MetadataStore) {
    let owner = fresh_user();
    let start = now_micros();
    let query = random_hash();
    // Many images with one hash that agrees with the query's in bands 0 to
    // 15 only (16 bits off): they crowd those 16 buckets of the query.
    let crowd_hash = one_bit_off_in(&query, 16..32);
    let mut crowd = Vec::new();
    for i in 0..40 {
        let mut record = sample_record(&owner, start + i);
        record.pdq_hash = crowd_hash.to_hex();
        create(store, &record).await;
        crowd.push(record.id);
    }
    // A match 8 bits off, in bands 0 to 7: it shares buckets 8 to 15 with
    // the crowd, and buckets 16 to 31 with nothing else.
    let mut near = sample_record(&owner, start + 100);
    near.pdq_hash = one_bit_off_in(&query, 0..8).to_hex();
    create(store, &near).await;

    let per_band = 1;
    let found = store
        .find_similar(&query, MAX_DISTANCE, 100, per_band)
        .await
        .expect("a search for similar images");
    assert!(found.truncated, "a bucket held more than its share");
    let crowd_found = found
        .images
        .iter()
        .filter(|f| crowd.contains(&f.record.id))
        .count();
    assert!(
        (1..=per_band * similar::BANDS).contains(&crowd_found),
        "each bucket is read up to its share: {crowd_found} of the crowd found"
    );
    assert!(
        found
            .images
            .iter()
            .any(|f| f.record.id == near.id && f.distance == 8),
        "the uncrowded buckets are read whatever the crowded ones hold"
    );

    // With a share the buckets fit in, everything is found, and the
    // search is whole.
    let found = store
        .find_similar(&query, MAX_DISTANCE, 100, 64)
        .await
        .expect("a search for similar images");
    assert!(!found.truncated);
    assert_eq!(found.images.len(), crowd.len() + 1);
    assert_eq!(found.images[0].record.id, near.id, "nearest first");
    for record in crowd.iter().chain([&near.id]) {
        store.delete(record, &owner).await.expect("deleted");
    }
}

async fn create(store: &dyn MetadataStore, record: &ImageRecord) {
    let outcome = store.create(record).await.expect("the record is stored");
    assert!(
        matches!(outcome, CreateOutcome::Created),
        "a new record is created"
    );
}

async fn created_records_are_read_back_and_ids_are_unique(store: &dyn MetadataStore) {
    let record = sample_record(&fresh_user(), now_micros());
    create(store, &record).await;
    let read = store.get(&record.id).await.expect("the record is read");
    assert_eq!(
        read.as_ref(),
        Some(&record),
        "a record reads back as stored"
    );
    let again = store.create(&record).await;
    assert!(
        matches!(again, Err(StorageError::AlreadyExists)),
        "a second record with the same id is refused"
    );
    assert_eq!(
        store
            .get(&ImageId::new())
            .await
            .expect("a missing record is read"),
        None
    );
}

async fn many_records_are_read_at_once_and_missing_ones_left_out(store: &dyn MetadataStore) {
    let owner = fresh_user();
    let base = now_micros();
    let mut records = Vec::new();
    for i in 0..MAX_BATCH_GET as i64 - 10 {
        let record = sample_record(&owner, base + i);
        create(store, &record).await;
        records.push(record);
    }
    let deleted = sample_record(&owner, base + 1000);
    create(store, &deleted).await;
    store
        .delete(&deleted.id, &owner)
        .await
        .expect("the record is deleted");
    let mut ids: Vec<ImageId> = records.iter().map(|r| r.id).collect();
    let never = ImageId::new();
    ids.insert(3, never);
    ids.push(deleted.id);
    let mut read = store
        .get_many(&ids)
        .await
        .expect("the records are read in one call");
    read.sort_by_key(|r| r.id);
    records.sort_by_key(|r| r.id);
    assert_eq!(
        read, records,
        "every existing record is read back as stored, missing and deleted ones left out"
    );
    assert!(
        store
            .get_many(&[never])
            .await
            .expect("a batch of one missing id is read")
            .is_empty()
    );
}

async fn a_taken_idempotency_key_stores_nothing(store: &dyn MetadataStore) {
    let owner = fresh_user();
    let mut first = sample_record(&owner, now_micros());
    first.idempotency_key = Some("key-1".into());
    create(store, &first).await;
    let mut second = sample_record(&owner, now_micros());
    second.idempotency_key = Some("key-1".into());
    match store.create(&second).await.expect("the store answers") {
        CreateOutcome::IdempotencyKeyTaken(existing) => {
            assert_eq!(existing.id, first.id, "the first record is returned")
        }
        CreateOutcome::Created => panic!("a reused idempotency key created a record"),
    }
    assert_eq!(
        store.get(&second.id).await.expect("read"),
        None,
        "nothing was stored"
    );
    let mut other_owner = sample_record(&fresh_user(), now_micros());
    other_owner.idempotency_key = Some("key-1".into());
    create(store, &other_owner).await;
}

async fn replacing_needs_the_expected_revision(store: &dyn MetadataStore) {
    let record = sample_record(&fresh_user(), now_micros());
    create(store, &record).await;
    let mut changed = record.clone();
    changed.title = "a new title".into();
    changed.tags = vec!["sea".into()];
    changed.revision = 2;
    assert!(
        matches!(
            store.replace(&changed, 7, ChangeKind::Updated).await,
            Err(StorageError::ConditionFailed)
        ),
        "a stale revision is refused"
    );
    store
        .replace(&changed, 1, ChangeKind::Updated)
        .await
        .expect("the record is replaced");
    let read = store.get(&record.id).await.expect("read").expect("present");
    assert_eq!(read.title, "a new title");
    assert_eq!(read.revision, 2);
    let missing = sample_record(&fresh_user(), now_micros());
    assert!(
        matches!(
            store.replace(&missing, 1, ChangeKind::Updated).await,
            Err(StorageError::NotFound)
        ),
        "replacing a missing record is NotFound"
    );
}

async fn only_the_owner_deletes_and_deleted_records_are_gone(store: &dyn MetadataStore) {
    let owner = fresh_user();
    let record = sample_record(&owner, now_micros());
    create(store, &record).await;
    assert!(
        matches!(
            store.delete(&record.id, &fresh_user()).await,
            Err(StorageError::ConditionFailed)
        ),
        "someone else cannot delete it"
    );
    assert!(
        store.get(&record.id).await.expect("read").is_some(),
        "it is still there"
    );
    let deleted = store
        .delete(&record.id, &owner)
        .await
        .expect("the owner deletes it");
    assert_eq!(deleted.id, record.id, "the deleted record is returned");
    assert_eq!(store.get(&record.id).await.expect("read"), None);
    assert!(
        matches!(
            store.delete(&record.id, &owner).await,
            Err(StorageError::NotFound)
        ),
        "deleting it again is NotFound"
    );
}

fn owned_by(owner: &UserId) -> ListFilter {
    ListFilter {
        owner: Some(owner.clone()),
        ..ListFilter::default()
    }
}

async fn listings_are_newest_first_and_pages_continue_where_they_stopped(
    store: &dyn MetadataStore,
) {
    let owner = fresh_user();
    let start = now_micros();
    let mut records = Vec::new();
    for i in 0..5 {
        let record = sample_record(&owner, start + i * 1000);
        create(store, &record).await;
        records.push(record);
    }
    let newest_first: Vec<ImageId> = records.iter().rev().map(|r| r.id).collect();
    let filter = owned_by(&owner);
    let mut seen = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    for _ in 0..10 {
        let page = store
            .list(&filter, cursor.as_deref(), 2)
            .await
            .expect("a page is listed");
        assert!(page.records.len() <= 2, "a page holds at most its limit");
        assert_eq!(
            page.record_cursors.len(),
            page.records.len(),
            "every record has a cursor"
        );
        seen.extend(page.records.iter().map(|r| r.id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(
        seen, newest_first,
        "pages walk every record once, newest first"
    );

    let first = store
        .list(&filter, None, 3)
        .await
        .expect("a page is listed");
    let resumed = store
        .list(&filter, Some(&first.record_cursors[0]), 10)
        .await
        .expect("a page is listed from a record's cursor");
    let resumed: Vec<ImageId> = resumed.records.iter().map(|r| r.id).collect();
    assert_eq!(
        resumed,
        newest_first[1..],
        "a record's cursor resumes right after it"
    );
}

async fn listings_apply_filters_and_never_return_deleted_records(store: &dyn MetadataStore) {
    let owner = fresh_user();
    let start = now_micros();
    let mut tagged = sample_record(&owner, start);
    tagged.tags = vec!["beach".into()];
    let mut deleted = sample_record(&owner, start + 1000);
    deleted.tags = vec!["beach".into()];
    let untagged = sample_record(&owner, start + 2000);
    for record in [&tagged, &deleted, &untagged] {
        create(store, record).await;
    }
    store.delete(&deleted.id, &owner).await.expect("deleted");
    let filter = ListFilter {
        tag: Some("beach".into()),
        ..owned_by(&owner)
    };
    let page = store.list(&filter, None, 10).await.expect("listed");
    let ids: Vec<ImageId> = page.records.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![tagged.id], "only live records with the tag");
    let filter = ListFilter {
        created_after: Some(Timestamp::from_micros(start + 1)),
        ..owned_by(&owner)
    };
    let page = store.list(&filter, None, 10).await.expect("listed");
    let ids: Vec<ImageId> = page.records.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![untagged.id], "only records in the time range");
}

async fn journaled_writes_are_listed_by_age_until_cleared(store: &dyn MetadataStore) {
    let started = now_micros() - 60_000_000;
    let write = PendingWrite {
        image_id: ImageId::new(),
        variant: VariantName::original(),
        pending_id: uuid::Uuid::new_v4().to_string(),
        started: Timestamp::from_micros(started),
    };
    store.record_pending_write(&write).await.expect("journaled");
    let older = store
        .pending_writes(Timestamp::from_micros(started + 1))
        .await
        .expect("listed");
    assert!(
        older.contains(&write),
        "a journaled write is listed once old enough"
    );
    let younger = store
        .pending_writes(Timestamp::from_micros(started))
        .await
        .expect("listed");
    assert!(!younger.contains(&write), "a younger write is not listed");
    store.clear_pending_write(&write).await.expect("cleared");
    let after = store
        .pending_writes(Timestamp::from_micros(started + 1))
        .await
        .expect("listed");
    assert!(!after.contains(&write), "a cleared write is gone");
    store
        .clear_pending_write(&write)
        .await
        .expect("clearing an unknown write succeeds");
}

async fn journaled_encodings_are_one_entry_per_image_until_cleared(store: &dyn MetadataStore) {
    let started = now_micros() - 60_000_000;
    let mut pending = PendingEncodings {
        image_id: ImageId::new(),
        owner: fresh_user(),
        encodings: vec![Encoding::WebP],
        started: Timestamp::from_micros(started),
    };
    store
        .record_pending_encodings(&pending)
        .await
        .expect("journaled");
    let listed = |older_than: i64| async move {
        store
            .pending_encodings(Timestamp::from_micros(older_than))
            .await
            .expect("listed")
    };
    assert!(
        listed(started + 1).await.contains(&pending),
        "a journaled entry is listed once old enough"
    );
    assert!(
        !listed(started)
            .await
            .iter()
            .any(|p| p.image_id == pending.image_id),
        "a younger entry is not listed"
    );
    // A second entry of the image takes the first one's place.
    pending.encodings = vec![Encoding::WebP, Encoding::Avif];
    store
        .record_pending_encodings(&pending)
        .await
        .expect("journaled again");
    let mine: Vec<PendingEncodings> = listed(started + 1)
        .await
        .into_iter()
        .filter(|p| p.image_id == pending.image_id)
        .collect();
    assert_eq!(mine, vec![pending.clone()], "one entry per image");
    store
        .clear_pending_encodings(&pending.image_id)
        .await
        .expect("cleared");
    assert!(
        !listed(started + 1)
            .await
            .iter()
            .any(|p| p.image_id == pending.image_id),
        "a cleared entry is gone"
    );
    store
        .clear_pending_encodings(&pending.image_id)
        .await
        .expect("clearing an unknown entry succeeds");
}

async fn a_sessions_objects_are_sized_and_deleted_together(store: &dyn BlobStore) {
    let (mine, other) = (UploadId::new(), UploadId::new());
    let bytes = sample_bytes(3000);
    let keys = [
        ObjectKey::staged(&mine, "a"),
        ObjectKey::staged(&mine, "b"),
        ObjectKey::staged(&other, "a"),
    ];
    for key in &keys {
        write(store, key, &bytes, 1000).await;
    }
    assert_eq!(store.object_size(&keys[0]).await.unwrap(), Some(3000));
    let missing = ObjectKey::staged(&mine, "missing");
    assert_eq!(store.object_size(&missing).await.unwrap(), None);
    let staged = store.list_staged().await.unwrap();
    for id in [mine, other] {
        assert!(staged.iter().any(|(s, _)| *s == id), "{id} is listed");
    }
    store.delete_staged(&mine).await.expect("deleted");
    assert!(
        !store
            .list_staged()
            .await
            .unwrap()
            .iter()
            .any(|(s, _)| *s == mine)
    );
    for key in &keys[..2] {
        assert_eq!(store.object_size(key).await.unwrap(), None, "{key:?}");
    }
    assert_eq!(
        read(store, &keys[2], 0, 3000).await.unwrap(),
        bytes.to_vec(),
        "another session's objects stay"
    );
    store
        .delete_staged(&mine)
        .await
        .expect("deleting nothing succeeds");
    store.delete_staged(&other).await.expect("deleted");
}

async fn upload_sessions_change_only_from_the_revision_read(store: &dyn MetadataStore) {
    let now = Timestamp::now();
    let session = new_session(now);
    store
        .create_upload_session(&session, ROOMY)
        .await
        .expect("created");
    assert!(matches!(
        store.create_upload_session(&session, ROOMY).await,
        Err(StorageError::AlreadyExists)
    ));
    assert_eq!(
        store.get_upload_session(&session.id).await.unwrap(),
        Some(session.clone())
    );
    let mut changed = session.clone();
    changed.revision = 2;
    changed.delivery = Delivery::Direct {
        parts: 3,
        sizes: vec![10, 20, 0],
    };
    store
        .replace_upload_session(&changed, 1)
        .await
        .expect("replaced from the revision read");
    assert!(matches!(
        store.replace_upload_session(&changed, 1).await,
        Err(StorageError::ConditionFailed)
    ));
    assert_eq!(
        store.get_upload_session(&session.id).await.unwrap(),
        Some(changed.clone())
    );

    let mut expired = session.clone();
    expired.id = UploadId::new();
    expired.expire_time = Timestamp::from_micros(now.as_micros() - 1_000_000);
    store
        .create_upload_session(&expired, ROOMY)
        .await
        .expect("created");
    let found = store.expired_upload_sessions(now).await.unwrap();
    assert!(found.iter().any(|s| s.id == expired.id));
    assert!(found.iter().all(|s| s.id != session.id));

    for id in [session.id, expired.id] {
        store.delete_upload_session(&id).await.expect("deleted");
        assert_eq!(store.get_upload_session(&id).await.unwrap(), None);
    }
    assert!(matches!(
        store.replace_upload_session(&changed, 2).await,
        Err(StorageError::NotFound)
    ));
    store
        .delete_upload_session(&session.id)
        .await
        .expect("deleting a missing session succeeds");
}

/// A quota no test session reaches.
const ROOMY: SessionQuota = SessionQuota {
    max_open: 1000,
    max_staged_bytes: u64::MAX,
};

async fn open_upload_sessions_are_capped_per_owner(store: &dyn MetadataStore) {
    let quota = SessionQuota {
        max_open: 3,
        max_staged_bytes: 1000,
    };
    let now = Timestamp::now();
    let (owner, other) = (fresh_user(), fresh_user());
    let session = |owner: &UserId, staged_bytes: u64| UploadSessionRecord {
        owner: owner.clone(),
        staged_bytes,
        ..new_session(now)
    };
    // An expired session holds no slot.
    let mut expired = session(&owner, 900);
    expired.expire_time = Timestamp::from_micros(now.as_micros() - 1_000_000);
    let create = |s: UploadSessionRecord| async move {
        store.create_upload_session(&s, quota).await.map(|a| (a, s))
    };
    assert_eq!(create(expired).await.unwrap().0, SessionAdmission::Created);
    let mut open = Vec::new();
    for _ in 0..3 {
        let (admission, s) = create(session(&owner, 100)).await.unwrap();
        assert_eq!(admission, SessionAdmission::Created);
        open.push(s);
    }
    let (admission, refused) = create(session(&owner, 100)).await.unwrap();
    assert_eq!(admission, SessionAdmission::TooManyOpen);
    assert_eq!(store.get_upload_session(&refused.id).await.unwrap(), None);
    let (admission, _) = create(session(&other, 800)).await.unwrap();
    assert_eq!(
        admission,
        SessionAdmission::Created,
        "other owners are apart"
    );

    // A committed session frees its slot, a deleted one too.
    let mut committed = open.pop().unwrap();
    committed.committed = true;
    committed.revision = 2;
    store.replace_upload_session(&committed, 1).await.unwrap();
    let (admission, s) = create(session(&owner, 100)).await.unwrap();
    assert_eq!(admission, SessionAdmission::Created);
    store.delete_upload_session(&s.id).await.unwrap();

    // Bytes: 200 held, so 800 more fit and 801 do not.
    let (admission, _) = create(session(&owner, 801)).await.unwrap();
    assert_eq!(admission, SessionAdmission::TooManyStagedBytes);
    let (admission, _) = create(session(&owner, 800)).await.unwrap();
    assert_eq!(admission, SessionAdmission::Created);
}

/// A session closed while part URLs the store cannot revoke still live
/// keeps its charge until they are over, whether it was removed,
/// committed or kept as a cancelled record (its key not reusable yet).
async fn a_closed_session_counts_until_its_urls_are_over(store: &dyn MetadataStore) {
    let quota = SessionQuota {
        max_open: 10,
        max_staged_bytes: 1000,
    };
    let now = Timestamp::now();
    let session = |owner: &UserId, charge_until: Option<Timestamp>| UploadSessionRecord {
        owner: owner.clone(),
        staged_bytes: 600,
        charge_until,
        ..new_session(now)
    };
    let live = Some(now.saturating_add(std::time::Duration::from_secs(600)));
    let over = Some(Timestamp::from_micros(now.as_micros() - 1_000_000));
    for close in ["remove", "commit", "cancel"] {
        let (held, free) = (fresh_user(), fresh_user());
        for (owner, charge_until) in [(&held, live), (&free, over)] {
            let mut closed = session(owner, charge_until);
            let admission = store.create_upload_session(&closed, quota).await.unwrap();
            assert_eq!(admission, SessionAdmission::Created);
            if close == "remove" {
                store.delete_upload_session(&closed.id).await.unwrap();
            } else {
                closed.committed = close == "commit";
                closed.cancelled = close == "cancel";
                closed.revision = 2;
                store.replace_upload_session(&closed, 1).await.unwrap();
            }
        }
        for (owner, expected) in [
            (&held, SessionAdmission::TooManyStagedBytes),
            (&free, SessionAdmission::Created),
        ] {
            let again = store
                .create_upload_session(&session(owner, None), quota)
                .await
                .unwrap();
            assert_eq!(
                again, expected,
                "after {close}: live URLs count, others not"
            );
        }
    }
}

/// A new session of a new user, started `now`, for an hour.
fn new_session(now: Timestamp) -> UploadSessionRecord {
    UploadSessionRecord {
        id: UploadId::new(),
        owner: fresh_user(),
        image_id: ImageId::new(),
        spec: NewImage {
            filename: "a.png".into(),
            ..NewImage::default()
        },
        create_time: now,
        expire_time: now.saturating_add(std::time::Duration::from_secs(3600)),
        revision: 1,
        delivery: Delivery::Undecided,
        segments: Vec::new(),
        lease: None,
        committed: false,
        staged_bytes: 100,
        charge_until: None,
        urls_until: None,
        cancelled: false,
    }
}

fn reservation(bytes: u64, started: Timestamp) -> UsageReservation {
    UsageReservation {
        id: uuid::Uuid::new_v4().to_string(),
        bytes,
        images: 1,
        started,
    }
}

fn reserving(reservation: &UsageReservation) -> UsageChange {
    UsageChange {
        bytes: i64::try_from(reservation.bytes).unwrap(),
        images: 1,
        add: Some(reservation.clone()),
        remove: None,
    }
}

async fn usage_changes_stay_under_the_ceiling_even_at_once(store: &dyn MetadataStore) {
    let user = fresh_user();
    assert_eq!(
        store.get_usage(&user).await.unwrap(),
        UsageRecord::default(),
        "a user who never held anything holds nothing"
    );
    let ceiling = Some(UsageCeiling {
        max_bytes: 1000,
        max_images: 100,
    });
    // 16 reservations of 100 bytes at once against room for 10.
    let attempts = (0..16).map(|_| {
        let user = user.clone();
        async move {
            let change = reserving(&reservation(100, Timestamp::now()));
            store.change_usage(&user, &change, ceiling).await
        }
    });
    let results = futures::future::join_all(attempts).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    for result in &results {
        assert!(
            matches!(result, Ok(()) | Err(StorageError::ConditionFailed)),
            "{result:?}"
        );
    }
    assert_eq!(admitted, 10, "exactly the room is given");
    let usage = store.get_usage(&user).await.unwrap();
    assert_eq!((usage.held_bytes, usage.held_images), (1000, 10));
    assert_eq!(usage.reservations.len(), 10);
    assert_eq!(usage.reserved_bytes(), 1000);
    // The image ceiling holds on its own.
    let images_only = Some(UsageCeiling {
        max_bytes: u64::MAX,
        max_images: 10,
    });
    let one_more = reserving(&reservation(1, Timestamp::now()));
    assert!(matches!(
        store.change_usage(&user, &one_more, images_only).await,
        Err(StorageError::ConditionFailed)
    ));
    // Without a ceiling a change always applies; giving back lowers it.
    let give_back = UsageChange {
        bytes: -300,
        images: -3,
        ..UsageChange::default()
    };
    store.change_usage(&user, &give_back, None).await.unwrap();
    let after = store.get_usage(&user).await.unwrap();
    assert_eq!((after.held_bytes, after.held_images), (700, 7));
    assert!(after.revision > usage.revision);
}

async fn a_reservation_ends_once(store: &dyn MetadataStore) {
    let user = fresh_user();
    let held = reservation(500, Timestamp::now());
    store
        .change_usage(&user, &reserving(&held), None)
        .await
        .unwrap();
    let settle = UsageChange {
        bytes: 120 - 500,
        images: 0,
        add: None,
        remove: Some(held.clone()),
    };
    store.change_usage(&user, &settle, None).await.unwrap();
    let usage = store.get_usage(&user).await.unwrap();
    assert_eq!((usage.held_bytes, usage.held_images), (120, 1));
    assert!(usage.reservations.is_empty());
    assert!(
        matches!(
            store.change_usage(&user, &settle, None).await,
            Err(StorageError::ConditionFailed)
        ),
        "a reservation no longer held cannot end again"
    );
    assert_eq!(store.get_usage(&user).await.unwrap().held_bytes, 120);
}

async fn quota_overrides_and_recomputed_usage_keep_each_other(store: &dyn MetadataStore) {
    let user = fresh_user();
    let quota = QuotaOverride {
        max_bytes: Some(5000),
        max_images: None,
    };
    store.set_user_quota(&user, quota).await.unwrap();
    let stale = reservation(700, Timestamp::from_micros(1_000_000));
    store
        .change_usage(&user, &reserving(&stale), None)
        .await
        .unwrap();
    let read = store.get_usage(&user).await.unwrap();
    assert_eq!(read.quota, quota);
    assert_eq!(read.reservations, vec![stale]);
    let recomputed = UsageRecord {
        held_bytes: 42,
        held_images: 1,
        ..UsageRecord::default()
    };
    assert!(
        matches!(
            store
                .replace_usage(&user, &recomputed, read.revision + 1)
                .await,
            Err(StorageError::ConditionFailed)
        ),
        "a recomputation from another revision is not written"
    );
    store
        .replace_usage(&user, &recomputed, read.revision)
        .await
        .unwrap();
    let replaced = store.get_usage(&user).await.unwrap();
    assert_eq!(
        (replaced.held_bytes, replaced.held_images),
        (42, 1),
        "{replaced:?}"
    );
    assert!(replaced.reservations.is_empty());
    assert_eq!(replaced.quota, quota, "the override stays");
    // A user with no item yet is written from revision 0.
    let newcomer = fresh_user();
    store
        .replace_usage(&newcomer, &recomputed, 0)
        .await
        .unwrap();
    let listed = store.list_usage().await.unwrap();
    for expected in [&user, &newcomer] {
        let (_, usage) = listed
            .iter()
            .find(|(u, _)| u == expected)
            .expect("every usage item is listed");
        assert_eq!(usage.held_bytes, 42);
    }
    store
        .set_user_quota(&user, QuotaOverride::default())
        .await
        .unwrap();
    let cleared = store.get_usage(&user).await.unwrap();
    assert_eq!(cleared.quota, QuotaOverride::default());
    assert_eq!(cleared.held_bytes, 42, "setting a quota keeps the usage");
}

async fn an_erasure_mark_refuses_reservations_and_its_end_resets_the_usage(
    store: &dyn MetadataStore,
) {
    let user = fresh_user();
    let quota = QuotaOverride {
        max_bytes: Some(5000),
        max_images: None,
    };
    store.set_user_quota(&user, quota).await.unwrap();
    let held = reservation(300, Timestamp::now());
    store
        .change_usage(&user, &reserving(&held), None)
        .await
        .unwrap();
    let read = store.get_usage(&user).await.unwrap();
    let mut erasure = ErasureRecord {
        requested_by: user.clone(),
        requested: Timestamp::now(),
        finished: None,
        images_deleted: 0,
        sessions_deleted: 0,
    };
    assert!(
        matches!(
            store.set_erasure(&user, &erasure, read.revision + 1).await,
            Err(StorageError::ConditionFailed)
        ),
        "a mark from another revision is not written"
    );
    store
        .set_erasure(&user, &erasure, read.revision)
        .await
        .unwrap();
    let marked = store.get_usage(&user).await.unwrap();
    assert!(marked.is_being_erased(), "{marked:?}");
    assert_eq!((marked.held_bytes, marked.quota), (300, quota));
    assert!(
        matches!(
            store
                .change_usage(&user, &reserving(&reservation(1, Timestamp::now())), None)
                .await,
            Err(StorageError::ConditionFailed)
        ),
        "no reservation while the data is erased"
    );
    // What reserved before the mark still ends, and deletes give back.
    let released = UsageChange {
        bytes: -300,
        images: -1,
        add: None,
        remove: Some(held),
    };
    store.change_usage(&user, &released, None).await.unwrap();
    let give_back = UsageChange {
        bytes: -10,
        images: -1,
        ..UsageChange::default()
    };
    store.change_usage(&user, &give_back, None).await.unwrap();
    let before_end = store.get_usage(&user).await.unwrap();
    erasure.images_deleted = 7;
    erasure.finished = Some(Timestamp::now());
    store
        .set_erasure(&user, &erasure, before_end.revision)
        .await
        .unwrap();
    let ended = store.get_usage(&user).await.unwrap();
    assert!(!ended.is_being_erased());
    assert_eq!(ended.erasure.as_ref(), Some(&erasure), "the audit stays");
    assert_eq!((ended.held_bytes, ended.held_images), (0, 0));
    assert!(ended.reservations.is_empty());
    assert_eq!(ended.quota, quota, "the override is the account's");
    // A new account under the same id reserves again, keeping the audit.
    store
        .change_usage(&user, &reserving(&reservation(5, Timestamp::now())), None)
        .await
        .unwrap();
    let again = store.get_usage(&user).await.unwrap();
    assert_eq!(again.erasure, Some(erasure));
    // A recomputation by the repair pass keeps the mark and the audit.
    store
        .replace_usage(&user, &UsageRecord::default(), again.revision)
        .await
        .unwrap();
    assert!(store.get_usage(&user).await.unwrap().erasure.is_some());
}

async fn a_users_sessions_are_found_and_their_events_lose_their_images(store: &dyn MetadataStore) {
    let mut session = new_session(Timestamp::now());
    let user = session.owner.clone();
    let quota = SessionQuota {
        max_open: 10,
        max_staged_bytes: 10_000,
    };
    store.create_upload_session(&session, quota).await.unwrap();
    session.id = UploadId::new();
    session.committed = true;
    store.create_upload_session(&session, quota).await.unwrap();
    store
        .create_upload_session(&new_session(Timestamp::now()), quota)
        .await
        .unwrap();
    let mut found: Vec<UploadId> = store
        .upload_sessions_of(&user)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    found.sort_by_key(|id| id.to_string());
    assert_eq!(
        found.len(),
        2,
        "every session of the user, none of another's"
    );

    let head = store.event_head().await.unwrap();
    let record = sample_record(&user, now_micros());
    create(store, &record).await;
    let other = fresh_user();
    let theirs = sample_record(&other, now_micros());
    create(store, &theirs).await;
    store.delete(&record.id, &user).await.unwrap();
    let redacted = store.redact_events(&user).await.unwrap();
    assert_eq!(
        redacted, 1,
        "the created event had an image; the deleted none"
    );
    let events = events_of(store, EventStart::After(head.clone()), &user, 2).await;
    let kinds: Vec<(ChangeKind, bool)> = events
        .iter()
        .map(|e| (e.event.kind, e.event.image.is_some()))
        .collect();
    assert_eq!(
        kinds,
        [(ChangeKind::Created, false), (ChangeKind::Deleted, false)]
    );
    assert_eq!(events[0].event.image_id, record.id, "ids stay");
    assert!(!events[1].event.objects.is_empty(), "object names stay");
    let theirs_events = events_of(store, EventStart::After(head), &other, 1).await;
    assert!(
        theirs_events[0].event.image.is_some(),
        "another user's events keep their images"
    );
    assert_eq!(store.redact_events(&user).await.unwrap(), 0, "idempotent");
}
