//! Upload sessions: streams cut and resumed (on another server instance),
//! direct uploads through presigned URLs, ownership and expiry.
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::*;

/// Small segments, so that a test image spans several.
const SEGMENT: usize = 64 * 1024;
const FLAGS: &[&str] = &["--upload-session-segment-size", "64KiB"];

/// Sessions that expire after 2 s, and a repair pass every 300 ms that
/// removes them.
pub(super) const SHORT_LIVED_SESSIONS: [&str; 6] = [
    "--upload-session-ttl",
    "2s",
    "--repair-interval",
    "300ms",
    "--repair-grace",
    "0s",
];

pub(super) async fn start(
    app: &TestApp,
    user: &str,
    spec: pb::ImageSpec,
) -> Result<pb::UploadSession, Status> {
    let request = pb::StartUploadRequest {
        spec: Some(spec),
        expected_size: None,
    };
    Ok(app
        .client()
        .start_upload(as_user(user, request))
        .await?
        .into_inner()
        .session
        .expect("a session"))
}

async fn status(
    app: &TestApp,
    user: &str,
    upload_id: &str,
) -> Result<pb::QueryUploadStatusResponse, Status> {
    let request = pb::QueryUploadStatusRequest {
        upload_id: upload_id.into(),
    };
    Ok(app
        .client()
        .query_upload_status(as_user(user, request))
        .await?
        .into_inner())
}

/// Waits until the session holds exactly `size` bytes (a broken stream
/// keeps its bytes on the server's own time).
async fn wait_persisted(app: &TestApp, user: &str, upload_id: &str, size: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let persisted = status(app, user, upload_id).await.unwrap().persisted_size;
        if persisted == size as i64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session holds {persisted} bytes, not {size}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream that resumes `upload_id` at `offset` with `bytes` in chunks,
/// finished or not.
pub(super) fn resume_messages(
    upload_id: &str,
    offset: usize,
    bytes: &[u8],
    chunk: usize,
    finish: bool,
) -> Vec<pb::UploadImageRequest> {
    let mut messages = vec![pb::UploadImageRequest {
        data: Some(Data::Resume(pb::ResumeUpload {
            upload_id: upload_id.into(),
            write_offset: offset as i64,
        })),
        ..Default::default()
    }];
    for piece in bytes.chunks(chunk) {
        messages.push(pb::UploadImageRequest {
            data: Some(Data::Chunk(Bytes::copy_from_slice(piece))),
            ..Default::default()
        });
    }
    messages.last_mut().expect("one message").finish_write = finish;
    messages
}

/// An upload stream fed message by message, over a connection of its own
/// through a proxy, so that the test may cut it.
pub(super) struct OpenStream {
    sender: mpsc::Sender<pb::UploadImageRequest>,
    call: tokio::task::JoinHandle<Result<pb::Image, Status>>,
    proxy: crate::helpers::servers::CutProxy,
}

impl OpenStream {
    pub(super) async fn open(app: &TestApp, user: &str) -> Self {
        let (sender, receiver) = mpsc::channel(4);
        let proxy = crate::helpers::servers::CutProxy::start(app.grpc_addr).await;
        let mut client = pb::image_service_client::ImageServiceClient::new(
            crate::helpers::connect(proxy.addr).await,
        );
        let request = as_user(user, ReceiverStream::new(receiver));
        let call = tokio::spawn(async move {
            let response = client.upload_image(request).await?;
            Ok(response.into_inner().image.expect("an image"))
        });
        Self {
            sender,
            call,
            proxy,
        }
    }

    pub(super) async fn send(&self, messages: Vec<pb::UploadImageRequest>) {
        for message in messages {
            self.sender.send(message).await.expect("the stream is open");
        }
    }

    /// Drops the connection under the call, with the stream still open:
    /// the server hears of it only from the socket.
    async fn cut(self) {
        self.proxy.cut();
        let ended = self.call.await.expect("the call ran");
        assert!(ended.is_err(), "a cut call stores nothing: {ended:?}");
        drop(self.sender);
    }

    /// Ends the stream without finish_write.
    pub(super) async fn close(self) -> Result<pb::Image, Status> {
        drop(self.sender);
        self.call.await.expect("the call ran")
    }
}

fn photo() -> Vec<u8> {
    let photo = images::photo_jpeg(1200, 900);
    assert!(
        photo.len() > 3 * SEGMENT,
        "the photo spans several segments"
    );
    photo
}

fn staged_objects(app: &TestApp) -> Vec<String> {
    app.stored_objects_now()
        .into_iter()
        .filter(|o| o.contains("uploads/"))
        .collect()
}

/// The bytes the staged objects hold on disk.
fn staged_bytes(app: &TestApp) -> u64 {
    staged_objects(app)
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|m| m.len())
        .sum()
}

