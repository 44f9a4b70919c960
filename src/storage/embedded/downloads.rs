//! Presigned downloads (with `Range` support) and direct uploads of the
//! embedded backend, served by the HTTP listener: the URLs [`super::urls`]
//! signs point here.
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, BodyDataStream};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::EmbeddedBlobStore;
use super::blob::{PartWrite, READ_CHUNK};
use super::urls::{UploadQuery, UrlError, UrlQuery};
use crate::domain::image::{ObjectName, Timestamp};
use crate::domain::ports::{
    BlobStore, ObjectKey, OpenSessions, PublicImages, StorageError, WriteSize,
};
use crate::domain::session::UploadId;
use crate::domain::{ImageId, UserId};
use crate::listener::{PeerInfo, peer_key};
use crate::response_stall::HeldMemory;

/// Reserves what a download reads ahead from the replica's memory
/// budget, counted against no user's share (a download URL names no
/// caller, and whoever holds it is not the image's owner); `None` when
/// there is no room within the budget's wait. The wiring lends it. The
/// memory is held until the body is sent or dropped.
pub type ReserveReadAhead =
    Arc<dyn Fn(u64) -> futures::future::BoxFuture<'static, Option<HeldMemory>> + Send + Sync>;

/// How many presigned downloads are sent at once (0: no cap).
#[derive(Clone, Copy, Debug)]
pub struct DownloadCaps {
    /// By the replica, to all callers.
    pub at_once: usize,
    /// To one remote address (an IPv4 address, an IPv6 /64).
    pub per_peer: usize,
}

/// How many part bodies are received at once (0: no cap).
#[derive(Clone, Copy, Debug)]
pub struct PartUploadCaps {
    /// By the replica, from all callers.
    pub at_once: usize,
    /// From one user, the owner of the parts' sessions.
    pub per_user: usize,
}

/// The download and upload routes, over `store`; `public` says which
/// images a URL may still fetch (a URL of an image moderation hid or
/// removed since it was issued is refused); `sessions` says which
/// upload sessions may still receive parts, and whose they are; `caps`
/// bound the part bodies received at once; `downloads` bound the
/// downloads sent at once, each of which reserves what it reads ahead
/// through `read_ahead`.
pub fn routes(
    store: Arc<EmbeddedBlobStore>,
    public: Arc<dyn PublicImages>,
    sessions: Arc<dyn OpenSessions>,
    caps: PartUploadCaps,
    downloads: DownloadCaps,
    read_ahead: ReserveReadAhead,
) -> Router {
    Router::new()
        .route(
            "/blobs/images/{image_id}/{object}",
            get(presigned_download).with_state(Downloads {
                store: store.clone(),
                public,
                read_ahead,
                slots: Arc::new(Slots::new(downloads.at_once, downloads.per_peer)),
            }),
        )
        .route(
            "/blobs/uploads/{upload_id}/{part}",
            put(presigned_upload).with_state(PartUploads {
                store: store.clone(),
                sessions,
                ledger: Arc::default(),
                slots: Arc::new(Slots::new(caps.at_once, caps.per_user)),
            }),
        )
        .with_state(store)
}

/// What the upload route needs: the store, who says whether a part's
/// session is still open, what the parts being sent hold, and the slots
/// of the bodies received at once.
#[derive(Clone)]
struct PartUploads {
    store: Arc<EmbeddedBlobStore>,
    sessions: Arc<dyn OpenSessions>,
    ledger: Arc<PartLedger>,
    /// Held by each body's sessions' owner.
    slots: Arc<Slots<UserId>>,
}

/// Slots of work done at once: the replica's, shared by all, and each
/// holder's (a user's part bodies, an address's downloads), far fewer,
/// so that one holder cannot take every slot of the replica. Nothing
/// waits for a slot: a holder or a replica at its cap is told to retry.
struct Slots<K> {
    replica: Arc<Semaphore>,
    per_holder: usize,
    /// Slots each holder has; a holder with none is not kept.
    holders: Mutex<HashMap<K, usize>>,
}

