//! The wire contract: a score update as the gateway publishes it, decoded and validated from bytes.
//!
//! Decoding is "parse, don't validate": a [`ScoreUpdate`] can only be built from a payload that meets
//! every rule of the contract, and every failure names one stable [`RejectReason`].

use chrono::DateTime;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

pub mod clock;

/// A valid score update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreUpdate {
    /// Publisher's id for the event; also its `Nats-Msg-Id`.
    pub event_id: String,
    pub profile_id: Uuid,
    /// `0x` + 40 hex digits, lower-case.
    pub wallet_address: String,
    pub leaderboard_id: String,
    /// The profile's absolute score on the leaderboard.
    pub score: i64,
    /// Event time in microseconds since the Unix epoch; also the write timestamp of every row.
    pub occurred_at_micros: i64,
}

impl ScoreUpdate {
    /// The key under which events coalesce and the leaderboard invariant holds.
    pub fn key(&self) -> (&str, Uuid) {
        (&self.leaderboard_id, self.profile_id)
    }

    /// True if `self` supersedes `other` for the same key: the newer event wins, and on a tie the one
    /// the database keeps for two cells with the same timestamp ([`tie_rank`]).
    pub fn supersedes(&self, other: &ScoreUpdate) -> bool {
        (self.occurred_at_micros, tie_rank(self.score))
            > (other.occurred_at_micros, tie_rank(other.score))
    }
}

/// The order of two scores written at the same microsecond, as the database decides it: by their
/// serialized bytes compared unsigned, which for a big-endian bigint is the order of its bits as `u64`
/// (negative scores rank above positive ones). It is a property of the event order the worker shares
/// with the database: coalescing, the clean-up's tie rule and the tests all use it.
pub fn tie_rank(score: i64) -> u64 {
    score as u64
}

/// Why a payload was rejected; the token is part of the dead-letter subject and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not parseable as JSON (includes invalid UTF-8 and nesting beyond the parser's limit).
    MalformedJson,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong type or a value out of range, or the body is not a JSON object.
    InvalidValue,
    /// The payload exceeds `validation.max_payload_bytes`.
    TooLarge,
    /// `occurred_at` lies more than `validation.max_clock_skew` after the message's arrival at
    /// JetStream (or, without one, after the receiver's clock).
    FutureTimestamp,
    /// NATS delivered the message `max_deliver` times without a successful write.
    MaxDeliveries,
    /// The database refused this event's values permanently while it took other writes (the
    /// database's message is in the dead letter's error header).
    WriteRejected,
    /// This event's key could not be written on any of its `max_deliver` deliveries while the
    /// database took other writes (a read-back past the tombstone threshold, a timeout on one
    /// oversized partition; the key and the database's message are in the error header).
    WriteFailed,
}

impl RejectReason {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [RejectReason; 8] = [
        Self::MalformedJson,
        Self::MissingField,
        Self::InvalidValue,
        Self::TooLarge,
        Self::FutureTimestamp,
        Self::MaxDeliveries,
        Self::WriteRejected,
        Self::WriteFailed,
    ];

    /// The stable token used in subjects and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::MissingField => "missing_field",
            Self::InvalidValue => "invalid_value",
            Self::TooLarge => "too_large",
            Self::FutureTimestamp => "future_timestamp",
            Self::MaxDeliveries => "max_deliveries",
            Self::WriteRejected => "write_rejected",
            Self::WriteFailed => "write_failed",
        }
    }

    /// Parses a token back (used by `dlq` tooling and tests).
    pub fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == token)
    }
}

/// A rejected payload: the reason and a human-readable explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload_bytes: usize,
    /// Refused beyond this after the reference time ([`decode`]).
    pub max_clock_skew_micros: i64,
    /// Written at most this after the message's arrival ([`clock::decode_arrived`]).
    pub max_ahead_of_arrival_micros: i64,
}

/// The fields of the contract; unknown fields are ignored by serde.
#[derive(Deserialize)]
struct Raw {
    event_id: Option<Value>,
    profile_id: Option<Value>,
    wallet_address: Option<Value>,
    leaderboard_id: Option<Value>,
    score: Option<Value>,
    occurred_at: Option<Value>,
}

/// Decodes and validates one payload. `now_micros` is the reference time `occurred_at` may be at most
/// `max_clock_skew` after: the message's arrival at JetStream, or the receiver's clock.
pub fn decode(payload: &[u8], limits: Limits, now_micros: i64) -> Result<ScoreUpdate, Rejection> {
    let raw = parse(payload, limits.max_payload_bytes)?;
    // Checked in this order: the first broken field is the one reported.
    Ok(ScoreUpdate {
        event_id: event_id(raw.event_id)?,
        profile_id: profile_id(raw.profile_id)?,
        wallet_address: wallet_address(raw.wallet_address)?,
        leaderboard_id: leaderboard_id(raw.leaderboard_id)?,
        score: score(raw.score)?,
        occurred_at_micros: occurred_at(raw.occurred_at, limits, now_micros)?,
    })
}

