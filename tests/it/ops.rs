//! The operator commands against the real servers: `migrate --dry-run` (the plan, nothing changed),
//! the schema's options as the server applied them, `check` naming a missing stream, consumer and
//! schema, `publish-sample`, and `/readyz` of a live worker whose schema falls behind.

use std::collections::HashMap;
use std::time::Duration;

use score_worker::config::Config;
use score_worker::{nats, schema, store};
use scylla::client::session::Session;
use uuid::Uuid;

use crate::support::*;

/// A keyspace of the test's own, never migrated yet. Schema changes wait for every node's agreement
/// and can take longer than a write on a loaded machine: 60 s per statement (seen: 5 s cut one off).
fn fresh_keyspace(config: &mut Config, tag: &str) {
    config.scylla.keyspace = format!("it_{tag}_{}", &Uuid::new_v4().simple().to_string()[..8]);
    config.scylla.request_timeout = SCHEMA_TIMEOUT;
}

const SCHEMA_TIMEOUT: Duration = Duration::from_secs(60);

/// A session for schema changes and `system_schema` reads, with [`SCHEMA_TIMEOUT`].
async fn admin_session() -> Session {
    let mut config = base_config("admin").scylla;
    config.request_timeout = SCHEMA_TIMEOUT;
    store::connect(&config).await.expect("session")
}

