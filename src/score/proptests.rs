//! Property-based tests of [`decode`] (issue #4, "hostile input"): it never panics, whatever
//! the bytes; every valid event decodes to exactly its values; every rejection names a reason
//! of [`RejectReason::ALL`] with a non-empty detail.
//!
//! Each property runs `DEFAULT_CASES` cases, sized to keep the module well under 30 s in a
//! debug build (the cheap arbitrary-bytes property runs `BYTES_SCALE` times as many).
//! `SCORE_WORKER_PROPTEST_CASES=N` sets that base to N for longer runs; `PROPTEST_RNG_SEED`
//! fixes the seed. Run with `--nocapture` to see the executions of each property.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{FixedOffset, SecondsFormat};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Map, Number};

use super::*;

const NOW: i64 = 1_780_000_000_000_000; // 2026-05-28
const LIMITS: Limits = Limits {
    max_payload_bytes: 65_536,
    max_clock_skew_micros: 300_000_000,
    max_ahead_of_arrival_micros: 2_000_000,
};
const FIELDS: [&str; 6] = [
    "event_id",
    "profile_id",
    "wallet_address",
    "leaderboard_id",
    "score",
    "occurred_at",
];
const DEFAULT_CASES: u32 = 2_000;
const BYTES_SCALE: u32 = 5;

/// `scale` × the base number of cases.
fn config(scale: u32) -> ProptestConfig {
    let base: u32 = match std::env::var("SCORE_WORKER_PROPTEST_CASES") {
        Ok(n) => n
            .parse()
            .expect("SCORE_WORKER_PROPTEST_CASES must be a number of cases"),
        Err(_) => DEFAULT_CASES,
    };
    ProptestConfig {
        cases: base.saturating_mul(scale),
        // Never write regression files into the tree; a failure prints the minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs one property, counting every execution (shrinking included) in `count`.
fn run<S>(
    name: &str,
    count: &'static AtomicU64,
    scale: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let result = TestRunner::new(config(scale)).run(&strategy, |value| {
        count.fetch_add(1, Ordering::Relaxed);
        test(value)
    });
    eprintln!(
        "proptest {name}: {} executions",
        count.load(Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("property {name} failed: {e}");
    }
}

/// Property (c), checked on every outcome of every property.
fn well_formed(outcome: &Result<ScoreUpdate, Rejection>) -> Result<(), TestCaseError> {
    if let Err(r) = outcome {
        prop_assert!(
            RejectReason::ALL.contains(&r.reason)
                && RejectReason::parse(r.reason.as_str()) == Some(r.reason),
            "reason {:?} is not one of RejectReason::ALL",
            r.reason
        );
        prop_assert_ne!(
            r.reason,
            RejectReason::MaxDeliveries,
            "decode never gives max_deliveries"
        );
        prop_assert!(
            !r.detail.trim().is_empty(),
            "empty detail for {:?}",
            r.reason
        );
    }
    Ok(())
}

// ---- strategies

/// Arbitrary bytes: mostly short, some JSON-ish, some around and beyond the size limit (up to
/// ~70 KB).
fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    let json_ish =
        select(b"{}[]\":,.-+eE0123456789 \t\n\\/nulltruefalse\x00\x7f\xc3\xa9\xff".to_vec());
    prop_oneof![
        8 => vec(any::<u8>(), 0..256),
        6 => vec(json_ish, 0..512),
        2 => vec(any::<u8>(), 256..4096),
        // Large inputs from a seed: per-byte strategies would dominate the run time.
        1 => (60_000usize..70_001, any::<u64>(), any::<bool>()).prop_map(|(len, seed, json)| {
            let mut x = seed | 1;
            let alphabet = b"{}[]\":,0123456789 ";
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if json { alphabet[(x % alphabet.len() as u64) as usize] } else { x as u8 }
                })
                .collect()
        }),
    ]
}

/// Any JSON value, biased towards the contract's field names as keys.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        "(0x)?[0-9a-fA-F-]{0,44}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(&FIELDS[..]).prop_map(String::from),
        1 => any::<String>(),
    ]
}

/// A valid event, written in one of the many ways the contract allows.
#[derive(Debug, Clone)]
struct Valid {
    event_id: String,
    profile: [u8; 16],
    profile_upper: bool,
    wallet: [u8; 20],
    /// Bit i set: hex digit i is upper case.
    wallet_case: u64,
    leaderboard: String,
    score: i64,
    micros: i64,
    offset_minutes: i32,
    precision: usize,
    use_z: bool,
    order: Vec<usize>,
    space: &'static str,
    extra: Vec<(String, Value)>,
}

