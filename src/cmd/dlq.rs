//! `score-worker dlq list|replay`: inspect dead letters and put them back on the update subjects once the
//! cause is fixed (e.g. messages parked as `max_deliveries` during a long database outage).
//!
//! Replay publishes each dead letter's original payload to its original subject with `Nats-Msg-Id`
//! `replay-<dead-letter sequence>`, so running the same replay twice within the duplicate window
//! publishes once; and because every write is idempotent (`USING TIMESTAMP` = event time), replaying
//! an event that was already written changes nothing. A replayed dead letter is then deleted from the
//! dead-letter stream (unless `--keep`); a payload that is still bad simply comes back as a new one
//! (after the last letter the command started with, so it is not read again in the same run).
//!
//! A letter's original subject is a header anyone who can publish to the dead-letter subjects could
//! have written, and replay publishes with the operator's credentials: only subjects under
//! `nats.subjects` (or an operator's `--allow-subject` pattern) are replayed ([`subjects`]); a letter
//! naming anything else is refused, kept, logged and counted, and the command exits 1.
//!
//! Both stream the letters ([`Letters`]: one fetch page at a time, a bounded window of replays in
//! flight), so memory does not grow with the dead-letter stream; progress is a bar on a terminal,
//! a log line every few seconds otherwise.

use std::io::{IsTerminal, Write};

use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use std::process::ExitCode;

use super::progress::Progress;
use super::{ArgumentError, CmdError, DlqAction, DlqFilter, Output};
use crate::config::{parse_duration, Config, DurationError, NatsConfig};
use crate::nats::{self, BoxError};
use crate::score::RejectReason;

mod letters;
mod subjects;

pub use letters::Letters;
pub use subjects::Allowed;

/// Replays whose publish ack (and delete) are awaited at once.
const WINDOW: usize = 256;
/// Refused letters logged one by one; the rest are only counted.
const REFUSALS_LOGGED: usize = 10;

/// `dlq list|replay`: prints each letter, or what a replay did.
pub async fn run(config: &Config, action: DlqAction) -> Result<ExitCode, CmdError> {
    let client = nats::connect(&config.nats, None).await?;
    let js = nats::jetstream(client.clone(), &config.nats);
    let code = match action {
        DlqAction::List { filter, output } => {
            let mut out = std::io::BufWriter::new(std::io::stdout());
            // A bar only when the letters go elsewhere: on one terminal they would interleave.
            let bar = std::io::stderr().is_terminal() && !std::io::stdout().is_terminal();
            let count = list(&js, &config.nats, &filter_of(filter)?, bar, |l| {
                // A closed pipe (`| head`) ends the listing, nothing else to do.
                let _ = match output {
                    Output::Text => writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        l.sequence,
                        l.stored_at.to_rfc3339(),
                        l.reason,
                        l.original_subject,
                        match l.truncated_from {
                            Some(len) => format!("{} of {len} bytes", l.payload.len()),
                            None => format!("{} bytes", l.payload.len()),
                        },
                        l.error
                    ),
                    Output::Json => writeln!(out, "{}", l.json()),
                };
            })
            .await?;
            if output == Output::Text {
                let _ = writeln!(out, "{count} dead letters");
            }
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        DlqAction::Replay {
            filter,
            keep,
            dry_run,
            allow_subject,
        } => {
            let filter = filter_of(filter)?;
            let allowed = Allowed::new(&config.nats.subjects, &allow_subject);
            let bar = std::io::stderr().is_terminal();
            let report = replay(&js, &config.nats, &filter, &allowed, keep, dry_run, bar).await?;
            if dry_run {
                println!(
                    "would replay {} dead letters, skip {} (dry run: nothing published or deleted)",
                    report.replayed, report.skipped
                );
            } else {
                println!(
                    "replayed {} dead letters, skipped {}",
                    report.replayed, report.skipped
                );
            }
            if report.refused == 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "{} {} dead letters: their original subject is not under {:?} (nats.subjects \
                     and --allow-subject); they are kept in {}",
                    if dry_run { "would refuse" } else { "refused" },
                    report.refused,
                    allowed.patterns(),
                    config.nats.deadletter_stream
                );
                ExitCode::FAILURE
            }
        }
    };
    client.flush().await.map_err(CmdError::Flush)?;
    Ok(code)
}

fn filter_of(args: DlqFilter) -> Result<Filter, ArgumentError> {
    let reason = match args.reason {
        Some(token) => Some(RejectReason::parse(&token).ok_or(ArgumentError::Reason(token))?),
        None => None,
    };
    let time = |flag: &'static str, t: Option<String>| {
        t.map(|t| parse_time(&t).map_err(|source| ArgumentError::Time { flag, source }))
            .transpose()
    };
    Ok(Filter {
        reason,
        since: time("--since", args.since)?,
        until: time("--until", args.until)?,
        limit: args.limit,
    })
}

/// Which dead letters to act on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub reason: Option<RejectReason>,
    /// Only dead letters stored at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only dead letters stored before this time.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: Option<usize>,
}

/// One dead letter as stored.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub sequence: u64,
    pub stored_at: chrono::DateTime<chrono::Utc>,
    pub reason: String,
    pub error: String,
    pub original_subject: String,
    pub payload: bytes::Bytes,
    /// The original payload's length when `payload` keeps only its first bytes.
    pub truncated_from: Option<usize>,
}

