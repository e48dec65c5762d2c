//! The JetStream topology against the configuration (issue 9, items 1, 5 and 7; issue 18, item 4):
//! what the score stream keeps, what happens at its byte limit, streams and consumers that drifted
//! from the configuration (reported by `run`, changed only by `nats apply`), and a consumer that
//! disappears under a running worker.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use score_worker::config::{Config, Retention};
use score_worker::nats;

use crate::support::*;

fn events(tag: &str, n: usize) -> Vec<Event> {
    let one_s_ago = Timing::Ascending {
        ago_micros: 1_000_000,
    };
    events_on(&new_board(tag), tag, n, Profiles::Each, one_s_ago)
}

async fn stream_messages(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Waits until `check` (async) holds, or panics after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_updates_leave_the_stream() {
    let (_servers, config) = sharing("retention").await;
    let (_client, js) = jetstream(&config).await;
    let events = events("retention", 200);
    for e in &events {
        publish(&js, &config, e, &e.event_id).await;
    }
    assert_eq!(stream_messages(&js, &config.nats.stream).await, 200);
    let worker = Worker::start(config.clone()).await;
    wait_until("every event written", Duration::from_secs(60), || {
        worker.processed() >= events.len() as u64
    })
    .await;
    // Acks are confirmed before `processed` counts them: the stream is empty at once, or very soon.
    eventually(
        "the drained stream to hold nothing",
        Duration::from_secs(5),
        || async { stream_messages(&js, &config.nats.stream).await == 0 },
    )
    .await;
    let stream = js.get_stream(&config.nats.stream).await.unwrap();
    let c = &stream.cached_info().config;
    eprintln!(
        "retention: drained {} events, stream holds 0 (retention {:?}, max_age {:?}, max_bytes {})",
        events.len(),
        c.retention,
        c.max_age,
        c.max_bytes
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_publishes_and_keeps_what_it_holds() {
    let (_servers, mut config) = sharing("full").await;
    config.nats.max_bytes = 16 * 1024;
    let (_client, js, session) = nats_and_db(&config).await;
    let events = events("full", 500);
    let mut accepted = Vec::new();
    let mut refusal = None;
    for e in &events {
        let subject =
            score_worker::cmd::sample::subject_for(&config.nats.subjects[0], &e.leaderboard);
        match score_worker::cmd::sample::publish(&js, subject, &e.event_id, e.payload()).await {
            Ok(()) => accepted.push(e.clone()),
            Err(err) => {
                refusal = Some(err.to_string());
                break;
            }
        }
    }
    let refusal = refusal.expect("a stream at max_bytes refuses publishes");
    assert!(
        refusal.contains("maximum bytes exceeded"),
        "the publisher is told why: {refusal}"
    );
    let held = stream_messages(&js, &config.nats.stream).await;
    assert_eq!(
        held,
        accepted.len() as u64,
        "nothing stored was deleted to make room"
    );
    eprintln!(
        "full stream: max_bytes=16384 accepted={} refused with `{refusal}` held={held}",
        accepted.len()
    );

    let worker = Worker::start(config.clone()).await;
    wait_until(
        "every accepted event written",
        Duration::from_secs(60),
        || worker.processed() >= accepted.len() as u64,
    )
    .await;
    assert_final_state(&session, &accepted, config.scylla.leaderboard_buckets).await;
    // Drained, the stream has room again.
    let late = &events[accepted.len()];
    publish(&js, &config, late, &late.event_id).await;
    wait_until("the late event written", Duration::from_secs(30), || {
        worker.processed() > accepted.len() as u64
    })
    .await;
    worker.stop().await;
}

/// The live stream as the server has it: (messages, max_age).
async fn stream_state(js: &async_nats::jetstream::Context, name: &str) -> (u64, Duration) {
    let mut stream = js.get_stream(name).await.unwrap();
    let info = stream.info().await.unwrap();
    (info.state.messages, info.config.max_age)
}

/// `score-worker ARGS` against `config`: (exit code, stdout, stderr).
fn command(config: &score_worker::config::Config, args: &[&str]) -> (Option<i32>, String, String) {
    let out = worker_command(config, 0).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 18, item 4: `publish-sample` and a worker started with a smaller `max_age` than the live
/// stream change nothing (a smaller max_age deletes the backlog) and report the drift; `nats apply
/// --dry-run` prints the change and makes none; `nats apply` makes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_with_a_smaller_max_age_leaves_every_message_and_reports_the_drift() {
    ensure_schema().await;
    let _servers = shared().await;
    // Limits retention: what the worker acknowledges stays, so the count shows what the stream keeps.
    let mut live = base_config("max_age");
    live.nats.retention = Retention::Limits;
    live.nats.max_age = Duration::from_secs(3600);
    // NATS refuses a max_age shorter than the duplicate window.
    live.nats.duplicate_window = Duration::from_secs(1);
    let (_client, js) = jetstream(&live).await;
    let events = events("max_age", 20);
    publish_all(&js, &live, &events).await;
    let mut smaller = live.clone();
    smaller.nats.max_age = Duration::from_secs(2);
    // Every stored message is now older than the smaller max_age.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let name = &live.nats.stream;

    cli(
        &smaller,
        &["publish-sample", "--count", "1", "--profiles", "1"],
    );
    let after_sample = stream_state(&js, name).await;
    eprintln!("after publish-sample with max_age 2s: (messages, max_age) {after_sample:?}");
    assert_eq!(
        after_sample,
        (21, Duration::from_secs(3600)),
        "publish-sample deleted nothing, changed nothing"
    );
    let worker = Worker::start(smaller.clone()).await;
    wait_until("every event written", Duration::from_secs(60), || {
        worker.processed() >= 21
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_run = stream_state(&js, name).await;
    let drift = worker.metrics.jetstream_drift.get();
    worker.stop().await;
    eprintln!("after publish-sample and a worker with max_age 2s: (messages, max_age) {after_run:?}, drift gauge {drift}");
    assert_eq!(
        after_run,
        (21, Duration::from_secs(3600)),
        "nothing deleted, nothing changed"
    );
    assert_eq!(drift, 1, "score_worker_jetstream_drift counts the max_age");

    check_then_apply_the_smaller_max_age(&smaller, &js).await;
}

/// `check` reports the smaller max_age (destructive to apply) and fails; `nats apply --dry-run`
/// changes nothing; `nats apply` applies it, and the old messages expire.
async fn check_then_apply_the_smaller_max_age(
    smaller: &Config,
    js: &async_nats::jetstream::Context,
) {
    let name = &smaller.nats.stream;
    let line = format!("stream {name}: max_age is 3600s on the server, 2s in the configuration");
    let (code, report, _) = command(smaller, &["check"]);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("[FAIL] {line}; the server's value applies; `score-worker nats apply` changes it (destructive: stored messages older than the new max_age are deleted)")),
        "{report}"
    );

    let (code, dry, err) = command(smaller, &["nats", "apply", "--dry-run"]);
    eprintln!("nats apply --dry-run:\n{dry}");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        dry,
        format!("would change: {line} (destructive: stored messages older than the new max_age are deleted)\ndry run: nothing changed\n")
    );
    assert_eq!(
        stream_state(js, name).await,
        (21, Duration::from_secs(3600))
    );

    let (code, applied, err) = command(smaller, &["nats", "apply"]);
    eprintln!("nats apply:\n{applied}");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        applied.starts_with(&format!("changing: {line}")),
        "{applied}"
    );
    eventually(
        "the old messages expired",
        Duration::from_secs(10),
        || async { stream_state(js, name).await == (0, Duration::from_secs(2)) },
    )
    .await;
    let again = cli(smaller, &["check"]);
    assert!(
        again.contains("streams and consumer match the configuration"),
        "{again}"
    );
}

/// `run` brings nothing that exists to the configuration; `nats apply` does, patching only the
/// drifted settings (an operator's description stays), and refuses, changing nothing, what NATS
/// cannot change in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_apply_brings_the_stream_and_consumer_to_the_configuration_and_run_does_not() {
    ensure_schema().await;
    let _servers = shared().await;
    let mut old = base_config("apply");
    old.nats.max_age = Duration::from_secs(3600);
    old.nats.ack_wait = Duration::from_secs(30);
    old.nats.max_deliver = 5;
    old.nats.max_ack_pending = 100;
    let (_client, js) = jetstream(&old).await;
    // The operators' own settings, which the worker does not manage.
    let stream = js.get_stream(&old.nats.stream).await.unwrap();
    let mut theirs = stream.cached_info().config.clone();
    theirs.description = Some("owned by ops".into());
    js.update_stream(&theirs).await.unwrap();
    let mut theirs = nats::consumer_config(&old.nats);
    theirs.description = Some("ops consumer".into());
    stream.create_consumer(theirs).await.unwrap();

    let mut new = old.clone();
    new.nats.max_age = Duration::from_secs(7200);
    new.nats.max_bytes = 1 << 20;
    new.nats.ack_wait = Duration::from_secs(10);
    new.nats.max_deliver = 20;
    new.nats.max_ack_pending = 2000;
    let (_, report, _) = command(&new, &["check"]);
    eprintln!("check before:\n{report}");
    for line in [
        "max_age is 3600s on the server, 7200s in the configuration; the server's value applies; `score-worker nats apply` changes it\n",
        "max_bytes is -1 on the server, 1048576 in the configuration; the server's value applies; `score-worker nats apply` changes it (destructive: the oldest stored messages beyond the new max_bytes are deleted)",
        "ack_wait is 30s on the server, 10s in the configuration; the server's value applies",
        "max_deliver is 5 on the server, 20 in the configuration; the server's value applies",
    ] {
        assert!(report.contains(line), "`check` reports `{line}`:\n{report}");
    }

    let state = || topology_state(&js, &new);
    let before = state().await;
    let worker = Worker::start(new.clone()).await;
    assert_eq!(worker.metrics.jetstream_drift.get(), 5);
    worker.stop().await;
    assert_eq!(state().await, before, "run changed nothing");

    let (code, out, err) = command(&new, &["nats", "apply"]);
    eprintln!("nats apply:\n{out}");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("changing: ")).count(),
        5,
        "{out}"
    );
    assert_eq!(
        state().await,
        (
            (
                Duration::from_secs(7200),
                1 << 20,
                Some("owned by ops".into())
            ),
            (
                Duration::from_secs(10),
                20,
                2000,
                Some("ops consumer".into())
            )
        )
    );
    let again = cli(&new, &["check"]);
    assert!(
        again.contains("streams and consumer match the configuration"),
        "{again}"
    );
    assert_eq!(
        cli(&new, &["nats", "apply"]),
        "nothing to change: the streams and the consumer match the configuration\n"
    );

    // Retention cannot change in place: `run` reports it, `nats apply` names it and changes nothing.
    retention_cannot_change_in_place().await;
}

