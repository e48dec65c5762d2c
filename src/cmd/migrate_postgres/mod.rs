//! `score-worker migrate-postgres`: copies today's scores from PostgreSQL into the score tables,
//! through the worker's own writer ([`ScyllaStore`], the leaderboard protocol, flushes of
//! `batch.max_scores` coalesced keys, `retry.*`), with `USING TIMESTAMP` = the row's `updated_at`. It may
//! run while workers are live: a score that arrived through NATS with a newer event time wins, cell by
//! cell, and the migration never overwrites it. History rows are not written (a row is a current
//! score, not an event).
//!
//! Every row is validated with the wire contract's rules ([`crate::score::validate`]); invalid rows are
//! counted by reason, with examples, and skipped. `--dry-run` reads and validates everything and
//! writes nothing (not even a checkpoint). Progress: a bar on a terminal, a log line every few seconds
//! otherwise. With `--checkpoint FILE` an interrupted run continues after the last chunk it wrote.
//!
//! The source is only read: the census and the cursor run in one `READ ONLY` transaction (repeatable
//! read, so both see one snapshot), and a `--query` that would write (a function with side effects,
//! say) fails instead. The connection is TLS by default outside loopback ([`tls`]); `--chunk` is
//! bounded ([`MAX_CHUNK`]), since a chunk is held in memory.

mod checkpoint;
mod report;
mod source;
pub mod tls;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};

use super::progress::Progress;
use super::CmdError;
use crate::batcher::Batcher;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::Store;
use crate::retry::run_with_retries;
use crate::score::{self, Fields, ScoreUpdate};
use crate::store::{self, ScyllaStore, StoreError};
use checkpoint::Checkpoint;
pub use checkpoint::CheckpointError;
pub use report::Report;
use source::Relation;

/// The most rows one cursor fetch (and one chunk in memory) may hold.
pub const MAX_CHUNK: u32 = 100_000;

/// `migrate-postgres` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL connection string (`host=… port=… user=… dbname=… sslmode=… sslrootcert=…` or
    /// `postgresql://…`).
    #[arg(long, env = "SCORE_WORKER_PG_URL", hide_env_values = true)]
    pub source: String,
    /// TLS: disable, prefer, require, verify-ca or verify-full. Default: verify-full with --sslrootcert,
    /// else require, except to loopback (prefer). Also `sslmode=` in the connection string.
    #[arg(long, env = "PGSSLMODE")]
    pub sslmode: Option<String>,
    /// The CA certificates (PEM) to verify the server with, or `system`. Also `sslrootcert=`.
    #[arg(long, env = "PGSSLROOTCERT")]
    pub sslrootcert: Option<String>,
    /// A table (or `schema.table`) with the columns profile_id, wallet_address, leaderboard_id, score,
    /// updated_at.
    #[arg(long, conflicts_with = "query", required_unless_present = "query")]
    pub table: Option<String>,
    /// A query returning those columns (by name).
    #[arg(long)]
    pub query: Option<String>,
    /// Read and validate everything, print the report, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Resume from and record progress in this file.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Rows per cursor fetch (and per checkpoint), 1 to 100000.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=MAX_CHUNK as i64))]
    pub chunk: u32,
}

/// A migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("PostgreSQL")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("connecting to PostgreSQL (sslmode={mode})")]
    Connect {
        mode: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("--table `{0}` is not a table name ([A-Za-z0-9_], optionally schema.table)")]
    Table(String),
    #[error("checkpoint {}", path.display())]
    Checkpoint {
        path: PathBuf,
        #[source]
        problem: CheckpointError,
    },
    #[error(transparent)]
    Database(Box<store::ConnectError>),
    #[error("writing scores")]
    Write(#[source] Box<StoreError>),
}

impl From<StoreError> for MigrateError {
    fn from(e: StoreError) -> Self {
        MigrateError::Write(Box::new(e))
    }
}

impl From<store::ConnectError> for MigrateError {
    fn from(e: store::ConnectError) -> Self {
        MigrateError::Database(Box::new(e))
    }
}

pub async fn run(config: &Config, args: Args) -> Result<ExitCode, CmdError> {
    let relation = match (&args.table, &args.query) {
        (Some(t), _) => Relation::Table(t.clone()),
        (None, Some(q)) => Relation::Query(q.clone()),
        (None, None) => unreachable!("clap requires --table or --query"),
    };
    let (report, transport) = migrate(config, &args, &relation).await?;
    if args.dry_run {
        println!("dry run: nothing written\n{report}");
    } else {
        println!("migration complete\n{report}");
    }
    println!("source:        {transport}");
    Ok(ExitCode::SUCCESS)
}

