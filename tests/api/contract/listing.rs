//! Listings: filters, newest first, pages and their tokens.
use super::*;

/// Uploads images with varied metadata; returns them oldest first.
async fn seed_catalogue(app: &TestApp) -> Vec<pb::Image> {
    let mut uploaded = Vec::new();
    let cases: [(&str, &[&str], &str, bool); 8] = [
        ("alice", &["sea", "summer"], "Biarritz", true),
        ("alice", &["sea"], "Paris", false),
        ("bob", &["summer"], "Biarritz", true),
        ("bob", &["sea", "winter"], "", false),
        ("carol", &[], "Paris", true),
        ("alice", &["winter"], "Biarritz", false),
        ("bob", &["sea"], "Biarritz", true),
        ("carol", &["sea", "summer"], "Biarritz", false),
    ];
    for (i, (owner, tags, location, png)) in cases.into_iter().enumerate() {
        let bytes = if png {
            images::png(4, 4, i as u32)
        } else {
            images::jpeg(40 + i as u16, 30)
        };
        let spec = pb::ImageSpec {
            filename: format!("{i}"),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            location: location.into(),
            ..Default::default()
        };
        uploaded.push(app.upload(owner, spec, &bytes).await.unwrap());
        // Distinct creation times, so "newest first" is well defined.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    uploaded
}

pub(super) async fn each_filter_alone_and_combined_returns_matches_newest_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let all = seed_catalogue(&app).await;
    let expect = |keep: &dyn Fn(&pb::Image) -> bool| -> Vec<String> {
        ids(&all
            .iter()
            .rev()
            .filter(|i| keep(i))
            .cloned()
            .collect::<Vec<_>>())
    };
    let query = |f: &dyn Fn(&mut pb::ListImagesRequest)| {
        let mut request = pb::ListImagesRequest::default();
        f(&mut request);
        request
    };
    let cases: Vec<(pb::ListImagesRequest, Vec<String>)> = vec![
        (query(&|_| {}), expect(&|_| true)),
        (
            query(&|r| r.owner_id = "alice".into()),
            expect(&|i| i.owner_id == "alice"),
        ),
        (
            query(&|r| r.tag = "#SEA".into()),
            expect(&|i| i.tags.contains(&"sea".into())),
        ),
        (
            query(&|r| r.location = "Biarritz".into()),
            expect(&|i| i.location == "Biarritz"),
        ),
        (
            query(&|r| r.content_type = "image/jpeg".into()),
            expect(&|i| i.content_type == "image/jpeg"),
        ),
        (
            query(&|r| {
                r.owner_id = "bob".into();
                r.tag = "sea".into();
            }),
            expect(&|i| i.owner_id == "bob" && i.tags.contains(&"sea".into())),
        ),
        (
            query(&|r| {
                r.tag = "summer".into();
                r.location = "Biarritz".into();
                r.content_type = "image/png".into();
            }),
            expect(&|i| {
                i.tags.contains(&"summer".into())
                    && i.location == "Biarritz"
                    && i.content_type == "image/png"
            }),
        ),
        (
            query(&|r| {
                r.owner_id = "carol".into();
                r.tag = "summer".into();
                r.location = "Biarritz".into();
                r.content_type = "image/jpeg".into();
            }),
            expect(&|i| i.owner_id == "carol" && i.tags.contains(&"summer".into())),
        ),
        (query(&|r| r.owner_id = "nobody".into()), vec![]),
        (query(&|r| r.tag = "autumn".into()), vec![]),
    ];
    for (request, expected) in cases {
        let listed = app.list_all("dave", request.clone()).await.unwrap();
        assert_eq!(ids(&listed), expected, "filter {request:?}");
        assert!(!expected.is_empty() || listed.is_empty());
    }
}

