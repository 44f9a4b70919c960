//! Multipart writes, whatever the store: bytes are cut into parts of a
//! fixed size, at most `parts_in_flight` parts are sent at once (a writer
//! with every slot busy waits, and that wait is what slows the caller
//! down), parts complete in any order and are handed over in order, and
//! anything short of a completed upload aborts it: an error, an abort, or
//! a writer dropped unfinished (in the background). An object that fits in
//! one part goes in one call instead.
//!
//! A backend provides only the calls on one object ([`PartUpload`]); the
//! mechanics are here, tested with a fake store. Memory per write is at
//! most part size × (parts in flight + 1).
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinSet;

use crate::domain::ports::{BlobWriter, StorageError};

/// How long after an abort a part still in transit may land: stores can
/// accept a part they were receiving after the upload was aborted (S3
/// documents it), so the abort is sent once more after this.
const LATE_PART_GRACE: Duration = Duration::from_millis(500);

/// The bytes of one part (or of a whole small object) not yet sent: the
/// caller's chunks as received, not copied.
#[derive(Default, Debug)]
pub struct PartBuffer {
    pieces: Vec<Bytes>,
    len: usize,
}

impl PartBuffer {
    pub fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        self.len += piece.len();
        self.pieces.push(piece);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    pub fn into_pieces(self) -> Vec<Bytes> {
        self.pieces
    }
}

/// A store's multipart calls on one object.
#[async_trait]
pub trait PartUpload: Send + Sync + 'static {
    /// What the store returns for a part and wants back on completion.
    type Part: Send + 'static;

    /// Starts a multipart upload and returns its id.
    async fn create(&self) -> Result<String, StorageError>;

    /// Sends part `number` (from 1) of the upload `upload_id`.
    async fn upload_part(
        &self,
        upload_id: &str,
        number: u32,
        part: PartBuffer,
    ) -> Result<Self::Part, StorageError>;

    /// Makes the object whole from its parts, given in order.
    async fn complete(&self, upload_id: &str, parts: Vec<Self::Part>) -> Result<(), StorageError>;

    /// Abandons the upload and its parts; failures are the backend's to log.
    async fn abort(&self, upload_id: &str);

    /// Writes an object that fits in one part in one call. `whole` is its
    /// SHA-256 (hex) and CRC32C, when the caller gave them.
    async fn put(
        &self,
        object: PartBuffer,
        whole: Option<(String, u32)>,
    ) -> Result<(), StorageError>;
}

/// How a write is cut.
#[derive(Clone, Copy, Debug)]
pub struct PartPlan {
    pub part_size: usize,
    pub parts_in_flight: usize,
    /// The store's limit on parts per upload.
    pub max_parts: u32,
}

type Sending<P> = JoinSet<Result<(u32, P), StorageError>>;

/// A [`BlobWriter`] over any [`PartUpload`].
pub struct MultipartWriter<U: PartUpload> {
    target: Arc<U>,
    plan: PartPlan,
    /// Bytes not yet sent: less than one part.
    buffer: PartBuffer,
    /// Set once the first full part is sent.
    upload_id: Option<String>,
    next_part: u32,
    sending: Sending<U::Part>,
    sent: Vec<(u32, U::Part)>,
    /// Completed or aborted: nothing left to clean up.
    settled: bool,
    /// The whole object's checksums, when the caller gave them.
    whole: Option<(String, u32)>,
}

impl<U: PartUpload> MultipartWriter<U> {
    pub fn new(target: U, plan: PartPlan) -> Self {
        Self {
            target: Arc::new(target),
            plan: PartPlan {
                part_size: plan.part_size.max(1),
                parts_in_flight: plan.parts_in_flight.max(1),
                ..plan
            },
            buffer: PartBuffer::default(),
            upload_id: None,
            next_part: 1,
            sending: JoinSet::new(),
            sent: Vec::new(),
            settled: false,
            whole: None,
        }
    }

