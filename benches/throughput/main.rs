//! `make bench`: figures, never a pass/fail on timing. Every writer drains the same generated backlog
//! into a fresh keyspace of its own on the local nats-server and Cassandra, in several rounds in
//! alternating order (ABAB, BABA), and the report gives medians, spreads and the worker's ratios to the
//! others. Method and latest figures: `docs/performance.md`.
//!
//! Writers (rows of the table):
//! - `worker`: this build's release binary as a child process (shipped batch, retry and NATS settings);
//! - `flush1` (SCORE_WORKER_BENCH_FLUSH1=1): the same with `batch.max_scores = 1`;
//! - `baseline …` (SCORE_WORKER_BENCH_BASELINE=path): another build of the binary, e.g. the commit
//!   before a change (`make bench-baseline` builds one);
//! - `protocol ceiling`, `naive ceiling`: writes from this process with the driver and no NATS
//!   (see `ceilings.rs`).
//!
//! Per writer: events/s; database requests per event (the worker's `…_query_duration_seconds_count`
//! over every label); CPU µs per event of the writer, Cassandra and nats-server (from
//! `/proc/<pid>/stat`); peak RSS; paced receipt → ack p50/p95/p99 (the worker's own histogram); the
//! warnings the database attached to the writer's responses (`score_worker_scylla_warnings_total`:
//! tombstones, by statement, and batch; the protocol ceiling from its own `Metrics`); the drain in
//! tenths (`slices.rs`: events/s, Cassandra CPU µs/event and tombstone warnings per tenth, and last ÷
//! first tenth's events/s; with churn knobs, a table per figure after the main ones; every tenth of
//! every pass in the JSON); and what is left wrong in the keyspace afterwards (stale and missing
//! leaderboard rows, wrong by-profile scores: `verify.rs`, which reads both tables in pieces so that
//! a churned keyspace's tombstones never fail a read). Any of those non-zero for this build ends the
//! run with exit code 1.
//!
//! Knobs, all `SCORE_WORKER_BENCH_*`:
//! - workload: `EVENTS` (backlog messages, 30000), `PROFILES` (20000), `LEADERBOARDS` (3), `HOT` (share
//!   of events on Pareto-weighted profiles, 0.3), `SKEW` (Pareto shape, 1.16), `DUPLICATES` (share of
//!   messages re-publishing an earlier event under a new Nats-Msg-Id, 0), `OUT_OF_ORDER` (share of
//!   events older than their key's newest, 0), `SEED` (1);
//! - churn (`workload.rs`; off by default): `CHANGES` (changes per key: the backlog is `EVENTS` events
//!   over `EVENTS / CHANGES` keys, each changed `CHANGES` times with a new score each time, its changes
//!   spread evenly through the backlog and interleaved with the other keys'; key `k` is profile
//!   `k mod PROFILES` on leaderboard `(k mod PROFILES + k div PROFILES) mod LEADERBOARDS`, so as many
//!   distinct profiles as keys, spread evenly over the boards); `HOT_KEYS` and `HOT_CHANGES` (a hot set
//!   of that many keys, on profiles of their own, each changed `HOT_CHANGES` times, spread evenly
//!   through the backlog; the rest of `EVENTS` is the default workload, or churned by `CHANGES` if set).
//!   E.g. `EVENTS=200000 CHANGES=2000`: 100 keys; `EVENTS=200000 HOT_KEYS=5 HOT_CHANGES=20000`:
//!   100,000 hot events and 100,000 default ones;
//! - run: `ROUNDS` (2), `RATE` (paced events/s; default half the variant's backlog rate), `SECONDS`
//!   (paced phase, 10; 0 skips it), `BASELINE` + `BASELINE_LABEL`, `FLUSH1` (0), `CEILINGS` (1),
//!   `PROTOCOL_CONCURRENCY` (flushes in flight to try, "1,4,16,64"), `PROTOCOL_FLUSH` (keys per flush,
//!   50), `NAIVE_CONCURRENCY` (batches in flight, 32), `NAIVE_BATCH` (events per batch, 50), `KEEP`
//!   (keep the keyspaces, 0), `CLEANUP` (only drop what an interrupted run left: `bench_*` keyspaces,
//!   `IT_bench_*` streams; 0);
//! - output: `OUT` (JSON directory, `target/bench`), `SVG` (plot path, `docs/performance.svg`; 0: none).
//!
//! Layout: `knobs` (settings), `workload` (the generated messages), `worker` (a binary variant),
//! `ceilings` (protocol and naive), `library` (every call into score-worker's write path),
//! `verify` (the keyspace afterwards), `procfs` and `prom` (reading CPU, memory and `/metrics`),
//! `slices` (the drain in tenths), `report` (medians, ratios, tables), `output` (JSON, SVG).