/// Waits (up to 20 s) until no staged object is left.
async fn wait_for_no_staged_objects(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !staged_objects(app).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            staged_objects(app)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn a_cut_upload_resumes_on_another_server_from_what_it_holds(backend: Backend) {
    let photo = photo();
    let cuts = [
        ("inside the first segment", 30_000),
        ("at a segment boundary", 2 * SEGMENT),
        ("in the last segment", photo.len() - 500),
    ];
    let mut app = TestApp::spawn_with(backend, FLAGS).await;
    for (index, (place, cut)) in cuts.into_iter().enumerate() {
        let session = start(&app, "alice", spec("trip.jpg")).await.unwrap();
        let id = &session.upload_id;
        let stream = OpenStream::open(&app, "alice").await;
        stream
            .send(resume_messages(id, 0, &photo[..cut], 10_000, false))
            .await;
        if index % 2 == 0 {
            // The stream breaks with the connection: what arrived is kept.
            tokio::time::sleep(Duration::from_millis(300)).await;
            stream.cut().await;
        } else {
            let ended = stream.close().await;
            let status = assert_code(ended, Code::InvalidArgument);
            assert!(status.message().contains("resume"), "{status:?}");
        }
        wait_persisted(&app, "alice", id, cut).await;
        // The broken stream gives its lease up right after.
        tokio::time::sleep(Duration::from_millis(100)).await;

        app = app.successor(FLAGS).await;
        let persisted = status(&app, "alice", id).await.unwrap().persisted_size;
        assert_eq!(
            persisted, cut as i64,
            "{place}: the new server sees the bytes"
        );
        let image = app
            .upload_messages(
                "alice",
                resume_messages(id, cut, &photo[cut..], 16_000, true),
            )
            .await
            .unwrap_or_else(|e| panic!("{place}: the resume finishes: {e:?}"));
        assert_eq!(image.uploaded_sha256, sha256_hex(&photo), "{place}");
        assert_eq!(image.size_bytes as usize, photo.len(), "{place}");
        assert_eq!((image.width, image.height), (1200, 900));
        assert!(!image.variants.is_empty(), "{place}: variants are made");
        let downloaded = app.download("alice", &image.image_id).await.unwrap();
        assert_eq!(downloaded, photo, "{place}");

        // Finishing again is idempotent, and the status shows the image.
        let again = app
            .upload_messages("alice", resume_messages(id, 0, &[], 1, true))
            .await
            .unwrap();
        assert_eq!(again.image_id, image.image_id);
        let done = status(&app, "alice", id).await.unwrap();
        assert_eq!(done.image.unwrap().image_id, image.image_id);
    }
    let staged = app.wait_for_stored_objects(cuts.len() * 3).await;
    assert!(
        staged.iter().all(|o| !o.contains("uploads/")),
        "committed sessions keep no bytes: {staged:?}"
    );
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), cuts.len());
}

pub async fn a_resume_may_resend_held_bytes_but_not_skip_any(backend: Backend) {
    let photo = photo();
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let id = start(&app, "alice", spec("p.jpg")).await.unwrap().upload_id;
    let first = 3 * SEGMENT + 1000;
    let ended = app
        .upload_messages(
            "alice",
            resume_messages(&id, 0, &photo[..first], 8192, false),
        )
        .await;
    assert_code(ended, Code::InvalidArgument);
    wait_persisted(&app, "alice", &id, first).await;

    let beyond = app
        .upload_messages(
            "alice",
            resume_messages(&id, first + 1, &photo[first + 1..], 8192, true),
        )
        .await;
    let status = assert_code(beyond, Code::OutOfRange);
    assert!(
        status.message().contains(&first.to_string()),
        "the message names the persisted size: {status:?}"
    );

    // Re-sending from well before the persisted size is harmless.
    let from = 10_000;
    let image = app
        .upload_messages(
            "alice",
            resume_messages(&id, from, &photo[from..], 7000, true),
        )
        .await
        .unwrap();
    assert_eq!(image.uploaded_sha256, sha256_hex(&photo));
    assert_eq!(app.download("alice", &image.image_id).await.unwrap(), photo);
}

