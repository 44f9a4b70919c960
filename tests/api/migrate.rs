//! `image-service migrate`: a team on the embedded backend moves to S3 +
//! DynamoDB (and back) with one command and loses nothing.
use std::path::Path;
use std::process::Output;

use crate::helpers::{Backend, TestApp, as_user, connect, interrupt_when, stdout};
use image_service::pb;
use image_service::pb::moderation_service_client::ModerationServiceClient;

/// Who sets quotas and who moderates, on both sides of a migration.
const ROLES: [&str; 4] = ["--admins", "ops", "--moderators", "trust-and-safety"];

/// `image-service migrate` with `args`, against `aws`'s servers and the
/// embedded data directory `data_dir`.
fn migrate_command(aws: &TestApp, data_dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_image-service"));
    command
        .arg("migrate")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--s3-bucket", "images", "--dynamodb-table", "images"])
        .arg("--s3-endpoint")
        .arg(aws.s3.as_ref().unwrap().endpoint())
        .arg("--dynamodb-endpoint")
        .arg(aws.dynamodb.as_ref().unwrap().endpoint())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

async fn migrate(aws: &TestApp, data_dir: &Path, args: &[&str]) -> Output {
    migrate_command(aws, data_dir, args)
        .output()
        .await
        .expect("image-service migrate runs")
}

/// Every image a viewer lists, oldest last, and each original's bytes.
async fn catalogue(app: &TestApp) -> Vec<(pb::Image, Vec<u8>)> {
    let images = app
        .list_all("viewer", pb::ListImagesRequest::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    for image in images {
        let bytes = app.download("viewer", &image.image_id).await.unwrap();
        out.push((image, bytes));
    }
    out
}

fn copied_so_far(checkpoint: &Path) -> u64 {
    std::fs::read(checkpoint)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v["copied"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_to_aws_interrupted_and_resumed_copies_every_image_once() {
    const IMAGES: u32 = 300;
    let aws = TestApp::spawn(Backend::Aws).await;
    let mut embedded = TestApp::spawn(Backend::Embedded).await;
    for i in 0..IMAGES {
        let image = embedded.upload_png(&format!("user-{}", i % 7), i).await;
        if i % 50 == 0 {
            // Metadata beyond the defaults travels too.
            let update = pb::UpdateImageRequest {
                image_id: image.image_id.clone(),
                title: format!("photo {i}"),
                tags: vec!["beach".into(), format!("t{i}")],
                location: "Lisbon".into(),
                ..Default::default()
            };
            embedded
                .update(&format!("user-{}", i % 7), update)
                .await
                .unwrap();
        }
    }
    let before = catalogue(&embedded).await;
    assert_eq!(before.len(), IMAGES as usize);
    embedded.stop().await.unwrap();
    let data_dir = embedded.data_dir.clone();
    let checkpoint = data_dir.join("migrate-embedded-to-aws.checkpoint");

    // A dry run counts and writes nothing.
    let dry = migrate(
        &aws,
        &data_dir,
        &["--from", "embedded", "--to", "aws", "--dry-run"],
    )
    .await;
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        stdout(&dry).contains(&format!("{IMAGES} images: {IMAGES} to copy")),
        "{}",
        stdout(&dry)
    );
    assert!(
        aws.list("viewer", Default::default())
            .await
            .unwrap()
            .images
            .is_empty()
    );
    assert!(!checkpoint.exists());

    // Interrupted (Ctrl-C) part of the way through.
    let first = migrate_command(&aws, &data_dir, &["--from", "embedded", "--to", "aws"])
        .spawn()
        .unwrap();
    interrupt_when(first, || copied_so_far(&checkpoint) >= 20).await;
    let done_before = copied_so_far(&checkpoint);
    assert!(
        (20..u64::from(IMAGES)).contains(&done_before),
        "{done_before}"
    );

    // Resumed: the rest, and only the rest.
    let second = migrate(&aws, &data_dir, &["--from", "embedded", "--to", "aws"]).await;
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let text = stdout(&second);
    assert!(
        text.contains(&format!("{IMAGES} images: {IMAGES} copied")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "this run: {} images",
            u64::from(IMAGES) - done_before
        )),
        "{text}"
    );
    assert!(!checkpoint.exists(), "a finished run leaves no checkpoint");

    let after = catalogue(&aws).await;
    assert_eq!(after.len(), before.len());
    for ((was, bytes), (is, copied)) in before.iter().zip(&after) {
        assert_eq!(is, was, "the same image: id, owner, times, etag, variants");
        assert_eq!(copied, bytes, "byte-identical");
    }
    assert!(
        before.iter().all(|(image, _)| !image.thumbhash.is_empty()),
        "the placeholders compared above are there to lose"
    );
    let sample = &after[0].0;
    let url = aws
        .client()
        .get_download_url(as_user(
            "viewer",
            pb::GetDownloadUrlRequest {
                image_id: sample.image_id.clone(),
                variant: "small".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .url;
    let small = reqwest::get(&url).await.unwrap();
    assert_eq!(small.status(), 200);
    let size = sample
        .variants
        .iter()
        .find(|v| v.name == "small")
        .unwrap()
        .size_bytes;
    assert_eq!(
        small.bytes().await.unwrap().len() as i64,
        size,
        "variants travel too"
    );
    let tagged = aws
        .list_all(
            "viewer",
            pb::ListImagesRequest {
                tag: "beach".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        tagged.len(),
        6,
        "the indexes are rebuilt in the destination"
    );

    // A second complete run copies nothing.
    let third = migrate(&aws, &data_dir, &["--from", "embedded", "--to", "aws"]).await;
    assert!(third.status.success());
    assert!(
        stdout(&third).contains(&format!(
            "{IMAGES} images: 0 copied (0.0 MiB), {IMAGES} already there, 0 failed"
        )),
        "{}",
        stdout(&third)
    );
}

/// What a migration must keep beside the images: each user's usage and
/// quota, the erasure record of a user who left, and the audit trail.
#[derive(Debug, PartialEq)]
struct Kept {
    usage: Vec<pb::Usage>,
    erasure: pb::UserDataDeletion,
    trail: Vec<pb::ModerationAction>,
}

async fn kept(app: &TestApp) -> Kept {
    let mut usage = Vec::new();
    for user in ["user-0", "user-1"] {
        let request = pb::GetUsageRequest::default();
        let response = app.client().get_usage(as_user(user, request)).await;
        usage.push(response.unwrap().into_inner().usage.unwrap());
    }
    let request = pb::GetUserDataDeletionRequest::default();
    let erasure = app
        .client()
        .get_user_data_deletion(as_user("user-2", request))
        .await
        .unwrap()
        .into_inner()
        .deletion
        .unwrap();
    let request = pb::ListModerationActionsRequest {
        page_size: 1000,
        page_token: String::new(),
    };
    let trail = ModerationServiceClient::new(connect(app.grpc_addr).await)
        .list_moderation_actions(as_user("trust-and-safety", request))
        .await
        .unwrap()
        .into_inner()
        .actions;
    Kept {
        usage,
        erasure,
        trail,
    }
}

/// `user` erases their data on `app`, to the end.
async fn erase(app: &TestApp, user: &str) {
    let request = pb::DeleteUserDataRequest::default();
    app.client()
        .delete_user_data(as_user(user, request))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let request = pb::GetUserDataDeletionRequest::default();
        let erasure = app
            .client()
            .get_user_data_deletion(as_user(user, request))
            .await
            .unwrap()
            .into_inner()
            .deletion
            .unwrap();
        if erasure.state() == pb::user_data_deletion::State::Done {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{erasure:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_back_to_embedded_keeps_every_image() {
    let aws = TestApp::spawn_with(Backend::Aws, &ROLES).await;
    let mut images = Vec::new();
    for i in 0..12 {
        images.push(aws.upload_png(&format!("user-{}", i % 3), i).await);
    }
    // An admin's quota for user-0, a moderator's action on an image of
    // user-1, and user-2 gone (an erasure: its record is the proof).
    let quota = pb::SetUserQuotaRequest {
        user_id: "user-0".into(),
        quota_bytes: Some(50_000_000),
        quota_images: Some(40),
    };
    aws.client()
        .set_user_quota(as_user("ops", quota))
        .await
        .unwrap();
    let quarantine = pb::SetImageStateRequest {
        image_id: images[1].image_id.clone(),
        state: pb::ImageState::Quarantined as i32,
        reason: "spam".into(),
        etag: String::new(),
    };
    ModerationServiceClient::new(connect(aws.grpc_addr).await)
        .set_image_state(as_user("trust-and-safety", quarantine))
        .await
        .unwrap();
    erase(&aws, "user-2").await;
    let before = catalogue(&aws).await;
    let kept_before = kept(&aws).await;
    assert_eq!(kept_before.usage[1].images_held, 4, "{kept_before:?}");
    assert!(kept_before.usage[0].quota_overridden, "{kept_before:?}");
    assert_eq!(kept_before.trail.len(), 1, "{kept_before:?}");

    let dir = tempfile::tempdir().unwrap();
    let output = migrate(&aws, dir.path(), &["--from", "aws", "--to", "embedded"]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout(&output)
            .contains("2 users' quota overrides and erasure records, 1 audit trail entries copied"),
        "{}",
        stdout(&output)
    );
    let mut embedded = TestApp::spawn_in(Backend::Embedded, dir.path(), &ROLES).await;
    let after = catalogue(&embedded).await;
    assert_eq!(after, before);
    assert_eq!(kept(&embedded).await, kept_before);
    embedded.stop().await.unwrap();

    // Run again, nothing is counted twice.
    let again = migrate(&aws, dir.path(), &["--from", "aws", "--to", "embedded"]).await;
    assert!(again.status.success());
    let mut embedded = TestApp::spawn_in(Backend::Embedded, dir.path(), &ROLES).await;
    assert_eq!(kept(&embedded).await, kept_before);

    // What the destination decided since wins over a later run: user-1
    // erased there, and user-0's quota set there, while user-0 left the
    // source.
    erase(&embedded, "user-1").await;
    let quota = pb::SetUserQuotaRequest {
        user_id: "user-0".into(),
        quota_bytes: Some(1_000_000),
        quota_images: Some(5),
    };
    embedded
        .client()
        .set_user_quota(as_user("ops", quota))
        .await
        .unwrap();
    let usage_there = kept(&embedded).await.usage;
    embedded.stop().await.unwrap();
    erase(&aws, "user-0").await;
    let later = migrate(&aws, dir.path(), &["--from", "aws", "--to", "embedded"]).await;
    assert!(
        later.status.success(),
        "{}",
        String::from_utf8_lossy(&later.stderr)
    );
    assert!(
        stdout(&later)
            .contains("4 images not copied: their owners' data was erased in the destination"),
        "{}",
        stdout(&later)
    );
    let stderr = String::from_utf8_lossy(&later.stderr);
    assert!(
        stderr.contains("the erasure of user user-0's data in the source was not copied"),
        "{stderr}"
    );
    let embedded = TestApp::spawn_in(Backend::Embedded, dir.path(), &ROLES).await;
    let erased = embedded
        .list_all(
            "user-1",
            pb::ListImagesRequest {
                owner_id: "user-1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(erased.is_empty(), "not copied back: {erased:?}");
    let usage = kept(&embedded).await.usage;
    assert_eq!(usage, usage_there, "the destination's quota and usage stay");
    assert_eq!(usage[0].quota_images, 5);
    assert_eq!(usage[0].images_held, 4, "user-0's images there are counted");

    let same = migrate(&aws, dir.path(), &["--from", "aws", "--to", "aws"]).await;
    assert!(!same.status.success(), "one backend to itself is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_whose_bytes_do_not_match_its_record_leaves_nothing_in_the_destination() {
    let aws = TestApp::spawn(Backend::Aws).await;
    let mut embedded = TestApp::spawn(Backend::Embedded).await;
    let damaged = embedded.upload_png("user-1", 1).await;
    let sound = embedded.upload_png("user-1", 2).await;
    embedded.stop().await.unwrap();
    let data_dir = embedded.data_dir.clone();

    // The source's original rots: same size, one byte changed.
    let original = data_dir
        .join("blobs/images")
        .join(&damaged.image_id)
        .join("original");
    let mut bytes = std::fs::read(&original).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&original, bytes).unwrap();

    let output = migrate(&aws, &data_dir, &["--from", "embedded", "--to", "aws"]).await;
    assert!(!output.status.success(), "a damaged image fails the run");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains(&format!("not copied: {}", damaged.image_id))
            && report.contains("does not match its record's SHA-256")
            && report.contains("none of its objects were left in the destination"),
        "{report}"
    );

    // The destination holds the sound image only: no bytes of the damaged
    // one, which no record would ever point to.
    let objects = aws.stored_objects().await;
    assert!(
        !objects.iter().any(|o| o.contains(&damaged.image_id)),
        "{objects:?}"
    );
    assert!(
        objects.iter().any(|o| o.contains(&sound.image_id)),
        "{objects:?}"
    );
    assert_eq!(
        aws.get("viewer", &damaged.image_id)
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
}