#[path = "../../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

mod ceilings;
mod knobs;
mod library;
mod output;
mod procfs;
mod prom;
mod report;
mod slices;
mod verify;
mod worker;
mod workload;

use std::time::{Duration, Instant};

use futures::FutureExt;

use knobs::Knobs;
use report::{Pass, Row};
use worker::Variant;
use workload::{Generator, Message};

/// One writer measured per round.
#[derive(Debug, Clone)]
enum Unit {
    Worker(Variant),
    Protocol(usize),
    Naive,
}

impl Unit {
    fn name(&self) -> String {
        match self {
            Unit::Worker(v) => v.name.clone(),
            Unit::Protocol(c) => format!("protocol c={c}"),
            Unit::Naive => "naive".into(),
        }
    }

    /// Passes of this build's code: must leave the keyspace exactly right.
    fn must_be_clean(&self) -> bool {
        match self {
            Unit::Worker(v) => v.binary.is_none(),
            Unit::Protocol(_) => true,
            Unit::Naive => false,
        }
    }
}

fn units(knobs: &Knobs) -> Vec<Unit> {
    let mut units = vec![Unit::Worker(Variant {
        name: "worker".into(),
        max_scores: 50,
        binary: None,
        env: vec![],
    })];
    if knobs.flush1 {
        units.push(Unit::Worker(Variant {
            name: "flush1".into(),
            max_scores: 1,
            binary: None,
            env: vec![],
        }));
    }
    for (name, env) in &knobs.variants {
        units.push(Unit::Worker(Variant {
            name: name.clone(),
            max_scores: 50,
            binary: None,
            env: env.clone(),
        }));
    }
    if let Some((label, path)) = &knobs.baseline {
        units.push(Unit::Worker(Variant {
            name: format!("baseline {label}"),
            max_scores: 50,
            binary: Some(path.clone()),
            env: vec![],
        }));
    }
    if knobs.ceilings {
        units.extend(
            knobs
                .protocol_concurrency
                .iter()
                .map(|c| Unit::Protocol(*c)),
        );
        units.push(Unit::Naive);
    }
    units
}

fn expected(messages: &[Message]) -> std::collections::HashMap<(String, uuid::Uuid), i64> {
    let events: Vec<support::Event> = messages.iter().map(|m| m.event.clone()).collect();
    support::expected(&events)
}

