//! Presigned download URLs of the embedded backend, served by the service's
//! own HTTP listener: `{base}/blobs/images/{id}/{variant}?…&signature=…`.
//! The signature (HMAC-SHA256 with the service's signing key) covers the
//! object, the expiry and the response headers the URL asks for, so none of
//! them can be altered.
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::image::Timestamp;
use crate::domain::ports::{Disposition, ObjectKey, PresignRequest, PresignedUrl, WriteSize};
use crate::domain::signing::{Purpose, SigningKey};

/// Path prefix of presigned downloads on the HTTP listener.
pub const PATH_PREFIX: &str = "/blobs/";

/// Makes and checks presigned URLs.
#[derive(Clone, Debug)]
pub struct SignedUrls {
    key: SigningKey,
    base_url: String,
}

/// The query string of a presigned URL.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct UrlQuery {
    /// Unix seconds after which the URL is refused.
    pub expires: i64,
    /// `Content-Type` to serve.
    #[serde(rename = "type")]
    pub content_type: String,
    /// `inline` or `attachment`.
    pub disposition: String,
    /// File name for `attachment`.
    pub filename: String,
    pub signature: String,
}

/// Why a presigned URL is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL has expired")]
    Expired,
    #[error("the URL's signature is invalid")]
    BadSignature,
}

/// What a verified URL grants.
#[derive(Clone, Debug)]
pub struct Grant {
    pub content_type: String,
    pub disposition: Disposition,
    pub filename: String,
    pub expires: i64,
}

impl SignedUrls {
    /// `base_url` is where callers reach the HTTP listener, without a
    /// trailing slash (e.g. `http://127.0.0.1:8080`).
    pub fn new(key: SigningKey, base_url: impl Into<String>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self { key, base_url }
    }

    fn signature(
        &self,
        object: &str,
        expires: i64,
        content_type: &str,
        disposition: &str,
        filename: &str,
    ) -> [u8; 32] {
        self.key.sign(
            Purpose::DownloadUrl,
            &[
                object.as_bytes(),
                &expires.to_be_bytes(),
                content_type.as_bytes(),
                disposition.as_bytes(),
                filename.as_bytes(),
            ],
        )
    }

    pub fn sign(&self, request: &PresignRequest) -> PresignedUrl {
        // Whole seconds, rounded down, so the URL never outlives the promise.
        let expires = request
            .signed_at
            .saturating_add(request.expires_in)
            .as_micros()
            .div_euclid(1_000_000);
        let disposition = match request.disposition {
            Disposition::Inline => "inline",
            Disposition::Attachment => "attachment",
        };
        let object = request.key.as_str();
        let signature = self.signature(
            object,
            expires,
            &request.content_type,
            disposition,
            &request.filename,
        );
        let query = UrlQuery {
            expires,
            content_type: request.content_type.clone(),
            disposition: disposition.to_owned(),
            filename: request.filename.clone(),
            signature: URL_SAFE_NO_PAD.encode(signature),
        };
        let query = serde_urlencoded::to_string(&query).unwrap_or_default();
        PresignedUrl {
            url: format!("{}{PATH_PREFIX}{object}?{query}", self.base_url),
            expire_time: Timestamp::from_micros(expires.saturating_mul(1_000_000)),
        }
    }

    /// Checks a request for `object` (the path after [`PATH_PREFIX`]).
    pub fn verify(
        &self,
        object: &str,
        query: &UrlQuery,
        now: Timestamp,
    ) -> Result<Grant, UrlError> {
        let signature = URL_SAFE_NO_PAD
            .decode(&query.signature)
            .map_err(|_| UrlError::BadSignature)?;
        let parts: [&[u8]; 5] = [
            object.as_bytes(),
            &query.expires.to_be_bytes(),
            query.content_type.as_bytes(),
            query.disposition.as_bytes(),
            query.filename.as_bytes(),
        ];
        if !self.key.verify(Purpose::DownloadUrl, &parts, &signature) {
            return Err(UrlError::BadSignature);
        }
        if now.as_micros() >= query.expires.saturating_mul(1_000_000) {
            return Err(UrlError::Expired);
        }
        let disposition = if query.disposition == "attachment" {
            Disposition::Attachment
        } else {
            Disposition::Inline
        };
        Ok(Grant {
            content_type: query.content_type.clone(),
            disposition,
            filename: query.filename.clone(),
            expires: query.expires,
        })
    }
}

/// The query string of a presigned upload URL.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct UploadQuery {
    /// Unix seconds after which the URL is refused.
    pub expires: i64,
    /// The exact body length required, when the URL names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// The longest body accepted, when no exact length is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    pub signature: String,
}

