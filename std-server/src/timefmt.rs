//! Times as text (RFC 3339 and Django's `DateTimeField`), through the
//! `time` crate.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

// (Milliseconds only for the admin API.)
#[cfg(any(feature = "admin", test))]
const MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
const MICROS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
const DJANGO: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]");

fn utc(t: SystemTime) -> OffsetDateTime {
    // Before 1970 or past year 9999 cannot come from a clock that works;
    // such a time is written as the epoch (never a panic).
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| OffsetDateTime::from_unix_timestamp_nanos(d.as_nanos() as i128).ok())
        .filter(|t| t.year() <= 9999)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn format(t: SystemTime, items: &[FormatItem<'_>]) -> String {
    utc(t).format(items).unwrap_or_default()
}

/// RFC 3339, UTC, milliseconds: `2026-11-29T17:08:34.123Z`.
#[cfg(any(feature = "admin", test))]
pub fn rfc3339_millis(t: SystemTime) -> String {
    format(t, MILLIS)
}

/// RFC 3339, UTC, microseconds: `2026-12-06T21:30:00.123456Z`.
pub fn rfc3339_micros(t: SystemTime) -> String {
    format(t, MICROS)
}

/// Django's `DateTimeField` with `USE_TZ = True`, UTC, without the offset:
/// `YYYY-MM-DD HH:MM:SS.ffffff`.
pub fn django(t: SystemTime) -> String {
    format(t, DJANGO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_972_114_123_456);
        assert_eq!(rfc3339_millis(t), "2026-11-29T17:08:34.123Z");
        assert_eq!(rfc3339_micros(t), "2026-11-29T17:08:34.123456Z");
        assert_eq!(django(t), "2026-11-29 17:08:34.123456");
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40);
        assert_eq!(rfc3339_millis(far), "1970-01-01T00:00:00.000Z");
    }
}
