//! The statements both stores run, each written once with `?N`
//! placeholders (the PostgreSQL store numbers them `$N` through
//! [`dollars`]), one column list and one row decoder per table. A
//! statement that must differ by engine (the schema, claiming due leases,
//! the row lock before a lease is inserted) is written for each beside the
//! other, with the reason. Nothing here opens a connection or holds a
//! secret.

use crate::wire::api::LeaseStatus;

use super::{HealthRow, IdentityRow, LeaseRow, StoreError, TicketRow};

/// The schema, one migration per version: `leasegate_schema` (PostgreSQL)
/// or `PRAGMA user_version` (SQLite) counts those run, so the same number
/// means the same tables in both. A shipped migration is never changed in
/// what it makes, only followed by a new one. The text is PostgreSQL's
/// types; SQLite reads BIGINT as its INTEGER (the same affinity and
/// storage), and `{seq}` is each engine's counting key ([`seq_column`]).
pub(super) const MIGRATIONS: [&str; 4] = [
    r#"
CREATE TABLE tickets (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    attributes TEXT NOT NULL,
    role TEXT,
    usage_count BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    ticket_id TEXT NOT NULL REFERENCES tickets(id),
    role TEXT NOT NULL,
    attributes TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE TABLE leases (
    id TEXT PRIMARY KEY,
    identity_id TEXT NOT NULL REFERENCES identities(id),
    role TEXT NOT NULL,
    backend TEXT NOT NULL,
    target TEXT NOT NULL,
    handle TEXT,
    status TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    end_reason TEXT,
    ended_ms BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT,
    last_error TEXT
);
CREATE INDEX leases_by_expiry ON leases(backend, status, expires_ms);
CREATE INDEX leases_by_identity ON leases(identity_id);
CREATE TABLE audit (
    {seq},
    at_ms BIGINT NOT NULL,
    event TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
"#,
    r#"
CREATE INDEX audit_by_time ON audit(at_ms);
ALTER TABLE tickets ADD COLUMN identity_name TEXT;
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE leases ADD COLUMN claimed_by TEXT;
ALTER TABLE leases ADD COLUMN claim_until_ms BIGINT;
ALTER TABLE leases ADD COLUMN created_by TEXT;
-- fail_pending runs on every heartbeat; pending leases are few.
CREATE INDEX leases_pending ON leases(created_by) WHERE status = 'pending';
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    seen_ms BIGINT NOT NULL
);
"#,
    r#"
CREATE TABLE health (
    identity_id TEXT PRIMARY KEY REFERENCES identities(id),
    called_ms BIGINT NOT NULL,
    previous_call_ms BIGINT,
    report_ms BIGINT,
    report TEXT,
    refused TEXT,
    failed_calls BIGINT NOT NULL DEFAULT 0,
    -- Where it called from: the share of connections kept for gateways
    -- is theirs on every replica and after a restart.
    address TEXT
);
CREATE INDEX health_by_call ON health(called_ms);
CREATE TABLE health_history (
    identity_id TEXT NOT NULL REFERENCES identities(id),
    at_ms BIGINT NOT NULL,
    report TEXT NOT NULL,
    PRIMARY KEY (identity_id, at_ms)
);
CREATE INDEX health_history_by_time ON health_history(at_ms);
-- Each identity's newest lease, for the fleet.
CREATE INDEX leases_by_identity_time ON leases(identity_id, created_ms);
-- The web page's admins: Argon2id hashes in PHC strings, never a password.
CREATE TABLE admins (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
-- Their sessions, by the SHA-256 of the cookie's token; every replica
-- knows them.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    admin TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
"#,
];

/// The audit table's counting key in each engine: SQLite's rowid alias
/// (which must be spelled `INTEGER PRIMARY KEY`), PostgreSQL's sequence.
pub(super) fn seq_column(sqlite: bool) -> &'static str {
    if sqlite {
        "seq INTEGER PRIMARY KEY AUTOINCREMENT"
    } else {
        "seq BIGSERIAL PRIMARY KEY"
    }
}

/// The migrations a schema at `version` still needs, as (the version each
/// makes, its text as the engine runs it); an error for a schema newer
/// than this build knows.
pub(super) fn pending(version: i64, sqlite: bool) -> Result<Vec<(i64, String)>, StoreError> {
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    Ok((version.max(0)..known)
        .map(|v| {
            (
                v + 1,
                MIGRATIONS[v as usize].replace("{seq}", seq_column(sqlite)),
            )
        })
        .collect())
}

macro_rules! ticket_columns {
    () => {
        "id, attributes, role, usage_count, used, created_ms, expires_ms, revoked_ms, identity_name"
    };
}
macro_rules! identity_columns {
    () => {
        "id, name, ticket_id, role, attributes, created_ms, revoked_ms"
    };
}
/// A lease with its identity's name, from `leases l JOIN identities i`.
macro_rules! lease_columns {
    () => {
        "l.id, l.identity_id, i.name, l.role, l.backend, l.target, l.handle, l.status, \
         l.created_ms, l.expires_ms, l.end_reason, l.attempts, l.next_attempt_ms, l.last_error"
    };
}
macro_rules! leases_joined {
    () => {
        concat!(
            "SELECT ",
            lease_columns!(),
            " FROM leases l JOIN identities i ON i.id = l.identity_id"
        )
    };
}
/// The statuses of a lease whose credential exists or may yet exist.
macro_rules! live {
    () => {
        "('pending', 'active', 'revoking')"
    };
}
/// Due first: an active lease by its expiry, a revoking one by its next
/// attempt.
macro_rules! due_order {
    ($l:literal) => {
        concat!(
            "CASE ",
            $l,
            "status WHEN 'active' THEN ",
            $l,
            "expires_ms ELSE ",
            $l,
            "next_attempt_ms END, ",
            $l,
            "id"
        )
    };
}
/// Leases of backend ?1 whose credential must go at ?3, and that no other
/// replica (?2) holds a live claim on (columns of `leases` alone).
macro_rules! claimable {
    () => {
        "backend = ?1 AND handle IS NOT NULL \
         AND ((status = 'active' AND expires_ms <= ?3) OR (status = 'revoking' AND next_attempt_ms <= ?3)) \
         AND (claim_until_ms IS NULL OR claim_until_ms <= ?3 OR claimed_by = ?2)"
    };
}

pub(super) const INSERT_TICKET: &str = "INSERT INTO tickets (id, secret_hash, attributes, role, usage_count, used, created_ms, expires_ms, identity_name) VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8)";
pub(super) const TICKETS: &str = concat!(
    "SELECT ",
    ticket_columns!(),
    " FROM tickets ORDER BY created_ms, id"
);
pub(super) const TICKET: &str =
    concat!("SELECT ", ticket_columns!(), " FROM tickets WHERE id = ?1");
pub(super) const TICKET_BY_SECRET: &str = concat!(
    "SELECT ",
    ticket_columns!(),
    " FROM tickets WHERE secret_hash = ?1"
);
pub(super) const REVOKE_TICKET: &str =
    "UPDATE tickets SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1";
/// One conditional update: a concurrent one on the same ticket waits for
/// this one's transaction and then checks `used < usage_count` against the
/// committed count.
pub(super) const REDEEM_TICKET: &str = concat!(
    "UPDATE tickets SET used = used + 1 WHERE secret_hash = ?1 AND revoked_ms IS NULL AND expires_ms > ?2 AND used < usage_count RETURNING ",
    ticket_columns!()
);

pub(super) const INSERT_IDENTITY: &str = "INSERT INTO identities (id, name, ticket_id, role, attributes, credential_hash, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
pub(super) const IDENTITY_BY_CREDENTIAL: &str = concat!(
    "SELECT ",
    identity_columns!(),
    " FROM identities WHERE credential_hash = ?1"
);
pub(super) const IDENTITIES: &str = concat!(
    "SELECT ",
    identity_columns!(),
    " FROM identities ORDER BY created_ms, id"
);
pub(super) const REVOKE_IDENTITY: &str =
    "UPDATE identities SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1";
pub(super) const REVOKE_LEASES_OF_IDENTITY: &str = concat!(
    "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, 'identity revoked'), next_attempt_ms = ?2 WHERE identity_id = ?1 AND status IN ",
    live!()
);
pub(super) const REVOKING_LEASES_OF_IDENTITY: &str = concat!(
    leases_joined!(),
    " WHERE l.identity_id = ?1 AND l.status = 'revoking' ORDER BY l.expires_ms, l.id"
);
pub(super) const IDENTITY_REVOKED: &str =
    "SELECT NOT EXISTS (SELECT 1 FROM identities WHERE id = ?1 AND revoked_ms IS NULL)";
/// PostgreSQL only: holding the identity's row serialises concurrent
/// requests of one identity across replicas (READ COMMITTED would let two
/// counts pass the limit together) and orders them against a revoke.
/// SQLite's write transactions are serial already, and it has no row
/// locks.
pub(super) const LOCK_LIVE_IDENTITY: &str =
    "SELECT 1 FROM identities WHERE id = ?1 AND revoked_ms IS NULL FOR UPDATE";

/// A new lease, only for a live identity under its limit of live leases
/// (?8).
pub(super) const INSERT_LEASE: &str = concat!(
    "INSERT INTO leases (id, identity_id, role, backend, target, status, created_ms, expires_ms, created_by) \
     SELECT ?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?9 \
     WHERE EXISTS (SELECT 1 FROM identities WHERE id = ?2 AND revoked_ms IS NULL) \
     AND (SELECT COUNT(*) FROM leases WHERE identity_id = ?2 AND status IN ",
    live!(),
    ") < ?8"
);
pub(super) const ACTIVATE_LEASE: &str = "UPDATE leases SET handle = ?2, status = CASE status WHEN 'pending' THEN 'active' ELSE status END WHERE id = ?1 AND status IN ('pending', 'revoking')";
pub(super) const FAIL_LEASE: &str = "UPDATE leases SET status = 'failed', ended_ms = ?2, last_error = ?3 WHERE id = ?1 AND status IN ('pending', 'revoking')";
pub(super) const LEASE: &str = concat!(leases_joined!(), " WHERE l.id = ?1");
/// All leases, or those of identity ?1.
pub(super) const LEASES: &str = concat!(
    leases_joined!(),
    " WHERE CAST(?1 AS TEXT) IS NULL OR l.identity_id = ?1 ORDER BY l.created_ms DESC, l.id"
);
pub(super) const DUE_LEASES: &str = concat!(
    leases_joined!(),
    " WHERE l.backend = ?1 AND l.handle IS NOT NULL \
     AND ((l.status = 'active' AND l.expires_ms <= ?2) OR (l.status = 'revoking' AND l.next_attempt_ms <= ?2)) \
     ORDER BY ",
    due_order!("l."),
    " LIMIT ?3"
);
/// SQLite: whether anything is claimable, looked at before taking the
/// write lock (most passes find nothing, and admin commands and requests
/// wait for that lock too), then claimed and read back in one transaction.
pub(super) const ANY_CLAIMABLE: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM leases WHERE ",
    claimable!(),
    ")"
);
pub(super) const CLAIM: &str = concat!(
    "UPDATE leases SET claimed_by = ?2, claim_until_ms = ?4 WHERE id IN (SELECT id FROM leases WHERE ",
    claimable!(),
    " ORDER BY ",
    due_order!(""),
    " LIMIT ?5)"
);
pub(super) const CLAIMED: &str = concat!(
    leases_joined!(),
    " WHERE l.backend = ?1 AND l.claimed_by = ?2 AND l.claim_until_ms = ?4 AND l.status IN ('active', 'revoking') ORDER BY ",
    due_order!("l.")
);
/// PostgreSQL: one statement. SKIP LOCKED lets a replica claiming at the
/// same moment take other rows instead of waiting; a row another replica
/// claimed and committed meanwhile fails the claim check when it is read
/// again for the lock, so no lease is claimed by two replicas at once.
pub(super) const CLAIM_DUE_LOCKING: &str = concat!(
    "WITH picked AS (SELECT id FROM leases WHERE ",
    claimable!(),
    " ORDER BY ",
    due_order!(""),
    " LIMIT ?5 FOR UPDATE SKIP LOCKED), \
     claimed AS (UPDATE leases SET claimed_by = ?2, claim_until_ms = ?4 FROM picked WHERE leases.id = picked.id RETURNING leases.*) \
     SELECT ",
    lease_columns!(),
    " FROM claimed l JOIN identities i ON i.id = l.identity_id ORDER BY ",
    due_order!("l.")
);
pub(super) const RENEW_CLAIMS: &str = "UPDATE leases SET claim_until_ms = ?3 WHERE claimed_by = ?1 AND claim_until_ms > ?2 AND status IN ('active', 'revoking')";
/// When the next lease of backend ?1 falls due, claims considered.
pub(super) const NEXT_DUE: &str = "SELECT MIN(CASE WHEN due > claim THEN due ELSE claim END) FROM \
     (SELECT CASE status WHEN 'active' THEN expires_ms ELSE next_attempt_ms END AS due, COALESCE(claim_until_ms, 0) AS claim \
      FROM leases WHERE backend = ?1 AND handle IS NOT NULL AND status IN ('active', 'revoking')) AS d";
