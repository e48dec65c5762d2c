//! The command line and its subcommands: `score-worker [--config FILE] <run | migrate [--dry-run] | check
//! | nats apply [--dry-run] | dlq list|replay | publish-sample | health | completions SHELL | query … |
//! score get|set|delete | migrate-postgres | rebuild-scores>`. [`run`] dispatches; each subcommand other than `run` lives in a
//! module of its own here, and `run` is [`crate::app`].

mod check;
mod dlq;
pub mod health;
mod migrate;
pub mod migrate_postgres;
mod nats;
mod progress;
mod query;
mod rebuild;
mod repair;
pub mod sample;

use std::path::PathBuf;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{App, AppError};
use crate::config::Config;
use crate::nats::NatsError;
use crate::schema::SchemaError;
use crate::store::ConnectError;

/// `0.1.0 (revision 1a2b3c4d5e6f)`: the crate version and the git revision it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("SCORE_WORKER_REVISION"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "score-worker",
    version = VERSION,
    about = "NATS JetStream → ScyllaDB score ingestion worker"
)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults (environment variables SCORE_WORKER__SECTION__KEY override both).
    #[arg(long, global = true, env = "SCORE_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume score updates and write them until SIGTERM/SIGINT.
    Run,
    /// Create the keyspace and apply the versioned schema in `schema/`, idempotently.
    Migrate {
        /// Print the statements that would run, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate the configuration and reach NATS and the database; verify stream, consumer and schema.
    Check {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Change the live JetStream streams and consumer (`run` only creates what is missing).
    Nats {
        #[command(subcommand)]
        action: nats::NatsAction,
    },
    /// Inspect or replay dead letters.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Publish realistic score updates as the gateway would, so scores can be seen landing.
    PublishSample {
        /// Number of events.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Distinct profiles the events are spread over.
        #[arg(long, default_value_t = 20)]
        profiles: usize,
        /// Distinct leaderboards.
        #[arg(long, default_value_t = 3)]
        leaderboards: usize,
    },
    /// Read the score tables: leaderboards, profiles, wallets, history, eligibility.
    Query {
        /// JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        query: query::Query,
    },
    /// An operator's repair of one score (get, set, delete), safe while workers run.
    Score {
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: repair::Repair,
    },
    /// Change scylla.leaderboard_buckets: record the new count, then write every key again in its new
    /// bucket (stop the workers with the old count first; see docs/runbooks/score-worker-pulls-paused.md, "Upgrades and bucket changes").
    RebuildScores(rebuild::Args),
    /// Copy scores from PostgreSQL, validated, at their updated_at (a newer score always wins).
    MigratePostgres(migrate_postgres::Args),
    /// Ask the worker on this host (`http.listen`) whether it is ready; exit 0 if so, 1 otherwise
    /// (a container health check that needs no shell).
    Health {
        /// Ask whether the process is alive (`/healthz`) instead of ready (`/readyz`).
        #[arg(long)]
        live: bool,
    },
    /// Print a shell completion script, e.g. `score-worker completions bash > /etc/bash_completion.d/score-worker`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// How a command prints what it found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Lines for people.
    #[default]
    Text,
    /// JSON for programs (`dlq list`: one object per line).
    Json,
}

/// Which dead letters a `dlq` command acts on.
#[derive(Debug, clap::Args)]
pub struct DlqFilter {
    /// Only this reason (malformed_json, missing_field, invalid_value, too_large, future_timestamp, max_deliveries).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters stored since this time: RFC 3339, or an age such as 2h.
    #[arg(long)]
    pub since: Option<String>,
    /// Only dead letters stored before this time: RFC 3339, or an age such as 10m.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Publish dead letters back to their original subjects, then delete them from the dead-letter stream.
    Replay {
        #[command(flatten)]
        filter: DlqFilter,
        /// Keep the dead letters after replaying them.
        #[arg(long)]
        keep: bool,
        /// Count what would be replayed and skipped; publish and delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also replay letters whose original subject matches this NATS pattern (repeatable). By default
        /// only subjects under nats.subjects are replayed: the header is not trusted.
        #[arg(long, value_name = "PATTERN")]
        allow_subject: Vec<String>,
    },
}

/// A subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Database(Box<ConnectError>),
    #[error(transparent)]
    Schema(Box<SchemaError>),
    #[error(transparent)]
    Dlq(#[from] dlq::DlqError),
    #[error("publishing sample events")]
    Sample(#[source] async_nats::jetstream::context::PublishError),
    #[error("flushing to NATS")]
    Flush(#[source] async_nats::client::FlushError),
    #[error(transparent)]
    Argument(#[from] ArgumentError),
    #[error(transparent)]
    Read(#[from] crate::read::ReadError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    MigratePostgres(#[from] migrate_postgres::MigrateError),
}

impl From<SchemaError> for CmdError {
    fn from(e: SchemaError) -> Self {
        CmdError::Schema(Box::new(e))
    }
}

impl From<ConnectError> for CmdError {
    fn from(e: ConnectError) -> Self {
        CmdError::Database(Box::new(e))
    }
}

/// A command-line value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArgumentError {
    #[error("--reason: unknown reason `{0}`")]
    Reason(String),
    #[error("{flag}")]
    Time {
        flag: &'static str,
        #[source]
        source: dlq::TimeError,
    },
    #[error("{0}: must be at least 1")]
    Positive(&'static str),
    /// A repair's `--at` too far ahead of the operator's clock.
    #[error("--at {at}")]
    Ahead {
        at: String,
        #[source]
        source: crate::score::clock::TooFarAhead,
    },
    #[error("the score does not meet the wire contract")]
    Invalid(#[source] crate::score::Rejection),
}

/// Runs one subcommand; the exit code of a subcommand that reports problems without failing
/// (`check`) is its own.
pub async fn run(command: Command, config: Config) -> Result<ExitCode, CmdError> {
    match command {
        Command::Run => {
            let app = App::build(config).await?;
            tracing::info!(http = %app.http_addr(), "HTTP listening");
            app.run_until_stopped(crate::shutdown::signal()).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { dry_run } => migrate::run(&config, dry_run).await,
        Command::Check { output } => Ok(check::run(&config, output).await),
        Command::Nats { action } => nats::run(&config, action).await,
        Command::Dlq { action } => dlq::run(&config, action).await,
        Command::PublishSample {
            count,
            profiles,
            leaderboards,
        } => sample::run(&config, count, profiles, leaderboards).await,
        Command::Query { json, query } => query::run(&config, query, json).await,
        Command::Score { json, action } => repair::run(&config, action, json).await,
        Command::MigratePostgres(args) => migrate_postgres::run(&config, args).await,
        Command::RebuildScores(args) => rebuild::run(&config, args).await,
        Command::Health { live } => Ok(health::run(config.http.listen, live).await),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cli = Cli::command();
            clap_complete::generate(shell, &mut cli, "score-worker", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}
