//! Request messages that arrive in part: a raw HTTP/2 client declares a
//! message's length in its gRPC frame header and sends less, or trickles
//! it. A message longer than its call takes is refused from its header;
//! messages still arriving hold the memory budget and their connection's
//! allowance, and end when they do not arrive in time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::Code;
use tonic::codegen::http;

use crate::helpers::binary::Service;
use crate::helpers::{Backend, TestApp};

const LIST: &str = "/imageservice.v1.ImageService/ListImages";
const UPLOAD: &str = "/imageservice.v1.ImageService/UploadImage";

/// A call whose request is still being sent.
struct Partial {
    response: h2::client::ResponseFuture,
    body: h2::SendStream<Bytes>,
}

/// The status a call was answered with (within `wait`), its message and
/// the headers.
async fn status_within(
    response: h2::client::ResponseFuture,
    wait: Duration,
) -> (Code, String, http::HeaderMap) {
    let response = tokio::time::timeout(wait, response)
        .await
        .expect("an answer in time")
        .expect("an HTTP/2 response");
    status_of(response.headers().clone())
}

/// The status of a trailers-only answer, its message and the headers.
fn status_of(headers: http::HeaderMap) -> (Code, String, http::HeaderMap) {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let code = Code::from(text("grpc-status").parse::<i32>().expect("trailers only"));
    (code, text("grpc-message"), headers)
}

/// One HTTP/2 connection of a raw caller.
struct RawCaller {
    calls: h2::client::SendRequest<Bytes>,
    /// Calls made so far: each is another user's, so that no per-user
    /// limit answers first.
    made: usize,
    _connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

impl RawCaller {
    async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (calls, connection) = h2::client::Builder::new()
            .handshake(tcp)
            .await
            .expect("an HTTP/2 connection");
        Self {
            calls,
            made: 0,
            _connection: tokio::spawn(connection),
        }
    }

    /// Calls `path` with a message that declares `declared` bytes, and
    /// sends the header and `sent` of them, leaving the request open.
    async fn call(&mut self, path: &str, declared: u32, sent: usize) -> Partial {
        let user = format!("mallory-{}", self.made + 1);
        self.call_as(Some(&user), path, declared, sent).await
    }

