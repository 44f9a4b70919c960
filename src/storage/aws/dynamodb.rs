//! Image records in DynamoDB: one table, no transactions.
//!
//! Items (partition key `pk`, sort key `sk`):
//! - the **image item**, `pk = image#{id}`, `sk = image`: the record as JSON
//!   in `doc`, its `rev`ision, and the attributes the global secondary
//!   indexes are built on: `owner`, `content_type`, `location` (only when
//!   set: a sparse index), `created` (microseconds) and `all` (a constant,
//!   for the unfiltered listing);
//! - a **tag item** per tag, `pk = tag#{tag}`, `sk = {created}#{id}`, naming
//!   the image (`image_id`), because a multi-valued attribute cannot key a
//!   GSI;
//! - an **idempotency item** per used idempotency key, naming the image;
//! - a **journal item** per unfinished write (`pk = pending#…`);
//! - a **journal item** per image whose encodings are still to be made in
//!   the background (`pk = encodings#{id}`);
//! - an **upload session item**, `pk = upload#{id}`, `sk = upload_session`:
//!   the session as JSON in `doc`, its `rev`ision (every change is
//!   conditional on it) and `expires` (seconds, usable as a DynamoDB TTL);
//! - an **open session item** per upload session until it commits or is
//!   removed, `pk = open_uploads#{owner}`, `sk = {expiry}#{id}`, with the
//!   bytes the session may stage (`staged`) and `expires`: a user's open
//!   sessions are one Query of the items not yet expired, read up to the
//!   cap, however many sessions the user started. A session closed while
//!   its part URLs still live leaves its item re-keyed to when they are
//!   over (`charge_until`): a tombstone that keeps counting until then;
//! - a **usage item** per user, `pk = usage#{user}`, `sk = usage` (see
//!   [`usage`]);
//! - a **review item** per image not `Active`, and an **audit item** per
//!   moderation action (see [`review`]);
//! - a **PDQ band item** per band of an image's PDQ hash, for the search of
//!   similar images (see [`similar`]).
//!
//! - an **event item** per change, and on the image item the kind of its
//!   last change (`change`) and the revision whose event is written
//!   (`event_rev`): see [`events`].
//!
//! Writes follow an order that keeps every state safe to read without
//! transactions: index items before the image item on create, after it on
//! delete; the image item is written with `attribute_not_exists` and updated
//! on its revision. A listing queries the most selective index, then reads
//! the image items and keeps only those that exist and match every filter,
//! so stale or half-written index items are never returned.
use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Region;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType, PutRequest,
    ScalarAttributeType, WriteRequest,
};

use super::errors::classify;
use super::settings::AwsSettings;
pub use events::MIN_EVENT_RETENTION;
pub use items::DynamoMetadataStore;
use items::{
    ALL, BY_TIME, IMAGE_SK, SHARDS_PK, decode, decode_cursor, doc_item, encode_cursor, image_id_of,
    image_pk, key, n, s, time_key, time_shard_value,
};
use time_index::MergedCursor;

mod events;
mod items;
mod review;
mod similar;
mod time_index;
mod usage;
use crate::domain::audit::{ActionPage, ModerationAction};
use crate::domain::event::{ChangeKind, EventRead, EventStart, ImageEvent};
use crate::domain::image::{ImageState, Timestamp};
use crate::domain::listing::ListFilter;
use crate::domain::ports::{
    CreateOutcome, ListPage, MetadataStore, PendingEncodings, PendingWrite, SessionAdmission,
    SessionQuota, StorageError,
};
use crate::domain::session::{UploadId, UploadSessionRecord};
use crate::domain::similar::{PdqHash, SimilarFound};
use crate::domain::usage::{ErasureRecord, QuotaOverride, UsageCeiling, UsageChange, UsageRecord};
use crate::domain::{ImageId, ImageRecord, UserId};

const IDEMPOTENCY_SK: &str = "idempotency";
/// How long an idempotency key claimed by an upload whose image is not
/// stored counts as that upload's: the record's writes that follow the
/// claim take milliseconds, so an older claim was left by an attempt that
/// died (or failed without releasing it).
const CLAIM_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// How long an upload waits for the image of another that claimed its
/// idempotency key first, and how often it looks.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(50);
const PENDING_SK: &str = "pending";
const SESSION_SK: &str = "upload_session";
const SHARDS_SK: &str = "time_shards";
const MAX_TIME_SHARDS: u32 = 64;
/// How long a replica trusts the shard count it read before reading it
/// again: after `init` raises the count, replicas list the new shards
/// within this long.
const SHARDS_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);
/// BatchGetItem and BatchWriteItem limits.
const BATCH_GET: usize = 100;
const BATCH_WRITE: usize = 25;
/// Unprocessed batch items are retried this many times before giving up.
const BATCH_RETRIES: usize = 8;

/// The global secondary indexes: name, partition key attribute.
const BY_OWNER: (&str, &str) = ("by_owner", "owner");
const BY_LOCATION: (&str, &str) = ("by_location", "location");
const BY_CONTENT_TYPE: (&str, &str) = ("by_content_type", "content_type");
/// An image's time shard among `count`: fixed by its id, so that every
/// write of the record lands in the same one.
fn time_shard_of(id: &ImageId, count: u32) -> u32 {
    crc32c::crc32c(id.as_bytes()) % count.max(1)
}

fn tag_pk(tag: &str) -> String {
    format!("tag#{tag}")
}

fn tag_sk(record: &ImageRecord) -> String {
    format!("{}#{}", time_key(record.create_time), record.id)
}

fn idempotency_pk(owner: &UserId, key: &str) -> String {
    // The owner's length keeps ("a#b", "c") and ("a", "b#c") apart.
    format!("idempotency#{}#{}#{}", owner.as_str().len(), owner, key)
}

