//! Identity from an identity provider's JWKS: keys chosen by `kid`, each
//! pinned to its algorithm, rotation picked up without a restart, unknown
//! `kid`s refused without a flood of fetches, and the cached keys kept
//! while the provider is down. The provider is a real HTTP server started
//! by each test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::Code;

use crate::helpers::binary::{Service, refused_start};
use crate::helpers::{Backend, TestApp, assert_code};
use image_service::pb;

/// A signing key of the provider.
struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    private: EncodingKey,
    public: Jwk,
}

impl SigningKey {
    fn rsa(kid: &str) -> Self {
        let private =
            EncodingKey::from_rsa_pem(include_bytes!("fixtures/jwt-rs256-private.pem")).unwrap();
        Self::new(kid, Algorithm::RS256, private)
    }

    fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Self::new(kid, Algorithm::ES256, private)
    }

    fn ed25519(kid: &str) -> Self {
        // A PKCS#8 v1 document around a random seed: the form
        // `Jwk::from_encoding_key` derives the public key from.
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(&rand::random::<[u8; 32]>());
        Self::new(kid, Algorithm::EdDSA, EncodingKey::from_ed_der(&der))
    }

    fn new(kid: &str, algorithm: Algorithm, private: EncodingKey) -> Self {
        let mut public = Jwk::from_encoding_key(&private, algorithm).unwrap();
        public.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            algorithm,
            private,
            public,
        }
    }

    /// A token for `user`, valid for five minutes, with this key's `kid`.
    fn token(&self, user: &str) -> String {
        self.token_with(user, self.algorithm, Some(&self.kid))
    }

    fn token_with(&self, user: &str, algorithm: Algorithm, kid: Option<&str>) -> String {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims(user), &self.private).unwrap()
    }
}

fn claims(user: &str) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({
        "sub": user,
        "email": format!("{user}@example.com"),
        "exp": now + 300,
        "aud": AUDIENCE,
    })
}

/// The audience the provider's tokens for this service carry.
const AUDIENCE: &str = "image-service";

/// What the provider serves, and what it has been asked.
struct ProviderState {
    keys: JwkSet,
    cache_control: Option<&'static str>,
    down: bool,
    jwks_fetches: usize,
    base: String,
}

/// An identity provider: `/jwks` and `/.well-known/openid-configuration`
/// over HTTP on loopback.
#[derive(Clone)]
struct Provider {
    state: Arc<Mutex<ProviderState>>,
    addr: SocketAddr,
}

impl Provider {
    async fn start(keys: &[&SigningKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProviderState {
            keys: JwkSet { keys: vec![] },
            cache_control: None,
            down: false,
            jwks_fetches: 0,
            base: format!("http://{addr}"),
        }));
        let app = axum::Router::new()
            .route("/jwks", axum::routing::get(serve_jwks))
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(serve_discovery),
            )
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let provider = Self { state, addr };
        provider.publish(keys);
        provider
    }

    fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn publish(&self, keys: &[&SigningKey]) {
        self.state.lock().unwrap().keys = JwkSet {
            keys: keys.iter().map(|key| key.public.clone()).collect(),
        };
    }

    fn fetches(&self) -> usize {
        self.state.lock().unwrap().jwks_fetches
    }

    fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    fn set_cache_control(&self, value: &'static str) {
        self.state.lock().unwrap().cache_control = Some(value);
    }
}

async fn serve_jwks(State(state): State<Arc<Mutex<ProviderState>>>) -> impl IntoResponse {
    let mut state = state.lock().unwrap();
    state.jwks_fetches += 1;
    if state.down {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            HeaderMap::new(),
            String::new(),
        );
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(value) = state.cache_control {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
    }
    let body = serde_json::to_string(&state.keys).unwrap();
    (StatusCode::OK, headers, body)
}

