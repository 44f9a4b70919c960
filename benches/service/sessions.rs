//! Figure 9: upload sessions (aws backend, variants off): the three ways
//! in side by side, what a cut costs, what resuming takes.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use image_service::fixtures;
use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use image_service::pb::upload_image_request::Data;
use image_service::testkit::as_user;
use image_service::testkit::servers::CutProxy;
use image_service::testkit::service::Service;
use image_service::testkit::stats::{Samples, ms, percentile};
use tonic::transport::Channel;

use crate::Plan;
use crate::harness::{
    CHUNK, GIB, MIB, PART_SIZE, PARTS_IN_FLIGHT, Stores, delete, fake_png, mib_per_s,
    start_service, time, upload, without_variants,
};

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let service = start_service(&without_variants(&stores.aws_args("sessions")));
    let client = service.wide_client().await;
    let mut out = ways_in(plan, &service, &client).await;
    out.push_str(&cuts(plan, &service, &client).await);
    out
}

/// Three ways in for one large image: one-shot UploadImage, a session
/// streamed through the service, and presigned PUTs straight to S3 then
/// CompleteUpload (which reads the object back to check it).
async fn ways_in(plan: &Plan, service: &Service, client: &ImageServiceClient<Channel>) -> String {
    let mut out = String::new();
    let image = fake_png(plan.big / 4, 3);
    let mut ways: Vec<(&str, Samples, f64)> = vec![
        ("`UploadImage`, one stream", Samples::default(), 0.0),
        (
            "session: `StartUpload` + `UploadImage` with `resume`",
            Samples::default(),
            0.0,
        ),
        (
            "direct: `GetUploadUrls` + `PUT` to S3 + `CompleteUpload`",
            Samples::default(),
            0.0,
        ),
    ];
    for _ in 0..plan.rounds {
        for (way, (_, samples, cpu)) in ways.iter_mut().enumerate() {
            let before = service.cpu_seconds();
            let (elapsed, uploaded) = time(async {
                match way {
                    0 => upload(client, image.clone(), "bench")
                        .await
                        .expect("upload"),
                    1 => {
                        let id = start_session(client, image.len()).await;
                        resume(client, &id, 0, image.clone(), true)
                            .await
                            .expect("a resumed upload")
                    }
                    _ => direct_upload(client, image.clone()).await,
                }
            })
            .await;
            *cpu += service.cpu_seconds() - before;
            samples.push(mib_per_s(image.len(), elapsed));
            delete(client, &uploaded.image_id).await;
        }
    }
    let moved = (image.len() * plan.rounds) as f64 / GIB;
    let _ = writeln!(
        out,
        "### 9. Upload sessions (aws backend, variants off)\n\nOne {} MiB image, three ways in:\n\n| | MiB/s | service CPU-s/GiB |\n|---|---|---|",
        image.len() / MIB
    );
    for (what, samples, cpu) in &ways {
        let _ = writeln!(
            out,
            "| {what} | {:.0} | {:.2} |",
            samples.median(),
            cpu / moved
        );
    }
    let _ = writeln!(
        out,
        "\nA session stores the streamed bytes as segments (8 MiB) and, at the finish, reads them back through the pipeline; a direct upload's bytes do not pass through the service on the way in, only when `CompleteUpload` reads them back to check, scrub and hash them.\n"
    );
    out
}

