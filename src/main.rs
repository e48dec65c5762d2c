//! The `score-worker` binary: parse the command line, load the configuration, start telemetry and
//! hand over to the library. Exit codes: 0 success, 1 failure, 2 invalid configuration.

use std::process::ExitCode;

use clap::Parser;
use score_worker::cmd::{self, Cli};
use score_worker::config::Config;
use score_worker::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("score-worker: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log.format, std::io::stderr);
    match cmd::run(cli.command, config).await {
        Ok(code) => code,
        Err(e) => {
            let message = error_chain(&anyhow::Error::new(e));
            tracing::error!(error = %message, "score-worker failed");
            eprintln!("score-worker: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text its parent already shows
/// (several driver errors print their source themselves).
fn error_chain(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}
