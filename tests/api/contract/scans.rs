//! The content scan hook (`--scan-url`): every new image, uploaded by a
//! stream or through an upload session, is sent to a scanner (a small HTTP
//! server started by each test, whose answers the test sets) and its
//! verdict decides the image's state: at once (`sync`: a rejected image is
//! not stored) or after the acknowledgement (`async`: `PENDING` until
//! then, applied by the repair pass if the replica dies first). A scan
//! that finds no verdict follows `--scan-on-failure`.
use std::collections::HashMap;
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
    /// The scans of this owner's images wait until [`Scanner::release`];
    /// others are allowed at once.
    Hold(&'static str),
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
    /// Set once held scans may answer.
    released: Arc<tokio::sync::watch::Sender<bool>>,
    /// Scans being answered now, by owner, and the most ever at once.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    most_in_flight: Arc<Mutex<HashMap<String, usize>>>,
    most_in_flight_in_all: Arc<Mutex<usize>>,
}

impl Scanner {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let scanner = Scanner {
            url: format!("http://{addr}/scan"),
            answer: Arc::new(Mutex::new(Answer::Allow)),
            seen: Arc::default(),
            released: Arc::new(tokio::sync::watch::channel(false).0),
            in_flight: Arc::default(),
            most_in_flight: Arc::default(),
            most_in_flight_in_all: Arc::default(),
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

    /// Lets the held scans answer `then`, and answers `then` from now on.
    fn release(&self, then: Answer) {
        self.answer(then);
        self.released.send_replace(true);
    }

    /// The most scans of `owner`'s images answered at once.
    fn most_in_flight(&self, owner: &str) -> usize {
        let most = self.most_in_flight.lock().unwrap();
        most.get(owner).copied().unwrap_or(0)
    }

    /// A scan of `owner`'s begins; it ends when the guard is dropped.
    fn begin(&self, owner: &str) -> Scanning {
        {
            let mut now = self.in_flight.lock().unwrap();
            let count = now.entry(owner.to_owned()).or_insert(0);
            *count += 1;
            let mut most = self.most_in_flight.lock().unwrap();
            let top = most.entry(owner.to_owned()).or_insert(0);
            *top = (*top).max(*count);
            let mut most = self.most_in_flight_in_all.lock().unwrap();
            *most = (*most).max(now.values().sum());
        }
        Scanning {
            in_flight: self.in_flight.clone(),
            owner: owner.to_owned(),
        }
    }

