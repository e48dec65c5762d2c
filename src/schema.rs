//! The versioned CQL in `schema/`: applying it (`migrate`) and checking the version a running worker
//! expects (`check`, `/readyz`). Applied versions are recorded in `<keyspace>.schema_migrations`.

use scylla::client::session::Session;
use scylla::errors::ExecutionError;
use scylla::value::CqlTimestamp;

use crate::config::ScyllaConfig;

/// One schema version.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub cql: &'static str,
}

/// Every version, in order. Files are embedded so the binary carries its schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        cql: include_str!("../schema/0001_initial.cql"),
    },
    Migration {
        version: 2,
        name: "0002_settings",
        cql: include_str!("../schema/0002_settings.cql"),
    },
    Migration {
        version: 3,
        name: "0003_read_side",
        cql: include_str!("../schema/0003_read_side.cql"),
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

// The driver's error dominates the size; these are start-up and `migrate` errors, so boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema statement failed: {statement}: {source}")]
    Statement {
        statement: String,
        #[source]
        source: ExecutionError,
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

/// Splits a CQL file into statements, dropping `--` comments and blank lines.
pub fn statements(cql: &str) -> Vec<String> {
    let without_comments: String = cql
        .lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

fn keyspace_statements(config: &ScyllaConfig) -> Vec<String> {
    let ks = &config.keyspace;
    vec![
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}", config.replication),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (version int PRIMARY KEY, name text, applied_at timestamp)"
        ),
    ]
}

/// Qualifies the table names of a migration statement with the keyspace.
fn qualify(statement: &str, keyspace: &str) -> String {
    let mut out = statement.to_string();
    for prefix in ["CREATE TABLE IF NOT EXISTS ", "ALTER TABLE "] {
        out = out.replace(prefix, &format!("{prefix}{keyspace}."));
    }
    // CREATE INDEX IF NOT EXISTS name ON table (...)
    if out.starts_with("CREATE INDEX") {
        if let Some(pos) = out.find(" ON ") {
            out.insert_str(pos + 4, &format!("{keyspace}."));
        }
    }
    out
}

/// `ALTER TABLE … ADD` of a column that is already there: an earlier `migrate` stopped after it and
/// before recording its version. Neither server has an `IF NOT EXISTS` for it that both accept
/// (Cassandra: "already exists", ScyllaDB: "conflicts with an existing column").
fn column_exists(statement: &str, error: &ExecutionError) -> bool {
    let ExecutionError::LastAttemptError(scylla::errors::RequestAttemptError::DbError(
        scylla::errors::DbError::Invalid,
        message,
    )) = error
    else {
        return false;
    };
    statement.starts_with("ALTER TABLE ")
        && statement.contains(" ADD ")
        && (message.contains("already exists") || message.contains("conflicts with an existing"))
}

/// The applied versions, or `None` if the keyspace or its version table does not exist.
pub async fn applied_versions(
    session: &Session,
    keyspace: &str,
) -> Result<Option<Vec<i32>>, ExecutionError> {
    let query = format!("SELECT version FROM {keyspace}.schema_migrations");
    match session.query_unpaged(query, ()).await {
        Ok(result) => {
            let rows = result
                .into_rows_result()
                .ok()
                .and_then(|r| {
                    r.rows::<(i32,)>()
                        .ok()
                        .map(|it| it.filter_map(Result::ok).map(|(v,)| v).collect())
                })
                .unwrap_or_default();
            Ok(Some(rows))
        }
        Err(ExecutionError::LastAttemptError(scylla::errors::RequestAttemptError::DbError(
            scylla::errors::DbError::Invalid,
            _,
        ))) => Ok(None),
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

/// What `migrate` did or, with `dry_run`, would do: one line per statement.
pub async fn migrate(
    session: &Session,
    config: &ScyllaConfig,
    dry_run: bool,
) -> Result<Vec<String>, SchemaError> {
    let ks = &config.keyspace;
    let applied = applied_versions(session, ks)
        .await
        .map_err(|source| SchemaError::Statement {
            statement: "read schema_migrations".into(),
            source,
        })?;
    let mut plan = Vec::new();
    if applied.is_none() {
        plan.extend(keyspace_statements(config).into_iter().map(|s| (None, s)));
    }
    let applied = applied.unwrap_or_default();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        for s in statements(m.cql) {
            plan.push((None, qualify(&s, ks)));
        }
        plan.push((Some(m), String::new()));
    }

    let flavour = flavour(session).await?;
    plan.extend(server_options(&flavour, ks).into_iter().map(|s| (None, s)));

    let mut report = Vec::new();
    for (migration, statement) in plan {
        match migration {
            Some(m) => {
                report.push(format!("record version {} ({})", m.version, m.name));
                if !dry_run {
                    let insert = format!("INSERT INTO {ks}.schema_migrations (version, name, applied_at) VALUES (?, ?, ?)");
                    let now = CqlTimestamp(chrono::Utc::now().timestamp_millis());
                    session
                        .query_unpaged(insert.clone(), (m.version, m.name, now))
                        .await
                        .map_err(|source| SchemaError::Statement {
                            statement: insert,
                            source,
                        })?;
                }
            }
            None => {
                report.push(statement.clone());
                if !dry_run {
                    match session.query_unpaged(statement.clone(), ()).await {
                        Ok(_) => {}
                        Err(e) if column_exists(&statement, &e) => {}
                        Err(source) => return Err(SchemaError::Statement { statement, source }),
                    }
                }
            }
        }
    }
    if report.len() == server_options(&flavour, ks).len() {
        report.insert(
            0,
            format!("schema is up to date at version {}", expected_version()),
        );
    }
    if dry_run {
        report.push(format!(
            "record {BUCKETS_SETTING} = {} unless already recorded",
            config.leaderboard_buckets
        ));
    } else {
        record_buckets(session, config).await?;
    }
    Ok(report)
}

/// Records the bucket count once (the first `migrate` wins, with a lightweight transaction); a later
/// `migrate` with another count fails.
async fn record_buckets(session: &Session, config: &ScyllaConfig) -> Result<(), SchemaError> {
    let ks = &config.keyspace;
    let insert = format!("INSERT INTO {ks}.settings (name, value) VALUES (?, ?) IF NOT EXISTS");
    session
        .query_unpaged(
            insert.clone(),
            (BUCKETS_SETTING, config.leaderboard_buckets.to_string()),
        )
        .await
        .map_err(|source| SchemaError::Statement {
            statement: insert,
            source,
        })?;
    check_buckets(session, config).await
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
    fn qualifies_tables_and_indexes() {
        assert_eq!(
            qualify(
                "CREATE TABLE IF NOT EXISTS scores (a int PRIMARY KEY)",
                "ks"
            ),
            "CREATE TABLE IF NOT EXISTS ks.scores (a int PRIMARY KEY)"
        );
        assert_eq!(
            qualify(
                "CREATE INDEX IF NOT EXISTS i ON scores_by_profile (wallet_address)",
                "ks"
            ),
            "CREATE INDEX IF NOT EXISTS i ON ks.scores_by_profile (wallet_address)"
        );
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
    }
}
