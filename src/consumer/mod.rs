//! The JetStream pull loop: takes messages from the durable consumer, decodes them, hands good ones
//! to the pipeline as `(ScoreUpdate, JsReceipt)` and settles bad ones as the pipeline's
//! [`settle::decide`](crate::pipeline::settle::decide) says (a dead letter).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deadletter::{DeadLetters, Original};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::nats::PULL_EXPIRES;
use crate::pipeline::{Attempt, Outcome, Receipt, SettleError, Settler};
use crate::score::{self, Limits, ScoreUpdate};

mod unsettled;
pub use unsettled::Unsettled;

/// A received JetStream message, kept until the pipeline settles it.
pub struct JsReceipt {
    message: jetstream::Message,
    received_at: Instant,
    delivered: i64,
    stream_sequence: u64,
    deadletters: Arc<DeadLetters>,
    unsettled: Arc<Unsettled>,
    /// Wait for the server to confirm an `Ack` (`nats.confirm_acks`).
    confirm_acks: bool,
}

impl Drop for JsReceipt {
    fn drop(&mut self) {
        self.unsettled.remove(&self.message);
    }
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

    /// `Ack` → an ack (confirmed by the server with `nats.confirm_acks`); `Retry` → nak with delay; `DeadLetter` → publish to the
    /// dead-letter stream, then `+TERM` so the message never comes back whatever `max_deliver` says.
    async fn settle(&self, outcome: &Outcome) -> Result<(), SettleError> {
        let settled = self.settle_now(outcome).await;
        if settled.is_ok() {
            self.unsettled.remove(&self.message);
        }
        settled
    }
}

impl JsReceipt {
    async fn settle_now(&self, outcome: &Outcome) -> Result<(), SettleError> {
        match outcome {
            Outcome::Ack if self.confirm_acks => {
                self.message.double_ack().await.map_err(settle_error("ack"))
            }
            Outcome::Ack => self.message.ack().await.map_err(settle_error("ack")),
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
}

/// Everything the pull loop needs.
pub struct Consumer {
    pub consumer: jetstream::consumer::Consumer<pull::Config>,
    pub pull_batch: usize,
    pub limits: Limits,
    pub settler: Settler,
    pub deadletters: Arc<DeadLetters>,
    /// Wait for the server to confirm each `Ack` (`nats.confirm_acks`).
    pub confirm_acks: bool,
    pub metrics: Arc<Metrics>,
    /// Pulling waits while the health's pull breaker is open.
    pub health: Arc<Health>,
    /// Shared with the shutdown, which hands back what is still held at the deadline.
    pub unsettled: Arc<Unsettled>,
}

/// What the pull loop hands the pipeline.
pub type Item = (ScoreUpdate, JsReceipt);

/// The capacity of the channel from the pull loop to the pipeline: room for two pull batches, the
/// most the loop ever has outstanding.
pub fn channel_capacity(pull_batch: usize) -> usize {
    2 * pull_batch
}

/// A pull request and the room reserved in the hand-off channel for everything it can deliver: what
/// the server hands over is read at once, so every delivery sits where [`Unsettled`] keeps it alive,
/// never unread in a client buffer while its `ack_wait` runs out.
struct Pull<'a> {
    batch: pull::Batch,
    room: mpsc::PermitIterator<'a, Item>,
}

impl Consumer {
    /// Pulls until `cancel` fires or the pipeline goes away. Pull errors are logged, counted and
    /// backed off ([`pull_backoff`]); NATS reconnects by itself. Once [`Unsettled::abandon`] is
    /// called, what is still read is nak'd instead of handed on.
    pub async fn run(self, output: mpsc::Sender<Item>, cancel: CancellationToken) {
        // Bounded pull requests, at most two outstanding (not a self-refilling stream), each only with
        // room for all it may deliver: while one batch is read the next is already on its way if the
        // pipeline keeps up, and when it does not, nothing more is asked for. On shutdown the worker
        // stops asking and reads what the server already handed over to the end.
        let mut failures = 0;
        let Some(mut current) = self.request(&output, &cancel, &mut failures).await else {
            return;
        };
        loop {
            // While pulling is paused, read what the server already handed over, but ask for no more.
            let next = if cancel.is_cancelled() || self.health.pulls_paused() {
                None
            } else {
                self.request_if_room(&output).await
            };
            if !self.read_to_end(&mut current, &cancel, &mut failures).await {
                if let Some(mut next) = next {
                    self.hand_back(&mut next.batch).await;
                }
                return;
            }
            current = match next {
                Some(pull) => pull,
                None if cancel.is_cancelled() => return,
                None => match self.request(&output, &cancel, &mut failures).await {
                    Some(pull) => pull,
                    None => return,
                },
            };
        }
    }

