//! The leaderboard bucket count is part of the data: `migrate` records it in the keyspace, and a
//! worker (or a later `migrate`) configured with another count refuses to start, naming both.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_another_bucket_count_refuses_to_start() {
    let (_servers, config) = sharing("buckets").await;
    let stored = config.scylla.leaderboard_buckets;
    let mut other = config.clone();
    other.scylla.leaderboard_buckets = stored / 2;

    let err = match score_worker::app::App::build(other.clone()).await {
        Ok(_) => panic!("a worker with {} buckets started", stored / 2),
        Err(e) => format!("{e}"),
    };
    assert!(
        err.contains(&format!("leaderboard_buckets = {stored}"))
            && err.contains(&format!("says {}", stored / 2)),
        "{err}"
    );

    let out = worker_command(&other, 0).arg("migrate").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("leaderboard_buckets = {stored}")),
        "{stderr}"
    );

    // The recorded count is unchanged, and the right count still starts.
    let again = cli(&config, &["migrate", "--dry-run"]);
    assert!(again.contains("leaderboard_buckets"), "{again}");
    let worker = Worker::start(config).await;
    worker.stop().await;
    eprintln!(
        "buckets: refused {} against the recorded {stored}: {err}",
        stored / 2
    );
}
