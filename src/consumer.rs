//! The JetStream pull loop: takes messages from the durable consumer, decodes them, hands good ones
//! to the pipeline as `(ScoreUpdate, JsReceipt)` and settles bad ones as the pipeline's
//! [`settle::decide`](crate::pipeline::settle::decide) says (a dead letter).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deadletter::{DeadLetters, Original};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::nats::PULL_EXPIRES;
use crate::pipeline::{Attempt, Outcome, Receipt, SettleError, Settler};
use crate::score::{self, Limits, ScoreUpdate};

/// A received JetStream message, kept until the pipeline settles it.
pub struct JsReceipt {
    message: jetstream::Message,
    received_at: Instant,
    delivered: i64,
    stream_sequence: u64,
    deadletters: Arc<DeadLetters>,
}

fn settle_error(
    action: &'static str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> SettleError {
    move |source| SettleError { action, source }
}

impl JsReceipt {
    /// What the dead-letter publisher needs to know about this message.
    fn original(&self) -> Original<'_> {
        Original {
            subject: self.message.subject.as_str(),
            stream_sequence: self.stream_sequence,
            msg_id: self
                .message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str()),
            payload: self.message.payload.clone(),
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

    /// `Ack` → a confirmed (double) ack; `Retry` → nak with delay; `DeadLetter` → publish to the
    /// dead-letter stream, then `+TERM` so the message never comes back whatever `max_deliver` says.
    async fn settle(&self, outcome: &Outcome) -> Result<(), SettleError> {
        match outcome {
            Outcome::Ack => self.message.double_ack().await.map_err(settle_error("ack")),
            Outcome::Retry { delay } => self
                .message
                .ack_with(AckKind::Nak(Some(*delay)))
                .await
                .map_err(settle_error("nak")),
            Outcome::DeadLetter { reason, detail } => {
                self.deadletters
                    .publish(self.original(), *reason, detail)
                    .await
                    .map_err(|e| settle_error("dead-letter")(Box::new(e)))?;
                self.message
                    .double_ack_with(AckKind::Term)
                    .await
                    .map_err(settle_error("term"))
            }
        }
    }

    async fn progress(&self) -> Result<(), SettleError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(settle_error("progress"))
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
    pub settler: Settler,
    pub deadletters: Arc<DeadLetters>,
    pub metrics: Arc<Metrics>,
    /// Pulling waits while the health's pull breaker is open.
    pub health: Arc<Health>,
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
            // While pulling is paused, read what the server already handed over, but ask for no more.
            let next = if cancel.is_cancelled() || self.health.pulls_paused() {
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
            // While flushes cannot be written, pulling more would only burn their deliveries.
            if !self.health.wait_resumed(cancel).await {
                return None;
            }
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
                self.settler
                    .settle(&receipt, Attempt::Rejected(&rejection))
                    .await;
                true
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
