//! The environments model: `environments.toml` at the repository root, parsed, and what a server set
//! means as addresses and settings, for the worker, the tests and [`crate::servers`] (which runs them).
//!
//! `SCORE_WORKER_LOCAL` and the `SCORE_WORKER_*_PORT` variables still move a set when they are set (a pair
//! of one's own beside the standard ones, or `make it-oldest-nats` pointing the integration suite at the
//! oldest set): [`Environment::load`] applies them over the file's values. The clusters: [`cluster`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

mod cluster;
pub use cluster::{Cluster, ClusterCassandra, ClusterEnvironment, ClusterNats, Node, Variant};

/// The file, relative to the repository root.
pub const FILE: &str = "environments.toml";

/// What can go wrong reading the model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid environments file.
    #[error("{path} is not a valid environments file")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// No set (or cluster variant) of that name.
    #[error("no server set '{name}' in environments.toml (known: {known})")]
    Unknown { name: String, known: String },
    /// An environment variable that moves a set has a value that is not a port.
    #[error("{var}={value} is not a port number")]
    BadPort { var: &'static str, value: String },
}

/// The repository root: the nearest directory holding `environments.toml`, looking up from the
/// package cargo runs (`CARGO_MANIFEST_DIR` at run time: the repository for `cargo test`, `xtask/`
/// for `cargo xtask`), else from the working directory.
///
/// Not the compile-time `env!("CARGO_MANIFEST_DIR")`: cargo finds a build fresh by content, so two
/// clones sharing one `CARGO_TARGET_DIR` (CI's cached one) run binaries compiled in the other clone,
/// whose baked-in path may be gone or at another commit.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let start = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("."));
        start
            .ancestors()
            .find(|dir| dir.join(FILE).is_file())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .expect("xtask/ has a parent")
                    .to_path_buf()
            })
    })
}

/// Every server set of `environments.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environments {
    /// The single-pair sets by name (`dev`, `chaos`, `secure`, `oldest`).
    pub sets: BTreeMap<String, ServerSet>,
    /// The 3-node clusters.
    pub cluster: Cluster,
}

/// One nats-server + one Cassandra (+ optionally a PostgreSQL) on one host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSet {
    pub description: String,
    pub host: String,
    /// State directory, relative to the repository root.
    pub state: String,
    pub nats: Nats,
    pub cassandra: Cassandra,
    #[serde(default)]
    pub postgres: Option<Postgres>,
}

/// The set's nats-server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nats {
    /// "current" (pinned in deploy/nats-server/go.mod), "debian", or a path to a binary.
    pub server: String,
    /// The version the server must report, when the set pins one.
    #[serde(default)]
    pub version: Option<String>,
    pub port: u16,
    pub monitor_port: u16,
}

/// The set's Cassandra.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cassandra {
    pub cql_port: u16,
    pub storage_port: u16,
    /// JVM heap (-Xms = -Xmx), e.g. "1g".
    pub heap: String,
    /// PasswordAuthenticator (cassandra/cassandra) and CassandraAuthorizer.
    #[serde(default)]
    pub auth: bool,
    /// Optional TLS on the CQL port (CA in `<state>/tls/ca.pem`).
    #[serde(default)]
    pub tls: bool,
    /// tombstone_failure_threshold (Cassandra's default 100000 when absent).
    #[serde(default)]
    pub tombstone_failure_threshold: Option<u32>,
}

/// The set's PostgreSQL (Debian's package; trust authentication, TLS on).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    pub port: u16,
}

impl Environments {
    /// Reads `environments.toml` from the repository root.
    pub fn load() -> Result<Self, Error> {
        Self::load_from(&root().join(FILE))
    }

    pub fn load_from(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| Error::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The set `name` with the environment's overrides applied.
    pub fn environment(&self, name: &str) -> Result<Environment, Error> {
        let var = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
        Environment::resolve(name, self.set(name)?.clone(), &var)
    }

    /// The set `name` exactly as declared, whatever the environment's overrides say: a second set a
    /// suite uses beside the one `cargo xtask env SET` moved it to.
    pub fn declared(&self, name: &str) -> Result<Environment, Error> {
        Environment::resolve(name, self.set(name)?.clone(), &|_| None)
    }

    fn set(&self, name: &str) -> Result<&ServerSet, Error> {
        self.sets.get(name).ok_or_else(|| Error::Unknown {
            name: name.to_owned(),
            known: self.names().join(", "),
        })
    }

    /// Every name `up`/`down`/`status`/`env` take: the sets, then `cluster` and `cluster:VARIANT`.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sets.keys().cloned().collect();
        names.push("cluster".into());
        names.extend(self.cluster.variants.keys().map(|v| format!("cluster:{v}")));
        names
    }

