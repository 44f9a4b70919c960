//! `FindSimilarImages` at a large catalogue (#35): the PDQ band index on
//! the embedded store and on DynamoDB. The catalogue is random hashes, with
//! a few originals that each have three edited copies (4, 10 and 20 bits
//! off); every search is for an original's hash and finds its copies.
//! `flood`: many copies of one photo crowd every bucket of its hash, and
//! searches near it are bounded by `--max-similar-candidates`.

use std::fmt::Write as _;
use std::path::Path;

use clap::Parser as _;
use futures::StreamExt;
use image_service::domain::ImageRecord;
use image_service::domain::image::Timestamp;
use image_service::domain::similar::PdqHash;
use image_service::pb;
use image_service::pb::moderation_service_client::ModerationServiceClient;
use image_service::testkit::as_user;
use image_service::testkit::service::Service;
use image_service::testkit::stats::{ms, percentile};

use crate::Plan;
use crate::harness::{Stores, start_service, time};
use crate::listings::catalogue_record;

const MODERATOR: &str = "bench-moderator";
/// Originals searched for; each has three copies in the catalogue.
const ORIGINALS: usize = 20;
/// How far each copy's hash is from its original's.
const COPIES: [usize; 3] = [4, 10, 20];

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let mut out = section(
        "FindSimilarImages: the PDQ band index at a large catalogue",
        &[
            "store",
            "images",
            "index entries read per search (expected)",
            "p50",
            "p99",
            "found per search",
        ],
    );
    let (embedded_count, aws_count) = plan.similar;
    let (records, originals) = catalogue(embedded_count);
    let dir = tempfile::tempdir().expect("temp dir");
    let started = std::time::Instant::now();
    import_embedded(dir.path(), records).await;
    eprintln!("embedded catalogue imported in {:?}", started.elapsed());
    let embedded = embedded_service(dir.path(), &[]);
    row(
        &mut out,
        &embedded,
        "embedded",
        embedded_count,
        &originals,
        plan.list_calls,
    )
    .await;
    drop(embedded);

    let mut args = stores.backend_args("similar");
    args.extend(["--moderators".into(), MODERATOR.into()]);
    let aws = start_service(&args);
    let (records, originals) = catalogue(aws_count);
    import_aws(&args, records).await;
    row(
        &mut out,
        &aws,
        "DynamoDB (dynalite)",
        aws_count,
        &originals,
        plan.list_calls,
    )
    .await;
    // The buckets a search reads, filled as `embedded_count` images would
    // fill them: a `Query` costs its partition, whatever the rest of the
    // table holds.
    let searched = &originals[..FILLED];
    let started = std::time::Instant::now();
    fill_buckets(
        &stores.dynamodb.endpoint(),
        "similar",
        searched,
        embedded_count / 256,
    )
    .await;
    eprintln!("buckets filled in {:?}", started.elapsed());
    row(
        &mut out,
        &aws,
        "DynamoDB (dynalite), the searched buckets as full as at the embedded row's count",
        embedded_count,
        searched,
        plan.list_calls,
    )
    .await;
    drop(aws);
    let _ = writeln!(
        out,
        "\nEach search reads the 32 buckets of its hash's bands (each about 1/256 of the images) and the records of its matches only. The catalogue is written to the stores directly (`EmbeddedMetadataStore::import`; `MetadataStore::create` on DynamoDB, fewer images since dynalite is slow to fill). The last row's searches are for {FILLED} originals whose 32 buckets each hold 1/256 of the embedded row's count in band items (of images that do not exist, with hashes far from the query's: what a search reads and discards), written with `BatchWriteItem`.\n"
    );
    out
}

/// Originals whose buckets are filled on DynamoDB.
const FILLED: usize = 2;

