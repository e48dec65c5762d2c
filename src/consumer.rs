//! The JetStream pull loop: takes messages from the durable consumer, decodes them, hands good ones
//! to the pipeline as `(ScoreUpdate, JsReceipt)` and dead-letters bad ones. Also listens for the
//! server's max-deliveries advisories, so a message NATS gave up on is dead-lettered, not forgotten.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deadletter::{DeadLetters, Original};
use crate::metrics::Metrics;
use crate::nats::PULL_EXPIRES;
use crate::pipeline::{Receipt, SettleError};
use crate::score::{self, Limits, RejectReason, ScoreUpdate};

/// A received JetStream message, kept until the pipeline settles it.
pub struct JsReceipt {
    message: jetstream::Message,
    received_at: Instant,
    delivered: i64,
    stream_sequence: u64,
    deadletters: Arc<DeadLetters>,
}

impl JsReceipt {
    fn settle_error(action: &'static str, e: impl std::fmt::Display) -> SettleError {
        SettleError {
            action,
            message: e.to_string(),
        }
    }
}

impl Receipt for JsReceipt {
    fn received_at(&self) -> Instant {
        self.received_at
    }

    fn delivered(&self) -> i64 {
        self.delivered
    }

    async fn ack(&self) -> Result<(), SettleError> {
        self.message
            .double_ack()
            .await
            .map_err(|e| Self::settle_error("ack", e))
    }

    async fn nak(&self, delay: Duration) -> Result<(), SettleError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| Self::settle_error("nak", e))
    }

    async fn progress(&self) -> Result<(), SettleError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| Self::settle_error("progress", e))
    }

    async fn dead_letter(&self, reason: RejectReason, detail: &str) -> Result<(), SettleError> {
        let msg_id = self
            .message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string());
        let original = Original {
            subject: self.message.subject.as_str(),
            stream_sequence: self.stream_sequence,
            msg_id: msg_id.as_deref(),
            payload: self.message.payload.clone(),
        };
        self.deadletters
            .publish(original, reason, detail)
            .await
            .map_err(|e| Self::settle_error("dead-letter", e))?;
        // Term: this message must never come back, whatever the consumer's max_deliver.
        self.message
            .double_ack_with(AckKind::Term)
            .await
            .map_err(|e| Self::settle_error("term", e))
    }
}

/// Everything the pull loop needs.
pub struct Consumer {
    pub consumer: jetstream::consumer::Consumer<pull::Config>,
    pub pull_batch: usize,
    /// Bytes per pull: at least the largest message the server accepts, or a bigger one would
    /// never be delivered and would block everything behind it.
    pub pull_max_bytes: usize,
    pub limits: Limits,
    pub nak_delay: Duration,
    pub deadletters: Arc<DeadLetters>,
    pub metrics: Arc<Metrics>,
}

impl Consumer {
    /// Pulls until `cancel` fires or the pipeline goes away. Pull errors are logged and the pull
    /// stream is rebuilt; NATS reconnects by itself.
    pub async fn run(
        self,
        output: mpsc::Sender<(ScoreUpdate, JsReceipt)>,
        cancel: CancellationToken,
    ) {
        // Bounded pull requests, at most two outstanding (not a self-refilling stream): while one batch
        // is read the next is already on its way, and on shutdown the worker stops asking and reads
        // what the server already handed over to the end, instead of leaving it unacknowledged in a
        // client buffer until `ack_wait`.
        let Some(mut current) = self.request(&cancel).await else {
            return;
        };
        loop {
            let next = if cancel.is_cancelled() {
                None
            } else {
                self.request(&cancel).await
            };
            if !self.read_to_end(&mut current, &output, &cancel).await {
                return;
            }
            current = match next {
                Some(batch) => batch,
                None if cancel.is_cancelled() => return,
                None => match self.request(&cancel).await {
                    Some(batch) => batch,
                    None => return,
                },
            };
        }
    }