/// Runs the migration (see the module doc) and returns its report and how the source was reached.
pub async fn migrate(
    config: &Config,
    args: &Args,
    relation: &Relation,
) -> Result<(Report, tls::Transport), MigrateError> {
    let sql = relation.sql()?;
    let settings =
        tls::Settings::new(&args.source, args.sslmode.clone(), args.sslrootcert.clone())?;
    let (mut pg, transport) = source::connect(&settings).await?;
    tracing::info!(%transport, "PostgreSQL connected");
    let tx = pg
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await?;
    let (total, leaderboards, profiles) = source::census(&tx, &sql).await?;
    let mut checkpoint = match (&args.checkpoint, args.dry_run) {
        (Some(path), false) => Checkpoint::load(path, &sql)?,
        _ => Checkpoint::new(sql.clone()),
    };
    let store = if args.dry_run {
        None
    } else {
        let session = Arc::new(store::connect(&config.scylla).await?);
        Some(ScyllaStore::new(session, &config.scylla, Arc::new(Metrics::new())).await?)
    };
    let what = if args.dry_run {
        "migrate-postgres --dry-run"
    } else {
        "migrate-postgres"
    };
    let mut progress = Progress::new(what, "rows", total, std::io::stderr().is_terminal());
    progress.set_position(checkpoint.report.rows_read);
    let limits = config.limits();
    let started = Instant::now();
    let resumed_at = checkpoint.report.rows_read;

    let portal = source::open(&tx, &sql, checkpoint.after.as_ref()).await?;
    loop {
        let rows = source::fetch(&tx, &portal, args.chunk).await?;
        let Some(last) = rows.last() else { break };
        let last = last.key();
        let report = &mut checkpoint.report;
        let updates = validate(&rows, limits, report);
        let flushes = flushes(config, updates);
        report.writes += flushes.iter().map(Vec::len).sum::<usize>() as u64;
        if let Some(store) = &store {
            write(config, store, flushes).await?;
        }
        checkpoint.after = Some(last);
        if let (Some(path), false) = (&args.checkpoint, args.dry_run) {
            checkpoint.save(path)?;
        }
        progress.inc_by(rows.len() as u64);
    }
    tx.commit().await?;
    progress.finish();
    checkpoint.report.leaderboards = leaderboards;
    checkpoint.report.profiles = profiles;
    checkpoint.complete = true;
    if let (Some(path), false) = (&args.checkpoint, args.dry_run) {
        checkpoint.save(path)?;
    }
    let read = checkpoint.report.rows_read - resumed_at;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        rows = read,
        seconds = secs,
        rows_per_second = read as f64 / secs.max(1e-9),
        dry_run = args.dry_run,
        "migrate-postgres finished"
    );
    Ok((checkpoint.report, transport))
}

/// The rows of a chunk that meet the contract, as updates; each counted in `report`, a rejected one
/// with its reason.
fn validate(
    rows: &[source::SourceRow],
    limits: score::Limits,
    report: &mut Report,
) -> Vec<ScoreUpdate> {
    let now = chrono::Utc::now().timestamp_micros();
    let mut updates = Vec::with_capacity(rows.len());
    for row in rows {
        report.rows_read += 1;
        match score::validate(&fields(row), limits, now) {
            Ok(update) => {
                report.valid += 1;
                updates.push(update);
            }
            Err(why) => report.reject(row, &why),
        }
    }
    updates
}

/// A row as the contract's fields (every column as text; `event_id` is not stored).
fn fields(row: &source::SourceRow) -> Fields {
    Fields {
        event_id: Some("postgres".into()),
        profile_id: row.profile_id.clone(),
        wallet_address: row.wallet_address.clone(),
        leaderboard_id: row.leaderboard_id.clone(),
        score: Fields::score_text(row.score.as_deref()),
        occurred_at: Fields::time_text(row.updated_at_micros),
    }
}

/// The worker's batcher: flushes of at most `batch.max_scores` keys, each key's newest row.
fn flushes(config: &Config, updates: Vec<ScoreUpdate>) -> Vec<Vec<ScoreUpdate>> {
    let mut batcher = Batcher::new(config.batch.max_scores, config.batch.linger);
    let now = tokio::time::Instant::now();
    let mut out = Vec::new();
    for u in updates {
        if let Some(flush) = batcher.push(u, (), false, now) {
            out.push(flush.latest);
        }
    }
    if !batcher.is_empty() {
        out.push(batcher.take().latest);
    }
    out
}

/// Writes the flushes, `batch.max_inflight` at once, each with the worker's retry schedule.
async fn write(
    config: &Config,
    store: &ScyllaStore,
    flushes: Vec<Vec<ScoreUpdate>>,
) -> Result<(), MigrateError> {
    futures::stream::iter(flushes)
        .map(|latest| async move {
            run_with_retries(
                &config.retry,
                || store.write(&latest, &[], &[]),
                StoreError::is_retryable,
                |e, delay| tracing::warn!(error = %crate::error_chain(e), ?delay, "write failed; retrying"),
            )
            .await
        })
        .buffer_unordered(config.batch.max_inflight.max(1))
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cmd::{Cli, Command};

    fn chunk(value: &str) -> Result<u32, clap::Error> {
        let cli = Cli::try_parse_from([
            "score-worker",
            "migrate-postgres",
            "--source",
            "host=127.0.0.1",
            "--table",
            "t",
            "--chunk",
            value,
        ])?;
        match cli.command {
            Command::MigratePostgres(args) => Ok(args.chunk),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chunk_is_bounded_with_a_clear_error() {
        assert_eq!(chunk("1").unwrap(), 1);
        assert_eq!(chunk("100000").unwrap(), super::MAX_CHUNK);
        for bad in ["0", "100001", "3000000000"] {
            let err = chunk(bad).unwrap_err().to_string();
            assert!(err.contains("--chunk"), "{bad}: {err}");
        }
    }
}
