//! The second pass over a staged original: a HEIF whose metadata items
//! came before its `meta` box (Samsung phones write `meta` after `mdat`)
//! is stored first under a key no caller can read
//! ([`writes::STAGED_ORIGINAL`](super::writes::STAGED_ORIGINAL)); once the
//! `meta` box has said where those items are, the staged bytes are
//! streamed back, the items overwritten as they go by
//! ([`crate::media::scrub::Rescrub`]), written to the original's key, and
//! the staged object deleted.
//!
//! Cost: one more read and write of the file. Memory: what the first pass
//! held and the upload's reservation still counts when this runs (the
//! store's write buffers and one message, see [`super::MemoryUse`]): the
//! store's read chunks (256 KiB on the embedded store) and the pieces to
//! overwrite (at most 1 024 of 48 bytes); the kept copy, when there is
//! one, is rebuilt from the output as the old one is given up.
use futures::StreamExt;

use super::shared::Uploads;
use super::stored::{Checksums, StoredFacts};
use super::writes::Writes;
use crate::domain::DomainError;

impl Uploads {
    /// Writes the original from the finished staged one, overwriting the
    /// metadata items `facts.scrubbed.rescrub` names, and deletes the
    /// staged one; fills in the stored checksums and the kept copy.
    pub(super) async fn second_pass(
        &self,
        writes: &mut Writes,
        facts: &mut StoredFacts,
    ) -> Result<(), DomainError> {
        let started = std::time::Instant::now();
        let staged = writes.target_key();
        let mut rescrub = facts.scrubbed.rescrub.take();
        let mut kept = facts.kept.take().map(|_| Vec::new());
        writes.unstage()?;
        let mut stream = self.blobs.read(&staged, 0, facts.size_bytes).await?;
        let mut checksums = Checksums::default();
        let mut read = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            read += chunk.len() as u64;
            let chunk = match &mut rescrub {
                Some(rescrub) => rescrub.apply(chunk),
                None => chunk,
            };
            checksums.update(&chunk);
            if let Some(kept) = &mut kept {
                kept.push(chunk.clone());
            }
            writes.write(chunk).await?;
        }
        if read != facts.size_bytes || rescrub.is_some_and(|r| !r.is_done()) {
            return Err(DomainError::Internal(
                format!(
                    "the staged original read back {read} of its {} bytes",
                    facts.size_bytes
                )
                .into(),
            ));
        }
        let digest = checksums.finish();
        writes.finish_original(Some(&digest)).await?;
        writes.delete_staged().await;
        facts.digest = Some(digest);
        facts.kept = kept;
        metrics::histogram!("imageservice_upload_second_pass_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }
}
