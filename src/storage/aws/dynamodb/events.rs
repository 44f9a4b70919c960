//! The event log in DynamoDB, without transactions.
//!
//! An **event item** per change, `pk = events#{hour}#{shard}` (the hour of
//! its time, and one of [`EVENT_SHARDS`] chosen by the image id, so that
//! writes spread over partitions like the `by_time` index's), `sk =
//! {time}#{image_id}#{revision}`: the sort key orders the log by time, and
//! is the event's position. It holds the event as JSON (`doc`) and
//! `expires` (seconds: the table's TTL attribute, `--event-retention` after
//! its time; reads skip expired items DynamoDB has not removed yet).
//!
//! Writers place events by their own clocks, so a reader cannot trust
//! "after the last time seen": it re-reads the last [`EVENT_LOOKBACK`] of
//! the log on every poll and drops what it has seen (`domain::watch`).
//! That is enough because an event is readable within
//! [`EVENT_WRITE_BOUND`] of its time: a write that took longer is made
//! again with a new time (and the late copy deleted) before the change is
//! acknowledged. The difference, 3 s, is what the replicas' clocks may
//! disagree by.
//!
//! Order of writes: the image item, then its event, then `event_rev` on
//! the image item (the revision whose event is written). A crash between
//! them leaves a change without its event: the repair pass finds image
//! items whose `event_rev` is not their `rev` and writes their event then,
//! with the time of that write (every watcher is before it: none misses
//! it). The change's kind is kept on the image item (`change`) for that.
//! A delete writes its event first, then removes the image item: a crash
//! between them leaves a delete announced but not done, which the repair
//! pass completes.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;

use super::items::{
    DynamoMetadataStore, IMAGE_SK, SHARDS_PK, decode, image_pk, key, n, s, time_key,
};
use crate::domain::event::{ChangeKind, EventRead, EventStart, ImageEvent, StoredEvent};
use crate::domain::image::Timestamp;
use crate::domain::ports::StorageError;
use crate::domain::{ImageId, ImageRecord, UserId};
use crate::storage::aws::errors::classify;

/// Partitions of each hour of the log.
pub(super) const EVENT_SHARDS: u32 = 8;
const HOUR_MICROS: i64 = 3_600_000_000;
/// How far back a reader re-reads the log on every poll.
pub const EVENT_LOOKBACK: Duration = Duration::from_secs(5);
/// The shortest retention this log serves: a watcher's cursor is up to the
/// lookback behind its last event, so it must not expire at once.
pub const MIN_EVENT_RETENTION: Duration = Duration::from_secs(2 * EVENT_LOOKBACK.as_secs());
/// The longest an event write may take before the change is acknowledged.
const EVENT_WRITE_BOUND: Duration = Duration::from_secs(2);
/// Writes of one event, each with a new time, before the change is refused
/// as UNAVAILABLE.
const EVENT_WRITE_ATTEMPTS: usize = 3;

/// The item (`pk = config`) holding the hour of the table's first event,
/// so that a read from the oldest retained time (a week back) does not
/// query every empty hour before the log began.
const EVENTS_SINCE_SK: &str = "events_since";

fn event_pk(hour: i64, shard: u32) -> String {
    format!("events#{hour}#{shard}")
}

fn event_shard(id: &ImageId) -> u32 {
    crc32c::crc32c(id.as_bytes()) % EVENT_SHARDS
}

fn event_sk(event: &ImageEvent) -> String {
    format!(
        "{}#{}#{:020}",
        time_key(event.time),
        event.image_id,
        event.revision
    )
}

/// The kind of change an image item's `change` attribute names.
fn kind_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Created => "created",
        ChangeKind::Updated => "updated",
        ChangeKind::VariantsAdded => "variants_added",
        ChangeKind::Deleted => "deleted",
        ChangeKind::StateChanged => "state_changed",
        ChangeKind::Purged => "purged",
    }
}

