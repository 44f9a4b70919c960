//! The limits the server enforces, as the use cases receive them: each one
//! set by a flag (see the limits table of the README).
use std::sync::Arc;
use std::time::Duration;

use super::image::Encoding;
use super::ports::SessionQuota;
use super::quota::QuotaLimits;
use crate::media::content::ContentLimits;
use crate::media::variants::{RenderLimits, VariantSize};

/// Limits the server enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub content: ContentLimits,
    /// Longest validity of a download URL a caller may ask for.
    pub max_url_expiry: Duration,
    /// Download URLs are signed from the start of a window this long, so
    /// that one URL serves the whole window (zero: signed from now).
    pub url_window: Duration,
    /// Uploads received at once; more are refused with RESOURCE_EXHAUSTED
    /// (memory per upload is bounded, so this bounds the process's).
    pub max_concurrent_uploads: usize,
    /// How long an upload waits for a slot when every one is busy.
    pub upload_slot_wait: Duration,
    /// Uploads one user may have in progress at once.
    pub max_uploads_per_user: usize,
    /// How fast an upload must move.
    pub pace: PaceLimits,
    /// Bytes of memory uploads, downloads and renders may hold together.
    pub memory_budget: u64,
    /// How long work waits for memory before it is refused.
    pub memory_wait: Duration,
    /// Bytes of the budget one user's downloads, uploads and unread
    /// responses may hold at once.
    pub max_memory_per_user: u64,
    /// Largest `ListImages` response, in encoded bytes: a page is cut short
    /// (with a token for the rest) rather than grow past it.
    pub max_page_bytes: usize,
    /// Band index entries one search for similar images reads, an even
    /// share of it in each of the 32 buckets of its hash
    /// (`--max-similar-candidates`, see [`super::similar::band_share`]).
    pub max_similar_candidates: usize,
    /// Store JPEG, PNG and WebP originals with their identifying metadata.
    pub keep_metadata: bool,
    /// Make variants and placeholders.
    pub variants: bool,
    /// Bounds on making variants.
    pub render: RenderLimits,
    /// The variants made (`--variant`), smallest first.
    pub variant_sizes: Arc<[VariantSize]>,
    /// Bounds on upload sessions.
    pub sessions: SessionLimits,
    /// What one user may hold (`--quota-bytes-per-user`,
    /// `--quota-images-per-user`), unless an admin set their own.
    pub quota: QuotaLimits,
    /// The encodings made after the acknowledgement, and their queue.
    pub encodings: EncodingLimits,
    /// User data erasures one replica runs at once
    /// (`--max-running-erasures`).
    pub max_running_erasures: usize,
    /// User data erasures one replica holds in memory, running or waiting
    /// (`--max-queued-erasures`); more are left marked in the store.
    pub max_queued_erasures: usize,
}

/// The encodings each variant is kept in besides the one made before the
/// upload is acknowledged, and the bounds on the background work that
/// makes them.
#[derive(Clone, Debug)]
pub struct EncodingLimits {
    /// Made in the background (`--variant-formats` without `jpeg`, which
    /// is made before the acknowledgement).
    pub background: Vec<Encoding>,
    /// Images whose encodings wait or are being made at once on this
    /// replica (`--max-queued-encodings`); past it, the work is left to
    /// the repair pass.
    pub max_queued: usize,
    /// Of those, one user's (`--max-queued-encodings-per-user`).
    pub max_queued_per_user: usize,
}

impl Default for EncodingLimits {
    /// Nothing made in the background.
    fn default() -> Self {
        Self {
            background: Vec::new(),
            max_queued: 0,
            max_queued_per_user: 0,
        }
    }
}

/// How fast an upload must move, so that a slow or idle caller cannot hold
/// an upload slot and its buffers.
#[derive(Clone, Copy, Debug)]
pub struct PaceLimits {
    /// Longest time without a new image byte: messages without bytes
    /// (empty chunks, heartbeats) do not count as progress.
    pub idle_timeout: Duration,
    /// Longest time from the first message to `finish_write`.
    pub deadline: Duration,
    /// Messages every upload may send whatever their size.
    pub free_messages: u64,
    /// Past those, one more message is allowed per this many bytes
    /// received: the cost of an upload follows its bytes, not how finely
    /// it was cut (each message costs a decode, a wake-up and a check).
    pub bytes_per_message: u64,
}

/// Bounds on upload sessions.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// How long a session lives unless committed (`--upload-session-ttl`).
    pub ttl: Duration,
    /// The unit streamed bytes are stored in, and the most of them a stream
    /// holds in memory (`--upload-session-segment-size`).
    pub segment_bytes: u64,
    /// Most parts a direct upload may be cut into (`--max-upload-parts`).
    pub max_parts: u32,
    /// How long part URLs live, by default and at most
    /// (`--upload-url-expiry`): on a store that cannot revoke them, how
    /// long a closed session still counts against its owner's caps.
    pub url_expiry: Duration,
    /// What one user's open sessions may hold
    /// (`--max-open-sessions-per-user`, `--max-staged-bytes-per-user`).
    pub per_user: SessionQuota,
}