    /// The clusters in the layout `variant` (None: `SCORE_WORKER_CLUSTER_DCS=2` picks `two-dc`, else
    /// `one-dc`).
    pub fn cluster(&self, variant: Option<&str>) -> Result<ClusterEnvironment, Error> {
        let from_env = std::env::var("SCORE_WORKER_CLUSTER_DCS").ok();
        let name = match (variant, from_env.as_deref()) {
            (Some(v), _) => v,
            (None, Some("2")) => "two-dc",
            (None, _) => "one-dc",
        };
        let layout = self
            .cluster
            .variants
            .get(name)
            .ok_or_else(|| Error::Unknown {
                name: format!("cluster:{name}"),
                known: self.names().join(", "),
            })?;
        let state = std::env::var_os("SCORE_WORKER_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(&self.cluster.state));
        let mut cluster = self.cluster.clone();
        if let Ok(heap) = std::env::var("SCORE_WORKER_CLUSTER_CASSANDRA_HEAP") {
            cluster.cassandra.heap = heap;
        }
        Ok(ClusterEnvironment {
            variant: name.to_owned(),
            datacenters: layout.datacenters.clone(),
            state_dir: state,
            cluster,
        })
    }
}

/// A single-pair set as it runs here: the file's values, moved by `SCORE_WORKER_LOCAL`,
/// `SCORE_WORKER_{NATS,NATS_MON,CQL,STORAGE,PG}_PORT`, `SCORE_WORKER_NATS_SERVER`,
/// `SCORE_WORKER_CASSANDRA_HEAP` and `SCORE_WORKER_CASSANDRA_TOMBSTONE_FAILURE` when set.
#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub set: ServerSet,
    /// Absolute state directory.
    pub state_dir: PathBuf,
}

impl Environment {
    /// The set `name` of `environments.toml`, with the environment's overrides applied.
    pub fn load(name: &str) -> Result<Self, Error> {
        Environments::load()?.environment(name)
    }

    /// The set `name` as declared ([`Environments::declared`]).
    pub fn load_declared(name: &str) -> Result<Self, Error> {
        Environments::load()?.declared(name)
    }