    /// Sends one pull request; retries failures every second. `None` once cancelled.
    async fn request(&self, cancel: &CancellationToken) -> Option<pull::Batch> {
        while !cancel.is_cancelled() {
            let request = self
                .consumer
                .batch()
                .max_messages(self.pull_batch)
                .max_bytes(self.pull_max_bytes)
                .expires(PULL_EXPIRES)
                .messages();
            match request.await {
                Ok(batch) => return Some(batch),
                Err(e) => {
                    tracing::warn!(error = %e, "pull request failed; retrying");
                    if sleep_or_cancel(Duration::from_secs(1), cancel).await {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// Hands every message of a batch to the pipeline; the batch ends when full or expired (the client
    /// bounds it too). Returns false when the pipeline has gone away.
    async fn read_to_end(
        &self,
        batch: &mut pull::Batch,
        output: &mpsc::Sender<(ScoreUpdate, JsReceipt)>,
        cancel: &CancellationToken,
    ) -> bool {
        while let Some(next) = batch.next().await {
            match next {
                Ok(message) => {
                    if !self.handle(message, output).await {
                        return false;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pull error");
                    sleep_or_cancel(Duration::from_millis(200), cancel).await;
                    break;
                }
            }
        }
        true
    }

    /// Decodes one message; returns false when the pipeline has gone away.
    async fn handle(
        &self,
        message: jetstream::Message,
        output: &mpsc::Sender<(ScoreUpdate, JsReceipt)>,
    ) -> bool {
        let received_at = Instant::now();
        self.metrics.messages_received.inc();
        let (delivered, stream_sequence) = message
            .info()
            .map(|i| (i.delivered, i.stream_sequence))
            .unwrap_or((1, 0));
        let now = chrono::Utc::now().timestamp_micros();
        let decoded = score::decode(&message.payload, self.limits, now);
        let receipt = JsReceipt {
            message,
            received_at,
            delivered,
            stream_sequence,
            deadletters: self.deadletters.clone(),
        };
        match decoded {
            Ok(update) => output.send((update, receipt)).await.is_ok(),
            Err(rejection) => {
                let reason = rejection.reason;
                match receipt.dead_letter(reason, &rejection.detail).await {
                    Ok(()) => {
                        self.metrics.dead_lettered(reason);
                        tracing::warn!(
                            reason = reason.as_str(),
                            detail = %rejection.detail,
                            subject = %receipt.message.subject,
                            stream_sequence,
                            "rejected message dead-lettered"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot dead-letter a rejected message; nak'ing it");
                        let _ = receipt.nak(self.nak_delay).await;
                    }
                }
                true
            }
        }
    }
}

/// Dead-letters messages the server stopped delivering (max_deliver reached while no replica could
/// settle them, e.g. every delivery crashed a worker). One replica of the queue group handles each.
pub async fn watch_max_deliveries(
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    consumer_name: String,
    deadletters: Arc<DeadLetters>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let stream_name = stream.cached_info().config.name.clone();
    let subject =
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name}.{consumer_name}");
    let mut advisories = match client
        .queue_subscribe(subject.clone(), "score-worker-advisories".into())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, %subject, "cannot subscribe to max-deliveries advisories");
            return;
        }
    };
    #[derive(serde::Deserialize)]
    struct Advisory {
        stream_seq: u64,
        deliveries: i64,
    }
    loop {
        let advisory = tokio::select! {
            () = cancel.cancelled() => return,
            next = advisories.next() => match next { Some(m) => m, None => return },
        };
        let Ok(advisory) = serde_json::from_slice::<Advisory>(&advisory.payload) else {
            continue;
        };
        let reason = RejectReason::MaxDeliveries;
        let result = async {
            let original = stream
                .get_raw_message(advisory.stream_seq)
                .await
                .map_err(|e| e.to_string())?;
            let msg_id = original
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_string());
            let detail = format!(
                "NATS stopped delivering after {} deliveries",
                advisory.deliveries
            );
            deadletters
                .publish(
                    Original {
                        subject: original.subject.as_str(),
                        stream_sequence: advisory.stream_seq,
                        msg_id: msg_id.as_deref(),
                        payload: original.payload.clone(),
                    },
                    reason,
                    &detail,
                )
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(()) => {
                metrics.dead_lettered(reason);
                tracing::error!(
                    stream_sequence = advisory.stream_seq,
                    "message reached max deliveries; dead-lettered"
                );
            }
            Err(e) => {
                tracing::error!(stream_sequence = advisory.stream_seq, error = %e, "cannot dead-letter a max-deliveries message")
            }
        }
    }
}

/// Sleeps; returns true if cancelled first.
async fn sleep_or_cancel(duration: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}
