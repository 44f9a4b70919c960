//! Figure 7: the embedded backend against plain files, one large image
//! written and read.

use std::fmt::Write as _;
use std::path::Path;

use image_service::testkit::stats::Samples;

use crate::Plan;
use crate::harness::{
    MIB, delete, download, fake_png, mib_per_s, row, start_service, time, upload,
};

pub async fn run(plan: &Plan) -> String {
    let mut out = String::new();
    let big = fake_png(plan.big, 1);
    let data = tempfile::tempdir().expect("temp dir");
    let embedded = start_service(&[
        "--backend".to_owned(),
        "embedded".into(),
        "--data-dir".into(),
        data.path().display().to_string(),
        "--variants".into(),
        "false".into(),
    ]);
    let client = embedded.wide_client().await;
    let (mut up, mut file_up, mut down, mut file_down) = Default::default();
    for round in 0..plan.rounds {
        let path = data.path().join(format!("plain-{round}"));
        let plain_write = time(async { write_file(&path, &big) }).await.0;
        Samples::push(&mut file_up, mib_per_s(big.len(), plain_write));
        drop_page_cache_hint(&path);
        let plain_read = time(async { std::fs::read(&path).expect("read").len() })
            .await
            .0;
        Samples::push(&mut file_down, mib_per_s(big.len(), plain_read));
        let (elapsed, image) = time(upload(&client, big.clone(), "bench")).await;
        let image = image.expect("upload");
        Samples::push(&mut up, mib_per_s(big.len(), elapsed));
        let elapsed = time(download(&client, &image.image_id)).await.0;
        Samples::push(&mut down, mib_per_s(big.len(), elapsed));
        delete(&client, &image.image_id).await;
        let _ = std::fs::remove_file(&path);
    }
    let _ = writeln!(
        out,
        "### 7. Embedded backend vs plain files, one {} MiB image\n",
        plan.big / MIB
    );
    let _ = writeln!(
        out,
        "| | service | plain files | service / files |\n|---|---|---|---|"
    );
    row(&mut out, "write (MiB/s)", &up, &file_up);
    row(&mut out, "read (MiB/s)", &down, &file_down);
    let _ = writeln!(
        out,
        "\nPlain files: `write` + `fsync` of the same bytes, then `read` (from the page cache, like the service's read).\n"
    );
    out
}

fn write_file(path: &Path, bytes: &[u8]) -> usize {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create");
    file.write_all(bytes).expect("write");
    file.sync_all().expect("fsync");
    bytes.len()
}

/// The service's reads come from the page cache right after its write, so
/// the plain read does too; nothing to drop.
fn drop_page_cache_hint(_path: &Path) {}