/// The journal item of an image's encodings still to make.
fn encodings_pk(image_id: &ImageId) -> String {
    format!("encodings#{image_id}")
}

fn pending_pk(write: &PendingWrite) -> String {
    format!("pending#{}#{}", write.image_id, write.pending_id)
}

fn session_pk(id: &UploadId) -> String {
    format!("upload#{id}")
}

fn open_session_pk(owner: &UserId) -> String {
    // The owner's length keeps the key unambiguous, as for idempotency.
    format!("open_uploads#{}#{}", owner.as_str().len(), owner)
}

fn open_session_sk(session: &UploadSessionRecord) -> String {
    open_item_sk(session.expire_time, &session.id)
}

/// The sort key of an open session item counted until `until`.
fn open_item_sk(until: Timestamp, id: &UploadId) -> String {
    format!("{}#{}", time_key(until), id)
}

fn session_item(
    session: &UploadSessionRecord,
) -> Result<HashMap<String, AttributeValue>, StorageError> {
    let mut item = key(session_pk(&session.id), SESSION_SK);
    item.insert(
        "doc".into(),
        s(serde_json::to_string(session).map_err(StorageError::internal)?),
    );
    item.insert("rev".into(), n(session.revision));
    item.insert(
        "expires".into(),
        n(session.expire_time.as_micros().div_euclid(1_000_000)),
    );
    Ok(item)
}

fn decode_session(
    item: &HashMap<String, AttributeValue>,
) -> Result<UploadSessionRecord, StorageError> {
    let doc = item
        .get("doc")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StorageError::internal("an upload session item without its document"))?;
    serde_json::from_str(doc).map_err(StorageError::internal)
}

fn image_item(
    record: &ImageRecord,
    time_shards: u32,
) -> Result<HashMap<String, AttributeValue>, StorageError> {
    let doc = serde_json::to_string(record).map_err(StorageError::internal)?;
    let mut item = key(image_pk(&record.id), IMAGE_SK);
    item.insert("doc".into(), s(doc));
    item.insert("rev".into(), n(record.revision));
    item.insert("owner".into(), s(record.owner.as_str()));
    item.insert("content_type".into(), s(&record.content_type));
    item.insert("created".into(), n(record.create_time.as_micros()));
    item.insert(
        "all".into(),
        s(time_shard_value(time_shard_of(&record.id, time_shards))),
    );
    if !record.location.is_empty() {
        item.insert("location".into(), s(&record.location));
    }
    Ok(item)
}

fn tag_item(record: &ImageRecord, tag: &str) -> HashMap<String, AttributeValue> {
    let mut item = key(tag_pk(tag), &tag_sk(record));
    item.insert("image_id".into(), s(record.id.to_string()));
    item
}

