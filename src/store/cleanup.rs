//! The clean-up of one key, decided from its read-back (phases 4 and 5 of the protocol,
//! docs/design.md "The leaderboard invariant"): which leaderboard rows to delete, at which
//! timestamps, and whether this writer overwrites `ranked`. Pure, so every rule is unit-tested.

use crate::score::tie_rank;

/// What the read-back found for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Current {
    /// The current score; `None` when an operator deleted the key at `written_at` and nothing newer
    /// was written since ([`super::repair`]).
    pub score: Option<i64>,
    pub written_at: i64,
    pub ranked: Vec<(i32, i64)>,
}

/// `score`, `WRITETIME(score)`, `WRITETIME(updated_at)`, `ranked`.
pub(super) type ProfileRow = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<(i32, i64)>>,
);

/// A key with a score is current at the score's write time; a key without one but with an
/// `updated_at` was deleted at that cell's write time (a delete clears the score and rewrites
/// `updated_at` at its own timestamp); a key with neither was never written (or not visible yet).
pub(super) fn current((score, written_at, touched_at, ranked): ProfileRow) -> Option<Current> {
    let written_at = match score {
        Some(_) => written_at?,
        None => touched_at?,
    };
    Some(Current {
        score,
        written_at,
        ranked: ranked.unwrap_or_default(),
    })
}

/// What one key's clean-up writes, decided from its read-back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cleanup {
    /// Leaderboard rows `(bucket, score)` to delete, each at its timestamp.
    pub deletes: Vec<((i32, i64), i64)>,
    /// `ranked` rewritten as `(timestamp, entries)`: the current row's entry alone (none for a deleted
    /// key). `None` unless this writer's own write is the current one and `ranked` held something stale.
    pub overwrite: Option<(i64, Vec<(i32, i64)>)>,
}

/// The write a clean-up follows: an event's, which wrote the leaderboard row `(bucket, score)` at
/// `at`, or an operator's delete at `at` (`score: None`), which wrote no row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Own {
    pub score: Option<i64>,
    pub at: i64,
}

