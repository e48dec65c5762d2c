//! The 3-node clusters of `environments.toml` (`[cluster]`): their nodes, layouts (variants), the worker's
//! settings for them and the variables that describe them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The 3-node NATS JetStream and Cassandra clusters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub description: String,
    pub host: String,
    pub state: String,
    pub nats: ClusterNats,
    pub cassandra: ClusterCassandra,
    pub nodes: Vec<Node>,
    /// Layouts of the Cassandra cluster by name (`one-dc`, `two-dc`).
    pub variants: BTreeMap<String, Variant>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNats {
    pub server: String,
    /// The NATS cluster's name.
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterCassandra {
    /// cluster_name.
    pub name: String,
    /// The CQL and storage ports, the same on every node's address.
    pub cql_port: u16,
    pub storage_port: u16,
    /// Heap of each node.
    pub heap: String,
}

/// Node N (1-based, in file order) of both clusters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub nats_port: u16,
    pub route_port: u16,
    pub monitor_port: u16,
    /// The Cassandra node's address (its CQL and storage ports are the cluster's).
    pub address: String,
    pub jmx_port: u16,
}

/// A layout of the Cassandra cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Each node's datacenter (GossipingPropertyFileSnitch); empty: SimpleSnitch, one datacenter.
    pub datacenters: Vec<String>,
}

/// The clusters in one layout, as they run here (`SCORE_WORKER_CLUSTER_DIR` and
/// `SCORE_WORKER_CLUSTER_CASSANDRA_HEAP` move them).
#[derive(Debug, Clone)]
pub struct ClusterEnvironment {
    /// The layout's name (`one-dc`, `two-dc`).
    pub variant: String,
    /// Each node's datacenter; empty for one datacenter.
    pub datacenters: Vec<String>,
    pub state_dir: PathBuf,
    pub cluster: Cluster,
}

impl ClusterEnvironment {
    /// Every NATS node's URL, comma-separated (the client fails over among them).
    pub fn nats_urls(&self) -> String {
        let host = &self.cluster.host;
        self.cluster
            .nodes
            .iter()
            .map(|n| format!("nats://{host}:{}", n.nats_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every Cassandra node, `ADDRESS:PORT`.
    pub fn cql_nodes(&self) -> Vec<String> {
        let port = self.cluster.cassandra.cql_port;
        self.cluster
            .nodes
            .iter()
            .map(|n| format!("{}:{port}", n.address))
            .collect()
    }

    /// The worker's settings for the clusters.
    pub fn worker_env(&self) -> Vec<(&'static str, String)> {
        let nodes: Vec<String> = self
            .cql_nodes()
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect();
        let mut env = vec![
            ("SCORE_WORKER__NATS__URL", self.nats_urls()),
            (
                "SCORE_WORKER__SCYLLA__NODES",
                format!("[{}]", nodes.join(",")),
            ),
        ];
        env.extend(self.services_env());
        env
    }

    /// The variables that describe the clusters (`cargo xtask env cluster`); `SCORE_WORKER_CLUSTER_DIR`,
    /// `SCORE_WORKER_CLUSTER_DCS` and `SCORE_WORKER_CLUSTER_CASSANDRA_HEAP` move them.
    pub fn services_env(&self) -> Vec<(&'static str, String)> {
        let c = &self.cluster;
        let list = |f: &dyn Fn(&Node) -> String| -> String {
            c.nodes.iter().map(f).collect::<Vec<_>>().join(" ")
        };
        let dcs = {
            let mut d = self.datacenters.clone();
            d.sort();
            d.dedup();
            d.len().max(1)
        };
        vec![
            (
                "SCORE_WORKER_CLUSTER_DIR",
                self.state_dir.display().to_string(),
            ),
            ("SCORE_WORKER_CLUSTER_HOST", c.host.clone()),
            ("SCORE_WORKER_CLUSTER_NATS_SERVER", c.nats.server.clone()),
            ("SCORE_WORKER_CLUSTER_NATS_NAME", c.nats.name.clone()),
            (
                "SCORE_WORKER_CLUSTER_NATS_PORTS",
                list(&|n| n.nats_port.to_string()),
            ),
            (
                "SCORE_WORKER_CLUSTER_ROUTE_PORTS",
                list(&|n| n.route_port.to_string()),
            ),
            (
                "SCORE_WORKER_CLUSTER_MON_PORTS",
                list(&|n| n.monitor_port.to_string()),
            ),
            (
                "SCORE_WORKER_CLUSTER_ADDRESSES",
                list(&|n| n.address.clone()),
            ),
            (
                "SCORE_WORKER_CLUSTER_JMX_PORTS",
                list(&|n| n.jmx_port.to_string()),
            ),
            (
                "SCORE_WORKER_CLUSTER_CASSANDRA_NAME",
                c.cassandra.name.clone(),
            ),
            (
                "SCORE_WORKER_CLUSTER_CQL_PORT",
                c.cassandra.cql_port.to_string(),
            ),
            (
                "SCORE_WORKER_CLUSTER_STORAGE_PORT",
                c.cassandra.storage_port.to_string(),
            ),
            (
                "SCORE_WORKER_CLUSTER_CASSANDRA_HEAP",
                c.cassandra.heap.clone(),
            ),
            ("SCORE_WORKER_CLUSTER_DCS", dcs.to_string()),
            ("SCORE_WORKER_CLUSTER_NODE_DCS", self.datacenters.join(" ")),
        ]
    }
}
