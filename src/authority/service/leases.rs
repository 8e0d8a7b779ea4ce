//! Leases: creating the real InfluxDB credential behind a lease for an
//! enrolled identity, listing and revoking leases and identities, and
//! deleting a credential when its lease ends. A lease is recorded before
//! its credential exists, so that a crash leaves nothing the reaper cannot
//! find.

use std::time::Duration;

use crate::authority::backends::{Backend, Wanted};
use crate::authority::config::Role;
use crate::authority::store::{IdentityRow, Inserted, LeaseRow, NewLease, TicketRow};
use crate::now_ms;
use crate::secret::{self};
use crate::wire::api::{ApiError, ErrorCode, LeaseGrant, LeaseInfo, LeaseRequest, LeaseStatus};

use super::info;
use super::lease_ttl;
use super::retry_delay;
use super::{Authority, CallFrom};

impl Authority {
    /// A new lease for `identity`; the call and its health report are
    /// recorded whatever becomes of it (a gateway that calls is alive).
    pub fn create_lease(
        &self,
        identity: &IdentityRow,
        req: &LeaseRequest,
        call: &CallFrom<'_>,
    ) -> Result<LeaseGrant, ApiError> {
        let called_ms = now_ms();
        let granted = self.grant_lease(identity, req);
        self.record_call(identity, call, called_ms, granted.is_err());
        granted
    }

