//! `imageservice.v1.ImageService`.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::RETRY_PUSHBACK;
use super::auth::{Authenticator, Identified};
use super::convert;
use super::request_memory::UploadMessages;
use super::response_memory::HeldMemory;
use crate::domain::budget::Reservation;
use crate::domain::erasure::Erasures;
use crate::domain::images::{BatchUrl, DownloadRequest, UrlRequest};
use crate::domain::upload::message_bound;
use crate::domain::usage::QuotaOverride;
use crate::domain::watch::{EndReason, WatchEnd, Watches};
use crate::domain::{DomainError, Images, UserId};
use crate::listener::PeerInfo;
use crate::pb;
use crate::pb::image_service_server::ImageService;

/// Metadata key of the request id: taken from the caller or generated, and
/// returned on every response.
pub const REQUEST_ID: &str = "x-request-id";
/// The service's full name, as in traces.
const SERVICE: &str = "imageservice.v1.ImageService";

/// What one call may hold.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    /// Calls running at once over all connections; more are refused with
    /// UNAVAILABLE (load shedding: a retry elsewhere beats a queue here).
    pub max_in_flight: usize,
}

/// The trailer (and status detail in the message) that carries the cursor
/// a cut or ended `WatchImageEvents` stream resumes from.
pub const RESUME_CURSOR: &str = "x-resume-cursor";

/// The gRPC face of [`Images`] and [`Watches`].
#[derive(Clone)]
pub struct ImageApi {
    pub(super) images: Images,
    erasures: Erasures,
    watches: Watches,
    auth: Arc<Authenticator>,
    limits: CallLimits,
    in_flight: Arc<Semaphore>,
    /// The service's full name, as in traces.
    service: &'static str,
}

impl ImageApi {
    pub fn new(
        images: Images,
        erasures: Erasures,
        watches: Watches,
        auth: Arc<Authenticator>,
        limits: CallLimits,
    ) -> Self {
        Self {
            images,
            erasures,
            watches,
            auth,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            limits,
            service: SERVICE,
        }
    }

    /// The same calls' machinery (identity, calls in flight, memory,
    /// traces) for another service of the package, named `service`.
    pub(super) fn for_service(&self, service: &'static str) -> Self {
        Self {
            service,
            ..self.clone()
        }
    }

