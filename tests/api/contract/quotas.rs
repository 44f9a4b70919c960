//! Per-user usage and quotas: held across replicas, given back by deletes,
//! corrected by the repair pass, read and set by the users allowed to.
use std::time::Duration;

use super::*;
use tonic_types::StatusExt;

/// Every flag a quota test shares: no variants (an image holds its
/// original only, so bytes are known), and room for 16 uploads at once.
const QUOTA_FLAGS: [&str; 4] = ["--variants", "false", "--max-uploads-per-user", "16"];

pub(super) async fn usage(app: &TestApp, caller: &str, user: &str) -> Result<pb::Usage, Status> {
    let request = as_user(
        caller,
        pb::GetUsageRequest {
            user_id: user.into(),
        },
    );
    let response = app.client().get_usage(request).await?;
    Ok(response.into_inner().usage.expect("a usage"))
}

async fn set_quota(
    app: &TestApp,
    caller: &str,
    user: &str,
    bytes: Option<u64>,
    images: Option<u64>,
) -> Result<pb::Usage, Status> {
    let request = as_user(
        caller,
        pb::SetUserQuotaRequest {
            user_id: user.into(),
            quota_bytes: bytes,
            quota_images: images,
        },
    );
    let response = app.client().set_user_quota(request).await?;
    Ok(response.into_inner().usage.expect("a usage"))
}

/// The bytes an image holds (no variants here: its original).
fn size(image: &pb::Image) -> u64 {
    u64::try_from(image.size_bytes).expect("a size")
}

/// An upload that declares its size, as the quota reserves from it.
async fn upload_declared(app: &TestApp, user: &str, bytes: &[u8]) -> Result<pb::Image, Status> {
    let spec = pb::ImageSpec {
        expected_size: Some(bytes.len() as i64),
        ..spec("quota.png")
    };
    app.upload(user, spec, bytes).await
}

/// A refusal past a quota: RESOURCE_EXHAUSTED, a QuotaFailure naming the
/// user, and no retry.
#[track_caller]
fn assert_quota_refusal(status: &Status, user: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let failure = status
        .get_details_quota_failure()
        .expect("a google.rpc.QuotaFailure");
    assert_eq!(failure.violations.len(), 1, "{failure:?}");
    assert_eq!(failure.violations[0].subject, format!("user:{user}"));
    assert!(
        failure.violations[0].description.contains("quota"),
        "{failure:?}"
    );
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "-1",
        "not worth retrying"
    );
}

pub(super) async fn concurrent_uploads_on_two_replicas_never_pass_the_quota(backend: Backend) {
    let pngs: Vec<Vec<u8>> = (0..16).map(|seed| images::png(8, 8, seed)).collect();
    let largest = pngs.iter().map(Vec::len).max().unwrap() as u64;
    let quota_bytes = (10 * largest).to_string();
    let mut flags = QUOTA_FLAGS.to_vec();
    flags.extend([
        "--quota-images-per-user",
        "10",
        "--quota-bytes-per-user",
        &quota_bytes,
    ]);
    let first = TestApp::spawn_with(backend, &flags).await;
    // The aws backend's replicas share the stores; the embedded backend
    // has one process per data directory, whose uploads race all the same.
    let second = match backend {
        Backend::Aws => Some(first.replica(&flags).await),
        Backend::Embedded => None,
    };
    let uploads = pngs.iter().enumerate().map(|(i, png)| {
        let app = match (&second, i % 2) {
            (Some(second), 1) => second,
            _ => &first,
        };
        upload_declared(app, "hoarder", png)
    });
    let results = futures::future::join_all(uploads).await;
    let stored: Vec<&pb::Image> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_quota_refusal(refused, "hoarder");
    }
    assert_eq!(stored.len(), 10, "the quota fits 10");
    let held = usage(&first, "hoarder", "").await.unwrap();
    assert_eq!(held.images_held, 10);
    assert!(held.bytes_held <= 10 * largest, "{held:?}");
    assert_eq!(
        held.bytes_held,
        stored.iter().map(|i| size(i)).sum::<u64>(),
        "usage is what is stored"
    );
    assert_eq!((held.bytes_reserved, held.images_reserved), (0, 0));
    assert_eq!((held.quota_bytes, held.quota_images), (10 * largest, 10));
    // Another user is not touched by the hoarder's quota.
    upload_declared(&first, "neighbour", &pngs[0])
        .await
        .unwrap();

    // Deletes give the room back, on any replica.
    let other = second.as_ref().unwrap_or(&first);
    for image in &stored[..3] {
        other.delete("hoarder", &image.image_id).await.unwrap();
    }
    let after = usage(other, "hoarder", "hoarder").await.unwrap();
    assert_eq!(after.images_held, 7);
    assert_eq!(
        after.bytes_held,
        stored[3..].iter().map(|i| size(i)).sum::<u64>()
    );
    for png in &pngs[..3] {
        upload_declared(other, "hoarder", png).await.unwrap();
    }
    let refused = upload_declared(&first, "hoarder", &pngs[3]).await;
    assert_quota_refusal(&assert_code(refused, Code::ResourceExhausted), "hoarder");
    assert_eq!(usage(&first, "hoarder", "").await.unwrap().images_held, 10);
}

