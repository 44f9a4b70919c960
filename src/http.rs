//! The HTTP listener: Prometheus metrics at `/metrics` (unless they have a
//! listener of their own, `--metrics-addr`), and the routes a backend
//! serves itself (the embedded backend's presigned downloads and uploads).
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;

/// How long a request body may take to arrive.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// The whole body, from the request's start.
    pub timeout: Duration,
    /// Bytes per second over every window of `min_rate_grace` (a sliding
    /// window; the first starts with the request); 0: no floor.
    pub min_rate: u64,
    pub min_rate_grace: Duration,
}

/// Marks per window at most: arrivals closer together share one, which
/// makes the window at most this fraction of it shorter (stricter).
const MARKS_PER_WINDOW: u32 = 64;

/// When a body's bytes arrived, as far as the sliding window of the
/// minimum rate needs to know: `(when, bytes received by then)`, oldest
/// first, starting with the request's start and 0.
struct Arrivals {
    marks: VecDeque<(Instant, u64)>,
    received: u64,
}

impl Arrivals {
    fn new(start: Instant) -> Self {
        Self {
            marks: VecDeque::from([(start, 0)]),
            received: 0,
        }
    }

    /// Counts `bytes` arriving at `now`, forgetting marks no window can
    /// end on any more (`need`: the bytes a window must bring).
    fn arrived(&mut self, now: Instant, bytes: u64, window: Duration, need: u64) {
        self.received = self.received.saturating_add(bytes);
        let several = self.marks.len() > 1;
        match self.marks.back_mut() {
            Some((when, count))
                if several && now.duration_since(*when) < window / MARKS_PER_WINDOW =>
            {
                *count = self.received;
            }
            _ => self.marks.push_back((now, self.received)),
        }
        while self
            .marks
            .front()
            .is_some_and(|(_, count)| count.saturating_add(need) <= self.received)
        {
            self.marks.pop_front();
        }
    }
}

impl BodyLimits {
    /// The window the minimum rate is measured over, and the bytes each
    /// window must bring.
    fn window(&self) -> (Duration, u64) {
        let window = self.min_rate_grace.max(Duration::from_secs(1));
        let need = (self.min_rate as f64 * window.as_secs_f64()).ceil() as u64;
        (window, need.max(1))
    }

    /// When the body must have moved on after `arrivals` since the
    /// request's `start`: the whole body's deadline, or sooner the end of
    /// the first window that would bring fewer than `min_rate` × window
    /// bytes should nothing more arrive. Such a window ends one window
    /// after the first mark above `received - need`: from then on the
    /// window starts after it. A body with fewer bytes left than a window
    /// asks for must so finish within the window.
    fn deadline(&self, start: Instant, arrivals: &Arrivals) -> (Instant, BodyTimedOut) {
        let whole = start + self.timeout;
        if self.min_rate == 0 {
            return (whole, BodyTimedOut::Timeout);
        }
        let (window, _) = self.window();
        let since = arrivals.marks.front().map_or(start, |(when, _)| *when);
        let slow = since + window;
        if slow < whole {
            (slow, BodyTimedOut::TooSlow)
        } else {
            (whole, BodyTimedOut::Timeout)
        }
    }
}

/// Routes of the HTTP listener: `backend`'s routes when it has some, with
/// request bodies bounded by `body_limits`; and `/metrics` when
/// `with_metrics`.
pub fn router(backend: Option<Router>, with_metrics: bool, body_limits: BodyLimits) -> Router {
    let backend = backend.map(|routes| {
        routes.layer(axum::middleware::from_fn_with_state(
            body_limits,
            body_deadline,
        ))
    });
    match (backend, with_metrics) {
        (Some(routes), true) => routes.merge(metrics_router()),
        (Some(routes), false) => routes,
        (None, true) => metrics_router(),
        (None, false) => Router::new(),
    }
}

/// The routes of the metrics listener: `/metrics` only.
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(render_metrics))
}

