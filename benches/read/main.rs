//! `make bench-read`: figures for the read side, never a pass/fail on timing. On the local Cassandra,
//! in a keyspace of its own (dropped afterwards), one leaderboard of `PROFILES` profiles is loaded
//! straight into `scores` with the driver (unlogged batches of one bucket partition each), then:
//!
//! 1. `fresh`: top-100 latency (`Reader::top`, p50/p99 of `READS` sequential reads), and the cost of
//!    `Reader::rank` at a few depths;
//! 2. `CHANGES` score changes, written as the protocol leaves them (the old row deleted, the new one
//!    inserted, both at the change's timestamp), most of them on the hottest profiles at the head of
//!    the board (`HOT` of them on the top 1%, each a small raise), so the head fills with row
//!    tombstones — what a top-N read scans;
//! 3. `churned`: the same reads again.
//!
//! Knobs, all `SCORE_WORKER_BENCH_READ_*`: `PROFILES` (1000000), `CHANGES` (1000000), `READS` (300),
//! `HOT` (0.7), `BUCKETS` (16), `CONCURRENCY` (batches in flight, 32), `KEEP` (keep the keyspace, 0),
//! `SEED` (1), `RANK_BUDGET` (rows a rank counts before answering "beyond", the library's default).
//! Figures and method: docs/performance.md, "Read side".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng};
use score_worker::config::Config;
use score_worker::metrics::Metrics;
use score_worker::read::{Rank, Reader, RANK_BUDGET};
use score_worker::store::bucket_of;
use score_worker::{schema, store};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