/// One piece of work's slots, the holder's and the replica's, released
/// when it ends however it ends.
struct Slot<K: Eq + Hash + Clone> {
    slots: Arc<Slots<K>>,
    holder: K,
    _replica: OwnedSemaphorePermit,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    /// `at_once` by the replica, `per_holder` by each holder (0: no cap).
    fn new(at_once: usize, per_holder: usize) -> Self {
        let cap = |n: usize| match n {
            0 => Semaphore::MAX_PERMITS,
            n => n.min(Semaphore::MAX_PERMITS),
        };
        Self {
            replica: Arc::new(Semaphore::new(cap(at_once))),
            per_holder: cap(per_holder),
            holders: Mutex::default(),
        }
    }

    fn holders(&self) -> MutexGuard<'_, HashMap<K, usize>> {
        self.holders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why `holder` cannot have a slot now, if it cannot.
    fn busy(&self, holder: &K) -> Option<Busy> {
        self.full(&self.holders(), holder)
    }

    fn full(&self, holders: &HashMap<K, usize>, holder: &K) -> Option<Busy> {
        if holders
            .get(holder)
            .is_some_and(|&held| held >= self.per_holder)
        {
            return Some(Busy::Holder);
        }
        (self.replica.available_permits() == 0).then_some(Busy::Replica)
    }

    /// Takes a slot for `holder`: the holder's first, then the replica's.
    fn take(self: &Arc<Self>, holder: &K) -> Result<Slot<K>, Busy> {
        let mut holders = self.holders();
        if let Some(busy) = self.full(&holders, holder) {
            return Err(busy);
        }
        let Ok(replica) = self.replica.clone().try_acquire_owned() else {
            return Err(Busy::Replica);
        };
        *holders.entry(holder.clone()).or_default() += 1;
        Ok(Slot {
            slots: self.clone(),
            holder: holder.clone(),
            _replica: replica,
        })
    }
}

/// Whose slots are all taken.
#[derive(Clone, Copy, Debug)]
enum Busy {
    Holder,
    Replica,
}

impl Busy {
    /// A part upload's refusal.
    fn part_upload(self) -> Response {
        retry_later(match self {
            Self::Holder => {
                "this user sends as many part uploads at once as one user may: retry later\n"
            }
            Self::Replica => "too many part uploads are being received: retry later\n",
        })
    }

    /// A download's refusal.
    fn download(self) -> Response {
        retry_later(match self {
            Self::Holder => {
                "this address receives as many presigned downloads at once as one address may \
                 (--http-max-downloads-per-peer): retry later\n"
            }
            Self::Replica => {
                "too many presigned downloads are being sent (--http-max-downloads): retry later\n"
            }
        })
    }
}

/// 503 with `Retry-After`: a slot frees when a body ends.
fn retry_later(text: &'static str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::RETRY_AFTER, "5"),
        ],
        text,
    )
        .into_response()
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut holders = self.slots.holders();
        if let Some(held) = holders.get_mut(&self.holder) {
            *held -= 1;
            if *held == 0 {
                holders.remove(&self.holder);
            }
        }
    }
}

/// The bytes the parts of upload sessions hold on disk while bodies
/// arrive: finished parts and the bodies still arriving, counted before
/// each piece is written, so that together they never pass what the
/// session is charged for, however many `PUT`s run at once (the embedded
/// backend is one process, so memory is the whole picture).
///
/// A URL of [`WriteSize::AtMost`] bounds all the parts of its session
/// together; one of [`WriteSize::Exact`] bounds its own part, whose
/// concurrent `PUT`s then share that size. A scope is kept while a body
/// in it arrives, and read from the disk when the first one starts.
///
/// A body sent to a part that already holds one replaces it, so the
/// earlier part is removed as the body starts: the session's bytes are
/// then the new body's, and a part is sent again (smaller, or after a
/// lost answer) within the same allowance.
#[derive(Default)]
struct PartLedger {
    scopes: Mutex<HashMap<String, Scope>>,
}

#[derive(Default)]
struct Scope {
    /// Bytes of each finished part, by name.
    finished: HashMap<String, u64>,
    /// Their sum.
    finished_total: u64,
    /// Bytes of the bodies still arriving.
    arriving: u64,
    /// How many bodies are arriving.
    bodies: usize,
}