/// The settings of the stream and consumer of `config` that `nats apply` manages, and their
/// descriptions (which it leaves alone).
#[allow(clippy::type_complexity)]
async fn topology_state(
    js: &async_nats::jetstream::Context,
    config: &Config,
) -> (
    (Duration, i64, Option<String>),
    (Duration, i64, i64, Option<String>),
) {
    let mut stream = js.get_stream(&config.nats.stream).await.unwrap();
    let s = stream.info().await.unwrap().config.clone();
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> =
        stream.get_consumer(&config.nats.consumer).await.unwrap();
    let c = consumer.cached_info().config.clone();
    (
        (s.max_age, s.max_bytes, s.description),
        (c.ack_wait, c.max_deliver, c.max_ack_pending, c.description),
    )
}

/// Against a stream with `Limits` retention, a configuration asking for a work queue: the topology
/// reports the drift, `nats apply` names what NATS cannot change, exits 1 and changes nothing.
async fn retention_cannot_change_in_place() {
    let mut limits = base_config("limits");
    limits.nats.retention = Retention::Limits;
    let (_client, js) = jetstream(&limits).await;
    let mut wants_queue = limits.clone();
    wants_queue.nats.retention = Retention::WorkQueue;
    wants_queue.nats.max_age = Duration::from_secs(60);
    let topology = nats::ensure_topology(&js, &wants_queue.nats).await.unwrap();
    let fields: Vec<&str> = topology.drift.iter().map(|d| d.field).collect();
    assert_eq!(fields, ["retention", "max_age"]);
    let (code, out, err) = command(&wants_queue, &["nats", "apply"]);
    eprintln!("nats apply against a limits stream:\n{out}{err}");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.ends_with("nothing changed: NATS cannot make every change in place\n"),
        "{out}"
    );
    assert!(
        err.contains("retention is Limits on the server, WorkQueue in the configuration; NATS cannot change this in place"),
        "{err}"
    );
    let mut stream = js.get_stream(&limits.nats.stream).await.unwrap();
    let c = stream.info().await.unwrap().config.clone();
    assert_eq!(
        (c.retention, c.max_age),
        (
            async_nats::jetstream::stream::RetentionPolicy::Limits,
            limits.nats.max_age
        ),
        "nothing applied"
    );
}

