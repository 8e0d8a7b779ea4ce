//! The authority's durable state: tickets, identities, leases and the audit
//! trail, behind the [`Store`] trait, written once ([`SqlStore`], with
//! each statement once in `sql.rs`) over two engines: SQLite in the state
//! dir for a single authority ([`sqlite`]), PostgreSQL for replicas on one
//! database ([`postgres`]). Every change that must be atomic is one
//! conditional statement or one transaction. Secrets only as SHA-256
//! hashes, and for a lease only what deleting its credential needs; it
//! never talks to InfluxDB.

mod engine;
pub mod postgres;
mod sql;
pub mod sqlite;

pub use engine::SqlStore;

use std::collections::{BTreeMap, HashSet};

use crate::authority::config::StoreConfig;
use crate::wire::api::{ErrorCode, LeaseStatus, Target};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store {url}: {source}")]
    Connect {
        /// The database URL, which never carries a password (the
        /// configuration refuses one).
        url: String,
        #[source]
        source: ::postgres::Error,
    },
    #[error("store: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("store: all {0} database connections stayed busy for 10 s")]
    PoolTimeout(usize),
    #[error("store: TLS to the database: {0}")]
    Tls(String),
    #[error(
        "store: the schema is version {found}, newer than this build knows ({known}); use a newer leasegate-authority"
    )]
    TooNew { found: i64, known: i64 },
    #[error("store: row {0}: {1}")]
    Corrupt(String, String),
    #[error(
        "deployment_id is {configured:?} in the configuration but {stored:?} in the store; credentials in InfluxDB carry the stored one, so it cannot change"
    )]
    DeploymentChanged { configured: String, stored: String },
    /// Never leaves the store: an enrollment refused by its role rule,
    /// carried out of its transaction so that the counted use rolls back.
    #[error("store: enrollment of ticket {1} refused ({0:?})")]
    Refused(ErrorCode, String),
}

#[derive(Debug, Clone)]
pub struct TicketRow {
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    pub role: Option<String>,
    pub usage_count: u32,
    pub used: u32,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
    /// The one identity name the ticket enrolls, when the admin bound it.
    pub identity_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct IdentityRow {
    pub id: String,
    pub name: String,
    pub ticket_id: String,
    pub role: String,
    pub attributes: BTreeMap<String, String>,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub id: String,
    pub identity_id: String,
    pub identity_name: String,
    pub role: String,
    pub backend: String,
    pub target: Target,
    pub handle: Option<String>,
    pub status: LeaseStatus,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// "expiry", "revoke" or "identity revoked", once the lease has ended.
    pub end_reason: Option<String>,
    pub attempts: u32,
    pub next_attempt_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// A gateway's lease calls and the last health report it sent
/// (`crate::wire::health`), as the store keeps them: the report as its
/// checked JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthRow {
    pub identity_id: String,
    /// Its last lease call, and the one before (authority time, ms).
    pub called_ms: i64,
    pub previous_call_ms: Option<i64>,
    /// The last report that passed the checks, and when it came.
    pub report_ms: Option<i64>,
    pub report: Option<String>,
    /// Why the report of the last call was refused, if it was.
    pub refused: Option<String>,
    /// Lease calls that failed in a row, up to the last: the gateway
    /// retries them on its backoff, not at its renewal time.
    pub failed_calls: u32,
}

/// One lease call, for [`Store::record_call`].
pub struct Call<'a> {
    pub identity_id: &'a str,
    pub at_ms: i64,
    /// The report, checked, as JSON; None when none came or it was refused.
    pub report: Option<&'a str>,
    pub refused: Option<&'a str>,
    /// The call got no lease.
    pub failed: bool,
    /// The client's address (its network, for IPv6).
    pub address: Option<&'a str>,
    /// A report also goes into the history unless the history has one
    /// from after this time (keeps it to one per interval).
    pub history_after_ms: i64,
}

/// What became of [`Store::insert_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Yes,
    IdentityRevoked,
    /// The identity holds as many live leases as its role allows.
    AtLimit,
}

pub struct NewLease<'a> {
    pub id: &'a str,
    /// The replica creating its credential (see [`Store::fail_pending`]).
    pub replica: &'a str,
    pub identity_id: &'a str,
    pub role: &'a str,
    pub backend: &'a str,
    pub target: &'a Target,
    pub created_ms: i64,
    pub expires_ms: i64,
}

impl IdentityRow {
    /// The identity an enrollment with `ticket` just made.
    pub(crate) fn enrolled(
        id: &str,
        name: &str,
        ticket: TicketRow,
        role: String,
        now_ms: i64,
    ) -> IdentityRow {
        IdentityRow {
            id: id.to_owned(),
            name: name.to_owned(),
            ticket_id: ticket.id,
            role,
            attributes: ticket.attributes,
            created_ms: now_ms,
            revoked_ms: None,
        }
    }
}

