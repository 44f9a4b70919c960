//! Image bytes as files: `blobs/images/{id}/{variant}`, and the bytes of
//! upload sessions before they commit in `blobs/uploads/{upload_id}/`. A write goes to a
//! temporary file in `blobs/.partial/`, is fsync'd, then renamed into place
//! (and the directory fsync'd), so a reader sees a whole object or none.
use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::io::ReaderStream;

use super::urls::{self, SignedUrls};
use crate::domain::image::Timestamp;
use crate::domain::ports::{
    BlobStore, BlobWriter, ByteStream, ObjectKey, PresignRequest, PresignedUrl, StorageError,
    StoredObject, WriteSize,
};
use crate::domain::session::UploadId;

/// Read buffer of downloads: large enough to keep syscalls few.
pub(super) const READ_CHUNK: usize = 256 * 1024;

pub struct EmbeddedBlobStore {
    root: PathBuf,
    partial: PathBuf,
    /// `None` when opened by a command that hands out no URL.
    urls: Option<SignedUrls>,
    /// Partial files whose writer is still open: the repair pass leaves
    /// them alone, however short its grace.
    live: Live,
    /// The part bodies being received for upload sessions.
    part_writes: Arc<PartWrites>,
}

/// The part bodies the HTTP listener is receiving, by upload session.
/// A session's close ([`BlobStore::delete_staged`], which every close
/// calls once the session's record is closed) stops them and waits until
/// each has removed its partial file, so what a closed session held is
/// gone by the time the close returns. A body registers before it asks
/// whether its session is open: either the close sees it and stops it, or
/// it sees the closed record.
#[derive(Default)]
pub struct PartWrites {
    sessions: Mutex<HashMap<UploadId, Arc<watch::Sender<bool>>>>,
}

/// How long a close waits for the bodies it stopped to remove their
/// partial files (each only has to notice and delete one file).
const STOP_WAIT: Duration = Duration::from_secs(10);

impl PartWrites {
    fn sessions(&self) -> MutexGuard<'_, HashMap<UploadId, Arc<watch::Sender<bool>>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a body arriving for a part of `upload`.
    pub fn start(self: &Arc<Self>, upload: &UploadId) -> PartWrite {
        let stop = self
            .sessions()
            .entry(*upload)
            .or_insert_with(|| Arc::new(watch::channel(false).0))
            .subscribe();
        PartWrite {
            writes: self.clone(),
            upload: *upload,
            stop: Some(stop),
        }
    }

    /// Stops every body arriving for `upload` and waits until they have
    /// ended (bounded by [`STOP_WAIT`]).
    async fn stop(&self, upload: &UploadId) {
        let Some(sender) = self.sessions().get(upload).cloned() else {
            return;
        };
        sender.send_replace(true);
        if tokio::time::timeout(STOP_WAIT, sender.closed())
            .await
            .is_err()
        {
            tracing::warn!(upload_id = %upload, "part bodies of a closed upload session did not stop in time");
        }
    }
}

/// One part body arriving; dropped once its partial file is gone.
pub struct PartWrite {
    writes: Arc<PartWrites>,
    upload: UploadId,
    stop: Option<watch::Receiver<bool>>,
}

impl PartWrite {
    /// Resolves once the body's session has closed.
    pub async fn stopped(&mut self) {
        if let Some(stop) = &mut self.stop
            && stop.wait_for(|stopped| *stopped).await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }
}

impl Drop for PartWrite {
    fn drop(&mut self) {
        let mut sessions = self.writes.sessions();
        // The close waiting on this body wakes when its receiver is gone.
        drop(self.stop.take());
        if sessions
            .get(&self.upload)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            sessions.remove(&self.upload);
        }
    }
}

/// The partial files being written.
type Live = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>;

impl EmbeddedBlobStore {
    /// Opens the directory, removing partial files a previous process left
    /// behind (only one process uses a data directory at a time). Without
    /// `urls` it presigns nothing (a command, not the server).
    pub fn open(root: &Path, urls: Option<SignedUrls>) -> Result<Self, StorageError> {
        let partial = root.join(".partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(StorageError::internal)?;
        }
        std::fs::create_dir_all(&partial).map_err(StorageError::internal)?;
        Ok(Self {
            root: root.to_owned(),
            partial,
            urls,
            live: Live::default(),
            part_writes: Arc::default(),
        })
    }

    /// The part bodies being received, which a close of their session
    /// stops.
    pub(super) fn part_writes(&self) -> &Arc<PartWrites> {
        &self.part_writes
    }

