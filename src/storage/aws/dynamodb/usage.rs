//! The usage item of each user, `pk = usage#{user}`, `sk = usage`:
//! `held_bytes` and `held_images` (settled and reserved together), the
//! reservations of uploads in progress as a string set (`reservations`,
//! see [`UsageReservation::encode`]), the quota override (`quota_bytes`,
//! `quota_images`), the user's latest erasure as JSON (`erasure`, see
//! [`ErasureRecord`]) with `erasing` present while it runs, and its
//! `rev`ision.
//!
//! Every change is one `UpdateItem`: an atomic `ADD` to the totals whose
//! `ConditionExpression` holds the totals under the ceiling before the
//! change (`held_bytes <= ceiling - change`), so replicas reserving at
//! once never take a user past a quota, with no read first and no retry. A
//! reservation is also conditional on `attribute_not_exists(erasing)`: no
//! upload starts on any replica once an erasure is marked.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::super::errors::classify;
use super::items::{DynamoMetadataStore, n, s};
use crate::domain::UserId;
use crate::domain::ports::StorageError;
use crate::domain::usage::{
    ErasureRecord, QuotaOverride, UsageCeiling, UsageChange, UsageRecord, UsageReservation,
};

const USAGE_PREFIX: &str = "usage#";
const USAGE_SK: &str = "usage";

fn usage_key(user: &UserId) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), s(format!("{USAGE_PREFIX}{user}"))),
        ("sk".to_owned(), s(USAGE_SK)),
    ])
}

/// A number attribute; a total driven below zero by a drift (corrected by
/// the repair pass) reads as zero.
fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    let value: i128 = item.get(name)?.as_n().ok()?.parse().ok()?;
    Some(u64::try_from(value.max(0)).unwrap_or(u64::MAX))
}

fn decode(item: &HashMap<String, AttributeValue>) -> UsageRecord {
    let mut reservations: Vec<UsageReservation> = item
        .get("reservations")
        .and_then(|v| v.as_ss().ok())
        .map(|set| {
            set.iter()
                .filter_map(|text| UsageReservation::decode(text))
                .collect()
        })
        .unwrap_or_default();
    reservations.sort_by_key(|r| r.started);
    UsageRecord {
        held_bytes: number(item, "held_bytes").unwrap_or(0),
        held_images: number(item, "held_images").unwrap_or(0),
        reservations,
        quota: QuotaOverride {
            max_bytes: number(item, "quota_bytes"),
            max_images: number(item, "quota_images"),
        },
        revision: number(item, "rev").unwrap_or(0),
        erasure: item
            .get("erasure")
            .and_then(|v| v.as_s().ok())
            .and_then(|doc| serde_json::from_str(doc).ok()),
    }
}

/// `max - delta`: the most the total may be before a change of `delta`
/// for it to end at or under `max`; `None` when no total can.
fn room_before(max: u64, delta: i64) -> Option<u64> {
    let room = i128::from(max) - i128::from(delta);
    u64::try_from(room).ok()
}

/// The condition that the item is still at `expected_revision` (0: no
/// item yet), its value added to `values`.
fn at_revision(
    expected_revision: u64,
    values: &mut HashMap<String, AttributeValue>,
) -> &'static str {
    if expected_revision == 0 {
        "attribute_not_exists(rev)"
    } else {
        values.insert(":rev".into(), n(expected_revision));
        "rev = :rev"
    }
}

