//! `score-worker score get|set|delete`: an operator's repair of one score, through the worker's write
//! protocol ([`crate::store::repair`]), so it is safe while workers run. A set is validated with the
//! wire contract's rules and written at `--at` (default now): a newer live update still wins. `--at`
//! (set and delete) may be at most `validation.max_ahead_of_arrival` ahead of the operator's clock.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use uuid::Uuid;

use super::dlq::parse_time;
use super::{ArgumentError, CmdError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::score::{self, clock, Fields};
use crate::store::{self, ScyllaStore};

#[derive(Debug, Subcommand)]
pub enum Repair {
    /// Print one score.
    Get {
        #[arg(long)]
        profile: Uuid,
        #[arg(long)]
        leaderboard: String,
    },
    /// Write one score as an event at `--at`.
    Set {
        #[arg(long)]
        profile: Uuid,
        #[arg(long)]
        leaderboard: String,
        #[arg(long)]
        wallet: String,
        #[arg(long, allow_hyphen_values = true)]
        score: i64,
        /// Event time: RFC 3339 or an age (10m); default now. Older than the current score: no effect;
        /// at most validation.max_ahead_of_arrival ahead of this machine's clock.
        #[arg(long)]
        at: Option<String>,
    },
    /// Delete one score at `--at`: it is gone unless an update newer than that arrives.
    Delete {
        #[arg(long)]
        profile: Uuid,
        #[arg(long)]
        leaderboard: String,
        /// RFC 3339 or an age (10m); default now; at most validation.max_ahead_of_arrival ahead of this
        /// machine's clock.
        #[arg(long)]
        at: Option<String>,
    },
}

pub async fn run(config: &Config, action: Repair, json: bool) -> Result<ExitCode, CmdError> {
    let session = Arc::new(store::connect(&config.scylla).await?);
    let store = ScyllaStore::new(session, &config.scylla, Arc::new(Metrics::new())).await?;
    let allowance = config.limits().max_ahead_of_arrival_micros;
    match action {
        Repair::Get {
            profile,
            leaderboard,
        } => get(&store, profile, &leaderboard, json).await?,
        Repair::Set {
            profile,
            leaderboard,
            wallet,
            score,
            at,
        } => {
            let micros = repair_time(at, allowance)?;
            let fields = Fields {
                event_id: Some(format!("repair-{}", Uuid::new_v4())),
                profile_id: Some(profile.to_string()),
                wallet_address: Some(wallet),
                leaderboard_id: Some(leaderboard),
                score: Some(score.into()),
                occurred_at: Fields::time_text(Some(micros)),
            };
            set(config, &store, &fields, micros).await?;
        }
        Repair::Delete {
            profile,
            leaderboard,
            at,
        } => {
            let micros = repair_time(at, allowance)?;
            let before = store.delete(profile, &leaderboard, micros).await?;
            let after = store.get(profile, &leaderboard).await?;
            println!(
                "deleted at {micros} µs (was {}; now {})",
                before.map_or("no score".into(), |b| b.key.score.to_string()),
                after.map_or("no score".into(), |a| format!(
                    "{}: a newer update won",
                    a.key.score
                ))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--at` (default now) in microseconds. A repair arrives now: like an event against its arrival,
/// it may be at most `allowance` ahead.
fn repair_time(at: Option<String>, allowance: i64) -> Result<i64, ArgumentError> {
    let now = chrono::Utc::now().timestamp_micros();
    let Some(text) = at else { return Ok(now) };
    let micros = parse_time(&text)
        .map(|t| t.timestamp_micros())
        .map_err(|source| ArgumentError::Time {
            flag: "--at",
            source,
        })?;
    clock::check_repair_time(micros, now, allowance)
        .map_err(|source| ArgumentError::Ahead { at: text, source })?;
    Ok(micros)
}

async fn get(
    store: &ScyllaStore,
    profile: Uuid,
    leaderboard: &str,
    json: bool,
) -> Result<(), CmdError> {
    let current = store.get(profile, leaderboard).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&current).expect("serializes")
        );
        return Ok(());
    }
    match current {
        None => println!("no score for profile {profile} on {leaderboard}"),
        Some(s) => println!(
            "score {} wallet {} updated_at {} (written at {} µs; leaderboard rows {:?})",
            s.key.score,
            s.key.wallet_address,
            s.key.updated_at.to_rfc3339(),
            s.key.written_at_micros,
            s.ranked
        ),
    }
    Ok(())
}

/// Validates `fields` by the wire contract's rules, writes them, and says whether they are current.
async fn set(
    config: &Config,
    store: &ScyllaStore,
    fields: &Fields,
    micros: i64,
) -> Result<(), CmdError> {
    let now = chrono::Utc::now().timestamp_micros();
    let update = score::validate(fields, config.limits(), now).map_err(ArgumentError::Invalid)?;
    store.upsert(&update).await?;
    let current = store.get(update.profile_id, &update.leaderboard_id).await?;
    let won = current
        .as_ref()
        .is_some_and(|c| c.key.written_at_micros == micros && c.key.score == update.score);
    println!(
        "{} (event {}; current score {})",
        if won {
            "written"
        } else {
            "written, but a newer score is current"
        },
        update.event_id,
        current.map_or("none".into(), |c| c.key.score.to_string())
    );
    Ok(())
}
