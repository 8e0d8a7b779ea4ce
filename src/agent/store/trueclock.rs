//! The gateway's trusted time, and the correction of receipt stamps before
//! they are sent (README, "Receipt times"). Per boot, it learns where the
//! boot started by a trusted clock (the authority's, or a synchronised
//! kernel's), and so what each [`Stamping`] should have been.
//!
//! It never changes a point that carries its own timestamp, never sets the
//! system clock, and never holds points past `clock.max_wait` for want of
//! a reference.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::agent::stats::Stats;
use crate::agent::store::spool::Batch;
use crate::clock::{self, BootId, Stamping, Verdict};
use crate::config::ClockSettings;

/// What a lease answer told of the true time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockTold {
    /// Which lease since start (`leases_obtained`) told it.
    pub lease: u64,
    /// Where this boot started by the authority's clock; None from an
    /// authority that does not send its time.
    pub true_minus_boot_ns: Option<i64>,
}
/// The state file: what was learnt per boot, so that a daemon restarted
/// within the same boot still corrects its earlier points. Not synced:
/// after a power cut the boot is a new one anyway.
pub const CLOCK_FILE: &str = "clock.json";
/// Boots whose reference is kept: a spool rarely outlives more.
const BOOTS_KEPT: usize = 4;
/// A reference that moved less than this is not written again.
const SAVE_WHEN_MOVED_NS: i64 = 100_000_000;
/// How often an unsynchronised kernel is asked again.
const KERNEL_EVERY: Duration = Duration::from_secs(1);
/// The longest a wait for the time sleeps before looking again.
const WAIT_STEP: Duration = Duration::from_secs(1);

/// Who may tell the true time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The authority, at every lease (lease mode).
    Authority,
    /// A synchronised kernel (static credentials, or an authority that
    /// does not send its time).
    Kernel,
}

/// Where one boot started by a trusted clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Known {
    boot_id: String,
    true_minus_boot_ns: i64,
    /// "authority" or "kernel".
    source: String,
    /// Unix ms by the gateway's clock, for a person reading the file.
    measured_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ClockFile {
    boots: Vec<Known>,
}

/// What a batch's receipt stamps came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Ready to send (corrected where needed).
    Ready,
    /// No trusted time yet: look again after this long.
    Wait(Duration),
}

/// The kernel's clock state; a function so that tests can give it.
pub type KernelState = Box<dyn Fn() -> Option<clock::Kernel> + Send + Sync>;

/// The trusted time: where each boot started by a trusted clock (the true
/// time less `CLOCK_BOOTTIME`). Needed because a point without a timestamp
/// was stamped by the gateway's wall clock, which may be hours or years
/// off after a boot without a real-time clock.
pub struct TrueClock {
    boot: BootId,
    /// `boot` as the state file writes it, made once.
    boot_text: String,
    file: Option<PathBuf>,
    settings: ClockSettings,
    kernel: KernelState,
    inner: Mutex<Inner>,
}

struct Inner {
    trust: Trust,
    known: Vec<Known>,
    /// This boot's reference as last written to the file.
    saved: Option<i64>,
    kernel_asked: Option<Instant>,
    /// Since when points have waited for the time (`clock.max_wait`
    /// counts from there): the first batch that could have gone but for
    /// the time. With leases that is once a lease is in force, so points
    /// kept while the gateway waited for its ticket still get corrected.
    waiting_since: Option<Instant>,
    /// The shift last logged, so that each change is logged once.
    logged: Option<Verdict>,
}

impl TrueClock {
    /// The trusted time as `state_dir/clock.json` left it (None: no file,
    /// for tests), trusting `trust`.
    pub fn open(
        state_dir: Option<PathBuf>,
        settings: ClockSettings,
        trust: Trust,
        kernel: KernelState,
    ) -> TrueClock {
        TrueClock::for_boot(BootId::current(), state_dir, settings, trust, kernel)
    }