/// The clean-up of a key whose read-back found `current`, after the write `own`.
///
/// - Every `ranked` entry other than the current row is deleted from the leaderboard at `t*`, where a
///   tombstone wins the tie with a row written at `t*`; or at `t* − 1` for an entry that would beat the
///   current score in a same-timestamp tie (a write still in flight at exactly `t*` must survive; such
///   an entry was written before `t*`, so `t* − 1` still removes it). A deleted key owns no row: every
///   entry goes at the delete's `t*`, which wins a tie with an event at the same time.
/// - The writer's own row goes too, by the same rule, when it is not the current one, even if `ranked`
///   no longer lists it: an overwrite may have erased its entry before this read. So do the rows of
///   `earlier` scores: updates of the key superseded in this flush whose messages were delivered
///   before, whose earlier delivery may have written a row and then stopped before its clean-up.
/// - Only the writer whose own write is current (`s* = s`, `t* = t`: its write completed before this
///   read, which the argument in docs/design.md needs) overwrites `ranked`, and only if it held
///   anything stale: at `t*`, with the current entry. The overwrite's collection tombstone (at
///   `t* − 1`) shadows every older entry at once and leaves no dead cell per removed entry.
pub(super) fn cleanup(bucket: i32, own: Own, earlier: &[i64], current: &Current) -> Cleanup {
    let at = |s: i64| match current.score {
        Some(score) if tie_rank(s) > tie_rank(score) => current.written_at - 1,
        _ => current.written_at,
    };
    let mut deletes: Vec<((i32, i64), i64)> = current
        .ranked
        .iter()
        .filter(|&&(b, s)| current.score != Some(s) || b != bucket)
        .map(|&(b, s)| ((b, s), at(s)))
        .collect();
    let is_current = current.score == own.score && current.written_at == own.at;
    let overwrite = (is_current && !deletes.is_empty()).then(|| {
        let entry = current.score.map(|s| (bucket, s));
        (current.written_at, entry.into_iter().collect())
    });
    let own_rows = own.score.iter().chain(earlier);
    for &score in own_rows.filter(|&&s| current.score != Some(s)) {
        if !deletes.iter().any(|&(entry, _)| entry == (bucket, score)) {
            deletes.push(((bucket, score), at(score)));
        }
    }
    Cleanup { deletes, overwrite }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(score: i64, written_at: i64, ranked: &[(i32, i64)]) -> Current {
        Current {
            score: Some(score),
            written_at,
            ranked: ranked.to_vec(),
        }
    }

    fn event(score: i64, at: i64) -> Own {
        Own {
            score: Some(score),
            at,
        }
    }

    #[test]
    fn cleanup_spares_the_current_row_and_respects_ties() {
        // Nothing else owned, and the writer's row is the current one: nothing to do.
        let plan = cleanup(3, event(10, 100), &[], &current(10, 100, &[(3, 10)]));
        assert_eq!(
            plan,
            Cleanup {
                deletes: vec![],
                overwrite: None
            }
        );
        // An older score and the same score in another bucket go at t*; the current writer
        // overwrites `ranked` at t* with the current entry alone.
        let c = current(10, 100, &[(3, 10), (3, 5), (7, 10)]);
        let plan = cleanup(3, event(10, 100), &[], &c);
        assert_eq!(plan.deletes, vec![((3, 5), 100), ((7, 10), 100)]);
        assert_eq!(plan.overwrite, Some((100, vec![(3, 10)])));
        // A score that beats the current one in a same-time tie (a larger u64: 11, or a negative
        // score) goes at t* - 1, so a write in flight at exactly t* survives.
        let c = current(10, 100, &[(3, 11), (3, -1), (3, 9)]);
        assert_eq!(
            cleanup(3, event(10, 100), &[], &c).deletes,
            vec![((3, 11), 99), ((3, -1), 99), ((3, 9), 100)]
        );
        // A deleted key: everything goes, at the delete's time, and the delete empties `ranked`.
        let deleted = Current {
            score: None,
            written_at: 100,
            ranked: vec![(3, 10), (3, -1)],
        };
        let plan = cleanup(
            3,
            Own {
                score: None,
                at: 100,
            },
            &[],
            &deleted,
        );
        assert_eq!(plan.deletes, vec![((3, 10), 100), ((3, -1), 100)]);
        assert_eq!(plan.overwrite, Some((100, vec![])));
    }

    #[test]
    fn rows_an_earlier_delivery_may_have_written_go_too() {
        // A redelivered update (score 4) was superseded in this flush by the current one (10); its
        // earlier delivery wrote row 4 and crashed, and an overwrite erased its entry: it goes at t*.
        // The current writer still overwrites: `ranked` held a stale entry (5).
        let c = current(10, 100, &[(3, 10), (3, 5)]);
        let plan = cleanup(3, event(10, 100), &[4, 5, 10], &c);
        assert_eq!(plan.deletes, vec![((3, 5), 100), ((3, 4), 100)]);
        assert_eq!(plan.overwrite, Some((100, vec![(3, 10)])));
    }

    #[test]
    fn only_the_current_writer_overwrites_and_a_superseded_one_deletes_its_own_row() {
        // Superseded, and another writer's overwrite erased this writer's entry (7) before its
        // read-back: the row it wrote goes all the same; `ranked` is left to the current writer.
        let plan = cleanup(3, event(7, 90), &[], &current(10, 100, &[(3, 10)]));
        assert_eq!(
            plan,
            Cleanup {
                deletes: vec![((3, 7), 100)],
                overwrite: None
            }
        );
        // Listed and superseded: deleted once, stale entries deleted too, no overwrite.
        let plan = cleanup(
            3,
            event(7, 90),
            &[],
            &current(10, 100, &[(3, 10), (3, 7), (3, 2)]),
        );
        assert_eq!(plan.deletes, vec![((3, 7), 100), ((3, 2), 100)]);
        assert_eq!(plan.overwrite, None);
        // A same-time tie the writer lost, with a score that would rank first had its cell won
        // (-1 ranks above 10): t* - 1, like any entry of that kind.
        let plan = cleanup(3, event(-1, 100), &[], &current(10, 100, &[(3, 10)]));
        assert_eq!(plan.deletes, vec![((3, -1), 99)]);
        // The writer's score is current but written by a later event: same row, kept; not current.
        let plan = cleanup(3, event(10, 50), &[], &current(10, 250, &[(3, 10), (3, 4)]));
        assert_eq!(plan.deletes, vec![((3, 4), 250)]);
        assert_eq!(plan.overwrite, None);
        // Deleted at t* after this writer's event: its row goes at t*.
        let deleted = Current {
            score: None,
            written_at: 100,
            ranked: vec![],
        };
        let plan = cleanup(3, event(4, 90), &[], &deleted);
        assert_eq!(
            plan,
            Cleanup {
                deletes: vec![((3, 4), 100)],
                overwrite: None
            }
        );
    }
}