const PRECISIONS: [SecondsFormat; 5] = [
    SecondsFormat::Secs,
    SecondsFormat::Millis,
    SecondsFormat::Micros,
    SecondsFormat::Nanos,
    SecondsFormat::AutoSi,
];

impl Valid {
    /// The event time as the payload states it, in µs (what `decode` must return).
    fn expected_micros(&self) -> i64 {
        match PRECISIONS[self.precision] {
            SecondsFormat::Secs => self.micros - self.micros % 1_000_000,
            SecondsFormat::Millis => self.micros - self.micros % 1_000,
            _ => self.micros,
        }
    }

    fn occurred_at(&self) -> String {
        let offset = FixedOffset::east_opt(self.offset_minutes * 60).unwrap();
        DateTime::from_timestamp_micros(self.micros)
            .unwrap()
            .with_timezone(&offset)
            .to_rfc3339_opts(PRECISIONS[self.precision], self.use_z)
    }

    fn wallet_text(&self) -> String {
        let hex: String = self.wallet.iter().map(|b| format!("{b:02x}")).collect();
        let digits: String = hex
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if self.wallet_case >> i & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        format!("0x{digits}")
    }

    fn profile_text(&self) -> String {
        let p = Uuid::from_bytes(self.profile).hyphenated().to_string();
        if self.profile_upper {
            p.to_ascii_uppercase()
        } else {
            p
        }
    }

    /// The six fields (JSON values), in contract order.
    fn values(&self) -> [Value; 6] {
        [
            self.event_id.clone().into(),
            self.profile_text().into(),
            self.wallet_text().into(),
            self.leaderboard.clone().into(),
            self.score.into(),
            self.occurred_at().into(),
        ]
    }

    fn object(&self) -> Map<String, Value> {
        let mut m: Map<String, Value> = self
            .extra
            .iter()
            .filter(|(k, _)| !FIELDS.contains(&k.as_str()))
            .cloned()
            .collect();
        for (field, value) in FIELDS.iter().zip(self.values()) {
            m.insert(field.to_string(), value);
        }
        m
    }

    /// The payload: fields in `order`, unknown fields after them, `space` around the tokens.
    fn payload(&self) -> Vec<u8> {
        let values = self.values();
        let s = self.space;
        let mut parts: Vec<String> = self
            .order
            .iter()
            .map(|&i| format!("{s}\"{}\"{s}:{s}{}{s}", FIELDS[i], values[i]))
            .collect();
        parts.extend(
            self.extra
                .iter()
                .filter(|(k, _)| !FIELDS.contains(&k.as_str()))
                .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str()))),
        );
        format!("{s}{{{}}}{s}", parts.join(",")).into_bytes()
    }
}

fn valid() -> impl Strategy<Value = Valid> {
    let max_offset = 23 * 60 + 59;
    (
        (
            "[^\\p{Cc}]{1,128}",
            any::<[u8; 16]>(),
            any::<bool>(),
            any::<[u8; 20]>(),
            any::<u64>(),
            "[A-Za-z0-9_.-]{1,64}",
            any::<i64>(),
        ),
        (
            prop_oneof![
                1 => 1_000_000i64..=1_000_000_000,
                8 => 1_000_000i64..=NOW + LIMITS.max_clock_skew_micros,
                1 => NOW - 1_000_000..=NOW + LIMITS.max_clock_skew_micros,
            ],
            -max_offset..=max_offset,
            0..PRECISIONS.len(),
            any::<bool>(),
            Just((0..FIELDS.len()).collect::<Vec<usize>>()).prop_shuffle(),
            select(vec!["", " ", "\n", "\t ", "\r\n  "]),
            vec(("x-[a-z]{0,6}", json_value()), 0..3),
        ),
    )
        .prop_map(
            |(
                (event_id, profile, profile_upper, wallet, wallet_case, leaderboard, score),
                (micros, offset_minutes, precision, use_z, order, space, extra),
            )| Valid {
                event_id,
                profile,
                profile_upper,
                wallet,
                wallet_case,
                leaderboard,
                score,
                micros,
                offset_minutes,
                precision,
                use_z,
                order,
                space,
                extra,
            },
        )
}

