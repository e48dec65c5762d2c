//! The compatibility window: which builds may write a keyspace at a given schema version.
//!
//! Every migration says which writers it keeps working: the oldest schema version a worker may have
//! been built for and still write correctly once the migration is applied
//! ([`super::Migration::oldest_writer`]). `migrate` records it next to the version in
//! `schema_migrations`, so a build that does not know a newer migration still reads, from the database,
//! whether it may write: a rolling upgrade after an additive migration keeps the old workers ready,
//! and a rollback of the binary within the window becomes ready again.

use std::fmt;

/// One applied version as `schema_migrations` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub version: i32,
    /// The oldest writer version this migration accepts; `None` when it was recorded by a build that
    /// did not record it (before the window existed), which a build that does not know the version
    /// reads as "not compatible".
    pub oldest_writer: Option<i32>,
}

/// Where the keyspace stands against this build, and whether this build may write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// No `schema_migrations` table: `migrate` never ran on this keyspace.
    Missing,
    /// Versions this build needs are not applied (a new build before `migrate`).
    Behind {
        at: Option<i32>,
        expected: i32,
        missing: Vec<i32>,
    },
    /// Exactly this build's version.
    Current { version: i32 },
    /// Newer versions are applied, and every one of them accepts writers of this build's version.
    AheadCompatible {
        at: i32,
        expected: i32,
        /// The oldest writer version every applied version accepts.
        oldest_writer: i32,
    },
    /// A newer version does not accept writers of this build's version.
    AheadIncompatible {
        at: i32,
        expected: i32,
        /// The newer versions that refuse this build, with the oldest writer each accepts.
        refusing: Vec<Applied>,
    },
}

impl SchemaState {
    /// The state of a keyspace whose applied versions are `applied` (`None`: no version table) for a
    /// build that knows the versions `known` and expects the newest of them.
    pub fn evaluate(applied: Option<&[Applied]>, known: &[i32]) -> SchemaState {
        let Some(applied) = applied else {
            return SchemaState::Missing;
        };
        let expected = known.iter().copied().max().unwrap_or(0);
        let at = applied.iter().map(|a| a.version).max();
        let missing: Vec<i32> = known
            .iter()
            .copied()
            .filter(|v| !applied.iter().any(|a| a.version == *v))
            .collect();
        if !missing.is_empty() {
            return SchemaState::Behind {
                at,
                expected,
                missing,
            };
        }
        let newer: Vec<Applied> = applied
            .iter()
            .copied()
            .filter(|a| a.version > expected)
            .collect();
        let Some(at) = newer.iter().map(|a| a.version).max() else {
            return SchemaState::Current { version: expected };
        };
        let mut refusing: Vec<Applied> = newer
            .iter()
            .copied()
            .filter(|a| a.oldest_writer.is_none_or(|o| o > expected))
            .collect();
        if refusing.is_empty() {
            let oldest_writer = newer
                .iter()
                .filter_map(|a| a.oldest_writer)
                .max()
                .unwrap_or(expected);
            SchemaState::AheadCompatible {
                at,
                expected,
                oldest_writer,
            }
        } else {
            refusing.sort_by_key(|a| a.version);
            SchemaState::AheadIncompatible {
                at,
                expected,
                refusing,
            }
        }
    }

    /// Ready for traffic: at this build's version, or ahead within the window.
    pub fn ready(&self) -> bool {
        matches!(
            self,
            SchemaState::Current { .. } | SchemaState::AheadCompatible { .. }
        )
    }

    /// May this build write the keyspace? Not when a newer version refuses it. Behind and missing
    /// keep today's behaviour: not ready, and the statements this build prepared decide.
    pub fn may_write(&self) -> bool {
        !matches!(self, SchemaState::AheadIncompatible { .. })
    }
}

impl fmt::Display for SchemaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaState::Missing => write!(f, "no schema applied: run `score-worker migrate`"),
            SchemaState::Behind {
                at,
                expected,
                missing,
            } => write!(
                f,
                "schema behind: at version {}, this build expects {expected} (not applied: {missing:?}): \
                 run `score-worker migrate` with this build",
                at.map_or("none".to_string(), |v| v.to_string())
            ),
            SchemaState::Current { version } => {
                write!(f, "schema at version {version}, this build's version")
            }
            SchemaState::AheadCompatible {
                at,
                expected,
                oldest_writer,
            } => write!(
                f,
                "schema ahead and compatible: at version {at}, this build expects {expected}; the \
                 versions after {expected} accept writers from version {oldest_writer}"
            ),
            SchemaState::AheadIncompatible {
                at,
                expected,
                refusing,
            } => {
                let needs = refusing
                    .iter()
                    .map(|a| match a.oldest_writer {
                        Some(o) => format!("version {} accepts writers from version {o}", a.version),
                        None => format!("version {} records no writer window", a.version),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                write!(
                    f,
                    "schema ahead and not compatible: at version {at}, this build expects {expected} \
                     ({needs}): this build does not write it; run a build of version {at}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(rows: &[(i32, Option<i32>)]) -> Vec<Applied> {
        rows.iter()
            .map(|&(version, oldest_writer)| Applied {
                version,
                oldest_writer,
            })
            .collect()
    }

    #[test]
    fn a_build_is_ready_at_its_version_and_ahead_within_the_window_only() {
        let known = [1, 2, 3];
        assert_eq!(SchemaState::evaluate(None, &known), SchemaState::Missing);
        let v3 = applied(&[(1, Some(1)), (2, Some(2)), (3, Some(3))]);
        let state = SchemaState::evaluate(Some(&v3), &known);
        assert_eq!(state, SchemaState::Current { version: 3 });
        assert!(state.ready() && state.may_write());

        // Recorded before the window existed (no oldest_writer): fine at or below this build.
        let legacy = applied(&[(1, None), (2, None), (3, None)]);
        assert!(SchemaState::evaluate(Some(&legacy), &known).ready());

        let behind = SchemaState::evaluate(Some(&v3[..2]), &known);
        assert!(!behind.ready() && behind.may_write());
        assert!(
            behind.to_string().contains("this build expects 3"),
            "{behind}"
        );

        // Two additive versions: 4 accepts 3, 5 accepts 3.
        let additive = [v3.clone(), applied(&[(4, Some(3)), (5, Some(3))])].concat();
        let state = SchemaState::evaluate(Some(&additive), &known);
        assert_eq!(
            state,
            SchemaState::AheadCompatible {
                at: 5,
                expected: 3,
                oldest_writer: 3
            }
        );
        assert!(state.ready() && state.may_write());
        assert!(state.to_string().contains("compatible"), "{state}");

        // 5 accepts writers from 4 only: build 3 may not write; build 4 may.
        let narrowing = [v3.clone(), applied(&[(4, Some(3)), (5, Some(4))])].concat();
        let state = SchemaState::evaluate(Some(&narrowing), &known);
        assert!(!state.ready() && !state.may_write());
        assert!(
            state
                .to_string()
                .contains("version 5 accepts writers from version 4"),
            "{state}"
        );
        assert!(SchemaState::evaluate(Some(&narrowing), &[1, 2, 3, 4]).ready());

        // A newer version without a recorded window is not trusted.
        let unknown = [v3, applied(&[(4, None)])].concat();
        assert!(!SchemaState::evaluate(Some(&unknown), &known).may_write());
    }
}