const KEYSPACE: &str = "score_worker_bench_read";
const BOARD: &str = "bench-read";
const ROWS_PER_BATCH: usize = 100;

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(format!("SCORE_WORKER_BENCH_READ_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    profile: Uuid,
    bucket: i32,
    score: i64,
}

#[tokio::main]
async fn main() {
    let profiles: usize = knob("PROFILES", 1_000_000);
    let changes: usize = knob("CHANGES", 1_000_000);
    let reads: usize = knob("READS", 300);
    let hot: f64 = knob("HOT", 0.7);
    let concurrency: usize = knob("CONCURRENCY", 32);
    let mut config = Config::defaults();
    let dev = xtask::environments::Environment::load("dev").expect("environments.toml");
    config.scylla.nodes = vec![dev.cql_node()];
    config.scylla.keyspace = KEYSPACE.into();
    config.scylla.leaderboard_buckets = knob("BUCKETS", 16);
    config.scylla.request_timeout = Duration::from_secs(60);
    let session = Arc::new(
        store::connect(&config.scylla)
            .await
            .expect("Cassandra (cargo xtask up dev)"),
    );
    drop_keyspace(&session).await;
    schema::migrate(&session, &config.scylla, false)
        .await
        .expect("migrate");
    let reader = Reader::new(session.clone(), &config.scylla, Arc::new(Metrics::new()))
        .await
        .expect("reader")
        .with_rank_budget(knob("RANK_BUDGET", RANK_BUDGET));
    let insert = session
        .prepare(format!(
            "INSERT INTO {KEYSPACE}.scores (leaderboard_id, bucket, score, profile_id, wallet_address, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
        ))
        .await
        .unwrap();
    let delete = session
        .prepare(format!(
            "DELETE FROM {KEYSPACE}.scores USING TIMESTAMP ? WHERE leaderboard_id = ? AND bucket = ? \
             AND score = ? AND profile_id = ?"
        ))
        .await
        .unwrap();

    let mut rng = rand::rngs::StdRng::seed_from_u64(knob("SEED", 1));
    let buckets = config.scylla.leaderboard_buckets;
    let mut board: Vec<Row> = (0..profiles)
        .map(|_| {
            let profile = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
            Row {
                profile,
                bucket: bucket_of(profile, buckets),
                score: rng.random_range(0..100_000_000),
            }
        })
        .collect();
    let t0 = chrono::Utc::now().timestamp_micros() - 3_600_000_000;
    let started = Instant::now();
    let statements: Vec<(i32, Statement)> = board
        .iter()
        .map(|r| (r.bucket, Statement::Insert(r.profile, r.score)))
        .collect();
    write(&session, &insert, &delete, statements, t0, concurrency).await;
    let load = started.elapsed();
    println!(
        "loaded {profiles} rows in {:.1} s ({:.0} rows/s), {buckets} buckets (~{} rows each)",
        load.as_secs_f64(),
        profiles as f64 / load.as_secs_f64(),
        profiles / buckets as usize
    );

    // Rank probes: the profiles at a few depths of the fresh board, with their by-profile rows.
    board.sort_by_key(|r| std::cmp::Reverse(r.score));
    let depths: Vec<usize> = [100, 10_000, profiles / 2, profiles - 1]
        .into_iter()
        .filter(|d| *d < profiles)
        .collect();
    let probes: Vec<Uuid> = depths.iter().map(|&d| board[d].profile).collect();
    let upsert = session
        .prepare(format!(
            "UPDATE {KEYSPACE}.scores_by_profile USING TIMESTAMP ? SET score = ? \
             WHERE profile_id = ? AND leaderboard_id = ?"
        ))
        .await
        .unwrap();
    let set_probes = |board: &[Row], at: i64| {
        let futures: Vec<_> = probes
            .iter()
            .map(|p| {
                let row = board.iter().find(|r| r.profile == *p).unwrap();
                session.execute_unpaged(&upsert, (at, row.score, *p, BOARD))
            })
            .collect();
        futures::future::try_join_all(futures)
    };
    set_probes(&board, t0).await.unwrap();
    measure("fresh", &reader, reads, &probes, &depths).await;

    // Churn at the head: most changes on the top 1%, each a small raise; the rest anywhere.
    let head = (profiles / 100).max(1);
    let started = Instant::now();
    let mut done = 0;
    let mut round = 1i64;
    while done < changes {
        // One change per profile per round, so a round's writes never race each other.
        let take = (changes - done).min(20_000).min(profiles);
        let mut picked = std::collections::HashSet::new();
        let mut statements = Vec::with_capacity(2 * take);
        while picked.len() < take {
            let i = if rng.random_bool(hot) {
                rng.random_range(0..head)
            } else {
                rng.random_range(0..profiles)
            };
            if !picked.insert(i) {
                continue;
            }
            let row = &mut board[i];
            let new = row.score + rng.random_range(1..1_000);
            statements.push((row.bucket, Statement::Delete(row.profile, row.score)));
            statements.push((row.bucket, Statement::Insert(row.profile, new)));
            row.score = new;
        }
        write(
            &session,
            &insert,
            &delete,
            statements,
            t0 + round,
            concurrency,
        )
        .await;
        done += take;
        round += 1;
        if round % 10 == 0 {
            eprintln!("  {done} changes");
        }
    }
    let churn = started.elapsed();
    println!(
        "{changes} changes ({:.0}% on the top 1%) in {:.1} s ({:.0} changes/s), {} rounds",
        hot * 100.0,
        churn.as_secs_f64(),
        changes as f64 / churn.as_secs_f64(),
        round - 1
    );
    set_probes(&board, t0 + round).await.unwrap();
    measure("churned", &reader, reads, &probes, &depths).await;

    if knob("KEEP", 0) == 0 {
        drop_keyspace(&session).await;
    } else {
        println!("kept keyspace {KEYSPACE}");
    }
}

enum Statement {
    Insert(Uuid, i64),
    Delete(Uuid, i64),
}

/// Writes the statements as unlogged batches of one bucket partition each, `concurrency` in flight.
async fn write(
    session: &Session,
    insert: &PreparedStatement,
    delete: &PreparedStatement,
    statements: Vec<(i32, Statement)>,
    at: i64,
    concurrency: usize,
) {
    let mut by_bucket: HashMap<i32, Vec<Statement>> = HashMap::new();
    for (bucket, s) in statements {
        by_bucket.entry(bucket).or_default().push(s);
    }
    let updated_at = CqlTimestamp(at / 1000);
    let mut batches = Vec::new();
    for (bucket, list) in by_bucket {
        for chunk in list.chunks(ROWS_PER_BATCH) {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values: Vec<Box<dyn scylla::serialize::row::SerializeRow + Send + Sync>> =
                Vec::new();
            for s in chunk {
                match *s {
                    Statement::Insert(p, score) => {
                        batch.append_statement(insert.clone());
                        values.push(Box::new((
                            BOARD,
                            bucket,
                            score,
                            p,
                            wallet(p),
                            updated_at,
                            at,
                        )));
                    }
                    Statement::Delete(p, score) => {
                        batch.append_statement(delete.clone());
                        values.push(Box::new((at, BOARD, bucket, score, p)));
                    }
                }
            }
            batches.push((batch, values));
        }
    }
    futures::stream::iter(batches)
        .map(|(batch, values)| async move { session.batch(&batch, values).await.map(|_| ()) })
        .buffer_unordered(concurrency)
        .try_for_each(|()| async { Ok(()) })
        .await
        .expect("load batch");
}

fn wallet(p: Uuid) -> String {
    format!("0x{}", &p.simple().to_string().repeat(2)[..40])
}

async fn measure(label: &str, reader: &Reader, reads: usize, probes: &[Uuid], depths: &[usize]) {
    // A top-N read meets the row tombstones above the N-th row of each bucket; past Cassandra's
    // `tombstone_failure_threshold` (100,000 in one page) it fails, and that is a figure too (the
    // reader pages, but no page size helps when they lie between two live rows). The bench makes no
    // read of its own beyond these.
    let mut took: Vec<Duration> = Vec::with_capacity(reads);
    for i in 0..reads + 10 {
        let start = Instant::now();
        let page = match reader.top(BOARD, 100).await {
            Ok(page) => page,
            Err(e) => {
                println!(
                    "{label}: top-100 read {} failed after {:.1} ms: {e}",
                    i + 1,
                    ms(start.elapsed())
                );
                break;
            }
        };
        // The first ten warm up.
        if i >= 10 {
            took.push(start.elapsed());
        }
        assert_eq!(page.entries.len(), 100);
    }
    took.sort();
    if !took.is_empty() {
        let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
        println!(
            "{label}: top-100 over {} reads: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            took.len(),
            ms(at(0.50)),
            ms(at(0.99)),
            ms(at(1.0))
        );
    }
    for (p, depth) in probes.iter().zip(depths) {
        let mut times = Vec::new();
        let mut band = None;
        for _ in 0..3 {
            let start = Instant::now();
            match reader.rank(BOARD, *p).await {
                Ok(b) => band = b,
                // A count past the server's read timeout is a figure too.
                Err(e) => {
                    println!(
                        "{label}: rank of the profile at depth {depth}: failed after {:.1} ms: {e}",
                        ms(start.elapsed())
                    );
                    break;
                }
            }
            times.push(start.elapsed());
        }
        let Some(band) = band.filter(|_| times.len() == 3) else {
            continue;
        };
        times.sort();
        let (answer, counted) = match band {
            Rank::Exact(b) => (format!("rank {}", b.rank), b.rows_counted),
            Rank::Beyond {
                ahead,
                rows_counted,
                ..
            } => (format!("beyond {ahead}"), rows_counted),
        };
        println!(
            "{label}: rank of the profile at depth {depth}: {answer} ({counted} rows counted) in {:.1} ms (median of 3)",
            ms(times[1])
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn drop_keyspace(session: &Session) {
    let mut drop = scylla::statement::Statement::new(format!("DROP KEYSPACE IF EXISTS {KEYSPACE}"));
    drop.set_request_timeout(Some(Duration::from_secs(120)));
    session
        .query_unpaged(drop, ())
        .await
        .expect("drop keyspace");
}
