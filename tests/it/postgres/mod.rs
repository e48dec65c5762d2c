//! `score-worker migrate-postgres` against a real PostgreSQL (the dev set's, `cargo xtask up dev`,
//! or `SCORE_WORKER_PG_URL`) and the real database, with the real binary: a dry run changes nothing,
//! a run moves 20,000 rows exactly (many of the copy's chunks; the 100,000-row figures are in
//! `docs/performance.md`) and reports the invalid ones, a run killed mid-way and resumed ends the
//! same, and a newer score from NATS survives the migration. How the source is reached and read
//! (TLS, a read-only transaction): [`source`].

mod source;

use std::collections::HashMap;
use std::time::Duration;

use futures::TryStreamExt;
use score_worker::config::Config;
use score_worker::schema;
use scylla::client::session::Session;
use uuid::Uuid;

use crate::support::*;

/// Enough pages that a kill lands mid-way; more only lengthens CI (100,000 took ~105 s a test).
const ROWS: u64 = 20_000;

fn pg_url() -> String {
    std::env::var("SCORE_WORKER_PG_URL").unwrap_or_else(|_| {
        let dev = xtask::environments::Environment::load("dev").expect("environments.toml");
        let port = dev.postgres_port().expect("the dev set has a PostgreSQL");
        format!("host={} port={port} user=postgres", dev.set.host)
    })
}

async fn pg() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be running (cargo xtask up dev)");
    tokio::spawn(connection);
    client
}

/// Eight hex digits that name a test's own PostgreSQL tables.
fn short_tag() -> String {
    Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// (Re)creates `table` in the layout `migrate-postgres` reads, filled by the statements `fill`.
async fn create_source(client: &tokio_postgres::Client, table: &str, fill: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (profile_id uuid, wallet_address text, leaderboard_id text,
                                   score bigint, updated_at timestamptz);
             {fill}"
        ))
        .await
        .expect("source table");
}

/// A source table of `ROWS` valid rows over three leaderboards, and five invalid ones.
async fn source_table(client: &tokio_postgres::Client, tag: &str) -> (String, String) {
    let table = format!("mig_{tag}");
    let board = format!("mig-{tag}");
    let fill = format!(
        "INSERT INTO {table}
               SELECT md5('{tag}' || i)::uuid, '0x' || substr(md5('w' || i) || md5('v' || i), 1, 40), '{board}-' || (i % 3),
                      (i * 7919) % 20001 - 10000, timestamptz '2026-11-01 00:00:00+00' + i * interval '1 ms'
               FROM generate_series(1, {ROWS}) AS i;
             INSERT INTO {table} VALUES
               (md5('{tag}bad1')::uuid, 'not-a-wallet', '{board}-0', 1, now() - interval '1 hour'),
               (md5('{tag}bad2')::uuid, '0x' || repeat('a', 40), '{board}-0', NULL, now() - interval '1 hour'),
               (md5('{tag}bad3')::uuid, '0x' || repeat('b', 40), '{board}-0', 5, now() + interval '1 day'),
               (md5('{tag}bad4')::uuid, '0x' || repeat('c', 40), 'bad board!', 5, now() - interval '1 hour'),
               (NULL, '0x' || repeat('d', 40), '{board}-0', 5, now() - interval '1 hour');"
    );
    create_source(client, &table, &fill).await;
    (table, board)
}

/// The two ends of a migration test: a PostgreSQL client with a fresh [`source_table`], and the
/// test's configuration with a keyspace of its own ([`own_keyspace`]) and a session on it.
async fn source_and_keyspace(test: &str) -> (tokio_postgres::Client, Config, Session, String) {
    let client = pg().await;
    let (config, session) = own_keyspace(test).await;
    let (table, _) = source_table(&client, &short_tag()).await;
    (client, config, session, table)
}

