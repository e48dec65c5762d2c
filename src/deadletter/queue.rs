//! The dead-letter queue: letters are stored by a task of their own, so a slow or unavailable
//! dead-letter stream never holds up the pull loop or a flush.
//!
//! Two inputs:
//! - **held**: letters of deliveries the worker holds (a rejected payload, a write the database
//!   refused, a last delivery not written), in a bounded queue. The original stays held — kept alive
//!   by `+WPI` (`consumer::Unsettled`), so JetStream neither redelivers it nor counts a delivery — until
//!   its letter is stored; only then is it terminated ([`Settle::stored`]). When the queue is full the
//!   caller gets [`QueueFull`] and gives the message back instead (nak with `retry.nak_delay`; counted
//!   in `score_worker_deadletters_deferred_total`): it comes back later, when there may be room.
//! - **advised**: messages the server stopped delivering (max-deliveries advisories): a stream
//!   sequence each, unbounded (a few bytes a message, so a long outage loses none). The original is read
//!   from the score stream when its turn comes (one that fails validation keeps its own reason, as
//!   [`decide`](crate::pipeline::settle::decide) gives a rejected message) and, on a work-queue
//!   stream, deleted once its letter is stored, so nothing is stranded there until `max_age`.
//!
//! Each letter is published until the stream takes it (waits of 250 ms doubling to 10 s), at most
//! [`CONCURRENCY`] at once. Nothing is acknowledged, terminated or deleted before its letter is stored.
//! While publishing fails, `/readyz` says why and `score_worker_deadletters_pending` shows what waits.

use std::sync::Arc;

use async_nats::jetstream;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::{DeadLetters, Letter, Original};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::retry::growing_wait;
use crate::score::{self, Limits, RejectReason};

/// Letters published (or retried) at once.
pub const CONCURRENCY: usize = 16;