/// Writes `per_bucket` band items into each of the 32 buckets of every hash
/// of `hashes` in the table `table`: as the service writes them (`pk =
/// pdq#{band}#{value}`, `sk = {time}#{id}#{hash}`), each for an image id
/// of its own with a random hash that shares only that band.
async fn fill_buckets(endpoint: &str, table: &str, hashes: &[PdqHash], per_bucket: usize) {
    use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&shared)
            .endpoint_url(endpoint)
            .build(),
    );
    let time = (Timestamp::now().as_micros() as u64) ^ (1 << 63);
    let mut requests = Vec::new();
    for hash in hashes {
        for (band, value) in hash.bands() {
            for _ in 0..per_bucket {
                let mut bytes = *random_hash().as_bytes();
                bytes[usize::from(band)] = value;
                let id = uuid::Uuid::new_v4();
                let item = std::collections::HashMap::from([
                    (
                        "pk".to_owned(),
                        AttributeValue::S(format!("pdq#{band:02}#{value:02x}")),
                    ),
                    (
                        "sk".to_owned(),
                        AttributeValue::S(format!(
                            "{time:020}#{id}#{}",
                            PdqHash::from_bytes(bytes)
                        )),
                    ),
                    ("image_id".to_owned(), AttributeValue::S(id.to_string())),
                ]);
                let put = PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .expect("an item");
                requests.push(WriteRequest::builder().put_request(put).build());
            }
        }
    }
    let batches: Vec<Vec<WriteRequest>> = requests.chunks(25).map(<[_]>::to_vec).collect();
    futures::stream::iter(batches)
        .map(|batch| {
            let client = client.clone();
            async move {
                let mut pending = batch;
                while !pending.is_empty() {
                    let out = client
                        .batch_write_item()
                        .request_items(table, pending)
                        .send()
                        .await
                        .expect("band items written");
                    pending = out
                        .unprocessed_items
                        .and_then(|mut left| left.remove(table))
                        .unwrap_or_default();
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

fn random_hash() -> PdqHash {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    PdqHash::from_bytes(bytes)
}

/// `hash` with `bits` bits flipped, spread over the bands.
fn edited(hash: &PdqHash, bits: usize) -> PdqHash {
    let mut bytes = *hash.as_bytes();
    for bit in 0..bits {
        bytes[(bit * 7) % 32] ^= 1 << (bit % 8);
    }
    PdqHash::from_bytes(bytes)
}

/// `count` records with random hashes, among them the originals (returned
/// too) and their copies.
fn catalogue(count: usize) -> (Vec<ImageRecord>, Vec<PdqHash>) {
    let originals: Vec<PdqHash> = (0..ORIGINALS).map(|_| random_hash()).collect();
    let planted: Vec<PdqHash> = originals
        .iter()
        .flat_map(|o| std::iter::once(*o).chain(COPIES.iter().map(|&bits| edited(o, bits))))
        .collect();
    let records = hashed_records(count, |i| {
        planted.get(i).copied().unwrap_or_else(random_hash)
    });
    (records, originals)
}

/// `count` catalogue records, the `i`th with the hash `hash(i)`.
fn hashed_records(count: usize, hash: impl Fn(usize) -> PdqHash) -> Vec<ImageRecord> {
    let start = Timestamp::now().as_micros() - count as i64 * 1000;
    (0..count)
        .map(|i| {
            let mut record = catalogue_record(i, start + i as i64 * 1000);
            record.pdq_hash = hash(i).to_hex();
            record.pdq_quality = 100;
            // A record's tags are distinct, as the service stores them.
            record.tags.dedup();
            record
        })
        .collect()
}

/// The service on the embedded store in `dir`, with the moderator and
/// `extra` flags.
fn embedded_service(dir: &Path, extra: &[&str]) -> Service {
    let mut args: Vec<String> = [
        "--backend",
        "embedded",
        "--data-dir",
        &dir.display().to_string(),
        "--moderators",
        MODERATOR,
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    start_service(&args)
}

/// A client of `service`'s moderation service.
async fn moderation_client(
    service: &Service,
) -> ModerationServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", service.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connects");
    ModerationServiceClient::new(channel)
}

/// A report section: its title and its table's header.
fn section(title: &str, columns: &[&str]) -> String {
    let mut out = format!("### {title}\n\n| {} |\n|", columns.join(" | "));
    out.push_str(&"---|".repeat(columns.len()));
    out.push('\n');
    out
}

async fn import_embedded(dir: &Path, records: Vec<ImageRecord>) {
    let store =
        image_service::storage::embedded::EmbeddedMetadataStore::open(&dir.join("metadata.redb"))
            .expect("opens");
    let mut records = records;
    while !records.is_empty() {
        let rest = records.split_off(records.len().min(5_000));
        store.import(records).await.expect("import");
        records = rest;
    }
}

/// Creates the records in the table the service with `args` uses.
async fn import_aws(args: &[String], records: Vec<ImageRecord>) {
    let mut argv = vec!["image-service".to_owned()];
    argv.extend_from_slice(args);
    let config = image_service::config::Config::try_parse_from(argv).expect("the service's flags");
    let (_, metadata) = image_service::storage::aws::connect(&config.aws_settings()).await;
    let metadata = &metadata;
    futures::stream::iter(records)
        .map(|record| async move {
            image_service::domain::ports::MetadataStore::create(metadata, &record)
                .await
                .expect("created");
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

async fn row(
    out: &mut String,
    service: &Service,
    store: &str,
    images: usize,
    originals: &[PdqHash],
    calls: usize,
) {
    let client = moderation_client(service).await;
    let mut latencies = Vec::with_capacity(calls);
    let mut found = 0;
    for i in 0..calls {
        let request = pb::FindSimilarImagesRequest {
            query: Some(pb::find_similar_images_request::Query::PdqHash(
                originals[i % originals.len()].to_hex(),
            )),
            ..Default::default()
        };
        let (elapsed, response) = time(
            client
                .clone()
                .find_similar_images(as_user(MODERATOR, request)),
        )
        .await;
        found += response.expect("a search").into_inner().images.len();
        latencies.push(elapsed);
    }
    latencies.sort();
    let line = format!(
        "| {store} | {images} | {} | {:.2} ms | {:.2} ms | {:.1} |",
        images * 32 / 256,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        found as f64 / calls as f64
    );
    // Printed as soon as measured: the aws catalogue takes long to fill.
    eprintln!("{line}");
    let _ = writeln!(out, "{line}");
}

/// The cap of a search that reads its buckets whole (the largest allowed:
/// a share of 31 250 entries a bucket).
const UNCAPPED: &str = "1000000";

/// Many copies of one photo (one hash, as uploads of the same bytes have),
/// and searches by that hash at once, as a moderator: the time they take
/// and the service's peak memory, with buckets read whole and with the
/// default cap.
pub async fn flood(plan: &Plan) -> String {
    let (copies, searches) = plan.similar_flood;
    let mut out = section(
        "FindSimilarImages near a flood of copies of one photo (embedded)",
        &[
            "--max-similar-candidates",
            "copies",
            "searches at once",
            "wall time",
            "per search (mean)",
            "peak RSS over idle",
            "found per search",
            "cut short",
        ],
    );
    for copies in [copies, 4 * copies] {
        flood_rows(&mut out, copies, searches).await;
    }
    let _ = writeln!(
        out,
        "\nEvery copy has the same hash, so each of the 32 buckets of the query holds all of them: read whole, a search reads 32 × copies entries; capped, 32 × its share (625 by default) whatever the copies. Each search asks for the default page (50 images), so the records read are 50 a search either way.\n"
    );
    out
}

/// The rows of `copies` copies: buckets read whole, then capped.
async fn flood_rows(out: &mut String, copies: usize, searches: usize) {
    let hash = random_hash();
    let dir = tempfile::tempdir().expect("temp dir");
    import_embedded(dir.path(), hashed_records(copies, |_| hash)).await;
    for cap in [UNCAPPED, "20000"] {
        let service = embedded_service(dir.path(), &["--max-similar-candidates", cap]);
        let client = moderation_client(&service).await;
        let search = || {
            let request = pb::FindSimilarImagesRequest {
                query: Some(pb::find_similar_images_request::Query::PdqHash(
                    hash.to_hex(),
                )),
                ..Default::default()
            };
            let mut client = client.clone();
            async move {
                client
                    .find_similar_images(as_user(MODERATOR, request))
                    .await
                    .expect("a search")
                    .into_inner()
            }
        };
        // Once to warm the page cache, then the measured searches at once.
        search().await;
        let idle = service.rss_kib();
        service.reset_peak();
        let (elapsed, responses) =
            time(futures::future::join_all((0..searches).map(|_| search()))).await;
        let peak = service.peak_kib();
        let found: usize = responses.iter().map(|r| r.images.len()).sum();
        let cut = responses.iter().filter(|r| r.candidates_truncated).count();
        let line = format!(
            "| {} | {copies} | {searches} | {:.2} s | {:.1} ms | {:.1} MiB | {:.0} | {cut} of {searches} |",
            if cap == UNCAPPED {
                "1000000 (buckets read whole)"
            } else {
                cap
            },
            elapsed.as_secs_f64(),
            ms(elapsed) / searches as f64,
            peak.saturating_sub(idle) as f64 / 1024.0,
            found as f64 / searches as f64,
        );
        eprintln!("{line}");
        let _ = writeln!(out, "{line}");
        drop(service);
    }
}