pub async fn a_second_stream_on_a_session_is_aborted(backend: Backend) {
    let photo = photo();
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let id = start(&app, "alice", spec("p.jpg")).await.unwrap().upload_id;
    let stream = OpenStream::open(&app, "alice").await;
    stream
        .send(resume_messages(&id, 0, &photo[..1000], 1000, false))
        .await;
    // The first stream has taken the session once its bytes count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = app
        .upload_messages("alice", resume_messages(&id, 0, &photo, 8192, true))
        .await;
    assert_code(second, Code::Aborted);

    let mut rest = resume_messages(&id, 0, &photo[1000..], 8192, true);
    rest.remove(0);
    stream.send(rest).await;
    let image = stream
        .call
        .await
        .unwrap()
        .expect("the first stream finishes");
    assert_eq!(image.uploaded_sha256, sha256_hex(&photo));
}

/// Every session call by `user` on `id`, in order: status, resume,
/// cancel, upload URLs, complete.
async fn every_session_call(app: &TestApp, user: &str, id: &str) -> Vec<Result<(), Status>> {
    let png = images::png(16, 16, 1);
    vec![
        status(app, user, id).await.map(|_| ()),
        app.upload_messages(user, resume_messages(id, 0, &png, 1024, true))
            .await
            .map(|_| ()),
        cancel(app, user, id).await,
        upload_urls(
            app,
            user,
            id,
            pb::get_upload_urls_request::Parts::PartCount(1),
        )
        .await
        .map(|_| ()),
        complete(app, user, id).await.map(|_| ()),
    ]
}

pub async fn only_the_owner_may_use_a_session(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let keyed = pb::ImageSpec {
        idempotency_key: Some("guessable".into()),
        ..spec("p.png")
    };
    let id = start(&app, "alice", keyed).await.unwrap().upload_id;
    let png = images::png(16, 16, 1);
    // Another user's session answers exactly like one that does not exist,
    // so a guessed (owner, idempotency key) id is never confirmed.
    let unknown = uuid::Uuid::new_v4().to_string();
    let foreign = every_session_call(&app, "mallory", &id).await;
    let missing = every_session_call(&app, "mallory", &unknown).await;
    for (foreign, missing) in foreign.into_iter().zip(missing) {
        let (foreign, missing) = (foreign.unwrap_err(), missing.unwrap_err());
        assert_eq!(foreign.code(), Code::NotFound, "{foreign:?}");
        assert_eq!(
            (foreign.code(), foreign.message()),
            (missing.code(), missing.message())
        );
    }
    let image = app
        .upload_messages("alice", resume_messages(&id, 0, &png, 1024, true))
        .await
        .expect("the owner finishes it");
    assert_eq!(image.owner_id, "alice");
}

pub async fn starting_a_session_validates_the_spec_and_is_idempotent(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let too_many_tags = pb::ImageSpec {
        tags: (0..31).map(|i| format!("t{i}")).collect(),
        ..spec("p.png")
    };
    assert_code(
        start(&app, "alice", too_many_tags).await,
        Code::InvalidArgument,
    );
    let too_large = pb::ImageSpec {
        expected_size: Some(1 << 40),
        ..spec("p.png")
    };
    assert_code(
        start(&app, "alice", too_large).await,
        Code::ResourceExhausted,
    );

    let keyed = pb::ImageSpec {
        idempotency_key: Some("k-1".into()),
        ..spec("p.png")
    };
    let first = start(&app, "alice", keyed.clone()).await.unwrap();
    let again = start(&app, "alice", keyed.clone()).await.unwrap();
    assert_eq!(
        first.upload_id, again.upload_id,
        "a retry finds its session"
    );
    let bobs = start(&app, "bob", keyed).await.unwrap();
    assert_ne!(
        bobs.upload_id, first.upload_id,
        "keys are scoped to the caller"
    );

    // Sessions are not images: nothing is listed before a commit.
    let png = images::png(16, 16, 2);
    let ended = app
        .upload_messages(
            "alice",
            resume_messages(&first.upload_id, 0, &png, 64, false),
        )
        .await;
    assert_code(ended, Code::InvalidArgument);
    wait_persisted(&app, "alice", &first.upload_id, png.len()).await;
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");

    // Cancelling removes the session and its bytes.
    cancel(&app, "alice", &first.upload_id).await.unwrap();
    assert_code(
        status(&app, "alice", &first.upload_id).await,
        Code::NotFound,
    );
    assert!(
        staged_objects(&app).is_empty(),
        "{:?}",
        staged_objects(&app)
    );
}

