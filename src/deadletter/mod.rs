//! Dead letters: a message the worker cannot accept is published, with its original payload, to
//! `<prefix>.<reason>` (kept by the dead-letter stream) before the original is acknowledged.
//!
//! Headers: `Score-Worker-Reason`, `Score-Worker-Error` (human readable), `Score-Worker-Original-Subject`,
//! `Score-Worker-Original-Sequence`, `Score-Worker-Original-Msg-Id`, and a `Nats-Msg-Id` derived from the
//! original stream sequence, so a retried dead-lettering is stored once.
//!
//! A letter keeps at most `validation.max_payload_bytes` of the payload ([`Letter::new`]): every payload
//! the worker would accept, whole, and the first bytes of a longer (`too_large`) one, with
//! `Score-Worker-Payload-Truncated: <original length in bytes>`. So a letter always fits the server's
//! `max_payload` with its headers, and a letter waiting to be stored holds no more than that.
//!
//! Letters are stored by the [`queue`] task, off the pull loop, and retried until the stream takes
//! them. A stored dead letter is counted (`score_worker_dead_letters_total{reason}`) and logged here,
//! together and nowhere else, whichever path dead-lettered it.

use std::sync::Arc;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::metrics::Metrics;
use crate::score::RejectReason;

pub mod queue;

pub use queue::{Advised, DeadLetterQueue, QueueFull, Settle, Source};

pub const REASON: &str = "Score-Worker-Reason";
pub const ERROR: &str = "Score-Worker-Error";
pub const ORIGINAL_SUBJECT: &str = "Score-Worker-Original-Subject";
pub const ORIGINAL_SEQUENCE: &str = "Score-Worker-Original-Sequence";
pub const ORIGINAL_MSG_ID: &str = "Score-Worker-Original-Msg-Id";
/// Present when the body keeps only the first bytes of the payload: the original length, in bytes.
pub const PAYLOAD_TRUNCATED: &str = "Score-Worker-Payload-Truncated";

/// What the headers of a letter can take at most: the error and message id are cut to 1 KiB each, a
/// subject fits in a NATS control line (4 KiB).
pub const LETTER_HEADROOM: usize = 8 * 1024;

/// A dead letter could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("publishing dead letter to {subject} failed")]
pub struct DeadLetterError {
    pub subject: String,
    #[source]
    pub source: PublishError,
}

/// What is known about the rejected message.
pub struct Original<'a> {
    pub subject: &'a str,
    pub stream_sequence: u64,
    pub msg_id: Option<&'a str>,
    pub payload: &'a [u8],
}

/// A dead letter ready to publish; it owns a copy of (the kept part of) the payload, so the original
/// message's buffers are free once it is made.
#[derive(Debug, Clone)]
pub struct Letter {
    pub reason: RejectReason,
    pub detail: String,
    pub original_subject: String,
    pub stream_sequence: u64,
    pub msg_id: Option<String>,
    /// The original payload, or its first `keep` bytes.
    pub payload: Bytes,
    /// The original payload's length, when `payload` keeps only its start.
    pub truncated_from: Option<usize>,
}

impl Letter {
    /// A letter keeping at most `keep` bytes of the payload.
    pub fn new(original: Original<'_>, reason: RejectReason, detail: &str, keep: usize) -> Letter {
        let len = original.payload.len();
        let kept = len.min(keep);
        Letter {
            reason,
            detail: detail.to_string(),
            original_subject: original.subject.to_string(),
            stream_sequence: original.stream_sequence,
            msg_id: original.msg_id.map(str::to_string),
            payload: Bytes::copy_from_slice(&original.payload[..kept]),
            truncated_from: (kept < len).then_some(len),
        }
    }
}

/// The payload bytes a letter keeps: the validation limit, and never more than fits the server's
/// `max_payload` next to the headers.
pub fn payload_kept(max_payload_bytes: usize, server_max_payload: usize) -> usize {
    max_payload_bytes.min(server_max_payload.saturating_sub(LETTER_HEADROOM))
}

/// Publishes dead letters and waits for the stream to store them.
#[derive(Clone)]
pub struct DeadLetters {
    js: Context,
    prefix: String,
    stream: String,
    keep: usize,
    metrics: Arc<Metrics>,
}

