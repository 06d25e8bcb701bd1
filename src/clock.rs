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
