//! The authority's decisions: who may enroll, which role an identity gets,
//! how long a lease lives, and when its credential goes. The HTTP server
//! and the admin commands both call this; neither decides anything itself.
//!
//! It owns the order of every lease's steps (recorded before its credential
//! exists, active once it does, revoking until its deletion succeeds) and
//! makes each store call one step of its own, never spanning an InfluxDB
//! call, so a slow or dead InfluxDB never blocks enrollment or
//! another backend's leases. It never returns or logs a secret except in
//! the one answer that hands it out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{
    ApiError, EnrollRequest, Enrollment, ErrorCode, LeaseGrant, LeaseInfo, LeaseRequest,
    LeaseStatus, identity_name_is_valid,
};
use crate::authority::backends::{Backend, Wanted};
use crate::authority::config::{AuthorityConfig, Role};
use crate::authority::store::{
    IdentityRow, Inserted, LeaseRow, NewLease, Store, StoreError, TicketRow,
};
use crate::secret::{self, Secret};
use crate::ticket::{self, Ticket};

/// Identity credentials: 256 random bits.
const CREDENTIAL_BYTES: usize = 32;
/// A failed deletion is retried after 1 s, doubling up to this, jittered.
const RETRY_CAP: Duration = Duration::from_secs(60);

pub use crate::now_ms;

pub struct Authority {
    config: AuthorityConfig,
    store: Box<dyn Store>,
    /// Refused enrollments not yet in the audit trail (see [`Refusals`]).
    refusals: Mutex<Refusals>,
    backends: HashMap<String, Arc<Backend>>,
    /// The fingerprints tickets carry; None with tls off.
    pins: Option<crate::client::Pins>,
    /// The deployment CA, told in every lease grant (see
    /// [`DeploymentCa`]); None with tls off or without a CA.
    deployment_ca: Option<crate::api::DeploymentCa>,
    /// This process among the replicas sharing the store: new at every
    /// start, so a restarted process never mistakes a dead one's claims
    /// for its own.
    replica: String,
    /// The stored deployment id every credential is named with.
    deployment: String,
    /// When this process opened the authority (wall-clock ms).
    started_ms: i64,
    /// Due leases this process has claimed and not yet dealt with; the
    /// claims are renewed while there are any.
    pub claims_held: std::sync::atomic::AtomicUsize,
    /// Set when leases another replica left pending were failed: their
    /// credentials may exist, and housekeeping reconciles at once.
    pub reconcile_soon: std::sync::atomic::AtomicBool,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        log::error!("{}", crate::error_chain(&e));
        ApiError::new(
            ErrorCode::Internal,
            "the authority's store failed; see its log",
        )
    }
}