    /// The file of `key`.
    pub(super) fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// The size of a stored object: `NotFound` when it does not exist.
    pub async fn size(&self, key: &ObjectKey) -> Result<u64, StorageError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::NotFound),
            Err(e) => Err(StorageError::internal(e)),
        }
    }

    /// The staged objects of `upload` and the bytes each holds, by name.
    pub async fn staged_sizes(
        &self,
        upload: &UploadId,
    ) -> Result<std::collections::HashMap<String, u64>, StorageError> {
        let dir = self.root.join(ObjectKey::staged_prefix(upload));
        tokio::task::spawn_blocking(move || {
            let mut sizes = std::collections::HashMap::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(sizes),
                Err(e) => return Err(StorageError::internal(e)),
            };
            for entry in entries {
                let entry = entry.map_err(StorageError::internal)?;
                let size = entry.metadata().map_err(StorageError::internal)?.len();
                sizes.insert(entry.file_name().to_string_lossy().into_owned(), size);
            }
            Ok(sizes)
        })
        .await
        .map_err(StorageError::internal)?
    }

    /// The presigned-URL checker, for the HTTP listener; `None` when the
    /// store was opened without one.
    pub fn urls(&self) -> Option<&SignedUrls> {
        self.urls.as_ref()
    }

    /// The signer of presigned URLs, which a store opened without one
    /// cannot make.
    fn signer(&self) -> Result<&SignedUrls, StorageError> {
        self.urls.as_ref().ok_or_else(|| {
            StorageError::internal(
                "this store was opened without a URL signer: it presigns nothing",
            )
        })
    }
}

#[async_trait]
impl BlobStore for EmbeddedBlobStore {
    /// Each piece goes to the file as it comes: nothing is buffered here.
    fn write_memory(&self, _size_hint: Option<u64>) -> u64 {
        0
    }

    async fn start_write(
        &self,
        key: &ObjectKey,
        _size_hint: Option<u64>,
    ) -> Result<Box<dyn BlobWriter>, StorageError> {
        let temp = self.partial.join(format!("{}.part", uuid::Uuid::new_v4()));
        let file = tokio::fs::File::create(&temp)
            .await
            .map_err(StorageError::internal)?;
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(temp.clone());
        Ok(Box::new(FileWriter {
            file: Some(file),
            temp,
            target: self.path(key),
            done: false,
            live: self.live.clone(),
        }))
    }

