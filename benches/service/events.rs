//! Figure 13: the event stream. Delivery latency, from a change's
//! acknowledgement to its event reaching a watcher (on the embedded
//! backend woken at once; on the aws backend a watcher on another replica,
//! which polls), and how fast one watcher catches up from a backlog.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use image_service::testkit::as_user;
use image_service::testkit::stats::{ms, percentile};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::Plan;
use crate::harness::{Stores, small_png, start_service, upload, without_variants};
use crate::listings::{import_embedded, populate_over_grpc};

const WATCHER: &str = "bench-watcher";
/// The pause between two timed changes: changes arrive one by one.
const GAP: Duration = Duration::from_millis(20);

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let mut out = "### 13. Events: delivery latency and catch-up\n\n| backend | watcher | changes | acknowledgement → delivery: p50 / p99 | max |\n|---|---|---|---|---|\n".to_owned();
    let watchers = ["--event-watchers".to_owned(), WATCHER.into()];
    let embedded =
        start_service(&[&["--backend".to_owned(), "embedded".into()][..], &watchers].concat());
    let client = embedded.wide_client().await;
    out.push_str(&latency_row(plan, "embedded", "same replica", &client, &client).await);
    drop(embedded);
    let aws = [
        without_variants(&stores.aws_args("events")),
        watchers.to_vec(),
    ]
    .concat();
    let one = start_service(&aws);
    let other = start_service(&aws);
    let (writer, reader) = (one.wide_client().await, other.wide_client().await);
    out.push_str(
        &latency_row(
            plan,
            "aws (dynalite + s3s-fs)",
            "another replica, `--event-poll-interval` 250ms",
            &writer,
            &reader,
        )
        .await,
    );

    let _ = writeln!(
        out,
        "\nEach change is an `UpdateImage` of one image, {} ms apart; the watcher runs on its own connection and notes when each event arrives; the latency is that minus when the update's answer arrived (both in the benchmark's process).\n\n| backend | backlog | events / s caught up by one watcher from `oldest` |\n|---|---|---|",
        GAP.as_millis()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    import_embedded(dir.path(), plan.event_backlog).await;
    let caught_up = start_service(
        &[
            &[
                "--backend".to_owned(),
                "embedded".into(),
                "--data-dir".into(),
                dir.path().display().to_string(),
            ][..],
            &watchers,
        ]
        .concat(),
    );
    let rate = catch_up(&caught_up.wide_client().await, plan.event_backlog).await;
    let _ = writeln!(out, "| embedded | {} | {rate:.0} |", plan.event_backlog);
    drop(caught_up);
    // The aws backlog is made through the service (dynalite takes a few
    // hundred writes a second), on a table of its own.
    let aws = [
        without_variants(&stores.aws_args("eventlog")),
        watchers.to_vec(),
    ]
    .concat();
    let service = start_service(&aws);
    let client = service.wide_client().await;
    populate_over_grpc(&client, plan.aws_event_backlog).await;
    let rate = catch_up(&client, plan.aws_event_backlog).await;
    let _ = writeln!(
        out,
        "| aws (dynalite) | {} | {rate:.0} |\n\nThe embedded backlog is imported into the data directory (records and their events in one transaction each batch), the aws one uploaded through the service. Catch-up: the time from the watch's start to its last event.\n",
        plan.aws_event_backlog
    );
    out.push_str(&stalled(plan).await);
    out
}

