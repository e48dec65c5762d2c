//! The chaos suite's own server pair, the worker binary as a child process, publishing, and bounded
//! waiting.
//!
//! Servers: the `chaos` set of environments.toml (a nats-server and a Cassandra of their own), started
//! and stopped in-process by the xtask library ([`services`]); the
//! dev set that other tests use is never touched. `SCORE_WORKER_LOCAL` and the `SCORE_WORKER_*_PORT`
//! variables move the pair, e.g. to run the suite from a second work tree. Every wait has a deadline, every loop a bound, every address is
//! loopback. Worker logs go to `target/tmp/chaos/<scenario>/`.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use async_nats::HeaderMap;
use score_worker::config::Config;
use score_worker::{nats, store};
use scylla::client::session::Session;
use tokio::sync::{Mutex, MutexGuard, OnceCell};

use crate::support;
use crate::workload::Workload;

/// The chaos set of environments.toml, moved by `SCORE_WORKER_LOCAL` / `SCORE_WORKER_*_PORT` when set.
fn chaos() -> xtask::environments::Environment {
    xtask::environments::Environment::load("chaos").expect("environments.toml")
}

/// The pair's state directory (`.local/chaos`).
fn local() -> PathBuf {
    chaos().state_dir
}

pub fn nats_url() -> String {
    chaos().nats_url()
}

pub fn cql_node() -> String {
    chaos().cql_node()
}

/// Runs a server command of the xtask library (words separated by spaces: `up`, `stop-nats`,
/// `cassandra-pid`, `cluster-kill nats 2`, ...) for the chaos pair and the clusters; what it printed
/// (blocking: call from `spawn_blocking`).
pub fn services_blocking(cmd: &str) -> Result<String, String> {
    let args: Vec<&str> = cmd.split_whitespace().collect();
    chaos()
        .services(&args)
        .map(|out| out.trim().to_owned())
        .map_err(|e| format!("cargo xtask services chaos {cmd}: {e}"))
}

