//! The SQLite store: one file in the state dir (WAL mode, `synchronous =
//! FULL`, so a committed row survives a crash and the admin commands can
//! read and write while the server runs). The embedded default for a
//! single authority; several processes on one file are safe (SQLite's
//! locks), several machines are not: that is what [`super::postgres`] is
//! for.
//!
//! It owns the SQLite schema (`PRAGMA user_version` counts the migrations
//! run); what every store must do is [`Store`]'s. It never talks to
//! InfluxDB and never holds a secret in clear.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Enrolled, IdentityRow, Inserted, LIVE, LeaseRow, NewLease, RoleFor, Store, StoreError,
    TicketRow, to_json,
};
use crate::api::LeaseStatus;

/// Each migration moves the schema one version up; never edit one that has
/// shipped, append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE tickets (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    attributes TEXT NOT NULL,
    role TEXT,
    usage_count INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    ticket_id TEXT NOT NULL REFERENCES tickets(id),
    role TEXT NOT NULL,
    attributes TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE leases (
    id TEXT PRIMARY KEY,
    identity_id TEXT NOT NULL REFERENCES identities(id),
    role TEXT NOT NULL,
    backend TEXT NOT NULL,
    target TEXT NOT NULL,
    handle TEXT,
    status TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    end_reason TEXT,
    ended_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER,
    last_error TEXT
);
CREATE INDEX leases_by_expiry ON leases(backend, status, expires_ms);
CREATE INDEX leases_by_identity ON leases(identity_id);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
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
ALTER TABLE leases ADD COLUMN claim_until_ms INTEGER;
ALTER TABLE leases ADD COLUMN created_by TEXT;
-- fail_pending runs on every heartbeat; pending leases are few.
CREATE INDEX leases_pending ON leases(created_by) WHERE status = 'pending';
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    seen_ms INTEGER NOT NULL
);
"#,
];

const TICKET_COLUMNS: &str =
    "id, attributes, role, usage_count, used, created_ms, expires_ms, revoked_ms, identity_name";
const IDENTITY_COLUMNS: &str = "id, name, ticket_id, role, attributes, created_ms, revoked_ms";
const LEASE_COLUMNS: &str = "l.id, l.identity_id, i.name, l.role, l.backend, l.target, l.handle, l.status, l.created_ms, l.expires_ms, l.end_reason, l.attempts, l.next_attempt_ms, l.last_error";

/// A lease of backend ?1 whose credential must go at ?3 (unqualified
/// columns, for statements on `leases` alone).
const DUE: &str = "backend = ?1 AND handle IS NOT NULL AND ((status = 'active' AND expires_ms <= ?3) OR (status = 'revoking' AND next_attempt_ms <= ?3))";
const DUE_ORDER: &str = "CASE status WHEN 'active' THEN expires_ms ELSE next_attempt_ms END, id";

/// The SQLite [`Store`]: one connection for everything that writes, one
/// caller at a time (SQLite writes one transaction at a time anyway), and
/// one for the reads that need no transaction (authenticating a bearer,
/// reading a lease), which in WAL mode neither wait for the writer nor
/// hold it up: in the fleet benchmark every request queued behind the
/// others' statements on the one connection.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store and brings its schema up to
    /// date. The file is made mode 0600: it holds hashes, not secrets, but
    /// nothing in it is anyone else's business.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        restrict_mode(path);
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        // Every statement this store runs, with room to spare.
        conn.set_prepared_statement_cache_capacity(128);
        migrate(&mut conn)?;
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            restrict_mode(Path::new(&p));
        }
        let reader = Connection::open(path).map_err(open_err)?;
        reader
            .busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        reader.set_prepared_statement_cache_capacity(128);
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
        })
    }

    /// The number of migrations this build knows.
    pub fn known_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For reads outside a transaction: each statement sees everything
    /// committed before it started.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Statements through the connection's cache: SQLite parses and plans a
