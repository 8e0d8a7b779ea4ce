//! The keeper's steps, one per thing that can happen: starting from the
//! state dir, an enrollment, a write that worked or was refused, an
//! expiry, a lease attempt and its outcome, a revocation. Each changes the
//! state and says so in the log; none sleeps (the keeper's thread waits
//! between events) and none logs a secret.

use std::time::{Duration, Instant};

use super::{
    Ask, Authority, Held, Identity, Keeper, LeaseError, LeaseStore, RENEW_AT, REVOKE_GRACE,
    Retired, State, StoredLease, When, influx_for, whole_ms,
};
use crate::wire::api::LeaseGrant;

impl<A: Authority, S: LeaseStore> Keeper<A, S> {
    /// The state at start: a stored lease of the identity is put in force
    /// again if its renewal is not yet due; one too far gone still holds a
    /// credential and is revoked once a new lease is there, as are the
    /// leases of identities replaced before a restart.
    pub(super) fn start(
        &mut self,
        identity: Option<Identity>,
        stored: Option<StoredLease>,
        replaced: Vec<Identity>,
        now: Instant,
        wall_ms: i64,
    ) {
        // Nothing from before a restart is in use: what it holds goes at
        // once (after the grace).
        self.retire_identities(replaced, When::At(now + REVOKE_GRACE));
        let Some(identity) = identity else {
            log::info!(
                "not enrolled: waiting for a ticket in {} (or `leasegate enroll FILE`); MQTT data is spooled meanwhile",
                self.settings.ticket_dir.display()
            );
            return;
        };
        let stored = stored.filter(|s| s.identity_id == identity.identity_id);
        let held = stored.and_then(|s| self.restore(s, &identity, now, wall_ms));
        self.state = State::Enrolled {
            identity,
            held,
            want_new: false,
        };
    }

    fn retire_identities(&mut self, replaced: Vec<Identity>, when: When) {
        self.retired
            .extend(replaced.into_iter().map(|identity| Retired {
                identity,
                lease: None,
                when,
            }));
    }

    /// A stored lease with enough left to be worth using, in force again;
    /// None (and the lease marked for revocation) otherwise.
    fn restore(
        &mut self,
        stored: StoredLease,
        identity: &Identity,
        now: Instant,
        wall_ms: i64,
    ) -> Option<Held> {
        let ttl_ms = (stored.grant.lease.ttl_secs.clamp(1, super::MAX_TTL_SECS) * 1000) as i64;
        // Measured from when it arrived, on this gateway's clock: both ends
        // of the span are ours.
        let left_ms = stored.received_ms + ttl_ms - wall_ms;
        let usable = Self::status_is_active(&stored.grant)
            && left_ms > 0
            && left_ms <= ttl_ms
            && left_ms as f64 >= ttl_ms as f64 * (1.0 - RENEW_AT);
        let influx = influx_for(&stored.grant, &self.settings.lease).ok();
        let (Some(influx), true) = (influx, usable) else {
            self.retired.push(Retired {
                identity: identity.clone(),
                lease: Some(stored.grant.lease.id),
                when: When::At(now + REVOKE_GRACE),
            });
            return None;
        };
        self.put_in_force(&stored.grant, &influx);
        let left = Duration::from_millis(left_ms as u64);
        let jitter = (self.jitter)();
        let held = Held::new(stored.grant, &identity.identity_id, left, now, jitter);
        log::info!(
            "reusing stored lease {} ({} left)",
            held.id(),
            humantime::format_duration(Duration::from_secs(left.as_secs()))
        );
        Some(held)
    }

    /// A new identity: a lease for it at once. A replaced identity's leases
    /// are revoked once the new one has its lease, and noted on disk until
    /// then so that a restart in between does not forget them.
    pub(super) fn enroll(&mut self, new: Identity, now: Instant) {
        let state = std::mem::replace(&mut self.state, State::WaitingForTicket);
        let held = match state {
            State::Enrolled { identity, held, .. } => {
                if identity.identity_id != new.identity_id {
                    self.store.save_retired(&identity);
                    self.retire_identities(vec![identity], When::AfterNextLease);
                }
                held
            }
            State::WaitingForTicket => None,
        };
        self.state = State::Enrolled {
            identity: new,
            held,
            want_new: true,
        };
        self.attempt_at = now;
        self.backoff.reset();
    }

    /// A write worked: the lease in force is proven, which ends a run of
    /// refusals of unproven leases (and its backoff).
    pub(super) fn wrote(&mut self, lease: String) {
        if self.held().is_some_and(|h| h.id() == lease) && self.unproven_refusals > 0 {
            self.unproven_refusals = 0;
            self.backoff.reset();
            self.view.last_error = None;
        }
        self.proven = Some(lease);
    }