pub(super) async fn time_ranges_bound_the_listing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let all = seed_catalogue(&app).await;
    let after = all[2].create_time.unwrap();
    let before = all[6].create_time.unwrap();
    let request = pb::ListImagesRequest {
        created_after: Some(after),
        created_before: Some(before),
        ..Default::default()
    };
    let listed = app.list_all("dave", request).await.unwrap();
    assert_eq!(
        ids(&listed),
        ids(&all[2..6].iter().rev().cloned().collect::<Vec<_>>())
    );

    let request = pb::ListImagesRequest {
        owner_id: "bob".into(),
        created_after: Some(after),
        ..Default::default()
    };
    let listed = app.list_all("dave", request).await.unwrap();
    let expected: Vec<_> = all[2..]
        .iter()
        .rev()
        .filter(|i| i.owner_id == "bob")
        .cloned()
        .collect();
    assert_eq!(ids(&listed), ids(&expected));

    let inverted = pb::ListImagesRequest {
        created_after: Some(before),
        created_before: Some(after),
        ..Default::default()
    };
    assert_code(app.list("dave", inverted).await, Code::InvalidArgument);
}

pub(super) async fn a_page_walk_returns_every_image_exactly_once_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut uploaded = Vec::new();
    for i in 0..23 {
        uploaded.push(
            app.upload_png(if i % 3 == 0 { "bob" } else { "alice" }, i)
                .await
                .image_id,
        );
    }
    for (filter, page_size) in [
        (String::new(), 5),
        ("alice".to_owned(), 4),
        (String::new(), 1000),
    ] {
        let request = pb::ListImagesRequest {
            owner_id: filter.clone(),
            page_size,
            ..Default::default()
        };
        let mut pages = 0;
        let mut seen = Vec::new();
        let mut next = request.clone();
        loop {
            let page = app.list("dave", next.clone()).await.unwrap();
            assert!(page.images.len() <= page_size as usize);
            pages += 1;
            seen.extend(ids(&page.images));
            if page.next_page_token.is_empty() {
                break;
            }
            next.page_token = page.next_page_token;
        }
        let mut expected: Vec<_> = uploaded
            .iter()
            .enumerate()
            .filter(|(i, _)| filter.is_empty() || i % 3 != 0)
            .map(|(_, id)| id.clone())
            .collect();
        expected.reverse();
        assert_eq!(
            seen, expected,
            "walk with owner {filter:?} page size {page_size}"
        );
        assert_eq!(pages, expected.len().div_ceil(page_size as usize).max(1));
        assert_eq!(
            seen.iter().collect::<HashSet<_>>().len(),
            seen.len(),
            "no duplicates"
        );
    }
}

pub(super) async fn sparse_combined_filters_still_fill_their_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut uploaded = Vec::new();
    for i in 0..30u32 {
        let spec = pb::ImageSpec {
            filename: format!("{i}.png"),
            tags: vec![if i % 5 == 0 { "rare" } else { "common" }.into()],
            location: if i % 2 == 0 { "Paris" } else { "Lyon" }.into(),
            ..Default::default()
        };
        let owner = if i % 2 == 0 { "alice" } else { "bob" };
        let image = app
            .upload(owner, spec, &images::png(2, 2, i))
            .await
            .unwrap();
        uploaded.push((i, image.image_id));
    }
    type Matches = fn(u32) -> bool;
    let cases: [(pb::ListImagesRequest, Matches); 3] = [
        (
            pb::ListImagesRequest {
                owner_id: "alice".into(),
                tag: "rare".into(),
                ..Default::default()
            },
            |i| i % 2 == 0 && i % 5 == 0,
        ),
        (
            pb::ListImagesRequest {
                tag: "rare".into(),
                location: "Lyon".into(),
                ..Default::default()
            },
            |i| i % 2 == 1 && i % 5 == 0,
        ),
        (
            pb::ListImagesRequest {
                location: "Paris".into(),
                content_type: "image/png".into(),
                ..Default::default()
            },
            |i| i % 2 == 0,
        ),
    ];
    for (mut request, keep) in cases {
        let expected: Vec<String> = uploaded
            .iter()
            .rev()
            .filter(|(i, _)| keep(*i))
            .map(|(_, id)| id.clone())
            .collect();
        request.page_size = 2;
        let mut seen = Vec::new();
        loop {
            let page = app.list("dave", request.clone()).await.unwrap();
            seen.extend(ids(&page.images));
            if page.next_page_token.is_empty() {
                break;
            }
            // Pages are full until the last, however sparse the matches.
            assert_eq!(page.images.len(), 2, "{request:?}");
            request.page_token = page.next_page_token;
        }
        assert_eq!(seen, expected, "{request:?}");
    }
}