fn kind_of(name: &str) -> Option<ChangeKind> {
    ChangeKind::ALL.into_iter().find(|k| kind_name(*k) == name)
}

/// The attributes an image item carries for its event: the kind of the
/// change that wrote it.
pub(super) fn mark_change(item: &mut HashMap<String, AttributeValue>, kind: ChangeKind) {
    item.insert("change".into(), s(kind_name(kind)));
}

impl DynamoMetadataStore {
    /// Writes `event` with a time of now, so that it is readable within
    /// [`EVENT_WRITE_BOUND`] of its time: a write that took longer is made
    /// again with a new time and the late copy deleted (a reader may have
    /// seen it: delivery is at least once).
    pub(super) async fn write_event(
        &self,
        mut event: ImageEvent,
    ) -> Result<(String, String), StorageError> {
        self.note_events_since().await?;
        for _ in 0..EVENT_WRITE_ATTEMPTS {
            event.time = Timestamp::now();
            let (pk, sk) = (
                event_pk(
                    event.time.as_micros().div_euclid(HOUR_MICROS),
                    event_shard(&event.image_id),
                ),
                event_sk(&event),
            );
            let mut item = key(pk.clone(), &sk);
            item.insert(
                "doc".into(),
                s(serde_json::to_string(&event).map_err(StorageError::internal)?),
            );
            let expires = event
                .time
                .saturating_add(self.event_retention)
                .as_micros()
                .div_euclid(1_000_000);
            item.insert("expires".into(), n(expires));
            let started = Instant::now();
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .send()
                .await
                .map_err(classify)?;
            if started.elapsed() <= EVENT_WRITE_BOUND {
                return Ok((pk, sk));
            }
            tracing::warn!(took = ?started.elapsed(), "an event write was late; writing it again");
            if let Err(error) = self.delete_event_item(pk, &sk).await {
                tracing::warn!(error = %crate::telemetry::error_chain(&error), "a late event copy stays: it may be delivered twice");
            }
        }
        Err(StorageError::Unavailable(
            "the event log did not take an event in time".into(),
        ))
    }

    /// Writes the hour of the first event, once per table (before any
    /// event, so that a reader never starts after one).
    async fn note_events_since(&self) -> Result<(), StorageError> {
        if self.events_since.get().is_some() {
            return Ok(());
        }
        let hour = Timestamp::now().as_micros().div_euclid(HOUR_MICROS) - 1;
        let mut item = key(SHARDS_PK.to_owned(), EVENTS_SINCE_SK);
        item.insert("hour".into(), n(hour));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(classify);
        match put {
            Ok(_) => {
                let _ = self.events_since.set(hour);
                Ok(())
            }
            Err(StorageError::ConditionFailed) => self.read_events_since().await.map(|_| ()),
            Err(other) => Err(other),
        }
    }