    /// InfluxDB refused `lease`: a new one at once if it ever wrote, else
    /// through the backoff (a role without the right would otherwise cost
    /// a lease per write).
    pub(super) fn refused(&mut self, lease: &str, now: Instant) {
        let State::Enrolled {
            held: Some(h),
            want_new,
            ..
        } = &mut self.state
        else {
            return;
        };
        if h.id() != lease || self.answered.as_deref() == Some(lease) {
            // An older lease (its successor is in force), or one whose
            // refusal is answered already: more writes refused with it
            // change nothing.
            return;
        }
        self.answered = Some(lease.to_owned());
        *want_new = true;
        if self.proven.as_deref() == Some(lease) {
            self.unproven_refusals = 0;
            log::warn!("InfluxDB refused lease {lease}; getting a new one now");
            self.attempt_at = now;
            return;
        }
        self.unproven_refusals += 1;
        let d = self.backoff.next_delay();
        self.attempt_at = now + d;
        log::warn!(
            "InfluxDB refused lease {lease} before it wrote anything ({} in a row): the role may lack the right; next lease in {}",
            self.unproven_refusals,
            humantime::format_duration(whole_ms(d))
        );
        self.view.last_error = Some(format!(
            "InfluxDB refused lease {lease} before it wrote anything"
        ));
    }

    /// A lease past its deadline is out of force: writes wait.
    pub(super) fn expire_if_due(&mut self, now: Instant) {
        let State::Enrolled { held, .. } = &mut self.state else {
            return;
        };
        if held.as_ref().is_some_and(|h| now >= h.deadline) {
            let h = held.take().expect("checked");
            log::warn!(
                "lease {} expired before a new one came; writes wait in the spool",
                h.id()
            );
            self.slot.clear();
            self.store.remove_lease();
        }
    }

