//! The ticket watcher thread: redeems each `*.ticket` file dropped into
//! `ticket_dir` once it has settled, rejects the bad ones, keeps those
//! that failed for a transient reason for another try, and sees
//! `leasegate enroll FILE` replace the identity file. It sleeps on inotify
//! (or looks every second without it) and tells the lease keeper what it
//! learns as [`Event`]s. It must never touch the lease or the credential
//! in force, never let one ticket hold up another or a renewal, and never
//! log a ticket's secret.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::inotify;

use crate::agent::credential::identity::{self, TicketOutcome};
use crate::agent::credential::lease::{Event, LeaseSettings};
use crate::backoff::Backoff;
use crate::lifecycle::wake::Waker;
use crate::shutdown::Shutdown;

/// How often the directories are looked at without inotify.
const SCAN_WITHOUT_INOTIFY: Duration = Duration::from_secs(1);

/// Wakes the watcher: for a shutdown, or for a reload that asks it to try
/// every waiting ticket again at once, the kept ones included.
#[derive(Clone)]
pub struct Rescan {
    asked: Arc<AtomicBool>,
    waker: Waker,
}

impl Rescan {
    fn new() -> std::io::Result<Rescan> {
        Ok(Rescan {
            asked: Arc::new(AtomicBool::new(false)),
            waker: Waker::new()?,
        })
    }

    /// Every waiting ticket is tried again now.
    pub fn now(&self) {
        self.asked.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    fn take(&self) -> bool {
        self.asked.swap(false, Ordering::SeqCst)
    }
}

/// The watches; None where inotify is not available.
struct Watches {
    fd: OwnedFd,
}

impl Watches {
    fn new(s: &LeaseSettings) -> std::io::Result<Watches> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        let watches = Watches { fd };
        watches.add(s)?;
        Ok(watches)
    }

    /// Watches for files arriving in the ticket directory (created, written,
    /// moved in, their times set by a copy) and for the identity file being
    /// replaced or given to the daemon's user in the state directory.
    fn add(&self, s: &LeaseSettings) -> std::io::Result<()> {
        use inotify::WatchFlags as W;
        let tickets = W::CREATE
            | W::MODIFY
            | W::CLOSE_WRITE
            | W::MOVED_TO
            | W::ATTRIB
            | W::DELETE_SELF
            | W::MOVE_SELF;
        inotify::add_watch(&self.fd, &s.ticket_dir, tickets)?;
        inotify::add_watch(
            &self.fd,
            &s.state_dir,
            W::CLOSE_WRITE | W::MOVED_TO | W::ATTRIB | W::DELETE_SELF | W::MOVE_SELF,
        )?;
        Ok(())
    }