/// Drops what [`source_and_keyspace`] made.
async fn drop_source_and_keyspace(
    client: &tokio_postgres::Client,
    (session, config): (&Session, &Config),
    table: &str,
) {
    drop_keyspace(session, config).await;
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// The valid rows, read straight from PostgreSQL: (leaderboard, profile) → (score, wallet).
async fn source_rows(client: &tokio_postgres::Client, table: &str) -> HashMap<(String, Uuid), i64> {
    let rows = client
        .query(
            &format!(
                "SELECT profile_id, leaderboard_id, score FROM {table}
                 WHERE profile_id IS NOT NULL AND score IS NOT NULL AND updated_at < now()
                   AND wallet_address ~ '^0x[0-9a-f]{{40}}$' AND leaderboard_id ~ '^[A-Za-z0-9_.-]+$'"
            ),
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                (r.get::<_, String>(1), r.get::<_, Uuid>(0)),
                r.get::<_, i64>(2),
            )
        })
        .collect()
}

/// A keyspace of the test's own, migrated (the dump must not see other tests' writes).
async fn own_keyspace(test: &str) -> (Config, Session) {
    let mut config = base_config(test);
    config.scylla.keyspace = format!("score_worker_it_{}", config.nats.consumer.to_lowercase());
    let session = session().await;
    schema::migrate(&session, &config.scylla, false)
        .await
        .expect("migrate");
    (config, session)
}

async fn drop_keyspace(session: &Session, config: &Config) {
    // Schema changes can take longer than the default request timeout on a busy machine.
    let mut drop = scylla::statement::Statement::new(format!(
        "DROP KEYSPACE IF EXISTS {}",
        config.scylla.keyspace
    ));
    drop.set_request_timeout(Some(Duration::from_secs(120)));
    session
        .query_unpaged(drop, ())
        .await
        .expect("drop keyspace");
}

/// Every row of every table of the keyspace, with the write times of the score tables' cells, sorted:
/// equal dumps mean an unchanged keyspace.
async fn dump(session: &Session, ks: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (table, columns) in [
        (
            "scores",
            "leaderboard_id, bucket, score, profile_id, wallet_address, updated_at, \
             WRITETIME(wallet_address)",
        ),
        (
            "scores_by_profile",
            "profile_id, leaderboard_id, score, wallet_address, updated_at, ranked, \
             WRITETIME(score), WRITETIME(updated_at)",
        ),
        ("score_history", "*"),
        ("eligibility_cache", "*"),
        ("settings", "*"),
        ("schema_migrations", "*"),
    ] {
        let pager = session
            .query_iter(format!("SELECT {columns} FROM {ks}.{table}"), ())
            .await
            .unwrap();
        let mut rows = pager.rows_stream::<scylla::value::Row>().unwrap();
        while let Some(row) = rows.try_next().await.unwrap() {
            out.push(format!("{table}: {:?}", row.columns));
        }
    }
    out.sort();
    out
}

/// The leaderboard rows of the keyspace: (leaderboard, profile) → scores.
async fn board(session: &Session, ks: &str) -> HashMap<(String, Uuid), Vec<i64>> {
    let pager = session
        .query_iter(
            format!("SELECT leaderboard_id, score, profile_id FROM {ks}.scores"),
            (),
        )
        .await
        .unwrap();
    let mut rows = pager.rows_stream::<(String, i64, Uuid)>().unwrap();
    let mut out: HashMap<(String, Uuid), Vec<i64>> = HashMap::new();
    while let Some((lb, score, profile)) = rows.try_next().await.unwrap() {
        out.entry((lb, profile)).or_default().push(score);
    }
    out
}

fn migrate_cmd(config: &Config, table: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = worker_command(config, 0);
    cmd.args(["migrate-postgres", "--source", &pg_url(), "--table", table]);
    cmd.args(extra);
    cmd
}

