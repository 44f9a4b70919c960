//! Admission of uploads into the memory budget: an upload reserves its
//! whole working set (the bytes it may hold at once: part buffers and parts
//! in flight, the copy kept for the renders, one message, the inspector's
//! overhead) before its first byte is read, so that once admitted it is
//! never refused for memory half-way. Uploads that do not fit wait in a
//! fair queue (users take turns; each user's uploads go first come, first
//! served) for up to `--upload-slot-wait`; while they wait the service reads
//! nothing more of their streams, so HTTP/2 flow control holds their
//! senders back. A caller that gives up (its deadline passes, it cancels)
//! leaves the queue at once.
//!
//! Renders take turns the same way: each lane of the renderer has its own
//! fair queue in front of its slots, so one user's queued renders cannot
//! keep other users' renders waiting behind all of them.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::budget::{MemoryBudget, Reservation};
use super::{DomainError, UserId};
use crate::media::variants::{RenderSlot, Renderer, SMALL_RENDER_PIXELS};

/// The queue of uploads waiting for memory, in front of the budget, and
/// those of renders waiting for a slot, in front of the renderer's lanes.
#[derive(Clone)]
pub struct Admissions {
    budget: MemoryBudget,
    uploads: Turns,
    /// One per lane of the renderer: images up to [`SMALL_RENDER_PIXELS`],
    /// and larger ones.
    renders: [Turns; 2],
}

/// A fair queue: users take turns, each user's tickets first come, first
/// served.
#[derive(Clone, Default)]
struct Turns {
    queue: Arc<Mutex<Queue>>,
    /// Woken whenever the head of the queue changes.
    turn: Arc<Notify>,
}

/// Waiting work: users in the order they take turns, and each user's
/// tickets in arrival order.
#[derive(Default)]
struct Queue {
    users: VecDeque<UserId>,
    waiting: HashMap<UserId, VecDeque<u64>>,
    next_ticket: u64,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn push(&mut self, user: &UserId) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let tickets = self.waiting.entry(user.clone()).or_default();
        if tickets.is_empty() {
            self.users.push_back(user.clone());
        }
        tickets.push_back(ticket);
        ticket
    }

    /// The ticket whose turn it is: the first of the user at the front.
    fn head(&self) -> Option<u64> {
        let user = self.users.front()?;
        self.waiting.get(user)?.front().copied()
    }

    /// Takes `ticket` out. When it was served (it was the head), its user
    /// goes to the back of the turns, so another user's upload is next.
    fn remove(&mut self, user: &UserId, ticket: u64) {
        let was_head = self.head() == Some(ticket);
        let Some(tickets) = self.waiting.get_mut(user) else {
            return;
        };
        tickets.retain(|t| *t != ticket);
        let more = !tickets.is_empty();
        if !more {
            self.waiting.remove(user);
        }
        let position = self.users.iter().position(|u| u == user);
        match (position, more) {
            (Some(at), false) => {
                self.users.remove(at);
            }
            (Some(0), true) if was_head => self.users.rotate_left(1),
            _ => {}
        }
    }
}

/// A place in the queue; leaving it (served, refused or cancelled) passes
/// the turn on.
struct Ticket<'a> {
    turns: &'a Turns,
    user: UserId,
    ticket: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.turns.lock().remove(&self.user, self.ticket);
        self.turns.turn.notify_waiters();
    }
}

impl Turns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ticket at the back of `user`'s line.
    fn enter(&self, user: &UserId) -> Ticket<'_> {
        let ticket = self.lock().push(user);
        Ticket {
            turns: self,
            user: user.clone(),
            ticket,
        }
    }

    /// Waits until it is `ticket`'s turn; false if `deadline` came first.
    async fn reached(&self, ticket: &Ticket<'_>, deadline: Option<Instant>) -> bool {
        loop {
            let notified = self.turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().head() == Some(ticket.ticket) {
                return true;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return false;
                    }
                }
                None => notified.await,
            }
        }
    }
}

impl Admissions {
    pub fn new(budget: MemoryBudget) -> Self {
        Self {
            budget,
            uploads: Turns::default(),
            renders: Default::default(),
        }
    }

    /// A slot of `renderer`'s lane for an image of `pixels`, in turn:
    /// users take turns at each lane, each user's renders in the order they
    /// came. Only the render whose turn it is waits for the lane's slots,
    /// so the slots' own queue never holds more than one.
    pub async fn render_slot(&self, renderer: &Renderer, user: &UserId, pixels: u64) -> RenderSlot {
        let lane = &self.renders[usize::from(pixels > SMALL_RENDER_PIXELS)];
        let ticket = lane.enter(user);
        lane.reached(&ticket, None).await;
        let slot = renderer.slot(pixels).await;
        drop(ticket);
        slot
    }

