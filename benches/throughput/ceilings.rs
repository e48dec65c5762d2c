//! The two ceilings, written from this process with the driver and no NATS, for the same backlog:
//!
//! - **protocol**: the worker's own store and statements ([`library::ProtocolStore`]) on the flushes the
//!   worker's batcher makes of the backlog, many flushes in flight: the fastest the worker's protocol
//!   can go here, whatever the consumer and pipeline around it do;
//! - **naive**: what the peer writers do: three rows per event (by-profile upsert, leaderboard insert,
//!   history insert, each `USING TIMESTAMP` the event time), one unlogged batch per table per
//!   `naive_batch` events, no read and no cleanup, so superseded leaderboard rows stay behind.
//!
//! A write that fails is retried with backoff for up to a minute, so that a stall of the shared database
//! does not end the run; for the naive ceiling every attempt counts as a request (the protocol
//! ceiling's store counts its own).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use score_worker::config::Config;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use crate::library::{self, ProtocolStore};
use crate::procfs::Servers;
use crate::report::{percentile, Pass};
use crate::slices::Slicer;
use crate::workload::Message;

/// Retry budget of one write: the worker's own shipped budget is 30 s; a ceiling waits a little longer
/// so that a stall of the shared database shows as a slow pass rather than a lost run.
const RETRY_BUDGET: Duration = Duration::from_secs(60);

/// Writes of the current pass that needed more than one attempt.
static RETRIED: AtomicU64 = AtomicU64::new(0);

/// Runs `op` until it succeeds, backing off from 100 ms to 5 s, for at most [`RETRY_BUDGET`];
/// returns the attempts made.
async fn with_retries<F, Fut, T, E>(what: &str, mut op: F) -> u32
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        match op().await {
            Ok(_) => return attempt,
            Err(e) if start.elapsed() + delay < RETRY_BUDGET => {
                if attempt == 1 && RETRIED.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("bench: {what} failed, retrying: {e}");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => panic!("{what} still failing after {attempt} attempts: {e}"),
        }
    }
    unreachable!()
}

fn finish(
    name: &str,
    config: &Config,
    messages: usize,
    s0: crate::procfs::CpuSample,
    s1: crate::procfs::CpuSample,
    requests: f64,
) -> Pass {
    let seconds = s1.at.duration_since(s0.at).as_secs_f64();
    let n = messages as f64;
    Pass {
        variant: name.into(),
        keyspace: config.scylla.keyspace.clone(),
        messages,
        seconds,
        events_per_s: n / seconds,
        requests_per_event: requests / n,
        writer_cpu_us_per_event: (s1.bench - s0.bench) * 1e6 / n,
        db_cpu_us_per_event: (s1.cassandra - s0.cassandra) * 1e6 / n,
        retried_writes: RETRIED.load(Ordering::Relaxed),
        ..Pass::default()
    }
}

/// The protocol ceiling at `concurrency` flushes in flight.
pub async fn protocol(
    config: &Config,
    backlog: &[Message],
    max_scores: usize,
    concurrency: usize,
    servers: &Servers,
) -> Pass {
    let session = library::connect(&config.scylla).await;
    let store = ProtocolStore::open(session, &config.scylla).await;
    let events: Vec<_> = backlog.iter().map(|m| m.event.clone()).collect();
    let flushes = library::flushes(&events, max_scores);
    let idle = servers.idle_db_cpu_pct(Duration::from_secs(1)).await;

    RETRIED.store(0, Ordering::Relaxed);
    let (s0, requests0, statements0) = (servers.sample(), store.requests(), store.statements());
    let warnings0 = store.warnings();
    let tombstones = |store: &ProtocolStore| store.warnings().map(|w| w.tombstones);
    let total = backlog.len() as f64;
    let mut slicer = Slicer::new(0.0, total, s0, tombstones(&store));
    let store = &store;
    let mut done = 0.0;
    let mut latencies = Vec::with_capacity(flushes.len());
    let mut writes = futures::stream::iter(flushes.iter())
        .map(|flush| async move {
            let start = Instant::now();
            with_retries("protocol flush", || store.write(flush)).await;
            (start.elapsed().as_secs_f64(), flush.1.len() as f64)
        })
        .buffer_unordered(concurrency);
    while let Some((latency, events)) = writes.next().await {
        latencies.push(latency);
        done += events;
        // A point only where a tenth ends (reading /proc and the metrics costs this process CPU).
        if done >= slicer.next_boundary() && done < total {
            slicer.record(done, servers.sample(), tombstones(store));
        }
    }
    let s1 = servers.sample();
    slicer.record(total, s1, tombstones(store));

    let mut pass = finish(
        &format!("protocol c={concurrency}"),
        config,
        backlog.len(),
        s0,
        s1,
        store.requests() - requests0,
    );
    pass.statements_per_event = statements0
        .zip(store.statements())
        .map(|(before, after)| (after - before) / backlog.len() as f64);
    pass.concurrency = Some(concurrency);
    pass.db_idle_cpu_pct = idle;
    pass.slices = slicer.slices();
    pass.warnings = warnings0
        .zip(store.warnings())
        .map(|(before, after)| after.since(&before));
    pass.flush_p50_ms = Some(percentile(&mut latencies, 0.50) * 1e3);
    pass.flush_p99_ms = Some(percentile(&mut latencies, 0.99) * 1e3);
    pass
}

