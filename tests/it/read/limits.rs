//! What a caller of the read API cannot make it do: allocate a caller's size past [`MAX_ROWS`] (a
//! typed error instead), or scan a whole board for one rank (a budget of rows counted).

use score_worker::read::{Cursor, Rank, ReadError, MAX_ROWS};
use score_worker::score::ScoreUpdate;
use uuid::Uuid;

use super::{open, update, write_all};
use crate::support::*;

/// A rank counts at most its budget of rows (plus one per bucket): within it the answer is exact, past
/// it "beyond N" — the last profile of a board is not a scan of the whole board.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rank_counts_within_its_budget_and_answers_beyond_past_it() {
    let (_servers, config) = sharing("read_rank_budget").await;
    let (store, reader, _) = open(&config).await;
    const BUDGET: u64 = 100;
    let reader = reader.with_rank_budget(BUDGET);
    let buckets = config.scylla.leaderboard_buckets as u64;
    let board = new_board("read-rank");
    let base = chrono::Utc::now().timestamp_micros() - 3_600_000_000;
    // 600 profiles, distinct scores: the profile at index i (0 = first) has i rows ahead of it.
    let profiles = new_profiles(600);
    let updates: Vec<ScoreUpdate> = profiles
        .iter()
        .enumerate()
        .map(|(i, p)| update(&board, *p, 10_000 - i as i64, base))
        .collect();
    write_all(&store, &updates).await;

    for i in [0usize, 42, 98, 99, 100, 101, 350, 599] {
        let rank = reader
            .rank(&board, profiles[i])
            .await
            .unwrap()
            .expect("has a score");
        eprintln!("rank budget {BUDGET}: profile #{i}: {rank:?}");
        // Rows at or above its score: i ahead, and itself.
        if (i as u64) < BUDGET {
            let Rank::Exact(band) = rank else {
                panic!("#{i}: {} rows to count fit the budget: {rank:?}", i + 1)
            };
            assert_eq!((band.rank, band.rows_counted), (i as u64 + 1, i as u64 + 1));
        } else {
            let Rank::Beyond {
                score,
                ahead,
                rows_counted,
                budget,
            } = rank
            else {
                panic!("#{i}: {} rows to count exceed the budget: {rank:?}", i + 1)
            };
            assert_eq!((score, budget), (10_000 - i as i64, BUDGET));
            assert!(
                rows_counted > BUDGET && rows_counted <= BUDGET + buckets,
                "#{i}: counted {rows_counted}"
            );
            assert!(
                ahead >= BUDGET && ahead <= i as u64,
                "#{i}: {ahead} ahead is a true lower bound past the budget"
            );
        }
    }
}

/// A caller's size past [`MAX_ROWS`] is a typed error, before anything is allocated: the library
/// answers `TooMany`, the binary exits 1 with the message (it used to abort allocating the page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_past_what_one_read_returns_are_refused_with_a_typed_error() {
    let (_servers, config) = sharing("read_sizes").await;
    let (_, reader, _) = open(&config).await;
    let board = new_board("read-sizes");
    let after = Cursor {
        score: 0,
        profile_id: Uuid::nil(),
    };
    let now = chrono::Utc::now();
    for n in [MAX_ROWS + 1, 1_000_000_000_000, usize::MAX] {
        let refused = [
            reader.top(&board, n).await.map(|_| ()),
            reader.page_after(&board, after, n).await.map(|_| ()),
            reader
                .history(
                    Uuid::new_v4(),
                    now - chrono::Duration::days(1),
                    now,
                    n,
                    None,
                )
                .await
                .map(|_| ()),
        ];
        for (what, result) in ["top", "page_after", "history"].iter().zip(refused) {
            assert!(
                matches!(result, Err(ReadError::TooMany { asked, max: MAX_ROWS, .. }) if asked == n),
                "{what}({n}): {result:?}"
            );
        }
    }
    assert!(reader
        .top(&board, MAX_ROWS)
        .await
        .unwrap()
        .entries
        .is_empty());

    let huge = "1000000000000";
    for args in [
        vec![
            "query",
            "top",
            "--leaderboard",
            board.as_str(),
            "--limit",
            huge,
        ],
        vec![
            "query",
            "history",
            "--profile",
            "00000000-0000-4000-8000-000000000000",
            "--limit",
            huge,
        ],
    ] {
        let out = worker_command(&config, 0).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{args:?}: {:?}\n{stderr}", out.status);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("of 1000000000000 rows is more than one read returns (10000)"),
            "{stderr}"
        );
    }
}
