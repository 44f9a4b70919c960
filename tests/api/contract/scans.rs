//! The content scan hook (`--scan-url`): every new image, uploaded by a
//! stream or through an upload session, is sent to a scanner (a small HTTP
//! server started by each test, whose answers the test sets) and its
//! verdict decides the image's state: at once (`sync`: a rejected image is
//! not stored) or after the acknowledgement (`async`: `PENDING` until
//! then, applied by the repair pass if the replica dies first). A scan
//! that finds no verdict follows `--scan-on-failure`.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use image_service::pb::moderation_service_client::ModerationServiceClient;

use super::sessions::{complete, exact_parts, put, start, upload_urls};
use super::*;

pub(super) const MODERATOR: &str = "trust-and-safety";

/// What the test scanner answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Allow,
    Quarantine,
    Reject,
    /// `allow`, after this long.
    Slowly(Duration),
    ServerError,
    Garbage,
}

/// What the scanner was sent.
#[derive(Clone, Debug)]
struct Seen {
    image_id: String,
    owner: String,
    sha256: String,
    rendition: String,
    content_type: String,
    bytes: usize,
}

#[derive(Clone)]
struct Scanner {
    url: String,
    answer: Arc<Mutex<Answer>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scanner {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let scanner = Scanner {
            url: format!("http://{addr}/scan"),
            answer: Arc::new(Mutex::new(Answer::Allow)),
            seen: Arc::default(),
        };
        let router = axum::Router::new()
            .route("/scan", axum::routing::post(answer))
            .with_state(scanner.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        scanner
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The server's flags for this scanner, and `more`.
    fn flags<'a>(&'a self, more: &[&'a str]) -> Vec<&'a str> {
        let mut flags = vec!["--scan-url", &self.url, "--moderators", MODERATOR];
        flags.extend_from_slice(more);
        flags
    }
}

async fn answer(
    State(scanner): State<Scanner>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    scanner.seen.lock().unwrap().push(Seen {
        image_id: header("x-image-id"),
        owner: header("x-image-owner"),
        sha256: header("x-image-sha256"),
        rendition: header("x-image-rendition"),
        content_type: header("content-type"),
        bytes: body.len(),
    });
    let answer = *scanner.answer.lock().unwrap();
    let json = |text: &'static str| ([("content-type", "application/json")], text).into_response();
    match answer {
        Answer::Allow => json(r#"{"verdict": "allow", "score": 0.01}"#),
        Answer::Quarantine => json(r#"{"verdict": "quarantine", "reason": "nudity"}"#),
        Answer::Reject => json(r#"{"verdict": "reject", "reason": "csam"}"#),
        Answer::Slowly(wait) => {
            tokio::time::sleep(wait).await;
            json(r#"{"verdict": "allow"}"#)
        }
        Answer::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        Answer::Garbage => json(r#"{"verdict": "maybe"}"#),
    }
}

pub(super) async fn trail(app: &TestApp) -> Vec<pb::ModerationAction> {
    let mut client = ModerationServiceClient::new(crate::helpers::connect(app.grpc_addr).await);
    let request = pb::ListModerationActionsRequest {
        page_size: 1000,
        page_token: String::new(),
    };
    client
        .list_moderation_actions(as_user(MODERATOR, request))
        .await
        .unwrap()
        .into_inner()
        .actions
}

/// Uploads a PNG for `user` and returns the answer.
async fn upload(app: &TestApp, user: &str, seed: u32) -> Result<pb::Image, Status> {
    let png = images::png(64 + seed, 48, seed);
    app.upload(user, spec("scanned.png"), &png).await
}

/// A direct upload of alice's, its one part sent; its session's id.
async fn send_direct_upload(app: &TestApp) -> String {
    let png = images::png(80, 60, 9);
    let session = start(app, "alice", spec("direct.png")).await.unwrap();
    let urls = upload_urls(app, "alice", &session.upload_id, exact_parts(&[png.len()]))
        .await
        .unwrap();
    assert!(put(&urls[0], png).await.is_success());
    session.upload_id
}

/// Waits until `image_id` is no longer PENDING for its owner.
async fn wait_for_verdict(app: &TestApp, owner: &str, image_id: &str) -> pb::Image {
    for _ in 0..200 {
        let image = app.get(owner, image_id).await.unwrap();
        if image.state() != pb::ImageState::Pending {
            return image;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{image_id} stayed pending");
}

/// Its owner and a moderator see it; anyone else finds nothing.
async fn only_owner_and_moderators_see(app: &TestApp, image_id: &str, state: pb::ImageState) {
    for user in ["alice", MODERATOR] {
        let seen = app.get(user, image_id).await.unwrap();
        assert_eq!(seen.state(), state, "{user}");
    }
    assert_code(app.get("bob", image_id).await, Code::NotFound);
    assert_code(app.download("bob", image_id).await, Code::NotFound);
}

pub(super) async fn a_sync_scan_allows_quarantines_or_rejects_before_the_answer(backend: Backend) {
    let scanner = Scanner::start().await;
    let app = TestApp::spawn_with(backend, &scanner.flags(&[])).await;

    let allowed = upload(&app, "alice", 1).await.unwrap();
    assert_eq!(allowed.state(), pb::ImageState::Active);
    assert_eq!(
        app.get("bob", &allowed.image_id).await.unwrap().state(),
        pb::ImageState::Active
    );
    let seen = scanner.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].image_id, allowed.image_id);
    assert_eq!(seen[0].owner, "alice");
    assert_eq!(seen[0].sha256, allowed.sha256);
    assert_eq!(seen[0].rendition, "medium", "the medium rendition is sent");
    let medium = allowed
        .variants
        .iter()
        .find(|v| v.name == "medium")
        .unwrap();
    assert_eq!(seen[0].content_type, medium.content_type);
    assert_eq!(seen[0].bytes as i64, medium.size_bytes);

    scanner.answer(Answer::Quarantine);
    let quarantined = upload(&app, "alice", 2).await.unwrap();
    assert_eq!(
        (quarantined.state(), quarantined.state_reason.as_str()),
        (pb::ImageState::Quarantined, "nudity")
    );
    only_owner_and_moderators_see(&app, &quarantined.image_id, pb::ImageState::Quarantined).await;
    let actions = trail(&app).await;
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0].moderator_id, "scanner");
    assert_eq!(actions[0].r#type(), pb::ModerationActionType::ScanVerdict);
    assert_eq!(actions[0].image_id, quarantined.image_id);
    assert_eq!(actions[0].to_state(), pb::ImageState::Quarantined);

    // A rejected upload stores nothing and gives its reservation back.
    let before = app.stored_objects().await;
    scanner.answer(Answer::Reject);
    let status = assert_code(upload(&app, "alice", 3).await, Code::FailedPrecondition);
    assert!(status.message().contains("csam"), "{status:?}");
    assert_eq!(app.wait_for_stored_objects(before.len()).await, before);
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 2, "only the allowed and the quarantined");
    let usage = super::quotas::usage(&app, "alice", "alice").await.unwrap();
    assert_eq!(
        (usage.images_held, usage.images_reserved),
        (2, 0),
        "{usage:?}"
    );

    // A direct upload (an upload session) is scanned too.
    let session = send_direct_upload(&app).await;
    let status = assert_code(
        complete(&app, "alice", &session).await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("csam"), "{status:?}");
    // The session goes with its parts: its bytes would be rejected again.
    assert_eq!(app.wait_for_stored_objects(before.len()).await, before);
    assert_code(complete(&app, "alice", &session).await, Code::NotFound);
    assert_eq!(scanner.seen().len(), 4);
}

pub(super) async fn a_scan_without_a_verdict_follows_scan_on_failure(backend: Backend) {
    let scanner = Scanner::start().await;
    let flags = scanner.flags(&["--scan-timeout", "300ms", "--scan-retries", "1"]);
    let app = TestApp::spawn_with(backend, &flags).await;
    for answer in [
        Answer::Slowly(Duration::from_secs(2)),
        Answer::ServerError,
        Answer::Garbage,
    ] {
        scanner.answer(answer);
        let tries = scanner.seen().len();
        let image = upload(&app, "alice", 1).await.unwrap();
        assert_eq!(
            (image.state(), image.state_reason.as_str()),
            (pb::ImageState::Quarantined, "scan-failed"),
            "{answer:?}"
        );
        assert_eq!(scanner.seen().len(), tries + 2, "{answer:?}: one retry");
        only_owner_and_moderators_see(&app, &image.image_id, pb::ImageState::Quarantined).await;
    }
    drop(app);

    // A scanner nobody answers at, with rejection on failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/scan", closed.local_addr().unwrap());
    drop(closed);
    let flags = [
        "--scan-url",
        &url,
        "--scan-on-failure",
        "reject",
        "--scan-retries",
        "0",
    ];
    let app = TestApp::spawn_with(backend, &flags).await;
    let status = assert_code(upload(&app, "alice", 1).await, Code::FailedPrecondition);
    assert!(status.message().contains("scan-failed"), "{status:?}");
    app.assert_nothing_stored("alice").await;
}

pub(super) async fn an_async_scan_acknowledges_pending_and_applies_the_verdict_later(
    backend: Backend,
) {
    let scanner = Scanner::start().await;
    let app = TestApp::spawn_with(backend, &scanner.flags(&["--scan-mode", "async"])).await;

    scanner.answer(Answer::Slowly(Duration::from_millis(800)));
    let image = upload(&app, "alice", 1).await.unwrap();
    assert_eq!(image.state(), pb::ImageState::Pending);
    only_owner_and_moderators_see(&app, &image.image_id, pb::ImageState::Pending).await;
    let allowed = wait_for_verdict(&app, "alice", &image.image_id).await;
    assert_eq!(allowed.state(), pb::ImageState::Active);
    assert_eq!(
        app.get("bob", &image.image_id).await.unwrap().state(),
        pb::ImageState::Active
    );

    // A rejection removes the image's bytes and keeps its record.
    scanner.answer(Answer::Reject);
    let image = upload(&app, "alice", 2).await.unwrap();
    let removed = wait_for_verdict(&app, "alice", &image.image_id).await;
    assert_eq!(
        (removed.state(), removed.state_reason.as_str()),
        (pb::ImageState::Removed, "csam")
    );
    assert_code(app.get("bob", &image.image_id).await, Code::NotFound);
    // The record changes first; its objects go right after.
    let mut left = Vec::new();
    for _ in 0..100 {
        left = app.stored_objects().await;
        left.retain(|key| key.contains(&image.image_id));
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "{left:?}");

    // A direct upload's image is scanned after its acknowledgement too.
    scanner.answer(Answer::Quarantine);
    let session = send_direct_upload(&app).await;
    let direct = complete(&app, "alice", &session).await.unwrap();
    assert_eq!(direct.state(), pb::ImageState::Pending);
    let quarantined = wait_for_verdict(&app, "alice", &direct.image_id).await;
    assert_eq!(
        (quarantined.state(), quarantined.state_reason.as_str()),
        (pb::ImageState::Quarantined, "nudity")
    );

    // Each verdict is the scanner's entry of the trail (appended right
    // after the change).
    let mut actions = trail(&app).await;
    for _ in 0..100 {
        if actions.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        actions = trail(&app).await;
    }
    let verdicts: Vec<_> = actions
        .iter()
        .map(|a| {
            (
                a.moderator_id.as_str(),
                a.r#type(),
                a.from_state(),
                a.to_state(),
            )
        })
        .collect();
    let scan = pb::ModerationActionType::ScanVerdict;
    let pending = pb::ImageState::Pending;
    assert_eq!(
        verdicts,
        [
            ("scanner", scan, pending, pb::ImageState::Active),
            ("scanner", scan, pending, pb::ImageState::Removed),
            ("scanner", scan, pending, pb::ImageState::Quarantined),
        ]
    );
}

pub(super) async fn a_killed_replicas_pending_scans_are_finished_by_the_repair_pass(
    backend: Backend,
) {
    let scanner = Scanner::start().await;
    let mut app = TestApp::spawn_with(backend, &scanner.flags(&["--scan-mode", "async"])).await;
    let (mut replica, mut client) = spawn_killable(&mut app).await;
    // The scanner answers long after the replica is gone.
    scanner.answer(Answer::Slowly(Duration::from_secs(30)));
    let png = images::png(64, 48, 1);
    let messages = upload_messages(spec("killed.png"), &png, 64 * 1024);
    let image = upload_through(&mut client, "alice", messages).await;
    assert_eq!(image.state(), pb::ImageState::Pending);
    unsafe { libc::kill(replica.id() as i32, libc::SIGKILL) };
    replica.wait().unwrap();
    let id = image.image_id;

    let report = app.repair_pass(true).await;
    assert_eq!(
        report.pending_scans,
        std::slice::from_ref(&id),
        "the scan is still due"
    );
    scanner.answer(Answer::Quarantine);
    let report = app.repair_pass(false).await;
    assert_eq!(
        report.pending_scans,
        [format!("{id}: quarantined (nudity)")]
    );
    let report = app.repair_pass(false).await;
    assert!(report.pending_scans.is_empty(), "{report:?}");

    let app = app
        .successor(&scanner.flags(&["--scan-mode", "async"]))
        .await;
    only_owner_and_moderators_see(&app, &id, pb::ImageState::Quarantined).await;
}

pub(super) async fn unsafe_scan_settings_stop_the_start(_backend: Backend) {
    let https = "https://scanner.internal/scan";
    let plaintext = "http://scanner.internal/scan";
    // Each setting, and what its refusal names (`None`: it starts).
    let cases: [(&[&str], Option<&str>); 6] = [
        (&["--scan-url", "not a url"], Some("is not a URL")),
        (
            &["--scan-url", "ftp://scanner.internal/"],
            Some("http or https"),
        ),
        (&["--scan-url", plaintext], Some("--scan-allow-plaintext")),
        (&["--scan-url", plaintext, "--scan-allow-plaintext"], None),
        (
            &["--scan-url", https, "--scan-on-failure", "allow"],
            Some("--scan-accept-unscanned"),
        ),
        (
            &[
                "--scan-url",
                https,
                "--scan-on-failure",
                "allow",
                "--scan-accept-unscanned",
            ],
            None,
        ),
    ];
    for (flags, expected) in cases {
        let refusal = crate::helpers::start_refusal(flags).await;
        match (refusal, expected) {
            (Some(refusal), Some(expected)) => {
                assert!(refusal.contains(expected), "{flags:?}: {refusal}")
            }
            (refusal, expected) => assert_eq!(refusal.is_some(), expected.is_some(), "{flags:?}"),
        }
    }
}
