//! The shared limits on what callers can make one replica hold: one memory
//! budget in bytes that uploads, downloads, responses and renders draw
//! from, the share of it one user's work may hold, and the per-user count
//! of uploads in progress.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{DomainError, UserId};

/// The budget counts in units of this many bytes (a semaphore's permits are
/// a `u32` per acquisition).
const UNIT: u64 = 64 * 1024;

/// Bytes of memory that work in progress may hold at once. Work reserves
/// what it may need before it allocates; what cannot be reserved within
/// `wait` is refused with `RESOURCE_EXHAUSTED`, so the process stays within
/// the budget instead of growing until the kernel kills it.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    total: u64,
    wait: Duration,
    users: UserShares,
}

/// Bytes of the budget each user's work holds, and the most one user may
/// hold (`--max-memory-per-user`), so that one user's unread downloads and
/// responses cannot take the budget from everyone else.
#[derive(Clone, Debug)]
struct UserShares {
    max: u64,
    held: Arc<Mutex<HashMap<UserId, u64>>>,
    /// Renders in progress of each user that has any (locked after
    /// `held`).
    rendering: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// One of a user's renders in progress; uncounted when dropped.
#[derive(Debug)]
struct RenderInProgress {
    rendering: Arc<Mutex<HashMap<UserId, usize>>>,
    user: UserId,
}

impl Drop for RenderInProgress {
    fn drop(&mut self) {
        let mut rendering = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = rendering.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                rendering.remove(&self.user);
            }
        }
    }
}

/// Bytes of a reservation counted against one user's share; uncounted when
/// dropped.
#[derive(Debug)]
pub struct UserCharge {
    held: Arc<Mutex<HashMap<UserId, u64>>>,
    user: UserId,
    bytes: u64,
    /// Set for a render's charge, which counts the render as in progress.
    _render: Option<RenderInProgress>,
}

impl UserCharge {
    fn set(&mut self, bytes: u64) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(total) = held.get_mut(&self.user) {
            *total = (*total + bytes).saturating_sub(self.bytes);
            if *total == 0 {
                held.remove(&self.user);
            }
        }
        self.bytes = bytes;
    }
}

