//! The read side: a typed client over the tables the worker writes, for the services that read them
//! (the gateway's leaderboard and eligibility endpoints) and for `score-worker query`. It opens its
//! session like the writer ([`crate::store::connect`]: nodes, TLS, `scylla.consistency`, by default
//! `LOCAL_QUORUM`), and its errors are classified by the writer's one classifier
//! ([`crate::store::error`]).
//!
//! - [`leaderboard`]: top N merging the buckets, a page after a (score, profile);
//! - [`rank`]: a profile's rank, within a budget of rows counted;
//! - [`profile`]: a profile's scores on every leaderboard, look-up by wallet, history by time range;
//! - [`eligibility`]: `eligibility(wallet, leaderboard, min_score)` with the read-through cache.
//!
//! Sizes come from callers (a gateway passes its client's `limit`): a read returns at most
//! [`MAX_ROWS`] rows and refuses more with [`ReadError::TooMany`] before allocating anything.
//!
//! Operators' writes (get, upsert, delete of one score) go through the write protocol:
//! [`crate::store::repair`].

pub mod eligibility;
pub mod leaderboard;
pub mod profile;
pub mod rank;
mod statements;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scylla::client::session::Session;

use crate::config::ScyllaConfig;
use crate::metrics::{Metrics, ARGUMENT};
use crate::pipeline::Class;
use crate::store::StoreError;
use statements::Statements;

pub use eligibility::{CacheResult, Eligibility};
pub use leaderboard::{Cursor, Entry, Page};
pub use profile::{HistoryCursor, HistoryEvent, HistoryPage, ProfileScore};
pub use rank::{Rank, RankBand, RANK_BUDGET};

/// How long an eligibility entry written by [`Reader::eligibility`] lives: the table's default.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// The most rows one read (a top N, a page, a page of history) returns; page with the cursor for more.
pub const MAX_ROWS: usize = 10_000;

/// A read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The database refused or lost a request, or its rows did not decode.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Preparing the read statements failed: usually a schema older than this build.
    #[error(
        "preparing read statements failed (is the schema applied? run `score-worker migrate`)"
    )]
    Prepare(#[source] StoreError),
    /// An argument the read cannot use.
    #[error("{0}")]
    Argument(String),
    /// More rows asked of one read than [`MAX_ROWS`].
    #[error("{what} of {asked} rows is more than one read returns ({max}); page with the cursor")]
    TooMany {
        what: &'static str,
        asked: usize,
        max: usize,
    },
}

impl ReadError {
    /// Worth retrying? The writer's classification for database errors; a bad argument is permanent.
    pub fn class(&self) -> Class {
        match self {
            ReadError::Store(e) | ReadError::Prepare(e) => e.kind.class(),
            ReadError::Argument(_) | ReadError::TooMany { .. } => Class::Permanent,
        }
    }
}

/// An error's `kind` label: the classifier's kind of a database error, or `argument`.
trait Kind {
    fn kind(&self) -> &'static str;
}

impl Kind for StoreError {
    fn kind(&self) -> &'static str {
        self.kind.as_str()
    }
}

impl Kind for ReadError {
    fn kind(&self) -> &'static str {
        match self {
            ReadError::Store(e) | ReadError::Prepare(e) => e.kind(),
            ReadError::Argument(_) | ReadError::TooMany { .. } => ARGUMENT,
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
    rank_budget: u64,
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
            rank_budget: RANK_BUDGET,
        })
    }

    /// Runs one call of the read API, timed (`score_worker_read_duration_seconds{operation}`) and,
    /// if it fails, counted by kind (`score_worker_read_errors_total{operation, kind}`).
    async fn observed<T, E: Kind>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let result = call.await;
        self.metrics
            .read_duration
            .with_label_values(&[operation])
            .observe(start.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics
                .read_errors
                .with_label_values(&[operation, e.kind()])
                .inc();
        }
        result
    }

    /// The TTL of the eligibility entries this reader writes (default [`CACHE_TTL`]).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }
}

/// `n` rows asked of one read, checked: at least one, at most [`MAX_ROWS`].
// The error is the public one every read returns (its size is the database variants'); this runs
// once per read, before any request.
#[allow(clippy::result_large_err)]
fn rows_wanted(what: &'static str, n: usize) -> Result<usize, ReadError> {
    match n {
        0 => Err(ReadError::Argument(format!(
            "{what} holds at least one row"
        ))),
        n if n > MAX_ROWS => Err(ReadError::TooMany {
            what,
            asked: n,
            max: MAX_ROWS,
        }),
        n => Ok(n),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_asks_for_one_to_max_rows() {
        assert_eq!(rows_wanted("a page", 1).unwrap(), 1);
        assert_eq!(rows_wanted("a page", MAX_ROWS).unwrap(), MAX_ROWS);
        assert!(matches!(
            rows_wanted("a page", 0),
            Err(ReadError::Argument(_))
        ));
        let too_many = rows_wanted("a page", usize::MAX).unwrap_err();
        assert!(matches!(
            too_many,
            ReadError::TooMany {
                asked: usize::MAX,
                max: MAX_ROWS,
                ..
            }
        ));
        assert_eq!(too_many.class(), Class::Permanent);
        assert_eq!(
            too_many.to_string(),
            format!(
                "a page of {} rows is more than one read returns (10000); page with the cursor",
                usize::MAX
            )
        );
    }
}
