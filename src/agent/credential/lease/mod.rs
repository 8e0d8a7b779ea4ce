//! The lease keeper's decisions: a state machine that holds the gateway's
//! identity and lease and decides, for every [`Event`] and the time it
//! came at, what to ask the authority and which credential is in force
//! ([`Slot`]): renewals, backoff, replacing a refused lease, revoking
//! replaced ones. It does no I/O of its own: the network is behind
//! [`Authority`], the state files behind [`LeaseStore`], time comes in as
//! `now`. It never writes points and never logs a secret.

use crate::agent::store::trueclock::ClockTold;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::agent::credential::identity::{Identity, StoredLease};
use crate::agent::credential::{Credential, Origin, Slot};
use crate::backoff::Backoff;
use crate::config::{Api, Influx, LeaseConfig};
use crate::secret::Secret;
use crate::wire::api::{ErrorCode, LEASE_RETRY_CAP, LEASE_RETRY_FIRST, LeaseGrant, LeaseStatus};
use crate::wire::client::ClientError;

/// How long a replaced lease stays valid for writes already in flight: it
/// is revoked this long after its successor is in force.
pub const REVOKE_GRACE: Duration = Duration::from_secs(3);
/// The share of a lease's lifetime after which it is renewed, before
/// jitter.
pub const RENEW_AT: f64 = 2.0 / 3.0;
/// Longer lease lifetimes from the authority are taken as this (a year):
/// bad answers must not overflow the clock arithmetic.
pub const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// What the keeper needs from the configuration.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub state_dir: PathBuf,
    pub ticket_dir: PathBuf,
    pub lease: LeaseConfig,
}

/// The keeper's state as `leasegate status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaseView {
    /// "waiting for a ticket" or "enrolled".
    pub state: String,
    pub identity_id: Option<String>,
    pub identity_name: Option<String>,
    pub authority_url: Option<String>,
    pub lease_id: Option<String>,
    /// Unix ms, projected from the monotonic clock.
    pub lease_expires_ms: Option<i64>,
    pub next_renewal_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Leases obtained since start (the first one included).
    pub leases_obtained: u64,
    /// Leases that replaced a previous one.
    pub renewals: u64,
    /// The gateway clock's offset to the authority's at the last lease that
    /// told it (milliseconds to add to the gateway's time), its error
    /// bound, and when it was measured (Unix ms by the gateway's clock).
    #[serde(default)]
    pub clock_offset_ms: Option<f64>,
    #[serde(default)]
    pub clock_offset_error_ms: Option<f64>,
    #[serde(default)]
    pub clock_measured_ms: Option<i64>,
    /// What the last lease answer told of the time, for the receipt-stamp
    /// corrections (`crate::agent::store::trueclock`); not part of the status.
    #[serde(skip)]
    pub clock_told: Option<ClockTold>,
}

/// What a lease request asks for, and tells of the gateway's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ask {
    /// The lifetime asked for; the role's default when None.
    pub ttl: Option<Duration>,
    /// While the keeper backs off (failed calls, refused leases): the
    /// longest it may wait before its next call, so that the authority
    /// does not take a gateway on its backoff for a late one.
    pub retry_within: Option<Duration>,
}

/// The authority's lease calls, for one identity each: the real client in
/// the daemon (`crate::agent::credential::lease::thread`), a fake in the tests.
/// The keeper does no I/O but through this and [`LeaseStore`], so that its
/// tests (`lease/tests.rs`) run in milliseconds.
pub trait Authority {
    fn create_lease(&mut self, identity: &Identity, ask: &Ask) -> Result<LeaseGrant, ClientError>;
    fn revoke(&mut self, identity: &Identity, lease_id: &str) -> Result<(), ClientError>;
    /// The ids of the identity's active leases.
    fn active_leases(&mut self, identity: &Identity) -> Result<Vec<String>, ClientError>;
}

/// The state files the keeper keeps (`state_dir`: `lease.json`,
/// `identity.json`, `retired.json`).
pub trait LeaseStore {
    fn save_lease(&mut self, lease: &StoredLease);
    fn remove_lease(&mut self);
    /// Forgets the identity and its lease (the authority revoked it).
    fn forget_identity(&mut self);
    /// Notes a replaced identity whose leases are still to be revoked.
    fn save_retired(&mut self, old: &Identity);
    fn clear_retired(&mut self, identity_id: &str);
    /// Stores the identity again (its pins changed).
    fn save_identity(&mut self, identity: &Identity);
}

/// What happens to the keeper.
#[derive(Debug)]
pub enum Event {
    /// Time passed: whatever is due (a renewal, a retry, an expiry, a
    /// revocation) is done.
    Tick,
    /// A ticket, or `leasegate enroll`, gave the gateway this identity.
    Enrolled(Box<Identity>),
    /// A write with this lease worked.
    Wrote(String),
    /// InfluxDB refused this lease (401 or 403).
    Refused(String),
    /// The ticket watcher keeps a ticket for another try, and why.
    TicketTrouble(String),
}

