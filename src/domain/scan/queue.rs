//! The scan places of a replica, shared fairly between users.
//!
//! A replica makes at most `--max-concurrent-scans` scans at once, and one
//! user's images at most `--max-concurrent-scans-per-user` of them. Work
//! that finds no place waits in one fair queue: users with waiting work
//! take turns (round-robin), each user's work in arrival order, and a user
//! at its share is passed over until one of its scans ends. Two kinds of
//! work wait there alike:
//!
//! - a caller that waits for its place ([`ScanPlaces::place`]): a `sync`
//!   upload, a scan of the repair pass. Leaving the wait (the caller's
//!   deadline passed, it went away) leaves the queue, and a place given
//!   to it meanwhile goes to the next in turn;
//! - an `async` image, queued by its id alone ([`ScanPlaces::queue`]) and
//!   handed to the replica's scan worker with its place
//!   ([`ScanPlaces::next_queued`]). These entries are bounded in all
//!   (`--max-queued-scans`) and per user (`--max-queued-scans-per-user`):
//!   an image that does not fit is not queued, and stays `PENDING` for the
//!   repair pass, as do those queued when the replica stops.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::domain::{ImageId, UserId};

/// How many scans a replica makes at once, and how many images it queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaceLimits {
    /// Scans in flight at once (`--max-concurrent-scans`).
    pub total: usize,
    /// Of those, one user's (`--max-concurrent-scans-per-user`).
    pub per_user: usize,
    /// `async` images waiting for a place (`--max-queued-scans`).
    pub max_queued: usize,
    /// Of those, one user's (`--max-queued-scans-per-user`).
    pub max_queued_per_user: usize,
}

/// The scan places of a replica and the fair queue in front of them.
#[derive(Clone)]
pub struct ScanPlaces {
    shared: Arc<Shared>,
}

struct Shared {
    limits: PlaceLimits,
    state: Mutex<State>,
    /// Woken when a queued image was given a place.
    ready: Notify,
}

/// One piece of waiting work.
enum Waiter {
    /// A caller waiting for its place, woken when given one.
    Caller { ticket: u64, wake: Arc<Notify> },
    /// An `async` image, by its id.
    Image(ImageId),
}

#[derive(Default)]
struct State {
    /// Scans in flight (places given and not yet given back).
    in_flight: usize,
    in_flight_by_user: HashMap<UserId, usize>,
    /// Users with waiting work, in the order they take turns: a user is
    /// here exactly when its line in `waiting` is not empty.
    turns: VecDeque<UserId>,
    waiting: HashMap<UserId, VecDeque<Waiter>>,
    /// Images in `waiting`, in all and by user.
    queued: usize,
    queued_by_user: HashMap<UserId, usize>,
    /// Callers given a place that have not taken it yet.
    granted: HashSet<u64>,
    /// Images given a place, for the worker to take.
    ready: VecDeque<(UserId, ImageId)>,
    next_ticket: u64,
    /// Set when the replica stops: nothing more is queued.
    closed: bool,
}

impl State {
    fn held_by(&self, user: &UserId) -> usize {
        self.in_flight_by_user.get(user).copied().unwrap_or(0)
    }

    fn take_place(&mut self, user: &UserId) {
        self.in_flight += 1;
        *self.in_flight_by_user.entry(user.clone()).or_default() += 1;
    }

