//! The shipped deployment files against the code: the IAM policy grants
//! exactly the AWS calls the service makes, no NetworkPolicy admits pods
//! from every namespace, and the service's own build leaves the test kit
//! out.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

/// Every SDK operation the code may call, with the IAM action it needs, or
/// `None` for operations of `init` (and `migrate` to aws), which create the
/// bucket and table: in a deployment the CloudFormation stack creates them
/// and the service's role must not be able to.
const OPERATIONS: &[(&str, &str, Option<&str>)] = &[
    ("s3", "put_object", Some("s3:PutObject")),
    ("s3", "create_multipart_upload", Some("s3:PutObject")),
    ("s3", "upload_part", Some("s3:PutObject")),
    ("s3", "complete_multipart_upload", Some("s3:PutObject")),
    ("s3", "get_object", Some("s3:GetObject")),
    ("s3", "head_object", Some("s3:GetObject")),
    ("s3", "delete_object", Some("s3:DeleteObject")),
    (
        "s3",
        "abort_multipart_upload",
        Some("s3:AbortMultipartUpload"),
    ),
    ("s3", "list_parts", Some("s3:ListMultipartUploadParts")),
    (
        "s3",
        "list_multipart_uploads",
        Some("s3:ListBucketMultipartUploads"),
    ),
    ("s3", "list_objects_v2", Some("s3:ListBucket")),
    ("s3", "head_bucket", Some("s3:ListBucket")),
    ("s3", "create_bucket", None),
    ("dynamodb", "get_item", Some("dynamodb:GetItem")),
    ("dynamodb", "put_item", Some("dynamodb:PutItem")),
    ("dynamodb", "update_item", Some("dynamodb:UpdateItem")),
    ("dynamodb", "delete_item", Some("dynamodb:DeleteItem")),
    ("dynamodb", "query", Some("dynamodb:Query")),
    ("dynamodb", "scan", Some("dynamodb:Scan")),
    ("dynamodb", "batch_get_item", Some("dynamodb:BatchGetItem")),
    (
        "dynamodb",
        "batch_write_item",
        Some("dynamodb:BatchWriteItem"),
    ),
    ("dynamodb", "describe_table", Some("dynamodb:DescribeTable")),
    ("dynamodb", "create_table", None),
];

/// Methods of the SDK clients that are not calls to AWS.
const NOT_OPERATIONS: &[&str] = &["clone", "config"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The methods called on a `client` in `text`: `client.name(`, with any
/// whitespace (line breaks of a builder chain) around the dot.
fn client_calls(text: &str) -> Vec<&str> {
    let mut calls = Vec::new();
    for (at, _) in text.match_indices("client") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = text[at + "client".len()..].trim_start();
        let Some(rest) = rest.strip_prefix('.') else {
            continue;
        };
        let rest = rest.trim_start();
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 && rest[end..].trim_start().starts_with('(') {
            calls.push(&rest[..end]);
        }
    }
    calls
}

/// The IAM actions the code's SDK calls need: every `client.operation(`
/// in a source file that uses the S3 or DynamoDB SDK, mapped through
/// [`OPERATIONS`]. An operation missing from the table fails the test.
fn actions_the_code_needs() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    let mut needed = BTreeSet::new();
    let mut calls = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let services: Vec<&str> = ["s3", "dynamodb"]
            .into_iter()
            .filter(|s| text.contains(&format!("aws_sdk_{s}::")))
            .collect();
        for operation in client_calls(&text) {
            if NOT_OPERATIONS.contains(&operation) || services.is_empty() {
                continue;
            }
            let known: Vec<_> = OPERATIONS
                .iter()
                .filter(|(service, name, _)| services.contains(service) && *name == operation)
                .collect();
            assert!(
                known.len() == 1,
                "{}: the SDK call `{operation}` is not in this test's table of operations and \
                 IAM actions: add it (and grant its action in deploy/aws/image-service.yaml)",
                file.display()
            );
            calls += 1;
            if let Some(action) = known[0].2 {
                needed.insert(action.to_owned());
            }
        }
    }
    assert!(
        calls > 20,
        "only {calls} SDK calls found: is the scan broken?"
    );
    needed
}