    fn for_boot(
        boot: BootId,
        state_dir: Option<PathBuf>,
        settings: ClockSettings,
        trust: Trust,
        kernel: KernelState,
    ) -> TrueClock {
        let file = state_dir.map(|d| d.join(CLOCK_FILE));
        let known = file.as_deref().map(load).unwrap_or_default();
        let this = boot.to_string();
        let saved = known
            .iter()
            .find(|k| k.boot_id == this)
            .map(|k| k.true_minus_boot_ns);
        if saved.is_some() {
            log::info!("this boot's true time is known from {CLOCK_FILE} (a restart)");
        }
        TrueClock {
            boot,
            boot_text: this,
            file,
            settings,
            kernel,
            inner: Mutex::new(Inner {
                trust,
                known,
                saved,
                kernel_asked: None,
                waiting_since: None,
                logged: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this boot's true time is known.
    pub fn knows_this_boot(&self) -> bool {
        self.reference(&self.lock(), self.boot).is_some()
    }

    /// A lease answer told the time (or, from an older authority, did
    /// not: the kernel's state decides from then on).
    pub fn told_by_authority(&self, told: ClockTold) {
        let mut inner = self.lock();
        match told.true_minus_boot_ns {
            Some(truth) => {
                inner.trust = Trust::Authority;
                self.learn(&mut inner, truth, "authority");
            }
            None if inner.trust == Trust::Authority => {
                log::info!(
                    "the authority does not send its time; the kernel's clock state decides when points stamped on receipt are trusted"
                );
                inner.trust = Trust::Kernel;
            }
            None => {}
        }
    }

    /// Corrects the receipt stamps of `batch` where a trusted time says
    /// they are off by more than `clock.max_offset`, counting what it
    /// corrected and what goes uncorrected; or says to wait. A batch it
    /// settled holds no receipt stamps any more. Without a trusted time,
    /// points go as stamped after `clock.max_wait`, as do points of an
    /// earlier boot nothing can correct.
    pub fn settle(&self, batch: &mut Batch, stats: &Stats) -> Settled {
        if batch.timed.is_empty() {
            return Settled::Ready;
        }
        let mut inner = self.lock();
        self.ask_kernel(&mut inner);
        let waited = inner.waiting_since.map_or(Duration::ZERO, |t| t.elapsed());
        let waited_out = waited >= self.settings.max_wait;
        let verdicts: Vec<Verdict> = batch
            .timed
            .iter()
            .map(|t| {
                clock::verdict(
                    t.stamping,
                    self.reference(&inner, t.stamping.boot),
                    t.stamping.boot == self.boot,
                    self.settings.max_offset,
                    waited_out,
                )
            })
            .collect();
        if verdicts.contains(&Verdict::Wait) {
            if inner.waiting_since.is_none() {
                inner.waiting_since = Some(Instant::now());
                log::info!(
                    "points stamped on receipt wait for a trusted time ({}), for at most clock.max_wait ({})",
                    match inner.trust {
                        Trust::Authority => "the authority's, at the next lease",
                        Trust::Kernel => "a synchronised kernel's",
                    },
                    humantime::format_duration(self.settings.max_wait)
                );
            }
            let left = self.settings.max_wait.saturating_sub(waited);
            return Settled::Wait(left.min(WAIT_STEP).max(Duration::from_millis(10)));
        }
        let mut data = Vec::new();
        let mut copied = 0;
        for (timed, verdict) in batch.timed.iter().zip(&verdicts) {
            match *verdict {
                Verdict::Shift(shift) => {
                    Stats::add(&stats.points_time_corrected, timed.points);
                    data.extend_from_slice(&batch.data[copied..timed.range.start]);
                    clock::shift_stamps(&batch.data[timed.range.clone()], shift, &mut data);
                    copied = timed.range.end;
                }
                Verdict::AsStamped => Stats::add(&stats.points_time_unverified, timed.points),
                Verdict::Keep | Verdict::Wait => {}
            }
            self.log_change(&mut inner, *verdict, timed.stamping.boot == self.boot);
        }
        if copied > 0 {
            data.extend_from_slice(&batch.data[copied..]);
            batch.data = data;
        }
        batch.timed.clear();
        Settled::Ready
    }

    /// Where `boot` started by a trusted clock, if known.
    fn reference(&self, inner: &Inner, boot: BootId) -> Option<i64> {
        let other;
        let id = if boot == self.boot {
            &self.boot_text
        } else {
            other = boot.to_string();
            &other
        };
        inner
            .known
            .iter()
            .find(|k| &k.boot_id == id)
            .map(|k| k.true_minus_boot_ns)
    }

    /// Trusting the kernel: once it says it is synchronised, the wall
    /// clock is the true time, and where it puts the boot's start is
    /// learnt (again, so that a later step is seen against it).
    fn ask_kernel(&self, inner: &mut Inner) {
        if inner.trust != Trust::Kernel
            || inner
                .kernel_asked
                .is_some_and(|at| at.elapsed() < KERNEL_EVERY)
        {
            return;
        }
        inner.kernel_asked = Some(Instant::now());
        if (self.kernel)().is_some_and(|k| k.synchronized) {
            let now = Stamping::now(self.boot);
            self.learn(inner, now.wall_minus_boot_ns, "kernel");
        }
    }

    fn learn(&self, inner: &mut Inner, truth: i64, source: &str) {
        let id = self.boot_text.clone();
        inner.known.retain(|k| k.boot_id != id);
        inner.known.insert(
            0,
            Known {
                boot_id: id,
                true_minus_boot_ns: truth,
                source: source.to_owned(),
                measured_ms: crate::now_ms(),
            },
        );
        inner.known.truncate(BOOTS_KEPT);
        let moved = inner
            .saved
            .is_none_or(|s| s.abs_diff(truth) > SAVE_WHEN_MOVED_NS as u64);
        if let (true, Some(path)) = (moved, &self.file) {
            let file = ClockFile {
                boots: inner.known.clone(),
            };
            match crate::lifecycle::files::write_json(path, &file, false) {
                Ok(()) => inner.saved = Some(truth),
                Err(e) => log::warn!("cannot store {}: {e}", path.display()),
            }
        }
    }

    /// Logs a correction (or its end) once per change of more than
    /// `clock.max_offset`.
    fn log_change(&self, inner: &mut Inner, verdict: Verdict, this_boot: bool) {
        let near = |a: Verdict, b: Verdict| match (a, b) {
            (Verdict::Shift(x), Verdict::Shift(y)) => {
                u128::from(x.abs_diff(y)) <= self.settings.max_offset.as_nanos()
            }
            (a, b) => a == b,
        };
        if !this_boot || inner.logged.is_some_and(|l| near(l, verdict)) {
            if !this_boot && verdict == Verdict::AsStamped {
                log::debug!("points stamped in an earlier boot go as stamped");
            }
            return;
        }
        match verdict {
            Verdict::Shift(shift) => log::warn!(
                "points stamped on receipt are corrected by {}{} (the gateway's clock was off when they came)",
                if shift < 0 { "-" } else { "+" },
                humantime::format_duration(Duration::from_millis(shift.unsigned_abs() / 1_000_000))
            ),
            Verdict::Keep if inner.logged.is_some() => {
                log::info!("points stamped on receipt need no correction any more")
            }
            Verdict::AsStamped => log::warn!(
                "no trusted time after clock.max_wait ({}); points stamped on receipt go as stamped",
                humantime::format_duration(self.settings.max_wait)
            ),
            Verdict::Keep | Verdict::Wait => {}
        }
        inner.logged = Some(verdict);
    }
}

fn load(path: &std::path::Path) -> Vec<Known> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            log::warn!("cannot read {}: {e}", path.display());
            return Vec::new();
        }
    };
    match serde_json::from_slice::<ClockFile>(&text) {
        Ok(f) => f.boots,
        Err(e) => {
            log::warn!("{} is damaged ({e}); ignoring it", path.display());
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::agent::store::spool::Timed;

    const S: i64 = 1_000_000_000;
    const BOOT: BootId = BootId([1; 16]);

    fn settings(max_wait: Duration) -> ClockSettings {
        ClockSettings {
            max_offset: Duration::from_secs(2),
            max_wait,
        }
    }

    /// A batch of one plain line and `stamped` lines stamped with the
    /// given lead of the wall clock on the boot's time.
    fn batch(boot: BootId, lead_ns: i64, stamped: &[i64]) -> Batch {
        let mut data = b"own v=1 5\n".to_vec();
        let start = data.len();
        for ts in stamped {
            data.extend_from_slice(format!("m v=1 {ts}\n").as_bytes());
        }
        let end = data.len();
        let mut batch = Batch::default();
        batch.points = 1 + stamped.len() as u64;
        batch.data = data;
        batch.timed = vec![Timed {
            range: start..end,
            points: stamped.len() as u64,
            stamping: Stamping {
                boot,
                wall_minus_boot_ns: lead_ns,
            },
        }];
        batch
    }

    fn kernel_says(synced: &Arc<AtomicBool>) -> KernelState {
        let synced = synced.clone();
        Box::new(move || {
            Some(clock::Kernel {
                synchronized: synced.load(Ordering::Relaxed),
                max_error_us: 0,
            })
        })
    }

    #[test]
    fn static_credentials_with_a_kernel_that_never_syncs_wait_max_wait_then_send_as_stamped() {
        let synced = Arc::new(AtomicBool::new(false));
        let clock = TrueClock::for_boot(
            BOOT,
            None,
            settings(Duration::from_millis(300)),
            Trust::Kernel,
            kernel_says(&synced),
        );
        let stats = Stats::new(0);
        let mut b = batch(BOOT, 100 * S, &[7 * S, 8 * S]);
        let started = Instant::now();
        let mut waits = 0;
        while let Settled::Wait(d) = clock.settle(&mut b, &stats) {
            assert!(d <= Duration::from_millis(300), "{d:?}");
            waits += 1;
            assert!(waits < 1000, "never stopped waiting");
            std::thread::sleep(d.min(Duration::from_millis(20)));
        }
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(b.data, b"own v=1 5\nm v=1 7000000000\nm v=1 8000000000\n");
        assert_eq!(Stats::get(&stats.points_time_unverified), 2);
        assert_eq!(Stats::get(&stats.points_time_corrected), 0);
        assert!(b.timed.is_empty());
    }

    #[test]
    fn a_kernel_that_syncs_tells_the_boot_its_time_and_earlier_stamps_are_moved() {
        let synced = Arc::new(AtomicBool::new(false));
        let clock = TrueClock::for_boot(
            BOOT,
            None,
            settings(Duration::from_secs(600)),
            Trust::Kernel,
            kernel_says(&synced),
        );
        let stats = Stats::new(0);
        // Stamped while the clock read 3 days less than it does now.
        let now = Stamping::now(BOOT).wall_minus_boot_ns;
        let days = 3 * 86_400 * S;
        let mut b = batch(BOOT, now - days, &[50 * S]);
        assert!(matches!(clock.settle(&mut b, &stats), Settled::Wait(_)));
        synced.store(true, Ordering::Relaxed);
        // The kernel is asked at most once a second.
        std::thread::sleep(KERNEL_EVERY);
        assert_eq!(clock.settle(&mut b, &stats), Settled::Ready);
        let line = String::from_utf8(b.data.clone()).unwrap();
        let ts: i64 = line.lines().nth(1).unwrap()[6..].parse().unwrap();
        assert!((ts - (50 * S + days)).abs() < S / 10, "{line}");
        assert!(line.starts_with("own v=1 5\n"), "own times stay: {line}");
        assert_eq!(Stats::get(&stats.points_time_corrected), 1);
        // Stamped by the synchronised clock: sent as they are.
        let mut b = batch(BOOT, now, &[60 * S]);
        assert_eq!(clock.settle(&mut b, &stats), Settled::Ready);
        assert!(b.data.ends_with(b"m v=1 60000000000\n"));
    }

    #[test]
    fn the_authority_corrects_a_boot_and_a_restart_in_the_same_boot_remembers_it() {
        let dir = tempfile::tempdir().unwrap();
        let never = Arc::new(AtomicBool::new(false));
        let open = || {
            TrueClock::for_boot(
                BOOT,
                Some(dir.path().to_owned()),
                settings(Duration::from_secs(600)),
                Trust::Authority,
                kernel_says(&never),
            )
        };
        let clock = open();
        let stats = Stats::new(0);
        // Before the first lease: points wait.
        let mut b = batch(BOOT, 10 * S, &[20 * S]);
        assert!(matches!(clock.settle(&mut b, &stats), Settled::Wait(_)));
        // The authority puts the boot's start 2 h later than the clock did.
        let two_hours = 7_200 * S;
        clock.told_by_authority(ClockTold {
            lease: 1,
            true_minus_boot_ns: Some(10 * S + two_hours),
        });
        assert_eq!(clock.settle(&mut b, &stats), Settled::Ready);
        assert!(
            b.data
                .ends_with(format!("m v=1 {}\n", 20 * S + two_hours).as_bytes())
        );
        // Restarted: the file tells it, no lease needed.
        let again = open();
        assert!(again.knows_this_boot());
        let mut b = batch(BOOT, 10 * S, &[30 * S]);
        assert_eq!(again.settle(&mut b, &stats), Settled::Ready);
        assert!(
            b.data
                .ends_with(format!("m v=1 {}\n", 30 * S + two_hours).as_bytes())
        );
        // Within max_offset of the truth: left alone.
        let mut b = batch(BOOT, 10 * S + two_hours - S, &[40 * S]);
        assert_eq!(again.settle(&mut b, &stats), Settled::Ready);
        assert!(b.data.ends_with(b"m v=1 40000000000\n"));
        // An earlier boot nothing knows of: sent as stamped, counted.
        let mut b = batch(BootId([9; 16]), 0, &[1, 2, 3]);
        assert_eq!(again.settle(&mut b, &stats), Settled::Ready);
        assert_eq!(Stats::get(&stats.points_time_unverified), 3);
        assert_eq!(Stats::get(&stats.points_time_corrected), 2);
    }

    #[test]
    fn an_authority_without_its_time_leaves_the_kernel_to_decide() {
        let synced = Arc::new(AtomicBool::new(true));
        let clock = TrueClock::for_boot(
            BOOT,
            None,
            settings(Duration::from_secs(600)),
            Trust::Authority,
            kernel_says(&synced),
        );
        let stats = Stats::new(0);
        let mut b = batch(BOOT, Stamping::now(BOOT).wall_minus_boot_ns, &[5 * S]);
        assert!(matches!(clock.settle(&mut b, &stats), Settled::Wait(_)));
        clock.told_by_authority(ClockTold {
            lease: 1,
            true_minus_boot_ns: None,
        });
        assert_eq!(clock.settle(&mut b, &stats), Settled::Ready);
        assert!(b.data.ends_with(b"m v=1 5000000000\n"));
    }

    #[test]
    fn a_damaged_clock_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CLOCK_FILE), "{not json").unwrap();
        let never = Arc::new(AtomicBool::new(false));
        let clock = TrueClock::for_boot(
            BOOT,
            Some(dir.path().to_owned()),
            settings(Duration::from_secs(1)),
            Trust::Authority,
            kernel_says(&never),
        );
        assert!(!clock.knows_this_boot());
    }
}
