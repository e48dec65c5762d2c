//! Knobs that pass types but would break the worker are refused at start-up by the real binary:
//! exit code 2, the key and the expected form on stderr, and nothing consumed.

use std::time::Duration;

use crate::support::*;

/// Runs `score-worker run` with one override; returns (exit code, stderr).
fn run_with(config: &score_worker::config::Config, key: &str, value: &str) -> (i32, String) {
    let out = worker_command(config, free_port())
        .env(format!("SCORE_WORKER__{key}"), value)
        .arg("run")
        .output()
        .expect("the worker binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn knobs_that_break_the_worker_stop_the_start_with_the_key() {
    let config = base_config("knobs");
    let cases = [
        ("RETRY__PROGRESS_INTERVAL", "0s", "retry.progress_interval"),
        ("RETRY__TOTAL_BUDGET", "0s", "retry.total_budget"),
        ("SCYLLA__REQUEST_TIMEOUT", "0ms", "scylla.request_timeout"),
        ("NATS__REQUEST_TIMEOUT", "0s", "nats.request_timeout"),
        ("RETRY__TOTAL_BUDGET", "99999999999999999d", "total_budget"),
        (
            "RETRY__TOTAL_BUDGET",
            "20s",
            "batch.linger + retry.total_budget",
        ),
        ("SCYLLA__CONSISTENCY", "one", "allow_weak_consistency"),
        ("SCYLLA__CONSISTENCY", "local_one", "allow_weak_consistency"),
    ];
    for (key, value, named) in cases {
        let started = std::time::Instant::now();
        let (code, stderr) = run_with(&config, key, value);
        assert_eq!(code, 2, "{key}={value}: {stderr}");
        assert!(
            stderr.to_lowercase().contains(&named.to_lowercase()),
            "{key}={value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{key}={value}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(30));
        eprintln!("{key}={value}: exit {code}: {}", stderr.trim());
    }
    // The opt-in lets a weak level start (it gets as far as the servers: `check` exits 0).
    let out = worker_command(&config, 0)
        .env("SCORE_WORKER__SCYLLA__CONSISTENCY", "one")
        .env("SCORE_WORKER__SCYLLA__ALLOW_WEAK_CONSISTENCY", "true")
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("configuration valid"), "{stdout}");
}