    fn give_back(&mut self, user: &UserId) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(held) = self.in_flight_by_user.get_mut(user) {
            *held -= 1;
            if *held == 0 {
                self.in_flight_by_user.remove(user);
            }
        }
    }

    /// Whether `user`'s next work would be given a place now.
    fn starts_now(&self, user: &UserId, limits: &PlaceLimits) -> bool {
        self.in_flight < limits.total
            && self.held_by(user) < limits.per_user
            && !self.waiting.contains_key(user)
    }

    fn push(&mut self, user: &UserId, waiter: Waiter) {
        let line = self.waiting.entry(user.clone()).or_default();
        if line.is_empty() {
            self.turns.push_back(user.clone());
        }
        if matches!(waiter, Waiter::Image(_)) {
            self.queued += 1;
            *self.queued_by_user.entry(user.clone()).or_default() += 1;
        }
        line.push_back(waiter);
    }

    fn unqueue(&mut self, user: &UserId) {
        self.queued = self.queued.saturating_sub(1);
        if let Some(queued) = self.queued_by_user.get_mut(user) {
            *queued -= 1;
            if *queued == 0 {
                self.queued_by_user.remove(user);
            }
        }
    }

    /// Drops the newest queued image of the user with the most queued, if
    /// that is more than one over `mine` (the images of the user asking):
    /// the dropped one is left to the repair pass. True when one was.
    fn push_out_the_largest(&mut self, mine: usize) -> bool {
        let Some((largest, count)) = self
            .queued_by_user
            .iter()
            .max_by_key(|(_, count)| **count)
            .map(|(user, count)| (user.clone(), *count))
        else {
            return false;
        };
        if count <= mine + 1 {
            return false;
        }
        let Some(line) = self.waiting.get_mut(&largest) else {
            return false;
        };
        let Some(at) = line.iter().rposition(|w| matches!(w, Waiter::Image(_))) else {
            return false;
        };
        let Some(Waiter::Image(dropped)) = line.remove(at) else {
            return false;
        };
        self.unqueue(&largest);
        self.forget_if_done(&largest);
        metrics::counter!("imageservice_scans_left_to_repair_total").increment(1);
        tracing::info!(image_id = %dropped, user = %largest, "the scan queue is full and this user holds the most of it: the image is left to the repair pass, for another user's");
        true
    }

    /// Takes `user` out of the turns when its line is empty.
    fn forget_if_done(&mut self, user: &UserId) {
        if self.waiting.get(user).is_some_and(VecDeque::is_empty) {
            self.waiting.remove(user);
            if let Some(at) = self.turns.iter().position(|u| u == user) {
                self.turns.remove(at);
            }
        }
    }

    /// Gives free places to waiting work in turn: the first user in the
    /// turns below its share is served its oldest work and goes to the
    /// back. True when an image was made ready for the worker.
    fn dispatch(&mut self, limits: &PlaceLimits) -> bool {
        let mut images_ready = false;
        while self.in_flight < limits.total {
            let Some(at) = self
                .turns
                .iter()
                .position(|user| self.held_by(user) < limits.per_user)
            else {
                break;
            };
            let Some(user) = self.turns.remove(at) else {
                break;
            };
            let Some(line) = self.waiting.get_mut(&user) else {
                continue;
            };
            let Some(waiter) = line.pop_front() else {
                self.waiting.remove(&user);
                continue;
            };
            if line.is_empty() {
                self.waiting.remove(&user);
            } else {
                self.turns.push_back(user.clone());
            }
            self.take_place(&user);
            match waiter {
                Waiter::Caller { ticket, wake } => {
                    self.granted.insert(ticket);
                    wake.notify_one();
                }
                Waiter::Image(id) => {
                    self.unqueue(&user);
                    self.ready.push_back((user, id));
                    images_ready = true;
                }
            }
        }
        images_ready
    }
}

/// A place among the scans in flight, given back when dropped.
pub struct Place {
    shared: Arc<Shared>,
    user: UserId,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.give_back(&self.user);
        self.shared.dispatched(&mut state);
    }
}