fn template() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/aws/image-service.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

/// The `ServicePolicy`'s statements: each is there always, or, as
/// `!If [Condition, Statement, !Ref AWS::NoValue]`, with its condition.
fn policy_statements(template: &Value) -> Vec<(Option<String>, Value)> {
    let statements =
        template["Resources"]["ServicePolicy"]["Properties"]["PolicyDocument"]["Statement"]
            .as_sequence()
            .expect("ServicePolicy has statements");
    statements
        .iter()
        .map(|statement| match statement {
            Value::Tagged(tagged) if tagged.tag == "If" => {
                let [condition, then, otherwise] = tagged
                    .value
                    .as_sequence()
                    .expect("!If [condition, then, else]")
                    .as_slice()
                else {
                    panic!("!If takes three values: {tagged:?}");
                };
                assert!(
                    matches!(otherwise, Value::Tagged(no) if no.tag == "Ref" && no.value.as_str() == Some("AWS::NoValue")),
                    "a conditional statement is absent otherwise: {otherwise:?}"
                );
                (
                    Some(condition.as_str().expect("a condition's name").to_owned()),
                    then.clone(),
                )
            }
            always => (None, always.clone()),
        })
        .collect()
}

/// The actions the CloudFormation template's `ServicePolicy` allows (with
/// every condition met).
fn actions_the_policy_grants() -> BTreeSet<String> {
    let mut granted = BTreeSet::new();
    for (_, statement) in policy_statements(&template()) {
        assert_eq!(statement["Effect"].as_str(), Some("Allow"));
        match &statement["Action"] {
            Value::String(action) => {
                granted.insert(action.clone());
            }
            Value::Sequence(actions) => {
                granted.extend(actions.iter().map(|a| a.as_str().unwrap().to_owned()));
            }
            other => panic!("unexpected Action {other:?}"),
        }
    }
    granted
}

#[test]
fn the_service_policy_grants_exactly_the_aws_calls_the_code_makes() {
    let needed = actions_the_code_needs();
    let granted = actions_the_policy_grants();
    let missing: Vec<_> = needed.difference(&granted).collect();
    let superfluous: Vec<_> = granted.difference(&needed).collect();
    assert!(
        missing.is_empty(),
        "the ServicePolicy lacks {missing:?}: those calls would be refused in AWS"
    );
    assert!(
        superfluous.is_empty(),
        "the ServicePolicy grants {superfluous:?}, which no code calls"
    );
    // The repair pass's listing of unfinished uploads, refused before.
    assert!(granted.contains("s3:ListBucketMultipartUploads"));
}

/// The block list's object (`--block-list s3://…`) is readable when the
/// stack names it, and only then: nothing else is granted on a condition.
#[test]
fn the_block_list_object_is_granted_only_when_the_stack_names_it() {
    let template = template();
    let conditional: Vec<_> = policy_statements(&template)
        .into_iter()
        .filter_map(|(condition, statement)| Some((condition?, statement)))
        .collect();
    assert_eq!(conditional.len(), 1, "{conditional:?}");
    let (condition, statement) = &conditional[0];
    assert_eq!(statement["Action"].as_str(), Some("s3:GetObject"));
    assert!(
        matches!(&statement["Resource"], Value::Tagged(r) if r.tag == "Ref" && r.value.as_str() == Some("BlockListObjectArn")),
        "{statement:?}"
    );
    assert_eq!(
        template["Parameters"]["BlockListObjectArn"]["Default"].as_str(),
        Some(""),
        "no block list object by default"
    );
    // The condition is "the parameter is not empty".
    let Value::Tagged(not) = &template["Conditions"][condition.as_str()] else {
        panic!("condition {condition} is missing");
    };
    assert!(not.tag == "Not", "{not:?}");
    let rendered = format!("{:?}", not.value);
    assert!(
        rendered.contains("Equals") && rendered.contains("BlockListObjectArn"),
        "{rendered}"
    );
}

