//! The authority's durable state: tickets, identities, leases and the audit
//! trail, in one SQLite file in the state dir (WAL mode, `synchronous =
//! FULL`, so a committed row survives a crash and the admin commands can
//! read and write while the server runs).
//!
//! It owns the schema and its migrations (`PRAGMA user_version`) and every
//! state change that must be atomic: a ticket's use count under concurrent
//! enrollments, a lease's way from pending to gone. It never holds a
//! secret in clear: ticket secrets and identity credentials only as
//! SHA-256 hashes, and for a lease only what deleting its credential needs
//! (the v2 authorization id, the v1 user name, the v3 token name), never
//! the token or password. It never talks to InfluxDB.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::api::{ErrorCode, LeaseStatus, Target};

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
}

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
];

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
    pub identity_id: &'a str,
    pub role: &'a str,
    pub backend: &'a str,
    pub target: &'a Target,
    pub created_ms: i64,
    pub expires_ms: i64,
}

pub struct Store {
    conn: Connection,
}

const LEASE_COLUMNS: &str = "l.id, l.identity_id, i.name, l.role, l.backend, l.target, l.handle, l.status, l.created_ms, l.expires_ms, l.end_reason, l.attempts, l.next_attempt_ms, l.last_error";

/// Statuses whose credential may exist in InfluxDB.
const LIVE: &str = "('pending', 'active', 'revoking')";

