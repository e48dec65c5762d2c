//! Every bad payload lands in the dead-letter stream with its reason while good ones flow.

use std::collections::HashMap;
use std::time::Duration;

use score_worker::deadletter;
use uuid::Uuid;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_dead_lettered_with_their_reason_and_good_ones_are_written() {
    let (_servers, config) = sharing("dlq").await;
    let (_client, js, session) = nats_and_db(&config).await;
    let board = new_board("dlq");
    let profile = Uuid::new_v4();
    let now = chrono::Utc::now();
    let good = |i: i64| {
        Event::new(
            format!("good-{i}-{}", Uuid::new_v4().simple()),
            profile,
            &board,
            i,
            now.timestamp_micros() - 1_000_000 + i,
        )
    };
    let bad = bad_payloads(&good(0));
    let worker = Worker::start(config.clone()).await;
    let mut goods = Vec::new();
    for (i, (_, payload)) in bad.iter().enumerate() {
        let g = good(i as i64 + 1);
        publish(&js, &config, &g, &g.event_id).await;
        goods.push(g);
        publish_raw(
            &js,
            &config,
            "bad",
            payload.clone(),
            &format!("bad-{i}-{}", Uuid::new_v4()),
        )
        .await;
    }
    let total = (bad.len() + goods.len()) as u64;
    wait_until("all messages settled", Duration::from_secs(60), || {
        worker.metrics.messages_received.get() >= total && worker.processed() >= goods.len() as u64
    })
    .await;
    // Dead-lettering happens before the ack; give the last one a moment to be counted.
    wait_until("dead letters counted", Duration::from_secs(10), || {
        dead_letters_for(&worker.metrics, "malformed_json") == 3
    })
    .await;

    let letters = read_stream(&js, &config.nats.deadletter_stream, bad.len()).await;
    assert_eq!(
        letters.len(),
        bad.len(),
        "one dead letter per bad payload, nothing else"
    );
    let by_reason = reasons_of_the_letters(&letters, &bad, &config);
    let mut want: HashMap<String, usize> = HashMap::new();
    for (reason, _) in &bad {
        *want.entry(reason.to_string()).or_default() += 1;
    }
    assert_eq!(by_reason, want);
    assert_counted(&worker, &want);
    worker.stop().await;
    assert_final_state(&session, &goods, config.scylla.leaderboard_buckets).await;
}

/// One bad payload of each kind, with the reason it must be dead-lettered for; `valid` is a good
/// event the field-level cases spoil.
fn bad_payloads(valid: &Event) -> Vec<(&'static str, Vec<u8>)> {
    let valid: serde_json::Value = serde_json::from_slice(&valid.payload()).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut v = valid.clone();
        v[field] = value;
        serde_json::to_vec(&v).unwrap()
    };
    vec![
        ("malformed_json", b"{not json".to_vec()),
        ("malformed_json", vec![]),
        ("malformed_json", b"{\"event_id\": \"\xff\"}".to_vec()),
        ("invalid_value", b"[1,2]".to_vec()),
        ("missing_field", br#"{"event_id":"x"}"#.to_vec()),
        ("invalid_value", with("profile_id", "not-a-uuid".into())),
        ("invalid_value", with("score", serde_json::json!(1.5))),
        (
            "too_large",
            format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000)).into_bytes(),
        ),
        (
            "future_timestamp",
            with("occurred_at", "2999-01-01T00:00:00Z".into()),
        ),
    ]
}

