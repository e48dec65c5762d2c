//! End-to-end benchmark: the release binary as a child process against the local nats-server and
//! Cassandra (`make bench` starts them). Reports, per variant and in the same run:
//! - drain throughput of a backlog (events/s),
//! - CPU per event of the worker process (from /proc/<pid>/stat),
//! - peak RSS of the worker (VmHWM),
//! - p50/p95/p99 receipt→ack latency under a paced load (from the worker's own histogram),
//!
//! and the ratios between variants, since absolute figures on a shared machine are noisy.
//! Knobs: SCORE_WORKER_BENCH_EVENTS (backlog, default 20000), SCORE_WORKER_BENCH_RATE (paced events/s,
//! default 500), SCORE_WORKER_BENCH_SECONDS (paced phase, default 10), SCORE_WORKER_BENCH_BASELINE (path
//! of another build of the binary, e.g. the previous commit's: adds a "baseline" variant to compare with).

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rand::Rng;
use support::*;
use uuid::Uuid;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Variant {
    name: &'static str,
    max_scores: usize,
    /// Another build of the binary; `None` is this build.
    binary: Option<String>,
}

#[derive(Debug, Default)]
struct Figures {
    events_per_s: f64,
    cpu_us_per_event: f64,
    peak_rss_mib: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
}

fn scrape(port: u16) -> String {
    Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

/// Cumulative bucket counts of the processing-duration histogram.
fn buckets(text: &str) -> Vec<(f64, f64)> {
    let prefix = "score_worker_processing_duration_seconds_bucket{le=\"";
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect()
}

/// Quantile of the difference of two cumulative histograms, linearly interpolated within a bucket
/// (as Prometheus' histogram_quantile does).
fn quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            (
                *le,
                c - before
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, b)| *b),
            )
        })
        .collect();
    let total = delta.last().map_or(0.0, |(_, c)| *c);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, c) in &delta {
        if *c >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            return prev.0 + (le - prev.0) * (rank - prev.1) / (c - prev.1).max(1e-9);
        }
        prev = (*le, *c);
    }
    prev.0
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn spawn_worker(config: &score_worker::config::Config, port: u16, v: &Variant) -> Child {
    // The shipped batching and retry settings, not the tests' faster ones.
    let defaults = score_worker::config::Config::defaults();
    let mut config = config.clone();
    config.batch = defaults.batch;
    config.batch.max_scores = v.max_scores;
    config.retry = defaults.retry;
    config.retry.progress_interval = Duration::from_secs(2); // below the test consumer's 10 s ack_wait
    let mut command = worker_command(&config, port);
    if let Some(binary) = &v.binary {
        // The same environment for the other program.
        let envs: Vec<_> = command
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        command = Command::new(binary);
        command.envs(envs);
    }
    command
        .arg("run")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("worker binary starts")
}

fn events(n: usize, board_tag: &str) -> Vec<Event> {
    let mut rng = rand::rng();
    let boards: Vec<String> = (0..5).map(|i| format!("bench-{board_tag}-{i}")).collect();
    let profiles: Vec<Uuid> = (0..(n / 10).max(10)).map(|_| Uuid::new_v4()).collect();
    (0..n)
        .map(|i| {
            let profile = profiles[rng.random_range(0..profiles.len())];
            Event {
                event_id: format!("bench-{i}-{}", Uuid::new_v4().simple()),
                profile,
                wallet: wallet_of(profile),
                leaderboard: boards[rng.random_range(0..boards.len())].clone(),
                score: rng.random_range(0..1_000_000),
                at_micros: recent_micros(&mut rng),
            }
        })
        .collect()
}

/// Publishes concurrently, awaiting the stream's acks in windows.
async fn publish_all(
    js: &async_nats::jetstream::Context,
    config: &score_worker::config::Config,
    events: &[Event],
) {
    for window in events.chunks(1000) {
        let mut acks = Vec::with_capacity(window.len());
        for e in window {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, e.event_id.as_str());
            let subject =
                score_worker::cmd::sample::subject_for(&config.nats.subjects[0], &e.leaderboard);
            acks.push(
                js.publish_with_headers(subject, headers, e.payload())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("stored");
        }
    }
}

