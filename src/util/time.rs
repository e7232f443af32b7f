//! Timestamps for APIs and files: RFC 3339, UTC, always with milliseconds
//! (`2026-11-24T13:30:00.123Z`), so that they sort as text and compare
//! across machines without parsing surprises.

use std::time::Duration;

use ::time::format_description::FormatItem;
use ::time::macros::format_description;
use ::time::OffsetDateTime;

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `t` (converted to UTC) as RFC 3339 with milliseconds.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    let utc = t.to_offset(::time::UtcOffset::UTC);
    // Only years outside 0..=9999 fail to format; clamp rather than panic.
    utc.format(FORMAT)
        .unwrap_or_else(|_| "9999-12-31T23:59:59.999Z".to_string())
}

/// Now, as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A time given in milliseconds since the Unix epoch, as RFC 3339 with
/// milliseconds; an unrepresentable one gives the latest representable time.
pub fn rfc3339_at_ms(ms: u64) -> String {
    let t = i128::from(ms)
        .checked_mul(1_000_000)
        .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok());
    match t {
        Some(t) => format_rfc3339(t),
        None => "9999-12-31T23:59:59.999Z".to_string(),
    }
}

/// Parses RFC 3339 (any offset, any fraction) into milliseconds since the
/// Unix epoch; `None` for anything else or a time before 1970.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(s, &::time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// `d` from now. A duration too large to represent (a hostile or mistaken
/// setting) gives the latest representable time instead of a panic.
pub fn rfc3339_in(d: Duration) -> String {
    let now = OffsetDateTime::now_utc();
    let t = ::time::Duration::try_from(d)
        .ok()
        .and_then(|d| now.checked_add(d))
        .unwrap_or_else(|| {
            ::time::Date::from_calendar_date(9999, ::time::Month::December, 31)
                .map(|d| d.with_hms_milli(23, 59, 59, 999).unwrap_or(d.midnight()))
                .map(|dt| dt.assume_utc())
                .unwrap_or(now)
        });
    format_rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::time::format_description::well_known::Rfc3339;

    fn has_millis(s: &str) -> bool {
        // ...T12:34:56.789Z
        let b = s.as_bytes();
        b.len() == 24 && b[19] == b'.' && b[23] == b'Z' && b[20..23].iter().all(u8::is_ascii_digit)
    }

    #[test]
    fn now_is_rfc3339_with_milliseconds() {
        let s = now_rfc3339();
        assert!(has_millis(&s), "{s}");
        assert!(OffsetDateTime::parse(&s, &Rfc3339).is_ok(), "{s}");
    }

    #[test]
    fn unix_milliseconds_round_trip_through_rfc3339() {
        let ms = 1_795_000_000_123;
        let s = rfc3339_at_ms(ms);
        assert!(has_millis(&s), "{s}");
        assert_eq!(parse_rfc3339_ms(&s), Some(ms));
        assert!(has_millis(&rfc3339_at_ms(u64::MAX)));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        let now = now_unix_ms();
        assert!(parse_rfc3339_ms(&now_rfc3339()).unwrap() >= now);
    }

    #[test]
    fn huge_durations_do_not_panic() {
        for d in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs_f64(1e12),
        ] {
            let s = rfc3339_in(d);
            assert!(has_millis(&s), "{s}");
            assert!(s.starts_with("9999-12-31T23:59:59.999"), "{s}");
        }
        let soon = OffsetDateTime::parse(&rfc3339_in(Duration::from_secs(60)), &Rfc3339).unwrap();
        let delta = soon - OffsetDateTime::now_utc();
        assert!(delta > ::time::Duration::seconds(50) && delta < ::time::Duration::seconds(61));
    }
}
