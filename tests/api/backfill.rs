//! `image-service backfill`: images stored while the service kept its
//! variants in JPEG only get the WebP ones (and a variant added since),
//! counted in their owner's usage; the run resumes after Ctrl-C, and a
//! second run changes nothing.
use std::path::Path;
use std::process::Output;

use crate::helpers::{Backend, TestApp, as_user, decoded_by_pillow, interrupt_when, stdout};
use image_service::fixtures::{PHONE_SHOTS, PhoneShot, phone_photo, phone_shot};
use image_service::pb;

/// `image-service backfill` with `args`, on `app`'s stores (with the
/// flags it was started with).
fn backfill_command(app: &TestApp, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_image-service"));
    command
        .args(&app.args[1..])
        .arg("backfill")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

async fn backfill(app: &TestApp, args: &[&str]) -> Output {
    let output = backfill_command(app, args)
        .output()
        .await
        .expect("image-service backfill runs");
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn checkpoint_of(app: &TestApp) -> std::path::PathBuf {
    app.data_dir.join("backfill.checkpoint")
}

/// The images changed so far, as the checkpoint says.
fn changed_so_far(checkpoint: &Path) -> u64 {
    std::fs::read(checkpoint)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v["changed"].as_u64())
        .unwrap_or(0)
}

async fn bytes_held(app: &TestApp, user: &str) -> u64 {
    let request = as_user(
        user,
        pb::GetUsageRequest {
            user_id: user.into(),
        },
    );
    let usage = app.client().get_usage(request).await.unwrap().into_inner();
    usage.usage.expect("a usage").bytes_held
}

/// Phone photos of `alice`'s, taken sideways (viewed 1200 x 1600 or so).
async fn upload_photos(app: &TestApp, photos: u32) -> Vec<pb::Image> {
    let mut images = Vec::new();
    for i in 0..photos {
        let bytes = phone_photo(1600 + 8 * i, 1200);
        let image = app
            .upload("alice", crate::helpers::spec("photo.jpg"), &bytes)
            .await
            .unwrap();
        images.push(image);
    }
    images
}

/// The variant as a viewer that accepts `accept` downloads it: its type
/// and bytes.
async fn download(
    app: &TestApp,
    image_id: &str,
    variant: &str,
    accept: &[&str],
) -> (String, Vec<u8>) {
    let request = pb::DownloadImageRequest {
        image_id: image_id.into(),
        variant: variant.into(),
        accept: accept.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    };
    let (response, bytes) = app.download_range("bob", request).await.unwrap();
    (response.content_type, bytes)
}

/// The `VARIANTS_ADDED` events in the store's log (the service stopped).
async fn variants_added_events(app: &TestApp) -> usize {
    use image_service::domain::event::{ChangeKind, EventRead, EventStart};
    use image_service::domain::image::Timestamp;
    let metadata = app.metadata_beside().await;
    // The aws store's log is read by time.
    let start = match app.backend {
        Backend::Embedded => EventStart::Oldest,
        Backend::Aws => EventStart::Since(Timestamp::from_micros(0)),
    };
    let EventRead::Events(events) = metadata.read_events(&start, 1000).await.unwrap() else {
        panic!("the log is read from its start");
    };
    events
        .iter()
        .filter(|e| e.event.kind == ChangeKind::VariantsAdded)
        .count()
}

/// Every image of alice's, as a viewer reads it.
async fn catalogue(app: &TestApp) -> Vec<pb::Image> {
    let filter = pb::ListImagesRequest {
        owner_id: "alice".into(),
        ..Default::default()
    };
    app.list_all("bob", filter).await.unwrap()
}

async fn backfill_adds_the_webp_variants_once(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let uploaded = upload_photos(&app, 4).await;
    for image in &uploaded {
        assert!(
            image
                .variants
                .iter()
                .all(|v| v.content_type != "image/webp"),
            "the service keeps JPEG only: {:?}",
            image.variants
        );
    }
    let held_before = bytes_held(&app, "alice").await;
    app.stop().await.unwrap();
    let objects_before = app.stored_objects().await;

    // A dry run counts and writes nothing.
    let dry = backfill(&app, &["--formats", "jpeg,webp", "--dry-run"]).await;
    let text = stdout(&dry);
    // Two variants of each photo.
    assert!(
        text.contains("4 images: 4 lack something (0 variants, 8 encodings, 0 ThumbHashes"),
        "{text}"
    );
    assert_eq!(app.stored_objects().await, objects_before);
    assert!(!checkpoint_of(&app).exists());

    let run = backfill(&app, &["--formats", "jpeg,webp"]).await;
    let text = stdout(&run);
    assert!(text.contains("4 images: 4 changed (8 entries"), "{text}");
    assert!(!checkpoint_of(&app).exists(), "a finished run leaves none");
    assert_eq!(variants_added_events(&app).await, 4, "one event per image");

    let app = app.successor(&[]).await;
    let images = catalogue(&app).await;
    assert_eq!(images.len(), uploaded.len());
    let mut added = 0;
    for image in &images {
        let was = uploaded
            .iter()
            .find(|u| u.image_id == image.image_id)
            .unwrap();
        assert_ne!(image.etag, was.etag, "the record changed");
        for jpeg in was.variants.iter() {
            let webp = image
                .variants
                .iter()
                .find(|v| v.name == jpeg.name && v.content_type == "image/webp")
                .unwrap_or_else(|| panic!("{} has no WebP: {:?}", jpeg.name, image.variants));
            assert_eq!((webp.width, webp.height), (jpeg.width, jpeg.height));
            assert!(webp.size_bytes < jpeg.size_bytes);
            added += webp.size_bytes as u64;
            let (content_type, bytes) =
                download(&app, &image.image_id, &jpeg.name, &["image/webp"]).await;
            assert_eq!(content_type, "image/webp");
            let (format, width, height, _) = decoded_by_pillow(&bytes);
            assert_eq!(
                (format.as_str(), width, height),
                ("WEBP", jpeg.width, jpeg.height),
                "decoded whole, upright"
            );
        }
    }
    assert_eq!(
        bytes_held(&app, "alice").await,
        held_before + added,
        "the owner's usage counts the new objects"
    );

    // A second run changes nothing: no object, no record.
    let mut app = app;
    app.stop().await.unwrap();
    let objects = app.stored_objects().await;
    let again = backfill(&app, &["--formats", "jpeg,webp"]).await;
    let text = stdout(&again);
    assert!(text.contains("4 images: 0 changed (0 entries"), "{text}");
    assert_eq!(app.stored_objects().await, objects);
    assert_eq!(variants_added_events(&app).await, 4, "no new event");
    let app = app.successor(&[]).await;
    assert_eq!(catalogue(&app).await, images);
}

/// Small photos whose WebP variant comes out no larger than the JPEG one
/// get none (never more bytes than needed), and a second run does not make
/// it again: the first recorded that it was made and not kept.
async fn an_encoding_not_kept_is_not_made_again(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    for seed in 1..=2 {
        // A small, detailed scene: neither of its WebP variants is
        // smaller than the JPEG (two per photo, four in all).
        let shot = PhoneShot {
            width: 504,
            height: 378,
            seed,
            ..PHONE_SHOTS[0]
        };
        let bytes = phone_shot(&shot);
        app.upload("alice", crate::helpers::spec("tiny.jpg"), &bytes)
            .await
            .unwrap();
    }
    app.stop().await.unwrap();
    let objects = app.stored_objects().await;
    let run = backfill(&app, &["--formats", "jpeg,webp"]).await;
    let text = stdout(&run);
    assert!(
        text.contains("2 images: 2 changed (0 entries")
            && text.contains("0.0 MiB added; 4 encodings no smaller, not kept"),
        "{text}"
    );
    assert_eq!(app.stored_objects().await, objects, "no object kept");

    let dry = backfill(&app, &["--formats", "jpeg,webp", "--dry-run"]).await;
    assert!(
        stdout(&dry).contains("2 images: 0 lack something"),
        "{}",
        stdout(&dry)
    );
    let again = backfill(&app, &["--formats", "jpeg,webp"]).await;
    let text = stdout(&again);
    assert!(
        text.contains("2 images: 0 changed") && text.contains("2 complete"),
        "{text}"
    );
    let app = app.successor(&[]).await;
    for image in catalogue(&app).await {
        assert!(
            image
                .variants
                .iter()
                .all(|v| v.content_type == "image/jpeg"),
            "{:?}",
            image.variants
        );
    }
}

/// Encodings whose bytes would take their owner past the byte quota are
/// not kept (no entry, no object, no usage), and a later run adds them once
/// the quota leaves room.
async fn encodings_past_the_owners_quota_are_not_kept(backend: Backend) {
    let flags = ["--admins", "root"];
    let app = TestApp::spawn_with(backend, &flags).await;
    upload_photos(&app, 2).await;
    let held = bytes_held(&app, "alice").await;
    let set_quota = |bytes: Option<u64>| {
        as_user(
            "root",
            pb::SetUserQuotaRequest {
                user_id: "alice".into(),
                quota_bytes: bytes,
                quota_images: None,
            },
        )
    };
    app.client()
        .set_user_quota(set_quota(Some(held + 1)))
        .await
        .unwrap();
    let mut app = app;
    app.stop().await.unwrap();
    let objects = app.stored_objects().await;
    let run = backfill(&app, &["--formats", "jpeg,webp"]).await;
    let text = stdout(&run);
    assert!(
        text.contains("2 images: 0 changed (0 entries")
            && text.contains("4 over their owner's quota, not kept"),
        "{text}"
    );
    assert_eq!(app.stored_objects().await, objects, "no object kept");

    let app = app.successor(&flags).await;
    assert_eq!(bytes_held(&app, "alice").await, held);
    for image in catalogue(&app).await {
        assert!(
            image
                .variants
                .iter()
                .all(|v| v.content_type == "image/jpeg"),
            "{:?}",
            image.variants
        );
    }
    // With room, the next run adds them.
    app.client().set_user_quota(set_quota(None)).await.unwrap();
    let mut app = app;
    app.stop().await.unwrap();
    let run = backfill(&app, &["--formats", "jpeg,webp"]).await;
    let text = stdout(&run);
    assert!(text.contains("2 images: 2 changed (4 entries"), "{text}");
}

/// Interrupted (Ctrl-C) part of the way through, then run again: every
/// image is done, none twice.
async fn an_interrupted_backfill_resumes_where_it_stopped(backend: Backend) {
    const PHOTOS: u32 = 9;
    let mut app = TestApp::spawn(backend).await;
    let uploaded = upload_photos(&app, PHOTOS).await;
    app.stop().await.unwrap();
    let checkpoint = checkpoint_of(&app);

    let first = backfill_command(&app, &["--formats", "jpeg,webp", "--max-rate", "2"])
        .spawn()
        .unwrap();
    interrupt_when(first, || changed_so_far(&checkpoint) >= 2).await;
    let done_before = changed_so_far(&checkpoint);
    assert!(
        (2..u64::from(PHOTOS)).contains(&done_before),
        "{done_before}"
    );

    let second = backfill(&app, &["--formats", "jpeg,webp"]).await;
    let text = stdout(&second);
    assert!(
        text.contains(&format!("{} images: {PHOTOS} changed", uploaded.len())),
        "{text}"
    );
    let this_run = text
        .lines()
        .find(|l| l.starts_with("this run:"))
        .unwrap_or_default();
    assert!(
        this_run.ends_with(&format!(", {} changed", u64::from(PHOTOS) - done_before)),
        "this run did the rest only: {text}"
    );
    assert!(!checkpoint.exists());
    let app = app.successor(&[]).await;
    for image in catalogue(&app).await {
        let webps = image
            .variants
            .iter()
            .filter(|v| v.content_type == "image/webp")
            .count();
        assert_eq!(webps, 2, "each variant once: {:?}", image.variants);
    }
}

/// A variant added to the configuration since: rendered for every photo,
/// its own object when larger than `medium`, `medium`'s objects (each
/// encoding) when the photo is no larger.
async fn a_new_variant_is_rendered_or_shares_a_stored_one(backend: Backend) {
    let mut app = TestApp::spawn_with(backend, &["--variant-formats", "jpeg,webp"]).await;
    let large = app
        .upload(
            "alice",
            crate::helpers::spec("big.jpg"),
            &phone_photo(3000, 2000),
        )
        .await
        .unwrap();
    let small = app
        .upload(
            "alice",
            crate::helpers::spec("small.jpg"),
            &phone_photo(1000, 750),
        )
        .await
        .unwrap();
    app.stop().await.unwrap();
    let run = backfill(&app, &["--variants", "large=2048"]).await;
    assert!(
        stdout(&run).contains("2 images: 2 changed"),
        "{}",
        stdout(&run)
    );
    let app = app.successor(&[]).await;

    // Viewed upright: the sideways photos are 2000 x 3000 and 750 x 1000.
    let big = app.get("bob", &large.image_id).await.unwrap();
    let rows: Vec<_> = big
        .variants
        .iter()
        .filter(|v| v.name == "large")
        .map(|v| (v.content_type.as_str(), v.width, v.height))
        .collect();
    assert_eq!(
        rows,
        [("image/jpeg", 1365, 2048), ("image/webp", 1365, 2048)],
        "{:?}",
        big.variants
    );
    assert_eq!(
        big.variants.last().map(|v| v.name.as_str()),
        Some("large"),
        "largest last"
    );
    let (_, bytes) = download(&app, &big.image_id, "large", &[]).await;
    let (format, width, height, _) = decoded_by_pillow(&bytes);
    assert_eq!((format.as_str(), width, height), ("JPEG", 1365, 2048));

    let photo = app.get("bob", &small.image_id).await.unwrap();
    let entries = |name: &str| -> Vec<(String, u32, u32, i64)> {
        photo
            .variants
            .iter()
            .filter(|v| v.name == name)
            .map(|v| (v.content_type.clone(), v.width, v.height, v.size_bytes))
            .collect()
    };
    assert_eq!(entries("large"), entries("medium"), "the same objects");
    assert_eq!(entries("large").len(), 2);
}

/// Beside the running service (aws backend), every image edited over and
/// over while the backfill runs: each ends with its last acknowledged
/// edit and its WebP variants, so no edit was lost to the backfill's
/// record update nor the other way round.
async fn edits_beside_a_running_backfill_are_kept(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let uploaded = upload_photos(&app, 4).await;
    let mut run = backfill_command(&app, &["--formats", "jpeg,webp", "--max-rate", "4"])
        .spawn()
        .unwrap();
    let mut last = std::collections::HashMap::new();
    let mut edits = 0u32;
    while run.try_wait().unwrap().is_none() {
        for image in &uploaded {
            edits += 1;
            let title = format!("edit {edits}");
            let request = pb::UpdateImageRequest {
                image_id: image.image_id.clone(),
                title: title.clone(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["title".into()],
                }),
                ..Default::default()
            };
            app.update("alice", request).await.unwrap();
            last.insert(image.image_id.clone(), title);
        }
    }
    let output = run.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout(&output).contains("4 images: 4 changed"),
        "{}",
        stdout(&output)
    );
    assert!(edits >= 8, "edits ran beside the backfill: {edits}");
    for image in catalogue(&app).await {
        assert_eq!(image.title, last[&image.image_id], "the last edit is kept");
        let webps = image
            .variants
            .iter()
            .filter(|v| v.content_type == "image/webp")
            .count();
        assert_eq!(webps, 2, "and so are the encodings: {:?}", image.variants);
    }
}

