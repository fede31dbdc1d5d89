//! Durations written the way gorouter and route-registrar configs write them: `120s`, `5m`, `1m30s`, `250ms`.
//!
//! The format is Go's `time.ParseDuration`, which existing configs already use, so they load unchanged. A bare
//! integer is refused rather than guessed at: Go would read it as nanoseconds, which nobody means.

use serde::{Deserialize, Deserializer, de};
use std::fmt;
use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DurationError {}

/// Parses a Go-style duration: one or more `<decimal><unit>` terms, units `ns us µs ms s m h`; `0` alone is allowed.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let bad = |why: &str| DurationError(format!("`{text}` is not a duration ({why}); write it like `120s`, `5m` or `1m30s`"));
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if text.starts_with('-') {
        return Err(bad("negative"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return Err(bad("expected a number"));
        }
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after_unit) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if fraction.contains('.') {
            return Err(bad("two decimal points"));
        }
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad("number too large"))? };
        let mut term = whole.checked_mul(unit_nanos).ok_or_else(|| bad("too large"))?;
        let mut scale = unit_nanos;
        for digit in fraction.bytes() {
            scale /= 10;
            // The whole part alone may already sit just under u128::MAX, so the fraction can overflow too.
            term = term.checked_add(u128::from(digit - b'0') * scale).ok_or_else(|| bad("too large"))?;
        }
        total_nanos = total_nanos.checked_add(term).ok_or_else(|| bad("too large"))?;
        rest = after_unit;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| bad("too large"))?;
    let nanos = u32::try_from(total_nanos % 1_000_000_000).map_err(|_| bad("too large"))?;
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration the way [`parse`] reads it, choosing the largest exact unit (`90s`, `5m`, `250ms`).
pub fn format(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (unit, size) in [("h", 3_600_000_000_000u128), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)] {
        if nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

struct DurationVisitor;

impl de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as `120s`, `5m` or `1m30s`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        if v == 0 {
            return Ok(Duration::ZERO);
        }
        Err(E::custom(format!("`{v}` has no unit; write it like `{v}s`")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        if v < 0 {
            return Err(E::custom(format!("`{v}` is negative; a duration must be zero or more")));
        }
        self.visit_u64(v.unsigned_abs())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format!("`{v}` has no unit; write it like `{v}s`")))
    }
}

/// `#[serde(deserialize_with = "duration::deserialize")]` for a required or defaulted `Duration` field.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

/// `#[serde(deserialize_with = "duration::deserialize_option")]` for an optional `Duration` field.
pub fn deserialize_option<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "deserialize")] Duration);
    Option::<Wrapped>::deserialize(deserializer).map(|wrapped| wrapped.map(|Wrapped(d)| d))
}

/// `#[serde(serialize_with = "duration::serialize")]`, writing the same form [`parse`] reads.
pub fn serialize<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*duration))
}

/// Serialises an optional duration, `None` as null.
pub fn serialize_option<S: serde::Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) => serializer.serialize_str(&format(*d)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        assert_eq!(parse("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2h45m10.5s"), Ok(Duration::from_millis(9_910_500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
    }

    #[test]
    fn refuses_bad_forms() {
        for bad in ["", "s", "10", "10x", "-5s", "1..5s", "abc", "5 m", "99999999999999999999999999h"] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
        // The whole part times the unit fits in a u128 just below its maximum, the fraction does not. This used to
        // overflow (a panic in debug builds, a tiny wrapped duration in release) instead of being refused.
        assert!(parse("340282366920938463463374607431.999999999s").is_err());
    }

    #[test]
    fn format_round_trips() {
        for d in [0u64, 1, 999, 1000, 60_000, 90_000, 3_600_000, 250] {
            let d = Duration::from_millis(d);
            assert_eq!(parse(&format(d)), Ok(d));
        }
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(300)), "5m");
    }
}
