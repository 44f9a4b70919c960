//! Presigned downloads of the embedded backend, served by the HTTP
//! listener (with `Range` support): the URLs [`super::urls`] signs point
//! here.
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::EmbeddedBlobStore;
use super::urls::UrlQuery;
use crate::domain::image::Timestamp;
use crate::domain::ports::{BlobStore, ObjectKey, StorageError};
use crate::domain::{ImageId, VariantName};

/// The download route, over `store`.
pub fn routes(store: Arc<EmbeddedBlobStore>) -> Router {
    Router::new()
        .route(
            "/blobs/images/{image_id}/{variant}",
            get(presigned_download),
        )
        .with_state(store)
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn presigned_download(
    State(store): State<Arc<EmbeddedBlobStore>>,
    Path((image_id, variant)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Ok(query) = serde_urlencoded::from_str::<UrlQuery>(query.as_deref().unwrap_or("")) else {
        return plain(
            StatusCode::FORBIDDEN,
            "invalid or incomplete download URL\n",
        );
    };
    let (Ok(id), Ok(variant)) = (ImageId::parse(&image_id), VariantName::parse(&variant)) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let key = ObjectKey::new(&id, &variant);
    let now = Timestamp::now();
    let grant = match store.urls().verify(key.as_str(), &query, now) {
        Ok(grant) => grant,
        Err(error) => {
            tracing::debug!(%error, key = key.as_str(), "refused a presigned download");
            return plain(
                StatusCode::FORBIDDEN,
                "the download URL is invalid or has expired\n",
            );
        }
    };
    let size = match store.size(&key).await {
        Ok(size) => size,
        Err(StorageError::NotFound) => return plain(StatusCode::NOT_FOUND, "not found\n"),
        Err(error) => {
            tracing::error!(%error, "presigned download failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };

    let mut status = StatusCode::OK;
    let (mut offset, mut length) = (0, size);
    if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        // Malformed ranges are ignored (the whole object is sent), as HTTP
        // allows; several ranges are also answered with the whole object.
        if let Ok(parsed) = http_range_header::parse_range_header(range) {
            match parsed.validate(size) {
                Ok(ranges) if ranges.len() == 1 => {
                    offset = *ranges[0].start();
                    length = ranges[0].end() - offset + 1;
                    status = StatusCode::PARTIAL_CONTENT;
                }
                Ok(_) => {}
                Err(_) => {
                    return (
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                    )
                        .into_response();
                }
            }
        }
    }
    let body = match store.read(&key, offset, length).await {
        Ok(stream) => Body::from_stream(stream),
        Err(StorageError::NotFound) => return plain(StatusCode::NOT_FOUND, "not found\n"),
        Err(error) => {
            tracing::error!(%error, "presigned download failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };

    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    let value = |text: &str| {
        HeaderValue::from_str(text)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
    };
    h.insert(header::CONTENT_TYPE, value(&grant.content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let max_age = (grant.expires - now.as_micros() / 1_000_000).max(0);
    h.insert(
        header::CACHE_CONTROL,
        value(&format!("private, max-age={max_age}")),
    );
    if let Ok(disposition) = HeaderValue::from_str(&grant.disposition.header_value(&grant.filename))
    {
        h.insert(header::CONTENT_DISPOSITION, disposition);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let end = offset + length - 1;
        h.insert(
            header::CONTENT_RANGE,
            value(&format!("bytes {offset}-{end}/{size}")),
        );
    }
    response
}