pub(super) const BEGIN_REVOKE: &str = concat!(
    "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, ?2), next_attempt_ms = ?3 WHERE id = ?1 AND status IN ",
    live!()
);
pub(super) const DELETED: &str = "UPDATE leases SET status = CASE WHEN end_reason IS NULL OR end_reason = 'expiry' THEN 'expired' ELSE 'revoked' END, end_reason = COALESCE(end_reason, 'expiry'), ended_ms = ?2, last_error = NULL, claimed_by = NULL, claim_until_ms = NULL WHERE id = ?1 AND status IN ('active', 'revoking')";
pub(super) const DELETION_FAILED: &str = "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, 'expiry'), attempts = attempts + 1, next_attempt_ms = ?3, last_error = ?2, claimed_by = NULL, claim_until_ms = NULL WHERE id = ?1 AND status IN ('active', 'revoking')";
/// Pending leases whose creator is neither this replica (?1) nor one seen
/// alive since ?3: their credential may or may not exist, and nobody will
/// finish them.
pub(super) const FAIL_PENDING: &str = "UPDATE leases SET status = 'failed', ended_ms = ?2, last_error = 'the authority stopped while creating the credential' \
     WHERE status = 'pending' AND (created_by IS NULL OR (created_by <> ?1 AND created_by NOT IN (SELECT id FROM replicas WHERE seen_ms >= ?3)))";