impl PartLedger {
    fn scopes(&self) -> MutexGuard<'_, HashMap<String, Scope>> {
        self.scopes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a body starting for `part` of `upload`, sent to a URL that
    /// allows `size`.
    async fn start(
        self: &Arc<Self>,
        store: &EmbeddedBlobStore,
        upload: &UploadId,
        part: &str,
        size: WriteSize,
    ) -> Result<Charge, StorageError> {
        let (scope, limit) = match size {
            WriteSize::AtMost(n) => (upload.to_string(), n),
            WriteSize::Exact(n) => (format!("{upload}/{part}"), n),
        };
        let earlier = store.path(&ObjectKey::staged(upload, part));
        let mut scopes = loop {
            let known = self.scopes().contains_key(&scope);
            let read = if known {
                None
            } else {
                // No body of this scope is arriving, so none of its parts
                // can change here while the disk is read (a cancel only
                // removes).
                let mut finished = store.staged_sizes(upload).await?;
                if matches!(size, WriteSize::Exact(_)) {
                    finished.retain(|name, _| name == part);
                }
                Some(finished)
            };
            let mut scopes = self.scopes();
            if let Some(finished) = read {
                scopes.entry(scope.clone()).or_insert_with(|| Scope {
                    finished_total: finished.values().sum(),
                    finished,
                    ..Scope::default()
                });
            }
            // Gone if its last body ended meanwhile: read it again.
            if scopes.contains_key(&scope) {
                break scopes;
            }
        };
        let counted = scopes.get_mut(&scope).expect("kept while locked");
        if let Some(before) = counted.finished.remove(part) {
            // Removed under the lock, so that no other body counts the
            // bytes before they are gone.
            match std::fs::remove_file(&earlier) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    counted.finished.insert(part.to_owned(), before);
                    if counted.bodies == 0 {
                        scopes.remove(&scope);
                    }
                    return Err(StorageError::internal(e));
                }
            }
            counted.finished_total -= before;
        }
        counted.bodies += 1;
        Ok(Charge {
            ledger: self.clone(),
            scope,
            part: part.to_owned(),
            limit,
            arriving: 0,
        })
    }
}

/// One body arriving: what it holds, released when it ends.
struct Charge {
    ledger: Arc<PartLedger>,
    scope: String,
    part: String,
    limit: u64,
    arriving: u64,
}

impl Charge {
    /// Whether `more` bytes fit beside the finished parts and the bodies
    /// arriving; if so and `count`, they are counted as this body's.
    fn fits(&mut self, more: u64, count: bool) -> bool {
        let mut scopes = self.ledger.scopes();
        let Some(scope) = scopes.get_mut(&self.scope) else {
            return false;
        };
        let held = scope.finished_total.saturating_add(scope.arriving);
        if held.saturating_add(more) > self.limit {
            return false;
        }
        if count {
            scope.arriving += more;
            self.arriving += more;
        }
        true
    }

    /// The body is now its part (in place of any earlier one).
    fn finished(mut self) {
        let mut scopes = self.ledger.scopes();
        if let Some(scope) = scopes.get_mut(&self.scope) {
            let before = scope.finished.insert(self.part.clone(), self.arriving);
            scope.finished_total = scope.finished_total - before.unwrap_or(0) + self.arriving;
            scope.arriving -= self.arriving;
        }
        self.arriving = 0;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut scopes = self.ledger.scopes();
        if let Some(scope) = scopes.get_mut(&self.scope) {
            scope.arriving -= self.arriving;
            scope.bodies -= 1;
            if scope.bodies == 0 {
                scopes.remove(&self.scope);
            }
        }
    }
}

/// The owner of `upload` if it is open; else the answer to send (or when
/// that cannot be told).
async fn owner_if_open(sessions: &dyn OpenSessions, upload: &UploadId) -> Result<UserId, Response> {
    match sessions.open_owner(upload).await {
        Ok(Some(owner)) => Ok(owner),
        Ok(None) => Err(session_closed()),
        Err(error) => {
            tracing::error!(%error, "could not read an upload session for a presigned upload");
            Err(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the upload session cannot be read now: retry\n",
            ))
        }
    }
}

