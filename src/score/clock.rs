//! Event time against the clock that can be trusted: an event cannot have happened after JetStream
//! stored its message. `occurred_at` is the producer's clock; the message's stored time (from its
//! reply subject) is the NATS server's, the same for every replica and every redelivery.
//!
//! | `occurred_at` (`t`), arrival `A`             | outcome                                    |
//! |----------------------------------------------|--------------------------------------------|
//! | `t ≤ A + max_ahead_of_arrival`                | kept                                       |
//! | up to `A + max_clock_skew`                    | **clamped** to `A + max_ahead_of_arrival`  |
//! | later                                         | refused: dead letter `future_timestamp`    |
//!
//! A message without JetStream metadata (no arrival) keeps the receiver's-clock rule of [`decode`].
//! A repair ([`check_repair_time`]) arrives when the operator runs it: its time may be at most the
//! operator's now + `max_ahead_of_arrival`, and is refused beyond (an operator can type it again).
//! docs/design.md, "Event time and clocks", argues the choice.

use super::{decode, Fields, Limits, Rejection, ScoreUpdate};

/// An event whose `occurred_at` was later than its arrival allows, and the time it is written at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clamped {
    /// The producer's `occurred_at`, µs.
    pub occurred_at_micros: i64,
    /// When JetStream stored the message, µs (the NATS server's clock).
    pub arrival_micros: i64,
    /// The event time written instead: `arrival + max_ahead_of_arrival`, µs.
    pub written_at_micros: i64,
}

impl std::fmt::Display for Clamped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = |m: i64| Fields::time_text(Some(m)).unwrap_or_default();
        write!(
            f,
            "occurred_at {} is after its arrival at JetStream {}; written at {}",
            t(self.occurred_at_micros),
            t(self.arrival_micros),
            t(self.written_at_micros)
        )
    }
}

/// Decodes a payload that JetStream stored at `arrival_micros` (`None`: unknown, the receiver's clock
/// `now_micros` bounds it as [`decode`] does) and bounds its event time by that arrival. The outcome
/// depends only on the payload and the arrival, so every replica and redelivery writes the same time.
pub fn decode_arrived(
    payload: &[u8],
    limits: Limits,
    arrival_micros: Option<i64>,
    now_micros: i64,
) -> Result<(ScoreUpdate, Option<Clamped>), Rejection> {
    let Some(arrival) = arrival_micros else {
        return decode(payload, limits, now_micros).map(|update| (update, None));
    };
    let mut update = decode(payload, limits, arrival)?;
    let bound = arrival.saturating_add(limits.max_ahead_of_arrival_micros);
    if update.occurred_at_micros <= bound {
        return Ok((update, None));
    }
    let clamped = Clamped {
        occurred_at_micros: update.occurred_at_micros,
        arrival_micros: arrival,
        written_at_micros: bound,
    };
    update.occurred_at_micros = bound;
    Ok((update, Some(clamped)))
}

/// A repair time (`score set|delete --at`) later than the operator's clock allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("is {}s ahead of this machine's clock; a repair may be at most {}s ahead (validation.max_ahead_of_arrival)",
    seconds(*ahead_micros), seconds(*allowance_micros))]
pub struct TooFarAhead {
    pub ahead_micros: i64,
    pub allowance_micros: i64,
}

fn seconds(micros: i64) -> String {
    format!("{:.3}", micros as f64 / 1e6)
}

