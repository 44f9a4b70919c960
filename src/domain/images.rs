//! The use cases: what callers can do with images.
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::accept::Accept;
use super::block::BlockHook;
use super::budget::MemoryBudget;
use super::chunks::{MAX_DOWNLOAD_CHUNK, MIN_DOWNLOAD_CHUNK, exact_chunks};
use super::event::ChangeKind;
use super::image::{Held, ImageRecord, ImageState, ObjectName, Timestamp};
use super::limits::Limits;
use super::listing::{self, ListFilter, ListRequest};
use super::page_token::PageTokens;
use super::quota::Quotas;
use super::scan::ScanHook;
use super::signing::SigningKey;
use super::state_change::{StateChanges, stale_etag};
use super::upload::{UploadFrame, Uploads};
use super::{DomainError, ImageId, UserId, VariantName, validation};
use crate::domain::ports::{
    BlobStore, Disposition, MAX_BATCH_GET, MetadataStore, ObjectKey, PresignRequest, PresignedUrl,
    PublicImages, StorageError,
};

/// Memory a download stream reserves for its life: the message being
/// gathered, the one being sent, and what the store reads ahead.
const DOWNLOAD_MEMORY: u64 = 3 * MAX_DOWNLOAD_CHUNK as u64;
/// Validity of a download URL when the caller does not say.
pub const DEFAULT_DOWNLOAD_URL_EXPIRY: Duration = Duration::from_secs(10 * 60);
/// Records read by a listing's first query; later ones are sized by the
/// records seen (see [`Images::read_page`]).
const FIRST_LIST_BATCH: usize = 32;
/// Attempts of an unconditional update that keeps losing to concurrent ones.
const UPDATE_ATTEMPTS: usize = 5;

/// The image use cases over a blob store and a metadata store.
#[derive(Clone)]
pub struct Images {
    pub(super) blobs: Arc<dyn BlobStore>,
    pub(super) metadata: Arc<dyn MetadataStore>,
    pub(super) limits: Limits,
    tokens: PageTokens,
    budget: MemoryBudget,
    pub(super) uploads: Uploads,
    /// Who may see and change every image whatever its state
    /// (`--moderators`).
    moderators: Arc<Vec<UserId>>,
}

/// A page of a listing.
#[derive(Debug)]
pub struct ListResult {
    pub images: Vec<ImageRecord>,
    /// Empty when there are no more images.
    pub next_page_token: String,
}

/// A download in progress: what is being read, and the bytes.
pub struct Download {
    pub image: ImageRecord,
    /// The stored object read: what a resumed download names to read the
    /// same bytes ([`DownloadRequest::object`]).
    pub object: ObjectName,
    /// The media type of the encoding chosen for the viewer.
    pub content_type: String,
    pub offset: u64,
    pub length: u64,
    pub total_size: u64,
    /// At most [`MAX_DOWNLOAD_CHUNK`] bytes an item; fails rather than ends
    /// early if the store delivers fewer bytes than announced.
    pub chunks: BoxStream<'static, Result<Bytes, DomainError>>,
}

/// What [`Images::download`] reads.
#[derive(Clone, Copy, Debug)]
pub struct DownloadRequest<'a> {
    pub image_id: &'a str,
    /// `original` (or empty) or a variant's name.
    pub variant: &'a str,
    /// The media types the viewer can show (see [`Accept`]).
    pub accept: &'a [String],
    /// A stored object of the image, as a download named it: read as it
    /// is, whatever `variant` and `accept` say, so that a resumed download
    /// reads the bytes it started with even if encodings were added since.
    /// Empty: the rendition `variant` and `accept` choose.
    pub object: &'a str,
    /// The first byte read.
    pub offset: i64,
    /// At most this many bytes; 0 = to the end.
    pub limit: i64,
}

/// What [`Images::batch_get`] signs a URL of, for each image.
#[derive(Clone, Debug)]
pub struct BatchUrl {
    /// `original` or a variant name.
    pub variant: String,
    /// The media types the viewer can show (see [`Accept`]).
    pub accept: Vec<String>,
    pub expires_in: Option<Duration>,
    pub disposition: Disposition,
}

/// The images of a [`Images::batch_get`].
#[derive(Debug, Default)]
pub struct BatchResult {
    /// In the order asked, each with its URL when one was asked for and the
    /// image has the rendition.
    pub images: Vec<(ImageRecord, Option<DownloadUrl>)>,
    /// Ids that name no image.
    pub missing: Vec<String>,
    /// Ids cut off by the response size limit: to ask for again.
    pub unprocessed: Vec<String>,
}

