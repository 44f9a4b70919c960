//! The event stream (`WatchImageEvents`): who may watch, from which
//! cursor, and what one watcher may hold.
//!
//! A watch reads the store's event log a page at a time and hands each
//! event on through a channel of one page: a watcher holds at most two
//! pages of events ([`EVENT_PAGE`] each) however far behind it is. A
//! watcher that takes no event for the stall timeout while one waits is
//! cut, and told the cursor to resume from: the cursor of the last event
//! it was handed, so that nothing is skipped. Events are delivered at
//! least once: a watcher that resumes may see again the events after its
//! cursor that it saw before it was cut.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::event::{ChangeKind, Cursor, EventRead, EventStart, ImageEvent, OLDEST, StoredEvent};
use super::image::Timestamp;
use super::ports::MetadataStore;
use super::{DomainError, UserId};

/// Events read from the store at once, and the most a watcher's channel
/// holds: with the page in hand, a watcher holds at most twice this many
/// events (a record is a few KiB: about a MiB per watcher at worst).
pub const EVENT_PAGE: usize = 100;
/// Most entries of a watch's `types` filter (there are four kinds).
pub const MAX_TYPE_FILTERS: usize = 16;

/// What watchers may do (the `--event-*` flags).
#[derive(Clone, Debug)]
pub struct WatchLimits {
    /// The identities that may watch (`--event-watchers`); empty means
    /// nobody: events name every user's images.
    pub watchers: Vec<UserId>,
    /// Watches open at once on this replica (`--max-event-watchers`).
    pub max_watchers: usize,
    /// How long a watcher may leave an event untaken before it is cut
    /// (`--event-watcher-stall-timeout`).
    pub stall_timeout: Duration,
    /// How often the log is read when nothing wakes the watcher
    /// (`--event-poll-interval`): on stores written by other processes
    /// too, this is the delivery latency.
    pub poll_interval: Duration,
    /// How long events are kept (`--event-retention`).
    pub retention: Duration,
}

/// Which events a watcher wants.
#[derive(Clone, Debug, Default)]
pub struct WatchFilter {
    /// Only this user's images.
    pub owner: Option<UserId>,
    /// Only these kinds; empty means all.
    pub kinds: Vec<ChangeKind>,
}

impl WatchFilter {
    fn matches(&self, event: &ImageEvent) -> bool {
        self.owner.as_ref().is_none_or(|o| *o == event.owner)
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }
}

/// An event as a watcher gets it, with the cursor that resumes after it.
#[derive(Clone, Debug)]
pub struct WatchedEvent {
    pub cursor: String,
    pub event: ImageEvent,
}

/// Why a watch ended.
#[derive(Debug)]
pub enum EndReason {
    /// The server shuts down: watch again on any replica.
    Stopping,
    /// The watcher was too slow, its cursor expired, the store failed.
    Error(DomainError),
}

/// Why a watch ended, with the cursor to resume from.
#[derive(Debug)]
pub struct WatchEnd {
    pub reason: EndReason,
    /// The cursor of the last event handed to the watcher (or the one it
    /// started from): a watch from here misses nothing.
    pub resume: String,
}

/// The stream of one watch: events, then at most one [`WatchEnd`].
pub type EventStream = BoxStream<'static, Result<WatchedEvent, WatchEnd>>;

/// The watch use case over a metadata store's event log.
#[derive(Clone)]
pub struct Watches {
    metadata: Arc<dyn MetadataStore>,
    limits: Arc<WatchLimits>,
    slots: Arc<Semaphore>,
    stop: watch::Sender<bool>,
}

/// Where a watch starts.
enum Start {
    /// After a position of a log with one order.
    Exact(EventStart),
    /// At a time of a log read by time, skipping the event at `skip`.
    Timed {
        from: Timestamp,
        skip: Option<Vec<u8>>,
    },
}

/// A cursor's bytes on a log read by time: the time before which every
/// event was delivered (8 bytes, big-endian microseconds), then the store's
/// position of the event it came with (empty for a start).
/// How far ahead of this replica's clock a cursor's time may be: another
/// replica's clock may run ahead by this much, and no more.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

fn timed_position(from: Timestamp, position: &[u8]) -> Vec<u8> {
    let mut bytes = from.as_micros().to_be_bytes().to_vec();
    bytes.extend_from_slice(position);
    bytes
}

