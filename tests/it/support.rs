//! Test harness: real nats-server and Cassandra on loopback (started by `cargo xtask up dev`),
//! a shared migrated keyspace, and per-test isolation through unique streams, subjects, consumers
//! and leaderboard ids. A missing server is a test failure, never a skip.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;
use tokio::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_nats::jetstream;
use futures::StreamExt;
use rand::Rng;
use score_worker::app::App;
use score_worker::cmd::sample;
use score_worker::config::{Config, Retention};
use score_worker::metrics::Metrics;
use score_worker::{nats, schema, store};
use scylla::client::session::Session;
use tokio::sync::oneshot;
use uuid::Uuid;

/// One keyspace per schema version: branches at different versions share one Cassandra, and a worker
/// refuses readiness on a keyspace migrated past its own version.
pub const KEYSPACE: &str = "score_worker_it_v3";

/// The databases (by contact points) this binary has migrated.
static SCHEMA: Mutex<Vec<Vec<String>>> = Mutex::const_new(Vec::new());
static SERVERS: RwLock<()> = RwLock::const_new(());
/// Taken by each test that freezes or stops a database, so that they run one at a time.
static ALONE: Mutex<()> = Mutex::const_new(());

/// Held by every test that needs the servers healthy for its whole run.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    SERVERS.read().await
}

/// Held by a test that injects a fault into a shared server.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SERVERS.write().await
}

/// Applies the schema once per test binary (schema changes are slow; truncation is not needed
/// because every test uses its own leaderboard ids and profiles).
pub async fn ensure_schema() {
    ensure_schema_for(&base_config("schema")).await
}

/// Applies the schema once per test binary on the database `config` points at.
pub async fn ensure_schema_for(config: &Config) {
    let mut done = SCHEMA.lock().await;
    if !done.contains(&config.scylla.nodes) {
        migrated_session(config, "Cassandra must be running (cargo xtask up dev)").await;
        done.push(config.scylla.nodes.clone());
    }
}

/// A session on `config`'s database, its schema migrated; `must` says what must answer (the
/// failure's words).
pub async fn migrated_session(config: &Config, must: &str) -> Session {
    let session = store::connect(&config.scylla)
        .await
        .unwrap_or_else(|e| panic!("{must}: {e}"));
    schema::migrate(&session, &config.scylla, false)
        .await
        .unwrap_or_else(|e| panic!("migrate ({must}): {e:#}"));
    session
}

/// Defaults pointed at the dev set's servers (environments.toml), with names unique to `test`. The
/// ports follow `SCORE_WORKER_NATS_PORT` / `SCORE_WORKER_CQL_PORT` when set (`cargo xtask env SET`
/// exports them), so the suite (including the tests that freeze the database) can run against a pair
/// of its own.
pub fn base_config(test: &str) -> Config {
    let dev = xtask::environments::Environment::load("dev").expect("environments.toml");
    base_config_at(test, &dev.nats_url(), &dev.cql_node())
}

/// Like [`base_config`] for another server set (environments.toml).
pub fn base_config_at(test: &str, nats_url: &str, cql_node: &str) -> Config {
    let mut c = Config::defaults();
    c.nats.url = nats_url.into();
    c.scylla.nodes = vec![cql_node.into()];
    let tag = format!(
        "{}{}",
        test.replace(['-', '.'], "_"),
        &Uuid::new_v4().simple().to_string()[..8]
    );
    c.nats.subjects = vec![format!("it.{tag}.scores.update.>")];
    c.nats.stream = format!("IT_{tag}");
    c.nats.deadletter_stream = format!("IT_{tag}_DLQ");
    c.nats.deadletter_prefix = format!("it.{tag}.scores.deadletter");
    c.nats.consumer = format!("worker_{tag}");
    c.nats.ack_wait = Duration::from_secs(10);
    c.nats.max_deliver = 20;
    c.scylla.keyspace = KEYSPACE.into();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.batch.linger = Duration::from_millis(50);
    c.retry.initial_backoff = Duration::from_millis(50);
    c.retry.max_backoff = Duration::from_millis(500);
    c.retry.total_budget = Duration::from_secs(3);
    c.retry.nak_delay = Duration::from_millis(500);
    c.retry.progress_interval = Duration::from_secs(2);
    c.shutdown.timeout = Duration::from_secs(15);
    c
}