    /// Reads what is queued; false when a watched directory went away or
    /// the queue overflowed (the watches must be made again).
    fn drain(&self) -> bool {
        let mut buf = [std::mem::MaybeUninit::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        let mut intact = true;
        loop {
            match reader.next() {
                Ok(event) => {
                    use inotify::ReadFlags as R;
                    let flags = event.events();
                    if flags
                        .intersects(R::IGNORED | R::QUEUE_OVERFLOW | R::DELETE_SELF | R::MOVE_SELF)
                    {
                        intact = false;
                    }
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return intact,
            }
        }
    }
}

/// Starts the watcher thread; `report` hands its news to the keeper,
/// which started with identity `known` (from the state dir).
pub fn start(
    settings: LeaseSettings,
    known: Option<String>,
    report: impl Fn(Event) + Send + 'static,
    shutdown: Shutdown,
) -> std::io::Result<(Rescan, std::thread::JoinHandle<()>)> {
    let rescan = Rescan::new()?;
    let woken = rescan.waker.clone();
    shutdown.on_trigger(move || woken.wake());
    let r = rescan.clone();
    let thread = crate::lifecycle::threads::spawn("tickets", move || {
        Watcher {
            settings,
            report: Box::new(report),
            later: HashMap::new(),
            known_identity: known,
            identity_file: None,
        }
        .run(&r, &shutdown)
    })?;
    Ok((rescan, thread))
}

struct Watcher {
    settings: LeaseSettings,
    report: Box<dyn Fn(Event) + Send>,
    /// Tickets kept for another try: their backoff and when they are due.
    /// Each has its own, so that one ticket never holds up another.
    later: HashMap<PathBuf, (Backoff, Instant)>,
    /// The identity the keeper has, as far as this thread knows.
    known_identity: Option<String>,
    /// The identity file as last seen.
    identity_file: Stamp,
}

impl Watcher {
    fn run(mut self, rescan: &Rescan, shutdown: &Shutdown) {
        self.identity_file = identity_stamp(&self.settings);
        let mut watches = self.watch(true);
        while !shutdown.is_triggered() {
            if watches.is_none() {
                // The directory may be back (or inotify usable again).
                watches = self.watch(false);
            }
            let next = self.scan(shutdown);
            self.look_for_enrollment();
            let timeout = match (&watches, next) {
                (Some(_), next) => next,
                (None, Some(next)) => Some(next.min(SCAN_WITHOUT_INOTIFY)),
                (None, None) => Some(SCAN_WITHOUT_INOTIFY),
            };
            let (woken, changed) = wait(watches.as_ref(), rescan, timeout);
            if woken && rescan.take() {
                self.later.clear();
            }
            if changed && !watches.as_ref().is_some_and(Watches::drain) {
                watches = None;
            }
        }
    }

    /// The watches, or None (said once, when `first`) where inotify cannot
    /// watch the directories.
    fn watch(&self, first: bool) -> Option<Watches> {
        match Watches::new(&self.settings) {
            Ok(w) => {
                if !first {
                    log::info!(
                        "watching {} with inotify again",
                        self.settings.ticket_dir.display()
                    );
                }
                Some(w)
            }
            Err(e) => {
                if first {
                    log::warn!(
                        "cannot watch {} with inotify ({e}); looking at it every second instead",
                        self.settings.ticket_dir.display()
                    );
                }
                None
            }
        }
    }

    /// Redeems every settled ticket that is not waiting for its retry;
    /// returns how long until the next one settles or is due.
    fn scan(&mut self, shutdown: &Shutdown) -> Option<Duration> {
        let waiting = identity::waiting_tickets(&self.settings.ticket_dir);
        self.later.retain(|p, _| waiting.settled.contains(p));
        let mut next = waiting.settling_in;
        for path in waiting.settled {
            if shutdown.is_triggered() {
                return None;
            }
            let now = Instant::now();
            if let Some((_, at)) = self.later.get(&path).filter(|(_, at)| now < *at) {
                next = Some(next.map_or(*at - now, |n| n.min(*at - now)));
                continue;
            }
            if let Some(retry) = self.redeem(path) {
                next = Some(next.map_or(retry, |n| n.min(retry)));
            }
        }
        next
    }

    /// One ticket: enrolled (the keeper hears of it), rejected (renamed,
    /// with the reason beside it) or kept; Some(when to try again) if kept.
    fn redeem(&mut self, path: PathBuf) -> Option<Duration> {
        let s = &self.settings;
        match identity::process_ticket(
            &path,
            &s.state_dir,
            &s.lease.identity_name,
            s.lease.system_trust,
        ) {
            TicketOutcome::Enrolled(new) => {
                log::info!(
                    "enrolled with ticket {} as identity {} ({}), role {}",
                    path.display(),
                    new.identity_id,
                    new.identity_name,
                    new.role
                );
                self.later.remove(&path);
                self.known_identity = Some(new.identity_id.clone());
                (self.report)(Event::Enrolled(Box::new(new)));
                None
            }
            TicketOutcome::Rejected(e) => {
                log::error!(
                    "ticket {} rejected ({}): {}; renamed .rejected with the reason beside it",
                    path.display(),
                    e.reason_code(),
                    crate::error_chain(&e)
                );
                None
            }
            TicketOutcome::Kept(e) => {
                let entry = self.later.entry(path.clone()).or_insert_with(|| {
                    (
                        Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 0.25),
                        Instant::now(),
                    )
                });
                let d = entry.0.next_delay();
                entry.1 = Instant::now() + d;
                let message = crate::error_chain(&e);
                log::warn!(
                    "ticket {} kept for another try in {}: {message}",
                    path.display(),
                    humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
                );
                (self.report)(Event::TicketTrouble(message));
                Some(d)
            }
        }
    }

    /// `leasegate enroll FILE` writes the identity file itself: a new
    /// identity there goes to the keeper. The file is read only when it
    /// changed (its inode, size, times or owner), so that one the daemon
    /// cannot read is said once, not at every wake.
    fn look_for_enrollment(&mut self) {
        let stamp = identity_stamp(&self.settings);
        if stamp == self.identity_file {
            return;
        }
        self.identity_file = stamp;
        let Some(loaded) = identity::load_identity(&self.settings.state_dir) else {
            if self.identity_file.is_none() {
                // Gone (the keeper forgot a revoked identity): the same
                // identity put back counts as new.
                self.known_identity = None;
            }
            return;
        };
        if self.known_identity.as_deref() == Some(loaded.identity_id.as_str()) {
            return;
        }
        log::info!(
            "identity {} ({}) enrolled from the command line",
            loaded.identity_id,
            loaded.identity_name
        );
        self.known_identity = Some(loaded.identity_id.clone());
        (self.report)(Event::Enrolled(Box::new(loaded)));
    }
}

/// What tells a replaced or re-owned identity file from the one seen
/// before: inode, size, modification and change time (a chown changes
/// the latter).
type Stamp = Option<(u64, u64, i64, i64, i64, i64)>;

fn identity_stamp(s: &LeaseSettings) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(s.state_dir.join(identity::IDENTITY_FILE)).ok()?;
    Some((
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// Sleeps until the directories change, the watcher is woken or `timeout`
/// passes (None: no timeout). Returns (woken, directories changed).
fn wait(watches: Option<&Watches>, rescan: &Rescan, timeout: Option<Duration>) -> (bool, bool) {
    let fds: Vec<BorrowedFd<'_>> = watches.iter().map(|w| w.fd.as_fd()).collect();
    let (ready, woken) = crate::lifecycle::wake::wait(&fds, &rescan.waker, timeout);
    (woken, ready.first().copied().unwrap_or(false))
}