pub(super) async fn page_sizes_default_to_fifty_and_are_capped(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for i in 0..51 {
        app.upload_png("alice", i).await;
    }
    let page = app
        .list("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(page.images.len(), 50);
    assert!(!page.next_page_token.is_empty());
    let page = app
        .list(
            "alice",
            pb::ListImagesRequest {
                page_size: 100_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.images.len(), 51);
    assert!(page.next_page_token.is_empty());
    let negative = pb::ListImagesRequest {
        page_size: -1,
        ..Default::default()
    };
    assert_code(app.list("alice", negative).await, Code::InvalidArgument);
}

pub(super) async fn altered_or_foreign_page_tokens_are_rejected(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for i in 0..4 {
        app.upload_png("alice", i).await;
    }
    let first = app
        .list(
            "alice",
            pb::ListImagesRequest {
                page_size: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let token = first.next_page_token;
    assert!(!token.is_empty());

    let mut altered = token.clone().into_bytes();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let request = |token: String, owner: &str| pb::ListImagesRequest {
        page_size: 2,
        page_token: token,
        owner_id: owner.into(),
        ..Default::default()
    };
    assert_code(
        app.list("alice", request(String::from_utf8(altered).unwrap(), ""))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        app.list("alice", request("garbage".into(), "")).await,
        Code::InvalidArgument,
    );
    assert_code(
        app.list("alice", request(token.clone(), "bob")).await,
        Code::InvalidArgument,
    );
    assert_eq!(
        app.list("alice", request(token, ""))
            .await
            .unwrap()
            .images
            .len(),
        2
    );
}

/// Records with the most metadata allowed are large: a page of them is cut
/// by bytes, not only by count, and its token continues where it stopped.
pub(super) async fn pages_of_large_records_are_cut_by_bytes_and_continue(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--max-page-bytes", "200KiB"]).await;
    let attributes: std::collections::HashMap<String, String> = (0..32)
        .map(|i| (format!("{i:0>1000}"), "v".repeat(1024)))
        .collect();
    let mut uploaded = Vec::new();
    for i in 0..8 {
        let spec = pb::ImageSpec {
            filename: format!("big-{i}.png"),
            description: "d".repeat(2000),
            tags: (0..30).map(|t| format!("{t:0>64}")).collect(),
            attributes: attributes.clone(),
            ..Default::default()
        };
        let image = app
            .upload("alice", spec, &images::png(4, 4, i))
            .await
            .unwrap();
        uploaded.push(image.image_id);
    }
    uploaded.reverse();
    let mut seen = Vec::new();
    let mut request = pb::ListImagesRequest {
        page_size: 1000,
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let page = app.list("bob", request.clone()).await.unwrap();
        let encoded = prost::Message::encoded_len(&page);
        assert!(encoded <= 200 * 1024, "a page of {encoded} bytes");
        assert!(!page.images.is_empty(), "every page makes progress");
        pages += 1;
        seen.extend(ids(&page.images));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert!(
        pages >= 3,
        "8 records of ~70 KiB fit no page of 200 KiB: {pages} pages"
    );
    assert_eq!(seen, uploaded, "every image once, newest first");
}