impl Authority {
    pub fn open(
        config: AuthorityConfig,
        pins: Option<crate::client::Pins>,
    ) -> Result<Authority, StoreError> {
        let store = crate::authority::store::open(&config.store, &config.state_dir)?;
        let deployment = store.deployment_id(config.deployment_id.as_deref())?;
        let backends = config
            .backends
            .iter()
            .map(|b| (b.name.clone(), Arc::new(Backend::new(b, &deployment))))
            .collect();
        Ok(Authority {
            deployment,
            started_ms: now_ms(),
            config,
            store,
            refusals: Mutex::default(),
            backends,
            pins,
            deployment_ca: None,
            replica: secret::random_hex(8),
            claims_held: std::sync::atomic::AtomicUsize::new(0),
            reconcile_soon: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// This process's replica id (claims on due leases carry it).
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// What `serve` tells gateways of the deployment CA in each grant.
    pub fn with_deployment_ca(mut self, ca: Option<crate::api::DeploymentCa>) -> Authority {
        self.deployment_ca = ca;
        self
    }

    /// When this process opened the authority.
    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }

    /// This deployment's id (see `deployment_id` in the configuration).
    pub fn deployment_id(&self) -> &str {
        &self.deployment
    }

    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.values()
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    // --- tickets (admin) ---

    pub fn create_ticket(
        &self,
        attributes: BTreeMap<String, String>,
        usage_count: u32,
        expires_in: Duration,
        role: Option<String>,
        identity_name: Option<String>,
    ) -> Result<Ticket, ApiError> {
        if usage_count == 0 {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "--usage-count must be at least 1",
            ));
        }
        if let Some(name) = &identity_name
            && !identity_name_is_valid(name)
        {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "--identity-name must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let chosen = match &role {
            Some(r) => self
                .config
                .roles
                .iter()
                .find(|c| &c.name == r)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::NoRoleMatches,
                        format!("no [[role]] is named {r:?}"),
                    )
                })?,
            None => self.match_role(&attributes).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NoRoleMatches,
                    format!(
                        "no [[role]] matches the attributes {}",
                        show_attributes(&attributes)
                    ),
                )
            })?,
        };
        if chosen.per_identity() && identity_name.is_none() {
            // The name picks the database or bucket: a gateway must not
            // choose it, or it could choose another's.
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "role {:?} gives each identity its own {:?}: bind the name with --identity-name",
                    chosen.name, chosen.target
                ),
            ));
        }
        let now = now_ms();
        let secret = Secret::new(secret::random_base64(ticket::SECRET_BYTES));
        let row = TicketRow {
            id: secret::random_hex(8),
            attributes: attributes.clone(),
            role,
            usage_count,
            used: 0,
            created_ms: now,
            expires_ms: now.saturating_add(expires_in.as_millis() as i64),
            revoked_ms: None,
            identity_name: identity_name.clone(),
        };
        let store = self.store();
        store.insert_ticket(&row, &secret::digest(&secret))?;
        store.audit(
            now,
            "ticket create",
            &row.id,
            &format!(
                "attributes {}, {} use(s), expires in {}",
                show_attributes(&attributes),
                usage_count,
                humantime::format_duration(Duration::from_secs(expires_in.as_secs()))
            ),
        )?;
        Ok(Ticket {
            // This replica's, which `cert_sha256` is for: what gateways
            // older than `urls` use.
            url: self.config.public_url.clone(),
            urls: match self.config.public_urls.as_slice() {
                [only] if *only == self.config.public_url => Vec::new(),
                all => all.to_vec(),
            },
            id: row.id,
            secret,
            cert_sha256: self.pins.as_ref().and_then(|p| p.leaf.clone()),
            ca_sha256: self.pins.as_ref().and_then(|p| p.ca.clone()),
            expires: (row.expires_ms / 1000) as u64,
            attributes,
            identity_name,
        })
    }

    pub fn revoke_ticket(&self, id: &str) -> Result<(), ApiError> {
        let now = now_ms();
        let store = self.store();
        if !store.revoke_ticket(id, now)? {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("no ticket {id}"),
            ));
        }
        store.audit(now, "ticket revoke", id, "ticket revoked")?;
        Ok(())
    }

    // --- enrollment ---

    /// Redeems a ticket for an identity. `peer` is the client's address,
    /// for the audit trail of refusals.
    pub fn enroll(
        &self,
        req: &EnrollRequest,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Enrollment, ApiError> {
        if !identity_name_is_valid(&req.identity_name) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "identity_name must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let now = now_ms();
        if !ticket::secret_is_well_formed(req.ticket_secret.expose()) {
            self.refused(
                now,
                peer,
                &req.identity_name,
                ErrorCode::TicketMalformed,
                "",
            )?;
            return Err(ApiError::new(
                ErrorCode::TicketMalformed,
                format!(
                    "the ticket secret is malformed: expected {} base64url characters",
                    (ticket::SECRET_BYTES * 4).div_ceil(3)
                ),
            ));
        }
        let identity_id = secret::random_hex(8);
        let credential = secret::generate("lgi_", CREDENTIAL_BYTES);
        let outcome = self.store().enroll(
            &secret::digest(&req.ticket_secret),
            now,
            &|t| self.role_for(t, &req.identity_name),
            (
                &identity_id,
                &req.identity_name,
                &secret::digest(&credential),
            ),
        )?;
        match outcome {
            Ok(identity) => Ok(Enrollment {
                identity_id: identity.id,
                identity_name: identity.name,
                role: identity.role,
                attributes: identity.attributes,
                credential,
            }),
            Err((code, ticket_id)) => {
                let ticket_row = match &ticket_id {
                    Some(id) => self.store().ticket(id)?,
                    None => None,
                };
                let message = refusal_message(code, ticket_row.as_ref(), now);
                self.refused(now, peer, &req.identity_name, code, &message)?;
                Err(ApiError::new(code, message))
            }
        }
    }

    /// Audits a refused enrollment: the first of its kind in a minute in
    /// full, the rest of that minute counted and summed up in one record,
    /// so that a flood of bad enrollments costs one write a minute rather
    /// than one (fsynced) write each.
    fn refused(
        &self,
        now: i64,
        peer: Option<std::net::IpAddr>,
        name: &str,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), StoreError> {
        let from = peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "local".into());
        let detail = if message.is_empty() {
            format!("{} (from {from})", code.name())
        } else {
            format!("{}: {message} (from {from})", code.name())
        };
        self.audit_refusal(now, &code.name(), &from, ("enroll refused", name, &detail))
    }

    /// Audits a lease refused because the identity's role is gone, summed
    /// up like refused enrollments (a fleet keeps asking).
    fn lease_refused(&self, identity: &IdentityRow, message: &str) -> Result<(), StoreError> {
        let key = format!("lease:{}", identity.role);
        let record = ("lease refused", identity.name.as_str(), message);
        self.audit_refusal(now_ms(), &key, &identity.name, record)
    }

    /// Counts a refusal of kind `key` from `from` in its window ([`Refusals`])
    /// and writes `record` (event, subject, detail) if it opens the window,
    /// after the summary of the window it closes, if any.
    fn audit_refusal(
        &self,
        now: i64,
        key: &str,
        from: &str,
        (event, subject, detail): (&str, &str, &str),
    ) -> Result<(), StoreError> {
        let (first, summary) = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(now, key, from);
        let store = self.store();
        if let Some((event, subject, detail)) = summary {
            store.audit(now, event, &subject, &detail)?;
        }
        if first {
            store.audit(now, event, subject, detail)?;
        }
        Ok(())
    }

    /// Writes the summaries of refusal windows that have closed; called
    /// now and then, so a burst that stopped is still summed up.
    pub fn flush_refusals(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let due = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed(now);
        for (event, subject, detail) in due {
            self.store().audit(now, event, &subject, &detail)?;
        }
        Ok(())
    }

    /// The role a ticket enrolls `name` into, or why it does not: its
    /// pinned role is gone or none matches; it binds another name; or the
    /// role gives each identity its own database but the ticket binds no
    /// name (it was issued before the role changed).
    fn role_for(&self, t: &TicketRow, name: &str) -> Result<String, ErrorCode> {
        let role = match &t.role {
            Some(r) => self.config.roles.iter().find(|c| &c.name == r),
            None => self.match_role(&t.attributes),
        }
        .ok_or(ErrorCode::NoRoleMatches)?;
        match &t.identity_name {
            Some(bound) if bound != name => Err(ErrorCode::IdentityNameMismatch),
            None if role.per_identity() => Err(ErrorCode::IdentityNameMismatch),
            _ => Ok(role.name.clone()),
        }
    }

    /// The first role, in configuration order, all of whose `match` pairs
    /// the attributes carry.
    fn match_role(&self, attributes: &BTreeMap<String, String>) -> Option<&Role> {
        self.config
            .roles
            .iter()
            .find(|r| r.matches.iter().all(|(k, v)| attributes.get(k) == Some(v)))
    }

    /// The identity a bearer credential belongs to, if it may still act.
    pub fn authenticate(&self, credential: &Secret) -> Result<IdentityRow, ApiError> {
        match self
            .store()
            .identity_by_credential(&secret::digest(credential))?
        {
            None => Err(ApiError::new(
                ErrorCode::IdentityUnknown,
                "unknown identity credential",
            )),
            Some(i) if i.revoked_ms.is_some() => Err(ApiError::new(
                ErrorCode::IdentityRevoked,
                format!("identity {} ({}) was revoked", i.id, i.name),
            )),
            Some(i) => Ok(i),
        }
    }

    /// Whether the identity may still act, by id.
    fn authenticate_id(&self, id: &str) -> Result<(), ApiError> {
        let revoked = self
            .store()
            .identities()?
            .into_iter()
            .any(|i| i.id == id && i.revoked_ms.is_some());
        if revoked {
            return Err(ApiError::new(
                ErrorCode::IdentityRevoked,
                format!("identity {id} was revoked"),
            ));
        }
        Ok(())
    }

    // --- leases ---

    pub fn create_lease(
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
            authority_time_ms: Some(crate::now_ms()),
            round_trip: None,
        })
    }

    /// The role the identity enrolled with, or a refusal (audited) if it is
    /// no longer configured.
    fn enrolled_role(&self, identity: &IdentityRow) -> Result<&Role, ApiError> {
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
    fn check_bound_name(&self, identity: &IdentityRow, role: &Role) -> Result<(), ApiError> {
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
    fn record_lease(
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
    fn ended_while_made(
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
    /// fails the lease stays `revoking` and the reaper retries.
    pub fn revoke_lease(&self, id: &str, owner: Option<&str>) -> Result<LeaseInfo, ApiError> {
        self.lease(id, owner)?;
        let lease = self.store().begin_revoke(id, "revoke", now_ms())?;
        if let Some(l) = lease.filter(|l| l.status == LeaseStatus::Revoking) {
            self.delete_credential(&l);
        }
        self.lease(id, owner)
    }

    pub fn revoke_identity(&self, id: &str) -> Result<usize, ApiError> {
        let leases = self.store().revoke_identity(id, now_ms())?.ok_or_else(|| {
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

/// How long a lease asked for with `req` lives under `role`: the role's
/// default, or what was asked capped at the role's most.
fn lease_ttl(req: &LeaseRequest, role: &Role) -> Result<Duration, ApiError> {
    match req.ttl_secs {
        Some(0) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "ttl_secs must be at least 1",
        )),
        Some(s) => Ok(Duration::from_secs(s).min(role.max_ttl)),
        None => Ok(role.default_ttl),
    }
}

/// How long a window of refused enrollments of one kind lasts.
const REFUSAL_WINDOW_MS: i64 = 60_000;
/// Addresses named in one summary, at most.
const REFUSAL_ADDRESSES: usize = 10;

/// Refused enrollments per error code within the current window.
#[derive(Default)]
struct Refusals {
    windows: BTreeMap<String, RefusalWindow>,
}

struct RefusalWindow {
    started_ms: i64,
    /// Refusals after the first, not audited one by one.
    more: u64,
    addresses: std::collections::BTreeSet<String>,
}

type AuditRecord = (&'static str, String, String);

impl Refusals {
    /// Counts one refusal. Returns whether it opens a window (audit it in
    /// full) and the summary of the window it closes, if any.
    fn note(&mut self, now: i64, code: &str, from: &str) -> (bool, Option<AuditRecord>) {
        let mut summary = None;
        if let Some(w) = self.windows.get(code)
            && now - w.started_ms >= REFUSAL_WINDOW_MS
        {
            summary = self.take(code);
        }
        match self.windows.get_mut(code) {
            Some(w) => {
                w.more += 1;
                if w.addresses.len() < REFUSAL_ADDRESSES {
                    w.addresses.insert(from.to_owned());
                }
                (false, summary)
            }
            None => {
                self.windows.insert(
                    code.to_owned(),
                    RefusalWindow {
                        started_ms: now,
                        more: 0,
                        addresses: std::collections::BTreeSet::new(),
                    },
                );
                (true, summary)
            }
        }
    }

    /// The summaries of every window older than a window's length.
    fn closed(&mut self, now: i64) -> Vec<AuditRecord> {
        let codes: Vec<String> = self
            .windows
            .iter()
            .filter(|(_, w)| now - w.started_ms >= REFUSAL_WINDOW_MS)
            .map(|(c, _)| c.clone())
            .collect();
        codes.iter().filter_map(|c| self.take(c)).collect()
    }

    fn take(&mut self, code: &str) -> Option<AuditRecord> {
        let w = self.windows.remove(code)?;
        (w.more > 0).then(|| {
            let addresses: Vec<String> = w.addresses.into_iter().collect();
            (
                if code.starts_with("lease:") {
                    "lease refused (repeated)"
                } else {
                    "enroll refused (repeated)"
                },
                code.to_owned(),
                format!(
                    "{} more refusal(s) in the minute after the one above, from {}{}",
                    w.more,
                    addresses.join(", "),
                    if addresses.len() >= REFUSAL_ADDRESSES {
                        " and others"
                    } else {
                        ""
                    }
                ),
            )
        })
    }
}

/// 1 s doubling per failed attempt up to [`RETRY_CAP`], less up to 25% at
/// random so that many failed deletions do not retry in step.
pub fn retry_delay(attempts: u32) -> Duration {
    let step = Duration::from_secs(1)
        .saturating_mul(1u32 << attempts.min(16))
        .min(RETRY_CAP);
    let r = secret::random_bytes(1)[0] as f64 / 255.0;
    step.mul_f64(1.0 - 0.25 * r)
}

pub fn info(l: &LeaseRow) -> LeaseInfo {
    LeaseInfo {
        id: l.id.clone(),
        identity_id: l.identity_id.clone(),
        issued_for: l.identity_name.clone(),
        role: l.role.clone(),
        status: l.status,
        ttl_secs: ((l.expires_ms - l.created_ms).max(0) as u64).div_ceil(1000),
        created_ms: l.created_ms,
        expires_ms: l.expires_ms,
        target: l.target.clone(),
        last_error: l.last_error.clone(),
    }
}

pub fn show_attributes(a: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = a.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

fn refusal_message(code: ErrorCode, t: Option<&TicketRow>, now: i64) -> String {
    let id = t.map(|t| t.id.as_str()).unwrap_or("?");
    match (code, t) {
        (ErrorCode::TicketUnknown, _) => {
            "no such ticket: it was never issued by this authority".into()
        }
        (ErrorCode::TicketRevoked, _) => format!("ticket {id} was revoked"),
        (ErrorCode::IdentityNameMismatch, Some(t)) => match &t.identity_name {
            Some(bound) => format!(
                "ticket {id} enrolls identity {bound:?} only; set identity_name = {bound:?} on the gateway"
            ),
            None => format!(
                "ticket {id} names no identity, but its role gives each identity its own database or bucket; issue a new ticket with --identity-name"
            ),
        },
        (ErrorCode::TicketExpired, Some(t)) => format!(
            "ticket {id} expired {} ago",
            humantime::format_duration(Duration::from_secs(
                ((now - t.expires_ms).max(0) / 1000) as u64
            ))
        ),
        (ErrorCode::TicketUsedUp, Some(t)) => {
            format!(
                "ticket {id} is used up: {} of {} enrollments made",
                t.used, t.usage_count
            )
        }
        (ErrorCode::NoRoleMatches, Some(t)) => format!(
            "no role matches ticket {id}'s attributes {}{}",
            show_attributes(&t.attributes),
            t.role
                .as_ref()
                .map(|r| format!(" (its role {r:?} is not configured)"))
                .unwrap_or_default()
        ),
        _ => format!("ticket {id} refused"),
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_is_one_record_and_a_summary_a_minute() {
        let mut r = Refusals::default();
        assert_eq!(r.note(0, "ticket_unknown", "192.0.2.1"), (true, None));
        for i in 0..5_999 {
            let (first, summary) = r.note(10 + i, "ticket_unknown", &format!("192.0.2.{}", i % 50));
            assert!(!first && summary.is_none());
        }
        // Another kind has its own window.
        assert!(r.note(100, "ticket_malformed", "192.0.2.1").0);
        assert!(r.closed(59_999).is_empty());
        let closed = r.closed(60_000);
        assert_eq!(closed.len(), 1, "only the kind with more than one");
        let (event, code, detail) = &closed[0];
        assert_eq!(
            (*event, code.as_str()),
            ("enroll refused (repeated)", "ticket_unknown")
        );
        assert!(
            detail.starts_with("5999 more refusal(s)") && detail.ends_with("and others"),
            "{detail}"
        );
        // The next one opens a new window.
        assert!(r.note(70_000, "ticket_unknown", "192.0.2.1").0);
    }
}
