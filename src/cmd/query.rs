//! `score-worker query …`: the read API ([`crate::read`]) on the command line; a table by default,
//! `--json` for scripts.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde::Serialize;
use uuid::Uuid;

use super::dlq::parse_time;
use super::{ArgumentError, CmdError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::read::{
    Cursor, Eligibility, Entry, HistoryCursor, HistoryPage, ProfileScore, Rank, Reader,
};
use crate::store;

#[derive(Debug, Subcommand)]
pub enum Query {
    /// The first rows of a leaderboard, highest score first (ties by profile id).
    Top {
        #[arg(long)]
        leaderboard: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The rows after a (score, profile) of a leaderboard: the next page.
    Page {
        #[arg(long)]
        leaderboard: String,
        #[arg(long, allow_hyphen_values = true)]
        after_score: i64,
        #[arg(long)]
        after_profile: Uuid,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// A profile's rank on a leaderboard (counts the rows above it, up to --budget: past it, "beyond N").
    Rank {
        #[arg(long)]
        leaderboard: String,
        #[arg(long)]
        profile: Uuid,
        /// Rows counted at most before answering "rank beyond N".
        #[arg(long, default_value_t = crate::read::RANK_BUDGET)]
        budget: u64,
    },
    /// A profile's scores on every leaderboard.
    Profile {
        #[arg(long)]
        profile: Uuid,
    },
    /// Every profile score of a wallet.
    Wallet {
        #[arg(long)]
        wallet: String,
    },
    /// A profile's events in a time range, newest first.
    History(HistoryArgs),
    /// Is a wallet eligible on a leaderboard (best score ≥ min score)? Through the cache.
    Eligibility {
        #[arg(long)]
        wallet: String,
        #[arg(long)]
        leaderboard: String,
        #[arg(long, allow_hyphen_values = true)]
        min_score: i64,
    },
}

/// The flags of `query history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[arg(long)]
    pub profile: Uuid,
    /// Start (inclusive): RFC 3339, or an age such as 24h.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// End (exclusive): RFC 3339, or an age; default now.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Continue after this event time (RFC 3339) ...
    #[arg(long, requires = "after_event")]
    pub after_time: Option<String>,
    /// ... and event id: the `next` of the previous page.
    #[arg(long, requires = "after_time")]
    pub after_event: Option<String>,
}

pub async fn run(config: &Config, query: Query, json: bool) -> Result<ExitCode, CmdError> {
    let session = Arc::new(store::connect(&config.scylla).await?);
    let reader = Reader::new(session, &config.scylla, Arc::new(Metrics::new())).await?;
    match query {
        Query::Top { leaderboard, limit } => {
            let page = reader.top(&leaderboard, limit).await?;
            print(json, &page, || entries_table(&page.entries, 1, page.next));
        }
        Query::Page {
            leaderboard,
            after_score,
            after_profile,
            limit,
        } => {
            let after = Cursor {
                score: after_score,
                profile_id: after_profile,
            };
            let page = reader.page_after(&leaderboard, after, limit).await?;
            print(json, &page, || entries_table(&page.entries, 0, page.next));
        }
        Query::Rank {
            leaderboard,
            profile,
            budget,
        } => {
            let rank = reader
                .with_rank_budget(budget)
                .rank(&leaderboard, profile)
                .await?;
            print(json, &rank, || rank_text(rank, profile, &leaderboard));
        }
        Query::Profile { profile } => {
            let scores = reader.scores(profile).await?;
            print(json, &scores, || scores_table(&scores));
        }
        Query::Wallet { wallet } => {
            let scores = reader.by_wallet(&wallet).await?;
            print(json, &scores, || scores_table(&scores));
        }
        Query::History(args) => {
            let page = read_history(&reader, args).await?;
            print(json, &page, || history_table(&page));
        }
        Query::Eligibility {
            wallet,
            leaderboard,
            min_score,
        } => {
            let answer = reader.eligibility(&wallet, &leaderboard, min_score).await?;
            print(json, &answer, || eligibility_text(&answer));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A page of `query history`: its time flags parsed, then read.
async fn read_history(reader: &Reader, args: HistoryArgs) -> Result<HistoryPage, CmdError> {
    let HistoryArgs {
        profile,
        since,
        until,
        limit,
        after_time,
        after_event,
    } = args;
    let time = |flag: &'static str, text: &str| {
        parse_time(text).map_err(|source| ArgumentError::Time { flag, source })
    };
    let from = time("--since", &since)?;
    let to = match until {
        Some(u) => time("--until", &u)?,
        None => chrono::Utc::now(),
    };
    let after = match (after_time, after_event) {
        (Some(t), Some(event_id)) => Some(HistoryCursor {
            occurred_at: time("--after-time", &t)?,
            event_id,
        }),
        _ => None,
    };
    Ok(reader
        .history(profile, from, to, limit, after.as_ref())
        .await?)
}

fn rank_text(rank: Option<Rank>, profile: Uuid, leaderboard: &str) -> String {
    match rank {
        None => format!("profile {profile} has no score on {leaderboard}\n"),
        Some(Rank::Exact(r)) => format!(
            "rank {} (score {}; {} tied: ranks {}..={}); counted {} rows\n",
            r.rank, r.score, r.tied, r.best, r.worst, r.rows_counted
        ),
        Some(Rank::Beyond {
            score,
            ahead,
            rows_counted,
            budget,
        }) => format!(
            "rank beyond {ahead} (score {score}); counted {rows_counted} rows, the budget of \
             {budget} ran out (--budget)\n"
        ),
    }
}

fn history_table(page: &HistoryPage) -> String {
    let mut out = table(
        &["occurred_at", "event_id", "leaderboard", "score", "wallet"],
        page.events.iter().map(|e| {
            vec![
                e.occurred_at.to_rfc3339(),
                e.event_id.clone(),
                e.leaderboard_id.clone(),
                e.score.to_string(),
                e.wallet_address.clone(),
            ]
        }),
    );
    if let Some(next) = &page.next {
        out.push_str(&format!(
            "next: --after-time {} --after-event {}\n",
            next.occurred_at.to_rfc3339(),
            next.event_id
        ));
    }
    out
}

fn eligibility_text(answer: &Eligibility) -> String {
    format!(
        "{} (best score {}, cache {})\n",
        if answer.eligible {
            "eligible"
        } else {
            "not eligible"
        },
        answer.score.map_or("none".into(), |s| s.to_string()),
        answer.cache.as_str()
    )
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("results serialize")
        );
    } else {
        print!("{}", text());
    }
}

fn entries_table(entries: &[Entry], first_rank: usize, next: Option<Cursor>) -> String {
    let mut out = table(
        &["#", "score", "profile", "wallet", "updated_at"],
        entries.iter().enumerate().map(|(i, e)| {
            vec![
                if first_rank > 0 {
                    (first_rank + i).to_string()
                } else {
                    "-".into()
                },
                e.score.to_string(),
                e.profile_id.to_string(),
                e.wallet_address.clone(),
                e.updated_at.to_rfc3339(),
            ]
        }),
    );
    if let Some(c) = next {
        out.push_str(&format!(
            "next: --after-score {} --after-profile {}\n",
            c.score, c.profile_id
        ));
    }
    out
}

fn scores_table(scores: &[ProfileScore]) -> String {
    table(
        &["profile", "leaderboard", "score", "wallet", "updated_at"],
        scores.iter().map(|s| {
            vec![
                s.profile_id.to_string(),
                s.leaderboard_id.clone(),
                s.score.to_string(),
                s.wallet_address.clone(),
                s.updated_at.to_rfc3339(),
            ]
        }),
    )
}

/// Left-aligned columns as wide as their widest cell.
pub(super) fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out.push_str(&format!("({} rows)\n", rows.len()));
    out
}