    async fn read(
        &self,
        key: &ObjectKey,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, StorageError> {
        let mut file = match tokio::fs::File::open(self.path(key)).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound);
            }
            Err(e) => return Err(StorageError::internal(e)),
        };
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(StorageError::internal)?;
        let reader = tokio::io::AsyncReadExt::take(file, length);
        Ok(ReaderStream::with_capacity(reader, READ_CHUNK)
            .map(|chunk| chunk.map_err(StorageError::internal))
            .boxed())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::internal(e)),
        }
        // The image's directory goes with its last object; failing because
        // another object is still there is expected.
        if let Some(dir) = path.parent() {
            let _ = tokio::fs::remove_dir(dir).await;
        }
        Ok(())
    }

    async fn presign_read(&self, request: &PresignRequest) -> Result<PresignedUrl, StorageError> {
        Ok(self.signer()?.sign(request))
    }

    fn max_presign_expiry(&self) -> Duration {
        urls::MAX_EXPIRY
    }

    async fn object_size(&self, key: &ObjectKey) -> Result<Option<u64>, StorageError> {
        match self.size(key).await {
            Ok(size) => Ok(Some(size)),
            Err(StorageError::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Its upload URLs are served by the service's own listener, which
    /// refuses parts of closed sessions (`downloads::presigned_upload`).
    fn revokes_presigned_writes(&self) -> bool {
        true
    }

    async fn presign_write(
        &self,
        key: &ObjectKey,
        expires_in: Duration,
        size: WriteSize,
    ) -> Result<PresignedUrl, StorageError> {
        Ok(self.signer()?.sign_upload(
            key,
            expires_in.min(urls::MAX_EXPIRY),
            size,
            Timestamp::now(),
        ))
    }

    /// Every close of a session calls this once its record is closed: the
    /// bodies still arriving for its parts are stopped first, and their
    /// partial files gone, before the parts are removed.
    async fn delete_staged(&self, upload: &UploadId) -> Result<(), StorageError> {
        self.part_writes.stop(upload).await;
        let dir = self.root.join(ObjectKey::staged_prefix(upload));
        // A stream of the session may still write a segment while the
        // directory goes (its record then refuses it, and it removes what
        // it wrote): what it added is removed by the next attempt.
        let mut attempts = 0;
        loop {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && attempts < 5 => {
                    attempts += 1;
                }
                Err(e) => return Err(StorageError::internal(e)),
            }
        }
    }

    async fn list_staged(&self) -> Result<Vec<(UploadId, Timestamp)>, StorageError> {
        let uploads = self.root.join("uploads");
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let Ok(dirs) = std::fs::read_dir(&uploads) else {
                return Ok(found);
            };
            for dir in dirs.flatten() {
                let Ok(id) = UploadId::parse(&dir.file_name().to_string_lossy()) else {
                    continue;
                };
                // The directory's own time changes with each file in it.
                let mut newest = dir.metadata().and_then(|m| m.modified()).ok();
                for file in std::fs::read_dir(dir.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let modified = file.metadata().and_then(|m| m.modified()).ok();
                    newest = newest.max(modified);
                }
                let newest = newest.map(Timestamp::from).unwrap_or_else(Timestamp::now);
                found.push((id, newest));
            }
            Ok(found)
        })
        .await
        .map_err(StorageError::internal)?
    }

    async fn list_objects(&self) -> Result<Vec<StoredObject>, StorageError> {
        let images = self.root.join("images");
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let Ok(dirs) = std::fs::read_dir(&images) else {
                return Ok(found);
            };
            for dir in dirs.flatten() {
                for file in std::fs::read_dir(dir.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let key = format!(
                        "images/{}/{}",
                        dir.file_name().to_string_lossy(),
                        file.file_name().to_string_lossy()
                    );
                    let Some((image_id, object)) = ObjectKey::parse(&key) else {
                        continue;
                    };
                    let modified = file
                        .metadata()
                        .and_then(|m| m.modified())
                        .map_err(StorageError::internal)?;
                    found.push(StoredObject {
                        image_id,
                        object,
                        modified: Timestamp::from(modified),
                    });
                }
            }
            Ok(found)
        })
        .await
        .map_err(StorageError::internal)?
    }

    async fn abort_pending(&self, _key: &ObjectKey, _pending_id: &str) -> Result<(), StorageError> {
        // Partial files are journaled by their directory: see
        // `remove_unfinished_writes`.
        Ok(())
    }

    async fn remove_unfinished_writes(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<Option<Vec<String>>, StorageError> {
        let (partial, live) = (self.partial.clone(), self.live.clone());
        tokio::task::spawn_blocking(move || {
            let mut removed = Vec::new();
            for file in std::fs::read_dir(&partial)
                .map_err(StorageError::internal)?
                .flatten()
            {
                if live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&file.path())
                {
                    continue;
                }
                let modified = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_err(StorageError::internal)?;
                if Timestamp::from(modified) < older_than {
                    if !dry_run {
                        let _ = std::fs::remove_file(file.path());
                    }
                    removed.push(file.file_name().to_string_lossy().into_owned());
                }
            }
            Ok(Some(removed))
        })
        .await
        .map_err(StorageError::internal)?
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        tokio::fs::metadata(&self.partial)
            .await
            .map(|_| ())
            .map_err(StorageError::internal)
    }
}

struct FileWriter {
    file: Option<tokio::fs::File>,
    temp: PathBuf,
    target: PathBuf,
    done: bool,
    live: Live,
}

impl FileWriter {
    async fn publish(&mut self) -> std::io::Result<()> {
        let Some(mut file) = self.file.take() else {
            return Err(std::io::Error::other("writer already finished"));
        };
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        let dir = self.target.parent().map(Path::to_owned).unwrap_or_default();
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::rename(&self.temp, &self.target).await?;
        self.done = true;
        // Make the rename itself durable.
        tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
            .await
            .map_err(std::io::Error::other)?
    }
}

#[async_trait]
impl BlobWriter for FileWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| StorageError::internal("writer already finished"))?;
        file.write_all(&chunk).await.map_err(StorageError::internal)
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        self.publish().await.map_err(StorageError::internal)
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.temp).await;
        self.done = true;
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.temp);
        if !self.done {
            // A cancelled upload: unlinking is quick, do it now.
            self.file.take();
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_close_stops_the_bodies_of_its_session_and_waits_until_they_end() {
        let writes = Arc::new(PartWrites::default());
        let (closed, other) = (UploadId::new(), UploadId::new());
        let mut body = writes.start(&closed);
        let mut unrelated = writes.start(&other);
        let ended = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let ended = ended.clone();
            async move {
                body.stopped().await;
                // Removing its partial file takes a moment.
                tokio::time::sleep(Duration::from_millis(100)).await;
                ended.store(true, Ordering::SeqCst);
                drop(body);
            }
        });
        writes.stop(&closed).await;
        assert!(
            ended.load(Ordering::SeqCst),
            "the close waited for the body"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), unrelated.stopped())
                .await
                .is_err(),
            "another session's body goes on"
        );
        assert_eq!(
            writes.sessions().len(),
            1,
            "the closed session is forgotten"
        );
        drop(unrelated);
        assert!(writes.sessions().is_empty());
        // A close with nothing arriving returns at once.
        writes.stop(&other).await;
    }
}