/// A `from` peer admits only named namespaces: a namespaceSelector that
/// is empty (or absent beside a podSelector, i.e. the policy's own
/// namespace, which is fine) would admit a matching pod from anywhere.
fn admits_every_namespace(peer: &Value) -> bool {
    match peer.get("namespaceSelector") {
        None => peer.get("podSelector").is_none() && peer.get("ipBlock").is_none(),
        Some(selector) => {
            let labels = selector
                .get("matchLabels")
                .and_then(Value::as_mapping)
                .is_some_and(|m| !m.is_empty());
            let expressions = selector
                .get("matchExpressions")
                .and_then(Value::as_sequence)
                .is_some_and(|s| !s.is_empty());
            !labels && !expressions
        }
    }
}

#[test]
fn no_network_policy_admits_pods_from_every_namespace() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut policies = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let manifest = Value::deserialize(document).unwrap();
            if manifest["kind"].as_str() != Some("NetworkPolicy") {
                continue;
            }
            policies += 1;
            let rules = manifest["spec"]["ingress"].as_sequence().unwrap();
            for rule in rules {
                let from = rule.get("from").and_then(Value::as_sequence);
                assert!(
                    from.is_some_and(|peers| !peers.is_empty()),
                    "{}: an ingress rule without `from` admits everyone",
                    file.display()
                );
                for peer in from.unwrap() {
                    assert!(
                        !admits_every_namespace(peer),
                        "{}: an ingress rule admits {peer:?} from every namespace; name the \
                         namespaces (kubernetes.io/metadata.name)",
                        file.display()
                    );
                }
            }
        }
    }
    assert!(policies > 0, "no NetworkPolicy found");
}

/// An S3 endpoint with the permissions of a role that lacks
/// `s3:ListBucketMultipartUploads`: it lists the bucket's objects (there
/// are none) and refuses to list multipart uploads, as AWS does.
async fn s3_without_list_multipart_uploads() -> String {
    use axum::http::{StatusCode, Uri};
    async fn answer(uri: Uri) -> (StatusCode, String) {
        let query = uri.query().unwrap_or_default();
        if query.split('&').any(|pair| pair == "list-type=2") {
            return (
                StatusCode::OK,
                r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>images</Name><Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>"#.into(),
            );
        }
        (
            StatusCode::FORBIDDEN,
            r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>test</RequestId></Error>"#.into(),
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(answer);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_pass_refused_the_upload_listing_names_the_missing_permission() {
    let aws = crate::helpers::TestApp::spawn(crate::helpers::Backend::Aws).await;
    let s3 = s3_without_list_multipart_uploads().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_image-service"))
        .args(["repair", "--backend", "aws", "--grace", "0s"])
        .args(["--s3-bucket", "images", "--dynamodb-table", "images"])
        .args(["--s3-endpoint", &s3])
        .arg("--dynamodb-endpoint")
        .arg(aws.dynamodb.as_ref().unwrap().endpoint())
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("s3:ListBucketMultipartUploads") && stderr.contains("was refused"),
        "{stderr}"
    );
}

/// The image builders, the storage contract suite and the in-memory store
/// with its fault injection (feature `testkit`) are not in the service's
/// build: only the tests, the benchmark and image-soak turn the feature on.
#[test]
fn the_service_build_leaves_the_test_kit_out() {
    let features = |edges: &str| {
        let output = std::process::Command::new(env!("CARGO"))
            .args(["tree", "--offline", "--locked", "--edges", edges])
            .args(["--invert", "image-service", "--prefix", "none"])
            .args(["--format", "features:{f}"])
            .current_dir(repo())
            .output()
            .expect("cargo tree runs");
        assert!(
            output.status.success(),
            "cargo tree: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let printed = String::from_utf8(output.stdout).expect("cargo tree prints UTF-8");
        printed
            .lines()
            .filter_map(|line| line.strip_prefix("features:"))
            .flat_map(|features| features.split(',').map(str::trim))
            .filter(|feature| !feature.is_empty())
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
    };
    let service = features("normal,build");
    assert!(
        !service.contains("testkit"),
        "the service's build enables {service:?}"
    );
    // The check above can see the feature: the tests' build has it.
    let tests = features("normal,build,dev");
    assert!(
        tests.contains("testkit"),
        "the tests' build enables {tests:?}"
    );
}
