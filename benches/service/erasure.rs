//! Erasure throughput (#36): how fast `DeleteUserData` deletes a user's
//! images in the background, from the call to `STATE_DONE` as
//! `GetUserDataDeletion` reports it, on the embedded backend and on the
//! aws test servers. Small images, variants off: each image is one
//! record and one object, so the figure is the per-image cost of the
//! delete path (record, event, usage give-back, object).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use image_service::pb;
use image_service::testkit::as_user;

use crate::Plan;
use crate::harness::{Stores, concurrently, small_png, start_service, upload, without_variants};

const USER: &str = "erased";

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Erasure: a user's images deleted by DeleteUserData (small PNGs, variants off)\n"
    );
    let _ = writeln!(
        out,
        "| backend | images | took | images/s |\n|---|---|---|---|"
    );
    let (embedded, aws) = plan.erased;
    for (backend, args, count) in [
        ("embedded", without_variants(&[]), embedded),
        ("aws", without_variants(&stores.aws_args("erasure")), aws),
    ] {
        let service = start_service(&args);
        let client = service.wide_client().await;
        let images: Vec<Bytes> = (0..count).map(|i| small_png(i as u32)).collect();
        concurrently(&images, 16, |bytes| {
            let client = client.clone();
            async move {
                upload(&client, bytes, USER).await.expect("upload");
            }
        })
        .await;
        let started = Instant::now();
        client
            .clone()
            .delete_user_data(as_user(USER, pb::DeleteUserDataRequest::default()))
            .await
            .expect("the erasure starts");
        let done = loop {
            let deletion = client
                .clone()
                .get_user_data_deletion(as_user(USER, pb::GetUserDataDeletionRequest::default()))
                .await
                .expect("its progress")
                .into_inner()
                .deletion
                .expect("a deletion");
            if deletion.state() == pb::user_data_deletion::State::Done {
                break deletion;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = started.elapsed();
        assert_eq!(done.images_deleted, count as u64, "{done:?}");
        let _ = writeln!(
            out,
            "| {backend} | {count} | {:.2} s | {:.0} |",
            took.as_secs_f64(),
            count as f64 / took.as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "\nFrom the call to STATE_DONE (polled every 20 ms): 8 deletes in flight per erasure, \
         then the redaction of the user's events (a scan of the log) and the audit entry.\n"
    );
    out
}
