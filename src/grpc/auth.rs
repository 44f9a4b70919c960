//! Who is calling, from request metadata: `x-user-id` in trusted-header
//! mode, or a verified JWT's `sub` in jwt mode.
use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::config::{AuthMode, Config};
use crate::domain::UserId;
use crate::listener::PeerInfo;

/// Metadata key of the caller's id in trusted-header mode.
pub const USER_ID_HEADER: &str = "x-user-id";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 30;

/// Identifies callers.
pub enum Authenticator {
    /// Trusts `x-user-id`: only behind a proxy that authenticates callers
    /// and strips the header from outside requests. With `trusted_peers`,
    /// only from peers whose (mutually authenticated) client certificate
    /// carries one of these names.
    TrustedHeader { trusted_peers: Option<Vec<String>> },
    /// Verifies `authorization: Bearer <JWT>` with a pinned algorithm and key.
    Jwt {
        key: DecodingKey,
        validation: Box<Validation>,
    },
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

impl Authenticator {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        match config.auth {
            AuthMode::TrustedHeader => Ok(Self::TrustedHeader {
                trusted_peers: (!config.trusted_peers.is_empty()).then(|| {
                    config
                        .trusted_peers
                        .iter()
                        .map(|name| name.trim().to_owned())
                        .filter(|name| !name.is_empty())
                        .collect()
                }),
            }),
            AuthMode::Jwt => {
                let (key, algorithm) = match (
                    &config.jwt_hs256_secret,
                    &config.jwt_rs256_public_key_file,
                ) {
                    (Some(secret), None) => {
                        if secret.len() < 32 {
                            bail!("--jwt-hs256-secret must have at least 32 bytes");
                        }
                        (
                            DecodingKey::from_secret(secret.as_bytes()),
                            Algorithm::HS256,
                        )
                    }
                    (None, Some(path)) => {
                        let pem = std::fs::read(path).with_context(|| {
                            format!("reading the JWT public key {}", path.display())
                        })?;
                        let key = DecodingKey::from_rsa_pem(&pem)
                            .context("parsing the RS256 public key")?;
                        (key, Algorithm::RS256)
                    }
                    _ => bail!(
                        "--auth jwt needs exactly one of --jwt-hs256-secret and --jwt-rs256-public-key-file"
                    ),
                };
                Ok(Self::Jwt {
                    key,
                    validation: Box::new(validation(
                        algorithm,
                        config.jwt_issuer.as_deref(),
                        config.jwt_audience.as_deref(),
                    )),
                })
            }
        }
    }

    /// The caller's identity, or `UNAUTHENTICATED` saying no more than that.
    /// `peer` is the connection's, with its client certificate's names.
    pub fn authenticate(
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
                let value = metadata
                    .get(USER_ID_HEADER)
                    .ok_or_else(|| Status::unauthenticated("missing x-user-id metadata"))?;
                let text = value
                    .to_str()
                    .map_err(|_| Status::unauthenticated("x-user-id is not a valid user id"))?;
                UserId::parse(text)
                    .map_err(|_| Status::unauthenticated("x-user-id is not a valid user id"))
            }
            Self::Jwt { key, validation } => {
                let invalid = || Status::unauthenticated("missing or invalid bearer token");
                let header = metadata.get("authorization").ok_or_else(invalid)?;
                let header = header.to_str().map_err(|_| invalid())?;
                let (scheme, token) = header.split_once(' ').ok_or_else(invalid)?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(invalid());
                }
                let data =
                    jsonwebtoken::decode::<Claims>(token.trim(), key, validation).map_err(|e| {
                        tracing::debug!(error = %e, "rejected bearer token");
                        invalid()
                    })?;
                UserId::parse(&data.claims.sub).map_err(|_| invalid())
            }
        }
    }
}

fn validation(algorithm: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Validation {
    // `Validation::new` accepts exactly this algorithm: a token signed with
    // another one (`none`, or HS256 with an RSA public key as secret) fails.
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
    }
    match audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    validation
}
