//! The one clock. Nothing else in orch reads the system time.
//!
//! Times are unix milliseconds (`i64`) everywhere: in the database (columns
//! named `*_ms`), in logs and in JSON output. That wall clock can jump
//! (an operator, NTP stepping a clock that was far off, a VM resumed), so
//! what measures a span reads a second clock too: [`boot_ms`], the
//! machine's monotonic clock since boot (`CLOCK_BOOTTIME`, which counts
//! suspend and never jumps), meaningful only on the boot that read it (a
//! row records the boot id beside it: `process::boot_id`). The rules:
//! - A span one process measures (the agent's own timeout) is an
//!   `Instant` (`process::run`).
//! - A span measured across processes (the reaper judging a worker's
//!   heartbeat, a run's time, the finalize grace) is [`elapsed_ms`]: on
//!   the boot clock when both ends were read on this boot, else on the
//!   wall clock. A forward jump of the wall clock then kills no live
//!   agent.
//! - A time set ahead (a backoff, a pause, a lease) is judged on the wall
//!   clock, indexable, but [`set_in_the_future`] bounds a backward jump: a
//!   row written more than [`STEP_SLACK_MS`] "after now" was written
//!   before the clock went back, and its wait counts as over. A clock
//!   that goes back never stops claims; a wait lasts at most its length
//!   plus the slack, and ends early by at most its length.
//!
//! Builds with the `testing` feature honour `ORCH_TEST_CLOCK_OFFSET_MS`,
//! which shifts both clocks (time passes: a process test steps past a
//! grace period without sleeping), and `ORCH_TEST_WALL_JUMP_MS`, which
//! shifts the wall clock only (the clock jumped; no time passed).

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// How far behind a row's write time the wall clock may read before
/// orch counts it as having gone back (60 s): more than any gap between
/// reading the clock and committing a write (`ORCH_BUSY_TIMEOUT_MS` is
/// 5 s by default), so concurrent processes never trip it. A backward
/// step smaller than this is not detected and makes a wait last up to
/// that much longer.
pub const STEP_SLACK_MS: i64 = 60_000;

/// Current time in unix milliseconds (the wall clock).
pub fn now_ms() -> i64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    real + offset_ms() + wall_jump_ms()
}

/// Milliseconds since this machine booted, suspend included
/// (`CLOCK_BOOTTIME`): monotonic, never stepped by a change of the wall
/// clock. Comparable only with readings of the same boot (same
/// `process::boot_id`).
pub fn boot_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists
    // on every Linux orch supports (2.6.39+).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let real = if rc == 0 {
        ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    } else {
        0
    };
    real + offset_ms()
}

/// Milliseconds from an event to now, on the boot clock when the event's
/// boot-clock reading `then_boot` is known and of this boot (the caller
/// passes `None` otherwise), else on the wall clock (`then_wall` to
/// `now_wall`). Never negative.
pub fn elapsed_ms(then_wall: i64, then_boot: Option<i64>, now_wall: i64, now_boot: i64) -> i64 {
    match then_boot {
        Some(b) => now_boot - b,
        None => now_wall - then_wall,
    }
    .max(0)
}

/// Whether a row written at wall time `written_ms` was written before the
/// wall clock went back (it reads more than [`STEP_SLACK_MS`] ahead of
/// `now_ms`): then the wait it set counts as over.
pub fn set_in_the_future(written_ms: i64, now_ms: i64) -> bool {
    written_ms > now_ms + STEP_SLACK_MS
}

#[cfg(feature = "testing")]
fn test_ms(key: &str) -> i64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(feature = "testing")]
fn offset_ms() -> i64 {
    test_ms("ORCH_TEST_CLOCK_OFFSET_MS")
}

#[cfg(feature = "testing")]
fn wall_jump_ms() -> i64 {
    test_ms("ORCH_TEST_WALL_JUMP_MS")
}

#[cfg(not(feature = "testing"))]
fn offset_ms() -> i64 {
    0
}

#[cfg(not(feature = "testing"))]
fn wall_jump_ms() -> i64 {
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
    fn spans_across_processes_read_the_boot_clock_of_the_same_boot() {
        let (w, b) = (now_ms(), boot_ms());
        assert!(b > 0);
        // Same boot: the wall clock's jump (an hour ahead) does not count.
        assert_eq!(elapsed_ms(w - 1000, Some(b - 1000), w + 3_600_000, b), 1000);
        // Another boot: the wall clock is all there is.
        assert_eq!(elapsed_ms(w - 1000, None, w, b), 1000);
        assert_eq!(elapsed_ms(w + 5000, None, w, b), 0, "never negative");
        assert!(!set_in_the_future(w + STEP_SLACK_MS, w));
        assert!(set_in_the_future(w + STEP_SLACK_MS + 1, w));
        assert!(!set_in_the_future(w - 86_400_000, w));
    }

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