async fn run_variant(v: &Variant, backlog: usize, rate: u64, seconds: u64) -> Figures {
    let config = base_config(&format!("bench_{}", v.name));
    let (_client, js) = jetstream(&config).await;
    let backlog_events = events(backlog, &Uuid::new_v4().simple().to_string());
    publish_all(&js, &config, &backlog_events).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = spawn_worker(&config, port, v);
    let pid = child.id();
    // Wait for the HTTP endpoint, then time the drain.
    let ready_by = Instant::now() + Duration::from_secs(60);
    while scrape(port).is_empty() {
        assert!(Instant::now() < ready_by, "worker did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (t0, cpu0) = (Instant::now(), cpu_seconds(pid));
    let deadline = t0 + Duration::from_secs(600);
    while value(&scrape(port), "score_worker_messages_processed_total") < backlog as f64 {
        assert!(
            Instant::now() < deadline,
            "backlog not drained in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;

    // Paced load: `rate` events/s for `seconds`, latency from the worker's histogram.
    let before = buckets(&scrape(port));
    let paced = events(
        (rate * seconds) as usize,
        &Uuid::new_v4().simple().to_string(),
    );
    let tick = Duration::from_secs_f64(1.0 / 20.0);
    let per_tick = (rate as usize / 20).max(1);
    let start = tokio::time::Instant::now();
    for (i, chunk) in paced.chunks(per_tick).enumerate() {
        tokio::time::sleep_until(start + tick * i as u32).await;
        publish_all(&js, &config, chunk).await;
    }
    let want = (backlog + paced.len()) as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while value(&scrape(port), "score_worker_messages_processed_total") < want {
        assert!(Instant::now() < deadline, "paced load not processed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = buckets(&scrape(port));
    let rss = peak_rss_mib(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    Figures {
        events_per_s: backlog as f64 / drain,
        cpu_us_per_event: cpu * 1e6 / backlog as f64,
        peak_rss_mib: rss,
        p50_ms: quantile(0.50, &before, &after) * 1e3,
        p95_ms: quantile(0.95, &before, &after) * 1e3,
        p99_ms: quantile(0.99, &before, &after) * 1e3,
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let backlog = env_or("SCORE_WORKER_BENCH_EVENTS", 20_000) as usize;
    let rate = env_or("SCORE_WORKER_BENCH_RATE", 500);
    let seconds = env_or("SCORE_WORKER_BENCH_SECONDS", 10);
    ensure_schema().await;
    let mut variants = vec![
        Variant {
            name: "flush50",
            max_scores: 50,
            binary: None,
        },
        Variant {
            name: "flush1",
            max_scores: 1,
            binary: None,
        },
    ];
    if let Ok(binary) = std::env::var("SCORE_WORKER_BENCH_BASELINE") {
        variants.push(Variant {
            name: "baseline",
            max_scores: 50,
            binary: Some(binary),
        });
    }
    println!("backlog {backlog} events, paced {rate}/s for {seconds}s; worker = release binary, local nats-server + Cassandra");
    println!(
        "{:<8} {:>10} {:>12} {:>10} {:>8} {:>8} {:>8}",
        "variant", "events/s", "cpu µs/evt", "peak MiB", "p50 ms", "p95 ms", "p99 ms"
    );
    let mut results: HashMap<&str, Figures> = HashMap::new();
    for v in &variants {
        let f = run_variant(v, backlog, rate, seconds).await;
        println!(
            "{:<8} {:>10.0} {:>12.1} {:>10.1} {:>8.1} {:>8.1} {:>8.1}",
            v.name,
            f.events_per_s,
            f.cpu_us_per_event,
            f.peak_rss_mib,
            f.p50_ms,
            f.p95_ms,
            f.p99_ms
        );
        results.insert(v.name, f);
    }
    let ratio = |a: &Figures, b: &Figures, label: &str| {
        println!(
            "ratios {label}: throughput {:.2}x, cpu per event {:.2}x, peak RSS {:.2}x, p95 latency {:.2}x",
            a.events_per_s / b.events_per_s,
            a.cpu_us_per_event / b.cpu_us_per_event,
            a.peak_rss_mib / b.peak_rss_mib,
            a.p95_ms / b.p95_ms
        )
    };
    ratio(&results["flush50"], &results["flush1"], "flush50/flush1");
    if let Some(baseline) = results.get("baseline") {
        ratio(&results["flush50"], baseline, "flush50/baseline");
    }
}
