//! Exponential backoff with jitter between delivery attempts: the first retry waits about
//! `base`, each next one twice as long, capped at `max`, and each wait is drawn from its
//! upper half, so that a receiver coming back after an outage is not hit by every sender
//! at once (AWS's "equal jitter").

use std::time::Duration;

/// The wait before attempt `attempt + 1`, after `attempt` (1-based) failed.
pub fn delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exp).min(max);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

/// The longest a delivery of `attempts` attempts can take: every wait at its maximum and
/// every attempt timing out. A pending delivery idle for longer belongs to a sender that
/// is gone, so another one may take it over.
pub fn worst_span(attempts: u32, base: Duration, max: Duration, timeout: Duration) -> Duration {
    (1..attempts.max(1)).fold(timeout.saturating_mul(attempts.max(1)), |sum, a| {
        sum.saturating_add(
            base.saturating_mul(1u32 << a.saturating_sub(1).min(30))
                .min(max),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_stay_in_their_upper_half_and_are_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..200 {
            let d1 = delay(1, base, max);
            assert!(d1 >= Duration::from_millis(50) && d1 <= base, "{d1:?}");
            let d3 = delay(3, base, max);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d20 = delay(20, base, max);
            assert!(d20 >= Duration::from_millis(500) && d20 <= max, "{d20:?}");
        }
    }

    #[test]
    fn the_worst_span_adds_every_timeout_and_every_capped_wait() {
        let s = worst_span(
            4,
            Duration::from_secs(1),
            Duration::from_secs(3),
            Duration::from_secs(5),
        );
        // 4 timeouts of 5 s, waits of 1 s, 2 s and min(4 s, 3 s).
        assert_eq!(s, Duration::from_secs(20 + 1 + 2 + 3));
    }
}