pub(super) const HEARTBEAT: &str = "INSERT INTO replicas (id, seen_ms) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms";
pub(super) const REPLICAS: &str =
    "SELECT id, seen_ms FROM replicas WHERE seen_ms >= ?1 ORDER BY seen_ms DESC, id";
/// Another process may store its own first: the insert does nothing then,
/// and the stored one wins.
pub(super) const STORE_DEPLOYMENT_ID: &str =
    "INSERT INTO meta (key, value) VALUES ('deployment_id', ?1) ON CONFLICT (key) DO NOTHING";
pub(super) const DEPLOYMENT_ID: &str = "SELECT value FROM meta WHERE key = 'deployment_id'";
pub(super) const LEASE_IDS: &str = "SELECT id FROM leases";
pub(super) const LIVE_LEASE_IDS: &str = concat!("SELECT id FROM leases WHERE status IN ", live!());
pub(super) const LIVE_LEASES_PER_BACKEND: &str = concat!(
    "SELECT backend, COUNT(*) FROM leases WHERE status IN ",
    live!(),
    " GROUP BY backend ORDER BY backend"
);
pub(super) const PRUNE_ENDED: &str = "DELETE FROM leases WHERE status IN ('expired', 'revoked', 'failed') AND COALESCE(ended_ms, expires_ms) < ?1";
pub(super) const PRUNE_AUDIT: &str = "DELETE FROM audit WHERE at_ms < ?1";
pub(super) const AUDIT: &str =
    "INSERT INTO audit (at_ms, event, subject, detail) VALUES (?1, ?2, ?3, ?4)";
