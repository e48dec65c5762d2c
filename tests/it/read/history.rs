//! A profile's history read page by page across UTC days, by the read API and by
//! `score-worker query history`, against rows written by the worker's store.

use chrono::{DateTime, Duration, Utc};
use score_worker::read::HistoryCursor;
use uuid::Uuid;

use super::{open, update, write_all};
use crate::support::*;

/// Events of one profile over six UTC days: three at the same instant on each day (ties broken by
/// event id), one a minute before midnight and one a minute after, newest first as the table keeps
/// them (`occurred_at DESC, event_id ASC`).
fn events_over_days(profile: Uuid, now: DateTime<Utc>) -> Vec<score_worker::score::ScoreUpdate> {
    let midnight = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let mut out = Vec::new();
    for day in 1..=6 {
        let day_start = midnight - Duration::days(day);
        let noon = day_start + Duration::hours(12);
        for (i, at) in [
            (0, noon),
            (1, noon),
            (2, noon),
            (3, day_start + Duration::minutes(1)),
            (4, day_start - Duration::minutes(1)),
        ] {
            // A board of its own per event: each update is the only one of its key in a flush.
            let board = format!("read-history-{}-{day}-{i}", profile.simple());
            let mut u = update(&board, profile, day * 10 + i, at.timestamp_micros());
            u.event_id = format!("hist-{day}-{i}-{}", Uuid::new_v4().simple());
            out.push(u);
        }
    }
    out.sort_by(|a, b| {
        b.occurred_at_micros
            .cmp(&a.occurred_at_micros)
            .then(a.event_id.cmp(&b.event_id))
    });
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_by_cursor_return_every_event_once_newest_first_across_days() {
    let (_servers, config) = sharing("read_history").await;
    let (store, reader, _) = open(&config).await;
    let profile = Uuid::new_v4();
    let now = Utc::now();
    let events = events_over_days(profile, now);
    write_all(&store, &events).await;
    let want: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let from = now - Duration::days(10);

    // Pages of 4: page ends fall inside a tie, on a day's last row, and past midnight.
    for size in [1, 2, 4, 7] {
        let mut walked = Vec::new();
        let mut after: Option<HistoryCursor> = None;
        let mut pages = 0;
        loop {
            let page = reader
                .history(profile, from, now, size, after.as_ref())
                .await
                .expect("history");
            pages += 1;
            assert!(page.events.len() <= size, "page of {size}");
            walked.extend(page.events.iter().map(|e| e.event_id.clone()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
            assert!(pages <= want.len() + 1, "paging does not end");
        }
        println!("pages of {size}: {pages} pages, {} events", walked.len());
        assert_eq!(walked, want, "pages of {size}");
    }
    // A range inside the days: only its events, still newest first.
    let (lo, hi) = (events[22].occurred_at_micros, events[3].occurred_at_micros);
    let at = |m: i64| DateTime::from_timestamp_micros(m).unwrap();
    let inside = reader
        .history(profile, at(lo), at(hi), 100, None)
        .await
        .unwrap();
    let want_inside: Vec<&String> = events
        .iter()
        .filter(|e| e.occurred_at_micros >= lo && e.occurred_at_micros < hi)
        .map(|e| &e.event_id)
        .collect();
    let got: Vec<&String> = inside.events.iter().map(|e| &e.event_id).collect();
    assert_eq!(got, want_inside, "from <= occurred_at < to");

    assert_eq!(cli_walk(&config, profile, 3), want, "query history pages");
}

/// `score-worker query history --json`, page by page with `--limit`, following each `next`.
fn cli_walk(config: &score_worker::config::Config, profile: Uuid, limit: usize) -> Vec<String> {
    let mut walked = Vec::new();
    let mut next: Option<(String, String)> = None;
    loop {
        let (profile, limit) = (profile.to_string(), limit.to_string());
        let mut args = vec![
            "query",
            "history",
            "--profile",
            &profile,
            "--since",
            "240h",
            "--limit",
            &limit,
            "--json",
        ];
        if let Some((time, event)) = &next {
            args.extend(["--after-time", time, "--after-event", event]);
        }
        let json = cli(config, &args);
        let page: serde_json::Value = serde_json::from_str(&json).expect("json page");
        let events = page["events"].as_array().expect("events");
        assert!(events.len() <= limit.parse().unwrap(), "{json}");
        walked.extend(
            events
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_string()),
        );
        match page["next"].as_object() {
            Some(n) => {
                next = Some((
                    n["occurred_at"].as_str().unwrap().to_string(),
                    n["event_id"].as_str().unwrap().to_string(),
                ))
            }
            None => break,
        }
    }
    println!("query history --limit {limit}: {} events", walked.len());
    walked
}