/// Every byte an image holds: its original and each stored object of its
/// variants (entries that share one object count it once).
fn held_by(image: &pb::Image) -> u64 {
    let mut objects = std::collections::HashMap::new();
    for variant in &image.variants {
        objects.insert(
            (variant.width, variant.height, variant.content_type.clone()),
            variant.size_bytes as u64,
        );
    }
    size(image) + objects.values().sum::<u64>()
}

/// Small originals whose variants hold many times their size: the upload
/// reserves the declared size, and the variants made after it are held to
/// the quota too, across two replicas. Each refusal is a quota refusal
/// that leaves nothing behind, and usage is what is stored.
pub(super) async fn variants_never_take_concurrent_uploads_past_the_byte_quota(backend: Backend) {
    // A few KiB of deflated PNG; its JPEG variants are many times that.
    let png = images::striped_png(1080, 1080, 7);
    let flags = ["--max-uploads-per-user", "16", "--admins", "root"];
    let first = TestApp::spawn_with(backend, &flags).await;
    let probe = upload_declared(&first, "probe", &png).await.unwrap();
    let one = held_by(&probe);
    assert!(
        one > 3 * png.len() as u64,
        "the variants hold more than the original: {one} against {}",
        png.len()
    );
    // Room for four such images, and for the originals of many more.
    let quota = 4 * one + one / 2;
    set_quota(&first, "root", "hoarder", Some(quota), None)
        .await
        .unwrap();
    let second = match backend {
        Backend::Aws => Some(first.replica(&flags).await),
        Backend::Embedded => None,
    };
    let uploads = (0..16).map(|i| {
        let app = match (&second, i % 2) {
            (Some(second), 1) => second,
            _ => &first,
        };
        upload_declared(app, "hoarder", &png)
    });
    let results = futures::future::join_all(uploads).await;
    let stored: Vec<&pb::Image> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_quota_refusal(refused, "hoarder");
    }
    let held = usage(&first, "hoarder", "").await.unwrap();
    assert!(held.bytes_held <= quota, "{held:?} past {quota}");
    assert_eq!(
        held.bytes_held,
        stored.iter().map(|i| held_by(i)).sum::<u64>(),
        "usage is what is stored"
    );
    assert_eq!((held.bytes_reserved, held.images_reserved), (0, 0));
    assert!(
        (1..=4).contains(&stored.len()),
        "four fit: {} stored",
        stored.len()
    );
    assert_eq!(held.images_held, stored.len() as u64);
    let listed = first
        .list_all("hoarder", owned_by("hoarder"))
        .await
        .unwrap();
    assert_eq!(
        listed.len(),
        stored.len(),
        "a refused upload stores nothing"
    );
    // Only the stored images' objects remain (and the probe's).
    let objects = 1 + probe.variants.len();
    let left = first
        .wait_for_stored_objects(objects * (stored.len() + 1))
        .await;
    assert_eq!(left.len(), objects * (stored.len() + 1), "{left:?}");
}

