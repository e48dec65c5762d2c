//! `score-worker publish-sample`: publishes realistic score updates the way the gateway does (JSON
//! body, `Nats-Msg-Id` = `event_id`, subject `scores.update.<leaderboard>`), waiting for JetStream to
//! store each one.

use std::io::IsTerminal;
use std::process::ExitCode;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;
use rand::Rng;
use uuid::Uuid;

use super::progress::Progress;
use super::CmdError;
use crate::config::Config;
use crate::nats;

/// `publish-sample`: creates what is missing of the topology (changing nothing that exists),
/// publishes, reports.
pub async fn run(
    config: &Config,
    count: usize,
    profiles: usize,
    leaderboards: usize,
) -> Result<ExitCode, CmdError> {
    let client = nats::connect(&config.nats, None).await?;
    let js = nats::jetstream(client.clone(), &config.nats);
    nats::ensure_topology(&js, &config.nats).await?;
    let subject = &config.nats.subjects[0];
    let bar = std::io::stderr().is_terminal();
    let mut progress = Progress::new("publish-sample", "events", count as u64, bar);
    publish_sample(&js, subject, count, profiles, leaderboards, || {
        progress.inc()
    })
    .await
    .map_err(CmdError::Sample)?;
    progress.finish();
    client.flush().await.map_err(CmdError::Flush)?;
    println!("published {count} events to {subject}");
    Ok(ExitCode::SUCCESS)
}

/// The subject for a leaderboard under a consumed pattern: `scores.update.>` → `scores.update.<lb>`.
pub fn subject_for(pattern: &str, leaderboard: &str) -> String {
    match pattern
        .strip_suffix(".>")
        .or_else(|| pattern.strip_suffix(".*"))
    {
        Some(prefix) => format!("{prefix}.{leaderboard}"),
        None => pattern.to_string(),
    }
}

/// The JSON body of an event, as the gateway writes it.
pub fn event_json(
    event_id: &str,
    profile_id: Uuid,
    wallet: &str,
    leaderboard: &str,
    score: i64,
    occurred_at: chrono::DateTime<chrono::Utc>,
) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "event_id": event_id,
            "profile_id": profile_id,
            "wallet_address": wallet,
            "leaderboard_id": leaderboard,
            "score": score,
            "occurred_at": occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        })
        .to_string(),
    )
}

/// Publishes one payload with `Nats-Msg-Id` and waits for the stream's ack.
pub async fn publish(
    js: &Context,
    subject: String,
    msg_id: &str,
    payload: Bytes,
) -> Result<(), PublishError> {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    js.publish_with_headers(subject, headers, payload)
        .await?
        .await?;
    Ok(())
}

/// Publishes `count` events over `profiles` profiles and `leaderboards` leaderboards, calling
/// `published` after each one the stream acknowledged.
pub async fn publish_sample(
    js: &Context,
    pattern: &str,
    count: usize,
    profiles: usize,
    leaderboards: usize,
    mut published: impl FnMut(),
) -> Result<(), PublishError> {
    let mut rng = rand::rng();
    let people: Vec<(Uuid, String)> = (0..profiles.max(1))
        .map(|_| {
            let wallet: String = (0..20)
                .map(|_| format!("{:02x}", rng.random::<u8>()))
                .collect();
            (Uuid::new_v4(), format!("0x{wallet}"))
        })
        .collect();
    let boards: Vec<String> = (0..leaderboards.max(1))
        .map(|i| format!("season-1.board-{i}"))
        .collect();
    let start = chrono::Utc::now();
    for i in 0..count {
        let (profile, wallet) = &people[rng.random_range(0..people.len())];
        let board = &boards[rng.random_range(0..boards.len())];
        let event_id = Uuid::new_v4().to_string();
        let score = rng.random_range(0..1_000_000i64);
        let at = start + chrono::Duration::microseconds(i as i64);
        let payload = event_json(&event_id, *profile, wallet, board, score, at);
        publish(js, subject_for(pattern, board), &event_id, payload).await?;
        published();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_pattern() {
        assert_eq!(
            subject_for("scores.update.>", "weekly"),
            "scores.update.weekly"
        );
        assert_eq!(
            subject_for("t1.scores.update.*", "a.b"),
            "t1.scores.update.a.b"
        );
        assert_eq!(subject_for("scores.update", "x"), "scores.update");
    }

    #[test]
    fn sample_events_pass_validation() {
        let body = event_json(
            "e1",
            Uuid::new_v4(),
            "0x00112233445566778899aabbccddeeff00112233",
            "season-1.board-0",
            42,
            chrono::Utc::now(),
        );
        let limits = crate::score::Limits {
            max_payload_bytes: 65_536,
            max_clock_skew_micros: 300_000_000,
            max_ahead_of_arrival_micros: 2_000_000,
        };
        let update =
            crate::score::decode(&body, limits, chrono::Utc::now().timestamp_micros()).unwrap();
        assert_eq!(update.score, 42);
    }
}