pub(super) const AUDIT_TRAIL: &str = "SELECT at_ms, event, subject, detail FROM audit ORDER BY seq";
/// A page of the trail, newest first: the ?2 rows before row ?1.
pub(super) const AUDIT_PAGE: &str = "SELECT seq, at_ms, event, subject, detail FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2";
/// The newest ?2 rows about identity ?1: itself and the leases it holds.
pub(super) const AUDIT_OF_IDENTITY: &str = "SELECT seq, at_ms, event, subject, detail FROM audit \
     WHERE subject = ?1 OR subject IN (SELECT id FROM leases WHERE identity_id = ?1) ORDER BY seq DESC LIMIT ?2";
pub(super) const PING: &str = "SELECT 1";
/// A lease call (?2) of identity ?1 with its report ?3 (or NULL) or why
/// it was refused (?4), whether the call failed (?5, 0 or 1: failures in
/// a row are counted) and where it came from (?6); the last good report
/// stays when none came.
pub(super) const RECORD_CALL: &str = "INSERT INTO health (identity_id, called_ms, report_ms, report, refused, failed_calls, address) \
     VALUES (?1, ?2, CASE WHEN CAST(?3 AS TEXT) IS NULL THEN NULL ELSE CAST(?2 AS BIGINT) END, ?3, ?4, CAST(?5 AS BIGINT), ?6) \
     ON CONFLICT (identity_id) DO UPDATE SET previous_call_ms = health.called_ms, called_ms = excluded.called_ms, \
     report_ms = COALESCE(excluded.report_ms, health.report_ms), report = COALESCE(excluded.report, health.report), \
     refused = excluded.refused, \
     failed_calls = CASE WHEN excluded.failed_calls = 0 THEN 0 ELSE health.failed_calls + 1 END, \
     address = COALESCE(excluded.address, health.address)";
