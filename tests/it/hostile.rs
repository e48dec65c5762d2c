//! Hostile input (issue #4): every payload of `tests/corpus/bad/` and of [`generated_cases`],
//! plus valid events at the edges of the contract ([`edge_goods`]), interleaved with ordinary good
//! events through ONE live worker. Every bad payload is dead-lettered exactly once, with its reason
//! and its original bytes (their start, past `validation.max_payload_bytes`); every good one is
//! written; the worker never restarts.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rand::Rng;
use score_worker::cmd::sample;
use score_worker::config::Config;
use score_worker::deadletter;
use score_worker::score::{decode, Limits, RejectReason};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::support::*;

/// The valid event every corpus payload is a variation of (see `tests/corpus/README.md`).
const TEMPLATE: &str = concat!(
    r#"{"event_id":"evt-hostile-1","profile_id":"6f1c2b1e-8c3a-4f7e-9a51-0c2d3e4f5a6b","#,
    r#""wallet_address":"0x6f1c2b1e8c3a4f7e9a510c2d3e4f5a6b6f1c2b1e","#,
    r#""leaderboard_id":"hostile-corpus","score":1234,"#,
    r#""occurred_at":"2025-06-01T12:00:00.000000Z"}"#,
);
const TEMPLATE_PROFILE: &str = "6f1c2b1e-8c3a-4f7e-9a51-0c2d3e4f5a6b";
const TEMPLATE_BOARD: &str = "hostile-corpus";
const TEMPLATE_SCORE: i64 = 1234;

/// Where the decoder deviates from the wire contract in README.md today: (case, current outcome —
/// `None` = accepted and written, `Some(reason)` = dead-lettered —, why). A case's name keeps the
/// outcome the contract calls for; both tests assert the *current* one, so a fix to `src/score.rs`
/// fails here with a message pointing at the entry to delete.
const KNOWN_DEVIATIONS: &[(&str, Option<RejectReason>, &str)] = &[(
    "good--score-negative-zero-integer",
    Some(RejectReason::InvalidValue),
    "`\"score\": -0` is a JSON integer (RFC 8259: no fraction, no exponent) and 0 fits in i64, \
         but serde_json parses it as the float -0.0, so it is rejected as invalid_value",
)];

/// One payload and what must become of it.
struct Case {
    /// `<reason>--<description>.json|.bin` for bad payloads, `good--<description>` for valid ones.
    name: String,
    payload: Vec<u8>,
    /// What the contract calls for: `Some(reason)` = dead-lettered, `None` = accepted and written.
    contract: Option<RejectReason>,
    /// For a valid case, the event it writes.
    event: Option<Event>,
}

impl Case {
    fn bad(name: &str, payload: impl Into<Vec<u8>>) -> Case {
        Case {
            name: name.to_string(),
            payload: payload.into(),
            contract: Some(reason_of(name)),
            event: None,
        }
    }

    fn good(name: &str, event: Event, payload: Vec<u8>) -> Case {
        Case {
            name: format!("good--{name}"),
            payload,
            contract: None,
            event: Some(event),
        }
    }

    /// The same case with its payload rewritten.
    fn map_payload(mut self, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Case {
        let before = self.payload.clone();
        self.payload = f(std::mem::take(&mut self.payload));
        assert_ne!(before, self.payload, "{}: edit changed nothing", self.name);
        self
    }

    /// What the worker does with it today.
    fn current(&self) -> Option<RejectReason> {
        deviation(&self.name).map_or(self.contract, |(current, _)| current)
    }
}

fn deviation(name: &str) -> Option<(Option<RejectReason>, &'static str)> {
    KNOWN_DEVIATIONS
        .iter()
        .find(|(case, ..)| *case == name)
        .map(|(_, current, why)| (*current, *why))
}

fn outcome(o: Option<RejectReason>) -> &'static str {
    o.map_or("accepted", RejectReason::as_str)
}

