//! `score-worker check`: validates the configuration, reaches NATS and the database, and verifies the
//! streams, the consumer, the schema version (current, ahead within this build's window, or not), the
//! bucket count and the consistency on the keyspace's datacenters. Prints one line per check; never prints a secret.

use std::process::ExitCode;

use super::Output;
use crate::config::Config;
use crate::{nats, schema, store};

/// The outcome of every check, in order.
pub struct Report {
    pub lines: Vec<(bool, String)>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.lines.iter().all(|(ok, _)| *ok)
    }

    /// `{"ok": bool, "checks": [{"ok": bool, "detail": "..."}, ...]}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok(),
            "checks": self
                .lines
                .iter()
                .map(|(ok, detail)| serde_json::json!({ "ok": ok, "detail": detail }))
                .collect::<Vec<_>>(),
        })
    }

    pub fn render(&self) -> String {
        self.lines
            .iter()
            .map(|(ok, line)| format!("{} {line}\n", if *ok { "[ok]  " } else { "[FAIL]" }))
            .collect()
    }
}

/// Prints the report; fails when any check failed.
pub async fn run(config: &Config, output: Output) -> ExitCode {
    let report = checks(config).await;
    match output {
        Output::Text => print!("{}", report.render()),
        Output::Json => println!("{}", report.json()),
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn checks(config: &Config) -> Report {
    let mut lines = vec![(true, format!("configuration valid: {}", config.redacted()))];
    nats_checks(config, &mut lines).await;
    database_checks(config, &mut lines).await;
    Report { lines }
}

type Lines = Vec<(bool, String)>;

/// NATS reachable, then its streams, the consumer and their drift from the configuration.
async fn nats_checks(config: &Config, lines: &mut Lines) {
    let client = match nats::connect(&config.nats, None).await {
        Ok(client) => client,
        Err(e) => return lines.push((false, crate::error_chain(&e).to_string())),
    };
    let url = crate::config::redact_url(&config.nats.url);
    lines.push((true, format!("NATS reachable at {url}")));
    let js = nats::jetstream(client, &config.nats);
    for name in [&config.nats.stream, &config.nats.deadletter_stream] {
        lines.push(match js.get_stream(name).await {
            Ok(stream) => {
                let c = &stream.cached_info().config;
                (
                    true,
                    format!(
                        "stream {name} exists (subjects {:?}, storage {:?})",
                        c.subjects, c.storage
                    ),
                )
            }
            Err(e) => (
                false,
                format!(
                    "stream {name}: {} (`run` creates it when nats.manage_jetstream = true)",
                    crate::error_chain(&e)
                ),
            ),
        });
    }
    lines.push(consumer_check(config, &js).await);
    // Settings on the server against the configuration, one line each.
    if let Ok(drift) = nats::drift(&js, &config.nats).await {
        if drift.is_empty() {
            lines.push((true, "streams and consumer match the configuration".into()));
        }
        // `run` changes nothing that exists: the server's value applies until an operator acts.
        for d in drift {
            let note = match (d.in_place, d.effect) {
                (false, _) => "NATS cannot change this in place: see docs/runbooks/nats-jetstream-storage-near-limit.md".to_string(),
                (true, None) => "the server's value applies; `score-worker nats apply` changes it".to_string(),
                (true, Some(effect)) => format!("the server's value applies; `score-worker nats apply` changes it (destructive: {effect})"),
            };
            lines.push((false, format!("{d}; {note}")));
        }
    }
}

async fn consumer_check(config: &Config, js: &async_nats::jetstream::Context) -> (bool, String) {
    let name = &config.nats.consumer;
    let Ok(stream) = js.get_stream(&config.nats.stream).await else {
        return (false, format!("consumer {name}: its stream is missing"));
    };
    match stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
        .await
    {
        Ok(consumer) => {
            let info = consumer.cached_info();
            (
                true,
                format!(
                    "consumer {name} exists (ack_wait {:?}, max_deliver {}, pending {}, awaiting ack {})",
                    info.config.ack_wait,
                    info.config.max_deliver,
                    info.num_pending,
                    info.num_ack_pending
                ),
            )
        }
        Err(e) => (
            false,
            format!("consumer {name}: {}", crate::error_chain(&*e)),
        ),
    }
}

/// The database reachable, then the schema version, the bucket count and the consistency.
async fn database_checks(config: &Config, lines: &mut Lines) {
    let session = match store::connect(&config.scylla).await {
        Ok(session) => session,
        Err(e) => return lines.push((false, crate::error_chain(&e).to_string())),
    };
    let mut push = |ok: bool, line: String| lines.push((ok, line));
    push(
        true,
        format!("database reachable at {:?}", config.scylla.nodes),
    );
    let ks = &config.scylla.keyspace;
    match schema::state(&session, ks).await {
        Ok(state) => {
            push(state.ready(), format!("keyspace {ks}: {state}"));
            if state == schema::SchemaState::Missing {
                return;
            }
        }
        Err(e) => {
            let error = crate::error_chain(&e);
            return push(false, format!("reading the schema version failed: {error}"));
        }
    }
    match schema::check_buckets(&session, &config.scylla).await {
        Ok(()) => push(
            true,
            format!(
                "leaderboard_buckets = {} as recorded",
                config.scylla.leaderboard_buckets
            ),
        ),
        Err(e) => push(false, crate::error_chain(&e).to_string()),
    }
    match schema::replication::check(&session, &config.scylla).await {
        Ok(dcs) if !dcs.is_empty() => push(
            true,
            format!(
                "consistency {:?} keeps the leaderboard argument on datacenters {dcs:?}",
                config.scylla.consistency
            ),
        ),
        Ok(_) => {}
        Err(e) => push(false, crate::error_chain(&e).to_string()),
    }
}