    fn grant_lease(
        &self,
        identity: &IdentityRow,
        req: &LeaseRequest,
    ) -> Result<LeaseGrant, ApiError> {
        let role = self.enrolled_role(identity)?;
        let ttl = lease_ttl(req, role)?;
        let backend = self.backends.get(&role.backend).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Internal,
                format!("role {} names no backend", role.name),
            )
        })?;
        if role.per_identity() {
            self.check_bound_name(identity, role)?;
        }
        let resolved = role.target_for(&identity.name);
        let target = backend.target(&resolved);
        let id = secret::random_hex(8);
        let created_ms = now_ms();
        let expires_ms = created_ms + ttl.as_millis() as i64;
        self.record_lease(
            identity,
            role,
            &NewLease {
                id: &id,
                replica: &self.replica,
                identity_id: &identity.id,
                role: &role.name,
                backend: backend.name(),
                target: &target,
                created_ms,
                expires_ms,
            },
        )?;
        let wanted = Wanted {
            lease_id: &id,
            identity_name: &identity.name,
            expires_unix: expires_ms.div_euclid(1000) + 1,
            ttl,
            role,
            target: &resolved,
        };
        let grant = match backend.create(&wanted) {
            Ok(g) => g,
            Err(e) => {
                let message = crate::error_chain(&e);
                log::warn!("lease {id} for {}: {message}", identity.name);
                self.store().fail_lease(&id, &message, now_ms())?;
                return Err(ApiError::new(ErrorCode::BackendFailed, message));
            }
        };
        let status = self.store().activate_lease(&id, &grant.handle, now_ms())?;
        if status != Some(LeaseStatus::Active) {
            return Err(self.ended_while_made(backend, &id, &grant.handle, identity));
        }
        let lease = self
            .store()
            .lease(&id)?
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the new lease vanished"))?;
        log::info!(
            "lease {id} issued for {} ({}), ttl {}",
            identity.name,
            identity.id,
            humantime::format_duration(ttl)
        );
        Ok(LeaseGrant {
            lease: info(&lease),
            secret: grant.secret,
            deployment_ca: self.deployment_ca.clone(),
            // Read last, as close to the answer as the service gets.
            authority_time_ms: Some(now_ms()),
            round_trip: None,
        })
    }

    /// The role the identity enrolled with, or a refusal (audited) if it is
    /// no longer configured.
    pub(super) fn enrolled_role(&self, identity: &IdentityRow) -> Result<&Role, ApiError> {
        // An identity keeps the role it enrolled with. If that role is gone
        // it gets nothing until an admin acts (restores the role, or
        // revokes the identity and issues a new ticket): silently handing
        // it whatever role now matches would grant access nobody chose.
        let Some(role) = self.config.roles.iter().find(|r| r.name == identity.role) else {
            let message = format!(
                "role {:?} of identity {} is no longer configured; an admin must restore it, or revoke the identity and issue a new ticket",
                identity.role, identity.id
            );
            self.lease_refused(identity, &message)?;
            return Err(ApiError::new(ErrorCode::NoRoleMatches, message));
        };
        Ok(role)
    }

    /// For a role that gives each identity its own database: refuses
    /// (audited) unless the identity's name is the one its ticket bound.
    pub(super) fn check_bound_name(
        &self,
        identity: &IdentityRow,
        role: &Role,
    ) -> Result<(), ApiError> {
        // The name picks the database: it must be one an admin bound in
        // the identity's ticket, not one the gateway chose (an identity
        // enrolled before its role got `{identity}` chose its own).
        let bound = self
            .store()
            .ticket(&identity.ticket_id)?
            .and_then(|t| t.identity_name);
        if bound.as_deref() != Some(identity.name.as_str()) {
            let message = format!(
                "role {:?} gives each identity its own {:?}, but identity {} ({}) enrolled with a ticket that bound no name, or another; revoke it and issue a ticket with --identity-name",
                role.name, role.target, identity.id, identity.name
            );
            self.lease_refused(identity, &message)?;
            return Err(ApiError::new(ErrorCode::IdentityNameMismatch, message));
        }
        Ok(())
    }

    /// Records a new lease as pending, before its credential exists, or
    /// says why not: the identity was revoked, or holds as many live
    /// leases as its role allows.
    pub(super) fn record_lease(
        &self,
        identity: &IdentityRow,
        role: &Role,
        lease: &NewLease<'_>,
    ) -> Result<(), ApiError> {
        let recorded = self.store().insert_lease(lease, role.max_active_leases)?;
        match recorded {
            Inserted::Yes => Ok(()),
            Inserted::IdentityRevoked => Err(ApiError::new(
                ErrorCode::IdentityRevoked,
                format!("identity {} ({}) was revoked", identity.id, identity.name),
            )),
            Inserted::AtLimit => Err(ApiError::new(
                ErrorCode::LeaseLimit,
                format!(
                    "identity {} ({}) holds {} live leases, its role's max_active_leases; revoke one or let one expire",
                    identity.id, identity.name, role.max_active_leases
                ),
            )),
        }
    }

    /// A lease revoked (with its identity) or ended by another process
    /// while its credential was being made: the credential must not be
    /// handed out, and goes now rather than at the reaper's next pass.
    /// Returns the error to answer with.
    pub(super) fn ended_while_made(
        &self,
        backend: &Backend,
        id: &str,
        handle: &str,
        identity: &IdentityRow,
    ) -> ApiError {
        log::warn!("lease {id}: ended while its credential was being made; deleting it");
        if let Err(e) = backend.delete(handle) {
            log::warn!(
                "lease {id}: {} (the reaper retries)",
                crate::error_chain(&e)
            );
        } else {
            let deleted = self.store().deleted(id, now_ms());
            if let Err(e) = deleted {
                return e.into();
            }
        }
        match self.authenticate_id(&identity.id) {
            Err(e) => e,
            Ok(()) => ApiError::new(
                ErrorCode::LeaseUnknown,
                format!("lease {id} was revoked while it was being made"),
            ),
        }
    }

    /// One lease; with `owner`, only if that identity holds it.
    pub fn lease(&self, id: &str, owner: Option<&str>) -> Result<LeaseInfo, ApiError> {
        match self.store().lease(id)? {
            Some(l) if owner.is_none_or(|o| o == l.identity_id) => Ok(info(&l)),
            _ => Err(ApiError::new(
                ErrorCode::LeaseUnknown,
                format!("no lease {id}"),
            )),
        }
    }

    pub fn leases(&self, owner: Option<&str>) -> Result<Vec<LeaseInfo>, ApiError> {
        Ok(self.store().leases(owner)?.iter().map(info).collect())
    }

    /// Revokes a lease and deletes its credential at once; if the deletion
    /// fails the lease stays `revoking` and the reaper retries. `by` is
    /// who asked, for the audit trail.
    pub fn revoke_lease(
        &self,
        id: &str,
        owner: Option<&str>,
        by: &str,
    ) -> Result<LeaseInfo, ApiError> {
        self.lease(id, owner)?;
        let lease = self.store().begin_revoke(id, "revoke", by, now_ms())?;
        if let Some(l) = lease.filter(|l| l.status == LeaseStatus::Revoking) {
            self.delete_credential(&l);
        }
        self.lease(id, owner)
    }

    pub fn revoke_identity(&self, id: &str, by: &str) -> Result<usize, ApiError> {
        let leases = self
            .store()
            .revoke_identity(id, by, now_ms())?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::IdentityUnknown, format!("no identity {id}"))
            })?;
        for l in &leases {
            self.delete_credential(l);
        }
        Ok(leases.len())
    }

    /// Deletes one lease's credential and records the outcome: the lease
    /// ends, or stays revoking with its error and a retry time. A lease
    /// whose credential is still being made has no handle yet; the reaper
    /// takes it once it has.
    pub fn delete_credential(&self, lease: &LeaseRow) -> bool {
        let Some(handle) = &lease.handle else {
            return false;
        };
        let result = match self.backends.get(&lease.backend) {
            Some(backend) => backend.delete(handle).map_err(|e| crate::error_chain(&e)),
            None => Err(format!(
                "backend {:?} is not in the configuration; add it back so the credential can be deleted",
                lease.backend
            )),
        };
        let now = now_ms();
        let store = self.store();
        let recorded = match result {
            Ok(()) => store.deleted(&lease.id, now).map(|_| true),
            Err(message) => {
                let delay = retry_delay(lease.attempts);
                log::warn!(
                    "lease {}: deleting its credential failed (attempt {}), retrying in {}: {message}",
                    lease.id,
                    lease.attempts + 1,
                    humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                );
                store
                    .deletion_failed(&lease.id, &message, now + delay.as_millis() as i64)
                    .map(|_| false)
            }
        };
        recorded.unwrap_or_else(|e| {
            log::error!("lease {}: {}", lease.id, crate::error_chain(&e));
            false
        })
    }

    pub fn identities(&self) -> Result<Vec<IdentityRow>, ApiError> {
        Ok(self.store().identities()?)
    }

    pub fn tickets(&self) -> Result<Vec<TicketRow>, ApiError> {
        Ok(self.store().tickets()?)
    }
}