    /// Waits for room for a whole batch, then sends one pull request; retries failures with a
    /// growing wait. `None` once cancelled or when the pipeline has gone away.
    async fn request<'a>(
        &self,
        output: &'a mpsc::Sender<Item>,
        cancel: &CancellationToken,
        failures: &mut u32,
    ) -> Option<Pull<'a>> {
        while !cancel.is_cancelled() {
            // While flushes cannot be written, pulling more would only burn their deliveries.
            if !self.health.wait_resumed(cancel).await {
                return None;
            }
            let room = tokio::select! {
                () = cancel.cancelled() => return None,
                room = output.reserve_many(self.pull_batch) => room.ok()?,
            };
            match self.pull().await {
                Ok(batch) => return Some(Pull { batch, room }),
                Err(e) => {
                    if self.pull_failed(&e, failures, cancel).await {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// One pull request if the channel has room for a whole batch now; otherwise (or if the request
    /// fails, which [`Self::request`] then retries) `None`.
    async fn request_if_room<'a>(&self, output: &'a mpsc::Sender<Item>) -> Option<Pull<'a>> {
        let room = output.try_reserve_many(self.pull_batch).ok()?;
        let batch = self.pull().await.ok()?;
        Some(Pull { batch, room })
    }

    /// No `max_bytes`: with it, a server since 2.10 ends every pull that fills its message count with
    /// `409 Batch Completed`, and on a replicated consumer (2.15, R3) that status overtakes the messages,
    /// which wait for the consumer's quorum; async-nats ends the batch at the 409 and drops the messages
    /// behind it, so nothing was ever processed (tests/chaos/cluster.rs). A pull is bounded by its
    /// count and the server's max_payload instead.
    async fn pull(&self) -> Result<pull::Batch, pull::BatchError> {
        self.consumer
            .batch()
            .max_messages(self.pull_batch)
            .expires(PULL_EXPIRES)
            .messages()
            .await
    }

    /// Counts and logs a pull failure, then waits [`pull_backoff`]; true if cancelled meanwhile.
    async fn pull_failed(
        &self,
        error: &(dyn std::fmt::Display + Send + Sync),
        failures: &mut u32,
        cancel: &CancellationToken,
    ) -> bool {
        *failures = failures.saturating_add(1);
        let wait = pull_backoff(*failures);
        self.metrics.pull_errors.inc();
        tracing::warn!(%error, failures = *failures, retry_in = ?wait, "pull failed");
        sleep_or_cancel(wait, cancel).await
    }

    /// Hands every message of a batch to the pipeline; the batch ends when full or expired (the client
    /// bounds it too). Returns false once the deliveries are abandoned.
    async fn read_to_end(
        &self,
        pull: &mut Pull<'_>,
        cancel: &CancellationToken,
        failures: &mut u32,
    ) -> bool {
        loop {
            let next = tokio::select! {
                biased;
                () = self.unsettled.abandoned.cancelled() => {
                    self.hand_back(&mut pull.batch).await;
                    return false;
                }
                next = pull.batch.next() => next,
            };
            match next {
                None => return true,
                Some(Ok(message)) => {
                    *failures = 0;
                    self.handle(message, &mut pull.room).await;
                }
                Some(Err(e)) => {
                    self.pull_failed(&e, failures, cancel).await;
                    return true;
                }
            }
        }
    }

    /// Naks what the client already holds of a batch (never waits for more).
    async fn hand_back(&self, batch: &mut pull::Batch) {
        let mut naked = 0;
        while let Some(Some(Ok(message))) = batch.next().now_or_never() {
            nak_now(&message).await;
            naked += 1;
        }
        if naked > 0 {
            tracing::info!(naked, "handed back buffered deliveries");
        }
    }

    /// Decodes one message and hands it on in the room its pull reserved (or settles it as a dead
    /// letter).
    async fn handle(&self, message: jetstream::Message, room: &mut mpsc::PermitIterator<'_, Item>) {
        let received_at = Instant::now();
        self.metrics.messages_received.inc();
        let (delivered, stream_sequence) = message
            .info()
            .map(|i| (i.delivered, i.stream_sequence))
            .unwrap_or((1, 0));
        let now = chrono::Utc::now().timestamp_micros();
        let decoded = score::decode(&message.payload, self.limits, now);
        self.unsettled.insert(&message);
        let receipt = JsReceipt {
            message,
            received_at,
            delivered,
            stream_sequence,
            deadletters: self.deadletters.clone(),
            confirm_acks: self.confirm_acks,
            unsettled: self.unsettled.clone(),
        };
        match decoded {
            Ok(update) => match room.next() {
                Some(permit) => permit.send((update, receipt)),
                // A pull never delivers more than it asked for (`max_messages`); if one did, the
                // surplus is handed back rather than held without room.
                None => nak_now(&receipt.message).await,
            },
            Err(rejection) => {
                self.settler
                    .settle(&receipt, Attempt::Rejected(&rejection))
                    .await;
            }
        }
    }
}

/// `-NAK` without delay: redeliver now, to any replica.
async fn nak_now(message: &jetstream::Message) {
    if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
        tracing::warn!(error = %e, "cannot nak a delivery");
    }
}

/// The wait after the `failures`-th pull failure in a row: 250 ms, doubling, at most 10 s. A deleted
/// consumer or a revoked permission fails every pull; this keeps such a worker from hammering the
/// server while readiness reports why.
pub fn pull_backoff(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(10);
    FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX)
}

/// Sleeps; returns true if cancelled first.
async fn sleep_or_cancel(duration: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_failures_back_off_from_250ms_to_10s() {
        let waits: Vec<u64> = (1..=8)
            .map(|n| pull_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(pull_backoff(u32::MAX), Duration::from_secs(10));
    }
}