fn session_closed() -> Response {
    plain(
        StatusCode::GONE,
        "the upload session is closed (completed, cancelled or expired): \
         its URLs take no more parts\n",
    )
}

fn cut_off() -> Response {
    plain(StatusCode::BAD_REQUEST, "the body was cut off\n")
}

fn too_much_at_once() -> Response {
    plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the parts sent to this upload, with those still arriving, are larger than it \
         allows\n",
    )
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// What the download route needs: the store, how each download reserves
/// its read-ahead, and the slots of the downloads sent at once.
#[derive(Clone)]
struct Downloads {
    store: Arc<EmbeddedBlobStore>,
    /// Whether an image is still anyone's to fetch.
    public: Arc<dyn PublicImages>,
    read_ahead: ReserveReadAhead,
    /// Held by each download's remote address.
    slots: Arc<Slots<Option<IpAddr>>>,
}

/// Sends an object to the holder of a URL signed for it.
///
/// A download holds a slot of its remote address and one of the replica
/// ([`Slots`]), what it reads ahead and its open file until its body is
/// sent, or dropped by the listener for not being read for
/// `--http-stall-timeout`: a URL, whoever minted it, is charged to no
/// user, and the caps bound what all downloads hold together.
async fn presigned_download(
    State(Downloads {
        store,
        public,
        read_ahead,
        slots,
    }): State<Downloads>,
    peer: Option<Extension<PeerInfo>>,
    Path((image_id, object)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Ok(query) = serde_urlencoded::from_str::<UrlQuery>(query.as_deref().unwrap_or("")) else {
        return plain(
            StatusCode::FORBIDDEN,
            "invalid or incomplete download URL\n",
        );
    };
    // `small`, or an added encoding's `small.webp`: any object the
    // service writes, shared by several entries or not.
    let (Ok(id), Some(object)) = (ImageId::parse(&image_id), ObjectName::parse(&object)) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let key = ObjectKey::of(&id, &object);
    let now = Timestamp::now();
    // A store opened without a signer (never the server's) accepts no URL.
    let verified = store.urls().map_or(Err(UrlError::BadSignature), |urls| {
        urls.verify(key.as_str(), &query, now)
    });
    let grant = match verified {
        Ok(grant) => grant,
        Err(error) => {
            tracing::debug!(%error, key = key.as_str(), "refused a presigned download");
            return plain(
                StatusCode::FORBIDDEN,
                "the download URL is invalid or has expired\n",
            );
        }
    };
    // A URL outlives its image's state: one of an image hidden or removed
    // since is answered as if the image did not exist.
    match public.is_public(&id).await {
        Ok(true) => {}
        Ok(false) => return plain(StatusCode::NOT_FOUND, "not found\n"),
        Err(error) => {
            tracing::error!(%error, "presigned download failed");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "try again later\n");
        }
    }
    let size = match store.size(&key).await {
        Ok(size) => size,
        Err(StorageError::NotFound) => return plain(StatusCode::NOT_FOUND, "not found\n"),
        Err(error) => {
            tracing::error!(%error, "presigned download failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };

    // The bytes under a key never change (an image's bytes are fixed under
    // its id), so the key and size make a strong validator.
    let etag = format!("\"{id}.{object}.{size}\"");
    let max_age = (grant.expires - now.as_micros() / 1_000_000).max(0);
    let cache = [
        (
            header::CACHE_CONTROL,
            format!("public, max-age={max_age}, immutable"),
        ),
        (
            header::EXPIRES,
            httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(grant.expires.max(0) as u64),
            ),
        ),
        (header::ETAG, etag.clone()),
    ];
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| matches_etag(tags, &etag))
    {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }

    let mut status = StatusCode::OK;
    let (mut offset, mut length) = (0, size);
    if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        // Malformed ranges are ignored (the whole object is sent), as HTTP
        // allows; several ranges are also answered with the whole object.
        if let Ok(parsed) = http_range_header::parse_range_header(range) {
            match parsed.validate(size) {
                Ok(ranges) if ranges.len() == 1 => {
                    offset = *ranges[0].start();
                    length = ranges[0].end() - offset + 1;
                    status = StatusCode::PARTIAL_CONTENT;
                }
                Ok(_) => {}
                Err(_) => {
                    return (
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                    )
                        .into_response();
                }
            }
        }
    }
    let peer = peer.and_then(|Extension(peer)| peer.remote.map(|remote| peer_key(remote.ip())));
    let slot = match slots.take(&peer) {
        Ok(slot) => slot,
        Err(busy) => return busy.download(),
    };
    // What the body reads ahead, until it is sent or dropped for not being
    // read for --http-stall-timeout: the chunk being handed out, and the
    // file's own buffer of the same size.
    let Some(memory) = read_ahead(2 * length.min(READ_CHUNK as u64)).await else {
        tracing::debug!("a presigned download finds no memory within the wait");
        return retry_later("the server's memory is taken by work in progress: retry later\n");
    };
    let body = match store.read(&key, offset, length).await {
        // The body holds the slot: it is released when the body ends or
        // is dropped.
        Ok(stream) => Body::from_stream(stream.map(move |chunk| {
            let _held = &slot;
            chunk
        })),
        Err(StorageError::NotFound) => return plain(StatusCode::NOT_FOUND, "not found\n"),
        Err(error) => {
            tracing::error!(%error, "presigned download failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };

    let mut response = Response::new(body);
    response.extensions_mut().insert(memory);
    *response.status_mut() = status;
    let h = response.headers_mut();
    let value = |text: &str| {
        HeaderValue::from_str(text)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
    };
    h.insert(header::CONTENT_TYPE, value(&grant.content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, text) in cache {
        h.insert(name, value(&text));
    }
    if let Ok(disposition) = HeaderValue::from_str(&grant.disposition.header_value(&grant.filename))
    {
        h.insert(header::CONTENT_DISPOSITION, disposition);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let end = offset + length - 1;
        h.insert(
            header::CONTENT_RANGE,
            value(&format!("bytes {offset}-{end}/{size}")),
        );
    }
    response
}

/// Whether an `If-None-Match` list names `etag` (weak comparison, as RFC
/// 9110 asks for this header), or is `*`.
fn matches_etag(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// A direct upload whose body stops arriving for this long is abandoned.
const UPLOAD_BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How often a body being received asks again whether its session is
/// open: a close stops it at once, this catches an expiry.
const SESSION_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What a part body's next wait brought.
enum Arrived {
    Chunk(Bytes),
    End,
    /// The session closed (cancel, commit or expiry) meanwhile.
    Closed,
    /// The body failed: the caller cut it, went idle, or the listener's
    /// deadlines ended it.
    CutOff,
}

/// A part body as it arrives, watched for its session's close and for a
/// caller that goes idle.
struct IncomingPart<'a> {
    stream: BodyDataStream,
    closing: PartWrite,
    recheck: tokio::time::Interval,
    idle_until: tokio::time::Instant,
    sessions: &'a dyn OpenSessions,
    upload: &'a UploadId,
}

impl<'a> IncomingPart<'a> {
    fn new(
        body: Body,
        closing: PartWrite,
        sessions: &'a dyn OpenSessions,
        upload: &'a UploadId,
    ) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            stream: body.into_data_stream(),
            closing,
            recheck: tokio::time::interval_at(now + SESSION_RECHECK, SESSION_RECHECK),
            idle_until: now + UPLOAD_BODY_IDLE_TIMEOUT,
            sessions,
            upload,
        }
    }

    async fn next(&mut self) -> Arrived {
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(self.idle_until, self.stream.next()) => next,
                () = self.closing.stopped() => return Arrived::Closed,
                _ = self.recheck.tick() => {
                    if matches!(self.sessions.is_open(self.upload).await, Ok(false)) {
                        return Arrived::Closed;
                    }
                    continue;
                }
            };
            self.idle_until = tokio::time::Instant::now() + UPLOAD_BODY_IDLE_TIMEOUT;
            return match next {
                Ok(None) => Arrived::End,
                Ok(Some(Ok(chunk))) => Arrived::Chunk(chunk),
                Ok(Some(Err(_))) | Err(_) => Arrived::CutOff,
            };
        }
    }
}