    /// A place among the calls in flight, or UNAVAILABLE at once.
    fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.in_flight.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("imageservice_calls_shed_total").increment(1);
            Status::unavailable(format!(
                "the server is at its limit of {} calls in flight (--max-in-flight-calls); retry",
                self.limits.max_in_flight
            ))
        })
    }

    /// Runs one call inside a span carrying its method and request id,
    /// counts it by status code, times it, and returns the request id to
    /// the caller (on success and on error).
    pub(super) async fn observe<T, Call, Fut>(
        &self,
        method: &'static str,
        metadata: &MetadataMap,
        call: Call,
    ) -> Result<Response<T>, Status>
    where
        Call: FnOnce(OwnedSemaphorePermit) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let span = tracing::info_span!(
            "grpc",
            otel.name = format!("{}/{method}", self.service),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = self.service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            method,
            trace_id = tracing::field::Empty,
            request_id = tracing::field::Empty,
            user = tracing::field::Empty,
        );
        // The caller's trace continues here (or one starts); its id is in
        // every log line of the call, and is the request id when the
        // caller sent none.
        let trace_id = crate::telemetry::trace::continue_trace(&span, metadata).to_string();
        let request_id = metadata
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| {
                !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
            })
            .map(str::to_owned)
            .unwrap_or_else(|| trace_id.clone());
        span.record("trace_id", trace_id.as_str());
        span.record("request_id", request_id.as_str());
        let start = Instant::now();
        // The call holds its place among the calls in flight; a streamed
        // response takes it along for as long as it lasts.
        let mut result = match self.admit() {
            Ok(in_flight) => call(in_flight).instrument(span.clone()).await,
            Err(status) => Err(status),
        };
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        span.record("rpc.grpc.status_code", code as i32);
        if server_fault(code) {
            span.record("otel.status_code", "ERROR");
        }
        metrics::counter!("imageservice_grpc_requests_total", "method" => method, "code" => code_name(code))
            .increment(1);
        metrics::histogram!("imageservice_grpc_request_duration_seconds", "method" => method)
            .record(start.elapsed().as_secs_f64());
        if let Ok(value) = MetadataValue::try_from(request_id.as_str()) {
            match &mut result {
                Ok(response) => response.metadata_mut().insert(REQUEST_ID, value),
                Err(status) => status.metadata_mut().insert(REQUEST_ID, value),
            };
        }
        result
    }

    /// Reserves `bytes` from the memory budget, counted against the
    /// caller's share, before a large response is made (a listing, a
    /// batch): many made at once would otherwise hold memory outside the
    /// budget before any of it was counted.
    pub(super) async fn reserve_response(
        &self,
        caller: &UserId,
        bytes: u64,
    ) -> Result<Reservation, Status> {
        Ok(self
            .images
            .memory()
            .reserve_for(caller, bytes, "this response")
            .await?)
    }

    /// `message` as the response, its encoded size reserved from the memory
    /// budget (counted against the caller's share) until it has been sent:
    /// a caller that does not read its responses holds memory like one that
    /// does not read its downloads (see [`super::response_memory`]).
    pub(super) async fn respond<T: prost::Message>(
        &self,
        caller: &UserId,
        message: T,
    ) -> Result<Response<T>, Status> {
        self.respond_within(caller, None, message).await
    }

    /// The acknowledgement of a write already done (an upload committed):
    /// its encoded size reserved from the memory budget but not refused
    /// past the caller's share, since refusing it would not undo the write,
    /// only hide it from the caller. It is one small message per upload,
    /// and uploads in progress are bounded per user.
    async fn acknowledge<T: prost::Message>(&self, message: T) -> Result<Response<T>, Status> {
        let bytes = message.encoded_len() as u64;
        let memory = self
            .images
            .memory()
            .reserve(bytes, "this acknowledgement")
            .await?;
        let mut response = Response::new(message);
        response.extensions_mut().insert(HeldMemory::new(memory));
        Ok(response)
    }

    /// [`ImageApi::respond`] with what was reserved before the response was
    /// made, grown or shrunk to its encoded size.
    pub(super) async fn respond_within<T: prost::Message>(
        &self,
        caller: &UserId,
        reserved: Option<Reservation>,
        message: T,
    ) -> Result<Response<T>, Status> {
        let bytes = message.encoded_len() as u64;
        let memory = match reserved {
            Some(mut memory) => {
                let budget = self.images.memory();
                budget.grow(&mut memory, bytes, "this response").await?;
                memory.shrink_to(bytes);
                memory
            }
            None if bytes == 0 => return Ok(Response::new(message)),
            None => self.reserve_response(caller, bytes).await?,
        };
        let mut response = Response::new(message);
        response.extensions_mut().insert(HeldMemory::new(memory));
        Ok(response)
    }

    /// The caller, recorded on the call's span: the one the request layer
    /// identified at the headers, or (a call that did not pass it) the one
    /// its metadata names.
    async fn caller(
        &self,
        metadata: &MetadataMap,
        peer: Option<&PeerInfo>,
        identified: Option<&Identified>,
    ) -> Result<UserId, Status> {
        let user = match identified {
            Some(Identified(user)) => user.clone(),
            None => self.auth.authenticate(metadata, peer).await?,
        };
        tracing::Span::current().record("user", user.as_str());
        Ok(user)
    }

    /// The caller of `request` (see [`ImageApi::caller`]).
    pub(super) async fn caller_of<T>(&self, request: &Request<T>) -> Result<UserId, Status> {
        let identified = request.extensions().get();
        self.caller(request.metadata(), peer_of(request), identified)
            .await
    }
}

/// Whether a status is the server's failure rather than the caller's
/// (OpenTelemetry's convention for the status of a gRPC server span).
fn server_fault(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable
    )
}