    /// Reserves `bytes` for an upload of `user`'s, waiting in the queue and
    /// then for memory for at most `wait` in all.
    pub async fn admit(
        &self,
        user: &UserId,
        bytes: u64,
        wait: Duration,
    ) -> Result<Reservation, DomainError> {
        let deadline = Instant::now() + wait;
        // The user's share first: an upload past it is refused at once,
        // and does not wait in the queue for memory it may not hold.
        let charge = self.budget.charge(user, bytes, "this upload")?;
        let ticket = {
            let mut queue = self.uploads.lock();
            if queue.is_empty()
                && let Some(reservation) = self.budget.try_reserve(bytes)
            {
                return Ok(reservation.charged(charge));
            }
            Ticket {
                turns: &self.uploads,
                user: user.clone(),
                ticket: queue.push(user),
            }
        };
        let started = Instant::now();
        if !self.uploads.reached(&ticket, Some(deadline)).await {
            return Err(self.refusal(bytes, started));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let reserved = self
            .budget
            .reserve_within(bytes, "an upload", remaining)
            .await;
        metrics::histogram!("imageservice_upload_admission_wait_seconds")
            .record(started.elapsed().as_secs_f64());
        drop(ticket);
        match reserved {
            Err(DomainError::ResourceExhausted(_)) => Err(self.refusal(bytes, started)),
            other => other.map(|reservation| reservation.charged(charge)),
        }
    }

    fn refusal(&self, bytes: u64, started: Instant) -> DomainError {
        metrics::counter!("imageservice_upload_admission_refusals_total").increment(1);
        DomainError::ResourceExhausted(format!(
            "the server's memory budget ({}, --memory-budget) is taken by uploads in progress: \
             this upload needs {} and waited {:.1}s for it (--upload-slot-wait) before any of \
             its bytes were read; retry with backoff",
            super::budget::human(self.budget.total()),
            super::budget::human(bytes),
            started.elapsed().as_secs_f32()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[tokio::test]
    async fn an_upload_that_fits_is_admitted_at_once() {
        let admissions = Admissions::new(MemoryBudget::new(64 * MIB, Duration::ZERO));
        let reservation = admissions
            .admit(&user("alice"), 40 * MIB, Duration::ZERO)
            .await
            .unwrap();
        drop(reservation);
        assert_eq!(admissions.budget.available(), 64 * MIB);
    }

    #[tokio::test]
    async fn an_upload_that_does_not_fit_waits_for_memory_given_back() {
        let admissions = Admissions::new(MemoryBudget::new(64 * MIB, Duration::ZERO));
        let held = admissions
            .admit(&user("alice"), 40 * MIB, Duration::ZERO)
            .await
            .unwrap();
        let waiting = {
            let admissions = admissions.clone();
            tokio::spawn(async move {
                admissions
                    .admit(&user("bob"), 40 * MIB, Duration::from_secs(10))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "admitted beyond the budget");
        drop(held);
        assert!(waiting.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_wait_past_its_limit_is_refused_and_leaves_the_queue() {
        let admissions = Admissions::new(MemoryBudget::new(64 * MIB, Duration::ZERO));
        let _held = admissions
            .admit(&user("alice"), 40 * MIB, Duration::ZERO)
            .await
            .unwrap();
        let refused = admissions
            .admit(&user("bob"), 40 * MIB, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, DomainError::ResourceExhausted(m) if m.contains("before any of its bytes")),
            "{refused:?}"
        );
        assert!(
            admissions.uploads.lock().is_empty(),
            "the refused upload left the queue"
        );
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_queue() {
        let admissions = Admissions::new(MemoryBudget::new(64 * MIB, Duration::ZERO));
        let held = admissions
            .admit(&user("alice"), 40 * MIB, Duration::ZERO)
            .await
            .unwrap();
        let cancelled = tokio::time::timeout(
            Duration::from_millis(50),
            admissions.admit(&user("bob"), 40 * MIB, Duration::from_secs(60)),
        )
        .await;
        assert!(cancelled.is_err());
        assert!(admissions.uploads.lock().is_empty());
        drop(held);
    }

    /// The order in which three turns of Alice's and then one of Bob's,
    /// each taken by `take` and held for 20 ms, are served once `held` is
    /// given back.
    async fn served_in_turn<H, T, F>(held: H, take: impl Fn(&'static str) -> F) -> Vec<&'static str>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for name in ["alice", "alice", "alice", "bob"] {
            let turn = take(name);
            let order_tx = order_tx.clone();
            waiting.push(tokio::spawn(async move {
                let turn = turn.await;
                order_tx.send(name).unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(turn);
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held);
        for task in waiting {
            task.await.unwrap();
        }
        drop(order_tx);
        let mut served = Vec::new();
        while let Some(name) = order.recv().await {
            served.push(name);
        }
        served
    }

    #[tokio::test]
    async fn users_take_turns_whatever_the_order_their_uploads_came_in() {
        let admissions = Admissions::new(MemoryBudget::new(64 * MIB, Duration::ZERO));
        let held = admissions
            .admit(&user("first"), 64 * MIB, Duration::ZERO)
            .await
            .unwrap();
        let served = served_in_turn(held, |name| {
            let admissions = admissions.clone();
            async move {
                admissions
                    .admit(&user(name), 64 * MIB, Duration::from_secs(10))
                    .await
                    .unwrap()
            }
        })
        .await;
        assert_eq!(served, ["alice", "bob", "alice", "alice"]);
    }

    #[tokio::test]
    async fn users_take_turns_at_the_render_slots() {
        use crate::media::variants::{RenderLimits, Renderer};
        let admissions = Admissions::new(MemoryBudget::new(64 * MIB, Duration::ZERO));
        let renderer = Renderer::new(
            RenderLimits {
                max_concurrent: 1,
                max_memory: 64 * MIB,
                max_jpeg_decode_passes: crate::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES,
            },
            crate::media::variants::default_sizes().into(),
        );
        let held = admissions
            .render_slot(&renderer, &user("first"), 1_000_000)
            .await;
        let served = served_in_turn(held, |name| {
            let (admissions, renderer) = (admissions.clone(), renderer.clone());
            async move {
                admissions
                    .render_slot(&renderer, &user(name), 1_000_000)
                    .await
            }
        })
        .await;
        assert_eq!(served, ["alice", "bob", "alice", "alice"]);
    }
}