/// [`services_blocking`] off the runtime's threads; panics on failure.
pub async fn services(cmd: impl Into<String>) -> String {
    let cmd = cmd.into();
    tokio::task::spawn_blocking(move || services_blocking(&cmd))
        .await
        .expect("services task")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Sends a signal with `kill(1)` (the crate has no libc binding; this is what an operator does).
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Resumes a SIGSTOPped process when dropped, even if the scenario panics.
pub struct Thaw(pub u32);
impl Drop for Thaw {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// Starts nats-server again when dropped, should a scenario panic while it is stopped.
pub struct Restart(pub bool);
impl Drop for Restart {
    fn drop(&mut self) {
        if self.0 {
            let _ = services_blocking("start-nats");
        }
    }
}

/// Scenarios on the same servers run one at a time, whatever `--test-threads` says; a scenario on
/// the pair and one on the clusters may run side by side.
static PAIR: Mutex<()> = Mutex::const_new(());
static CLUSTERS: Mutex<()> = Mutex::const_new(());
static SERVERS: OnceCell<()> = OnceCell::const_new();

/// A knob from the environment (soak mode raises them).
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Scales the scenario sizes: `SCORE_WORKER_CHAOS_SCALE` (default 1).
pub fn scaled(n: usize) -> usize {
    n * env_usize("SCORE_WORKER_CHAOS_SCALE", 1).max(1)
}

/// The seed of a scenario's workload: `SCORE_WORKER_CHAOS_SEED` or random; printed for replays.
pub fn seed() -> u64 {
    std::env::var("SCORE_WORKER_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random)
}

/// Everything one scenario uses: its config (unique stream, consumer, DLQ), NATS and database
/// clients, a log directory, and the serial lock.
pub struct Scenario {
    pub name: &'static str,
    pub config: Config,
    pub js: jetstream::Context,
    pub session: Arc<Session>,
    pub logs: PathBuf,
    pub seed: u64,
    spawned: usize,
    _locks: Locks,
}

/// The servers a scenario injects its faults into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servers {
    /// The chaos set's nats-server and Cassandra.
    Pair,
    /// The 3-node NATS and Cassandra clusters.
    Clusters,
}

/// One scenario at a time on the same [`Servers`], in this process (`--test-threads`
/// notwithstanding) and across processes.
pub struct Locks {
    _suite: File,
    _serial: MutexGuard<'static, ()>,
}

impl Locks {
    pub async fn take(servers: Servers) -> Locks {
        let (serial, file) = match servers {
            Servers::Pair => (&PAIR, "suite.lock"),
            Servers::Clusters => (&CLUSTERS, "clusters.lock"),
        };
        let serial = serial.lock().await;
        let suite = tokio::task::spawn_blocking(move || suite_lock(file))
            .await
            .expect("lock task");
        Locks {
            _suite: suite,
            _serial: serial,
        }
    }
}

/// Defaults of the suite (scenarios tweak them): short ack_wait so crashed deliveries come back
/// quickly, a budget and a nak delay that keep outages short.
pub fn suite_defaults(config: &mut Config) {
    config.nats.ack_wait = Duration::from_secs(5);
    config.retry.progress_interval = Duration::from_secs(1);
    config.nats.max_deliver = 50;
    config.shutdown.timeout = Duration::from_secs(10);
}

impl Scenario {
    /// Takes the serial lock, makes sure the pair is up and migrated, creates the scenario's streams
    /// and consumer with `config` as `tweak` leaves it.
    pub async fn start(name: &'static str, tweak: impl FnOnce(&mut Config)) -> Scenario {
        let locks = Locks::take(Servers::Pair).await;
        SERVERS
            .get_or_init(|| async {
                // A run killed mid-scenario may have left a server SIGSTOPped: resume it first.
                for which in ["cassandra-pid", "nats-pid"] {
                    let pid = tokio::task::spawn_blocking(move || services_blocking(which))
                        .await
                        .expect("services task");
                    if let Some(pid) = pid.ok().and_then(|p| p.parse::<u32>().ok()) {
                        signal(pid, "CONT");
                    }
                }
                let up = services("up").await;
                eprintln!("chaos servers:\n{up}");
            })
            .await;
        let mut config = support::base_config_at(name, &nats_url(), &cql_node());
        suite_defaults(&mut config);
        tweak(&mut config);
        support::ensure_schema_for(&config).await;
        Scenario::open(name, config, locks).await
    }

    /// The scenario on servers `config` points at, already up and migrated (the pair or the
    /// clusters): creates (or adopts) its streams and consumer and opens the clients.
    pub async fn open(name: &'static str, config: Config, locks: Locks) -> Scenario {
        let client = nats::connect(&config.nats, None).await.unwrap_or_else(|e| {
            panic!("the chaos nats-server answers at {}: {e}", config.nats.url)
        });
        let js = nats::jetstream(client.clone(), &config.nats);
        nats::ensure_topology(&js, &config.nats)
            .await
            .expect("streams and consumer");
        let session = Arc::new(store::connect(&config.scylla).await.unwrap_or_else(|e| {
            panic!(
                "the chaos Cassandra answers at {:?}: {e}",
                config.scylla.nodes
            )
        }));
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("chaos")
            .join(name);
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).expect("log directory");
        let seed = seed();
        Scenario {
            name,
            config,
            js,
            session,
            logs,
            seed,
            spawned: 0,
            _locks: locks,
        }
    }

    /// Starts the worker binary as a child process, configured through `SCORE_WORKER__*`.
    pub fn spawn_worker(&mut self) -> WorkerProc {
        self.spawned += 1;
        let port = support::free_port();
        let log = self.logs.join(format!("worker-{}.log", self.spawned));
        let file = File::create(&log).expect("worker log file");
        let mut cmd = support::worker_command(&self.config, port);
        cmd.arg("run")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file);
        cmd.env("NO_COLOR", "1").env(
            "RUST_LOG",
            std::env::var("SCORE_WORKER_CHAOS_LOG").unwrap_or_else(|_| "info".into()),
        );
        let child = cmd.spawn().expect("the worker binary starts");
        WorkerProc {
            name: format!("{}#{}", self.name, self.spawned),
            child,
            port,
            log,
            exited: None,
        }
    }

    pub async fn consumer_info(&self) -> Result<jetstream::consumer::Info, String> {
        let stream = self
            .js
            .get_stream(&self.config.nats.stream)
            .await
            .map_err(|e| e.to_string())?;
        let mut consumer = stream
            .get_consumer::<pull::Config>(&self.config.nats.consumer)
            .await
            .map_err(|e| e.to_string())?;
        consumer.info().await.cloned().map_err(|e| e.to_string())
    }

    /// Messages in a stream.
    pub async fn stream_messages(&self, stream: &str) -> Result<u64, String> {
        let mut s = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| e.to_string())?;
        s.info()
            .await
            .map(|i| i.state.messages)
            .map_err(|e| e.to_string())
    }

    /// Waits until the consumer has nothing pending and nothing unacknowledged. Fails early if
    /// every worker died; the error carries the consumer state and the workers' log tails.
    pub async fn wait_drained(&self, workers: &mut [WorkerProc], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.consumer_info().await {
                Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => return,
                Ok(info) => {
                    format!(
                        "num_pending={} num_ack_pending={} num_redelivered={} delivered={:?} ack_floor={:?}",
                        info.num_pending,
                        info.num_ack_pending,
                        info.num_redelivered,
                        info.delivered.stream_sequence,
                        info.ack_floor.stream_sequence
                    )
                }
                Err(e) => e,
            };
            let all_dead = workers.iter_mut().all(|w| !w.running());
            if all_dead || Instant::now() >= deadline {
                let tails: Vec<String> = workers.iter().map(|w| w.log_tail(30)).collect();
                panic!(
                    "{}: backlog not drained ({}): {last}\n{}",
                    self.name,
                    if all_dead {
                        "every worker exited"
                    } else {
                        "timed out"
                    },
                    tails.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes the scenario's streams (their data is no longer needed once verified).
    pub async fn cleanup(&self) {
        let _ = self.js.delete_stream(&self.config.nats.stream).await;
        let _ = self
            .js
            .delete_stream(&self.config.nats.deadletter_stream)
            .await;
    }
}

/// Another process running the suite (a second `make chaos`) shares the servers too: an exclusive
/// lock on `.local/chaos/<name>` (one per [`Servers`]), held for one scenario, waited for up to 30
/// minutes.
fn suite_lock(name: &str) -> File {
    let dir = local();
    std::fs::create_dir_all(&dir).expect(".local/chaos");
    let file = File::create(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        match file.try_lock() {
            Ok(()) => return file,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500))
            }
            Err(e) => panic!("cannot lock .local/chaos/{name}: {e}"),
        }
    }
}

