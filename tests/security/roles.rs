//! The database roles of deploy/README.md ("Credentials: TLS and two database roles") on the security
//! pair's Cassandra, which checks permissions: `migrate` under the migration Job's role creates a
//! keyspace of the test's own; the worker under the worker's role, with exactly the grants the README
//! lists (read from its `cql` block), becomes ready, writes every event and passes `check`; `migrate`
//! under the worker's role fails and says which permission it lacks.

use std::time::Duration;

use uuid::Uuid;

use super::support::{expected, paged_rows, profile_scores_in};
use super::*;

/// The README's grants to `role` (`GRANT <what> TO <role>;` in its `cql` block), for keyspace `ks`.
fn documented_grants(role: &str, ks: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(xtask::environments::root().join("deploy/README.md"))
        .expect("deploy/README.md");
    let block = readme
        .split("```cql")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a ```cql block in deploy/README.md");
    let suffix = format!(" TO {role};");
    block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("GRANT "))
        .filter_map(|l| l.strip_suffix(suffix.as_str()))
        .map(|what| what.replace(" score_worker.", &format!(" {ks}.")))
        .collect()
}

async fn role_with(grants: &[String]) -> CqlRole {
    let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
    CqlRole::create_with(&grants).await
}

/// Environment for the binary as `role` on keyspace `ks`.
fn as_role(nats: &NatsSide, role: &CqlRole, ks: &str) -> (Env, Config) {
    let (mut env, mut config) = worker_setup(nats, &role.user, &role.password);
    set(&mut env, "SCYLLA__KEYSPACE", ks);
    set(&mut env, "LOG__FORMAT", "text");
    config.scylla.keyspace = ks.into();
    (env, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_under_the_documented_dml_role_and_migrate_needs_the_ddl_role() {
    ensure_secure_cassandra().await;
    let ks = format!("sw_roles_{}", &Uuid::new_v4().simple().to_string()[..10]);
    let (ddl, dml) = (
        documented_grants("score_worker_migrate", &ks),
        documented_grants("score_worker", &ks),
    );
    eprintln!("migration role: {ddl:?}\nworker role: {dml:?}");
    assert!(!ddl.is_empty() && dml.len() >= 5, "{ddl:?} {dml:?}");
    assert!(
        dml.iter()
            .all(|g| g.starts_with("MODIFY ON TABLE ") || g.starts_with("SELECT ON TABLE ")),
        "the worker's role reads and writes rows only: {dml:?}"
    );

    let nats_password = secret("nats");
    let (_server, nats) = svc_with(&nats_password, &nats_password);
    let dir = tempfile::tempdir().unwrap();

    // The Job's role creates the keyspace.
    let migrator = role_with(&ddl).await;
    let (ddl_env, _) = as_role(&nats, &migrator, &ks);
    migrate_ok("as the Job's role", &ddl_env, dir.path()).await;

    // The worker's role cannot change the schema: neither create a keyspace nor record one's settings.
    let worker_role = role_with(&dml).await;
    let (env, config) = as_role(&nats, &worker_role, &ks);
    assert_cannot_change_the_schema(&nats, &worker_role, &ks, &env, dir.path()).await;

    // ... and is all the worker needs.
    let mut worker = Running::spawn(&env, dir.path());
    worker.wait_ready(READY_TIMEOUT).await;
    let events = publish_board("roles", &config, 30).await;
    let text = metrics_when(
        &format!("{} events processed under the worker's role", events.len()),
        &worker,
        |t| metric(t, PROCESSED) >= Some(events.len() as f64),
    )
    .await;
    assert_eq!(
        metric_sum(
            &text,
            "score_worker_scylla_errors_total",
            "kind=\"permanent\""
        ),
        0.0,
        "no refused statement:\n{text}"
    );
    let admin = cql_session(CQL_SUPERUSER.0, CQL_SUPERUSER.1).await;
    assert_landed(&admin, &ks, &events, config.scylla.leaderboard_buckets).await;
    let check = run_to_end(&["check"], &env, dir.path(), RUN_TIMEOUT).await;
    assert_eq!(
        check.code(),
        Some(0),
        "check under the worker's role\n{check}"
    );
    let stopped = worker.terminate(Duration::from_secs(30)).await;
    assert_eq!(stopped.code(), Some(0), "{stopped}");
    assert!(
        !stopped.stderr.contains("Unauthorized"),
        "a statement was refused:\n{stopped}"
    );

    support::drop_keyspace(&admin, &ks)
        .await
        .expect("drop keyspace");
    worker_role.drop_role().await;
    migrator.drop_role().await;
}

/// The worker's role can neither create a keyspace nor record the settings of `ks` (its `env`).
async fn assert_cannot_change_the_schema(
    nats: &NatsSide,
    worker_role: &CqlRole,
    ks: &str,
    env: &Env,
    dir: &Path,
) {
    let (mut elsewhere, _) = as_role(nats, worker_role, &format!("{ks}_new"));
    set(&mut elsewhere, "SCYLLA__KEYSPACE", format!("{ks}_new"));
    let refused = run_to_end(&["migrate"], &elsewhere, dir, RUN_TIMEOUT).await;
    assert_clear_failure(
        "migrate of a new keyspace under the worker's role",
        &refused,
        &[&format!(
            "User {} has no CREATE permission",
            worker_role.user
        )],
    );
    let refused = run_to_end(&["migrate"], env, dir, RUN_TIMEOUT).await;
    assert_clear_failure(
        "migrate of the keyspace under the worker's role",
        &refused,
        &[
            &format!("User {} has no MODIFY permission", worker_role.user),
            "settings",
        ],
    );
}

/// Every key's newest score is in `scores_by_profile`, and on the leaderboard exactly once.
async fn assert_landed(
    session: &scylla::client::session::Session,
    ks: &str,
    events: &[Event],
    buckets: i32,
) {
    let want = expected(events);
    let board = &events[0].leaderboard;
    let mut rows: Vec<(i64, Uuid)> = Vec::new();
    let cql = format!(
        "SELECT score, profile_id FROM {ks}.scores WHERE leaderboard_id = ? AND bucket = ?"
    );
    for bucket in 0..buckets {
        rows.extend(paged_rows::<(i64, Uuid)>(session, &cql, (board, bucket)).await);
    }
    let mut on_board: Vec<(i64, Uuid)> = want.iter().map(|((_, p), s)| (*s, *p)).collect();
    on_board.sort();
    rows.sort();
    assert_eq!(
        rows, on_board,
        "the leaderboard holds each key once, at its newest score"
    );
    let by_profile = profile_scores_in(session, ks, want.keys().cloned()).await;
    for ((leaderboard, profile), score) in &want {
        let (stored, _) = &by_profile[&(leaderboard.clone(), *profile)];
        assert_eq!(*stored, Some(*score), "{leaderboard} {profile}");
    }
}