impl DynamoMetadataStore {
    /// Deletes the record as read now, if `owner` owns it (`NotFound`,
    /// `ConditionFailed` if another's), conditional on its revision:
    /// `None` if it changed meanwhile, to be read again.
    async fn delete_at_revision(
        &self,
        id: &ImageId,
        owner: &UserId,
    ) -> Result<Option<ImageRecord>, StorageError> {
        let current = self.get(id).await?.ok_or(StorageError::NotFound)?;
        if current.owner != *owner {
            return Err(StorageError::ConditionFailed);
        }
        // Announced first: the delete cannot be acknowledged without its
        // event. A crash before the record goes leaves the delete
        // announced, and the repair pass completes it.
        let announced = self
            .write_event(ImageEvent::of_change(ChangeKind::Deleted, &current))
            .await?;
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(image_pk(id), IMAGE_SK)))
            .condition_expression("attribute_exists(pk) AND #owner = :owner AND rev = :rev")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(owner.as_str()))
            .expression_attribute_values(":rev", n(current.revision))
            .send()
            .await;
        if let Err(error) = deleted.map_err(classify) {
            self.retract_event(announced).await;
            return match error {
                // Changed or gone meanwhile: the next read says which.
                StorageError::ConditionFailed => Ok(None),
                other => Err(other),
            };
        }
        self.delete_tag_items_logged(&current, &current.tags).await;
        self.delete_review_item_logged(&current, None).await;
        self.delete_band_items_logged(&current, None).await;
        self.release_idempotency_key(&current).await;
        Ok(Some(current))
    }

    pub fn new(shared: &aws_config::SdkConfig, region: Region, settings: &AwsSettings) -> Self {
        let mut builder = aws_sdk_dynamodb::config::Builder::from(shared).region(region);
        if let Some(endpoint) = &settings.dynamodb_endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Self {
            client: Client::from_conf(builder.build()),
            table: settings.table.clone(),
            time_shards: std::sync::Mutex::new(None),
            event_retention: settings.event_retention,
            events_since: std::sync::OnceLock::new(),
        }
    }

    /// Creates the table with its indexes (on-demand capacity); an existing
    /// table is left as it is.
    pub async fn create_table(&self) -> Result<(), StorageError> {
        if self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .is_ok()
        {
            return self.wait_until_active().await;
        }
        let attribute = |name: &str, kind: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()
                .map_err(StorageError::internal)
        };
        let key_element = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(StorageError::internal)
        };
        let mut request = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key_element("pk", KeyType::Hash)?)
            .key_schema(key_element("sk", KeyType::Range)?);
        for (name, kind) in [
            ("pk", ScalarAttributeType::S),
            ("sk", ScalarAttributeType::S),
            ("owner", ScalarAttributeType::S),
            ("location", ScalarAttributeType::S),
            ("content_type", ScalarAttributeType::S),
            ("all", ScalarAttributeType::S),
            ("created", ScalarAttributeType::N),
        ] {
            request = request.attribute_definitions(attribute(name, kind)?);
        }
        for (index, hash) in [BY_OWNER, BY_LOCATION, BY_CONTENT_TYPE, BY_TIME] {
            let gsi = GlobalSecondaryIndex::builder()
                .index_name(index)
                .key_schema(key_element(hash, KeyType::Hash)?)
                .key_schema(key_element("created", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::KeysOnly)
                        .build(),
                )
                .build()
                .map_err(StorageError::internal)?;
            request = request.global_secondary_indexes(gsi);
        }
        if let Err(error) = request.send().await {
            use aws_smithy_types::error::metadata::ProvideErrorMetadata;
            if error.code() != Some("ResourceInUseException") {
                return Err(classify(error));
            }
        }
        self.wait_until_active().await
    }

    /// The table's time shard count (1 for a table from before shards),
    /// read again every [`SHARDS_REFRESH`]; the last count read stands in
    /// while the table cannot be read.
    async fn time_shards(&self) -> Result<u32, StorageError> {
        let cached = *self.time_shards.lock().expect("not poisoned");
        if let Some((count, read_at)) = cached
            && read_at.elapsed() < SHARDS_REFRESH
        {
            return Ok(count);
        }
        match self.read_time_shards().await {
            Ok(count) => {
                *self.time_shards.lock().expect("not poisoned") =
                    Some((count, std::time::Instant::now()));
                Ok(count)
            }
            Err(error) => match cached {
                Some((count, _)) => {
                    tracing::warn!(error = %crate::telemetry::error_chain(&error), "could not read the time shard count; keeping {count}");
                    Ok(count)
                }
                None => Err(error),
            },
        }
    }

    async fn read_time_shards(&self) -> Result<u32, StorageError> {
        let item = self.get_item(SHARDS_PK.into(), SHARDS_SK).await?;
        Ok(item
            .as_ref()
            .and_then(|item| item.get("shards"))
            .and_then(|value| value.as_n().ok())
            .and_then(|text| text.parse::<u32>().ok())
            .unwrap_or(1)
            .clamp(1, MAX_TIME_SHARDS))
    }

    /// Raises the table's time shard count to `count` (`init`); a lower
    /// count leaves it as it is, since images keep the shard they were
    /// written to. Returns the count now in force.
    pub async fn raise_time_shards(&self, count: u32) -> Result<u32, StorageError> {
        let count = count.clamp(1, MAX_TIME_SHARDS);
        let current = self.read_time_shards().await?;
        if count <= current {
            return Ok(current);
        }
        let mut item = key(SHARDS_PK.into(), SHARDS_SK);
        item.insert("shards".into(), n(count));
        let written = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR shards < :n")
            .expression_attribute_values(":n", n(count))
            .send()
            .await
            .map_err(classify);
        match written {
            // Raised meanwhile by another `init`, at least as far.
            Ok(_) | Err(StorageError::ConditionFailed) => self.read_time_shards().await,
            Err(error) => Err(error),
        }
    }

    /// Waits for a new table (and its indexes) to become usable.
    async fn wait_until_active(&self) -> Result<(), StorageError> {
        use aws_sdk_dynamodb::types::{IndexStatus, TableStatus};
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await;
            let table = described.map_err(classify)?.table;
            let active = table.as_ref().is_some_and(|t| {
                t.table_status == Some(TableStatus::Active)
                    && t.global_secondary_indexes()
                        .iter()
                        .all(|i| i.index_status == Some(IndexStatus::Active))
            });
            if active {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StorageError::Unavailable(
                    "the table did not become active".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn get_item(
        &self,
        pk: String,
        sk: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StorageError> {
        let response = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        Ok(response.item)
    }

    /// Writes a session item unless one has its id.
    /// `session` closes: its open session item goes, and if its part URLs
    /// still live a tombstone item with the same charge is written first,
    /// keyed by when they are over, so the owner's count never dips.
    async fn close_open_item(&self, session: &UploadSessionRecord) -> Result<(), StorageError> {
        let pk = open_session_pk(&session.owner);
        if let Some(until) = session.held_after_close(Timestamp::now()) {
            let mut tombstone = key(pk.clone(), &open_item_sk(until, &session.id));
            tombstone.insert("staged".into(), n(session.staged_bytes));
            tombstone.insert("expires".into(), n(until.as_micros().div_euclid(1_000_000)));
            self.put(tombstone).await?;
        }
        self.delete_item(pk, &open_session_sk(session)).await
    }

    async fn put_new_session(&self, session: &UploadSessionRecord) -> Result<(), StorageError> {
        self.put_new(session_item(session)?).await
    }

    /// Writes an item unless one has its key: `AlreadyExists` then.
    async fn put_new(&self, item: HashMap<String, AttributeValue>) -> Result<(), StorageError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(classify)
            .map_err(|e| match e {
                StorageError::ConditionFailed => StorageError::AlreadyExists,
                other => other,
            })?;
        Ok(())
    }

    /// Writes a journal entry (an unfinished write, an image's pending
    /// encodings): the item `pk`, its document as JSON.
    async fn put_journal_entry(
        &self,
        pk: String,
        entry: &impl serde::Serialize,
    ) -> Result<(), StorageError> {
        self.put(doc_item(key(pk, PENDING_SK), entry)?).await
    }

    /// Writes an item, replacing one with its key.
    async fn put(&self, item: HashMap<String, AttributeValue>) -> Result<(), StorageError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn delete_item(&self, pk: String, sk: &str) -> Result<(), StorageError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// The JSON documents (`doc`) of every item matching `filter`, by a
    /// scan of the whole table: for the repair pass only.
    async fn scan_docs<T: serde::de::DeserializeOwned>(
        &self,
        filter: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Vec<T>, StorageError> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression(filter)
            .set_expression_attribute_values(Some(
                values
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect(),
            ))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page.map_err(classify)?.items.unwrap_or_default() {
                let Some(doc) = item.get("doc").and_then(|v| v.as_s().ok()) else {
                    continue;
                };
                found.push(serde_json::from_str(doc).map_err(StorageError::internal)?);
            }
        }
        Ok(found)
    }

    /// Writes or deletes items in batches, retrying what DynamoDB leaves unprocessed.
    async fn batch_write(&self, mut requests: Vec<WriteRequest>) -> Result<(), StorageError> {
        while !requests.is_empty() {
            let rest = requests.split_off(requests.len().min(BATCH_WRITE));
            let mut batch = std::mem::replace(&mut requests, rest);
            for attempt in 0..=BATCH_RETRIES {
                let response = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, batch)
                    .send()
                    .await
                    .map_err(classify)?;
                batch = response
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
                if batch.is_empty() {
                    break;
                }
                back_off_unprocessed(attempt).await?;
            }
        }
        Ok(())
    }

    async fn put_tag_items(
        &self,
        record: &ImageRecord,
        tags: &[String],
    ) -> Result<(), StorageError> {
        self.write_tag_items(record, tags, true).await
    }

    async fn delete_tag_items(
        &self,
        record: &ImageRecord,
        tags: &[String],
    ) -> Result<(), StorageError> {
        self.write_tag_items(record, tags, false).await
    }

    /// Puts (or deletes) the tag index items of `record` for `tags`.
    async fn write_tag_items(
        &self,
        record: &ImageRecord,
        tags: &[String],
        put: bool,
    ) -> Result<(), StorageError> {
        let requests = tags
            .iter()
            .map(|tag| {
                let request = if put {
                    let put = PutRequest::builder()
                        .set_item(Some(tag_item(record, tag)))
                        .build();
                    WriteRequest::builder().put_request(put.map_err(StorageError::internal)?)
                } else {
                    let delete = DeleteRequest::builder()
                        .set_key(Some(key(tag_pk(tag), &tag_sk(record))))
                        .build();
                    WriteRequest::builder().delete_request(delete.map_err(StorageError::internal)?)
                };
                Ok(request.build())
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        self.batch_write(requests).await
    }

    /// Index items are harmless when stale (readers verify them), so a failed
    /// clean-up is only logged; the repair pass removes what remains.
    /// Removes an image's record (if still at its revision), its tag items
    /// and its idempotency key: a delete the repair pass completes.
    pub(super) async fn remove_image(&self, record: &ImageRecord) -> Result<(), StorageError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(image_pk(&record.id), IMAGE_SK)))
            .condition_expression("rev = :rev")
            .expression_attribute_values(":rev", n(record.revision))
            .send()
            .await
            .map_err(classify);
        match deleted {
            Ok(_) => {}
            Err(StorageError::ConditionFailed) => return Ok(()),
            Err(other) => return Err(other),
        }
        self.delete_tag_items_logged(record, &record.tags).await;
        self.delete_review_item_logged(record, None).await;
        self.delete_band_items_logged(record, None).await;
        self.release_idempotency_key(record).await;
        Ok(())
    }

    async fn delete_tag_items_logged(&self, record: &ImageRecord, tags: &[String]) {
        if let Err(error) = self.delete_tag_items(record, tags).await {
            tracing::warn!(image_id = %record.id, error = %crate::telemetry::error_chain(&error), "could not delete tag index items");
        }
    }

    /// Image items by id, read consistently; missing ones are absent.
    async fn batch_get(
        &self,
        ids: &[ImageId],
    ) -> Result<HashMap<ImageId, ImageRecord>, StorageError> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(BATCH_GET) {
            let mut unique: Vec<&ImageId> = chunk.iter().collect();
            unique.sort();
            unique.dedup();
            let mut keys: Vec<_> = unique
                .into_iter()
                .map(|id| key(image_pk(id), IMAGE_SK))
                .collect();
            for attempt in 0..=BATCH_RETRIES {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(StorageError::internal)?;
                let response = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(classify)?;
                for item in response
                    .responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default()
                {
                    let record = decode(&item)?;
                    found.insert(record.id, record);
                }
                keys = response
                    .unprocessed_keys
                    .and_then(|mut m| m.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if keys.is_empty() {
                    break;
                }
                back_off_unprocessed(attempt).await?;
            }
        }
        Ok(found)
    }

    /// Claims an idempotency key for `record`, or returns the image that
    /// already holds it. An upload that claimed it and is still storing
    /// its record is waited for (its record's writes take milliseconds), so
    /// that concurrent uploads with one key store one image; a claim left
    /// by an attempt that died (older than [`CLAIM_STALE_AFTER`] with no
    /// image) is taken over.
    async fn claim_idempotency_key(
        &self,
        record: &ImageRecord,
        idempotency_key: &str,
    ) -> Result<Option<ImageRecord>, StorageError> {
        let pk = idempotency_pk(&record.owner, idempotency_key);
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        let mut item = key(pk.clone(), IDEMPOTENCY_SK);
        item.insert("image_id".into(), s(record.id.to_string()));
        loop {
            item.insert("claimed".into(), n(Timestamp::now().as_micros()));
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await;
            match put.map_err(classify) {
                Ok(_) => return Ok(None),
                Err(StorageError::ConditionFailed) => {}
                Err(other) => return Err(other),
            }
            if let Some(existing) = self.get_item(pk.clone(), IDEMPOTENCY_SK).await? {
                let Some(holder) = image_id_of(&existing) else {
                    return Err(StorageError::internal("idempotency item without image id"));
                };
                // An earlier attempt at this very image (an upload
                // session's commit tried again).
                if holder == record.id {
                    return Ok(None);
                }
                if let Some(image) = self.get_item(image_pk(&holder), IMAGE_SK).await? {
                    return Ok(Some(decode(&image)?));
                }
                // Claims made before they carried a time count as stale.
                let claimed = existing
                    .get("claimed")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<i64>().ok());
                let stale = claimed.is_none_or(|claimed| {
                    Timestamp::now().as_micros().saturating_sub(claimed)
                        > CLAIM_STALE_AFTER.as_micros() as i64
                });
                if stale {
                    // The holder died before its image was written: take over.
                    let takeover = self
                        .client
                        .put_item()
                        .table_name(&self.table)
                        .set_item(Some(item.clone()))
                        .condition_expression("image_id = :old")
                        .expression_attribute_values(":old", s(holder.to_string()))
                        .send()
                        .await;
                    match takeover.map_err(classify) {
                        Ok(_) => return Ok(None),
                        Err(StorageError::ConditionFailed) => {}
                        Err(other) => return Err(other),
                    }
                }
            }
            // Held by an upload still storing its record, or released
            // meanwhile: look again shortly.
            if tokio::time::Instant::now() > deadline {
                return Err(StorageError::Unavailable(
                    "another upload with this idempotency key is still being stored; \
                     retry to get its image"
                        .into(),
                ));
            }
            tokio::time::sleep(CLAIM_POLL).await;
        }
    }

    async fn release_idempotency_key(&self, record: &ImageRecord) {
        let Some(idempotency_key) = &record.idempotency_key else {
            return;
        };
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(
                idempotency_pk(&record.owner, idempotency_key),
                IDEMPOTENCY_SK,
            )))
            .condition_expression("image_id = :id")
            .expression_attribute_values(":id", s(record.id.to_string()))
            .send()
            .await;
        match result.map_err(classify) {
            Ok(_) | Err(StorageError::ConditionFailed) => {}
            Err(error) => {
                tracing::warn!(image_id = %record.id, error = %crate::telemetry::error_chain(&error), "could not delete an idempotency item")
            }
        }
    }
}

