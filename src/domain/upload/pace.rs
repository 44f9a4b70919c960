//! How fast an upload must move, and how finely it may cut its bytes.

use futures::{Stream, StreamExt};
use tokio::time::Instant;

use super::spec::{FramePayload, UploadFrame};
use crate::domain::DomainError;
use crate::domain::limits::PaceLimits;

/// The clock and message count of one upload; see [`PaceLimits`].
pub(super) struct Pace {
    limits: PaceLimits,
    started: Instant,
    last_progress: Instant,
    messages: u64,
    bytes: u64,
}

impl Pace {
    pub(super) fn new(limits: &PaceLimits) -> Self {
        let now = Instant::now();
        Self {
            limits: *limits,
            started: now,
            last_progress: now,
            messages: 0,
            bytes: 0,
        }
    }

    /// The next message, unless the upload stalls or runs out of time.
    pub(super) async fn next<S>(
        &mut self,
        frames: &mut S,
    ) -> Result<Option<Result<UploadFrame, DomainError>>, DomainError>
    where
        S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin,
    {
        let idle_at = self.last_progress + self.limits.idle_timeout;
        let deadline_at = self.started + self.limits.deadline;
        let frame = tokio::time::timeout_at(idle_at.min(deadline_at), frames.next())
            .await
            .map_err(|_| {
                if Instant::now() >= deadline_at {
                    DomainError::DeadlineExceeded(format!(
                        "the upload did not finish within {}s (--upload-deadline)",
                        self.limits.deadline.as_secs_f32()
                    ))
                } else {
                    DomainError::DeadlineExceeded(format!(
                        "the upload stream sent no image bytes for {}s (--upload-idle-timeout)",
                        self.limits.idle_timeout.as_secs_f32()
                    ))
                }
            })?;
        self.messages += 1;
        let allowed = self.limits.free_messages + self.bytes / self.limits.bytes_per_message.max(1);
        if self.messages > allowed {
            return Err(DomainError::TooLarge(format!(
                "the upload sends too many small messages: after {} messages, each must bring \
                 {} bytes on average (send chunks of 64 KiB to 1 MiB)",
                self.limits.free_messages, self.limits.bytes_per_message
            )));
        }
        Ok(frame)
    }

    /// `n` image bytes arrived.
    /// The next message after the first: `ended` is the error when the
    /// stream ends here; a second spec or resume is refused.
    pub(super) async fn next_after_first<S>(
        &mut self,
        frames: &mut S,
        ended: impl FnOnce() -> String,
    ) -> Result<UploadFrame, DomainError>
    where
        S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin,
    {
        let frame = self
            .next(frames)
            .await?
            .ok_or_else(|| DomainError::invalid(ended()))??;
        match frame.payload {
            FramePayload::Spec(_) | FramePayload::Resume { .. } => Err(DomainError::invalid(
                "spec and resume may only be sent in the first message",
            )),
            _ => Ok(frame),
        }
    }

    /// The service kept the caller waiting (for admission): the idle
    /// timeout counts from now, not from the caller's last bytes.
    pub(super) fn waited_for_the_service(&mut self) {
        self.last_progress = Instant::now();
    }

    pub(super) fn progressed(&mut self, n: usize) {
        if n > 0 {
            self.bytes += n as u64;
            self.last_progress = Instant::now();
        }
    }
}