fn git(args: &[&str]) -> String {
    std::process::Command::new("git")
        .args(args)
        .current_dir(xtask::environments::root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; everything else comes from the environment.
    let knobs = Knobs::from_env();
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let admin = library::connect(&worker::pass_config("admin").scylla).await;
    if knobs.cleanup {
        cleanup(&admin).await;
        return;
    }
    let servers = procfs::Servers::find();
    let versions = versions(&admin).await;
    let build = format!(
        "{}{}",
        git(&["rev-parse", "--short", "HEAD"]),
        if git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            ""
        } else {
            "+dirty"
        }
    );

    // The backlog's event times span the hour before the last ten minutes; the paced events follow,
    // 1 ms apart, so none is in the future when published.
    let now = started.timestamp_micros();
    let hour = 3_600_000_000;
    let mut generator = Generator::new(
        &knobs.spec,
        now - hour - 600_000_000,
        hour / knobs.spec.events.max(1) as i64,
    );
    let backlog = generator.take(knobs.spec.events);
    generator.set_clock(now - 600_000_000, 1000);
    let paced = generator;
    let shape = workload::shape(&backlog);
    let units = units(&knobs);

    let churn = knobs.spec.churn();
    println!(
        "bench: build {build}; {} backlog messages ({} distinct events, {} keys, busiest key {} messages, busiest 1 % of keys {:.1} % of messages, {} out of order); {} profiles × {} leaderboards, hot {:.0} % (Pareto {}), duplicates {:.0} %{}; {} rounds; load average {:.1}",
        shape.messages, shape.distinct_events, shape.keys, shape.max_events_per_key, shape.top1pct_key_share * 100.0, shape.out_of_order,
        knobs.spec.profiles, knobs.spec.leaderboards, knobs.spec.hot * 100.0, knobs.spec.skew, knobs.spec.duplicates * 100.0,
        churn.as_ref().map_or(String::new(), |c| format!("; {c}")),
        knobs.rounds, procfs::loadavg()
    );
    println!("bench: servers {versions}");
    println!(
        "bench: writers {:?}",
        units.iter().map(Unit::name).collect::<Vec<_>>()
    );

    // A panic (a server gone for good) still drops this run's keyspaces before it propagates.
    let mut keyspaces = Vec::new();
    let measured = std::panic::AssertUnwindSafe(measure(
        &knobs,
        &units,
        &backlog,
        &paced,
        &servers,
        &admin,
        &mut keyspaces,
    ))
    .catch_unwind()
    .await;
    let drop_all = || async {
        if !knobs.keep {
            for ks in &keyspaces {
                verify::drop_keyspace(&admin, ks).await;
            }
        }
    };
    let rounds = match measured {
        Ok(rounds) => rounds,
        Err(panic) => {
            drop_all().await;
            std::panic::resume_unwind(panic);
        }
    };
    let rows = rows(&units, &rounds);
    let title = format!(
        "score-worker {build}: {} messages, {} profiles × {} leaderboards{}, {} rounds, {}",
        knobs.spec.events,
        knobs.spec.profiles,
        knobs.spec.leaderboards,
        churn.as_ref().map_or(String::new(), |c| format!(", {c}")),
        knobs.rounds,
        started.format("%Y-%m-%d %H:%M UTC")
    );
    println!("\n{title}\n\n{}", report::tables(&rows));
    // Tenths of a default drain (a few seconds) are mostly noise; a churned one is long enough. The
    // per-concurrency protocol rows are in `protocol ceiling` (the best of each round).
    if knobs.spec.churned() {
        let main_rows: Vec<Row> = rows
            .iter()
            .filter(|r| !r.name.starts_with("protocol c="))
            .cloned()
            .collect();
        println!("{}", slices::tables(&main_rows));
    }
    if let Some(line) = report::tombstones_by_statement(&rows) {
        println!("{line}\n");
    }
    let worker = &rows[0];
    let others: Vec<&Row> = rows[1..]
        .iter()
        .filter(|r| r.name.starts_with("baseline") || r.name.ends_with("ceiling"))
        .collect();
    if !others.is_empty() {
        println!("{}", report::ratio_table(worker, &others));
    }
    if let Some(best) = rows.iter().find(|r| r.name == "protocol ceiling") {
        let levels: Vec<_> = best.passes.iter().filter_map(|p| p.concurrency).collect();
        println!("bench: protocol ceiling = the best concurrency of each round: {levels:?} flushes in flight");
    }
    let elapsed = clock.elapsed().as_secs_f64();
    println!("bench: {:.0} s in all", elapsed);

    let run = output::Run {
        knobs: &knobs,
        shape: &shape,
        build: &build,
        servers: &versions,
        title: &title,
        started,
        seconds: elapsed,
    };
    let passes: Vec<Vec<&Pass>> = rounds
        .iter()
        .map(|r| r.iter().map(|(_, p)| p).collect())
        .collect();
    output::write(&run, &rows, &passes);
    drop_all().await;

    let dirty: Vec<&Pass> = rounds
        .iter()
        .flatten()
        .filter(|(u, p)| u.must_be_clean() && !p.check.clean())
        .map(|(_, p)| p)
        .collect();
    // Writers that may leave the database wrong (the naive ceiling, another build): said, not failed.
    let ours = |name: &str| matches!(name, "worker" | "flush1") || name.starts_with("protocol");
    for row in rows.iter().filter(|r| !ours(&r.name)) {
        let wrong: Vec<String> = row
            .passes
            .iter()
            .filter(|p| !p.check.clean())
            .map(|p| {
                format!(
                    "{} stale + {} missing leaderboard rows, {} wrong by-profile",
                    p.check.stale_rows, p.check.missing_rows, p.check.wrong_by_profile
                )
            })
            .collect();
        if !wrong.is_empty() {
            println!(
                "bench: {} left the database wrong, by round: {}",
                row.name,
                wrong.join("; ")
            );
        }
    }
    if !dirty.is_empty() {
        eprintln!("\n!!!!!!!!!! bench: THIS BUILD LEFT THE DATABASE WRONG !!!!!!!!!!");
        for p in dirty {
            eprintln!(
                "!!! {} (keyspace {}): {} stale leaderboard rows, {} missing, {} wrong by-profile scores",
                p.variant, p.keyspace, p.check.stale_rows, p.check.missing_rows, p.check.wrong_by_profile
            );
        }
        std::process::exit(1);
    }
}

