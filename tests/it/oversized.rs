//! Bytes before validation (issue 17, item 3): a burst of messages near the server's `max_payload`,
//! mixed with good ones, through the worker binary. Each pull is bounded in bytes as well as in
//! messages, so the worker's peak RSS stays within a formula that does not depend on how large the
//! messages are; every good event is written, and every oversized one dead-lettered with the start
//! of its payload (even those within a few hundred bytes of `max_payload`, whose letter did not fit
//! the server before).

use std::time::Duration;

use score_worker::consumer::pull_max_bytes;
use score_worker::deadletter::{self, queue::CONCURRENCY};
use uuid::Uuid;

use crate::support::*;

const GOOD: usize = 600;
const BAD: usize = 300;
/// The NATS client reads into a buffer that doubles as it grows, and a payload is a slice of it: until
/// it is handled, a message may keep up to twice its size alive.
const READ_BUFFER_GROWTH: f64 = 2.0;
/// The allocator and the debug build's own growth under load (a drain of 650 small events alone grows
/// a debug worker by 5–10 MiB).
const SLACK_MIB: f64 = 16.0;

fn good_events(n: usize) -> Vec<Event> {
    let ten_s_ago = Timing::Ascending {
        ago_micros: 10_000_000,
    };
    events_on(
        &new_board("oversized"),
        "oversized",
        n,
        Profiles::Each,
        ten_s_ago,
    )
}

/// A JSON-looking payload of exactly `len` bytes that names its event first.
fn near_limit_payload(i: usize, len: usize) -> Vec<u8> {
    let head = format!("{{\"event_id\":\"oversized-bad-{i}\",\"pad\":\"");
    let mut p = head.into_bytes();
    p.resize(len - 2, b'x');
    p.extend_from_slice(b"\"}");
    p
}

/// The worker binary, killed if the test ends early.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_near_max_payload_is_dead_lettered_in_bounded_memory_and_good_events_are_written() {
    let (_servers, config) = sharing("oversized").await;
    let (client, js, session) = nats_and_db(&config).await;
    let max_payload = client.server_info().max_payload;
    let port = free_port();
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("oversized-worker-{}.log", std::process::id()));
    let mut child = Killed(
        worker_command(&config, port)
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the worker binary starts"),
    );
    let pid = child.0.id();
    let processed = || counter_at(port, "score_worker_messages_processed_total");

    // Warm: the worker has connected, pulled and written, so its idle RSS is its own.
    let goods = good_events(GOOD + 50);
    for e in &goods[..50] {
        publish(&js, &config, e, &e.event_id).await;
    }
    wait_until("the warm-up written", Duration::from_secs(60), || {
        processed() >= 50
    })
    .await;
    let baseline = proc_status_kib(pid, "VmRSS:").unwrap();

    // The burst: two good events, then one near max_payload, the largest 100 bytes below it (the
    // publish's own Nats-Msg-Id header takes the rest).
    let sizes = publish_the_burst(&js, &config, &goods[50..], max_payload).await;
    wait_until("every good event written", Duration::from_secs(180), || {
        processed() >= goods.len() as u64
    })
    .await;

    assert_peak_within_the_bound(
        &config,
        pid,
        baseline,
        (&sizes, max_payload, goods.len()),
        &log,
    );

    let too_large = "score_worker_dead_letters_total{reason=\"too_large\"}";
    wait_until(
        "every oversized message dead-lettered",
        Duration::from_secs(120),
        || counter_at(port, too_large) >= BAD as u64,
    )
    .await;
    let letters = read_stream(&js, &config.nats.deadletter_stream, BAD).await;
    assert_eq!(letters.len(), BAD, "one letter per oversized message");
    assert_letters_keep_the_start(&letters, &sizes, &config);
    assert_eq!(
        counter_at(port, "score_worker_deadletters_truncated_total"),
        BAD as u64
    );
    wait_drained(&js, &config, Duration::from_secs(30)).await;
    let mut stream = js.get_stream(&config.nats.stream).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        0,
        "nothing left in the stream"
    );
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.0.wait().unwrap();
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_final_state(&session, &goods, config.scylla.leaderboard_buckets).await;
}

/// The burst: two of `goods`, then one message near `max_payload`, the largest 100 bytes below it
/// (the publish's own Nats-Msg-Id header takes the rest), [`BAD`] times. Returns the sizes.
async fn publish_the_burst(
    js: &async_nats::jetstream::Context,
    config: &score_worker::config::Config,
    goods: &[Event],
    max_payload: usize,
) -> Vec<usize> {
    let mut sizes = Vec::new();
    for i in 0..BAD {
        for e in &goods[2 * i..2 * i + 2] {
            publish(js, config, e, &e.event_id).await;
        }
        let len = max_payload - 100 - (i % 10) * 90;
        sizes.push(len);
        publish_raw(
            js,
            config,
            "bad",
            near_limit_payload(i, len),
            &format!("oversized-bad-{i}-{}", Uuid::new_v4().simple()),
        )
        .await;
    }
    sizes
}

