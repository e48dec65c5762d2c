//! Database errors and their classification — the one place that decides whether a failure is worth
//! retrying. Every driver variant is named in every match (`clippy::wildcard_enum_match_arm` is denied
//! on each), so a new variant in a driver upgrade forces a decision here; the driver's enums are
//! non-exhaustive, so a final arm still catches variants of releases newer than this code knows.

use scylla::errors::{DbError, ExecutionError, RequestAttemptError};

use super::{WRITE_PROFILES, WRITE_ROWS};
use crate::metrics::REQUESTS;
use crate::pipeline::{Class, WriteError};

/// Metric label for an error (`score_worker_scylla_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Timeout,
    Unavailable,
    Overloaded,
    Connection,
    Server,
    Permanent,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Timeout => "timeout",
            Kind::Unavailable => "unavailable",
            Kind::Overloaded => "overloaded",
            Kind::Connection => "connection",
            Kind::Server => "server",
            Kind::Permanent => "permanent",
        }
    }

    pub fn class(self) -> Class {
        match self {
            Kind::Permanent => Class::Permanent,
            Kind::Timeout
            | Kind::Unavailable
            | Kind::Overloaded
            | Kind::Connection
            | Kind::Server => Class::Retryable,
        }
    }
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
#[error("{statement} failed ({})", kind.as_str())]
pub struct StoreError {
    /// Which request (a label of `score_worker_scylla_query_duration_seconds`).
    pub statement: &'static str,
    pub kind: Kind,
    #[source]
    pub source: Cause,
}

/// What went wrong with a request.
// The driver's error dominates the size; failures are rare, so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// The driver or the server refused or lost it.
    #[error(transparent)]
    Execution(#[from] ExecutionError),
    /// A read-back whose rows do not have the expected shape: the schema is not the one this build
    /// writes (permanent until migrated).
    #[error("unexpected result")]
    Decode(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A row this flush has just written is not visible, at a consistency below quorum
    /// (`scylla.allow_weak_consistency`): a replica behind (worth another attempt). At quorum a
    /// missing row is a delete newer than the write, and the key is superseded, not failed.
    #[error("row not visible after its write: profile {profile}, leaderboard {leaderboard}")]
    NotVisible {
        profile: uuid::Uuid,
        leaderboard: String,
    },
}

impl StoreError {
    pub fn new(statement: &'static str, source: ExecutionError) -> Self {
        Self {
            statement,
            kind: classify(&source),
            source: Cause::Execution(source),
        }
    }

    /// A result that did not decode.
    pub fn decode(
        statement: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            statement,
            kind: Kind::Permanent,
            source: Cause::Decode(Box::new(source)),
        }
    }

    /// A row missing after its write.
    pub fn not_visible(statement: &'static str, profile: uuid::Uuid, leaderboard: &str) -> Self {
        Self {
            statement,
            kind: Kind::Server,
            source: Cause::NotVisible {
                profile,
                leaderboard: leaderboard.to_string(),
            },
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class() == Class::Retryable
    }

    /// A permanent refusal of a request that carries events' values (`write_profiles`, `write_rows`):
    /// about a key's data, so its event is dead-lettered as `write_rejected`. A refusal of the
    /// read-back, the clean-up (with its cache invalidation) or the pruning of `ranked`, which carry
    /// nothing of the event, is never blamed on it: its rows were written, and the refusal is the
    /// table's or the role's (a revoked grant, a dropped table), which the write probe tells.
    pub fn refuses_values(&self) -> bool {
        self.kind == Kind::Permanent
            && [REQUESTS[WRITE_PROFILES], REQUESTS[WRITE_ROWS]].contains(&self.statement)
    }
}

impl WriteError for StoreError {
    fn class(&self) -> Class {
        self.kind.class()
    }

    fn refuses_values(&self) -> bool {
        StoreError::refuses_values(self)
    }
}

/// Maps a driver error to its kind. Every write the worker issues is idempotent (fixed `USING
/// TIMESTAMP`), so a timeout whose write may still have landed is safe to retry.
#[deny(clippy::wildcard_enum_match_arm)]
pub fn classify(error: &ExecutionError) -> Kind {
    match error {
        ExecutionError::RequestTimeout(_) => Kind::Timeout,
        ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => Kind::Connection,
        ExecutionError::LastAttemptError(attempt) => classify_attempt(attempt),
        // Schema agreement can time out while a node restarts; metadata fetches fail on broken
        // connections; a prepare fails while a node is down.
        ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_)
        | ExecutionError::PrepareError(_) => Kind::Connection,
        ExecutionError::BadQuery(_) | ExecutionError::UseKeyspaceError(_) => Kind::Permanent,
        // A variant of a driver release newer than this code: counted, logged and failing readiness as
        // permanent until someone classifies it above.
        _ => Kind::Permanent,
    }
}