/// The reason a corpus file name promises.
fn reason_of(name: &str) -> RejectReason {
    let (token, rest) = name
        .split_once("--")
        .unwrap_or_else(|| panic!("{name}: corpus names are <reason>--<description>.json|.bin"));
    assert!(
        rest.len() > 5 && (rest.ends_with(".json") || rest.ends_with(".bin")),
        "{name}: corpus names are <reason>--<description>.json|.bin"
    );
    match RejectReason::parse(token) {
        Some(RejectReason::MaxDeliveries) | None => {
            panic!("{name}: {token:?} is not a reason the decoder gives")
        }
        Some(reason) => reason,
    }
}

/// The files of `tests/corpus/bad/`, byte for byte, sorted by name.
fn stored_cases() -> Vec<Case> {
    let dir = xtask::environments::root().join("tests/corpus/bad");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut cases: Vec<Case> = entries
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let payload = std::fs::read(&path).unwrap();
            if name.ends_with(".json") {
                assert!(
                    std::str::from_utf8(&payload).is_ok(),
                    "{name}: .json files hold UTF-8 text; name it .bin"
                );
            }
            Case::bad(&name, payload)
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

fn rfc3339(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// [`TEMPLATE`] with `field` set to the raw JSON text `raw`.
fn template_with_raw(field: &str, raw: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(TEMPLATE).unwrap();
    v[field] = "@@RAW@@".into();
    v.to_string().replace("\"@@RAW@@\"", raw).into_bytes()
}

/// `body` (a JSON object) with spaces before its closing brace, `len` bytes in all.
fn padded(body: &[u8], len: usize) -> Vec<u8> {
    assert!(body.len() < len && body.last() == Some(&b'}'));
    let mut out = body[..body.len() - 1].to_vec();
    out.resize(len - 1, b' ');
    out.push(b'}');
    out
}

/// `body` (a JSON object) with `fields` (raw JSON text, starting with a comma) before its closing
/// brace.
fn with_raw_fields(body: &[u8], fields: &str) -> Vec<u8> {
    assert_eq!(body.last(), Some(&b'}'));
    let mut out = body[..body.len() - 1].to_vec();
    out.extend_from_slice(fields.as_bytes());
    out.push(b'}');
    out
}

fn nested(depth: usize, open: &str, inner: &str, close: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

/// Bad payloads computed at run time (sizes from the limit, times relative to `now`, nesting
/// depths), named like the files of `tests/corpus/bad/`.
fn generated_cases(now: DateTime<Utc>, limits: Limits) -> Vec<Case> {
    let limit = limits.max_payload_bytes;
    let now = now.timestamp_micros();
    let skew = limits.max_clock_skew_micros;
    let at = |micros: i64| template_with_raw("occurred_at", &format!("\"{}\"", rfc3339(micros)));
    let day = 86_400_000_000i64;
    let tomorrow_minus_12 = DateTime::from_timestamp_micros(now + day)
        .unwrap()
        .with_timezone(&chrono::FixedOffset::west_opt(12 * 3600).unwrap())
        .to_rfc3339();
    let mut random = vec![0u8; limit + 1];
    rand::rng().fill(&mut random[..]);
    let control_chars: String = (0u8..32).map(char::from).collect();
    vec![
        Case::bad(
            "too_large--limit-plus-1-bytes-valid-event-padded.json",
            padded(TEMPLATE.as_bytes(), limit + 1),
        ),
        Case::bad(
            "too_large--limit-plus-1-bytes-of-x.json",
            vec![b'x'; limit + 1],
        ),
        Case::bad("too_large--limit-plus-1-random-bytes.bin", random),
        Case::bad("too_large--70000-open-brackets.json", "[".repeat(70_000)),
        Case::bad(
            "too_large--1000000-bytes-near-nats-max-payload.json",
            padded(TEMPLATE.as_bytes(), 1_000_000),
        ),
        Case::bad(
            "future_timestamp--now-plus-skew-plus-2-minutes.json",
            at(now + skew + 120_000_000),
        ),
        Case::bad(
            "future_timestamp--now-plus-1-day-in-minus-12-00-offset.json",
            template_with_raw("occurred_at", &format!("\"{tomorrow_minus_12}\"")),
        ),
        Case::bad(
            "future_timestamp--now-plus-1-year.json",
            at(now + 366 * day),
        ),
        Case::bad(
            "invalid_value--1000-nested-arrays.json",
            nested(1000, "[", "", "]"),
        ),
        Case::bad(
            "malformed_json--1000-nested-objects-in-score.json",
            template_with_raw("score", &nested(1000, "{\"a\":", "1", "}")),
        ),
        Case::bad(
            "malformed_json--200-nested-arrays-in-event-id.json",
            template_with_raw("event_id", &nested(200, "[", "\"x\"", "]")),
        ),
        Case::bad(
            "invalid_value--100-nested-arrays.json",
            nested(100, "[", "", "]"),
        ),
        Case::bad(
            "missing_field--30000-nested-arrays-in-unknown-field-only.json",
            format!("{{\"extra\":{}}}", nested(30_000, "[", "", "]")),
        ),
        Case::bad(
            "invalid_value--event-id-every-c0-control-char.json",
            template_with_raw("event_id", &Value::from(control_chars).to_string()),
        ),
    ]
}

/// Valid events at the edges of the contract, each on a profile of its own on `board`, with the
/// exact bytes to publish: far-past times, odd but valid RFC 3339, extreme scores, exactly the size
/// limit, unknown fields of every kind, deep nesting where it is ignored.
fn edge_goods(board: &str, now: DateTime<Utc>, limits: Limits) -> Vec<Case> {
    let recent = now.timestamp_micros() - 30_000_000;
    let utc = |y, mo, d, h, mi, s, us| {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_micro_opt(h, mi, s, us)
            .unwrap()
            .and_utc()
            .timestamp_micros()
    };
    let event = |score: i64, at_micros: i64| {
        let profile = Uuid::new_v4();
        Event::new(
            format!("edge-{}", Uuid::new_v4().simple()),
            profile,
            board,
            score,
            at_micros,
        )
    };
    // The event as a JSON object, `occurred_at` as given (None: the event's time in µs, UTC).
    let object = |e: &Event, occurred_at: Option<&str>| -> Map<String, Value> {
        let at = occurred_at.map_or_else(|| rfc3339(e.at_micros), str::to_string);
        let v = json!({
            "event_id": e.event_id,
            "profile_id": e.profile.to_string(),
            "wallet_address": e.wallet,
            "leaderboard_id": e.leaderboard,
            "score": e.score,
            "occurred_at": at,
        });
        v.as_object().unwrap().clone()
    };
    let bytes = |m: &Map<String, Value>| serde_json::to_vec(m).unwrap();
    let timed = |name: &str, score: i64, at_micros: i64, occurred_at: &str| {
        let e = event(score, at_micros);
        let payload = bytes(&object(&e, Some(occurred_at)));
        Case::good(name, e, payload)
    };
    let edited = |name: &str, e: Event, edit: &dyn Fn(&mut Map<String, Value>)| {
        let mut m = object(&e, None);
        edit(&mut m);
        let payload = bytes(&m);
        Case::good(name, e, payload)
    };
    let raw = |name: &str, e: Event, edit: &dyn Fn(Vec<u8>) -> Vec<u8>| {
        let payload = edit(bytes(&object(&e, None)));
        Case::good(name, e, payload)
    };

    let mut unicode_id = event(11, recent);
    unicode_id.event_id = "\u{e9}".repeat(128);
    let within_skew = now.timestamp_micros() + limits.max_clock_skew_micros / 2;
    vec![
        timed(
            "far-past-1us-after-epoch",
            1,
            1,
            "1970-01-01T00:00:00.000001Z",
        ),
        timed(
            "far-past-1us-after-epoch-in-plus-01-00",
            2,
            1,
            "1970-01-01T01:00:00.000001+01:00",
        ),
        timed(
            "far-past-1999-in-minus-12-00",
            3,
            utc(2000, 1, 1, 11, 59, 59, 999_999),
            "1999-12-31T23:59:59.999999-12:00",
        ),
        timed(
            "lower-case-t-and-z",
            4,
            utc(2024, 2, 29, 12, 0, 0, 500_000),
            "2024-02-29t12:00:00.5z",
        ),
        timed(
            "space-instead-of-t",
            5,
            utc(2024, 2, 29, 12, 0, 0, 0),
            "2024-02-29 12:00:00Z",
        ),
        timed(
            "nanoseconds-truncated-to-micros",
            6,
            utc(2024, 2, 29, 12, 0, 0, 123_456),
            "2024-02-29T12:00:00.123456789Z",
        ),
        timed(
            "leap-second",
            7,
            utc(2017, 1, 1, 0, 0, 0, 0),
            "2016-12-31T23:59:60Z",
        ),
        timed("within-clock-skew", 8, within_skew, &rfc3339(within_skew)),
        edited("score-i64-min", event(i64::MIN, recent), &|_| {}),
        edited("score-i64-max", event(i64::MAX, recent), &|_| {}),
        edited("event-id-128-multibyte-chars", unicode_id, &|_| {}),
        edited("upper-case-wallet-hex", event(12, recent), &|m| {
            let w = m["wallet_address"].as_str().unwrap();
            let upper = format!("0x{}", w[2..].to_ascii_uppercase());
            m.insert("wallet_address".into(), upper.into());
        }),
        edited("upper-case-profile-id", event(13, recent), &|m| {
            let p = m["profile_id"].as_str().unwrap().to_ascii_uppercase();
            m.insert("profile_id".into(), p.into());
        }),
        raw("exactly-the-size-limit", event(14, recent), &|b| {
            padded(&b, limits.max_payload_bytes)
        }),
        raw(
            "unknown-fields-of-every-kind-pretty-printed",
            event(15, recent),
            &|b| {
                let pretty =
                    serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&b).unwrap())
                        .unwrap();
                with_raw_fields(
                    &pretty,
                    ",\n  \"x-null\": null, \"x-bool\": false, \"x-float\": -1.5e-300,\
                     \n  \"x-huge\": 1e400, \"x-digits\": 123456789012345678901234567890,\
                     \n  \"x-lone-surrogate\": \"\\ud800\", \"x-escapes\": \"\\u0000\\n\\t\",\
                     \n  \"x-nested\": {\"a\": [1, {\"b\": [true, null]}]},\
                     \n  \"x-dup\": 1, \"x-dup\": 2\n",
                )
            },
        ),
        raw(
            "20000-nested-arrays-in-unknown-field",
            event(16, recent),
            &|b| with_raw_fields(&b, &format!(",\"extra\":{}", nested(20_000, "[", "", "]"))),
        ),
        raw(
            "leaderboard-id-with-unicode-escapes",
            event(17, recent),
            &|b| {
                let text = String::from_utf8(b).unwrap();
                let (head, tail) = text.split_once("\"leaderboard_id\":\"").unwrap();
                let escaped: String = tail[..3]
                    .chars()
                    .map(|c| format!("\\u{:04x}", c as u32))
                    .collect();
                format!("{head}\"leaderboard_id\":\"{escaped}{}", &tail[3..]).into_bytes()
            },
        ),
        edited("score-negative-zero-integer", event(0, recent), &|_| {}).map_payload(|b| {
            let text = String::from_utf8(b).unwrap();
            text.replace("\"score\":0", "\"score\":-0").into_bytes()
        }),
    ]
}

/// The whole corpus: stored files, generated bad payloads, valid edge cases.
fn corpus(now: DateTime<Utc>, limits: Limits, board: &str) -> Vec<Case> {
    let mut cases = stored_cases();
    cases.extend(generated_cases(now, limits));
    cases.extend(edge_goods(board, now, limits));
    let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    for (name, ..) in KNOWN_DEVIATIONS {
        assert!(
            names.contains(name),
            "KNOWN_DEVIATIONS names {name}, which is not a case"
        );
    }
    cases
}

fn limits_of(config: &Config) -> Limits {
    config.limits()
}

fn count_bad(cases: &[Case]) -> usize {
    cases.iter().filter(|c| c.contract.is_some()).count()
}

/// The decoder alone (no servers): each case gets the outcome the contract, or a known deviation,
/// says.
#[test]
fn hostile_corpus_outcomes_in_the_decoder() {
    let limits = limits_of(&Config::defaults());
    let now = Utc::now();
    let cases = corpus(now, limits, "hostile-decoder-only");
    assert!(count_bad(&cases) >= 50, "at least 50 bad payloads");
    let mut problems = Vec::new();
    for case in &cases {
        let got = decode(&case.payload, limits, now.timestamp_micros());
        let want = case.current();
        match (&got, want) {
            (Err(r), Some(reason)) if r.reason == reason && !r.detail.is_empty() => {}
            (Ok(update), None) => {
                if let Some(e) = &case.event {
                    let written = (
                        update.profile_id,
                        update.wallet_address.as_str(),
                        update.leaderboard_id.as_str(),
                        update.score,
                        update.occurred_at_micros,
                    );
                    let want = (
                        e.profile,
                        e.wallet.as_str(),
                        e.leaderboard.as_str(),
                        e.score,
                        e.at_micros,
                    );
                    if written != want {
                        problems.push(format!("{}: decoded {written:?}, want {want:?}", case.name));
                    }
                }
            }
            _ => {
                let got = got
                    .as_ref()
                    .map_or_else(|r| r.reason.as_str(), |_| "accepted");
                problems.push(match deviation(&case.name) {
                    Some(_) if outcome(case.contract) == got => format!(
                        "{}: the decoder now follows the contract ({got}); \
                         delete its KNOWN_DEVIATIONS entry",
                        case.name
                    ),
                    _ => format!("{}: want {}, got {got}", case.name, outcome(want)),
                });
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    for (name, current, why) in KNOWN_DEVIATIONS {
        eprintln!(
            "known decoder deviation: {name} is {} today: {why}",
            outcome(*current)
        );
    }
}

/// The value of `name{reason="<reason>"}` in Prometheus text.
fn metric_value(text: &str, name: &str, reason: &str) -> Option<u64> {
    let prefix = format!("{name}{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_through_one_live_worker() {
    let (_servers, config) = sharing("hostile").await;
    let limits = limits_of(&config);
    let (_client, js, session) = nats_and_db(&config).await;
    let board = new_board("hostile");
    let now = Utc::now();
    let cases = corpus(now, limits, &board);
    assert!(count_bad(&cases) >= 50, "at least 50 bad payloads");
    let tag = Uuid::new_v4().simple().to_string();

    let worker = Worker::start(config.clone()).await;
    // Ordinary good events, one before each case, on 8 profiles (so they also coalesce).
    let mut goods = publish_between_goods(&js, &config, &cases, (&board, now, &tag)).await;
    let rejected: Vec<&Case> = cases.iter().filter(|c| c.current().is_some()).collect();
    let accepted: Vec<&Case> = cases.iter().filter(|c| c.current().is_none()).collect();
    let total = (goods.len() + cases.len()) as u64;
    let should_process = (goods.len() + accepted.len()) as u64;
    goods.extend(accepted.iter().filter_map(|c| c.event.clone()));
    wait_until("every message settled", Duration::from_secs(120), || {
        worker.metrics.messages_received.get() >= total
            && worker.processed() >= should_process
            && dead_lettered(&worker.metrics) >= rejected.len() as u64
    })
    .await;
    // Anything redelivered or settled twice would show up in the counters: wait until the server holds
    // nothing more that could be delivered.
    wait_drained(&js, &config, Duration::from_secs(30)).await;

    // Every rejected payload: in the dead-letter stream exactly once, with its reason and its
    // original bytes (the start of a too large one).
    let letters = read_stream(&js, &config.nats.deadletter_stream, rejected.len()).await;
    let problems = letter_problems(&letters, &cases, &tag, &config);
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(
        letters.len(),
        rejected.len(),
        "one dead letter per rejected payload, nothing else"
    );

    // Counts per reason: the DLQ, the counters, and the exported metrics text agree.
    let (status, health) = http_get(worker.addr, "/healthz").await;
    assert_eq!(status, 200, "/healthz after the corpus: {health}");
    let (status, text) = http_get(worker.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_counts_per_reason(&worker, &rejected, &text);

    // One worker did it all, without a restart or a redelivery it did not count.
    assert_one_worker_did_it_all(&worker, total, should_process);
    wait_ready_after_the_corpus(&worker).await;
    worker.stop().await;

    report(&cases, &rejected, &accepted, should_process);
    assert_final_state(&session, &goods, config.scylla.leaderboard_buckets).await;
    // Accepted known deviations write the template event: show that it landed (documents the bug).
    if accepted.iter().any(|c| c.event.is_none()) {
        let key = (
            TEMPLATE_BOARD.to_string(),
            TEMPLATE_PROFILE.parse::<Uuid>().unwrap(),
        );
        let row = profile_scores(&session, std::iter::once(key.clone())).await;
        assert_eq!(row[&key], (Some(TEMPLATE_SCORE), Some(wallet_of(key.1))));
    }
}

/// The id the corpus' case `i` is published under.
fn msg_id(i: usize, tag: &str) -> String {
    format!("hostile-{i}-{tag}")
}

/// Publishes each case of the corpus after an ordinary good event of `board` (on 8 profiles, so
/// they also coalesce); returns the good events.
async fn publish_between_goods(
    js: &async_nats::jetstream::Context,
    config: &Config,
    cases: &[Case],
    (board, now, tag): (&str, DateTime<Utc>, &str),
) -> Vec<Event> {
    let profiles = new_profiles(8);
    let mut rng = rand::rng();
    let mut goods = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let profile = profiles[i % profiles.len()];
        let good = Event::new(
            format!("hostile-good-{i}-{tag}"),
            profile,
            board,
            rng.random_range(-1_000_000..1_000_000),
            now.timestamp_micros() - 120_000_000 + i as i64 * 1000,
        );
        publish(js, config, &good, &good.event_id).await;
        goods.push(good);
        publish_raw(js, config, "hostile", case.payload.clone(), &msg_id(i, tag)).await;
    }
    goods
}

/// What is wrong with the dead letters of the corpus: each rejected case is there exactly once,
/// with its reason, its original bytes (the start of a too large one) and every header.
fn letter_problems(
    letters: &[async_nats::jetstream::Message],
    cases: &[Case],
    tag: &str,
    config: &Config,
) -> Vec<String> {
    let index: HashMap<String, usize> = (0..cases.len()).map(|i| (msg_id(i, tag), i)).collect();
    let original_subject = sample::subject_for(&config.nats.subjects[0], "hostile");
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut problems = Vec::new();
    for letter in letters {
        let headers = letter.headers.as_ref().expect("dead letters carry headers");
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        let Some(&i) = header(deadletter::ORIGINAL_MSG_ID).and_then(|id| index.get(&id)) else {
            problems.push(format!(
                "dead letter of an unknown message: {:?}",
                header(deadletter::ORIGINAL_MSG_ID)
            ));
            continue;
        };
        *seen.entry(i).or_default() += 1;
        let case = &cases[i];
        let reason = header(deadletter::REASON).unwrap_or_default();
        if Some(reason.as_str()) != case.current().map(RejectReason::as_str) {
            problems.push(format!(
                "{}: dead-lettered as {reason:?}, want {}",
                case.name,
                outcome(case.current())
            ));
        }
        if letter.subject.as_str() != format!("{}.{reason}", config.nats.deadletter_prefix) {
            problems.push(format!(
                "{}: dead letter on subject {}",
                case.name, letter.subject
            ));
        }
        // The body is the original payload, or, past validation.max_payload_bytes, its start and
        // a header with its length.
        let kept = case.payload.len().min(config.validation.max_payload_bytes);
        let truncated = header(deadletter::PAYLOAD_TRUNCATED);
        let want_truncated = (kept < case.payload.len()).then(|| case.payload.len().to_string());
        if letter.payload.as_ref() != &case.payload[..kept] || truncated != want_truncated {
            problems.push(format!(
                "{}: dead letter body differs from the original ({} bytes of {}, truncated header {truncated:?})",
                case.name,
                letter.payload.len(),
                case.payload.len()
            ));
        }
        if header(deadletter::ERROR).is_none_or(|e| e.is_empty()) {
            problems.push(format!("{}: no {} header", case.name, deadletter::ERROR));
        }
        if header(deadletter::ORIGINAL_SUBJECT).as_deref() != Some(original_subject.as_str()) {
            problems.push(format!(
                "{}: original subject {:?}",
                case.name,
                header(deadletter::ORIGINAL_SUBJECT)
            ));
        }
        if header(deadletter::ORIGINAL_SEQUENCE)
            .and_then(|s| s.parse::<u64>().ok())
            .is_none_or(|s| s == 0)
        {
            problems.push(format!(
                "{}: original sequence {:?}",
                case.name,
                header(deadletter::ORIGINAL_SEQUENCE)
            ));
        }
    }
    for (i, case) in cases.iter().enumerate() {
        let times = seen.get(&i).copied().unwrap_or(0);
        let want = usize::from(case.current().is_some());
        if times != want {
            problems.push(format!(
                "{}: dead-lettered {times} times, want {want} ({})",
                case.name,
                outcome(case.current())
            ));
        }
    }
    problems
}

/// Counts per reason: the worker's counters and the exported metrics text agree with the corpus.
fn assert_counts_per_reason(worker: &Worker, rejected: &[&Case], text: &str) {
    for reason in RejectReason::ALL {
        let want = rejected
            .iter()
            .filter(|c| c.current() == Some(reason))
            .count() as u64;
        let token = reason.as_str();
        assert_eq!(
            worker
                .metrics
                .dead_letters
                .with_label_values(&[token])
                .get(),
            want,
            "dead letters {token}"
        );
        assert_eq!(
            worker
                .metrics
                .messages_failed
                .with_label_values(&[token])
                .get(),
            want,
            "failed {token}"
        );
        assert_eq!(
            metric_value(text, "score_worker_dead_letters_total", token),
            Some(want),
            "/metrics {token}"
        );
    }
    assert_eq!(failed_writes(&worker.metrics), 0);
    // The arrival rule: the one good event stamped ahead (`within-clock-skew`, 2.5 min) is written at
    // its arrival + the allowance; every `future_timestamp` is counted as refused.
    let clock = |action: &str| {
        worker
            .metrics
            .events_clock
            .with_label_values(&[action])
            .get()
    };
    let refused = rejected
        .iter()
        .filter(|c| c.current() == Some(RejectReason::FutureTimestamp))
        .count() as u64;
    assert_eq!((clock("clamped"), clock("refused")), (1, refused));
}

/// The worker is still running, received each message once and processed what it should. Once more
/// for each letter it gave back while its dead-letter queue was full (counted as deferred: under load,
/// the corpus's bursts of bad payloads can outrun the dead-letter stream's acks); nothing else is
/// redelivered.
fn assert_one_worker_did_it_all(worker: &Worker, total: u64, should_process: u64) {
    assert!(worker.is_running(), "the worker's run task ended");
    let deferred = worker.metrics.deadletters_deferred.get();
    assert_eq!(
        worker.metrics.messages_received.get(),
        total + deferred,
        "each message received exactly once, plus once per letter deferred ({deferred})"
    );
    assert_eq!(
        worker.processed(),
        should_process,
        "processed = the good events (and accepted deviations)"
    );
}

/// `/readyz` answers 200 within 10 s.
async fn wait_ready_after_the_corpus(worker: &Worker) {
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = http_get(worker.addr, "/readyz").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "/readyz after the corpus: {}", ready.1);
}

/// One line: the corpus, what was dead-lettered per reason, what was processed.
fn report(cases: &[Case], rejected: &[&Case], accepted: &[&Case], should_process: u64) {
    let mut per_reason: Vec<String> = RejectReason::ALL
        .iter()
        .map(|r| {
            let n = rejected.iter().filter(|c| c.current() == Some(*r)).count();
            format!("{}={n}", r.as_str())
        })
        .collect();
    per_reason.retain(|s| !s.ends_with("=0"));
    eprintln!(
        "hostile corpus: {} cases ({} bad by contract), {} dead-lettered ({}), {} processed \
         ({} ordinary good, {} edge good, {} known deviations accepted), one worker",
        cases.len(),
        count_bad(cases),
        rejected.len(),
        per_reason.join(", "),
        should_process,
        cases.len(),
        accepted.iter().filter(|c| c.event.is_some()).count(),
        accepted.iter().filter(|c| c.event.is_none()).count(),
    );
}