pub(super) const ADD_ADMIN: &str = "INSERT INTO admins (name, password_hash, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING";
pub(super) const SET_ADMIN_PASSWORD: &str = "UPDATE admins SET password_hash = ?2 WHERE name = ?1";
pub(super) const ADMIN_HASH: &str = "SELECT password_hash FROM admins WHERE name = ?1";
pub(super) const ADMINS: &str = "SELECT name, created_ms FROM admins ORDER BY name";
pub(super) const REMOVE_ADMIN: &str = "DELETE FROM admins WHERE name = ?1";
pub(super) const REMOVE_ADMIN_SESSIONS: &str = "DELETE FROM sessions WHERE admin = ?1";
pub(super) const INSERT_SESSION: &str = "INSERT INTO sessions (token_hash, admin, csrf, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)";
/// A live session's admin and CSRF token; only while its admin exists.
pub(super) const SESSION: &str = "SELECT s.admin, s.csrf FROM sessions s JOIN admins a ON a.name = s.admin WHERE s.token_hash = ?1 AND s.expires_ms > ?2";
pub(super) const DELETE_SESSION: &str = "DELETE FROM sessions WHERE token_hash = ?1";
pub(super) const PRUNE_SESSIONS: &str = "DELETE FROM sessions WHERE expires_ms <= ?1";
/// The addresses gateways made lease calls from since ?1.
pub(super) const GATEWAY_ADDRESSES: &str =
    "SELECT DISTINCT address FROM health WHERE address IS NOT NULL AND called_ms >= ?1";