impl DeadLetters {
    /// `keep`: the payload bytes a letter keeps ([`payload_kept`]).
    pub fn new(
        js: Context,
        prefix: &str,
        stream: &str,
        keep: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            js,
            prefix: prefix.to_string(),
            stream: stream.to_string(),
            keep,
            metrics,
        }
    }

    /// Subject for a reason.
    pub fn subject(&self, reason: RejectReason) -> String {
        format!("{}.{}", self.prefix, reason.as_str())
    }

    /// The letter for `original`, keeping what a letter keeps of its payload.
    pub fn letter(&self, original: Original<'_>, reason: RejectReason, detail: &str) -> Letter {
        Letter::new(original, reason, detail, self.keep)
    }

    /// Publishes and waits for the JetStream ack; only then may the original be acknowledged.
    pub async fn publish(&self, letter: &Letter) -> Result<(), DeadLetterError> {
        let reason = letter.reason;
        let subject = self.subject(reason);
        let mut headers = HeaderMap::new();
        headers.insert(REASON, reason.as_str());
        headers.insert(ERROR, header_safe(&letter.detail).as_str());
        headers.insert(ORIGINAL_SUBJECT, letter.original_subject.as_str());
        headers.insert(
            ORIGINAL_SEQUENCE,
            letter.stream_sequence.to_string().as_str(),
        );
        if let Some(id) = &letter.msg_id {
            headers.insert(ORIGINAL_MSG_ID, header_safe(id).as_str());
        }
        if let Some(len) = letter.truncated_from {
            headers.insert(PAYLOAD_TRUNCATED, len.to_string().as_str());
        }
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("dlq-{}-{}", self.stream, letter.stream_sequence).as_str(),
        );
        let fail = |source| DeadLetterError {
            subject: subject.clone(),
            source,
        };
        self.js
            .publish_with_headers(subject.clone(), headers, letter.payload.clone())
            .await
            .map_err(&fail)?
            .await
            .map_err(&fail)?;
        self.metrics.dead_lettered(reason);
        if letter.truncated_from.is_some() {
            self.metrics.deadletters_truncated.inc();
        }
        tracing::warn!(
            reason = reason.as_str(),
            detail = %letter.detail,
            subject = %letter.original_subject,
            stream_sequence = letter.stream_sequence,
            payload_bytes = letter.truncated_from.unwrap_or(letter.payload.len()),
            kept_bytes = letter.payload.len(),
            "message dead-lettered"
        );
        Ok(())
    }
}

/// Header values cannot hold line breaks; keep them short and printable.
fn header_safe(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect();
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_single_line_and_bounded() {
        assert_eq!(header_safe("a\r\nb\tc"), "a  b c");
        assert_eq!(header_safe(&"x".repeat(5000)).len(), 1024);
    }

    fn original(payload: &[u8]) -> Original<'_> {
        Original {
            subject: "scores.update.x",
            stream_sequence: 7,
            msg_id: Some("evt-1"),
            payload,
        }
    }

    #[test]
    fn a_letter_keeps_a_payload_up_to_the_limit_whole_and_the_start_of_a_longer_one() {
        let whole = Letter::new(original(b"{\"a\":1}"), RejectReason::MissingField, "x", 7);
        assert_eq!(
            (&whole.payload[..], whole.truncated_from),
            (&b"{\"a\":1}"[..], None)
        );
        let long = vec![b'x'; 1_000_000];
        let cut = Letter::new(original(&long), RejectReason::TooLarge, "x", 65_536);
        assert_eq!(
            (cut.payload.len(), cut.truncated_from),
            (65_536, Some(1_000_000))
        );
        assert_eq!(cut.msg_id.as_deref(), Some("evt-1"));
    }

    #[test]
    fn a_letter_fits_the_server_limit_whatever_the_validation_limit() {
        assert_eq!(payload_kept(65_536, 1024 * 1024), 65_536);
        // A server whose max_payload is below the validation limit: the letter still fits.
        assert_eq!(payload_kept(65_536, 32 * 1024), 32 * 1024 - LETTER_HEADROOM);
        assert_eq!(payload_kept(65_536, 1024), 0);
    }
}
