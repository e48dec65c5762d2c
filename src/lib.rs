//! score-worker: consumes score updates from NATS JetStream, validates them, coalesces them into
//! flushes of at most `batch.max_scores` scores, writes them to ScyllaDB, and acknowledges each message
//! only once every row it produces is durable.
//!
//! # Data flow
//!
//! ```text
//!  NATS SCORES stream ──pull──▶ consumer ──decode──▶ (bad) ──┐
//!                                   │ (ScoreUpdate, JsReceipt)│
//!                                   ▼ bounded channel         │
//!             pipeline: batcher (50 / linger) → retry(Store::write)
//!                        still failing: Store::probe fails → hold; passes → split
//!                                   │                         │
//!                                   ▼                         ▼
//!                        settle::decide(attempt, deliveries) → Outcome
//!                          Ack │ Retry{delay} (nak) │ DeadLetter{reason} (publish, +TERM)
//!                        (every settlement: written, rejected, failed, abandoned, letter not
//!                         queued, handed back on shutdown)
//!                                   ▲
//!  max-deliveries advisory ─────────┘ (advisory)
//!
//!  store: scores · scores_by_profile · score_history · eligibility_cache
//! ```
//!
//! # Layout
//! Running the worker:
//! - [`app`]: wiring; `App::build` connects, `App::start` spawns consumer, pipeline, dead-letter
//!   queue, watchers, probes and HTTP and returns a `Running` handle whose `stop` drains within
//!   `shutdown.timeout` and hands back what is left.
//! - [`config`]: typed settings, layered load (defaults → file → env), validation per section.
//! - [`telemetry`]: tracing subscriber (JSON or text).
//! - [`shutdown`]: the signal future the binary passes to [`app::App::run_until_stopped`] (start, then
//!   stop when it resolves).
//!
//! The message path, in order:
//! - [`score`]: the wire contract: `ScoreUpdate`, decode + validate from bytes, the tie order; event time
//!   bounded by the message's arrival at JetStream (`score::clock`).
//! - [`nats`]: NATS connection, JetStream streams and consumer: created where missing, never changed by
//!   `run` (drift reported), changed only by `nats apply`.
//! - [`consumer`]: the pull loop (pulls bounded in messages and bytes); turns messages into
//!   `(ScoreUpdate, JsReceipt)`; its watcher restores a deleted or changed consumer.
//! - [`batcher`]: pure accumulator: flush at `max_scores` / linger, coalescing by key.
//! - [`pipeline`]: batch → write with retries → hold or split what still fails → settle; owns the
//!   ports ([`pipeline::Store`], [`pipeline::Receipt`]) and the one decision of a message's fate
//!   ([`pipeline::settle`]).
//! - [`retry`]: the backoff schedule.
//! - [`store`]: Scylla session, prepared statements, the leaderboard write protocol, the write probe,
//!   and the one classifier of database errors.
//! - [`deadletter`]: dead letters (a bounded copy of the payload) and the queue and task that store
//!   them, retried until the dead-letter stream takes them, off the pull loop.
//! - [`advisory`]: dead-letters messages the server stopped delivering.
//!
//! Around it:
//! - [`schema`]: applying and checking the versioned CQL in `schema/`, the writers' compatibility window
//!   and the consistency a keyspace's datacenters allow.
//! - [`error_chain()`]: an error with its causes, for log lines and the command line.
//! - [`metrics`]: every metric, in a registry of the worker's own.
//! - [`health`]: readiness state and the periodic probes that feed it.
//! - [`breaker`]: the pull breaker (closed, open, half-open; pinned open while the database takes no
//!   writes or the keyspace refuses this build), made by `app` and shared: the pipeline trips it, the
//!   health probe half-opens it, the consumer obeys it, readiness reads it.
//! - keep-alive: every delivery held anywhere gets `+WPI` every `retry.progress_interval` until it is
//!   settled or handed back (`consumer::Unsettled`).
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`read`]: the typed read client other services link (leaderboards, profiles, history, the
//!   eligibility cache); repairs of one score go through [`store::repair`].
//! - [`cmd`]: the command line and the subcommands other than `run` (`migrate`, `check`, `dlq`,
//!   `nats apply`, `publish-sample`, `query`, `score`, `migrate-postgres`, `rebuild-scores`).
//!
//! Dependencies point one way: `cmd → app → {consumer, pipeline, store, advisory} → {deadletter,
//! batcher, retry, health} → {breaker, metrics, schema, config} → score`; the pipeline knows neither
//! NATS nor the driver.

pub mod advisory;
pub mod app;
pub mod batcher;
pub mod breaker;
pub mod cmd;
pub mod config;
pub mod consumer;
pub mod deadletter;
mod error_chain;
pub mod health;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod pipeline;
pub mod read;
pub mod retry;
pub mod schema;
pub mod score;
pub mod shutdown;
pub mod store;
pub mod telemetry;

pub use error_chain::{error_chain, ErrorChain};
