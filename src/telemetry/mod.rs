//! Structured logs with `tracing`, distributed traces over OTLP
//! ([`trace`]), and the Prometheus metrics.
pub mod trace;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use trace::TraceExport;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// Installs the global subscriber: log lines on stderr, filtered by
/// `RUST_LOG` (default `info`), and, when the OpenTelemetry environment
/// names a collector, span export (the service's spans at `info`, and the
/// AWS SDK's spans of each S3 and DynamoDB operation beneath its store
/// calls). Safe to call more than once (later calls do nothing). Call it
/// within the tokio runtime, which runs the export.
pub fn init(format: LogFormat) -> TraceExport {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    }
    .with_filter(filter);
    let (provider, problem) = match trace::provider_from_env() {
        Ok(provider) => (provider, None),
        Err(error) => (None, Some(error)),
    };
    let spans = provider.as_ref().map(|provider| {
        trace::layer(provider).with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            let target = meta.target();
            if target.starts_with("image_service") {
                meta.level() <= &tracing::Level::INFO
            } else {
                // The SDK's operation spans ("S3.PutObject", "DynamoDB.Query"),
                // not its log events.
                meta.is_span()
                    && (target.starts_with("aws_sdk_s3") || target.starts_with("aws_sdk_dynamodb"))
            }
        }))
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_ok();
    if let Some(error) = problem {
        tracing::warn!(error = format!("{error:#}"), "spans are not exported");
    }
    TraceExport::new(provider.filter(|_| installed))
}

/// The process's Prometheus registry: installed once, rendered at `/metrics`.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        const SECONDS: &[f64] = &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program);
        // this registry then stays empty rather than failing the server.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// Folds the histogram samples recorded since the last pass into their
/// buckets. Without it samples pile up until `/metrics` is scraped, so an
/// unscraped service would grow by a few bytes per call for ever.
pub async fn upkeep_periodically() {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        metrics().run_upkeep();
        return_freed_memory();
    }
}

/// Gives memory the allocator holds free back to the kernel. glibc's
/// malloc keeps freed heap memory in its per-thread arenas: after a burst
/// of medium allocations (30 listings of large records at once) a replica
/// kept 250 MiB it no longer used, which counts against the pod's limit as
/// if it were in use. `malloc_trim` releases the free pages of every arena
/// (a few milliseconds here, every 5 s).
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "imageservice_grpc_requests_total",
        "ImageService calls by method and status code"
    );
    describe_histogram!(
        "imageservice_grpc_request_duration_seconds",
        Unit::Seconds,
        "ImageService call latency by method (streams: until the handler returned)"
    );
    describe_counter!(
        "imageservice_scans_total",
        "content scans by the scanner's verdict, or failed"
    );
    describe_histogram!(
        "imageservice_scan_duration_seconds",
        Unit::Seconds,
        "content scan latency, retries included"
    );
    describe_counter!(
        "imageservice_scan_retries_total",
        "content scan attempts made again after a failed one"
    );
    describe_counter!(
        "imageservice_scans_left_to_repair_total",
        "async content scans left to the repair pass (every place taken)"
    );
    describe_counter!(
        "imageservice_upload_bytes_total",
        Unit::Bytes,
        "image bytes received"
    );
    describe_counter!(
        "imageservice_download_bytes_total",
        Unit::Bytes,
        "image bytes sent by DownloadImage"
    );
    describe_gauge!(
        "imageservice_uploads_in_progress",
        "UploadImage calls in progress"
    );
    describe_histogram!(
        "imageservice_backend_request_duration_seconds",
        Unit::Seconds,
        "storage backend call latency by store and operation"
    );
    describe_counter!(
        "imageservice_backend_errors_total",
        "failed storage backend calls by store, operation and kind"
    );
    describe_counter!(
        "imageservice_jwks_fetches_total",
        "fetches of the identity provider's JWKS, by reason (startup, scheduled, unknown_kid) and result"
    );
    describe_counter!(
        "imageservice_jwks_unknown_kid_total",
        "tokens naming a kid the JWKS did not have, by whether the JWKS was fetched again for them"
    );
    describe_gauge!(
        "imageservice_jwks_keys",
        "usable signing keys in the JWKS in use"
    );
    describe_counter!(
        "imageservice_repair_findings_total",
        "leftovers the repair pass found, by kind"
    );
    describe_counter!(
        "imageservice_list_records_read_total",
        "image records the metadata store fetched to answer listings"
    );
    describe_counter!(
        "imageservice_list_records_returned_total",
        "image records listings returned (read / returned is the read amplification)"
    );
    describe_counter!(
        "imageservice_memory_budget_refusals_total",
        "work refused because the memory budget stayed taken for --memory-wait"
    );
    describe_histogram!(
        "imageservice_upload_slot_wait_seconds",
        Unit::Seconds,
        "how long uploads that found every upload slot busy waited for one"
    );
    describe_counter!(
        "imageservice_upload_slot_refusals_total",
        "uploads refused because every upload slot stayed busy for --upload-slot-wait"
    );
    describe_counter!(
        "imageservice_request_message_refusals_total",
        "gRPC calls ended by their request message, by reason (too_large, connection, stalled)"
    );
    describe_counter!(
        "imageservice_calls_shed_total",
        "calls refused with UNAVAILABLE at --max-in-flight-calls"
    );
    describe_counter!(
        "imageservice_download_stalls_total",
        "downloads ended because their caller stopped reading"
    );
    describe_counter!(
        "imageservice_handshake_failures_total",
        "connections closed before serving, by listener and reason (error, timeout)"
    );
    describe_gauge!(
        "imageservice_open_connections",
        "connections being served, by listener"
    );
}

/// An error and its causes on one line, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
