//! The read side: a typed client over the tables the worker writes, for the services that read them
//! (the gateway's leaderboard and eligibility endpoints) and for `score-worker query`. It opens its
//! session like the writer ([`crate::store::connect`]: nodes, TLS, `scylla.consistency`, by default
//! `LOCAL_QUORUM`), and its errors are classified by the writer's one classifier
//! ([`crate::store::error`]).
//!
//! - [`leaderboard`]: top N merging the buckets, a page after a (score, profile), a profile's rank;
//! - [`profile`]: a profile's scores on every leaderboard, look-up by wallet, history by time range;
//! - [`eligibility`]: `eligibility(wallet, leaderboard, min_score)` with the read-through cache.
//!
//! Operators' writes (get, upsert, delete of one score) go through the write protocol:
//! [`crate::store::repair`].

pub mod eligibility;
pub mod leaderboard;
pub mod profile;
mod statements;

use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;

use crate::config::ScyllaConfig;
use crate::metrics::Metrics;
use crate::pipeline::Class;
use crate::store::StoreError;
use statements::Statements;

pub use eligibility::{CacheResult, Eligibility};
pub use leaderboard::{Cursor, Entry, Page, RankBand};
pub use profile::{HistoryCursor, HistoryEvent, HistoryPage, ProfileScore};

/// How long an eligibility entry written by [`Reader::eligibility`] lives: the table's default.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// A read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The database refused or lost a request, or its rows did not decode.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Preparing the read statements failed: usually a schema older than this build.
    #[error(
        "preparing read statements failed (is the schema applied? run `score-worker migrate`): {0}"
    )]
    Prepare(#[source] StoreError),
    /// An argument the read cannot use.
    #[error("{0}")]
    Argument(String),
}

impl ReadError {
    /// Worth retrying? The writer's classification for database errors; a bad argument is permanent.
    pub fn class(&self) -> Class {
        match self {
            ReadError::Store(e) | ReadError::Prepare(e) => e.kind.class(),
            ReadError::Argument(_) => Class::Permanent,
        }
    }
}

/// The read client. Cheap to share behind an `Arc`; every method is one or a few requests.
pub struct Reader {
    session: Arc<Session>,
    buckets: i32,
    statements: Statements,
    metrics: Arc<Metrics>,
    cache_ttl: Duration,
}

impl Reader {
    /// Prepares the read statements against `config.keyspace`; `config.leaderboard_buckets` must be
    /// the count the writers use (`score-worker migrate` records it; [`crate::schema::check_buckets`]).
    pub async fn new(
        session: Arc<Session>,
        config: &ScyllaConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ReadError> {
        let statements = Statements::prepare(&session, &config.keyspace)
            .await
            .map_err(ReadError::Prepare)?;
        Ok(Self {
            session,
            buckets: config.leaderboard_buckets.max(1),
            statements,
            metrics,
            cache_ttl: CACHE_TTL,
        })
    }

    /// The TTL of the eligibility entries this reader writes (default [`CACHE_TTL`]).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }
}

/// A query's rows that do not decode.
fn decode<E: std::error::Error + Send + Sync + 'static>(
    statement: &'static str,
) -> impl Fn(E) -> StoreError {
    move |e| StoreError::decode(statement, e)
}

/// A driver error of `statement`, classified.
fn failed(statement: &'static str) -> impl Fn(scylla::errors::ExecutionError) -> StoreError {
    move |e| StoreError::new(statement, e)
}
