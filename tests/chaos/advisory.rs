//! The max-deliveries advisory path (src/advisory.rs): a message whose every delivery dies with its
//! worker — SIGKILLed while the message's write hangs on the frozen database, `max_deliver` times
//! — is never settled by anyone, so NATS stops delivering it and publishes a max-deliveries advisory;
//! the next live worker dead-letters it with reason `max_deliveries`, its original bytes and id.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use score_worker::cmd::sample;
use score_worker::deadletter;
use uuid::Uuid;

use crate::harness::*;
use crate::steps::assert_exited_zero;
use crate::support::poll;
use crate::verify::{header, read_all};
use crate::START_TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_every_worker_is_dead_lettered_after_max_deliver() {
    let mut s = Scenario::start("max-deliveries", |c| {
        c.nats.max_deliver = 3;
        c.nats.ack_wait = Duration::from_secs(3);
        c.retry.total_budget = Duration::from_secs(2);
        c.retry.progress_interval = Duration::from_secs(1);
        c.scylla.request_timeout = Duration::from_secs(1);
    })
    .await;
    let max_deliver = s.config.nats.max_deliver;
    let profile = Uuid::new_v4();
    let msg_id = format!("poison-{}", Uuid::new_v4().simple());
    let payload = sample::event_json(
        &msg_id,
        profile,
        &format!("0x{}", "ab".repeat(20)),
        "poison-board",
        42,
        chrono::Utc::now(),
    );
    let subject = sample::subject_for(&s.config.nats.subjects[0], "poison-board");
    let cassandra: u32 = services("cassandra-pid")
        .await
        .parse()
        .expect("a Cassandra pid");

    let started = Instant::now();
    let kills = kill_every_delivery(&mut s, cassandra, (subject.clone(), &msg_id, &payload)).await;
    // A live worker: the server gives up after the last delivery's ack_wait and advises it.
    let mut worker = s.spawn_worker();
    worker.wait_up(START_TIMEOUT).await;
    let letters = wait_for_a_dead_letter(&s, &worker).await;
    let took = started.elapsed();
    let info = s.consumer_info().await.expect("consumer info");
    let exit = worker.terminate(Duration::from_secs(30)).await;

    let letter = &letters[0];
    let header = |name: &str| header(letter, name);
    let reason = header(deadletter::REASON);
    let error = header(deadletter::ERROR);
    println!(
        "chaos max-deliveries: published=1 kills={kills} max_deliver={max_deliver} dead_lettered={} reason={reason} \
         error={error:?} redelivered={} took_s={} seed={}",
        letters.len(),
        info.num_redelivered,
        secs(took),
        s.seed
    );
    assert_eq!(letters.len(), 1, "exactly one dead letter");
    assert_eq!(reason, "max_deliveries");
    assert_eq!(header(deadletter::ORIGINAL_MSG_ID), msg_id);
    assert_eq!(letter.payload, payload, "the original bytes");
    assert_eq!(
        letter.subject.as_str(),
        format!("{}.max_deliveries", s.config.nats.deadletter_prefix)
    );
    assert_exited_zero(&exit, "the live worker");
    s.cleanup().await;
}

/// Publishes the poison (`subject`, `msg_id`, `payload`) once and, for each of its `max_deliver`
/// deliveries, starts a worker, freezes the database so the delivery's write hangs, and SIGKILLs
/// the worker once it has received it. Returns the kills.
async fn kill_every_delivery(
    s: &mut Scenario,
    cassandra: u32,
    (subject, msg_id, payload): (String, &str, &bytes::Bytes),
) -> usize {
    let max_deliver = s.config.nats.max_deliver;
    let mut kills = 0;
    for round in 0..max_deliver {
        let mut worker = s.spawn_worker();
        worker.wait_up(START_TIMEOUT).await;
        // The write of the delivery will hang: the database is frozen until the worker is dead.
        assert!(signal(cassandra, "STOP"), "SIGSTOP Cassandra {cassandra}");
        let thaw = Thaw(cassandra);
        if round == 0 {
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
            s.js.publish_with_headers(subject.clone(), headers, payload.clone())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
        // Redelivered after ack_wait (3 s) from the previous worker's death.
        let deadline = Instant::now() + Duration::from_secs(30);
        while worker.metric("score_worker_messages_received_total").await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "delivery {} never reached worker {}\n{}",
                round + 1,
                worker.name,
                worker.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker.kill();
        kills += 1;
        drop(thaw);
    }
    kills
}

/// The dead-letter stream's messages once there is one (at most 60 s).
async fn wait_for_a_dead_letter(
    s: &Scenario,
    worker: &WorkerProc,
) -> Vec<async_nats::jetstream::Message> {
    let (timeout, every) = (Duration::from_secs(60), Duration::from_millis(200));
    poll(
        "a dead letter after the last kill",
        timeout,
        every,
        || async {
            let letters = read_all(&s.js, &s.config.nats.deadletter_stream).await;
            if letters.is_empty() {
                Err(format!("none yet\n{}", worker.log_tail(20)))
            } else {
                Ok(letters)
            }
        },
    )
    .await
}
