//! score-worker: consumes score updates from NATS JetStream, validates them, coalesces them into
//! flushes of at most `batch.max_scores` scores, writes them to ScyllaDB, and acknowledges each message
//! only once every row it produces is durable.
//!
//! # Data flow
//!
//! ```text
//!  NATS SCORES stream ──pull──▶ consumer ──decode──▶ (bad) ─▶ deadletter ─▶ SCORES_DLQ, then ack
//!                                   │ (ScoreUpdate, Receipt)
//!                                   ▼ bounded channel (backpressure)
//!                               pipeline: batcher (50 / linger) → retry(store.write) → ack | nak | dead-letter
//!                                   │
//!                                   ▼
//!                 scores · scores_by_profile · score_history · eligibility_cache
//! ```
//!
//! # Layout
//! - [`app`]: wiring; connects, spawns consumer, pipeline, health and HTTP tasks, drains on shutdown.
//! - [`config`]: typed settings, layered load (defaults → file → env), validation.
//! - [`telemetry`]: tracing subscriber (JSON or text).
//! - [`shutdown`]: the signal future the binary passes to [`app::App::run_until_stopped`].
//! - [`score`]: the wire contract: `ScoreUpdate` and decode + validate from bytes.
//! - [`nats`]: NATS connection, JetStream stream/consumer set-up.
//! - [`consumer`]: the pull loop; turns messages into `(ScoreUpdate, Receipt)` or dead letters.
//! - [`deadletter`]: publishing rejected messages to `scores.deadletter.<reason>`.
//! - [`dlq`]: the `dlq list|replay` subcommand: inspecting dead letters and replaying them.
//! - [`batcher`]: pure accumulator: flush at `max_scores` / linger, coalescing by key.
//! - [`pipeline`]: batch → write with retries → settle receipts; generic over [`store::Store`] and
//!   [`pipeline::Receipt`].
//! - [`retry`]: the backoff schedule.
//! - [`store`]: Scylla session, prepared statements, the leaderboard write protocol, error classification.
//! - [`schema`]: applying and checking the versioned CQL in `schema/`.
//! - [`metrics`]: every metric, in a registry of the worker's own.
//! - [`health`]: readiness state and the periodic probes that feed it.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`cli`]: command-line interface; [`check`] and [`sample`] implement the `check` and
//!   `publish-sample` subcommands.

pub mod app;
pub mod batcher;
pub mod check;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod deadletter;
pub mod dlq;
pub mod health;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod pipeline;
pub mod retry;
pub mod sample;
pub mod schema;
pub mod score;
pub mod shutdown;
pub mod store;
pub mod telemetry;