/// The peak memory of an embedded replica while `plan.stalled_edits`
/// edits are made, with no watcher and with `plan.stalled_watchers`
/// watchers that never read (each on a connection whose windows hold
/// 16 KiB), under the default `--event-watcher-stall-timeout` (30 s: the
/// edits end before any watcher is cut).
async fn stalled(plan: &Plan) -> String {
    let mut out = "\n| watchers that do not read | edits (2 KiB description each) | peak resident memory | above none |\n|---|---|---|---|\n".to_owned();
    let mut baseline = None;
    for watchers in [0, plan.stalled_watchers] {
        let service = start_service(&[
            "--backend".to_owned(),
            "embedded".into(),
            "--event-watchers".into(),
            WATCHER.into(),
            "--max-event-watchers".into(),
            plan.stalled_watchers.max(1).to_string(),
        ]);
        let client = service.wide_client().await;
        let image = upload(&client, small_png(9), "events")
            .await
            .expect("an image");
        let mut streams = Vec::with_capacity(watchers);
        for _ in 0..watchers {
            let request = as_user(WATCHER, pb::WatchImageEventsRequest::default());
            let stream = service
                .narrow_client()
                .await
                .watch_image_events(request)
                .await
                .expect("a watch")
                .into_inner();
            streams.push(stream);
        }
        service.reset_peak();
        let long = "x".repeat(2_000);
        for i in 0..plan.stalled_edits {
            let update = pb::UpdateImageRequest {
                image_id: image.image_id.clone(),
                description: format!("{i} {long}"),
                ..Default::default()
            };
            client
                .clone()
                .update_image(as_user("events", update))
                .await
                .expect("an update");
        }
        let peak = service.peak_kib();
        let above = match baseline {
            None => {
                baseline = Some(peak);
                "-".to_owned()
            }
            Some(base) => format!("{:.1} MiB", peak.saturating_sub(base) as f64 / 1024.0),
        };
        let _ = writeln!(
            out,
            "| {watchers} | {} | {:.1} MiB | {above} |",
            plan.stalled_edits,
            peak as f64 / 1024.0
        );
        drop(streams);
    }
    out.push_str("\nA watcher holds at most two pages of events (`EVENT_PAGE`, 100 each) plus what its HTTP/2 windows took, until `--event-watcher-stall-timeout` cuts it; `--max-event-watchers` caps how many there are.\n");
    out
}

/// Latency of `plan.event_changes` updates made through `writer`, seen
/// by a watcher on `reader`.
async fn latency_row(
    plan: &Plan,
    backend: &str,
    watcher: &str,
    writer: &ImageServiceClient<Channel>,
    reader: &ImageServiceClient<Channel>,
) -> String {
    let image = upload(writer, small_png(7), "events")
        .await
        .expect("an image");
    let request = pb::WatchImageEventsRequest::default();
    let mut stream = reader
        .clone()
        .watch_image_events(as_user(WATCHER, request))
        .await
        .expect("a watch")
        .into_inner();
    let (arrivals, mut arrived) = mpsc::unbounded_channel();
    let watching = tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            let event = message.event.expect("an event");
            let _ = arrivals.send((event.etag, Instant::now()));
        }
    });
    let mut latencies = Vec::with_capacity(plan.event_changes);
    for i in 0..plan.event_changes {
        let update = pb::UpdateImageRequest {
            image_id: image.image_id.clone(),
            title: format!("change {i}"),
            ..Default::default()
        };
        let answer = writer
            .clone()
            .update_image(as_user("events", update))
            .await
            .expect("an update")
            .into_inner()
            .image
            .expect("the image");
        let acknowledged = Instant::now();
        loop {
            let (etag, at) = tokio::time::timeout(Duration::from_secs(10), arrived.recv())
                .await
                .expect("the event comes")
                .expect("the watch goes on");
            if etag == answer.etag {
                latencies.push(at.saturating_duration_since(acknowledged));
                break;
            }
        }
        tokio::time::sleep(GAP).await;
    }
    watching.abort();
    latencies.sort();
    format!(
        "| {backend} | {watcher} | {} | {:.2} / {:.2} ms | {:.2} ms |\n",
        plan.event_changes,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    )
}

/// Events per second one watcher reads from `oldest` until `count` came.
async fn catch_up(client: &ImageServiceClient<Channel>, count: usize) -> f64 {
    let request = pb::WatchImageEventsRequest {
        cursor: "oldest".into(),
        ..Default::default()
    };
    let started = Instant::now();
    let mut stream = client
        .clone()
        .watch_image_events(as_user(WATCHER, request))
        .await
        .expect("a watch")
        .into_inner();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("the backlog keeps coming")
            .expect("the watch goes on")
            .expect("open");
        let event = message.event.expect("an event");
        seen.insert((event.image_id, event.etag));
    }
    count as f64 / started.elapsed().as_secs_f64()
}
