//! Renders count in their uploader's share of the memory budget
//! (`--max-memory-per-user`), and users take turns at the render slots: one
//! user's large renders leave the rest of the budget and the next turn to
//! others.
use std::time::{Duration, Instant};

use tonic::Code;

use crate::helpers::{Backend, TestApp, assert_code, images, spec};

/// A 3400 × 3400 blank PNG: about 60 MiB to render (3 bytes a pixel
/// decoded, and the resizer's buffers) from a file of a few KiB.
fn large_render() -> Vec<u8> {
    images::blank_png(3400, 3400)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_one_users_large_renders_run_another_user_uploads_and_downloads() {
    // 256 MiB, of which one user holds at most 64 MiB: one of mallory's
    // renders at a time. One render slot, so that turns decide who is next.
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--memory-budget",
            "256MiB",
            "--memory-wait",
            "120s",
            "--max-concurrent-renders",
            "1",
        ],
    )
    .await;
    let victor_image = app.upload_png("victor", 1).await;

    let png = std::sync::Arc::new(large_render());
    let mallory: Vec<_> = (0..4)
        .map(|n| {
            let (client, png) = (app.client(), png.clone());
            tokio::spawn(async move {
                let messages = crate::helpers::upload_messages(
                    spec(&format!("large-{n}.png")),
                    &png,
                    1024 * 1024,
                );
                client
                    .clone()
                    .upload_image(crate::helpers::as_user(
                        "mallory",
                        tokio_stream::iter(messages),
                    ))
                    .await
            })
        })
        .collect();
    // Mallory's uploads are received at once; their renders queue.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let downloaded = app.download("victor", &victor_image.image_id).await;
    assert!(downloaded.is_ok(), "victor's download: {downloaded:?}");
    let uploaded = app
        .upload(
            "victor",
            spec("photo.jpg"),
            &images::phone_photo(1600, 1200),
        )
        .await;
    let image = uploaded.expect("victor's upload while mallory's renders run");
    assert_eq!(image.variants.len(), 2, "victor's image was rendered");
    let unfinished = mallory.iter().filter(|task| !task.is_finished()).count();
    assert!(
        unfinished >= 2,
        "victor's render waited behind mallory's queued renders: {unfinished} of 4 left after \
         {:?}",
        started.elapsed()
    );

    for task in mallory {
        let uploaded = task.await.unwrap();
        assert!(
            uploaded.is_ok(),
            "mallory's renders run in turn: {uploaded:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_no_users_share_could_hold_is_refused_at_once() {
    // 128 MiB: a user's share, and so the render cap, is 32 MiB. The
    // memory wait is long, so a refusal after waiting would show.
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--memory-budget", "128MiB", "--memory-wait", "60s"],
    )
    .await;
    let started = Instant::now();
    let status = assert_code(
        app.upload("mallory", spec("large.png"), &large_render())
            .await,
        Code::ResourceExhausted,
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused after {:?}",
        started.elapsed()
    );
    let message = status.message();
    assert!(message.contains("--max-render-memory"), "{message}");
    assert!(message.contains("--max-memory-per-user"), "{message}");
    assert!(
        app.wait_for_stored_objects(0).await.is_empty(),
        "nothing of the refused upload is stored"
    );
    // A small image of the same user still renders.
    let image = app
        .upload("mallory", spec("photo.jpg"), &images::phone_photo(800, 600))
        .await
        .expect("a render within the share");
    assert_eq!(image.variants.len(), 2);
}

#[tokio::test]
async fn a_render_cap_above_the_users_share_stops_the_start() {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let config = |extra: &[&str]| {
        let mut args = vec![
            "image-service",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--memory-budget",
            "256MiB",
        ];
        args.extend_from_slice(extra);
        image_service::config::Config::try_parse_from(args).unwrap()
    };
    // A quarter of the budget is 64 MiB: a cap of 128 MiB could never be
    // held by anyone.
    let error =
        image_service::startup::Application::build(config(&["--max-render-memory", "128MiB"]))
            .await
            .err()
            .expect("refused");
    let message = error.to_string();
    assert!(message.contains("--max-render-memory"), "{message}");
    assert!(message.contains("--max-memory-per-user"), "{message}");
    // With the share raised to hold it, the same cap starts.
    image_service::startup::Application::build(config(&[
        "--max-render-memory",
        "128MiB",
        "--max-memory-per-user",
        "128MiB",
    ]))
    .await
    .expect("a share that holds the cap");
}
