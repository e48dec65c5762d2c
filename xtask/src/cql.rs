//! `cargo xtask cql [-c CONSISTENCY] HOST:PORT QUERY`: one query against one node, rows printed one a
//! line, columns separated by tabs (collections comma-separated, nulls as `null`), for the health checks
//! of the cluster's nodes ([`crate::servers`]: system tables, `system_views.gossip_info`, which is node-local: the session
//! talks to that node only). No authentication, no paging.

use std::sync::Arc;
use std::time::Duration;

use scylla::client::session_builder::SessionBuilder;
use scylla::policies::host_filter::AllowListHostFilter;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use scylla::value::{CqlValue, Row};

/// What went wrong, and the exit code it maps to (1 server, 2 connection).
#[derive(Debug, thiserror::Error)]
pub enum CqlError {
    #[error("usage: cargo xtask cql [-c CONSISTENCY] HOST:PORT QUERY")]
    Usage,
    #[error("unknown consistency '{0}'")]
    Consistency(String),
    #[error("cannot connect to {node}")]
    Connect {
        node: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("query failed on {node}")]
    Query {
        node: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl CqlError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CqlError::Connect { .. } => 2,
            _ => 1,
        }
    }
}

/// Runs the command line's query; prints the rows to stdout.
pub fn run(args: &[String]) -> Result<(), CqlError> {
    let (consistency, rest) = match args {
        [flag, c, rest @ ..] if flag == "-c" => (parse_consistency(c)?, rest),
        rest => (Consistency::One, rest),
    };
    let [node, query] = rest else {
        return Err(CqlError::Usage);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rows = runtime.block_on(query_rows(node, query, consistency))?;
    for row in rows {
        let cols: Vec<String> = row.columns.iter().map(|c| show(c.as_ref())).collect();
        println!("{}", cols.join("\t"));
    }
    Ok(())
}

/// One query (consistency ONE) against `node` alone, each row's columns as `run` prints them. Runs on a
/// thread of its own with its own runtime, so a caller already inside a tokio runtime (a test) can use it.
pub fn rows(node: &str, query: &str) -> Result<Vec<Vec<String>>, CqlError> {
    let (node, query) = (node.to_owned(), query.to_owned());
    std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let rows = runtime.block_on(query_rows(&node, &query, Consistency::One))?;
            Ok(rows
                .iter()
                .map(|r| r.columns.iter().map(|c| show(c.as_ref())).collect())
                .collect())
        })
        .join()
        .expect("the CQL query thread")
    })
}

fn parse_consistency(s: &str) -> Result<Consistency, CqlError> {
    Ok(match s.to_ascii_uppercase().as_str() {
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        "ANY" => Consistency::Any,
        _ => return Err(CqlError::Consistency(s.to_owned())),
    })
}

async fn query_rows(
    node: &str,
    query: &str,
    consistency: Consistency,
) -> Result<Vec<Row>, CqlError> {
    let connect = |source: Box<dyn std::error::Error + Send + Sync>| CqlError::Connect {
        node: node.to_owned(),
        source,
    };
    let only = AllowListHostFilter::new([node]).map_err(|e| connect(e.into()))?;
    let session = SessionBuilder::new()
        .known_node(node)
        .host_filter(Arc::new(only))
        .connection_timeout(Duration::from_secs(5))
        .build()
        .await
        .map_err(|e| connect(e.into()))?;
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| CqlError::Query {
        node: node.to_owned(),
        source,
    };
    let mut statement = Statement::new(query);
    statement.set_consistency(consistency);
    statement.set_request_timeout(Some(Duration::from_secs(10)));
    let result = session
        .query_unpaged(statement, ())
        .await
        .map_err(|e| failed(e.into()))?;
    if !result.is_rows() {
        return Ok(Vec::new());
    }
    let rows = result.into_rows_result().map_err(|e| failed(e.into()))?;
    let rows = rows.rows::<Row>().map_err(|e| failed(e.into()))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.into()))
}

/// A value as text: collections comma-separated, blobs in hex, null as `null`.
fn show(value: Option<&CqlValue>) -> String {
    let Some(value) = value else {
        return "null".into();
    };
    let join = |items: &mut dyn Iterator<Item = String>| items.collect::<Vec<_>>().join(",");
    match value {
        CqlValue::Ascii(s) | CqlValue::Text(s) => s.clone(),
        CqlValue::Boolean(b) => b.to_string(),
        CqlValue::Int(n) => n.to_string(),
        CqlValue::BigInt(n) => n.to_string(),
        CqlValue::SmallInt(n) => n.to_string(),
        CqlValue::TinyInt(n) => n.to_string(),
        CqlValue::Float(n) => n.to_string(),
        CqlValue::Double(n) => n.to_string(),
        CqlValue::Inet(a) => a.to_string(),
        CqlValue::Uuid(u) => u.to_string(),
        CqlValue::Timeuuid(u) => u.to_string(),
        CqlValue::Blob(b) => format!(
            "0x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
        CqlValue::List(v) | CqlValue::Set(v) => join(&mut v.iter().map(|x| show(Some(x)))),
        CqlValue::Map(m) => join(
            &mut m
                .iter()
                .map(|(k, v)| format!("{}:{}", show(Some(k)), show(Some(v)))),
        ),
        other => format!("{other:?}"),
    }
}