    /// The server's flags for this scanner, and `more`.
    fn flags<'a>(&'a self, more: &[&'a str]) -> Vec<&'a str> {
        let mut flags = vec!["--scan-url", &self.url, "--moderators", MODERATOR];
        flags.extend_from_slice(more);
        flags
    }
}

/// A scan being answered.
struct Scanning {
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    owner: String,
}

impl Drop for Scanning {
    fn drop(&mut self) {
        *self.in_flight.lock().unwrap().get_mut(&self.owner).unwrap() -= 1;
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
    let owner = header("x-image-owner");
    let _scanning = scanner.begin(&owner);
    let mut answer = *scanner.answer.lock().unwrap();
    if matches!(answer, Answer::Hold(held) if held == owner) {
        let mut released = scanner.released.subscribe();
        released.wait_for(|released| *released).await.unwrap();
        answer = *scanner.answer.lock().unwrap();
    }
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
        Answer::Hold(_) => json(r#"{"verdict": "allow"}"#),
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

/// Polls each of `images` (owner, id) until none is `PENDING`; the ids in
/// the order they were seen leave it, with their states.
async fn verdicts(app: &TestApp, images: &[(&str, &str)]) -> Vec<(String, pb::ImageState)> {
    let mut decided: Vec<(String, pb::ImageState)> = Vec::new();
    for _ in 0..600 {
        for (owner, id) in images {
            if decided.iter().any(|(done, _)| done == id) {
                continue;
            }
            let image = app.get(owner, id).await.unwrap();
            if image.state() != pb::ImageState::Pending {
                decided.push((id.to_string(), image.state()));
            }
        }
        if decided.len() == images.len() {
            return decided;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still pending after 30 s: {images:?} but {decided:?}");
}

/// Waits until none of `owner`'s images `ids` is `PENDING`: each is
/// `ACTIVE`.
async fn all_become_active(app: &TestApp, owner: &str, ids: &[String]) {
    let images: Vec<(&str, &str)> = ids.iter().map(|id| (owner, id.as_str())).collect();
    let decided = verdicts(app, &images).await;
    assert!(
        decided
            .iter()
            .all(|(_, state)| *state == pb::ImageState::Active),
        "{decided:?}"
    );
}

/// Waits until the scanner has been sent `count` scans.
async fn wait_for_scans(scanner: &Scanner, count: usize) {
    for _ in 0..400 {
        if scanner.seen().len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the scanner was sent {} scans, not {count}",
        scanner.seen().len()
    );
}

/// Two scan places, one of them a user's share: no scan is timed out while
/// the test holds it.
const TWO_PLACES: [&str; 6] = [
    "--max-concurrent-scans",
    "2",
    "--max-concurrent-scans-per-user",
    "1",
    "--scan-timeout",
    "60s",
];

pub(super) async fn one_users_backlog_of_async_scans_does_not_hold_up_another_users(
    backend: Backend,
) {
    let scanner = Scanner::start().await;
    let mut flags = vec!["--scan-mode", "async"];
    flags.extend(TWO_PLACES);
    let app = TestApp::spawn_with(backend, &scanner.flags(&flags)).await;

    // Alice's scans hang until released: her first holds her one place,
    // and her other nine wait in the replica's queue.
    scanner.answer(Answer::Hold("alice"));
    let mut alices = Vec::new();
    for seed in 0..10 {
        let image = upload(&app, "alice", seed).await.unwrap();
        assert_eq!(image.state(), pb::ImageState::Pending);
        alices.push(image.image_id);
    }
    let bobs = upload(&app, "bob", 10).await.unwrap();
    assert_eq!(bobs.state(), pb::ImageState::Pending);
    // Bob's image takes the other place at once (no repair pass runs).
    let bob = wait_for_verdict(&app, "bob", &bobs.image_id).await;
    assert_eq!(bob.state(), pb::ImageState::Active);
    assert_eq!(
        app.get("carol", &bobs.image_id).await.unwrap().state(),
        pb::ImageState::Active
    );
    let owners: Vec<String> = scanner.seen().into_iter().map(|s| s.owner).collect();
    assert_eq!(
        (
            owners.len(),
            owners.iter().filter(|o| *o == "alice").count()
        ),
        (2, 1),
        "one of Alice's scans at a time: {owners:?}"
    );
    for id in &alices {
        let image = app.get("alice", id).await.unwrap();
        assert_eq!(image.state(), pb::ImageState::Pending, "{id}");
    }

    // Released, Alice's queue is scanned in the background, one at a time.
    scanner.release(Answer::Slowly(Duration::from_millis(100)));
    all_become_active(&app, "alice", &alices).await;
    assert_eq!(scanner.most_in_flight("alice"), 1);
    assert!(*scanner.most_in_flight_in_all.lock().unwrap() <= 2);
    let mut scanned: Vec<String> = scanner.seen().into_iter().map(|s| s.image_id).collect();
    scanned.sort();
    let mut expected = alices.clone();
    expected.push(bobs.image_id);
    expected.sort();
    assert_eq!(scanned, expected, "each image scanned once");
}

pub(super) async fn one_users_sync_scans_wait_behind_another_users(backend: Backend) {
    let scanner = Scanner::start().await;
    let app = TestApp::spawn_with(backend, &scanner.flags(&TWO_PLACES)).await;
    scanner.answer(Answer::Hold("alice"));
    let alices = futures::future::join_all((0..3).map(|seed| upload(&app, "alice", seed)));
    let bob_then_release = async {
        // Alice's first scan holds her share; her others wait for it.
        wait_for_scans(&scanner, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let bob = tokio::time::timeout(Duration::from_secs(20), upload(&app, "bob", 9))
            .await
            .expect("Bob's upload is scanned while Alice's wait")
            .unwrap();
        let waiting = scanner.seen().len();
        scanner.release(Answer::Allow);
        (bob, waiting)
    };
    let (alices, (bob, scans_before_release)) = tokio::join!(alices, bob_then_release);
    assert_eq!(bob.state(), pb::ImageState::Active);
    assert_eq!(scans_before_release, 2, "Alice's one, then Bob's");
    for image in alices {
        assert_eq!(image.unwrap().state(), pb::ImageState::Active);
    }
    assert_eq!(scanner.most_in_flight("alice"), 1);
}

pub(super) async fn async_scans_past_the_queue_are_left_to_the_repair_pass(backend: Backend) {
    let scanner = Scanner::start().await;
    let mut flags = vec!["--scan-mode", "async", "--max-queued-scans-per-user", "2"];
    flags.extend(TWO_PLACES);
    let mut app = TestApp::spawn_with(backend, &scanner.flags(&flags)).await;
    // One of Alice's scans in flight (held), two queued, two left over.
    scanner.answer(Answer::Hold("alice"));
    let mut alices = Vec::new();
    for seed in 0..5 {
        alices.push(upload(&app, "alice", seed).await.unwrap().image_id);
    }
    wait_for_scans(&scanner, 1).await;
    scanner.release(Answer::Allow);
    all_become_active(&app, "alice", &alices[..3]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &alices[3..] {
        let image = app.get("alice", id).await.unwrap();
        assert_eq!(
            image.state(),
            pb::ImageState::Pending,
            "left for the repair pass"
        );
    }
    assert_eq!(scanner.seen().len(), 3);
    app.stop().await.unwrap();

    let report = app.repair_pass(false).await;
    let mut expected: Vec<String> = alices[3..]
        .iter()
        .map(|id| format!("{id}: active"))
        .collect();
    expected.sort();
    let mut done = report.pending_scans.clone();
    done.sort();
    assert_eq!(done, expected);
    let app = app.successor(&scanner.flags(&flags)).await;
    for id in &alices {
        let image = app.get("bob", id).await.unwrap();
        assert_eq!(image.state(), pb::ImageState::Active);
    }
}

pub(super) async fn unsafe_scan_settings_stop_the_start(_backend: Backend) {
    let https = "https://scanner.internal/scan";
    let plaintext = "http://scanner.internal/scan";
    // Each setting, and what its refusal names (`None`: it starts).
    let cases: [(&[&str], Option<&str>); 10] = [
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
        // A user's share of the scan places, or of the queue, above the
        // whole; a share of nothing.
        (
            &[
                "--scan-url",
                https,
                "--max-concurrent-scans",
                "2",
                "--max-concurrent-scans-per-user",
                "3",
            ],
            Some("--max-concurrent-scans-per-user"),
        ),
        (
            &["--max-concurrent-scans-per-user", "0"],
            Some("--max-concurrent-scans-per-user"),
        ),
        (
            &[
                "--max-queued-scans",
                "10",
                "--max-queued-scans-per-user",
                "11",
            ],
            Some("--max-queued-scans-per-user"),
        ),
        (
            &[
                "--scan-url",
                https,
                "--max-concurrent-scans",
                "2",
                "--max-concurrent-scans-per-user",
                "2",
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