/// Stores the body of a presigned `PUT` as a part of an upload session.
/// Nothing is visible at the part's key unless the whole body arrived and
/// had the size the URL allows, and nothing stays unless the session is
/// open.
///
/// A cancel or commit closes the session's record, then deletes its
/// staged objects, which first stops the bodies still arriving for it
/// ([`super::blob::PartWrites`]): the body ends at once, its partial file
/// is removed and the caller gets 410. This handler registers its body
/// before it checks the record, checks it again every
/// [`SESSION_RECHECK`] while the body arrives (an expiry closes nothing
/// explicitly) and once the part is visible, deleting the part if the
/// session closed meanwhile. Whichever comes last of the part's rename and
/// the session's close, one side removes the part, and no lock is held
/// while a client sends a body, so a cancel never waits on a slow upload.
///
/// A body holds a slot of its session's owner and one of the replica
/// ([`Slots`]), its ledger charge and its partial file only from its
/// first byte on: a request that sends nothing holds none of them until
/// the listener cuts it, and every way out of the handler releases them.
async fn presigned_upload(
    State(PartUploads {
        store,
        sessions,
        ledger,
        slots,
    }): State<PartUploads>,
    Path((upload_id, part)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(query) = serde_urlencoded::from_str::<UploadQuery>(query.as_deref().unwrap_or(""))
    else {
        return plain(StatusCode::FORBIDDEN, "invalid or incomplete upload URL\n");
    };
    let valid_part = part.len() == 10
        && part.starts_with("part-")
        && part[5..].bytes().all(|b| b.is_ascii_digit());
    let (Ok(id), true) = (UploadId::parse(&upload_id), valid_part) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let key = ObjectKey::staged(&id, &part);
    let verified = store.urls().map_or(Err(UrlError::BadSignature), |urls| {
        urls.verify_upload(key.as_str(), &query, Timestamp::now())
    });
    let size = match verified {
        Ok(size) => size,
        Err(error) => {
            tracing::debug!(%error, key = key.as_str(), "refused a presigned upload");
            return plain(
                StatusCode::FORBIDDEN,
                "the upload URL is invalid or has expired\n",
            );
        }
    };
    // Registered before the session is read: a close from now on stops it.
    let closing = store.part_writes().start(&id);
    let owner = match owner_if_open(sessions.as_ref(), &id).await {
        Ok(owner) => owner,
        Err(refusal) => return refusal,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = match size {
        WriteSize::Exact(n) | WriteSize::AtMost(n) => n,
    };
    if let (WriteSize::Exact(n), Some(declared)) = (size, declared)
        && declared != n
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "the body's length is not the one this URL was made for\n",
        );
    }
    if declared.is_some_and(|declared| declared > limit) {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is larger than this URL allows\n",
        );
    }
    // A caller that could not have a slot now is told so before it sends
    // (a client waiting on `Expect: 100-continue` sends nothing).
    if let Some(busy) = slots.busy(&owner) {
        return busy.part_upload();
    }
    let mut incoming = IncomingPart::new(body, closing, sessions.as_ref(), &id);
    let mut arrived = incoming.next().await;
    match arrived {
        Arrived::Closed => return session_closed(),
        Arrived::CutOff => return cut_off(),
        Arrived::Chunk(_) | Arrived::End => {}
    }
    let _slot = match slots.take(&owner) {
        Ok(slot) => slot,
        Err(busy) => return busy.part_upload(),
    };
    let mut charge = match ledger.start(&store, &id, &part, size).await {
        Ok(charge) => charge,
        Err(error) => {
            tracing::error!(%error, "presigned upload failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    // A declared length that cannot fit now is refused before it is stored.
    if declared.is_some_and(|declared| !charge.fits(declared, false)) {
        return too_much_at_once();
    }
    let mut writer = match store.start_write(&key, declared).await {
        Ok(writer) => writer,
        Err(error) => {
            tracing::error!(%error, "presigned upload failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    let mut received = 0u64;
    loop {
        let chunk = match arrived {
            Arrived::End => break,
            Arrived::Chunk(chunk) => chunk,
            Arrived::Closed => {
                writer.abort().await;
                return session_closed();
            }
            Arrived::CutOff => {
                writer.abort().await;
                return cut_off();
            }
        };
        received += chunk.len() as u64;
        if received > limit {
            writer.abort().await;
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is larger than this URL allows\n",
            );
        }
        if !charge.fits(chunk.len() as u64, true) {
            writer.abort().await;
            return too_much_at_once();
        }
        if let Err(error) = writer.write(chunk).await {
            tracing::error!(%error, "presigned upload failed");
            writer.abort().await;
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
        arrived = incoming.next().await;
    }
    if matches!(size, WriteSize::Exact(n) if n != received) {
        writer.abort().await;
        return plain(
            StatusCode::BAD_REQUEST,
            "the body's length is not the one this URL was made for\n",
        );
    }
    // The ledger counted every byte as it came, so the part fits beside
    // the others.
    if let Err(error) = writer.finish().await {
        tracing::error!(%error, "presigned upload failed");
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
    }
    charge.finished();
    if let Err(refusal) = owner_if_open(sessions.as_ref(), &id).await {
        if let Err(error) = store.delete(&key).await {
            tracing::error!(%error, key = key.as_str(), "could not remove a part sent to a closed upload session; the repair pass removes it");
        }
        return refusal;
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::domain::signing::SigningKey;
    use crate::storage::embedded::{self, urls::SignedUrls};

    /// A session open for its first `open_for` questions, closed after:
    /// `0` never open, `1` closed while the part's body arrives.
    struct ClosingSession {
        open_for: usize,
        asked: AtomicUsize,
    }

    /// Every image is public: these tests send parts, not downloads.
    struct AllPublic;

    #[async_trait::async_trait]
    impl PublicImages for AllPublic {
        async fn is_public(&self, _id: &ImageId) -> Result<bool, StorageError> {
            Ok(true)
        }
    }

    #[async_trait::async_trait]
    impl OpenSessions for ClosingSession {
        async fn open_owner(&self, _upload: &UploadId) -> Result<Option<UserId>, StorageError> {
            let open = self.asked.fetch_add(1, Ordering::SeqCst) < self.open_for;
            Ok(open.then(|| UserId::parse("alice").expect("a user id")))
        }
    }

    /// PUTs a part to a listener whose session answers like `open_for`;
    /// returns the status and whether the part is kept.
    async fn put_part(open_for: usize) -> (StatusCode, bool) {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (store, _metadata) = embedded::open(
            dir.path(),
            Some(SignedUrls::new(SigningKey::generate(), base)),
        )
        .unwrap();
        let store = Arc::new(store);
        let sessions = Arc::new(ClosingSession {
            open_for,
            asked: AtomicUsize::new(0),
        });
        let server = tokio::spawn(
            axum::serve(
                listener,
                routes(
                    store.clone(),
                    Arc::new(AllPublic),
                    sessions,
                    PartUploadCaps {
                        at_once: 0,
                        per_user: 0,
                    },
                    DownloadCaps {
                        at_once: 0,
                        per_peer: 0,
                    },
                    // Part uploads read nothing ahead.
                    Arc::new(|_| Box::pin(async { None })),
                ),
            )
            .into_future(),
        );
        let key = ObjectKey::staged(&UploadId::new(), "part-00000");
        let body = vec![7u8; 100_000];
        let url = store
            .presign_write(&key, Duration::from_secs(60), WriteSize::Exact(100_000))
            .await
            .unwrap()
            .url;
        let status = reqwest::Client::new()
            .put(&url)
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        server.abort();
        let kept = store.object_size(&key).await.unwrap().is_some();
        (StatusCode::from_u16(status.as_u16()).unwrap(), kept)
    }

    #[tokio::test]
    async fn a_part_for_an_open_session_is_kept() {
        assert_eq!(put_part(usize::MAX).await, (StatusCode::OK, true));
    }

    #[tokio::test]
    async fn a_part_for_a_closed_session_is_refused_and_not_written() {
        assert_eq!(put_part(0).await, (StatusCode::GONE, false));
    }

    #[tokio::test]
    async fn a_part_whose_session_closes_while_it_arrives_is_removed() {
        assert_eq!(put_part(1).await, (StatusCode::GONE, false));
    }
}