/// What becomes of a held original once its letter is stored.
pub trait Settle: Send + 'static {
    /// The letter is stored: terminate the original.
    fn stored(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// A message the server stopped delivering, to be dead-lettered from the stream.
#[derive(Debug, Clone)]
pub struct Advised {
    pub stream_sequence: u64,
    pub reason: RejectReason,
    pub detail: String,
}

/// The queue of held letters is full.
#[derive(Debug, thiserror::Error)]
#[error("the dead-letter queue is full ({capacity} letters wait to be stored)")]
pub struct QueueFull {
    pub capacity: usize,
}

struct Held {
    letter: Letter,
    original: Box<dyn Settle>,
}

/// Where advised originals are read, and whether they are deleted once dead-lettered.
pub struct Source {
    pub js: jetstream::Context,
    pub stream: String,
    /// A work-queue stream: a message the consumer gave up on stays until `max_age` unless deleted.
    pub delete: bool,
    /// The decoder's limits: an advised message that fails validation (given back while the queue
    /// was full) is dead-lettered with its own reason, as on the consumer's path.
    pub limits: Limits,
}

/// The handle the consumer, its receipts and the advisory watcher put letters in.
#[derive(Clone)]
pub struct DeadLetterQueue {
    held: mpsc::Sender<Held>,
    advised: mpsc::UnboundedSender<Advised>,
    deadletters: Arc<DeadLetters>,
    metrics: Arc<Metrics>,
    capacity: usize,
}

/// The task that stores the letters; ends once every handle is gone and everything is stored.
pub struct Runner {
    held: mpsc::Receiver<Held>,
    advised: mpsc::UnboundedReceiver<Advised>,
    ctx: Arc<Ctx>,
}

struct Ctx {
    deadletters: Arc<DeadLetters>,
    source: Source,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl DeadLetterQueue {
    /// A queue of `capacity` held letters, and the task that stores them.
    pub fn new(
        deadletters: Arc<DeadLetters>,
        source: Source,
        capacity: usize,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> (Self, Runner) {
        let capacity = capacity.max(1);
        let (held_tx, held_rx) = mpsc::channel(capacity);
        let (advised_tx, advised_rx) = mpsc::unbounded_channel();
        let queue = Self {
            held: held_tx,
            advised: advised_tx,
            deadletters: deadletters.clone(),
            metrics: metrics.clone(),
            capacity,
        };
        let runner = Runner {
            held: held_rx,
            advised: advised_rx,
            ctx: Arc::new(Ctx {
                deadletters,
                source,
                health,
                metrics,
            }),
        };
        (queue, runner)
    }

    /// The letter for `original` (keeping what a letter keeps of its payload).
    pub fn letter(&self, original: Original<'_>, reason: RejectReason, detail: &str) -> Letter {
        self.deadletters.letter(original, reason, detail)
    }

    /// Queues a held original's letter; [`QueueFull`] when there is no room (give the message back).
    pub fn try_hold(&self, letter: Letter, original: Box<dyn Settle>) -> Result<(), QueueFull> {
        match self.held.try_send(Held { letter, original }) {
            Ok(()) => {
                self.metrics.deadletters_pending.inc();
                Ok(())
            }
            Err(_) => {
                self.metrics.deadletters_deferred.inc();
                Err(QueueFull {
                    capacity: self.capacity,
                })
            }
        }
    }

    /// Queues a message the server stopped delivering.
    pub fn advised(&self, advised: Advised) {
        if self.advised.send(advised).is_ok() {
            self.metrics.deadletters_pending.inc();
        }
    }
}

impl Runner {
    /// Stores letters, [`CONCURRENCY`] at once, until every handle is dropped and nothing waits.
    pub async fn run(mut self) {
        let mut inflight: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
        let (mut held_open, mut advised_open) = (true, true);
        loop {
            let room = inflight.len() < CONCURRENCY;
            tokio::select! {
                biased;
                Some(()) = inflight.next(), if !inflight.is_empty() => {}
                held = self.held.recv(), if room && held_open => match held {
                    Some(held) => inflight.push(store_held(self.ctx.clone(), held).boxed()),
                    None => held_open = false,
                },
                advised = self.advised.recv(), if room && advised_open => match advised {
                    Some(advised) => inflight.push(store_advised(self.ctx.clone(), advised).boxed()),
                    None => advised_open = false,
                },
                else => return,
            }
        }
    }
}

async fn store_held(ctx: Arc<Ctx>, held: Held) {
    publish_until_stored(&ctx, &held.letter).await;
    held.original.stored().await;
    ctx.metrics.deadletters_pending.dec();
}

async fn store_advised(ctx: Arc<Ctx>, advised: Advised) {
    if let Some(letter) = read_advised(&ctx, &advised).await {
        publish_until_stored(&ctx, &letter).await;
        if ctx.source.delete {
            delete_advised(&ctx, advised.stream_sequence).await;
        }
    }
    ctx.metrics.deadletters_pending.dec();
}

/// Publishes until the stream takes the letter.
async fn publish_until_stored(ctx: &Ctx, letter: &Letter) {
    let mut failures = 0u32;
    loop {
        match ctx.deadletters.publish(letter).await {
            Ok(()) => {
                ctx.health.deadletters_state(None);
                return;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                ctx.metrics.deadletter_failures.inc();
                let wait = growing_wait(failures);
                if failures == 1 {
                    tracing::warn!(error = %crate::error_chain(&e), stream_sequence = letter.stream_sequence, retry_in = ?wait,
                        "cannot store a dead letter; its original is held and it is retried until the stream takes it");
                }
                ctx.health
                    .deadletters_state(Some(crate::error_chain(&e).to_string()));
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The advised message's letter; `None` when it is no longer in the stream (settled meanwhile).
async fn read_advised(ctx: &Ctx, advised: &Advised) -> Option<Letter> {
    use jetstream::stream::LastRawMessageErrorKind as Kind;
    let mut failures = 0u32;
    loop {
        let read = match ctx.source.js.get_stream_no_info(&ctx.source.stream).await {
            Ok(stream) => stream
                .get_raw_message(advised.stream_sequence)
                .await
                .map_err(|e| {
                    (
                        matches!(e.kind(), Kind::NoMessageFound),
                        crate::error_chain(&e).to_string(),
                    )
                }),
            Err(e) => Err((false, crate::error_chain(&e).to_string())),
        };
        match read {
            Ok(raw) => {
                let msg_id = raw
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.as_str().to_string());
                let now = chrono::Utc::now().timestamp_micros();
                let rejection = score::decode(&raw.payload, ctx.source.limits, now).err();
                let (reason, detail) = match &rejection {
                    Some(r) => (r.reason, r.detail.as_str()),
                    None => (advised.reason, advised.detail.as_str()),
                };
                return Some(ctx.deadletters.letter(
                    Original {
                        subject: raw.subject.as_str(),
                        stream_sequence: advised.stream_sequence,
                        msg_id: msg_id.as_deref(),
                        payload: &raw.payload,
                    },
                    reason,
                    detail,
                ));
            }
            Err((true, _)) => return None,
            Err((false, error)) => {
                failures = failures.saturating_add(1);
                let wait = growing_wait(failures);
                if failures == 1 {
                    tracing::warn!(%error, stream_sequence = advised.stream_sequence, retry_in = ?wait,
                        "cannot read a message the server stopped delivering; retrying");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Deletes a dead-lettered message the consumer gave up on from the work-queue stream (as `+TERM`
/// would have). A few attempts: if it stays, it is already dead-lettered, and `max_age` removes it.
async fn delete_advised(ctx: &Ctx, sequence: u64) {
    const ATTEMPTS: u32 = 8;
    for attempt in 1..=ATTEMPTS {
        let deleted = match ctx.source.js.get_stream_no_info(&ctx.source.stream).await {
            Ok(stream) => match stream.delete_message(sequence).await {
                Ok(_) => Ok(()),
                Err(e) => match e.kind() {
                    jetstream::stream::DeleteMessageErrorKind::JetStream(js)
                        if js.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND =>
                    {
                        Ok(())
                    }
                    _ => Err(crate::error_chain(&e).to_string()),
                },
            },
            Err(e) => Err(crate::error_chain(&e).to_string()),
        };
        match deleted {
            Ok(()) => return,
            Err(error) if attempt == ATTEMPTS => {
                tracing::error!(%error, stream_sequence = sequence, "a dead-lettered message stays in the score stream until max_age");
            }
            Err(_) => tokio::time::sleep(growing_wait(attempt)).await,
        }
    }
}