/// Why no lease came.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Authority(#[from] ClientError),
    #[error("the authority granted lease {lease_id}, but this gateway cannot use it: {why}")]
    Unusable { lease_id: String, why: String },
}

impl LeaseError {
    /// Whether the identity itself is gone (revoked or unknown at the
    /// authority): fatal for it, where everything else is retried. It is
    /// then forgotten: back to waiting for a ticket.
    pub fn identity_gone(&self) -> bool {
        matches!(
            self,
            LeaseError::Authority(e)
                if matches!(e.code(), Some(ErrorCode::IdentityUnknown | ErrorCode::IdentityRevoked))
        )
    }
}

/// The settings and credential a lease writes with.
pub fn influx_for(grant: &LeaseGrant, lease: &LeaseConfig) -> Result<Influx, String> {
    let t = &grant.lease.target;
    let url = lease
        .url_override
        .clone()
        .unwrap_or_else(|| t.url.clone())
        .trim_end_matches('/')
        .to_owned();
    let (username, password, token) = match t.api {
        Api::V1 => match grant.secret.expose().split_once(':') {
            Some((u, p)) => (Some(u.to_owned()), Some(Secret::new(p)), None),
            None => return Err("the 1.x lease's secret is not user:password".into()),
        },
        Api::V2 | Api::V3 => (None, None, Some(grant.secret.clone())),
    };
    Ok(Influx {
        api: t.api,
        url,
        database: t.database.clone(),
        retention_policy: None,
        org: t.org.clone(),
        bucket: t.bucket.clone(),
        username,
        password,
        token,
        secret_file: None,
        gzip: lease.gzip,
        timeout: lease.timeout,
    })
}

/// A lease in use.
#[derive(Debug)]
struct Held {
    grant: LeaseGrant,
    identity_id: String,
    deadline: Instant,
    renew_at: Instant,
}

impl Held {
    /// `remaining` of the lease's lifetime was left at `at`; `jitter` is in
    /// 0..=1 and moves the renewal from 60% down to 53% of the lifetime, so
    /// that a fleet does not renew in step. Times are on the monotonic
    /// clock, from the TTL the authority returned.
    fn new(
        grant: LeaseGrant,
        identity_id: &str,
        remaining: Duration,
        at: Instant,
        jitter: f64,
    ) -> Held {
        let ttl = Duration::from_secs(grant.lease.ttl_secs.clamp(1, MAX_TTL_SECS));
        let remaining = remaining.min(ttl);
        let share = RENEW_AT * (1.0 - 0.10 - 0.10 * jitter.clamp(0.0, 1.0));
        let used = ttl.saturating_sub(remaining);
        let renew_in = ttl.mul_f64(share).saturating_sub(used);
        Held {
            grant,
            identity_id: identity_id.to_owned(),
            deadline: at + remaining,
            renew_at: at + renew_in,
        }
    }

    fn id(&self) -> &str {
        &self.grant.lease.id
    }
}

/// Leases still to be revoked: one, or all of a replaced identity.
#[derive(Debug)]
struct Retired {
    identity: Identity,
    lease: Option<String>,
    when: When,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    At(Instant),
    /// Once the next lease is in force (then after the grace).
    AfterNextLease,
}

/// Where the keeper is.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per keeper, never moved in a loop"
)]
enum State {
    /// Nothing to do but revoke what replaced identities still hold; MQTT
    /// data keeps spooling.
    WaitingForTicket,
    Enrolled {
        identity: Identity,
        held: Option<Held>,
        /// A new lease is wanted before the renewal is due (refused, or a
        /// new identity).
        want_new: bool,
    },
}

pub struct Keeper<A, S> {
    settings: LeaseSettings,
    state: State,
    /// The earliest the next lease attempt may go.
    attempt_at: Instant,
    /// Between failed attempts; the lease in force is kept meanwhile until
    /// it expires (then writes wait).
    backoff: Backoff,
    /// Leases refused before they wrote, in a row. Such a refusal goes
    /// through the backoff, not at once, so that a role without the right
    /// costs a lease every few minutes, not one per write.
    unproven_refusals: u32,
    /// The last lease a write worked with.
    proven: Option<String>,
    /// The lease whose refusal is being answered: the writer reports each
    /// refused write, and only the first report of a lease counts.
    answered: Option<String>,
    retired: Vec<Retired>,
    view: LeaseView,
    authority: A,
    store: S,
    slot: Arc<Slot>,
    jitter: Box<dyn FnMut() -> f64 + Send>,
}

mod steps;
#[cfg(test)]
mod tests;
pub(crate) mod thread;