/// The payload as one JSON object of at most `max_bytes` bytes, its contract fields picked out.
fn parse(payload: &[u8], max_bytes: usize) -> Result<Raw, Rejection> {
    use RejectReason::*;
    if payload.len() > max_bytes {
        return Err(Rejection::new(
            TooLarge,
            format!(
                "payload is {} bytes, the limit is {max_bytes}",
                payload.len()
            ),
        ));
    }
    // serde_json skips the strings of ignored fields without checking them: check the whole body.
    if let Err(e) = std::str::from_utf8(payload) {
        return Err(Rejection::new(
            MalformedJson,
            format!("payload is not valid UTF-8: {e}"),
        ));
    }
    // Derived struct deserializers also accept a JSON array; the contract is one JSON object.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
                Ok(_) => Rejection::new(InvalidValue, "the body must be a JSON object"),
                Err(e) => Rejection::new(MalformedJson, e.to_string()),
            },
        );
    }
    match serde_json::from_slice(payload) {
        Ok(raw) => Ok(raw),
        // Well-formed JSON of the wrong shape, e.g. a duplicated field.
        Err(e) if e.is_data() => Err(Rejection::new(InvalidValue, e.to_string())),
        Err(e) => Err(Rejection::new(MalformedJson, e.to_string())),
    }
}

fn event_id(value: Option<Value>) -> Result<String, Rejection> {
    let event_id = string_field("event_id", value)?;
    if event_id.is_empty() || event_id.chars().count() > 128 {
        return Err(invalid("event_id must be 1-128 characters"));
    }
    if event_id.chars().any(char::is_control) {
        return Err(invalid("event_id contains control characters"));
    }
    Ok(event_id)
}

fn profile_id(value: Option<Value>) -> Result<Uuid, Rejection> {
    let profile_id = string_field("profile_id", value)?;
    Uuid::try_parse(&profile_id).map_err(|_| invalid("profile_id must be a UUID"))
}

/// `0x` and 40 hex digits, lowercased.
fn wallet_address(value: Option<Value>) -> Result<String, Rejection> {
    let wallet = string_field("wallet_address", value)?;
    let hex = wallet
        .strip_prefix("0x")
        .filter(|h| h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid("wallet_address must be 0x followed by 40 hex digits"))?;
    Ok(format!("0x{}", hex.to_ascii_lowercase()))
}

fn leaderboard_id(value: Option<Value>) -> Result<String, Rejection> {
    let leaderboard_id = string_field("leaderboard_id", value)?;
    if leaderboard_id.is_empty()
        || leaderboard_id.len() > 64
        || !leaderboard_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(invalid(
            "leaderboard_id must be 1-64 characters of [A-Za-z0-9_.-]",
        ));
    }
    Ok(leaderboard_id)
}

fn score(value: Option<Value>) -> Result<i64, Rejection> {
    match value {
        None | Some(Value::Null) => Err(missing("score")),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| invalid(format!("score must be a signed 64-bit integer, got {n}"))),
        Some(other) => Err(wrong_type("score", "an integer", &other)),
    }
}

/// RFC 3339 with an offset, after 1970 and at most `max_clock_skew` after `now_micros`.
fn occurred_at(value: Option<Value>, limits: Limits, now_micros: i64) -> Result<i64, Rejection> {
    let occurred_at = string_field("occurred_at", value)?;
    let occurred_at = DateTime::parse_from_rfc3339(&occurred_at)
        .map_err(|e| invalid(format!("occurred_at must be RFC 3339 with an offset: {e}")))?;
    let occurred_at_micros = occurred_at.timestamp_micros();
    if occurred_at_micros <= 0 {
        return Err(invalid("occurred_at must be after 1970-01-01"));
    }
    if occurred_at_micros > now_micros.saturating_add(limits.max_clock_skew_micros) {
        return Err(Rejection::new(
            RejectReason::FutureTimestamp,
            format!(
                "occurred_at {occurred_at} is more than {}s after the message's arrival (or the receiver's clock) {}",
                limits.max_clock_skew_micros / 1_000_000,
                DateTime::from_timestamp_micros(now_micros)
                    .map_or_else(|| now_micros.to_string(), |t| t.to_rfc3339())
            ),
        ));
    }
    Ok(occurred_at_micros)
}

