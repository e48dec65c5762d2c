//! The keyspace's datacenters and the consistency writers may use there.
//!
//! The leaderboard argument (docs/design.md, "Why it holds") needs every read-back to overlap every
//! completed write of any other writer. `LOCAL_QUORUM` counts the replicas of the coordinator's
//! datacenter only: two writers in two datacenters, each at `LOCAL_QUORUM`, touch disjoint replica
//! sets, neither sees the other's `ranked` entry, and both rows can stay for good. So when the keyspace
//! is replicated to more than one datacenter a `LOCAL_*` level is refused, unless the operator states
//! that every writer runs in one datacenter (`scylla.single_writing_datacenter`); `QUORUM` (a majority
//! of all replicas) and `EACH_QUORUM` overlap across datacenters.

use std::collections::HashMap;

use scylla::client::session::Session;

use super::SchemaError;
use crate::config::ScyllaConfig;

/// The keyspace's replication map as `system_schema.keyspaces` holds it; `None` if there is no such
/// keyspace.
pub async fn replication(
    session: &Session,
    keyspace: &str,
) -> Result<Option<HashMap<String, String>>, SchemaError> {
    let query = "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?";
    let result = session
        .query_unpaged(query, (keyspace,))
        .await
        .map_err(|source| SchemaError::Statement {
            statement: query.into(),
            source,
        })?;
    Ok(result
        .into_rows_result()
        .ok()
        .and_then(|rows| {
            rows.maybe_first_row::<(Option<HashMap<String, String>>,)>()
                .ok()
                .flatten()
        })
        .and_then(|(map,)| map))
}

/// The datacenters that hold replicas of a keyspace with `replication`, on a cluster whose nodes are
/// in `cluster`: the datacenters `NetworkTopologyStrategy` names with a positive factor; for any other
/// strategy (`SimpleStrategy` places replicas around the ring whatever their datacenter) every
/// datacenter of the cluster.
pub fn datacenters(replication: &HashMap<String, String>, cluster: &[String]) -> Vec<String> {
    let class = replication.get("class").map(String::as_str).unwrap_or("");
    let mut dcs: Vec<String> = if class.ends_with("NetworkTopologyStrategy") {
        replication
            .iter()
            .filter(|(key, _)| *key != "class" && *key != "replication_factor")
            // "3" or, with transient replicas, "3/1".
            .filter(|(_, rf)| {
                rf.split('/')
                    .next()
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .is_some_and(|n| n > 0)
            })
            .map(|(dc, _)| dc.clone())
            .collect()
    } else {
        cluster.to_vec()
    };
    dcs.sort_unstable();
    dcs.dedup();
    dcs
}

/// Refuses a `LOCAL_*` consistency on a keyspace replicated to several datacenters, unless every
/// writer runs in `local_datacenter` (`single_writing_datacenter`), which must then hold replicas.
// A start-up check: boxing the (large) driver error of other variants would buy nothing.
#[allow(clippy::result_large_err)]
pub fn check_writers(config: &ScyllaConfig, datacenters: &[String]) -> Result<(), SchemaError> {
    if datacenters.len() < 2 || !config.consistency.is_local() {
        return Ok(());
    }
    if !config.single_writing_datacenter {
        return Err(SchemaError::LocalConsistency {
            keyspace: config.keyspace.clone(),
            consistency: config.consistency,
            datacenters: datacenters.to_vec(),
        });
    }
    match &config.local_datacenter {
        Some(dc) if datacenters.contains(dc) => Ok(()),
        other => Err(SchemaError::WritingDatacenter {
            keyspace: config.keyspace.clone(),
            local: other.clone().unwrap_or_default(),
            datacenters: datacenters.to_vec(),
        }),
    }
}

/// Reads the keyspace's replication and applies [`check_writers`]; a keyspace that does not exist
/// yet passes (`migrate` checks again once it created it).
pub async fn check(session: &Session, config: &ScyllaConfig) -> Result<Vec<String>, SchemaError> {
    let Some(replication) = replication(session, &config.keyspace).await? else {
        return Ok(Vec::new());
    };
    let dcs = datacenters(&replication, &crate::store::datacenters(session));
    check_writers(config, &dcs)?;
    Ok(dcs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Consistency;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn dcs(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn datacenters_of_a_keyspace_follow_its_strategy() {
        let nts = map(&[
            (
                "class",
                "org.apache.cassandra.locator.NetworkTopologyStrategy",
            ),
            ("dc1", "2"),
            ("dc2", "1"),
            ("dc3", "0"),
        ]);
        assert_eq!(datacenters(&nts, &dcs(&["dc1"])), dcs(&["dc1", "dc2"]));
        let transient = map(&[("class", "NetworkTopologyStrategy"), ("dc1", "3/1")]);
        assert_eq!(datacenters(&transient, &[]), dcs(&["dc1"]));
        let simple = map(&[
            ("class", "org.apache.cassandra.locator.SimpleStrategy"),
            ("replication_factor", "3"),
        ]);
        assert_eq!(
            datacenters(&simple, &dcs(&["dc2", "dc1", "dc1"])),
            dcs(&["dc1", "dc2"])
        );
    }

    #[test]
    fn local_levels_on_several_datacenters_need_the_single_writing_datacenter_promise() {
        let mut c = crate::config::Config::defaults().scylla;
        assert_eq!(c.consistency, Consistency::LocalQuorum);
        let two = dcs(&["dc1", "dc2"]);
        assert!(check_writers(&c, &dcs(&["dc1"])).is_ok());
        let err = check_writers(&c, &two).unwrap_err().to_string();
        assert!(
            err.contains("single_writing_datacenter") && err.contains("quorum"),
            "{err}"
        );
        for level in [
            Consistency::Quorum,
            Consistency::EachQuorum,
            Consistency::All,
        ] {
            c.consistency = level;
            assert!(check_writers(&c, &two).is_ok(), "{level:?}");
        }
        c.consistency = Consistency::LocalQuorum;
        c.single_writing_datacenter = true;
        c.local_datacenter = Some("dc3".into());
        let err = check_writers(&c, &two).unwrap_err().to_string();
        assert!(err.contains("dc3"), "{err}");
        c.local_datacenter = Some("dc2".into());
        assert!(check_writers(&c, &two).is_ok());
    }
}