async fn serve_discovery(State(state): State<Arc<Mutex<ProviderState>>>) -> impl IntoResponse {
    let state = state.lock().unwrap();
    let document = serde_json::json!({
        "issuer": state.base,
        "jwks_uri": format!("{}/jwks", state.base),
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.to_string(),
    )
}

async fn spawn(provider: &Provider, extra: &[&str]) -> TestApp {
    let url = provider.jwks_url();
    let mut args = vec![
        "--auth",
        "jwt",
        "--jwt-jwks-url",
        &url,
        "--jwt-audience",
        AUDIENCE,
        // The test provider's tokens name no issuer.
        "--jwt-allow-any-issuer",
    ];
    args.extend_from_slice(extra);
    TestApp::spawn_with(Backend::Embedded, &args).await
}

/// Lists images with `token`: the call every check below makes.
async fn list(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(pb::ListImagesRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    app.client().list_images(request).await.map(|_| ())
}

/// Uploads a small image with `token`; the owner the service gave it.
async fn owner_of_upload(app: &TestApp, token: &str) -> String {
    let bytes = crate::helpers::images::png(4, 4, 7);
    let messages = crate::helpers::upload_messages(crate::helpers::spec("id.png"), &bytes, 1024);
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let response = app.client().upload_image(request).await.unwrap();
    response.into_inner().image.unwrap().owner_id
}

fn refused(result: Result<(), tonic::Status>, what: &str) {
    let status = assert_code(result, Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "missing or invalid bearer token",
        "{what}: says no more than that"
    );
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_are_verified_by_the_key_their_kid_names() {
    let rsa = SigningKey::rsa("rsa-1");
    let ec = SigningKey::es256("ec-1");
    let ed = SigningKey::ed25519("ed-1");
    let provider = Provider::start(&[&rsa, &ec, &ed]).await;
    let app = spawn(&provider, &[]).await;

    for (key, user) in [(&rsa, "rita"), (&ec, "ezra"), (&ed, "edda")] {
        assert_eq!(
            owner_of_upload(&app, &key.token(user)).await,
            user,
            "{:?}: the token's subject owns the image",
            key.algorithm
        );
    }

    // A token signed by one key but naming another's kid.
    refused(
        list(
            &app,
            &ec.token_with("mallory", Algorithm::ES256, Some("ed-1")),
        )
        .await,
        "a kid that is not the signer's",
    );
    // The classic confusion: HS256 "signed" with the RSA key's public
    // parameters as the secret, naming the RSA key.
    let public_as_secret = serde_json::to_vec(&rsa.public).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims("mallory"),
        &EncodingKey::from_secret(&public_as_secret),
    )
    .unwrap();
    refused(list(&app, &confused).await, "HS256 against an RSA key");
    // `none` naming a real key.
    let payload = rsa.token("mallory").split('.').nth(1).unwrap().to_owned();
    let none = format!(
        "{}.{payload}.",
        base64_url(r#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#)
    );
    refused(list(&app, &none).await, "alg none");
    // With several keys published, a token must say which one signed it.
    refused(
        list(&app, &ed.token_with("edda", Algorithm::EdDSA, None)).await,
        "no kid among several keys",
    );
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn the_jwks_is_discovered_from_the_issuer_and_the_user_claim_is_a_flag() {
    let ed = SigningKey::ed25519("ed-1");
    let provider = Provider::start(&[&ed]).await;
    let issuer = provider.issuer();
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--auth",
            "jwt",
            "--jwt-issuer",
            &issuer,
            "--jwt-audience",
            AUDIENCE,
            "--jwt-user-claim",
            "email",
        ],
    )
    .await;
    // The token must carry the issuer, as configured.
    let mut with_issuer = claims("edda");
    with_issuer["iss"] = issuer.clone().into();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("ed-1".into());
    let token = jsonwebtoken::encode(&header, &with_issuer, &ed.private).unwrap();
    assert_eq!(owner_of_upload(&app, &token).await, "edda@example.com");
    refused(list(&app, &ed.token("edda")).await, "no issuer");
    // And the audience: the provider's token for another application.
    let mut for_another_app = with_issuer.clone();
    for_another_app["aud"] = "another-app".into();
    let token = jsonwebtoken::encode(&header, &for_another_app, &ed.private).unwrap();
    refused(list(&app, &token).await, "another application's token");
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_without_a_restart() {
    let old = SigningKey::es256("2026-11");
    let new = SigningKey::es256("2026-12");
    let provider = Provider::start(&[&old]).await;
    let app = spawn(&provider, &["--jwt-jwks-min-refresh", "1s"]).await;
    assert!(list(&app, &old.token("alice")).await.is_ok());

    // The provider rotates: the new key replaces the old one, and tokens
    // signed with it start to arrive.
    provider.publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        list(&app, &new.token("alice")).await.is_ok(),
        "the new kid made the service fetch the JWKS again"
    );
    refused(
        list(&app, &old.token("alice")).await,
        "a key the provider retired",
    );
}

#[tokio::test]
async fn unknown_kids_are_refused_without_a_flood_of_fetches() {
    let key = SigningKey::rsa("rsa-1");
    let provider = Provider::start(&[&key]).await;
    let app = spawn(&provider, &["--jwt-jwks-min-refresh", "1s"]).await;
    assert_eq!(provider.fetches(), 1, "fetched once at start");

    // Tokens naming kids that do not exist, as fast as they can be sent,
    // from 8 callers at once, for 2.5 s. The kid is refused before any
    // signature is checked, so one signed token serves with new headers.
    let signed = key.token("eve");
    let (_, rest) = signed.split_once('.').unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    let callers = (0..8).map(|caller| {
        let (app, rest) = (&app, rest);
        async move {
            let mut sent = 0;
            while tokio::time::Instant::now() < until {
                let header = format!(r#"{{"alg":"RS256","kid":"garbage-{caller}-{sent}"}}"#);
                let token = format!("{}.{rest}", base64_url(&header));
                refused(list(app, &token).await, "an unknown kid");
                sent += 1;
            }
            sent
        }
    });
    let sent: usize = futures::future::join_all(callers).await.into_iter().sum();
    let refetches = provider.fetches() - 1;
    assert!(sent > 100, "{sent} tokens sent");
    assert!(
        (1..=3).contains(&refetches),
        "{sent} unknown kids in 2.5 s made {refetches} fetches; at most one a second is allowed"
    );
    // Real tokens went on being accepted throughout.
    assert!(list(&app, &key.token("alice")).await.is_ok());
}

#[tokio::test]
async fn the_cached_keys_keep_serving_while_the_provider_is_down() {
    let key = SigningKey::ed25519("ed-1");
    let provider = Provider::start(&[&key]).await;
    // The document says it may be cached for a second: refreshed that often.
    provider.set_cache_control("public, max-age=1");
    let app = spawn(&provider, &["--jwt-jwks-min-refresh", "1s"]).await;
    assert!(list(&app, &key.token("alice")).await.is_ok());

    provider.set_down(true);
    let before = provider.fetches();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(
        provider.fetches() > before,
        "the service tried to refresh on the document's max-age"
    );
    assert!(
        list(&app, &key.token("alice")).await.is_ok(),
        "tokens signed by a cached key are still accepted"
    );

    // The provider comes back with a new key: it is picked up on schedule.
    let next = SigningKey::ed25519("ed-2");
    provider.publish(&[&key, &next]);
    provider.set_down(false);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let before = provider.fetches();
    assert!(list(&app, &next.token("alice")).await.is_ok());
    assert_eq!(
        provider.fetches(),
        before,
        "the scheduled refresh had already brought the new key"
    );
}

/// A secret long enough for HS256.
const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// Asserts that the binary refuses to start with `args` and `env`, with a
/// message naming every one of `named`.
fn refuses(args: &[&str], env: &[(&str, &str)], named: &[&str]) {
    let stderr = refused_start(args, env);
    for name in named {
        assert!(
            stderr.contains(name),
            "{args:?} {env:?}: the refusal does not name {name}: {stderr}"
        );
    }
}

#[test]
fn jwt_settings_without_auth_jwt_stop_the_start() {
    let pem = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/api/fixtures/jwt-rs256-public.pem"
    );
    // Each setting `--auth trusted-header` (the default) would ignore.
    for (flag, value) in [
        ("--jwt-hs256-secret", SECRET),
        ("--jwt-rs256-public-key-file", pem),
        ("--jwt-jwks-url", "https://id.example/jwks"),
        ("--jwt-issuer", "https://id.example"),
        ("--jwt-audience", "image-service"),
        ("--jwt-user-claim", "email"),
        ("--jwt-jwks-refresh", "10m"),
        ("--jwt-jwks-min-refresh", "1m"),
        ("--jwt-jwks-ca-file", pem),
        ("--jwt-jwks-token-file", pem),
    ] {
        refuses(&[flag, value], &[], &[flag, "--auth jwt"]);
    }
    for flag in ["--jwt-allow-any-audience", "--jwt-allow-any-issuer"] {
        refuses(&[flag], &[], &[flag, "--auth jwt"]);
    }
    // The same from the environment, and with the mode said explicitly.
    refuses(
        &["--auth", "trusted-header"],
        &[("IMAGE_SERVICE_JWT_AUDIENCE", "image-service")],
        &["IMAGE_SERVICE_JWT_AUDIENCE", "--auth jwt"],
    );
    refuses(
        &[],
        &[("IMAGE_SERVICE_JWT_HS256_SECRET", SECRET)],
        &["IMAGE_SERVICE_JWT_HS256_SECRET"],
    );
}

/// Mutual TLS, which `--trusted-peers` needs (the files are never read:
/// the start is refused before).
const MUTUAL_TLS: [&str; 6] = [
    "--tls-cert",
    "cert.pem",
    "--tls-key",
    "key.pem",
    "--tls-client-ca",
    "ca.pem",
];

#[test]
fn settings_the_chosen_key_or_mode_ignores_stop_the_start() {
    let hs256 = ["--auth", "jwt", "--jwt-hs256-secret", SECRET];
    let with = |extra: &[&'static str]| {
        let mut args = hs256.to_vec();
        args.extend_from_slice(extra);
        args.push("--jwt-allow-any-audience");
        args
    };
    // Settings only a JWKS reads, beside a fixed key.
    for extra in [
        &["--jwt-jwks-refresh", "10m"][..],
        &["--jwt-jwks-min-refresh", "1m"],
        &["--jwt-jwks-ca-file", "/etc/ssl/ca.pem"],
        &["--jwt-jwks-token-file", "/var/run/token"],
        &["--jwt-allow-any-issuer"],
    ] {
        refuses(&with(extra), &[], &[extra[0], "fixed key"]);
    }
    // --trusted-peers is for trusted-header mode; jwt mode ignores it.
    refuses(
        &with(&[&MUTUAL_TLS[..], &["--trusted-peers", "gateway.internal"]].concat()),
        &[],
        &["--trusted-peers", "--auth jwt ignores it"],
    );
    // A trusted-peer list that names nobody.
    refuses(
        &[&MUTUAL_TLS[..], &["--trusted-peers", " , "]].concat(),
        &[],
        &["--trusted-peers", "names no peer"],
    );
    // Empty values would check nothing.
    refuses(
        &[&hs256[..], &["--jwt-audience", ""]].concat(),
        &[],
        &["--jwt-audience is empty"],
    );
}

#[test]
fn jwt_mode_without_an_audience_or_with_a_jwks_and_no_issuer_stops_the_start() {
    // Any token the key signs, for any application: not without saying so.
    refuses(
        &["--auth", "jwt", "--jwt-hs256-secret", SECRET],
        &[],
        &["--jwt-audience", "--jwt-allow-any-audience"],
    );
    refuses(
        &[
            "--auth",
            "jwt",
            "--jwt-issuer",
            "https://id.example",
            "--jwt-jwks-url",
            "https://id.example/jwks",
        ],
        &[],
        &["--jwt-audience", "IMAGE_SERVICE_JWT_ALLOW_ANY_AUDIENCE"],
    );
    // A JWKS without an issuer: any issuer that signs with its keys.
    refuses(
        &[
            "--auth",
            "jwt",
            "--jwt-jwks-url",
            "https://id.example/jwks",
            "--jwt-audience",
            "image-service",
        ],
        &[],
        &["--jwt-issuer", "--jwt-allow-any-issuer"],
    );
    // The two ways to say it cannot both be given.
    refuses(
        &[
            "--auth",
            "jwt",
            "--jwt-hs256-secret",
            SECRET,
            "--jwt-audience",
            "image-service",
            "--jwt-allow-any-audience",
        ],
        &[],
        &["--jwt-allow-any-audience", "--jwt-audience"],
    );
}

#[tokio::test]
async fn a_forged_token_header_cannot_forge_or_restyle_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_image-service"));
    command
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--log-format", "text", "--auth", "jwt"])
        .args(["--jwt-hs256-secret", SECRET, "--jwt-allow-any-audience"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("NO_COLOR", "1");
    let service = Service::spawn_logging(command, dir, "info,image_service=debug");

    // A header whose `alg` and `kid` carry a line break, a carriage return
    // and ANSI escapes that would paint a terminal red, and fake a line.
    let forged = format!(
        "{}.{}.c2ln",
        base64_url(
            "{\"alg\":\"HS256\\n2026-12-06T00:00:00Z  INFO FORGED-ALG admin logged in\\u001b[31m\\r\",\"kid\":\"\\u001b[2J\\nFORGED-KID\",\"typ\":\"JWT\"}"
        ),
        base64_url("{\"sub\":\"mallory\"}")
    );
    let mut client = service.client().await;
    let mut request = tonic::Request::new(pb::ListImagesRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {forged}").parse().unwrap());
    assert_code(client.list_images(request).await, Code::Unauthenticated);

    let logs = service.stop().await;
    let rejected: Vec<&String> = logs
        .iter()
        .filter(|line| line.contains("rejected bearer token"))
        .collect();
    assert_eq!(rejected.len(), 1, "{logs:#?}");
    for line in &logs {
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "a raw control character in the log: {line:?}"
        );
        if line.contains("FORGED") {
            assert!(
                line.contains("rejected bearer token"),
                "the token's text made a line of its own: {line:?}"
            );
        }
    }
}

/// A token signed by `key` over a header and claims written as given,
/// for the fields jsonwebtoken's own types cannot express.
fn raw_token(key: &SigningKey, header: serde_json::Value, claims: &serde_json::Value) -> String {
    let message = format!(
        "{}.{}",
        base64_url(&header.to_string()),
        base64_url(&claims.to_string())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key.private, key.algorithm).expect("signs");
    format!("{message}.{signature}")
}

#[tokio::test]
async fn critical_extensions_issuer_lists_and_disguised_users_are_refused_numeric_subjects_are_users()
 {
    let ed = SigningKey::ed25519("ed-1");
    let provider = Provider::start(&[&ed]).await;
    let app = spawn(&provider, &[]).await;
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "ed-1"});
    // The raw signer is right: the same token without the oddity passes.
    assert_eq!(
        owner_of_upload(&app, &raw_token(&ed, header.clone(), &claims("edda"))).await,
        "edda"
    );

    // `b64: false` would change what the signature covers; the service
    // understands no extension, so any `crit` is refused.
    let mut critical = header.clone();
    critical["crit"] = serde_json::json!(["b64"]);
    critical["b64"] = false.into();
    refused(
        list(&app, &raw_token(&ed, critical, &claims("edda"))).await,
        "a critical extension",
    );
    // `iss` is one string, not a list to pick from.
    let mut listed = claims("edda");
    listed["iss"] = serde_json::json!(["https://a.example", "https://b.example"]);
    refused(
        list(&app, &raw_token(&ed, header.clone(), &listed)).await,
        "an issuer list",
    );
    // A right-to-left override would show "mallory" as someone else.
    refused(
        list(
            &app,
            &raw_token(&ed, header.clone(), &claims("mal\u{202E}yrol")),
        )
        .await,
        "a subject with a bidirectional override",
    );
    // Numbers that are not integers, or past 64 bits, would be rounded
    // into another user's id.
    for number in [
        serde_json::json!(100.0),
        serde_json::json!(1.8446744073709552e19),
    ] {
        let mut rounded = claims("ignored");
        rounded["sub"] = number;
        refused(
            list(&app, &raw_token(&ed, header.clone(), &rounded)).await,
            "a subject that is not an integer",
        );
    }
    // Nor may an id hide a character that is not seen.
    refused(
        list(
            &app,
            &raw_token(&ed, header.clone(), &claims("alice\u{3164}")),
        )
        .await,
        "a subject with a Hangul filler",
    );
    // A numeric subject is an id like any other.
    let mut numeric = claims("ignored");
    numeric["sub"] = 4_207_001.into();
    assert_eq!(
        owner_of_upload(&app, &raw_token(&ed, header, &numeric)).await,
        "4207001"
    );
}