async fn keyspace_exists(session: &Session, keyspace: &str) -> bool {
    session
        .query_unpaged(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num()
        > 0
}

/// A table's options as the server applied them.
struct TableOptions {
    compaction: HashMap<String, String>,
    default_ttl: i32,
    gc_grace_seconds: i32,
}

/// The options of every table of `keyspace`, from `system_schema.tables`.
async fn table_options(session: &Session, keyspace: &str) -> HashMap<String, TableOptions> {
    let rows = session
        .query_unpaged(
            "SELECT table_name, compaction, default_time_to_live, gc_grace_seconds FROM system_schema.tables WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    rows.rows::<(String, HashMap<String, String>, i32, i32)>()
        .unwrap()
        .map(|r| {
            let (table, compaction, default_ttl, gc_grace_seconds) = r.unwrap();
            let options = TableOptions {
                compaction,
                default_ttl,
                gc_grace_seconds,
            };
            (table, options)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_dry_run_changes_nothing_and_migrate_applies_the_schema_options() {
    let _servers = shared().await;
    let mut config = base_config("dryrun");
    fresh_keyspace(&mut config, "dryrun");
    let ks = config.scylla.keyspace.clone();
    let admin = admin_session().await;

    let plan = cli(&config, &["migrate", "--dry-run"]);
    for line in [
        format!("would run: CREATE KEYSPACE IF NOT EXISTS {ks}"),
        format!("would run: CREATE TABLE IF NOT EXISTS {ks}.scores_by_profile"),
        format!("would run: CREATE INDEX IF NOT EXISTS scores_by_profile_wallet_idx ON {ks}.scores_by_profile"),
        "would run: record version 1".to_string(),
        format!("would run: record version {}", schema::expected_version()),
    ] {
        assert!(plan.contains(&line), "`{line}` missing from the plan:\n{plan}");
    }
    assert!(
        !keyspace_exists(&admin, &ks).await,
        "--dry-run created keyspace {ks}"
    );

    let applied = cli(&config, &["migrate"]);
    assert!(
        applied.contains(&format!("ran: CREATE KEYSPACE IF NOT EXISTS {ks}")),
        "{applied}"
    );
    assert_eq!(
        schema::current_version(&admin, &ks).await.unwrap(),
        Some(schema::expected_version())
    );
    // Up to date: the plan is empty and running it again changes nothing.
    let again = cli(&config, &["migrate", "--dry-run"]);
    assert!(!again.contains("CREATE"), "{again}");

    // Cassandra: no ScyllaDB-only option in the plan (it would reject tombstone_gc).
    assert_eq!(
        schema::flavour(&admin).await.unwrap(),
        schema::Flavour::Cassandra
    );
    assert!(!plan.contains("tombstone_gc"), "{plan}");

    // Every table's compaction and tombstone settings as the server applied them (schema/*.cql;
    // docs/design.md, "Tombstones").
    let tables = table_options(&admin, &ks).await;
    assert_table_options(&tables);
    assert_wallet_index_and_best_first(&admin, &ks).await;
    eprintln!(
        "migrate --dry-run: {} plan lines, keyspace untouched; applied: {:?}",
        plan.lines().count(),
        tables
            .iter()
            .map(|(t, o)| format!(
                "{t}: {} ttl {} gc_grace {}",
                compaction_class(&tables[t]),
                o.default_ttl,
                o.gc_grace_seconds
            ))
            .collect::<Vec<_>>()
    );
    let _ = drop_keyspace(&admin, &ks).await;
}

/// The short name of a table's compaction class.
fn compaction_class(table: &TableOptions) -> String {
    let class = table.compaction.get("class").cloned().unwrap_or_default();
    class.rsplit('.').next().unwrap_or_default().to_string()
}

/// Every table's compaction and tombstone settings as the server applied them (schema/*.cql;
/// docs/design.md, "Tombstones").
fn assert_table_options(tables: &HashMap<String, TableOptions>) {
    let mut names: Vec<&str> = tables.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "eligibility_cache",
            "schema_migrations",
            "score_history",
            "scores",
            "scores_by_profile",
            "settings"
        ]
    );
    let class = |t: &str| compaction_class(&tables[t]);
    for (table, compaction) in [
        ("scores", "LeveledCompactionStrategy"),
        ("scores_by_profile", "LeveledCompactionStrategy"),
        ("score_history", "TimeWindowCompactionStrategy"),
        ("eligibility_cache", "SizeTieredCompactionStrategy"),
    ] {
        assert_eq!(class(table), compaction, "{table}");
    }
    let history = &tables["score_history"].compaction;
    assert_eq!(
        (
            history.get("compaction_window_unit").map(String::as_str),
            history.get("compaction_window_size").map(String::as_str)
        ),
        (Some("DAYS"), Some("1")),
        "{history:?}"
    );
    let ttl = |t: &str| tables[t].default_ttl;
    assert_eq!(ttl("score_history"), 7_776_000, "90 days of history");
    assert_eq!(ttl("eligibility_cache"), 300);
    assert_eq!(ttl("scores"), 0, "leaderboard rows never expire");
    assert_eq!(ttl("scores_by_profile"), 0);
    // Tombstones are purged no sooner than the server's default 10 days on Cassandra, where the
    // repair cadence is the operator's (docs/design.md, "Tombstones"); ScyllaDB gets repair-based GC.
    for table in schema::TABLES_WITH_DELETES.iter().chain(&["score_history"]) {
        assert_eq!(tables[*table].gc_grace_seconds, 864_000, "{table}");
    }
}

/// The wallet index targets `wallet_address`, and leaderboard rows cluster best first.
async fn assert_wallet_index_and_best_first(admin: &Session, ks: &str) {
    let index = admin
        .query_unpaged(
            "SELECT table_name, options FROM system_schema.indexes WHERE keyspace_name = ? AND table_name = ? AND index_name = ?",
            (ks, "scores_by_profile", "scores_by_profile_wallet_idx"),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .maybe_first_row::<(String, HashMap<String, String>)>()
        .unwrap();
    let target = index.as_ref().and_then(|(_, o)| o.get("target").cloned());
    assert_eq!(
        target.as_deref(),
        Some("wallet_address"),
        "the wallet index: {index:?}"
    );
    let order = admin
        .query_unpaged(
            "SELECT column_name, clustering_order FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?",
            (ks, "scores"),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String, String)>()
        .unwrap()
        .map(Result::unwrap)
        .find(|(c, _)| c == "score");
    assert_eq!(
        order.map(|(_, o)| o).as_deref(),
        Some("desc"),
        "leaderboard rows are read best first"
    );
}

/// `check` of a configuration whose stream, consumer and keyspace do not exist yet: every part is
/// named and it exits 1; once they exist, it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_missing_stream_consumer_and_schema() {
    let _servers = shared().await;
    let mut config = base_config("checkmissing");
    fresh_keyspace(&mut config, "check");
    let ks = config.scylla.keyspace.clone();
    let admin = admin_session().await;
    let run_check = |config: &Config| {
        let out = worker_command(config, 0).arg("check").output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };

    let (code, report) = run_check(&config);
    assert_eq!(code, Some(1), "{report}");
    for line in [
        format!("[FAIL] stream {}:", config.nats.stream),
        format!("[FAIL] stream {}:", config.nats.deadletter_stream),
        format!(
            "[FAIL] consumer {}: its stream is missing",
            config.nats.consumer
        ),
        format!("[FAIL] keyspace {ks}: no schema applied: run `score-worker migrate`"),
    ] {
        assert!(report.contains(&line), "`{line}` missing:\n{report}");
    }

    // The streams exist, the consumer does not.
    let client = nats::connect(&config.nats, None).await.unwrap();
    let js = nats::jetstream(client, &config.nats);
    js.create_stream(nats::scores_stream_config(&config.nats))
        .await
        .unwrap();
    js.create_stream(nats::deadletter_stream_config(&config.nats))
        .await
        .unwrap();
    let (code, report) = run_check(&config);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("[ok]   stream {} exists", config.nats.stream)),
        "{report}"
    );
    assert!(
        report.contains(&format!("[FAIL] consumer {}: ", config.nats.consumer))
            && !report.contains("its stream is missing"),
        "{report}"
    );

    nats::ensure_topology(&js, &config.nats).await.unwrap();
    schema::migrate(&admin, &config.scylla, false)
        .await
        .unwrap();
    let (code, report) = run_check(&config);
    assert_eq!(code, Some(0), "{report}");
    assert!(!report.contains("[FAIL]"), "{report}");
    let _ = drop_keyspace(&admin, &ks).await;
    let _ = js.delete_stream(&config.nats.stream).await;
    let _ = js.delete_stream(&config.nats.deadletter_stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_sample_publishes_events_a_worker_accepts() {
    let (_servers, config) = sharing("sample").await;
    let (_client, js) = jetstream(&config).await;
    let out = cli(
        &config,
        &["publish-sample", "--count", "200", "--profiles", "20"],
    );
    let mut stream = js.get_stream(&config.nats.stream).await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert_eq!(stored, 200, "publish-sample stored 200 messages: {out}");
    let worker = Worker::start(config.clone()).await;
    wait_until("every sample processed", Duration::from_secs(60), || {
        worker.processed() >= 200
    })
    .await;
    wait_drained(&js, &config, Duration::from_secs(30)).await;
    let dead = dead_lettered(&worker.metrics);
    assert_eq!(
        (worker.processed(), dead),
        (200, 0),
        "every sample event is valid and written"
    );
    worker.stop().await;
    eprintln!("publish-sample: {} -> 200 stored, 200 written", out.trim());
}

/// A live worker whose keyspace loses its newest schema version: `/readyz` says 503 and why, then
/// 200 again once the version is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_on_a_live_worker_while_the_schema_is_behind() {
    let _servers = shared().await;
    let mut config = base_config("behind");
    fresh_keyspace(&mut config, "behind");
    let ks = config.scylla.keyspace.clone();
    let admin = admin_session().await;
    schema::migrate(&admin, &config.scylla, false)
        .await
        .unwrap();
    let (_client, _js) = jetstream(&config).await;
    let worker = Worker::start(config.clone()).await;
    let addr = worker.addr;
    let ready = |want: u16, needle: &'static str| readyz_until(addr, want, needle);
    ready(200, "").await;
    let expected = schema::expected_version();
    admin
        .query_unpaged(
            format!("DELETE FROM {ks}.schema_migrations WHERE version = ?"),
            (expected,),
        )
        .await
        .unwrap();
    let body = ready(503, "run `score-worker migrate`").await;
    assert!(
        body.contains(&format!("this build expects {expected}")),
        "{body}"
    );
    schema::migrate(&admin, &config.scylla, false)
        .await
        .unwrap();
    ready(200, "").await;
    worker.stop().await;
    eprintln!("schema behind: /readyz said `{}`", body.trim());
    let _ = drop_keyspace(&admin, &ks).await;
}
