//! The one clock. Nothing else in orch reads the system time.
//!
//! Times are unix milliseconds (`i64`) everywhere: in the database (columns
//! named `*_ms`), in logs and in JSON output. Builds with the `testing`
//! feature honour `ORCH_TEST_CLOCK_OFFSET_MS`, which shifts the clock so a
//! process test can step past a grace period without sleeping.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    real + offset_ms()
}

#[cfg(feature = "testing")]
fn offset_ms() -> i64 {
    std::env::var("ORCH_TEST_CLOCK_OFFSET_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(not(feature = "testing"))]
fn offset_ms() -> i64 {
    0
}

/// `ms` (unix milliseconds) as local RFC 3339 to the second, with the
/// offset: `2026-12-01T23:12:05+01:00` (`…Z` when local time is UTC).
/// The zone is the process's (`TZ`, else `/etc/localtime`).
pub fn local_rfc3339(ms: i64) -> String {
    let Ok(ts) = Timestamp::from_millisecond(ms) else {
        return format!("{ms} ms");
    };
    let local = ts.to_zoned(TimeZone::system());
    let format = if local.offset().seconds() == 0 {
        "%Y-%m-%dT%H:%M:%SZ"
    } else {
        "%Y-%m-%dT%H:%M:%S%:z"
    };
    local.strftime(format).to_string()
}

/// `ms` (unix milliseconds) as `YYYY-MM-DD HH:MM:SS UTC`: the form of the
/// times in stored messages (comments, notifications), which people read
/// in other zones than orch's.
pub fn format_ms(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => format!("{ms} ms"),
    }
}

/// An HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110's IMF-fixdate)
/// as unix milliseconds; `None` for anything else, a zone other than GMT
/// included.
pub fn http_date_ms(value: &str) -> Option<i64> {
    let v = value.trim();
    if !v.ends_with(" GMT") {
        return None;
    }
    let at = jiff::fmt::rfc2822::parse(v).ok()?;
    Some(at.timestamp().as_millisecond())
}

/// The first moment after `now_ms` at which the wall clock of `zone` (an
/// IANA name such as `Europe/Rome`, or `UTC`; any case) reads
/// `hour:minute`, in unix milliseconds. A time that a daylight-saving
/// change skips resolves to the moment after the gap. `None` for a zone
/// orch does not know or an hour/minute out of range.
pub fn next_wall_clock_ms(now_ms: i64, hour: i8, minute: i8, zone: &str) -> Option<i64> {
    let time = jiff::civil::Time::new(hour, minute, 0, 0).ok()?;
    let tz = TimeZone::get(zone.trim()).ok()?;
    let now = Timestamp::from_millisecond(now_ms)
        .ok()?
        .to_zoned(tz.clone());
    let mut day = now.date();
    loop {
        let at = day.to_datetime(time).to_zoned(tz.clone()).ok()?;
        if at.timestamp() > now.timestamp() {
            return Some(at.timestamp().as_millisecond());
        }
        day = day.tomorrow().ok()?;
    }
}

/// A span of milliseconds for people: `45 s`, `3 min`, `2 h 5 min`,
/// `3 d 4 h`.
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => match s % 3600 / 60 {
            0 => format!("{} h", s / 3600),
            m => format!("{} h {m} min", s / 3600),
        },
        _ => match s % 86_400 / 3600 {
            0 => format!("{} d", s / 86_400),
            h => format!("{} d {h} h", s / 86_400),
        },
    }
}

/// `at_ms` relative to `now_ms`: `3 min ago`, `in 20 s`, `just now`.
pub fn ago(at_ms: i64, now_ms: i64) -> String {
    let d = now_ms - at_ms;
    if d.abs() < 1000 {
        "just now".into()
    } else if d > 0 {
        format!("{} ago", duration(d))
    } else {
        format!("in {}", duration(-d))
    }
}

/// `at_ms` for text output: local RFC 3339 and how long ago,
/// `2026-12-01T23:12:05Z (3 min ago)`.
pub fn human(at_ms: i64, now_ms: i64) -> String {
    format!("{} ({})", local_rfc3339(at_ms), ago(at_ms, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_relative_times_read_like_people_write_them() {
        assert_eq!(duration(45_000), "45 s");
        assert_eq!(duration(180_000), "3 min");
        assert_eq!(duration(7_500_000), "2 h 5 min");
        assert_eq!(duration(3 * 86_400_000 + 4 * 3_600_000), "3 d 4 h");
        assert_eq!(ago(1_000_000, 1_180_000), "3 min ago");
        assert_eq!(ago(1_020_000, 1_000_000), "in 20 s");
        assert_eq!(ago(1_000_000, 1_000_400), "just now");
    }

    #[test]
    fn local_times_are_rfc3339_with_an_offset() {
        let t = local_rfc3339(1_764_630_725_000);
        // 2025-12-01T23:12:05 UTC in whatever zone the test runs.
        assert_eq!(t.len(), if t.ends_with('Z') { 20 } else { 25 }, "{t}");
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[10..11], "T");
    }

    #[test]
    fn formats_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_ms(1_767_261_600_000), "2026-01-01 10:00:00 UTC");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn http_dates_are_gmt_only() {
        // 1994-11-06T08:49:37Z is unix 784111777.
        assert_eq!(
            http_date_ms("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(
            http_date_ms("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599_000)
        );
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 +0000",
            "soon",
            "",
        ] {
            assert_eq!(http_date_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn wall_clock_times_resolve_in_their_zone_across_days_and_dst() {
        // 2026-01-01 10:00 UTC.
        let now = 1_767_261_600_000;
        let h = 3_600_000;
        assert_eq!(
            next_wall_clock_ms(now, 15, 30, "UTC"),
            Some(now + 5 * h + h / 2)
        );
        assert_eq!(next_wall_clock_ms(now, 9, 0, "utc"), Some(now + 23 * h));
        // Rome is UTC+1 in January: 04:50 there is 03:50 UTC, tomorrow.
        assert_eq!(
            next_wall_clock_ms(now, 4, 50, "Europe/Rome"),
            Some(now + 17 * h + 50 * 60_000)
        );
        assert_eq!(
            next_wall_clock_ms(now, 4, 50, "europe/rome"),
            next_wall_clock_ms(now, 4, 50, "Europe/Rome")
        );
        // New York on 2026-03-08: 02:30 does not exist (clocks jump from
        // 02:00 to 03:00 EST→EDT); it resolves to 03:30 EDT = 07:30 UTC.
        let mar8_0500_utc = 1_772_946_000_000; // 00:00 EST
        assert_eq!(
            next_wall_clock_ms(mar8_0500_utc, 2, 30, "America/New_York"),
            Some(mar8_0500_utc + 2 * h + h / 2)
        );
        assert_eq!(next_wall_clock_ms(now, 4, 50, "Mars/Olympus_Mons"), None);
        assert_eq!(next_wall_clock_ms(now, 25, 0, "UTC"), None);
        assert_eq!(next_wall_clock_ms(now, 4, 75, "UTC"), None);
    }
}
