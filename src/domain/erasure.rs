//! The erasure of a user's data (`DeleteUserData`): every image (its
//! record, original, variants and encodings), every upload session with
//! its staged parts, the usage counters, and the images in the user's
//! earlier events.
//!
//! The journal is the user's usage item: one conditional update marks the
//! erasure there ([`ErasureRecord`], running), and from that update on
//! every reservation of an upload is refused on every replica (the
//! reservation is conditional on the mark: [`UsageRecord::apply`]). The
//! work runs in the background on the replica that took the request. A
//! replica holds at most `--max-queued-erasures` in memory (running, or
//! waiting); past it an erasure is marked all the same and left in the
//! store, and the replica looks for such erasures again once half of its
//! room has freed. Only the rounds of work take one of the
//! `--max-running-erasures` slots: the waits between them (for uploads
//! that reserved before the mark, for the owner index to settle) hold
//! none. Should the replica stop, the mark stays: a new `DeleteUserData`,
//! or any replica's periodic pass, resumes it; each step is idempotent, so
//! work done twice changes nothing.
//!
//! The steps, repeated until one round finds nothing: remove the upload
//! sessions, delete the images (each with its `Deleted` event naming its
//! objects, what a CDN purger needs, giving its usage back; bytes before
//! the record, so that a stop between the two leaves a record the resumed
//! erasure finds, not bytes nothing names), and wait for the uploads that reserved
//! before the mark to end (each either stores an image, deleted by the
//! next round, or stores nothing). Then the user's events lose their
//! `image`, and the mark becomes the audit entry: who asked, when, when it
//! finished, how many images and sessions went; no title, tag or filename.
//!
//! [`UsageRecord::apply`]: super::usage::UsageRecord::apply
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::Instrument as _;

use super::image::{ImageRecord, Timestamp};
use super::listing::ListFilter;
use super::ports::{BlobStore, MetadataStore, ObjectKey, StorageError};
use super::quota::Quotas;
use super::usage::ErasureRecord;
use super::{DomainError, Images, UserId};
use crate::telemetry::error_chain;

/// Images read per round of the listing an erasure deletes from.
const ERASURE_PAGE: usize = 100;
/// Images deleted at once by one erasure: enough to hide the stores'
/// round trips (each delete is a few of them), few enough to leave the
/// stores to the callers.
const ERASURE_DELETES_IN_FLIGHT: usize = 8;
/// How often an erasure looks again at the uploads that reserved before
/// its mark, while it waits for them to end.
const RESERVATION_POLL: Duration = Duration::from_millis(200);
/// How long an erasure that found nothing left, while the usage counters
/// still count something, waits before its last look: longer than
/// DynamoDB's index lag.
const INDEX_SETTLE: Duration = Duration::from_secs(1);
/// Attempts of a conditional update of the mark that keeps losing to
/// concurrent changes of the usage item (deletes giving usage back).
const MARK_ATTEMPTS: usize = 20;

/// An erasure as a caller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasureStatus {
    pub user: UserId,
    pub record: ErasureRecord,
    /// Images the user still holds (an estimate: the usage counter, which
    /// includes uploads in progress).
    pub images_left: u64,
}

/// What asking for an erasure to run here came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Started {
    /// It runs here now.
    Now,
    /// It ran here already.
    Already,
    /// This replica holds as many as it may: it stays marked in the store
    /// and is looked for once room frees.
    LeftInStore,
}

/// The erasure use cases, with the erasures this replica runs.
#[derive(Clone)]
pub struct Erasures {
    images: Images,
    slots: Arc<Semaphore>,
    /// Users whose erasure this replica holds, running or waiting: a
    /// second request for one of them does not start it twice. At most
    /// `--max-queued-erasures`.
    held: Arc<Mutex<HashSet<UserId>>>,
    /// Set when an erasure was left in the store for want of room: the
    /// store is looked at again once room has freed.
    left_in_store: Arc<AtomicBool>,
    /// A look at the store for unfinished erasures is under way.
    looking: Arc<AtomicBool>,
}