/// The canonical name of a status code, as a metric label.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A failure of the incoming upload stream itself. The request layer
/// ([`crate::grpc::request_memory`]) ends a message too large, without
/// room, or not arriving: the caller gets its status as it was.
fn stream_error(status: Status) -> DomainError {
    let message = status.message().to_owned();
    match status.code() {
        tonic::Code::Cancelled => DomainError::Cancelled,
        tonic::Code::DeadlineExceeded => DomainError::DeadlineExceeded(message),
        tonic::Code::ResourceExhausted if status.metadata().get(RETRY_PUSHBACK).is_some() => {
            DomainError::TooLarge(message)
        }
        tonic::Code::ResourceExhausted => DomainError::ResourceExhausted(message),
        _ => DomainError::invalid(format!("the upload stream failed: {message}")),
    }
}

/// Counts uploads in progress for as long as it lives.
struct UploadInProgress;

impl UploadInProgress {
    fn start() -> Self {
        metrics::gauge!("imageservice_uploads_in_progress").increment(1.0);
        Self
    }
}

impl Drop for UploadInProgress {
    fn drop(&mut self) {
        metrics::gauge!("imageservice_uploads_in_progress").decrement(1.0);
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadImageResponse, Status>> + Send>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchImageEventsResponse, Status>> + Send>>;

/// The status that ends a watch: its message names the cursor to resume
/// from, and so does the [`RESUME_CURSOR`] trailer.
fn watch_end(end: WatchEnd) -> Status {
    let status = match end.reason {
        EndReason::Stopping => Status::unavailable("the server is shutting down"),
        EndReason::Error(error) => Status::from(error),
    };
    let mut metadata = status.metadata().clone();
    if let Ok(value) = MetadataValue::try_from(end.resume.as_str()) {
        metadata.insert(RESUME_CURSOR, value);
    }
    Status::with_metadata(
        status.code(),
        format!(
            "{}: watch again from cursor {} (also in the {RESUME_CURSOR} trailer)",
            status.message(),
            end.resume
        ),
        metadata,
    )
}

/// The peer of the connection a request came on.
fn peer_of<T>(request: &Request<T>) -> Option<&PeerInfo> {
    request.extensions().get::<PeerInfo>()
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn upload_image(
        &self,
        request: Request<Streaming<pb::UploadImageRequest>>,
    ) -> Result<Response<pb::UploadImageResponse>, Status> {
        let metadata = request.metadata().clone();
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let identified = request.extensions().get::<Identified>().cloned();
        let counted = request.extensions().get::<UploadMessages>().cloned();
        self.observe("UploadImage", &metadata, |_in_flight| async {
            let caller = self
                .caller(&metadata, peer.as_ref(), identified.as_ref())
                .await?;
            let _in_progress = UploadInProgress::start();
            let mut first = true;
            let frames = request.into_inner().map(move |message| {
                match &message {
                    Ok(pb::UploadImageRequest {
                        data: Some(pb::upload_image_request::Data::Chunk(chunk)),
                        ..
                    }) => {
                        metrics::counter!("imageservice_upload_bytes_total")
                            .increment(chunk.len() as u64);
                    }
                    // The working set of a new image counts one message
                    // of its declared size (a resumed session's stream
                    // counts none: the request layer reserves each).
                    Ok(pb::UploadImageRequest {
                        data: Some(pb::upload_image_request::Data::Spec(spec)),
                        ..
                    }) if first => {
                        if let Some(counted) = &counted {
                            let declared =
                                spec.expected_size.map(|n| u64::try_from(n).unwrap_or(0));
                            counted.counted(message_bound(declared));
                        }
                    }
                    _ => {}
                }
                first = false;
                message.map(convert::upload_frame).map_err(stream_error)
            });
            let record = self.images.upload(&caller, frames).await?;
            tracing::info!(image_id = %record.id, size = record.size_bytes, "image uploaded");
            self.acknowledge(pb::UploadImageResponse {
                image: Some(convert::image(&record, &caller)),
            })
            .await
        })
        .await
    }

    async fn get_image(
        &self,
        request: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        self.observe("GetImage", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let record = self
                .images
                .get(&caller, &request.get_ref().image_id)
                .await?;
            self.respond(
                &caller,
                pb::GetImageResponse {
                    image: Some(convert::image(&record, &caller)),
                },
            )
            .await
        })
        .await
    }

    async fn batch_get_images(
        &self,
        request: Request<pb::BatchGetImagesRequest>,
    ) -> Result<Response<pb::BatchGetImagesResponse>, Status> {
        self.observe("BatchGetImages", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let r = request.get_ref();
            let url = if r.url_variant.is_empty() {
                None
            } else {
                Some(BatchUrl {
                    variant: r.url_variant.clone(),
                    accept: r.accept.clone(),
                    expires_in: convert::expires_in(r.expires_in)?,
                    disposition: convert::disposition(r.disposition)?,
                })
            };
            let memory = self
                .reserve_response(&caller, self.images.page_memory())
                .await?;
            let found = self.images.batch_get(&caller, &r.image_ids, url).await?;
            self.respond_within(
                &caller,
                Some(memory),
                pb::BatchGetImagesResponse {
                    images: found
                        .images
                        .iter()
                        .map(|(record, url)| pb::BatchImage {
                            image: Some(convert::image(record, &caller)),
                            url: url.as_ref().map(|u| u.url.url.clone()).unwrap_or_default(),
                            url_expire_time: url
                                .as_ref()
                                .map(|u| convert::timestamp(u.url.expire_time)),
                            content_type: url
                                .as_ref()
                                .map(|u| u.content_type.clone())
                                .unwrap_or_default(),
                        })
                        .collect(),
                    missing_image_ids: found.missing,
                    unprocessed_image_ids: found.unprocessed,
                },
            )
            .await
        })
        .await
    }

