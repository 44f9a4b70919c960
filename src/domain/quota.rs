//! Per-user usage and quotas, held across replicas by the metadata store's
//! usage item (see [`super::usage`]).
//!
//! An upload reserves at its start what it may store: its declared size
//! (or `--max-image-bytes` when it declares none) and one image, by a
//! conditional update that refuses to take the user past the quota, so
//! uploads running at once on any number of replicas never pass it. At its
//! commit the reservation is settled to what was stored (the original and
//! every variant); on any failure, a cancel or an expiry it is released
//! ([`QuotaHold`] releases unless settled). Deletes give the bytes and the
//! image back. What a crash leaves between a reservation and its end is
//! corrected by the repair pass ([`super::repair`]).
//!
//! An upload session reserves the same way when it starts, under an id
//! made from the session's ([`session_reservation_id`]), and holds it while
//! it lives: its commit settles it, its cancel or expiry (or its removal
//! for bad content) releases it, on whichever replica that happens, and
//! the repair pass drops it once the session is gone or closed.
//!
//! The variants are made after the reservation, so the settlement may add
//! bytes (a small compressible original's variants are many times its
//! size). It is made before the record is stored, by a conditional update
//! that holds it to the quota like a reservation ([`QuotaHold::settle`]):
//! an upload whose variants would take the user past the quota is refused
//! and its writes undone. What a settlement added is given back if the
//! record is then not stored ([`Settled::undo`]). The encodings made after
//! the acknowledgement are added the same way ([`Quotas::add_bytes`]): one
//! that does not fit is not kept.
use std::collections::HashSet;
use std::sync::Arc;

use super::error::QuotaViolation;
use super::image::{ImageRecord, Timestamp};
use super::ports::{MetadataStore, StorageError};
use super::session::UploadId;
use super::usage::{QuotaOverride, UsageCeiling, UsageChange, UsageRecord, UsageReservation};
use super::{DomainError, UserId};

/// The default quotas (`--quota-bytes-per-user`, `--quota-images-per-user`):
/// 0 means none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    pub max_bytes: u64,
    pub max_images: u64,
}

/// A user's usage with the quotas that apply to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserUsage {
    pub user: UserId,
    pub usage: UsageRecord,
    /// The quotas that apply (the user's override, else the defaults);
    /// 0 means none.
    pub limits: QuotaLimits,
}

/// How often a reservation is tried again when its conditional update lost
/// to a concurrent change that left room (a release, a new quota).
const RESERVE_ATTEMPTS: usize = 4;

/// The quota use cases over the metadata store's usage items.
#[derive(Clone)]
pub struct Quotas {
    metadata: Arc<dyn MetadataStore>,
    defaults: QuotaLimits,
    /// Who may read anyone's usage and set quotas (`--admins`).
    admins: Arc<HashSet<UserId>>,
}

impl Quotas {
    pub fn new(metadata: Arc<dyn MetadataStore>, defaults: QuotaLimits) -> Self {
        Self {
            metadata,
            defaults,
            admins: Arc::default(),
        }
    }

    /// The same, with `admins` as the users who may act on anyone's quota.
    pub fn with_admins(self, admins: impl IntoIterator<Item = UserId>) -> Self {
        Self {
            admins: Arc::new(admins.into_iter().collect()),
            ..self
        }
    }

    /// The usage of `user_id` (empty: the caller's) as `caller` may see
    /// it: their own, or anyone's for an admin.
    pub async fn usage_as(&self, caller: &UserId, user_id: &str) -> Result<UserUsage, DomainError> {
        let user = if user_id.is_empty() {
            caller.clone()
        } else {
            UserId::parse(user_id)?
        };
        if user != *caller && !self.admins.contains(caller) {
            return Err(DomainError::PermissionDenied(
                "only admins (--admins) may read another user's usage".into(),
            ));
        }
        self.usage(&user).await
    }

