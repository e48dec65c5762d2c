//! Dead letters: a message the worker cannot accept is published, with its original payload, to
//! `<prefix>.<reason>` (kept by the dead-letter stream) before the original is acknowledged.
//!
//! Headers: `Score-Worker-Reason`, `Score-Worker-Error` (human readable), `Score-Worker-Original-Subject`,
//! `Score-Worker-Original-Sequence`, `Score-Worker-Original-Msg-Id`, and a `Nats-Msg-Id` derived from the
//! original stream sequence, so a retried dead-lettering is stored once.
//!
//! A stored dead letter is counted (`score_worker_dead_letters_total{reason}`) and logged here, together
//! and nowhere else, whichever path dead-lettered it.

use std::sync::Arc;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::metrics::Metrics;
use crate::score::RejectReason;

pub const REASON: &str = "Score-Worker-Reason";
pub const ERROR: &str = "Score-Worker-Error";
pub const ORIGINAL_SUBJECT: &str = "Score-Worker-Original-Subject";
pub const ORIGINAL_SEQUENCE: &str = "Score-Worker-Original-Sequence";
pub const ORIGINAL_MSG_ID: &str = "Score-Worker-Original-Msg-Id";

/// A dead letter could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("publishing dead letter to {subject} failed: {source}")]
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
    pub payload: Bytes,
}

/// Publishes dead letters and waits for the stream to store them.
#[derive(Clone)]
pub struct DeadLetters {
    js: Context,
    prefix: String,
    stream: String,
    metrics: Arc<Metrics>,
}

impl DeadLetters {
    pub fn new(js: Context, prefix: &str, stream: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            js,
            prefix: prefix.to_string(),
            stream: stream.to_string(),
            metrics,
        }
    }

    /// Subject for a reason.
    pub fn subject(&self, reason: RejectReason) -> String {
        format!("{}.{}", self.prefix, reason.as_str())
    }

    /// Publishes and waits for the JetStream ack; only then may the original be acknowledged.
    pub async fn publish(
        &self,
        original: Original<'_>,
        reason: RejectReason,
        detail: &str,
    ) -> Result<(), DeadLetterError> {
        let subject = self.subject(reason);
        let mut headers = HeaderMap::new();
        headers.insert(REASON, reason.as_str());
        headers.insert(ERROR, header_safe(detail).as_str());
        headers.insert(ORIGINAL_SUBJECT, original.subject);
        headers.insert(
            ORIGINAL_SEQUENCE,
            original.stream_sequence.to_string().as_str(),
        );
        if let Some(id) = original.msg_id {
            headers.insert(ORIGINAL_MSG_ID, header_safe(id).as_str());
        }
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("dlq-{}-{}", self.stream, original.stream_sequence).as_str(),
        );
        let fail = |source| DeadLetterError {
            subject: subject.clone(),
            source,
        };
        self.js
            .publish_with_headers(subject.clone(), headers, original.payload)
            .await
            .map_err(&fail)?
            .await
            .map_err(&fail)?;
        self.metrics.dead_lettered(reason);
        tracing::warn!(
            reason = reason.as_str(),
            %detail,
            subject = %original.subject,
            stream_sequence = original.stream_sequence,
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
}
