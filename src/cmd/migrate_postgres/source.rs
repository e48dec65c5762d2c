//! The PostgreSQL side: a table or a query with the documented columns, read in a fixed order through
//! a server-side cursor (a portal of the extended protocol, `chunk` rows per fetch), so memory holds one
//! chunk whatever the table's size.
//!
//! Columns (by name): `profile_id` (uuid or text), `wallet_address` (text), `leaderboard_id` (text),
//! `score` (any integer type, or text holding one), `updated_at` (timestamptz; a timestamp without
//! zone is read as UTC). Every column is read as text, so a value of the wrong type reaches the wire
//! contract's validation and is reported, not fatal.
//!
//! The order is the [`Key`] (all five columns, nulls as empty), so a resumed run continues exactly
//! after the last row its checkpoint records.

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, Portal, Row, Socket, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls::{self, Settings, SslMode, Transport};
use super::MigrateError;

/// Where a row sits in the read order: `(profile, leaderboard, updated_at µs, score, wallet)`.
pub type Key = (String, String, i64, String, String);

/// One source row, every column as PostgreSQL's text of it.
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub profile_id: Option<String>,
    pub wallet_address: Option<String>,
    pub leaderboard_id: Option<String>,
    pub score: Option<String>,
    pub updated_at_micros: Option<i64>,
}

impl SourceRow {
    pub fn key(&self) -> Key {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        (
            text(&self.profile_id),
            text(&self.leaderboard_id),
            self.updated_at_micros.unwrap_or(i64::MIN),
            text(&self.score),
            text(&self.wallet_address),
        )
    }
}

/// A table name or a query.
#[derive(Debug, Clone)]
pub enum Relation {
    Table(String),
    Query(String),
}

impl Relation {
    /// The relation as a sub-query. A table name is checked to be an identifier (`schema.table`).
    pub fn sql(&self) -> Result<String, MigrateError> {
        match self {
            Relation::Table(t) => {
                let ok = !t.is_empty()
                    && t.split('.').all(|p| {
                        !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    });
                if !ok {
                    return Err(MigrateError::Table(t.clone()));
                }
                Ok(format!(
                    "SELECT profile_id, wallet_address, leaderboard_id, score, updated_at FROM {t}"
                ))
            }
            Relation::Query(q) => Ok(q.trim().trim_end_matches(';').to_string()),
        }
    }
}

const KEY: &str = "coalesce(profile_id, ''), coalesce(leaderboard_id, ''), \
                   coalesce(updated_us, -9223372036854775808), coalesce(score, ''), \
                   coalesce(wallet_address, '')";

fn texts(relation: &str) -> String {
    format!(
        "SELECT profile_id::text AS profile_id, wallet_address::text AS wallet_address, \
         leaderboard_id::text AS leaderboard_id, score::text AS score, \
         floor(extract(epoch FROM updated_at) * 1000000)::int8 AS updated_us \
         FROM ({relation}) AS src"
    )
}

/// Opens a connection with `settings`' TLS ([`tls`]) and asks the server whether it is encrypted; a
/// `prefer` that fell back to plain text is logged as a warning.
pub async fn connect(settings: &Settings) -> Result<(Client, Transport), MigrateError> {
    let check = tls::check_of(settings.mode, settings.root.as_ref())?;
    let client = if settings.mode == SslMode::Disable {
        spawn(settings, NoTls).await?
    } else {
        let config = tls::client_config(check, settings.root.as_ref())?;
        spawn(settings, MakeRustlsConnect::new(config)).await?
    };
    let tls: bool = client
        .query_one(
            "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await?
        .get(0);
    if !tls && settings.mode != SslMode::Disable {
        tracing::warn!(
            sslmode = settings.mode.as_str(),
            "PostgreSQL connection in plain text: the server offers no TLS"
        );
    }
    let transport = Transport {
        mode: settings.mode,
        check,
        tls,
    };
    Ok((client, transport))
}

async fn spawn<T>(settings: &Settings, tls: T) -> Result<Client, MigrateError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) =
        settings
            .config
            .connect(tls)
            .await
            .map_err(|source| MigrateError::Connect {
                mode: settings.mode.as_str(),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %crate::error_chain(&e), "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Rows, leaderboards and profiles of the relation.
pub async fn census(
    client: &Transaction<'_>,
    relation: &str,
) -> Result<(u64, u64, u64), MigrateError> {
    let sql = format!(
        "SELECT count(*), count(DISTINCT leaderboard_id), count(DISTINCT profile_id) FROM ({}) AS t",
        texts(relation)
    );
    let row = client.query_one(&sql, &[]).await?;
    let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    Ok((n(0), n(1), n(2)))
}

/// Opens the cursor over the relation, after `after` when resuming.
pub async fn open(
    tx: &Transaction<'_>,
    relation: &str,
    after: Option<&Key>,
) -> Result<Portal, MigrateError> {
    let select = format!(
        "SELECT profile_id, wallet_address, leaderboard_id, score, updated_us FROM ({}) AS t",
        texts(relation)
    );
    let portal = match after {
        None => {
            let sql = format!("{select} ORDER BY {KEY}");
            tx.bind(sql.as_str(), &[]).await?
        }
        Some((p, l, u, s, w)) => {
            let sql = format!(
                "{select} WHERE ({KEY}) > ($1::text, $2::text, $3::int8, $4::text, $5::text) ORDER BY {KEY}"
            );
            tx.bind(sql.as_str(), &[p, l, u, s, w]).await?
        }
    };
    Ok(portal)
}

/// The next `chunk` rows of the cursor (empty at the end).
pub async fn fetch(
    tx: &Transaction<'_>,
    portal: &Portal,
    chunk: u32,
) -> Result<Vec<SourceRow>, MigrateError> {
    // At most MAX_CHUNK: always positive as an i32 (0 or less would fetch everything at once).
    let rows = tx
        .query_portal(portal, chunk.min(super::MAX_CHUNK) as i32)
        .await?;
    Ok(rows.iter().map(row).collect())
}

fn row(r: &Row) -> SourceRow {
    SourceRow {
        profile_id: r.get(0),
        wallet_address: r.get(1),
        leaderboard_id: r.get(2),
        score: r.get(3),
        updated_at_micros: r.get(4),
    }
}