fn run_ok(mut cmd: std::process::Command) -> String {
    let out = cmd.output().expect("the binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn assert_report(out: &str) {
    let read = format!("rows read:     {}", ROWS + 5);
    let valid = format!("valid:         {ROWS}");
    let writes = format!("score writes:  {ROWS}");
    for line in [
        read.as_str(),
        valid.as_str(),
        "invalid:       5",
        "  future_timestamp: 1",
        "  invalid_value: 2",
        "  missing_field: 2",
        "leaderboards:  4",
        writes.as_str(),
    ] {
        assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
    }
    assert!(
        out.contains("wallet_address must be 0x followed by 40 hex digits"),
        "{out}"
    );
}

fn assert_moved(got: &HashMap<(String, Uuid), Vec<i64>>, want: &HashMap<(String, Uuid), i64>) {
    assert_eq!(want.len() as u64, ROWS);
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, s)| got.get(*k) != Some(&vec![**s]))
        .take(5)
        .map(|(k, s)| format!("{k:?}: want {s}, got {:?}", got.get(k)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(got.len(), want.len(), "exactly the source's keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_writes_nothing_and_a_run_moves_every_valid_row_under_newer_nats_scores() {
    let _servers = shared().await;
    let (client, config, session, table) = source_and_keyspace("pgrun").await;
    let ks = config.scylla.keyspace.clone();
    let mut want = source_rows(&client, &table).await;

    // A live worker writes a score newer than the PostgreSQL row of one key, and one older than
    // another's, before the migration runs.
    let (_nats, js) = jetstream(&config).await;
    let worker = Worker::start(config.clone()).await;
    let mut keys: Vec<(String, Uuid)> = want.keys().cloned().collect();
    keys.sort();
    let (newer_key, older_key) = (keys[0].clone(), keys[1].clone());
    let nats_event = |key: &(String, Uuid), score: i64, at: &str| Event {
        event_id: format!("pg-{}", Uuid::new_v4()),
        profile: key.1,
        wallet: wallet_of(key.1),
        leaderboard: key.0.clone(),
        score,
        at_micros: chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .timestamp_micros(),
    };
    let newer = nats_event(&newer_key, 424_242, "2026-11-20T00:00:00Z");
    let older = nats_event(&older_key, -424_242, "2026-10-01T00:00:00Z");
    publish(&js, &config, &newer, &newer.event_id).await;
    worker
        .publish_and_wait((&js, &config), &older, 2, "NATS events written")
        .await;
    worker.stop().await;

    let before = dump(&session, &ks).await;
    let out = run_ok(migrate_cmd(&config, &table, &["--dry-run"]));
    assert!(out.starts_with("dry run: nothing written"), "{out}");
    assert_report(&out);
    assert_eq!(
        dump(&session, &ks).await,
        before,
        "a dry run changes nothing"
    );

    let out = run_ok(migrate_cmd(&config, &table, &[]));
    assert_report(&out);
    want.insert(newer_key.clone(), 424_242);
    assert_moved(&board(&session, &ks).await, &want);
    let by_profile = profile_scores_in(&session, &ks, [newer_key.clone()].into_iter()).await;
    assert_eq!(
        by_profile[&newer_key].0,
        Some(424_242),
        "the newer NATS score survives"
    );
    drop_source_and_keyspace(&client, (&session, &config), &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_way_and_resumed_ends_with_the_same_result() {
    let _servers = shared().await;
    let (client, config, session, table) = source_and_keyspace("pgkill").await;
    let ks = config.scylla.keyspace.clone();
    let want = source_rows(&client, &table).await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("migration.json");
    let checkpoint_arg = checkpoint.to_str().unwrap();
    let args = ["--checkpoint", checkpoint_arg, "--chunk", "500"];

    let mut child = migrate_cmd(&config, &table, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let read_so_far = || -> (u64, bool) {
        let Ok(text) = std::fs::read_to_string(&checkpoint) else {
            return (0, false);
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (
            v["report"]["rows_read"].as_u64().unwrap(),
            v["complete"].as_bool().unwrap(),
        )
    };
    wait_until(
        "a fifth of the rows migrated",
        Duration::from_secs(180),
        || read_so_far().0 >= ROWS / 5,
    )
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (read, complete) = read_so_far();
    assert!(
        !complete && read < ROWS,
        "killed mid-way: {read} rows read, complete {complete}"
    );

    let out = run_ok(migrate_cmd(&config, &table, &args));
    assert_report(&out);
    assert!(read_so_far().1, "complete after the resumed run");
    assert_moved(&board(&session, &ks).await, &want);
    // Run again on the completed checkpoint: nothing more is read, the report is the same.
    assert_report(&run_ok(migrate_cmd(&config, &table, &args)));
    drop_source_and_keyspace(&client, (&session, &config), &table).await;
}
