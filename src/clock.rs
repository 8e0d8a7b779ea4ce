//! What the gateway knows about its own clock: the kernel's
//! synchronisation state (`adjtimex`, read only) and the clock's offset to
//! the authority's, measured at every lease.
//!
//! A gateway without a battery-backed clock boots with the time fake-hwclock
//! saved, or 1970, and NTP may come late or never. Every lease answer carries
//! the authority's clock, read while it answered: somewhere within the round
//! trip the gateway measured on its monotonic clock. Taking the middle of
//! the round trip gives the offset, to within half the round trip (plus
//! half the millisecond the authority rounds to). The estimate is a pure
//! function of those values, tested without a clock. This module never sets
//! the system clock.

use std::time::Duration;

/// A lease request as the gateway timed it: its own wall clock when it
/// sent it, and how long the answer took on the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundTrip {
    /// Unix nanoseconds by the gateway's clock.
    pub sent_ns: i64,
    pub took: Duration,
}

/// The gateway clock's offset to the authority's: add `offset_ns` to the
/// gateway's time to get the authority's, give or take `error_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    pub offset_ns: i64,
    pub error_ns: i64,
}

/// The offset from an answer that carried `authority_ms` (Unix
/// milliseconds, truncated) after `trip`.
pub fn estimate(authority_ms: i64, trip: RoundTrip) -> Offset {
    let half = (trip.took.as_nanos() / 2).min(i64::MAX as u128) as i64;
    // The authority's millisecond covers [ms, ms + 1): its middle, and
    // half of it in the error.
    let authority_ns = authority_ms
        .saturating_mul(1_000_000)
        .saturating_add(500_000);
    Offset {
        offset_ns: authority_ns.saturating_sub(trip.sent_ns.saturating_add(half)),
        error_ns: half.saturating_add(500_000),
    }
}

/// The kernel's view of its clock, as `adjtimex` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// An NTP (or PTP, or chrony) daemon keeps it in sync: the kernel's
    /// `STA_UNSYNC` is clear.
    pub synchronized: bool,
    /// The kernel's bound on its error, in microseconds.
    pub max_error_us: i64,
}

/// The kernel's clock state; None where the call fails.
pub fn kernel() -> Option<Kernel> {
    // SAFETY: `timex` is plain integers, for which zero is a value; with
    // `modes` zero adjtimex only reads the state into it.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut timex) };
    (state >= 0).then_some(Kernel {
        synchronized: state != libc::TIME_ERROR && timex.status & libc::STA_UNSYNC == 0,
        max_error_us: timex.maxerror as i64,
    })
}

/// The gateway's wall clock now, in Unix nanoseconds (negative before
/// 1970, which a gateway that lost its time may well be near).
pub fn wall_ns() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

/// An offset in words: "3d 2h behind the authority (± 4ms)".
pub fn describe(offset: Offset) -> String {
    let ms = offset.offset_ns.unsigned_abs() / 1_000_000;
    // Milliseconds matter in a small offset only.
    let size = if ms >= 10_000 {
        Duration::from_secs((ms + 500) / 1_000)
    } else {
        Duration::from_millis(ms)
    };
    let error = Duration::from_millis((offset.error_ns.max(0) as u64).div_ceil(1_000_000));
    let way = if offset.offset_ns >= 0 {
        "behind"
    } else {
        "ahead of"
    };
    format!(
        "{} {way} the authority's (± {})",
        humantime::format_duration(size),
        humantime::format_duration(error)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn the_offset_is_taken_at_the_middle_of_the_round_trip() {
        // Sent at 1,000 ms by our clock, answered in 40 ms; the authority
        // read 1,020 ms: the clocks agree, to within 20.5 ms.
        let trip = RoundTrip {
            sent_ns: 1_000 * MS,
            took: Duration::from_millis(40),
        };
        let o = estimate(1_020, trip);
        assert_eq!(o.offset_ns, MS / 2);
        assert_eq!(o.error_ns, 20 * MS + MS / 2);
    }

    #[test]
    fn a_clock_three_days_behind_is_told_to_within_the_round_trip() {
        let three_days = 3 * 86_400 * 1_000 * MS;
        let now = 1_796_476_000_000 * MS;
        let trip = RoundTrip {
            sent_ns: now - three_days,
            took: Duration::from_millis(8),
        };
        // The authority answered anywhere in the round trip.
        for at in [0, 4, 8] {
            let o = estimate((now + at * MS) / MS, trip);
            assert!((o.offset_ns - three_days).abs() <= o.error_ns, "{o:?}");
        }
        let o = estimate((now + 4 * MS) / MS, trip);
        assert_eq!(describe(o), "3days behind the authority's (± 5ms)", "{o:?}");
        // A clock ahead, from before 1970.
        let o = estimate(
            0,
            RoundTrip {
                sent_ns: 10 * MS,
                took: Duration::ZERO,
            },
        );
        assert!(describe(o).contains("ahead of"), "{}", describe(o));
    }

    #[test]
    fn absurd_inputs_do_not_overflow() {
        let trip = RoundTrip {
            sent_ns: i64::MIN,
            took: Duration::MAX,
        };
        let o = estimate(i64::MAX, trip);
        assert!(o.error_ns > 0);
        let o = estimate(
            i64::MIN,
            RoundTrip {
                sent_ns: i64::MAX,
                took: Duration::ZERO,
            },
        );
        assert_eq!(o.offset_ns, i64::MIN);
    }

    #[test]
    fn the_kernel_answers() {
        let k = kernel().expect("adjtimex");
        assert!(k.max_error_us >= 0);
    }
}
