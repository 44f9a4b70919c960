//! The service against the raw backends, side by side, in one run on the
//! same data: `scripts/bench` (or `cargo bench --bench service` with the
//! test servers installed, see README). Prints a table and writes
//! `BENCHMARKS.md`'s generated section. Run by `cargo test` (without
//! `--bench`) it does a one-round smoke pass with small sizes, so the
//! benchmark cannot rot.
//!
//! Each figure family is a module with a `run` that returns its section of
//! the report; the harness they share is `harness` (the servers, the
//! service, the calls) and the crate's test kit. Name families after `--`
//! to run only those, printed and not written:
//! `cargo bench --bench service -- listings feed` (`scripts/bench
//! listings feed`); the names are in [`FAMILIES`].

mod backfill;
mod background;
mod embedded;
mod encodings;
mod erasure;
mod events;
mod feed;
mod feed_page;
mod harness;
mod hotpaths;
mod listings;
mod memory;
mod migration;
mod photos;
mod quota;
mod raw;
mod report;
mod scan;
mod sessions;
mod similar;
mod small;
mod throughput;
mod variants;

use std::path::Path;

use harness::{MIB, Stores};

/// Sizes and counts; the smoke pass shrinks them.
pub struct Plan {
    rounds: usize,
    big: usize,
    huge: usize,
    concurrent: (usize, usize),
    small_counts: [(usize, usize); 3],
    embedded_listing: usize,
    dynamodb_listing: usize,
    list_calls: usize,
    renders: usize,
    /// Phone photos are rendered at their size divided by this.
    photo_shrink: u32,
    /// Rounds of the three phone photos uploaded by 1 and by 16 callers.
    photo_rounds: (usize, usize),
    /// Feed pages read each way.
    feed_pages: usize,
    /// Images moved by figure 12.
    migrated: usize,
    /// Figure 13: changes timed, and the backlogs caught up from.
    event_changes: usize,
    event_backlog: usize,
    aws_event_backlog: usize,
    /// Watchers that stop reading, and the edits made while they do.
    stalled_watchers: usize,
    stalled_edits: usize,
    /// Images searched by `FindSimilarImages`: embedded, aws.
    similar: (usize, usize),
    /// Copies of one photo, and searches near them at once.
    similar_flood: (usize, usize),
    /// Images of the user erased by the erasure figure: embedded, aws.
    erased: (usize, usize),
    /// Phone photos given their WebP variants by the backfill figure.
    backfilled: usize,
}

impl Plan {
    /// The phone photos of the test kit at this plan's size.
    fn phone_shots(&self) -> impl Iterator<Item = image_service::fixtures::PhoneShot> {
        image_service::fixtures::PHONE_SHOTS
            .iter()
            .map(|shot| image_service::fixtures::PhoneShot {
                width: shot.width / self.photo_shrink,
                height: shot.height / self.photo_shrink,
                ..*shot
            })
    }
}

const FULL: Plan = Plan {
    rounds: 3,
    big: 256 * MIB,
    huge: 1024 * MIB,
    concurrent: (32, 64 * MIB),
    small_counts: [(1, 100), (16, 400), (64, 640)],
    embedded_listing: 100_000,
    dynamodb_listing: 10_000,
    list_calls: 200,
    renders: 10,
    photo_shrink: 1,
    photo_rounds: (8, 32),
    feed_pages: 100,
    migrated: 500,
    event_changes: 200,
    event_backlog: 100_000,
    aws_event_backlog: 2_000,
    stalled_watchers: 64,
    stalled_edits: 1_000,
    similar: (100_000, 2_000),
    similar_flood: (1_500, 64),
    erased: (2_000, 500),
    backfilled: 30,
};

const SMOKE: Plan = Plan {
    rounds: 1,
    big: 12 * MIB,
    huge: 16 * MIB,
    concurrent: (2, 8 * MIB),
    small_counts: [(1, 4), (4, 8), (8, 8)],
    embedded_listing: 300,
    dynamodb_listing: 60,
    list_calls: 5,
    renders: 1,
    photo_shrink: 8,
    photo_rounds: (1, 2),
    feed_pages: 3,
    migrated: 6,
    event_changes: 5,
    event_backlog: 200,
    aws_event_backlog: 20,
    stalled_watchers: 2,
    stalled_edits: 10,
    similar: (300, 100),
    similar_flood: (100, 4),
    erased: (20, 10),
    backfilled: 3,
};

