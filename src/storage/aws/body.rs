//! Object bytes on their way to S3 without being copied: a part is the
//! caller's chunks as received (reference-counted `Bytes`), sent as a
//! retryable streaming body. Its CRC32C goes as `x-amz-checksum-crc32c`,
//! which the store checks; its SHA-256 for SigV4, when payloads are signed,
//! is computed in the same pass over the pieces, or taken from the caller
//! when a whole object's checksums are already known.
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use base64::Engine as _;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use sha2::{Digest, Sha256};

use super::settings::PayloadSigning;
use crate::storage::multipart::PartBuffer;

/// The request body of a part: a stream over its pieces that can be
/// replayed for a retry. The SDK cannot read a streaming body up front, so
/// it neither copies it nor hashes it itself.
pub(super) fn body_of(part: PartBuffer) -> ByteStream {
    let len = part.len() as u64;
    let pieces: Arc<[Bytes]> = part.into_pieces().into();
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(Pieces {
            pieces: Arc::clone(&pieces),
            next: 0,
            remaining: len,
        })
    }))
}

/// An HTTP body yielding shared pieces, with an exact length.
struct Pieces {
    pieces: Arc<[Bytes]>,
    next: usize,
    remaining: u64,
}

impl Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let Some(piece) = this.pieces.get(this.next).cloned() else {
            return Poll::Ready(None);
        };
        this.next += 1;
        this.remaining -= piece.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.pieces.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// How the bytes of a request are protected in transit.
#[derive(Clone, Copy, Debug)]
pub(super) struct PayloadHash {
    /// SigV4 signs a SHA-256 of the bytes.
    signed: bool,
    /// The request carries the bytes' CRC32C for the store to check.
    crc32c: bool,
}

impl PayloadHash {
    /// `auto` signs payloads over plain HTTP only: over HTTPS, TLS already
    /// protects the bytes and the CRC32C lets the store verify them, and the
    /// signature's SHA-256 pass would be a fifth of an upload's CPU.
    pub fn new(signing: PayloadSigning, endpoint: Option<&str>, crc32c: bool) -> Self {
        let signed = match signing {
            PayloadSigning::Auto => endpoint.is_some_and(|e| !e.starts_with("https://")),
            PayloadSigning::Signed => true,
            PayloadSigning::Unsigned => false,
        };
        Self { signed, crc32c }
    }

    /// The algorithm a multipart upload is created with, so that its parts
    /// may carry their CRC32C.
    pub fn checksum_algorithm(&self) -> Option<aws_sdk_s3::types::ChecksumAlgorithm> {
        self.crc32c
            .then_some(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C)
    }

    /// What protects these bytes in transit: their CRC32C and, when signed,
    /// their SHA-256 for the signature, computed in one pass unless `known`
    /// (SHA-256 hex, CRC32C of exactly these bytes) already gives them.
    pub fn protect(&self, part: &PartBuffer, known: Option<(String, u32)>) -> Protection {
        let (sha256_hex, crc32c) = match known {
            Some((sha256_hex, crc32c)) => (self.signed.then_some(sha256_hex), crc32c),
            None => {
                let mut sha256 = self.signed.then(Sha256::new);
                let mut crc32c = 0;
                for piece in part.pieces() {
                    if let Some(sha256) = &mut sha256 {
                        sha256.update(piece);
                    }
                    if self.crc32c {
                        crc32c = crc32c::crc32c_append(crc32c, piece);
                    }
                }
                (sha256.map(|h| hex::encode(h.finalize())), crc32c)
            }
        };
        Protection {
            crc32c: self
                .crc32c
                .then(|| base64::engine::general_purpose::STANDARD.encode(crc32c.to_be_bytes())),
            signing: sha256_hex.map(SignedPayload),
        }
    }
}

/// See [`PayloadHash::protect`].
pub(super) struct Protection {
    /// The `x-amz-checksum-crc32c` header value.
    pub crc32c: Option<String>,
    /// Without it a streaming body goes as `UNSIGNED-PAYLOAD`.
    pub signing: Option<SignedPayload>,
}

/// Gives the signer the payload's SHA-256 (lowercase hex), computed here.
#[derive(Debug)]
pub(super) struct SignedPayload(String);

impl Intercept for SignedPayload {
    fn name(&self) -> &'static str {
        "SignedPayload"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(pieces: &[&'static [u8]]) -> PartBuffer {
        let mut part = PartBuffer::default();
        pieces.iter().for_each(|p| part.push(Bytes::from_static(p)));
        part
    }

    /// A retried request sends the whole part again, from its first byte.
    #[tokio::test]
    async fn the_body_replays_every_piece_for_a_retry() {
        let body = body_of(part(&[b"abc", b"", b"defg", b"h"])).into_inner();
        assert_eq!(body.content_length(), Some(8));
        let again = body.try_clone().expect("retryable");
        for body in [body, again] {
            let bytes = ByteStream::new(body).collect().await.unwrap().into_bytes();
            assert_eq!(&bytes[..], b"abcdefgh");
        }
    }

    #[test]
    fn checksums_are_of_all_the_pieces_or_the_ones_given() {
        let whole = b"abcdefgh";
        let pieces = part(&[b"abc", b"defg", b"h"]);
        let crc = |c: u32| base64::engine::general_purpose::STANDARD.encode(c.to_be_bytes());
        let sha = hex::encode(Sha256::digest(whole));

        let signed = PayloadHash::new(PayloadSigning::Auto, Some("http://s3.internal"), true);
        let computed = signed.protect(&pieces, None);
        assert_eq!(computed.crc32c, Some(crc(crc32c::crc32c(whole))));
        assert_eq!(computed.signing.map(|s| s.0), Some(sha));
        let given = signed.protect(&pieces, Some(("c0ffee".into(), 7)));
        assert_eq!(given.crc32c, Some(crc(7)));
        assert_eq!(given.signing.map(|s| s.0).as_deref(), Some("c0ffee"));

        let over_https = PayloadHash::new(PayloadSigning::Auto, Some("https://s3"), true);
        assert!(over_https.protect(&pieces, None).signing.is_none());
        assert!(
            PayloadHash::new(PayloadSigning::Auto, None, true)
                .protect(&pieces, None)
                .signing
                .is_none()
        );
        let forced = PayloadHash::new(PayloadSigning::Signed, None, false);
        let forced = forced.protect(&pieces, None);
        assert!(forced.signing.is_some() && forced.crc32c.is_none());
    }
}