/// An operator-owned consumer (`nats.manage_jetstream = false`) that disappears: the worker cannot
/// recreate it, so it says so and waits for the operator. A managed one is recreated by the worker
/// (`recovery::a_deleted_consumer_is_recreated_by_the_worker_itself`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_fails_readiness_and_pulls_back_off_until_it_is_back() {
    let (_servers, mut config) = sharing("gone").await;
    let (client, js) = jetstream(&config).await;
    config.nats.manage_jetstream = false;
    // nats-server 2.9 answers the first pulls for a missing consumer with an error and later ones not at
    // all (each just expires, so the worker does not spin): the growing wait shows from 2.10 on.
    let version = client.server_info().version;
    let errors_every_pull = !version.starts_with("2.9.");
    let worker = Worker::start(config.clone()).await;
    let addr = worker.addr;
    eventually("ready", Duration::from_secs(15), || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;

    let stream = js.get_stream(&config.nats.stream).await.unwrap();
    // Pull failures are counted (the first as the consumer goes), and the waits between them grow;
    // readiness fails meanwhile.
    let errors = || worker.metrics.pull_errors.get();
    let mut at = Vec::new();
    let mut seen = errors();
    stream.delete_consumer(&config.nats.consumer).await.unwrap();
    let deleted = Instant::now();
    let mut not_ready = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    // At least one failed pull either way; four, to see the waits grow, where every pull errors. (Readiness
    // can fail within a millisecond, before the first pull meets the missing consumer.)
    let pulls_to_see = if errors_every_pull { 4 } else { 1 };
    while at.len() < pulls_to_see || not_ready.is_none() {
        assert!(
            Instant::now() < deadline,
            "pull errors counted {at:?}, readiness failed: {not_ready:?}"
        );
        let now = errors();
        if now > seen {
            at.push((now, deleted.elapsed()));
            seen = now;
        }
        if not_ready.is_none() {
            let (status, body) = http_get(addr, "/readyz").await;
            if status == 503 && body.contains("consumer cannot be read") {
                not_ready = Some((deleted.elapsed(), body.trim().to_string()));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1].1 - w[0].1).collect();
    eprintln!(
        "deleted consumer (nats-server {version}): not ready {not_ready:?}; pull errors (count, since deletion) {at:?}, gaps {gaps:?}"
    );
    assert!(!at.is_empty(), "the failed pulls were counted");
    if errors_every_pull {
        assert!(
            gaps.last().unwrap() >= &(gaps[0] + Duration::from_millis(500)),
            "the wait between pull failures grows: {gaps:?}"
        );
    }

    // Back: the worker is ready and consuming again without a restart.
    let mut operator = config.clone();
    operator.nats.manage_jetstream = true;
    nats::ensure_topology(&js, &operator.nats).await.unwrap();
    eventually("ready again", Duration::from_secs(20), || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    let e = &events("gone", 1)[0];
    worker
        .publish_and_wait((&js, &config), e, 1, "consuming again")
        .await;
    worker.stop().await;
}
