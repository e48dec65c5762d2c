//! Several datacenters (issue 18, item 3): the 3-node Cassandra cluster in two datacenters (n1, n2 in
//! dc1, n3 in dc2: `cargo xtask up cluster:two-dc`, which `make datacenters`
//! runs) and a keyspace replicated to both. Writers at `LOCAL_QUORUM` in two datacenters would not
//! overlap, so `migrate` and the worker refuse it without `scylla.single_writing_datacenter`; with
//! `QUORUM`, or with that setting, the worker starts and writes every key exactly.
//!
//! Ignored by `make chaos` (its scenarios need the one-datacenter layout); `make datacenters` runs it.

use std::time::Duration;

use rand::Rng;
use score_worker::app::App;
use score_worker::config::{Config, Consistency};
use score_worker::{schema, store};
use uuid::Uuid;

use crate::harness::{Locks, Servers};
use crate::support::{self, Event};

const TWO_DCS: &str = "{'class': 'NetworkTopologyStrategy', 'dc1': 2, 'dc2': 1}";

fn config(tag: &str, keyspace: &str, consistency: Consistency) -> Config {
    let cluster = xtask::environments::Environments::load()
        .and_then(|e| e.cluster(Some("two-dc")))
        .expect("environments.toml");
    let mut c = support::base_config_at(tag, &cluster.nats_urls(), &cluster.cql_nodes()[0]);
    c.scylla.nodes = cluster.cql_nodes();
    c.scylla.keyspace = keyspace.into();
    c.scylla.replication = TWO_DCS.into();
    c.scylla.local_datacenter = Some("dc1".into());
    c.scylla.consistency = consistency;
    // Schema changes wait for both datacenters' agreement.
    c.scylla.request_timeout = Duration::from_secs(60);
    c
}

fn events(n: usize, board: &str, profiles: &[Uuid]) -> Vec<Event> {
    let mut rng = rand::rng();
    (0..n)
        .map(|i| {
            let profile = profiles[rng.random_range(0..profiles.len())];
            Event::new(
                format!("dc-{i}-{}", Uuid::new_v4().simple()),
                profile,
                board,
                rng.random_range(-1000..1_000_000),
                support::recent_micros(&mut rng),
            )
        })
        .collect()
}

/// A worker with `config` writes `events`; every key ends exact.
async fn writes_exactly(config: &Config, events: &[Event], all: &[Event]) {
    let (_client, js) = support::jetstream(config).await;
    let worker = support::Worker::start(config.clone()).await;
    for e in events {
        support::publish(&js, config, e, &e.event_id).await;
    }
    support::wait_drained(&js, config, Duration::from_secs(120)).await;
    worker.stop().await;
    let _ = js.delete_stream(&config.nats.stream).await;
    let _ = js.delete_stream(&config.nats.deadletter_stream).await;
    let session = store::connect(&config.scylla).await.expect("session");
    support::assert_final_state_in(
        &session,
        &config.scylla.keyspace,
        all,
        config.scylla.leaderboard_buckets,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Cassandra cluster in two datacenters: make datacenters"]
async fn datacenters_local_quorum_is_refused_on_a_keyspace_in_two_datacenters() {
    let _locks = Locks::take(Servers::Clusters).await;
    let keyspace = format!("dc_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let local = config("dc_local", &keyspace, Consistency::LocalQuorum);
    let session = store::connect(&local.scylla)
        .await
        .expect("the Cassandra cluster answers (cargo xtask up cluster:two-dc)");
    assert_eq!(
        store::datacenters(&session),
        ["dc1", "dc2"],
        "the cluster runs in two datacenters (cargo xtask up cluster:two-dc)"
    );

    // migrate creates the keyspace from scylla.replication, reads it back and refuses LOCAL_QUORUM.
    let refused_migrate = schema::migrate(&session, &local.scylla, false)
        .await
        .expect_err("migrate accepted LOCAL_QUORUM on a keyspace in two datacenters")
        .to_string();
    assert!(
        refused_migrate.contains("single_writing_datacenter")
            && refused_migrate.contains("\"dc1\", \"dc2\""),
        "{refused_migrate}"
    );
    let refused_start = match App::build(local.clone()).await {
        Ok(_) => panic!("a worker at LOCAL_QUORUM started on a keyspace in two datacenters"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused_start.contains("single_writing_datacenter"),
        "{refused_start}"
    );

    let board = support::new_board("dc");
    let profiles = support::new_profiles(50);
    let first = events(300, &board, &profiles);
    let second = events(300, &board, &profiles);

    // QUORUM: a majority of the three replicas, whichever datacenter a writer is in.
    let quorum = config("dc_quorum", &keyspace, Consistency::Quorum);
    schema::migrate(&session, &quorum.scylla, false)
        .await
        .expect("migrate at QUORUM");
    writes_exactly(&quorum, &first, &first).await;

    // LOCAL_QUORUM with the promise that every writer runs in dc1.
    let mut promised = config("dc_promised", &keyspace, Consistency::LocalQuorum);
    promised.scylla.single_writing_datacenter = true;
    promised.validate().expect("valid");
    let all: Vec<Event> = first.iter().chain(&second).cloned().collect();
    writes_exactly(&promised, &second, &all).await;

    let _ = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
        .await;
    eprintln!(
        "chaos datacenters: keyspace in dc1+dc2; LOCAL_QUORUM refused (migrate: {refused_migrate}); \
         QUORUM and LOCAL_QUORUM with single_writing_datacenter wrote {} events exactly",
        all.len()
    );
}