fn split_timed(bytes: &[u8]) -> Option<(Timestamp, &[u8])> {
    let (time, position) = bytes.split_first_chunk::<8>()?;
    let time = i64::from_be_bytes(*time);
    // A time from before 2020, or ahead of this replica's clock by more
    // than replicas' clocks may differ, is no cursor of ours: read from,
    // it would skip every event until then.
    let now = Timestamp::now().as_micros();
    (1_577_836_800_000_000..now.saturating_add(CLOCK_SKEW.as_micros() as i64))
        .contains(&time)
        .then_some((Timestamp::from_micros(time), position))
}

/// How a producer's read ended.
enum Ended {
    /// The watcher went away: nothing to tell.
    Gone,
    /// Tell the watcher this.
    Because(EndReason),
}

impl Watches {
    pub fn new(metadata: Arc<dyn MetadataStore>, limits: WatchLimits) -> Self {
        Self {
            metadata,
            slots: Arc::new(Semaphore::new(limits.max_watchers)),
            limits: Arc::new(limits),
            stop: watch::Sender::new(false),
        }
    }

    /// Ends every watch of this replica (the server drains): each is told
    /// to resume elsewhere from its cursor.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Starts a watch for `caller` from `cursor` (see [`Cursor::parse`]).
    /// Refused: a caller not in `--event-watchers` (`PermissionDenied`),
    /// a malformed cursor (`InvalidArgument`), one past the retention
    /// (`OutOfRange`, with the oldest cursor), a replica at its watcher
    /// cap (`ResourceExhausted`).
    pub async fn watch(
        &self,
        caller: &UserId,
        cursor: &str,
        filter: WatchFilter,
    ) -> Result<EventStream, DomainError> {
        if !self.limits.watchers.contains(caller) {
            return Err(DomainError::PermissionDenied(
                if self.limits.watchers.is_empty() {
                    "events name every user's images: only identities in --event-watchers may \
                 watch them, and this server names none"
                        .into()
                } else {
                    "events name every user's images: only identities in --event-watchers may \
                 watch them"
                        .into()
                },
            ));
        }
        let cursor = Cursor::parse(cursor)?;
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            DomainError::ResourceExhausted(format!(
                "this replica serves its limit of {} event watchers (--max-event-watchers); \
                 retry later or on another replica",
                self.limits.max_watchers
            ))
        })?;
        let lookback = self.metadata.event_lookback();
        // Subscribed before the first read: a write after it wakes the watch.
        let signal = self.metadata.event_signal();
        let (start, resume) = match lookback {
            None => self.exact_start(cursor).await?,
            Some(_) => self.timed_start(cursor)?,
        };
        // The first page is read here, so that a cursor past the retention
        // or of another store is this call's status.
        let first = match &start {
            Start::Exact(start) => read(self.metadata.as_ref(), start).await?,
            Start::Timed { .. } => Vec::new(),
        };
        let (events, ends) = (mpsc::channel(EVENT_PAGE), oneshot::channel());
        let producer = Producer {
            metadata: self.metadata.clone(),
            limits: self.limits.clone(),
            filter,
            stop: self.stop.subscribe(),
            signal,
            events: events.0,
            _slot: slot,
        };
        tokio::spawn(async move {
            let ended = match start {
                Start::Exact(start) => producer.run(start, first).await,
                Start::Timed { from, skip } => {
                    producer
                        .run_timed(from, skip, lookback.unwrap_or_default())
                        .await
                }
            };
            if let Ended::Because(reason) = ended {
                let _ = ends.0.send(reason);
            }
        });
        metrics::gauge!("imageservice_event_watchers").increment(1.0);
        Ok(Box::pin(delivery(events.1, ends.1, resume)))
    }

    /// Where a watch of a log with one order starts, and its first cursor.
    async fn exact_start(&self, cursor: Cursor) -> Result<(Start, String), DomainError> {
        Ok(match cursor {
            Cursor::Now => {
                let head = self.metadata.event_head().await?;
                let resume = Cursor::encode(&head);
                (Start::Exact(EventStart::After(head)), resume)
            }
            Cursor::Oldest => (Start::Exact(EventStart::Oldest), OLDEST.to_owned()),
            Cursor::After(position) => {
                let resume = Cursor::encode(&position);
                (Start::Exact(EventStart::After(position)), resume)
            }
        })
    }

    /// Where a watch of a log read by time starts: a cursor holds the time
    /// before which every event was delivered, and the position of the
    /// event it came with (skipped on resumption).
    fn timed_start(&self, cursor: Cursor) -> Result<(Start, String), DomainError> {
        let now = Timestamp::now();
        let oldest = now.as_micros() - self.limits.retention.as_micros() as i64;
        let (from, skip) = match cursor {
            Cursor::Now => (now, None),
            Cursor::Oldest => (Timestamp::from_micros(oldest), None),
            Cursor::After(bytes) => {
                let (from, position) = split_timed(&bytes).ok_or_else(|| {
                    DomainError::invalid(
                        "cursor is not a cursor this service gave: pass one from an event, \"oldest\" or \"\"",
                    )
                })?;
                if from.as_micros() < oldest {
                    return Err(DomainError::OutOfRange(format!(
                        "the cursor is older than the events retained (--event-retention): \
                         events after it may be gone; the oldest cursor is {}",
                        Cursor::encode(&timed_position(
                            Timestamp::from_micros(oldest.saturating_add(1_000_000)),
                            &[]
                        ))
                    )));
                }
                (from, (!position.is_empty()).then(|| position.to_vec()))
            }
        };
        let resume = Cursor::encode(&timed_position(from, skip.as_deref().unwrap_or_default()));
        Ok((Start::Timed { from, skip }, resume))
    }

    /// Removes the events older than the retention, every quarter of it
    /// (at least every 100 ms, at most every minute), for stores that do
    /// not expire them by themselves.
    pub async fn sweep_periodically(self) {
        let every =
            (self.limits.retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let older_than = Timestamp::from_micros(
                Timestamp::now().as_micros() - self.limits.retention.as_micros() as i64,
            );
            match self.metadata.remove_expired_events(older_than).await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, "expired events removed"),
                Err(error) => tracing::warn!(
                    error = %crate::telemetry::error_chain(&error),
                    "could not remove expired events; retrying at the next sweep"
                ),
            }
        }
    }
}

