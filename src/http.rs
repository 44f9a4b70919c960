//! The HTTP listener: Prometheus metrics at `/metrics` (unless they have a
//! listener of their own, `--metrics-addr`), and the routes a backend
//! serves itself (the embedded backend's presigned downloads and uploads).
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;

/// Routes of the HTTP listener: `backend`'s routes when it has some, with
/// request bodies bounded by `body_timeout`; and `/metrics` when
/// `with_metrics`.
pub fn router(backend: Option<Router>, with_metrics: bool, body_timeout: Duration) -> Router {
    let backend = backend.map(|routes| {
        routes.layer(axum::middleware::from_fn_with_state(
            body_timeout,
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

/// Ends the request body at `timeout` after the request started: a caller
/// that trickles a body cannot hold a connection and a staged write for
/// longer. The handler sees the body fail; the caller gets 408.
async fn body_deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let deadline = tokio::time::Instant::now() + timeout;
    let expired = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let flag = expired.clone();
    let body = futures::stream::unfold(Some(body.into_data_stream()), move |stream| {
        let flag = flag.clone();
        async move {
            let mut stream = stream?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(item)) => Some((item, Some(stream))),
                Ok(None) => None,
                Err(_) => {
                    flag.store(true, Ordering::Release);
                    Some((Err(axum::Error::new(BodyTimedOut)), None))
                }
            }
        }
    });
    let response = next
        .run(Request::from_parts(parts, Body::from_stream(body)))
        .await;
    if expired.load(Ordering::Acquire) {
        metrics::counter!("imageservice_http_body_timeouts_total").increment(1);
        return (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            "the body did not arrive within the server's body timeout\n",
        )
            .into_response();
    }
    response
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

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
