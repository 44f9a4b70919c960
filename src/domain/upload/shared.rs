//! What the modules of the upload pipeline share: the handle that receives
//! uploads, an upload's slot, and the memory an upload holds besides its
//! bytes; the queue of encodings made after the acknowledgement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::admission::Admissions;
use crate::domain::block::BlockHook;
use crate::domain::budget::{MemoryBudget, UserUploads};
use crate::domain::limits::Limits;
use crate::domain::ports::{BlobStore, MetadataStore};
use crate::domain::quota::Quotas;
use crate::domain::scan::ScanHook;
use crate::domain::session::UploadId;
use crate::domain::{ImageId, UserId};
use crate::media::variants::Renderer;

/// Receives uploads and stores them: the upload slots, the memory budget
/// and the renderer they share.
#[derive(Clone)]
pub struct Uploads {
    pub(in crate::domain) blobs: Arc<dyn BlobStore>,
    pub(in crate::domain) metadata: Arc<dyn MetadataStore>,
    pub(super) limits: Limits,
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    pub(super) user_uploads: UserUploads,
    pub(super) budget: MemoryBudget,
    pub(super) admissions: Admissions,
    pub(super) renderer: Renderer,
    pub(in crate::domain) quotas: Quotas,
    /// The queue of encodings made after the acknowledgement.
    pub(super) background: Background,
    /// The content scanner every new image is sent to (`--scan-url`).
    pub(super) scan: Option<ScanHook>,
    /// The block list every new image is checked against (`--block-list`).
    pub(super) block: Option<BlockHook>,
}

/// Memory an upload holds besides its received bytes: the header the
/// inspector gathers and the structure the scrubber holds (1 MiB each at
/// most; a HEIF's `meta` box may be larger, see [`super::SCRUBBER_SHARE`]).
pub(super) const UPLOAD_OVERHEAD: u64 = 2 * 1024 * 1024;

/// Where a new image's bytes come from.
pub(super) enum Origin<'a> {
    /// An upload stream, with the caller's upload slot: held until the
    /// image is stored, even when the caller goes away during its render,
    /// so cancelling and sending again cannot stack renders past
    /// `--max-uploads-per-user`.
    Stream(UploadSlot),
    /// The upload session it finishes: the image gets the id fixed when
    /// the session started, and settles the quota reservation the session
    /// holds rather than making one. The session's caller holds its slot.
    Session(ImageId, &'a UploadId),
}

/// An upload's places among the replica's and the caller's uploads.
pub(super) struct UploadSlot {
    pub(super) _global: tokio::sync::OwnedSemaphorePermit,
    pub(super) _user: crate::domain::budget::UserUpload,
}

/// The queue of a replica's background encodings.
#[derive(Clone)]
pub(super) struct Background {
    /// One permit per image queued or being encoded; drained by taking
    /// them all.
    pub(super) queue: Arc<Semaphore>,
    pub(super) capacity: u32,
    /// Images queued of each user.
    per_user: Arc<Mutex<HashMap<UserId, usize>>>,
    max_per_user: usize,
    /// Images being encoded at once: one render slot fewer than the
    /// renderer has (at least one), so that however long other users'
    /// encodings take, an upload's render always finds a slot they do
    /// not hold.
    running: Arc<Semaphore>,
    /// The memory the queue may hold, in MiB: half the budget, so that
    /// queued pixels never leave uploads without room to be admitted.
    memory: Arc<Semaphore>,
}

/// The unit of the background's memory share.
const MIB: u64 = 1 << 20;

impl Background {
    /// A queue of `max_queued` images, `max_per_user` of one user's, with
    /// `render_slots` slots in each lane of the renderer and `budget`
    /// bytes of memory budget (half of which it may hold).
    pub(super) fn new(
        max_queued: usize,
        max_per_user: usize,
        render_slots: usize,
        budget: u64,
    ) -> Self {
        let capacity = u32::try_from(max_queued.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        let share = usize::try_from(budget / 2 / MIB)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            queue: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            per_user: Arc::default(),
            max_per_user,
            running: Arc::new(Semaphore::new(render_slots.saturating_sub(1).max(1))),
            memory: Arc::new(Semaphore::new(share)),
        }
    }

    /// A place in the queue for `user`'s image, or `None` when the queue
    /// or the user's part of it is full.
    pub(super) fn enter(&self, user: &UserId) -> Option<Queued> {
        let permit = self.queue.clone().try_acquire_owned().ok()?;
        let mut queued = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let count = queued.entry(user.clone()).or_insert(0);
        if *count >= self.max_per_user {
            return None;
        }
        *count += 1;
        Some(Queued {
            per_user: self.per_user.clone(),
            user: user.clone(),
            _permit: permit,
        })
    }

    /// `bytes` of the queue's memory share, or `None` when what is queued
    /// already holds too much of it.
    pub(super) fn hold(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let mib = u32::try_from(bytes.div_ceil(MIB).max(1)).ok()?;
        self.memory.clone().try_acquire_many_owned(mib).ok()
    }

    /// Waits for one of the encoding places beside the uploads' renders.
    pub(super) async fn run(&self) -> OwnedSemaphorePermit {
        self.running
            .clone()
            .acquire_owned()
            .await
            .expect("the background semaphore is never closed")
    }
}

/// A place in the queue, given back when the image's work ends.
pub(super) struct Queued {
    per_user: Arc<Mutex<HashMap<UserId, usize>>>,
    user: UserId,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Queued {
    fn drop(&mut self) {
        let mut queued = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = queued.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                queued.remove(&self.user);
            }
        }
    }
}
