//! W3C trace context and OpenTelemetry export: a caller's `traceparent`
//! is continued through the call into its store calls, and the spans reach
//! an OTLP collector started by the test (over gRPC, and over HTTP). The
//! service is the real binary, configured by the standard OpenTelemetry
//! environment variables as an operator would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

use crate::helpers::binary::Service;
use crate::helpers::{Backend, TestApp, as_user, images, spec, upload_messages};
use image_service::pb;

/// A span as the collector received it, with its service's name.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    trace_state: String,
    name: String,
    kind: i32,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What the collector has received.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

impl Collector {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        trace_state: span.trace_state,
                        name: span.name,
                        kind: span.kind,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
    }

    /// Waits up to 20 s for spans of `trace_id` that satisfy `done`.
    async fn wait_for(&self, trace_id: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        for _ in 0..200 {
            let spans: Vec<Received> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|span| span.trace_id == trace_id)
                .cloned()
                .collect();
            if done(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the collector did not receive the spans of trace {trace_id}; it has {:#?}",
            self.0.lock().unwrap()
        );
    }
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector on loopback.
async fn grpc_collector() -> (Collector, SocketAddr) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (collector, addr)
}

/// An OTLP/HTTP collector on loopback: protobuf bodies at `/v1/traces`.
async fn http_collector() -> (Collector, SocketAddr) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = collector.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                state.take(request);
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (collector, addr)
}

/// An upload carrying the caller's trace context.
fn traced_upload(
    traceparent: &str,
) -> tonic::Request<impl tokio_stream::Stream<Item = pb::UploadImageRequest> + use<>> {
    let bytes = images::png(8, 8, 3);
    let mut request = as_user(
        "alice",
        tokio_stream::iter(upload_messages(spec("traced.png"), &bytes, 1024)),
    );
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
        .metadata_mut()
        .insert("tracestate", "gateway=abc123".parse().unwrap());
    request
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// OpenTelemetry span kinds, as numbered by OTLP.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

#[tokio::test]
async fn a_callers_trace_continues_into_the_store_calls_and_reaches_a_grpc_collector() {
    let (collector, addr) = grpc_collector().await;
    let service = Service::start(&[
        // Export batches every 100 ms rather than every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
        ("OTEL_SERVICE_NAME", "images-under-test".into()),
    ]);
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let response = service
        .client()
        .await
        .upload_image(traced_upload(&traceparent))
        .await
        .unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        TRACE_ID,
        "without an x-request-id, the trace id is the request id"
    );

    let spans = collector
        .wait_for(TRACE_ID, |spans| {
            spans.iter().any(|s| s.kind == SERVER)
                && spans.iter().any(|s| s.name == "metadata.create")
        })
        .await;
    let call = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(call.name, "imageservice.v1.ImageService/UploadImage");
    assert_eq!(
        call.parent_span_id, CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(
        call.trace_state, "gateway=abc123",
        "tracestate is carried on"
    );
    assert_eq!(
        call.service, "images-under-test",
        "OTEL_SERVICE_NAME names the service"
    );
    assert_eq!(call.attribute("rpc.method"), Some("UploadImage"));
    assert_eq!(call.attribute("rpc.grpc.status_code"), Some("0"));
    assert_eq!(call.attribute("user"), Some("alice"));

    // The store calls are the call's children, with their operations.
    let create = spans.iter().find(|s| s.name == "metadata.create").unwrap();
    assert_eq!(create.parent_span_id, call.span_id);
    assert_eq!(create.kind, CLIENT);
    assert_eq!(create.attribute("db.system"), Some("redb"));
    let writes: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name.starts_with("blob.") && s.parent_span_id == call.span_id)
        .collect();
    assert!(
        writes.iter().any(|s| s.name == "blob.finish_write"),
        "the object writes are children too: {writes:#?}"
    );

    // The trace id is in the call's log lines.
    let logs = service.logs();
    let uploaded = logs
        .iter()
        .find(|line| line.contains("image uploaded"))
        .expect("the upload is logged");
    let uploaded: serde_json::Value = serde_json::from_str(uploaded).unwrap();
    assert_eq!(uploaded["span"]["trace_id"], TRACE_ID, "{uploaded}");

    // A call with no trace context starts a trace of its own.
    let mut request = as_user("alice", pb::ListImagesRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let response = service.client().await.list_images(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "req-42");
    for _ in 0..200 {
        let root = collector
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == "imageservice.v1.ImageService/ListImages")
            .cloned();
        if let Some(root) = root {
            assert_ne!(root.trace_id, TRACE_ID);
            assert_eq!(root.parent_span_id, "", "a root span");
            assert_eq!(root.attribute("request_id"), Some("req-42"));
            // Background work (health checks) makes no traces of its own:
            // every exported root is a call.
            let roots: Vec<Received> = collector
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.parent_span_id.is_empty() && s.kind != SERVER)
                .cloned()
                .collect();
            assert!(roots.is_empty(), "{roots:#?}");
            service.stop().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the ListImages span was not exported");
}

#[tokio::test]
async fn spans_reach_an_http_collector_by_default() {
    let (collector, addr) = http_collector().await;
    // No protocol set: OTLP over HTTP with protobuf, the specification's
    // default, at the endpoint's /v1/traces.
    let service = Service::start(&[
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
    ]);
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    service
        .client()
        .await
        .upload_image(traced_upload(&traceparent))
        .await
        .unwrap();
    let spans = collector
        .wait_for(TRACE_ID, |spans| {
            spans.iter().any(|s| s.kind == SERVER) && spans.iter().any(|s| s.kind == CLIENT)
        })
        .await;
    let call = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(call.parent_span_id, CALLER_SPAN);
    assert_eq!(call.service, "image-service", "the default service name");
    service.stop().await;
}

#[tokio::test]
async fn without_a_collector_the_trace_id_is_still_continued() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let mut request = as_user("alice", pb::ListImagesRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    let response = app.client().list_images(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), TRACE_ID);

    // A malformed traceparent is ignored: a new trace id is made.
    let mut request = as_user("alice", pb::ListImagesRequest::default());
    request
        .metadata_mut()
        .insert("traceparent", "00-zz-not-a-trace".parse().unwrap());
    let response = app.client().list_images(request).await.unwrap();
    let id = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_ne!(id, TRACE_ID);
}