    /// The hour of the table's first event; `None` while there is none.
    async fn read_events_since(&self) -> Result<Option<i64>, StorageError> {
        if let Some(hour) = self.events_since.get() {
            return Ok(Some(*hour));
        }
        let item = self.get_item(SHARDS_PK.to_owned(), EVENTS_SINCE_SK).await?;
        let hour = item
            .as_ref()
            .and_then(|item| item.get("hour"))
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok());
        if let Some(hour) = hour {
            let _ = self.events_since.set(hour);
        }
        Ok(hour)
    }

    /// Removes the image from every event of `owner` still in the log, by
    /// a scan of the whole table (event items carry no owner attribute an
    /// index could key): read capacity proportional to the table, for an
    /// erasure only. Each event is rewritten only if it is still there
    /// (the TTL may remove it meanwhile).
    pub(super) async fn redact_owner_events(&self, owner: &UserId) -> Result<usize, StorageError> {
        let mut redacted = 0;
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(pk, :p)")
            .expression_attribute_values(":p", s("events#"))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page.map_err(classify)?.items.unwrap_or_default() {
                let Some(doc) = item.get("doc").and_then(|v| v.as_s().ok()) else {
                    continue;
                };
                let mut event: ImageEvent =
                    serde_json::from_str(doc).map_err(StorageError::internal)?;
                if event.owner != *owner || event.image.take().is_none() {
                    continue;
                }
                let (Some(pk), Some(sk)) = (item.get("pk"), item.get("sk")) else {
                    continue;
                };
                let doc = serde_json::to_string(&event).map_err(StorageError::internal)?;
                let updated = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", pk.clone())
                    .key("sk", sk.clone())
                    .update_expression("SET doc = :d")
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_values(":d", s(doc))
                    .send()
                    .await
                    .map_err(classify);
                match updated {
                    Ok(_) => redacted += 1,
                    Err(StorageError::ConditionFailed) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(redacted)
    }

    async fn delete_event_item(&self, pk: String, sk: &str) -> Result<(), StorageError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Removes the event written at `at` for a change that did not happen.
    pub(super) async fn retract_event(&self, at: (String, String)) {
        let (pk, sk) = at;
        if let Err(error) = self.delete_event_item(pk, &sk).await {
            tracing::warn!(error = %crate::telemetry::error_chain(&error), "the event of a refused change stays");
        }
    }

    /// Records on the image item that the event of `revision` is written
    /// (unless the item changed since: the next change marks its own).
    pub(super) async fn mark_event_written(
        &self,
        id: &ImageId,
        revision: u64,
    ) -> Result<(), StorageError> {
        let marked = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(image_pk(id), IMAGE_SK)))
            .update_expression("SET event_rev = :rev")
            .condition_expression("rev = :rev")
            .expression_attribute_values(":rev", n(revision))
            .send()
            .await
            .map_err(classify);
        match marked {
            Ok(_) | Err(StorageError::ConditionFailed) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// The change's event, then the mark that it is written.
    pub(super) async fn announce(
        &self,
        kind: ChangeKind,
        record: &ImageRecord,
    ) -> Result<(), StorageError> {
        self.write_event(ImageEvent::of_change(kind, record))
            .await?;
        self.mark_event_written(&record.id, record.revision).await
    }

    /// Up to `limit` events from `start`, in position order: hour by hour,
    /// every shard of an hour queried and merged.
    pub(super) async fn read_event_page(
        &self,
        start: &EventStart,
        limit: usize,
    ) -> Result<EventRead, StorageError> {
        let (from, exclusive) = match start {
            EventStart::Since(time) => (time_key(*time), false),
            EventStart::After(position) => match std::str::from_utf8(position) {
                // An event's position, or the bare time of "now".
                Ok(sk) if is_event_sk(sk) || (sk.len() == 20 && micros_of(sk).is_some()) => {
                    (sk.to_owned(), true)
                }
                _ => return Ok(EventRead::Malformed),
            },
            // Watchers of this store start by time.
            EventStart::Oldest => return Ok(EventRead::Malformed),
        };
        let Some(from_micros) = micros_of(&from) else {
            return Ok(EventRead::Malformed);
        };
        let now = Timestamp::now();
        let now_seconds = now.as_micros().div_euclid(1_000_000);
        // Writers' clocks may run ahead of this one by the lookback.
        let last_hour =
            (now.as_micros() + EVENT_LOOKBACK.as_micros() as i64).div_euclid(HOUR_MICROS);
        let Some(first_hour) = self.read_events_since().await? else {
            return Ok(EventRead::Events(Vec::new()));
        };
        let mut events: Vec<StoredEvent> = Vec::new();
        let mut hour = from_micros.div_euclid(HOUR_MICROS).max(first_hour);
        while hour <= last_hour && events.len() < limit {
            let queries = (0..EVENT_SHARDS).map(|shard| {
                let condition = if exclusive {
                    "pk = :pk AND sk > :from"
                } else {
                    "pk = :pk AND sk >= :from"
                };
                self.client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression(condition)
                    .expression_attribute_values(":pk", s(event_pk(hour, shard)))
                    .expression_attribute_values(":from", s(&from))
                    .limit(limit as i32)
                    .send()
            });
            let mut found: Vec<StoredEvent> = Vec::new();
            for response in futures::future::join_all(queries).await {
                for item in response.map_err(classify)?.items.unwrap_or_default() {
                    let expired = item
                        .get("expires")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse::<i64>().ok())
                        .is_some_and(|expires| expires < now_seconds);
                    let (Some(sk), Some(doc)) = (
                        item.get("sk").and_then(|v| v.as_s().ok()),
                        item.get("doc").and_then(|v| v.as_s().ok()),
                    ) else {
                        continue;
                    };
                    if expired {
                        continue;
                    }
                    let event: ImageEvent =
                        serde_json::from_str(doc).map_err(StorageError::internal)?;
                    found.push(StoredEvent {
                        position: sk.as_bytes().to_vec(),
                        event,
                    });
                }
            }
            // Each shard returned its first `limit` at most: the first
            // `limit` of them all are the hour's first `limit`.
            found.sort_by(|a, b| a.position.cmp(&b.position));
            found.truncate(limit - events.len());
            events.extend(found);
            hour += 1;
        }
        Ok(EventRead::Events(events))
    }

    /// Writes the event of every change a crash left without one, and
    /// completes deletes announced but not done; both older than
    /// `older_than`. Returns how many.
    pub(super) async fn repair_events(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<usize, StorageError> {
        let mut repaired = 0;
        // A repair pass may scan: it runs rarely and reads each item once.
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression(
                "sk = :image AND attribute_exists(change) AND \
                 (attribute_not_exists(event_rev) OR event_rev <> rev)",
            )
            .expression_attribute_values(":image", s(IMAGE_SK))
            .into_paginator()
            .send();
        let mut unannounced: Vec<(ChangeKind, ImageRecord)> = Vec::new();
        while let Some(page) = pages.next().await {
            for item in page.map_err(classify)?.items.unwrap_or_default() {
                let record = decode(&item)?;
                let kind = item
                    .get("change")
                    .and_then(|v| v.as_s().ok())
                    .and_then(|name| kind_of(name));
                if let Some(kind) = kind
                    && record.update_time < older_than
                {
                    unannounced.push((kind, record));
                }
            }
        }
        for (kind, record) in unannounced {
            repaired += 1;
            if !dry_run {
                self.announce(kind, &record).await?;
            }
        }
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(pk, :events)")
            .expression_attribute_values(":events", s("events#"))
            .into_paginator()
            .send();
        let mut announced_deletes: Vec<ImageEvent> = Vec::new();
        while let Some(page) = pages.next().await {
            for item in page.map_err(classify)?.items.unwrap_or_default() {
                let Some(doc) = item.get("doc").and_then(|v| v.as_s().ok()) else {
                    continue;
                };
                let event: ImageEvent =
                    serde_json::from_str(doc).map_err(StorageError::internal)?;
                if event.kind == ChangeKind::Deleted && event.time < older_than {
                    announced_deletes.push(event);
                }
            }
        }
        for event in announced_deletes {
            let still = self
                .get_item(image_pk(&event.image_id), IMAGE_SK)
                .await?
                .map(|item| decode(&item))
                .transpose()?;
            if let Some(record) = still
                && record.revision == event.revision
            {
                repaired += 1;
                if !dry_run {
                    self.remove_image(&record).await?;
                }
            }
        }
        Ok(repaired)
    }
}

fn is_event_sk(sk: &str) -> bool {
    let mut parts = sk.split('#');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(time), Some(id), Some(rev), None)
            if time.len() == 20 && time.parse::<u64>().is_ok()
                && ImageId::parse(id).is_ok()
                && rev.len() == 20 && rev.parse::<u64>().is_ok()
    )
}

/// The time a sort key (or a bare time key) starts with.
fn micros_of(key: &str) -> Option<i64> {
    let time: u64 = key.get(..20)?.parse().ok()?;
    Some((time ^ (1 << 63)) as i64)
}
