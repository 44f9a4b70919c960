//! The content scanner over HTTP(S) (`--scan-url`): the adapter of the
//! [`Scanner`] port. Each scan is one POST of the rendition's bytes with
//! headers naming the image:
//!
//! | header | value |
//! |---|---|
//! | `content-type` | the media type of the bytes sent |
//! | `x-image-id` | the image's id |
//! | `x-image-owner` | its owner's id, percent-encoded (UTF-8; `%`, controls, space and non-ASCII escaped) |
//! | `x-image-sha256` | the SHA-256 of its stored original, hex |
//! | `x-image-rendition` | what is sent: `medium`, another variant's name, or `original` |
//! | `x-image-pdq`, `x-image-pdq-quality` | its PDQ hash (hex) and quality, when it has one |
//!
//! The answer must be a 2xx with a JSON object
//! `{"verdict": "allow" | "quarantine" | "reject", "reason": "..."}`
//! (other fields ignored), of at most [`MAX_ANSWER_BYTES`]; anything else
//! is a failed scan. Redirects are not followed.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::header::CONTENT_TYPE;

use crate::config::ScanSettings;
use crate::domain::ports::{ScanAnswer, ScanFailure, ScanRequest, Scanner};
use crate::domain::scan::ScanHook;

/// The largest answer read; a longer one is a failed scan.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What `x-image-owner` escapes besides non-ASCII.
const OWNER_ESCAPED: &AsciiSet = &CONTROLS.add(b'%').add(b' ');

/// The hook of `--scan-url`, when set.
pub fn hook(settings: &ScanSettings) -> anyhow::Result<Option<ScanHook>> {
    let Some((url, policy)) = settings.policy().map_err(anyhow::Error::msg)? else {
        return Ok(None);
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(policy.timeout.min(Duration::from_secs(10)))
        .build()?;
    tracing::info!(url = %url, mode = ?policy.mode, on_failure = ?policy.on_failure, "every new image is sent to the content scanner");
    Ok(Some(ScanHook::new(
        Arc::new(HttpScanner { client, url }),
        policy,
    )))
}

/// A content scanner reached by HTTP(S).
pub struct HttpScanner {
    client: reqwest::Client,
    url: reqwest::Url,
}

/// The answer's fields that are read.
#[derive(serde::Deserialize)]
struct Answer {
    verdict: String,
    #[serde(default)]
    reason: String,
}

#[async_trait]
impl Scanner for HttpScanner {
    async fn scan(&self, request: &ScanRequest) -> Result<ScanAnswer, ScanFailure> {
        let mut post = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, &request.content_type)
            .header("x-image-id", request.image_id.to_string())
            .header(
                "x-image-owner",
                utf8_percent_encode(request.owner.as_str(), OWNER_ESCAPED).to_string(),
            )
            .header("x-image-sha256", &request.sha256)
            .header("x-image-rendition", &request.rendition);
        if !request.pdq_hash.is_empty() {
            post = post
                .header("x-image-pdq", &request.pdq_hash)
                .header("x-image-pdq-quality", request.pdq_quality.to_string());
        }
        let mut response = post
            .body(request.bytes.clone())
            .send()
            .await
            .map_err(|e| failure("could not reach the content scanner", &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ScanFailure(format!(
                "the content scanner answered {status}"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failure("the content scanner's answer broke off", &e))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(ScanFailure(format!(
                    "the content scanner's answer is over {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            ScanFailure(format!(
                "the content scanner's answer is not a verdict object: {e}"
            ))
        })?;
        match answer.verdict.as_str() {
            "allow" => Ok(ScanAnswer::Allow),
            "quarantine" => Ok(ScanAnswer::Quarantine(answer.reason)),
            "reject" => Ok(ScanAnswer::Reject(answer.reason)),
            other => Err(ScanFailure(format!(
                "the content scanner's verdict {other:?} is none of allow, quarantine, reject"
            ))),
        }
    }
}

fn failure(what: &str, error: &reqwest::Error) -> ScanFailure {
    ScanFailure(format!("{what}: {}", crate::telemetry::error_chain(error)))
}
