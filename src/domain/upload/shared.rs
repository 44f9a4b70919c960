//! What the modules of the upload pipeline share: the handle that receives
//! uploads, an upload's slot, and the memory an upload holds besides its
//! bytes.

use std::sync::Arc;

use crate::domain::admission::Admissions;
use crate::domain::budget::{MemoryBudget, UserUploads};
use crate::domain::limits::Limits;
use crate::domain::ports::{BlobStore, MetadataStore};
use crate::domain::quota::Quotas;
use crate::media::variants::Renderer;

/// Receives uploads and stores them: the upload slots, the memory budget
/// and the renderer they share.
#[derive(Clone)]
pub struct Uploads {
    pub(super) blobs: Arc<dyn BlobStore>,
    pub(super) metadata: Arc<dyn MetadataStore>,
    pub(super) limits: Limits,
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    pub(super) user_uploads: UserUploads,
    pub(super) budget: MemoryBudget,
    pub(super) admissions: Admissions,
    pub(super) renderer: Renderer,
    pub(in crate::domain) quotas: Quotas,
}

/// Memory an upload holds besides its received bytes: the header the
/// inspector gathers and the structure the scrubber holds (1 MiB each at
/// most; a HEIF's `meta` box may be larger, see [`super::SCRUBBER_SHARE`]).
pub(super) const UPLOAD_OVERHEAD: u64 = 2 * 1024 * 1024;

/// An upload's places among the replica's and the caller's uploads.
pub(super) struct UploadSlot {
    pub(super) _global: tokio::sync::OwnedSemaphorePermit,
    pub(super) _user: crate::domain::budget::UserUpload,
}