/// One page of the log from `start`; an expired or foreign position is the
/// caller's error.
async fn read(
    metadata: &dyn MetadataStore,
    start: &EventStart,
) -> Result<Vec<StoredEvent>, DomainError> {
    match metadata.read_events(start, EVENT_PAGE).await? {
        EventRead::Events(events) => Ok(events),
        EventRead::Expired { oldest } => Err(DomainError::OutOfRange(format!(
            "the cursor is older than the events retained (--event-retention): events after \
             it may be gone; the oldest cursor is {}",
            Cursor::encode(&oldest)
        ))),
        EventRead::Malformed => Err(DomainError::invalid(
            "cursor is not a cursor this service gave: pass one from an event, \"oldest\" or \"\"",
        )),
    }
}

/// What reads the log for one watcher.
struct Producer {
    metadata: Arc<dyn MetadataStore>,
    limits: Arc<WatchLimits>,
    filter: WatchFilter,
    stop: watch::Receiver<bool>,
    signal: Option<watch::Receiver<u64>>,
    events: mpsc::Sender<WatchedEvent>,
    /// The watcher's place among this replica's watchers, held while the
    /// log is read for it.
    _slot: OwnedSemaphorePermit,
}

impl Producer {
    async fn run(mut self, mut start: EventStart, first: Vec<StoredEvent>) -> Ended {
        let mut page = first;
        loop {
            if page.is_empty() {
                tokio::select! {
                    () = self.events.closed() => return Ended::Gone,
                    _ = self.stop.wait_for(|stop| *stop) => return draining(),
                    () = wake(&mut self.signal, self.limits.poll_interval) => {}
                }
            }
            for stored in page {
                start = EventStart::After(stored.position.clone());
                if !self.filter.matches(&stored.event) {
                    continue;
                }
                let event = WatchedEvent {
                    cursor: Cursor::encode(&stored.position),
                    event: stored.event,
                };
                if let Some(ended) = self.hand_on(event).await {
                    return ended;
                }
            }
            if *self.stop.borrow() {
                return draining();
            }
            // Seen before the read: a write after it wakes the next wait.
            if let Some(signal) = &mut self.signal {
                signal.borrow_and_update();
            }
            page = match read(self.metadata.as_ref(), &start).await {
                Ok(page) => page,
                Err(error) => return Ended::Because(EndReason::Error(error)),
            };
        }
    }
}

