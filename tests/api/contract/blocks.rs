//! Block lists (`--block-list`): an upload whose PDQ hash is near a listed
//! one (a resized or re-encoded copy), or whose SHA-256 is listed (an exact
//! copy), is rejected with nothing stored, or stored QUARANTINED with
//! reason `blocked`, from an upload stream and an upload session alike.
//! The list's file is read again when it changes; a malformed file stops
//! the start, naming its line. On the aws backend the list may be an S3
//! object, read again when its ETag changes.
use std::path::Path;
use std::time::Duration;

use super::quotas::usage;
use super::scans::{MODERATOR, trail};
use super::sessions::{complete, exact_parts, put, start, upload_urls};
use super::*;

/// Longer than several polls of the object (`--block-list-poll-interval`),
/// for a list the service is not yet started with.
const RELOAD_WAIT: Duration = Duration::from_millis(1500);
/// The counters of the list's reads after the first, used or refused.
const RELOADS: [&str; 2] = [
    r#"imageservice_block_list_reloads_total{outcome="ok"}"#,
    r#"imageservice_block_list_reloads_total{outcome="refused"}"#,
];

async fn reloads(app: &TestApp) -> f64 {
    let mut total = 0.0;
    for counter in RELOADS {
        total += super::erasure::metric(app, counter).await;
    }
    total
}