    async fn list_images(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        self.observe("ListImages", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let query = convert::list_request(request.get_ref().clone())?;
            let memory = self
                .reserve_response(&caller, self.images.page_memory())
                .await?;
            let page = self.images.list(&caller, &query).await?;
            self.respond_within(
                &caller,
                Some(memory),
                pb::ListImagesResponse {
                    images: page
                        .images
                        .iter()
                        .map(|record| convert::image(record, &caller))
                        .collect(),
                    next_page_token: page.next_page_token,
                },
            )
            .await
        })
        .await
    }

    type DownloadImageStream = DownloadStream;

    async fn download_image(
        &self,
        request: Request<pb::DownloadImageRequest>,
    ) -> Result<Response<Self::DownloadImageStream>, Status> {
        self.observe("DownloadImage", request.metadata(), |in_flight| async {
            let caller = self.caller_of(&request).await?;
            let r = request.get_ref();
            let wanted = DownloadRequest {
                image_id: &r.image_id,
                variant: &r.variant,
                accept: &r.accept,
                object: &r.object,
                offset: r.read_offset,
                limit: r.read_limit,
            };
            let download = self.images.download(&caller, &wanted).await?;
            let header = pb::DownloadImageResponse {
                image: Some(convert::image(&download.image, &caller)),
                content_range: Some(pb::ContentRange {
                    offset: download.offset as i64,
                    length: download.length as i64,
                    total_size: download.total_size as i64,
                }),
                chunk: Default::default(),
                content_type: download.content_type.clone(),
                object: download.object.to_string(),
            };
            let chunks = download.chunks.map(|chunk| {
                chunk
                    .map(|chunk| {
                        metrics::counter!("imageservice_download_bytes_total")
                            .increment(chunk.len() as u64);
                        pb::DownloadImageResponse {
                            chunk,
                            ..Default::default()
                        }
                    })
                    .map_err(Status::from)
            });
            // The stream outlives this handler: it keeps the call's place
            // among the calls in flight for as long as it is open.
            let stream: DownloadStream = Box::pin(
                futures::stream::once(async { Ok(header) })
                    .chain(chunks)
                    .map(move |message| {
                        let _held = &in_flight;
                        message
                    }),
            );
            // Its memory is the stream's; the layer ends it, and its
            // call's count, once it is not read for the stall timeout.
            let mut response = Response::new(stream);
            response
                .extensions_mut()
                .insert(HeldMemory::new(Reservation::none()));
            Ok(response)
        })
        .await
    }

    async fn get_download_url(
        &self,
        request: Request<pb::GetDownloadUrlRequest>,
    ) -> Result<Response<pb::GetDownloadUrlResponse>, Status> {
        self.observe("GetDownloadUrl", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let r = request.get_ref();
            let expires_in = convert::expires_in(r.expires_in)?;
            let disposition = convert::disposition(r.disposition)?;
            let wanted = UrlRequest {
                image_id: &r.image_id,
                variant: &r.variant,
                accept: &r.accept,
                expires_in,
                disposition,
            };
            let url = self.images.download_url(&caller, &wanted).await?;
            self.respond(
                &caller,
                pb::GetDownloadUrlResponse {
                    url: url.url.url,
                    expire_time: Some(convert::timestamp(url.url.expire_time)),
                    content_type: url.content_type,
                },
            )
            .await
        })
        .await
    }

    async fn update_image(
        &self,
        request: Request<pb::UpdateImageRequest>,
    ) -> Result<Response<pb::UpdateImageResponse>, Status> {
        self.observe("UpdateImage", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let r = request.get_ref().clone();
            let image_id = r.image_id.clone();
            let update = convert::image_update(r)?;
            let record = self.images.update(&caller, &image_id, update).await?;
            self.respond(
                &caller,
                pb::UpdateImageResponse {
                    image: Some(convert::image(&record, &caller)),
                },
            )
            .await
        })
        .await
    }

    async fn delete_image(
        &self,
        request: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        self.observe("DeleteImage", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            self.images
                .delete(&caller, &request.get_ref().image_id)
                .await?;
            tracing::info!(image_id = %request.get_ref().image_id, "image deleted");
            Ok(Response::new(pb::DeleteImageResponse {}))
        })
        .await
    }

    type WatchImageEventsStream = WatchStream;

    async fn watch_image_events(
        &self,
        request: Request<pb::WatchImageEventsRequest>,
    ) -> Result<Response<Self::WatchImageEventsStream>, Status> {
        // A watch does not keep a place among the calls in flight (it may
        // last for days): the watchers' own cap bounds them.
        self.observe("WatchImageEvents", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let r = request.get_ref();
            let filter = convert::watch_filter(&r.owner_id, &r.types)?;
            let events = self.watches.watch(&caller, &r.cursor, filter).await?;
            tracing::info!(cursor = %r.cursor, "event watch started");
            let stream: WatchStream = Box::pin(events.map(move |item| match item {
                Ok(watched) => Ok(pb::WatchImageEventsResponse {
                    event: Some(convert::event(watched, &caller)),
                }),
                Err(end) => {
                    tracing::info!(resume = %end.resume, reason = ?end.reason, "event watch ended");
                    Err(watch_end(end))
                }
            }));
            // What the stream holds is bounded by the watch itself (two
            // pages of events); the layer ends it, like a download, once it
            // is not read for the stall timeout.
            let mut response = Response::new(stream);
            response
                .extensions_mut()
                .insert(HeldMemory::new(Reservation::none()));
            Ok(response)
        })
        .await
    }

    async fn start_upload(
        &self,
        request: Request<pb::StartUploadRequest>,
    ) -> Result<Response<pb::StartUploadResponse>, Status> {
        self.observe("StartUpload", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let r = request.get_ref().clone();
            let spec = r
                .spec
                .map(convert::new_image)
                .ok_or_else(|| DomainError::invalid("spec is required"))?;
            let session = self
                .images
                .uploads()
                .start_session(&caller, spec, r.expected_size)
                .await?;
            tracing::info!(upload_id = %session.id, "upload session started");
            self.respond(
                &caller,
                pb::StartUploadResponse {
                    session: Some(pb::UploadSession {
                        upload_id: session.id.to_string(),
                        expire_time: Some(convert::timestamp(session.expire_time)),
                    }),
                },
            )
            .await
        })
        .await
    }

    async fn query_upload_status(
        &self,
        request: Request<pb::QueryUploadStatusRequest>,
    ) -> Result<Response<pb::QueryUploadStatusResponse>, Status> {
        self.observe(
            "QueryUploadStatus",
            request.metadata(),
            |_in_flight| async {
                let caller = self.caller_of(&request).await?;
                let status = self
                    .images
                    .uploads()
                    .session_status(&caller, &request.get_ref().upload_id)
                    .await?;
                self.respond(
                    &caller,
                    pb::QueryUploadStatusResponse {
                        persisted_size: status.persisted_size as i64,
                        image: status.image.map(|image| convert::image(&image, &caller)),
                        expire_time: Some(convert::timestamp(status.expire_time)),
                    },
                )
                .await
            },
        )
        .await
    }

    async fn cancel_upload(
        &self,
        request: Request<pb::CancelUploadRequest>,
    ) -> Result<Response<pb::CancelUploadResponse>, Status> {
        self.observe("CancelUpload", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            self.images
                .uploads()
                .cancel_session(&caller, &request.get_ref().upload_id)
                .await?;
            Ok(Response::new(pb::CancelUploadResponse {}))
        })
        .await
    }

    async fn get_upload_urls(
        &self,
        request: Request<pb::GetUploadUrlsRequest>,
    ) -> Result<Response<pb::GetUploadUrlsResponse>, Status> {
        self.observe("GetUploadUrls", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let r = request.get_ref().clone();
            let plan = convert::part_plan(r.parts)?;
            let expires_in = convert::expires_in(r.expires_in)?;
            let urls = self
                .images
                .uploads()
                .upload_urls(&caller, &r.upload_id, plan, expires_in)
                .await?;
            self.respond(
                &caller,
                pb::GetUploadUrlsResponse {
                    urls: urls.urls,
                    expire_time: Some(convert::timestamp(urls.expire_time)),
                },
            )
            .await
        })
        .await
    }

    async fn complete_upload(
        &self,
        request: Request<pb::CompleteUploadRequest>,
    ) -> Result<Response<pb::CompleteUploadResponse>, Status> {
        self.observe("CompleteUpload", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let _in_progress = UploadInProgress::start();
            let record = self
                .images
                .uploads()
                .complete_session(&caller, &request.get_ref().upload_id)
                .await?;
            tracing::info!(image_id = %record.id, size = record.size_bytes, "direct upload completed");
            self.acknowledge(pb::CompleteUploadResponse {
                image: Some(convert::image(&record, &caller)),
            })
            .await
        })
        .await
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        self.observe("GetUsage", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let usage = self
                .images
                .quotas()
                .usage_as(&caller, &request.get_ref().user_id)
                .await?;
            Ok(Response::new(pb::GetUsageResponse {
                usage: Some(convert::usage(&usage)),
            }))
        })
        .await
    }

    async fn set_user_quota(
        &self,
        request: Request<pb::SetUserQuotaRequest>,
    ) -> Result<Response<pb::SetUserQuotaResponse>, Status> {
        self.observe("SetUserQuota", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let r = request.get_ref();
            let quota = QuotaOverride {
                max_bytes: r.quota_bytes,
                max_images: r.quota_images,
            };
            let usage = self
                .images
                .quotas()
                .set_quota_as(&caller, &r.user_id, quota)
                .await?;
            Ok(Response::new(pb::SetUserQuotaResponse {
                usage: Some(convert::usage(&usage)),
            }))
        })
        .await
    }

    async fn delete_user_data(
        &self,
        request: Request<pb::DeleteUserDataRequest>,
    ) -> Result<Response<pb::DeleteUserDataResponse>, Status> {
        self.observe("DeleteUserData", request.metadata(), |_in_flight| async {
            let caller = self.caller_of(&request).await?;
            let status = self
                .erasures
                .delete_user_data(&caller, &request.get_ref().user_id)
                .await?;
            Ok(Response::new(pb::DeleteUserDataResponse {
                deletion: Some(convert::user_data_deletion(&status)),
            }))
        })
        .await
    }

    async fn get_user_data_deletion(
        &self,
        request: Request<pb::GetUserDataDeletionRequest>,
    ) -> Result<Response<pb::GetUserDataDeletionResponse>, Status> {
        self.observe(
            "GetUserDataDeletion",
            request.metadata(),
            |_in_flight| async {
                let caller = self.caller_of(&request).await?;
                let status = self
                    .erasures
                    .user_data_deletion(&caller, &request.get_ref().user_id)
                    .await?;
                Ok(Response::new(pb::GetUserDataDeletionResponse {
                    deletion: Some(convert::user_data_deletion(&status)),
                }))
            },
        )
        .await
    }
}