/// An in-process worker.
pub struct Worker {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub health: Arc<score_worker::health::Health>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Worker {
    pub async fn start(config: Config) -> Worker {
        // Silent unless asked: SCORE_WORKER_TEST_LOG=1 (RUST_LOG picks the level).
        if std::env::var_os("SCORE_WORKER_TEST_LOG").is_some() {
            score_worker::telemetry::init(score_worker::config::LogFormat::Text, std::io::stderr);
        }
        let app = App::build(config).await.expect("worker starts");
        let addr = app.http_addr();
        let metrics = app.metrics();
        let health = app.health();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Worker {
            addr,
            metrics,
            health,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub fn processed(&self) -> u64 {
        self.metrics.messages_processed.get()
    }

    /// Publishes `e` ([`publish`], its event id as `Nats-Msg-Id`) and waits (at most 60 s, the
    /// failure naming `what`) until this worker has processed `total` messages in all.
    pub async fn publish_and_wait(
        &self,
        (js, config): (&jetstream::Context, &Config),
        e: &Event,
        total: u64,
        what: &str,
    ) {
        publish(js, config, e, &e.event_id).await;
        let timeout = Duration::from_secs(60);
        wait_until(what, timeout, || self.processed() >= total).await;
    }
}

/// `n` in-process workers on one configuration, started one after the other: replicas sharing the
/// durable consumer.
pub async fn replicas(config: &Config, n: usize) -> Vec<Worker> {
    let mut workers = Vec::with_capacity(n);
    for _ in 0..n {
        workers.push(Worker::start(config.clone()).await);
    }
    workers
}

/// A NATS client and JetStream context for publishing and inspecting.
pub async fn jetstream(config: &Config) -> (async_nats::Client, jetstream::Context) {
    let client = nats::connect(&config.nats, None)
        .await
        .expect("nats-server must be running (cargo xtask up dev)");
    let js = nats::jetstream(client.clone(), &config.nats);
    nats::ensure_topology(&js, &config.nats)
        .await
        .expect("topology");
    (client, js)
}

/// One generated event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: String,
    pub profile: Uuid,
    pub wallet: String,
    pub leaderboard: String,
    pub score: i64,
    pub at_micros: i64,
}

impl Event {
    /// An event of `profile` (with its wallet, [`wallet_of`]) on `leaderboard`.
    pub fn new(
        event_id: impl Into<String>,
        profile: Uuid,
        leaderboard: &str,
        score: i64,
        at_micros: i64,
    ) -> Event {
        Event {
            event_id: event_id.into(),
            profile,
            wallet: wallet_of(profile),
            leaderboard: leaderboard.into(),
            score,
            at_micros,
        }
    }