/// The backfill rate (BENCHMARKS.md): 50 twelve-megapixel phone photos
/// stored with JPEG variants only, then `backfill --formats jpeg,webp`;
/// prints the command's summary. Run on demand:
/// `cargo nextest run --test api --run-ignored only -E 'test(backfill_rate)' --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn backfill_rate_of_phone_photos() {
    const PHOTOS: usize = 50;
    let mut app = TestApp::spawn(Backend::Embedded).await;
    let photo = phone_photo(4032, 3024);
    for _ in 0..PHOTOS {
        app.upload("alice", crate::helpers::spec("photo.jpg"), &photo)
            .await
            .unwrap();
    }
    app.stop().await.unwrap();
    let run = backfill(&app, &["--formats", "jpeg,webp"]).await;
    let text = stdout(&run);
    println!("{text}");
    assert!(
        text.contains(&format!("{PHOTOS} images: {PHOTOS} changed")),
        "{text}"
    );
}

/// The cases above, on one backend each.
/// A stored original changed at rest (here a larger photo in its place) is
/// not decoded: only the bytes its record describes are, since only their
/// header was checked against the limits. The run goes on with the rest
/// and names the image it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_changed_at_rest_is_not_decoded() {
    let mut app = TestApp::spawn(Backend::Embedded).await;
    let images = upload_photos(&app, 2).await;
    app.stop().await.unwrap();
    let changed = &images[1];
    let object = app
        .data_dir
        .join(format!("blobs/images/{}/original", changed.image_id));
    std::fs::write(&object, phone_photo(4000, 3000)).unwrap();

    let run = backfill_command(&app, &["--formats", "jpeg,webp"])
        .output()
        .await
        .expect("image-service backfill runs");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(!run.status.success(), "an image was left: {out}");
    assert!(
        out.contains(&format!("not backfilled: {}", changed.image_id)) && out.contains("SHA-256"),
        "{out}"
    );
    assert!(out.contains("1 changed"), "the other image is done: {out}");
    let app = app.successor(&[]).await;
    let left = app.get("bob", &changed.image_id).await.unwrap();
    assert_eq!(left.variants, changed.variants, "its record is as it was");
}