/// Waits before retrying what a batch call left unprocessed (DynamoDB
/// throttles batches this way), or gives up after [`BATCH_RETRIES`].
async fn back_off_unprocessed(attempt: usize) -> Result<(), StorageError> {
    if attempt == BATCH_RETRIES {
        return Err(StorageError::Unavailable(
            "DynamoDB kept batch items unprocessed".into(),
        ));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20 << attempt.min(5))).await;
    Ok(())
}

/// Which index serves a filter: the most selective one set.
enum Access {
    Gsi {
        index: &'static str,
        hash_attribute: &'static str,
        hash_value: String,
    },
    Tag(String),
    /// The `by_time` index, whose key is sharded.
    Time,
}

impl Access {
    fn for_filter(filter: &ListFilter) -> Self {
        let gsi = |(index, hash_attribute): (&'static str, &'static str), hash_value: String| {
            Access::Gsi {
                index,
                hash_attribute,
                hash_value,
            }
        };
        if let Some(owner) = &filter.owner {
            gsi(BY_OWNER, owner.as_str().to_owned())
        } else if let Some(tag) = &filter.tag {
            Access::Tag(tag.clone())
        } else if let Some(location) = &filter.location {
            gsi(BY_LOCATION, location.clone())
        } else if let Some(content_type) = &filter.content_type {
            gsi(BY_CONTENT_TYPE, content_type.clone())
        } else {
            Access::Time
        }
    }