/// Makes `change` to the list `app` reads, then waits until the service has
/// read it again (and used or refused it): however loaded the machine, the
/// checks after it see the change.
async fn after_reload(app: &TestApp, change: impl std::future::Future<Output = ()>) {
    let before = reloads(app).await;
    change.await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while reloads(app).await <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the block list was not read again within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn write_list(app: &TestApp, path: &Path, text: &str) {
    after_reload(app, async { std::fs::write(path, text).unwrap() }).await;
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn photo(width: u32, height: u32, quality: u8, seed: u32) -> Vec<u8> {
    images::phone_shot(&images::PhoneShot::upright(width, height, quality, seed))
}

fn assert_blocked(result: Result<pb::Image, Status>, what: &str) {
    let status = assert_code(result, Code::FailedPrecondition);
    assert!(
        status.message().contains("block list") && status.message().contains("nothing was stored"),
        "{what}: {status:?}"
    );
    assert!(
        !status.message().contains("known photo"),
        "{what}: the entry's label is not the caller's: {status:?}"
    );
}

/// `user` owns no image `user` lists.
async fn assert_lists_nothing(app: &TestApp, user: &str) {
    let listed = app
        .list_all(user, pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert!(
        listed.iter().all(|image| image.owner_id != user),
        "{user} owns {listed:?}"
    );
}

pub(super) async fn a_block_listed_photo_is_caught_resized_reencoded_or_copied(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("block-list.txt");
    std::fs::write(&list, "# nothing is listed yet\n").unwrap();
    let list_flag = list.to_str().unwrap();
    let flags = [
        "--block-list",
        list_flag,
        "--block-list-poll-interval",
        "100ms",
        "--moderators",
        MODERATOR,
    ];
    let app = TestApp::spawn_with(backend, &flags).await;

    let original = photo(1600, 1200, 92, 7);
    let known = app
        .upload("alice", spec("IMG_0007.jpg"), &original)
        .await
        .unwrap();
    assert!(known.pdq_quality >= 50, "{known:?}");

    // Listed: resized and re-encoded copies are refused, another photo is
    // not; nothing of the refused ones is kept.
    write_list(
        &app,
        &list,
        &format!(
            "# reported 2026-12-07\npdq:{} known photo\n",
            known.pdq_hash
        ),
    )
    .await;
    let before = app.stored_objects().await;
    let resized = photo(800, 600, 60, 7);
    assert_blocked(
        app.upload("bob", spec("small.jpg"), &resized).await,
        "resized",
    );
    let requality = photo(1600, 1200, 50, 7);
    assert_blocked(
        app.upload("bob", spec("again.jpg"), &requality).await,
        "re-encoded at quality 50",
    );
    assert_eq!(app.wait_for_stored_objects(before.len()).await, before);
    assert_lists_nothing(&app, "bob").await;
    let usage = usage(&app, "bob", "bob").await.unwrap();
    assert_eq!(
        (usage.images_held, usage.images_reserved),
        (0, 0),
        "{usage:?}"
    );
    let other = app
        .upload("bob", spec("IMG_0008.jpg"), &photo(1600, 1200, 92, 8))
        .await
        .unwrap();
    assert_eq!(other.state(), pb::ImageState::Active);

    // Changed to an exact copy's SHA-256: the list is read again, the PDQ
    // entry is gone and the SHA-256 catches the copy, from a stream and
    // from a direct upload alike.
    write_list(
        &app,
        &list,
        &format!("sha256:{} known photo\n", sha256_hex(&original)),
    )
    .await;
    let resized_image = app
        .upload("bob", spec("small.jpg"), &resized)
        .await
        .unwrap();
    assert_eq!(resized_image.state(), pb::ImageState::Active);
    assert_blocked(
        app.upload("carol", spec("copy.jpg"), &original).await,
        "an exact copy",
    );
    let session = start(&app, "carol", spec("direct.jpg")).await.unwrap();
    let urls = upload_urls(
        &app,
        "carol",
        &session.upload_id,
        exact_parts(&[original.len()]),
    )
    .await
    .unwrap();
    assert!(put(&urls[0], original.clone()).await.is_success());
    let before = app.stored_objects().await;
    assert_blocked(
        complete(&app, "carol", &session.upload_id).await,
        "a direct upload of an exact copy",
    );
    // The session goes with its parts.
    let left = app.wait_for_stored_objects(before.len() - 1).await;
    assert!(left.iter().all(|key| before.contains(key)), "{left:?}");
    assert_lists_nothing(&app, "carol").await;

    // A malformed change is not used: the list before stays.
    write_list(&app, &list, "sha256:not-hex\n").await;
    assert_blocked(
        app.upload("carol", spec("copy.jpg"), &original).await,
        "after a malformed change",
    );
    // Nor is a named pipe in the list's place, which nothing writes to: it
    // is refused at once, not read until something does.
    after_reload(&app, async {
        std::fs::remove_file(&list).unwrap();
        make_fifo(&list);
    })
    .await;
    assert_blocked(
        app.upload("carol", spec("copy.jpg"), &original).await,
        "after a named pipe took the list's place",
    );
    drop(app);
    std::fs::remove_file(&list).unwrap();

    // Quarantined instead: stored, its owner's and the moderators' alone,
    // with an audit entry.
    std::fs::write(&list, format!("pdq:{}\n", known.pdq_hash)).unwrap();
    let mut flags = flags.to_vec();
    flags.extend(["--block-action", "quarantine"]);
    let app = TestApp::spawn_with(backend, &flags).await;
    let image = app
        .upload("alice", spec("small.jpg"), &resized)
        .await
        .unwrap();
    assert_eq!(
        (image.state(), image.state_reason.as_str()),
        (pb::ImageState::Quarantined, "blocked")
    );
    assert_eq!(
        app.get(MODERATOR, &image.image_id).await.unwrap().state(),
        pb::ImageState::Quarantined
    );
    assert_code(app.get("bob", &image.image_id).await, Code::NotFound);
    let actions = trail(&app).await;
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0].moderator_id, "block-list");
    assert_eq!(actions[0].image_id, image.image_id);
    assert_eq!(actions[0].to_state(), pb::ImageState::Quarantined);
    assert_eq!(actions[0].reason, "blocked");
}

pub(super) async fn a_malformed_block_list_stops_the_start(_backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("block-list.txt");
    let hash = "a".repeat(64);
    std::fs::write(
        &list,
        format!("# ok\npdq:{hash} fine\npdq:{hash}0 too long\n"),
    )
    .unwrap();
    let path = list.to_str().unwrap();
    let refusal = crate::helpers::start_refusal(&["--block-list", path])
        .await
        .expect("a malformed list stops the start");
    assert!(refusal.contains("line 3"), "{refusal}");

    std::fs::write(&list, format!("{hash}\n")).unwrap();
    let refusal = crate::helpers::start_refusal(&["--block-list", path])
        .await
        .expect("an entry without its kind stops the start");
    assert!(
        refusal.contains("line 1") && refusal.contains("sha256:"),
        "{refusal}"
    );

    std::fs::write(&list, format!("sha256:{hash}\nsha256:{hash}\n")).unwrap();
    let refusal =
        crate::helpers::start_refusal(&["--block-list", path, "--block-list-max-entries", "1"])
            .await
            .expect("a list over its bound stops the start");
    assert!(refusal.contains("--block-list-max-entries"), "{refusal}");

    let refusal =
        crate::helpers::start_refusal(&["--block-list", path, "--block-distance", "65"]).await;
    assert!(refusal.is_some_and(|r| r.contains("--block-distance")));
    let missing = dir.path().join("missing.txt");
    let refusal = crate::helpers::start_refusal(&["--block-list", missing.to_str().unwrap()]).await;
    assert!(refusal.is_some_and(|r| r.contains("missing.txt")));
    let pipe = dir.path().join("pipe.txt");
    make_fifo(&pipe);
    let refusal = crate::helpers::start_refusal(&["--block-list", pipe.to_str().unwrap()]).await;
    assert!(
        refusal.is_some_and(|r| r.contains("pipe.txt") && r.contains("not a regular file")),
        "a named pipe stops the start at once"
    );
}

/// A named pipe at `path` (`mkfifo`).
fn make_fifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

/// Puts the block list object `key` of the bucket `lists` with `text`.
async fn put_list(s3: &aws_sdk_s3::Client, key: &str, text: String) {
    s3.put_object()
        .bucket("lists")
        .key(key)
        .body(text.into_bytes().into())
        .send()
        .await
        .unwrap();
}

pub(super) async fn a_block_list_in_s3_is_read_again_when_replaced_and_kept_when_gone(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let s3 = crate::aws::raw_s3(&app).await;
    s3.create_bucket().bucket("lists").send().await.unwrap();
    let (first, second) = (photo(1200, 900, 90, 21), photo(1200, 900, 90, 22));
    let key = "moderation/block-list.txt";
    put_list(
        &s3,
        key,
        format!("sha256:{} known photo\n", sha256_hex(&first)),
    )
    .await;
    let app = app
        .successor(&[
            "--block-list",
            "s3://lists/moderation/block-list.txt",
            "--block-list-poll-interval",
            "200ms",
            // 2 KiB of text at most.
            "--block-list-max-entries",
            "2",
        ])
        .await;
    let refused = r#"imageservice_block_list_reloads_total{outcome="refused"}"#;

    assert_blocked(app.upload("bob", spec("a.jpg"), &first).await, "listed");
    let image = app.upload("bob", spec("b.jpg"), &second).await.unwrap();
    assert_eq!(image.state(), pb::ImageState::Active);

    // Replaced: the new entry blocks, the one removed no longer does.
    after_reload(
        &app,
        put_list(&s3, key, format!("sha256:{}\n", sha256_hex(&second))),
    )
    .await;
    assert_blocked(
        app.upload("carol", spec("b.jpg"), &second).await,
        "newly listed",
    );
    let image = app.upload("carol", spec("a.jpg"), &first).await.unwrap();
    assert_eq!(image.state(), pb::ImageState::Active);
    assert_eq!(super::erasure::metric(&app, refused).await, 0.0);

    // Malformed, then too long: each is refused once, the list before stays.
    after_reload(&app, put_list(&s3, key, "sha256:not-hex\n".to_owned())).await;
    after_reload(
        &app,
        put_list(&s3, key, format!("# {}\n", "x".repeat(3000))),
    )
    .await;
    assert_blocked(
        app.upload("dave", spec("b.jpg"), &second).await,
        "after refused changes",
    );
    assert_eq!(super::erasure::metric(&app, refused).await, 2.0);

    // Deleted: the list before stays, and the missing object, polled many
    // times over, counts once.
    after_reload(&app, async {
        s3.delete_object()
            .bucket("lists")
            .key(key)
            .send()
            .await
            .unwrap();
    })
    .await;
    tokio::time::sleep(RELOAD_WAIT).await;
    assert_blocked(
        app.upload("erin", spec("b.jpg"), &second).await,
        "after the delete",
    );
    assert_eq!(super::erasure::metric(&app, refused).await, 3.0);

    // Put back: read again.
    after_reload(
        &app,
        put_list(&s3, key, format!("sha256:{}\n", sha256_hex(&first))),
    )
    .await;
    assert_blocked(app.upload("erin", spec("a.jpg"), &first).await, "put back");
    let image = app.upload("erin", spec("b.jpg"), &second).await.unwrap();
    assert_eq!(image.state(), pb::ImageState::Active);
}

pub(super) async fn an_s3_block_list_that_cannot_be_read_stops_the_start(_backend: Backend) {
    let (s3, dynamodb) = crate::aws::initialized_servers();
    // The process, started with `list`, exits unsuccessfully: what it says.
    let refused_start = |list: &str, secret_key: &str| {
        let output = crate::aws::service_command(&s3, &dynamodb)
            .args(["--block-list", list])
            .env("AWS_SECRET_ACCESS_KEY", secret_key)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "{list}: {stderr}");
        stderr
    };
    let secret_key = crate::helpers::servers::SECRET_KEY;
    let stderr = refused_start("s3://images/lists/missing.txt", secret_key);
    assert!(
        stderr.contains("s3://images/lists/missing.txt") && stderr.contains("no such object"),
        "{stderr}"
    );
    // Refused by the store (here: credentials it does not take).
    let stderr = refused_start("s3://images/lists/missing.txt", "not-the-secret-key");
    assert!(
        stderr.contains("s3://images/lists/missing.txt") && stderr.contains("access denied"),
        "{stderr}"
    );

    // A bucket that is not there, or an address that is not an object.
    let stderr = refused_start("s3://no-such-bucket/list.txt", secret_key);
    assert!(stderr.contains("s3://no-such-bucket/list.txt"), "{stderr}");
    let refusal = crate::helpers::start_refusal(&["--block-list", "s3://lists"]).await;
    assert!(
        refusal.is_some_and(|r| r.contains("s3://BUCKET/KEY")),
        "an object address without a key"
    );

    // The embedded backend has no S3 client to read it with.
    let refusal = crate::helpers::start_refusal(&["--block-list", "s3://lists/list.txt"])
        .await
        .expect("an S3 block list on the embedded backend stops the start");
    assert!(
        refusal.contains("s3://lists/list.txt") && refusal.contains("--backend embedded"),
        "{refusal}"
    );
}