/// Cuts at random offsets of a phone-sized photo: how much the caller
/// sends again, and what a resume costs.
async fn cuts(plan: &Plan, service: &Service, client: &ImageServiceClient<Channel>) -> String {
    let mut out = String::new();
    let photo = Bytes::from(fixtures::photo_jpeg(2400, 1800));
    let cuts = plan.rounds * 7;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut offsets = Vec::with_capacity(cuts);
    for _ in 0..cuts {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        offsets.push(1 + (seed % (photo.len() as u64 - 1)) as usize);
    }
    let (mut resent_clean, mut resent_cut) = (Vec::new(), Vec::new());
    let mut latencies = Vec::new();
    for (index, &cut) in offsets.iter().enumerate() {
        let id = start_session(client, photo.len()).await;
        let abrupt = index % 2 == 1;
        if abrupt {
            cut_connection(service, &id, photo.slice(..cut)).await;
        } else {
            let ended = resume(client, &id, 0, photo.slice(..cut), false).await;
            assert!(ended.is_err(), "a stream without finish stores no image");
        }
        // The new caller (on any replica) asks, then resumes.
        let started = Instant::now();
        let mut held;
        loop {
            held = persisted(client, &id).await;
            if held == cut || started.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The cut call can hold the session's lease for a moment after its
        // bytes are stored, until the service sees its connection gone:
        // the resume is retried, as ABORTED says, and the one that runs is
        // timed.
        let (elapsed, image) = loop {
            let (elapsed, image) = time(resume(client, &id, held, photo.slice(held..), true)).await;
            match image {
                Err(status)
                    if status.code() == tonic::Code::Aborted
                        && started.elapsed() < Duration::from_secs(5) =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                image => break (elapsed, image),
            }
        };
        let image = image.expect("the resume finishes");
        assert_eq!(image.size_bytes as usize, photo.len());
        latencies.push(elapsed);
        let resent = cut.saturating_sub(held);
        if abrupt {
            resent_cut.push(resent);
        } else {
            resent_clean.push(resent);
        }
        delete(client, &image.image_id).await;
    }
    latencies.sort();
    let stats = |resent: &[usize]| {
        let max = resent.iter().max().copied().unwrap_or(0);
        let mean = resent.iter().sum::<usize>() as f64 / resent.len().max(1) as f64;
        format!("mean {mean:.0} B, max {max} B over {} cuts", resent.len())
    };
    let _ = writeln!(
        out,
        "A {:.1} MiB photo-like JPEG cut at {cuts} random offsets, then resumed from `QueryUploadStatus.persisted_size`. Bytes sent again: stream ended without `finish_write`: {}; connection dropped: {}. Without sessions, a cut upload is sent again whole (mean {:.0} KiB here). Resume to stored image (the rest of the bytes, the segments read back, the pipeline): p50 {:.1} ms, p99 {:.1} ms.\n",
        photo.len() as f64 / MIB as f64,
        stats(&resent_clean),
        stats(&resent_cut),
        offsets.iter().sum::<usize>() as f64 / cuts as f64 / 1024.0,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
    );
    out
}

/// Sends `bytes` as the start of session `id` on a connection of its own
/// through a proxy, then drops the connection under the stream, after the
/// bytes left the client, as a lost network does: both sockets close.
async fn cut_connection(service: &Service, id: &str, bytes: Bytes) {
    let proxy = CutProxy::start(service.grpc).await;
    let channel = Channel::from_shared(format!("http://{}", proxy.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connects");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut call_client = ImageServiceClient::new(channel);
    let call = tokio::spawn(async move {
        call_client
            .upload_image(as_user(
                "bench",
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .await
    });
    for message in resume_messages(id, 0, bytes, false) {
        tx.send(message).await.expect("open");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.cut();
    assert!(
        call.await.expect("ran").is_err(),
        "a cut stream stores nothing"
    );
}

async fn start_session(client: &ImageServiceClient<Channel>, size: usize) -> String {
    let message = pb::StartUploadRequest {
        spec: Some(pb::ImageSpec::default()),
        expected_size: Some(size as i64),
    };
    client
        .clone()
        .start_upload(as_user("bench", message))
        .await
        .expect("a session")
        .into_inner()
        .session
        .expect("a session")
        .upload_id
}

async fn persisted(client: &ImageServiceClient<Channel>, upload_id: &str) -> usize {
    let message = pb::QueryUploadStatusRequest {
        upload_id: upload_id.into(),
    };
    client
        .clone()
        .query_upload_status(as_user("bench", message))
        .await
        .expect("a status")
        .into_inner()
        .persisted_size as usize
}

fn resume_messages(
    upload_id: &str,
    offset: usize,
    bytes: Bytes,
    finish: bool,
) -> Vec<pb::UploadImageRequest> {
    let first = pb::UploadImageRequest {
        data: Some(Data::Resume(pb::ResumeUpload {
            upload_id: upload_id.into(),
            write_offset: offset as i64,
        })),
        finish_write: finish && bytes.is_empty(),
        ..Default::default()
    };
    let chunks = bytes.len().div_ceil(CHUNK);
    std::iter::once(first)
        .chain((0..chunks).map(|i| pb::UploadImageRequest {
            data: Some(Data::Chunk(
                bytes.slice(i * CHUNK..((i + 1) * CHUNK).min(bytes.len())),
            )),
            finish_write: finish && i + 1 == chunks,
            ..Default::default()
        }))
        .collect()
}

async fn resume(
    client: &ImageServiceClient<Channel>,
    upload_id: &str,
    offset: usize,
    bytes: Bytes,
    finish: bool,
) -> Result<pb::Image, tonic::Status> {
    let messages = resume_messages(upload_id, offset, bytes, finish);
    let response = client
        .clone()
        .upload_image(as_user("bench", futures::stream::iter(messages)))
        .await?;
    Ok(response.into_inner().image.expect("an image"))
}

/// A direct upload in 8 MiB parts, sent with a plain HTTP client.
async fn direct_upload(client: &ImageServiceClient<Channel>, image: Bytes) -> pb::Image {
    let id = start_session(client, image.len()).await;
    let parts: Vec<Bytes> = image
        .chunks(PART_SIZE)
        .map(|c| image.slice_ref(c))
        .collect();
    let message = pb::GetUploadUrlsRequest {
        upload_id: id.clone(),
        parts: Some(pb::get_upload_urls_request::Parts::PartSizes(
            pb::PartSizes {
                sizes: parts.iter().map(|p| p.len() as i64).collect(),
            },
        )),
        expires_in: None,
    };
    let urls = client
        .clone()
        .get_upload_urls(as_user("bench", message))
        .await
        .expect("URLs")
        .into_inner()
        .urls;
    let http = reqwest::Client::new();
    let puts = urls.iter().zip(parts).map(|(url, part)| {
        let http = http.clone();
        async move {
            let response = http.put(url).body(part).send().await.expect("a PUT");
            assert!(response.status().is_success(), "{}", response.status());
        }
    });
    futures::stream::iter(puts)
        .buffer_unordered(PARTS_IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let message = pb::CompleteUploadRequest { upload_id: id };
    client
        .clone()
        .complete_upload(as_user("bench", message))
        .await
        .expect("completed")
        .into_inner()
        .image
        .expect("an image")
}
