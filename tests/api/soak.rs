//! image-soak against a running service: what it reports is what happened.

use crate::helpers::{Backend, TestApp};

/// Runs image-soak against `app` for two seconds and returns its stdout.
async fn soak(app: &TestApp, extra: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_image-soak"))
        .args([
            "--addr",
            &app.channel_addr(),
            "--duration",
            "2s",
            "--users",
            "4",
        ])
        .args(extra)
        .output()
        .await
        .expect("image-soak runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let errors = String::from_utf8_lossy(&output.stderr);
    (output.status.success(), format!("{text}{errors}"))
}

/// How many operations the report says the service shed.
fn shed_count(report: &str) -> u64 {
    report
        .lines()
        .find_map(|line| {
            line.strip_prefix("shed by the service (RESOURCE_EXHAUSTED, UNAVAILABLE): ")
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no shed line in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_soak_reports_the_service_it_measured_and_what_it_skipped() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let (ok, report) = soak(&app, &["--rate", "40", "--concurrency", "4"]).await;
    assert!(ok, "{report}");
    // The service runs inside this test process: that is what listens on
    // the port, so that is whose memory is reported.
    let measured = format!("service RSS (pid {}, ", std::process::id());
    assert!(report.contains(&measured), "{report}");
    let rss: f64 = report
        .split(&measured)
        .nth(1)
        .and_then(|rest| rest.split("): ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|mib| mib.parse().ok())
        .unwrap();
    assert!(
        rss > 10.0,
        "a running service holds more than {rss} MiB: {report}"
    );
    assert!(report.contains("skipped for want of an image"), "{report}");
    assert_eq!(shed_count(&report), 0, "{report}");
    assert!(report.contains("unexpected errors: 0"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_soak_counts_load_shed_apart_from_errors() {
    // One upload slot and no wait: most concurrent uploads are refused.
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--max-concurrent-uploads", "1", "--upload-slot-wait", "0s"],
    )
    .await;
    let (ok, report) = soak(&app, &["--rate", "200", "--concurrency", "32"]).await;
    assert!(ok, "shedding is not an unexpected error: {report}");
    assert!(shed_count(&report) > 0, "{report}");
    assert!(report.contains("unexpected errors: 0"), "{report}");
}