    pub fn payload(&self) -> bytes::Bytes {
        sample::event_json(
            &self.event_id,
            self.profile,
            &self.wallet,
            &self.leaderboard,
            self.score,
            chrono::DateTime::from_timestamp_micros(self.at_micros).unwrap(),
        )
    }
}

pub fn wallet_of(profile: Uuid) -> String {
    format!("0x{}", &profile.simple().to_string()[..32].repeat(2)[..40])
}

/// Publishes with `Nats-Msg-Id` = `msg_id`.
pub async fn publish(js: &jetstream::Context, config: &Config, e: &Event, msg_id: &str) {
    let subject = sample::subject_for(&config.nats.subjects[0], &e.leaderboard);
    sample::publish(js, subject, msg_id, e.payload())
        .await
        .expect("publish");
}

pub async fn publish_raw(
    js: &jetstream::Context,
    config: &Config,
    suffix: &str,
    payload: Vec<u8>,
    msg_id: &str,
) {
    let subject = sample::subject_for(&config.nats.subjects[0], suffix);
    sample::publish(js, subject, msg_id, payload.into())
        .await
        .expect("publish");
}

/// The newest event per (leaderboard, profile), by the database's rule.
pub fn expected(events: &[Event]) -> HashMap<(String, Uuid), i64> {
    let mut newest: HashMap<(String, Uuid), (i64, u64, i64)> = HashMap::new();
    for e in events {
        let rank = (e.at_micros, score_worker::score::tie_rank(e.score), e.score);
        let slot = newest
            .entry((e.leaderboard.clone(), e.profile))
            .or_insert(rank);
        if (rank.0, rank.1) > (slot.0, slot.1) {
            *slot = rank;
        }
    }
    newest.into_iter().map(|(k, v)| (k, v.2)).collect()
}

pub async fn session() -> Session {
    session_on(&base_config("session")).await
}

/// A [`session`] on the database `config` points at (its contact points, the suite's defaults
/// otherwise: a test's short request timeout is not the checker's).
pub async fn session_on(config: &Config) -> Session {
    let mut scylla = base_config("session").scylla;
    scylla.nodes = config.scylla.nodes.clone();
    store::connect(&scylla).await.expect("session")
}

/// The opening most tests share after their configuration: a NATS client and JetStream context on
/// `config`'s topology ([`jetstream`]) and a database session on its database ([`session_on`]).
pub async fn nats_and_db(config: &Config) -> (async_nats::Client, jetstream::Context, Session) {
    let (client, js) = jetstream(config).await;
    (client, js, session_on(config).await)
}

/// Rows of one leaderboard page size: a bucket partition holds a row tombstone per score change, and
/// Cassandra refuses a read that meets 100,000 of them (`tombstone_failure_threshold`); pages of this
/// many live rows keep each read to the tombstones between them.
pub const PAGE_ROWS: i32 = 1000;

/// Every row `cql` returns for `values`, read page by page ([`PAGE_ROWS`]).
pub async fn paged_rows<T>(
    session: &Session,
    cql: &str,
    values: impl scylla::serialize::row::SerializeRow,
) -> Vec<T>
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + 'static,
{
    let mut statement = scylla::statement::unprepared::Statement::new(cql);
    statement.set_page_size(PAGE_ROWS);
    session
        .query_iter(statement, values)
        .await
        .expect("paged read")
        .rows_stream::<T>()
        .expect("typed rows")
        .map(|r| r.expect("row"))
        .collect()
        .await
}

/// All rows of the given leaderboards: (leaderboard, profile) → scores seen.
pub async fn leaderboard_rows(
    session: &Session,
    boards: &[String],
    buckets: i32,
) -> HashMap<(String, Uuid), Vec<i64>> {
    leaderboard_rows_in(session, KEYSPACE, boards, buckets).await
}

/// [`leaderboard_rows`] of `keyspace`.
pub async fn leaderboard_rows_in(
    session: &Session,
    keyspace: &str,
    boards: &[String],
    buckets: i32,
) -> HashMap<(String, Uuid), Vec<i64>> {
    let mut rows: HashMap<(String, Uuid), Vec<i64>> = HashMap::new();
    let cql = format!(
        "SELECT score, profile_id FROM {keyspace}.scores WHERE leaderboard_id = ? AND bucket = ?"
    );
    for lb in boards {
        for bucket in 0..buckets {
            for (score, profile) in paged_rows::<(i64, Uuid)>(session, &cql, (lb, bucket)).await {
                rows.entry((lb.clone(), profile)).or_default().push(score);
            }
        }
    }
    rows
}

/// The by-profile score of each key.
pub async fn profile_scores(
    session: &Session,
    keys: impl Iterator<Item = (String, Uuid)>,
) -> HashMap<(String, Uuid), (Option<i64>, Option<String>)> {
    profile_scores_in(session, KEYSPACE, keys).await
}

/// [`profile_scores`] in `keyspace`.
pub async fn profile_scores_in(
    session: &Session,
    keyspace: &str,
    keys: impl Iterator<Item = (String, Uuid)>,
) -> HashMap<(String, Uuid), (Option<i64>, Option<String>)> {
    let mut out = HashMap::new();
    for (lb, profile) in keys {
        let result = session
            .query_unpaged(
                format!("SELECT score, wallet_address FROM {keyspace}.scores_by_profile WHERE profile_id = ? AND leaderboard_id = ?"),
                (profile, &lb),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap();
        let row = result
            .maybe_first_row::<(Option<i64>, Option<String>)>()
            .unwrap()
            .unwrap_or((None, None));
        out.insert((lb, profile), row);
    }
    out
}

/// History rows of the given profiles (all days the events fall on).
pub async fn history_event_ids(session: &Session, events: &[Event]) -> Vec<String> {
    let mut partitions: Vec<(Uuid, chrono::NaiveDate)> = events
        .iter()
        .map(|e| (e.profile, store::day_of(e.at_micros)))
        .collect();
    partitions.sort();
    partitions.dedup();
    let mut ids = Vec::new();
    let cql =
        format!("SELECT event_id FROM {KEYSPACE}.score_history WHERE profile_id = ? AND day = ?");
    for (profile, day) in partitions {
        for (id,) in paged_rows::<(String,)>(session, &cql, (profile, day)).await {
            ids.push(id);
        }
    }
    ids
}

/// Asserts the database holds exactly the newest score of every key, once on the leaderboard.
pub async fn assert_final_state(session: &Session, events: &[Event], buckets: i32) {
    assert_final_state_in(session, KEYSPACE, events, buckets).await
}

/// [`assert_final_state`] in a keyspace of the test's own.
pub async fn assert_final_state_in(
    session: &Session,
    keyspace: &str,
    events: &[Event],
    buckets: i32,
) {
    let want = expected(events);
    let mut boards: Vec<String> = want.keys().map(|(lb, _)| lb.clone()).collect();
    boards.sort();
    boards.dedup();
    let rows = leaderboard_rows_in(session, keyspace, &boards, buckets).await;
    let profiles = profile_scores_in(session, keyspace, want.keys().cloned()).await;
    let mut problems = Vec::new();
    for (key, score) in &want {
        match rows.get(key) {
            Some(scores) if scores == &vec![*score] => {}
            other => problems.push(format!(
                "leaderboard {key:?}: want [{score}], got {other:?}"
            )),
        }
        let wallet = wallet_of(key.1);
        match profiles.get(key) {
            Some((Some(s), Some(w))) if s == score && *w == wallet => {}
            other => problems.push(format!("by-profile {key:?}: want {score}, got {other:?}")),
        }
    }
    for key in rows.keys() {
        if !want.contains_key(key) {
            problems.push(format!("unexpected leaderboard row {key:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
}

/// Polls `check` every 100 ms until it is true or `timeout` passes.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let every = Duration::from_millis(100);
    poll(what, timeout, every, || {
        let done = check();
        async move {
            if done {
                Ok(())
            } else {
                Err("still false".into())
            }
        }
    })
    .await
}

/// Polls `probe` every `every` until it gives `Ok`, whose value it returns. Past `timeout` it panics,
/// naming `what` and the last `Err`: the state that was not yet the one waited for.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let state = match probe().await {
            Ok(done) => return done,
            Err(state) => state,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}: {state}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Waits until `worker` processed `n` messages; past `timeout` the failure names `what` and shows
/// the worker's counters.
pub async fn wait_processed_or_report(worker: &Worker, n: u64, timeout: Duration, what: &str) {
    poll(what, timeout, Duration::from_millis(100), || {
        let m = &worker.metrics;
        let state = (worker.processed() >= n).then_some(()).ok_or_else(|| {
            format!(
                "processed {}, received {}, paused {}, dead {}",
                worker.processed(),
                m.messages_received.get(),
                m.pulls_paused.get(),
                dead_lettered(m)
            )
        });
        async move { state }
    })
    .await
}

/// Reads every message of a stream (e.g. the dead-letter stream) with an ephemeral consumer.
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    expect: usize,
) -> Vec<async_nats::jetstream::Message> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut messages = consumer
        .fetch()
        .max_messages(expect + 10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = messages.next().await {
        out.push(m);
    }
    out
}

/// A random event time within the last hour, in microseconds.
pub fn recent_micros(rng: &mut impl rand::Rng) -> i64 {
    chrono::Utc::now().timestamp_micros() - rng.random_range(0..3_600_000_000i64)
}

impl Worker {
    /// True while the worker's run task is still going (neither stopped nor ended by itself).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }
}

/// `GET path` on a worker's HTTP listener: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Sends `raw` bytes as an HTTP request: (status, body); status 0 when the server closed without one.
pub async fn http_request(addr: SocketAddr, raw: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before a hostile request is fully written.
    let _ = stream.write_all(raw.as_bytes()).await;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// The worker's configuration as environment overrides, taken from the scenario's `Config` so the
/// test and the binary agree on every name and timing.
pub fn worker_env(c: &Config, http_port: u16) -> Vec<(String, String)> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let list = |v: &[String]| serde_json::to_string(v).expect("a JSON list");
    [
        ("NATS__URL", c.nats.url.clone()),
        ("NATS__SUBJECTS", list(&c.nats.subjects)),
        ("NATS__STREAM", c.nats.stream.clone()),
        ("NATS__CONSUMER", c.nats.consumer.clone()),
        ("NATS__DEADLETTER_STREAM", c.nats.deadletter_stream.clone()),
        ("NATS__DEADLETTER_PREFIX", c.nats.deadletter_prefix.clone()),
        (
            "NATS__MANAGE_JETSTREAM",
            c.nats.manage_jetstream.to_string(),
        ),
        (
            "NATS__RETENTION",
            match c.nats.retention {
                Retention::WorkQueue => "work_queue",
                Retention::Interest => "interest",
                Retention::Limits => "limits",
            }
            .into(),
        ),
        ("NATS__MAX_AGE", ms(c.nats.max_age)),
        ("NATS__DUPLICATE_WINDOW", ms(c.nats.duplicate_window)),
        ("NATS__MAX_BYTES", c.nats.max_bytes.to_string()),
        ("NATS__ACK_WAIT", ms(c.nats.ack_wait)),
        ("NATS__MAX_DELIVER", c.nats.max_deliver.to_string()),
        ("NATS__MAX_ACK_PENDING", c.nats.max_ack_pending.to_string()),
        ("NATS__PULL_BATCH", c.nats.pull_batch.to_string()),
        ("NATS__CONFIRM_ACKS", c.nats.confirm_acks.to_string()),
        ("NATS__REQUEST_TIMEOUT", ms(c.nats.request_timeout)),
        ("SCYLLA__NODES", list(&c.scylla.nodes)),
        ("SCYLLA__KEYSPACE", c.scylla.keyspace.clone()),
        (
            "SCYLLA__LEADERBOARD_BUCKETS",
            c.scylla.leaderboard_buckets.to_string(),
        ),
        ("SCYLLA__REQUEST_TIMEOUT", ms(c.scylla.request_timeout)),
        ("BATCH__MAX_SCORES", c.batch.max_scores.to_string()),
        ("BATCH__LINGER", ms(c.batch.linger)),
        ("BATCH__MAX_INFLIGHT", c.batch.max_inflight.to_string()),
        ("RETRY__INITIAL_BACKOFF", ms(c.retry.initial_backoff)),
        ("RETRY__MAX_BACKOFF", ms(c.retry.max_backoff)),
        ("RETRY__MAX_ATTEMPTS", c.retry.max_attempts.to_string()),
        ("RETRY__TOTAL_BUDGET", ms(c.retry.total_budget)),
        ("RETRY__NAK_DELAY", ms(c.retry.nak_delay)),
        ("RETRY__PROGRESS_INTERVAL", ms(c.retry.progress_interval)),
        ("SHUTDOWN__TIMEOUT", ms(c.shutdown.timeout)),
        ("HTTP__LISTEN", format!("127.0.0.1:{http_port}")),
        ("LOG__FORMAT", "text".into()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("SCORE_WORKER__{k}"), v))
    .collect()
}

/// The worker binary configured for `config` (inherited `SCORE_WORKER__*` variables removed), HTTP on
/// `http_port`.
pub fn worker_command(config: &Config, http_port: u16) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_score-worker"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SCORE_WORKER__") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(worker_env(config, http_port));
    cmd
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the worker binary with `args` against `config`; returns its stdout, panics on failure.
pub fn cli(config: &Config, args: &[&str]) -> String {
    let out = output_ok(worker_command(config, 0).args(args), &format!("{args:?}"));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs `cmd` to its end and asserts it succeeded (the failure names `what` and shows its stderr);
/// its output.
pub fn output_ok(cmd: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A nats-server of the test's own (the version `cargo xtask nats-bin` selects) on a free
/// loopback port with a fresh store, for faults that must not touch the shared server. Killed on drop.
pub struct OwnNats {
    pub url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

/// The nats-server binary the dev set runs (`nats-bin`: built or installed first if missing), for
/// tests that start servers of their own.
fn nats_server_bin() -> String {
    let dev = xtask::environments::Environment::load("dev").expect("environments.toml");
    let out = dev.services(&["nats-bin"]);
    out.unwrap_or_else(|e| panic!("cargo xtask nats-bin: {e}"))
        .trim()
        .to_owned()
}

impl OwnNats {
    pub fn start() -> OwnNats {
        let bin = nats_server_bin();
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let log = dir.path().join("nats.log");
            let mut child = std::process::Command::new(&bin)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir.path().join("js"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("nats-server starts");
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // e.g. the port was taken meanwhile: try another
                }
                let ready =
                    std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Server is ready"));
                if ready {
                    return OwnNats {
                        url: format!("nats://127.0.0.1:{port}"),
                        child,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("a nats-server of the test's own did not start");
    }

    /// Sends `sig` (KILL, STOP, CONT) to the server.
    pub fn signal(&mut self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} nats-server");
        if sig == "KILL" {
            let _ = self.child.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Right after a worker exited: (deliverable now, pending, awaiting ack) of its durable consumer.
/// What the worker nak'd is deliverable at once; what it left unsettled only after `ack_wait`. The
/// fetched messages are nak'd back, so the next worker still gets them.
pub async fn deliverable_now(js: &jetstream::Context, config: &Config) -> (usize, u64, u64) {
    let stream = js.get_stream(&config.nats.stream).await.unwrap();
    let mut consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config> =
        stream.get_consumer(&config.nats.consumer).await.unwrap();
    let info = consumer.info().await.unwrap();
    let (pending, awaiting) = (info.num_pending, info.num_ack_pending as u64);
    let want = (pending + awaiting) as usize;
    let mut best = 0;
    // The worker's naks are on the wire when it exits; give the server a moment to apply them (and
    // no more: a delivery whose retry budget runs out in the meantime would look nak'd).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while want > 0 && tokio::time::Instant::now() < deadline {
        let mut batch = consumer
            .fetch()
            .max_messages(want)
            .messages()
            .await
            .unwrap();
        let mut got = 0;
        while let Some(Ok(m)) = batch.next().await {
            got += 1;
            m.ack_with(jetstream::AckKind::Nak(None)).await.unwrap();
        }
        best = best.max(got);
        if best >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (best, pending, awaiting)
}

/// Waits until the durable consumer has nothing pending and nothing awaiting ack: the backlog is
/// drained, and the server holds no delivery that could still come back, so what a worker counted is
/// final.
pub async fn wait_drained(js: &jetstream::Context, config: &Config, timeout: Duration) {
    let stream = js.get_stream(&config.nats.stream).await.unwrap();
    let mut consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config> =
        stream.get_consumer(&config.nats.consumer).await.unwrap();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog not drained within {timeout:?}: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Messages a worker dead-lettered, every reason.
pub fn dead_lettered(m: &Metrics) -> u64 {
    score_worker::score::RejectReason::ALL
        .iter()
        .map(|r| dead_letters_for(m, r.as_str()))
        .sum()
}

/// Messages a worker dead-lettered for `reason` (`dead_letters{reason}`).
pub fn dead_letters_for(m: &Metrics, reason: &str) -> u64 {
    m.dead_letters.with_label_values(&[reason]).get()
}

/// Messages a worker gave back because their write failed (`messages_failed{reason="write"}`).
pub fn failed_writes(m: &Metrics) -> u64 {
    m.messages_failed.with_label_values(&["write"]).get()
}

/// A sample of the `/metrics` of a worker binary serving HTTP on `port`, by its name with labels as
/// exported (`score_worker_dead_letters_total{reason="too_large"}`); 0 while it does not answer.
pub fn counter_at(port: u16, name: &str) -> u64 {
    let Ok(out) = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
    else {
        return 0;
    };
    sample_value(&String::from_utf8_lossy(&out.stdout), name).map_or(0, |v| v as u64)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A 3-node JetStream cluster of the test's own (the version `cargo xtask nats-bin` selects)
/// on free loopback ports, fresh stores; every node killed on drop. For what only a replicated stream
/// or consumer shows.
pub struct OwnNatsCluster {
    /// The three client URLs, comma separated (as `nats.url` takes them).
    pub url: String,
    children: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl OwnNatsCluster {
    pub fn start() -> OwnNatsCluster {
        let bin = nats_server_bin();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let mut children = Vec::new();
        for (n, (client, route)) in ports.iter().enumerate() {
            let conf = dir.path().join(format!("n{n}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{n}\nlisten: 127.0.0.1:{client}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: it-cluster\n listen: 127.0.0.1:{route}\n routes: [{}] }}\n",
                    dir.path().join(format!("js{n}")).display(),
                    routes.join(", ")
                ),
            )
            .unwrap();
            children.push(
                std::process::Command::new(&bin)
                    .arg("-c")
                    .arg(&conf)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::fs::File::create(dir.path().join(format!("n{n}.log"))).unwrap())
                    .spawn()
                    .expect("nats-server starts"),
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        for (client, _) in &ports {
            while std::net::TcpStream::connect(("127.0.0.1", *client)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a node of the test's cluster did not listen (logs in {})",
                    dir.path().display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let url = ports
            .iter()
            .map(|(client, _)| format!("nats://127.0.0.1:{client}"))
            .collect::<Vec<_>>()
            .join(",");
        OwnNatsCluster {
            url,
            children,
            _dir: dir,
        }
    }
}

impl Drop for OwnNatsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ------------------------------------------------------------------- shared by the it, security and chaos suites

/// Publishes each of `events` with its event id as `Nats-Msg-Id`.
pub async fn publish_all(js: &jetstream::Context, config: &Config, events: &[Event]) {
    for e in events {
        publish(js, config, e, &e.event_id).await;
    }
}

/// `GET path` over HTTP/1.1, bounded by `timeout`: (status, body), `None` if nothing answered.
#[allow(dead_code)] // the security and chaos suites poll workers that may not answer yet
pub async fn http_try(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

/// The value of the sample `name` (with its labels as exported, if any) in Prometheus text.
pub fn sample_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The server's `tombstone_failure_threshold`, `None` if it has no such setting.
pub async fn tombstone_failure_threshold(admin: &Session) -> Option<i64> {
    admin
        .query_unpaged(
            "SELECT value FROM system_views.settings WHERE name = 'tombstone_failure_threshold'",
            (),
        )
        .await
        .expect("system_views.settings")
        .into_rows_result()
        .unwrap()
        .first_row::<(Option<String>,)>()
        .unwrap()
        .0
        .and_then(|v| v.parse().ok())
}

/// Dead cells `(score, i)`, one for each `i` in `cells`, in the `ranked` set of the
/// `scores_by_profile` row of `(profile, leaderboard)` in `keyspace`, so that a read of the row
/// meets that many tombstones. Written in parts of 10,000 (one statement of 100,000 cells times out
/// on a busy node).
pub async fn write_dead_cells(
    admin: &Session,
    keyspace: &str,
    (profile, leaderboard): (Uuid, &str),
    score: i32,
    cells: std::ops::Range<i64>,
) {
    let mut from = cells.start;
    while from < cells.end {
        let to = (from + 10_000).min(cells.end);
        let dead: Vec<(i32, i64)> = (from..to).map(|i| (score, i)).collect();
        admin
            .query_unpaged(
                format!(
                    "UPDATE {keyspace}.scores_by_profile SET ranked = ranked - ? \
                     WHERE profile_id = ? AND leaderboard_id = ?"
                ),
                (dead, profile, leaderboard),
            )
            .await
            .expect("write the dead cells");
        from = to;
    }
}

/// `DROP KEYSPACE IF EXISTS`, given two minutes (a drop flushes and snapshots every table).
pub async fn drop_keyspace(session: &Session, keyspace: &str) -> Result<(), String> {
    let mut drop = scylla::statement::Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
    drop.set_request_timeout(Some(Duration::from_secs(120)));
    session
        .query_unpaged(drop, ())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The `error` header of each dead letter (empty where it has none).
pub fn dead_letter_errors(letters: &[jetstream::Message]) -> Vec<String> {
    letters
        .iter()
        .map(|l| {
            l.headers
                .as_ref()
                .and_then(|h| h.get(score_worker::deadletter::ERROR))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// Whose events [`events_on`] makes.
#[derive(Clone, Copy)]
#[allow(dead_code)] // each suite uses its own share of the choices
pub enum Profiles {
    /// A new profile for each event.
    Each,
    /// `n` new profiles in turn.
    Cycle(usize),
    /// One of `n` new profiles at random for each event.
    Random(usize),
}

/// The scores and times [`events_on`] gives.
#[derive(Clone, Copy)]
#[allow(dead_code)] // each suite uses its own share of the choices
pub enum Timing {
    /// Event `i` scores `i`, at `ago_micros` before now plus `i` µs (negative: ahead of now).
    Ascending { ago_micros: i64 },
    /// Event `i` scores `i`, at a random time within the last hour.
    IndexedRecent,
    /// A random score (0..1,000,000) at a random time within the last hour.
    Random,
}

/// `n` events on `board` with event ids `{tag}-{i}-{uuid}`; `profiles` and `timing` say whose they
/// are and which scores and times they carry.
pub fn events_on(
    board: &str,
    tag: &str,
    n: usize,
    profiles: Profiles,
    timing: Timing,
) -> Vec<Event> {
    let mut rng = rand::rng();
    let people: Vec<Uuid> = match profiles {
        Profiles::Each => Vec::new(),
        Profiles::Cycle(k) | Profiles::Random(k) => new_profiles(k),
    };
    let now = chrono::Utc::now().timestamp_micros();
    (0..n)
        .map(|i| {
            let profile = match profiles {
                Profiles::Each => Uuid::new_v4(),
                Profiles::Cycle(_) => people[i % people.len()],
                Profiles::Random(_) => people[rng.random_range(0..people.len())],
            };
            let (score, at_micros) = match timing {
                Timing::Ascending { ago_micros } => (i as i64, now - ago_micros + i as i64),
                Timing::IndexedRecent => (i as i64, recent_micros(&mut rng)),
                Timing::Random => (rng.random_range(0..1_000_000), recent_micros(&mut rng)),
            };
            Event::new(
                format!("{tag}-{i}-{}", Uuid::new_v4().simple()),
                profile,
                board,
                score,
                at_micros,
            )
        })
        .collect()
}

/// A leaderboard id of its own: `tag` and a UUID.
pub fn new_board(tag: &str) -> String {
    format!("{tag}-{}", Uuid::new_v4().simple())
}

/// `n` leaderboard ids of their own ([`new_board`]), numbered: `{tag}-{uuid}-{i}`.
pub fn new_boards(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{}-{i}", new_board(tag))).collect()
}

/// `n` new profile ids.
pub fn new_profiles(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::new_v4()).collect()
}

/// The server set whose database the tests that freeze one use, when `SCORE_WORKER_ALONE_SET` names
/// one (taken as environments.toml declares it): those tests then run one at a time beside the
/// others, instead of holding every other test back while the shared database is frozen. Their
/// NATS stays the suite's own, so `make it-oldest-nats` still runs them against the oldest server.
pub fn alone_set() -> Option<xtask::environments::Environment> {
    let name = std::env::var("SCORE_WORKER_ALONE_SET")
        .ok()
        .filter(|s| !s.is_empty())?;
    Some(
        xtask::environments::Environment::load_declared(&name)
            .unwrap_or_else(|e| panic!("SCORE_WORKER_ALONE_SET: {e}")),
    )
}

/// What a test that runs alone holds: its turn among those tests and, without an
/// [`alone_set`], the exclusive hold on the shared servers.
pub struct Alone {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    _servers: Option<RwLockWriteGuard<'static, ()>>,
}

/// The opening of a test that must run alone (it freezes or stops its database): the schema, the
/// hold ([`Alone`]), and the test's configuration, on the [`alone_set`]'s database if there is one.
pub async fn alone(test: &str) -> (Alone, Config) {
    let turn = ALONE.lock().await;
    let mut config = base_config(test);
    let servers = match alone_set() {
        Some(set) => {
            config.scylla.nodes = vec![set.cql_node()];
            None
        }
        None => Some(exclusive().await),
    };
    ensure_schema_for(&config).await;
    let hold = Alone {
        _turn: turn,
        _servers: servers,
    };
    (hold, config)
}

/// The opening of a test that shares the servers: the schema, a shared hold on them, and the
/// test's configuration.
pub async fn sharing(test: &str) -> (RwLockReadGuard<'static, ()>, Config) {
    ensure_schema().await;
    let servers = shared().await;
    (servers, base_config(test))
}

/// Polls `/readyz` (at most 30 s) until it answers `want` with `needle` in its body; the body.
pub async fn readyz_until(addr: SocketAddr, want: u16, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(addr, "/readyz").await;
        if status == want && body.contains(needle) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz: want {want} with `{needle}`, got {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
