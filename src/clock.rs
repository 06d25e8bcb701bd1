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