/// The worker binary running as a child process. Dropping it SIGKILLs it if it still runs.
pub struct WorkerProc {
    pub name: String,
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    exited: Option<ExitStatus>,
}

impl WorkerProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited.is_none()
    }

    /// `/metrics`, parsed: sample name (with labels) → value. None if it does not answer.
    pub async fn metrics(&self) -> Option<HashMap<String, f64>> {
        let body = http_get(self.port, "/metrics").await?;
        Some(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// One metric, 0 if absent or unreachable.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .and_then(|m| m.get(name).copied())
            .unwrap_or(0.0)
    }

    /// `/readyz`: (status, body), None if it does not answer.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        http_exchange(self.port, "/readyz").await
    }

    pub async fn processed(&self) -> u64 {
        self.metric("score_worker_messages_processed_total").await as u64
    }

    /// Waits until `/metrics` answers (the worker has connected to both servers and bound HTTP).
    pub async fn wait_up(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.metrics().await.is_none() {
            assert!(
                self.running(),
                "{} exited during start-up: {:?}\n{}",
                self.name,
                self.exited,
                self.log_tail(30)
            );
            assert!(
                Instant::now() < deadline,
                "{} did not serve /metrics within {timeout:?}\n{}",
                self.name,
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a flush is being written (`score_worker_inflight_batches` ≥ 1) and at least
    /// `min_processed` messages were acked by this process, so a signal lands mid-flush. Returns
    /// false if that did not happen within `timeout` (e.g. nothing left to do).
    pub async fn wait_mid_flush(&mut self, min_processed: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.running() {
            if let Some(m) = self.metrics().await {
                let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
                if get("score_worker_inflight_batches") >= 1.0
                    && get("score_worker_messages_processed_total") as u64 >= min_processed
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        self.exited = self.child.wait().ok();
    }

    /// SIGTERM, then waits up to `timeout` for the exit; returns the status and how long it took
    /// (None if it did not exit in time, after which it is SIGKILLed).
    pub async fn terminate(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        if !self.running() {
            return self.exited.map(|s| (s, Duration::ZERO));
        }
        signal(self.pid(), "TERM");
        while started.elapsed() < timeout {
            if !self.running() {
                return self.exited.map(|s| (s, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill();
        None
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        support::proc_status_kib(self.pid(), "VmHWM:")
    }

    /// The last `n` lines of the worker's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ({}), last {} lines ---\n{}",
            self.name,
            self.log.display(),
            n.min(lines.len()),
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }

    /// Log lines matching `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.1 GET on loopback, bounded by 2 s; the body, if the status is 200.
async fn http_get(port: u16, path: &str) -> Option<String> {
    http_exchange(port, path)
        .await
        .and_then(|(status, body)| (status == 200).then_some(body))
}

/// A plain HTTP/1.1 GET on loopback, bounded by 2 s: (status, body), None if nothing answered.
async fn http_exchange(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    support::http_try(addr, path, Duration::from_secs(2)).await
}

/// Publishes `items` of `workload` (a range of its publish order), 1,000 unacknowledged at a
/// time; a message whose publish or ack fails (e.g. nats-server is restarting) is published again
/// under the same `Nats-Msg-Id`, which the stream de-duplicates, until `timeout`.
pub async fn publish(
    js: &jetstream::Context,
    workload: &Workload,
    range: std::ops::Range<usize>,
    timeout: Duration,
) -> PublishStats {
    const WINDOW: usize = 1000;
    let deadline = Instant::now() + timeout;
    let mut stats = PublishStats::default();
    let mut queue: Vec<usize> = range.collect();
    let mut round = 0;
    while !queue.is_empty() {
        round += 1;
        assert!(
            Instant::now() < deadline,
            "publishing: {} messages still not stored after {timeout:?}",
            queue.len()
        );
        if round > 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut failed = Vec::new();
        for chunk in queue.chunks(WINDOW) {
            let mut acks = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let m = workload.message(workload.items[i]);
                let mut headers = HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, m.msg_id.as_str());
                match js.publish_with_headers(m.subject, headers, m.payload).await {
                    Ok(ack) => acks.push((i, ack)),
                    Err(_) => failed.push(i),
                }
            }
            let results = futures::future::join_all(
                acks.into_iter()
                    .map(|(i, ack)| async move { (i, ack.await) }),
            )
            .await;
            for (i, result) in results {
                match result {
                    Ok(ack) if ack.duplicate => stats.duplicates += 1,
                    Ok(_) => stats.stored += 1,
                    Err(_) => failed.push(i),
                }
            }
        }
        stats.retried += failed.len();
        queue = failed;
    }
    stats
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PublishStats {
    pub stored: usize,
    pub duplicates: usize,
    pub retried: usize,
}

impl PublishStats {
    pub fn add(&mut self, other: PublishStats) {
        self.stored += other.stored;
        self.duplicates += other.duplicates;
        self.retried += other.retried;
    }
}

/// Seconds with one decimal.
pub fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}
