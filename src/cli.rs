//! The command line: `score-worker [--config FILE] <run | migrate [--dry-run] | check | publish-sample>`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "score-worker",
    version,
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
    Check,
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
}