    /// The attributes that make up a cursor (the index's key and the table's).
    fn key_names(&self) -> Vec<&'static str> {
        match self {
            Access::Gsi { hash_attribute, .. } => vec!["pk", "sk", hash_attribute, "created"],
            Access::Tag(_) => vec!["pk", "sk"],
            Access::Time => vec!["pk", "sk", BY_TIME.1, "created"],
        }
    }
}

#[async_trait]
impl MetadataStore for DynamoMetadataStore {
    async fn get_usage(&self, user: &UserId) -> Result<UsageRecord, StorageError> {
        self.usage_get(user).await
    }

    async fn change_usage(
        &self,
        user: &UserId,
        change: &UsageChange,
        ceiling: Option<UsageCeiling>,
    ) -> Result<(), StorageError> {
        self.usage_change(user, change, ceiling).await
    }

    async fn set_user_quota(
        &self,
        user: &UserId,
        quota: QuotaOverride,
    ) -> Result<(), StorageError> {
        self.usage_set_quota(user, quota).await
    }

    async fn replace_usage(
        &self,
        user: &UserId,
        usage: &UsageRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        self.usage_replace(user, usage, expected_revision).await
    }

    async fn list_usage(&self) -> Result<Vec<(UserId, UsageRecord)>, StorageError> {
        self.usage_list().await
    }

    async fn set_erasure(
        &self,
        user: &UserId,
        erasure: &ErasureRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        self.usage_set_erasure(user, erasure, expected_revision)
            .await
    }

    /// A scan of the session items: sessions are keyed by id alone, and
    /// only open ones are indexed by owner.
    async fn upload_sessions_of(
        &self,
        owner: &UserId,
    ) -> Result<Vec<UploadSessionRecord>, StorageError> {
        let sessions: Vec<UploadSessionRecord> = self
            .scan_docs("sk = :sk", vec![(":sk", s(SESSION_SK))])
            .await?;
        Ok(sessions
            .into_iter()
            .filter(|session| session.owner == *owner)
            .collect())
    }

    async fn redact_events(&self, owner: &UserId) -> Result<usize, StorageError> {
        self.redact_owner_events(owner).await
    }

    async fn record_pending_write(&self, write: &PendingWrite) -> Result<(), StorageError> {
        self.put_journal_entry(pending_pk(write), write).await
    }

    async fn clear_pending_write(&self, write: &PendingWrite) -> Result<(), StorageError> {
        self.delete_item(pending_pk(write), PENDING_SK).await
    }

