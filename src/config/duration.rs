//! Durations as the configuration writes them: a number and a unit, e.g. "250ms", "5s", "1m30s".

use std::fmt;
use std::time::Duration;

use serde::Deserializer;

/// A duration that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("`{0}` is not a duration like 250ms, 5s, 2m, 1h")]
    Syntax(String),
    #[error("`{0}`: unit must be ms, s, m, h or d")]
    Unit(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// Parses "250ms", "5s", "2m", "1h", "30d" and combinations like "1m30s".
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let overflow = || DurationError::Overflow(text.to_string());
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Syntax(text.to_string()));
        }
        let value: u64 = rest[..digits].parse().map_err(|_| overflow())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(value)),
            "s" => Some(Duration::from_secs(value)),
            "m" => value.checked_mul(60).map(Duration::from_secs),
            "h" => value.checked_mul(3_600).map(Duration::from_secs),
            "d" => value.checked_mul(86_400).map(Duration::from_secs),
            _ => return Err(DurationError::Unit(text.to_string())),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(overflow)?;
    }
    Ok(total)
}

/// `#[serde(deserialize_with = "duration")]` for `Duration` fields.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"250ms\", \"5s\" or \"2m\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        let huge = format!("{}d", u64::MAX / 2);
        assert!(matches!(
            parse_duration(&huge),
            Err(DurationError::Overflow(_))
        ));
        assert!(parse_duration("99999999999999999999999s").is_err());
    }
}
