//! `score-worker migrate [--dry-run]`: create the keyspace and apply the versioned schema.

use std::process::ExitCode;

use super::CmdError;
use crate::config::Config;
use crate::{schema, store};

pub async fn run(config: &Config, dry_run: bool) -> Result<ExitCode, CmdError> {
    let session = store::connect(&config.scylla).await?;
    let report = schema::migrate(&session, &config.scylla, dry_run).await?;
    let verb = if dry_run { "would run" } else { "ran" };
    for line in report {
        println!("{verb}: {line}");
    }
    Ok(ExitCode::SUCCESS)
}
