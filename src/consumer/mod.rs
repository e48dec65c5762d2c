//! The JetStream pull loop: takes messages from the durable consumer, decodes them (event time bounded
//! by the message's arrival at JetStream, [`score::clock`]), hands good ones
//! to the pipeline as `(ScoreUpdate, JsReceipt)` and settles bad ones as the pipeline's
//! [`settle::decide`](crate::pipeline::settle::decide) says (a dead letter, queued for the
//! dead-letter task, so a slow dead-letter stream never holds up the loop).
//!
//! - [`pull`]: one pull request, bounded in messages and bytes, and the reading of what it delivers;
//! - [`receipt`]: the [`JsReceipt`] a message travels with until it is settled;
//! - [`unsettled`]: every delivery held, kept alive with `+WPI`, handed back on a late shutdown;
//! - [`watch`]: the consumer watcher (restores a deleted or changed consumer, readiness, lag).

use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::Config as PullConfig;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{self, Breaker, State, PROBE_MESSAGES};
use crate::deadletter::DeadLetterQueue;
use crate::metrics::Metrics;
use crate::nats::PULL_EXPIRES;
use crate::pipeline::{Attempt, Settler};
use crate::retry::growing_wait;
use crate::score::clock::Clamped;
use crate::score::{self, Limits, ScoreUpdate};

mod pull;
mod receipt;
mod unsettled;
pub mod watch;

pub use pull::PullError;
use pull::{Request, Size};
pub use receipt::JsReceipt;
pub use unsettled::Unsettled;

/// Bytes a pull may bring per message it asks for, beyond `validation.max_payload_bytes`: headers,
/// subject and reply subject. A pull of messages the worker accepts is never cut short by bytes.
pub const MESSAGE_OVERHEAD: usize = 4 * 1024;

/// The byte limit of a pull of `pull_batch` messages: every message the worker accepts fits, and
/// a burst of larger ones brings no more than this.
pub fn pull_max_bytes(pull_batch: usize, max_payload_bytes: usize) -> usize {
    pull_batch.saturating_mul(max_payload_bytes.saturating_add(MESSAGE_OVERHEAD))
}

/// Everything the pull loop needs.
pub struct Consumer {
    pub consumer: jetstream::consumer::Consumer<PullConfig>,
    pub context: jetstream::Context,
    pub pull_batch: usize,
    /// The byte limit of every pull ([`pull_max_bytes`]).
    pub pull_max_bytes: usize,
    pub limits: Limits,
    pub settler: Settler,
    pub deadletters: DeadLetterQueue,
    /// Wait for the server to confirm each `Ack` (`nats.confirm_acks`).
    pub confirm_acks: bool,
    pub metrics: Arc<Metrics>,
    /// Pulling waits while the breaker is open, and probes while it is half-open.
    pub breaker: Arc<Breaker>,
    /// Shared with the shutdown, which hands back what is still held at the deadline.
    pub unsettled: Arc<Unsettled>,
    /// Shared with the consumer watcher.
    pub signals: Arc<watch::Signals>,
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
    request: Request,
    room: mpsc::PermitIterator<'a, Item>,
    /// A half-open breaker's probe.
    probe: bool,
}

/// What one pull brought: messages delivered, and those handed to the pipeline; whether it ended
/// with an error.
struct Read {
    delivered: usize,
    bytes: usize,
    handed_on: usize,
    failed: bool,
}

impl Consumer {
    /// Pulls until `cancel` fires or the pipeline goes away. Pull errors are logged, counted and
    /// backed off ([`growing_wait`]); NATS reconnects by itself. Once [`Unsettled::abandon`] is
    /// called, what is still read is nak'd instead of handed on.
    pub async fn run(self, output: mpsc::Sender<Item>, cancel: CancellationToken) {
        // Bounded pull requests, at most two outstanding (not a self-refilling stream), each only with
        // room for all it may deliver: while one batch is read the next is already on its way if the
        // pipeline keeps up, and when it does not, nothing more is asked for. On shutdown the worker
        // stops asking and reads what the server already handed over to the end.
        let mut failures = 0;
        let mut oversized = false;
        let Some(mut current) = self
            .request(&output, &cancel, &mut failures, oversized)
            .await
        else {
            return;
        };
        loop {
            // Only at full speed is the next batch asked for while this one is read.
            let next = if current.probe
                || oversized
                || cancel.is_cancelled()
                || self.breaker.state() != State::Closed
            {
                None
            } else {
                self.request_if_room(&output).await
            };
            let Some(read) = self.read_to_end(&mut current, &cancel, &mut failures).await else {
                if let Some(mut next) = next {
                    self.hand_back(&mut next.request).await;
                }
                return;
            };
            oversized = current.request.oversized_ahead();
            if current.probe {
                if read.failed {
                    self.breaker.probe_again();
                } else {
                    self.breaker.probed(read.delivered, read.handed_on);
                }
            }
            current = match next {
                Some(pull) => pull,
                None if cancel.is_cancelled() => return,
                None => match self
                    .request(&output, &cancel, &mut failures, oversized)
                    .await
                {
                    Some(pull) => pull,
                    None => return,
                },
            };
        }
    }

