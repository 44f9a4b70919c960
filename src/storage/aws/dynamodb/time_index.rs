//! The unfiltered listing over the write-sharded `by_time` index: each time
//! shard is a partition read newest first, and the shards are merged into
//! one newest-first stream. A cursor holds where each shard stands, so a
//! page continues every shard exactly after what was returned from it.
//!
//! Index items are keys only; image records are read (in batches) only for
//! the index items the page consumes, so a page reads about one record per
//! record returned, whatever the shard count. Each shard's query costs a
//! few index items more than it returns.
use std::collections::{BTreeMap, HashMap, VecDeque};

use aws_sdk_dynamodb::types::AttributeValue;

use super::items::{
    BY_TIME, DynamoMetadataStore, decode_cursor, encode_cursor, image_id_of, n, s, time_shard_value,
};
use crate::domain::ImageId;
use crate::domain::image::Timestamp;
use crate::domain::listing::ListFilter;
use crate::domain::ports::{ListPage, StorageError};
use crate::storage::aws::errors::classify;

type Item = HashMap<String, AttributeValue>;

/// The key attributes a shard's cursor holds (the index's and the table's).
const KEY_NAMES: [&str; 4] = ["pk", "sk", BY_TIME.1, "created"];

/// Where one shard stands in a listing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum ShardPosition {
    /// Nothing read from it yet.
    Top,
    /// After this index item (a cursor of [`encode_cursor`]).
    After(String),
    /// Every item read.
    Done,
}

/// The cursor of a merged listing.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct MergedCursor {
    /// `created` (µs) of the last record returned. A shard the cursor does
    /// not name (added since by `init`) starts below it.
    pos: i64,
    shards: BTreeMap<u32, ShardPosition>,
}

impl MergedCursor {
    /// Whether `bytes` is a merged listing's cursor (rather than a single
    /// partition's, from before the index was sharded).
    pub(super) fn is_merged(bytes: &[u8]) -> bool {
        serde_json::from_slice::<MergedCursor>(bytes).is_ok()
    }

    /// A merged cursor, or a single-partition one read as shard 0's
    /// position: a page walk begun before the index was sharded continues.
    fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        if let Ok(merged) = serde_json::from_slice::<MergedCursor>(bytes) {
            return Ok(merged);
        }
        let key = decode_cursor(bytes)?;
        let pos = created_of(&key).ok_or_else(|| StorageError::internal("malformed cursor"))?;
        let text = String::from_utf8(bytes.to_vec()).map_err(StorageError::internal)?;
        Ok(Self {
            pos,
            shards: BTreeMap::from([(0, ShardPosition::After(text))]),
        })
    }
}

fn created_of(item: &Item) -> Option<i64> {
    item.get("created")?.as_n().ok()?.parse().ok()
}

/// One shard's stream of index items.
struct ShardStream {
    shard: u32,
    /// After the last item consumed: what a cursor records.
    position: ShardPosition,
    /// Where the next query starts (exclusive).
    start_key: Option<Item>,
    /// Newest `created` this stream may return.
    upper: i64,
    buffer: VecDeque<Item>,
    /// Whether the store holds items beyond the buffer.
    more: bool,
}

impl ShardStream {
    fn new(shard: u32, cursor: Option<&MergedCursor>, before: i64) -> Result<Self, StorageError> {
        let mut stream = Self {
            shard,
            position: ShardPosition::Top,
            start_key: None,
            upper: before,
            buffer: VecDeque::new(),
            more: true,
        };
        match cursor.map(|c| (c.pos, c.shards.get(&shard))) {
            None | Some((_, Some(ShardPosition::Top))) => {}
            Some((_, Some(ShardPosition::After(key)))) => {
                stream.start_key = Some(decode_cursor(key.as_bytes())?);
                stream.position = ShardPosition::After(key.clone());
            }
            Some((_, Some(ShardPosition::Done))) => {
                stream.position = ShardPosition::Done;
                stream.more = false;
            }
            // A shard added after the walk began: its images older than the
            // walk's position are still to come.
            Some((pos, None)) => stream.upper = before.min(pos.saturating_sub(1)),
        }
        Ok(stream)
    }

    fn exhausted(&self) -> bool {
        self.buffer.is_empty() && !self.more
    }

    fn head_created(&self) -> Option<i64> {
        self.buffer.front().and_then(created_of)
    }
}

fn snapshot(streams: &[ShardStream], pos: i64) -> Vec<u8> {
    let shards = streams
        .iter()
        .map(|stream| {
            let position = if stream.exhausted() {
                ShardPosition::Done
            } else {
                stream.position.clone()
            };
            (stream.shard, position)
        })
        .collect();
    serde_json::to_vec(&MergedCursor { pos, shards }).unwrap_or_default()
}