    /// Sets the quotas of `user_id`, if `caller` is an admin.
    pub async fn set_quota_as(
        &self,
        caller: &UserId,
        user_id: &str,
        quota: QuotaOverride,
    ) -> Result<UserUsage, DomainError> {
        if !self.admins.contains(caller) {
            return Err(DomainError::PermissionDenied(
                "only admins (--admins) may set quotas".into(),
            ));
        }
        if user_id.is_empty() {
            return Err(DomainError::invalid("user_id is required"));
        }
        let user = UserId::parse(user_id)?;
        tracing::info!(%user, ?quota, "user quota set");
        self.set_quota(&user, quota).await
    }

    /// Whether `user` may act on anyone's usage and data (`--admins`).
    pub fn is_admin(&self, user: &UserId) -> bool {
        self.admins.contains(user)
    }

    /// The quotas that apply to a user with the override `quota`.
    pub fn limits(&self, quota: QuotaOverride) -> QuotaLimits {
        QuotaLimits {
            max_bytes: quota.max_bytes.unwrap_or(self.defaults.max_bytes),
            max_images: quota.max_images.unwrap_or(self.defaults.max_images),
        }
    }

    /// The user's usage and the quotas that apply.
    pub async fn usage(&self, user: &UserId) -> Result<UserUsage, DomainError> {
        let usage = self.metadata.get_usage(user).await?;
        Ok(UserUsage {
            user: user.clone(),
            limits: self.limits(usage.quota),
            usage,
        })
    }

    /// Sets the user's own quotas (`None`: the default applies again).
    pub async fn set_quota(
        &self,
        user: &UserId,
        quota: QuotaOverride,
    ) -> Result<UserUsage, DomainError> {
        self.metadata.set_user_quota(user, quota).await?;
        self.usage(user).await
    }

    /// Reserves `bytes` and one image for an upload of `user`; refused with
    /// [`DomainError::QuotaExceeded`] when it would take the user past a
    /// quota.
    pub async fn reserve(&self, user: &UserId, bytes: u64) -> Result<QuotaHold, DomainError> {
        self.reserve_as(user, uuid::Uuid::new_v4().to_string(), bytes)
            .await
    }

    /// Reserves `bytes` and one image for the upload session `upload`
    /// of `user`, held until [`Quotas::end_session`]; refused like
    /// [`Quotas::reserve`].
    pub async fn reserve_for_session(
        &self,
        user: &UserId,
        upload: &UploadId,
        bytes: u64,
    ) -> Result<(), DomainError> {
        let mut hold = self
            .reserve_as(user, session_reservation_id(upload), bytes)
            .await?;
        // Kept past this call: the session ends it.
        hold.reservation = None;
        Ok(())
    }

    /// The hold of a session's reservation for the upload that finishes
    /// the session: settled by its commit, and left to the session
    /// otherwise (a failed finish may be tried again).
    pub fn session_hold(&self, user: &UserId, upload: &UploadId) -> QuotaHold {
        QuotaHold {
            quotas: self.clone(),
            user: user.clone(),
            reservation: None,
            session: Some(session_reservation_id(upload)),
        }
    }

    /// A hold of nothing, for an upload that stores nothing new (a retry
    /// of one already stored): its settlement, should it come to one,
    /// counts the image held to the quota.
    pub fn nothing_reserved(&self, user: &UserId) -> QuotaHold {
        QuotaHold {
            quotas: self.clone(),
            user: user.clone(),
            reservation: None,
            session: None,
        }
    }

    /// Releases the reservation of the session `upload` of `user`, if it
    /// still holds one (cancel, expiry, removal).
    pub async fn end_session(&self, user: &UserId, upload: &UploadId) {
        self.end_by_id(user, &session_reservation_id(upload)).await;
    }

