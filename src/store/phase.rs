//! One phase of a flush: its statements grouped by where their partitions live, each group split
//! under the batch-size limit, and sent as unlogged batches (a group of one as a plain statement).
//!
//! Statements share a batch only when the driver knows that they share every replica (and, on
//! ScyllaDB, the shard), so the coordinator the driver picks for the batch owns all of its rows; or when
//! they are the same partition. A partition whose replicas the driver does not know — metadata not
//! loaded yet, or a ScyllaDB tablet no response has told it about — stays unknown: it is never grouped
//! with another partition, so no batch spans replicas, and its statements go out on their own, which is
//! also how the driver learns a tablet's replicas (from the response to a single statement; batches do
//! not teach it).

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

/// The replicas (host id, shard) that own a partition.
pub(super) type Replicas = Vec<(Uuid, Shard)>;

/// Where a statement's partition lives, as far as the driver knows now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Placement {
    /// Every replica of the partition, sorted; never empty.
    Known(Arc<[(Uuid, Shard)]>),
    /// The replicas are unknown: only statements of this very partition (table and token) may share
    /// a request.
    Unknown { table: &'static str, token: i64 },
    /// Not even the token is known: the statement goes alone (the number tells it apart).
    Alone(usize),
}

/// Who owns a partition: the driver's cluster map, or a test's.
pub(super) trait ReplicaMap: Send + Sync {
    /// The token of the partition whose key is `partition_key` in `keyspace.table`; `None` when the map
    /// has no metadata for the table.
    fn token(&self, keyspace: &str, table: &str, partition_key: &dyn SerializeRow)
        -> Option<Token>;
    /// The replicas of `token` in `keyspace.table`; empty when the map does not know them.
    fn replicas(&self, keyspace: &str, table: &str, token: Token) -> Replicas;
}

impl ReplicaMap for ClusterState {
    fn token(
        &self,
        keyspace: &str,
        table: &str,
        partition_key: &dyn SerializeRow,
    ) -> Option<Token> {
        self.compute_token(keyspace, table, partition_key).ok()
    }

    fn replicas(&self, keyspace: &str, table: &str, token: Token) -> Replicas {
        self.get_token_endpoints(keyspace, table, token)
            .into_iter()
            .map(|(node, shard)| (node.host_id, shard))
            .collect()
    }
}

/// Places partitions of one keyspace on the replica map. A partition is placed once per flush and the
/// placement reused by every statement on it: computing a token serializes the key, which costs more
/// than the rest of the grouping.
pub(super) struct Placer {
    map: Arc<dyn ReplicaMap>,
    keyspace: String,
    alone: usize,
}

impl Placer {
    pub(super) fn new(map: Arc<dyn ReplicaMap>, keyspace: &str) -> Self {
        Self {
            map,
            keyspace: keyspace.to_string(),
            alone: 0,
        }
    }

    /// Where the partition of `table` whose key is `partition_key` lives.
    pub(super) fn place(
        &mut self,
        table: &'static str,
        partition_key: &dyn SerializeRow,
    ) -> Placement {
        match self.map.token(&self.keyspace, table, partition_key) {
            Some(token) => self.place_token(table, token),
            None => self.alone(),
        }
    }

    /// Where `token` of `table` lives.
    pub(super) fn place_token(&mut self, table: &'static str, token: Token) -> Placement {
        let mut replicas = self.map.replicas(&self.keyspace, table, token);
        if replicas.is_empty() {
            return Placement::Unknown {
                table,
                token: token.value(),
            };
        }
        replicas.sort_unstable();
        Placement::Known(replicas.into())
    }

    fn alone(&mut self) -> Placement {
        self.alone += 1;
        Placement::Alone(self.alone)
    }
}

/// Splits items, given as (placement, bytes), into requests (lists of item indexes, in the order the
/// items were added): items share a request only if they share a placement, and consecutive items of
/// one placement fill a request up to `max_bytes` (`0`: every item on its own).
pub(super) fn plan(items: &[(Placement, usize)], max_bytes: usize) -> Vec<Vec<usize>> {
    let mut index: HashMap<&Placement, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, (placement, _)) in items.iter().enumerate() {
        let g = *index.entry(placement).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let mut requests = Vec::new();
    for group in groups {
        let mut chunk: Vec<usize> = Vec::new();
        let mut size = 0;
        for i in group {
            let bytes = items[i].1;
            if !chunk.is_empty() && size + bytes > max_bytes {
                requests.push(std::mem::take(&mut chunk));
                size = 0;
            }
            size += bytes;
            chunk.push(i);
        }
        if !chunk.is_empty() {
            requests.push(chunk);
        }
    }
    requests
}

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

/// The statements of one phase, each with the placement of its partition.
#[derive(Default)]
pub(super) struct Phase<'a> {
    statements: Vec<(PreparedStatement, Values<'a>)>,
    items: Vec<(Placement, usize)>,
}