    /// [`RawCaller::call`] as `user`, or with no identity.
    async fn call_as(
        &mut self,
        user: Option<&str>,
        path: &str,
        declared: u32,
        sent: usize,
    ) -> Partial {
        self.made += 1;
        let mut request = http::Request::post(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(user) = user {
            request = request.header("x-user-id", user);
        }
        let request = request.body(()).unwrap();
        let mut calls = self.calls.clone().ready().await.expect("room for a call");
        let (response, mut body) = calls.send_request(request, false).unwrap();
        let mut framed = vec![0];
        framed.extend_from_slice(&declared.to_be_bytes());
        framed.extend_from_slice(&payload(declared as usize)[..sent]);
        // A refused call may be reset before its bytes go out.
        let _ = body.send_data(Bytes::from(framed), false);
        Partial { response, body }
    }
}

/// An upload as `user` of an image declared to be `declared` bytes, whose
/// second message declares `second` bytes and sends `sent` of them.
async fn upload_declaring(
    caller: &mut RawCaller,
    user: &str,
    declared: i64,
    second: u32,
    sent: usize,
) -> Partial {
    use image_service::pb;
    use prost::Message;
    let request = http::Request::post(format!("http://localhost{UPLOAD}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-user-id", user)
        .body(())
        .unwrap();
    let mut calls = caller.calls.clone().ready().await.expect("room for a call");
    let (response, mut body) = calls.send_request(request, false).unwrap();
    let spec = pb::UploadImageRequest {
        data: Some(pb::upload_image_request::Data::Spec(pb::ImageSpec {
            content_type: Some("image/png".into()),
            expected_size: Some(declared),
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(spec.len() as u32).to_be_bytes());
    framed.extend_from_slice(&spec);
    framed.push(0);
    framed.extend_from_slice(&second.to_be_bytes());
    framed.extend_from_slice(&payload(second as usize)[..sent]);
    let _ = body.send_data(Bytes::from(framed), false);
    Partial { response, body }
}

/// A message of `length` bytes (at least 4) that every request type
/// decodes: one field (99) that none of them knows.
fn payload(length: usize) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    let mut content = length - 3;
    while 2 + encoded_len_varint(content as u64) + content > length {
        content -= 1;
    }
    let mut bytes = Vec::with_capacity(length);
    encode_key(99, WireType::LengthDelimited, &mut bytes);
    encode_varint(content as u64, &mut bytes);
    bytes.resize(length, b'x');
    bytes
}

/// Makes `per_connection` calls with `call` on each of 3 connections and
/// waits for their answers: the connections, the calls left open, and the
/// messages of those refused (each RESOURCE_EXHAUSTED).
async fn three_connections_of<F>(
    app: &TestApp,
    per_connection: usize,
    call: F,
) -> (Vec<RawCaller>, Vec<h2::SendStream<Bytes>>, Vec<String>)
where
    F: for<'a> Fn(&'a mut RawCaller) -> futures::future::BoxFuture<'a, Partial>,
{
    let mut callers = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..3 {
        let mut caller = RawCaller::connect(app.grpc_addr).await;
        for _ in 0..per_connection {
            calls.push(call(&mut caller).await);
        }
        callers.push(caller);
    }
    let (held, refused) = held_or_refused(calls).await;
    (callers, held, refused)
}

/// Waits 5 s for answers to `calls`: the calls left open, and the
/// messages of those refused (each RESOURCE_EXHAUSTED).
async fn held_or_refused(calls: Vec<Partial>) -> (Vec<h2::SendStream<Bytes>>, Vec<String>) {
    let answers = futures::future::join_all(calls.into_iter().map(|call| async move {
        let answer = tokio::time::timeout(Duration::from_secs(5), call.response).await;
        (answer, call.body)
    }))
    .await;
    let (mut held, mut refused) = (Vec::new(), Vec::new());
    for (answer, body) in answers {
        match answer {
            Ok(response) => {
                let (code, message, _) =
                    status_of(response.expect("an HTTP/2 response").headers().clone());
                assert_eq!(code, Code::ResourceExhausted, "{message}");
                refused.push(message);
            }
            Err(_) => held.push(body),
        }
    }
    (held, refused)
}

/// Makes 17 listings that each declare 256 KiB and send 1 000 bytes of
/// it, of which 16 fit in 4 MiB: the calls left open, and the answer of
/// the one refused (whichever the server came to last).
async fn seventeen_partial_listings(
    caller: &mut RawCaller,
) -> (Vec<h2::SendStream<Bytes>>, (Code, String, http::HeaderMap)) {
    let mut calls = Vec::new();
    for _ in 0..17 {
        calls.push(caller.call(LIST, 256 << 10, 1000).await);
    }
    let answers = futures::future::join_all(calls.into_iter().map(|call| async move {
        let answer = tokio::time::timeout(Duration::from_secs(10), call.response).await;
        (answer, call.body)
    }))
    .await;
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for (answer, body) in answers {
        match answer {
            Ok(response) => refused.push(response.expect("an HTTP/2 response")),
            Err(_) => held.push(body),
        }
    }
    assert_eq!(held.len(), 16, "16 held, one refused");
    let refused = refused.pop().expect("one refused");
    (held, status_of(refused.headers().clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_declares_a_large_message_is_refused_from_its_header() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let mut mallory = RawCaller::connect(app.grpc_addr).await;
    let started = Instant::now();
    // 4 MiB would pass tonic's own limit; a listing request is never more
    // than a few KiB.
    let call = mallory.call(LIST, 4 << 20, 100).await;
    let (code, message, headers) = status_within(call.response, Duration::from_secs(10)).await;
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("4194304"), "{message}");
    assert_eq!(
        headers.get(image_service::grpc::RETRY_PUSHBACK).unwrap(),
        "-1",
        "not worth retrying"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A listing of the ordinary size goes through on the same connection.
    app.list("alice", Default::default())
        .await
        .expect("a listing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_still_arriving_hold_the_budget_and_are_refused_past_it() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--memory-budget", "4MiB", "--memory-wait", "300ms"],
    )
    .await;
    let mut mallory = RawCaller::connect(app.grpc_addr).await;
    // Each declares 256 KiB and sends a little: 16 of them take the 4 MiB.
    let (held, refused) = seventeen_partial_listings(&mut mallory).await;
    let (code, message, headers) = refused;
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("--memory-budget"), "{message}");
    assert!(
        headers.get(image_service::grpc::RETRY_PUSHBACK).is_none(),
        "worth retrying: the room is others'"
    );
    // Others' calls that reserve memory are refused as well while the
    // partial messages hold it...
    assert!(app.list("alice", Default::default()).await.is_err());
    // ... and served once they are gone.
    drop(held);
    let mut listed = false;
    for _ in 0..50 {
        if app.list("alice", Default::default()).await.is_ok() {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed, "the budget came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_at_most_its_allowance_of_messages_still_arriving() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            // Taken as the largest message, 4 MiB + 64 KiB.
            "--grpc-max-partial-request-bytes-per-connection",
            "1MiB",
            "--memory-wait",
            "300ms",
        ],
    )
    .await;
    let mut mallory = RawCaller::connect(app.grpc_addr).await;
    let (held, refused) = seventeen_partial_listings(&mut mallory).await;
    let (code, message, _) = refused;
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("--grpc-max-partial-request-bytes-per-connection"),
        "{message}"
    );

    // Another connection has its own allowance.
    let mut other = RawCaller::connect(app.grpc_addr).await;
    let call = other.call(LIST, 256 << 10, 1000).await;
    let mut body = call.body;
    body.send_data(Bytes::from(payload(256 << 10).split_off(1000)), true)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), call.response)
        .await
        .expect("an answer")
        .expect("a response");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("grpc-status").is_none(),
        "a listing, not a refusal: {:?}",
        response.headers()
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_message_ends_within_the_idle_timeout() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--upload-idle-timeout", "1s"]).await;
    let mut mallory = RawCaller::connect(app.grpc_addr).await;
    let started = Instant::now();
    let Partial { response, mut body } = mallory.call(LIST, 1000, 10).await;
    // A byte every 100 ms: it keeps coming, far too slowly.
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if body.send_data(Bytes::from_static(&[0]), false).is_err() {
                break;
            }
        }
    });
    let (code, message, _) = status_within(response, Duration::from_secs(10)).await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    assert!(message.contains("--upload-idle-timeout"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    trickle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_declaring_large_messages_do_not_raise_memory_past_the_budget() {
    let service = Service::start(&[
        ("IMAGE_SERVICE_MEMORY_BUDGET", "32MiB".into()),
        ("IMAGE_SERVICE_MEMORY_WAIT", "200ms".into()),
    ]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.reset_peak();
    let before = service.rss_kib();
    // 2 connections × 100 uploads, each declaring a 4 MiB first message
    // and sending 1 MiB of it: 200 MiB held before these were counted.
    let mut callers = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..2 {
        let mut caller = RawCaller::connect(service.grpc).await;
        for _ in 0..100 {
            calls.push(caller.call(UPLOAD, 4 << 20, 1 << 20).await);
        }
        callers.push(caller);
    }
    // The refusals come after --memory-wait; the calls let in stay open.
    let (open, refused) = held_or_refused(calls).await;
    let grown_mib = service.peak_kib().saturating_sub(before) / 1024;
    assert!(refused.len() >= 150, "{} of 200 refused", refused.len());
    assert!(
        grown_mib < 100,
        "the server grew by {grown_mib} MiB over a 32 MiB budget"
    );
    drop(open);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_listings_without_an_identity_are_refused_at_their_headers_and_hold_nothing() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--memory-budget", "4MiB", "--memory-wait", "300ms"],
    )
    .await;
    let mut mallory = RawCaller::connect(app.grpc_addr).await;
    // 32 of 256 KiB would be twice the budget, had they been let in.
    let mut calls = Vec::new();
    for _ in 0..32 {
        calls.push(mallory.call_as(None, LIST, 256 << 10, 1000).await);
    }
    let started = Instant::now();
    let mut open = Vec::new();
    for call in calls {
        let (code, message, _) = status_within(call.response, Duration::from_secs(5)).await;
        assert_eq!(code, Code::Unauthenticated, "{message}");
        open.push(call.body);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "at once");
    // Nothing of the budget is held: a user's listing needs it and is served.
    app.list("alice", Default::default())
        .await
        .expect("a listing while the refused calls stay open");
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_partial_messages_stop_at_its_share_and_another_user_uploads() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            // An upload's variants need some 14 MiB.
            "--memory-budget",
            "24MiB",
            "--max-memory-per-user",
            "1MiB",
            "--memory-wait",
            "300ms",
        ],
    )
    .await;
    // 3 connections × 40 of 256 KiB, all one user's: more than the whole
    // budget, each connection within its allowance.
    let (_callers, held, refused) = three_connections_of(&app, 40, |mallory| {
        Box::pin(mallory.call_as(Some("mallory"), LIST, 256 << 10, 1000))
    })
    .await;
    for message in refused {
        assert!(message.contains("--max-memory-per-user"), "{message}");
    }
    assert_eq!(held.len(), 4, "1 MiB of 256 KiB messages");
    // Another user's upload has the rest of the budget.
    let image = app.upload_png("alice", 1).await;
    assert_eq!(image.owner_id, "alice");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_health_checks_hold_their_own_pool_and_not_the_budget() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--memory-budget", "4MiB", "--memory-wait", "30s"],
    )
    .await;
    // 3 connections × 90 checks of 16 KiB, with no identity: more than
    // their 4 MiB pool, and than the whole budget. Those without room are
    // refused at once (they do not wait for --memory-wait, each keeping
    // its stream window of unread bytes).
    let (_callers, held, refused) = three_connections_of(&app, 90, |mallory| {
        Box::pin(mallory.call_as(None, "/grpc.health.v1.Health/Check", 16 << 10, 100))
    })
    .await;
    for message in refused {
        assert!(message.contains("reflection"), "{message}");
    }
    assert_eq!(held.len(), 256, "4 MiB of 16 KiB messages");
    // A user's listing has the budget.
    app.list("alice", Default::default())
        .await
        .expect("a listing while the partial checks stay open");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_declaring_a_small_size_do_not_hold_large_messages_past_the_budget() {
    let service = Service::start(&[
        ("IMAGE_SERVICE_MEMORY_BUDGET", "64MiB".into()),
        ("IMAGE_SERVICE_MEMORY_WAIT", "200ms".into()),
        ("IMAGE_SERVICE_UPLOAD_SLOT_WAIT", "200ms".into()),
    ]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.reset_peak();
    let before = service.rss_kib();
    // 8 users × 8 uploads, each declaring a 1 000-byte image (a working
    // set of some 2 MiB: about 30 are let in) and then sending all but
    // 1 KiB of a 4 MiB second message: 120 MiB held outside the budget
    // before the rest of such a message was reserved.
    let mut callers = Vec::new();
    let mut calls = Vec::new();
    for user in 0..8 {
        let mut caller = RawCaller::connect(service.grpc).await;
        for _ in 0..8 {
            let user = format!("mallory-{user}");
            calls.push(upload_declaring(&mut caller, &user, 1000, 4 << 20, (4 << 20) - 1024).await);
        }
        callers.push(caller);
    }
    let (open, refused) = held_or_refused(calls).await;
    let grown_mib = service.peak_kib().saturating_sub(before) / 1024;
    assert!(refused.len() >= 32, "{} of 64 refused", refused.len());
    assert!(
        grown_mib < 64,
        "the server grew by {grown_mib} MiB over a 64 MiB budget"
    );
    drop(open);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_so_many_messages_wait_for_memory_and_the_rest_are_refused_at_once() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--memory-budget",
            "4MiB",
            "--memory-wait",
            "30s",
            "--grpc-max-waiting-request-messages",
            "2",
        ],
    )
    .await;
    // 3 connections × 7 listings of 256 KiB, each another user's: 16 take
    // the budget, 2 wait for it (each keeping its stream's unread bytes),
    // and the other 3 are refused at once rather than after 30 s.
    let (_callers, held, refused) = three_connections_of(&app, 7, |mallory| {
        Box::pin(mallory.call(LIST, 256 << 10, 1000))
    })
    .await;
    assert_eq!(held.len(), 18, "{refused:?}");
    assert_eq!(refused.len(), 3);
    for message in refused {
        assert!(
            message.contains("--grpc-max-waiting-request-messages"),
            "{message}"
        );
    }
    drop(held);
}