struct Naive {
    by_profile: PreparedStatement,
    leaderboard: PreparedStatement,
    history: PreparedStatement,
    buckets: i32,
}

impl Naive {
    async fn prepare(session: &Session, config: &Config) -> Naive {
        let ks = &config.scylla.keyspace;
        let prepare = |cql: String| async move {
            let mut p = session.prepare(cql).await.expect("prepare");
            p.set_is_idempotent(true);
            p
        };
        Naive {
            by_profile: prepare(format!("UPDATE {ks}.scores_by_profile USING TIMESTAMP ? SET score = ?, wallet_address = ?, updated_at = ? WHERE profile_id = ? AND leaderboard_id = ?")).await,
            leaderboard: prepare(format!("INSERT INTO {ks}.scores (leaderboard_id, bucket, score, profile_id, wallet_address, updated_at) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")).await,
            history: prepare(format!("INSERT INTO {ks}.score_history (profile_id, day, occurred_at, event_id, leaderboard_id, score, wallet_address) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")).await,
            buckets: config.scylla.leaderboard_buckets,
        }
    }

    fn batch(statement: &PreparedStatement, rows: usize) -> Batch {
        let mut b = Batch::new(BatchType::Unlogged);
        for _ in 0..rows {
            b.append_statement(statement.clone());
        }
        b.set_is_idempotent(true);
        b
    }

    /// The three batches of one chunk of messages, each as a future that returns its attempts and
    /// the chunk's messages.
    fn jobs<'a>(
        &'a self,
        session: &'a Session,
        chunk: &'a [Message],
    ) -> Vec<BoxFuture<'a, (u32, usize)>> {
        let ms = |t: i64| CqlTimestamp(t.div_euclid(1000));
        let day = |t: i64| {
            chrono::DateTime::from_timestamp_micros(t)
                .map(|d| d.date_naive())
                .unwrap_or_default()
        };
        let events = chunk.iter().map(|m| &m.event);
        let by_profile: Vec<_> = events
            .clone()
            .map(|e| {
                (
                    e.at_micros,
                    e.score,
                    e.wallet.as_str(),
                    ms(e.at_micros),
                    e.profile,
                    e.leaderboard.as_str(),
                )
            })
            .collect();
        let leaderboard: Vec<_> = events
            .clone()
            .map(|e| {
                let bucket = library::bucket_of(e.profile, self.buckets);
                (
                    e.leaderboard.as_str(),
                    bucket,
                    e.score,
                    e.profile,
                    e.wallet.as_str(),
                    ms(e.at_micros),
                    e.at_micros,
                )
            })
            .collect();
        let history: Vec<_> = events
            .map(|e| {
                (
                    e.profile,
                    day(e.at_micros),
                    ms(e.at_micros),
                    e.event_id.as_str(),
                    e.leaderboard.as_str(),
                    e.score,
                    e.wallet.as_str(),
                    e.at_micros,
                )
            })
            .collect();
        let n = chunk.len();
        vec![
            Box::pin(async move {
                let b = Self::batch(&self.by_profile, n);
                let attempts =
                    with_retries("naive by-profile batch", || session.batch(&b, &by_profile)).await;
                (attempts, n)
            }),
            Box::pin(async move {
                let b = Self::batch(&self.leaderboard, n);
                let attempts = with_retries("naive leaderboard batch", || {
                    session.batch(&b, &leaderboard)
                })
                .await;
                (attempts, n)
            }),
            Box::pin(async move {
                let b = Self::batch(&self.history, n);
                let attempts =
                    with_retries("naive history batch", || session.batch(&b, &history)).await;
                (attempts, n)
            }),
        ]
    }
}

/// The naive ceiling.
pub async fn naive(
    config: &Config,
    backlog: &[Message],
    batch: usize,
    concurrency: usize,
    servers: &Servers,
) -> Pass {
    let session: Arc<Session> = library::connect(&config.scylla).await;
    let naive = Naive::prepare(&session, config).await;
    let idle = servers.idle_db_cpu_pct(Duration::from_secs(1)).await;

    RETRIED.store(0, Ordering::Relaxed);
    let s0 = servers.sample();
    let total = backlog.len() as f64;
    let mut slicer = Slicer::new(0.0, total, s0, None);
    let mut jobs = futures::stream::iter(backlog.chunks(batch))
        .flat_map(|chunk| futures::stream::iter(naive.jobs(&session, chunk)))
        .buffer_unordered(concurrency);
    let (mut requests, mut done) = (0, 0.0);
    while let Some((attempts, events)) = jobs.next().await {
        requests += attempts;
        // Each of a chunk's three batches carries a third of its messages' progress.
        done += events as f64 / 3.0;
        if done >= slicer.next_boundary() && done < total - 1e-6 {
            slicer.record(done, servers.sample(), None);
        }
    }
    let s1 = servers.sample();
    slicer.record(total, s1, None);

    let mut pass = finish("naive", config, backlog.len(), s0, s1, f64::from(requests));
    pass.slices = slicer.slices();
    pass.statements_per_event = Some(3.0);
    pass.concurrency = Some(concurrency);
    pass.db_idle_cpu_pct = idle;
    pass
}