    /// Asks the authority for a lease and puts it in force; on failure
    /// backs off, or forgets an identity the authority no longer knows.
    pub(super) fn obtain(&mut self, now: Instant) {
        let State::Enrolled { identity, .. } = &self.state else {
            return;
        };
        let identity = identity.clone();
        match self.create(&identity) {
            Ok((grant, influx)) => self.install(grant, &influx, &identity, now),
            Err(e) if e.identity_gone() => {
                log::error!(
                    "the authority no longer accepts identity {} ({}): {}; waiting for a new ticket in {}; MQTT data is spooled meanwhile",
                    identity.identity_id,
                    identity.identity_name,
                    crate::error_chain(&e),
                    self.settings.ticket_dir.display()
                );
                self.store.forget_identity();
                self.state = State::WaitingForTicket;
                self.slot.clear();
                self.view.last_error = Some(crate::error_chain(&e));
            }
            Err(e) => {
                let d = self.backoff.next_delay();
                self.attempt_at = now + d;
                let keep = match self.held() {
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
                self.view.last_error = Some(crate::error_chain(&e));
            }
        }
    }

    /// A lease from the authority, with the settings it writes with; one
    /// the gateway cannot use exists all the same, and is given back.
    fn create(
        &mut self,
        identity: &Identity,
    ) -> Result<(LeaseGrant, crate::config::Influx), LeaseError> {
        let ask = Ask {
            ttl: self.settings.lease.ttl,
            retry_within: self.backoff.engaged(),
        };
        let grant = match self.authority.create_lease(identity, &ask) {
            Ok(grant) => grant,
            Err(crate::wire::client::ClientError::UnusableGrant { lease_id, reason }) => {
                let _ = self.authority.revoke(identity, &lease_id);
                return Err(LeaseError::Unusable {
                    lease_id,
                    why: reason,
                });
            }
            Err(e) => return Err(e.into()),
        };
        match influx_for(&grant, &self.settings.lease) {
            Ok(influx) => Ok((grant, influx)),
            Err(why) => {
                let _ = self.authority.revoke(identity, &grant.lease.id);
                Err(LeaseError::Unusable {
                    lease_id: grant.lease.id,
                    why,
                })
            }
        }
    }

    /// Puts a new lease in force, stores it, and retires the one it
    /// replaces (and a replaced identity's) after the grace.
    fn install(
        &mut self,
        grant: LeaseGrant,
        influx: &crate::config::Influx,
        identity: &Identity,
        now: Instant,
    ) {
        self.put_in_force(&grant, influx);
        self.store.save_lease(&StoredLease {
            identity_id: identity.identity_id.clone(),
            grant: grant.clone(),
            received_ms: crate::now_ms(),
            received_boot: Some(super::super::identity::BootStamp::now()),
        });
        if let Some(ca) = &grant.deployment_ca {
            self.adopt_ca(identity, ca);
        }
        let offset = grant
            .authority_time_ms
            .zip(grant.round_trip)
            .map(|(at, trip)| crate::clock::estimate(at, trip));
        if let Some(offset) = offset {
            self.note_offset(offset);
        }
        let ttl = Duration::from_secs(grant.lease.ttl_secs.clamp(1, super::MAX_TTL_SECS));
        // The lifetime counts from when it was asked for: the authority
        // started it before answering.
        let jitter = (self.jitter)();
        let new = Held::new(grant, &identity.identity_id, ttl, now, jitter);
        log::info!(
            "lease {} obtained for {} (ttl {}), renewing in {}",
            new.id(),
            identity.identity_name,
            humantime::format_duration(ttl),
            humantime::format_duration(whole_ms(new.renew_at - now))
        );
        self.view.leases_obtained += 1;
        self.view.clock_told = Some(super::ClockTold {
            lease: self.view.leases_obtained,
            true_minus_boot_ns: offset.map(|o| o.true_minus_boot_ns),
        });
        let State::Enrolled { held, want_new, .. } = &mut self.state else {
            return;
        };
        *want_new = false;
        if let Some(old) = held.replace(new) {
            self.view.renewals += 1;
            // A lease of a replaced identity goes with all of its leases.
            if old.identity_id == identity.identity_id {
                self.retired.push(Retired {
                    identity: identity.clone(),
                    lease: Some(old.grant.lease.id.clone()),
                    when: When::At(now + REVOKE_GRACE),
                });
            }
        }
        for r in &mut self.retired {
            if r.when == When::AfterNextLease {
                r.when = When::At(now + REVOKE_GRACE);
            }
        }
        if self.unproven_refusals == 0 {
            self.backoff.reset();
            self.view.last_error = None;
        }
    }

    /// Pins the deployment CA the authority named, and drops the old
    /// certificate pin once the authority serves one the CA signed.
    /// Keeps the clock offset a lease answer told, and says so when it is
    /// first known and when it moved by more than its bounds and a second.
    fn note_offset(&mut self, offset: crate::clock::Offset) {
        const NS_PER_MS: f64 = 1e6;
        let before = self
            .view
            .clock_offset_ms
            .zip(self.view.clock_offset_error_ms);
        let moved = before.is_none_or(|(ms, err)| {
            let change = (offset.offset_ns as f64 / NS_PER_MS - ms).abs();
            change > 1_000.0 + err + offset.error_ns as f64 / NS_PER_MS
        });
        if moved {
            let text = crate::clock::describe(offset.offset_ns, offset.error_ns);
            if offset.offset_ns.unsigned_abs() > 2_000_000_000 {
                log::warn!("this gateway's clock is {text}");
            } else {
                log::info!("clock: {text}");
            }
        }
        self.view.clock_offset_ms = Some(offset.offset_ns as f64 / NS_PER_MS);
        self.view.clock_offset_error_ms = Some(offset.error_ns as f64 / NS_PER_MS);
        self.view.clock_measured_ms = Some(crate::now_ms());
    }

    fn adopt_ca(&mut self, identity: &Identity, ca: &crate::wire::api::DeploymentCa) {
        let mut moved = identity.clone();
        if !moved.adopt_ca(ca) {
            return;
        }
        self.store.save_identity(&moved);
        log::info!(
            "identity {} now pins the deployment CA sha256 {}{}",
            moved.identity_id,
            ca.sha256,
            if moved.cert_sha256.is_some() {
                " beside the authority's certificate it pinned before"
            } else {
                " alone"
            }
        );
        if let State::Enrolled { identity, .. } = &mut self.state {
            *identity = moved;
        }
    }

    /// Revokes what is due; best effort, each tried once (the authority
    /// deletes them at expiry anyway).
    pub(super) fn revoke_due(&mut self, now: Instant) {
        let (due, later): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|r| matches!(r.when, When::At(t) if now >= t));
        self.retired = later;
        for r in due {
            let leases = match r.lease {
                Some(id) => vec![id],
                None => {
                    self.store.clear_retired(&r.identity.identity_id);
                    match self.authority.active_leases(&r.identity) {
                        Ok(ids) => ids,
                        Err(e) => {
                            log::warn!(
                                "cannot list the leases of replaced identity {}: {}",
                                r.identity.identity_id,
                                crate::error_chain(&e)
                            );
                            Vec::new()
                        }
                    }
                }
            };
            for lease in leases {
                match self.authority.revoke(&r.identity, &lease) {
                    Ok(()) => log::info!("revoked replaced lease {lease}"),
                    Err(e) => log::warn!(
                        "could not revoke replaced lease {lease} (it expires on its own): {}",
                        crate::error_chain(&e)
                    ),
                }
            }
        }
    }

    fn held(&self) -> Option<&Held> {
        match &self.state {
            State::Enrolled { held, .. } => held.as_ref(),
            State::WaitingForTicket => None,
        }
    }
}
