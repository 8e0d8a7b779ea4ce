//! The lease keeper: the thread that gives the writer its credentials.
//!
//! It watches the ticket directory and enrolls with a dropped ticket, gets
//! a lease, installs it in the [`Sink`] (writes switch to it at once),
//! renews it at about 2/3 of its lifetime (less 10 to 20% at random, so a
//! fleet does not renew in step) and revokes the one it replaced after a
//! short grace for writes still in flight. A failed renewal backs off from
//! 1 s doubling to 5 min with up to 25% jitter and keeps the current lease
//! until it expires; then writes wait in the spool. A lease InfluxDB
//! refuses is replaced at once, one request however many writes failed.
//! When the authority no longer knows the identity, the keeper forgets it
//! and waits for a new ticket; MQTT data keeps spooling meanwhile.
//!
//! Lifetimes are measured on the monotonic clock from the TTL the
//! authority returns: a gateway's wall clock may be wrong at boot. The
//! wall clock only serves to reuse a stored lease after a restart. The
//! keeper never writes points and never logs a secret.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::identity::{self, Identity, StoredLease, TicketOutcome};
use super::sink::Sink;
use crate::api::{ErrorCode, LeaseGrant, LeaseStatus};
use crate::backoff::Backoff;
use crate::config::{Api, Influx, LeaseConfig};
use crate::secret::Secret;
use crate::shutdown::Shutdown;

/// How often the ticket directory and the identity file are looked at.
const TICKET_SCAN: Duration = Duration::from_secs(1);
/// How long a replaced lease stays valid for writes already in flight.
const REVOKE_GRACE: Duration = Duration::from_secs(3);
/// The share of a lease's lifetime after which it is renewed, before
/// jitter.
const RENEW_AT: f64 = 2.0 / 3.0;
/// Longer lease lifetimes from the authority are taken as this (a year):
/// bad answers must not overflow the clock arithmetic.
const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

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
}

/// Between the writer (through the sink) and the keeper.
#[derive(Default)]
pub struct LeaseLink {
    rescan: std::sync::atomic::AtomicBool,
    refused: Mutex<Option<String>>,
    proven: Mutex<Option<String>>,
    wake: Condvar,
    view: Mutex<LeaseView>,
}

