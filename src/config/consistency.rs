//! The database's consistency levels as the configuration names them (any case), and the two
//! properties the write protocol asks of a level.

use std::str::FromStr;

use serde::Deserialize;

/// A consistency level of the database, as written in the configuration (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Consistency {
    One,
    Two,
    Three,
    Quorum,
    All,
    LocalQuorum,
    EachQuorum,
    LocalOne,
}

/// A name that is not a consistency level.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a consistency level: one, two, three, quorum, all, local_quorum, each_quorum or local_one")]
pub struct ConsistencyError(String);

impl FromStr for Consistency {
    type Err = ConsistencyError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "one" => Self::One,
            "two" => Self::Two,
            "three" => Self::Three,
            "quorum" => Self::Quorum,
            "all" => Self::All,
            "local_quorum" => Self::LocalQuorum,
            "each_quorum" => Self::EachQuorum,
            "local_one" => Self::LocalOne,
            _ => return Err(ConsistencyError(name.to_string())),
        })
    }
}

impl Consistency {
    /// Whether a read at this level always overlaps a write at this level (on every replication
    /// factor): the property the leaderboard invariant rests on.
    pub fn is_quorum(self) -> bool {
        match self {
            Self::Quorum | Self::All | Self::LocalQuorum | Self::EachQuorum => true,
            Self::One | Self::Two | Self::Three | Self::LocalOne => false,
        }
    }

    /// Whether the level counts replicas of the local datacenter only.
    pub fn is_local(self) -> bool {
        matches!(self, Self::LocalQuorum | Self::LocalOne)
    }
}

impl TryFrom<String> for Consistency {
    type Error = ConsistencyError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}