fn invalid(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::InvalidValue, detail)
}

/// The fields of an update that did not come through NATS — an operator's repair, a PostgreSQL row —
/// each possibly absent. [`validate`] holds them to exactly the rules of a payload.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Fields {
    pub event_id: Option<String>,
    pub profile_id: Option<String>,
    pub wallet_address: Option<String>,
    pub leaderboard_id: Option<String>,
    /// A JSON number (or the text of one); anything else is an `invalid_value`.
    pub score: Option<Value>,
    /// RFC 3339 with an offset.
    pub occurred_at: Option<String>,
}

impl Fields {
    /// The score column's text as the contract's JSON value: an integer stays one, anything else
    /// (`1.5`, `abc`) is kept as a string and rejected as `invalid_value`.
    pub fn score_text(text: Option<&str>) -> Option<Value> {
        text.map(|t| match serde_json::from_str::<Value>(t.trim()) {
            Ok(Value::Number(n)) => Value::Number(n),
            _ => Value::String(t.to_string()),
        })
    }

    /// Event time in microseconds as the contract's RFC 3339 text.
    pub fn time_text(micros: Option<i64>) -> Option<String> {
        micros.map(|m| match DateTime::from_timestamp_micros(m) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            None => m.to_string(),
        })
    }
}

/// Validates fields from another source with the rules of [`decode`] (same reasons, same messages).
pub fn validate(
    fields: &Fields,
    limits: Limits,
    now_micros: i64,
) -> Result<ScoreUpdate, Rejection> {
    let payload = serde_json::to_vec(fields).expect("fields serialize");
    decode(&payload, limits, now_micros)
}