impl SignedUrls {
    fn upload_signature(&self, object: &str, expires: i64, size: WriteSize) -> [u8; 32] {
        let (kind, n) = match size {
            WriteSize::Exact(n) => (&b"exact"[..], n),
            WriteSize::AtMost(n) => (&b"atmost"[..], n),
        };
        self.key.sign(
            Purpose::UploadUrl,
            &[
                object.as_bytes(),
                &expires.to_be_bytes(),
                kind,
                &n.to_be_bytes(),
            ],
        )
    }

    /// A URL for an HTTP `PUT` of the object `key` (an upload session's
    /// part) with a body of `size`.
    pub fn sign_upload(
        &self,
        key: &ObjectKey,
        expires_in: Duration,
        size: WriteSize,
        now: Timestamp,
    ) -> PresignedUrl {
        let expires = now
            .saturating_add(expires_in)
            .as_micros()
            .div_euclid(1_000_000);
        let signature = self.upload_signature(key.as_str(), expires, size);
        let (length, max) = match size {
            WriteSize::Exact(n) => (Some(n), None),
            WriteSize::AtMost(n) => (None, Some(n)),
        };
        let query = UploadQuery {
            expires,
            length,
            max,
            signature: URL_SAFE_NO_PAD.encode(signature),
        };
        let query = serde_urlencoded::to_string(&query).unwrap_or_default();
        PresignedUrl {
            url: format!("{}{PATH_PREFIX}{}?{query}", self.base_url, key.as_str()),
            expire_time: Timestamp::from_micros(expires.saturating_mul(1_000_000)),
        }
    }

    /// Checks an upload request for `object` (the path after
    /// [`PATH_PREFIX`]) and returns the body size it allows.
    pub fn verify_upload(
        &self,
        object: &str,
        query: &UploadQuery,
        now: Timestamp,
    ) -> Result<WriteSize, UrlError> {
        let signature = URL_SAFE_NO_PAD
            .decode(&query.signature)
            .map_err(|_| UrlError::BadSignature)?;
        let size = match (query.length, query.max) {
            (Some(n), None) => WriteSize::Exact(n),
            (None, Some(n)) => WriteSize::AtMost(n),
            _ => return Err(UrlError::BadSignature),
        };
        let expected = self.upload_signature(object, query.expires, size);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            signature.as_slice(),
            expected.as_slice(),
        )) {
            return Err(UrlError::BadSignature);
        }
        if now.as_micros() >= query.expires.saturating_mul(1_000_000) {
            return Err(UrlError::Expired);
        }
        Ok(size)
    }
}

/// How long a URL may be valid: the embedded backend has no limit of its
/// own beyond a sanity bound.
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ImageId, VariantName};

    fn request() -> PresignRequest {
        PresignRequest {
            key: ObjectKey::new(&ImageId::new(), &VariantName::original()),
            signed_at: Timestamp::now(),
            expires_in: Duration::from_secs(60),
            content_type: "image/png".into(),
            disposition: Disposition::Attachment,
            filename: "cat & dog.png".into(),
        }
    }

    fn split(url: &str) -> (String, UrlQuery) {
        let (path, query) = url.split_once('?').unwrap();
        let object = path.split_once(PATH_PREFIX).unwrap().1.to_owned();
        (object, serde_urlencoded::from_str(query).unwrap())
    }

    #[test]
    fn a_signed_url_verifies_until_it_expires() {
        let urls = SignedUrls::new(SigningKey::generate(), "http://localhost:8080/");
        let now = Timestamp::now();
        let signed = urls.sign(&request());
        assert!(
            signed
                .url
                .starts_with("http://localhost:8080/blobs/images/")
        );
        let (object, query) = split(&signed.url);
        let grant = urls.verify(&object, &query, now).unwrap();
        assert_eq!(grant.filename, "cat & dog.png");
        assert_eq!(grant.disposition, Disposition::Attachment);
        let later = now.saturating_add(Duration::from_secs(61));
        assert_eq!(
            urls.verify(&object, &query, later).unwrap_err(),
            UrlError::Expired
        );
    }

    #[test]
    fn any_altered_part_breaks_the_signature() {
        let urls = SignedUrls::new(SigningKey::generate(), "http://h");
        let now = Timestamp::now();
        let (object, query) = split(&urls.sign(&request()).url);
        let other_object = ObjectKey::new(&ImageId::new(), &VariantName::original());
        assert_eq!(
            urls.verify(other_object.as_str(), &query, now).unwrap_err(),
            UrlError::BadSignature
        );
        let mut longer = query.clone();
        longer.expires += 3600;
        assert_eq!(
            urls.verify(&object, &longer, now).unwrap_err(),
            UrlError::BadSignature
        );
        let mut html = query.clone();
        html.content_type = "text/html".into();
        assert_eq!(
            urls.verify(&object, &html, now).unwrap_err(),
            UrlError::BadSignature
        );
    }
}