/// A caller's wait; dropped before its place is taken, it leaves the
/// queue, or gives back the place it was given meanwhile.
struct Waiting<'a> {
    shared: &'a Arc<Shared>,
    user: &'a UserId,
    ticket: u64,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.shared.lock();
        if state.granted.remove(&self.ticket) {
            state.give_back(self.user);
        } else if let Some(line) = state.waiting.get_mut(self.user) {
            line.retain(|w| !matches!(w, Waiter::Caller { ticket, .. } if *ticket == self.ticket));
            state.forget_if_done(self.user);
        }
        self.shared.dispatched(&mut state);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Dispatches, wakes the worker when an image was made ready, and
    /// reports the queue's length.
    fn dispatched(&self, state: &mut State) {
        if state.dispatch(&self.limits) {
            self.ready.notify_one();
        }
        metrics::gauge!("imageservice_scans_queued").set(state.queued as f64);
        metrics::gauge!("imageservice_scans_in_flight").set(state.in_flight as f64);
    }
}

impl ScanPlaces {
    pub fn new(limits: PlaceLimits) -> Self {
        let limits = PlaceLimits {
            total: limits.total.max(1),
            per_user: limits.per_user.clamp(1, limits.total.max(1)),
            ..limits
        };
        Self {
            shared: Arc::new(Shared {
                limits,
                state: Mutex::default(),
                ready: Notify::new(),
            }),
        }
    }

    pub fn limits(&self) -> &PlaceLimits {
        &self.shared.limits
    }

    /// A place for a scan of `user`'s, waited for in turn. Cancel-safe:
    /// dropped while waiting, it leaves the queue.
    pub async fn place(&self, user: &UserId) -> Place {
        let wake = Arc::new(Notify::new());
        let ticket = {
            let mut state = self.shared.lock();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.push(
                user,
                Waiter::Caller {
                    ticket,
                    wake: wake.clone(),
                },
            );
            self.shared.dispatched(&mut state);
            ticket
        };
        let mut waiting = Waiting {
            shared: &self.shared,
            user,
            ticket,
            done: false,
        };
        loop {
            if self.shared.lock().granted.remove(&ticket) {
                waiting.done = true;
                return Place {
                    shared: self.shared.clone(),
                    user: user.clone(),
                };
            }
            wake.notified().await;
        }
    }

    /// Queues the scan of `user`'s image `id`, for the worker to make in
    /// turn; false when the queue has no room for it (in all, or for
    /// `user`), or the replica is stopping: the image is left to the
    /// repair pass. When the whole queue is full and no place is free, a
    /// user with at least two fewer images queued than the user with the
    /// most takes the place of that user's newest one (left to the repair
    /// pass instead; two fewer, so that two users never push each other
    /// out in turn): many users filling the queue leave room for one who
    /// has little in it.
    pub fn queue(&self, user: &UserId, id: ImageId) -> bool {
        let limits = &self.shared.limits;
        let mut state = self.shared.lock();
        if state.closed {
            return false;
        }
        let mine = state.queued_by_user.get(user).copied().unwrap_or(0);
        let under_own = mine < limits.max_queued_per_user;
        // Another user's image is pushed out only when this one would
        // otherwise not be scanned: neither room nor a place free now.
        let fits = (under_own && state.queued < limits.max_queued)
            || state.starts_now(user, limits)
            || (under_own && state.push_out_the_largest(mine));
        if !fits {
            return false;
        }
        state.push(user, Waiter::Image(id));
        self.shared.dispatched(&mut state);
        true
    }

    /// The next queued image given a place, waited for (the worker's
    /// part; one worker takes them).
    pub async fn next_queued(&self) -> (UserId, ImageId, Place) {
        loop {
            let notified = self.shared.ready.notified();
            if let Some((user, id)) = self.shared.lock().ready.pop_front() {
                let place = Place {
                    shared: self.shared.clone(),
                    user: user.clone(),
                };
                return (user, id, place);
            }
            notified.await;
        }
    }

