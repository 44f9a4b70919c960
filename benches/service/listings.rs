//! Figure 6: a filtered page of 50 from a large catalogue, on the
//! embedded store and on DynamoDB, with the records each store read.

use std::fmt::Write as _;
use std::path::Path;

use futures::StreamExt;
use image_service::domain::image::{ImageRecord, Timestamp};
use image_service::domain::{ImageId, UserId};
use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use image_service::testkit::as_user;
use image_service::testkit::service::Service;
use image_service::testkit::stats::{ms, percentile};
use tonic::transport::Channel;

use crate::Plan;
use crate::harness::{Stores, fake_png, start_service, time, upload_with, without_variants};

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### 6. Listing: a filtered page of 50\n");
    let _ = writeln!(
        out,
        "| store | images | filter | p50 | p99 | records read per record returned |\n|---|---|---|---|---|---|"
    );
    let embedded_dir = tempfile::tempdir().expect("temp dir");
    import_embedded(embedded_dir.path(), plan.embedded_listing).await;
    let embedded = start_service(&[
        "--backend".to_owned(),
        "embedded".into(),
        "--data-dir".into(),
        embedded_dir.path().display().to_string(),
    ]);
    listing_rows(
        &mut out,
        &embedded,
        "embedded",
        plan.embedded_listing,
        plan.list_calls,
    )
    .await;
    drop(embedded);
    let listed = start_service(&without_variants(&stores.aws_args("listing")));
    populate_over_grpc(&listed.wide_client().await, plan.dynamodb_listing).await;
    listing_rows(
        &mut out,
        &listed,
        "DynamoDB (dynalite)",
        plan.dynamodb_listing,
        plan.list_calls,
    )
    .await;
    drop(listed);
    let _ = writeln!(
        out,
        "\nRecords read: image records the store fetched (`imageservice_list_records_read_total` / `_returned_total`).\n"
    );
    out
}

const OWNERS: usize = 100;
const TAGS: usize = 50;
const LOCATIONS: usize = 20;

/// A catalogue with owners, tags, locations and two content types spread
/// evenly, straight into an embedded data directory.
pub async fn import_embedded(dir: &Path, count: usize) {
    let store =
        image_service::storage::embedded::EmbeddedMetadataStore::open(&dir.join("metadata.redb"))
            .expect("opens");
    let start = Timestamp::now().as_micros() - count as i64 * 1000;
    for batch in (0..count).collect::<Vec<_>>().chunks(5_000) {
        let records = batch
            .iter()
            .map(|&i| catalogue_record(i, start + i as i64 * 1000))
            .collect();
        store.import(records).await.expect("import");
    }
}

pub fn catalogue_record(i: usize, micros: i64) -> ImageRecord {
    let time = Timestamp::from_micros(micros);
    ImageRecord {
        id: ImageId::new(),
        owner: UserId::parse(&format!("user{}", i % OWNERS)).expect("user"),
        filename: format!("{i}.jpg"),
        content_type: if i.is_multiple_of(3) {
            "image/png"
        } else {
            "image/jpeg"
        }
        .into(),
        size_bytes: 100_000,
        sha256: "0".repeat(64),
        crc32c: 0,
        width: 1080,
        height: 1080,
        title: format!("image {i}"),
        description: String::new(),
        tags: vec![format!("tag{}", i % TAGS), format!("tag{}", (i / 7) % TAGS)],
        location: format!("city{}", i % LOCATIONS),
        attributes: Default::default(),
        create_time: time,
        update_time: time,
        variants: Vec::new(),
        revision: 1,
        idempotency_key: None,
        uploaded_sha256: String::new(),
        metadata_stripped: false,
        blurhash: String::new(),
        thumbhash: String::new(),
        state: Default::default(),
        state_reason: String::new(),
        state_time: None,
        removed_objects: Vec::new(),
        pdq_hash: String::new(),
        pdq_quality: 0,
        declined_encodings: Vec::new(),
    }
}

/// The same catalogue's metadata through the service (tiny images).
pub async fn populate_over_grpc(client: &ImageServiceClient<Channel>, count: usize) {
    let tiny = fake_png(200, 0);
    futures::stream::iter(0..count)
        .map(|i| {
            let spec = pb::ImageSpec {
                tags: vec![format!("tag{}", i % TAGS), format!("tag{}", (i / 7) % TAGS)],
                location: format!("city{}", i % LOCATIONS),
                ..Default::default()
            };
            let (client, tiny) = (client.clone(), tiny.clone());
            async move {
                upload_with(&client, tiny, &format!("user{}", i % OWNERS), spec)
                    .await
                    .expect("upload");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// A listing request for the i-th call.
type Filter = fn(usize) -> pb::ListImagesRequest;

async fn listing_rows(
    out: &mut String,
    service: &Service,
    store: &str,
    images: usize,
    calls: usize,
) {
    let client = service.wide_client().await;
    let filters: [(&str, Filter); 6] = [
        ("none", |_| pb::ListImagesRequest::default()),
        ("owner", |i| pb::ListImagesRequest {
            owner_id: format!("user{}", i % OWNERS),
            ..Default::default()
        }),
        ("tag", |i| pb::ListImagesRequest {
            tag: format!("tag{}", i % TAGS),
            ..Default::default()
        }),
        ("location", |i| pb::ListImagesRequest {
            location: format!("city{}", i % LOCATIONS),
            ..Default::default()
        }),
        ("content type", |_| pb::ListImagesRequest {
            content_type: "image/png".into(),
            ..Default::default()
        }),
        ("owner + tag", |i| pb::ListImagesRequest {
            owner_id: format!("user{}", i % OWNERS),
            tag: format!("tag{}", i % TAGS),
            ..Default::default()
        }),
    ];
    for (name, make) in filters {
        let read_before = service.metric("imageservice_list_records_read_total").await;
        let returned_before = service
            .metric("imageservice_list_records_returned_total")
            .await;
        let mut latencies = Vec::with_capacity(calls);
        for i in 0..calls {
            let message = pb::ListImagesRequest {
                page_size: 50,
                ..make(i)
            };
            let (elapsed, response) =
                time(client.clone().list_images(as_user("bench", message))).await;
            response.expect("a page");
            latencies.push(elapsed);
        }
        latencies.sort();
        let read = service.metric("imageservice_list_records_read_total").await - read_before;
        let returned = service
            .metric("imageservice_list_records_returned_total")
            .await
            - returned_before;
        let _ = writeln!(
            out,
            "| {store} | {images} | {name} | {:.2} ms | {:.2} ms | {:.2} |",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            read / returned
        );
    }
}
