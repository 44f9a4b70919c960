//! The content scan hook (`--scan-url`): every new image is sent to a
//! scanner ([`Scanner`]) whose verdict decides its state. In the `sync`
//! mode the upload's acknowledgement waits for the verdict; in the `async`
//! mode the image is stored `Pending` and the verdict is applied when it
//! comes, through the same state change as a moderator's
//! ([`super::state_change`]). A scan that finds no verdict (no answer in
//! time after its retries, an error status, an answer that is not one)
//! takes the verdict `--scan-on-failure` names.
//!
//! Bounded: the scans in flight on a replica (`--max-concurrent-scans`),
//! and of one user (`--max-concurrent-scans-per-user`), the `async` images
//! queued for a place (`--max-queued-scans`, and per user; see [`queue`]),
//! the bytes sent (`--scan-max-bytes`), each attempt's time
//! (`--scan-timeout`) and the attempts (`--scan-retries`, with backoff).
use std::sync::Arc;
use std::time::Duration;

use super::ports::{ScanAnswer, ScanFailure, ScanRequest, Scanner};
use super::state_change::MAX_REASON_LEN;
use super::{ImageId, UserId};

pub mod queue;

use queue::ScanPlaces;
pub use queue::{Place, PlaceLimits};

/// How the error of an upload the scanner rejected begins.
pub const SCAN_REJECTED: &str = "the content scanner rejected the image";
/// The reason of an image waiting for its verdict (`async` mode).
pub const PENDING_REASON: &str = "scan-pending";
/// The reason of a verdict taken because the scan failed.
pub const FAILED_REASON: &str = "scan-failed";
/// The reason of a quarantine whose scanner gave none that is a category.
const QUARANTINE_REASON: &str = "scan-quarantine";
/// The reason of a rejection whose scanner gave none that is a category.
const REJECT_REASON: &str = "scan-reject";
/// The first wait before a scan is tried again; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// When the verdict is waited for (`--scan-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanMode {
    /// The upload is acknowledged with the verdict applied.
    Sync,
    /// The upload is acknowledged `Pending` at once; the verdict is applied
    /// when it comes (or by the repair pass).
    Async,
}

/// The verdict of a scan that found none (`--scan-on-failure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    Quarantine,
    Reject,
    Allow,
}

/// The bounds and choices of the scan hook.
#[derive(Clone, Debug)]
pub struct ScanPolicy {
    pub mode: ScanMode,
    pub on_failure: OnFailure,
    /// Longest wait for one attempt's answer.
    pub timeout: Duration,
    /// Attempts after the first when one fails.
    pub retries: u32,
    /// Most bytes sent: a larger rendition is not sent and the scan fails.
    pub max_bytes: u64,
    /// Scans in flight at once on this replica, of one user, and the
    /// queue in front of them.
    pub places: PlaceLimits,
}

/// What becomes of a scanned image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Stored but hidden (`Quarantined`), with a reason category.
    Quarantine(String),
    /// Not stored (`sync`) or removed (`async`), with a reason category.
    Reject(String),
}

/// The scanner and its bounds, shared by a replica's uploads.
#[derive(Clone)]
pub struct ScanHook {
    scanner: Arc<dyn Scanner>,
    policy: ScanPolicy,
    places: ScanPlaces,
}

impl ScanHook {
    pub fn new(scanner: Arc<dyn Scanner>, policy: ScanPolicy) -> Self {
        let places = ScanPlaces::new(policy.places);
        Self {
            scanner,
            policy,
            places,
        }
    }

    pub fn policy(&self) -> &ScanPolicy {
        &self.policy
    }

    /// A place among the scans in flight for a scan of `user`'s, waited
    /// for in turn with other users' work (see [`queue`]).
    pub async fn place(&self, user: &UserId) -> Place {
        self.places.place(user).await
    }

    /// Queues the `async` scan of `user`'s image `id`; false when the
    /// queue has no room for it (the repair pass scans it).
    pub fn queue(&self, user: &UserId, id: ImageId) -> bool {
        self.places.queue(user, id)
    }