pub async fn expired_sessions_are_removed_with_their_bytes(backend: Backend) {
    let flags = [FLAGS, &SHORT_LIVED_SESSIONS].concat();
    let app = TestApp::spawn_with(backend, &flags).await;
    let photo = photo();
    let id = start(&app, "alice", spec("p.jpg")).await.unwrap().upload_id;
    let held = 2 * SEGMENT + 100;
    let ended = app
        .upload_messages(
            "alice",
            resume_messages(&id, 0, &photo[..held], 8192, false),
        )
        .await;
    assert_code(ended, Code::InvalidArgument);
    wait_persisted(&app, "alice", &id, held).await;
    assert!(!staged_objects(&app).is_empty());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !staged_objects(&app).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the repair pass removes an expired session's bytes: {:?}",
            staged_objects(&app)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_code(status(&app, "alice", &id).await, Code::NotFound);
    let resumed = app
        .upload_messages(
            "alice",
            resume_messages(&id, held, &photo[held..], 8192, true),
        )
        .await;
    assert_code(resumed, Code::NotFound);
    app.assert_nothing_stored("alice").await;
}

pub(super) async fn cancel(app: &TestApp, user: &str, upload_id: &str) -> Result<(), Status> {
    let request = pb::CancelUploadRequest {
        upload_id: upload_id.into(),
    };
    app.client()
        .cancel_upload(as_user(user, request))
        .await
        .map(|_| ())
}

pub(super) async fn upload_urls(
    app: &TestApp,
    user: &str,
    upload_id: &str,
    parts: pb::get_upload_urls_request::Parts,
) -> Result<Vec<String>, Status> {
    let request = pb::GetUploadUrlsRequest {
        upload_id: upload_id.into(),
        parts: Some(parts),
        expires_in: None,
    };
    Ok(app
        .client()
        .get_upload_urls(as_user(user, request))
        .await?
        .into_inner()
        .urls)
}

pub(super) async fn complete(
    app: &TestApp,
    user: &str,
    upload_id: &str,
) -> Result<pb::Image, Status> {
    let request = pb::CompleteUploadRequest {
        upload_id: upload_id.into(),
    };
    Ok(app
        .client()
        .complete_upload(as_user(user, request))
        .await?
        .into_inner()
        .image
        .expect("an image"))
}

/// Parts of exactly these sizes.
pub(super) fn exact_parts(sizes: &[usize]) -> pb::get_upload_urls_request::Parts {
    pb::get_upload_urls_request::Parts::PartSizes(pb::PartSizes {
        sizes: sizes.iter().map(|&n| n as i64).collect(),
    })
}

/// A session started for `spec` and the URL of its one part of `size`.
async fn direct_upload(
    app: &TestApp,
    user: &str,
    spec: pb::ImageSpec,
    size: usize,
) -> (String, Vec<String>) {
    let id = start(app, user, spec).await.unwrap().upload_id;
    let urls = upload_urls(app, user, &id, exact_parts(&[size]))
        .await
        .unwrap();
    (id, urls)
}

/// PUTs `body` to a presigned URL with a plain HTTP client, as a phone
/// would; returns the status.
pub(super) async fn put(url: &str, body: Vec<u8>) -> reqwest::StatusCode {
    reqwest::Client::new()
        .put(url)
        .body(body)
        .send()
        .await
        .expect("the store answers")
        .status()
}

pub async fn a_direct_upload_is_checked_and_committed_like_a_streamed_one(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let photo = images::phone_photo(640, 480);
    let id = start(&app, "alice", spec("sideways.jpg"))
        .await
        .unwrap()
        .upload_id;
    let split = photo.len() / 2;
    let sizes = vec![split as i64, (photo.len() - split) as i64];
    let urls = upload_urls(
        &app,
        "alice",
        &id,
        pb::get_upload_urls_request::Parts::PartSizes(pb::PartSizes { sizes }),
    )
    .await
    .unwrap();
    assert_eq!(urls.len(), 2);

    // A part may not be longer than the size its URL was made for.
    let mut longer = photo[..split].to_vec();
    longer.push(0);
    assert!(!put(&urls[0], longer).await.is_success());
    // Completing before every part has arrived changes nothing.
    assert!(put(&urls[0], photo[..split].to_vec()).await.is_success());
    assert_code(complete(&app, "alice", &id).await, Code::FailedPrecondition);
    assert!(put(&urls[1], photo[split..].to_vec()).await.is_success());

    let image = complete(&app, "alice", &id).await.unwrap();
    assert_eq!(image.uploaded_sha256, sha256_hex(&photo));
    assert!(image.metadata_stripped, "the same pipeline strips GPS");
    assert_eq!((image.width, image.height), (480, 640), "upright");
    assert!(!image.variants.is_empty() && !image.blurhash.is_empty());
    let stored = app.download("alice", &image.image_id).await.unwrap();
    assert_eq!(sha256_hex(&stored), image.sha256);
    assert!(stored.len() < photo.len());

    let again = complete(&app, "alice", &id).await.unwrap();
    assert_eq!(again.image_id, image.image_id, "completing is idempotent");
    assert!(
        staged_objects(&app).is_empty(),
        "{:?}",
        staged_objects(&app)
    );
}

