//! The PostgreSQL store: any number of authority replicas on one database.
//!
//! It owns the PostgreSQL schema (the same tables and the same migration
//! numbers as SQLite's, in PostgreSQL's types; `leasegate_schema` holds
//! the version, and migrations run under an advisory lock so replicas
//! starting together migrate once), a small pool of connections, and TLS
//! to the database through rustls (ring), verified against `ca_file` or
//! the system's CAs. What every store must do is [`Store`]'s; here every
//! step that more than one replica may take at once is one conditional
//! statement or a transaction holding the row it depends on, never a read
//! followed by a write on its result.
//!
//! It never logs or returns the database password (the URL may not carry
//! one; it comes from `password_file`) and never talks to InfluxDB.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::postgres::{Client, Row, Statement};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::{
    Enrolled, IdentityRow, Inserted, LIVE, LeaseRow, NewLease, RoleFor, Store, StoreError,
    TicketRow, to_json,
};
use crate::api::{ErrorCode, LeaseStatus};
use crate::authority::config::{PostgresConfig, StoreTls};

/// Each migration moves the schema one version up, in step with SQLite's
/// (the same number means the same tables); never edit one that has
/// shipped, append a new one.
const MIGRATIONS: &[&str] = &[
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
    seq BIGSERIAL PRIMARY KEY,
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
];

/// The advisory lock migrations run under ("lgmigrat" in ASCII).
const MIGRATION_LOCK: i64 = 0x6c67_6d69_6772_6174;
/// How long a caller waits for a free connection before the request fails.
const POOL_WAIT: Duration = Duration::from_secs(10);

const TICKET_COLUMNS: &str =
    "id, attributes, role, usage_count, used, created_ms, expires_ms, revoked_ms, identity_name";
const IDENTITY_COLUMNS: &str = "id, name, ticket_id, role, attributes, created_ms, revoked_ms";
const LEASE_COLUMNS: &str = "l.id, l.identity_id, i.name, l.role, l.backend, l.target, l.handle, l.status, l.created_ms, l.expires_ms, l.end_reason, l.attempts, l.next_attempt_ms, l.last_error";

/// The PostgreSQL [`Store`].
pub struct PostgresStore {
    pool: Pool,
}

impl PostgresStore {
    /// Connects, and brings the schema up to date (once, whatever the
    /// number of replicas starting at the same time).
    pub fn open(config: &PostgresConfig) -> Result<PostgresStore, StoreError> {
        let mut pg: ::postgres::Config =
            config.url.parse().map_err(|source| StoreError::Connect {
                url: config.url.clone(),
                source,
            })?;
        if let Some(password) = &config.password {
            pg.password(password.expose());
        }
        // Notices (such as "already exists, skipping") are no news for an
        // operator; a statement that hangs must not hold a request for ever.
        pg.application_name("leasegate-authority")
            .options("-c client_min_messages=warning -c statement_timeout=60000")
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let tls = match config.tls {
            StoreTls::Off => {
                pg.ssl_mode(::postgres::config::SslMode::Disable);
                None
            }
            StoreTls::Require => {
                pg.ssl_mode(::postgres::config::SslMode::Require);
                let client = crate::config::tls::client_config(config.ca_file.as_deref(), None)
                    .map_err(|p| StoreError::Tls(p.message))?;
                Some(MakeRustls(client.0))
            }
        };
        let store = PostgresStore {
            pool: Pool {
                url: config.url.clone(),
                config: pg,
                tls,
                idle: Mutex::new(Vec::new()),
                free: Mutex::new(config.max_connections),
                freed: Condvar::new(),
                max: config.max_connections,
            },
        };
        store.migrate()?;
        Ok(store)
    }

