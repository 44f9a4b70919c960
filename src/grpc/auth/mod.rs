//! Who is calling, from request metadata: `x-user-id` in trusted-header
//! mode, or a verified JWT's user claim (`sub` by default) in jwt mode,
//! checked with a shared secret, a PEM public key, or the identity
//! provider's JWKS.
mod claims;
mod jwks;
mod logging;

use std::sync::Arc;

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::config::{AuthMode, AuthSettings};
use crate::domain::UserId;
use crate::listener::PeerInfo;

use claims::{ClaimRules, Claims};

/// The caller a request was authenticated as at its headers (by the
/// request-memory layer, before any of its body was read), carried in the
/// request's extensions so the handler does not verify it again. Only the
/// server inserts it: a caller cannot send extensions.
#[derive(Clone, Debug)]
pub struct Identified(pub UserId);
pub use jwks::Jwks;
use logging::loggable;

/// Metadata key of the caller's id in trusted-header mode.
pub const USER_ID_HEADER: &str = "x-user-id";
/// Longest `authorization` value looked at: far above any real token, and
/// a bound on the work a caller's header costs.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Identifies callers.
pub enum Authenticator {
    /// Trusts `x-user-id`: only behind a proxy that authenticates callers
    /// and strips the header from outside requests. With `trusted_peers`,
    /// only from peers whose (mutually authenticated) client certificate
    /// carries one of these names.
    TrustedHeader { trusted_peers: Option<Vec<String>> },
    /// Verifies `authorization: Bearer <JWT>`.
    Jwt { keys: Keys, claims: ClaimRules },
}

/// Where the keys that verify tokens come from.
pub enum Keys {
    /// One key with a pinned algorithm (`--jwt-hs256-secret`,
    /// `--jwt-rs256-public-key-file`).
    Fixed {
        key: DecodingKey,
        validation: Box<Validation>,
    },
    /// The identity provider's key set, refreshed in the background.
    Jwks(Arc<Jwks>),
}

impl Authenticator {
    /// Builds the authenticator the identity settings ask for. With a JWKS
    /// it fetches the key set once (failing here if it cannot) and starts
    /// the background refresh on the current runtime.
    pub async fn from_settings(settings: &AuthSettings) -> anyhow::Result<Self> {
        match settings.auth {
            AuthMode::TrustedHeader => Ok(Self::TrustedHeader {
                trusted_peers: (!settings.trusted_peers.is_empty()).then(|| {
                    settings
                        .trusted_peers
                        .iter()
                        .map(|name| name.trim().to_owned())
                        .filter(|name| !name.is_empty())
                        .collect()
                }),
            }),
            AuthMode::Jwt => {
                let claims = ClaimRules::from_settings(settings)?;
                let keys = match (
                    &settings.jwt_hs256_secret,
                    &settings.jwt_rs256_public_key_file,
                    &settings.jwt_jwks_url,
                ) {
                    (Some(secret), None, None) => {
                        if secret.len() < 32 {
                            bail!("--jwt-hs256-secret must have at least 32 bytes");
                        }
                        Keys::Fixed {
                            key: DecodingKey::from_secret(secret.as_bytes()),
                            validation: Box::new(claims.validation(Algorithm::HS256)),
                        }
                    }
                    (None, Some(path), None) => {
                        let pem = std::fs::read(path).with_context(|| {
                            format!("reading the JWT public key {}", path.display())
                        })?;
                        let key = DecodingKey::from_rsa_pem(&pem)
                            .context("parsing the RS256 public key")?;
                        Keys::Fixed {
                            key,
                            validation: Box::new(claims.validation(Algorithm::RS256)),
                        }
                    }
                    (None, None, _)
                        if settings.jwt_jwks_url.is_some() || settings.jwt_issuer.is_some() =>
                    {
                        let jwks =
                            Jwks::start(jwks::JwksSettings::from_settings(settings)?).await?;
                        Keys::Jwks(jwks)
                    }
                    _ => bail!(
                        "--auth jwt needs exactly one of --jwt-hs256-secret, --jwt-rs256-public-key-file and --jwt-jwks-url (or --jwt-issuer alone, to discover the JWKS)"
                    ),
                };
                Ok(Self::Jwt { keys, claims })
            }
        }
    }

    /// The caller's identity, or `UNAUTHENTICATED` saying no more than that.
    /// `peer` is the connection's, with its client certificate's names.
    pub async fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer: Option<&PeerInfo>,
    ) -> Result<UserId, Status> {
        match self {
            Self::TrustedHeader { trusted_peers } => {
                if let Some(trusted) = trusted_peers {
                    let names = peer.map(|p| &p.certificate_names[..]).unwrap_or_default();
                    if !names.iter().any(|name| trusted.contains(name)) {
                        tracing::debug!(?names, "x-user-id from a peer not on --trusted-peers");
                        return Err(Status::unauthenticated(
                            "this peer may not assert x-user-id: its client certificate is not on the trusted list",
                        ));
                    }
                }
                // One identity: a request carrying two (a gateway that
                // appends the header rather than replacing the caller's)
                // is refused, not read as whichever comes first.
                let mut values = metadata.get_all(USER_ID_HEADER).iter();
                let value = values
                    .next()
                    .ok_or_else(|| Status::unauthenticated("missing x-user-id metadata"))?;
                if values.next().is_some() {
                    return Err(Status::unauthenticated(
                        "more than one x-user-id: a request asserts one user",
                    ));
                }
                let text = value
                    .to_str()
                    .map_err(|_| Status::unauthenticated("x-user-id is not a valid user id"))?;
                UserId::parse(text)
                    .map_err(|_| Status::unauthenticated("x-user-id is not a valid user id"))
            }
            Self::Jwt { keys, claims } => {
                let invalid = || Status::unauthenticated("missing or invalid bearer token");
                let mut headers = metadata.get_all("authorization").iter();
                let header = headers.next().ok_or_else(invalid)?;
                if headers.next().is_some() || header.len() > MAX_TOKEN_BYTES {
                    return Err(invalid());
                }
                let header = header.to_str().map_err(|_| invalid())?;
                let (scheme, token) = header.split_once(' ').ok_or_else(invalid)?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(invalid());
                }
                let token = token.trim();
                if let Err(reason) = understood_header(token) {
                    tracing::debug!(reason, "rejected bearer token");
                    return Err(invalid());
                }
                let verified = match keys {
                    Keys::Fixed { key, validation } => {
                        jsonwebtoken::decode::<Claims>(token, key, validation)
                            .map_err(|e| e.to_string())
                    }
                    Keys::Jwks(jwks) => jwks.verify(token, claims).await,
                };
                let data = verified.map_err(|reason| {
                    tracing::debug!(reason = %loggable(&reason), "rejected bearer token");
                    invalid()
                })?;
                claims.user(&data.claims).ok_or_else(|| {
                    tracing::debug!(claim = %claims.user_claim, "the token's user claim is missing or not a user id");
                    invalid()
                })
            }
        }
    }
}

/// Refuses a token whose header lists critical extensions (`crit`): the
/// service understands none, and RFC 7515 §4.1.11 says a recipient that does
/// not understand one must reject the token (`b64: false`, for one, changes
/// what the signature covers). jsonwebtoken ignores header fields it does
/// not know, so the header is read here first.
fn understood_header(token: &str) -> Result<(), &'static str> {
    use base64::Engine;
    let encoded = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| "the token's header is not base64url")?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|_| "the token's header is not a JSON object")?;
    if header.contains_key("crit") {
        return Err("the token's header lists critical extensions, and none is understood");
    }
    Ok(())
}