    /// Drops every queued image (they stay `PENDING` for the repair pass)
    /// and queues no more: the replica is stopping.
    pub fn close_queue(&self) {
        let mut state = self.shared.lock();
        state.closed = true;
        let users: Vec<UserId> = state.waiting.keys().cloned().collect();
        for user in users {
            if let Some(line) = state.waiting.get_mut(&user) {
                line.retain(|w| matches!(w, Waiter::Caller { .. }));
            }
            state.forget_if_done(&user);
        }
        let ready = std::mem::take(&mut state.ready);
        let left = state.queued + ready.len();
        if left > 0 {
            metrics::counter!("imageservice_scans_left_to_repair_total").increment(left as u64);
            tracing::info!(
                images = left,
                "the replica is stopping: its queued scans are left to the repair pass"
            );
        }
        state.queued = 0;
        state.queued_by_user.clear();
        for (user, _) in &ready {
            state.give_back(user);
        }
        self.shared.dispatched(&mut state);
    }

    /// Images queued now.
    pub fn queued(&self) -> usize {
        self.shared.lock().queued
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn places(total: usize, per_user: usize) -> ScanPlaces {
        ScanPlaces::new(PlaceLimits {
            total,
            per_user,
            max_queued: 100,
            max_queued_per_user: 10,
        })
    }

    /// A fake scanner: the worker's loop, each scan taking `each`, with
    /// the owners in the order their scans started and the most scans of
    /// one owner in flight at once.
    struct Worker {
        task: tokio::task::JoinHandle<()>,
        started: Arc<Mutex<Vec<String>>>,
        most: Arc<Mutex<HashMap<String, usize>>>,
    }

    fn worker(places: &ScanPlaces, each: Duration) -> Worker {
        let started = Arc::new(Mutex::new(Vec::new()));
        let most = Arc::new(Mutex::new(HashMap::new()));
        let (places, started_, most_) = (places.clone(), started.clone(), most.clone());
        let task = tokio::spawn(async move {
            let now: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
            loop {
                let (owner, _, place) = places.next_queued().await;
                let name = owner.to_string();
                started_.lock().unwrap().push(name.clone());
                {
                    let mut now = now.lock().unwrap();
                    let count = now.entry(name.clone()).or_insert(0);
                    *count += 1;
                    let mut most = most_.lock().unwrap();
                    let top = most.entry(name.clone()).or_insert(0);
                    *top = (*top).max(*count);
                }
                let now = now.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(each).await;
                    *now.lock().unwrap().get_mut(&name).unwrap() -= 1;
                    drop(place);
                });
            }
        });
        Worker {
            task,
            started,
            most,
        }
    }

    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not done in time");
    }

    #[tokio::test]
    async fn a_user_with_a_backlog_takes_only_its_share_and_others_go_next() {
        let places = places(2, 1);
        let Worker {
            task,
            started,
            most,
        } = worker(&places, Duration::from_millis(30));
        for _ in 0..6 {
            assert!(places.queue(&user("alice"), ImageId::new()));
        }
        assert!(places.queue(&user("bob"), ImageId::new()));
        until(|| started.lock().unwrap().len() == 7).await;
        let order = started.lock().unwrap().clone();
        // Bob's one image starts at once, beside Alice's first: the second
        // place is free, and Alice may hold only one.
        assert_eq!(&order[..2], ["alice", "bob"], "{order:?}");
        assert_eq!(most.lock().unwrap().get("alice"), Some(&1));
        task.abort();
        until(|| places.shared.lock().in_flight == 0).await;
    }

    #[tokio::test]
    async fn users_with_backlogs_take_turns() {
        let places = places(1, 1);
        // The one place is held while the queue fills.
        let held = places.place(&user("dave")).await;
        for name in ["alice", "alice", "alice", "bob", "bob", "carol"] {
            assert!(places.queue(&user(name), ImageId::new()));
        }
        let Worker { task, started, .. } = worker(&places, Duration::from_millis(5));
        drop(held);
        until(|| started.lock().unwrap().len() == 6).await;
        assert_eq!(
            *started.lock().unwrap(),
            ["alice", "bob", "carol", "alice", "bob", "alice"]
        );
        task.abort();
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_all_and_per_user() {
        let places = ScanPlaces::new(PlaceLimits {
            total: 1,
            per_user: 1,
            max_queued: 3,
            max_queued_per_user: 2,
        });
        // Alice's first is given the place at once, and queues nothing.
        let queued: Vec<bool> = (0..4)
            .map(|_| places.queue(&user("alice"), ImageId::new()))
            .collect();
        assert_eq!(queued, [true, true, true, false]);
        assert_eq!(places.queued(), 2);
        assert!(places.queue(&user("bob"), ImageId::new()));
        // Full: Carol, with nothing queued, takes the place of Alice's
        // newest; then everyone holds one, and Dave finds no room.
        assert!(places.queue(&user("carol"), ImageId::new()), "room made");
        assert_eq!(places.queued(), 3);
        assert_eq!(
            places.shared.lock().queued_by_user.get(&user("alice")),
            Some(&1)
        );
        assert!(!places.queue(&user("dave"), ImageId::new()), "full");
        places.close_queue();
        assert_eq!(places.queued(), 0);
        assert_eq!(places.shared.lock().in_flight, 0, "the ready one too");
        assert!(!places.queue(&user("carol"), ImageId::new()), "stopping");
    }

    #[tokio::test]
    async fn an_image_that_starts_at_once_pushes_no_one_out() {
        let places = ScanPlaces::new(PlaceLimits {
            total: 2,
            per_user: 1,
            max_queued: 2,
            max_queued_per_user: 2,
        });
        // Alice holds one place and fills the queue; one place is free.
        for _ in 0..3 {
            assert!(places.queue(&user("alice"), ImageId::new()));
        }
        assert_eq!(places.queued(), 2);
        // Bob's image takes the free place: Alice's queued ones stay.
        assert!(places.queue(&user("bob"), ImageId::new()));
        assert_eq!(
            places.shared.lock().queued_by_user.get(&user("alice")),
            Some(&2)
        );
        // With no place free, Carol takes the place of Alice's newest.
        assert!(places.queue(&user("carol"), ImageId::new()));
        assert_eq!(
            places.shared.lock().queued_by_user.get(&user("alice")),
            Some(&1)
        );
    }

    #[tokio::test]
    async fn a_caller_over_its_share_waits_behind_other_users() {
        let places = places(2, 1);
        let alice = user("alice");
        let held = places.place(&alice).await;
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for name in ["alice", "alice", "bob"] {
            let (places, order_tx) = (places.clone(), order_tx.clone());
            waiting.push(tokio::spawn(async move {
                let place = places.place(&user(name)).await;
                order_tx.send(name).unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(place);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Bob came last, yet takes the free place: Alice holds her share.
        assert_eq!(order.recv().await, Some("bob"));
        drop(held);
        for task in waiting {
            task.await.unwrap();
        }
        drop(order_tx);
        let mut rest = Vec::new();
        while let Some(name) = order.recv().await {
            rest.push(name);
        }
        assert_eq!(rest, ["alice", "alice"]);
        assert_eq!(places.shared.lock().in_flight, 0);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_the_queue_and_its_place_goes_on() {
        let places = places(1, 1);
        let held = places.place(&user("alice")).await;
        let gave_up =
            tokio::time::timeout(Duration::from_millis(30), places.place(&user("bob"))).await;
        assert!(gave_up.is_err());
        assert!(places.shared.lock().waiting.is_empty());
        let carol = {
            let places = places.clone();
            tokio::spawn(async move { places.place(&user("carol")).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        let place = tokio::time::timeout(Duration::from_secs(5), carol)
            .await
            .expect("carol is given the place")
            .unwrap();
        drop(place);

        // Given a place and dropped before taking it: the place goes on.
        let held = places.place(&user("alice")).await;
        let bob_id = user("bob");
        let mut bob = Box::pin(places.place(&bob_id));
        assert!(futures::poll!(bob.as_mut()).is_pending());
        drop(held);
        assert!(places.shared.lock().granted.len() == 1);
        drop(bob);
        let state = places.shared.lock();
        assert_eq!((state.in_flight, state.granted.len()), (0, 0));
    }
}