impl Store {
    /// Opens (creating if needed) the store and brings its schema up to
    /// date. The file is made mode 0600: it holds hashes, not secrets, but
    /// nothing in it is anyone else's business.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        restrict_mode(path);
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let mut store = Store { conn };
        store.migrate()?;
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            restrict_mode(Path::new(&p));
        }
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
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

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    // --- tickets ---

    pub fn insert_ticket(&self, t: &TicketRow, secret_hash: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO tickets (id, secret_hash, attributes, role, usage_count, used, created_ms, expires_ms, identity_name) VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8)",
            params![t.id, secret_hash, to_json(&t.attributes), t.role, t.usage_count, t.created_ms, t.expires_ms, t.identity_name],
        )?;
        Ok(())
    }

    pub fn tickets(&self) -> Result<Vec<TicketRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, attributes, role, usage_count, used, created_ms, expires_ms, revoked_ms, identity_name FROM tickets ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map([], ticket_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    pub fn ticket(&self, id: &str) -> Result<Option<TicketRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, attributes, role, usage_count, used, created_ms, expires_ms, revoked_ms, identity_name FROM tickets WHERE id = ?1",
                [id],
                ticket_row,
            )
            .optional()?)
    }

    /// Revokes a ticket; false when there is no such ticket.
    pub fn revoke_ticket(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE tickets SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
            params![id, now_ms],
        )?;
        Ok(n == 1)
    }

    /// Redeems a ticket: checks it, counts the use and records the new
    /// identity in one immediate transaction, so concurrent enrollments
    /// (from this process or another) can never exceed the usage count.
    /// `role_for` picks the role from the ticket, or refuses.
    pub fn enroll(
        &mut self,
        secret_hash: &str,
        now_ms: i64,
        role_for: impl FnOnce(&TicketRow) -> Result<String, ErrorCode>,
        identity: (&str, &str, &str),
    ) -> Result<Result<IdentityRow, (ErrorCode, Option<String>)>, StoreError> {
        let (identity_id, name, credential_hash) = identity;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ticket = tx
            .query_row(
                "SELECT id, attributes, role, usage_count, used, created_ms, expires_ms, revoked_ms, identity_name FROM tickets WHERE secret_hash = ?1",
                [secret_hash],
                ticket_row,
            )
            .optional()?;
        let Some(ticket) = ticket else {
            return Ok(Err((ErrorCode::TicketUnknown, None)));
        };
        let refusal = if ticket.revoked_ms.is_some() {
            Some(ErrorCode::TicketRevoked)
        } else if ticket.expires_ms <= now_ms {
            Some(ErrorCode::TicketExpired)
        } else if ticket.used >= ticket.usage_count {
            Some(ErrorCode::TicketUsedUp)
        } else {
            None
        };
        if let Some(code) = refusal {
            return Ok(Err((code, Some(ticket.id))));
        }
        let role = match role_for(&ticket) {
            Ok(r) => r,
            Err(code) => return Ok(Err((code, Some(ticket.id)))),
        };
        tx.execute(
            "UPDATE tickets SET used = used + 1 WHERE id = ?1",
            [&ticket.id],
        )?;
        tx.execute(
            "INSERT INTO identities (id, name, ticket_id, role, attributes, credential_hash, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![identity_id, name, ticket.id, role, to_json(&ticket.attributes), credential_hash, now_ms],
        )?;
        audit_in(
            &tx,
            now_ms,
            "enroll",
            identity_id,
            &format!(
                "identity {name:?} enrolled with ticket {} (use {} of {}), role {role}",
                ticket.id,
                ticket.used + 1,
                ticket.usage_count
            ),
        )?;
        tx.commit()?;
        Ok(Ok(IdentityRow {
            id: identity_id.to_owned(),
            name: name.to_owned(),
            ticket_id: ticket.id,
            role,
            attributes: ticket.attributes,
            created_ms: now_ms,
            revoked_ms: None,
        }))
    }

    // --- identities ---

    pub fn identity_by_credential(
        &self,
        credential_hash: &str,
    ) -> Result<Option<IdentityRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, ticket_id, role, attributes, created_ms, revoked_ms FROM identities WHERE credential_hash = ?1",
                [credential_hash],
                identity_row,
            )
            .optional()?)
    }

    pub fn identities(&self) -> Result<Vec<IdentityRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, ticket_id, role, attributes, created_ms, revoked_ms FROM identities ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map([], identity_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    /// Revokes an identity and starts the revocation of every lease it
    /// holds; returns those leases (None when there is no such identity).
    pub fn revoke_identity(
        &mut self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<Vec<LeaseRow>>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE identities SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
            params![id, now_ms],
        )?;
        if n == 0 {
            return Ok(None);
        }
        tx.execute(
            &format!(
                "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, 'identity revoked'), next_attempt_ms = ?2 WHERE identity_id = ?1 AND status IN {LIVE}"
            ),
            params![id, now_ms],
        )?;
        audit_in(&tx, now_ms, "identity revoke", id, "identity revoked")?;
        let leases = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id WHERE l.identity_id = ?1 AND l.status = 'revoking' ORDER BY l.expires_ms"
            ))?;
            let rows = stmt.query_map([id], lease_row)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(Some(leases))
    }

    // --- leases ---

    /// Records a lease before its credential is created, so that a crash in
    /// between leaves a trace that start-up reconciles. In the same
    /// statement it checks that the identity is not revoked (a revoke that
    /// lands between authentication and this insert would otherwise miss
    /// the lease) and that it holds fewer than `max_live` live leases, so
    /// concurrent requests, from this process or an admin command beside
    /// it, cannot pass the limit together. Revoking leases count: their
    /// credentials work until their deletion succeeds.
    pub fn insert_lease(&self, l: &NewLease<'_>, max_live: u32) -> Result<Inserted, StoreError> {
        let n = self.conn.execute(
            "INSERT INTO leases (id, identity_id, role, backend, target, status, created_ms, expires_ms)
             SELECT ?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7
             WHERE EXISTS (SELECT 1 FROM identities WHERE id = ?2 AND revoked_ms IS NULL)
               AND (SELECT COUNT(*) FROM leases WHERE identity_id = ?2 AND status IN ('pending', 'active', 'revoking')) < ?8",
            params![l.id, l.identity_id, l.role, l.backend, to_json(l.target), l.created_ms, l.expires_ms, max_live],
        )?;
        if n == 1 {
            return Ok(Inserted::Yes);
        }
        let revoked: bool = self.conn.query_row(
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

    /// The credential exists: the handle is stored and a pending lease
    /// becomes active. Returns the lease's status after that: `Active`, or
    /// `Revoking` if it was revoked while its credential was being made
    /// (the reaper deletes it), or anything else if the lease was ended
    /// meanwhile, when the caller must delete the credential itself.
    pub fn activate_lease(
        &self,
        id: &str,
        handle: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseStatus>, StoreError> {
        let n = self.conn.execute(
            "UPDATE leases SET handle = ?2, status = CASE status WHEN 'pending' THEN 'active' ELSE status END WHERE id = ?1 AND status IN ('pending', 'revoking')",
            params![id, handle],
        )?;
        if n == 1 {
            self.audit(now_ms, "lease issue", id, &format!("credential {handle}"))?;
        }
        Ok(self.lease(id)?.map(|l| l.status))
    }

    pub fn fail_lease(&self, id: &str, error: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE leases SET status = 'failed', ended_ms = ?2, last_error = ?3 WHERE id = ?1 AND status IN ('pending', 'revoking')",
            params![id, now_ms, error],
        )?;
        self.audit(now_ms, "lease failed", id, error)?;
        Ok(())
    }

    pub fn lease(&self, id: &str) -> Result<Option<LeaseRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id WHERE l.id = ?1"),
                [id],
                lease_row,
            )
            .optional()?)
    }

    /// Leases, newest first; one identity's when given.
    pub fn leases(&self, identity_id: Option<&str>) -> Result<Vec<LeaseRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id WHERE ?1 IS NULL OR l.identity_id = ?1 ORDER BY l.created_ms DESC, l.id"
        ))?;
        let rows = stmt.query_map([identity_id], lease_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    /// Leases of `backend` whose credential must go now: active ones past
    /// their expiry and revoking ones whose retry is due, earliest first.
    pub fn due_leases(
        &self,
        backend: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id
             WHERE l.backend = ?1 AND l.handle IS NOT NULL AND ((l.status = 'active' AND l.expires_ms <= ?2) OR (l.status = 'revoking' AND l.next_attempt_ms <= ?2))
             ORDER BY CASE l.status WHEN 'active' THEN l.expires_ms ELSE l.next_attempt_ms END, l.id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![backend, now_ms, limit as i64], lease_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    /// When the next credential of `backend` is due for deletion.
    pub fn next_due_ms(&self, backend: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.conn.query_row(
            "SELECT MIN(CASE status WHEN 'active' THEN expires_ms ELSE next_attempt_ms END) FROM leases WHERE backend = ?1 AND handle IS NOT NULL AND status IN ('active', 'revoking')",
            [backend],
            |r| r.get(0),
        )?)
    }

    /// Starts a revoke: the lease becomes `revoking`, due now. Returns the
    /// lease as it now is, or None if there is no such lease.
    pub fn begin_revoke(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseRow>, StoreError> {
        let n = self.conn.execute(
            &format!(
                "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, ?2), next_attempt_ms = ?3 WHERE id = ?1 AND status IN {LIVE}"
            ),
            params![id, reason, now_ms],
        )?;
        if n == 1 {
            self.audit(now_ms, "lease revoke requested", id, reason)?;
        }
        self.lease(id)
    }

    /// The credential is gone: the lease ends as expired or revoked.
    pub fn deleted(&self, id: &str, now_ms: i64) -> Result<Option<LeaseRow>, StoreError> {
        let n = self.conn.execute(
            "UPDATE leases SET status = CASE WHEN end_reason IS NULL OR end_reason = 'expiry' THEN 'expired' ELSE 'revoked' END, end_reason = COALESCE(end_reason, 'expiry'), ended_ms = ?2, last_error = NULL WHERE id = ?1 AND status IN ('active', 'revoking')",
            params![id, now_ms],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let lease = self.lease(id)?;
        if let Some(l) = &lease {
            let event = if l.status == LeaseStatus::Expired {
                "lease expire"
            } else {
                "lease revoke"
            };
            self.audit(
                now_ms,
                event,
                id,
                &format!(
                    "credential {} deleted ({})",
                    l.handle.as_deref().unwrap_or("-"),
                    l.end_reason.as_deref().unwrap_or("expiry")
                ),
            )?;
        }
        Ok(lease)
    }

    /// A deletion failed: retried at `next_attempt_ms`, shown as revoking.
    pub fn deletion_failed(
        &self,
        id: &str,
        error: &str,
        next_attempt_ms: i64,
    ) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, 'expiry'), attempts = attempts + 1, next_attempt_ms = ?3, last_error = ?2 WHERE id = ?1 AND status IN ('active', 'revoking')",
            params![id, error, next_attempt_ms],
        )?;
        if n == 1 {
            self.audit(next_attempt_ms, "lease deletion failed", id, error)?;
        }
        Ok(())
    }

    /// At start-up nothing is being created: a lease left pending by a
    /// crash never got its credential recorded. It is marked failed; the
    /// backend's reconcile deletes the credential if it was made.
    pub fn fail_pending(&self, now_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE leases SET status = 'failed', ended_ms = ?1, last_error = 'the authority stopped while creating the credential' WHERE status = 'pending'",
            [now_ms],
        )?)
    }

    /// This deployment's id: the stored one; on first use the configured
    /// one, or a random one, stored from then on.
    pub fn deployment_id(&self, configured: Option<&str>) -> Result<String, StoreError> {
        let stored: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'deployment_id'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match (stored, configured) {
            (Some(s), Some(c)) if s != c => Err(StoreError::DeploymentChanged {
                configured: c.to_owned(),
                stored: s,
            }),
            (Some(s), _) => Ok(s),
            (None, c) => {
                let id = c
                    .map(str::to_owned)
                    .unwrap_or_else(|| crate::secret::random_hex(6));
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('deployment_id', ?1)",
                    [&id],
                )?;
                // Another process may have stored its own first.
                self.deployment_id(configured)
            }
        }
    }

    /// Every lease id the store holds, live or ended (until pruned).
    pub fn lease_ids(&self) -> Result<HashSet<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id FROM leases")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    /// Ids of all leases whose credential may exist and must stay (or is
    /// being deleted by the reaper), whatever their backend: two backends
    /// may name the same InfluxDB.
    pub fn live_lease_ids(&self) -> Result<HashSet<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT id FROM leases WHERE status IN {LIVE}"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    /// Live leases per backend name, for the backends not in `configured`:
    /// their credentials cannot be deleted until the backend is back.
    pub fn leases_of_unknown_backends(
        &self,
        configured: &[&str],
    ) -> Result<Vec<(String, usize)>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT backend, COUNT(*) FROM leases WHERE status IN {LIVE} GROUP BY backend ORDER BY backend"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
        })?;
        let all: Vec<(String, usize)> = rows.collect::<Result<_, _>>()?;
        Ok(all
            .into_iter()
            .filter(|(b, _)| !configured.contains(&b.as_str()))
            .collect())
    }

    /// Forgets leases that ended before `before_ms` (their credentials are
    /// long gone; the audit trail keeps their story). Returns how many.
    pub fn prune_ended(&self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM leases WHERE status IN ('expired', 'revoked', 'failed') AND COALESCE(ended_ms, expires_ms) < ?1",
            [before_ms],
        )?)
    }

    // --- audit ---

    /// Deletes audit records older than `before_ms`. Returns how many.
    pub fn prune_audit(&self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM audit WHERE at_ms < ?1", [before_ms])?)
    }

    pub fn audit(
        &self,
        now_ms: i64,
        event: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        audit_in(&self.conn, now_ms, event, subject, detail)
    }

    /// The audit trail, oldest first: (unix ms, event, subject, detail).
    pub fn audit_trail(&self) -> Result<Vec<(i64, String, String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT at_ms, event, subject, detail FROM audit ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }
}

