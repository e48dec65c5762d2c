//! `score-worker rebuild-scores --buckets N`: changes `scylla.leaderboard_buckets` of a populated
//! keyspace. It records the new count (workers with the old one then refuse to start, and running ones
//! stop pulling within a probe interval), then writes every key again through the write protocol in its
//! new bucket ([`crate::store::rebuild`]). Safe while workers with the NEW count write; workers with the
//! old count must be stopped first (docs/runbooks/score-worker-pulls-paused.md, "Upgrades and bucket changes"). Idempotent: run it again
//! after a failure.

use std::process::ExitCode;
use std::sync::Arc;

use super::{ArgumentError, CmdError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::schema;
use crate::store::{self, ScyllaStore};

/// The command's flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The new bucket count.
    #[arg(long)]
    pub buckets: i32,
    /// Rows of scores_by_profile read per page.
    #[arg(long, default_value_t = 1000)]
    pub page_size: i32,
    /// Say what would change; record and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(config: &Config, args: Args) -> Result<ExitCode, CmdError> {
    if args.buckets < 1 || args.page_size < 1 {
        return Err(ArgumentError::Positive("--buckets and --page-size").into());
    }
    let ks = &config.scylla.keyspace;
    let from = config.scylla.leaderboard_buckets;
    let session = Arc::new(store::connect(&config.scylla).await?);
    let stored = schema::stored_buckets(&session, ks).await?;
    let resuming = stored.as_deref() == Some(args.buckets.to_string().as_str());
    if !resuming {
        // The configuration must name the count the keyspace records: the one being replaced.
        schema::check_buckets(&session, &config.scylla).await?;
    }
    if args.dry_run {
        if resuming {
            println!(
                "would rewrite every key of {ks} in its bucket of {} (already recorded)",
                args.buckets
            );
        } else {
            println!(
                "would record leaderboard_buckets = {} (now {from}) in {ks}: workers with {from} would stop pulling and refuse to start",
                args.buckets
            );
            println!(
                "would then rewrite every key of {ks} in its bucket of {}",
                args.buckets
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if resuming {
        println!(
            "{ks} records leaderboard_buckets = {} already: rewriting every key again",
            args.buckets
        );
    } else {
        schema::record_new_buckets(&session, ks, from, args.buckets).await?;
        println!(
            "recorded leaderboard_buckets = {} (was {from}) in {ks}: start the workers with \
             scylla.leaderboard_buckets = {} now; workers with {from} stop pulling and refuse to start",
            args.buckets, args.buckets
        );
    }
    let mut scylla = config.scylla.clone();
    scylla.leaderboard_buckets = args.buckets;
    let store = ScyllaStore::new(session, &scylla, Arc::new(Metrics::new())).await?;
    let mut reported = 0;
    let done = store
        .rebuild_scores(args.page_size, |p| {
            if p.keys >= reported + 10_000 {
                reported = p.keys;
                println!("read {} keys, rewrote {}", p.keys, p.rewritten);
            }
        })
        .await?;
    println!(
        "rebuilt scores of {ks} for {} buckets: read {} keys, rewrote {}, {} without a score",
        args.buckets, done.keys, done.rewritten, done.without_score
    );
    Ok(ExitCode::SUCCESS)
}