impl DeadLetter {
    /// One JSON object: the payload as text when it is UTF-8 (`null` otherwise), and its size
    /// (`truncated_from`: the original's, when the letter keeps only its start).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sequence": self.sequence,
            "stored_at": self.stored_at.to_rfc3339(),
            "reason": self.reason,
            "error": self.error,
            "original_subject": self.original_subject,
            "payload_bytes": self.payload.len(),
            "truncated_from": self.truncated_from,
            "payload": std::str::from_utf8(&self.payload).ok(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("dead-letter stream {stream}")]
pub struct DlqError {
    pub stream: String,
    #[source]
    pub source: BoxError,
}

/// Neither a time nor an age.
#[derive(Debug, thiserror::Error)]
pub enum TimeError {
    #[error("expected an RFC 3339 time or an age such as 2h")]
    Syntax(#[from] DurationError),
    #[error("age out of range")]
    Range,
}

/// Parses `--since`/`--until`: an RFC 3339 time, or a duration back from now such as `2h`.
pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, TimeError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago = chrono::Duration::from_std(parse_duration(text)?).map_err(|_| TimeError::Range)?;
    chrono::Utc::now()
        .checked_sub_signed(ago)
        .ok_or(TimeError::Range)
}

/// Calls `each` on every matching dead letter, oldest first, holding one page at a time; returns
/// how many there were.
pub async fn list(
    js: &Context,
    config: &NatsConfig,
    filter: &Filter,
    bar: bool,
    mut each: impl FnMut(&DeadLetter),
) -> Result<u64, DlqError> {
    let mut letters = Letters::open(js, config, filter).await?;
    let mut progress = Progress::new("dlq list", "letters", letters.total, bar);
    while let Some(letter) = letters.next().await? {
        each(&letter);
        progress.inc();
    }
    let count = progress.done;
    progress.finish();
    Ok(count)
}

/// Deletes one letter without overwriting its bytes first (`no_erase`): the server's default erase
/// made a replay of 100,000 letters take minutes (about 300 deletes/s here instead of thousands).
async fn delete(js: &Context, stream: &str, sequence: u64) -> Result<(), BoxError> {
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(default)]
        success: bool,
        error: Option<serde_json::Value>,
    }
    let reply: Reply = js
        .request(
            format!("STREAM.MSG.DELETE.{stream}"),
            &serde_json::json!({ "seq": sequence, "no_erase": true }),
        )
        .await?;
    match reply.error {
        // Already gone (a replay running twice, say): the goal is reached.
        Some(e) if e["description"] == "no message found" => Ok(()),
        Some(e) => Err(format!("deleting sequence {sequence}: {e}").into()),
        None if !reply.success => Err(format!("deleting sequence {sequence}: not deleted").into()),
        None => Ok(()),
    }
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub replayed: usize,
    /// Letters without an original subject.
    pub skipped: usize,
    /// Letters whose original subject `allowed` does not permit: kept, not published.
    pub refused: usize,
}

/// Publishes each matching dead letter back to its original subject (waiting for the stream's ack,
/// [`WINDOW`] at a time), then deletes it from the dead-letter stream unless `keep`. A letter whose
/// subject `allowed` does not permit is refused: logged, counted, kept. `dry_run` counts what would
/// be replayed, skipped and refused, and changes nothing.
pub async fn replay(
    js: &Context,
    config: &NatsConfig,
    filter: &Filter,
    allowed: &Allowed,
    keep: bool,
    dry_run: bool,
    bar: bool,
) -> Result<ReplayReport, DlqError> {
    let fail = |e: BoxError| DlqError {
        stream: config.deadletter_stream.clone(),
        source: e,
    };
    let mut letters = Letters::open(js, config, filter).await?;
    let mut progress = Progress::new(
        if dry_run {
            "dlq replay --dry-run"
        } else {
            "dlq replay"
        },
        "letters",
        letters.total,
        bar,
    );
    let mut report = ReplayReport::default();
    let mut inflight = FuturesUnordered::new();
    while let Some(letter) = letters.next().await? {
        if !replayable(&letter, allowed, &mut report) {
            progress.inc();
            continue;
        }
        if dry_run {
            report.replayed += 1;
            progress.inc();
            continue;
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("replay-{}-{}", config.deadletter_stream, letter.sequence).as_str(),
        );
        let ack = js
            .publish_with_headers(letter.original_subject, headers, letter.payload)
            .await
            .map_err(|e| fail(e.into()))?;
        inflight.push(async move {
            ack.await.map_err(|e| fail(e.into()))?;
            if !keep {
                delete(js, &config.deadletter_stream, letter.sequence)
                    .await
                    .map_err(fail)?;
            }
            Ok::<(), DlqError>(())
        });
        while inflight.len() >= WINDOW {
            inflight.next().await.expect("not empty")?;
            report.replayed += 1;
            progress.inc();
        }
    }
    while let Some(done) = inflight.next().await {
        done?;
        report.replayed += 1;
        progress.inc();
    }
    progress.finish();
    Ok(report)
}

/// Whether `letter` can give its original back; one that cannot is counted in `report` (skipped, or
/// refused for its subject).
fn replayable(letter: &DeadLetter, allowed: &Allowed, report: &mut ReplayReport) -> bool {
    // A letter that keeps only the start of its payload cannot give the original back.
    if letter.original_subject.is_empty() || letter.truncated_from.is_some() {
        report.skipped += 1;
        return false;
    }
    if !allowed.permits(&letter.original_subject) {
        report.refused += 1;
        if report.refused <= REFUSALS_LOGGED {
            tracing::warn!(
                sequence = letter.sequence,
                subject = ?letter.original_subject,
                "dead letter not replayed: its original subject is not a score subject"
            );
        }
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_as_an_age() {
        let t = parse_time("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-02T03:04:05+00:00");
        let two_hours_ago = parse_time("2h").unwrap();
        let age = chrono::Utc::now() - two_hours_ago;
        assert!((age.num_seconds() - 7200).abs() < 5);
        assert!(parse_time("yesterday").is_err());
    }
}