    async fn reserve_as(
        &self,
        user: &UserId,
        id: String,
        bytes: u64,
    ) -> Result<QuotaHold, DomainError> {
        let reservation = UsageReservation {
            id,
            bytes,
            images: 1,
            started: Timestamp::now(),
        };
        let change = UsageChange {
            bytes: signed(bytes),
            images: 1,
            add: Some(reservation.clone()),
            remove: None,
        };
        for _ in 0..RESERVE_ATTEMPTS {
            let usage = self.metadata.get_usage(user).await?;
            if usage.is_being_erased() {
                return Err(being_erased());
            }
            let limits = self.limits(usage.quota);
            if let Some(violation) = violation(user, &usage, limits, bytes) {
                metrics::counter!("imageservice_quota_refusals_total").increment(1);
                return Err(DomainError::QuotaExceeded(violation));
            }
            let ceiling = ceiling(limits);
            match self.metadata.change_usage(user, &change, ceiling).await {
                Ok(()) => {
                    return Ok(QuotaHold {
                        quotas: self.clone(),
                        user: user.clone(),
                        reservation: Some(reservation),
                        session: None,
                    });
                }
                // Another upload took the room between the read and the
                // update, or an erasure was marked: read again, which
                // tells which.
                Err(StorageError::ConditionFailed) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(DomainError::ResourceExhausted(
            "the usage of this user kept changing while the upload reserved its share; \
             retry with backoff"
                .into(),
        ))
    }

    /// Adds `bytes` to what the user holds, held to the byte quota: for
    /// objects stored after an upload was acknowledged (encodings made in
    /// the background). [`DomainError::QuotaExceeded`] when they do not
    /// fit; the caller does not keep them.
    pub async fn add_bytes(&self, user: &UserId, bytes: u64) -> Result<Settled, DomainError> {
        let change = UsageChange {
            bytes: signed(bytes),
            ..UsageChange::default()
        };
        self.change_within(user, change, None).await
    }

    /// Applies `change` (with `ends`, the id of the reservation it ends,
    /// if the item still holds it) unless what it adds would take the user
    /// past a quota: the reservation's `bytes`, `images` and `id` fill the
    /// change from the item as read, and a lost race reads again.
    async fn change_within(
        &self,
        user: &UserId,
        change: UsageChange,
        ends: Option<&str>,
    ) -> Result<Settled, DomainError> {
        for _ in 0..RESERVE_ATTEMPTS {
            let usage = self.metadata.get_usage(user).await?;
            let mut applied = change.clone();
            if let Some(id) = ends
                && let Some(reservation) = usage.reservations.iter().find(|r| r.id == id)
            {
                applied.bytes -= signed(reservation.bytes);
                applied.images -= signed(reservation.images);
                applied.remove = Some(reservation.clone());
            }
            let limits = self.limits(usage.quota);
            let ceiling = growth_ceiling(limits, &applied);
            if ceiling.is_some() && !usage.clone().apply(&applied, ceiling) {
                metrics::counter!("imageservice_quota_refusals_total").increment(1);
                return Err(DomainError::QuotaExceeded(growth_violation(
                    user, &usage, limits, &applied,
                )));
            }
            match self.metadata.change_usage(user, &applied, ceiling).await {
                Ok(()) => {
                    return Ok(Settled {
                        quotas: self.clone(),
                        user: user.clone(),
                        // What the change adds beyond the reservation it ended.
                        bytes: change.bytes,
                        images: change.images,
                    });
                }
                // Another change between the read and the update: read
                // again, which tells whether it still fits.
                Err(StorageError::ConditionFailed) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(DomainError::ResourceExhausted(
            "the usage of this user kept changing while the upload settled its share; \
             retry with backoff"
                .into(),
        ))
    }

    /// Gives back what a deleted image held. A failure is logged, not
    /// returned: the image is gone, and the repair pass corrects the usage.
    pub async fn give_back(&self, record: &ImageRecord) {
        let change = UsageChange {
            bytes: -signed(held_by(record)),
            images: -1,
            ..UsageChange::default()
        };
        if let Err(error) = self
            .metadata
            .change_usage(&record.owner, &change, None)
            .await
        {
            tracing::warn!(
                error = %crate::telemetry::error_chain(&error),
                user = %record.owner,
                "a deleted image's bytes were not given back; the repair pass will"
            );
        }
    }

    /// Releases the reservation named `id`, found in the usage item; when
    /// the item holds none (the repair pass dropped it, or a commit
    /// settled it), nothing changes.
    async fn end_by_id(&self, user: &UserId, id: &str) {
        let usage = match self.metadata.get_usage(user).await {
            Ok(usage) => usage,
            Err(error) => {
                tracing::warn!(
                    error = %crate::telemetry::error_chain(&error),
                    %user,
                    "an upload session's quota reservation did not end; the repair pass will end it"
                );
                return;
            }
        };
        if let Some(reservation) = usage.reservations.into_iter().find(|r| r.id == id) {
            self.end(user, reservation).await;
        }
    }

    /// Gives back the bytes of an image whose objects moderation removed:
    /// its record stays, counted as an image holding no bytes (as the
    /// repair pass counts it). A failure is logged, as for
    /// [`Quotas::give_back`].
    pub async fn give_back_bytes(&self, owner: &UserId, bytes: u64) {
        let change = UsageChange {
            bytes: -signed(bytes),
            ..UsageChange::default()
        };
        if let Err(error) = self.metadata.change_usage(owner, &change, None).await {
            tracing::warn!(
                error = %crate::telemetry::error_chain(&error),
                user = %owner,
                "a removed image's bytes were not given back; the repair pass will"
            );
        }
    }

    /// Releases `reservation`: the upload stored nothing.
    async fn end(&self, user: &UserId, reservation: UsageReservation) {
        let change = UsageChange {
            bytes: -signed(reservation.bytes),
            images: -signed(reservation.images),
            add: None,
            remove: Some(reservation),
        };
        match self.metadata.change_usage(user, &change, None).await {
            // The repair pass dropped it as stale.
            Ok(()) | Err(StorageError::ConditionFailed) => {}
            Err(error) => tracing::warn!(
                error = %crate::telemetry::error_chain(&error),
                %user,
                "a quota reservation did not end; the repair pass will end it"
            ),
        }
    }
}

/// The id of the reservation an upload session holds in its owner's usage
/// item.
pub fn session_reservation_id(upload: &UploadId) -> String {
    format!("{SESSION_RESERVATION_PREFIX}{upload}")
}

/// The upload session whose reservation `reservation` is, if it is one.
pub fn reserving_session(reservation: &UsageReservation) -> Option<UploadId> {
    let id = reservation.id.strip_prefix(SESSION_RESERVATION_PREFIX)?;
    UploadId::parse(id).ok()
}

/// What the ids of sessions' reservations begin with (a one-shot upload's
/// is a bare UUID).
const SESSION_RESERVATION_PREFIX: &str = "session-";

/// The refusal of an upload while the user's data is being erased.
pub fn being_erased() -> DomainError {
    DomainError::FailedPrecondition(
        "this user's data is being erased (DeleteUserData); uploads are refused until it is done"
            .into(),
    )
}

/// Every byte an image holds in the blob store: the original and each
/// stored object of its variants.
pub fn held_by(record: &ImageRecord) -> u64 {
    record.objects().iter().map(|(_, size)| size).sum()
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The ceiling a reservation's update is conditional on; `None` when no
/// quota applies.
fn ceiling(limits: QuotaLimits) -> Option<UsageCeiling> {
    let unlimited = |max: u64| if max == 0 { u64::MAX } else { max };
    (limits.max_bytes != 0 || limits.max_images != 0).then(|| UsageCeiling {
        max_bytes: unlimited(limits.max_bytes),
        max_images: unlimited(limits.max_images),
    })
}

/// The ceiling a change that may add to the usage is conditional on: on
/// what it adds only (a settlement below its reservation, or a quota
/// lowered meanwhile, never refuses what gives back); `None` when it adds
/// nothing a quota limits.
fn growth_ceiling(limits: QuotaLimits, change: &UsageChange) -> Option<UsageCeiling> {
    let limited = |max: u64, delta: i64| if max != 0 && delta > 0 { max } else { u64::MAX };
    let ceiling = UsageCeiling {
        max_bytes: limited(limits.max_bytes, change.bytes),
        max_images: limited(limits.max_images, change.images),
    };
    (ceiling.max_bytes != u64::MAX || ceiling.max_images != u64::MAX).then_some(ceiling)
}

/// Which quota `change` (a settlement, or encodings added later) would
/// pass.
fn growth_violation(
    user: &UserId,
    usage: &UsageRecord,
    limits: QuotaLimits,
    change: &UsageChange,
) -> QuotaViolation {
    let subject = format!("user:{user}");
    if change.images > 0 && limits.max_images != 0 {
        return QuotaViolation {
            subject,
            description: format!(
                "the quota of {} images per user is reached ({} stored or being uploaded); \
                 delete images to upload more",
                limits.max_images, usage.held_images
            ),
        };
    }
    QuotaViolation {
        subject,
        description: format!(
            "the quota of {} bytes per user would be passed: {} bytes are held (stored or \
             being uploaded), and this image's variants and encodings take {} more than \
             its upload reserved; nothing of it was kept",
            limits.max_bytes, usage.held_bytes, change.bytes
        ),
    }
}

/// Which quota a reservation of `bytes` and one image would pass.
fn violation(
    user: &UserId,
    usage: &UsageRecord,
    limits: QuotaLimits,
    bytes: u64,
) -> Option<QuotaViolation> {
    let subject = format!("user:{user}");
    if limits.max_images != 0 && usage.held_images.saturating_add(1) > limits.max_images {
        return Some(QuotaViolation {
            subject,
            description: format!(
                "the quota of {} images per user is reached ({} stored or being uploaded); \
                 delete images to upload more",
                limits.max_images, usage.held_images
            ),
        });
    }
    if limits.max_bytes != 0 && usage.held_bytes.saturating_add(bytes) > limits.max_bytes {
        return Some(QuotaViolation {
            subject,
            description: format!(
                "the quota of {} bytes per user would be passed: {} bytes are held \
                 (stored or being uploaded) and this upload reserves {bytes} (its \
                 expected_size, or the largest image allowed when it declares none)",
                limits.max_bytes, usage.held_bytes
            ),
        });
    }
    None
}

/// An upload's reservation: released when dropped unless it was settled
/// (so an error, a panic or a cancelled call cannot forget it). An upload
/// session's is only settled here: the session releases it.
pub struct QuotaHold {
    quotas: Quotas,
    user: UserId,
    reservation: Option<UsageReservation>,
    /// The id of the upload session's reservation this finishes.
    session: Option<String>,
}

impl QuotaHold {
    /// The upload is about to store an image holding `bytes` in all: ends
    /// its reservation (or the session's) and counts the image, unless
    /// what it holds past the reservation would take the user past the
    /// quota ([`DomainError::QuotaExceeded`]; the reservation stays, for
    /// [`QuotaHold::release`] or the session). Made before the record is
    /// stored; [`Settled::undo`] if it then is not.
    pub async fn settle(&mut self, bytes: u64) -> Result<Settled, DomainError> {
        let ends = match (&self.reservation, &self.session) {
            (Some(reservation), _) => Some(reservation.id.clone()),
            (None, Some(session)) => Some(session.clone()),
            (None, None) => None,
        };
        let change = UsageChange {
            bytes: signed(bytes),
            images: 1,
            ..UsageChange::default()
        };
        let settled = self
            .quotas
            .change_within(&self.user, change, ends.as_deref())
            .await?;
        self.reservation = None;
        self.session = None;
        Ok(settled)
    }

    /// The upload stored nothing.
    pub async fn release(mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.quotas.end(&self.user, reservation).await;
        }
    }
}

/// What a change held to the quota added to a user's usage (beyond the
/// reservation it ended): given back by [`Settled::undo`] when what it
/// counted was not kept.
#[must_use = "a settlement whose record is not stored is undone"]
pub struct Settled {
    quotas: Quotas,
    user: UserId,
    bytes: i64,
    images: i64,
}

impl Settled {
    /// What was counted is not kept (the record was not stored, or was
    /// another's): gives it back. A failure is logged; the repair pass
    /// corrects the usage.
    pub async fn undo(self) {
        let change = UsageChange {
            bytes: -self.bytes,
            images: -self.images,
            ..UsageChange::default()
        };
        if let Err(error) = self
            .quotas
            .metadata
            .change_usage(&self.user, &change, None)
            .await
        {
            tracing::warn!(
                error = %crate::telemetry::error_chain(&error),
                user = %self.user,
                "bytes counted for an image not kept were not given back; the repair pass will"
            );
        }
    }
}

impl Drop for QuotaHold {
    fn drop(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let (quotas, user) = (self.quotas.clone(), self.user.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { quotas.end(&user, reservation).await });
            }
            // No runtime (a process ending): the repair pass drops it.
            Err(_) => tracing::warn!(%user, "a quota reservation was left to the repair pass"),
        }
    }
}
