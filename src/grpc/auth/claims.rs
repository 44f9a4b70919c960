//! What a verified token must say, and which claim is the user.

use anyhow::bail;
use jsonwebtoken::{Algorithm, Validation};

use crate::config::{AuthSettings, DEFAULT_JWT_USER_CLAIM};
use crate::domain::UserId;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 30;
/// What a verified token must say, and which claim is the user.
pub struct ClaimRules {
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) user_claim: String,
}

impl ClaimRules {
    pub(super) fn from_settings(settings: &AuthSettings) -> anyhow::Result<Self> {
        let user_claim = settings
            .jwt_user_claim
            .as_deref()
            .unwrap_or(DEFAULT_JWT_USER_CLAIM)
            .trim()
            .to_owned();
        if user_claim.is_empty() {
            bail!("--jwt-user-claim must name a claim");
        }
        Ok(Self {
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
            user_claim,
        })
    }

    /// The checks of a token signed with `algorithm`. `Validation::new`
    /// accepts exactly this algorithm: a token whose header names another
    /// one (`none`, or HS256 with a public key as its secret) fails.
    pub(super) fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not only checked
        // when present: jsonwebtoken checks absent claims only if told to.
        // The user claim is not listed: jsonwebtoken would require it to be
        // a string, and a numeric `sub` is a user id too ([`Self::user`]
        // refuses a token without one).
        let mut required = vec!["exp"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        validation
    }

    /// The user a verified token's claims name, if its claims are well
    /// formed: `iss` is one string (RFC 7519 §4.1.1; jsonwebtoken would also
    /// take a list and match any of its members).
    pub(super) fn user(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<UserId> {
        if claims.get("iss").is_some_and(|iss| !iss.is_string()) {
            return None;
        }
        let text = match claims.get(&self.user_claim)? {
            serde_json::Value::String(text) => text.clone(),
            // Integers only, written as digits: `1e2`, `100.0` and numbers
            // past 64 bits would each be rounded into another's id.
            serde_json::Value::Number(number) => match (number.as_u64(), number.as_i64()) {
                (Some(n), _) => n.to_string(),
                (None, Some(n)) => n.to_string(),
                (None, None) => return None,
            },
            _ => return None,
        };
        UserId::parse(&text).ok()
    }
}

pub(super) type Claims = serde_json::Map<String, serde_json::Value>;
