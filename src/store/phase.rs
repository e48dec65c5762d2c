//! One phase of a flush: its statements grouped by the replicas that own their partitions, each group
//! split under the batch-size limit, and sent as unlogged batches (a group of one as a plain
//! statement). Statements in one batch share every replica (and, on ScyllaDB, the shard), so the
//! coordinator the driver picks for the batch owns all of its rows; no batch spans replicas.

use std::collections::HashMap;
use std::sync::Arc;

use scylla::cluster::ClusterState;
use scylla::routing::{Shard, Token};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

/// Values of one statement; borrowed from the flush.
pub(super) type Values<'a> = Box<dyn SerializeRow + Send + Sync + 'a>;

/// The replicas (host id, shard) that own a partition, in a stable order; empty when unknown
/// (metadata not loaded yet), which groups such statements together and lets the driver route them.
pub(super) type Owners = Vec<(Uuid, Shard)>;

/// A request ready to send.
pub(super) enum Request<'a> {
    Single(PreparedStatement, Values<'a>),
    Batch(Batch, Vec<Values<'a>>),
}

impl Request<'_> {
    /// Statements it carries.
    pub(super) fn statements(&self) -> usize {
        match self {
            Request::Single(..) => 1,
            Request::Batch(_, values) => values.len(),
        }
    }
}

/// The statements of one phase, grouped by owners as they are added.
pub(super) struct Phase<'a> {
    cluster: Arc<ClusterState>,
    groups: HashMap<Owners, Vec<(PreparedStatement, Values<'a>, usize)>>,
}

impl<'a> Phase<'a> {
    pub(super) fn new(cluster: Arc<ClusterState>) -> Self {
        Self {
            cluster,
            groups: HashMap::new(),
        }
    }

    /// Adds one statement; `bytes` estimates its mutation's size for the batch-size limit.
    pub(super) fn push(
        &mut self,
        statement: &PreparedStatement,
        values: impl SerializeRow + Send + Sync + 'a,
        bytes: usize,
    ) {
        let owners = self.owners(statement, &values);
        self.groups
            .entry(owners)
            .or_default()
            .push((statement.clone(), Box::new(values), bytes));
    }

    fn owners(&self, statement: &PreparedStatement, values: &dyn SerializeRow) -> Owners {
        let (Some(table), Ok(Some(token))) = (
            statement.get_table_spec(),
            statement.calculate_token(&values),
        ) else {
            return Vec::new();
        };
        sorted_owners(&self.cluster, table.ks_name(), table.table_name(), token)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The requests: per group, consecutive statements up to `max_bytes` per batch (`0`: every
    /// statement on its own).
    pub(super) fn requests(self, max_bytes: usize) -> Vec<Request<'a>> {
        let mut requests = Vec::new();
        for (owners, statements) in self.groups {
            tracing::trace!(?owners, statements = statements.len(), "phase group");
            let mut chunk: Vec<(PreparedStatement, Values<'a>)> = Vec::new();
            let mut size = 0;
            for (statement, values, bytes) in statements {
                if !chunk.is_empty() && size + bytes > max_bytes {
                    requests.push(request(std::mem::take(&mut chunk)));
                    size = 0;
                }
                size += bytes;
                chunk.push((statement, values));
            }
            if !chunk.is_empty() {
                requests.push(request(chunk));
            }
        }
        requests
    }
}

fn request(mut chunk: Vec<(PreparedStatement, Values<'_>)>) -> Request<'_> {
    if chunk.len() == 1 {
        let (statement, values) = chunk.pop().expect("one statement");
        return Request::Single(statement, values);
    }
    let mut batch = Batch::new(BatchType::Unlogged);
    // Every statement carries its own `USING TIMESTAMP` (or is a delete at server time that is
    // safe to repeat), so the batch may be retried.
    batch.set_is_idempotent(true);
    let mut values = Vec::with_capacity(chunk.len());
    for (statement, v) in chunk {
        batch.append_statement(BatchStatement::PreparedStatement(statement));
        values.push(v);
    }
    Request::Batch(batch, values)
}

/// The owners of the partition of `table` whose key is `partition_key`.
pub(super) fn owners_of(
    cluster: &ClusterState,
    keyspace: &str,
    table: &str,
    partition_key: &dyn SerializeRow,
) -> Owners {
    let Ok(token) = cluster.compute_token(keyspace, table, partition_key) else {
        return Vec::new();
    };
    sorted_owners(cluster, keyspace, table, token)
}

fn sorted_owners(cluster: &ClusterState, keyspace: &str, table: &str, token: Token) -> Owners {
    let mut owners: Owners = cluster
        .get_token_endpoints(keyspace, table, token)
        .into_iter()
        .map(|(node, shard)| (node.host_id, shard))
        .collect();
    owners.sort_unstable();
    owners
}