impl<A: Authority, S: LeaseStore> Keeper<A, S> {
    /// A keeper starting from what the state dir held: the identity, the
    /// lease stored with it (used if enough of it is left), identities
    /// replaced before the restart. `wall_ms` is the wall clock, only used
    /// to tell how much of a stored lease is left.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: LeaseSettings,
        identity: Option<Identity>,
        stored: Option<StoredLease>,
        replaced: Vec<Identity>,
        authority: A,
        store: S,
        slot: Arc<Slot>,
        now: Instant,
        wall_ms: i64,
    ) -> Self {
        let mut keeper = Keeper {
            settings,
            state: State::WaitingForTicket,
            attempt_at: now,
            backoff: Backoff::new(LEASE_RETRY_FIRST, LEASE_RETRY_CAP, 0.25),
            unproven_refusals: 0,
            proven: None,
            answered: None,
            retired: Vec::new(),
            view: LeaseView::default(),
            authority,
            store,
            slot,
            jitter: Box::new(|| crate::secret::random_bytes(1)[0] as f64 / 255.0),
        };
        keeper.start(identity, stored, replaced, now, wall_ms);
        keeper
    }

    /// Replaces the random jitter of renewals (tests make it fixed).
    pub fn with_jitter(mut self, jitter: impl FnMut() -> f64 + Send + 'static) -> Self {
        self.jitter = Box::new(jitter);
        self
    }

    /// Takes in `event` at `now` and does whatever is due then.
    pub fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Tick => {}
            Event::Enrolled(identity) => self.enroll(*identity, now),
            Event::Wrote(lease) => self.wrote(lease),
            Event::Refused(lease) => self.refused(&lease, now),
            Event::TicketTrouble(why) => self.view.last_error = Some(why),
        }
        self.expire_if_due(now);
        if self.lease_due(now) {
            self.obtain(now);
        }
        self.revoke_due(now);
    }

    /// Asks for a new lease now, keeping the one in force meanwhile: a
    /// stored lease is in use, but only a lease answer tells this boot's
    /// true time, and receipt-stamped points wait for it.
    pub fn lease_for_the_time(&mut self) {
        if let State::Enrolled { want_new, .. } = &mut self.state {
            *want_new = true;
        }
    }

    /// When something is next due, if anything ever is: the keeper sleeps
    /// until then or until the next event.
    pub fn next_wake(&self) -> Option<Instant> {
        let mut wake: Vec<Instant> = self
            .retired
            .iter()
            .filter_map(|r| match r.when {
                When::At(t) => Some(t),
                When::AfterNextLease => None,
            })
            .collect();
        if let State::Enrolled { held, want_new, .. } = &self.state {
            match held {
                Some(h) if !want_new => wake.push(h.renew_at.max(self.attempt_at)),
                _ => wake.push(self.attempt_at),
            }
            wake.extend(held.as_ref().map(|h| h.deadline));
        }
        wake.into_iter().min()
    }

    /// The state for `leasegate status`, times projected onto the wall
    /// clock (`wall_ms` at `now`).
    pub fn view(&self, now: Instant, wall_ms: i64) -> LeaseView {
        let project = |t: Instant| wall_ms + t.saturating_duration_since(now).as_millis() as i64;
        let mut view = self.view.clone();
        let (identity, held) = match &self.state {
            State::WaitingForTicket => (None, None),
            State::Enrolled { identity, held, .. } => (Some(identity), held.as_ref()),
        };
        view.state = if identity.is_some() {
            "enrolled".into()
        } else {
            "waiting for a ticket".into()
        };
        view.identity_id = identity.map(|i| i.identity_id.clone());
        view.identity_name = identity.map(|i| i.identity_name.clone());
        view.authority_url = identity.map(|i| i.authority_url.clone());
        view.lease_id = held.map(|h| h.id().to_owned());
        view.lease_expires_ms = held.map(|h| project(h.deadline));
        view.next_renewal_ms = held.map(|h| project(h.renew_at));
        view
    }

    /// Whether a lease attempt is due at `now`.
    fn lease_due(&self, now: Instant) -> bool {
        let State::Enrolled { held, want_new, .. } = &self.state else {
            return false;
        };
        let wanted = *want_new || held.as_ref().is_none_or(|h| now >= h.renew_at);
        wanted && now >= self.attempt_at
    }

    /// Puts `held`'s credential in force.
    fn put_in_force(&self, grant: &LeaseGrant, influx: &Influx) {
        self.slot.set(Credential::for_influx(
            influx,
            Origin::Lease {
                id: grant.lease.id.clone(),
            },
        ));
    }

    fn status_is_active(grant: &LeaseGrant) -> bool {
        grant.lease.status == LeaseStatus::Active
    }
}

fn whole_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
