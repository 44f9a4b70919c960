//! imagectl against a running service: every subcommand, JSON output,
//! resumed downloads, and the messages people see when something is refused.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::helpers::servers::CutProxy;
use crate::helpers::{Backend, TestApp, images, json, stdout};
use image_service::pb;
use sha2::{Digest, Sha256};

/// Runs imagectl against `app` as `user` (when given) and returns its output.
async fn imagectl(app: &TestApp, user: Option<&str>, args: &[&str]) -> Output {
    imagectl_at(&app.channel_addr(), user, args).await
}

/// Runs imagectl against the service at `addr`.
async fn imagectl_at(addr: &str, user: Option<&str>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagectl"));
    command
        .env("IMAGECTL_ADDR", addr)
        .env_remove("IMAGECTL_USER")
        .env_remove("IMAGECTL_TOKEN");
    if let Some(user) = user {
        command.env("IMAGECTL_USER", user);
    }
    command.args(args).output().await.expect("imagectl runs")
}

fn stderr_of_failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_uploads_lists_downloads_updates_and_deletes() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let dir = tempfile::tempdir().unwrap();
    let beach = images::png_of_size(1536 * 1024, 1);
    let city = images::jpeg(800, 600);
    let beach_path = write(dir.path(), "beach.png", &beach);
    let city_path = write(dir.path(), "city.jpg", &city);

    let uploaded = imagectl(
        &app,
        Some("alice"),
        &[
            "--json",
            "upload",
            &beach_path,
            &city_path,
            "--tag",
            "Holiday",
            "--location",
            "Nice",
            "--attr",
            "camera=x100v",
        ],
    )
    .await;
    let uploaded = json(&uploaded);
    let uploaded = uploaded.as_array().unwrap();
    assert_eq!(uploaded.len(), 2);
    let beach_id = uploaded
        .iter()
        .find(|i| i["filename"] == "beach.png")
        .unwrap()["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(uploaded.iter().all(
        |i| i["tags"] == serde_json::json!(["holiday"]) && i["attributes"]["camera"] == "x100v"
    ));

    let listed = json(
        &imagectl(
            &app,
            Some("bob"),
            &["--json", "list", "--tag", "holiday", "--owner", "alice"],
        )
        .await,
    );
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let table =
        stdout(&imagectl(&app, Some("bob"), &["list", "--content-type", "image/jpeg"]).await);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("800x600") && !table.contains("beach"),
        "{table}"
    );

    let details = stdout(&imagectl(&app, Some("bob"), &["get", &beach_id]).await);
    assert!(
        details.contains("beach.png") && details.contains("holiday"),
        "{details}"
    );

    // A download, then a resumed one from half a file.
    let out = dir.path().join("out.png");
    stdout(
        &imagectl(
            &app,
            Some("bob"),
            &["download", &beach_id, "-o", out.to_str().unwrap()],
        )
        .await,
    );
    assert!(std::fs::read(&out).unwrap() == beach);
    // An existing file is never appended to or replaced.
    let again = imagectl(
        &app,
        Some("bob"),
        &["download", &beach_id, "-o", out.to_str().unwrap()],
    )
    .await;
    assert!(!again.status.success(), "an existing file was overwritten");
    assert!(
        std::fs::read(&out).unwrap() == beach,
        "the file is untouched"
    );
    // An interrupted download left OUTPUT.part: it resumes, then is renamed.
    let resumed_out = dir.path().join("resumed.png");
    let partial = dir.path().join("resumed.png.part");
    std::fs::write(&partial, &beach[..beach.len() / 2]).unwrap();
    let resumed = stdout(
        &imagectl(
            &app,
            Some("bob"),
            &["download", &beach_id, "-o", resumed_out.to_str().unwrap()],
        )
        .await,
    );
    assert!(resumed.contains("resumed"), "{resumed}");
    assert!(
        std::fs::read(&resumed_out).unwrap() == beach,
        "the resumed file is whole"
    );
    assert!(!partial.exists(), "the partial file was renamed");

    let url = stdout(&imagectl(&app, Some("bob"), &["url", &beach_id, "--expires", "5m"]).await);
    let fetched = reqwest::get(url.trim()).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap().len(), beach.len());

    let updated = json(
        &imagectl(
            &app,
            Some("alice"),
            &[
                "--json", "update", &beach_id, "--title", "Sunset", "--tag", "best",
            ],
        )
        .await,
    );
    assert_eq!(updated["title"], "Sunset");
    assert_eq!(updated["tags"], serde_json::json!(["best"]));
    assert_eq!(updated["location"], "Nice", "fields not given are kept");

    let refused = stderr_of_failure(&imagectl(&app, Some("bob"), &["delete", &beach_id]).await);
    assert!(
        refused.contains("only the image's owner may do this"),
        "{refused}"
    );
    stdout(&imagectl(&app, Some("alice"), &["delete", &beach_id]).await);
    let gone = stderr_of_failure(&imagectl(&app, Some("alice"), &["get", &beach_id]).await);
    assert!(gone.contains("no such image"), "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_explains_what_went_wrong() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let dir = tempfile::tempdir().unwrap();

    let anonymous = stderr_of_failure(&imagectl(&app, None, &["list"]).await);
    assert!(anonymous.contains("--user"), "{anonymous}");

    let text = write(
        dir.path(),
        "notes.png",
        b"these are not the pixels you are looking for, not at all, no",
    );
    let good = write(dir.path(), "ok.png", &images::png(4, 4, 1));
    let mixed = imagectl(&app, Some("alice"), &["upload", &text, &good]).await;
    let message = stderr_of_failure(&mixed);
    assert!(
        message.contains("notes.png") && message.contains("the request was refused"),
        "{message}"
    );
    assert!(message.contains("1 of the uploads failed"), "{message}");
    assert!(
        String::from_utf8_lossy(&mixed.stdout).contains("ok.png"),
        "the good file was uploaded"
    );

    let unreachable = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagectl"))
        .args(["--addr", "http://127.0.0.1:9", "--user", "alice", "list"])
        .output()
        .await
        .unwrap();
    let message = stderr_of_failure(&unreachable);
    assert!(message.contains("cannot reach image-service"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_resumes_a_broken_upload_by_itself() {
    // Every stream is cut after a second, as a flaky mobile link would cut
    // it; the upload is sent at 256 KiB/s, so it takes several streams.
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--upload-deadline",
            "1s",
            "--upload-session-segment-size",
            "64KiB",
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let photo = images::photo_jpeg(1600, 1200);
    assert!(photo.len() > 600 * 1024, "{} bytes", photo.len());
    let path = write(dir.path(), "long.jpg", &photo);
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&photo));

    let args = ["--json", "upload", &path, "--limit-rate", "256KiB"];
    let output = imagectl(&app, Some("alice"), &args).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let uploaded = json(&output);
    let image = &uploaded.as_array().unwrap()[0];
    assert_eq!(image["uploaded_sha256"], sha256, "{stderr}");
    let resumes = stderr.matches("resuming at").count();
    assert!(resumes >= 2, "the upload resumed by itself: {stderr}");
    // Each resume starts where the service's bytes end, never from zero.
    assert!(!stderr.contains("resuming at 0 of"), "{stderr}");
    let downloaded = app
        .download("alice", image["image_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(downloaded, photo);

    // Running the same upload again finds it instead of storing a copy.
    let again = json(&imagectl(&app, Some("alice"), &["--json", "upload", &path]).await);
    assert_eq!(again[0]["image_id"], image["image_id"]);
    let listed = app
        .list_all("alice", image_service::pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_uploads_straight_to_the_store() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let dir = tempfile::tempdir().unwrap();
    let photo = images::phone_photo(640, 480);
    let path = write(dir.path(), "sideways.jpg", &photo);
    let uploaded = json(
        &imagectl(
            &app,
            Some("alice"),
            &["--json", "upload", "--direct", &path],
        )
        .await,
    );
    let image = &uploaded[0];
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&photo));
    assert_eq!(image["uploaded_sha256"], sha256);
    assert_eq!(
        image["metadata_stripped"], true,
        "checked and scrubbed like a stream"
    );
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(480), Some(640))
    );
    let staged: Vec<String> = app
        .stored_objects()
        .await
        .into_iter()
        .filter(|o| o.contains("uploads/"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");

    // `get` shows what the service made of the photo.
    let id = image["image_id"].as_str().unwrap();
    let details = stdout(&imagectl(&app, Some("bob"), &["get", id]).await);
    for expected in [
        "stripped     yes",
        "variant      small",
        "variant      medium",
        "blurhash",
        "thumbhash",
        "etag",
    ] {
        assert!(details.contains(expected), "{expected:?} in {details}");
    }
    assert!(
        !details.contains("uploaded"),
        "only the owner sees the upload's hash: {details}"
    );
    let got = json(&imagectl(&app, Some("alice"), &["--json", "get", id]).await);
    let variants = got["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2, "{got}");
    assert!(
        variants
            .iter()
            .all(|v| v["width"].as_u64() > Some(0) && v["size_bytes"].as_u64() > Some(0))
    );
    assert!(!got["blurhash"].as_str().unwrap().is_empty());
    assert_eq!(
        got["uploaded_sha256"], sha256,
        "the owner sees the upload's hash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_uploads_real_photos_and_says_what_was_removed() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let dir = tempfile::tempdir().unwrap();
    // Photos as phones write them: EXIF with GPS and a serial number, XMP,
    // and a motion clip's bytes after the image.
    let photos: Vec<(String, Vec<u8>)> = [(640, 480), (480, 640), (800, 600)]
        .into_iter()
        .enumerate()
        .map(|(n, (w, h))| {
            let photo = images::camera_photo(w, h);
            (write(dir.path(), &format!("photo{n}.jpg"), &photo), photo)
        })
        .collect();
    let mut args = vec!["upload", "--tag", "trip", "--location", "Oslo"];
    args.extend(photos.iter().map(|(path, _)| path.as_str()));
    let output = imagectl(&app, Some("alice"), &args).await;
    let printed = stdout(&output);
    assert_eq!(
        printed.matches("metadata removed").count(),
        3,
        "each photo says so: {printed}"
    );
    for (path, photo) in &photos {
        let line = printed.lines().find(|l| l.contains(path.as_str())).unwrap();
        let id = line.split_whitespace().next().unwrap();
        let image = app.get("alice", id).await.unwrap();
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(photo));
        assert_eq!(image.uploaded_sha256, sha256, "the file's bytes arrived");
        assert_ne!(image.sha256, sha256, "the stored bytes are not the file's");
        // imagectl's download checks the bytes against Image.sha256.
        let out = dir.path().join(format!("{id}.jpg"));
        stdout(
            &imagectl(
                &app,
                Some("alice"),
                &["download", id, "-o", out.to_str().unwrap()],
            )
            .await,
        );
        let stored = std::fs::read(&out).unwrap();
        for secret in images::PHONE_SECRETS {
            let found = stored.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{secret} left in the stored photo");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_get_json_carries_every_field_of_the_image() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "photo.jpg", &images::camera_photo(640, 480));
    let args = [
        "--json",
        "upload",
        &path,
        "--title",
        "Fjord",
        "--tag",
        "trip",
        "--attr",
        "lens=35mm f/1.4",
    ];
    let uploaded = json(&imagectl(&app, Some("alice"), &args).await);
    let id = uploaded[0]["image_id"].as_str().unwrap().to_owned();
    let got = json(&imagectl(&app, Some("alice"), &["--json", "get", &id]).await);
    let image = app.get("alice", &id).await.unwrap();
    // Every field, named: a field added to Image fails to compile here
    // until the JSON carries it.
    let pb::Image {
        image_id,
        owner_id,
        filename,
        content_type,
        size_bytes,
        sha256,
        width,
        height,
        title,
        description,
        tags,
        location,
        attributes,
        create_time,
        update_time,
        variants,
        etag,
        crc32c,
        uploaded_sha256,
        metadata_stripped,
        blurhash,
        thumbhash,
        state,
        state_reason,
        state_time,
        pdq_hash,
        pdq_quality,
    } = image;
    assert_eq!(state, pb::ImageState::Active as i32);
    assert!(state_time.is_none());
    let time = |t: Option<prost_types::Timestamp>| {
        let t = t.unwrap();
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.seconds as u64),
        )
        .to_string()
    };
    let expected = serde_json::json!({
        "image_id": image_id,
        "owner_id": owner_id,
        "filename": filename,
        "content_type": content_type,
        "size_bytes": size_bytes,
        "sha256": sha256,
        "width": width,
        "height": height,
        "title": title,
        "description": description,
        "tags": tags,
        "location": location,
        "attributes": attributes,
        "create_time": time(create_time),
        "update_time": time(update_time),
        "variants": variants.iter().map(|v| {
            let pb::ImageVariant { name, content_type, size_bytes, width, height } = v;
            serde_json::json!({
                "name": name, "content_type": content_type, "size_bytes": size_bytes,
                "width": width, "height": height,
            })
        }).collect::<Vec<_>>(),
        "etag": etag,
        "crc32c": crc32c,
        "uploaded_sha256": uploaded_sha256,
        "metadata_stripped": metadata_stripped,
        "blurhash": blurhash,
        "thumbhash": thumbhash,
        "state": "active",
        "state_reason": state_reason,
        "state_time": null,
        "pdq_hash": pdq_hash,
        "pdq_quality": pdq_quality,
    });
    assert_eq!(got, expected);
    assert_eq!(got["attributes"]["lens"], "35mm f/1.4");
    let details = stdout(&imagectl(&app, Some("alice"), &["get", &id]).await);
    assert!(
        details.contains("attribute    lens=35mm f/1.4"),
        "{details}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_reviews_quarantines_approves_and_removes_as_a_moderator() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--moderators", "mod"]).await;
    let image = app.upload_png("alice", 1).await;
    let id = image.image_id.as_str();

    let refused = imagectl(&app, Some("alice"), &["quarantine", id, "--reason", "spam"]).await;
    assert!(
        stderr_of_failure(&refused).contains("--moderators"),
        "{refused:?}"
    );

    let quarantined = json(
        &imagectl(
            &app,
            Some("mod"),
            &["--json", "quarantine", id, "--reason", "spam"],
        )
        .await,
    );
    assert_eq!(quarantined["state"], "quarantined");
    assert_eq!(quarantined["state_reason"], "spam");
    let review = stdout(&imagectl(&app, Some("mod"), &["review"]).await);
    assert!(review.contains(id) && review.contains("spam"), "{review}");
    let details = stdout(&imagectl(&app, Some("alice"), &["get", id]).await);
    assert!(details.contains("quarantined (spam)"), "{details}");

    let approved = json(&imagectl(&app, Some("mod"), &["--json", "approve", id]).await);
    assert_eq!(approved["state"], "active");
    let review = json(&imagectl(&app, Some("mod"), &["--json", "review"]).await);
    assert_eq!(review, serde_json::json!([]));

    let removed = json(
        &imagectl(
            &app,
            Some("mod"),
            &["--json", "remove", id, "--reason", "copyright"],
        )
        .await,
    );
    assert_eq!(removed["state"], "removed");
    let listed = json(
        &imagectl(
            &app,
            Some("mod"),
            &["--json", "review", "--state", "removed"],
        )
        .await,
    );
    assert_eq!(listed[0]["image_id"], id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_finds_similar_images_as_a_moderator() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--moderators", "mod"]).await;
    let hash = "0123456789abcdef".repeat(4);
    let refused = imagectl(&app, Some("alice"), &["similar", "--hash", &hash]).await;
    assert!(
        stderr_of_failure(&refused).contains("--moderators"),
        "{refused:?}"
    );
    let too_far = imagectl(
        &app,
        Some("mod"),
        &["similar", "--hash", &hash, "--distance", "40"],
    )
    .await;
    assert!(
        stderr_of_failure(&too_far).contains("max_distance must be at most 31"),
        "{too_far:?}"
    );
    let nothing = imagectl(&app, Some("mod"), &["similar"]).await;
    assert!(!nothing.status.success(), "{nothing:?}");
    let found = json(&imagectl(&app, Some("mod"), &["--json", "similar", "--hash", &hash]).await);
    assert_eq!(found, serde_json::json!([]));
    let found = stdout(&imagectl(&app, Some("mod"), &["similar", "--hash", &hash]).await);
    assert!(found.contains("no similar images"), "{found}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_warns_when_a_similar_image_search_was_cut_short() {
    // A share of one entry per bucket: three copies of one photo crowd
    // every bucket of its hash.
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--moderators", "mod", "--max-similar-candidates", "32"],
    )
    .await;
    let photo = images::jpeg(640, 480);
    let mut hash = String::new();
    for i in 0..3 {
        let spec = pb::ImageSpec {
            filename: format!("copy-{i}.jpg"),
            ..Default::default()
        };
        hash = app.upload("alice", spec, &photo).await.unwrap().pdq_hash;
    }
    let cut = imagectl(&app, Some("mod"), &["similar", "--hash", &hash]).await;
    assert!(cut.status.success(), "{cut:?}");
    let warning = String::from_utf8_lossy(&cut.stderr);
    assert!(warning.contains("cut short"), "{warning}");
    assert!(stdout(&cut).contains("copy-"), "a copy is listed: {cut:?}");
    let found = json(&imagectl(&app, Some("mod"), &["--json", "similar", "--hash", &hash]).await);
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");

    // An uncrowded search says nothing of the kind.
    let other = "0123456789abcdef".repeat(4);
    let whole = imagectl(&app, Some("mod"), &["similar", "--hash", &other]).await;
    assert!(whole.status.success(), "{whole:?}");
    assert!(whole.stderr.is_empty(), "{whole:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_reports_bytes_changed_in_transit_as_damage() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "photo.jpg", &images::camera_photo(640, 480));
    // A faulty link flips bytes of the photo's trailer on the way in.
    let proxy = CutProxy::tampering(app.grpc_addr, b"MotionPh", b"MotionPX").await;
    let addr = format!("http://{}", proxy.addr);
    let t = std::time::Instant::now();
    let output = imagectl_at(&addr, Some("alice"), &["upload", &path]).await;
    eprintln!(
        "DEBUG {:?} {}",
        t.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        proxy.tampered.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the bytes were changed"
    );
    let message = stderr_of_failure(&output);
    assert!(message.contains("damaged on the way"), "{message}");
    app.assert_nothing_stored("alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_waits_out_a_busy_service_and_says_so() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--max-concurrent-uploads", "1", "--upload-slot-wait", "0s"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "photo.jpg", &images::camera_photo(320, 240));
    // Another caller holds the only slot for a second.
    let png = images::png(64, 64, 3);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let request = crate::helpers::as_user("bob", tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut client = app.client();
    let held = tokio::spawn(async move { client.upload_image(request).await });
    let mut messages =
        crate::helpers::upload_messages(crate::helpers::spec("held.png"), &png, 1024);
    let rest = messages.split_off(2);
    for message in messages {
        tx.send(message).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for message in rest {
            tx.send(message).await.unwrap();
        }
    });
    let output = imagectl(&app, Some("alice"), &["upload", &path]).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("the service is busy"), "{stderr}");
    release.await.unwrap();
    held.await.unwrap().expect("the held upload completes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_watch_prints_events_and_the_cursor_to_resume_from() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--event-watchers", "feed"]).await;
    let first = app.upload_png("alice", 1).await;
    let second = app.upload_png("alice", 2).await;
    app.delete("alice", &first.image_id).await.unwrap();

    let output = imagectl(
        &app,
        Some("feed"),
        &["--json", "watch", "--from", "oldest", "--count", "2"],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "created");
    assert_eq!(lines[0]["image_id"], first.image_id.as_str());
    assert_eq!(lines[1]["image_id"], second.image_id.as_str());
    let cursor = lines[1]["cursor"].as_str().expect("a cursor").to_owned();
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert!(
        stderr.contains(&format!("imagectl watch --from {cursor}")),
        "{stderr}"
    );

    // From the cursor printed: the delete, with the keys to purge.
    let output = imagectl(
        &app,
        Some("feed"),
        &["watch", "--from", &cursor, "--count", "1"],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(text.contains("deleted"), "{text}");
    assert!(text.contains(&first.image_id), "{text}");

    // Anyone else is told who may watch.
    let refused = imagectl(&app, Some("alice"), &["watch"]).await;
    assert!(stderr_of_failure(&refused).contains("--event-watchers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_export_round_trips_every_original_on_the_embedded_backend() {
    export_round_trips_every_original(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_export_round_trips_every_original_on_the_aws_backend() {
    export_round_trips_every_original(Backend::Aws).await;
}

/// The files `imagectl export` wrote for `image` in `dir`: the original
/// and the record.
fn exported_files(dir: &Path, image: &pb::Image, extension: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{}.{extension}", image.image_id)),
        dir.join(format!("{}.json", image.image_id)),
    )
}

async fn export_round_trips_every_original(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Several formats, one over a download chunk (1 MiB), one whose
    // metadata the service removes (the stored original is what counts).
    let uploads = [
        ("beach.png", images::png_of_size(1536 * 1024, 3), "png"),
        ("phone.jpg", images::phone_photo(640, 480), "jpg"),
        ("moving.gif", images::animated_gif(32, 24), "gif"),
    ];
    let mut exported = Vec::new();
    for (name, bytes, extension) in &uploads {
        let mut spec = crate::helpers::spec(name);
        spec.tags = vec!["export".into()];
        let image = app.upload("alice", spec, bytes).await.unwrap();
        let stored = app.download("alice", &image.image_id).await.unwrap();
        assert_eq!(hex::encode(Sha256::digest(&stored)), image.sha256);
        exported.push((image, stored, *extension));
    }
    assert!(
        exported[1].1.len() < uploads[1].1.len(),
        "the photo's metadata was removed"
    );
    let bobs = app.upload_png("bob", 7).await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alice");
    let first = stdout(&imagectl(&app, Some("alice"), &["export", out.to_str().unwrap()]).await);
    assert!(first.contains("3 of 3 images of alice"), "{first}");
    let mut modified = Vec::new();
    for (image, stored, extension) in &exported {
        let (original, record) = exported_files(&out, image, extension);
        assert!(
            std::fs::read(&original).unwrap() == *stored,
            "{} is the stored original byte for byte",
            original.display()
        );
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
        assert_eq!(record["image_id"], image.image_id.as_str());
        assert_eq!(record["owner_id"], "alice");
        assert_eq!(record["filename"], image.filename.as_str());
        assert_eq!(record["content_type"], image.content_type.as_str());
        assert_eq!(record["size_bytes"], image.size_bytes);
        assert_eq!(record["sha256"], image.sha256.as_str());
        assert_eq!(record["uploaded_sha256"], image.uploaded_sha256.as_str());
        assert_eq!(record["crc32c"], image.crc32c);
        assert_eq!(record["tags"], serde_json::json!(["export"]));
        assert_eq!(record["width"], image.width);
        assert_eq!(
            record["variants"].as_array().unwrap().len(),
            image.variants.len()
        );
        modified.push(std::fs::metadata(&original).unwrap().modified().unwrap());
    }
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        3 * 2 + 1,
        "originals, records, manifest: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with(&bobs.image_id)),
        "another user's image is not exported"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("export.json")).unwrap()).unwrap();
    assert_eq!(manifest["owner_id"], "alice");
    assert_eq!(manifest["complete"], true);
    let listed: Vec<&str> = manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["original"].as_str().unwrap())
        .collect();
    for (image, _, extension) in &exported {
        assert!(listed.contains(&format!("{}.{extension}", image.image_id).as_str()));
    }

    // Again: every original verifies, nothing is downloaded.
    let again = json(
        &imagectl(
            &app,
            Some("alice"),
            &["--json", "export", out.to_str().unwrap()],
        )
        .await,
    );
    assert_eq!(again["kept"], 3, "{again}");
    assert_eq!(again["fetched"], 0, "{again}");
    for ((image, _, extension), before) in exported.iter().zip(&modified) {
        let (original, _) = exported_files(&out, image, extension);
        assert_eq!(
            std::fs::metadata(&original).unwrap().modified().unwrap(),
            *before,
            "{} was not written again",
            original.display()
        );
    }

    // A damaged original is fetched again; a partial file of other bytes
    // is started over; a true half is continued.
    let (png, png_bytes) = (
        exported_files(&out, &exported[0].0, "png").0,
        &exported[0].1,
    );
    let mut damaged = png_bytes.clone();
    damaged[png_bytes.len() / 2] ^= 0x40;
    std::fs::write(&png, &damaged).unwrap();
    let (jpg, jpg_bytes) = (
        exported_files(&out, &exported[1].0, "jpg").0,
        &exported[1].1,
    );
    std::fs::remove_file(&jpg).unwrap();
    std::fs::write(
        out.join(format!("{}.jpg.part", exported[1].0.image_id)),
        vec![7u8; 100],
    )
    .unwrap();
    let (gif, gif_bytes) = (
        exported_files(&out, &exported[2].0, "gif").0,
        &exported[2].1,
    );
    std::fs::remove_file(&gif).unwrap();
    std::fs::write(
        out.join(format!("{}.gif.part", exported[2].0.image_id)),
        &gif_bytes[..gif_bytes.len() / 2],
    )
    .unwrap();
    let repaired = stdout(&imagectl(&app, Some("alice"), &["export", out.to_str().unwrap()]).await);
    assert!(repaired.contains("3 downloaded"), "{repaired}");
    assert!(repaired.contains("resumed from"), "{repaired}");
    assert!(
        std::fs::read(&png).unwrap() == *png_bytes,
        "the damaged file was replaced"
    );
    assert!(
        std::fs::read(&jpg).unwrap() == *jpg_bytes,
        "the bad partial file was started over"
    );
    assert!(
        std::fs::read(&gif).unwrap() == *gif_bytes,
        "the partial file was continued"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Another user may export alice's images with --owner.
    let by_bob = dir.path().join("by-bob");
    stdout(
        &imagectl(
            &app,
            Some("bob"),
            &["export", "--owner", "alice", by_bob.to_str().unwrap()],
        )
        .await,
    );
    for (image, stored, extension) in &exported {
        let (original, _) = exported_files(&by_bob, image, extension);
        assert!(std::fs::read(original).unwrap() == *stored);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_export_keeps_no_original_that_does_not_match_its_record() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let good = app.upload_png("alice", 1).await;
    let bad = app.upload_png("alice", 2).await;
    // The stored bytes change behind the service's back (a disk's fault).
    let object = app
        .data_dir
        .join(format!("blobs/images/{}/original", bad.image_id));
    let mut bytes = std::fs::read(&object).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0x01;
    std::fs::write(&object, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let failed = imagectl(
        &app,
        Some("alice"),
        &["export", dir.path().to_str().unwrap()],
    )
    .await;
    let message = stderr_of_failure(&failed);
    assert!(
        message.contains(&bad.image_id),
        "the error names the image: {message}"
    );
    assert!(message.contains("1 of the 2 images failed"), "{message}");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.contains(&format!("{}.png", good.image_id)),
        "the good image is exported: {names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(&format!("{}.png", bad.image_id))),
        "no file of the damaged original is kept: {names:?}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("export.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], false);
    assert_eq!(manifest["images"].as_array().unwrap().len(), 1);
}

/// How a hostile service's listing never ends.
#[derive(Clone, Copy)]
enum Endless {
    /// Every page holds 1 000 new images, with a new token.
    NewImages,
    /// Every page is empty, with a new token.
    EmptyPages,
    /// Every page holds a new image, with the same token.
    SameToken,
}

/// An `ImageService` whose `ListImages` never ends; every other call is
/// UNIMPLEMENTED.
#[derive(Clone)]
struct EndlessListing {
    how: Endless,
    pages: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl tonic::server::NamedService for EndlessListing {
    const NAME: &'static str = "imageservice.v1.ImageService";
}

impl tonic::server::UnaryService<pb::ListImagesRequest> for EndlessListing {
    type Response = pb::ListImagesResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<pb::ListImagesRequest>) -> Self::Future {
        let page = self.pages.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let image = |n: u64| pb::Image {
            image_id: format!("fake-{page}-{n}"),
            owner_id: "alice".into(),
            ..Default::default()
        };
        let (images, token) = match self.how {
            Endless::NewImages => ((0..1000).map(image).collect(), format!("page-{page}")),
            Endless::EmptyPages => (Vec::new(), format!("page-{page}")),
            Endless::SameToken => (vec![image(0)], "again".to_owned()),
        };
        std::future::ready(Ok(tonic::Response::new(pb::ListImagesResponse {
            images,
            next_page_token: token,
        })))
    }
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for EndlessListing {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            if request.uri().path() != "/imageservice.v1.ImageService/ListImages" {
                return Ok(tonic::Status::unimplemented("a listing only").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(service, request).await)
        })
    }
}

/// Serves `how` on loopback; returns its address and its page counter.
async fn endless_listing(how: Endless) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pages = std::sync::Arc::default();
    let service = EndlessListing {
        how,
        pages: std::sync::Arc::clone(&pages),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_export_stops_a_listing_that_never_ends_and_says_why() {
    for (how, max_images, expected) in [
        (Endless::SameToken, None, "token of an earlier page again"),
        (Endless::EmptyPages, None, "pages in a row without an image"),
        (
            Endless::NewImages,
            Some("500"),
            "more than 500 images (--max-images)",
        ),
        // The default bound holds too: the export ends on its own.
        (
            Endless::NewImages,
            None,
            "more than 100000 images (--max-images)",
        ),
    ] {
        let (addr, pages) = endless_listing(how).await;
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["export", "--owner", "alice", dir.path().to_str().unwrap()];
        if let Some(max) = max_images {
            args.extend(["--max-images", max]);
        }
        let output = tokio::time::timeout(
            Duration::from_secs(240),
            imagectl_at(&addr, Some("alice"), &args),
        )
        .await
        .expect("the export ends");
        let message = stderr_of_failure(&output);
        assert!(message.contains(expected), "{message}");
        let served = pages.load(std::sync::atomic::Ordering::SeqCst);
        assert!(served <= 101, "{served} pages");
        let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(written.is_empty(), "nothing is exported: {written:?}");
    }
}
