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
    // Made before Mallory's renders start: generating it takes seconds in
    // a debug build on a loaded machine, which would let her renders run
    // out before Victor's upload had even been sent.
    let photo = images::phone_photo(1600, 1200);

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
    let uploaded = app.upload("victor", spec("photo.jpg"), &photo).await;
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
async fn a_render_over_the_render_cap_is_refused_at_once() {
    // The memory wait is long, so a refusal after waiting would show.
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--memory-budget",
            "256MiB",
            "--max-render-memory",
            "32MiB",
            "--memory-wait",
            "60s",
        ],
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
    assert!(
        app.wait_for_stored_objects(0).await.is_empty(),
        "nothing of the refused upload is stored"
    );
    // A small image of the same user still renders.
    let image = app
        .upload("mallory", spec("photo.jpg"), &images::phone_photo(800, 600))
        .await
        .expect("a render within the cap");
    assert_eq!(image.variants.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_larger_than_the_users_share_renders_as_its_only_render() {
    // A share of 32 MiB, a render of about 60 MiB: the user's one render
    // may pass it, within the budget.
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--memory-budget",
            "128MiB",
            "--max-memory-per-user",
            "32MiB",
        ],
    )
    .await;
    let image = app
        .upload("mallory", spec("large.png"), &large_render())
        .await
        .expect("a render past the share, the user's only one");
    assert_eq!(image.variants.len(), 2);
}

/// A 16-megapixel PNG of about 12 MiB, like a large photo: noise (which
/// does not compress) in its top quarter, a gradient below. Its render
/// needs about 75 MiB, and its bytes besides.
fn large_photo() -> Vec<u8> {
    let mut state = 0x9e37_79b9_u32;
    let pixels = image::RgbImage::from_fn(4000, 4000, |x, y| {
        if y < 1000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let [r, g, b, _] = state.to_le_bytes();
            image::Rgb([r, g, b])
        } else {
            image::Rgb([(x / 16) as u8, (y / 16) as u8, 128])
        }
    });
    let mut png = Vec::new();
    pixels
        .write_with_encoder(image::codecs::png::PngEncoder::new_with_quality(
            &mut png,
            image::codecs::png::CompressionType::Default,
            image::codecs::png::FilterType::Adaptive,
        ))
        .unwrap();
    png
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_batch_of_large_photos_all_render_while_another_user_uploads() {
    // A share of 160 MiB: eight uploads of 12 MiB declared (18 MiB each
    // with a message and the inspection overhead while they are received)
    // are let in at once, and keep 96 MiB of it while they wait for their
    // renders (~87 MiB each with the photo's bytes), so no render fits
    // beside them; one at a time still goes.
    // The memory waits are short: the renders wait for each other, not for
    // the wait to run out.
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--memory-budget",
            "320MiB",
            "--max-image-bytes",
            "20MiB",
            "--memory-wait",
            "1s",
            "--upload-slot-wait",
            "1s",
        ],
    )
    .await;
    let photo = std::sync::Arc::new(large_photo());
    assert!(
        (11 << 20..13 << 20).contains(&photo.len()),
        "{} bytes",
        photo.len()
    );
    let batch: Vec<_> = (0..8)
        .map(|n| {
            let (client, photo) = (app.client(), photo.clone());
            tokio::spawn(async move {
                let spec = image_service::pb::ImageSpec {
                    expected_size: Some(photo.len().try_into().unwrap()),
                    ..spec(&format!("photo-{n}.png"))
                };
                let messages = crate::helpers::upload_messages(spec, &photo, 1024 * 1024);
                client
                    .clone()
                    .upload_image(crate::helpers::as_user(
                        "alice",
                        tokio_stream::iter(messages),
                    ))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let uploaded = app
        .upload(
            "victor",
            spec("photo.jpg"),
            &images::phone_photo(1600, 1200),
        )
        .await
        .expect("another user's upload while the batch renders");
    assert_eq!(uploaded.variants.len(), 2);
    for (n, task) in batch.into_iter().enumerate() {
        let image = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .unwrap_or_else(|_| panic!("photo {n} of the batch still waits"))
            .unwrap()
            .map(tonic::Response::into_inner);
        let image = image.unwrap_or_else(|status| panic!("photo {n} of the batch: {status:?}"));
        let image = image.image.expect("an image");
        assert_eq!(image.variants.len(), 2, "photo {n} rendered");
    }
}