/// What [`Store::enroll`] asks of the caller: the role for a ticket that
/// may be redeemed, or the refusal.
pub type RoleFor<'a> = &'a dyn Fn(&TicketRow) -> Result<String, ErrorCode>;

/// An enrollment's outcome: the new identity, or the refusal with the
/// ticket's id when the ticket was found.
pub type Enrolled = Result<IdentityRow, (ErrorCode, Option<String>)>;

/// The authority's state. Every method is one atomic step, safe to call
/// from any thread and, with PostgreSQL, from any number of processes on
/// one database at once.
pub trait Store: Send + Sync {
    /// "sqlite" or "postgres", for logs and status.
    fn kind(&self) -> &'static str;
    /// The schema version the store is at (the number of migrations run).
    fn schema_version(&self) -> Result<i64, StoreError>;

    fn insert_ticket(&self, t: &TicketRow, secret_hash: &str) -> Result<(), StoreError>;
    fn tickets(&self) -> Result<Vec<TicketRow>, StoreError>;
    fn ticket(&self, id: &str) -> Result<Option<TicketRow>, StoreError>;
    /// Revokes a ticket; false when there is no such ticket.
    fn revoke_ticket(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Redeems a ticket: one conditional update counts the use only if the
    /// ticket is unrevoked, unexpired and not used up, and the new identity
    /// is recorded in the same transaction, so concurrent enrollments
    /// (from any process) can never exceed the usage count. `role_for`
    /// picks the role from the ticket, or refuses (and the use is not
    /// counted). `identity` is (id, name, credential hash).
    fn enroll(
        &self,
        secret_hash: &str,
        now_ms: i64,
        role_for: RoleFor<'_>,
        identity: (&str, &str, &str),
    ) -> Result<Enrolled, StoreError>;

    fn identity_by_credential(
        &self,
        credential_hash: &str,
    ) -> Result<Option<IdentityRow>, StoreError>;
    fn identities(&self) -> Result<Vec<IdentityRow>, StoreError>;
    /// Revokes an identity and starts the revocation of every lease it
    /// holds; returns those leases (None when there is no such identity).
    fn revoke_identity(
        &self,
        id: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<Vec<LeaseRow>>, StoreError>;

    /// Records a lease before its credential is created, so that a crash in
    /// between leaves a trace that start-up reconciles. In the same
    /// statement it checks that the identity is not revoked (a revoke that
    /// lands between authentication and this insert would otherwise miss
    /// the lease) and that it holds fewer than `max_live` live leases, so
    /// concurrent requests cannot pass the limit together. Revoking leases
    /// count: their credentials work until their deletion succeeds.
    fn insert_lease(&self, l: &NewLease<'_>, max_live: u32) -> Result<Inserted, StoreError>;
    /// The credential exists: the handle is stored and a pending lease
    /// becomes active. Returns the lease's status after that: `Active`, or
    /// `Revoking` if it was revoked while its credential was being made
    /// (the reaper deletes it), or anything else if the lease was ended
    /// meanwhile, when the caller must delete the credential itself.
    fn activate_lease(
        &self,
        id: &str,
        handle: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseStatus>, StoreError>;
    fn fail_lease(&self, id: &str, error: &str, now_ms: i64) -> Result<(), StoreError>;
    fn lease(&self, id: &str) -> Result<Option<LeaseRow>, StoreError>;
    /// Leases, newest first; one identity's when given.
    fn leases(&self, identity_id: Option<&str>) -> Result<Vec<LeaseRow>, StoreError>;
    /// Leases of `backend` whose credential must go now: active ones past
    /// their expiry and revoking ones whose retry is due, earliest first.
    fn due_leases(
        &self,
        backend: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<LeaseRow>, StoreError>;
    /// Claims up to `limit` of `backend`'s due leases (as
    /// [`Store::due_leases`]) for `replica` until `claim_until_ms`, in one
    /// atomic step, and returns them: those no replica holds a live claim
    /// on, or this one does. Replicas sharing a store so never work on one
    /// lease at once, and a replica that dies holding claims has them taken
    /// over once they lapse. [`Store::deleted`] and
    /// [`Store::deletion_failed`] give a claim up.
    fn claim_due(
        &self,
        backend: &str,
        replica: &str,
        now_ms: i64,
        claim_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<LeaseRow>, StoreError>;
    /// Extends `replica`'s live claims to `claim_until_ms` while it is
    /// still working on them; returns how many. Lapsed claims stay lapsed:
    /// another replica may hold them by now.
    fn renew_claims(
        &self,
        replica: &str,
        now_ms: i64,
        claim_until_ms: i64,
    ) -> Result<usize, StoreError>;
    /// When the next credential of `backend` is due for deletion and free
    /// to claim (a lease another replica holds counts from its claim's
    /// end).
    fn next_due_ms(&self, backend: &str) -> Result<Option<i64>, StoreError>;
    /// Starts a revoke: the lease becomes `revoking`, due now. Returns the
    /// lease as it now is, or None if there is no such lease.
    /// `by` (who asked: "admin NAME", "its gateway", "the command line")
    /// goes into the audit record.
    fn begin_revoke(
        &self,
        id: &str,
        reason: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseRow>, StoreError>;
    /// The credential is gone: the lease ends as expired or revoked.
    /// None when it had already ended.
    fn deleted(&self, id: &str, now_ms: i64) -> Result<Option<LeaseRow>, StoreError>;
    /// A deletion failed: retried at `next_attempt_ms`, shown as revoking.
    fn deletion_failed(
        &self,
        id: &str,
        error: &str,
        next_attempt_ms: i64,
    ) -> Result<(), StoreError>;
    /// A lease left pending by a replica that died never got its
    /// credential recorded: the pending leases of replicas other than
    /// `replica` that have not said they are alive (see
    /// [`Store::heartbeat`]) since `alive_since_ms` are marked failed; the
    /// backend's reconcile deletes the credential if it was made. Another
    /// live replica's lease in the making is left alone.
    fn fail_pending(
        &self,
        replica: &str,
        now_ms: i64,
        alive_since_ms: i64,
    ) -> Result<usize, StoreError>;
    /// `replica` is alive at `now_ms`.
    fn heartbeat(&self, replica: &str, now_ms: i64) -> Result<(), StoreError>;
    /// The replicas heard from since `since_ms`, with when, latest first.
    fn replicas(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError>;
    /// Whether the store answers (the cheapest query there is).
    fn ping(&self) -> Result<(), StoreError>;
    /// This deployment's id: the stored one; on first use the configured
    /// one, or a random one, stored from then on.
    fn deployment_id(&self, configured: Option<&str>) -> Result<String, StoreError>;
    /// Every lease id the store holds, live or ended (until pruned).
    fn lease_ids(&self) -> Result<HashSet<String>, StoreError>;
    /// Ids of all leases whose credential may exist and must stay (or is
    /// being deleted by the reaper), whatever their backend: two backends
    /// may name the same InfluxDB.
    fn live_lease_ids(&self) -> Result<HashSet<String>, StoreError>;
    /// Live leases per backend name, for the backends not in `configured`:
    /// their credentials cannot be deleted until the backend is back.
    fn leases_of_unknown_backends(
        &self,
        configured: &[&str],
    ) -> Result<Vec<(String, usize)>, StoreError>;
    /// Forgets leases that ended before `before_ms` (their credentials are
    /// long gone; the audit trail keeps their story). Returns how many.
    fn prune_ended(&self, before_ms: i64) -> Result<usize, StoreError>;

    /// Deletes audit records older than `before_ms`. Returns how many.
    fn prune_audit(&self, before_ms: i64) -> Result<usize, StoreError>;

    /// Records a gateway's lease call with its health report (or why the
    /// report was refused); a refused or absent report keeps the last good
    /// one.
    fn record_call(&self, call: &Call<'_>) -> Result<(), StoreError>;
    /// Every gateway's last call and report.
    fn health(&self) -> Result<Vec<HealthRow>, StoreError>;
    /// The addresses gateways made lease calls from since `since_ms`.
    fn gateway_addresses(&self, since_ms: i64) -> Result<Vec<String>, StoreError>;
    /// One gateway's reports since `since_ms`, oldest first: (ms, JSON).
    fn health_history(
        &self,
        identity_id: &str,
        since_ms: i64,
    ) -> Result<Vec<(i64, String)>, StoreError>;
    /// Deletes history older than `before_ms`. Returns how many.
    fn prune_health(&self, before_ms: i64) -> Result<usize, StoreError>;
    /// Each identity's newest lease (whatever its status).
    fn latest_leases(&self) -> Result<Vec<LeaseRow>, StoreError>;

    /// Adds an admin of the web page with an Argon2 PHC hash, or replaces
    /// the hash of one that exists (`replace`). False when nothing changed
    /// (a new name taken, or a name to replace not there).
    fn set_admin(
        &self,
        name: &str,
        password_hash: &str,
        now_ms: i64,
        replace: bool,
    ) -> Result<bool, StoreError>;
    fn admin_hash(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Every admin's name and when it was added.
    fn admins(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Removes an admin and its sessions.
    fn remove_admin(&self, name: &str) -> Result<bool, StoreError>;
    /// A session: the SHA-256 of its token, its admin, its CSRF token.
    fn insert_session(
        &self,
        token_hash: &str,
        admin: &str,
        csrf: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError>;
    /// The admin and CSRF token of a live session.
    fn session(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<Option<(String, String)>, StoreError>;
    fn delete_session(&self, token_hash: &str) -> Result<(), StoreError>;
    /// Deletes sessions expired by `now_ms`; how many.
    fn prune_sessions(&self, now_ms: i64) -> Result<usize, StoreError>;
    fn audit(
        &self,
        now_ms: i64,
        event: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError>;
    /// The audit trail, oldest first: (unix ms, event, subject, detail).
    fn audit_trail(&self) -> Result<Vec<(i64, String, String, String)>, StoreError>;
    /// At most `limit` rows before row `before` (all with `i64::MAX`),
    /// newest first.
    fn audit_page(&self, before: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError>;
    /// The newest `limit` rows about an identity: its own and its leases'.
    fn audit_of_identity(&self, identity_id: &str, limit: u32)
    -> Result<Vec<AuditRow>, StoreError>;
}

/// One row of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRow {
    /// Its place in the trail: later rows have larger ones.
    pub seq: i64,
    pub at_ms: i64,
    pub event: String,
    pub subject: String,
    pub detail: String,
}

/// Opens the configured store and brings its schema up to date.
pub fn open(
    config: &StoreConfig,
    state_dir: &std::path::Path,
) -> Result<Box<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Sqlite => {
            Box::new(sqlite::SqliteStore::open(&state_dir.join("authority.db"))?)
        }
        StoreConfig::Postgres(pg) => Box::new(postgres::PostgresStore::open(pg)?),
    })
}

/// Why a ticket that the conditional update did not redeem was refused,
/// in the order an operator would look: revoked, then expired, else used
/// up (also when a concurrent enrollment took its last use).
/// Why a ticket found by its secret (or not found) was not redeemed, and
/// its id, for the enrollment's refusal.
pub(crate) fn not_redeemed(found: Option<TicketRow>, now_ms: i64) -> (ErrorCode, Option<String>) {
    match found {
        None => (ErrorCode::TicketUnknown, None),
        Some(t) => (why_not_redeemed(&t, now_ms), Some(t.id)),
    }
}

pub(crate) fn why_not_redeemed(ticket: &TicketRow, now_ms: i64) -> ErrorCode {
    if ticket.revoked_ms.is_some() {
        ErrorCode::TicketRevoked
    } else if ticket.expires_ms <= now_ms {
        ErrorCode::TicketExpired
    } else {
        ErrorCode::TicketUsedUp
    }
}

/// What the audit record of an enrollment says.
pub(crate) fn enroll_detail(name: &str, ticket: &TicketRow, role: &str) -> String {
    format!(
        "identity {name:?} enrolled with ticket {} (use {} of {}), role {role}",
        ticket.id, ticket.used, ticket.usage_count
    )
}

/// Every audit record also goes to the log, so an operator sees the trail
/// in the journal; neither ever carries a secret.
pub(crate) fn log_audit(event: &str, subject: &str, detail: &str) {
    log::info!("audit: {event} {subject}: {detail}");
}

/// The audit event of a lease whose credential is gone.
pub(crate) fn deleted_event(l: &LeaseRow) -> (&'static str, String) {
    let event = if l.status == LeaseStatus::Expired {
        "lease expire"
    } else {
        "lease revoke"
    };
    (
        event,
        format!(
            "credential {} deleted ({})",
            l.handle.as_deref().unwrap_or("-"),
            l.end_reason.as_deref().unwrap_or("expiry")
        ),
    )
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data always serializes")
}

/// Filters the live-lease counts per backend down to unconfigured backends.
pub(crate) fn unknown_backends(
    all: Vec<(String, usize)>,
    configured: &[&str],
) -> Vec<(String, usize)> {
    all.into_iter()
        .filter(|(b, _)| !configured.contains(&b.as_str()))
        .collect()
}

/// The deployment id to store on first use.
pub(crate) fn new_deployment_id(configured: Option<&str>) -> String {
    configured
        .map(str::to_owned)
        .unwrap_or_else(|| crate::secret::random_hex(6))
}

/// The stored deployment id against the configured one.
pub(crate) fn check_deployment(
    stored: String,
    configured: Option<&str>,
) -> Result<String, StoreError> {
    match configured {
        Some(c) if c != stored => Err(StoreError::DeploymentChanged {
            configured: c.to_owned(),
            stored,
        }),
        _ => Ok(stored),
    }
}
