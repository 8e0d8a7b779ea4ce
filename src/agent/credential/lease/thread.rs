//! The lease keeper's thread: feeds the [`Keeper`] state machine its
//! events (tickets, write outcomes, the clock) and publishes its view for
//! `leasegate status` and the metrics page. It sleeps on one channel until
//! the next event or [`Keeper::next_wake`], and holds the real parts the
//! machine is tested without: the authority client ([`RemoteAuthority`])
//! and the state files ([`StateFiles`]). It never writes points and never
//! logs a secret.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::agent::credential::identity::{self, BootStamp, Identity, StoredLease};
use crate::agent::credential::lease::{
    Ask, Authority, Event, Keeper, LeaseSettings, LeaseStore, LeaseView,
};
use crate::agent::credential::tickets::{self, Rescan};
use crate::agent::credential::{Outcome, Outcomes, Slot};
use crate::agent::store::trueclock::TrueClock;
use crate::lifecycle::health::Beat;
use crate::shutdown::Shutdown;
use crate::wire::api::{LeaseGrant, LeaseStatus};
use crate::wire::client::ClientError;
use crate::wire::health::HealthReport;

enum Message {
    Event(Event),
    Stop,
}

/// What the rest of the daemon holds of the keeper.
pub struct KeeperHandle {
    /// The keeper's state, for status and metrics.
    pub view: Arc<Mutex<LeaseView>>,
    /// For a reload: try every waiting ticket again.
    pub rescan: Rescan,
    /// Where the daemon puts what makes each lease request's health report.
    pub probe: HealthProbe,
}

/// Starts the keeper and its ticket watcher, each on its thread; `spawn`
/// starts the keeper's (so that the daemon hears when it ends). Returns
/// the line for the writer's outcomes, the handle and the keeper's thread.
pub fn start(
    settings: LeaseSettings,
    slot: Arc<Slot>,
    clock: Arc<TrueClock>,
    beat: Arc<Beat>,
    shutdown: &Shutdown,
    spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> std::io::Result<std::thread::JoinHandle<()>>,
) -> std::io::Result<(Outcomes, KeeperHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel::<Message>();
    let stop = tx.clone();
    shutdown.on_trigger(move || {
        let _ = stop.send(Message::Stop);
    });
    // What the state dir holds is read before the ticket watcher starts,
    // so that a ticket redeemed at once replaces a known identity.
    let dir = settings.state_dir.clone();
    let identity = identity::load_identity(&dir);
    let known = identity.as_ref().map(|i| i.identity_id.clone());
    let now = Instant::now();
    let probe = HealthProbe::default();
    let keeper = Keeper::new(
        settings.clone(),
        identity,
        identity::load_lease(&dir).map(|mut lease| {
            // Within the same boot its age is told by the boot's clock:
            // a step of the wall clock since must not make it look
            // expired (or younger than it is).
            lease.received_ms = lease.received_by_the_clock_now(&BootStamp::now(), crate::now_ms());
            lease
        }),
        identity::load_retired(&dir),
        RemoteAuthority {
            beat: beat.clone(),
            answered: Default::default(),
            probe: probe.clone(),
        },
        StateFiles { dir },
        slot,
        now,
        crate::now_ms(),
    );
    let mut keeper = keeper;
    if !clock.knows_this_boot() {
        // A stored lease may be in force, but only a new answer tells
        // this boot's time; points stamped on receipt wait for it.
        keeper.lease_for_the_time();
    }
    let view = Arc::new(Mutex::new(keeper.view(now, crate::now_ms())));
    let published = view.clone();
    let events = tx.clone();
    let report = move |e: Event| {
        let _ = events.send(Message::Event(e));
    };
    // The watcher's thread is not joined: it stops at shutdown on its own,
    // and nothing it holds needs draining.
    let (rescan, _watcher) = tickets::start(settings, known, report, shutdown.clone())?;
    let thread = spawn(Box::new(move || {
        run(keeper, &rx, &published, &clock, &beat)
    }))?;
    let outcomes = Outcomes::new(move |outcome| {
        let event = match outcome {
            Outcome::Wrote(c) => c.lease_id().map(|id| Event::Wrote(id.to_owned())),
            Outcome::Refused { credential, .. } => credential
                .lease_id()
                .map(|id| Event::Refused(id.to_owned())),
        };
        if let Some(event) = event {
            let _ = tx.send(Message::Event(event));
        }
    });
    Ok((
        outcomes,
        KeeperHandle {
            view,
            rescan,
            probe,
        },
        thread,
    ))
}

