//! Distributed tracing: a caller's W3C trace context (`traceparent`,
//! `tracestate`) is continued, or a trace started, for every call; its
//! trace id is on the call's span, so in every log line of the call. Spans
//! are exported over OTLP only when the standard OpenTelemetry environment
//! asks for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); otherwise no span is built for
//! the export and store calls get no spans at all.
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::MetadataMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The service's name in traces unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` says otherwise.
const SERVICE_NAME: &str = "image-service";

/// How long a stopping process waits for the last spans to be exported.
const SHUTDOWN_EXPORT: std::time::Duration = std::time::Duration::from_secs(5);

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: store calls get spans only then.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The tracer provider the environment asks for, if any. Errors are
/// configuration mistakes (an unknown protocol, a bad endpoint).
pub(super) fn provider_from_env() -> anyhow::Result<Option<SdkTracerProvider>> {
    let endpoint =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| !v.eq_ignore_ascii_case("otlp"));
    let Some(endpoint) = endpoint.filter(|_| !disabled) else {
        return Ok(None);
    };
    // The specification's default transport is HTTP with protobuf bodies.
    let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    let exporter = match protocol.as_str() {
        "grpc" => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if endpoint.starts_with("https://") {
                builder = builder.with_tls_config(grpc_tls()?);
            }
            builder.build()
        }
        "http/protobuf" => {
            let mut client = reqwest::Client::builder();
            if let Some(pem) = collector_ca()? {
                client = client.add_root_certificate(
                    reqwest::Certificate::from_pem(&pem).context("the collector's CA")?,
                );
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(ReqwestHttp(client.build()?))
                .build()
        }
        other => bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported: use grpc or http/protobuf"
        ),
    }
    .with_context(|| format!("the OTLP exporter for {endpoint}"))?;
    // The SDK's own batch processor runs on a thread of its own, without
    // the tokio runtime tonic and reqwest need; this one runs on ours.
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    Ok(Some(provider))
}

/// The PEM of `OTEL_EXPORTER_OTLP_CERTIFICATE`, a CA trusted for the
/// collector besides the public roots.
fn collector_ca() -> anyhow::Result<Option<Vec<u8>>> {
    let Some(path) = env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
        .or_else(|| env("OTEL_EXPORTER_OTLP_CERTIFICATE"))
    else {
        return Ok(None);
    };
    let pem = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    Ok(Some(pem))
}

/// TLS to an `https://` gRPC collector: the public roots, and the
/// collector's CA when set.
fn grpc_tls() -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
    if let Some(pem) = collector_ca()? {
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
    }
    Ok(tls)
}

/// The layer that turns `tracing` spans into exported OpenTelemetry spans.
pub(super) fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_tracked_inactivity(false)
        .with_threads(false)
}

/// Exports what is left when the process ends.
pub struct TraceExport(Option<SdkTracerProvider>);

impl TraceExport {
    /// `provider` is the installed one: from now on calls and store calls
    /// make spans for it.
    pub(super) fn new(provider: Option<SdkTracerProvider>) -> Self {
        if provider.is_some() {
            EXPORTING.store(true, Ordering::Relaxed);
        }
        Self(provider)
    }

    /// Sends the spans not yet exported, waiting at most
    /// [`SHUTDOWN_EXPORT`]: a collector that does not answer does not keep
    /// the process from stopping.
    pub async fn shutdown(self) {
        if let Some(provider) = self.0 {
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown());
            match tokio::time::timeout(SHUTDOWN_EXPORT, flushed).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::warn!(%error, "exporting the last spans failed"),
                Ok(Err(_)) => {}
                Err(_) => tracing::warn!(
                    timeout = ?SHUTDOWN_EXPORT,
                    "the collector did not take the last spans in time; they are dropped"
                ),
            }
        }
    }
}

/// gRPC metadata as a carrier of W3C trace context.
struct MetadataCarrier<'a>(&'a MetadataMap);

impl Extractor for MetadataCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Makes `span` (a call's) continue the trace the caller sent, or start
/// one, and returns the trace id. Exporting, the span becomes the remote
/// span's child; otherwise only its trace id is taken (or a new one made).
pub fn continue_trace(span: &tracing::Span, metadata: &MetadataMap) -> TraceId {
    let parent = TraceContextPropagator::new().extract(&MetadataCarrier(metadata));
    if exporting() {
        let _ = span.set_parent(parent);
        let trace_id = span.context().span().span_context().trace_id();
        if trace_id != TraceId::INVALID {
            return trace_id;
        }
    } else {
        let remote = parent.span().span_context().clone();
        if remote.is_valid() {
            return remote.trace_id();
        }
    }
    TraceId::from_bytes(rand::random::<u128>().max(1).to_be_bytes())
}

/// A client span for one store call, when exporting; disabled otherwise.
pub fn store_span(
    store: &'static str,
    system: &'static str,
    operation: &'static str,
) -> tracing::Span {
    // Background work (health checks, repair) is not part of any call's
    // trace: only calls' store calls are exported.
    if !exporting() || tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "store",
        otel.name = format!("{store}.{operation}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system = system,
        db.operation = operation,
        store,
    )
}

/// An OTLP/HTTP transport on the service's reqwest client (rustls).
#[derive(Debug)]
struct ReqwestHttp(reqwest::Client);

/// Largest collector response read.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ReqwestHttp {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let (parts, body) = request.into_parts();
        let mut response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err("the collector's response is too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        let mut answer = opentelemetry_http::Response::new(opentelemetry_http::Bytes::from(body));
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}
