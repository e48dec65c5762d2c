//! `score-worker nats apply [--dry-run]`: brings the live streams and consumer to the configuration,
//! saying each change first (`would change:` / `changed:`), destructive ones named; `run` never
//! changes them ([`crate::nats::apply`]).

use std::process::ExitCode;

use clap::Subcommand;

use super::CmdError;
use crate::config::Config;
use crate::nats::{self, NatsError};

#[derive(Debug, Subcommand)]
pub enum NatsAction {
    /// Create what is missing and bring every drifted setting of the streams and the consumer to the
    /// configuration (a smaller max_age or max_bytes deletes stored messages: read the plan).
    Apply {
        /// Print what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(config: &Config, action: NatsAction) -> Result<ExitCode, CmdError> {
    let NatsAction::Apply { dry_run } = action;
    let client = nats::connect(&config.nats, None).await?;
    let js = nats::jetstream(client, &config.nats);
    let plan = nats::apply::plan(&js, &config.nats).await?;
    if plan.changes.is_empty() {
        println!("nothing to change: the streams and the consumer match the configuration");
        return Ok(ExitCode::SUCCESS);
    }
    // One change NATS cannot make in place and nothing is changed.
    let blocked = plan.blocked();
    let verb = if dry_run || !blocked.is_empty() {
        "would change"
    } else {
        "changing"
    };
    for change in &plan.changes {
        println!("{verb}: {change}");
    }
    if !blocked.is_empty() {
        println!("nothing changed: NATS cannot make every change in place");
        return Err(NatsError::Drift { drift: blocked }.into());
    }
    if dry_run {
        println!("dry run: nothing changed");
        return Ok(ExitCode::SUCCESS);
    }
    let count = plan.changes.len();
    plan.apply(&js, &config.nats).await?;
    println!("done: {count} changes applied");
    Ok(ExitCode::SUCCESS)
}