/// The figure families in the report's order, by the name that runs one
/// alone, and whether it needs the S3 and DynamoDB test servers.
const FAMILIES: &[(&str, bool)] = &[
    // 1-3: throughput of one large image, service against raw S3.
    ("throughput", true),
    // 4: the service's memory under large uploads.
    ("memory", true),
    // 5: small uploads against raw PutObject + PutItem.
    ("small", true),
    // The cost of per-user usage accounting on the upload path (#36).
    ("quota", true),
    // Erasure throughput: DeleteUserData on both backends (#36).
    ("erasure", true),
    // 6: filtered listings on both stores.
    ("listings", true),
    // 7: the embedded backend against plain files.
    ("embedded", false),
    // 8: variants against libvips.
    ("variants", false),
    // The encodings of variants and the decode scale (#33).
    ("encodings", false),
    // The DCT scale JPEGs are decoded at for variants (#33).
    ("decode-scale", false),
    // The encodings made after the acknowledgement (#33).
    ("background", false),
    // Bytes of a feed page in each encoding (#33).
    ("feed-page", false),
    // The backfill's rate over phone photos (#33).
    ("backfill", false),
    // 9: upload sessions.
    ("sessions", true),
    // 10: phone photo uploads against libvips + PutObject.
    ("photos", true),
    // 11: a feed page.
    ("feed", true),
    // 12: migrating from the embedded backend to aws.
    ("migration", true),
    // 13: the event stream's delivery latency and catch-up.
    ("events", true),
    // The latency the sync content scan hook adds (#35).
    ("scan", false),
    // FindSimilarImages over the PDQ band index on both stores (#35).
    ("similar", true),
    // FindSimilarImages near a flood of copies of one photo (#35).
    ("similar-flood", false),
    // The hot paths on the embedded backend, for before/after comparisons;
    // only when named, not in the report.
    ("hotpaths", false),
    // The acknowledged latency of the phone photos with the default
    // settings, for before/after comparisons; only when named.
    ("acknowledged", false),
];

/// Families run only when named.
const ALONE: [&str; 2] = ["hotpaths", "acknowledged"];

/// Earlier names of families, still accepted.
const ALIASES: [(&str, &str); 1] = [("renders", "variants")];

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full { FULL } else { SMOKE };
    let chosen = chosen_families(full);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if !chosen.is_empty() {
        println!("{}", runtime.block_on(run(&plan, &chosen)));
        return;
    }
    let all: Vec<&str> = FAMILIES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !ALONE.contains(name))
        .collect();
    let report = format!(
        "{}{}",
        report::machine(),
        runtime.block_on(run(&plan, &all))
    );
    println!("{report}");
    if full {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        report::write_results(&path, &report).expect("BENCHMARKS.md written");
        println!("written to {}", path.display());
    }
}

/// The families named on the command line, in the report's order. An
/// unknown name stops a measuring run; under `cargo test` it is a test
/// filter and ignored.
fn chosen_families(full: bool) -> Vec<&'static str> {
    let mut named: Vec<&str> = Vec::new();
    for arg in std::env::args().skip(1).filter(|a| !a.starts_with('-')) {
        let arg = ALIASES
            .iter()
            .find(|(alias, _)| *alias == arg)
            .map_or(arg.as_str(), |(_, name)| name);
        match FAMILIES.iter().find(|(name, _)| *name == arg) {
            Some((name, _)) => named.push(name),
            None if full => {
                let names: Vec<&str> = FAMILIES.iter().map(|(name, _)| *name).collect();
                panic!(
                    "no figure family {arg:?}; the families: {}",
                    names.join(", ")
                );
            }
            None => {}
        }
    }
    FAMILIES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| named.contains(name))
        .collect()
}

/// The sections of `families`, on one pair of test servers when any
/// needs them.
async fn run(plan: &Plan, families: &[&str]) -> String {
    let needs_stores = FAMILIES
        .iter()
        .any(|(name, stores)| *stores && families.contains(name));
    let stores = match needs_stores {
        true => Some(Stores::start().await),
        false => None,
    };
    let mut out = String::new();
    for family in families {
        out.push_str(&section(plan, family, stores.as_ref()).await);
    }
    out
}

async fn section(plan: &Plan, family: &str, stores: Option<&Stores>) -> String {
    let stores = || stores.expect("the test servers run for this family");
    match family {
        "throughput" => throughput::run(plan, stores()).await,
        "memory" => memory::run(plan, stores()).await,
        "small" => small::run(plan, stores()).await,
        "quota" => quota::run(plan, stores()).await,
        "erasure" => erasure::run(plan, stores()).await,
        "listings" => listings::run(plan, stores()).await,
        "embedded" => embedded::run(plan).await,
        "variants" => variants::run(plan),
        "encodings" => encodings::run(plan),
        "decode-scale" => encodings::run_scale(plan),
        "background" => background::run(plan).await,
        "feed-page" => feed_page::run(plan),
        "backfill" => backfill::run(plan).await,
        "sessions" => sessions::run(plan, stores()).await,
        "photos" => photos::run(plan, stores()).await,
        "feed" => feed::run(plan, stores()).await,
        "migration" => migration::run(plan, stores()).await,
        "events" => events::run(plan, stores()).await,
        "scan" => scan::run(plan).await,
        "similar" => similar::run(plan, stores()).await,
        "similar-flood" => similar::flood(plan).await,
        "hotpaths" => hotpaths::run(plan).await,
        "acknowledged" => hotpaths::acknowledged(plan).await,
        _ => unreachable!("a family of FAMILIES"),
    }
}