impl Producer {
    /// Reads a log by time: every poll reads from `from` to the end, in
    /// pages, and hands on the events not seen yet; after a poll that
    /// started at `t`, every event written before `t - lookback` has been
    /// read, so the next poll starts there. The events of the last
    /// `lookback` are remembered, so that each is handed on once.
    async fn run_timed(
        mut self,
        mut from: Timestamp,
        skip: Option<Vec<u8>>,
        lookback: Duration,
    ) -> Ended {
        let lookback_micros = lookback.as_micros() as i64;
        let mut seen: HashMap<Vec<u8>, Timestamp> = HashMap::new();
        if let Some(skip) = skip {
            seen.insert(skip, from);
        }
        loop {
            let started = Timestamp::now();
            let complete = Timestamp::from_micros(started.as_micros() - lookback_micros);
            let mut start = EventStart::Since(from);
            loop {
                let page = match read(self.metadata.as_ref(), &start).await {
                    Ok(page) => page,
                    Err(error) => return Ended::Because(EndReason::Error(error)),
                };
                let full = page.len() == EVENT_PAGE;
                for stored in page {
                    start = EventStart::After(stored.position.clone());
                    if seen.contains_key(&stored.position) {
                        continue;
                    }
                    let time = stored.event.time;
                    if time >= complete {
                        seen.insert(stored.position.clone(), time);
                    }
                    if !self.filter.matches(&stored.event) {
                        continue;
                    }
                    // Every event before this one's time, or before the
                    // poll's complete part, has been handed on.
                    let delivered = time.min(complete).max(from);
                    let event = WatchedEvent {
                        cursor: Cursor::encode(&timed_position(delivered, &stored.position)),
                        event: stored.event,
                    };
                    if let Some(ended) = self.hand_on(event).await {
                        return ended;
                    }
                }
                if !full {
                    break;
                }
            }
            from = from.max(complete);
            seen.retain(|_, time| *time >= from);
            if *self.stop.borrow() {
                return draining();
            }
            tokio::select! {
                () = self.events.closed() => return Ended::Gone,
                _ = self.stop.wait_for(|stop| *stop) => return draining(),
                () = tokio::time::sleep(self.limits.poll_interval) => {}
            }
        }
    }

    /// Hands one event to the watcher, waiting up to the stall timeout.
    async fn hand_on(&self, event: WatchedEvent) -> Option<Ended> {
        match self
            .events
            .send_timeout(event, self.limits.stall_timeout)
            .await
        {
            Ok(()) => None,
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Some(Ended::Gone),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                metrics::counter!("imageservice_event_watchers_cut_total").increment(1);
                Some(Ended::Because(EndReason::Error(
                    DomainError::ResourceExhausted(format!(
                        "the watcher took no event for {} (--event-watcher-stall-timeout) and \
                         was cut",
                        humantime::format_duration(self.limits.stall_timeout)
                    )),
                )))
            }
        }
    }
}

fn draining() -> Ended {
    Ended::Because(EndReason::Stopping)
}

/// Waits for a write this process signals, or for the poll interval.
async fn wake(signal: &mut Option<watch::Receiver<u64>>, poll: Duration) {
    match signal {
        Some(signal) => {
            tokio::select! {
                changed = signal.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(poll).await;
                    }
                }
                () = tokio::time::sleep(poll) => {}
            }
        }
        None => tokio::time::sleep(poll).await,
    }
}

/// The watcher's side: the events handed over, then the end if there is
/// one, carrying the cursor of the last event handed over. An end cuts
/// what waits in the channel: the watcher resumes before it.
fn delivery(
    events: mpsc::Receiver<WatchedEvent>,
    ends: oneshot::Receiver<EndReason>,
    resume: String,
) -> impl futures::Stream<Item = Result<WatchedEvent, WatchEnd>> {
    struct State {
        events: mpsc::Receiver<WatchedEvent>,
        ends: Option<oneshot::Receiver<EndReason>>,
        resume: String,
        _counted: Counted,
    }
    let state = State {
        events,
        ends: Some(ends),
        resume,
        _counted: Counted,
    };
    futures::stream::unfold(state, |mut state| async move {
        let mut ends = state.ends.take()?;
        let end = tokio::select! {
            biased;
            end = &mut ends => end.ok(),
            event = state.events.recv() => match event {
                Some(event) => {
                    state.resume.clone_from(&event.cursor);
                    state.ends = Some(ends);
                    return Some((Ok(event), state));
                }
                // The producer is gone: its reason, if it left one.
                None => ends.await.ok(),
            },
        };
        let reason = end?;
        let resume = state.resume.clone();
        Some((Err(WatchEnd { reason, resume }), state))
    })
}

/// Counts a watch in the watchers gauge until its stream goes.
struct Counted;

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::gauge!("imageservice_event_watchers").decrement(1.0);
    }
}
