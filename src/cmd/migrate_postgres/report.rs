//! What a migration read, validated and wrote: the `--dry-run` report and the final summary.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::source::SourceRow;
use crate::score::Rejection;

/// Examples kept per invalid reason.
const EXAMPLES: usize = 3;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalid {
    pub rows: u64,
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub rows_read: u64,
    pub valid: u64,
    /// By reason token (`invalid_value`, `missing_field`, `future_timestamp`, ...).
    pub invalid: BTreeMap<String, Invalid>,
    /// Score writes sent (coalesced per key within a flush); `--dry-run`: the ones it would send.
    pub writes: u64,
    /// Of the whole source, counted by PostgreSQL.
    pub leaderboards: u64,
    pub profiles: u64,
}

impl Report {
    pub fn reject(&mut self, row: &SourceRow, why: &Rejection) {
        let entry = self
            .invalid
            .entry(why.reason.as_str().to_string())
            .or_default();
        entry.rows += 1;
        if entry.examples.len() < EXAMPLES {
            let show = |v: &Option<String>| v.as_deref().unwrap_or("NULL").to_string();
            entry.examples.push(format!(
                "profile_id={} leaderboard_id={} score={} updated_at_us={}: {}",
                show(&row.profile_id),
                show(&row.leaderboard_id),
                show(&row.score),
                row.updated_at_micros
                    .map_or("NULL".into(), |u| u.to_string()),
                why.detail
            ));
        }
    }

    pub fn invalid_rows(&self) -> u64 {
        self.invalid.values().map(|i| i.rows).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rows read:     {}", self.rows_read)?;
        writeln!(f, "valid:         {}", self.valid)?;
        writeln!(f, "invalid:       {}", self.invalid_rows())?;
        for (reason, invalid) in &self.invalid {
            writeln!(f, "  {reason}: {}", invalid.rows)?;
            for example in &invalid.examples {
                writeln!(f, "    e.g. {example}")?;
            }
        }
        writeln!(f, "leaderboards:  {}", self.leaderboards)?;
        writeln!(f, "profiles:      {}", self.profiles)?;
        write!(f, "score writes:  {}", self.writes)
    }
}