impl LeaseLink {
    /// InfluxDB refused lease `id`.
    pub fn report_refused(&self, id: &str) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.to_owned());
        self.wake.notify_all();
    }

    fn take_refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Sleeps up to `d`, or until a refusal is reported.
    fn wait(&self, d: Duration) {
        let guard = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            return;
        }
        let _ = self.wake.wait_timeout(guard, d);
    }

    /// A reload asks the ticket watcher to try every waiting ticket now,
    /// kept ones included.
    pub fn rescan_tickets(&self) {
        self.rescan.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A write with lease `id` succeeded.
    pub fn wrote_with(&self, id: &str) {
        let mut proven = self.proven.lock().unwrap_or_else(|p| p.into_inner());
        if proven.as_deref() != Some(id) {
            *proven = Some(id.to_owned());
        }
    }

    /// Whether lease `id` ever wrote (the last lease that did is kept).
    fn proven(&self, id: &str) -> bool {
        self.proven
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            == Some(id)
    }

    pub fn view(&self) -> LeaseView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A lease in use.
struct Held {
    grant: LeaseGrant,
    identity_id: String,
    deadline: Instant,
    renew_at: Instant,
}

impl Held {
    /// `remaining` of the lease's lifetime was left at `at`.
    fn new(grant: LeaseGrant, identity_id: &str, remaining: Duration, at: Instant) -> Held {
        let ttl = Duration::from_secs(grant.lease.ttl_secs.clamp(1, MAX_TTL_SECS));
        let remaining = remaining.min(ttl);
        let now = at;
        // Renew at 2/3 of the lifetime, less 10 to 20% of that at random.
        let share = RENEW_AT * (1.0 - 0.10 - 0.10 * unit_random());
        let used = ttl.saturating_sub(remaining);
        let renew_in = ttl.mul_f64(share).saturating_sub(used);
        Held {
            grant,
            identity_id: identity_id.to_owned(),
            deadline: now + remaining,
            renew_at: now + renew_in,
        }
    }

    fn id(&self) -> &str {
        &self.grant.lease.id
    }
}

fn unit_random() -> f64 {
    crate::secret::random_bytes(1)[0] as f64 / 255.0
}

/// A replaced lease, revoked once its grace is over.
struct Retired {
    identity: Identity,
    lease_id: Option<String>,
    /// Revoke every lease of the identity (it was replaced by a new one).
    all: bool,
    at: Instant,
}

pub struct LeaseKeeper {
    pub settings: LeaseSettings,
    pub sink: Arc<Sink>,
    pub link: Arc<LeaseLink>,
    pub shutdown: Shutdown,
    /// For the watchdog beat.
    pub stats: Arc<super::stats::Stats>,
}

/// The settings and credential a lease writes with.
pub fn influx_for(grant: &LeaseGrant, s: &LeaseSettings) -> Result<Influx, String> {
    let t = &grant.lease.target;
    let api = match t.api.as_str() {
        "influxdb-v1" => Api::V1,
        "influxdb-v2" => Api::V2,
        "influxdb-v3" => Api::V3,
        other => return Err(format!("the lease names an unknown InfluxDB API {other:?}")),
    };
    let url = s
        .lease
        .url_override
        .clone()
        .unwrap_or_else(|| t.url.clone())
        .trim_end_matches('/')
        .to_owned();
    let (username, password, token) = match api {
        Api::V1 => match grant.secret.expose().split_once(':') {
            Some((u, p)) => (Some(u.to_owned()), Some(Secret::new(p)), None),
            None => return Err("the 1.x lease's secret is not user:password".into()),
        },
        Api::V2 | Api::V3 => (None, None, Some(grant.secret.clone())),
    };
    Ok(Influx {
        api,
        url,
        database: t.database.clone(),
        retention_policy: None,
        org: t.org.clone(),
        bucket: t.bucket.clone(),
        username,
        password,
        token,
        secret_file: None,
        gzip: s.lease.gzip,
        timeout: s.lease.timeout,
    })
}

fn identity_stamp(s: &LeaseSettings) -> Option<std::time::SystemTime> {
    std::fs::metadata(s.state_dir.join(identity::IDENTITY_FILE))
        .and_then(|m| m.modified())
        .ok()
}

impl LeaseKeeper {
    pub fn run(self) {
        let s = &self.settings;
        let mut identity = identity::load_identity(&s.state_dir);
        let mut stamp = identity_stamp(s);
        let mut held = identity.as_ref().and_then(|id| self.restore(id));
        let mut retired: Vec<Retired> = Vec::new();
        // A stored lease too far gone to reuse still holds a credential:
        // given back once a new lease is there.
        if held.is_none()
            && let Some(id) = &identity
            && let Some(stored) = identity::load_lease(&s.state_dir)
            && stored.identity_id == id.identity_id
        {
            retired.push(Retired {
                identity: id.clone(),
                lease_id: Some(stored.grant.lease.id),
                all: false,
                at: Instant::now() + REVOKE_GRACE,
            });
        }
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300), 0.25);
        let mut next_try = Instant::now();
        let mut next_scan = Instant::now();
        let (ticket_tx, tickets) = std::sync::mpsc::channel();
        let (settings, shutdown, link) = (
            self.settings.clone(),
            self.shutdown.clone(),
            self.link.clone(),
        );
        // Redeeming a ticket may wait on an unreachable authority: on its
        // own thread, so renewals and refused leases never wait behind it.
        if let Err(e) = std::thread::Builder::new()
            .name("tickets".into())
            .spawn(move || watch_tickets(&settings, &ticket_tx, &shutdown, &link))
        {
            log::error!("cannot start the ticket watcher: {e}");
        }
        // A refused lease is replaced at once, but one that InfluxDB
        // refuses before it ever wrote (a role without the right, a token
        // not yet valid) goes through the backoff: no lease churn.
        let mut unproven_refusals = 0u32;
        // Leases of an identity replaced before a restart.
        for old in identity::load_retired(&s.state_dir) {
            retired.push(Retired {
                identity: old,
                lease_id: None,
                all: true,
                at: Instant::now() + REVOKE_GRACE,
            });
        }
        let mut want_new = false;
        let mut view = LeaseView::default();
        if identity.is_none() {
            log::info!(
                "not enrolled: waiting for a ticket in {} (or `leasegate enroll FILE`); MQTT data is spooled meanwhile",
                s.ticket_dir.display()
            );
        }
        while !self.shutdown.is_triggered() {
            self.stats.health.lease.beat();
            let now = Instant::now();
            if now >= next_scan {
                next_scan = now + TICKET_SCAN;
                let mut enrolled = None;
                while let Ok(event) = tickets.try_recv() {
                    match event {
                        TicketEvent::Enrolled(new) => enrolled = Some(new),
                        TicketEvent::Trouble(e) => view.last_error = Some(e),
                    }
                }
                // `leasegate enroll FILE` replaces the identity file.
                let fresh = identity_stamp(s);
                if enrolled.is_none()
                    && fresh != stamp
                    && let Some(loaded) = identity::load_identity(&s.state_dir)
                    && identity.as_ref().map(|i| &i.identity_id) != Some(&loaded.identity_id)
                {
                    log::info!(
                        "identity {} ({}) enrolled from the command line",
                        loaded.identity_id,
                        loaded.identity_name
                    );
                    enrolled = Some(loaded);
                }
                stamp = identity_stamp(s);
                if let Some(new) = enrolled {
                    if let Some(old) = identity.replace(new)
                        && old.identity_id
                            != identity
                                .as_ref()
                                .map(|i| i.identity_id.clone())
                                .unwrap_or_default()
                    {
                        // Re-enrolled: the old identity's leases go once
                        // the new identity has its lease; kept on disk so
                        // a restart in between does not forget them.
                        identity::save_retired(&s.state_dir, &old);
                        retired.push(Retired {
                            identity: old,
                            lease_id: None,
                            all: true,
                            at: now + Duration::from_secs(3600 * 24 * 365),
                        });
                    }
                    want_new = true;
                    next_try = now;
                    backoff.reset();
                }
            }

            if held.as_ref().is_some_and(|h| now >= h.deadline) {
                let h = held.take().expect("checked");
                log::warn!(
                    "lease {} expired before a new one came; writes wait in the spool",
                    h.id()
                );
                self.sink.clear();
                let _ = std::fs::remove_file(s.state_dir.join(identity::LEASE_FILE));
            }

            if let Some(refused) = self.link.take_refused()
                && held.as_ref().is_some_and(|h| h.id() == refused)
            {
                want_new = true;
                if self.link.proven(&refused) {
                    unproven_refusals = 0;
                    log::warn!("InfluxDB refused lease {refused}; getting a new one now");
                    next_try = now;
                } else {
                    unproven_refusals += 1;
                    let d = backoff.next_delay();
                    next_try = now + d;
                    log::warn!(
                        "InfluxDB refused lease {refused} before it wrote anything ({unproven_refusals} in a row): the role may lack the right; next lease in {}",
                        humantime::format_duration(whole_ms(d))
                    );
                    view.last_error = Some(format!(
                        "InfluxDB refused lease {refused} before it wrote anything"
                    ));
                }
            }

            if let Some(id) = identity.clone() {
                let due =
                    held.is_none() || want_new || held.as_ref().is_some_and(|h| now >= h.renew_at);
                if due && now >= next_try {
                    let asked = Instant::now();
                    match self.obtain(&id) {
                        Ok((grant, influx)) => {
                            self.sink.install(&influx, &grant.lease.id);
                            let ttl =
                                Duration::from_secs(grant.lease.ttl_secs.clamp(1, MAX_TTL_SECS));
                            let stored = StoredLease {
                                identity_id: id.identity_id.clone(),
                                grant: grant.clone(),
                                received_ms: crate::now_ms(),
                            };
                            if let Err(e) = identity::save_lease(&s.state_dir, &stored) {
                                log::warn!(
                                    "cannot store the lease in {}: {e}",
                                    s.state_dir.display()
                                );
                            }
                            // The lifetime counts from when it was asked for:
                            // the authority started it before answering.
                            let new = Held::new(grant, &id.identity_id, ttl, asked);
                            log::info!(
                                "lease {} obtained for {} (ttl {}), renewing in {}",
                                new.id(),
                                id.identity_name,
                                humantime::format_duration(ttl),
                                humantime::format_duration(whole_ms(new.renew_at - now))
                            );
                            view.leases_obtained += 1;
                            if let Some(old) = held.replace(new) {
                                view.renewals += 1;
                                let owner = if old.identity_id == id.identity_id {
                                    Some(id.clone())
                                } else {
                                    retired
                                        .iter()
                                        .find(|r| r.identity.identity_id == old.identity_id)
                                        .map(|r| r.identity.clone())
                                };
                                if let Some(owner) = owner {
                                    retired.push(Retired {
                                        identity: owner,
                                        lease_id: Some(old.grant.lease.id.clone()),
                                        all: false,
                                        at: now + REVOKE_GRACE,
                                    });
                                }
                            }
                            // An old identity's leases go once the new
                            // identity has its lease.
                            for r in retired.iter_mut().filter(|r| r.all) {
                                r.at = now + REVOKE_GRACE;
                            }
                            want_new = false;
                            if unproven_refusals == 0 {
                                backoff.reset();
                                view.last_error = None;
                            }
                        }
                        Err(e)
                            if matches!(
                                e.code(),
                                Some(ErrorCode::IdentityUnknown | ErrorCode::IdentityRevoked)
                            ) =>
                        {
                            log::error!(
                                "the authority no longer accepts identity {} ({}): {}; waiting for a new ticket in {}; MQTT data is spooled meanwhile",
                                id.identity_id,
                                id.identity_name,
                                crate::error_chain(&e),
                                s.ticket_dir.display()
                            );
                            identity::forget(&s.state_dir);
                            stamp = identity_stamp(s);
                            identity = None;
                            held = None;
                            self.sink.clear();
                            view.last_error = Some(crate::error_chain(&e));
                        }
                        Err(e) => {
                            let d = backoff.next_delay();
                            next_try = now + d;
                            let keep = match &held {
                                Some(h) => format!(
                                    "; lease {} is used until it expires in {}",
                                    h.id(),
                                    humantime::format_duration(whole_ms(
                                        h.deadline.saturating_duration_since(now)
                                    ))
                                ),
                                None => "; writes wait in the spool".into(),
                            };
                            log::warn!(
                                "cannot get a lease: {}; retrying in {}{keep}",
                                crate::error_chain(&e),
                                humantime::format_duration(whole_ms(d))
                            );
                            view.last_error = Some(crate::error_chain(&e));
                        }
                    }
                }
            }

            self.revoke_due(&mut retired, now);
            self.publish(&mut view, identity.as_ref(), held.as_ref());
            // The next thing to do: a look at the tickets, a lease attempt
            // (when one is wanted), a renewal, an expiry.
            let now = Instant::now();
            let mut next = vec![next_scan];
            if identity.is_some() {
                match &held {
                    Some(h) if !want_new && now < h.renew_at => next.push(h.renew_at),
                    _ => next.push(next_try),
                }
            }
            next.extend(held.as_ref().map(|h| h.deadline));
            let until_next = next
                .into_iter()
                .map(|t| t.saturating_duration_since(now))
                .min()
                .unwrap_or(TICKET_SCAN);
            self.link
                .wait(until_next.clamp(Duration::from_millis(20), Duration::from_millis(500)));
        }
    }

    /// A stored lease of this identity with enough left to be worth using
    /// (its renewal not yet due), installed; None otherwise.
    fn restore(&self, id: &Identity) -> Option<Held> {
        let stored = identity::load_lease(&self.settings.state_dir)?;
        if stored.identity_id != id.identity_id || stored.grant.lease.status != LeaseStatus::Active
        {
            return None;
        }
        let ttl_ms = (stored.grant.lease.ttl_secs.max(1) * 1000) as i64;
        // Measured from when it arrived, on this gateway's clock: both ends
        // of the span are ours.
        let left_ms = stored.received_ms + ttl_ms - crate::now_ms();
        if left_ms <= 0 || left_ms > ttl_ms || (left_ms as f64) < ttl_ms as f64 * (1.0 - RENEW_AT) {
            return None;
        }
        let influx = influx_for(&stored.grant, &self.settings).ok()?;
        self.sink.install(&influx, &stored.grant.lease.id);
        let held = Held::new(
            stored.grant,
            &id.identity_id,
            Duration::from_millis(left_ms as u64),
            Instant::now(),
        );
        log::info!(
            "reusing stored lease {} ({} left)",
            held.id(),
            humantime::format_duration(Duration::from_secs(left_ms as u64 / 1000))
        );
        Some(held)
    }

    fn obtain(&self, id: &Identity) -> Result<(LeaseGrant, Influx), crate::client::ClientError> {
        let grant = id
            .client()?
            .create_lease(&id.credential, self.settings.lease.ttl)?;
        match influx_for(&grant, &self.settings) {
            Ok(influx) => Ok((grant, influx)),
            Err(message) => {
                // Unusable here, but it exists in InfluxDB: give it back.
                if let Ok(client) = id.client() {
                    let _ = client.revoke(&id.credential, &grant.lease.id);
                }
                Err(crate::client::ClientError::BadAnswer {
                    status: 201,
                    body: message,
                })
            }
        }
    }

    /// Revokes replaced leases whose grace is over; best effort, each
    /// tried once (the authority deletes them at expiry anyway).
    fn revoke_due(&self, retired: &mut Vec<Retired>, now: Instant) {
        let (due, later): (Vec<Retired>, Vec<Retired>) =
            retired.drain(..).partition(|r| now >= r.at);
        *retired = later;
        for r in due {
            let client = match r.identity.client() {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("cannot revoke: {}", crate::error_chain(&e));
                    continue;
                }
            };
            let ids: Vec<String> = if r.all {
                match client.leases(&r.identity.credential) {
                    Ok(list) => list
                        .into_iter()
                        .filter(|l| l.status == LeaseStatus::Active)
                        .map(|l| l.id)
                        .collect(),
                    Err(e) => {
                        log::warn!(
                            "cannot list the leases of replaced identity {}: {}",
                            r.identity.identity_id,
                            crate::error_chain(&e)
                        );
                        Vec::new()
                    }
                }
            } else {
                r.lease_id.into_iter().collect()
            };
            if r.all {
                identity::clear_retired(&self.settings.state_dir, &r.identity.identity_id);
            }
            for lease in ids {
                self.stats.health.lease.beat();
                match client.revoke(&r.identity.credential, &lease) {
                    Ok(_) => log::info!("revoked replaced lease {lease}"),
                    Err(e) => log::warn!(
                        "could not revoke replaced lease {lease} (it expires on its own): {}",
                        crate::error_chain(&e)
                    ),
                }
            }
        }
    }

    fn publish(&self, view: &mut LeaseView, identity: Option<&Identity>, held: Option<&Held>) {
        let now = Instant::now();
        let wall = crate::now_ms();
        let project = |t: Instant| wall + t.saturating_duration_since(now).as_millis() as i64;
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
        *self.link.view.lock().unwrap_or_else(|p| p.into_inner()) = view.clone();
    }
}

