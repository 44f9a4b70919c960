//! The identity provider's keys, from its JWKS document: fetched at start,
//! refreshed on the response's cache lifetime and when a token names a key
//! not yet seen (at most once per `--jwt-jwks-min-refresh`), with the last
//! good set kept whenever a fetch fails.
//!
//! Each key is pinned to one algorithm, from its `kty` and `crv` (and its
//! `alg` when the document gives one): a token whose header names another
//! algorithm is refused, so neither `none` nor HS256 "signed" with a public
//! key can pass. Symmetric (`oct`) keys and encryption keys are ignored.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, TokenData};

use super::claims::{ClaimRules, Claims};
use crate::config::{AuthSettings, DEFAULT_JWT_JWKS_MIN_REFRESH, DEFAULT_JWT_JWKS_REFRESH};

/// Largest JWKS or discovery document read: real ones are a few KiB.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// One fetch, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a document is trusted without fetching it again, whatever
/// its `max-age` says.
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Where the key set is read from.
#[derive(Clone, Debug)]
enum Source {
    Url(reqwest::Url),
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(url) => write!(f, "{url}"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How the key set is found and kept fresh.
pub struct JwksSettings {
    /// `--jwt-jwks-url`; `None` discovers it from the issuer.
    url: Option<String>,
    issuer: Option<String>,
    refresh: Duration,
    min_refresh: Duration,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
}

impl JwksSettings {
    pub fn from_settings(settings: &AuthSettings) -> anyhow::Result<Self> {
        let refresh = settings
            .jwt_jwks_refresh
            .unwrap_or(DEFAULT_JWT_JWKS_REFRESH);
        let min_refresh = settings
            .jwt_jwks_min_refresh
            .unwrap_or(DEFAULT_JWT_JWKS_MIN_REFRESH);
        if min_refresh > refresh {
            bail!("--jwt-jwks-min-refresh must not be longer than --jwt-jwks-refresh");
        }
        Ok(Self {
            url: settings.jwt_jwks_url.clone(),
            issuer: settings.jwt_issuer.clone(),
            refresh,
            min_refresh,
            ca_file: settings.jwt_jwks_ca_file.clone(),
            token_file: settings.jwt_jwks_token_file.clone(),
        })
    }
}

/// A key of the set, with the one algorithm it verifies.
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// One fetched document's usable keys.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid`: used only for tokens without one, and only
    /// when the set holds a single key.
    unnamed: Vec<Arc<Key>>,
    /// Counts replacements, so that callers waiting on a refresh see
    /// whether another one already happened.
    generation: u64,
}

impl KeySet {
    fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None if self.len() == 1 => self
                .by_kid
                .values()
                .chain(self.unnamed.iter())
                .next()
                .cloned(),
            None => None,
        }
    }
}

/// What one fetch brought.
struct Fetched {
    keys: KeySet,
    /// The response's `Cache-Control: max-age`.
    max_age: Option<Duration>,
}

struct RefreshState {
    last_attempt: Instant,
}

/// The provider's key set, shared by every call.
pub struct Jwks {
    source: Source,
    client: reqwest::Client,
    token_file: Option<PathBuf>,
    refresh: Duration,
    min_refresh: Duration,
    current: RwLock<Arc<KeySet>>,
    /// Held while fetching: one fetch at a time, and callers with an
    /// unknown `kid` wait for it rather than starting their own.
    refreshing: tokio::sync::Mutex<RefreshState>,
}

impl Jwks {
    /// Fetches the key set (discovering its URL first if needed) and starts
    /// refreshing it in the background; fails if the first fetch does.
    pub async fn start(settings: JwksSettings) -> anyhow::Result<Arc<Self>> {
        let client = http_client(settings.ca_file.as_deref())?;
        let source = match (&settings.url, &settings.issuer) {
            (Some(url), _) => parse_source(url).context("--jwt-jwks-url")?,
            (None, Some(issuer)) => {
                discover(&client, settings.token_file.as_deref(), issuer).await?
            }
            (None, None) => bail!("--jwt-jwks-url or --jwt-issuer is needed to find the JWKS"),
        };
        let fetched = fetch(&client, settings.token_file.as_deref(), &source)
            .await
            .with_context(|| format!("fetching the JWKS from {source}"))?;
        metrics::counter!("imageservice_jwks_fetches_total", "reason" => "startup", "result" => "ok")
            .increment(1);
        let first_delay = next_delay(fetched.max_age, settings.refresh, settings.min_refresh);
        let jwks = Arc::new(Self {
            source,
            client,
            token_file: settings.token_file,
            refresh: settings.refresh,
            min_refresh: settings.min_refresh,
            current: RwLock::new(Arc::new(KeySet::default())),
            refreshing: tokio::sync::Mutex::new(RefreshState {
                last_attempt: Instant::now(),
            }),
        });
        jwks.store(fetched.keys);
        tokio::spawn(refresh_periodically(Arc::downgrade(&jwks), first_delay));
        Ok(jwks)
    }