/// On the AWS backend the store calls are S3 and DynamoDB client spans of
/// the call, against the real test servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_aws_the_store_calls_are_s3_and_dynamodb_spans() {
    let (s3, dynamodb) = crate::aws::initialized_servers();
    let (collector, addr) = grpc_collector().await;
    let mut command = crate::aws::service_command(&s3, &dynamodb);
    command.envs([
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
    ]);
    let service = Service::spawn(command, tempfile::tempdir().unwrap());
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    service
        .client()
        .await
        .upload_image(traced_upload(&traceparent))
        .await
        .unwrap();

    let of = |spans: &[Received], system: &str| -> Vec<Received> {
        spans
            .iter()
            .filter(|s| s.attribute("db.system") == Some(system))
            .cloned()
            .collect()
    };
    let spans = collector
        .wait_for(TRACE_ID, |spans| {
            spans.iter().any(|s| s.kind == SERVER)
                && !of(spans, "s3").is_empty()
                && of(spans, "dynamodb")
                    .iter()
                    .any(|s| s.name == "metadata.create")
        })
        .await;
    let call = spans.iter().find(|s| s.kind == SERVER).unwrap();
    let create = spans.iter().find(|s| s.name == "metadata.create").unwrap();
    assert_eq!(create.attribute("db.system"), Some("dynamodb"));
    assert_eq!(create.parent_span_id, call.span_id);
    let finish = spans
        .iter()
        .find(|s| s.name == "blob.finish_write")
        .expect("the object's write is a span");
    assert_eq!(finish.attribute("db.system"), Some("s3"));
    assert_eq!(finish.parent_span_id, call.span_id);
    // Under the store spans, the SDK's own operation spans: the S3 and
    // DynamoDB requests themselves.
    let child_of = |prefix: &str, store: &str| {
        spans.iter().any(|sdk| {
            sdk.name.starts_with(prefix)
                && spans
                    .iter()
                    .any(|s| s.span_id == sdk.parent_span_id && s.name.starts_with(store))
        })
    };
    assert!(child_of("S3.", "blob."), "{spans:#?}");
    assert!(child_of("DynamoDB.", "metadata."), "{spans:#?}");
    service.stop().await;
}