    /// The next queued image given a place (the scan worker's part).
    pub async fn next_queued(&self) -> (UserId, ImageId, Place) {
        self.places.next_queued().await
    }

    /// Drops the queued images (they stay `PENDING` for the repair pass)
    /// and queues no more: the replica is stopping.
    pub fn close_queue(&self) {
        self.places.close_queue();
    }

    /// The verdict the policy takes when a scan cannot be made (the
    /// rendition is over `--scan-max-bytes`, or could not be read).
    pub fn failed(&self, why: &str, request_id: &str) -> Verdict {
        tracing::warn!(
            image_id = request_id,
            error = why,
            "the image could not be scanned; --scan-on-failure applies"
        );
        metrics::counter!("imageservice_scans_total", "outcome" => "failed").increment(1);
        self.on_failure()
    }

    fn on_failure(&self) -> Verdict {
        match self.policy.on_failure {
            OnFailure::Quarantine => Verdict::Quarantine(FAILED_REASON.into()),
            OnFailure::Reject => Verdict::Reject(FAILED_REASON.into()),
            OnFailure::Allow => Verdict::Allow,
        }
    }

    /// The verdict on `request`: the scanner's, or when every attempt
    /// failed, `--scan-on-failure`'s.
    pub async fn judge(&self, request: &ScanRequest) -> Verdict {
        let started = tokio::time::Instant::now();
        let answer = self.ask(request).await;
        metrics::histogram!("imageservice_scan_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let (outcome, verdict) = match answer {
            Ok(ScanAnswer::Allow) => ("allow", Verdict::Allow),
            Ok(ScanAnswer::Quarantine(reason)) => (
                "quarantine",
                Verdict::Quarantine(category(&reason, QUARANTINE_REASON)),
            ),
            Ok(ScanAnswer::Reject(reason)) => {
                ("reject", Verdict::Reject(category(&reason, REJECT_REASON)))
            }
            Err(failure) => {
                tracing::warn!(image_id = %request.image_id, error = %failure, "the content scanner gave no verdict; --scan-on-failure applies");
                ("failed", self.on_failure())
            }
        };
        metrics::counter!("imageservice_scans_total", "outcome" => outcome).increment(1);
        verdict
    }

    /// The scanner's answer, tried up to `1 + retries` times.
    async fn ask(&self, request: &ScanRequest) -> Result<ScanAnswer, ScanFailure> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            let failure =
                match tokio::time::timeout(self.policy.timeout, self.scanner.scan(request)).await {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(failure)) => failure,
                    Err(_) => ScanFailure(format!(
                        "no answer within {} (--scan-timeout)",
                        humantime::format_duration(self.policy.timeout)
                    )),
                };
            if attempt >= self.policy.retries {
                return Err(failure);
            }
            attempt += 1;
            metrics::counter!("imageservice_scan_retries_total").increment(1);
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }
}

/// The scanner's reason as a reason category (what owners are shown, see
/// [`super::state_change::valid_reason`]): lower-cased, every other
/// character a `-`, cut to [`MAX_REASON_LEN`]; `default` when nothing is
/// left.
fn category(reason: &str, default: &str) -> String {
    let mapped: String = reason
        .trim()
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_REASON_LEN)
        .collect();
    if mapped.chars().all(|c| c == '-') {
        default.to_owned()
    } else {
        mapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::state_change::valid_reason;

    #[test]
    fn the_scanners_reasons_become_categories() {
        assert_eq!(category("nudity", "x"), "nudity");
        assert_eq!(category("Hate Speech", "x"), "hate-speech");
        assert_eq!(category("", "scan-reject"), "scan-reject");
        assert_eq!(category("!!!", "scan-reject"), "scan-reject");
        let long = category(&"é".repeat(200), "x");
        assert_eq!(long, "x");
        let long = category(&"a".repeat(200), "x");
        assert!(valid_reason(&long).is_ok());
    }
}
