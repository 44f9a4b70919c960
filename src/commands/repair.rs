//! `image-service repair`: one repair pass, printed.
use std::time::Duration;

use crate::backend::{OpenedBackend, open_images};
use crate::config::Config;

/// One repair pass, printed (as JSON with `json`).
pub async fn run_repair(
    config: &Config,
    grace: Duration,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let OpenedBackend { images, .. } = open_images(config, None).await?;
    let report = images
        .repair(grace, dry_run)
        .await
        .map_err(|e| anyhow::anyhow!(crate::telemetry::error_chain(&e)))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "repair pass (grace {}): {verb}",
        humantime::format_duration(grace)
    );
    println!(
        "  {} object(s) without metadata",
        report.orphan_objects.len()
    );
    for key in &report.orphan_objects {
        println!("    {key}");
    }
    match &report.unfinished_writes {
        Some(keys) => {
            println!("  {} unfinished upload(s)", keys.len());
            for key in keys {
                println!("    {key}");
            }
        }
        None => println!(
            "  unfinished uploads: this store cannot list them (a lifecycle rule should expire them)"
        ),
    }
    println!(
        "  {} index entr(y/ies) without their image",
        report.stale_index_entries
    );
    let verb = if dry_run {
        "would complete"
    } else {
        "completed"
    };
    println!(
        "  {verb} the journaled encodings of {} image(s)",
        report.pending_encodings.len()
    );
    for image in &report.pending_encodings {
        println!("    {image}");
    }
    let verb = if dry_run { "would scan" } else { "scanned" };
    println!(
        "  {verb} {} image(s) left pending a content scan (--scan-url)",
        report.pending_scans.len()
    );
    for image in &report.pending_scans {
        println!("    {image}");
    }
    println!(
        "  {} change(s) without their event, or delete(s) announced but not done",
        report.unannounced_changes
    );
    Ok(())
}
