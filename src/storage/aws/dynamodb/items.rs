//! The table's item layout that the store and its time-index listing
//! share: the store itself, the `by_time` index and its shards, attribute
//! values, and listing cursors.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::domain::image::Timestamp;
use crate::domain::ports::StorageError;
use crate::domain::{ImageId, ImageRecord};

/// The `by_time` partition of time shard 0, the only one before the index
/// was sharded: images written then stay listed there.
pub(super) const ALL: &str = "image";
/// The unfiltered listing's index. One constant partition key would take
/// every write in one index partition (about 1 000 uploads/s on DynamoDB,
/// and AWS warns that a low-cardinality GSI key throttles the base table),
/// so the key is write-sharded: an image's `all` is the partition of its
/// time shard ([`time_shard_value`]), chosen by its id, and the listing
/// merges the shards newest first.
pub(super) const BY_TIME: (&str, &str) = ("by_time", "all");

/// The `all` value of time shard `shard`.
pub(super) fn time_shard_value(shard: u32) -> String {
    if shard == 0 {
        ALL.to_owned()
    } else {
        format!("{ALL}#{shard}")
    }
}

pub struct DynamoMetadataStore {
    pub(super) client: Client,
    pub(super) table: String,
    /// The time shard count last read from the table, and when.
    pub(super) time_shards: std::sync::Mutex<Option<(u32, std::time::Instant)>>,
    /// How long event items live (their `expires`).
    pub(super) event_retention: std::time::Duration,
    /// The hour of the table's first event, once read or written (see
    /// `events::EVENTS_SINCE_SK`): reads from an earlier time start there.
    pub(super) events_since: std::sync::OnceLock<i64>,
}

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The image an index item points at.
pub(super) fn image_id_of(item: &HashMap<String, AttributeValue>) -> Option<ImageId> {
    let text = match item.get("image_id") {
        Some(value) => value.as_s().ok()?.as_str(),
        None => item.get("pk")?.as_s().ok()?.strip_prefix("image#")?,
    };
    ImageId::parse(text).ok()
}

/// Cursors are the key attributes of the last index item consumed, as JSON.
pub(super) fn encode_cursor(item: &HashMap<String, AttributeValue>, names: &[&str]) -> Vec<u8> {
    let mut out = BTreeMap::new();
    for name in names {
        match item.get(*name) {
            Some(AttributeValue::S(v)) => out.insert(name.to_string(), ("S", v.clone())),
            Some(AttributeValue::N(v)) => out.insert(name.to_string(), ("N", v.clone())),
            _ => None,
        };
    }
    serde_json::to_vec(&out).unwrap_or_default()
}

pub(super) fn decode_cursor(bytes: &[u8]) -> Result<HashMap<String, AttributeValue>, StorageError> {
    let map: BTreeMap<String, (String, String)> =
        serde_json::from_slice(bytes).map_err(StorageError::internal)?;
    map.into_iter()
        .map(|(name, (kind, value))| match kind.as_str() {
            "S" => Ok((name, s(value))),
            "N" => Ok((name, n(value))),
            _ => Err(StorageError::internal("malformed listing cursor")),
        })
        .collect()
}

/// The image item's sort key.
pub(super) const IMAGE_SK: &str = "image";

/// Where the table keeps its settings: the time shard count, the hour of
/// its first event.
pub(super) const SHARDS_PK: &str = "config";

pub(super) fn image_pk(id: &ImageId) -> String {
    format!("image#{id}")
}

/// Times sort as fixed-width unsigned numbers (the sign bit flipped).
pub(super) fn time_key(time: Timestamp) -> String {
    format!("{:020}", (time.as_micros() as u64) ^ (1 << 63))
}

pub(super) fn key(pk: String, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

/// `item` with `entry` as JSON in `doc`.
pub(super) fn doc_item(
    mut item: HashMap<String, AttributeValue>,
    entry: &impl serde::Serialize,
) -> Result<HashMap<String, AttributeValue>, StorageError> {
    item.insert(
        "doc".into(),
        s(serde_json::to_string(entry).map_err(StorageError::internal)?),
    );
    Ok(item)
}

pub(super) fn decode(item: &HashMap<String, AttributeValue>) -> Result<ImageRecord, StorageError> {
    let doc = item
        .get("doc")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StorageError::internal("image item without doc"))?;
    serde_json::from_str(doc).map_err(StorageError::internal)
}