impl DynamoMetadataStore {
    /// Up to `limit` records newest first from `shards` time shards, in
    /// the filter's time range (the only filters this index serves).
    pub(super) async fn list_merged(
        &self,
        filter: &ListFilter,
        cursor: Option<&[u8]>,
        limit: usize,
        shards: u32,
    ) -> Result<ListPage, StorageError> {
        let after = filter
            .created_after
            .unwrap_or(Timestamp::from_micros(i64::MIN + 1))
            .as_micros();
        let before = filter
            .created_before
            .map(|b| b.as_micros() - 1)
            .unwrap_or(i64::MAX);
        let mut page = ListPage::default();
        if after > before || limit == 0 {
            return Ok(page);
        }
        let cursor = cursor.map(MergedCursor::decode).transpose()?;
        // Shards a cursor names beyond the count in force stay in the walk.
        let count = cursor
            .as_ref()
            .and_then(|c| c.shards.keys().max().map(|m| m + 1))
            .unwrap_or(0)
            .max(shards);
        let mut streams = (0..count)
            .map(|shard| ShardStream::new(shard, cursor.as_ref(), before))
            .collect::<Result<Vec<_>, _>>()?;
        let mut first_fetch = true;
        loop {
            let remaining = limit - page.records.len();
            // Refill every live shard with nothing buffered: its next item
            // may be the newest.
            // The first read takes twice a shard's even share (the newest
            // items are rarely spread evenly), so that a page seldom needs
            // a second round trip; index items are keys only and cheap.
            let want = if first_fetch {
                2 * remaining.div_ceil(streams.len().max(1)) + 2
            } else {
                remaining + 1
            };
            first_fetch = false;
            let refills = streams
                .iter_mut()
                .filter(|stream| stream.buffer.is_empty() && stream.more)
                .map(|stream| self.refill(stream, after, want));
            futures::future::try_join_all(refills).await?;

            // Take up to `remaining` items in merged order, then read their
            // records in one batch.
            let mut taken: Vec<(Item, Vec<u8>)> = Vec::new();
            while taken.len() < remaining {
                let Some(next) = streams
                    .iter()
                    .enumerate()
                    .filter_map(|(i, stream)| Some((stream.head_created()?, i)))
                    .max()
                    .map(|(_, i)| i)
                else {
                    break;
                };
                let stream = &mut streams[next];
                let item = stream.buffer.pop_front().expect("a buffered head");
                stream.position = ShardPosition::After(
                    String::from_utf8(encode_cursor(&item, &KEY_NAMES)).unwrap_or_default(),
                );
                let pos = created_of(&item).unwrap_or(i64::MIN);
                let needs_refill = stream.buffer.is_empty() && stream.more;
                taken.push((item, snapshot(&streams, pos)));
                if needs_refill {
                    // The next merged item cannot be chosen without it.
                    break;
                }
            }
            if !taken.is_empty() {
                let ids: Vec<ImageId> = taken.iter().filter_map(|(i, _)| image_id_of(i)).collect();
                let records = self.batch_get(&ids).await?;
                page.records_read += ids.len() as u64;
                for (item, cursor) in taken {
                    // Index items may be stale or half-written: the image
                    // item must exist and match.
                    if let Some(record) = image_id_of(&item).and_then(|id| records.get(&id))
                        && filter.matches(record)
                    {
                        page.records.push(record.clone());
                        page.record_cursors.push(cursor);
                    }
                }
            }
            if streams.iter().all(ShardStream::exhausted) {
                return Ok(page);
            }
            if page.records.len() == limit {
                page.next_cursor = page.record_cursors.last().cloned();
                return Ok(page);
            }
        }
    }

    /// Reads the next items of a shard, newest first.
    async fn refill(
        &self,
        stream: &mut ShardStream,
        after: i64,
        want: usize,
    ) -> Result<(), StorageError> {
        if after > stream.upper {
            stream.more = false;
            return Ok(());
        }
        let response = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_TIME.0)
            .scan_index_forward(false)
            .limit(want.clamp(1, 1000) as i32)
            .key_condition_expression("#h = :h AND created BETWEEN :lo AND :hi")
            .expression_attribute_names("#h", BY_TIME.1)
            .expression_attribute_values(":h", s(time_shard_value(stream.shard)))
            .expression_attribute_values(":lo", n(after))
            .expression_attribute_values(":hi", n(stream.upper))
            .set_exclusive_start_key(stream.start_key.take())
            .send()
            .await
            .map_err(classify)?;
        stream.buffer.extend(response.items.unwrap_or_default());
        stream.more = response.last_evaluated_key.is_some();
        stream.start_key = response.last_evaluated_key;
        Ok(())
    }
}
