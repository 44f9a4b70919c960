//! imagectl against a running service: every subcommand, JSON output,
//! resumed downloads, and the messages people see when something is refused.

use std::path::Path;
use std::process::Output;

use crate::helpers::{Backend, TestApp, images, json, stdout};

/// Runs imagectl against `app` as `user` (when given) and returns its output.
async fn imagectl(app: &TestApp, user: Option<&str>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagectl"));
    command
        .env("IMAGECTL_ADDR", app.channel_addr())
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
