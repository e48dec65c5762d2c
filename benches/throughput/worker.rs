//! A worker variant: a build of the binary as a child process, draining a backlog from its own stream
//! into its own keyspace, then a paced load; every figure is read from outside the process
//! (`/metrics`, `/proc`) so any build, old or new, is measured the same way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use score_worker::config::Config;

use crate::procfs::{self, CpuSample, Servers};
use crate::prom::{self, Warnings};
use crate::report::{Paced, Pass};
use crate::slices::Slicer;
use crate::support::{base_config, jetstream, worker_command, worker_env};
use crate::workload::{Generator, Message};

#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    pub max_scores: usize,
    /// Another build of the binary; `None` is this build.
    pub binary: Option<PathBuf>,
    /// Settings of this variant on top of the shipped ones: (`SECTION__KEY`, value).
    pub env: Vec<(String, String)>,
}

/// Names unique to one pass: stream, consumer and subjects from the test support, and a keyspace of
/// the same tag. The worker runs with the shipped batching, retry, NATS and shutdown settings.
pub fn pass_config(name: &str) -> Config {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut c = base_config(&format!("bench_{clean}_"));
    let shipped = Config::defaults();
    c.nats.ack_wait = shipped.nats.ack_wait;
    c.nats.max_deliver = shipped.nats.max_deliver;
    c.batch = shipped.batch;
    c.retry = shipped.retry;
    c.shutdown = shipped.shutdown;
    c.scylla.keyspace = c.nats.consumer.trim_start_matches("worker_").to_string();
    c
}

/// The variant's binary with the configuration of `config` in its environment.
fn command(config: &Config, http_port: u16, v: &Variant) -> Command {
    let binary: Option<&Path> = v.binary.as_deref();
    let mut command = worker_command(config, http_port);
    for (key, value) in &v.env {
        command.env(format!("SCORE_WORKER__{key}"), value);
    }
    if let Some(binary) = binary {
        // Another build may not know settings added since; a setting at this build's default tells
        // it nothing, so only the ones that differ from the defaults are passed on.
        let defaults = worker_env(&Config::defaults(), 0);
        let mut other = Command::new(binary);
        for (k, v) in command.get_envs() {
            let default = |v| {
                defaults
                    .iter()
                    .any(|(dk, dv)| k == dk.as_str() && v == dv.as_str())
            };
            match v {
                Some(v) if default(v) => {}
                Some(v) => {
                    other.env(k, v);
                }
                None => {
                    other.env_remove(k);
                }
            }
        }
        command = other;
    }
    command.env("RUST_LOG", "warn");
    command
}