    /// The number of migrations this build knows.
    pub fn known_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.get()?;
        let mut tx = conn.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS leasegate_schema (version BIGINT NOT NULL)")?;
        let version: i64 = match tx.query_opt("SELECT version FROM leasegate_schema", &[])? {
            Some(row) => row.get(0),
            None => {
                tx.execute("INSERT INTO leasegate_schema (version) VALUES (0)", &[])?;
                0
            }
        };
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql)?;
            tx.execute(
                "UPDATE leasegate_schema SET version = $1",
                &[&((i + 1) as i64)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn lease_in(
    c: &mut impl ::postgres::GenericClient,
    id: &str,
) -> Result<Option<LeaseRow>, StoreError> {
    c.query_opt(
        &format!("SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id WHERE l.id = $1"),
        &[&id],
    )?
    .map(|r| lease_row(&r))
    .transpose()
}

fn audit_in(
    c: &mut impl ::postgres::GenericClient,
    now_ms: i64,
    event: &str,
    subject: &str,
    detail: &str,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO audit (at_ms, event, subject, detail) VALUES ($1, $2, $3, $4)",
        &[&now_ms, &event, &subject, &detail],
    )?;
    super::log_audit(event, subject, detail);
    Ok(())
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .pool
            .get()?
            .query_one("SELECT version FROM leasegate_schema", &[])?
            .get(0))
    }

    fn insert_ticket(&self, t: &TicketRow, secret_hash: &str) -> Result<(), StoreError> {
        self.pool.get()?.execute(
            "INSERT INTO tickets (id, secret_hash, attributes, role, usage_count, used, created_ms, expires_ms, identity_name) VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8)",
            &[&t.id, &secret_hash, &to_json(&t.attributes), &t.role, &i64::from(t.usage_count), &t.created_ms, &t.expires_ms, &t.identity_name],
        )?;
        Ok(())
    }

    fn tickets(&self) -> Result<Vec<TicketRow>, StoreError> {
        self.pool
            .get()?
            .query(
                &format!("SELECT {TICKET_COLUMNS} FROM tickets ORDER BY created_ms, id"),
                &[],
            )?
            .iter()
            .map(ticket_row)
            .collect()
    }

    fn ticket(&self, id: &str) -> Result<Option<TicketRow>, StoreError> {
        self.pool
            .get()?
            .query_opt(
                &format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE id = $1"),
                &[&id],
            )?
            .map(|r| ticket_row(&r))
            .transpose()
    }

    fn revoke_ticket(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.pool.get()?.execute(
            "UPDATE tickets SET revoked_ms = COALESCE(revoked_ms, $2) WHERE id = $1",
            &[&id, &now_ms],
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
        let mut conn = self.pool.get()?;
        let mut tx = conn.transaction()?;
        // One conditional update: a concurrent one on the same ticket waits
        // for this transaction and then re-checks `used < usage_count`
        // against the committed count.
        let redeemed = tx.query_opt(
            &format!(
                "UPDATE tickets SET used = used + 1 WHERE secret_hash = $1 AND revoked_ms IS NULL AND expires_ms > $2 AND used < usage_count RETURNING {TICKET_COLUMNS}"
            ),
            &[&secret_hash, &now_ms],
        )?;
        let Some(row) = redeemed else {
            let found = tx.query_opt(
                &format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE secret_hash = $1"),
                &[&secret_hash],
            )?;
            return Ok(Err(match found {
                None => (ErrorCode::TicketUnknown, None),
                Some(r) => {
                    let t = ticket_row(&r)?;
                    (super::refusal(&t, now_ms), Some(t.id))
                }
            }));
        };
        let ticket = ticket_row(&row)?;
        let role = match role_for(&ticket) {
            Ok(r) => r,
            // Dropping the transaction rolls the counted use back.
            Err(code) => return Ok(Err((code, Some(ticket.id)))),
        };
        tx.execute(
            "INSERT INTO identities (id, name, ticket_id, role, attributes, credential_hash, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&identity_id, &name, &ticket.id, &role, &to_json(&ticket.attributes), &credential_hash, &now_ms],
        )?;
        audit_in(
            &mut tx,
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
        self.pool
            .get()?
            .query_opt(
                &format!("SELECT {IDENTITY_COLUMNS} FROM identities WHERE credential_hash = $1"),
                &[&credential_hash],
            )?
            .map(|r| identity_row(&r))
            .transpose()
    }

    fn identities(&self) -> Result<Vec<IdentityRow>, StoreError> {
        self.pool
            .get()?
            .query(
                &format!("SELECT {IDENTITY_COLUMNS} FROM identities ORDER BY created_ms, id"),
                &[],
            )?
            .iter()
            .map(identity_row)
            .collect()
    }

    fn revoke_identity(&self, id: &str, now_ms: i64) -> Result<Option<Vec<LeaseRow>>, StoreError> {
        let mut conn = self.pool.get()?;
        let mut tx = conn.transaction()?;
        // The identity's row lock also orders this against insert_lease.
        let n = tx.execute(
            "UPDATE identities SET revoked_ms = COALESCE(revoked_ms, $2) WHERE id = $1",
            &[&id, &now_ms],
        )?;
        if n == 0 {
            return Ok(None);
        }
        tx.execute(
            &format!(
                "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, 'identity revoked'), next_attempt_ms = $2 WHERE identity_id = $1 AND status IN {LIVE}"
            ),
            &[&id, &now_ms],
        )?;
        audit_in(&mut tx, now_ms, "identity revoke", id, "identity revoked")?;
        let leases = tx
            .query(
                &format!(
                    "SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id WHERE l.identity_id = $1 AND l.status = 'revoking' ORDER BY l.expires_ms, l.id"
                ),
                &[&id],
            )?
            .iter()
            .map(lease_row)
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(Some(leases))
    }

    fn insert_lease(&self, l: &NewLease<'_>, max_live: u32) -> Result<Inserted, StoreError> {
        let mut conn = self.pool.get()?;
        let mut tx = conn.transaction()?;
        // Holding the identity's row serialises concurrent requests of one
        // identity across replicas (READ COMMITTED would let two counts
        // pass the limit together) and orders them against a revoke.
        let live = tx.query_opt(
            "SELECT 1 FROM identities WHERE id = $1 AND revoked_ms IS NULL FOR UPDATE",
            &[&l.identity_id],
        )?;
        if live.is_none() {
            return Ok(Inserted::IdentityRevoked);
        }
        let n = tx.execute(
            &format!("INSERT INTO leases (id, identity_id, role, backend, target, status, created_ms, expires_ms, created_by)
             SELECT $1, $2, $3, $4, $5, 'pending', $6, $7, $9
             WHERE (SELECT COUNT(*) FROM leases WHERE identity_id = $2 AND status IN {LIVE}) < $8"),
            &[&l.id, &l.identity_id, &l.role, &l.backend, &to_json(l.target), &l.created_ms, &l.expires_ms, &i64::from(max_live), &l.replica],
        )?;
        tx.commit()?;
        Ok(if n == 1 {
            Inserted::Yes
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
        let mut conn = self.pool.get()?;
        let n = conn.execute(
            "UPDATE leases SET handle = $2, status = CASE status WHEN 'pending' THEN 'active' ELSE status END WHERE id = $1 AND status IN ('pending', 'revoking')",
            &[&id, &handle],
        )?;
        if n == 1 {
            audit_in(
                &mut *conn,
                now_ms,
                "lease issue",
                id,
                &format!("credential {handle}"),
            )?;
        }
        Ok(lease_in(&mut *conn, id)?.map(|l| l.status))
    }

    fn fail_lease(&self, id: &str, error: &str, now_ms: i64) -> Result<(), StoreError> {
        let mut conn = self.pool.get()?;
        conn.execute(
            "UPDATE leases SET status = 'failed', ended_ms = $2, last_error = $3 WHERE id = $1 AND status IN ('pending', 'revoking')",
            &[&id, &now_ms, &error],
        )?;
        audit_in(&mut *conn, now_ms, "lease failed", id, error)
    }

    fn lease(&self, id: &str) -> Result<Option<LeaseRow>, StoreError> {
        lease_in(&mut *self.pool.get()?, id)
    }

    fn leases(&self, identity_id: Option<&str>) -> Result<Vec<LeaseRow>, StoreError> {
        self.pool
            .get()?
            .query(
                &format!(
                    "SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id WHERE $1::TEXT IS NULL OR l.identity_id = $1 ORDER BY l.created_ms DESC, l.id"
                ),
                &[&identity_id],
            )?
            .iter()
            .map(lease_row)
            .collect()
    }

    fn due_leases(
        &self,
        backend: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        self.pool
            .get()?
            .query(
                &format!(
                    "SELECT {LEASE_COLUMNS} FROM leases l JOIN identities i ON i.id = l.identity_id
             WHERE l.backend = $1 AND l.handle IS NOT NULL AND ((l.status = 'active' AND l.expires_ms <= $2) OR (l.status = 'revoking' AND l.next_attempt_ms <= $2))
             ORDER BY CASE l.status WHEN 'active' THEN l.expires_ms ELSE l.next_attempt_ms END, l.id LIMIT $3"
                ),
                &[&backend, &now_ms, &(limit as i64)],
            )?
            .iter()
            .map(lease_row)
            .collect()
    }

    fn claim_due(
        &self,
        backend: &str,
        replica: &str,
        now_ms: i64,
        claim_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        // SKIP LOCKED: a replica claiming at the same moment takes other
        // rows instead of waiting; a row another replica claimed and
        // committed meanwhile fails the claim check when re-read for the
        // lock, so no lease is claimed by two replicas at once.
        self.pool
            .get()?
            .query(
                &format!(
                    "WITH picked AS (
                       SELECT id FROM leases
                       WHERE backend = $1 AND handle IS NOT NULL
                         AND ((status = 'active' AND expires_ms <= $3) OR (status = 'revoking' AND next_attempt_ms <= $3))
                         AND (claim_until_ms IS NULL OR claim_until_ms <= $3 OR claimed_by = $2)
                       ORDER BY CASE status WHEN 'active' THEN expires_ms ELSE next_attempt_ms END, id
                       LIMIT $5
                       FOR UPDATE SKIP LOCKED
                     ), claimed AS (
                       UPDATE leases SET claimed_by = $2, claim_until_ms = $4
                       FROM picked WHERE leases.id = picked.id
                       RETURNING leases.*
                     )
                     SELECT {LEASE_COLUMNS} FROM claimed l JOIN identities i ON i.id = l.identity_id
                     ORDER BY CASE l.status WHEN 'active' THEN l.expires_ms ELSE l.next_attempt_ms END, l.id"
                ),
                &[&backend, &replica, &now_ms, &claim_until_ms, &(limit as i64)],
            )?
            .iter()
            .map(lease_row)
            .collect()
    }

    fn renew_claims(
        &self,
        replica: &str,
        now_ms: i64,
        claim_until_ms: i64,
    ) -> Result<usize, StoreError> {
        Ok(self.pool.get()?.execute(
            "UPDATE leases SET claim_until_ms = $3 WHERE claimed_by = $1 AND claim_until_ms > $2 AND status IN ('active', 'revoking')",
            &[&replica, &now_ms, &claim_until_ms],
        )? as usize)
    }

    fn next_due_ms(&self, backend: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .pool
            .get()?
            .query_one(
                "SELECT MIN(GREATEST(CASE status WHEN 'active' THEN expires_ms ELSE next_attempt_ms END, COALESCE(claim_until_ms, 0))) FROM leases WHERE backend = $1 AND handle IS NOT NULL AND status IN ('active', 'revoking')",
                &[&backend],
            )?
            .get(0))
    }

    fn begin_revoke(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseRow>, StoreError> {
        let mut conn = self.pool.get()?;
        let n = conn.execute(
            &format!(
                "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, $2), next_attempt_ms = $3 WHERE id = $1 AND status IN {LIVE}"
            ),
            &[&id, &reason, &now_ms],
        )?;
        if n == 1 {
            audit_in(&mut *conn, now_ms, "lease revoke requested", id, reason)?;
        }
        lease_in(&mut *conn, id)
    }

    fn deleted(&self, id: &str, now_ms: i64) -> Result<Option<LeaseRow>, StoreError> {
        let mut conn = self.pool.get()?;
        let n = conn.execute(
            "UPDATE leases SET status = CASE WHEN end_reason IS NULL OR end_reason = 'expiry' THEN 'expired' ELSE 'revoked' END, end_reason = COALESCE(end_reason, 'expiry'), ended_ms = $2, last_error = NULL, claimed_by = NULL, claim_until_ms = NULL WHERE id = $1 AND status IN ('active', 'revoking')",
            &[&id, &now_ms],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let lease = lease_in(&mut *conn, id)?;
        if let Some(l) = &lease {
            let (event, detail) = super::deleted_event(l);
            audit_in(&mut *conn, now_ms, event, id, &detail)?;
        }
        Ok(lease)
    }

    fn deletion_failed(
        &self,
        id: &str,
        error: &str,
        next_attempt_ms: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.get()?;
        let n = conn.execute(
            "UPDATE leases SET status = 'revoking', end_reason = COALESCE(end_reason, 'expiry'), attempts = attempts + 1, next_attempt_ms = $3, last_error = $2, claimed_by = NULL, claim_until_ms = NULL WHERE id = $1 AND status IN ('active', 'revoking')",
            &[&id, &error, &next_attempt_ms],
        )?;
        if n == 1 {
            audit_in(
                &mut *conn,
                next_attempt_ms,
                "lease deletion failed",
                id,
                error,
            )?;
        }
        Ok(())
    }

    fn fail_pending(
        &self,
        replica: &str,
        now_ms: i64,
        alive_since_ms: i64,
    ) -> Result<usize, StoreError> {
        Ok(self.pool.get()?.execute(
            "UPDATE leases SET status = 'failed', ended_ms = $2, last_error = 'the authority stopped while creating the credential'
             WHERE status = 'pending' AND (created_by IS NULL OR (created_by <> $1 AND created_by NOT IN (SELECT id FROM replicas WHERE seen_ms >= $3)))",
            &[&replica, &now_ms, &alive_since_ms],
        )? as usize)
    }

    fn heartbeat(&self, replica: &str, now_ms: i64) -> Result<(), StoreError> {
        self.pool.get()?.execute(
            "INSERT INTO replicas (id, seen_ms) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms",
            &[&replica, &now_ms],
        )?;
        Ok(())
    }

    fn replicas(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.pool
            .get()?
            .query(
                "SELECT id, seen_ms FROM replicas WHERE seen_ms >= $1 ORDER BY seen_ms DESC, id",
                &[&since_ms],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.pool.get()?.simple_query("SELECT 1")?;
        Ok(())
    }

    fn deployment_id(&self, configured: Option<&str>) -> Result<String, StoreError> {
        let mut conn = self.pool.get()?;
        // Another replica may store its own first: this insert does
        // nothing then, and the stored one wins.
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('deployment_id', $1) ON CONFLICT (key) DO NOTHING",
            &[&super::new_deployment_id(configured)],
        )?;
        let stored: String = conn
            .query_one("SELECT value FROM meta WHERE key = 'deployment_id'", &[])?
            .get(0);
        super::check_deployment(stored, configured)
    }

    fn lease_ids(&self) -> Result<HashSet<String>, StoreError> {
        Ok(self
            .pool
            .get()?
            .query("SELECT id FROM leases", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn live_lease_ids(&self) -> Result<HashSet<String>, StoreError> {
        Ok(self
            .pool
            .get()?
            .query(
                &format!("SELECT id FROM leases WHERE status IN {LIVE}"),
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn leases_of_unknown_backends(
        &self,
        configured: &[&str],
    ) -> Result<Vec<(String, usize)>, StoreError> {
        let all = self
            .pool
            .get()?
            .query(
                &format!(
                    "SELECT backend, COUNT(*) FROM leases WHERE status IN {LIVE} GROUP BY backend ORDER BY backend"
                ),
                &[],
            )?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as usize))
            .collect();
        Ok(super::unknown_backends(all, configured))
    }

    fn prune_ended(&self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self.pool.get()?.execute(
            "DELETE FROM leases WHERE status IN ('expired', 'revoked', 'failed') AND COALESCE(ended_ms, expires_ms) < $1",
            &[&before_ms],
        )? as usize)
    }

    fn prune_audit(&self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .pool
            .get()?
            .execute("DELETE FROM audit WHERE at_ms < $1", &[&before_ms])? as usize)
    }

    fn audit(
        &self,
        now_ms: i64,
        event: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        audit_in(&mut *self.pool.get()?, now_ms, event, subject, detail)
    }

    fn audit_trail(&self) -> Result<Vec<(i64, String, String, String)>, StoreError> {
        Ok(self
            .pool
            .get()?
            .query(
                "SELECT at_ms, event, subject, detail FROM audit ORDER BY seq",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }
}

fn from_json<T: serde::de::DeserializeOwned>(
    table: &str,
    id: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{table} {id}"), e.to_string()))
}

/// A count column (BIGINT here, for SQLite's INTEGER) as the row's u32.
fn count(r: &Row, i: usize) -> u32 {
    u32::try_from(r.get::<_, i64>(i)).unwrap_or(u32::MAX)
}

fn ticket_row(r: &Row) -> Result<TicketRow, StoreError> {
    let id: String = r.try_get(0)?;
    Ok(TicketRow {
        attributes: from_json("ticket", &id, r.try_get(1)?)?,
        role: r.try_get(2)?,
        usage_count: count(r, 3),
        used: count(r, 4),
        created_ms: r.try_get(5)?,
        expires_ms: r.try_get(6)?,
        revoked_ms: r.try_get(7)?,
        identity_name: r.try_get(8)?,
        id,
    })
}

fn identity_row(r: &Row) -> Result<IdentityRow, StoreError> {
    let id: String = r.try_get(0)?;
    Ok(IdentityRow {
        name: r.try_get(1)?,
        ticket_id: r.try_get(2)?,
        role: r.try_get(3)?,
        attributes: from_json("identity", &id, r.try_get(4)?)?,
        created_ms: r.try_get(5)?,
        revoked_ms: r.try_get(6)?,
        id,
    })
}

fn lease_row(r: &Row) -> Result<LeaseRow, StoreError> {
    let id: String = r.try_get(0)?;
    let status: String = r.try_get(7)?;
    Ok(LeaseRow {
        identity_id: r.try_get(1)?,
        identity_name: r.try_get(2)?,
        role: r.try_get(3)?,
        backend: r.try_get(4)?,
        target: from_json("lease", &id, r.try_get(5)?)?,
        handle: r.try_get(6)?,
        status: LeaseStatus::parse(&status).ok_or_else(|| {
            StoreError::Corrupt(format!("lease {id}"), format!("unknown status {status:?}"))
        })?,
        created_ms: r.try_get(8)?,
        expires_ms: r.try_get(9)?,
        end_reason: r.try_get(10)?,
        attempts: count(r, 11),
        next_attempt_ms: r.try_get(12)?,
        last_error: r.try_get(13)?,
        id,
    })
}

// --- the pool ---

/// At most `max` connections, made on demand and kept while they work; a
/// broken one (the database restarted, a replica failed over) is dropped
/// when it comes back and the next caller gets a new one.
struct Pool {
    url: String,
    config: ::postgres::Config,
    tls: Option<MakeRustls>,
    idle: Mutex<Vec<Pooled>>,
    free: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

/// A connection out of the [`Pool`]; back in when dropped.
struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Pooled>,
}

/// A client and the statements prepared on it: PostgreSQL then parses
/// and plans each of the store's statements once per connection, not at
/// every call (that was most of the server's CPU per lease request in the
/// fleet benchmark).
struct Pooled {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Statements kept per connection, at most: the store has fewer.
const STATEMENTS: usize = 256;

impl Pool {
    fn get(&self) -> Result<Conn<'_>, StoreError> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::PoolTimeout(self.max));
            }
            free = self
                .freed
                .wait_timeout(free, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *free -= 1;
        drop(free);
        // From here the slot is the Conn's: dropping it gives it back,
        // also when connecting fails.
        let mut conn = Conn {
            pool: self,
            client: None,
        };
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let pooled = match idle {
            Some(p) if !p.client.is_closed() => p,
            _ => Pooled {
                client: self.connect()?,
                statements: HashMap::new(),
            },
        };
        conn.client = Some(pooled);
        Ok(conn)
    }

    fn connect(&self) -> Result<Client, StoreError> {
        let connected = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(::postgres::NoTls),
        };
        connected.map_err(|source| StoreError::Connect {
            url: self.url.clone(),
            source,
        })
    }
}

impl Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self
            .client
            .as_ref()
            .expect("a Conn holds its client until dropped")
            .client
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.pooled().client
    }
}

type Params<'p> = [&'p (dyn ::postgres::types::ToSql + Sync)];

/// The same calls as [`Client`]'s, through the connection's prepared
/// statements (these win over the `Deref` to the client). A failed call
/// forgets them: a statement may be stale after another replica migrated
/// the schema, and is prepared again next time.
impl Conn<'_> {
    fn pooled(&mut self) -> &mut Pooled {
        self.client
            .as_mut()
            .expect("a Conn holds its client until dropped")
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, ::postgres::Error> {
        let p = self.pooled();
        if let Some(s) = p.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = p.client.prepare(sql)?;
        if p.statements.len() < STATEMENTS {
            p.statements.insert(sql.to_owned(), s.clone());
        }
        Ok(s)
    }

    fn cached<T>(
        &mut self,
        sql: &str,
        call: impl FnOnce(&mut Client, &Statement) -> Result<T, ::postgres::Error>,
    ) -> Result<T, ::postgres::Error> {
        let st = self.statement(sql)?;
        let p = self.pooled();
        let outcome = call(&mut p.client, &st);
        if outcome.is_err() {
            p.statements.clear();
        }
        outcome
    }

    fn execute(&mut self, sql: &str, params: &Params<'_>) -> Result<u64, ::postgres::Error> {
        self.cached(sql, |c, st| c.execute(st, params))
    }

    fn query(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, ::postgres::Error> {
        self.cached(sql, |c, st| c.query(st, params))
    }

    fn query_one(&mut self, sql: &str, params: &Params<'_>) -> Result<Row, ::postgres::Error> {
        self.cached(sql, |c, st| c.query_one(st, params))
    }

    fn query_opt(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, ::postgres::Error> {
        self.cached(sql, |c, st| c.query_opt(st, params))
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.client.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(client);
        }
        *self.pool.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.pool.freed.notify_one();
    }
}

impl Drop for Pool {
    /// Closing a client blocks on the connection's own runtime, which
    /// panics on a thread that drives async tasks (the authority's last
    /// reference may go there at shutdown): close them on a thread of
    /// their own then.
    fn drop(&mut self) {
        let clients = std::mem::take(self.idle.get_mut().unwrap_or_else(|e| e.into_inner()));
        if clients.is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            drop(clients);
            return;
        }
        let closer = std::thread::Builder::new()
            .name("store-close".into())
            .spawn(move || drop(clients));
        if let Ok(thread) = closer {
            let _ = thread.join();
        }
    }
}

// --- TLS through rustls ---

/// tokio-postgres' TLS hook over tokio-rustls, with the authority's ring
/// provider: the published adapters pull in aws-lc or other C.
#[derive(Clone)]
struct MakeRustls(Arc<rustls::ClientConfig>);

struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: rustls::pki_types::ServerName::try_from(domain.to_owned())?,
        })
    }
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            Ok(RustlsStream(connector.connect(self.name, stream).await?))
        })
    }
}

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM-SHA-256 without channel binding: the certificate is
        // verified against the configured CA already.
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