pub async fn a_direct_upload_of_a_non_image_is_refused_and_removed(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let text = b"these are not the pixels you are looking for\n".repeat(100);
    let (id, urls) = direct_upload(&app, "alice", spec("notes.txt"), text.len()).await;
    assert!(put(&urls[0], text).await.is_success());
    assert_code(complete(&app, "alice", &id).await, Code::InvalidArgument);
    assert_code(status(&app, "alice", &id).await, Code::NotFound);
    app.assert_nothing_stored("alice").await;

    // A streamed session cannot switch to URLs, nor the other way round.
    let png = images::png(8, 8, 3);
    let streamed = start(&app, "alice", spec("a.png")).await.unwrap().upload_id;
    let ended = app
        .upload_messages(
            "alice",
            resume_messages(&streamed, 0, &png[..20], 20, false),
        )
        .await;
    assert_code(ended, Code::InvalidArgument);
    wait_persisted(&app, "alice", &streamed, 20).await;
    let switched = upload_urls(
        &app,
        "alice",
        &streamed,
        pb::get_upload_urls_request::Parts::PartCount(1),
    )
    .await;
    assert_code(switched, Code::FailedPrecondition);
    assert_code(
        complete(&app, "alice", &streamed).await,
        Code::FailedPrecondition,
    );
}

pub async fn bytes_sent_after_a_cancel_are_removed_by_the_repair_pass(backend: Backend) {
    let flags = [
        FLAGS,
        &["--repair-interval", "300ms", "--repair-grace", "0s"],
    ]
    .concat();
    let app = TestApp::spawn_with(backend, &flags).await;
    let png = images::png(8, 8, 1);
    let (id, urls) = direct_upload(&app, "alice", spec("p.png"), png.len()).await;
    cancel(&app, "alice", &id).await.unwrap();
    let sent = put(&urls[0], png).await;
    match backend {
        Backend::Embedded => assert_eq!(sent, reqwest::StatusCode::GONE),
        // A presigned S3 URL works until it expires: what it stores is
        // nobody's.
        Backend::Aws => assert!(sent.is_success(), "{sent}"),
    }
    wait_for_no_staged_objects(&app).await;
    assert_code(complete(&app, "alice", &id).await, Code::NotFound);
}

pub async fn part_urls_of_a_closed_session_leave_nothing_at_rest(backend: Backend) {
    // No repair pass: what a closed session's URLs store goes without it.
    let flags = [
        FLAGS,
        &["--upload-url-expiry", "5s", "--repair-interval", "0s"],
    ]
    .concat();
    let app = TestApp::spawn_with(backend, &flags).await;
    let png = images::png(8, 8, 1);
    let (cancelled, cancelled_urls) = direct_upload(&app, "alice", spec("c.png"), png.len()).await;
    cancel(&app, "alice", &cancelled).await.unwrap();
    let (completed, completed_urls) = direct_upload(&app, "alice", spec("d.png"), png.len()).await;
    assert!(put(&completed_urls[0], png.clone()).await.is_success());
    complete(&app, "alice", &completed).await.unwrap();

    let after_cancel = put(&cancelled_urls[0], png.clone()).await;
    let after_complete = put(&completed_urls[0], png.clone()).await;
    match backend {
        Backend::Embedded => {
            assert_eq!(after_cancel, reqwest::StatusCode::GONE);
            assert_eq!(after_complete, reqwest::StatusCode::GONE);
            assert_eq!(staged_objects(&app), Vec::<String>::new());
        }
        // A presigned S3 PUT cannot be revoked: what it stores is removed
        // once the URL is over.
        Backend::Aws => {
            assert!(after_cancel.is_success(), "{after_cancel}");
            assert!(after_complete.is_success(), "{after_complete}");
            assert_eq!(staged_objects(&app).len(), 2);
            wait_for_no_staged_objects(&app).await;
        }
    }
}

