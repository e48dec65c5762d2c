//! `dlq list` / `dlq replay` over 100,000 dead letters (issue 9, item 8): the binary streams them, so
//! its peak RSS stays bounded (here: far below the ~100 MB of letters), and `replay --dry-run` changes
//! nothing. A letter's original subject is a header, not trusted: replay publishes only to the score
//! subjects or to patterns the operator names (issue 18, item 5).

use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use score_worker::deadletter;

use crate::support::*;

/// Stores a dead letter as the worker would, with `original` as its original subject.
async fn letter(
    js: &async_nats::jetstream::Context,
    config: &score_worker::config::Config,
    original: &str,
    payload: &str,
) {
    let mut headers = HeaderMap::new();
    headers.insert(deadletter::REASON, "max_deliveries");
    headers.insert(deadletter::ERROR, "not written after 10 deliveries: test");
    headers.insert(deadletter::ORIGINAL_SUBJECT, original);
    let subject = format!("{}.max_deliveries", config.nats.deadletter_prefix);
    js.publish_with_headers(subject, headers, payload.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Runs the binary; returns (exit code, stdout, stderr).
fn run(config: &score_worker::config::Config, args: &[&str]) -> (Option<i32>, String, String) {
    let out = worker_command(config, 0)
        .args(args)
        .output()
        .expect("the worker binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn messages(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    let mut stream = js.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_publishes_only_to_the_score_subjects_whatever_a_letter_claims() {
    let _servers = shared().await;
    let config = base_config("dlqforged");
    let (_client, js) = jetstream(&config).await;
    let score_subject = score_worker::cmd::sample::subject_for(&config.nats.subjects[0], "forged");
    // An update waiting in the score stream: a forged purge request would take it.
    js.publish(score_subject.clone(), "waiting".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Another service's stream, on subjects the worker does not own.
    let other = format!("it.other.{}", config.nats.consumer.to_lowercase());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: format!("{}_OTHER", config.nats.stream),
        subjects: vec![format!("{other}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let other_stream = format!("{}_OTHER", config.nats.stream);

    letter(&js, &config, &score_subject, r#"{"replayed":true}"#).await;
    let purge = format!("$JS.API.STREAM.PURGE.{}", config.nats.stream);
    letter(&js, &config, &purge, "{}").await;
    letter(&js, &config, &format!("{other}.orders"), "{}").await;
    letter(&js, &config, "it.*.wildcard", "{}").await;

    let (code, stdout, stderr) = run(&config, &["dlq", "replay", "--dry-run"]);
    eprintln!("dlq replay --dry-run: exit {code:?}\n{stdout}{stderr}");
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("would replay 1 dead letters"),
        "{stdout}"
    );
    assert!(stderr.contains("would refuse 3 dead letters"), "{stderr}");

    let (code, stdout, stderr) = run(&config, &["dlq", "replay"]);
    eprintln!("dlq replay: exit {code:?}\n{stdout}{stderr}");
    assert_eq!(
        code,
        Some(1),
        "refusals make the command fail\n{stdout}{stderr}"
    );
    assert_eq!(stdout.trim(), "replayed 1 dead letters, skipped 0");
    assert!(stderr.contains("refused 3 dead letters"), "{stderr}");
    assert!(
        stderr.contains("$JS.API.STREAM.PURGE"),
        "each refusal is logged: {stderr}"
    );
    assert_eq!(
        messages(&js, &config.nats.stream).await,
        2,
        "the waiting update and the replayed one: nothing purged"
    );
    assert_eq!(messages(&js, &other_stream).await, 0);
    assert_eq!(
        messages(&js, &config.nats.deadletter_stream).await,
        3,
        "refused letters are kept"
    );

    // The operator names the other service's subjects: that letter goes, the rest stay refused.
    let (code, stdout, stderr) = run(
        &config,
        &["dlq", "replay", "--allow-subject", &format!("{other}.>")],
    );
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "replayed 1 dead letters, skipped 0");
    assert!(stderr.contains("refused 2 dead letters"), "{stderr}");
    assert_eq!(messages(&js, &other_stream).await, 1);
    assert_eq!(messages(&js, &config.nats.stream).await, 2);
    assert_eq!(messages(&js, &config.nats.deadletter_stream).await, 2);

    for stream in [
        config.nats.stream.clone(),
        config.nats.deadletter_stream.clone(),
        other_stream,
    ] {
        js.delete_stream(&stream).await.unwrap();
    }
}

const LETTERS: usize = 100_000;
/// Each letter's payload: 100,000 of them are ~100 MB, so a command that held them all would show it.
const PAYLOAD: usize = 1024;
/// What a streaming command may use (a debug build idles at about 15 MiB).
const RSS_BOUND_MIB: f64 = 48.0;

/// Runs the worker binary with `args`; returns (stdout, peak RSS in MiB, wall time).
async fn measured(config: &score_worker::config::Config, args: &[&str]) -> (String, f64, Duration) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let mut child: std::process::Child = worker_command(config, 0)
        .args(args)
        .stdout(Stdio::from(out.reopen().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("the worker binary runs");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} did not finish in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{args:?}: {stderr}");
    let stdout = std::fs::read_to_string(out.path()).unwrap();
    (stdout, peak_kib as f64 / 1024.0, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_and_replay_stream_100000_letters_in_bounded_memory() {
    let _servers = shared().await;
    let config = base_config("dlq100k");
    let (_client, js) = jetstream(&config).await;
    let subject = format!("{}.max_deliveries", config.nats.deadletter_prefix);
    let original = score_worker::cmd::sample::subject_for(&config.nats.subjects[0], "big");
    let padding = "x".repeat(PAYLOAD);
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for i in 0..LETTERS {
        let mut headers = HeaderMap::new();
        headers.insert(deadletter::REASON, "max_deliveries");
        headers.insert(deadletter::ERROR, "not written after 10 deliveries: test");
        headers.insert(deadletter::ORIGINAL_SUBJECT, original.as_str());
        let payload = format!("{{\"n\":{i},\"pad\":\"{padding}\"}}");
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .unwrap();
        acks.push(std::future::IntoFuture::into_future(ack));
        if acks.len() >= 1000 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(ack) = acks.next().await {
        ack.unwrap();
    }
    let published = started.elapsed();

    let (listed, list_mib, list_took) = measured(&config, &["dlq", "list"]).await;
    assert_eq!(listed.lines().count(), LETTERS + 1);
    assert!(
        listed.ends_with(&format!("\n{LETTERS} dead letters\n")),
        "{}",
        &listed[listed.len() - 200..]
    );

    let (dry, dry_mib, dry_took) = measured(&config, &["dlq", "replay", "--dry-run"]).await;
    assert_eq!(
        dry.trim(),
        format!(
            "would replay {LETTERS} dead letters, skip 0 (dry run: nothing published or deleted)"
        )
    );
    let mut dlq = js.get_stream(&config.nats.deadletter_stream).await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, LETTERS as u64);
    let mut scores = js.get_stream(&config.nats.stream).await.unwrap();
    assert_eq!(scores.info().await.unwrap().state.messages, 0);

    let (replayed, replay_mib, replay_took) = measured(&config, &["dlq", "replay"]).await;
    assert_eq!(
        replayed.trim(),
        format!("replayed {LETTERS} dead letters, skipped 0")
    );
    assert_eq!(dlq.info().await.unwrap().state.messages, 0);
    assert_eq!(scores.info().await.unwrap().state.messages, LETTERS as u64);

    eprintln!(
        "dlq 100k: {LETTERS} letters of {PAYLOAD} B published in {published:.1?}; peak RSS: list {list_mib:.1} MiB ({list_took:.1?}), \
         replay --dry-run {dry_mib:.1} MiB ({dry_took:.1?}), replay {replay_mib:.1} MiB ({replay_took:.1?}); bound {RSS_BOUND_MIB} MiB"
    );
    for (what, mib) in [
        ("list", list_mib),
        ("replay --dry-run", dry_mib),
        ("replay", replay_mib),
    ] {
        assert!(
            mib > 0.0 && mib < RSS_BOUND_MIB,
            "dlq {what}: peak RSS {mib:.1} MiB"
        );
    }
    // 200 MB of test data: do not leave it on the shared server.
    js.delete_stream(&config.nats.stream).await.unwrap();
    js.delete_stream(&config.nats.deadletter_stream)
        .await
        .unwrap();
}