enum TicketEvent {
    Enrolled(Identity),
    /// A ticket kept for another try, and why.
    Trouble(String),
}

/// The ticket directory's watcher: redeems each settled `*.ticket` file,
/// rejects the bad ones, and keeps those that failed for a transient
/// reason for another try with their own backoff, so one ticket for an
/// unreachable authority never holds up another.
fn watch_tickets(
    s: &LeaseSettings,
    tx: &std::sync::mpsc::Sender<TicketEvent>,
    shutdown: &Shutdown,
    link: &LeaseLink,
) {
    let mut later: std::collections::HashMap<PathBuf, (Backoff, Instant)> =
        std::collections::HashMap::new();
    while !shutdown.sleep(TICKET_SCAN) {
        if link.rescan.swap(false, std::sync::atomic::Ordering::SeqCst) {
            later.clear();
        }
        let waiting = identity::waiting_tickets(&s.ticket_dir);
        later.retain(|p, _| waiting.contains(p));
        for path in waiting {
            if shutdown.is_triggered() {
                return;
            }
            if later.get(&path).is_some_and(|(_, at)| Instant::now() < *at) {
                continue;
            }
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
                    later.remove(&path);
                    if tx.send(TicketEvent::Enrolled(new)).is_err() {
                        return;
                    }
                }
                TicketOutcome::Rejected(e) => log::error!(
                    "ticket {} rejected ({}): {}; renamed .rejected with the reason beside it",
                    path.display(),
                    e.reason_code(),
                    crate::error_chain(&e)
                ),
                TicketOutcome::Kept(e) => {
                    let entry = later.entry(path.clone()).or_insert_with(|| {
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
                        humantime::format_duration(whole_ms(d))
                    );
                    let _ = tx.send(TicketEvent::Trouble(message));
                }
            }
        }
    }
}

