//! The HTTP listener: Prometheus metrics at `/metrics`, and the routes a
//! backend serves itself (the embedded backend's presigned downloads).
use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Routes of the HTTP listener: `/metrics`, and `backend`'s routes when it
/// has some.
pub fn router(backend: Option<Router>) -> Router {
    let metrics = Router::new().route("/metrics", get(render_metrics));
    match backend {
        Some(routes) => routes.merge(metrics),
        None => metrics,
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