    /// Verifies `token` with the key its header names, refreshing the set
    /// once if that key is not known yet. The error says why, for the log.
    pub(super) async fn verify(
        &self,
        token: &str,
        rules: &ClaimRules,
    ) -> Result<TokenData<Claims>, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let kid = header.kid.as_deref();
        let key = match self.keys().find(kid) {
            Some(key) => key,
            None => {
                let Some(kid) = kid else {
                    return Err("the token names no kid and the JWKS has several keys".into());
                };
                self.refresh_for_unknown(kid).await;
                self.keys()
                    .find(Some(kid))
                    .ok_or_else(|| format!("no key with kid {kid:?} in the JWKS"))?
            }
        };
        if header.alg != key.algorithm {
            return Err(format!(
                "the token's header says {:?}, its key verifies {:?}",
                header.alg, key.algorithm
            ));
        }
        jsonwebtoken::decode::<Claims>(token, &key.key, &rules.validation(key.algorithm))
            .map_err(|e| e.to_string())
    }

    fn keys(&self) -> Arc<KeySet> {
        self.current.read().expect("key set lock").clone()
    }

    fn store(&self, mut keys: KeySet) {
        let mut current = self.current.write().expect("key set lock");
        keys.generation = current.generation + 1;
        let kids: Vec<&str> = keys.by_kid.keys().map(String::as_str).collect();
        tracing::info!(source = %self.source, keys = keys.len(), ?kids, "JWKS loaded");
        metrics::gauge!("imageservice_jwks_keys").set(keys.len() as f64);
        *current = Arc::new(keys);
    }

    /// A token named `kid`, which the set does not have: fetch the set
    /// again, unless another call just did or the last fetch is younger
    /// than `--jwt-jwks-min-refresh`.
    async fn refresh_for_unknown(&self, kid: &str) {
        let seen = self.keys().generation;
        let mut state = self.refreshing.lock().await;
        if self.keys().generation != seen {
            return;
        }
        if state.last_attempt.elapsed() < self.min_refresh {
            metrics::counter!("imageservice_jwks_unknown_kid_total", "fetched" => "no")
                .increment(1);
            tracing::debug!(
                kid = %super::logging::loggable(kid),
                "unknown kid; the JWKS was fetched too recently to fetch again"
            );
            return;
        }
        metrics::counter!("imageservice_jwks_unknown_kid_total", "fetched" => "yes").increment(1);
        let _ = self.fetch_and_store(&mut state, "unknown_kid").await;
    }

    /// One fetch; on success the new set replaces the old one and its
    /// `max-age` is returned. On failure the old set stays.
    async fn fetch_and_store(
        &self,
        state: &mut RefreshState,
        reason: &'static str,
    ) -> Result<Option<Duration>, ()> {
        state.last_attempt = Instant::now();
        match fetch(&self.client, self.token_file.as_deref(), &self.source).await {
            Ok(fetched) => {
                metrics::counter!("imageservice_jwks_fetches_total", "reason" => reason, "result" => "ok")
                    .increment(1);
                self.store(fetched.keys);
                Ok(fetched.max_age)
            }
            Err(error) => {
                metrics::counter!("imageservice_jwks_fetches_total", "reason" => reason, "result" => "error")
                    .increment(1);
                tracing::warn!(
                    source = %self.source,
                    error = format!("{error:#}"),
                    "fetching the JWKS failed; keeping the keys fetched before"
                );
                Err(())
            }
        }
    }
}

/// Refreshes the set on its cache lifetime until the [`Jwks`] is dropped.
/// A failed fetch is tried again after `--jwt-jwks-min-refresh`.
async fn refresh_periodically(jwks: Weak<Jwks>, first_delay: Duration) {
    let mut delay = first_delay;
    loop {
        tokio::time::sleep(delay).await;
        let Some(jwks) = jwks.upgrade() else { return };
        let mut state = jwks.refreshing.lock().await;
        delay = match jwks.fetch_and_store(&mut state, "scheduled").await {
            Ok(max_age) => next_delay(max_age, jwks.refresh, jwks.min_refresh),
            Err(()) => jwks.min_refresh.max(Duration::from_secs(1)),
        };
    }
}

/// When to fetch again: the document's `max-age` within
/// [`--jwt-jwks-min-refresh`, 24 h], or `--jwt-jwks-refresh` without one.
fn next_delay(max_age: Option<Duration>, refresh: Duration, min_refresh: Duration) -> Duration {
    match max_age {
        Some(max_age) => max_age.clamp(min_refresh, MAX_REFRESH.max(min_refresh)),
        None => refresh,
    }
    .max(Duration::from_secs(1))
}

