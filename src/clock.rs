//! The one clock. Nothing else in orch reads the system time.
//!
//! Times are unix milliseconds (`i64`) everywhere: in the database (columns
//! named `*_ms`), in logs and in JSON output. Builds with the `testing`
//! feature honour `ORCH_TEST_CLOCK_OFFSET_MS`, which shifts the clock so a
//! process test can step past a grace period without sleeping.

use std::time::{SystemTime, UNIX_EPOCH};

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
/// The zone is the process's (`TZ`).
pub fn local_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000) as libc::time_t;
    // SAFETY: `localtime_r` writes only into `tm`, which outlives the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return format!("{ms} ms");
    }
    let off = tm.tm_gmtoff;
    let zone = if off == 0 {
        "Z".to_string()
    } else {
        let sign = if off < 0 { '-' } else { '+' };
        let a = off.abs();
        format!("{sign}{:02}:{:02}", a / 3600, a % 3600 / 60)
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{zone}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
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
}

/// `ms` (unix milliseconds) as `YYYY-MM-DD HH:MM:SS UTC`, for messages
/// people read.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod format_tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::format_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            super::format_ms(1_767_261_600_000),
            "2026-01-01 10:00:00 UTC"
        );
        assert_eq!(super::format_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
