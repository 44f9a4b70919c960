//! Figure 11: a feed page of 50 images, each with the URL of its `small`
//! variant: one `BatchGetImages` against 50 `GetImage` + 50
//! `GetDownloadUrl` calls made at once, on both backends.

use std::fmt::Write as _;

use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use image_service::testkit::as_user;
use image_service::testkit::stats::{ms, percentile};
use tonic::transport::Channel;

use crate::Plan;
use crate::harness::{Stores, small_png, start_service, time, upload};

/// Images on a feed page.
const FEED_PAGE: usize = 50;

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let mut out = format!(
        "### 11. A feed page: {FEED_PAGE} images with a `small` URL each\n\n| backend | one `BatchGetImages`: p50 / p99 | service CPU per page | {FEED_PAGE} `GetImage` + {FEED_PAGE} `GetDownloadUrl` at once: p50 / p99 | service CPU per page | latency ratio (p50) | CPU ratio |\n|---|---|---|---|---|---|---|\n"
    );
    let embedded = ["--backend".to_owned(), "embedded".into()];
    let aws_args = stores.aws_args("feed");
    for (name, args) in [
        ("embedded", &embedded[..]),
        ("aws (dynalite + s3s-fs)", &aws_args[..]),
    ] {
        out.push_str(&backend_row(plan, name, args).await);
    }
    let _ = writeln!(
        out,
        "\n{} pages each way, alternating, after one warm-up page each; one client connection (HTTP/2). The {} single calls of a page are made at once, as a feed service would. Service CPU: user + system time of the service process per page (at 10 ms ticks, so small figures are coarse).\n",
        plan.feed_pages,
        2 * FEED_PAGE
    );
    out
}

/// The row of one backend: a service on `args` with a page of images,
/// read both ways in turn.
async fn backend_row(plan: &Plan, name: &str, args: &[String]) -> String {
    let service = start_service(args);
    let client = service.wide_client().await;
    let mut ids = Vec::with_capacity(FEED_PAGE);
    for i in 0..FEED_PAGE {
        let image = upload(&client, small_png(900 + i as u32), "feed")
            .await
            .expect("a feed image");
        ids.push(image.image_id);
    }
    let batch = || batch_page(client.clone(), ids.clone());
    let singles = || single_calls(client.clone(), ids.clone());
    // Warm both paths, then time them in turn.
    batch().await;
    singles().await;
    let (mut batched, mut single) = (Vec::new(), Vec::new());
    let (mut batched_cpu, mut single_cpu) = (0.0, 0.0);
    for _ in 0..plan.feed_pages {
        let cpu = service.cpu_seconds();
        batched.push(time(batch()).await.0);
        batched_cpu += service.cpu_seconds() - cpu;
        let cpu = service.cpu_seconds();
        single.push(time(singles()).await.0);
        single_cpu += service.cpu_seconds() - cpu;
    }
    batched.sort();
    single.sort();
    let pages = plan.feed_pages as f64;
    format!(
        "| {name} | {:.2} / {:.2} ms | {:.2} ms | {:.2} / {:.2} ms | {:.2} ms | {:.1}× | {:.1}× |\n",
        ms(percentile(&batched, 0.5)),
        ms(percentile(&batched, 0.99)),
        batched_cpu * 1000.0 / pages,
        ms(percentile(&single, 0.5)),
        ms(percentile(&single, 0.99)),
        single_cpu * 1000.0 / pages,
        ms(percentile(&single, 0.5)) / ms(percentile(&batched, 0.5)),
        single_cpu / batched_cpu.max(1e-9),
    )
}

/// The page in one `BatchGetImages`.
async fn batch_page(mut client: ImageServiceClient<Channel>, ids: Vec<String>) {
    let message = pb::BatchGetImagesRequest {
        image_ids: ids,
        url_variant: "small".into(),
        ..Default::default()
    };
    let page = client
        .batch_get_images(as_user("viewer", message))
        .await
        .expect("a batch")
        .into_inner();
    assert_eq!(page.images.len(), FEED_PAGE, "a whole page");
    assert!(page.images.iter().all(|i| !i.url.is_empty()));
}

/// The page in a `GetImage` and a `GetDownloadUrl` per image, all at once.
async fn single_calls(client: ImageServiceClient<Channel>, ids: Vec<String>) {
    let calls = ids.iter().map(|id| {
        let client = client.clone();
        async move {
            let get = pb::GetImageRequest {
                image_id: id.clone(),
            };
            let url = pb::GetDownloadUrlRequest {
                image_id: id.clone(),
                variant: "small".into(),
                ..Default::default()
            };
            let (mut images, mut urls) = (client.clone(), client.clone());
            let (image, url) = futures::join!(
                images.get_image(as_user("viewer", get)),
                urls.get_download_url(as_user("viewer", url))
            );
            image.expect("an image");
            url.expect("a URL");
        }
    });
    futures::future::join_all(calls).await;
}