/// `https://` anywhere, `http://` only to a loopback address (a token
/// signer on the same host, or a test), `file://` or a bare path.
fn parse_source(text: &str) -> anyhow::Result<Source> {
    if !text.contains("://") {
        return Ok(Source::File(PathBuf::from(text)));
    }
    let url = reqwest::Url::parse(text).map_err(|error| anyhow!("{text} is not a URL: {error}"))?;
    if url.scheme() == "file" {
        return url
            .to_file_path()
            .map(Source::File)
            .map_err(|()| anyhow!("{text} is not a file path"));
    }
    check_url(&url)?;
    Ok(Source::Url(url))
}

fn check_url(url: &reqwest::Url) -> anyhow::Result<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => bail!("{url}: keys must come over https (http only from a loopback address)"),
        other => bail!("{url}: unsupported scheme {other}"),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn http_client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        // A redirect may not leave https (or loopback http).
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 3 {
                attempt.error("more than 3 redirects")
            } else if check_url(attempt.url()).is_err() {
                attempt.error("a redirect away from https")
            } else {
                attempt.follow()
            }
        }));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading --jwt-jwks-ca-file {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("parsing --jwt-jwks-ca-file {}", path.display()))?;
        if certificates.is_empty() {
            bail!("--jwt-jwks-ca-file {} holds no certificate", path.display());
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().context("building the JWKS HTTP client")
}

/// GETs `url`, at most [`MAX_DOCUMENT_BYTES`], with the bearer token of
/// `token_file` if set; the body and its `max-age`.
async fn get(
    client: &reqwest::Client,
    token_file: Option<&std::path::Path>,
    url: &reqwest::Url,
) -> anyhow::Result<(Vec<u8>, Option<Duration>)> {
    let mut request = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json");
    if let Some(path) = token_file {
        let token = tokio::fs::read_to_string(path)
            .await
            .with_context(|| format!("reading --jwt-jwks-token-file {}", path.display()))?;
        request = request.bearer_auth(token.trim());
    }
    let mut response = request.send().await?.error_for_status()?;
    let max_age = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|value| value.to_str().ok())
        .and_then(max_age);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            bail!("the document is larger than {MAX_DOCUMENT_BYTES} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, max_age))
}

/// `max-age` of a `Cache-Control` value; none for `no-store`/`no-cache`.
fn max_age(cache_control: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return None;
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            max_age = seconds
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

async fn fetch(
    client: &reqwest::Client,
    token_file: Option<&std::path::Path>,
    source: &Source,
) -> anyhow::Result<Fetched> {
    let (body, max_age) = match source {
        Source::Url(url) => get(client, token_file, url).await?,
        Source::File(path) => {
            let body = tokio::fs::read(path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            if body.len() > MAX_DOCUMENT_BYTES {
                bail!("the document is larger than {MAX_DOCUMENT_BYTES} bytes");
            }
            (body, None)
        }
    };
    Ok(Fetched {
        keys: parse_key_set(&body)?,
        max_age,
    })
}

/// The usable keys of a JWKS document. Keys of other types or uses are
/// skipped one by one (a provider may publish encryption keys beside its
/// signing keys); a document with no usable key at all is an error.
fn parse_key_set(body: &[u8]) -> anyhow::Result<KeySet> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(body)
        .context("the document is not a JWKS (a JSON object with keys)")?;
    let mut set = KeySet::default();
    for value in document.keys {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(error) => {
                tracing::debug!(%error, "skipping a JWKS entry that is not a key");
                continue;
            }
        };
        let kid = jwk.common.key_id.clone();
        let Some(algorithm) = pinned_algorithm(&jwk) else {
            tracing::debug!(
                ?kid,
                "skipping a JWKS key that does not verify RS/PS/ES/EdDSA signatures"
            );
            continue;
        };
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(key) => Arc::new(Key { algorithm, key }),
            Err(error) => {
                tracing::debug!(?kid, %error, "skipping a JWKS key that does not parse");
                continue;
            }
        };
        match kid {
            Some(kid) => {
                set.by_kid.insert(kid, key);
            }
            None => set.unnamed.push(key),
        }
    }
    if set.len() == 0 {
        bail!("the JWKS holds no usable signing key");
    }
    Ok(set)
}