fn missing(field: &str) -> Rejection {
    Rejection::new(RejectReason::MissingField, format!("{field} is required"))
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> Rejection {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    Rejection::new(
        RejectReason::InvalidValue,
        format!("{field} must be {expected}, got {kind}"),
    )
}

fn string_field(field: &str, value: Option<Value>) -> Result<String, Rejection> {
    match value {
        None | Some(Value::Null) => Err(missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong_type(field, "a string", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RejectReason::*;

    const NOW: i64 = 1_780_000_000_000_000; // 2026-05-28
    const LIMITS: Limits = Limits {
        max_payload_bytes: 65_536,
        max_clock_skew_micros: 300_000_000,
        max_ahead_of_arrival_micros: 2_000_000,
    };

    fn good() -> serde_json::Map<String, Value> {
        serde_json::json!({
            "event_id": "evt-1",
            "profile_id": "6f1c2b1e-8c3a-4f7e-9a51-0c2d3e4f5a6b",
            "wallet_address": "0xAbCdEf0123456789abcdef0123456789ABCDEF01",
            "leaderboard_id": "season-1.global_x",
            "score": 1234,
            "occurred_at": "2026-05-28T08:00:00.123456+02:00",
            "extra": {"ignored": true}
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn with(field: &str, value: Value) -> Vec<u8> {
        let mut m = good();
        m.insert(field.into(), value);
        serde_json::to_vec(&m).unwrap()
    }

    fn without(field: &str) -> Vec<u8> {
        let mut m = good();
        m.remove(field);
        serde_json::to_vec(&m).unwrap()
    }

    fn reason(payload: &[u8]) -> Option<RejectReason> {
        decode(payload, LIMITS, NOW).err().map(|r| r.reason)
    }

    #[test]
    fn decodes_a_good_payload_and_normalises_it() {
        let u = decode(&serde_json::to_vec(&good()).unwrap(), LIMITS, NOW).unwrap();
        assert_eq!(u.event_id, "evt-1");
        assert_eq!(
            u.wallet_address,
            "0xabcdef0123456789abcdef0123456789abcdef01"
        );
        assert_eq!(u.score, 1234);
        assert_eq!(u.occurred_at_micros, 1_779_948_000_123_456);
    }

    #[test]
    fn table_of_bad_payloads() {
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(65_536));
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        let cases: Vec<(&str, Vec<u8>, RejectReason)> = vec![
            ("empty body", vec![], MalformedJson),
            ("truncated", b"{\"event_id\": \"a\"".to_vec(), MalformedJson),
            ("not json", b"hello".to_vec(), MalformedJson),
            (
                "invalid utf-8",
                b"{\"event_id\": \"\xff\xfe\"}".to_vec(),
                MalformedJson,
            ),
            ("deeply nested array body", deep.into_bytes(), InvalidValue),
            ("array body", b"[1,2,3]".to_vec(), InvalidValue),
            ("string body", b"\"x\"".to_vec(), InvalidValue),
            ("too large", big.into_bytes(), TooLarge),
            ("missing event_id", without("event_id"), MissingField),
            ("missing profile_id", without("profile_id"), MissingField),
            ("missing wallet", without("wallet_address"), MissingField),
            (
                "missing leaderboard",
                without("leaderboard_id"),
                MissingField,
            ),
            ("missing score", without("score"), MissingField),
            ("null score", with("score", Value::Null), MissingField),
            ("missing occurred_at", without("occurred_at"), MissingField),
            ("empty event_id", with("event_id", "".into()), InvalidValue),
            (
                "long event_id",
                with("event_id", "e".repeat(129).into()),
                InvalidValue,
            ),
            (
                "control char in event_id",
                with("event_id", "a\u{0}b".into()),
                InvalidValue,
            ),
            ("numeric event_id", with("event_id", 7.into()), InvalidValue),
            (
                "bad uuid",
                with("profile_id", "not-a-uuid".into()),
                InvalidValue,
            ),
            (
                "short wallet",
                with("wallet_address", "0x1234".into()),
                InvalidValue,
            ),
            (
                "wallet without 0x",
                with("wallet_address", "ab".repeat(21).into()),
                InvalidValue,
            ),
            (
                "non-hex wallet",
                with("wallet_address", format!("0x{}", "g".repeat(40)).into()),
                InvalidValue,
            ),
            (
                "empty leaderboard",
                with("leaderboard_id", "".into()),
                InvalidValue,
            ),
            (
                "leaderboard with space",
                with("leaderboard_id", "a b".into()),
                InvalidValue,
            ),
            (
                "long leaderboard",
                with("leaderboard_id", "l".repeat(65).into()),
                InvalidValue,
            ),
            (
                "float score",
                with("score", serde_json::json!(1.5)),
                InvalidValue,
            ),
            (
                "integral float score",
                with("score", serde_json::json!(10.0)),
                InvalidValue,
            ),
            ("string score", with("score", "10".into()), InvalidValue),
            (
                "score above i64",
                with("score", serde_json::json!(u64::MAX)),
                InvalidValue,
            ),
            ("bool score", with("score", true.into()), InvalidValue),
            (
                "timestamp without offset",
                with("occurred_at", "2026-05-28T08:00:00".into()),
                InvalidValue,
            ),
            (
                "timestamp garbage",
                with("occurred_at", "yesterday".into()),
                InvalidValue,
            ),
            (
                "timestamp before epoch",
                with("occurred_at", "1960-01-01T00:00:00Z".into()),
                InvalidValue,
            ),
            (
                "timestamp far future",
                with("occurred_at", "2999-01-01T00:00:00Z".into()),
                FutureTimestamp,
            ),
        ];
        for (name, payload, expected) in cases {
            assert_eq!(reason(&payload), Some(expected), "case: {name}");
        }
    }

    #[test]
    fn huge_number_literal_is_rejected_not_fatal() {
        let mut s = String::from_utf8(serde_json::to_vec(&good()).unwrap()).unwrap();
        s = s.replace("1234", &"9".repeat(400));
        assert!(matches!(
            reason(s.as_bytes()),
            Some(InvalidValue | MalformedJson)
        ));
    }

    #[test]
    fn clock_skew_boundary() {
        let at = |micros: i64| {
            let t = DateTime::from_timestamp_micros(micros)
                .unwrap()
                .to_rfc3339();
            with("occurred_at", t.into())
        };
        assert_eq!(reason(&at(NOW + LIMITS.max_clock_skew_micros)), None);
        assert_eq!(
            reason(&at(NOW + LIMITS.max_clock_skew_micros + 1)),
            Some(FutureTimestamp)
        );
    }

    #[test]
    fn limits_extremes_of_score_are_accepted() {
        for s in [i64::MIN, i64::MAX, 0] {
            let u = decode(&with("score", s.into()), LIMITS, NOW).unwrap();
            assert_eq!(u.score, s);
        }
    }

    #[test]
    fn reason_tokens_round_trip() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn supersedes_orders_by_time_then_score() {
        let base = decode(&serde_json::to_vec(&good()).unwrap(), LIMITS, NOW).unwrap();
        let mut later = base.clone();
        later.occurred_at_micros += 1;
        later.score = -5;
        assert!(later.supersedes(&base));
        let mut tie_higher = base.clone();
        tie_higher.score += 1;
        assert!(tie_higher.supersedes(&base));
        assert!(!base.supersedes(&base));
        let mut tie_negative = base.clone();
        tie_negative.score = -1;
        assert!(
            tie_negative.supersedes(&base),
            "the database ranks negative bigints above positive ones in a tie"
        );
    }
}

#[cfg(test)]
mod proptests;