fn whole_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LeaseInfo, Target};

    fn grant(ttl_secs: u64) -> LeaseGrant {
        LeaseGrant {
            lease: LeaseInfo {
                id: "l".into(),
                identity_id: "i".into(),
                issued_for: "gw".into(),
                role: "r".into(),
                status: LeaseStatus::Active,
                ttl_secs,
                created_ms: 0,
                expires_ms: 0,
                target: Target {
                    api: "influxdb-v1".into(),
                    url: "http://127.0.0.1:8086/".into(),
                    org: None,
                    bucket: None,
                    database: Some("db".into()),
                },
                last_error: None,
            },
            secret: Secret::new("lg_l:pw"),
        }
    }

    #[test]
    fn renewal_falls_between_53_and_60_percent_of_the_lifetime() {
        let at = Instant::now();
        for _ in 0..200 {
            let h = Held::new(grant(600), "i", Duration::from_secs(600), at);
            let share = (h.renew_at - at).as_secs_f64() / 600.0;
            assert!((0.53..=0.601).contains(&share), "{share}");
            assert_eq!(h.deadline - at, Duration::from_secs(600));
        }
        // Restored with 30% left: renewal is due at once; with half left,
        // at the same share of the whole lifetime.
        let h = Held::new(grant(600), "i", Duration::from_secs(180), at);
        assert_eq!(h.renew_at, at);
        let h = Held::new(grant(600), "i", Duration::from_secs(300), at);
        let in_secs = (h.renew_at - at).as_secs_f64();
        assert!((17.9..=61.0).contains(&in_secs), "{in_secs}");
        // A lifetime from a broken answer cannot overflow the clock.
        let h = Held::new(grant(u64::MAX), "i", Duration::MAX, at);
        assert_eq!(h.deadline - at, Duration::from_secs(MAX_TTL_SECS));
    }

    #[test]
    fn a_lease_gives_every_write_setting() {
        let mut s = LeaseSettings {
            state_dir: "/x".into(),
            ticket_dir: "/x/t".into(),
            lease: LeaseConfig {
                identity_name: "gw".into(),
                ttl: None,
                system_trust: false,
                url_override: None,
                gzip: true,
                timeout: Duration::from_secs(1),
            },
        };
        let i = influx_for(&grant(60), &s).unwrap();
        assert_eq!((i.api, i.url.as_str()), (Api::V1, "http://127.0.0.1:8086"));
        assert_eq!(i.username.as_deref(), Some("lg_l"));
        assert_eq!(i.password.unwrap().expose(), "pw");
        assert_eq!(i.database.as_deref(), Some("db"));
        s.lease.url_override = Some("http://127.0.0.1:9999".into());
        assert_eq!(
            influx_for(&grant(60), &s).unwrap().url,
            "http://127.0.0.1:9999"
        );
        let mut g = grant(60);
        g.lease.target.api = "influxdb-v9".into();
        assert!(influx_for(&g, &s).unwrap_err().contains("influxdb-v9"));
        let mut g = grant(60);
        g.secret = Secret::new("no-colon");
        assert!(influx_for(&g, &s).is_err());
    }

    #[test]
    fn a_lease_that_wrote_is_told_from_one_that_never_did() {
        let link = LeaseLink::default();
        assert!(!link.proven("a"));
        link.wrote_with("a");
        assert!(link.proven("a"));
        link.wrote_with("b");
        assert!(!link.proven("a") && link.proven("b"));
        link.report_refused("b");
        assert_eq!(link.take_refused().as_deref(), Some("b"));
        assert_eq!(link.take_refused(), None);
    }
}
