//! `score-worker dlq list|replay`: inspect dead letters and put them back on the update subjects once the
//! cause is fixed (e.g. messages parked as `max_deliveries` during a long database outage).
//!
//! Replay publishes each dead letter's original payload to its original subject with `Nats-Msg-Id`
//! `replay-<dead-letter sequence>`, so running the same replay twice within the duplicate window
//! publishes once; and because every write is idempotent (`USING TIMESTAMP` = event time), replaying
//! an event that was already written changes nothing. A replayed dead letter is then deleted from the
//! dead-letter stream (unless `--keep`); a payload that is still bad simply comes back as a new one.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use futures::StreamExt;

use std::process::ExitCode;

use super::{ArgumentError, CmdError, DlqAction, DlqFilter};
use crate::config::{parse_duration, Config, DurationError, NatsConfig};
use crate::deadletter;
use crate::nats::{self, BoxError};
use crate::score::RejectReason;

/// `dlq list|replay`: prints each letter, or what a replay did.
pub async fn run(config: &Config, action: DlqAction) -> Result<ExitCode, CmdError> {
    let client = nats::connect(&config.nats, None).await?;
    let js = nats::jetstream(client.clone(), &config.nats);
    match action {
        DlqAction::List { filter } => {
            let letters = list(&js, &config.nats, &filter_of(filter)?).await?;
            for l in &letters {
                println!(
                    "{}\t{}\t{}\t{}\t{} bytes\t{}",
                    l.sequence,
                    l.stored_at.to_rfc3339(),
                    l.reason,
                    l.original_subject,
                    l.payload.len(),
                    l.error
                );
            }
            println!("{} dead letters", letters.len());
        }
        DlqAction::Replay { filter, keep } => {
            let report = replay(&js, &config.nats, &filter_of(filter)?, keep).await?;
            println!(
                "replayed {} dead letters, skipped {}",
                report.replayed, report.skipped
            );
        }
    }
    client.flush().await.map_err(CmdError::Flush)?;
    Ok(ExitCode::SUCCESS)
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
}

#[derive(Debug, thiserror::Error)]
#[error("dead-letter stream {stream}: {source}")]
pub struct DlqError {
    pub stream: String,
    #[source]
    pub source: BoxError,
}

/// Neither a time nor an age.
#[derive(Debug, thiserror::Error)]
pub enum TimeError {
    #[error("expected an RFC 3339 time or an age such as 2h: {0}")]
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

/// Reads the matching dead letters, oldest first.
pub async fn list(
    js: &Context,
    config: &NatsConfig,
    filter: &Filter,
) -> Result<Vec<DeadLetter>, DlqError> {
    let fail = |e: BoxError| DlqError {
        stream: config.deadletter_stream.clone(),
        source: e,
    };
    let stream = js
        .get_stream(&config.deadletter_stream)
        .await
        .map_err(|e| fail(e.into()))?;
    let filter_subject = match filter.reason {
        Some(reason) => format!("{}.{}", config.deadletter_prefix, reason.as_str()),
        None => format!("{}.>", config.deadletter_prefix),
    };
    let deliver_policy = match filter.since {
        Some(start_time) => DeliverPolicy::ByStartTime { start_time },
        None => DeliverPolicy::All,
    };
    // An ephemeral consumer that acknowledges nothing: listing never changes the stream.
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject,
            deliver_policy,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| fail(e.into()))?;
    let limit = filter.limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    'pages: while out.len() < limit {
        let mut batch = consumer
            .fetch()
            .max_messages(500.min(limit - out.len()))
            .messages()
            .await
            .map_err(|e| fail(e.into()))?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(fail)?;
            got += 1;
            let info = message.info().map_err(fail)?;
            let stored_at = info.published;
            if filter.until.is_some_and(|until| stored_at >= until) {
                break 'pages;
            }
            out.push(to_dead_letter(info.stream_sequence, stored_at, &message));
        }
        if got == 0 {
            break;
        }
    }
    Ok(out)
}

fn to_dead_letter(
    sequence: u64,
    stored_at: chrono::DateTime<chrono::Utc>,
    message: &jetstream::Message,
) -> DeadLetter {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    DeadLetter {
        sequence,
        stored_at,
        reason: header(deadletter::REASON),
        error: header(deadletter::ERROR),
        original_subject: header(deadletter::ORIGINAL_SUBJECT),
        payload: message.payload.clone(),
    }
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub replayed: usize,
    pub skipped: usize,
}

/// Publishes each matching dead letter back to its original subject (waiting for the stream's ack),
/// then deletes it from the dead-letter stream unless `keep`.
pub async fn replay(
    js: &Context,
    config: &NatsConfig,
    filter: &Filter,
    keep: bool,
) -> Result<ReplayReport, DlqError> {
    let fail = |e: BoxError| DlqError {
        stream: config.deadletter_stream.clone(),
        source: e,
    };
    let letters = list(js, config, filter).await?;
    let stream = js
        .get_stream(&config.deadletter_stream)
        .await
        .map_err(|e| fail(e.into()))?;
    let mut report = ReplayReport::default();
    for letter in letters {
        if letter.original_subject.is_empty() {
            report.skipped += 1;
            continue;
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("replay-{}-{}", config.deadletter_stream, letter.sequence).as_str(),
        );
        js.publish_with_headers(
            letter.original_subject.clone(),
            headers,
            letter.payload.clone(),
        )
        .await
        .map_err(|e| fail(e.into()))?
        .await
        .map_err(|e| fail(e.into()))?;
        if !keep {
            stream
                .delete_message(letter.sequence)
                .await
                .map_err(|e| fail(e.into()))?;
        }
        report.replayed += 1;
    }
    Ok(report)
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