/// Every audit record also goes to the log, so an operator sees the trail
/// in the journal; neither ever carries a secret.
fn audit_in(
    conn: &Connection,
    now_ms: i64,
    event: &str,
    subject: &str,
    detail: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit (at_ms, event, subject, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now_ms, event, subject, detail],
    )?;
    log::info!("audit: {event} {subject}: {detail}");
    Ok(())
}

fn restrict_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data always serializes")
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

    fn ticket(id: &str, usage: u32, expires_ms: i64) -> TicketRow {
        TicketRow {
            id: id.into(),
            attributes: [("service".to_owned(), "s".to_owned())].into(),
            role: None,
            usage_count: usage,
            used: 0,
            created_ms: 0,
            expires_ms,
            revoked_ms: None,
            identity_name: None,
        }
    }

    fn target() -> Target {
        Target {
            api: crate::api::InfluxApi::V1,
            url: "http://127.0.0.1:1".into(),
            org: None,
            bucket: None,
            database: Some("db".into()),
        }
    }

    #[test]
    fn migrates_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        s.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn enroll_refuses_each_way_and_counts_uses() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("a.db")).unwrap();
        s.insert_ticket(&ticket("t1", 2, 1000), "h1").unwrap();
        s.insert_ticket(&ticket("t2", 1, 10), "h2").unwrap();
        let role = |_: &TicketRow| Ok("r".to_owned());
        let code = |r: Result<IdentityRow, (ErrorCode, Option<String>)>| r.err().map(|e| e.0);
        assert_eq!(
            code(s.enroll("nope", 5, role, ("i0", "n", "c0")).unwrap()),
            Some(ErrorCode::TicketUnknown)
        );
        assert_eq!(
            code(s.enroll("h2", 10, role, ("i0", "n", "c0")).unwrap()),
            Some(ErrorCode::TicketExpired)
        );
        assert_eq!(
            code(
                s.enroll(
                    "h1",
                    5,
                    |_| Err(ErrorCode::NoRoleMatches),
                    ("i0", "n", "c0")
                )
                .unwrap()
            ),
            Some(ErrorCode::NoRoleMatches)
        );
        assert!(s.enroll("h1", 5, role, ("i1", "n", "c1")).unwrap().is_ok());
        assert!(s.enroll("h1", 5, role, ("i2", "n", "c2")).unwrap().is_ok());
        assert_eq!(
            code(s.enroll("h1", 5, role, ("i3", "n", "c3")).unwrap()),
            Some(ErrorCode::TicketUsedUp)
        );
        s.insert_ticket(&ticket("t3", 5, 1000), "h3").unwrap();
        assert!(s.revoke_ticket("t3", 6).unwrap());
        assert_eq!(
            code(s.enroll("h3", 7, role, ("i4", "n", "c4")).unwrap()),
            Some(ErrorCode::TicketRevoked)
        );
        assert_eq!(s.identity_by_credential("c1").unwrap().unwrap().id, "i1");
    }

    #[test]
    fn leases_fall_due_in_expiry_order_and_end_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("a.db")).unwrap();
        s.insert_ticket(&ticket("t1", 1, 1000), "h1").unwrap();
        s.enroll("h1", 1, |_| Ok("r".into()), ("i1", "gw", "c1"))
            .unwrap()
            .unwrap();
        let t = target();
        for (id, exp) in [("a", 300), ("b", 100), ("c", 200), ("d", 900)] {
            let inserted = s
                .insert_lease(
                    &NewLease {
                        id,
                        identity_id: "i1",
                        role: "r",
                        backend: "main",
                        target: &t,
                        created_ms: 0,
                        expires_ms: exp,
                    },
                    10,
                )
                .unwrap();
            assert_eq!(inserted, Inserted::Yes);
            assert_eq!(
                s.activate_lease(id, &format!("h-{id}"), 0).unwrap(),
                Some(LeaseStatus::Active)
            );
        }
        assert_eq!(s.next_due_ms("main").unwrap(), Some(100));
        let due: Vec<String> = s
            .due_leases("main", 300, 10)
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(due, ["b", "c", "a"]);
        s.deletion_failed("b", "connection refused", 1300).unwrap();
        let b = s.lease("b").unwrap().unwrap();
        assert_eq!(b.status, LeaseStatus::Revoking);
        assert_eq!(b.last_error.as_deref(), Some("connection refused"));
        assert_eq!(
            s.deleted("c", 310).unwrap().unwrap().status,
            LeaseStatus::Expired
        );
        assert!(s.deleted("c", 311).unwrap().is_none());
        let revoked = s.begin_revoke("d", "revoke", 320).unwrap().unwrap();
        assert_eq!(revoked.status, LeaseStatus::Revoking);
        assert_eq!(
            s.deleted("d", 321).unwrap().unwrap().status,
            LeaseStatus::Revoked
        );
        let due: Vec<String> = s
            .due_leases("main", 1300, 10)
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(due, ["a", "b"]);
        assert_eq!(
            s.live_lease_ids().unwrap(),
            ["a", "b"].iter().map(|h| h.to_string()).collect()
        );
        let gone = s.revoke_identity("i1", 400).unwrap().unwrap();
        assert_eq!(gone.len(), 2);
        let late = NewLease {
            id: "e",
            identity_id: "i1",
            role: "r",
            backend: "main",
            target: &t,
            created_ms: 401,
            expires_ms: 900,
        };
        assert_eq!(
            s.insert_lease(&late, 10).unwrap(),
            Inserted::IdentityRevoked,
            "no lease for a revoked identity"
        );
        assert_eq!(
            s.deleted("a", 500).unwrap().unwrap().status,
            LeaseStatus::Revoked
        );
        assert_eq!(s.prune_ended(400).unwrap(), 2, "c and d ended before 400");
        assert!(s.lease("c").unwrap().is_none() && s.lease("a").unwrap().is_some());
        assert_eq!(
            s.leases_of_unknown_backends(&["other"]).unwrap(),
            [("main".to_owned(), 1)]
        );
        assert!(
            s.audit_trail()
                .unwrap()
                .iter()
                .any(|a| a.1 == "identity revoke")
        );
    }

    #[test]
    fn audit_records_past_their_age_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a.db")).unwrap();
        for at in [10, 20, 30, 40] {
            s.audit(at, "e", "s", "d").unwrap();
        }
        assert_eq!(s.prune_audit(25).unwrap(), 2);
        let left: Vec<i64> = s.audit_trail().unwrap().iter().map(|r| r.0).collect();
        assert_eq!(left, [30, 40]);
    }
}
