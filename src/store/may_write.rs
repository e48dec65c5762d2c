//! The check every writer (the worker, repairs, rebuild-scores) passes before it writes: the schema
//! window, the bucket count and the consistency on the keyspace's datacenters, tried again while the
//! database is only briefly unavailable.

use std::time::{Duration, Instant};

use scylla::client::session::Session;

use super::{error, ConnectError};
use crate::config::ScyllaConfig;

/// How long a writer starting up retries its schema and replication checks while they time out or
/// find the database unavailable: a node killed just before the start has not yet been convicted by
/// its peers, and a coordinator still waits on it for a read at quorum.
const CHECK_BUDGET: Duration = Duration::from_secs(60);

/// Every writer (the worker, repairs, rebuild-scores) refuses a keyspace it may not write (schema
/// window, bucket count, consistency on the keyspace's datacenters). A check that fails for a
/// transient reason ([`error::classify`]) is tried again, with a growing wait, for [`CHECK_BUDGET`].
pub(super) async fn check_may_write(
    session: &Session,
    config: &ScyllaConfig,
) -> Result<(), ConnectError> {
    let deadline = Instant::now() + CHECK_BUDGET;
    let mut failures = 0;
    loop {
        let checked = match crate::schema::check_writer(session, config).await {
            Ok(_) => crate::schema::replication::check(session, config).await,
            Err(e) => Err(e),
        };
        let e = match checked {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let transient = match &e {
            crate::schema::SchemaError::Statement { source, .. } => {
                error::classify(source).class() == crate::pipeline::Class::Retryable
            }
            _ => false,
        };
        failures += 1;
        let wait = crate::retry::growing_wait(failures);
        if !transient || Instant::now() + wait > deadline {
            return Err(ConnectError::Schema(Box::new(e)));
        }
        tracing::warn!(error = %crate::error_chain(&e), retry_in = ?wait, "schema check failed; retrying");
        tokio::time::sleep(wait).await;
    }
}