    async fn pending_writes(
        &self,
        older_than: Timestamp,
    ) -> Result<Vec<PendingWrite>, StorageError> {
        // Only the repair pass reads the journal: a scan is fine there.
        let writes: Vec<PendingWrite> = self
            .scan_docs("begins_with(pk, :p)", vec![(":p", s("pending#"))])
            .await?;
        Ok(writes
            .into_iter()
            .filter(|write| write.started < older_than)
            .collect())
    }

    async fn record_pending_encodings(
        &self,
        pending: &PendingEncodings,
    ) -> Result<(), StorageError> {
        self.put_journal_entry(encodings_pk(&pending.image_id), pending)
            .await
    }

    async fn clear_pending_encodings(&self, image_id: &ImageId) -> Result<(), StorageError> {
        self.delete_item(encodings_pk(image_id), PENDING_SK).await
    }

    async fn pending_encodings(
        &self,
        older_than: Timestamp,
    ) -> Result<Vec<PendingEncodings>, StorageError> {
        // Only the repair pass reads the journal: a scan is fine there.
        let pending: Vec<PendingEncodings> = self
            .scan_docs("begins_with(pk, :p)", vec![(":p", s("encodings#"))])
            .await?;
        Ok(pending
            .into_iter()
            .filter(|pending| pending.started < older_than)
            .collect())
    }