/// Every round: the keyspaces first, then each writer's pass and its check. Records each keyspace in
/// `keyspaces` as soon as it exists.
async fn measure(
    knobs: &Knobs,
    units: &[Unit],
    backlog: &[Message],
    paced: &Generator,
    servers: &procfs::Servers,
    admin: &scylla::client::session::Session,
    keyspaces: &mut Vec<String>,
) -> Vec<Vec<(Unit, Pass)>> {
    let mut rounds: Vec<Vec<(Unit, Pass)>> = Vec::new();
    for round in 0..knobs.rounds {
        let mut order = units.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        // Every keyspace of the round first, so that no schema change overlaps a measurement.
        let configs: Vec<_> = order
            .iter()
            .map(|u| worker::pass_config(&u.name()))
            .collect();
        for (unit, config) in order.iter().zip(&configs) {
            match unit {
                Unit::Worker(v) => worker::migrate(config, v),
                Unit::Protocol(_) | Unit::Naive => library::migrate(admin, &config.scylla).await,
            }
            keyspaces.push(config.scylla.keyspace.clone());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;

        let mut passes = Vec::new();
        for (unit, config) in order.into_iter().zip(configs) {
            eprintln!("bench: round {} {} …", round + 1, unit.name());
            let load = procfs::loadavg();
            let (mut pass, written) = match &unit {
                Unit::Worker(v) => {
                    worker::run(
                        v,
                        &config,
                        backlog,
                        paced,
                        knobs.rate,
                        knobs.paced_seconds,
                        servers,
                    )
                    .await
                }
                Unit::Protocol(c) => (
                    ceilings::protocol(&config, backlog, knobs.protocol_flush, *c, servers).await,
                    backlog.to_vec(),
                ),
                Unit::Naive => (
                    ceilings::naive(
                        &config,
                        backlog,
                        knobs.naive_batch,
                        knobs.naive_concurrency,
                        servers,
                    )
                    .await,
                    backlog.to_vec(),
                ),
            };
            let sizes = verify::Sizes {
                messages: written.len(),
                max_changes_per_key: workload::shape(&written).max_events_per_key,
                buckets: config.scylla.leaderboard_buckets,
            };
            pass.check =
                verify::check(admin, &config.scylla.keyspace, &expected(&written), sizes).await;
            pass.load_avg = load;
            println!("{}", report::pass_line(round + 1, &pass));
            passes.push((unit, pass));
        }
        rounds.push(passes);
    }

    rounds
}

/// The servers' versions, for the record: "nats-server X, Cassandra Y".
async fn versions(admin: &scylla::client::session::Session) -> String {
    let url = worker::pass_config("versions").nats.url;
    let nats = match async_nats::connect(url.as_str()).await {
        Ok(client) => client.server_info().version,
        Err(_) => "?".into(),
    };
    let cassandra = admin
        .query_unpaged("SELECT release_version FROM system.local", ())
        .await
        .ok()
        .and_then(|r| r.into_rows_result().ok())
        .and_then(|r| r.maybe_first_row::<(String,)>().ok().flatten())
        .map_or("?".into(), |(v,)| v);
    format!("nats-server {nats}, Cassandra {cassandra}")
}

/// Drops what interrupted runs left behind: `bench_*` keyspaces and `IT_bench_*` streams.
async fn cleanup(admin: &scylla::client::session::Session) {
    use futures::StreamExt;
    for ks in verify::leftover_keyspaces(admin).await {
        println!("bench: dropping keyspace {ks}");
        verify::drop_keyspace(admin, &ks).await;
    }
    let url = worker::pass_config("cleanup").nats.url;
    let client = async_nats::connect(url.as_str())
        .await
        .expect("NATS answers");
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    for name in names.iter().filter(|n| n.starts_with("IT_bench_")) {
        println!("bench: deleting stream {name}");
        let _ = js.delete_stream(name).await;
    }
}

/// The table rows: each writer with one pass per round; the protocol ceiling as its best concurrency
/// per round, then each concurrency on its own.
fn rows(units: &[Unit], rounds: &[Vec<(Unit, Pass)>]) -> Vec<Row> {
    let passes_of = |name: &str| -> Vec<Pass> {
        rounds
            .iter()
            .filter_map(|r| {
                r.iter()
                    .find(|(u, _)| u.name() == name)
                    .map(|(_, p)| p.clone())
            })
            .collect()
    };
    let mut rows = Vec::new();
    for unit in units.iter().filter(|u| matches!(u, Unit::Worker(_))) {
        rows.push(Row {
            name: unit.name(),
            passes: passes_of(&unit.name()),
        });
    }
    let levels: Vec<&Unit> = units
        .iter()
        .filter(|u| matches!(u, Unit::Protocol(_)))
        .collect();
    if !levels.is_empty() {
        let best = rounds
            .iter()
            .filter_map(|r| {
                r.iter()
                    .filter(|(u, _)| matches!(u, Unit::Protocol(_)))
                    .map(|(_, p)| p)
                    .max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s))
                    .cloned()
            })
            .collect();
        rows.push(Row {
            name: "protocol ceiling".into(),
            passes: best,
        });
    }
    if units.iter().any(|u| matches!(u, Unit::Naive)) {
        rows.push(Row {
            name: "naive ceiling".into(),
            passes: passes_of("naive"),
        });
    }
    for unit in levels {
        rows.push(Row {
            name: unit.name(),
            passes: passes_of(&unit.name()),
        });
    }
    rows
}