pub(super) async fn usage_is_read_by_its_user_or_an_admin_who_alone_sets_quotas(backend: Backend) {
    let mut flags = QUOTA_FLAGS.to_vec();
    flags.extend(["--admins", "root,ops", "--quota-images-per-user", "5"]);
    let app = TestApp::spawn_with(backend, &flags).await;
    let png = images::png(8, 8, 1);
    let image = upload_declared(&app, "alice", &png).await.unwrap();

    let own = usage(&app, "alice", "").await.unwrap();
    assert_eq!(own.user_id, "alice");
    assert_eq!((own.images_held, own.bytes_held), (1, size(&image)));
    assert_eq!((own.quota_images, own.quota_bytes), (5, 0));
    assert!(!own.quota_overridden);
    assert_code(usage(&app, "bob", "alice").await, Code::PermissionDenied);
    assert_eq!(usage(&app, "ops", "alice").await.unwrap(), own);

    // Only an admin sets a quota; it applies at once.
    assert_code(
        set_quota(&app, "alice", "alice", None, Some(100)).await,
        Code::PermissionDenied,
    );
    let tight = set_quota(&app, "root", "alice", Some(png.len() as u64), None)
        .await
        .unwrap();
    assert_eq!(
        (tight.quota_bytes, tight.quota_images),
        (png.len() as u64, 5)
    );
    assert!(tight.quota_overridden);
    let refused = upload_declared(&app, "alice", &images::png(8, 8, 2)).await;
    assert_quota_refusal(&assert_code(refused, Code::ResourceExhausted), "alice");
    upload_declared(&app, "bob", &images::png(8, 8, 2))
        .await
        .expect("other users keep the default");
    // Unset, the default applies again.
    let reset = set_quota(&app, "root", "alice", None, None).await.unwrap();
    assert!(!reset.quota_overridden);
    upload_declared(&app, "alice", &images::png(8, 8, 2))
        .await
        .unwrap();
    assert_code(
        set_quota(&app, "root", "", Some(1), None).await,
        Code::InvalidArgument,
    );
}

/// A retry of an upload already stored (same idempotency key, same bytes)
/// returns the stored image even when the user is at the quota: it stores
/// nothing new. Other bytes under the key are still ALREADY_EXISTS, and a
/// new upload is refused.
pub(super) async fn a_retry_of_a_stored_upload_is_answered_at_the_quota(backend: Backend) {
    let mut flags = QUOTA_FLAGS.to_vec();
    flags.extend(["--quota-images-per-user", "1"]);
    let app = TestApp::spawn_with(backend, &flags).await;
    let keyed = || pb::ImageSpec {
        idempotency_key: Some("avatar".into()),
        expected_size: None,
        ..spec("a.png")
    };
    let png = images::png(8, 8, 1);
    let stored = app.upload("alice", keyed(), &png).await.unwrap();
    for _ in 0..2 {
        let again = app.upload("alice", keyed(), &png).await.unwrap();
        assert_eq!(again.image_id, stored.image_id);
    }
    assert_code(
        app.upload("alice", keyed(), &images::png(8, 8, 2)).await,
        Code::AlreadyExists,
    );
    let refused = upload_declared(&app, "alice", &images::png(8, 8, 3)).await;
    assert_quota_refusal(&assert_code(refused, Code::ResourceExhausted), "alice");
    let held = usage(&app, "alice", "").await.unwrap();
    assert_eq!(
        (held.images_held, held.bytes_held, held.images_reserved),
        (1, size(&stored), 0)
    );
}