/// One change to a valid payload.
#[derive(Debug, Clone)]
enum Mutation {
    /// Remove a field.
    Delete(usize),
    /// Give a field any JSON value (a type swap, most of the time).
    Retype(usize, Value),
    /// Give a field raw JSON-ish text, valid or not.
    Raw(usize, String),
    FlipByte(Index, u8),
    InsertByte(Index, u8),
    DeleteByte(Index),
    Truncate(Index),
    /// Repeat a stretch of the payload in place.
    Duplicate(Index, Index),
}

const RAW_TOKENS: &[&str] = &[
    "-0",
    "1e400",
    "-1e400",
    "1.0",
    "1e2",
    "9223372036854775808",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "NaN",
    "Infinity",
    "0x10",
    "01",
    "+1",
    "1.",
    ".5",
    "-",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\uDC00\\uD800\"",
    "\"\\x\"",
    "[]",
    "{}",
    "[[[[",
    "null",
    "true",
    "\"1970-01-01T00:00:00Z\"",
    "\"9999-12-31T23:59:59Z\"",
    "\"1969-12-31T23:59:59.999999Z\"",
    "\"0X0000000000000000000000000000000000000000\"",
    "\"{6f1c2b1e-8c3a-4f7e-9a51-0c2d3e4f5a6b}\"",
    "\"urn:uuid:6f1c2b1e-8c3a-4f7e-9a51-0c2d3e4f5a6b\"",
];

fn raw_token() -> impl Strategy<Value = String> {
    prop_oneof![
        select(RAW_TOKENS).prop_map(String::from),
        "[-+.eE0-9\"\\[\\]{}a-z]{0,12}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let field = 0..FIELDS.len();
    prop_oneof![
        2 => field.clone().prop_map(Mutation::Delete),
        3 => (field.clone(), json_value()).prop_map(|(f, v)| Mutation::Retype(f, v)),
        2 => (field.clone(), raw_token()).prop_map(|(f, raw)| Mutation::Raw(f, raw)),
        3 => (any::<Index>(), 1u8..).prop_map(|(i, mask)| Mutation::FlipByte(i, mask)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::InsertByte(i, b)),
        1 => any::<Index>().prop_map(Mutation::DeleteByte),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
    ]
}

/// Applies the field mutations to the object, then the byte mutations to its serialization.
fn mutate(valid: &Valid, mutations: &[Mutation]) -> Vec<u8> {
    let mut object = valid.object();
    let mut raws = Vec::new();
    for m in mutations {
        match m {
            Mutation::Delete(f) => {
                object.remove(FIELDS[*f]);
            }
            Mutation::Retype(f, v) => {
                object.insert(FIELDS[*f].into(), v.clone());
            }
            Mutation::Raw(f, raw) => {
                let marker = format!("@@raw{}@@", raws.len());
                object.insert(FIELDS[*f].into(), marker.clone().into());
                raws.push((format!("\"{marker}\""), raw.clone()));
            }
            _ => {}
        }
    }
    let mut text = serde_json::to_string(&object).unwrap();
    for (marker, raw) in &raws {
        text = text.replace(marker.as_str(), raw);
    }
    let mut bytes = text.into_bytes();
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::FlipByte(i, mask) if len > 0 => bytes[i.index(len)] ^= mask,
            Mutation::InsertByte(i, b) => bytes.insert(i.index(len + 1), *b),
            Mutation::DeleteByte(i) if len > 0 => {
                bytes.remove(i.index(len));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
            Mutation::Duplicate(a, b) if len > 0 => {
                let (a, b) = (a.index(len), b.index(len));
                let (start, end) = (a.min(b), a.max(b) + 1);
                let stretch = bytes[start..end].to_vec();
                bytes.splice(end..end, stretch);
            }
            _ => {}
        }
    }
    bytes
}

// ---- properties

static NEVER_PANICS_ON_BYTES: AtomicU64 = AtomicU64::new(0);
static NEVER_PANICS_ON_JSON: AtomicU64 = AtomicU64::new(0);
static NEVER_PANICS_ON_MUTATIONS: AtomicU64 = AtomicU64::new(0);
static VALID_EVENTS_DECODE_EXACTLY: AtomicU64 = AtomicU64::new(0);
static ONE_MISSING_FIELD: AtomicU64 = AtomicU64::new(0);