/// Images stored while the service made no variants get them, their
/// ThumbHash and their PDQ hash (the block lists and similar-image
/// searches need one for every image) from a backfill once it does.
async fn images_stored_without_variants_get_their_hashes(backend: Backend) {
    let mut app = TestApp::spawn_with(backend, &["--variants", "false"]).await;
    let stored = app
        .upload(
            "alice",
            crate::helpers::spec("old.jpg"),
            &phone_photo(1600, 1200),
        )
        .await
        .unwrap();
    assert_eq!(
        (stored.pdq_hash.as_str(), stored.thumbhash.as_str()),
        ("", "")
    );
    app.stop().await.unwrap();
    // The backfill runs with the flags the server was started with, but
    // variants on.
    let at = app.args.iter().position(|a| a == "--variants").unwrap();
    app.args.drain(at..at + 2);
    let dry = backfill(&app, &["--dry-run"]).await;
    assert!(
        stdout(&dry).contains("1 ThumbHashes, 1 PDQ hashes to make"),
        "{}",
        stdout(&dry)
    );
    let run = backfill(&app, &[]).await;
    assert!(
        stdout(&run).contains("1 ThumbHashes, 1 PDQ hashes"),
        "{}",
        stdout(&run)
    );
    let app = app.successor(&[]).await;
    let filled = app.get("alice", &stored.image_id).await.unwrap();
    assert_eq!(filled.pdq_hash.len(), 64, "{filled:?}");
    assert!(filled.pdq_quality > 0, "{filled:?}");
    // The same hash an upload of the same photo gets now.
    let again = app
        .upload(
            "alice",
            crate::helpers::spec("new.jpg"),
            &phone_photo(1600, 1200),
        )
        .await
        .unwrap();
    assert_eq!(filled.pdq_hash, again.pdq_hash);
    assert_eq!(app.get("bob", &stored.image_id).await.unwrap().pdq_hash, "");
}

macro_rules! on_backend {
    ($backend:ident: $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(Backend::$backend).await;
            }
        )*
    };
}

mod embedded {
    use super::*;
    on_backend!(Embedded:
        backfill_adds_the_webp_variants_once,
        an_interrupted_backfill_resumes_where_it_stopped,
        a_new_variant_is_rendered_or_shares_a_stored_one,
        an_encoding_not_kept_is_not_made_again,
        encodings_past_the_owners_quota_are_not_kept,
        images_stored_without_variants_get_their_hashes,
    );
}

mod aws {
    use super::*;
    on_backend!(Aws:
        backfill_adds_the_webp_variants_once,
        an_interrupted_backfill_resumes_where_it_stopped,
        edits_beside_a_running_backfill_are_kept,
        encodings_past_the_owners_quota_are_not_kept,
    );
}
