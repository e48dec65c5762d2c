//! The versioned CQL in `schema/`: applying it (`migrate`) and checking it against what a running
//! worker expects (`check`, `/readyz`, start-up). Applied versions are recorded in
//! `<keyspace>.schema_migrations`, each with the oldest writer version it accepts ([`compat`]); the
//! keyspace's datacenters decide which consistency levels writers may use ([`replication`]).

pub mod compat;
mod migrate;
pub mod replication;

use scylla::client::session::Session;
use scylla::errors::ExecutionError;

pub use compat::{Applied, SchemaState};
pub use migrate::{migrate, migrate_with, statements};

use crate::config::{Consistency, ScyllaConfig};

/// One schema version.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub cql: &'static str,
    /// The oldest schema version a worker may have been built for and still write correctly once this
    /// migration is applied, recorded by `migrate` so that builds that do not know this migration can
    /// tell. An additive change (a new table, a new column no writer needs, a table option) keeps the
    /// previous writers: `version - 1` (or lower, if the previous migrations kept older writers too).
    /// A change writers must follow (a new column every write sets, a changed key, a new rule of the
    /// protocol) is `version`: older workers become unready and stop pulling.
    pub oldest_writer: i32,
}

/// Every version, in order. Files are embedded so the binary carries its schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        cql: include_str!("../../schema/0001_initial.cql"),
        oldest_writer: 1,
    },
    Migration {
        version: 2,
        name: "0002_settings",
        cql: include_str!("../../schema/0002_settings.cql"),
        // Workers of version 2 check the bucket count at start; version 1 ones did not.
        oldest_writer: 2,
    },
    Migration {
        version: 3,
        name: "0003_read_side",
        cql: include_str!("../../schema/0003_read_side.cql"),
        // A compaction option and two cache columns the worker never writes.
        oldest_writer: 2,
    },
];

/// The tables that take deletes: a row tombstone per score change (`scores`), a collection tombstone
/// per clean-up and an operator's cleared cells (`scores_by_profile`), an invalidation per newest
/// event (`eligibility_cache`). `score_history` only expires (TTL, whole windows dropped by TWCS).
pub const TABLES_WITH_DELETES: [&str; 3] = ["scores", "scores_by_profile", "eligibility_cache"];

/// Which database answers: the schema is valid on both, a few options exist on one only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavour {
    /// ScyllaDB, with its release (`system.versions`).
    ScyllaDb { version: String },
    /// Apache Cassandra (or another server without ScyllaDB's `system.versions`).
    Cassandra,
}

/// Asks the server what it is: only ScyllaDB has `system.versions`.
pub async fn flavour(session: &Session) -> Result<Flavour, SchemaError> {
    let query = "SELECT version FROM system.versions WHERE key = 'local'";
    match session.query_unpaged(query, ()).await {
        Ok(result) => {
            let version = result
                .into_rows_result()
                .ok()
                .and_then(|rows| rows.maybe_first_row::<(Option<String>,)>().ok().flatten())
                .and_then(|(v,)| v)
                .unwrap_or_default();
            Ok(Flavour::ScyllaDb { version })
        }
        Err(ExecutionError::LastAttemptError(scylla::errors::RequestAttemptError::DbError(
            scylla::errors::DbError::Invalid,
            _,
        ))) => Ok(Flavour::Cassandra),
        Err(source) => Err(SchemaError::Statement {
            statement: query.into(),
            source,
        }),
    }
}

/// Options `migrate` sets on one server only, after the versioned schema (every run; each is an
/// idempotent `ALTER TABLE`). On ScyllaDB, tombstones of the tables that take deletes are purged once a
/// repair has covered them (`tombstone_gc = {'mode': 'repair'}`) instead of after `gc_grace_seconds`:
/// as soon as it is safe, and never before (docs/design.md, "Tombstones"). Cassandra has no such
/// option (it rejects it): there `gc_grace_seconds` and the repair cadence are the operator's.
pub fn server_options(flavour: &Flavour, keyspace: &str) -> Vec<String> {
    match flavour {
        Flavour::ScyllaDb { .. } => TABLES_WITH_DELETES
            .iter()
            .map(|t| format!("ALTER TABLE {keyspace}.{t} WITH tombstone_gc = {{'mode': 'repair'}}"))
            .collect(),
        Flavour::Cassandra => Vec::new(),
    }
}

/// The setting that records `scylla.leaderboard_buckets`.
pub const BUCKETS_SETTING: &str = "leaderboard_buckets";

/// The version this build writes to.
pub fn expected_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The versions this build knows.
pub fn known_versions() -> Vec<i32> {
    MIGRATIONS.iter().map(|m| m.version).collect()
}