/// Until shutdown: the next event, or the time something is due (an
/// enrolled gateway with a lease of an hour wakes a few times an hour).
fn run<A: Authority, S: LeaseStore>(
    mut keeper: Keeper<A, S>,
    events: &Receiver<Message>,
    view: &Mutex<LeaseView>,
    clock: &TrueClock,
    beat: &Beat,
) {
    let mut told = None;
    loop {
        let wait = keeper
            .next_wake()
            .map(|t| t.saturating_duration_since(Instant::now()));
        beat.set_idle(true);
        let message = match wait {
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(wait) => events.recv_timeout(wait),
        };
        beat.set_idle(false);
        let event = match message {
            Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Message::Event(e)) => e,
            Err(RecvTimeoutError::Timeout) => Event::Tick,
        };
        keeper.on_event(event, Instant::now());
        let now = keeper.view(Instant::now(), crate::now_ms());
        if now.clock_told != told {
            told = now.clock_told;
            if let Some(t) = told {
                clock.told_by_authority(t);
            }
        }
        *view.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }
}

/// The authority, through the identity's own client (its URL and the
/// certificate it pins). Each call beats first: calls are bounded by the
/// client's timeouts, well within the watchdog's limit.
pub struct RemoteAuthority {
    beat: Arc<Beat>,
    /// The URL that answered last, per identity: the next call starts
    /// there, so a dead replica costs one failed call, not one per call.
    answered: std::collections::HashMap<String, String>,
    /// The gateway's health, sent with each lease request.
    probe: HealthProbe,
}

/// What makes the health report each lease request carries: set once the
/// daemon's reporter exists (it needs the keeper's view, so it is made
/// after the keeper). Until then requests carry none.
pub type HealthProbe = Arc<std::sync::OnceLock<Box<dyn Fn() -> HealthReport + Send + Sync>>>;

impl RemoteAuthority {
    /// Runs `call` with the identity's client, starting at the URL that
    /// answered last, and remembers which one answered this time.
    fn with_client<T>(
        &mut self,
        identity: &Identity,
        call: impl FnOnce(&crate::wire::client::AuthorityClient) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.beat.beat();
        let client = identity
            .client()?
            .preferring(self.answered.get(&identity.identity_id).map(String::as_str));
        let outcome = call(&client);
        self.answered
            .insert(identity.identity_id.clone(), client.url().to_owned());
        outcome
    }
}

impl Authority for RemoteAuthority {
    fn create_lease(&mut self, identity: &Identity, ask: &Ask) -> Result<LeaseGrant, ClientError> {
        let report = self.probe.get().map(|probe| HealthReport {
            retry_within_secs: ask.retry_within.map(|d| d.as_secs_f64().ceil() as u64),
            ..probe()
        });
        self.with_client(identity, |c| {
            c.create_lease(&identity.credential, ask.ttl, report.as_ref())
        })
    }

    fn revoke(&mut self, identity: &Identity, lease_id: &str) -> Result<(), ClientError> {
        self.with_client(identity, |c| {
            c.revoke(&identity.credential, lease_id).map(|_| ())
        })
    }

    fn active_leases(&mut self, identity: &Identity) -> Result<Vec<String>, ClientError> {
        self.with_client(identity, |c| {
            Ok(c.leases(&identity.credential)?
                .into_iter()
                .filter(|l| l.status == LeaseStatus::Active)
                .map(|l| l.id)
                .collect())
        })
    }
}

/// `lease.json`, `identity.json` and `retired.json` in the state dir.
pub struct StateFiles {
    dir: PathBuf,
}

impl LeaseStore for StateFiles {
    fn save_lease(&mut self, lease: &StoredLease) {
        if let Err(e) = identity::save_lease(&self.dir, lease) {
            log::warn!("cannot store the lease in {}: {e}", self.dir.display());
        }
    }

    fn remove_lease(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(identity::LEASE_FILE));
    }

    fn forget_identity(&mut self) {
        identity::forget(&self.dir);
    }

    fn save_retired(&mut self, old: &Identity) {
        identity::save_retired(&self.dir, old);
    }

    fn clear_retired(&mut self, identity_id: &str) {
        identity::clear_retired(&self.dir, identity_id);
    }

    fn save_identity(&mut self, identity: &Identity) {
        if let Err(e) = identity::save_identity(&self.dir, identity) {
            log::warn!(
                "cannot store the identity in {}: {}",
                self.dir.display(),
                crate::error_chain(&e)
            );
        }
    }
}