#[test]
fn decode_never_panics_on_arbitrary_bytes() {
    run(
        "decode_never_panics_on_arbitrary_bytes",
        &NEVER_PANICS_ON_BYTES,
        BYTES_SCALE,
        arbitrary_bytes(),
        |bytes| {
            let outcome = decode(&bytes, LIMITS, NOW);
            if bytes.len() > LIMITS.max_payload_bytes {
                prop_assert_eq!(
                    outcome.as_ref().err().map(|r| r.reason),
                    Some(RejectReason::TooLarge)
                );
            }
            well_formed(&outcome)
        },
    );
}

#[test]
fn decode_never_panics_on_arbitrary_json() {
    // Any JSON value, or an object whose six fields are each valid, arbitrary or absent.
    let fields = vec(
        prop_oneof![
            Just(None),
            json_value().prop_map(Some),
            Just(Some(Value::Bool(true)))
        ],
        FIELDS.len(),
    );
    let strategy = prop_oneof![
        json_value(),
        (valid(), fields).prop_map(|(valid, fields)| {
            let mut object = valid.object();
            for ((name, field), keep) in FIELDS.iter().zip(fields).zip(valid.values()) {
                match field {
                    None => {
                        object.remove(*name);
                    }
                    Some(Value::Bool(true)) => {
                        object.insert(name.to_string(), keep);
                    }
                    Some(v) => {
                        object.insert(name.to_string(), v);
                    }
                }
            }
            Value::Object(object)
        }),
    ];
    run(
        "decode_never_panics_on_arbitrary_json",
        &NEVER_PANICS_ON_JSON,
        1,
        strategy,
        |value| {
            let compact = serde_json::to_vec(&value).unwrap();
            well_formed(&decode(&compact, LIMITS, NOW))?;
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            well_formed(&decode(&pretty, LIMITS, NOW))
        },
    );
}

#[test]
fn decode_never_panics_on_mutated_valid_payloads() {
    run(
        "decode_never_panics_on_mutated_valid_payloads",
        &NEVER_PANICS_ON_MUTATIONS,
        1,
        (valid(), vec(mutation(), 1..5)),
        |(valid, mutations)| well_formed(&decode(&mutate(&valid, &mutations), LIMITS, NOW)),
    );
}

#[test]
fn valid_events_decode_to_exactly_their_values() {
    run(
        "valid_events_decode_to_exactly_their_values",
        &VALID_EVENTS_DECODE_EXACTLY,
        1,
        valid(),
        |valid| {
            let payload = valid.payload();
            let outcome = decode(&payload, LIMITS, NOW);
            well_formed(&outcome)?;
            let update = match outcome {
                Ok(update) => update,
                Err(r) => {
                    return Err(TestCaseError::fail(format!(
                        "valid payload rejected: {r}: {}",
                        String::from_utf8_lossy(&payload)
                    )))
                }
            };
            let want_wallet = format!("0x{}", valid.wallet_text()[2..].to_ascii_lowercase());
            prop_assert_eq!(&update.event_id, &valid.event_id);
            prop_assert_eq!(update.profile_id, Uuid::from_bytes(valid.profile));
            prop_assert_eq!(&update.wallet_address, &want_wallet);
            prop_assert_eq!(&update.leaderboard_id, &valid.leaderboard);
            prop_assert_eq!(update.score, valid.score);
            prop_assert_eq!(update.occurred_at_micros, valid.expected_micros());
            Ok(())
        },
    );
}

#[test]
fn one_missing_or_null_field_is_missing_field() {
    run(
        "one_missing_or_null_field_is_missing_field",
        &ONE_MISSING_FIELD,
        1,
        (valid(), 0..FIELDS.len(), any::<bool>()),
        |(valid, field, null)| {
            let mut object = valid.object();
            if null {
                object.insert(FIELDS[field].into(), Value::Null);
            } else {
                object.remove(FIELDS[field]);
            }
            let outcome = decode(&serde_json::to_vec(&object).unwrap(), LIMITS, NOW);
            well_formed(&outcome)?;
            let rejection = outcome.err();
            prop_assert_eq!(
                rejection.as_ref().map(|r| r.reason),
                Some(RejectReason::MissingField)
            );
            prop_assert!(rejection.unwrap().detail.contains(FIELDS[field]));
            Ok(())
        },
    );
}