// The driver's error dominates the size; these are start-up and `migrate` errors, so boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema statement failed: {statement}")]
    Statement {
        statement: String,
        #[source]
        source: ExecutionError,
    },
    #[error(
        "keyspace {keyspace} is replicated to datacenters {datacenters:?}: writers in two datacenters at \
         {consistency:?} count disjoint replicas, so a read-back can miss another writer's completed \
         write and the leaderboard keeps stale rows (docs/design.md, \"Several datacenters\"). Set \
         scylla.consistency = \"quorum\" (or \"each_quorum\"), or, if every process that writes this \
         keyspace runs in one datacenter, scylla.single_writing_datacenter = true with \
         scylla.local_datacenter set to it"
    )]
    LocalConsistency {
        keyspace: String,
        consistency: Consistency,
        datacenters: Vec<String>,
    },
    #[error(
        "scylla.single_writing_datacenter = true needs scylla.local_datacenter set to one of the \
         datacenters keyspace {keyspace} is replicated to ({datacenters:?}); it is `{local}`"
    )]
    WritingDatacenter {
        keyspace: String,
        local: String,
        datacenters: Vec<String>,
    },
    #[error("keyspace {keyspace}: {state}")]
    Incompatible {
        keyspace: String,
        state: SchemaState,
    },
    #[error(
        "keyspace {keyspace} records leaderboard_buckets = {found}, not {expected}: another \
         rebuild-scores changed it meanwhile"
    )]
    BucketsChanged {
        keyspace: String,
        expected: String,
        found: String,
    },
    #[error(
        "keyspace {keyspace} was migrated with leaderboard_buckets = {stored}, the configuration says \
         {configured}: a worker with another count writes leaderboard rows its peers cannot find. Keep \
         scylla.leaderboard_buckets = {stored}, or rebuild the scores table for the new count"
    )]
    BucketMismatch {
        keyspace: String,
        stored: String,
        configured: i32,
    },
}

/// The bucket count recorded in the keyspace, if any.
pub async fn stored_buckets(
    session: &Session,
    keyspace: &str,
) -> Result<Option<String>, SchemaError> {
    let query = format!("SELECT value FROM {keyspace}.settings WHERE name = ?");
    let result = session
        .query_unpaged(query.clone(), (BUCKETS_SETTING,))
        .await
        .map_err(|source| SchemaError::Statement {
            statement: query,
            source,
        })?;
    Ok(result
        .into_rows_result()
        .ok()
        .and_then(|rows| rows.maybe_first_row::<(Option<String>,)>().ok().flatten())
        .and_then(|(value,)| value))
}

/// Refuses a configuration whose bucket count differs from the one recorded by `migrate`.
pub async fn check_buckets(session: &Session, config: &ScyllaConfig) -> Result<(), SchemaError> {
    match stored_buckets(session, &config.keyspace).await? {
        Some(stored) if stored != config.leaderboard_buckets.to_string() => {
            Err(SchemaError::BucketMismatch {
                keyspace: config.keyspace.clone(),
                stored,
                configured: config.leaderboard_buckets,
            })
        }
        _ => Ok(()),
    }
}

/// The applied versions, or `None` if the keyspace or its version table does not exist.
pub async fn applied_versions(
    session: &Session,
    keyspace: &str,
) -> Result<Option<Vec<i32>>, ExecutionError> {
    Ok(applied(session, keyspace)
        .await?
        .map(|t| t.rows.iter().map(|a| a.version).collect()))
}

/// `schema_migrations` as read: its rows, and whether it has the `oldest_writer` column (a table
/// created before the compatibility window has not, until `migrate` adds it).
pub struct AppliedTable {
    pub rows: Vec<Applied>,
    pub has_window: bool,
}

fn invalid(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::LastAttemptError(scylla::errors::RequestAttemptError::DbError(
            scylla::errors::DbError::Invalid,
            _,
        ))
    )
}