/// What one round of an erasure found.
enum Round {
    /// The mark is no longer running (finished by another replica).
    Over,
    /// Sessions or images were removed: look again.
    Removed,
    /// Nothing found, and uploads that reserved before the mark still run.
    Reserved,
    /// Nothing found, and the usage counters (read before the listing)
    /// count nothing: nothing is left, nor can anything come.
    Clean,
    /// Nothing found, though the counters still count something: the
    /// owner index may lag.
    Unsettled,
}

impl Erasures {
    /// At most `--max-running-erasures` run at once on this replica, and
    /// `--max-queued-erasures` are held.
    pub fn new(images: Images) -> Self {
        let slots = images.limits.max_running_erasures.max(1);
        Self {
            images,
            slots: Arc::new(Semaphore::new(slots)),
            held: Arc::default(),
            left_in_store: Arc::default(),
            looking: Arc::default(),
        }
    }

    fn max_held(&self) -> usize {
        self.images.limits.max_queued_erasures.max(1)
    }

    /// Erases the data of `user_id` (empty: the caller's), if `caller` is
    /// that user or an admin: marks the erasure (the same one again, if it
    /// already runs), starts it in the background (or, with no room left,
    /// leaves it marked for a later look at the store), and returns at
    /// once.
    pub async fn delete_user_data(
        &self,
        caller: &UserId,
        user_id: &str,
    ) -> Result<ErasureStatus, DomainError> {
        let user = self.authorised(caller, user_id)?;
        let metadata = &self.images.metadata;
        for _ in 0..MARK_ATTEMPTS {
            let usage = metadata.get_usage(&user).await?;
            if usage.is_being_erased() {
                break;
            }
            let record = ErasureRecord {
                requested_by: caller.clone(),
                requested: Timestamp::now(),
                finished: None,
                images_deleted: 0,
                sessions_deleted: 0,
            };
            match metadata.set_erasure(&user, &record, usage.revision).await {
                Ok(()) => {
                    tracing::info!(%user, requested_by = %caller, "user data erasure requested");
                    metrics::counter!("imageservice_erasures_started_total").increment(1);
                    break;
                }
                Err(StorageError::ConditionFailed) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        let status = self.status(&user).await?;
        if status.record.is_running() && self.start(user.clone()) == Started::LeftInStore {
            tracing::info!(%user, "a user data erasure is left in the store until this replica has room (--max-queued-erasures)");
        }
        Ok(status)
    }

    /// The latest erasure of `user_id` (empty: the caller's), as `caller`
    /// may see it: their own, or anyone's for an admin. NOT_FOUND when
    /// none was requested.
    pub async fn user_data_deletion(
        &self,
        caller: &UserId,
        user_id: &str,
    ) -> Result<ErasureStatus, DomainError> {
        let user = self.authorised(caller, user_id)?;
        self.status(&user).await
    }

    /// Starts every erasure marked in the store that does not run on this
    /// replica (its replica stopped, or it runs elsewhere: the work is
    /// idempotent), as many as there is room for; returns how many.
    pub async fn resume_unfinished(&self) -> Result<usize, DomainError> {
        // Cleared first: an erasure left while this look runs sets it again.
        self.left_in_store.store(false, Ordering::SeqCst);
        let (mut resumed, mut left) = (0, 0);
        for (user, usage) in self.images.metadata.list_usage().await? {
            if usage.is_being_erased() {
                match self.start(user) {
                    Started::Now => resumed += 1,
                    Started::LeftInStore => left += 1,
                    Started::Already => {}
                }
            }
        }
        if left > 0 {
            // One line per look, not one per erasure: a look comes every
            // time room frees.
            tracing::debug!(resumed, left, "user data erasures still left in the store");
        }
        Ok(resumed)
    }

    /// Resumes unfinished erasures every `interval` (with the repair pass).
    pub async fn resume_periodically(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.resume_unfinished().await {
                Ok(0) => {}
                Ok(resumed) => tracing::info!(resumed, "unfinished user data erasures resumed"),
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "could not look for unfinished erasures; will retry")
                }
            }
        }
    }

    fn authorised(&self, caller: &UserId, user_id: &str) -> Result<UserId, DomainError> {
        let user = if user_id.is_empty() {
            caller.clone()
        } else {
            UserId::parse(user_id)?
        };
        if user != *caller && !self.images.quotas().is_admin(caller) {
            return Err(DomainError::PermissionDenied(
                "only the user themselves or an admin (--admins) may erase or read the \
                 erasure of a user's data"
                    .into(),
            ));
        }
        Ok(user)
    }

    async fn status(&self, user: &UserId) -> Result<ErasureStatus, DomainError> {
        let usage = self.images.metadata.get_usage(user).await?;
        let record = usage.erasure.ok_or_else(|| {
            DomainError::NotFound("no erasure of this user's data was requested".into())
        })?;
        Ok(ErasureStatus {
            user: user.clone(),
            images_left: if record.is_running() {
                usage.held_images
            } else {
                0
            },
            record,
        })
    }

    /// Runs the erasure of `user` in the background unless it runs here
    /// already or this replica holds as many as it may.
    fn start(&self, user: UserId) -> Started {
        {
            let mut held = self.lock_held();
            if held.contains(&user) {
                return Started::Already;
            }
            if held.len() >= self.max_held() {
                // Marked all the same: looked for again once room frees.
                self.left_in_store.store(true, Ordering::SeqCst);
                metrics::counter!("imageservice_erasures_left_in_store_total").increment(1);
                return Started::LeftInStore;
            }
            held.insert(user.clone());
            metrics::gauge!("imageservice_erasures_held").set(held.len() as f64);
        }
        let erasures = self.clone();
        tokio::spawn(
            async move {
                let result = erasures.run(&user).await;
                erasures.release(&user);
                if let Err(error) = result {
                    tracing::warn!(%user, error = %error_chain(&error), "a user data erasure stopped; it stays marked and is resumed");
                }
            }
            .in_current_span(),
        );
        Started::Now
    }

    /// Forgets the erasure of `user`, and looks for those left in the
    /// store if there is room now.
    fn release(&self, user: &UserId) {
        {
            let mut held = self.lock_held();
            held.remove(user);
            metrics::gauge!("imageservice_erasures_held").set(held.len() as f64);
        }
        self.look_if_room();
    }

    /// Once half the room is free, looks (one look at a time) for the
    /// erasures that were left in the store for want of it.
    fn look_if_room(&self) {
        if !self.should_look() || self.looking.swap(true, Ordering::SeqCst) {
            return;
        }
        let erasures = self.clone();
        tokio::spawn(
            async move {
                loop {
                    match erasures.resume_unfinished().await {
                        Ok(resumed) => {
                            tracing::info!(resumed, "user data erasures left in the store resumed")
                        }
                        Err(error) => {
                            // The next release, or the periodic pass, looks
                            // again.
                            erasures.left_in_store.store(true, Ordering::SeqCst);
                            erasures.looking.store(false, Ordering::SeqCst);
                            tracing::warn!(error = %error_chain(&error), "could not look for the erasures left in the store; will retry");
                            return;
                        }
                    }
                    erasures.looking.store(false, Ordering::SeqCst);
                    // Erasures left, and room freed, while it looked: the
                    // releases that saw it looking did not look again.
                    if !erasures.should_look() || erasures.looking.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
            }
            .instrument(tracing::info_span!(parent: None, "erasures_left_in_store")),
        );
    }

    fn should_look(&self) -> bool {
        self.left_in_store.load(Ordering::SeqCst) && self.lock_held().len() <= self.max_held() / 2
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One of the `--max-running-erasures` slots, for a round of work.
    async fn slot(&self) -> Result<SemaphorePermit<'_>, DomainError> {
        self.slots
            .acquire()
            .await
            .map_err(|e| DomainError::Internal(Box::new(e)))
    }

    /// Rounds of work, each in a slot, until one finds nothing; the waits
    /// between them hold no slot.
    async fn run(&self, user: &UserId) -> Result<(), DomainError> {
        let started = std::time::Instant::now();
        let mut settled = false;
        loop {
            let round = {
                let _slot = self.slot().await?;
                self.round(user).await?
            };
            match round {
                Round::Over => return Ok(()),
                Round::Removed => settled = false,
                Round::Reserved => {
                    self.wait_for_reservations(user).await?;
                    settled = false;
                }
                Round::Clean => break,
                Round::Unsettled if settled => break,
                Round::Unsettled => {
                    // One more round after the owner index has settled
                    // (DynamoDB's indexes are eventually consistent,
                    // within a second).
                    settled = true;
                    tokio::time::sleep(INDEX_SETTLE).await;
                }
            }
        }
        let _slot = self.slot().await?;
        let redacted = self.images.metadata.redact_events(user).await?;
        let record = self
            .update_mark(user, |record| record.finished = Some(Timestamp::now()))
            .await?;
        if let Some(record) = record {
            metrics::counter!("imageservice_erasures_finished_total").increment(1);
            tracing::info!(
                %user,
                images_deleted = record.images_deleted,
                sessions_deleted = record.sessions_deleted,
                events_redacted = redacted,
                took = ?started.elapsed(),
                "user data erased"
            );
        }
        Ok(())
    }

    /// Removes the sessions and images of `user` that the stores show.
    async fn round(&self, user: &UserId) -> Result<Round, DomainError> {
        // Uploads that reserved before the mark may still store an image:
        // the usage is read before the listing, so that an upload seen
        // ended had stored its image before the listing began.
        let usage = self.images.metadata.get_usage(user).await?;
        if !usage.is_being_erased() {
            return Ok(Round::Over);
        }
        let live = self.live_reservations(&usage);
        let sessions = self.remove_sessions(user).await?;
        let images = self.delete_images(user).await?;
        Ok(if sessions + images > 0 {
            Round::Removed
        } else if live {
            Round::Reserved
        } else if usage.held_images == 0 && usage.reservations.is_empty() {
            // A stored image is counted before its record is written and
            // until after it is deleted, and nothing new may reserve: no
            // image is left that the index has yet to show.
            Round::Clean
        } else {
            Round::Unsettled
        })
    }

    /// Whether an upload that reserved before the mark may still store an
    /// image. One that took longer than an upload may (its replica died)
    /// is the repair pass's to drop.
    fn live_reservations(&self, usage: &super::usage::UsageRecord) -> bool {
        let longest = self.images.limits.pace.deadline;
        let now = Timestamp::now();
        usage
            .reservations
            .iter()
            .any(|r| r.started.saturating_add(longest) > now)
    }

    /// Waits, holding no slot, until the uploads that reserved before the
    /// mark have ended or run past `--upload-deadline` (or the erasure
    /// was finished elsewhere).
    async fn wait_for_reservations(&self, user: &UserId) -> Result<(), DomainError> {
        loop {
            tokio::time::sleep(RESERVATION_POLL).await;
            let usage = self.images.metadata.get_usage(user).await?;
            if !usage.is_being_erased() || !self.live_reservations(&usage) {
                return Ok(());
            }
        }
    }

    /// Removes every upload session of `user` with its staged parts;
    /// returns how many there were.
    async fn remove_sessions(&self, user: &UserId) -> Result<u64, DomainError> {
        let sessions = self.images.metadata.upload_sessions_of(user).await?;
        for session in &sessions {
            self.images.uploads.remove_session(session).await?;
        }
        let removed = sessions.len() as u64;
        if removed > 0 {
            self.update_mark(user, |record| record.sessions_deleted += removed)
                .await?;
        }
        Ok(removed)
    }

    /// Deletes every image of `user` a listing finds; returns how many.
    async fn delete_images(&self, user: &UserId) -> Result<u64, DomainError> {
        let filter = ListFilter {
            owner: Some(user.clone()),
            ..ListFilter::default()
        };
        let mut total = 0;
        loop {
            // Always the first page: what was deleted is gone from it.
            let page = self
                .images
                .metadata
                .list(&filter, None, ERASURE_PAGE)
                .await?;
            if page.records.is_empty() {
                return Ok(total);
            }
            let results: Vec<Result<bool, DomainError>> = futures::stream::iter(page.records)
                .map(|record| self.erase_image(user, record))
                .buffer_unordered(ERASURE_DELETES_IN_FLIGHT)
                .collect()
                .await;
            let mut deleted = 0;
            for result in results {
                if result? {
                    deleted += 1;
                }
            }
            if deleted > 0 {
                self.update_mark(user, |record| record.images_deleted += deleted)
                    .await?;
            }
            total += deleted;
        }
    }

    /// Deletes one image of `user` as listed ([`erase_image`]).
    async fn erase_image(&self, user: &UserId, listed: ImageRecord) -> Result<bool, DomainError> {
        let uploads = &self.images.uploads;
        erase_image(
            &uploads.blobs,
            &uploads.metadata,
            &uploads.quotas,
            user,
            listed,
        )
        .await
    }

    /// Changes the running mark of `user` by `change`, conditional on the
    /// usage item not changing meanwhile; `None` if there is no running
    /// mark (finished by another replica).
    async fn update_mark(
        &self,
        user: &UserId,
        change: impl Fn(&mut ErasureRecord),
    ) -> Result<Option<ErasureRecord>, DomainError> {
        let metadata = &self.images.metadata;
        for _ in 0..MARK_ATTEMPTS {
            let usage = metadata.get_usage(user).await?;
            let Some(mut record) = usage.erasure.filter(ErasureRecord::is_running) else {
                return Ok(None);
            };
            change(&mut record);
            match metadata.set_erasure(user, &record, usage.revision).await {
                Ok(()) => return Ok(Some(record)),
                Err(StorageError::ConditionFailed) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(DomainError::Aborted(
            "the usage item of the user kept changing while the erasure recorded its progress"
                .into(),
        ))
    }
}

/// Deletes one image of `owner` as listed, for an erasure: its bytes
/// first, then its record (with its `Deleted` event naming the objects,
/// for a CDN purger), giving its usage back, then any object the record
/// gained meanwhile (an encoding made in the background); `false` if the
/// record was gone already (deleted by the user or another replica).
///
/// Bytes first, unlike `DeleteImage`'s order: a replica that stops
/// between the two leaves a record whose bytes are gone, which the
/// resumed erasure lists and deletes; the other order would leave bytes
/// that no record names, which nothing erases until the repair pass's
/// `--repair-grace`. Other callers see the image vanish a moment before
/// its record does (a read of its bytes is NOT_FOUND). A failed delete
/// stops the round: the erasure stays running and is resumed.
pub(super) async fn erase_image(
    blobs: &Arc<dyn BlobStore>,
    metadata: &Arc<dyn MetadataStore>,
    quotas: &Quotas,
    owner: &UserId,
    listed: ImageRecord,
) -> Result<bool, DomainError> {
    let id = listed.id;
    let listed_objects = listed.objects();
    for (object, _) in &listed_objects {
        blobs.delete(&ObjectKey::of(&id, object)).await?;
    }
    let deleted = match metadata.delete(&id, owner).await {
        Ok(record) => record,
        Err(StorageError::NotFound) => return Ok(false),
        Err(error) => return Err(error.into()),
    };
    quotas.give_back(&deleted).await;
    for (object, _) in deleted.objects() {
        if !listed_objects.iter().any(|(seen, _)| *seen == object) {
            blobs.delete(&ObjectKey::of(&id, &object)).await?;
        }
    }
    Ok(true)
}