/// statement once, not at every call (that was most of a lease request's
/// CPU in the fleet benchmark).
trait Cached {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn query_row_cached<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

fn lease_in(conn: &Connection, id: &str) -> Result<Option<LeaseRow>, StoreError> {
    Ok(conn
        .query_row_cached(
            &format!("SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id WHERE l.id = ?1"),
            [id],
            lease_row,
        )
        .optional()?)
}

fn audit_in(
    conn: &Connection,
    now_ms: i64,
    event: &str,
    subject: &str,
    detail: &str,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "INSERT INTO audit (at_ms, event, subject, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now_ms, event, subject, detail],
    )?;
    super::log_audit(event, subject, detail);
    Ok(())
}

impl Store for SqliteStore {
    fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .query_row_cached("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn insert_ticket(&self, t: &TicketRow, secret_hash: &str) -> Result<(), StoreError> {
        self.conn().execute_cached(
            "INSERT INTO tickets (id, secret_hash, attributes, role, usage_count, used, created_ms, expires_ms, identity_name) VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8)",
            params![t.id, secret_hash, to_json(&t.attributes), t.role, t.usage_count, t.created_ms, t.expires_ms, t.identity_name],
        )?;
        Ok(())
    }

    fn tickets(&self) -> Result<Vec<TicketRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TICKET_COLUMNS} FROM tickets ORDER BY created_ms, id"
        ))?;
        let rows = stmt.query_map([], ticket_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn ticket(&self, id: &str) -> Result<Option<TicketRow>, StoreError> {
        Ok(self
            .reader()
            .query_row_cached(
                &format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE id = ?1"),
                [id],
                ticket_row,
            )
            .optional()?)
    }

    fn revoke_ticket(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.conn().execute_cached(
            "UPDATE tickets SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
            params![id, now_ms],
        )?;
        Ok(n == 1)
    }

    fn enroll(
        &self,
        secret_hash: &str,
        now_ms: i64,
        role_for: RoleFor<'_>,
        identity: (&str, &str, &str),
    ) -> Result<Enrolled, StoreError> {
        let (identity_id, name, credential_hash) = identity;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let redeemed = tx
            .query_row_cached(
                &format!(
                    "UPDATE tickets SET used = used + 1 WHERE secret_hash = ?1 AND revoked_ms IS NULL AND expires_ms > ?2 AND used < usage_count RETURNING {TICKET_COLUMNS}"
                ),
                params![secret_hash, now_ms],
                ticket_row,
            )
            .optional()?;
        let Some(ticket) = redeemed else {
            let found = tx
                .query_row_cached(
                    &format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE secret_hash = ?1"),
                    [secret_hash],
                    ticket_row,
                )
                .optional()?;
            return Ok(Err(match found {
                None => (crate::api::ErrorCode::TicketUnknown, None),
                Some(t) => (super::refusal(&t, now_ms), Some(t.id)),
            }));
        };
        let role = match role_for(&ticket) {
            Ok(r) => r,
            // Dropping the transaction rolls the counted use back.
            Err(code) => return Ok(Err((code, Some(ticket.id)))),
        };
        tx.execute_cached(
            "INSERT INTO identities (id, name, ticket_id, role, attributes, credential_hash, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![identity_id, name, ticket.id, role, to_json(&ticket.attributes), credential_hash, now_ms],
        )?;
        audit_in(
            &tx,
            now_ms,
            "enroll",
            identity_id,
            &super::enroll_detail(name, &ticket, &role),
        )?;
        tx.commit()?;
        Ok(Ok(IdentityRow::enrolled(
            identity_id,
            name,
            ticket,
            role,
            now_ms,
        )))
    }

    fn identity_by_credential(
        &self,
        credential_hash: &str,
    ) -> Result<Option<IdentityRow>, StoreError> {
        Ok(self
            .reader()
            .query_row_cached(
                &format!("SELECT {IDENTITY_COLUMNS} FROM identities WHERE credential_hash = ?1"),
                [credential_hash],
                identity_row,
            )
            .optional()?)
    }

    fn identities(&self) -> Result<Vec<IdentityRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {IDENTITY_COLUMNS} FROM identities ORDER BY created_ms, id"
        ))?;
        let rows = stmt.query_map([], identity_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn revoke_identity(&self, id: &str, now_ms: i64) -> Result<Option<Vec<LeaseRow>>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute_cached(
            "UPDATE identities SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
            params![id, now_ms],
        )?;
        if n == 0 {
            return Ok(None);
        }
        tx.execute_cached(
            &format!(
                "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, 'identity revoked'), next_attempt_ms = ?2 WHERE identity_id = ?1 AND status IN {LIVE}"
            ),
            params![id, now_ms],
        )?;
        audit_in(&tx, now_ms, "identity revoke", id, "identity revoked")?;
        let leases = {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id WHERE l.identity_id = ?1 AND l.status = 'revoking' ORDER BY l.expires_ms, l.id"
            ))?;
            let rows = stmt.query_map([id], lease_row)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(Some(leases))
    }

    fn insert_lease(&self, l: &NewLease<'_>, max_live: u32) -> Result<Inserted, StoreError> {
        let conn = self.conn();
        let n = conn.execute_cached(
            &format!("INSERT INTO leases (id, identity_id, role, backend, target, status, created_ms, expires_ms, created_by)
             SELECT ?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?9
             WHERE EXISTS (SELECT 1 FROM identities WHERE id = ?2 AND revoked_ms IS NULL)
               AND (SELECT COUNT(*) FROM leases WHERE identity_id = ?2 AND status IN {LIVE}) < ?8"),
            params![l.id, l.identity_id, l.role, l.backend, to_json(l.target), l.created_ms, l.expires_ms, max_live, l.replica],
        )?;
        if n == 1 {
            return Ok(Inserted::Yes);
        }
        let revoked: bool = conn.query_row_cached(
            "SELECT NOT EXISTS (SELECT 1 FROM identities WHERE id = ?1 AND revoked_ms IS NULL)",
            [l.identity_id],
            |r| r.get(0),
        )?;
        Ok(if revoked {
            Inserted::IdentityRevoked
        } else {
            Inserted::AtLimit
        })
    }

    fn activate_lease(
        &self,
        id: &str,
        handle: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseStatus>, StoreError> {
        let conn = self.conn();
        let n = conn.execute_cached(
            "UPDATE leases SET handle = ?2, status = CASE status WHEN 'pending' THEN 'active' ELSE status END WHERE id = ?1 AND status IN ('pending', 'revoking')",
            params![id, handle],
        )?;
        if n == 1 {
            audit_in(
                &conn,
                now_ms,
                "lease issue",
                id,
                &format!("credential {handle}"),
            )?;
        }
        Ok(lease_in(&conn, id)?.map(|l| l.status))
    }

    fn fail_lease(&self, id: &str, error: &str, now_ms: i64) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute_cached(
            "UPDATE leases SET status = 'failed', ended_ms = ?2, last_error = ?3 WHERE id = ?1 AND status IN ('pending', 'revoking')",
            params![id, now_ms, error],
        )?;
        audit_in(&conn, now_ms, "lease failed", id, error)
    }

    fn lease(&self, id: &str) -> Result<Option<LeaseRow>, StoreError> {
        lease_in(&self.reader(), id)
    }

    fn leases(&self, identity_id: Option<&str>) -> Result<Vec<LeaseRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id WHERE ?1 IS NULL OR l.identity_id = ?1 ORDER BY l.created_ms DESC, l.id"
        ))?;
        let rows = stmt.query_map([identity_id], lease_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn due_leases(
        &self,
        backend: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id
             WHERE l.backend = ?1 AND l.handle IS NOT NULL AND ((l.status = 'active' AND l.expires_ms <= ?2) OR (l.status = 'revoking' AND l.next_attempt_ms <= ?2))
             ORDER BY CASE l.status WHEN 'active' THEN l.expires_ms ELSE l.next_attempt_ms END, l.id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![backend, now_ms, limit as i64], lease_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn claim_due(
        &self,
        backend: &str,
        replica: &str,
        now_ms: i64,
        claim_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        let mut conn = self.conn();
        // Most passes find nothing due: look before taking the write lock,
        // which admin commands and the HTTP handlers also wait for.
        let claimable = format!(
            "{DUE} AND (claim_until_ms IS NULL OR claim_until_ms <= ?3 OR claimed_by = ?2)"
        );
        let any: bool = conn.query_row_cached(
            &format!("SELECT EXISTS (SELECT 1 FROM leases WHERE {claimable})"),
            params![backend, replica, now_ms],
            |r| r.get(0),
        )?;
        if !any {
            return Ok(Vec::new());
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_cached(
            &format!(
                "UPDATE leases SET claimed_by = ?2, claim_until_ms = ?4 WHERE id IN (
                 SELECT id FROM leases WHERE {claimable}
                 ORDER BY {DUE_ORDER} LIMIT ?5)"
            ),
            params![backend, replica, now_ms, claim_until_ms, limit as i64],
        )?;
        let claimed = {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id
                 WHERE l.backend = ?1 AND l.claimed_by = ?2 AND l.claim_until_ms = ?3 AND l.status IN ('active', 'revoking')
                 ORDER BY CASE l.status WHEN 'active' THEN l.expires_ms ELSE l.next_attempt_ms END, l.id"
            ))?;
            let rows = stmt.query_map(params![backend, replica, claim_until_ms], lease_row)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(claimed)
    }

    fn renew_claims(
        &self,
        replica: &str,
        now_ms: i64,
        claim_until_ms: i64,
    ) -> Result<usize, StoreError> {
        Ok(self.conn().execute_cached(
            "UPDATE leases SET claim_until_ms = ?3 WHERE claimed_by = ?1 AND claim_until_ms > ?2 AND status IN ('active', 'revoking')",
            params![replica, now_ms, claim_until_ms],
        )?)
    }

    fn next_due_ms(&self, backend: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.reader().query_row_cached(
            "SELECT MIN(MAX(CASE status WHEN 'active' THEN expires_ms ELSE next_attempt_ms END, COALESCE(claim_until_ms, 0))) FROM leases WHERE backend = ?1 AND handle IS NOT NULL AND status IN ('active', 'revoking')",
            [backend],
            |r| r.get(0),
        )?)
    }

    fn begin_revoke(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseRow>, StoreError> {
        let conn = self.conn();
        let n = conn.execute_cached(
            &format!(
                "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, ?2), next_attempt_ms = ?3 WHERE id = ?1 AND status IN {LIVE}"
            ),
            params![id, reason, now_ms],
        )?;
        if n == 1 {
            audit_in(&conn, now_ms, "lease revoke requested", id, reason)?;
        }
        lease_in(&conn, id)
    }

    fn deleted(&self, id: &str, now_ms: i64) -> Result<Option<LeaseRow>, StoreError> {
        let conn = self.conn();
        let n = conn.execute_cached(
            "UPDATE leases SET status = CASE WHEN end_reason IS NULL OR end_reason = 'expiry' THEN 'expired' ELSE 'revoked' END, end_reason = COALESCE(end_reason, 'expiry'), ended_ms = ?2, last_error = NULL, claimed_by = NULL, claim_until_ms = NULL WHERE id = ?1 AND status IN ('active', 'revoking')",
            params![id, now_ms],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let lease = lease_in(&conn, id)?;
        if let Some(l) = &lease {
            let (event, detail) = super::deleted_event(l);
            audit_in(&conn, now_ms, event, id, &detail)?;
        }
        Ok(lease)
    }

    fn deletion_failed(
        &self,
        id: &str,
        error: &str,
        next_attempt_ms: i64,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        let n = conn.execute_cached(
            "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, 'expiry'), attempts = attempts + 1, next_attempt_ms = ?3, last_error = ?2, claimed_by = NULL, claim_until_ms = NULL WHERE id = ?1 AND status IN ('active', 'revoking')",
            params![id, error, next_attempt_ms],
        )?;
        if n == 1 {
            audit_in(&conn, next_attempt_ms, "lease deletion failed", id, error)?;
        }
        Ok(())
    }

    fn fail_pending(
        &self,
        replica: &str,
        now_ms: i64,
        alive_since_ms: i64,
    ) -> Result<usize, StoreError> {
        Ok(self.conn().execute_cached(
            "UPDATE leases SET status = 'failed', ended_ms = ?2, last_error = 'the authority stopped while creating the credential'
             WHERE status = 'pending' AND (created_by IS NULL OR (created_by <> ?1 AND created_by NOT IN (SELECT id FROM replicas WHERE seen_ms >= ?3)))",
            params![replica, now_ms, alive_since_ms],
        )?)
    }

    fn heartbeat(&self, replica: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn().execute_cached(
            "INSERT INTO replicas (id, seen_ms) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms",
            params![replica, now_ms],
        )?;
        Ok(())
    }

    fn replicas(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT id, seen_ms FROM replicas WHERE seen_ms >= ?1 ORDER BY seen_ms DESC, id",
        )?;
        let rows = stmt.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.conn().query_row_cached("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn deployment_id(&self, configured: Option<&str>) -> Result<String, StoreError> {
        let conn = self.conn();
        // Another process may store its own first: the insert is ignored
        // then, and the stored one wins.
        conn.execute_cached(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('deployment_id', ?1)",
            [super::new_deployment_id(configured)],
        )?;
        let stored: String = conn.query_row_cached(
            "SELECT value FROM meta WHERE key = 'deployment_id'",
            [],
            |r| r.get(0),
        )?;
        super::check_deployment(stored, configured)
    }

    fn lease_ids(&self) -> Result<HashSet<String>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT id FROM leases")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn live_lease_ids(&self) -> Result<HashSet<String>, StoreError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT id FROM leases WHERE status IN {LIVE}"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn leases_of_unknown_backends(
        &self,
        configured: &[&str],
    ) -> Result<Vec<(String, usize)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT backend, COUNT(*) FROM leases WHERE status IN {LIVE} GROUP BY backend ORDER BY backend"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
        })?;
        let all: Vec<(String, usize)> = rows.collect::<Result<_, _>>()?;
        Ok(super::unknown_backends(all, configured))
    }

    fn prune_ended(&self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn().execute_cached(
            "DELETE FROM leases WHERE status IN ('expired', 'revoked', 'failed') AND COALESCE(ended_ms, expires_ms) < ?1",
            [before_ms],
        )?)
    }

    fn prune_audit(&self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn()
            .execute_cached("DELETE FROM audit WHERE at_ms < ?1", [before_ms])?)
    }

    fn audit(
        &self,
        now_ms: i64,
        event: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        audit_in(&self.conn(), now_ms, event, subject, detail)
    }

    fn audit_trail(&self) -> Result<Vec<(i64, String, String, String)>, StoreError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT at_ms, event, subject, detail FROM audit ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }
}