/// The worker's peak RSS (`VmHWM`) is within the bound: its idle RSS `baseline` plus two pulls in
/// flight, each at most `pull_bytes`, the letters waiting to be stored, each at most
/// max_payload_bytes, and what the client's buffers and the allocator add.
fn assert_peak_within_the_bound(
    config: &score_worker::config::Config,
    pid: u32,
    baseline: u64,
    (sizes, max_payload, goods): (&[usize], usize, usize),
    log: &std::path::Path,
) {
    let pull_bytes = pull_max_bytes(config.nats.pull_batch, config.validation.max_payload_bytes);
    let letters_held = (config.nats.pull_batch + CONCURRENCY) * config.validation.max_payload_bytes;
    // Two pulls in flight, each at most `pull_bytes`; the letters waiting to be stored, each at
    // most max_payload_bytes; what the client's buffers and the allocator add.
    let bound_mib = mib(baseline)
        + 2.0 * READ_BUFFER_GROWTH * pull_bytes as f64 / (1024.0 * 1024.0)
        + letters_held as f64 / (1024.0 * 1024.0)
        + SLACK_MIB;
    let peak = proc_status_kib(pid, "VmHWM:").unwrap();
    eprintln!(
        "oversized: {BAD} messages of {}-{} bytes (max_payload {max_payload}) among {} good: \
         idle RSS {:.1} MiB, peak {:.1} MiB, bound {bound_mib:.1} MiB = idle + 2 pulls of {:.1} MiB \
         × {READ_BUFFER_GROWTH} + {} letters of {} KiB + {SLACK_MIB} MiB",
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap(),
        goods,
        mib(baseline),
        mib(peak),
        pull_bytes as f64 / (1024.0 * 1024.0),
        config.nats.pull_batch + CONCURRENCY,
        config.validation.max_payload_bytes / 1024,
    );
    assert!(
        mib(peak) <= bound_mib,
        "peak RSS {:.1} MiB above the bound {bound_mib:.1} MiB; the worker's log: {}",
        mib(peak),
        log.display()
    );
}

/// Each letter of an oversized message says how long it was and keeps the start of its payload.
fn assert_letters_keep_the_start(
    letters: &[async_nats::jetstream::Message],
    sizes: &[usize],
    config: &score_worker::config::Config,
) {
    for letter in letters {
        let headers = letter.headers.as_ref().unwrap();
        let original: usize = headers
            .get(deadletter::PAYLOAD_TRUNCATED)
            .expect("the letter says it keeps part of the payload")
            .as_str()
            .parse()
            .unwrap();
        assert!(sizes.contains(&original), "{original}");
        assert_eq!(letter.payload.len(), config.validation.max_payload_bytes);
        assert!(letter
            .payload
            .starts_with(b"{\"event_id\":\"oversized-bad-"));
    }
}

/// A replicated (R3) consumer answers a pull that fills its count while bytes remain with `409 Batch
/// Completed`, which overtakes the messages (they wait for the consumer's quorum): the reader knows
/// from it how many were delivered and reads them all. Nothing is dropped and redelivered later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_bounded_in_bytes_read_everything_a_replicated_consumer_delivers() {
    ensure_schema().await;
    let _servers = shared().await;
    let cluster = OwnNatsCluster::start();
    let mut config = base_config("replicated");
    config.nats.url = cluster.url.clone();
    let client = score_worker::nats::connect(&config.nats, None)
        .await
        .expect("the cluster answers");
    let js = score_worker::nats::jetstream(client.clone(), &config.nats);
    let mut stream = score_worker::nats::scores_stream_config(&config.nats);
    stream.num_replicas = 3;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Err(e) = js.create_stream(stream.clone()).await {
        assert!(
            std::time::Instant::now() < deadline,
            "no R3 stream on the cluster: {e}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let goods = good_events(1000);
    let bad = 12;
    let max_payload = client.server_info().max_payload;
    for (i, chunk) in goods.chunks(goods.len() / bad).enumerate() {
        for e in chunk {
            publish(&js, &config, e, &e.event_id).await;
        }
        if i < bad {
            publish_raw(
                &js,
                &config,
                "bad",
                near_limit_payload(i, max_payload - 200),
                &format!("replicated-bad-{i}"),
            )
            .await;
        }
    }
    let worker = Worker::start(config.clone()).await;
    let total = (goods.len() + bad) as u64;
    wait_until("everything settled", Duration::from_secs(120), || {
        worker.processed() >= goods.len() as u64 && dead_lettered(&worker.metrics) >= bad as u64
    })
    .await;
    wait_drained(&js, &config, Duration::from_secs(30)).await;
    // Every delivery the server made (a redelivery too) has its own consumer sequence.
    let deliveries = js
        .get_stream(&config.nats.stream)
        .await
        .unwrap()
        .consumer_info(&config.nats.consumer)
        .await
        .unwrap()
        .delivered
        .consumer_sequence;
    let received = worker.metrics.messages_received.get();
    eprintln!(
        "replicated consumer (R3, {}): {} written, {} dead-lettered; {deliveries} deliveries and {received} received for {total} messages",
        client.server_info().version,
        worker.processed(),
        dead_lettered(&worker.metrics)
    );
    assert_eq!(
        (deliveries, received),
        (total, total),
        "no delivery dropped (and redelivered after ack_wait)"
    );
    worker.stop().await;
}