/// Ends the request body at the body timeout after the request started,
/// or sooner when a window of it arrives slower than the minimum rate: a
/// caller that trickles a body, even after a fast start, cannot hold a
/// connection and a staged write for longer. The handler sees the body fail; the caller gets 408 and the
/// connection is closed.
async fn body_deadline(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let expired = Arc::new(OnceLock::new());
    let (parts, body) = request.into_parts();
    let cause = expired.clone();
    let (window, need) = limits.window();
    let arrivals = Arrivals::new(start);
    let body = futures::stream::unfold(Some((body.into_data_stream(), arrivals)), move |state| {
        let cause = cause.clone();
        async move {
            let (mut stream, mut arrivals) = state?;
            let (deadline, why) = limits.deadline(start, &arrivals);
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(bytes))) => {
                    arrivals.arrived(Instant::now(), bytes.len() as u64, window, need);
                    Some((Ok(bytes), Some((stream, arrivals))))
                }
                Ok(Some(Err(error))) => Some((Err(error), None)),
                Ok(None) => None,
                Err(_) => {
                    let _ = cause.set(why);
                    Some((Err(axum::Error::new(why)), None))
                }
            }
        }
    });
    let response = next
        .run(Request::from_parts(parts, Body::from_stream(body)))
        .await;
    if let Some(why) = expired.get() {
        metrics::counter!("imageservice_http_body_timeouts_total", "reason" => why.label())
            .increment(1);
        return (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            why.explanation(),
        )
            .into_response();
    }
    response
}

/// Why a request body was cut.
#[derive(Clone, Copy, Debug, thiserror::Error)]
enum BodyTimedOut {
    #[error("the request body did not arrive in time")]
    Timeout,
    #[error("the request body arrived slower than the minimum rate")]
    TooSlow,
}

impl BodyTimedOut {
    fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::TooSlow => "too_slow",
        }
    }

    fn explanation(self) -> &'static str {
        match self {
            Self::Timeout => "the body did not arrive within the server's body timeout\n",
            Self::TooSlow => "the body arrived slower than the server's minimum rate\n",
        }
    }
}

/// Prometheus text exposition of the process's metrics.
async fn render_metrics() -> Response {
    let body = crate::telemetry::metrics().render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BodyLimits {
        BodyLimits {
            timeout: Duration::from_secs(300),
            min_rate: 500,
            min_rate_grace: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_body_must_bring_its_window_of_bytes_from_the_start() {
        let limits = limits();
        let (window, need) = limits.window();
        assert_eq!((window, need), (Duration::from_secs(10), 5_000));
        let start = Instant::now();
        let mut arrivals = Arrivals::new(start);
        let (deadline, why) = limits.deadline(start, &arrivals);
        assert_eq!(deadline - start, Duration::from_secs(10));
        assert!(matches!(why, BodyTimedOut::TooSlow));
        // Short of a window's bytes: the first window still decides.
        arrivals.arrived(start + Duration::from_secs(4), 4_999, window, need);
        assert_eq!(limits.deadline(start, &arrivals).0 - start, window);
        // A window's worth: the next window ends one window after it.
        arrivals.arrived(start + Duration::from_secs(6), 1, window, need);
        assert_eq!(
            limits.deadline(start, &arrivals).0 - start,
            Duration::from_secs(14)
        );
    }

    #[test]
    fn a_fast_body_that_then_trickles_is_cut_one_window_after_it_slowed() {
        let limits = limits();
        let (window, need) = limits.window();
        let start = Instant::now();
        let mut arrivals = Arrivals::new(start);
        // 50 MB in the first second: on average enough for a day.
        for tenth in 1..=10 {
            arrivals.arrived(
                start + Duration::from_millis(100 * tenth),
                5_000_000,
                window,
                need,
            );
        }
        // Then a byte every 9 s: each window brings 1 or 2 bytes.
        for step in 1..=3 {
            arrivals.arrived(start + Duration::from_secs(1 + 9 * step), 1, window, need);
        }
        let (deadline, why) = limits.deadline(start, &arrivals);
        assert_eq!(deadline - start, Duration::from_secs(11));
        assert!(matches!(why, BodyTimedOut::TooSlow));
        assert!(arrivals.marks.len() <= 5, "{}", arrivals.marks.len());
    }

    #[test]
    fn without_a_floor_the_whole_body_timeout_decides() {
        let limits = BodyLimits {
            min_rate: 0,
            ..limits()
        };
        let start = Instant::now();
        let (deadline, why) = limits.deadline(start, &Arrivals::new(start));
        assert_eq!(deadline - start, Duration::from_secs(300));
        assert!(matches!(why, BodyTimedOut::Timeout));
    }
}