/// Applies the variant's own schema (`score-worker migrate`) to its keyspace.
pub fn migrate(config: &Config, v: &Variant) {
    let out = command(config, 0, v)
        .arg("migrate")
        .output()
        .expect("the worker binary runs");
    assert!(
        out.status.success(),
        "{} migrate: {}",
        v.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn subject(config: &Config, leaderboard: &str) -> String {
    let pattern = &config.nats.subjects[0];
    match pattern.strip_suffix(".>") {
        Some(prefix) => format!("{prefix}.{leaderboard}"),
        None => pattern.clone(),
    }
}

/// Publishes with up to 1,000 stream acks outstanding.
async fn publish(js: &async_nats::jetstream::Context, config: &Config, messages: &[Message]) {
    for window in messages.chunks(1000) {
        let mut acks = Vec::with_capacity(window.len());
        for m in window {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, m.msg_id.as_str());
            let subject = subject(config, &m.event.leaderboard);
            acks.push(
                js.publish_with_headers(subject, headers, m.event.payload())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("stored by the stream");
        }
    }
}

/// Polls `/metrics` until `processed` reaches `want`; returns the last scrape.
async fn wait_processed(addr: std::net::SocketAddr, want: f64, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = prom::scrape(addr).await.unwrap_or_default();
        if prom::sum(&text, prom::PROCESSED) >= want {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{want} messages not processed in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/metrics` every 50 ms until `processed` reaches `want`, recording a point of `slicer` per
/// scrape; returns the last scrape and its CPU sample.
async fn drain(
    addr: std::net::SocketAddr,
    want: f64,
    timeout: Duration,
    servers: &Servers,
    slicer: &mut Slicer,
) -> (String, CpuSample) {
    let deadline = Instant::now() + timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(text) = prom::scrape(addr).await else {
            assert!(
                Instant::now() < deadline,
                "{want} messages not processed in {timeout:?}"
            );
            continue;
        };
        let sample = servers.sample();
        let done = prom::sum(&text, prom::PROCESSED);
        slicer.record(done, sample, Warnings::of(&text).map(|w| w.tombstones));
        if done >= want {
            return (text, sample);
        }
        assert!(
            Instant::now() < deadline,
            "{want} messages not processed in {timeout:?}"
        );
    }
}

/// Runs one variant: backlog drain, then the paced phase. Returns the pass and every message the
/// worker was given (for the correctness check).
pub async fn run(
    v: &Variant,
    config: &Config,
    backlog: &[Message],
    paced: &Generator,
    rate: Option<f64>,
    paced_seconds: f64,
    servers: &Servers,
) -> (Pass, Vec<Message>) {
    let mut config = config.clone();
    config.batch.max_scores = v.max_scores;
    let config = &config;
    let (_client, js) = jetstream(config).await;
    publish(&js, config, backlog).await;
    let idle = servers.idle_db_cpu_pct(Duration::from_secs(1)).await;

    let port = crate::support::free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = command(config, port, v)
        .arg("run")
        .spawn()
        .expect("the worker binary starts");
    let pid = child.id();
    let ready_by = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(text) = prom::scrape(addr).await {
            break text;
        }
        assert!(
            Instant::now() < ready_by,
            "{}: worker did not start",
            v.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (s0, worker0) = (servers.sample(), procfs::cpu_seconds(pid));
    let (done0, requests0, retries0) = (
        prom::sum(&first, prom::PROCESSED),
        prom::sum(&first, prom::REQUESTS),
        prom::sum(&first, prom::RETRIES),
    );
    let statements0 = prom::sum_if_exported(&first, prom::STATEMENTS);
    let warnings0 = Warnings::of(&first);
    let n = backlog.len() as f64;
    let mut slicer = Slicer::new(
        done0,
        n - done0,
        s0,
        warnings0.as_ref().map(|w| w.tombstones),
    );
    let timeout = Duration::from_secs(600.max(backlog.len() as u64 / 50));
    let (drained, s1) = drain(addr, n, timeout, servers, &mut slicer).await;
    let worker1 = procfs::cpu_seconds(pid);
    let seconds = s1.at.duration_since(s0.at).as_secs_f64();
    let counted = n - done0;
    let per_event = |cpu: f64| cpu * 1e6 / counted;
    let mut pass = Pass {
        variant: v.name.clone(),
        keyspace: config.scylla.keyspace.clone(),
        messages: counted as usize,
        seconds,
        events_per_s: counted / seconds,
        requests_per_event: (prom::sum(&drained, prom::REQUESTS) - requests0) / counted,
        statements_per_event: statements0
            .zip(prom::sum_if_exported(&drained, prom::STATEMENTS))
            .map(|(before, after)| (after - before) / counted),
        writer_cpu_us_per_event: per_event(worker1 - worker0),
        db_cpu_us_per_event: per_event(s1.cassandra - s0.cassandra),
        nats_cpu_us_per_event: Some(per_event(s1.nats - s0.nats)),
        db_idle_cpu_pct: idle,
        retried_writes: (prom::sum(&drained, prom::RETRIES) - retries0) as u64,
        slices: slicer.slices(),
        warnings: warnings0
            .zip(Warnings::of(&drained))
            .map(|(before, after)| after.since(&before)),
        ..Pass::default()
    };

    let mut all = backlog.to_vec();
    if paced_seconds > 0.0 {
        let rate = rate.unwrap_or(pass.events_per_s / 2.0).max(1.0);
        let count = (rate * paced_seconds).round().max(1.0) as usize;
        let messages = paced.clone().take(count);
        let before = prom::buckets(&drained, prom::LATENCY);
        let start = tokio::time::Instant::now();
        let tick = Duration::from_millis(50);
        let mut sent = 0;
        let mut i = 0u32;
        while sent < count {
            i += 1;
            tokio::time::sleep_until(start + tick * i).await;
            let due = ((rate * (tick * i).as_secs_f64()).round() as usize).min(count);
            publish(&js, config, &messages[sent..due.max(sent)]).await;
            sent = due.max(sent);
        }
        let achieved = count as f64 / start.elapsed().as_secs_f64();
        let after = wait_processed(addr, n + count as f64, Duration::from_secs(120)).await;
        let after = prom::buckets(&after, prom::LATENCY);
        pass.paced = Some(Paced {
            target_rate: rate,
            achieved_rate: achieved,
            messages: count,
            p50_ms: prom::quantile(0.50, &before, &after) * 1e3,
            p95_ms: prom::quantile(0.95, &before, &after) * 1e3,
            p99_ms: prom::quantile(0.99, &before, &after) * 1e3,
        });
        all.extend(messages);
    }
    pass.peak_rss_mib = Some(procfs::peak_rss_mib(pid));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    for stream in [&config.nats.stream, &config.nats.deadletter_stream] {
        let _ = js.delete_stream(stream).await;
    }
    (pass, all)
}
