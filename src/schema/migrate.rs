//! `migrate`: creating the keyspace, applying the versions this build knows (or a list a test
//! passes), recording each with its writer window, and the server-specific table options.

use scylla::client::session::Session;
use scylla::errors::ExecutionError;
use scylla::value::CqlTimestamp;

use super::{
    applied, check_buckets, flavour, replication, server_options, Migration, SchemaError,
    BUCKETS_SETTING, MIGRATIONS,
};
use crate::config::ScyllaConfig;

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
            "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (version int PRIMARY KEY, name text, applied_at timestamp, oldest_writer int)"
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

/// One step of a `migrate` plan.
enum Step<'a> {
    Cql(String),
    /// Record a migration as applied, with its writer window.
    Record(&'a Migration),
    /// Record the writer window of a version applied before the window existed.
    Window(&'a Migration),
}

/// What `migrate` did or, with `dry_run`, would do: one line per statement.
pub async fn migrate(
    session: &Session,
    config: &ScyllaConfig,
    dry_run: bool,
) -> Result<Vec<String>, SchemaError> {
    migrate_with(session, config, MIGRATIONS, dry_run).await
}

/// [`migrate`] with another list of versions: the product passes [`MIGRATIONS`]; tests pass it with a
/// version of their own appended, to play a newer build's `migrate` against running workers.
pub async fn migrate_with(
    session: &Session,
    config: &ScyllaConfig,
    migrations: &[Migration],
    dry_run: bool,
) -> Result<Vec<String>, SchemaError> {
    let (plan, up_to_date) = plan(session, config, migrations).await?;
    let mut report = Vec::new();
    for step in plan {
        let (line, statement, values) = step.cql(&config.keyspace);
        report.push(line);
        if !dry_run {
            execute(session, statement, values).await?;
        }
    }
    if up_to_date {
        let newest = migrations.last().map_or(0, |m| m.version);
        report.insert(0, format!("schema is up to date at version {newest}"));
    }
    if dry_run {
        report.push(format!(
            "record {BUCKETS_SETTING} = {} unless already recorded",
            config.leaderboard_buckets
        ));
    } else {
        record_buckets(session, config).await?;
        // The keyspace may have been created just now, from scylla.replication.
        replication::check(session, config).await?;
    }
    Ok(report)
}

/// The steps that bring the keyspace to `migrations`, then the server-specific table options; and
/// whether the versions were all applied already.
async fn plan<'a>(
    session: &Session,
    config: &ScyllaConfig,
    migrations: &'a [Migration],
) -> Result<(Vec<Step<'a>>, bool), SchemaError> {
    let ks = &config.keyspace;
    let table = applied(session, ks)
        .await
        .map_err(|source| SchemaError::Statement {
            statement: "read schema_migrations".into(),
            source,
        })?;
    if table.is_some() {
        // Refuse before changing anything: this configuration could not write what it migrates.
        replication::check(session, config).await?;
    }
    let mut plan = Vec::new();
    match &table {
        None => plan.extend(keyspace_statements(config).into_iter().map(Step::Cql)),
        Some(t) if !t.has_window => plan.push(Step::Cql(format!(
            "ALTER TABLE {ks}.schema_migrations ADD oldest_writer int"
        ))),
        Some(_) => {}
    }
    let applied = table.map(|t| t.rows).unwrap_or_default();
    for m in migrations {
        match applied.iter().find(|a| a.version == m.version) {
            None => {
                plan.extend(statements(m.cql).iter().map(|s| Step::Cql(qualify(s, ks))));
                plan.push(Step::Record(m));
            }
            Some(a) if a.oldest_writer.is_none() => plan.push(Step::Window(m)),
            Some(_) => {}
        }
    }
    let flavour = flavour(session).await?;
    let up_to_date = plan.is_empty();
    plan.extend(server_options(&flavour, ks).into_iter().map(Step::Cql));
    Ok((plan, up_to_date))
}

/// The values of a record step: (version, name, oldest writer).
type Record<'a> = (i32, &'a str, i32);

impl<'a> Step<'a> {
    /// The report line, the statement and, for a record, its values.
    fn cql(self, ks: &str) -> (String, String, Option<Record<'a>>) {
        match self {
            Step::Cql(statement) => (statement.clone(), statement, None),
            Step::Record(m) => (
                format!(
                    "record version {} ({}), writers from version {}",
                    m.version, m.name, m.oldest_writer
                ),
                format!(
                    "INSERT INTO {ks}.schema_migrations (version, name, applied_at, oldest_writer) \
                     VALUES (?, ?, ?, ?)"
                ),
                Some((m.version, m.name, m.oldest_writer)),
            ),
            Step::Window(m) => (
                format!(
                    "record that version {} accepts writers from version {}",
                    m.version, m.oldest_writer
                ),
                format!("UPDATE {ks}.schema_migrations SET oldest_writer = ? WHERE version = ?"),
                Some((m.version, m.name, m.oldest_writer)),
            ),
        }
    }
}

/// Runs one step's statement; a column an earlier, interrupted `migrate` added is not an error.
async fn execute(
    session: &Session,
    statement: String,
    values: Option<Record<'_>>,
) -> Result<(), SchemaError> {
    let result = match values {
        None => session.query_unpaged(statement.clone(), ()).await,
        Some((version, name, oldest)) if statement.starts_with("INSERT") => {
            let now = CqlTimestamp(chrono::Utc::now().timestamp_millis());
            session
                .query_unpaged(statement.clone(), (version, name, now, oldest))
                .await
        }
        Some((version, _, oldest)) => {
            session
                .query_unpaged(statement.clone(), (oldest, version))
                .await
        }
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) if column_exists(&statement, &e) => Ok(()),
        Err(source) => Err(SchemaError::Statement { statement, source }),
    }
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
}