/// A repair at `at_micros` run at `now_micros` (the operator's clock): at most `allowance_micros` ahead,
/// the bound an event has against its arrival. Beyond, it would freeze the key the way a fast producer
/// did before events were bounded by their arrival.
pub fn check_repair_time(
    at_micros: i64,
    now_micros: i64,
    allowance_micros: i64,
) -> Result<(), TooFarAhead> {
    let ahead = at_micros.saturating_sub(now_micros);
    if ahead > allowance_micros {
        return Err(TooFarAhead {
            ahead_micros: ahead,
            allowance_micros,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::RejectReason;

    const ARRIVAL: i64 = 1_780_000_000_000_000;
    const LIMITS: Limits = Limits {
        max_payload_bytes: 65_536,
        max_clock_skew_micros: 300_000_000,
        max_ahead_of_arrival_micros: 2_000_000,
    };

    fn payload(occurred_at_micros: i64) -> Vec<u8> {
        let at = chrono::DateTime::from_timestamp_micros(occurred_at_micros)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        serde_json::json!({
            "event_id": "e1",
            "profile_id": "5f0c1a52-8a47-4b43-9a1e-3c9f5d3b1e7a",
            "wallet_address": "0x00112233445566778899aabbccddeeff00112233",
            "leaderboard_id": "weekly",
            "score": 7,
            "occurred_at": at,
        })
        .to_string()
        .into_bytes()
    }

    /// (written time, clamped?) or the rejection's reason; the receiver's clock is an hour late, so
    /// only the arrival can be deciding.
    fn outcome(at: i64, arrival: Option<i64>) -> Result<(i64, bool), RejectReason> {
        decode_arrived(&payload(at), LIMITS, arrival, ARRIVAL - 3_600_000_000)
            .map(|(u, c)| (u.occurred_at_micros, c.is_some()))
            .map_err(|r| r.reason)
    }

    #[test]
    fn an_event_is_bounded_by_its_arrival_plus_the_allowance() {
        let a = Some(ARRIVAL);
        let bound = ARRIVAL + LIMITS.max_ahead_of_arrival_micros;
        assert_eq!(outcome(ARRIVAL - 1, a), Ok((ARRIVAL - 1, false)));
        assert_eq!(outcome(bound, a), Ok((bound, false)));
        assert_eq!(outcome(bound + 1, a), Ok((bound, true)));
        // A producer four minutes fast: kept, at the bound.
        assert_eq!(outcome(ARRIVAL + 240_000_000, a), Ok((bound, true)));
        let skew = ARRIVAL + LIMITS.max_clock_skew_micros;
        assert_eq!(outcome(skew, a), Ok((bound, true)));
        assert_eq!(outcome(skew + 1, a), Err(RejectReason::FutureTimestamp));
    }

    #[test]
    fn without_an_arrival_the_receivers_clock_rule_applies() {
        let now = ARRIVAL - 3_600_000_000;
        assert_eq!(
            outcome(now + 240_000_000, None),
            Ok((now + 240_000_000, false))
        );
        assert_eq!(
            outcome(now + LIMITS.max_clock_skew_micros + 1, None),
            Err(RejectReason::FutureTimestamp)
        );
    }

    #[test]
    fn the_clamped_event_says_what_it_claimed_and_where_it_landed() {
        let (update, clamped) =
            decode_arrived(&payload(ARRIVAL + 60_000_000), LIMITS, Some(ARRIVAL), 0).unwrap();
        assert_eq!(
            clamped,
            Some(Clamped {
                occurred_at_micros: ARRIVAL + 60_000_000,
                arrival_micros: ARRIVAL,
                written_at_micros: ARRIVAL + 2_000_000,
            })
        );
        assert_eq!(update.occurred_at_micros, ARRIVAL + 2_000_000);
        assert_eq!(
            clamped.unwrap().to_string(),
            "occurred_at 2026-05-28T20:27:40.000000Z is after its arrival at JetStream \
             2026-05-28T20:26:40.000000Z; written at 2026-05-28T20:26:42.000000Z"
        );
    }

    #[test]
    fn a_repair_may_be_at_most_the_allowance_ahead() {
        let allowance = LIMITS.max_ahead_of_arrival_micros;
        assert_eq!(check_repair_time(ARRIVAL - 1, ARRIVAL, allowance), Ok(()));
        assert_eq!(
            check_repair_time(ARRIVAL + allowance, ARRIVAL, allowance),
            Ok(())
        );
        let err = check_repair_time(ARRIVAL + 240_000_000, ARRIVAL, allowance).unwrap_err();
        assert_eq!(err.ahead_micros, 240_000_000);
        assert_eq!(
            err.to_string(),
            "is 240.000s ahead of this machine's clock; a repair may be at most 2.000s ahead \
             (validation.max_ahead_of_arrival)"
        );
    }
}