#[deny(clippy::wildcard_enum_match_arm)]
fn classify_attempt(error: &RequestAttemptError) -> Kind {
    match error {
        RequestAttemptError::DbError(db, _) => classify_db(db),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => Kind::Connection,
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_)
        | RequestAttemptError::UnexpectedResponse(_)
        // Paging state left over from an unpaged request: a bug, not a passing condition.
        | RequestAttemptError::NonfinishedPagingState => Kind::Permanent,
        RequestAttemptError::BodyExtensionsParseError(_)
        | RequestAttemptError::CqlResultParseError(_)
        | RequestAttemptError::CqlErrorParseError(_)
        // A statement re-prepared while the schema changed under it: the next attempt prepares again.
        | RequestAttemptError::RepreparedIdChanged { .. }
        | RequestAttemptError::RepreparedIdMissingInBatch => Kind::Server,
        _ => Kind::Permanent,
    }
}

#[deny(clippy::wildcard_enum_match_arm)]
fn classify_db(error: &DbError) -> Kind {
    match error {
        DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => Kind::Timeout,
        DbError::Unavailable { .. } | DbError::IsBootstrapping => Kind::Unavailable,
        DbError::Overloaded | DbError::RateLimitReached { .. } => Kind::Overloaded,
        DbError::ServerError
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. }
        | DbError::TruncateError
        | DbError::Unprepared { .. }
        // Unknown codes are Scylla extensions such as CDC_WRITE_FAILURE: transient by nature.
        | DbError::Other(_) => Kind::Server,
        DbError::SyntaxError
        | DbError::Invalid
        | DbError::AlreadyExists { .. }
        | DbError::FunctionFailure { .. }
        | DbError::AuthenticationError
        | DbError::Unauthorized
        | DbError::ConfigError
        | DbError::ProtocolError => Kind::Permanent,
        _ => Kind::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::errors::{BrokenConnectionErrorKind, ConnectionPoolError, WriteType};
    use std::time::Duration;

    fn db(e: DbError) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, "msg".into()))
    }

    #[test]
    fn transient_failures_are_retryable() {
        let cases = [
            (
                ExecutionError::RequestTimeout(Duration::from_secs(5)),
                Kind::Timeout,
            ),
            (
                db(DbError::WriteTimeout {
                    consistency: scylla::statement::Consistency::LocalQuorum,
                    received: 1,
                    required: 2,
                    write_type: WriteType::Simple,
                }),
                Kind::Timeout,
            ),
            (
                db(DbError::Unavailable {
                    consistency: scylla::statement::Consistency::LocalQuorum,
                    required: 2,
                    alive: 1,
                }),
                Kind::Unavailable,
            ),
            (db(DbError::Overloaded), Kind::Overloaded),
            (db(DbError::IsBootstrapping), Kind::Unavailable),
            (db(DbError::ServerError), Kind::Server),
            (db(DbError::Other(0x1600)), Kind::Server),
            (
                ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(
                    BrokenConnectionErrorKind::ChannelError.into(),
                )),
                Kind::Connection,
            ),
            (
                ExecutionError::ConnectionPoolError(ConnectionPoolError::Initializing),
                Kind::Connection,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(classify(&error), kind, "{error}");
            assert!(StoreError::new("insert_leaderboard", error).is_retryable());
        }
    }

    #[test]
    fn a_write_timeout_is_never_success_and_never_permanent() {
        let e = StoreError::new(
            "update_profile",
            db(DbError::WriteTimeout {
                consistency: scylla::statement::Consistency::LocalQuorum,
                received: 0,
                required: 2,
                write_type: WriteType::BatchLog,
            }),
        );
        assert!(e.is_retryable());
    }

    #[test]
    fn only_a_refusal_of_the_values_written_is_the_keys_own() {
        let refused = |statement| StoreError::new(statement, db(DbError::Invalid));
        assert!(refused("write_profiles").refuses_values());
        assert!(refused("write_rows").refuses_values());
        for statement in ["read_back", "cleanup", "prune_ranked", "probe of scores"] {
            assert!(!refused(statement).refuses_values(), "{statement}");
        }
        let timeout = StoreError::new("write_rows", db(DbError::Overloaded));
        assert!(
            !timeout.refuses_values(),
            "a retryable failure is no refusal"
        );
        let missing = StoreError::not_visible("read_back", uuid::Uuid::nil(), "b");
        assert!(!missing.refuses_values());
    }

    #[test]
    fn schema_and_auth_failures_are_permanent() {
        for e in [
            DbError::Invalid,
            DbError::SyntaxError,
            DbError::Unauthorized,
            DbError::AuthenticationError,
            DbError::ConfigError,
        ] {
            let e = StoreError::new("read_profile", db(e));
            assert_eq!(e.kind, Kind::Permanent);
            assert!(!e.is_retryable());
        }
    }
}