/// The applied versions with the oldest writer each accepts, or `None` if the keyspace or its version
/// table does not exist.
pub async fn applied(
    session: &Session,
    keyspace: &str,
) -> Result<Option<AppliedTable>, ExecutionError> {
    let query = format!("SELECT version, oldest_writer FROM {keyspace}.schema_migrations");
    match session.query_unpaged(query, ()).await {
        Ok(result) => {
            let rows = result
                .into_rows_result()
                .ok()
                .and_then(|r| {
                    r.rows::<(i32, Option<i32>)>().ok().map(|it| {
                        it.filter_map(Result::ok)
                            .map(|(version, oldest_writer)| Applied {
                                version,
                                oldest_writer,
                            })
                            .collect()
                    })
                })
                .unwrap_or_default();
            return Ok(Some(AppliedTable {
                rows,
                has_window: true,
            }));
        }
        Err(e) if invalid(&e) => {}
        Err(e) => return Err(e),
    }
    // No such column (a table from before the window), or no such table.
    let query = format!("SELECT version FROM {keyspace}.schema_migrations");
    match session.query_unpaged(query, ()).await {
        Ok(result) => {
            let rows = result
                .into_rows_result()
                .ok()
                .and_then(|r| {
                    r.rows::<(i32,)>().ok().map(|it| {
                        it.filter_map(Result::ok)
                            .map(|(version,)| Applied {
                                version,
                                oldest_writer: None,
                            })
                            .collect()
                    })
                })
                .unwrap_or_default();
            Ok(Some(AppliedTable {
                rows,
                has_window: false,
            }))
        }
        Err(e) if invalid(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The newest applied version, if any.
pub async fn current_version(
    session: &Session,
    keyspace: &str,
) -> Result<Option<i32>, ExecutionError> {
    Ok(applied_versions(session, keyspace)
        .await?
        .and_then(|v| v.into_iter().max()))
}

/// Where `keyspace` stands against this build ([`SchemaState`]).
pub async fn state(session: &Session, keyspace: &str) -> Result<SchemaState, SchemaError> {
    let table = applied(session, keyspace)
        .await
        .map_err(|source| SchemaError::Statement {
            statement: "read schema_migrations".into(),
            source,
        })?;
    let rows = table.map(|t| t.rows);
    Ok(SchemaState::evaluate(rows.as_deref(), &known_versions()))
}

/// What a writer checks at start and its readiness probe every few seconds: the schema is within this
/// build's window, and the recorded bucket count is the configured one. `Ok` carries the state
/// (which may still be "behind": not ready, but not refused either).
pub async fn check_writer(
    session: &Session,
    config: &ScyllaConfig,
) -> Result<SchemaState, SchemaError> {
    let state = state(session, &config.keyspace).await?;
    if !state.may_write() {
        return Err(SchemaError::Incompatible {
            keyspace: config.keyspace.clone(),
            state,
        });
    }
    check_buckets(session, config).await?;
    Ok(state)
}

/// Records a new bucket count for `rebuild-scores`, with a lightweight transaction that succeeds only
/// if the keyspace still records `from`; a no-op when it already records `to` (a rebuild run again).
pub async fn record_new_buckets(
    session: &Session,
    keyspace: &str,
    from: i32,
    to: i32,
) -> Result<(), SchemaError> {
    let stored = stored_buckets(session, keyspace).await?;
    if stored.as_deref() == Some(to.to_string().as_str()) {
        return Ok(());
    }
    let update = format!("UPDATE {keyspace}.settings SET value = ? WHERE name = ? IF value = ?");
    session
        .query_unpaged(
            update.clone(),
            (to.to_string(), BUCKETS_SETTING, from.to_string()),
        )
        .await
        .map_err(|source| SchemaError::Statement {
            statement: update,
            source,
        })?;
    match stored_buckets(session, keyspace).await? {
        Some(now) if now == to.to_string() => Ok(()),
        found => Err(SchemaError::BucketsChanged {
            keyspace: keyspace.to_string(),
            expected: from.to_string(),
            found: found.unwrap_or_else(|| "nothing".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_schema_splits_into_the_contract_tables() {
        let stmts = statements(MIGRATIONS[0].cql);
        assert_eq!(stmts.len(), 5, "{stmts:#?}");
        for table in [
            "scores_by_profile",
            "scores",
            "score_history",
            "eligibility_cache",
        ] {
            assert!(
                stmts
                    .iter()
                    .any(|s| s.starts_with(&format!("CREATE TABLE IF NOT EXISTS {table} ("))),
                "{table}"
            );
        }
        assert!(stmts.iter().all(|s| !s.contains("--")));
    }

    #[test]
    fn only_scylladb_gets_repair_based_tombstone_gc_on_the_tables_that_take_deletes() {
        assert!(server_options(&Flavour::Cassandra, "ks").is_empty());
        let scylla = Flavour::ScyllaDb {
            version: "2025.1.0".into(),
        };
        assert_eq!(
            server_options(&scylla, "ks"),
            [
                "ALTER TABLE ks.scores WITH tombstone_gc = {'mode': 'repair'}",
                "ALTER TABLE ks.scores_by_profile WITH tombstone_gc = {'mode': 'repair'}",
                "ALTER TABLE ks.eligibility_cache WITH tombstone_gc = {'mode': 'repair'}",
            ]
        );
        // Every table that takes deletes exists in the schema.
        let stmts = statements(MIGRATIONS[0].cql);
        for t in TABLES_WITH_DELETES {
            assert!(stmts
                .iter()
                .any(|s| s.starts_with(&format!("CREATE TABLE IF NOT EXISTS {t} ("))));
        }
    }

    #[test]
    fn versions_are_increasing() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(expected_version(), 3);
        // A migration cannot accept writers newer than itself.
        assert!(MIGRATIONS.iter().all(|m| m.oldest_writer <= m.version));
    }
}
