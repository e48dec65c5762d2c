//! Cluster scenarios (issue 11): the worker binary against the 3-node NATS JetStream cluster (the
//! scenario's stream and dead-letter stream at 3 replicas) and the 3-node Cassandra cluster (keyspace
//! at replication factor 3, every write and read-back at `LOCAL_QUORUM`) that
//! `cargo xtask up cluster` runs on loopback — where quorum overlap, which the leaderboard
//! invariant rests on, no longer holds trivially as on one node.
//!
//! Faults: the stream leader SIGKILLed mid-load, then (another scenario) a follower; a Cassandra
//! node SIGKILLed mid-load and started again; two workers racing the same hot keys while a
//! Cassandra node is down. Each checks what the single-pair scenarios check ([`verify`]: 0 lost,
//! 0 wrong, every key once at its newest score, every bad message dead-lettered with its reason) and
//! prints one `chaos <scenario>: ...` line. A killed node is started again before the scenario ends,
//! also when it fails (so the next scenario finds three nodes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use score_worker::config::{Config, Consistency};
use score_worker::nats;
use tokio::sync::OnceCell;

use crate::harness::*;
use crate::steps::{assert_exited_zero, paced_publisher};
use crate::workload::Workload;
use crate::{all, support, DRAIN_TIMEOUT, PUBLISH_TIMEOUT, START_TIMEOUT};

/// The clusters of environments.toml (`cargo xtask env --worker cluster`).
fn clusters() -> xtask::environments::ClusterEnvironment {
    xtask::environments::Environments::load()
        .and_then(|e| e.cluster(None))
        .expect("environments.toml")
}
const REPLICAS: usize = 3;
const RF3: &str = "{'class': 'SimpleStrategy', 'replication_factor': 3}";

static MIGRATED: OnceCell<()> = OnceCell::const_new();

fn cql_nodes() -> Vec<String> {
    clusters().cql_nodes()
}

/// Starts a killed node again when dropped, should the scenario panic while it is down.
struct NodeBack {
    kind: &'static str,
    node: u8,
    armed: bool,
}

impl NodeBack {
    /// SIGKILLs node `node` of `kind` (`nats` or `cassandra`); the guard brings it back.
    async fn kill(kind: &'static str, node: u8) -> NodeBack {
        let out = services(format!("cluster-kill {kind} {node}")).await;
        eprintln!("{out}");
        NodeBack {
            kind,
            node,
            armed: true,
        }
    }

    /// Starts the node and waits until it is healthy (NATS) or gossiped NORMAL by every node
    /// (Cassandra); returns how long that took.
    async fn start(&mut self) -> Duration {
        let t = Instant::now();
        let out = services(format!("cluster-start {} {}", self.kind, self.node)).await;
        eprintln!("{out}");
        self.armed = false;
        t.elapsed()
    }
}

impl Drop for NodeBack {
    fn drop(&mut self) {
        if self.armed {
            let _ = services_blocking(&format!("cluster-start {} {}", self.kind, self.node));
        }
    }
}

/// A scenario on the clusters: every node up (`cluster-up` reuses running nodes and restarts one a
/// failed scenario left down), the keyspace at RF=3, the scenario's streams created at 3 replicas
/// before the worker's topology adopts them.
async fn start(name: &'static str, tweak: impl FnOnce(&mut Config)) -> Scenario {
    let locks = Locks::take(Servers::Clusters).await;
    let up = services("cluster-up").await;
    eprintln!("{name}: clusters\n{up}");
    let mut config = support::base_config_at(name, &clusters().nats_urls(), &cql_nodes()[0]);
    config.scylla.nodes = cql_nodes();
    config.scylla.replication = RF3.into();
    suite_defaults(&mut config);
    // The publisher's ack timeout: short, so what a dying node did not store is retried soon.
    config.nats.request_timeout = Duration::from_secs(3);
    tweak(&mut config);
    assert_eq!(config.scylla.consistency, Consistency::LocalQuorum);
    MIGRATED
        .get_or_init(|| async {
            let cluster = "the Cassandra cluster answers (cargo xtask up cluster)";
            let session = support::migrated_session(&config, cluster).await;
            let rf = keyspace_replication_factor(&session).await;
            assert_eq!(
                rf.as_deref(),
                Some("3"),
                "the cluster's keyspace {} is at RF 3",
                support::KEYSPACE
            );
        })
        .await;
    let client = nats::connect(&config.nats, None)
        .await
        .expect("the NATS cluster answers (cargo xtask up cluster)");
    let js = nats::jetstream(client, &config.nats);
    for mut stream in [
        nats::scores_stream_config(&config.nats),
        nats::deadletter_stream_config(&config.nats),
    ] {
        stream.num_replicas = REPLICAS;
        js.create_stream(stream)
            .await
            .expect("a stream at 3 replicas");
    }
    let s = Scenario::open(name, config, locks).await;
    let placement = placement(&s.js, &s.config.nats.stream).await;
    assert_eq!(
        placement.followers.len(),
        REPLICAS - 1,
        "the stream has a leader and {} followers: {placement:?}",
        REPLICAS - 1
    );
    s
}