pub async fn upload_urls_asked_again_are_for_the_same_parts(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let png = images::png(16, 16, 2);
    let (id, first) = direct_upload(&app, "alice", spec("p.png"), png.len()).await;
    // Fresh URLs for the same parts, say after the first ones expired.
    let again = upload_urls(&app, "alice", &id, exact_parts(&[png.len()]))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    // Other parts would let old and new URLs together stage more than the
    // session is charged for.
    let half = png.len() / 2;
    let mut others = vec![
        exact_parts(&[half, png.len() - half]),
        exact_parts(&[png.len() + 1]),
    ];
    if let Backend::Embedded = backend {
        others.push(pb::get_upload_urls_request::Parts::PartCount(1));
    }
    for other in others {
        assert_code(
            upload_urls(&app, "alice", &id, other).await,
            Code::FailedPrecondition,
        );
    }
    assert!(put(&first[0], png.clone()).await.is_success());
    let image = complete(&app, "alice", &id).await.unwrap();
    assert_eq!(image.uploaded_sha256, sha256_hex(&png));
}

pub async fn cancelling_direct_uploads_over_and_over_stays_within_the_staged_cap(backend: Backend) {
    const CAP: u64 = 1024 * 1024;
    const PART: usize = 300 * 1024;
    let flags = [FLAGS, &["--max-staged-bytes-per-user", "1MiB"]].concat();
    let app = TestApp::spawn_with(backend, &flags).await;
    let (mut admitted, mut refused) = (0, 0);
    for round in 0..8 {
        match start(&app, "mallory", sized(&format!("{round}.png"), PART)).await {
            Ok(session) => {
                admitted += 1;
                let id = session.upload_id;
                let urls = upload_urls(&app, "mallory", &id, exact_parts(&[PART]))
                    .await
                    .unwrap();
                cancel(&app, "mallory", &id).await.unwrap();
                put(&urls[0], vec![0; PART]).await;
            }
            Err(status) => {
                let status = assert_over_limit(Err::<(), _>(status));
                assert!(
                    status.message().contains("--max-staged-bytes-per-user"),
                    "{status:?}"
                );
                refused += 1;
            }
        }
        let at_rest = staged_bytes(&app);
        assert!(
            at_rest <= CAP,
            "round {round}: {at_rest} bytes at rest, over the {CAP} byte cap"
        );
    }
    match backend {
        // Its listener takes no part for a closed session: nothing is held.
        Backend::Embedded => assert_eq!((admitted, refused), (8, 0)),
        // The URLs of cancelled sessions live on, and so do their charges.
        Backend::Aws => assert_eq!((admitted, refused), (3, 5)),
    }
    start(&app, "bob", sized("b.png", PART))
        .await
        .expect("other users are unaffected");
}

