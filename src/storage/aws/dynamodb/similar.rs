//! The PDQ band items: an image with a PDQ hash has one per band of it (see
//! [`crate::domain::similar`]), `pk = pdq#{band:02}#{value:02x}`, `sk =
//! {created}#{id}#{hash}`, naming the image (`image_id`). Like tag items
//! they are written before the image item and removed after it, and a
//! reader verifies them against the image items (a stale one is skipped,
//! and removed by the repair pass). Each item carries the whole hash in its
//! sort key, so a search reads the 32 partitions of its hash's bands (one
//! Query each, at once, each with a `Limit` and read no further than its
//! share of `--max-similar-candidates`, oldest items first), computes every
//! candidate's distance from the items alone, and reads only the matches'
//! image items.
//!
//! 32 items per image are two BatchWriteItem calls on upload. A partition
//! holds about 1/256 of the images with a hash: at 100 000 images a search
//! reads about 32 × 390 small items.
use aws_sdk_dynamodb::types::{DeleteRequest, PutRequest, WriteRequest};
use futures::future::try_join_all;

use super::super::errors::classify;
use super::items::{DynamoMetadataStore, image_id_of, key, s, time_key};
use crate::domain::ports::StorageError;
use crate::domain::similar::{self, PdqHash, SimilarFound, SimilarImage};
use crate::domain::{ImageId, ImageRecord};

const PDQ_PREFIX: &str = "pdq#";

fn band_pk(band: u8, value: u8) -> String {
    format!("{PDQ_PREFIX}{band:02}#{value:02x}")
}

/// The keys of a record's band items; none when it has no hash.
pub(super) fn band_keys(record: &ImageRecord) -> Vec<(String, String)> {
    let Some(hash) = similar::indexed_hash(record) else {
        return Vec::new();
    };
    let sk = format!("{}#{}#{hash}", time_key(record.create_time), record.id);
    hash.bands()
        .map(|(band, value)| (band_pk(band, value), sk.clone()))
        .collect()
}

/// Whether `pk` is a band item's partition.
pub(super) fn is_band_pk(pk: &str) -> bool {
    pk.starts_with(PDQ_PREFIX)
}

/// The prefix of band items' partitions, for the repair pass's scan.
pub(super) const BAND_PK_PREFIX: &str = PDQ_PREFIX;

/// The hash a band item's sort key carries.
fn hash_of_sk(sk: &str) -> Option<PdqHash> {
    PdqHash::from_hex(sk.rsplit('#').next()?)
}

impl DynamoMetadataStore {
    /// Writes the band items of `record` that `before` (the record as
    /// stored, if any) does not have.
    pub(super) async fn put_band_items(
        &self,
        record: &ImageRecord,
        before: Option<&ImageRecord>,
    ) -> Result<(), StorageError> {
        let kept = before.map(band_keys).unwrap_or_default();
        let requests = band_keys(record)
            .into_iter()
            .filter(|k| !kept.contains(k))
            .map(|(pk, sk)| {
                let mut item = key(pk, &sk);
                item.insert("image_id".into(), s(record.id.to_string()));
                let put = PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map_err(StorageError::internal)?;
                Ok(WriteRequest::builder().put_request(put).build())
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        self.batch_write(requests).await
    }

    /// Removes the band items of `record` that `after` (the record as now
    /// stored, if any) does not have. A failure is logged: readers skip a
    /// stale item, and the repair pass removes it.
    pub(super) async fn delete_band_items_logged(
        &self,
        record: &ImageRecord,
        after: Option<&ImageRecord>,
    ) {
        let kept = after.map(band_keys).unwrap_or_default();
        let requests: Result<Vec<_>, StorageError> = band_keys(record)
            .into_iter()
            .filter(|k| !kept.contains(k))
            .map(|(pk, sk)| {
                let delete = DeleteRequest::builder()
                    .set_key(Some(key(pk, &sk)))
                    .build()
                    .map_err(StorageError::internal)?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect();
        let deleted = match requests {
            Ok(requests) => self.batch_write(requests).await,
            Err(error) => Err(error),
        };
        if let Err(error) = deleted {
            tracing::warn!(image_id = %record.id, error = %crate::telemetry::error_chain(&error), "could not delete PDQ band items");
        }
    }

    /// The (image, hash) of the first `share` band items of one band's
    /// bucket, oldest first (the sort key's order), and whether it holds
    /// more. Pages of at most `share` + 1 items, read no further than that.
    async fn bucket(
        &self,
        band: u8,
        value: u8,
        share: usize,
    ) -> Result<(Vec<(ImageId, PdqHash)>, bool), StorageError> {
        let page_limit = i32::try_from(share + 1).unwrap_or(i32::MAX);
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(band_pk(band, value)))
            .projection_expression("sk, image_id")
            .consistent_read(true)
            .limit(page_limit)
            .into_paginator()
            .send();
        let mut entries = Vec::new();
        let mut read = 0;
        while let Some(page) = pages.next().await {
            for item in page.map_err(classify)?.items.unwrap_or_default() {
                if read == share {
                    return Ok((entries, true));
                }
                read += 1;
                let sk = item.get("sk").and_then(|v| v.as_s().ok());
                if let (Some(id), Some(hash)) =
                    (image_id_of(&item), sk.and_then(|sk| hash_of_sk(sk)))
                {
                    entries.push((id, hash));
                }
            }
        }
        Ok((entries, false))
    }

    pub(super) async fn similar(
        &self,
        query: &PdqHash,
        max_distance: u32,
        limit: usize,
        per_band: usize,
    ) -> Result<SimilarFound, StorageError> {
        // The 32 buckets at once, each up to its share; every match is
        // verified below.
        let buckets = try_join_all(
            query
                .bands()
                .map(|(band, value)| self.bucket(band, value, per_band)),
        )
        .await?;
        let truncated = buckets.iter().any(|(_, cut)| *cut);
        let candidates = buckets.into_iter().flat_map(|(entries, _)| entries);
        let matches = similar::nearest(query, candidates, max_distance, limit);
        let ids: Vec<ImageId> = matches.iter().map(|(id, _, _)| *id).collect();
        let records = self.batch_get(&ids).await?;
        let images = matches
            .into_iter()
            .filter_map(|(id, hash, distance)| {
                let record = records.get(&id)?;
                // A stale item (a hash changed since, a record gone) is
                // skipped.
                (similar::indexed_hash(record) == Some(hash)).then(|| SimilarImage {
                    record: record.clone(),
                    distance,
                })
            })
            .collect();
        Ok(SimilarFound { images, truncated })
    }
}