/// The replication factor of the test keyspace, as the server has it.
async fn keyspace_replication_factor(session: &scylla::client::session::Session) -> Option<String> {
    let rows = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (support::KEYSPACE,),
        )
        .await
        .expect("system_schema.keyspaces")
        .into_rows_result()
        .expect("rows");
    let (map,) = rows
        .maybe_first_row::<(std::collections::HashMap<String, String>,)>()
        .expect("a replication map")?;
    map.get("replication_factor").cloned()
}

/// Where a stream lives: its leader and followers (`n1`..`n3`), and whether every follower is current.
#[derive(Debug, Default)]
struct Placement {
    leader: String,
    followers: Vec<String>,
    current: bool,
}

/// The stream's placement, from `$JS.API.STREAM.INFO` (answered by the leader), retried for 30 s
/// while the stream has no leader.
async fn placement(js: &jetstream::Context, stream: &str) -> Placement {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match js.get_stream(stream).await {
            Ok(s) => {
                if let Some(cluster) = &s.cached_info().cluster {
                    if let Some(leader) = &cluster.leader {
                        return Placement {
                            leader: leader.clone(),
                            followers: cluster.replicas.iter().map(|p| p.name.clone()).collect(),
                            current: cluster.replicas.iter().all(|p| p.current && !p.offline),
                        };
                    }
                }
                last = "no leader".into();
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {stream}: no leader within 30 s ({last})");
}

/// The leader of the scenario's durable consumer (the consumer has its own Raft group).
async fn consumer_leader(s: &Scenario) -> String {
    s.consumer_info()
        .await
        .ok()
        .and_then(|i| i.cluster.and_then(|c| c.leader))
        .unwrap_or_else(|| "?".into())
}

fn node_number(name: &str) -> u8 {
    name.trim_start_matches('n')
        .parse()
        .unwrap_or_else(|_| panic!("a node name n1..n3: {name}"))
}

/// The scenario's workload, its first `1/parts` published and a worker in the middle of a flush of it.
async fn under_load(s: &mut Scenario, parts: usize) -> (Arc<Workload>, WorkerProc) {
    let w = Arc::new(s.standard_workload(s.name, 6000));
    publish(&s.js, &w, 0..w.items.len() / parts, PUBLISH_TIMEOUT).await;
    let worker = s.busy_worker(300, "the kill").await;
    (w, worker)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Victim {
    Leader,
    Follower,
}

/// One NATS node SIGKILLed mid-load — the stream's leader or a follower — while the second half of
/// the workload is being published; the worker and the publisher fail over to the other two nodes.
/// The node is started again once the backlog is drained and must catch up (every replica current).
async fn nats_node_killed(name: &'static str, victim: Victim) {
    let mut s = start(name, |_| {}).await;
    let (w, mut worker) = under_load(&mut s, 2).await;
    let half = w.items.len() / 2;
    let before = placement(&s.js, &s.config.nats.stream).await;
    let consumer_before = consumer_leader(&s).await;
    let target = match victim {
        Victim::Leader => before.leader.clone(),
        Victim::Follower => before.followers[0].clone(),
    };
    let publisher = paced_publisher(&s.js, &w, half..w.items.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    let mut node = NodeBack::kill("nats", node_number(&target)).await;
    let after = placement(&s.js, &s.config.nats.stream).await;
    let elected = killed.elapsed();
    let stats = publisher.await.expect("publisher task");
    s.wait_drained(std::slice::from_mut(&mut worker), DRAIN_TIMEOUT)
        .await;
    let recover = killed.elapsed();
    let processed = worker.processed().await;
    assert!(
        worker.running(),
        "the worker survives the kill\n{}",
        worker.log_tail(30)
    );
    // Back: the node catches up on what it missed from the other two.
    let back = node.start().await;
    let caught_up = Instant::now();
    let deadline = caught_up + Duration::from_secs(60);
    let rejoined = loop {
        let p = placement(&s.js, &s.config.nats.stream).await;
        if p.current && p.followers.len() == REPLICAS - 1 {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "{target} did not catch up within 60 s: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let caught_up = caught_up.elapsed();
    let disconnects = worker.log_count("NATS disconnected");
    let exit = worker.terminate(Duration::from_secs(30)).await;

    let extras = format!(
        "killed={target}({}) stream_leader={}->{} elected_s={} consumer_leader={consumer_before}->{} \
         publish_retries={} disconnects={disconnects} acked={processed} restart_s={} caught_up_s={} \
         replicas=[{}] seed={}",
        if victim == Victim::Leader { "stream leader" } else { "follower" },
        before.leader,
        after.leader,
        secs(elected),
        consumer_leader(&s).await,
        stats.retried,
        secs(back),
        secs(caught_up),
        std::iter::once(rejoined.leader.as_str())
            .chain(rejoined.followers.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(","),
        s.seed
    );
    s.verdict(&[&w], recover, &extras).await;
    match victim {
        Victim::Leader => assert_ne!(after.leader, target, "a new stream leader was elected"),
        Victim::Follower => assert_eq!(after.leader, before.leader, "the leader stayed"),
    }
    assert_exited_zero(&exit, "the worker");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nats_stream_leader_killed_mid_load() {
    nats_node_killed("cluster-nats-leader", Victim::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nats_follower_killed_mid_load() {
    nats_node_killed("cluster-nats-follower", Victim::Follower).await;
}

/// The Cassandra node the scenario's seed picks (1..3).
fn cassandra_victim(seed: u64) -> u8 {
    (seed % 3) as u8 + 1
}

/// A Cassandra node SIGKILLed mid-load; a third of the workload is published while it is down and
/// drained at `LOCAL_QUORUM` by the other two; the last third while it starts again and rejoins
/// (hinted handoff brings it what it missed). Read back at `LOCAL_QUORUM` with all three up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_cassandra_node_killed_and_back() {
    let name = "cluster-cassandra-node";
    let mut s = start(name, |_| {}).await;
    let (w, mut worker) = under_load(&mut s, 3).await;
    let third = w.items.len() / 3;
    let victim = cassandra_victim(s.seed);
    let publisher = paced_publisher(&s.js, &w, third..2 * third);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    let mut node = NodeBack::kill("cassandra", victim).await;
    let at_kill = worker.processed().await;
    publisher.await.expect("publisher task");
    s.wait_drained(std::slice::from_mut(&mut worker), DRAIN_TIMEOUT)
        .await;
    let drained_down = killed.elapsed();
    let acked_down = worker.processed().await - at_kill;
    // Back, with load: the last third is published while the node starts and rejoins.
    let publisher = paced_publisher(&s.js, &w, 2 * third..w.items.len());
    let back = node.start().await;
    let down = killed.elapsed();
    publisher.await.expect("publisher task");
    let resumed = Instant::now();
    s.wait_drained(std::slice::from_mut(&mut worker), DRAIN_TIMEOUT)
        .await;
    let recover = resumed.elapsed();
    let m = worker.metrics().await.unwrap_or_default();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0) as u64;
    let retries = get("score_worker_batch_retries_total");
    let exit = worker.terminate(Duration::from_secs(30)).await;

    let extras = format!(
        "killed=n{victim} drained_while_down_s={} acked_while_down={acked_down} down_s={} restart_s={} \
         retries={retries} consistency=LOCAL_QUORUM rf=3 seed={}",
        secs(drained_down),
        secs(down),
        secs(back),
        s.seed
    );
    s.verdict(&[&w], recover, &extras).await;
    assert!(
        acked_down > 0,
        "the worker acked writes while n{victim} was down"
    );
    assert_exited_zero(&exit, "the worker");
    s.cleanup().await;
}

/// Two workers on one durable consumer, small flushes, racing on the hot keys (hundreds of
/// updates each) while one Cassandra node is down: with RF=3 at `LOCAL_QUORUM` the read-back of
/// every flush still overlaps the writes before it, so no stale leaderboard row survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_workers_race_while_a_cassandra_node_is_down() {
    let name = "cluster-cassandra-race";
    let mut s = start(name, |c| {
        c.batch.max_scores = 20; // more, smaller flushes racing on the same keys
    })
    .await;
    let w = s.standard_workload(name, 6000);
    let victim = cassandra_victim(s.seed);
    let mut node = NodeBack::kill("cassandra", victim).await;
    let killed = Instant::now();
    publish(&s.js, &w, all(&w), PUBLISH_TIMEOUT).await;
    let mut workers: Vec<WorkerProc> = (0..2).map(|_| s.spawn_worker()).collect();
    for worker in &mut workers {
        worker.wait_up(START_TIMEOUT).await;
    }
    let started = Instant::now();
    s.wait_drained(&mut workers, DRAIN_TIMEOUT).await;
    let drained = started.elapsed();
    let mut shares = Vec::new();
    for worker in &workers {
        shares.push(worker.processed().await);
    }
    let back = node.start().await;
    let down = killed.elapsed();
    let mut exits = Vec::new();
    for worker in &mut workers {
        exits.push(worker.terminate(Duration::from_secs(30)).await);
    }

    let extras = format!(
        "killed=n{victim} workers=2 acked_by=[{}] down_s={} restart_s={} hot_keys=3x300 seed={}",
        shares
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        secs(down),
        secs(back),
        s.seed
    );
    s.verdict(&[&w], drained, &extras).await;
    assert!(
        shares.iter().all(|&n| n > 0),
        "both workers took part: {shares:?}"
    );
    assert!(
        exits.iter().all(|e| e.is_some_and(|(st, _)| st.success())),
        "both workers exit 0 on SIGTERM: {exits:?}"
    );
    s.cleanup().await;
}
