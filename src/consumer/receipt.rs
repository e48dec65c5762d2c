//! The NATS side of the pipeline's [`Receipt`]: a received JetStream message, held until it is
//! settled (acked, nak'd, or dead-lettered and terminated).

use std::sync::Mutex;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::unsettled::Held;
use crate::deadletter::{DeadLetterQueue, Original, Settle};
use crate::pipeline::{Outcome, Receipt, SettleError};

/// A received JetStream message, kept until the pipeline settles it.
pub struct JsReceipt {
    pub(super) message: jetstream::Message,
    pub(super) received_at: Instant,
    pub(super) delivered: i64,
    pub(super) stream_sequence: u64,
    pub(super) deadletters: DeadLetterQueue,
    /// Wait for the server to confirm an `Ack` (`nats.confirm_acks`).
    pub(super) confirm_acks: bool,
    /// Keeps the delivery alive (`+WPI`) until it is settled; taken then.
    pub(super) held: Mutex<Option<Held>>,
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
            payload: &self.message.payload,
        }
    }

    async fn settle_now(&self, outcome: &Outcome) -> Result<(), SettleError> {
        match outcome {
            Outcome::Ack if self.confirm_acks => {
                self.message.double_ack().await.map_err(settle_error("ack"))
            }
            Outcome::Ack => self.message.ack().await.map_err(settle_error("ack")),
            Outcome::Retry { .. } => self
                .message
                .ack_with(ack_kind(outcome))
                .await
                .map_err(settle_error("nak")),
            // Queued: the dead-letter task stores the letter, then terminates the original, which
            // stays held (its handle goes with the letter) until then.
            Outcome::DeadLetter { reason, detail } => {
                let letter = self.deadletters.letter(self.original(), *reason, detail);
                let terminate = Terminate {
                    message: without_payload(&self.message),
                    _held: self.held.lock().expect("lock").clone(),
                };
                self.deadletters
                    .try_hold(letter, Box::new(terminate))
                    .map_err(|e| settle_error("dead-letter")(Box::new(e)))
            }
        }
    }
}

/// The JetStream acknowledgement that carries out an outcome needing no letter: `+ACK`, or `-NAK`
/// with its delay (none: at once). A dead letter is terminated (`+TERM`) only once stored.
pub(super) fn ack_kind(outcome: &Outcome) -> AckKind {
    match outcome {
        Outcome::Ack => AckKind::Ack,
        Outcome::Retry { delay } if delay.is_zero() => AckKind::Nak(None),
        Outcome::Retry { delay } => AckKind::Nak(Some(*delay)),
        Outcome::DeadLetter { .. } => AckKind::Term,
    }
}

impl Receipt for JsReceipt {
    fn received_at(&self) -> Instant {
        self.received_at
    }

    fn delivered(&self) -> i64 {
        self.delivered
    }

    /// `Ack` → an ack (confirmed by the server with `nats.confirm_acks`); `Retry` → nak with delay;
    /// `DeadLetter` → the letter is queued; once the dead-letter stream stored it, `+TERM` ends the
    /// message whatever `max_deliver` says. A full queue is an error: the settler gives the message
    /// back.
    async fn settle(&self, outcome: &Outcome) -> Result<(), SettleError> {
        let settled = self.settle_now(outcome).await;
        if settled.is_ok() {
            self.held.lock().expect("lock").take();
        }
        settled
    }
}

/// The message to terminate once its letter is stored: its subject and reply subject, no payload
/// (the letter has its own copy; the original's buffer is freed).
fn without_payload(message: &jetstream::Message) -> jetstream::Message {
    jetstream::Message {
        message: async_nats::Message {
            subject: message.subject.clone(),
            reply: message.reply.clone(),
            payload: Bytes::new(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        },
        context: message.context.clone(),
    }
}

/// Terminates a dead-lettered delivery (a confirmed `+TERM`) and lets it go.
struct Terminate {
    message: jetstream::Message,
    _held: Option<Held>,
}

impl Settle for Terminate {
    fn stored(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(e) = self.message.double_ack_with(AckKind::Term).await {
                // Stored, not terminated: NATS redelivers it after ack_wait, and the letter is
                // stored once more (the same Nats-Msg-Id within the duplicate window).
                tracing::warn!(error = %crate::error_chain(&*e), "cannot terminate a dead-lettered message");
            }
        })
    }
}
