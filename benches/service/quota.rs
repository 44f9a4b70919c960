//! The cost of per-user usage accounting on the upload path (#36): small
//! uploads through two services on the same stores in one run, without a
//! quota (the usage is still counted: one read and two conditional
//! updates of the user's usage item per upload) and with one (the updates
//! carry the ceiling), with the usage calls' share of an upload's time.

use std::fmt::Write as _;

use bytes::Bytes;

use crate::Plan;
use crate::harness::{Stores, concurrently, small_png, start_service, upload, without_variants};
use crate::small::backend_calls;

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let unlimited = start_service(&without_variants(&stores.aws_args("quota-off")));
    let mut limited_args = without_variants(&stores.aws_args("quota-on"));
    limited_args.extend(
        [
            "--quota-bytes-per-user",
            "1TiB",
            "--quota-images-per-user",
            "1000000",
        ]
        .map(String::from),
    );
    let limited = start_service(&limited_args);
    let clients = [unlimited.wide_client().await, limited.wide_client().await];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Quota accounting: 256 KiB PNGs, variants off (aws backend)\n"
    );
    let _ = writeln!(
        out,
        "| callers | no quota (usage counted) | quota set | ratio |\n|---|---|---|---|"
    );
    for (callers, count) in plan.small_counts {
        let images: Vec<Bytes> = (0..count).map(|i| small_png(i as u32)).collect();
        let mut rates = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            // One user for every caller: every upload updates the same
            // usage item, the worst case for its conditional updates.
            let user = format!("quota-{i}");
            let rate = concurrently(&images, callers, |bytes| {
                let (client, user) = (client.clone(), user.clone());
                async move {
                    upload(&client, bytes, &user).await.expect("upload");
                }
            })
            .await;
            rates.push(rate);
        }
        let _ = writeln!(
            out,
            "| {callers} | {} | {} | {:.2} |",
            rates[0],
            rates[1],
            rates[1].rate / rates[0].rate
        );
    }
    let uploads: usize = plan.small_counts.iter().map(|(_, n)| n).sum();
    let _ = writeln!(
        out,
        "\nUploads/s (p50 / p99 latency). Backend calls per upload, no quota: {}; quota set: {}.\n",
        backend_calls(&unlimited, uploads).await,
        backend_calls(&limited, uploads).await
    );
    out
}