    /// Sends the buffer as the next part, waiting first while every slot is
    /// busy.
    async fn send_part(&mut self) -> Result<(), StorageError> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self.target.create().await?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        if self.next_part > self.plan.max_parts {
            return Err(StorageError::internal(format!(
                "the upload needs more than {} parts",
                self.plan.max_parts
            )));
        }
        while self.sending.len() >= self.plan.parts_in_flight {
            self.collect_one().await?;
        }
        let part = std::mem::take(&mut self.buffer);
        let number = self.next_part;
        self.next_part += 1;
        let target = Arc::clone(&self.target);
        self.sending.spawn(
            async move {
                let sent = target.upload_part(&upload_id, number, part).await?;
                Ok((number, sent))
            }
            .in_current_span(),
        );
        Ok(())
    }

    /// Waits for one part in flight to finish.
    async fn collect_one(&mut self) -> Result<(), StorageError> {
        match self.sending.join_next().await {
            Some(Ok(Ok(part))) => {
                self.sent.push(part);
                Ok(())
            }
            Some(Ok(Err(error))) => Err(error),
            Some(Err(join_error)) => Err(StorageError::internal(join_error)),
            None => Ok(()),
        }
    }

    async fn complete(&mut self) -> Result<(), StorageError> {
        let Some(upload_id) = self.upload_id.clone() else {
            let object = std::mem::take(&mut self.buffer);
            return self.target.put(object, self.whole.take()).await;
        };
        if !self.buffer.is_empty() {
            self.send_part().await?;
        }
        while !self.sending.is_empty() {
            self.collect_one().await?;
        }
        let mut parts = std::mem::take(&mut self.sent);
        parts.sort_by_key(|(number, _)| *number);
        let parts = parts.into_iter().map(|(_, part)| part).collect();
        self.target.complete(&upload_id, parts).await
    }

    /// Aborts in a task of its own: a caller that goes away while this is
    /// awaited (a cancelled call drops its handler) cannot cut it short.
    async fn abort_upload(&mut self) {
        if let Some(abort) = self.detach_abort() {
            let _ = tokio::spawn(abort).await;
        }
    }

    /// The clean-up still owed, as a future that owns what it needs; `None`
    /// when nothing is owed. Marks the writer settled.
    fn detach_abort(&mut self) -> Option<impl Future<Output = ()> + Send + 'static> {
        self.settled = true;
        let upload_id = self.upload_id.take()?;
        let mut sending = std::mem::take(&mut self.sending);
        let target = Arc::clone(&self.target);
        Some(async move {
            sending.abort_all();
            while sending.join_next().await.is_some() {}
            target.abort(&upload_id).await;
            tokio::time::sleep(LATE_PART_GRACE).await;
            target.abort(&upload_id).await;
            tracing::debug!(upload_id, "multipart upload aborted");
        })
    }
}

