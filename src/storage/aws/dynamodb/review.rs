//! The moderators' items: a **review item** per image not `Active`,
//! `pk = review#{state}`, `sk = {state_time}#{id}`, naming the image
//! (`image_id`), written before the image item and removed after it like a
//! tag item, so the review of a state is one Query in time order whose
//! items are verified against the image items (a stale one is skipped, and
//! removed by the repair pass); and the **audit trail**, one item per
//! action, `pk = moderation_actions`, `sk = {time}#{id}`, the action as JSON
//! in `doc`, only ever put. The trail is one partition: moderators' actions
//! are few (a partition takes about 1 000 writes a second).
use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::super::errors::classify;
use super::items::{DynamoMetadataStore, doc_item, image_id_of, key, s, time_key};
use crate::domain::ImageRecord;
use crate::domain::audit::{ActionPage, ModerationAction};
use crate::domain::image::ImageState;
use crate::domain::ports::{ListPage, StorageError};

const REVIEW_PREFIX: &str = "review#";
const ACTIONS_PK: &str = "moderation_actions";

fn review_pk(state: ImageState) -> String {
    format!("{REVIEW_PREFIX}{state}")
}

/// The key of a record's review item; `None` for an `Active` record.
pub(super) fn review_key(record: &ImageRecord) -> Option<(String, String)> {
    if record.state.is_active() {
        return None;
    }
    let since = record.state_time.unwrap_or(record.update_time);
    Some((
        review_pk(record.state),
        format!("{}#{}", time_key(since), record.id),
    ))
}

/// Whether `pk` is a review item's partition.
pub(super) fn is_review_pk(pk: &str) -> bool {
    pk.starts_with(REVIEW_PREFIX)
}

/// The prefix of review items' partitions, for the repair pass's scan.
pub(super) const REVIEW_PK_PREFIX: &str = REVIEW_PREFIX;

fn action_sk(action: &ModerationAction) -> String {
    format!("{}#{}", time_key(action.time), action.id)
}

impl DynamoMetadataStore {
    /// Writes the review item of `record`, when it needs one that
    /// `before` (the record as stored, if any) does not have.
    pub(super) async fn put_review_item(
        &self,
        record: &ImageRecord,
        before: Option<&ImageRecord>,
    ) -> Result<(), StorageError> {
        let Some((pk, sk)) = review_key(record) else {
            return Ok(());
        };
        if before.and_then(review_key) == Some((pk.clone(), sk.clone())) {
            return Ok(());
        }
        let mut item = key(pk, &sk);
        item.insert("image_id".into(), s(record.id.to_string()));
        self.put(item).await
    }

    /// Removes the review item of `record` unless `after` (the record as
    /// now stored, if any) still has it. A failure is logged: readers skip
    /// a stale item, and the repair pass removes it.
    pub(super) async fn delete_review_item_logged(
        &self,
        record: &ImageRecord,
        after: Option<&ImageRecord>,
    ) {
        let Some((pk, sk)) = review_key(record) else {
            return;
        };
        if after.and_then(review_key) == Some((pk.clone(), sk.clone())) {
            return;
        }
        if let Err(error) = self.delete_item(pk, &sk).await {
            tracing::warn!(image_id = %record.id, error = %crate::telemetry::error_chain(&error), "could not delete a review item");
        }
    }

    pub(super) async fn review_page(
        &self,
        state: ImageState,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StorageError> {
        let pk = review_pk(state);
        let mut start: Option<HashMap<String, AttributeValue>> = match cursor {
            Some(cursor) => {
                let sk = std::str::from_utf8(cursor)
                    .map_err(|_| StorageError::internal("malformed review cursor"))?;
                Some(key(pk.clone(), sk))
            }
            None => None,
        };
        let mut page = ListPage::default();
        loop {
            let want = (limit - page.records.len() + 1).min(1000) as i32;
            let response = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(&pk))
                .consistent_read(true)
                .limit(want)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(classify)?;
            let items = response.items.unwrap_or_default();
            let ids: Vec<_> = items.iter().filter_map(image_id_of).collect();
            let records = self.batch_get(&ids).await?;
            page.records_read += ids.len() as u64;
            for item in &items {
                let sk = item
                    .get("sk")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                if page.records.len() == limit {
                    page.next_cursor = page.record_cursors.last().cloned();
                    return Ok(page);
                }
                // Verified against the image item: a stale review item
                // (a state changed since, a record gone) is skipped.
                let current = image_id_of(item).and_then(|id| records.get(&id));
                if let Some(record) = current
                    && review_key(record) == Some((pk.clone(), sk.clone()))
                {
                    page.records.push(record.clone());
                    page.record_cursors.push(sk.into_bytes());
                }
            }
            match response.last_evaluated_key {
                None => return Ok(page),
                Some(last) => start = Some(last),
            }
        }
    }

    pub(super) async fn put_action(&self, action: &ModerationAction) -> Result<(), StorageError> {
        // Never over another: an entry, once written, stays as it is.
        self.put_new(doc_item(
            key(ACTIONS_PK.to_owned(), &action_sk(action)),
            action,
        )?)
        .await
    }

    pub(super) async fn action_page(
        &self,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ActionPage, StorageError> {
        let start = match cursor {
            Some(cursor) => {
                let sk = std::str::from_utf8(cursor)
                    .map_err(|_| StorageError::internal("malformed audit cursor"))?;
                Some(key(ACTIONS_PK.to_owned(), sk))
            }
            None => None,
        };
        let response = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(ACTIONS_PK))
            .consistent_read(true)
            .limit((limit + 1).min(1000) as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(classify)?;
        let mut page = ActionPage::default();
        for item in response.items.unwrap_or_default() {
            if page.actions.len() == limit {
                page.next_cursor = page.actions.last().map(|a| action_sk(a).into_bytes());
                break;
            }
            let doc = item
                .get("doc")
                .and_then(|v| v.as_s().ok())
                .ok_or_else(|| StorageError::internal("an audit item without its document"))?;
            page.actions
                .push(serde_json::from_str(doc).map_err(StorageError::internal)?);
        }
        // The query stopped early (its size limit): a shorter page, and the
        // next starts after its last action.
        if page.next_cursor.is_none() && response.last_evaluated_key.is_some() {
            page.next_cursor = page.actions.last().map(|a| action_sk(a).into_bytes());
        }
        Ok(page)
    }
}