    /// What the next pull asks for: a full batch, a breaker's probe, or the one message too large
    /// for the byte limit.
    fn size(&self, probe: bool, oversized: bool) -> Size {
        if oversized {
            Size {
                messages: 1,
                max_bytes: None,
            }
        } else {
            Size {
                messages: if probe {
                    PROBE_MESSAGES
                } else {
                    self.pull_batch
                },
                max_bytes: Some(self.pull_max_bytes),
            }
        }
    }

    /// Waits until the breaker lets it pull and there is room for the whole batch, then sends one
    /// pull request; retries failures with a growing wait. `None` once cancelled or when the
    /// pipeline has gone away.
    async fn request<'a>(
        &self,
        output: &'a mpsc::Sender<Item>,
        cancel: &CancellationToken,
        failures: &mut u32,
        oversized: bool,
    ) -> Option<Pull<'a>> {
        while !cancel.is_cancelled() {
            // While flushes cannot be written, pulling more would only hold more.
            let allowed = self
                .breaker
                .wait_pullable(cancel, breaker::PROBE_WAIT)
                .await?;
            let probe = allowed == breaker::Pull::Probe;
            let size = self.size(probe, oversized);
            let room = tokio::select! {
                () = cancel.cancelled() => return None,
                room = output.reserve_many(size.messages) => room.ok()?,
            };
            match Request::send(&self.consumer, &self.context, size, PULL_EXPIRES).await {
                Ok(request) => {
                    return Some(Pull {
                        request,
                        room,
                        probe,
                    })
                }
                Err(e) => {
                    if self.pull_failed(&e, failures, cancel).await {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// One full pull request if the channel has room for a whole batch now; otherwise (or if the
    /// request fails, which [`Self::request`] then retries) `None`.
    async fn request_if_room<'a>(&self, output: &'a mpsc::Sender<Item>) -> Option<Pull<'a>> {
        let size = self.size(false, false);
        let room = output.try_reserve_many(size.messages).ok()?;
        let request = Request::send(&self.consumer, &self.context, size, PULL_EXPIRES)
            .await
            .ok()?;
        Some(Pull {
            request,
            room,
            probe: false,
        })
    }

    /// Counts and logs a pull failure, asks the watcher to look at the consumer if it is gone, then
    /// waits [`growing_wait`] (or until the watcher restored it); true if cancelled meanwhile.
    async fn pull_failed(
        &self,
        error: &PullError,
        failures: &mut u32,
        cancel: &CancellationToken,
    ) -> bool {
        *failures = failures.saturating_add(1);
        let wait = growing_wait(*failures);
        self.metrics.pull_errors.inc();
        tracing::warn!(error = %crate::error_chain(error), failures = *failures, retry_in = ?wait, "pull failed");
        let restored = self.signals.restored.notified();
        if error.consumer_gone() {
            self.signals.check.notify_one();
        }
        tokio::select! {
            () = cancel.cancelled() => true,
            () = tokio::time::sleep(wait) => false,
            () = restored => false,
        }
    }

    /// Hands every message of a pull to the pipeline; the pull ends when full, expired or cut by
    /// its byte limit. `None` once the deliveries are abandoned.
    async fn read_to_end(
        &self,
        pull: &mut Pull<'_>,
        cancel: &CancellationToken,
        failures: &mut u32,
    ) -> Option<Read> {
        let mut read = Read {
            delivered: 0,
            bytes: 0,
            handed_on: 0,
            failed: false,
        };
        loop {
            let next = tokio::select! {
                biased;
                () = self.unsettled.abandoned.cancelled() => {
                    self.hand_back(&mut pull.request).await;
                    return None;
                }
                next = pull.request.next() => next,
            };
            match next {
                None => {
                    tracing::debug!(
                        delivered = read.delivered,
                        bytes = read.bytes,
                        handed_on = read.handed_on,
                        "pull read"
                    );
                    return Some(read);
                }
                Some(Ok(message)) => {
                    *failures = 0;
                    read.delivered += 1;
                    read.bytes += message.length;
                    if self.handle(message, &mut pull.room).await {
                        read.handed_on += 1;
                    }
                }
                Some(Err(e)) => {
                    self.pull_failed(&e, failures, cancel).await;
                    read.failed = true;
                    return Some(read);
                }
            }
        }
    }

    /// Naks what the client already holds of a pull (never waits for more).
    async fn hand_back(&self, request: &mut Request) {
        let mut naked = 0;
        while let Some(message) = request.buffered() {
            nak_now(&message, &self.settler).await;
            naked += 1;
        }
        if naked > 0 {
            tracing::info!(naked, "handed back buffered deliveries");
        }
    }

    /// Decodes one message and hands it on in the room its pull reserved (true), or settles it as a
    /// dead letter. A rejected message's payload is freed here: its letter keeps a bounded copy.
    async fn handle(
        &self,
        mut message: jetstream::Message,
        room: &mut mpsc::PermitIterator<'_, Item>,
    ) -> bool {
        let received_at = Instant::now();
        self.metrics.messages_received.inc();
        let (delivered, stream_sequence, arrival) = message
            .info()
            .map(|i| {
                let arrival = i.published.timestamp_micros();
                (i.delivered, i.stream_sequence, Some(arrival))
            })
            .unwrap_or((1, 0, None));
        let now = chrono::Utc::now().timestamp_micros();
        let decoded = score::clock::decode_arrived(&message.payload, self.limits, arrival, now)
            .map(|(update, clamped)| self.clamped(update, clamped));
        if decoded.is_ok() {
            // The payload is a slice of the client's read buffer, which it shares with the messages
            // read with it: a small accepted message held until its flush is written would keep a
            // buffer grown for a large one alive. Its own copy (at most max_payload_bytes) frees it.
            message.message.payload = Bytes::copy_from_slice(&message.message.payload);
        }
        let held = self.unsettled.hold(&message);
        let receipt = JsReceipt {
            message,
            received_at,
            delivered,
            stream_sequence,
            deadletters: self.deadletters.clone(),
            confirm_acks: self.confirm_acks,
            held: Mutex::new(Some(held)),
        };
        match decoded {
            Ok(update) => match room.next() {
                Some(permit) => {
                    permit.send((update, receipt));
                    true
                }
                // A pull never delivers more than it asked for (`batch`); if one did, the surplus
                // is handed back rather than held without room.
                None => {
                    nak_now(&receipt.message, &self.settler).await;
                    false
                }
            },
            Err(rejection) => {
                self.settler
                    .settle(&receipt, Attempt::Rejected(&rejection))
                    .await;
                false
            }
        }
    }

    /// Counts and logs an event written at its arrival's bound instead of its `occurred_at` (a refused
    /// one is counted with its dead letter, [`Metrics::dead_lettered`]).
    fn clamped(&self, update: ScoreUpdate, clamped: Option<Clamped>) -> ScoreUpdate {
        if let Some(clamped) = clamped {
            self.metrics
                .events_clock
                .with_label_values(&["clamped"])
                .inc();
            tracing::warn!(event_id = %update.event_id, leaderboard = %update.leaderboard_id,
                profile = %update.profile_id, "{clamped} (validation.max_ahead_of_arrival)");
        }
        update
    }
}

/// Lets a delivery go unsettled ([`Attempt::HandedBack`]: redeliver now, to any replica).
async fn nak_now(message: &jetstream::Message, settler: &Settler) {
    let kind = receipt::ack_kind(&settler.decide(Attempt::HandedBack, 1));
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %crate::error_chain(&*e), "cannot nak a delivery");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_of_accepted_messages_is_never_cut_by_bytes_and_a_burst_of_large_ones_is() {
        // Defaults: 100 messages of at most 64 KiB (+ 4 KiB of headers and subjects) = 6.8 MiB.
        assert_eq!(pull_max_bytes(100, 65_536), 100 * 69_632);
        // Messages near the server's max_payload (1 MiB): six per pull, not a hundred.
        assert_eq!(pull_max_bytes(100, 65_536) / (1024 * 1024 + 512), 6);
        assert_eq!(pull_max_bytes(usize::MAX, 65_536), usize::MAX);
    }
}