/// The report ?3 of identity ?1 at ?2 into the history, unless it holds
/// one from after ?4.
pub(super) const ADD_HISTORY: &str = "INSERT INTO health_history (identity_id, at_ms, report) \
     SELECT CAST(?1 AS TEXT), CAST(?2 AS BIGINT), CAST(?3 AS TEXT) \
     WHERE NOT EXISTS (SELECT 1 FROM health_history WHERE identity_id = ?1 AND at_ms > ?4) \
     ON CONFLICT DO NOTHING";
pub(super) const HEALTH: &str = "SELECT identity_id, called_ms, previous_call_ms, report_ms, report, refused, failed_calls FROM health ORDER BY identity_id";
pub(super) const HEALTH_HISTORY: &str = "SELECT at_ms, report FROM health_history WHERE identity_id = ?1 AND at_ms >= ?2 ORDER BY at_ms";
pub(super) const PRUNE_HEALTH: &str = "DELETE FROM health_history WHERE at_ms < ?1";
/// Driven from the identities, so that it reads one lease each through
/// `leases_by_identity_time`, however many ended leases are kept.
pub(super) const LATEST_LEASES: &str = concat!(
    "SELECT ",
    lease_columns!(),
    " FROM identities i JOIN leases l ON l.id = \
     (SELECT x.id FROM leases x WHERE x.identity_id = i.id ORDER BY x.created_ms DESC, x.id DESC LIMIT 1) \
     ORDER BY i.created_ms, i.id"
);

/// Every statement both engines run (the claim's three are SQLite's,
/// [`LOCK_LIVE_IDENTITY`] and [`CLAIM_DUE_LOCKING`] PostgreSQL's).
#[cfg(test)]
pub(super) const SHARED: [&str; 56] = [
    INSERT_TICKET,
    TICKETS,
    TICKET,
    TICKET_BY_SECRET,
    REVOKE_TICKET,
    REDEEM_TICKET,
    INSERT_IDENTITY,
    IDENTITY_BY_CREDENTIAL,
    IDENTITIES,
    REVOKE_IDENTITY,
    REVOKE_LEASES_OF_IDENTITY,
    REVOKING_LEASES_OF_IDENTITY,
    IDENTITY_REVOKED,
    INSERT_LEASE,
    ACTIVATE_LEASE,
    FAIL_LEASE,
    LEASE,
    LEASES,
    DUE_LEASES,
    RENEW_CLAIMS,
    NEXT_DUE,
    BEGIN_REVOKE,
    DELETED,
    DELETION_FAILED,
    FAIL_PENDING,
    HEARTBEAT,
    REPLICAS,
    STORE_DEPLOYMENT_ID,
    DEPLOYMENT_ID,
    LEASE_IDS,
    LIVE_LEASE_IDS,
    LIVE_LEASES_PER_BACKEND,
    PRUNE_ENDED,
    PRUNE_AUDIT,
    AUDIT,
    AUDIT_TRAIL,
    AUDIT_PAGE,
    AUDIT_OF_IDENTITY,
    PING,
    RECORD_CALL,
    GATEWAY_ADDRESSES,
    ADD_ADMIN,
    SET_ADMIN_PASSWORD,
    ADMIN_HASH,
    ADMINS,
    REMOVE_ADMIN,
    REMOVE_ADMIN_SESSIONS,
    INSERT_SESSION,
    SESSION,
    DELETE_SESSION,
    PRUNE_SESSIONS,
    ADD_HISTORY,
    HEALTH,
    HEALTH_HISTORY,
    PRUNE_HEALTH,
    LATEST_LEASES,
];

/// `sql` with its `?N` placeholders written `$N`, as PostgreSQL numbers
/// them. Quoted text is left alone (no statement here has a `?` in one,
/// but a later one might).
pub(super) fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// A column's value as either engine hands it out.
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// A result row as either engine hands it out, read by column index.
pub trait Row {
    /// Column `i`, in the one of [`Cell`]'s types its SQL type maps to.
    fn cell(&self, i: usize) -> Result<Cell, StoreError>;

