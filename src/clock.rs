//! What the gateway knows about its own clock: the kernel's
//! synchronisation state (`adjtimex`, read only), the clock's offset to
//! the authority's, measured at every lease ([`estimate`]), and the rule
//! that corrects receipt stamps ([`verdict`], [`shift_stamps`]). The
//! estimate and the rule are pure functions of their inputs; the state
//! around them is `agent::trueclock`'s.
//!
//! This module never sets the system clock.

use std::time::Duration;

/// A lease request as the gateway timed it: its own wall clock when it
/// sent it, and how long the answer took on the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundTrip {
    /// Unix nanoseconds by the gateway's clock.
    pub sent_ns: i64,
    /// `CLOCK_BOOTTIME` nanoseconds when it was sent: ties the answer to
    /// the boot's own time line, which no step of the wall clock moves.
    pub sent_boot_ns: i64,
    pub took: Duration,
}

impl RoundTrip {
    /// A request being sent now; `took` is filled in when it is answered.
    pub fn starting() -> RoundTrip {
        RoundTrip {
            sent_ns: wall_ns(),
            sent_boot_ns: boottime_ns(),
            took: Duration::ZERO,
        }
    }
}

/// The gateway clock's offset to the authority's: add `offset_ns` to the
/// gateway's time to get the authority's, give or take `error_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    pub offset_ns: i64,
    pub error_ns: i64,
    /// The authority's time less `CLOCK_BOOTTIME` (where the boot started
    /// by the authority's clock): what receipt stamps are corrected with.
    pub true_minus_boot_ns: i64,
}

/// The offset from an answer that carried `authority_ms` (Unix
/// milliseconds, truncated) after `trip`.
///
/// A gateway without a battery-backed clock boots with a saved time or
/// 1970, and NTP may come late or never. The authority read its clock
/// somewhere within the round trip, so the trip's middle gives the offset
/// to within half the round trip (plus half the millisecond it rounds to).
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
        true_minus_boot_ns: authority_ns.saturating_sub(trip.sent_boot_ns.saturating_add(half)),
    }
}

/// The kernel's id of the running boot (`/proc/sys/kernel/random/boot_id`):
/// `CLOCK_BOOTTIME` values of different boots cannot be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootId(pub [u8; 16]);

impl BootId {
    /// This boot's id; where the kernel does not tell it, a random one,
    /// so that a restart is taken for a new boot (its points are then sent
    /// as stamped, never corrected by a wrong reference).
    pub fn current() -> BootId {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .and_then(|t| BootId::parse(&t))
            .unwrap_or_else(|| {
                let mut id = [0; 16];
                id.copy_from_slice(&crate::secret::random_bytes(16));
                BootId(id)
            })
    }

    /// The kernel's text form (a UUID, dashes optional).
    pub fn parse(text: &str) -> Option<BootId> {
        let hex: Vec<u8> = text.trim().bytes().filter(|&b| b != b'-').collect();
        if hex.len() != 32 {
            return None;
        }
        let mut id = [0; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).ok()?;
            id[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(BootId(id))
    }
}

impl std::fmt::Display for BootId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// `CLOCK_BOOTTIME` in nanoseconds: monotonic, counting suspend, and
/// never stepped.
pub fn boottime_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as i64)
}

/// How the stamps of some points were taken: in this boot, by a wall
/// clock that read `wall_minus_boot_ns` more than `CLOCK_BOOTTIME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamping {
    pub boot: BootId,
    pub wall_minus_boot_ns: i64,
}

impl Stamping {
    /// The wall clock's relation to `CLOCK_BOOTTIME` now.
    pub fn now(boot: BootId) -> Stamping {
        let wall = wall_ns();
        Stamping {
            boot,
            wall_minus_boot_ns: wall.saturating_sub(boottime_ns()),
        }
    }
}

/// What becomes of receipt stamps before they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Right to within `max_offset`: sent as they are.
    Keep,
    /// Wrong by this many nanoseconds: add it to each.
    Shift(i64),
    /// Nothing tells the true time yet: hold them.
    Wait,
    /// Nothing ever will (an earlier boot's, or waited out): sent as
    /// stamped, and counted.
    AsStamped,
}

