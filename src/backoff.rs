//! The one backoff shape: exponential, capped, with optional deterministic
//! jitter. Outbox delivery, job retries and merge deferrals each call
//! [`backoff_ms`] with their own base and cap.

/// The delay before retry number `n` (0 for the first retry), in ms:
/// `min(base_ms · 2^n, cap_ms)`, plus, with a `jitter_seed`, up to 25 % of
/// that derived deterministically from the seed (the same seed always
/// gets the same jitter, so a rehearsal and the real run agree).
///
/// A negative `n` counts as 0; the doubling saturates instead of
/// overflowing. Today's callers:
/// - outbox delivery: base 1 s, cap 1 h, `n` = attempts so far, seed the
///   message id;
/// - job retry: base `ORCH_JOB_BACKOFF_S`, cap base · 2^16, `n` =
///   attempt − 1, no jitter;
/// - the staging check's INFRA backoff: base
///   `ORCH_STAGING_CHECK_INFRA_BACKOFF_S`, cap base · 2^4, `n` = INFRA
///   answers so far, no jitter.
pub fn backoff_ms(base_ms: i64, cap_ms: i64, n: i64, jitter_seed: Option<i64>) -> i64 {
    let doubled = base_ms.saturating_mul(1i64 << n.clamp(0, 32));
    let d = doubled.min(cap_ms);
    match jitter_seed {
        Some(seed) => d + (seed.wrapping_mul(7919) % 1000).abs() * d / 4000,
        None => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_jitters_by_at_most_a_quarter() {
        assert_eq!(backoff_ms(1000, 60_000, 0, None), 1000);
        assert_eq!(backoff_ms(1000, 60_000, 3, None), 8000);
        assert_eq!(backoff_ms(1000, 60_000, 10, None), 60_000);
        assert_eq!(backoff_ms(1000, 60_000, -4, None), 1000);
        assert_eq!(backoff_ms(1000, i64::MAX, 99, None), 1000 << 32);
        for seed in 0..50 {
            let d = backoff_ms(1000, 3_600_000, 2, Some(seed));
            assert!((4000..=5000).contains(&d), "{d}");
            assert_eq!(d, backoff_ms(1000, 3_600_000, 2, Some(seed)));
        }
    }

    #[test]
    fn the_callers_numbers_are_unchanged() {
        // outbox: (1000 << attempts.clamp(0, 12)).min(3_600_000) + jitter
        for attempts in 0..20 {
            for id in [1i64, 7, 12345] {
                let base = (1000i64 << attempts.clamp(0, 12)).min(3_600_000);
                let old = base + (id.wrapping_mul(7919) % 1000).abs() * base / 4000;
                assert_eq!(backoff_ms(1000, 3_600_000, attempts, Some(id)), old);
            }
        }
        // job retry: (s * 1000) << (attempt - 1).clamp(0, 16)
        // merge defer: (s * 1000) << defers.clamp(0, 4)
        for s in [0i64, 1, 30, 600] {
            for n in -1..40 {
                let b = s * 1000;
                assert_eq!(backoff_ms(b, b << 16, n, None), b << n.clamp(0, 16));
                assert_eq!(backoff_ms(b, b << 4, n, None), b << n.clamp(0, 4));
            }
        }
    }
}
