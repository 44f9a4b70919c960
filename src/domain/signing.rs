//! The service's secret for things it hands out and must recognise later
//! (page tokens, the embedded backend's download URLs). HMAC-SHA256 with a
//! purpose label, so a signature made for one use never verifies for another.
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::DomainError;

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// Which use a signature is for.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    PageToken,
    DownloadUrl,
    UploadUrl,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::PageToken => b"imageservice/page-token/v1",
            Purpose::DownloadUrl => b"imageservice/download-url/v1",
            Purpose::UploadUrl => b"imageservice/upload-url/v1",
        }
    }
}

/// A secret key shared by every replica.
#[derive(Clone)]
pub struct SigningKey(Arc<[u8]>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    pub fn from_secret(secret: &[u8]) -> Result<Self, DomainError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(DomainError::invalid(format!(
                "the signing key must have at least {MIN_SECRET_LEN} bytes"
            )));
        }
        Ok(Self(Arc::from(secret)))
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(Arc::from(&bytes[..]))
    }

    fn mac(&self, purpose: Purpose, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        for part in std::iter::once(purpose.label()).chain(parts.iter().copied()) {
            // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The signature of `parts` for `purpose`.
    pub fn sign(&self, purpose: Purpose, parts: &[&[u8]]) -> [u8; 32] {
        self.mac(purpose, parts).finalize().into_bytes().into()
    }

    /// Whether `signature` is the signature of `parts`, compared in constant time.
    pub fn verify(&self, purpose: Purpose, parts: &[&[u8]], signature: &[u8]) -> bool {
        self.mac(purpose, parts).verify_slice(signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_parts_and_purpose() {
        let key = SigningKey::generate();
        let sig = key.sign(Purpose::PageToken, &[b"ab", b"c"]);
        assert!(key.verify(Purpose::PageToken, &[b"ab", b"c"], &sig));
        assert!(!key.verify(Purpose::PageToken, &[b"a", b"bc"], &sig));
        assert!(!key.verify(Purpose::DownloadUrl, &[b"ab", b"c"], &sig));
        assert!(!SigningKey::generate().verify(Purpose::PageToken, &[b"ab", b"c"], &sig));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(SigningKey::from_secret(b"short").is_err());
        assert!(SigningKey::from_secret(&[7; 32]).is_ok());
    }
}