/// The one algorithm a key verifies: from its type and curve, and its
/// `alg` when given (which must agree with them). `None` for keys this
/// service does not verify with: symmetric keys (a shared secret has no
/// place in a public document), encryption keys, unknown curves.
fn pinned_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let declared = jwk.common.key_algorithm;
    use KeyAlgorithm as K;
    let algorithm = match (&jwk.algorithm, declared) {
        (AlgorithmParameters::RSA(_), None | Some(K::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::RSA(_), Some(K::RS384)) => Algorithm::RS384,
        (AlgorithmParameters::RSA(_), Some(K::RS512)) => Algorithm::RS512,
        (AlgorithmParameters::RSA(_), Some(K::PS256)) => Algorithm::PS256,
        (AlgorithmParameters::RSA(_), Some(K::PS384)) => Algorithm::PS384,
        (AlgorithmParameters::RSA(_), Some(K::PS512)) => Algorithm::PS512,
        (AlgorithmParameters::EllipticCurve(ec), None | Some(K::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        (AlgorithmParameters::EllipticCurve(ec), None | Some(K::ES384))
            if ec.curve == EllipticCurve::P384 =>
        {
            Algorithm::ES384
        }
        (AlgorithmParameters::OctetKeyPair(okp), None | Some(K::EdDSA))
            if okp.curve == EllipticCurve::Ed25519 =>
        {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    Some(algorithm)
}

/// The JWKS URL from the issuer's OpenID Connect discovery document, which
/// must name the same issuer.
async fn discover(
    client: &reqwest::Client,
    token_file: Option<&std::path::Path>,
    issuer: &str,
) -> anyhow::Result<Source> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let url =
        reqwest::Url::parse(&url).with_context(|| format!("--jwt-issuer {issuer} is not a URL"))?;
    check_url(&url).context("--jwt-issuer")?;
    let (body, _) = get(client, token_file, &url)
        .await
        .with_context(|| format!("fetching the OpenID configuration {url}"))?;
    let discovery: Discovery = serde_json::from_slice(&body)
        .with_context(|| format!("{url} is not an OpenID configuration (issuer, jwks_uri)"))?;
    if discovery.issuer != issuer {
        bail!(
            "{url} names the issuer {:?}, not --jwt-issuer {issuer:?}",
            discovery.issuer
        );
    }
    let jwks = reqwest::Url::parse(&discovery.jwks_uri)
        .with_context(|| format!("{url}: jwks_uri {:?} is not a URL", discovery.jwks_uri))?;
    check_url(&jwks).with_context(|| format!("{url}: jwks_uri"))?;
    tracing::info!(issuer, jwks = %jwks, "JWKS discovered");
    Ok(Source::Url(jwks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_and_no_cache_means_none() {
        assert_eq!(
            max_age("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            max_age("Max-Age=60, must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=60, no-store"), None);
        assert_eq!(max_age("private"), None);
    }

    #[test]
    fn the_next_fetch_follows_max_age_within_bounds() {
        let (refresh, min) = (Duration::from_secs(300), Duration::from_secs(30));
        assert_eq!(next_delay(None, refresh, min), refresh);
        assert_eq!(next_delay(Some(Duration::from_secs(5)), refresh, min), min);
        assert_eq!(
            next_delay(Some(Duration::from_secs(7200)), refresh, min),
            Duration::from_secs(7200)
        );
        assert_eq!(
            next_delay(Some(Duration::from_secs(10 * 24 * 3600)), refresh, min),
            MAX_REFRESH
        );
    }

    #[test]
    fn keys_are_fetched_only_over_https_or_from_loopback_or_files() {
        assert!(matches!(
            parse_source("https://idp.example/jwks"),
            Ok(Source::Url(_))
        ));
        assert!(matches!(
            parse_source("http://127.0.0.1:8080/jwks"),
            Ok(Source::Url(_))
        ));
        assert!(matches!(
            parse_source("http://localhost/jwks"),
            Ok(Source::Url(_))
        ));
        assert!(matches!(
            parse_source("http://[::1]/jwks"),
            Ok(Source::Url(_))
        ));
        assert!(parse_source("http://idp.example/jwks").is_err());
        assert!(parse_source("ftp://idp.example/jwks").is_err());
        assert!(matches!(
            parse_source("/etc/jwks.json"),
            Ok(Source::File(_))
        ));
        assert!(matches!(
            parse_source("file:///etc/jwks.json"),
            Ok(Source::File(_))
        ));
    }

    #[test]
    fn symmetric_and_encryption_keys_and_mismatched_algs_are_skipped() {
        let document = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "claims-rs", "alg": "RS256",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
            {"kty": "XYZ", "kid": "unknown"},
            "not even an object",
            {"kty": "OKP", "crv": "Ed25519", "kid": "good",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]});
        let set = parse_key_set(document.to_string().as_bytes()).unwrap();
        assert_eq!(set.by_kid.keys().collect::<Vec<_>>(), vec!["good"]);
        assert_eq!(set.find(Some("good")).unwrap().algorithm, Algorithm::EdDSA);
        // The only key also serves tokens without a kid.
        assert!(set.find(None).is_some());
        assert!(parse_key_set(br#"{"keys": [{"kty": "oct", "k": "AAAA"}]}"#).is_err());
        assert!(parse_key_set(b"<html>").is_err());
    }
}
