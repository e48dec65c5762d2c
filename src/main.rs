//! The `score-worker` binary: parse the command line, load the configuration, start telemetry and
//! hand over to the library. Exit codes: 0 success, 1 failure, 2 invalid configuration.

use std::process::ExitCode;

use clap::Parser;
use score_worker::cmd::{self, Cli};
use score_worker::config::Config;
use score_worker::error_chain;
use score_worker::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("score-worker: error: {:#}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log.format, std::io::stderr);
    match cmd::run(cli.command, config).await {
        Ok(code) => code,
        Err(e) => {
            let chain = error_chain(&e);
            tracing::error!(error = %chain, "score-worker failed");
            eprintln!("score-worker: error: {chain:#}");
            ExitCode::FAILURE
        }
    }
}