pub(super) async fn a_refused_upload_gives_its_reservation_back_before_it_answers(
    backend: Backend,
) {
    let mut flags = QUOTA_FLAGS.to_vec();
    flags.extend(["--quota-images-per-user", "1"]);
    let app = TestApp::spawn_with(backend, &flags).await;
    for round in 0..5 {
        // A file that is not an image: refused for what it is, and the
        // next call (a corrected upload) finds its room free at once.
        let refused = upload_declared(&app, "alice", b"not an image at all").await;
        assert_code(refused, Code::InvalidArgument);
        let held = usage(&app, "alice", "").await.unwrap();
        assert_eq!(
            (held.images_reserved, held.bytes_reserved, held.images_held),
            (0, 0, 0),
            "round {round}: {held:?}"
        );
    }
    upload_declared(&app, "alice", &images::png(8, 8, 1))
        .await
        .expect("the quota's one image is free");
}

pub(super) async fn the_repair_pass_corrects_a_reservation_a_crash_left(backend: Backend) {
    use image_service::domain::usage::{UsageChange, UsageReservation};
    let mut flags = QUOTA_FLAGS.to_vec();
    flags.extend(["--quota-bytes-per-user", "1MiB"]);
    let mut app = TestApp::spawn_with(backend, &flags).await;
    let image = upload_declared(&app, "carol", &images::png(8, 8, 3))
        .await
        .unwrap();
    if backend == Backend::Embedded {
        app.stop().await.unwrap();
    }
    let carol = image_service::domain::UserId::parse("carol").unwrap();
    let now = image_service::domain::image::Timestamp::now().as_micros();
    // A replica reserved 600 KiB an hour ago, longer than any upload may
    // take (--upload-deadline), and died before its upload ended; another
    // reserved 100 KiB just now, for an upload that may still be running.
    let (dead, running) = (600 * 1024, 100 * 1024);
    let metadata = app.metadata_beside().await;
    for (bytes, started) in [(dead, now - 3_600_000_000), (running, now)] {
        let reservation = UsageReservation {
            id: uuid::Uuid::new_v4().to_string(),
            bytes,
            images: 1,
            started: image_service::domain::image::Timestamp::from_micros(started),
        };
        let change = UsageChange {
            bytes: bytes as i64,
            images: 1,
            add: Some(reservation),
            remove: None,
        };
        metadata.change_usage(&carol, &change, None).await.unwrap();
    }
    drop(metadata);
    let before = size(&image) + dead + running;
    {
        let beside = app.images_beside().await;
        let report = beside.repair(Duration::ZERO, false).await.unwrap();
        assert_eq!(report.usage_corrections.len(), 1, "{report:?}");
        let correction = &report.usage_corrections[0];
        assert_eq!(correction.user, "carol");
        assert_eq!(correction.stale_reservations, 1);
        assert_eq!(
            (correction.bytes_before, correction.images_before),
            (before, 3)
        );
        assert_eq!(
            (correction.bytes_after, correction.images_after),
            (size(&image) + running, 2)
        );
        let report = beside.repair(Duration::ZERO, false).await.unwrap();
        assert!(
            report.usage_corrections.is_empty(),
            "corrected once: {report:?}"
        );
    }
    let app = match backend {
        Backend::Embedded => app.successor(&flags).await,
        Backend::Aws => app,
    };
    let held = usage(&app, "carol", "").await.unwrap();
    assert_eq!(
        (held.bytes_held, held.images_held, held.bytes_reserved),
        (size(&image) + running, 2, running)
    );
    // The room the dead upload held is usable again: 600 KiB would not
    // have fitted beside it.
    let large = images::png(400, 400, 5);
    assert!(large.len() as u64 + before > 1024 * 1024, "{}", large.len());
    upload_declared(&app, "carol", &large).await.unwrap();
}

/// Starts an upload session as `user`, declaring `size` when given.
async fn start_session(app: &TestApp, user: &str, size: Option<usize>) -> Result<String, Status> {
    let spec = pb::ImageSpec {
        expected_size: size.map(|n| n as i64),
        ..spec("session.png")
    };
    Ok(super::sessions::start(app, user, spec).await?.upload_id)
}