    fn text_opt(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Text(t) => Ok(Some(t)),
            Cell::Int(_) => Err(StoreError::Corrupt(
                format!("column {i}"),
                "a number, not text".into(),
            )),
        }
    }
    fn int_opt(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Int(n) => Ok(Some(n)),
            Cell::Text(_) => Err(StoreError::Corrupt(
                format!("column {i}"),
                "text, not a number".into(),
            )),
        }
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.text_opt(i)?.ok_or_else(|| null(i))
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.int_opt(i)?.ok_or_else(|| null(i))
    }
    /// A truth value (SQLite has none: 0 or 1).
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.int(i)? != 0)
    }
    /// A count column as the rows' u32 (a larger value than fits never
    /// happens, and reads as the largest).
    fn count(&self, i: usize) -> Result<u32, StoreError> {
        Ok(u32::try_from(self.int(i)?).unwrap_or(u32::MAX))
    }
}

fn null(i: usize) -> StoreError {
    StoreError::Corrupt(format!("column {i}"), "NULL where a value must be".into())
}

fn from_json<T: serde::de::DeserializeOwned>(
    table: &str,
    id: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{table} {id}"), e.to_string()))
}

/// A row of `ticket_columns!()`.
pub(super) fn ticket(r: &dyn Row) -> Result<TicketRow, StoreError> {
    let id = r.text(0)?;
    Ok(TicketRow {
        attributes: from_json("ticket", &id, &r.text(1)?)?,
        role: r.text_opt(2)?,
        usage_count: r.count(3)?,
        used: r.count(4)?,
        created_ms: r.int(5)?,
        expires_ms: r.int(6)?,
        revoked_ms: r.int_opt(7)?,
        identity_name: r.text_opt(8)?,
        id,
    })
}

/// A row of `identity_columns!()`.
pub(super) fn identity(r: &dyn Row) -> Result<IdentityRow, StoreError> {
    let id = r.text(0)?;
    Ok(IdentityRow {
        name: r.text(1)?,
        ticket_id: r.text(2)?,
        role: r.text(3)?,
        attributes: from_json("identity", &id, &r.text(4)?)?,
        created_ms: r.int(5)?,
        revoked_ms: r.int_opt(6)?,
        id,
    })
}

/// A row of `lease_columns!()`.
pub(super) fn lease(r: &dyn Row) -> Result<LeaseRow, StoreError> {
    let id = r.text(0)?;
    let status = r.text(7)?;
    Ok(LeaseRow {
        identity_id: r.text(1)?,
        identity_name: r.text(2)?,
        role: r.text(3)?,
        backend: r.text(4)?,
        target: from_json("lease", &id, &r.text(5)?)?,
        handle: r.text_opt(6)?,
        status: LeaseStatus::parse(&status).ok_or_else(|| {
            StoreError::Corrupt(format!("lease {id}"), format!("unknown status {status:?}"))
        })?,
        created_ms: r.int(8)?,
        expires_ms: r.int(9)?,
        end_reason: r.text_opt(10)?,
        attempts: r.count(11)?,
        next_attempt_ms: r.int_opt(12)?,
        last_error: r.text_opt(13)?,
        id,
    })
}

/// A row of [`HEALTH`].
pub(super) fn health(r: &dyn Row) -> Result<HealthRow, StoreError> {
    Ok(HealthRow {
        identity_id: r.text(0)?,
        called_ms: r.int(1)?,
        previous_call_ms: r.int_opt(2)?,
        report_ms: r.int_opt(3)?,
        report: r.text_opt(4)?,
        refused: r.text_opt(5)?,
        failed_calls: r.count(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_outside_quotes() {
        assert_eq!(
            dollars("UPDATE t SET a = ?2, b = 'x?' WHERE id = ?1"),
            "UPDATE t SET a = $2, b = 'x?' WHERE id = $1"
        );
        for sql in SHARED {
            assert!(!dollars(sql).contains('?'), "{sql}");
        }
    }
}