/// The rule for points stamped as `stamping` says. `true_minus_boot_ns` is
/// where a trusted source put the start of that boot, if one did;
/// `this_boot` whether it is the running boot (whose reference may still
/// come); `waited_out` whether `clock.max_wait` has passed without one.
///
/// A receipt stamp is `CLOCK_BOOTTIME` plus where the wall clock then put
/// the boot's start ([`Stamping`]). Once a trusted source (the authority,
/// or a synchronised kernel) tells where the boot really started, every
/// stamp of that boot moves by the difference, however the wall clock
/// stepped in between.
pub fn verdict(
    stamping: Stamping,
    true_minus_boot_ns: Option<i64>,
    this_boot: bool,
    max_offset: Duration,
    waited_out: bool,
) -> Verdict {
    match true_minus_boot_ns {
        Some(truth) => {
            let shift = truth.saturating_sub(stamping.wall_minus_boot_ns);
            if u128::from(shift.unsigned_abs()) > max_offset.as_nanos() {
                Verdict::Shift(shift)
            } else {
                Verdict::Keep
            }
        }
        None if this_boot && !waited_out => Verdict::Wait,
        None => Verdict::AsStamped,
    }
}

/// Appends `lines` (line protocol, each ending in `\n` and in a
/// timestamp) to `out` with every timestamp moved by `shift_ns`. A line
/// without a timestamp it can read is copied as it is: these lines are the
/// gateway's own, so that never happens, and a wrong time is better than a
/// lost point.
pub fn shift_stamps(lines: &[u8], shift_ns: i64, out: &mut Vec<u8>) {
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let stamp = body
            .iter()
            .rposition(|&b| b == b' ')
            .and_then(|at| Some((at, std::str::from_utf8(&body[at + 1..]).ok()?)))
            .and_then(|(at, text)| Some((at, text.parse::<i64>().ok()?)));
        match stamp {
            Some((at, ts)) => {
                out.extend_from_slice(&body[..=at]);
                out.extend_from_slice(ts.saturating_add(shift_ns).to_string().as_bytes());
                out.push(b'\n');
            }
            None => out.extend_from_slice(line),
        }
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
#[allow(unsafe_code)] // adjtimex(2): no safe wrapper has it
pub fn kernel() -> Option<Kernel> {
    // SAFETY: `timex` is plain integers, for which zero is a value; with
    // `modes` zero adjtimex only reads the state into it.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `timex` is a valid, writable timex for the call's duration.
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
pub fn describe(offset_ns: i64, error_ns: i64) -> String {
    let ms = offset_ns.unsigned_abs() / 1_000_000;
    // Milliseconds matter in a small offset only.
    let size = if ms >= 10_000 {
        Duration::from_secs((ms + 500) / 1_000)
    } else {
        Duration::from_millis(ms)
    };
    let error = Duration::from_millis((error_ns.max(0) as u64).div_ceil(1_000_000));
    let way = if offset_ns >= 0 { "behind" } else { "ahead of" };
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
            sent_boot_ns: 5 * MS,
            took: Duration::from_millis(40),
        };
        let o = estimate(1_020, trip);
        assert_eq!(o.offset_ns, MS / 2);
        assert_eq!(o.error_ns, 20 * MS + MS / 2);
        // The boot started 5 ms before it was sent: at 995 ms, by the
        // authority's clock, give or take the same.
        assert_eq!(o.true_minus_boot_ns, 995 * MS + MS / 2);
    }

    #[test]
    fn a_clock_three_days_behind_is_told_to_within_the_round_trip() {
        let three_days = 3 * 86_400 * 1_000 * MS;
        let now = 1_796_476_000_000 * MS;
        let trip = RoundTrip {
            sent_ns: now - three_days,
            sent_boot_ns: 0,
            took: Duration::from_millis(8),
        };
        // The authority answered anywhere in the round trip.
        for at in [0, 4, 8] {
            let o = estimate((now + at * MS) / MS, trip);
            assert!((o.offset_ns - three_days).abs() <= o.error_ns, "{o:?}");
        }
        let o = estimate((now + 4 * MS) / MS, trip);
        assert_eq!(
            describe(o.offset_ns, o.error_ns),
            "3days behind the authority's (± 5ms)",
            "{o:?}"
        );
        // A clock ahead, from before 1970.
        let o = estimate(
            0,
            RoundTrip {
                sent_ns: 10 * MS,
                sent_boot_ns: 0,
                took: Duration::ZERO,
            },
        );
        assert!(
            describe(o.offset_ns, o.error_ns).contains("ahead of"),
            "{}",
            describe(o.offset_ns, o.error_ns)
        );
    }

    #[test]
    fn absurd_inputs_do_not_overflow() {
        let trip = RoundTrip {
            sent_ns: i64::MIN,
            sent_boot_ns: i64::MIN,
            took: Duration::MAX,
        };
        let o = estimate(i64::MAX, trip);
        assert!(o.error_ns > 0);
        let o = estimate(
            i64::MIN,
            RoundTrip {
                sent_ns: i64::MAX,
                sent_boot_ns: 0,
                took: Duration::ZERO,
            },
        );
        assert_eq!(o.offset_ns, i64::MIN);
    }

    #[test]
    fn the_correction_rule() {
        let boot = BootId([3; 16]);
        let two = Duration::from_secs(2);
        let stamping = Stamping {
            boot,
            wall_minus_boot_ns: 1_000 * MS,
        };
        // Off by more than max_offset: moved by the difference, either way.
        assert_eq!(
            verdict(stamping, Some(4_000 * MS), true, two, false),
            Verdict::Shift(3_000 * MS)
        );
        assert_eq!(
            verdict(stamping, Some(-1_500 * MS), false, two, true),
            Verdict::Shift(-2_500 * MS)
        );
        // Within it, or exactly at it: left alone.
        assert_eq!(
            verdict(stamping, Some(3_000 * MS), true, two, false),
            Verdict::Keep
        );
        assert_eq!(
            verdict(stamping, Some(-999 * MS), true, two, false),
            Verdict::Keep
        );
        // Nothing known yet about this boot: wait, until waited out.
        assert_eq!(verdict(stamping, None, true, two, false), Verdict::Wait);
        assert_eq!(verdict(stamping, None, true, two, true), Verdict::AsStamped);
        // An earlier boot nothing knows of never will be known.
        assert_eq!(
            verdict(stamping, None, false, two, false),
            Verdict::AsStamped
        );
        // Absurd values do not overflow.
        let far = Stamping {
            boot,
            wall_minus_boot_ns: i64::MIN,
        };
        assert_eq!(
            verdict(far, Some(i64::MAX), true, two, false),
            Verdict::Shift(i64::MAX)
        );
    }

    #[test]
    fn shifting_stamps_moves_only_the_trailing_timestamp() {
        let mut out = Vec::new();
        shift_stamps(b"m,t=a v=1 100\nm s=\"x 5\" 200\nweird\n", -50, &mut out);
        assert_eq!(out, b"m,t=a v=1 50\nm s=\"x 5\" 150\nweird\n");
        let mut out = Vec::new();
        shift_stamps(b"m v=1 9223372036854775800\n", 100, &mut out);
        assert_eq!(out, b"m v=1 9223372036854775807\n");
    }

    #[test]
    fn boot_ids_read_as_the_kernel_writes_them() {
        let id = BootId::parse("4f5c2a1e-0b7d-4c3e-9a61-2d8f7e6b5a49\n").unwrap();
        assert_eq!(id.to_string(), "4f5c2a1e-0b7d-4c3e-9a61-2d8f7e6b5a49");
        assert_eq!(BootId::parse("4f5c"), None);
        assert_eq!(BootId::parse("zz5c2a1e-0b7d-4c3e-9a61-2d8f7e6b5a49"), None);
        assert_eq!(BootId::current(), BootId::current());
        let a = boottime_ns();
        assert!(boottime_ns() >= a && a > 0);
    }

    #[test]
    fn the_kernel_answers() {
        let k = kernel().expect("adjtimex");
        assert!(k.max_error_us >= 0);
    }
}