#[async_trait]
impl<U: PartUpload> BlobWriter for MultipartWriter<U> {
    async fn write(&mut self, mut chunk: Bytes) -> Result<(), StorageError> {
        while !chunk.is_empty() {
            let take = (self.plan.part_size - self.buffer.len()).min(chunk.len());
            self.buffer.push(chunk.split_to(take));
            if self.buffer.len() == self.plan.part_size {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        match self.complete().await {
            Ok(()) => {
                self.settled = true;
                Ok(())
            }
            Err(error) => {
                self.abort_upload().await;
                Err(error)
            }
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_upload().await;
    }

    fn pending_id(&self) -> Option<String> {
        self.upload_id.clone()
    }

    /// Used when the object goes in one call: its checksums need not be
    /// computed again.
    fn written_checksums(&mut self, sha256_hex: &str, crc32c: u32) {
        self.whole = Some((sha256_hex.to_owned(), crc32c));
    }
}

impl<U: PartUpload> Drop for MultipartWriter<U> {
    fn drop(&mut self) {
        // A cancelled upload: Drop cannot await, so the abort runs in the
        // background.
        if self.settled {
            return;
        }
        if let (Some(abort), Ok(runtime)) =
            (self.detach_abort(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(abort);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A store that keeps parts in memory, records every call, and can be
    /// slowed down or made to fail one part.
    #[derive(Default)]
    struct FakeParts {
        calls: Mutex<Vec<String>>,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
        /// Parts finish in reverse order of their numbers: later ones
        /// sleep less.
        delay_ms: u64,
        failing_part: Option<u32>,
        completed: Mutex<Option<Vec<Vec<u8>>>>,
    }

    struct Shared(Arc<FakeParts>);

    impl FakeParts {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        fn log(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    #[async_trait]
    impl PartUpload for Shared {
        type Part = Vec<u8>;

        async fn create(&self) -> Result<String, StorageError> {
            self.0.log("create".into());
            Ok("upload-1".into())
        }

        async fn upload_part(
            &self,
            _upload_id: &str,
            number: u32,
            part: PartBuffer,
        ) -> Result<Vec<u8>, StorageError> {
            let now = self.0.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.0.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let wait = self.0.delay_ms.saturating_sub(u64::from(number) * 5);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.0.log(format!("part {number}"));
            if self.0.failing_part == Some(number) {
                return Err(StorageError::Unavailable("made to fail".into()));
            }
            Ok(part.into_pieces().concat())
        }

        async fn complete(
            &self,
            _upload_id: &str,
            parts: Vec<Vec<u8>>,
        ) -> Result<(), StorageError> {
            self.0.log("complete".into());
            *self.0.completed.lock().unwrap() = Some(parts);
            Ok(())
        }

        async fn abort(&self, _upload_id: &str) {
            self.0.log("abort".into());
        }

        async fn put(
            &self,
            object: PartBuffer,
            whole: Option<(String, u32)>,
        ) -> Result<(), StorageError> {
            self.0
                .log(format!("put {} {}", object.len(), whole.is_some()));
            Ok(())
        }
    }

    fn writer(fake: &Arc<FakeParts>, parts_in_flight: usize) -> Box<dyn BlobWriter> {
        let plan = PartPlan {
            part_size: 10,
            parts_in_flight,
            max_parts: 100,
        };
        Box::new(MultipartWriter::new(Shared(Arc::clone(fake)), plan))
    }

    fn bytes(len: usize) -> Bytes {
        (0..len).map(|i| i as u8).collect()
    }

    #[tokio::test]
    async fn an_object_within_one_part_goes_in_one_call_with_its_checksums() {
        let fake = Arc::new(FakeParts::default());
        let mut writer = writer(&fake, 2);
        writer.write(bytes(4)).await.unwrap();
        writer.write(bytes(5)).await.unwrap();
        writer.written_checksums("ab", 1);
        assert_eq!(writer.pending_id(), None, "nothing to journal");
        writer.finish().await.unwrap();
        assert_eq!(fake.calls(), ["put 9 true"]);
    }

    #[tokio::test]
    async fn parts_finishing_out_of_order_are_completed_in_order() {
        let fake = Arc::new(FakeParts {
            delay_ms: 40,
            ..FakeParts::default()
        });
        let mut writer = writer(&fake, 3);
        let object = bytes(45);
        for piece in object.chunks(7) {
            writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        assert_eq!(writer.pending_id().as_deref(), Some("upload-1"));
        writer.finish().await.unwrap();
        let parts = fake.completed.lock().unwrap().clone().expect("completed");
        assert_eq!(parts.len(), 5, "four full parts and the rest");
        assert_eq!(parts.concat(), object.to_vec(), "the bytes, in order");
        let calls = fake.calls();
        assert_eq!(calls.first().map(String::as_str), Some("create"));
        assert_eq!(calls.last().map(String::as_str), Some("complete"));
    }

    #[tokio::test]
    async fn no_more_than_the_parts_in_flight_are_sent_at_once() {
        let fake = Arc::new(FakeParts {
            delay_ms: 60,
            ..FakeParts::default()
        });
        let mut writer = writer(&fake, 2);
        writer.write(bytes(95)).await.unwrap();
        writer.finish().await.unwrap();
        assert_eq!(fake.most_in_flight.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_part_fails_the_write_and_aborts_the_upload() {
        let fake = Arc::new(FakeParts {
            failing_part: Some(2),
            ..FakeParts::default()
        });
        let mut writer = writer(&fake, 1);
        // The failure surfaces when the writer waits for a slot or finishes.
        let written = writer.write(bytes(35)).await;
        let result = match written {
            Ok(()) => writer.finish().await,
            Err(error) => {
                writer.abort().await;
                Err(error)
            }
        };
        assert!(matches!(result, Err(StorageError::Unavailable(_))));
        let calls = fake.calls();
        assert!(!calls.contains(&"complete".to_owned()), "{calls:?}");
        assert_eq!(
            calls.iter().filter(|c| *c == "abort").count(),
            2,
            "aborted, and again after late parts: {calls:?}"
        );
    }

    #[tokio::test]
    async fn a_writer_dropped_unfinished_aborts_in_the_background() {
        let fake = Arc::new(FakeParts::default());
        let mut writer = writer(&fake, 2);
        writer.write(bytes(25)).await.unwrap();
        drop(writer);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while fake.calls().iter().filter(|c| *c == "abort").count() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", fake.calls());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!fake.calls().contains(&"complete".to_owned()));
    }

    #[tokio::test]
    async fn a_dropped_writer_that_sent_no_part_owes_nothing() {
        let fake = Arc::new(FakeParts::default());
        let mut writer = writer(&fake, 2);
        writer.write(bytes(5)).await.unwrap();
        drop(writer);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    }
}