/// What `user` holds: bytes and images, then the reserved part of each.
async fn held(app: &TestApp, user: &str) -> (u64, u64, u64, u64) {
    let usage = usage(app, user, "").await.unwrap();
    (
        usage.bytes_held,
        usage.images_held,
        usage.bytes_reserved,
        usage.images_reserved,
    )
}

pub(super) async fn a_sessions_bytes_are_held_from_its_start_to_its_end(backend: Backend) {
    use super::sessions::{cancel, complete, exact_parts, put, upload_urls};
    let png = images::png(24, 24, 9);
    let len = png.len() as u64;
    let max = crate::helpers::TEST_MAX_IMAGE_BYTES as u64;
    let mut flags = QUOTA_FLAGS.to_vec();
    flags.extend(["--admins", "root"]);
    let first = TestApp::spawn_with(backend, &flags).await;
    // On the aws backend the session is finished by another replica.
    let second = match backend {
        Backend::Aws => Some(first.replica(&flags).await),
        Backend::Embedded => None,
    };
    let other = second.as_ref().unwrap_or(&first);

    // Started: its declared size and one image are held; cancelled: given back.
    let id = start_session(&first, "dana", Some(png.len()))
        .await
        .unwrap();
    assert_eq!(held(&first, "dana").await, (len, 1, len, 1));
    cancel(other, "dana", &id).await.unwrap();
    assert_eq!(held(&first, "dana").await, (0, 0, 0, 0));

    // No declared size: the largest image allowed is held; a cancel after
    // upload URLs were handed out gives it back too.
    let id = start_session(&first, "dana", None).await.unwrap();
    assert_eq!(held(&first, "dana").await, (max, 1, max, 1));
    upload_urls(&first, "dana", &id, exact_parts(&[png.len()]))
        .await
        .unwrap();
    cancel(&first, "dana", &id).await.unwrap();
    assert_eq!(held(&first, "dana").await, (0, 0, 0, 0));

    // Completed: the reservation becomes the bytes stored, once, however
    // often the completion is asked for.
    let id = start_session(&first, "dana", Some(png.len()))
        .await
        .unwrap();
    let urls = upload_urls(&first, "dana", &id, exact_parts(&[png.len()]))
        .await
        .unwrap();
    assert!(put(&urls[0], png.clone()).await.is_success());
    let image = complete(other, "dana", &id).await.unwrap();
    let stored = size(&image);
    assert_eq!(held(&first, "dana").await, (stored, 1, 0, 0));
    let again = complete(&first, "dana", &id).await.unwrap();
    assert_eq!(again.image_id, image.image_id);
    assert_eq!(
        held(&first, "dana").await,
        (stored, 1, 0, 0),
        "counted once"
    );

    // A start past the quota is refused like an upload, and holds nothing.
    set_quota(&first, "root", "dana", Some(stored + len), None)
        .await
        .unwrap();
    let refused = start_session(&first, "dana", None).await.unwrap_err();
    assert_quota_refusal(&refused, "dana");
    assert_eq!(held(&first, "dana").await, (stored, 1, 0, 0));
    let fits = start_session(&first, "dana", Some(png.len()))
        .await
        .unwrap();
    let refused = start_session(&first, "dana", Some(1)).await.unwrap_err();
    assert_quota_refusal(&refused, "dana");
    assert_eq!(held(&first, "dana").await, (stored + len, 2, len, 1));
    cancel(&first, "dana", &fits).await.unwrap();
    assert_eq!(held(&first, "dana").await, (stored, 1, 0, 0));
}

pub(super) async fn an_expired_sessions_bytes_are_given_back(backend: Backend) {
    let mut flags = QUOTA_FLAGS.to_vec();
    flags.extend(super::sessions::SHORT_LIVED_SESSIONS);
    let app = TestApp::spawn_with(backend, &flags).await;
    start_session(&app, "erin", Some(1000)).await.unwrap();
    assert_eq!(held(&app, "erin").await, (1000, 1, 1000, 1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = held(&app, "erin").await;
        if now == (0, 0, 0, 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired session still holds {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
