//! The variants made are configured at start (`--variant`), and a bad set
//! stops the start with a message naming what is wrong.
use crate::helpers::{Backend, TestApp, images, spec, start_refusal as refusal};
use image_service::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_variant_is_made_beside_small_and_medium() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--variant", "large=2048"]).await;
    let image = app
        .upload("alice", spec("wide.jpg"), &images::jpeg(3000, 2000))
        .await
        .unwrap();
    let variants: Vec<_> = image
        .variants
        .iter()
        .map(|v| (v.name.as_str(), v.width, v.height))
        .collect();
    assert_eq!(
        variants,
        [
            ("small", 320, 213),
            ("medium", 1080, 720),
            ("large", 2048, 1365)
        ]
    );
    let request = pb::DownloadImageRequest {
        image_id: image.image_id.clone(),
        variant: "large".into(),
        ..Default::default()
    };
    let (first, bytes) = app.download_range("bob", request).await.unwrap();
    assert_eq!(first.content_type, "image/jpeg");
    let large = image::load_from_memory(&bytes).unwrap();
    assert_eq!((large.width(), large.height()), (2048, 1365));
}

#[tokio::test]
async fn a_bad_variant_stops_the_start_with_a_clear_message() {
    for (flags, said) in [
        (&["--variant", "large"][..], "NAME=LONGEST_SIDE"),
        (&["--variant", "Large=2048"], "not a variant name"),
        (&["--variant", "large.webp=2048"], "not a variant name"),
        (&["--variant", "original=2048"], "`original`"),
        (&["--variant", "large=8193"], "16 to 8192"),
        (&["--variant", "tiny=8"], "16 to 8192"),
        (&["--variant", "large=wide"], "not a number"),
        (
            &["--variant", "large=2048", "--variant", "large=4096"],
            "large twice",
        ),
        (
            &["--variant", "a=100,b=200,c=300,d=400,e=500,f=600,g=700"],
            "at most 8",
        ),
    ] {
        let refused = refusal(flags).await;
        assert!(
            refused
                .as_ref()
                .is_some_and(|message| message.contains(said)),
            "{flags:?}: {refused:?}"
        );
    }
    // Eight in all, and a default resized, are fine.
    for flags in [
        &["--variant", "a=100,b=200,c=300,d=400,e=500,f=600"][..],
        &["--variant", "small=256"],
    ] {
        assert_eq!(refusal(flags).await, None, "{flags:?}");
    }
}