    fn resolve(
        name: &str,
        mut set: ServerSet,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let port = |v: &'static str, default: u16| -> Result<u16, Error> {
            match var(v) {
                Some(value) => value.parse().map_err(|_| Error::BadPort { var: v, value }),
                None => Ok(default),
            }
        };
        set.nats.port = port("SCORE_WORKER_NATS_PORT", set.nats.port)?;
        set.nats.monitor_port = port("SCORE_WORKER_NATS_MON_PORT", set.nats.monitor_port)?;
        set.cassandra.cql_port = port("SCORE_WORKER_CQL_PORT", set.cassandra.cql_port)?;
        set.cassandra.storage_port = port("SCORE_WORKER_STORAGE_PORT", set.cassandra.storage_port)?;
        if let Some(pg) = set.postgres.as_mut() {
            pg.port = port("SCORE_WORKER_PG_PORT", pg.port)?;
        }
        if let Some(server) = var("SCORE_WORKER_NATS_SERVER") {
            if server != set.nats.server {
                set.nats.version = None;
            }
            set.nats.server = server;
        }
        if let Some(heap) = var("SCORE_WORKER_CASSANDRA_HEAP") {
            set.cassandra.heap = heap;
        }
        if let Some(n) = var("SCORE_WORKER_CASSANDRA_TOMBSTONE_FAILURE") {
            set.cassandra.tombstone_failure_threshold = n.parse().ok();
        }
        let state_dir = var("SCORE_WORKER_LOCAL")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(&set.state));
        Ok(Self {
            name: name.to_owned(),
            set,
            state_dir,
        })
    }

    /// `nats://HOST:PORT`.
    pub fn nats_url(&self) -> String {
        format!("nats://{}:{}", self.set.host, self.set.nats.port)
    }

    /// The Cassandra node, `HOST:PORT`.
    pub fn cql_node(&self) -> String {
        format!("{}:{}", self.set.host, self.set.cassandra.cql_port)
    }

    /// The PostgreSQL port, when the set has one.
    pub fn postgres_port(&self) -> Option<u16> {
        self.set.postgres.as_ref().map(|p| p.port)
    }

    /// The worker's settings for this set (`SCORE_WORKER__*`) and the variables tests read.
    pub fn worker_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("SCORE_WORKER__NATS__URL", self.nats_url()),
            (
                "SCORE_WORKER__SCYLLA__NODES",
                format!("[\"{}\"]", self.cql_node()),
            ),
        ];
        env.extend(self.services_env());
        env
    }

    /// The variables that describe this set (`cargo xtask env SET`): the ones [`Environment::load`]
    /// reads move it, so `eval "$(cargo xtask env oldest)"` points a suite at the oldest set.
    pub fn services_env(&self) -> Vec<(&'static str, String)> {
        let s = &self.set;
        let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
        vec![
            ("SCORE_WORKER_ENVIRONMENT", self.name.clone()),
            ("SCORE_WORKER_HOST", s.host.clone()),
            ("SCORE_WORKER_LOCAL", self.state_dir.display().to_string()),
            ("SCORE_WORKER_NATS_SERVER", s.nats.server.clone()),
            ("SCORE_WORKER_NATS_PORT", s.nats.port.to_string()),
            (
                "SCORE_WORKER_NATS_MON_PORT",
                s.nats.monitor_port.to_string(),
            ),
            ("SCORE_WORKER_CQL_PORT", s.cassandra.cql_port.to_string()),
            (
                "SCORE_WORKER_STORAGE_PORT",
                s.cassandra.storage_port.to_string(),
            ),
            ("SCORE_WORKER_CASSANDRA_HEAP", s.cassandra.heap.clone()),
            ("SCORE_WORKER_CASSANDRA_AUTH", flag(s.cassandra.auth)),
            ("SCORE_WORKER_CASSANDRA_TLS", flag(s.cassandra.tls)),
            (
                "SCORE_WORKER_CASSANDRA_TOMBSTONE_FAILURE",
                s.cassandra
                    .tombstone_failure_threshold
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            ),
            (
                "SCORE_WORKER_PG_PORT",
                self.postgres_port()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Environments {
        Environments::load().expect("environments.toml parses")
    }

    #[test]
    fn every_set_has_distinct_ports_and_state() {
        let envs = file();
        let mut ports = std::collections::BTreeSet::new();
        let mut states = std::collections::BTreeSet::new();
        for (name, s) in &envs.sets {
            for p in [
                s.nats.port,
                s.nats.monitor_port,
                s.cassandra.cql_port,
                s.cassandra.storage_port,
            ] {
                assert!(ports.insert(p), "port {p} of {name} used twice");
            }
            assert!(states.insert(s.state.clone()), "state of {name} shared");
        }
        assert_eq!(envs.cluster.nodes.len(), 3);
    }

    #[test]
    fn overrides_move_a_set() {
        let set = file().sets["chaos"].clone();
        let vars = |v: &str| match v {
            "SCORE_WORKER_NATS_PORT" => Some("4891".to_owned()),
            "SCORE_WORKER_LOCAL" => Some("/tmp/own".to_owned()),
            _ => None,
        };
        let env = Environment::resolve("chaos", set.clone(), &vars).unwrap();
        assert_eq!(env.set.nats.port, 4891);
        assert_eq!(env.state_dir, PathBuf::from("/tmp/own"));
        assert_eq!(
            env.cql_node(),
            format!("{}:{}", set.host, set.cassandra.cql_port)
        );
        let bad = |v: &str| (v == "SCORE_WORKER_CQL_PORT").then(|| "x".to_owned());
        assert!(matches!(
            Environment::resolve("chaos", set, &bad),
            Err(Error::BadPort { .. })
        ));
    }

    #[test]
    fn two_dc_variant_declares_a_datacenter_per_node() {
        let envs = file();
        let c = envs.cluster(Some("two-dc")).unwrap();
        assert_eq!(c.datacenters.len(), c.cluster.nodes.len());
        let env: BTreeMap<_, _> = c.services_env().into_iter().collect();
        assert_eq!(env["SCORE_WORKER_CLUSTER_DCS"], "2");
        assert_eq!(c.cql_nodes().len(), 3);
    }
}