/// Session ids derive from the idempotency key: a session started again
/// under a cancelled one's id would make its part URLs (signed for its
/// sizes) store parts again, charged for the new session's size.
pub async fn a_cancelled_sessions_key_does_not_reopen_its_part_urls(backend: Backend) {
    const PART: usize = 300 * 1024;
    let flags = [
        FLAGS,
        &["--upload-url-expiry", "2s", "--repair-interval", "0s"],
    ]
    .concat();
    let app = TestApp::spawn_with(backend, &flags).await;
    let keyed = |size| pb::ImageSpec {
        idempotency_key: Some("k".into()),
        ..sized("p.png", size)
    };
    let id = start(&app, "mallory", keyed(PART)).await.unwrap().upload_id;
    let urls = upload_urls(&app, "mallory", &id, exact_parts(&[PART]))
        .await
        .unwrap();
    cancel(&app, "mallory", &id).await.unwrap();
    let refused = assert_code(
        start(&app, "mallory", keyed(1)).await,
        Code::FailedPrecondition,
    );
    assert!(
        refused.message().contains("new idempotency key"),
        "{refused:?}"
    );
    let sent = put(&urls[0], vec![0; PART]).await;
    match backend {
        Backend::Embedded => {
            assert_eq!(sent, reqwest::StatusCode::GONE);
            assert_eq!(staged_objects(&app), Vec::<String>::new());
        }
        // S3 takes it: the cancelled session's charge holds it until the
        // URL is over, when it is removed.
        Backend::Aws => assert!(sent.is_success(), "{sent}"),
    }

    // Once the URL is over (and the time for a part to arrive), the key
    // starts a fresh session, which holds nothing the old URL sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let fresh = loop {
        match start(&app, "mallory", keyed(1)).await {
            Ok(session) => break session,
            Err(status) if status.code() == Code::FailedPrecondition => {
                assert!(tokio::time::Instant::now() < deadline, "{status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    };
    assert_eq!(staged_objects(&app), Vec::<String>::new());
    let late = put(&urls[0], vec![0; PART]).await;
    assert_eq!(late, reqwest::StatusCode::FORBIDDEN);
    assert_eq!(staged_objects(&app), Vec::<String>::new());
    assert_code(
        complete(&app, "mallory", &fresh.upload_id).await,
        Code::FailedPrecondition,
    );
}

/// Likewise once a direct upload's image is deleted: its key would start a
/// session under the id whose part URLs still live.
pub async fn a_deleted_uploads_key_does_not_reopen_its_part_urls(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let png = images::png(8, 8, 1);
    let keyed = pb::ImageSpec {
        idempotency_key: Some("k".into()),
        ..spec("p.png")
    };
    let id = start(&app, "mallory", keyed.clone())
        .await
        .unwrap()
        .upload_id;
    let urls = upload_urls(&app, "mallory", &id, exact_parts(&[png.len()]))
        .await
        .unwrap();
    assert!(put(&urls[0], png.clone()).await.is_success());
    let image = complete(&app, "mallory", &id).await.unwrap();
    app.delete("mallory", &image.image_id).await.unwrap();
    assert_code(
        start(&app, "mallory", keyed).await,
        Code::FailedPrecondition,
    );
    if let Backend::Embedded = backend {
        assert_eq!(put(&urls[0], png).await, reqwest::StatusCode::GONE);
        assert_eq!(staged_objects(&app), Vec::<String>::new());
    }
}

/// A refusal over a fixed limit, which gRPC's own retries must not repeat.
fn assert_over_limit<T: std::fmt::Debug>(result: Result<T, Status>) -> Status {
    let status = assert_code(result, Code::ResourceExhausted);
    assert_eq!(
        status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .and_then(|v| v.to_str().ok()),
        Some("-1"),
        "{status:?}"
    );
    status
}

fn sized(name: &str, size: usize) -> pb::ImageSpec {
    pb::ImageSpec {
        expected_size: Some(size as i64),
        ..spec(name)
    }
}

pub async fn each_user_has_a_bounded_number_of_open_sessions(backend: Backend) {
    let flags = [
        FLAGS,
        &[
            "--max-open-sessions-per-user",
            "3",
            "--max-staged-bytes-per-user",
            "1MiB",
        ],
    ]
    .concat();
    let app = TestApp::spawn_with(backend, &flags).await;
    let png = images::png(16, 16, 3);
    let mut open = Vec::new();
    for i in 0..3 {
        let session = start(&app, "alice", sized(&format!("{i}.png"), png.len())).await;
        open.push(session.unwrap().upload_id);
    }
    let refused = assert_over_limit(start(&app, "alice", sized("4.png", png.len())).await);
    assert!(
        refused.message().contains("--max-open-sessions-per-user"),
        "{refused:?}"
    );
    start(&app, "bob", sized("b.png", png.len()))
        .await
        .expect("other users are unaffected");

    // A cancelled session frees its place, and so does a committed one.
    cancel(&app, "alice", &open.pop().unwrap()).await.unwrap();
    open.push(
        start(&app, "alice", sized("5.png", png.len()))
            .await
            .unwrap()
            .upload_id,
    );
    assert_over_limit(start(&app, "alice", sized("6.png", png.len())).await);
    let done = open.pop().unwrap();
    app.upload_messages("alice", resume_messages(&done, 0, &png, 1024, true))
        .await
        .expect("committed");
    start(&app, "alice", sized("7.png", png.len()))
        .await
        .expect("a committed session no longer counts");
}

pub async fn each_user_has_a_bounded_number_of_staged_bytes(backend: Backend) {
    let flags = [
        FLAGS,
        &[
            "--max-staged-bytes-per-user",
            "1MiB",
            "--max-image-bytes",
            "2MiB",
        ],
    ]
    .concat();
    let app = TestApp::spawn_with(backend, &flags).await;
    // Without expected_size a session may stage a whole --max-image-bytes.
    let refused = assert_over_limit(start(&app, "alice", spec("big.png")).await);
    assert!(
        refused.message().contains("--max-staged-bytes-per-user"),
        "{refused:?}"
    );
    let first = start(&app, "alice", sized("a.png", 600 * 1024))
        .await
        .unwrap();
    assert_over_limit(start(&app, "alice", sized("b.png", 600 * 1024)).await);
    start(&app, "alice", sized("c.png", 400 * 1024))
        .await
        .expect("what is left of the budget");
    start(&app, "bob", sized("b.png", 600 * 1024))
        .await
        .expect("other users are unaffected");
    cancel(&app, "alice", &first.upload_id).await.unwrap();
    start(&app, "alice", sized("b.png", 600 * 1024))
        .await
        .expect("a cancelled session's bytes are free again");
}

pub async fn a_direct_uploads_parts_hold_no_more_than_the_session(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let png = images::png(64, 64, 4);
    // The store itself refuses a part longer than its URL names.
    let (_, urls) = direct_upload(&app, "alice", sized("p.png", png.len()), png.len()).await;
    let mut longer = png.clone();
    longer.extend_from_slice(&[0; 4096]);
    assert!(!put(&urls[0], longer).await.is_success());
    assert_eq!(app.stored_objects_now().len(), 0, "nothing was kept");

    let id = start(&app, "alice", sized("q.png", png.len()))
        .await
        .unwrap()
        .upload_id;
    let counted = upload_urls(
        &app,
        "alice",
        &id,
        pb::get_upload_urls_request::Parts::PartCount(2),
    )
    .await;
    match backend {
        // A presigned S3 PUT is bounded only by a signed exact length.
        Backend::Aws => {
            assert_code(counted, Code::InvalidArgument);
        }
        // Parts of any size, but together no more than the session's size.
        Backend::Embedded => {
            let urls = counted.unwrap();
            assert!(put(&urls[0], png.clone()).await.is_success());
            assert_eq!(
                put(&urls[1], vec![0; 16]).await,
                reqwest::StatusCode::PAYLOAD_TOO_LARGE
            );
            assert!(put(&urls[0], png[..100].to_vec()).await.is_success());
            assert!(put(&urls[1], png[100..].to_vec()).await.is_success());
            let image = complete(&app, "alice", &id).await.unwrap();
            assert_eq!(image.uploaded_sha256, sha256_hex(&png));
        }
    }
}

/// Rounds of the race between `CompleteUpload` and `CancelUpload`.
const RACES: usize = 30;

pub async fn a_cancel_racing_a_complete_never_both_succeed(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let photo = images::photo_jpeg(640, 480);
    let (mut completed, mut cancelled, mut neither) = (Vec::new(), 0, 0);
    for round in 0..RACES {
        let (id, urls) = direct_upload(&app, "alice", spec("race.jpg"), photo.len()).await;
        assert!(put(&urls[0], photo.clone()).await.is_success());
        // The cancel lands before, during or after the complete's store.
        let delay = Duration::from_millis((round % 10) as u64 * 4);
        let (complete, cancel) = tokio::join!(complete(&app, "alice", &id), async {
            tokio::time::sleep(delay).await;
            cancel(&app, "alice", &id).await
        });
        match (&complete, &cancel) {
            (Ok(_), Ok(())) => panic!("round {round}: both the complete and the cancel said OK"),
            (Ok(image), Err(refused)) => {
                assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
                assert!(
                    refused.message().contains("being completed")
                        || refused.message().contains("committed"),
                    "{refused:?}"
                );
                completed.push(image.image_id.clone());
            }
            (Err(refused), Ok(())) => {
                assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
                cancelled += 1;
            }
            // Each may lose to the other's change and say so (ABORTED).
            (Err(_), Err(_)) => neither += 1,
        }
    }
    assert!(neither < RACES, "every round ended without a winner");
    // What the caller was told is what is stored: the images of the
    // completes, nothing of the cancels, and the usage to match.
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await;
    let mut listed = ids(&listed.unwrap());
    listed.sort();
    completed.sort();
    assert_eq!(
        listed, completed,
        "{cancelled} cancelled, {neither} neither"
    );
    let usage = super::quotas::usage(&app, "alice", "alice").await.unwrap();
    assert_eq!(
        (usage.images_held, usage.images_reserved),
        (completed.len() as u64, 0),
        "{usage:?}"
    );
}
