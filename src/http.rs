//! The HTTP listener: Prometheus metrics at `/metrics` (unless they have a
//! listener of their own, `--metrics-addr`), and the routes a backend
//! serves itself (the embedded backend's presigned downloads and uploads).
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
    /// Bytes per second on average from the request's start, once
    /// `min_rate_grace` has passed; 0: no floor.
    pub min_rate: u64,
    pub min_rate_grace: Duration,
}

impl BodyLimits {
    /// When the body must have moved on, `received` bytes after the
    /// request's `start`: the whole body's deadline, or sooner the point
    /// where the bytes so far fall below the minimum rate (the grace,
    /// plus one second per `min_rate` bytes received, as Apache's
    /// mod_reqtimeout counts).
    fn deadline(&self, start: Instant, received: u64) -> (Instant, BodyTimedOut) {
        let whole = start + self.timeout;
        if self.min_rate == 0 {
            return (whole, BodyTimedOut::Timeout);
        }
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        let slow = start + self.min_rate_grace.saturating_add(earned);
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
/// or sooner when it arrives slower than the minimum rate: a caller that
/// trickles a body cannot hold a connection and a staged write for
/// longer. The handler sees the body fail; the caller gets 408 and the
/// connection is closed.
async fn body_deadline(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let expired = Arc::new(OnceLock::new());
    let (parts, body) = request.into_parts();
    let cause = expired.clone();
    let body = futures::stream::unfold(Some((body.into_data_stream(), 0u64)), move |state| {
        let cause = cause.clone();
        async move {
            let (mut stream, received) = state?;
            let (deadline, why) = limits.deadline(start, received);
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(bytes))) => {
                    let received = received.saturating_add(bytes.len() as u64);
                    Some((Ok(bytes), Some((stream, received))))
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

    #[test]
    fn a_body_earns_a_second_per_min_rate_bytes_after_the_grace() {
        let limits = BodyLimits {
            timeout: Duration::from_secs(300),
            min_rate: 500,
            min_rate_grace: Duration::from_secs(10),
        };
        let start = Instant::now();
        let (deadline, why) = limits.deadline(start, 0);
        assert_eq!(deadline - start, Duration::from_secs(10));
        assert!(matches!(why, BodyTimedOut::TooSlow));
        let (deadline, _) = limits.deadline(start, 5_000);
        assert_eq!(deadline - start, Duration::from_secs(20));
        // Fast enough for long enough: the whole body's timeout decides.
        let (deadline, why) = limits.deadline(start, 1_000_000);
        assert_eq!(deadline - start, Duration::from_secs(300));
        assert!(matches!(why, BodyTimedOut::Timeout));
        let (deadline, why) = BodyLimits {
            min_rate: 0,
            ..limits
        }
        .deadline(start, 0);
        assert_eq!(deadline - start, Duration::from_secs(300));
        assert!(matches!(why, BodyTimedOut::Timeout));
    }
}