/// Checks each dead letter (subject, headers, payload kept whole or its start) and counts them by
/// reason.
fn reasons_of_the_letters(
    letters: &[async_nats::jetstream::Message],
    bad: &[(&str, Vec<u8>)],
    config: &score_worker::config::Config,
) -> HashMap<String, usize> {
    let mut by_reason: HashMap<String, usize> = HashMap::new();
    for letter in letters {
        let headers = letter.headers.as_ref().expect("dead letters carry headers");
        let reason = headers
            .get(deadletter::REASON)
            .unwrap()
            .as_str()
            .to_string();
        assert_eq!(
            letter.subject.as_str(),
            format!("{}.{reason}", config.nats.deadletter_prefix)
        );
        assert!(!headers.get(deadletter::ERROR).unwrap().as_str().is_empty());
        assert!(headers
            .get(deadletter::ORIGINAL_SUBJECT)
            .unwrap()
            .as_str()
            .ends_with(".bad"));
        // A letter keeps the payload whole up to validation.max_payload_bytes, and the start of a
        // longer one, saying how long it was.
        match headers.get(deadletter::PAYLOAD_TRUNCATED) {
            None => assert!(
                bad.iter()
                    .any(|(_, p)| p.as_slice() == letter.payload.as_ref()),
                "original payload kept"
            ),
            Some(len) => {
                assert_eq!(letter.payload.len(), config.validation.max_payload_bytes);
                assert!(
                    bad.iter().any(|(_, p)| p.len().to_string() == len.as_str()
                        && p.starts_with(&letter.payload)),
                    "the start of the original payload kept, and its length: {len}"
                );
            }
        }
        *by_reason.entry(reason).or_default() += 1;
    }
    by_reason
}

/// The worker counted `want` dead letters and failed messages per reason.
fn assert_counted(worker: &Worker, want: &HashMap<String, usize>) {
    for (reason, n) in want {
        assert_eq!(
            worker
                .metrics
                .dead_letters
                .with_label_values(&[reason])
                .get(),
            *n as u64,
            "{reason}"
        );
        assert_eq!(
            worker
                .metrics
                .messages_failed
                .with_label_values(&[reason])
                .get(),
            *n as u64,
            "{reason}"
        );
    }
}

/// Dead letters parked while something was wrong are replayed once it is fixed, without duplicating
/// effect even when the replay runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_once_the_cause_is_fixed() {
    let (_servers, mut config) = sharing("replay").await;
    // The "cause": a worker whose clock-skew allowance rejects events stamped slightly ahead.
    config.validation.max_clock_skew = Duration::ZERO;
    let (_client, js, session) = nats_and_db(&config).await;
    let board = new_board("replay");
    let a_minute_ahead = Timing::Ascending {
        ago_micros: -60_000_000,
    };
    let events = events_on(&board, "replay", 20, Profiles::Each, a_minute_ahead);
    let strict = Worker::start(config.clone()).await;
    for e in &events {
        publish(&js, &config, e, &e.event_id).await;
    }
    wait_until("all dead-lettered", Duration::from_secs(60), || {
        dead_letters_for(&strict.metrics, "future_timestamp") == events.len() as u64
    })
    .await;
    strict.stop().await;

    let dlq_config = config.clone();
    let cli = |args: &[&str]| cli(&dlq_config, args);
    let listed = cli(&[
        "dlq",
        "list",
        "--reason",
        "future_timestamp",
        "--since",
        "1h",
    ]);
    assert!(
        listed.ends_with(&format!("{} dead letters\n", events.len())),
        "{listed}"
    );
    assert_eq!(
        cli(&["dlq", "list", "--reason", "malformed_json"]),
        "0 dead letters\n"
    );

    // The cause is fixed: a worker with the default allowance replays them, twice.
    config.validation.max_clock_skew = Duration::from_secs(300);
    let fixed = Worker::start(config.clone()).await;
    let replayed = cli(&["dlq", "replay", "--reason", "future_timestamp", "--keep"]);
    assert_eq!(
        replayed.trim(),
        format!("replayed {} dead letters, skipped 0", events.len())
    );
    let replayed_again = cli(&["dlq", "replay", "--reason", "future_timestamp"]);
    assert_eq!(
        replayed_again.trim(),
        format!("replayed {} dead letters, skipped 0", events.len())
    );
    wait_until("replayed events written", Duration::from_secs(60), || {
        fixed.processed() >= events.len() as u64
    })
    .await;
    // Nothing left on the server that could still arrive: the count below is final.
    wait_drained(&js, &config, Duration::from_secs(30)).await;
    // The second replay used the same message ids: NATS stored each replayed event once.
    assert_eq!(fixed.processed(), events.len() as u64);
    assert_eq!(
        cli(&["dlq", "list", "--reason", "future_timestamp"]),
        "0 dead letters\n"
    );
    fixed.stop().await;
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
    let history = history_event_ids(&session, &events).await;
    assert_eq!(history.len(), events.len());
}