impl Drop for UserCharge {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Bytes reserved from a [`MemoryBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
    /// The user whose share the bytes count against, if any.
    charge: Option<UserCharge>,
}

impl Reservation {
    /// A reservation of nothing.
    pub fn none() -> Self {
        Self {
            _permit: None,
            bytes: 0,
            charge: None,
        }
    }

    /// The bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives back all but `bytes` of the reservation.
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes >= self.bytes {
            return;
        }
        let keep = usize::try_from(bytes.div_ceil(UNIT)).unwrap_or(usize::MAX);
        match &mut self._permit {
            Some(_) if keep == 0 => self._permit = None,
            Some(permit) if permit.num_permits() > keep => {
                drop(permit.split(permit.num_permits() - keep));
            }
            _ => {}
        }
        self.bytes = bytes;
        if let Some(charge) = &mut self.charge {
            charge.set(bytes);
        }
    }

    /// Counts the reservation against `charge`'s user until it is dropped.
    pub fn charged(mut self, mut charge: UserCharge) -> Self {
        charge.set(self.bytes);
        self.charge = Some(charge);
        self
    }

    fn absorb(&mut self, mut more: Reservation) {
        self.bytes += more.bytes;
        // Bytes already counted against the user by `more`'s own charge
        // are not counted twice.
        match (&mut self.charge, more.charge.take()) {
            (Some(charge), Some(mut counted)) => {
                charge.bytes += counted.bytes;
                counted.bytes = 0;
            }
            (slot @ None, counted) => *slot = counted,
            (Some(_), None) => {}
        }
        if let Some(charge) = &mut self.charge {
            charge.set(self.bytes);
        }
        match (&mut self._permit, more._permit) {
            (Some(permit), Some(more)) => permit.merge(more),
            (slot @ None, more) => *slot = more,
            (_, None) => {}
        }
    }
}

impl MemoryBudget {
    /// A budget of `total` bytes; reservations wait at most `wait`. One
    /// user's reservations may hold the whole of it (see
    /// [`MemoryBudget::with_user_share`]).
    pub fn new(total: u64, wait: Duration) -> Self {
        let units = (total / UNIT).clamp(1, Semaphore::MAX_PERMITS as u64);
        Self {
            units: Arc::new(Semaphore::new(units as usize)),
            total: units * UNIT,
            wait,
            users: UserShares {
                max: u64::MAX,
                held: Arc::default(),
                rendering: Arc::default(),
            },
        }
    }

    /// The budget, of which one user's reservations may hold at most `max`
    /// bytes at once.
    pub fn with_user_share(mut self, max: u64) -> Self {
        self.users.max = max;
        self
    }

    /// Counts `bytes` against `user`'s share, or refuses them at once when
    /// they would take the user past it. Waiting would not help: it is the
    /// user's own work that holds the share. A user holding nothing is
    /// always let in, so one call larger than a share (an upload of the
    /// largest image under a small budget) still works; one user holds at
    /// most its share and one reservation more.
    pub fn charge(&self, user: &UserId, bytes: u64, what: &str) -> Result<UserCharge, DomainError> {
        self.try_charge(user, bytes)
            .map_err(|held| self.share_refusal(held, bytes, what))
    }

    /// Counts a render's `bytes` against `user`'s share: at once when they
    /// fit, or when the user has no other render in progress, else as
    /// soon as one of those is so. So a user always makes progress: one
    /// render of each user may take it past its share (even when the
    /// bytes its own queued uploads keep fill it), bounded by
    /// `--max-render-memory` and the budget, and the user's other renders
    /// wait for it. They wait without a limit of their own: what they wait
    /// for is the user's renders in progress, which end (the call's
    /// deadline bounds the wait as a whole).
    pub async fn charge_render(&self, user: &UserId, bytes: u64) -> UserCharge {
        loop {
            if let Some(charge) = self.try_charge_render(user, bytes) {
                return charge;
            }
            tokio::time::sleep(LARGE_RESERVATION_POLL).await;
        }
    }

    fn try_charge_render(&self, user: &UserId, bytes: u64) -> Option<UserCharge> {
        let mut held = self.users.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut rendering = self
            .users
            .rendering
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let total = held.get(user).copied().unwrap_or(0);
        if rendering.contains_key(user) && total > 0 && total.saturating_add(bytes) > self.users.max
        {
            return None;
        }
        *held.entry(user.clone()).or_insert(0) += bytes;
        *rendering.entry(user.clone()).or_insert(0) += 1;
        Some(UserCharge {
            held: self.users.held.clone(),
            user: user.clone(),
            bytes,
            _render: Some(RenderInProgress {
                rendering: self.users.rendering.clone(),
                user: user.clone(),
            }),
        })
    }

    /// Counts `bytes` against `user`'s share if it has room (see
    /// [`MemoryBudget::charge`]); else what the user holds.
    fn try_charge(&self, user: &UserId, bytes: u64) -> Result<UserCharge, u64> {
        let mut held = self.users.held.lock().unwrap_or_else(|e| e.into_inner());
        let total = held.entry(user.clone()).or_insert(0);
        if *total > 0 && total.saturating_add(bytes) > self.users.max {
            return Err(*total);
        }
        *total += bytes;
        Ok(UserCharge {
            held: self.users.held.clone(),
            user: user.clone(),
            bytes,
            _render: None,
        })
    }

    fn share_refusal(&self, held: u64, bytes: u64, what: &str) -> DomainError {
        metrics::counter!("imageservice_memory_user_share_refusals_total").increment(1);
        DomainError::ResourceExhausted(format!(
            "this user's calls in progress (downloads, uploads and their renders, responses not \
             yet read) hold {} of memory; one user may hold {} (--max-memory-per-user) and {what} \
             needs {}: read or end those first, then retry",
            human(held),
            human(self.users.max),
            human(bytes)
        ))
    }

    /// The most one user's work may hold (`--max-memory-per-user`).
    pub fn user_share(&self) -> u64 {
        self.users.max
    }

    /// [`MemoryBudget::reserve`], counted against `user`'s share.
    pub async fn reserve_for(
        &self,
        user: &UserId,
        bytes: u64,
        what: &str,
    ) -> Result<Reservation, DomainError> {
        let charge = self.charge(user, bytes, what)?;
        Ok(self.reserve(bytes, what).await?.charged(charge))
    }

    /// Bytes not reserved at the moment.
    pub fn available(&self) -> u64 {
        self.units.available_permits() as u64 * UNIT
    }

    /// The whole budget.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Reserves `bytes` if they are free now.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        let units = u32::try_from(bytes.div_ceil(UNIT)).ok()?;
        if units == 0 {
            return Some(Reservation {
                _permit: None,
                bytes,
                charge: None,
            });
        }
        let permit = self.units.clone().try_acquire_many_owned(units).ok()?;
        Some(Reservation {
            _permit: Some(permit),
            bytes,
            charge: None,
        })
    }

    /// Reserves `bytes` for `what` (named in the refusal), waiting up to
    /// the budget's wait for others to give bytes back.
    pub async fn reserve(&self, bytes: u64, what: &str) -> Result<Reservation, DomainError> {
        self.reserve_within(bytes, what, self.wait).await
    }

    /// [`MemoryBudget::reserve`], waiting at most `wait`.
    pub async fn reserve_within(
        &self,
        bytes: u64,
        what: &str,
        wait: Duration,
    ) -> Result<Reservation, DomainError> {
        if bytes == 0 {
            return Ok(Reservation {
                _permit: None,
                bytes,
                charge: None,
            });
        }
        let units = bytes.div_ceil(UNIT);
        if units * UNIT > self.total {
            return Err(DomainError::TooLarge(format!(
                "{what} needs {} of memory, more than the server's whole budget of {} \
                 (--memory-budget)",
                human(bytes),
                human(self.total)
            )));
        }
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        let acquired = if u64::from(units) * UNIT > LARGE_RESERVATION {
            self.poll_for(units, wait).await
        } else {
            let acquire = self.units.clone().acquire_many_owned(units);
            tokio::time::timeout(wait, acquire).await.ok()
        };
        match acquired {
            Some(Ok(permit)) => Ok(Reservation {
                _permit: Some(permit),
                bytes,
                charge: None,
            }),
            Some(Err(_closed)) => Err(DomainError::Unavailable("the server is stopping".into())),
            None => {
                metrics::counter!("imageservice_memory_budget_refusals_total").increment(1);
                Err(DomainError::ResourceExhausted(format!(
                    "the server's memory budget ({}, --memory-budget) is taken by work in \
                     progress; {what} needs {}: retry shortly",
                    human(self.total),
                    human(bytes)
                )))
            }
        }
    }
}

impl MemoryBudget {
    /// Grows `reservation` to at least `bytes`, in steps of [`GROWTH_STEP`]
    /// so that work growing little by little does not touch the budget at
    /// every step; waits like [`MemoryBudget::reserve`].
    pub async fn grow(
        &self,
        reservation: &mut Reservation,
        bytes: u64,
        what: &str,
    ) -> Result<(), DomainError> {
        self.grow_by(None, reservation, bytes, what).await
    }

    async fn grow_by(
        &self,
        user: Option<&UserId>,
        reservation: &mut Reservation,
        bytes: u64,
        what: &str,
    ) -> Result<(), DomainError> {
        if bytes <= reservation.bytes {
            return Ok(());
        }
        let more = (bytes - reservation.bytes).next_multiple_of(GROWTH_STEP);
        let more = match user {
            Some(user) => self.reserve_for(user, more, what).await?,
            None => self.reserve(more, what).await?,
        };
        reservation.absorb(more);
        Ok(())
    }
}

impl MemoryBudget {
    /// [`MemoryBudget::grow`], the growth counted against `user`'s share
    /// (refused at once past it, like [`MemoryBudget::charge`]).
    pub async fn grow_for(
        &self,
        user: &UserId,
        reservation: &mut Reservation,
        bytes: u64,
        what: &str,
    ) -> Result<(), DomainError> {
        self.grow_by(Some(user), reservation, bytes, what).await
    }

    /// Grows `reservation` to at least `bytes` if the budget has room now
    /// (in steps like [`MemoryBudget::grow`]); whether it has.
    pub fn try_grow(&self, reservation: &mut Reservation, bytes: u64) -> bool {
        if bytes <= reservation.bytes {
            return true;
        }
        let more = (bytes - reservation.bytes).next_multiple_of(GROWTH_STEP);
        match self.try_reserve(more) {
            Some(more) => {
                reservation.absorb(more);
                true
            }
            None => false,
        }
    }

    /// Takes `units` as soon as that many are free, trying every few
    /// milliseconds up to the wait. Large reservations do not queue: the
    /// semaphore is fair, and a render waiting at the head of its queue for
    /// hundreds of MiB would hold up every small upload behind it.
    async fn poll_for(
        &self,
        units: u32,
        wait: Duration,
    ) -> Option<Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.units.clone().try_acquire_many_owned(units) {
                Ok(permit) => return Some(Ok(permit)),
                Err(tokio::sync::TryAcquireError::Closed) => {
                    return Some(self.units.clone().acquire_many_owned(units).await);
                }
                Err(tokio::sync::TryAcquireError::NoPermits) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(LARGE_RESERVATION_POLL).await;
        }
    }
}

/// Reservations above this do not queue (see [`MemoryBudget::poll_for`]).
const LARGE_RESERVATION: u64 = 16 * 1024 * 1024;
/// How often a large reservation looks for room.
const LARGE_RESERVATION_POLL: Duration = Duration::from_millis(10);

/// The least a reservation grows by.
const GROWTH_STEP: u64 = 1024 * 1024;

pub(super) fn human(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// Uploads in progress per user, capped so that one user cannot hold every
/// upload slot of a replica.
#[derive(Clone, Debug)]
pub struct UserUploads {
    max: usize,
    counts: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// One upload of one user; the count goes down when it is dropped.
pub struct UserUpload {
    user: UserId,
    counts: Arc<Mutex<HashMap<UserId, usize>>>,
}

impl UserUploads {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            counts: Arc::default(),
        }
    }

    /// Counts an upload of `user`, or refuses it when the user already has
    /// the most allowed.
    pub fn start(&self, user: &UserId) -> Result<UserUpload, DomainError> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(user.clone()).or_insert(0);
        if *count >= self.max {
            return Err(DomainError::ResourceExhausted(format!(
                "this user already has {} uploads in progress (--max-uploads-per-user); \
                 finish one first",
                self.max
            )));
        }
        *count += 1;
        Ok(UserUpload {
            user: user.clone(),
            counts: self.counts.clone(),
        })
    }
}

impl Drop for UserUpload {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_bytes_given_back_then_give_up() {
        let budget = MemoryBudget::new(10 * 1024 * 1024, Duration::from_millis(50));
        let first = budget.reserve(8 * 1024 * 1024, "a test").await.unwrap();
        let refused = budget.reserve(4 * 1024 * 1024, "a test").await.unwrap_err();
        assert!(
            matches!(refused, DomainError::ResourceExhausted(_)),
            "{refused:?}"
        );
        drop(first);
        assert!(budget.reserve(4 * 1024 * 1024, "a test").await.is_ok());
        assert_eq!(
            budget.available(),
            10 * 1024 * 1024,
            "everything given back"
        );
    }

    #[tokio::test]
    async fn a_large_reservation_waiting_for_room_does_not_hold_up_small_ones() {
        let budget = MemoryBudget::new(64 * 1024 * 1024, Duration::from_secs(2));
        let held = budget.reserve(40 * 1024 * 1024, "a render").await.unwrap();
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(48 * 1024 * 1024, "a render").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let small = tokio::time::timeout(
            Duration::from_millis(500),
            budget.reserve(1024 * 1024, "an upload"),
        )
        .await;
        assert!(matches!(small, Ok(Ok(_))), "the small one waited");
        drop(small);
        drop(held);
        assert!(
            waiting.await.unwrap().is_ok(),
            "the large one gets its turn"
        );
    }

    #[tokio::test]
    async fn a_reservation_grows_while_there_is_room() {
        let budget = MemoryBudget::new(8 * 1024 * 1024, Duration::from_millis(50));
        let mut growing = budget.reserve(1024 * 1024, "a test").await.unwrap();
        budget
            .grow(&mut growing, 5 * 1024 * 1024, "a test")
            .await
            .unwrap();
        assert_eq!(budget.available(), 3 * 1024 * 1024);
        assert!(
            budget
                .grow(&mut growing, 9 * 1024 * 1024, "a test")
                .await
                .is_err()
        );
        drop(growing);
        assert_eq!(budget.available(), 8 * 1024 * 1024);
    }

    #[tokio::test]
    async fn a_shrunk_reservation_gives_the_rest_back() {
        let budget = MemoryBudget::new(8 * 1024 * 1024, Duration::from_millis(50));
        let mut held = budget.reserve(6 * 1024 * 1024, "a test").await.unwrap();
        held.shrink_to(1024 * 1024);
        assert_eq!(budget.available(), 7 * 1024 * 1024);
        held.shrink_to(0);
        assert_eq!(budget.available(), 8 * 1024 * 1024);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let budget = MemoryBudget::new(1024 * 1024, Duration::from_secs(60));
        let started = std::time::Instant::now();
        let refused = budget
            .reserve(2 * 1024 * 1024, "a render")
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("whole budget"), "{refused}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn one_user_holds_at_most_its_share_and_others_go_on() {
        let mib = 1024 * 1024;
        let budget =
            MemoryBudget::new(64 * mib, Duration::from_millis(50)).with_user_share(8 * mib);
        let mallory = UserId::parse("mallory").unwrap();
        let alice = UserId::parse("alice").unwrap();
        let first = budget
            .reserve_for(&mallory, 6 * mib, "a test")
            .await
            .unwrap();
        let refused = budget
            .reserve_for(&mallory, 3 * mib, "a test")
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, DomainError::ResourceExhausted(m) if m.contains("--max-memory-per-user")),
            "{refused:?}"
        );
        assert!(budget.reserve_for(&alice, 7 * mib, "a test").await.is_ok());
        drop(first);
        let mut again = budget.reserve_for(&mallory, 12 * mib, "a test").await;
        assert!(again.is_ok(), "a user holding nothing is let in");
        again.as_mut().unwrap().shrink_to(mib);
        assert!(
            budget
                .reserve_for(&mallory, 7 * mib, "a test")
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_users_one_render_passes_its_full_share_and_the_next_waits_for_it() {
        let mib = 1024 * 1024;
        let budget =
            MemoryBudget::new(64 * mib, Duration::from_millis(50)).with_user_share(8 * mib);
        let mallory = UserId::parse("mallory").unwrap();
        // Mallory's queued uploads fill the share; her first render still
        // starts, past it.
        let uploads = budget.charge(&mallory, 8 * mib, "uploads").unwrap();
        let first = budget.charge_render(&mallory, 12 * mib).await;
        assert!(
            budget.charge(&mallory, mib, "a download").is_err(),
            "the render is counted in the share"
        );
        let second = {
            let budget = budget.clone();
            let mallory = mallory.clone();
            tokio::spawn(async move { budget.charge_render(&mallory, 4 * mib).await })
        };
        // Another user's render is not held up by hers.
        let victor = UserId::parse("victor").unwrap();
        drop(budget.charge_render(&victor, 4 * mib).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "two renders past the share");
        drop(first);
        let second = second.await.unwrap();
        drop((uploads, second));
        assert!(
            budget.charge(&mallory, 8 * mib, "a test").is_ok(),
            "all given back"
        );
    }

    #[tokio::test]
    async fn growth_for_a_user_counts_once_and_stops_at_the_share() {
        let mib = 1024 * 1024;
        let budget =
            MemoryBudget::new(64 * mib, Duration::from_millis(50)).with_user_share(8 * mib);
        let alice = UserId::parse("alice").unwrap();
        let mut held = budget.reserve_for(&alice, 2 * mib, "a test").await.unwrap();
        budget
            .grow_for(&alice, &mut held, 6 * mib, "a test")
            .await
            .unwrap();
        // 6 MiB counted, not 2 + 4 + 6: a 2 MiB charge still fits.
        drop(budget.charge(&alice, 2 * mib, "a test").unwrap());
        let refused = budget.grow_for(&alice, &mut held, 10 * mib, "a test").await;
        assert!(refused.is_err(), "grown past the share");
        drop(held);
        assert_eq!(budget.available(), 64 * mib);
        assert!(
            budget.charge(&alice, 8 * mib, "a test").is_ok(),
            "all given back"
        );
    }

    #[test]
    fn one_user_cannot_hold_more_uploads_than_allowed() {
        let uploads = UserUploads::new(2);
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let a1 = uploads.start(&alice).unwrap();
        let _a2 = uploads.start(&alice).unwrap();
        assert!(uploads.start(&alice).is_err());
        assert!(uploads.start(&bob).is_ok(), "others are not affected");
        drop(a1);
        assert!(
            uploads.start(&alice).is_ok(),
            "a finished upload frees its slot"
        );
    }
}