fn restrict_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, col: usize) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn ticket_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TicketRow> {
    Ok(TicketRow {
        id: r.get(0)?,
        attributes: from_json(&r.get::<_, String>(1)?, 1)?,
        role: r.get(2)?,
        usage_count: r.get(3)?,
        used: r.get(4)?,
        created_ms: r.get(5)?,
        expires_ms: r.get(6)?,
        revoked_ms: r.get(7)?,
        identity_name: r.get(8)?,
    })
}

fn identity_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IdentityRow> {
    Ok(IdentityRow {
        id: r.get(0)?,
        name: r.get(1)?,
        ticket_id: r.get(2)?,
        role: r.get(3)?,
        attributes: from_json(&r.get::<_, String>(4)?, 4)?,
        created_ms: r.get(5)?,
        revoked_ms: r.get(6)?,
    })
}

fn lease_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LeaseRow> {
    let status: String = r.get(7)?;
    Ok(LeaseRow {
        id: r.get(0)?,
        identity_id: r.get(1)?,
        identity_name: r.get(2)?,
        role: r.get(3)?,
        backend: r.get(4)?,
        target: from_json(&r.get::<_, String>(5)?, 5)?,
        handle: r.get(6)?,
        status: LeaseStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                7,
                rusqlite::types::Type::Text,
                format!("unknown lease status {status:?}").into(),
            )
        })?,
        created_ms: r.get(8)?,
        expires_ms: r.get(9)?,
        end_reason: r.get(10)?,
        attempts: r.get(11)?,
        next_attempt_ms: r.get(12)?,
        last_error: r.get(13)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(s);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        s.conn().pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