/// A presigned URL of the encoding chosen for the viewer.
#[derive(Clone, Debug)]
pub struct DownloadUrl {
    pub url: PresignedUrl,
    /// The media type of the object it fetches.
    pub content_type: String,
}

/// What [`Images::download_url`] signs.
#[derive(Clone, Copy, Debug)]
pub struct UrlRequest<'a> {
    pub image_id: &'a str,
    /// `original` (or empty) or a variant's name.
    pub variant: &'a str,
    /// The media types the viewer can show (see [`Accept`]).
    pub accept: &'a [String],
    pub expires_in: Option<Duration>,
    pub disposition: Disposition,
}

/// When a URL is signed and how long it lasts from then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UrlTerms {
    signed_at: Timestamp,
    expires_in: Duration,
}

/// A change to an image's metadata: `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct ImageUpdate {
    pub title: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub location: Option<String>,
    /// Apply only if the image's etag is still this one.
    pub expected_etag: Option<String>,
}

impl Images {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        metadata: Arc<dyn MetadataStore>,
        signing_key: SigningKey,
        limits: Limits,
    ) -> Self {
        let budget = MemoryBudget::new(limits.memory_budget, limits.memory_wait)
            .with_user_share(limits.max_memory_per_user);
        Self {
            uploads: Uploads::new(
                blobs.clone(),
                metadata.clone(),
                limits.clone(),
                budget.clone(),
            ),
            blobs,
            metadata,
            budget,
            limits,
            tokens: PageTokens::new(signing_key),
            moderators: Arc::default(),
        }
    }

    /// The same, with `moderators` as the users who may see every image
    /// whatever its state and use the moderators' tools.
    pub fn with_moderators(mut self, moderators: impl IntoIterator<Item = UserId>) -> Self {
        self.moderators = Arc::new(moderators.into_iter().collect());
        self
    }

    /// The one path of an image's state changes, over these stores.
    pub(super) fn state_changes(&self) -> StateChanges {
        self.uploads.state_changes()
    }

    /// The same, with every new image sent to the content scanner `hook`
    /// (`--scan-url`).
    pub fn with_scan_hook(mut self, hook: Option<ScanHook>) -> Self {
        self.uploads = self.uploads.with_scan_hook(hook);
        self
    }

    /// The same, with every new image checked against the block list
    /// `hook` (`--block-list`).
    pub fn with_block_list(mut self, hook: Option<BlockHook>) -> Self {
        self.uploads = self.uploads.with_block_list(hook);
        self
    }

    /// Whether `user` is one of the moderators.
    pub fn is_moderator(&self, user: &UserId) -> bool {
        self.moderators.contains(user)
    }

    /// Whether `viewer` may see `record` (see [`ImageRecord::visible_to`]).
    fn visible(&self, record: &ImageRecord, viewer: &UserId) -> bool {
        record.visible_to(viewer, self.is_moderator(viewer))
    }

    /// The page tokens of listings, for the use cases that page like one.
    pub(super) fn page_tokens(&self) -> &PageTokens {
        &self.tokens
    }

    /// Receives an upload stream and stores the image: see [`Uploads::upload`].
    pub async fn upload<S>(&self, caller: &UserId, frames: S) -> Result<ImageRecord, DomainError>
    where
        S: futures::Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin + 'static,
    {
        self.uploads.upload(caller, frames).await
    }

    /// The memory budget, from which responses waiting to be sent reserve
    /// their bytes.
    pub fn memory(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Memory a listing or a batch of records may take while its response
    /// is made: the records read and the response made of them, each at
    /// most `--max-page-bytes`.
    pub fn page_memory(&self) -> u64 {
        2 * self.limits.max_page_bytes as u64
    }

    /// The upload use cases, sessions included (see
    /// [`super::upload::resumable`]).
    pub fn uploads(&self) -> &Uploads {
        &self.uploads
    }

    /// The same, with `admins` as the users who may read anyone's usage
    /// and set quotas.
    pub fn with_admins(mut self, admins: impl IntoIterator<Item = UserId>) -> Self {
        self.uploads.quotas = self.uploads.quotas.clone().with_admins(admins);
        self
    }

    /// Per-user usage and quotas.
    pub fn quotas(&self) -> &Quotas {
        self.uploads.quotas()
    }

    /// Any identified caller may read any active image's metadata; an
    /// image in another state is its owner's and the moderators' to see,
    /// and does not exist for anyone else.
    pub async fn get(&self, caller: &UserId, image_id: &str) -> Result<ImageRecord, DomainError> {
        let id = ImageId::parse(image_id)?;
        self.metadata
            .get(&id)
            .await?
            .filter(|record| self.visible(record, caller))
            .ok_or_else(DomainError::image_not_found)
    }

    /// A page of the images matching the request's filters that `caller`
    /// may see, newest first.
    pub async fn list(
        &self,
        caller: &UserId,
        request: &ListRequest,
    ) -> Result<ListResult, DomainError> {
        let filter = ListFilter::parse(request)?;
        let limit = listing::page_size(request.page_size)?;
        let fingerprint = filter.fingerprint();
        let cursor = self.tokens.open_page(&fingerprint, &request.page_token)?;
        let (images, next_cursor) = self.read_page(caller, &filter, cursor, limit).await?;
        Ok(ListResult {
            images,
            next_page_token: self.tokens.seal_page(&fingerprint, next_cursor),
        })
    }

    /// Up to `limit` records and at most `--max-page-bytes` of them (always
    /// at least one), and the cursor after the last, read in batches sized
    /// by the records seen so far: records with the most metadata allowed
    /// are ~70 KiB each, so reading a page of 1000 at once would hold 70 MB
    /// for a response that keeps 2 MiB of it.
    async fn read_page(
        &self,
        caller: &UserId,
        filter: &ListFilter,
        mut cursor: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(Vec<ImageRecord>, Option<Vec<u8>>), DomainError> {
        let max_bytes = self.limits.max_page_bytes;
        let mut records: Vec<ImageRecord> = Vec::new();
        let mut bytes = 0;
        let mut batch = limit.min(FIRST_LIST_BATCH);
        loop {
            let page = self.metadata.list(filter, cursor.as_deref(), batch).await?;
            let fetched = page.records.len();
            for (i, record) in page.records.into_iter().enumerate() {
                if !self.visible(&record, caller) {
                    continue;
                }
                let size = record.approximate_encoded_len();
                if !records.is_empty() && bytes + size > max_bytes {
                    // Cut before this record: the rest starts with it.
                    let resume = match i {
                        0 => cursor,
                        _ => page.record_cursors.get(i - 1).cloned(),
                    };
                    return Ok((records, resume));
                }
                bytes += size;
                records.push(record);
                if records.len() == limit {
                    let resume = if i + 1 == fetched {
                        page.next_cursor
                    } else {
                        page.record_cursors.get(i).cloned()
                    };
                    return Ok((records, resume));
                }
            }
            let Some(next) = page.next_cursor else {
                return Ok((records, None));
            };
            cursor = Some(next);
            // As many as the room left holds at the size seen so far.
            let average = (bytes / records.len().max(1)).max(1);
            batch =
                ((max_bytes.saturating_sub(bytes)) / average + 1).clamp(1, limit - records.len());
        }
    }

    /// An image and the stored object of one of its renditions (which
    /// must exist) chosen for a viewer that can show `accept`.
    async fn rendition(
        &self,
        caller: &UserId,
        image_id: &str,
        variant: &str,
        accept: &[String],
    ) -> Result<(ImageRecord, Held), DomainError> {
        let accept = Accept::parse(accept)?;
        let image = self.get(caller, image_id).await?;
        ensure_bytes_held(&image)?;
        let variant = VariantName::parse(variant)?;
        let held = image
            .negotiate(&variant, &accept)
            .ok_or_else(|| DomainError::NotFound(format!("the image has no variant {variant}")))?;
        Ok((image, held))
    }

    /// An image and one of its stored objects, named as a download's
    /// first message named it ([`Download::object`]).
    async fn pinned(
        &self,
        caller: &UserId,
        image_id: &str,
        object: &str,
    ) -> Result<(ImageRecord, Held), DomainError> {
        let name = ObjectName::parse(object).ok_or_else(|| {
            DomainError::invalid(format!(
                "object {object:?} is not an object name (`original`, `small`, `small.webp`)"
            ))
        })?;
        let image = self.get(caller, image_id).await?;
        ensure_bytes_held(&image)?;
        let held = image
            .held_object(&name)
            .ok_or_else(|| DomainError::NotFound(format!("the image has no object {name}")))?;
        Ok((image, held))
    }

    /// Streams a rendition in the encoding chosen for `accept`, or `limit`
    /// bytes of it from `offset` (0 = to the end); its memory counts
    /// against `caller`'s share of the budget.
    pub async fn download(
        &self,
        caller: &UserId,
        request: &DownloadRequest<'_>,
    ) -> Result<Download, DomainError> {
        let DownloadRequest {
            image_id,
            variant,
            accept,
            object,
            offset,
            limit,
        } = *request;
        let (image, held) = if object.is_empty() {
            self.rendition(caller, image_id, variant, accept).await?
        } else {
            self.pinned(caller, image_id, object).await?
        };
        let total_size = held.size_bytes;
        let offset = u64::try_from(offset)
            .map_err(|_| DomainError::invalid("read_offset must not be negative"))?;
        let limit = u64::try_from(limit)
            .map_err(|_| DomainError::invalid("read_limit must not be negative"))?;
        if offset > total_size {
            return Err(DomainError::OutOfRange(format!(
                "read_offset {offset} is beyond the end of the image ({total_size} bytes)"
            )));
        }
        let remaining = total_size - offset;
        let length = if limit == 0 {
            remaining
        } else {
            limit.min(remaining)
        };
        let chunks = if length == 0 {
            futures::stream::empty().boxed()
        } else {
            // Held for as long as the stream lives: a message being
            // gathered, one being sent, and the store's read-ahead.
            let memory = self
                .budget
                .reserve_for(
                    caller,
                    DOWNLOAD_MEMORY.min(length + MIN_DOWNLOAD_CHUNK as u64),
                    "a download",
                )
                .await?;
            let key = ObjectKey::of(&image.id, &held.object);
            let stream = self
                .blobs
                .read(&key, offset, length)
                .await
                .map_err(|e| match e {
                    // Metadata without bytes: deleted meanwhile.
                    StorageError::NotFound => DomainError::image_not_found(),
                    other => other.into(),
                })?;
            exact_chunks(stream, length)
                .map(move |chunk| {
                    let _held = &memory;
                    chunk
                })
                .boxed()
        };
        Ok(Download {
            image,
            object: held.object,
            content_type: held.content_type,
            offset,
            length,
            total_size,
            chunks,
        })
    }

    /// A presigned URL for a rendition, in the encoding chosen for `accept`.
    /// Only of an active image: a URL works for whoever holds it.
    pub async fn download_url(
        &self,
        caller: &UserId,
        request: &UrlRequest<'_>,
    ) -> Result<DownloadUrl, DomainError> {
        let UrlRequest {
            image_id,
            variant,
            accept,
            expires_in,
            disposition,
        } = *request;
        let (image, held) = self.rendition(caller, image_id, variant, accept).await?;
        if !image.state.is_active() {
            return Err(DomainError::FailedPrecondition(format!(
                "the image is {} ({}): only an active image has download URLs, which work for \
                 anyone holding them; its owner may download it with DownloadImage",
                image.state, image.state_reason
            )));
        }
        let terms = self.url_terms(expires_in, Timestamp::now());
        self.presign(&image, &held, terms, disposition).await
    }

    /// When a URL asked to last `requested` is signed, and for how long:
    /// from the start of the current `--download-url-window`, for the
    /// window plus `requested`, so that every request in the window gets
    /// the same URL and each is valid for at least `requested` from `now`.
    /// Windows are whole multiples of their length since the Unix epoch, so
    /// every replica agrees on them.
    fn url_terms(&self, requested: Option<Duration>, now: Timestamp) -> UrlTerms {
        let requested = match requested {
            None => DEFAULT_DOWNLOAD_URL_EXPIRY,
            Some(d) if d.is_zero() => DEFAULT_DOWNLOAD_URL_EXPIRY,
            Some(d) => d,
        };
        let longest = self.blobs.max_presign_expiry();
        let requested = requested.min(self.limits.max_url_expiry).min(longest);
        // Whole seconds: both stores sign seconds.
        let window = self
            .limits
            .url_window
            .min(longest.saturating_sub(requested))
            .as_secs() as i64;
        if window == 0 {
            return UrlTerms {
                signed_at: now,
                expires_in: requested,
            };
        }
        let start = now.as_micros().div_euclid(1_000_000).div_euclid(window) * window;
        UrlTerms {
            signed_at: Timestamp::from_micros(start.saturating_mul(1_000_000)),
            expires_in: requested + Duration::from_secs(window as u64),
        }
    }

    async fn presign(
        &self,
        image: &ImageRecord,
        held: &Held,
        terms: UrlTerms,
        disposition: Disposition,
    ) -> Result<DownloadUrl, DomainError> {
        // The URL names the object chosen, so it stays the same within
        // the window for each encoding, and is served as what it holds.
        let request = PresignRequest {
            key: ObjectKey::of(&image.id, &held.object),
            signed_at: terms.signed_at,
            expires_in: terms.expires_in,
            content_type: held.content_type.clone(),
            disposition,
            filename: image.filename.clone(),
        };
        Ok(DownloadUrl {
            url: self.blobs.presign_read(&request).await?,
            content_type: held.content_type.clone(),
        })
    }

    /// Up to [`MAX_BATCH_GET`] images in one store call, in the order
    /// asked (each once), with a download URL of `url.variant` for each
    /// that has it. The response holds at most `--max-page-bytes` of
    /// records (always at least one); the ids cut off are `unprocessed`.
    pub async fn batch_get(
        &self,
        caller: &UserId,
        image_ids: &[String],
        url: Option<BatchUrl>,
    ) -> Result<BatchResult, DomainError> {
        if image_ids.len() > MAX_BATCH_GET {
            return Err(DomainError::invalid(format!(
                "at most {MAX_BATCH_GET} image_ids may be asked for at once, not {}",
                image_ids.len()
            )));
        }
        let mut ids: Vec<ImageId> = Vec::with_capacity(image_ids.len());
        for (i, text) in image_ids.iter().enumerate() {
            let id = ImageId::parse(text)
                .map_err(|_| DomainError::invalid(format!("image_ids[{i}] is not an image id")))?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let url = match url {
            Some(url) => Some((
                VariantName::parse(&url.variant)?,
                Accept::parse(&url.accept)?,
                self.url_terms(url.expires_in, Timestamp::now()),
                url.disposition,
            )),
            None => None,
        };
        let mut found: std::collections::HashMap<ImageId, ImageRecord> = if ids.is_empty() {
            Default::default()
        } else {
            self.metadata
                .get_many(&ids)
                .await?
                .into_iter()
                .map(|record| (record.id, record))
                .collect()
        };
        let mut result = BatchResult::default();
        let mut bytes = 0;
        for id in ids {
            let Some(record) = found
                .remove(&id)
                .filter(|record| self.visible(record, caller))
            else {
                result.missing.push(id.to_string());
                continue;
            };
            let size = record.approximate_encoded_len();
            if !result.images.is_empty() && bytes + size > self.limits.max_page_bytes
                || !result.unprocessed.is_empty()
            {
                result.unprocessed.push(id.to_string());
                continue;
            }
            bytes += size;
            // URLs only of active images: a URL works for whoever holds it.
            let held = url
                .as_ref()
                .filter(|_| record.state.is_active() && !record.bytes_removed())
                .and_then(|(variant, accept, terms, disposition)| {
                    Some((record.negotiate(variant, accept)?, *terms, *disposition))
                });
            let signed = match held {
                Some((held, terms, disposition)) => {
                    Some(self.presign(&record, &held, terms, disposition).await?)
                }
                None => None,
            };
            result.images.push((record, signed));
        }
        Ok(result)
    }

    /// Changes an image's descriptive metadata; only its owner may.
    pub async fn update(
        &self,
        caller: &UserId,
        image_id: &str,
        update: ImageUpdate,
    ) -> Result<ImageRecord, DomainError> {
        let id = ImageId::parse(image_id)?;
        let title = update.title.as_deref().map(validation::title).transpose()?;
        let description = update
            .description
            .as_deref()
            .map(validation::description)
            .transpose()?;
        let tags = update.tags.as_deref().map(validation::tags).transpose()?;
        let location = update
            .location
            .as_deref()
            .map(validation::location)
            .transpose()?;
        if title.is_none() && description.is_none() && tags.is_none() && location.is_none() {
            return Err(DomainError::invalid("the update changes nothing"));
        }
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self
                .metadata
                .get(&id)
                .await?
                .ok_or_else(DomainError::image_not_found)?;
            ensure_owner(caller, &current)?;
            if current.state == ImageState::Removed {
                return Err(DomainError::FailedPrecondition(
                    "the image was removed by moderation: its record is kept as a tombstone \
                     and is not edited (DeleteImage removes it)"
                        .into(),
                ));
            }
            if let Some(etag) = &update.expected_etag
                && *etag != current.etag()
            {
                return Err(stale_etag());
            }
            let mut next = current.clone();
            if let Some(v) = &title {
                next.title.clone_from(v);
            }
            if let Some(v) = &description {
                next.description.clone_from(v);
            }
            if let Some(v) = &tags {
                next.tags.clone_from(v);
            }
            if let Some(v) = &location {
                next.location.clone_from(v);
            }
            next.revision = current.revision + 1;
            next.update_time = Timestamp::now().max(current.update_time);
            match self
                .metadata
                .replace(&next, current.revision, ChangeKind::Updated)
                .await
            {
                Ok(()) => return Ok(next),
                Err(StorageError::ConditionFailed) if update.expected_etag.is_some() => {
                    return Err(stale_etag());
                }
                // Someone else's update won; re-apply ours on top of it.
                Err(StorageError::ConditionFailed) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(DomainError::Aborted(
            "the image is being changed concurrently; retry".into(),
        ))
    }

    /// Deletes an image: its metadata first (so no caller ever sees metadata
    /// without bytes), then the bytes of every rendition. Only the owner may.
    pub async fn delete(&self, caller: &UserId, image_id: &str) -> Result<(), DomainError> {
        let id = ImageId::parse(image_id)?;
        let current = self
            .metadata
            .get(&id)
            .await?
            .ok_or_else(DomainError::image_not_found)?;
        ensure_owner(caller, &current)?;
        let deleted = match self.metadata.delete(&id, caller).await {
            Ok(record) => record,
            // Another's now, or still the caller's but changed under every
            // attempt of the store's (edits, background encodings): only
            // the first is a refusal.
            Err(StorageError::ConditionFailed) => {
                return Err(match self.metadata.get(&id).await? {
                    Some(now) if now.owner == *caller => DomainError::Aborted(
                        "the image kept changing while it was being deleted; retry".into(),
                    ),
                    Some(_) => not_owner(),
                    None => DomainError::image_not_found(),
                });
            }
            Err(other) => return Err(other.into()),
        };
        // The metadata is gone: finish removing the bytes even if the caller
        // goes away now.
        let images = self.clone();
        let removal = tokio::spawn(
            async move {
                images.uploads.quotas().give_back(&deleted).await;
                // Each object once, however many entries share it.
                for (object, _) in deleted.objects() {
                    images
                        .delete_blob_logged(&ObjectKey::of(&id, &object))
                        .await;
                }
            }
            .in_current_span(),
        );
        let _ = removal.await;
        Ok(())
    }

    /// Whether both stores answer, within `timeout`.
    pub async fn check_health(&self, timeout: Duration) -> Result<(), DomainError> {
        let both = async {
            let (blobs, metadata) =
                tokio::join!(self.blobs.check_health(), self.metadata.check_health());
            blobs.and(metadata)
        };
        match tokio::time::timeout(timeout, both).await {
            Ok(result) => result.map_err(DomainError::from),
            Err(_) => Err(DomainError::Unavailable(
                "a storage backend did not answer in time".into(),
            )),
        }
    }

    /// Deletes bytes whose metadata is gone or was never written. A failure
    /// leaves an orphan object, invisible to callers; it is logged.
    pub(super) async fn delete_blob_logged(&self, key: &ObjectKey) {
        if let Err(error) = self.blobs.delete(key).await {
            tracing::warn!(key = key.as_str(), error = %crate::telemetry::error_chain(&error), "could not delete image bytes; the object is orphaned");
        }
    }
}

/// The owner alone changes or deletes an image. To anyone else an image
/// that is not `Active` does not exist (NOT_FOUND), as for every read: a
/// refusal would say it is there.
fn ensure_owner(caller: &UserId, image: &ImageRecord) -> Result<(), DomainError> {
    if image.owner == *caller {
        Ok(())
    } else if !image.state.is_active() {
        Err(DomainError::image_not_found())
    } else {
        Err(not_owner())
    }
}

/// Refuses a download of an image whose bytes moderation removed.
fn ensure_bytes_held(image: &ImageRecord) -> Result<(), DomainError> {
    if image.bytes_removed() {
        return Err(DomainError::FailedPrecondition(format!(
            "the image was removed by moderation ({}): its bytes are gone",
            image.state_reason
        )));
    }
    Ok(())
}

fn not_owner() -> DomainError {
    DomainError::PermissionDenied("only the owner of an image may change or delete it".into())
}

#[async_trait::async_trait]
impl PublicImages for Images {
    async fn is_public(&self, id: &ImageId) -> Result<bool, StorageError> {
        let record = self.metadata.get(id).await?;
        Ok(record.is_some_and(|r| r.state.is_active() && !r.bytes_removed()))
    }
}
