//! The `score-worker` binary: parse the command line, load the configuration, start telemetry and
//! hand over to the library. Exit codes: 0 success, 1 failure, 2 invalid configuration.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use score_worker::cli::{Cli, Command, DlqAction, DlqFilter};
use score_worker::config::Config;
use score_worker::score::RejectReason;
use score_worker::{app, check, dlq, nats, sample, schema, shutdown, store, telemetry};

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
    match run(cli.command, config).await {
        Ok(code) => code,
        Err(e) => {
            let message = error_chain(&e);
            tracing::error!(error = %message, "score-worker failed");
            eprintln!("score-worker: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run => {
            let app = app::App::build(config).await?;
            tracing::info!(http = %app.http_addr(), "HTTP listening");
            app.run_until_stopped(shutdown::signal()).await;
        }
        Command::Migrate { dry_run } => {
            let session = store::connect(&config.scylla).await?;
            let report = schema::migrate(&session, &config.scylla, dry_run).await?;
            let verb = if dry_run { "would run" } else { "ran" };
            for line in report {
                println!("{verb}: {line}");
            }
        }
        Command::Check => {
            let report = check::run(&config).await;
            print!("{}", report.render());
            if !report.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Dlq { action } => {
            let client = nats::connect(&config.nats, None).await?;
            let js = nats::jetstream(client.clone(), &config.nats);
            match action {
                DlqAction::List { filter } => {
                    let letters = dlq::list(&js, &config.nats, &dlq_filter(filter)?).await?;
                    for l in &letters {
                        println!(
                            "{}\t{}\t{}\t{}\t{} bytes\t{}",
                            l.sequence,
                            l.stored_at.to_rfc3339(),
                            l.reason,
                            l.original_subject,
                            l.payload.len(),
                            l.error
                        );
                    }
                    println!("{} dead letters", letters.len());
                }
                DlqAction::Replay { filter, keep } => {
                    let report = dlq::replay(&js, &config.nats, &dlq_filter(filter)?, keep).await?;
                    println!(
                        "replayed {} dead letters, skipped {}",
                        report.replayed, report.skipped
                    );
                }
            }
            client.flush().await?;
        }
        Command::PublishSample {
            count,
            profiles,
            leaderboards,
        } => {
            let client = nats::connect(&config.nats, None).await?;
            let js = nats::jetstream(client.clone(), &config.nats);
            nats::ensure_topology(&js, &config.nats).await?;
            sample::publish_sample(&js, &config.nats.subjects[0], count, profiles, leaderboards)
                .await
                .map_err(anyhow::Error::msg)
                .context("publishing sample events")?;
            client.flush().await?;
            println!("published {count} events to {}", config.nats.subjects[0]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn dlq_filter(args: DlqFilter) -> anyhow::Result<dlq::Filter> {
    let reason = match args.reason {
        Some(token) => {
            Some(RejectReason::parse(&token).with_context(|| format!("unknown reason `{token}`"))?)
        }
        None => None,
    };
    let time = |t: Option<String>| {
        t.map(|t| dlq::parse_time(&t).map_err(anyhow::Error::msg))
            .transpose()
    };
    Ok(dlq::Filter {
        reason,
        since: time(args.since).context("--since")?,
        until: time(args.until).context("--until")?,
        limit: args.limit,
    })
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