impl<'a> Phase<'a> {
    /// Adds one statement on the partition at `placement`; `bytes` estimates its mutation's size for
    /// the batch-size limit.
    pub(super) fn push(
        &mut self,
        placement: &Placement,
        statement: &PreparedStatement,
        values: impl SerializeRow + Send + Sync + 'a,
        bytes: usize,
    ) {
        self.items.push((placement.clone(), bytes));
        self.statements.push((statement.clone(), Box::new(values)));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// The requests, as [`plan`] cuts them.
    pub(super) fn requests(self, max_bytes: usize) -> Vec<Request<'a>> {
        let plan = plan(&self.items, max_bytes);
        let mut statements: Vec<Option<(PreparedStatement, Values<'a>)>> =
            self.statements.into_iter().map(Some).collect();
        plan.into_iter()
            .map(|chunk| {
                let chunk = chunk
                    .into_iter()
                    .map(|i| statements[i].take().expect("each statement planned once"));
                request(chunk.collect())
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;

    /// A cluster map of a test: per token, the replica sets it answers with, in turn (the last one
    /// repeats); a token it has no entry for is unknown (an empty set). It computes no tokens.
    struct FakeMap(Mutex<HashMap<i64, Vec<Replicas>>>);

    impl ReplicaMap for FakeMap {
        fn token(&self, _: &str, _: &str, _: &dyn SerializeRow) -> Option<Token> {
            None
        }

        fn replicas(&self, _: &str, _: &str, token: Token) -> Replicas {
            let mut map = self.0.lock().unwrap();
            match map.get_mut(&token.value()) {
                Some(answers) if answers.len() > 1 => answers.remove(0),
                Some(answers) => answers[0].clone(),
                None => Vec::new(),
            }
        }
    }

    fn node(n: u128, shard: Shard) -> (Uuid, Shard) {
        (Uuid::from_u128(n), shard)
    }

    fn placer(map: HashMap<i64, Vec<Replicas>>) -> Placer {
        Placer::new(Arc::new(FakeMap(Mutex::new(map))), "ks")
    }

    #[test]
    fn unknown_replicas_stay_unknown_and_only_one_partition_shares_a_request() {
        // Tokens 1 and 2 on the same nodes (listed in another order), 3 unknown, 4 changing owners.
        let mut p = placer(HashMap::from([
            (1, vec![vec![node(1, 0), node(2, 0)]]),
            (2, vec![vec![node(2, 0), node(1, 0)]]),
            (4, vec![vec![node(1, 0)], vec![node(3, 1)], vec![]]),
        ]));
        let t = |v| Token::new(v);
        let items: Vec<(Placement, usize)> = [
            p.place_token("a", t(1)),
            p.place_token("a", t(2)),
            p.place_token("a", t(3)),
            p.place_token("a", t(3)),
            p.place_token("b", t(3)),
            p.place_token("a", t(4)),
            p.place_token("a", t(4)),
            p.place_token("a", t(4)),
            p.place("a", &(1,)), // no metadata: alone
            p.place("a", &(1,)),
        ]
        .into_iter()
        .map(|placement| (placement, 10))
        .collect();
        assert_eq!(items[0].0, items[1].0, "sorted replica sets compare equal");
        assert_eq!(
            items[2].0,
            Placement::Unknown {
                table: "a",
                token: 3
            }
        );
        assert_eq!(
            plan(&items, 1000),
            vec![
                vec![0, 1],
                vec![2, 3], // the same unknown partition
                vec![4],    // the same token in another table: another tablet map
                vec![5],    // owners moved between the statements: never one batch
                vec![6],
                vec![7], // then unknown
                vec![8],
                vec![9],
            ]
        );
    }

    #[test]
    fn groups_are_cut_at_the_byte_limit() {
        let known = Placement::Known(vec![node(1, 0)].into());
        let items = vec![
            (known.clone(), 40),
            (known.clone(), 40),
            (known.clone(), 40),
        ];
        assert_eq!(plan(&items, 100), vec![vec![0, 1], vec![2]]);
        assert_eq!(plan(&items, 0), vec![vec![0], vec![1], vec![2]]);
        // A statement larger than the limit still goes, alone.
        let items = vec![(known.clone(), 500), (known, 40)];
        assert_eq!(plan(&items, 100), vec![vec![0], vec![1]]);
    }

    fn placement() -> impl Strategy<Value = Placement> {
        prop_oneof![
            // A few replica sets over four nodes and two shards, some of them equal.
            proptest::collection::vec((0u128..4, 0u32..2), 1..3).prop_map(|nodes| {
                let mut r: Replicas = nodes.into_iter().map(|(n, s)| node(n, s)).collect();
                r.sort_unstable();
                r.dedup();
                Placement::Known(r.into())
            }),
            (0i64..6, 0usize..2).prop_map(|(token, table)| Placement::Unknown {
                table: ["a", "b"][table],
                token
            }),
            (0usize..1000).prop_map(Placement::Alone),
        ]
    }

    proptest! {
        /// Whatever the map says: every statement is sent exactly once, in the order it was added
        /// within its request; no request mixes two placements (so no batch spans two replica sets,
        /// and an unknown partition shares a batch only with itself); a batch stays under the limit.
        #[test]
        fn no_request_spans_two_replica_sets(
            items in proptest::collection::vec((placement(), 1usize..300), 0..120),
            max_bytes in 0usize..2000,
        ) {
            let requests = plan(&items, max_bytes);
            let mut seen: Vec<usize> = requests.iter().flatten().copied().collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..items.len()).collect::<Vec<_>>());
            for request in &requests {
                let first = &items[request[0]].0;
                prop_assert!(request.iter().all(|&i| &items[i].0 == first));
                prop_assert!(request.windows(2).all(|w| w[0] < w[1]));
                if request.len() > 1 {
                    prop_assert!(request.iter().map(|&i| items[i].1).sum::<usize>() <= max_bytes);
                }
            }
        }
    }
}