    /// Stores a new session, counted among its owner's open ones: its open
    /// session item is written first, then the owner's open items are
    /// read back (a strongly consistent Query of those not expired, at
    /// most the cap + 1); over the quota, the item is removed again and
    /// the session refused. Of two sessions started at once past the cap
    /// both may be refused, never both admitted.
    async fn create_upload_session(
        &self,
        session: &UploadSessionRecord,
        quota: SessionQuota,
    ) -> Result<SessionAdmission, StorageError> {
        if self
            .get_item(session_pk(&session.id), SESSION_SK)
            .await?
            .is_some()
        {
            return Err(StorageError::AlreadyExists);
        }
        let (pk, sk) = (open_session_pk(&session.owner), open_session_sk(session));
        let mut open_item = key(pk.clone(), &sk);
        open_item.insert("staged".into(), n(session.staged_bytes));
        open_item.insert(
            "expires".into(),
            n(session.expire_time.as_micros().div_euclid(1_000_000)),
        );
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(open_item))
            .send()
            .await
            .map_err(classify)?;
        let open = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND sk > :now")
            .expression_attribute_values(":pk", s(pk.clone()))
            .expression_attribute_values(":now", s(time_key(Timestamp::now())))
            .projection_expression("staged")
            .limit(quota.max_open.saturating_add(1) as i32)
            .send()
            .await
            .map_err(classify);
        let admission = open.and_then(|open| {
            let staged: Result<Vec<u64>, StorageError> = open
                .items()
                .iter()
                .map(|item| {
                    item.get("staged")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| {
                            StorageError::internal("an open session item without staged")
                        })
                })
                .collect();
            Ok(quota.admits(staged?))
        });
        if !matches!(admission, Ok(SessionAdmission::Created)) {
            self.delete_item(pk, &sk).await?;
            return admission;
        }
        let created = self.put_new_session(session).await;
        if created.is_err() {
            self.delete_item(pk, &sk).await?;
        }
        created.map(|()| SessionAdmission::Created)
    }

    async fn get_upload_session(
        &self,
        id: &UploadId,
    ) -> Result<Option<UploadSessionRecord>, StorageError> {
        self.get_item(session_pk(id), SESSION_SK)
            .await?
            .as_ref()
            .map(decode_session)
            .transpose()
    }

    async fn replace_upload_session(
        &self,
        session: &UploadSessionRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        let written = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(session_item(session)?))
            .condition_expression("attribute_exists(pk) AND rev = :rev")
            .expression_attribute_values(":rev", n(expected_revision))
            .send()
            .await
            .map_err(classify);
        match written {
            // Closed (committed or cancelled), it holds nothing staged: its
            // slot is free, unless its part URLs still live.
            Ok(_) if session.is_closed() => self.close_open_item(session).await,
            Ok(_) => Ok(()),
            Err(StorageError::ConditionFailed) => {
                match self.get_item(session_pk(&session.id), SESSION_SK).await? {
                    None => Err(StorageError::NotFound),
                    Some(_) => Err(StorageError::ConditionFailed),
                }
            }
            Err(other) => Err(other),
        }
    }

    async fn delete_upload_session(&self, id: &UploadId) -> Result<(), StorageError> {
        let Some(item) = self.get_item(session_pk(id), SESSION_SK).await? else {
            return Ok(());
        };
        // The session first: a failure after it leaves an open item that
        // only counts until the session's expiry (and DynamoDB's TTL
        // removes it).
        self.delete_item(session_pk(id), SESSION_SK).await?;
        let session = decode_session(&item)?;
        self.close_open_item(&session).await
    }

    async fn expired_upload_sessions(
        &self,
        now: Timestamp,
    ) -> Result<Vec<UploadSessionRecord>, StorageError> {
        // Only the repair pass asks: a scan is fine there, as for the journal.
        let sessions: Vec<UploadSessionRecord> = self
            .scan_docs(
                "begins_with(pk, :p) AND expires <= :now",
                vec![
                    (":p", s("upload#")),
                    (":now", n(now.as_micros().div_euclid(1_000_000))),
                ],
            )
            .await?;
        Ok(sessions
            .into_iter()
            .filter(|session| session.is_expired(now))
            .collect())
    }

    async fn remove_stale_index_entries(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<usize, StorageError> {
        // A repair pass may scan: it runs rarely and reads each item once.
        let mut candidates: Vec<(String, String, ImageId)> = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression(
                "begins_with(pk, :tag) OR begins_with(pk, :review) OR begins_with(pk, :pdq)",
            )
            .expression_attribute_values(":tag", s("tag#"))
            .expression_attribute_values(":review", s(review::REVIEW_PK_PREFIX))
            .expression_attribute_values(":pdq", s(similar::BAND_PK_PREFIX))
            .projection_expression("pk, sk, image_id")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page.map_err(classify)?.items.unwrap_or_default() {
                let (Some(pk), Some(sk), Some(id)) = (
                    item.get("pk").and_then(|v| v.as_s().ok()).cloned(),
                    item.get("sk").and_then(|v| v.as_s().ok()).cloned(),
                    image_id_of(&item),
                ) else {
                    continue;
                };
                let written = sk
                    .split('#')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(|t| Timestamp::from_micros((t ^ (1 << 63)) as i64));
                if written.is_some_and(|t| t < older_than) {
                    candidates.push((pk, sk, id));
                }
            }
        }
        let ids: Vec<ImageId> = candidates.iter().map(|(_, _, id)| *id).collect();
        let records = self.batch_get(&ids).await?;
        let stale: Vec<WriteRequest> = candidates
            .into_iter()
            .filter(|(pk, sk, id)| match records.get(id) {
                None => true,
                Some(record) if review::is_review_pk(pk) => {
                    review::review_key(record) != Some((pk.clone(), sk.clone()))
                }
                Some(record) if similar::is_band_pk(pk) => {
                    !similar::band_keys(record).contains(&(pk.clone(), sk.clone()))
                }
                Some(record) => {
                    let tag = pk.strip_prefix("tag#").unwrap_or_default();
                    !record.tags.iter().any(|t| t == tag) || *sk != tag_sk(record)
                }
            })
            .filter_map(|(pk, sk, _)| {
                let delete = DeleteRequest::builder()
                    .set_key(Some(key(pk, &sk)))
                    .build()
                    .ok()?;
                Some(WriteRequest::builder().delete_request(delete).build())
            })
            .collect();
        let count = stale.len();
        if !dry_run {
            self.batch_write(stale).await?;
        }
        Ok(count)
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        // One attempt: a health check wants the state now, not after retries.
        self.client
            .describe_table()
            .table_name(&self.table)
            .customize()
            .config_override(
                aws_sdk_dynamodb::config::Builder::new()
                    .retry_config(aws_config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    async fn create(&self, record: &ImageRecord) -> Result<CreateOutcome, StorageError> {
        if let Some(idempotency_key) = &record.idempotency_key
            && let Some(existing) = self.claim_idempotency_key(record, idempotency_key).await?
        {
            return Ok(CreateOutcome::IdempotencyKeyTaken(Box::new(existing)));
        }
        let written = async {
            self.put_tag_items(record, &record.tags).await?;
            self.put_review_item(record, None).await?;
            self.put_band_items(record, None).await?;
            let mut item = image_item(record, self.time_shards().await?)?;
            events::mark_change(&mut item, ChangeKind::Created);
            self.put_new(item).await
        }
        .await;
        let announced = match written {
            Ok(()) => match self.announce(ChangeKind::Created, record).await {
                Ok(()) => return Ok(CreateOutcome::Created),
                // Not acknowledged: the record goes again (the upload
                // removes its bytes). Were this to fail too, the repair
                // pass would announce the record.
                Err(error) => {
                    if let Err(undo) = self.delete_item(image_pk(&record.id), IMAGE_SK).await {
                        tracing::warn!(error = %crate::telemetry::error_chain(&undo), "a record without its event stays until the repair pass");
                    }
                    error
                }
            },
            Err(error) => error,
        };
        self.delete_tag_items_logged(record, &record.tags).await;
        self.delete_review_item_logged(record, None).await;
        self.delete_band_items_logged(record, None).await;
        self.release_idempotency_key(record).await;
        Err(announced)
    }

    async fn keyed_image(
        &self,
        owner: &UserId,
        idempotency_key: &str,
    ) -> Result<Option<ImageRecord>, StorageError> {
        let claim = self
            .get_item(idempotency_pk(owner, idempotency_key), IDEMPOTENCY_SK)
            .await?;
        match claim.as_ref().and_then(image_id_of) {
            Some(id) => self.get(&id).await,
            None => Ok(None),
        }
    }

    async fn get(&self, id: &ImageId) -> Result<Option<ImageRecord>, StorageError> {
        self.get_item(image_pk(id), IMAGE_SK)
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }

    async fn get_many(&self, ids: &[ImageId]) -> Result<Vec<ImageRecord>, StorageError> {
        Ok(self.batch_get(ids).await?.into_values().collect())
    }

    async fn replace(
        &self,
        record: &ImageRecord,
        expected_revision: u64,
        change: ChangeKind,
    ) -> Result<(), StorageError> {
        let current = self.get(&record.id).await?.ok_or(StorageError::NotFound)?;
        if current.revision != expected_revision {
            return Err(StorageError::ConditionFailed);
        }
        let added: Vec<String> = record
            .tags
            .iter()
            .filter(|t| !current.tags.contains(t))
            .cloned()
            .collect();
        let removed: Vec<String> = current
            .tags
            .iter()
            .filter(|t| !record.tags.contains(t))
            .cloned()
            .collect();
        self.put_tag_items(record, &added).await?;
        self.put_review_item(record, Some(&current)).await?;
        self.put_band_items(record, Some(&current)).await?;
        let mut item = image_item(record, self.time_shards().await?)?;
        events::mark_change(&mut item, change);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_exists(pk) AND rev = :expected")
            .expression_attribute_values(":expected", n(expected_revision))
            .send()
            .await;
        if let Err(error) = put.map_err(classify) {
            self.delete_tag_items_logged(record, &added).await;
            self.delete_review_item_logged(record, Some(&current)).await;
            self.delete_band_items_logged(record, Some(&current)).await;
            return match error {
                StorageError::ConditionFailed if self.get(&record.id).await?.is_none() => {
                    Err(StorageError::NotFound)
                }
                other => Err(other),
            };
        }
        self.delete_tag_items_logged(&current, &removed).await;
        self.delete_review_item_logged(&current, Some(record)).await;
        self.delete_band_items_logged(&current, Some(record)).await;
        // The change is made; unannounced, the call fails and the repair
        // pass announces it.
        self.announce(change, record).await
    }

    async fn delete(&self, id: &ImageId, owner: &UserId) -> Result<ImageRecord, StorageError> {
        // A record changed between the read and the delete (an encoding
        // stored in the background, a moderator's change) is read again:
        // the owner's delete is not refused for it.
        for _ in 0..5 {
            if let Some(deleted) = self.delete_at_revision(id, owner).await? {
                return Ok(deleted);
            }
        }
        // Changed under every attempt.
        Err(StorageError::ConditionFailed)
    }

    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StorageError> {
        let mut access = Access::for_filter(filter);
        if matches!(access, Access::Time) {
            let shards = self.time_shards().await?;
            if shards > 1 || cursor.is_some_and(MergedCursor::is_merged) {
                return self.list_merged(filter, cursor, limit, shards).await;
            }
            // One shard: its partition alone, with plain cursors, as before
            // the index was sharded.
            access = Access::Gsi {
                index: BY_TIME.0,
                hash_attribute: BY_TIME.1,
                hash_value: ALL.to_owned(),
            };
        }
        let key_names = access.key_names();
        let mut start_key = cursor.map(decode_cursor).transpose()?;
        let after = filter
            .created_after
            .unwrap_or(Timestamp::from_micros(i64::MIN + 1));
        let before = filter
            .created_before
            .map(|b| b.as_micros() - 1)
            .unwrap_or(i64::MAX);
        if after.as_micros() > before {
            return Ok(ListPage::default());
        }
        let mut page = ListPage::default();
        loop {
            let want = (limit - page.records.len() + 1).min(1000) as i32;
            let query = self
                .client
                .query()
                .table_name(&self.table)
                .scan_index_forward(false)
                .limit(want);
            let query = match &access {
                Access::Time => {
                    return Err(StorageError::internal(
                        "the sharded time index is listed by list_merged",
                    ));
                }
                Access::Gsi {
                    index,
                    hash_attribute,
                    hash_value,
                } => query
                    .index_name(*index)
                    .key_condition_expression("#h = :h AND created BETWEEN :lo AND :hi")
                    .expression_attribute_names("#h", *hash_attribute)
                    .expression_attribute_values(":h", s(hash_value))
                    .expression_attribute_values(":lo", n(after.as_micros()))
                    .expression_attribute_values(":hi", n(before)),
                Access::Tag(tag) => query
                    .key_condition_expression("pk = :h AND sk BETWEEN :lo AND :hi")
                    .expression_attribute_values(":h", s(tag_pk(tag)))
                    .expression_attribute_values(":lo", s(time_key(after)))
                    .expression_attribute_values(
                        ":hi",
                        s(format!("{}~", time_key(Timestamp::from_micros(before)))),
                    ),
            };
            let response = query
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(classify)?;
            let items = response.items.unwrap_or_default();
            let ids: Vec<ImageId> = items.iter().filter_map(image_id_of).collect();
            let records = self.batch_get(&ids).await?;
            page.records_read += ids.len() as u64;
            let mut last_consumed = None;
            for item in &items {
                if page.records.len() == limit {
                    page.next_cursor = last_consumed.map(|i| encode_cursor(i, &key_names));
                    return Ok(page);
                }
                last_consumed = Some(item);
                // Verify against the image item: it must exist and match
                // every filter (index items may be stale or half-written).
                if let Some(record) = image_id_of(item).and_then(|id| records.get(&id))
                    && filter.matches(record)
                {
                    page.records.push(record.clone());
                    page.record_cursors.push(encode_cursor(item, &key_names));
                }
            }
            match response.last_evaluated_key {
                None => return Ok(page),
                Some(last) if page.records.len() == limit => {
                    page.next_cursor = Some(encode_cursor(&last, &key_names));
                    return Ok(page);
                }
                Some(last) => start_key = Some(last),
            }
        }
    }

    async fn list_for_review(
        &self,
        state: ImageState,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StorageError> {
        self.review_page(state, cursor, limit).await
    }

    async fn find_similar(
        &self,
        hash: &PdqHash,
        max_distance: u32,
        limit: usize,
        per_band: usize,
    ) -> Result<SimilarFound, StorageError> {
        self.similar(hash, max_distance, limit, per_band).await
    }

    async fn append_moderation_action(
        &self,
        action: &ModerationAction,
    ) -> Result<(), StorageError> {
        self.put_action(action).await
    }

    async fn list_moderation_actions(
        &self,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ActionPage, StorageError> {
        self.action_page(cursor, limit).await
    }

    async fn read_events(
        &self,
        start: &EventStart,
        limit: usize,
    ) -> Result<EventRead, StorageError> {
        self.read_event_page(start, limit).await
    }

    async fn event_head(&self) -> Result<Vec<u8>, StorageError> {
        // Read by time: "now" is a time (see `event_lookback`).
        Ok(time_key(Timestamp::now()).into_bytes())
    }

    async fn remove_expired_events(&self, _older_than: Timestamp) -> Result<usize, StorageError> {
        // Event items carry `expires`, the table's TTL attribute.
        Ok(0)
    }

    async fn write_missing_events(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<usize, StorageError> {
        self.repair_events(older_than, dry_run).await
    }

    fn event_lookback(&self) -> Option<std::time::Duration> {
        Some(events::EVENT_LOOKBACK)
    }
}