impl DynamoMetadataStore {
    pub(super) async fn usage_get(&self, user: &UserId) -> Result<UsageRecord, StorageError> {
        let response = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(usage_key(user)))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        Ok(response.item.as_ref().map(decode).unwrap_or_default())
    }

    pub(super) async fn usage_change(
        &self,
        user: &UserId,
        change: &UsageChange,
        ceiling: Option<UsageCeiling>,
    ) -> Result<(), StorageError> {
        let mut values = HashMap::from([
            (":one".to_owned(), n(1)),
            (":b".to_owned(), n(change.bytes)),
            (":i".to_owned(), n(change.images)),
        ]);
        let mut update = String::from("ADD rev :one, held_bytes :b, held_images :i");
        let mut conditions = Vec::new();
        if let Some(added) = &change.add {
            update.push_str(", reservations :add");
            values.insert(":add".into(), AttributeValue::Ss(vec![added.encode()]));
            conditions.push("attribute_not_exists(erasing)");
        }
        if let Some(removed) = &change.remove {
            update.push_str(" DELETE reservations :del");
            values.insert(":del".into(), AttributeValue::Ss(vec![removed.encode()]));
            values.insert(":held".into(), s(removed.encode()));
            conditions.push("contains(reservations, :held)");
        }
        if let Some(ceiling) = ceiling {
            let (Some(bytes), Some(images)) = (
                room_before(ceiling.max_bytes, change.bytes),
                room_before(ceiling.max_images, change.images),
            ) else {
                return Err(StorageError::ConditionFailed);
            };
            values.insert(":maxb".into(), n(bytes));
            values.insert(":maxi".into(), n(images));
            conditions.push("(attribute_not_exists(held_bytes) OR held_bytes <= :maxb)");
            conditions.push("(attribute_not_exists(held_images) OR held_images <= :maxi)");
        }
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(usage_key(user)))
            .update_expression(update)
            .set_expression_attribute_values(Some(values));
        if !conditions.is_empty() {
            request = request.condition_expression(conditions.join(" AND "));
        }
        request.send().await.map_err(classify)?;
        Ok(())
    }

    pub(super) async fn usage_set_quota(
        &self,
        user: &UserId,
        quota: QuotaOverride,
    ) -> Result<(), StorageError> {
        let mut values = HashMap::from([(":one".to_owned(), n(1))]);
        let (mut set, mut remove) = (Vec::new(), Vec::new());
        for (name, value) in [
            ("quota_bytes", quota.max_bytes),
            ("quota_images", quota.max_images),
        ] {
            match value {
                Some(value) => {
                    set.push(format!("{name} = :{name}"));
                    values.insert(format!(":{name}"), n(value));
                }
                None => remove.push(name),
            }
        }
        let mut update = String::from("ADD rev :one");
        if !set.is_empty() {
            update = format!("SET {} {update}", set.join(", "));
        }
        if !remove.is_empty() {
            update = format!("{update} REMOVE {}", remove.join(", "));
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(usage_key(user)))
            .update_expression(update)
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    pub(super) async fn usage_replace(
        &self,
        user: &UserId,
        usage: &UsageRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        let mut values = HashMap::from([
            (":b".to_owned(), n(usage.held_bytes)),
            (":i".to_owned(), n(usage.held_images)),
            (":next".to_owned(), n(expected_revision + 1)),
        ]);
        let mut update = String::from("SET held_bytes = :b, held_images = :i, rev = :next");
        if usage.reservations.is_empty() {
            // A string set cannot be empty: no reservation is no attribute.
            update.push_str(" REMOVE reservations");
        } else {
            update.push_str(", reservations = :r");
            let set = usage.reservations.iter().map(|r| r.encode()).collect();
            values.insert(":r".into(), AttributeValue::Ss(set));
        }
        self.update_usage_at(user, update, values, expected_revision)
            .await
    }

    pub(super) async fn usage_set_erasure(
        &self,
        user: &UserId,
        erasure: &ErasureRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        let doc = serde_json::to_string(erasure).map_err(StorageError::internal)?;
        let mut values = HashMap::from([
            (":e".to_owned(), s(doc)),
            (":next".to_owned(), n(expected_revision + 1)),
        ]);
        let update = if erasure.is_running() {
            values.insert(":one".into(), n(1));
            "SET erasure = :e, erasing = :one, rev = :next"
        } else {
            // Done: the user holds nothing; the audit stays.
            values.insert(":zero".into(), n(0));
            "SET erasure = :e, rev = :next, held_bytes = :zero, held_images = :zero \
             REMOVE erasing, reservations"
        };
        self.update_usage_at(user, update, values, expected_revision)
            .await
    }

    /// Applies `update` to `user`'s usage item if it is still at
    /// `expected_revision` (`ConditionFailed` otherwise).
    async fn update_usage_at(
        &self,
        user: &UserId,
        update: impl Into<String>,
        mut values: HashMap<String, AttributeValue>,
        expected_revision: u64,
    ) -> Result<(), StorageError> {
        let condition = at_revision(expected_revision, &mut values);
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(usage_key(user)))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Every usage item, by a scan of the table: for the repair pass only.
    pub(super) async fn usage_list(&self) -> Result<Vec<(UserId, UsageRecord)>, StorageError> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(pk, :p) AND sk = :sk")
            .expression_attribute_values(":p", s(USAGE_PREFIX))
            .expression_attribute_values(":sk", s(USAGE_SK))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page.map_err(classify)?.items.unwrap_or_default() {
                let user = item
                    .get("pk")
                    .and_then(|v| v.as_s().ok())
                    .and_then(|pk| pk.strip_prefix(USAGE_PREFIX))
                    .and_then(|text| UserId::parse(text).ok());
                if let Some(user) = user {
                    found.push((user, decode(&item)));
                }
            }
        }
        Ok(found)
    }
}
