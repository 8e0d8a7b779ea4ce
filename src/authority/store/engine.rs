//! The [`Store`] written once, over an [`Engine`]: SQLite or PostgreSQL
//! (`sqlite.rs`, `postgres/`), each of which only opens its database,
//! migrates it, runs a statement with its driver and says how it claims
//! due leases. Every other step is here, with the statements of
//! [`sql`]: a change of behaviour is made once, for both. Nothing here
//! knows a driver, and nothing here holds a secret in clear.

use std::collections::HashSet;

use crate::wire::api::LeaseStatus;

use super::sql::{self, Row};
use super::{
    AuditRow, Call, Enrolled, HealthRow, IdentityRow, Inserted, LeaseRow, NewLease, RoleFor, Store,
    StoreError, TicketRow, to_json,
};

/// A statement's parameter, in the types both engines bind.
pub enum Value<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
}

use Value::{Int, OptText, Text};

/// A connection (or a transaction on one) that runs the statements of
/// [`sql`] with the engine's driver.
pub trait Conn {
    /// Runs `sql`; the number of rows it changed.
    fn execute(&mut self, sql: &'static str, params: &Args<'_>) -> Done<usize>;
    /// Runs `sql` and hands each row it returns to `row`.
    fn each(&mut self, sql: &'static str, params: &Args<'_>, row: &mut EachRow<'_>) -> Done<()>;
}

/// A statement's parameters, ?1 first.
pub type Args<'a> = [Value<'a>];
/// What takes each row of a query.
pub type EachRow<'a> = dyn FnMut(&dyn Row) -> Done<()> + 'a;

/// What differs between the two databases.
pub trait Engine: Send + Sync {
    const KIND: &'static str;
    /// Whether a lease's insert first locks its identity's row: PostgreSQL
    /// (two replicas' counts could pass the limit together under READ
    /// COMMITTED); SQLite runs one write transaction at a time anyway.
    const LOCKS_ROWS: bool;

    /// Runs `f` in a write transaction, committed when `f` succeeds.
    fn write<T>(&self, f: impl FnOnce(&mut dyn Conn) -> Done<T>) -> Done<T>;
    /// Runs `f` on a connection for reads that need no transaction: each
    /// statement sees what was committed before it started.
    fn read<T>(&self, f: impl FnOnce(&mut dyn Conn) -> Done<T>) -> Done<T>;
    fn schema_version(&self) -> Done<i64>;
    /// Claims due leases, each by one replica at a time.
    fn claim_due(&self, claim: &Claim<'_>) -> Done<Vec<LeaseRow>>;
}

/// What a store step gives.
pub type Done<T> = Result<T, StoreError>;

/// A claim on due leases: up to `limit` of `backend`'s leases due at
/// `now_ms`, for `replica` until `until_ms`.
pub struct Claim<'a> {
    pub backend: &'a str,
    pub replica: &'a str,
    pub now_ms: i64,
    pub until_ms: i64,
    pub limit: i64,
}

impl Claim<'_> {
    /// The claim as the statements' parameters ?1 to ?5.
    pub fn params(&self) -> [Value<'_>; 5] {
        [
            Text(self.backend),
            Text(self.replica),
            Int(self.now_ms),
            Int(self.until_ms),
            Int(self.limit),
        ]
    }
}

/// The [`Store`] over either engine (`SqliteStore`, `PostgresStore`).
pub struct SqlStore<E> {
    pub(super) engine: E,
}

/// The first row of `statement`, decoded; None when it returns none.
pub(super) fn one<T>(
    c: &mut dyn Conn,
    statement: &'static str,
    params: &[Value<'_>],
    decode: impl Fn(&dyn Row) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut found = None;
    c.each(statement, params, &mut |r| {
        if found.is_none() {
            found = Some(decode(r)?);
        }
        Ok(())
    })?;
    Ok(found)
}

/// Every row of `statement`, decoded.
fn audit_row(r: &dyn Row) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        seq: r.int(0)?,
        at_ms: r.int(1)?,
        event: r.text(2)?,
        subject: r.text(3)?,
        detail: r.text(4)?,
    })
}

pub(super) fn all<T, C: FromIterator<T>>(
    c: &mut dyn Conn,
    statement: &'static str,
    params: &[Value<'_>],
    decode: impl Fn(&dyn Row) -> Result<T, StoreError>,
) -> Result<C, StoreError> {
    let mut out = Vec::new();
    c.each(statement, params, &mut |r| {
        out.push(decode(r)?);
        Ok(())
    })?;
    Ok(out.into_iter().collect())
}

/// The one value of a statement that always returns a row.
fn value<T>(
    c: &mut dyn Conn,
    statement: &'static str,
    params: &[Value<'_>],
    decode: impl Fn(&dyn Row) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    one(c, statement, params, decode)?
        .ok_or_else(|| StoreError::Corrupt(statement.into(), "no row".into()))
}

fn lease_in(c: &mut dyn Conn, id: &str) -> Result<Option<LeaseRow>, StoreError> {
    one(c, sql::LEASE, &[Text(id)], sql::lease)
}

fn audit_in(
    c: &mut dyn Conn,
    now_ms: i64,
    event: &str,
    subject: &str,
    detail: &str,
) -> Result<(), StoreError> {
    let record = [Int(now_ms), Text(event), Text(subject), Text(detail)];
    c.execute(sql::AUDIT, &record)?;
    super::log_audit(event, subject, detail);
    Ok(())
}

impl<E: Engine> Store for SqlStore<E> {
    fn kind(&self) -> &'static str {
        E::KIND
    }

    fn schema_version(&self) -> Result<i64, StoreError> {
        self.engine.schema_version()
    }

    fn insert_ticket(&self, t: &TicketRow, secret_hash: &str) -> Result<(), StoreError> {
        let attributes = to_json(&t.attributes);
        let row = [
            Text(&t.id),
            Text(secret_hash),
            Text(&attributes),
            OptText(t.role.as_deref()),
            Int(i64::from(t.usage_count)),
            Int(t.created_ms),
            Int(t.expires_ms),
            OptText(t.identity_name.as_deref()),
        ];
        self.engine.write(|c| c.execute(sql::INSERT_TICKET, &row))?;
        Ok(())
    }

    fn tickets(&self) -> Result<Vec<TicketRow>, StoreError> {
        self.engine.read(|c| all(c, sql::TICKETS, &[], sql::ticket))
    }

    fn ticket(&self, id: &str) -> Result<Option<TicketRow>, StoreError> {
        self.engine
            .read(|c| one(c, sql::TICKET, &[Text(id)], sql::ticket))
    }

    fn revoke_ticket(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self
            .engine
            .write(|c| c.execute(sql::REVOKE_TICKET, &[Text(id), Int(now_ms)]))?;
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
        let redeem = [Text(secret_hash), Int(now_ms)];
        // A refusal fails the transaction, which rolls the counted use back.
        let outcome = self.engine.write(|c| {
            let Some(ticket) = one(c, sql::REDEEM_TICKET, &redeem, sql::ticket)? else {
                let found = one(c, sql::TICKET_BY_SECRET, &[Text(secret_hash)], sql::ticket)?;
                return Ok(Err(super::not_redeemed(found, now_ms)));
            };
            let role = match role_for(&ticket) {
                Ok(r) => r,
                Err(code) => return Err(StoreError::Refused(code, ticket.id)),
            };
            let attributes = to_json(&ticket.attributes);
            c.execute(
                sql::INSERT_IDENTITY,
                &[
                    Text(identity_id),
                    Text(name),
                    Text(&ticket.id),
                    Text(&role),
                    Text(&attributes),
                    Text(credential_hash),
                    Int(now_ms),
                ],
            )?;
            let detail = super::enroll_detail(name, &ticket, &role);
            audit_in(c, now_ms, "enroll", identity_id, &detail)?;
            Ok(Ok(IdentityRow::enrolled(
                identity_id,
                name,
                ticket,
                role,
                now_ms,
            )))
        });
        match outcome {
            Err(StoreError::Refused(code, ticket)) => Ok(Err((code, Some(ticket)))),
            other => other,
        }
    }

    fn identity_by_credential(
        &self,
        credential_hash: &str,
    ) -> Result<Option<IdentityRow>, StoreError> {
        let hash = [Text(credential_hash)];
        self.engine
            .read(|c| one(c, sql::IDENTITY_BY_CREDENTIAL, &hash, sql::identity))
    }

    fn identities(&self) -> Result<Vec<IdentityRow>, StoreError> {
        self.engine
            .read(|c| all(c, sql::IDENTITIES, &[], sql::identity))
    }

    fn revoke_identity(
        &self,
        id: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<Vec<LeaseRow>>, StoreError> {
        let revoke = [Text(id), Int(now_ms)];
        self.engine.write(|c| {
            // On PostgreSQL the identity's row lock also orders this
            // against insert_lease.
            if c.execute(sql::REVOKE_IDENTITY, &revoke)? == 0 {
                return Ok(None);
            }
            c.execute(sql::REVOKE_LEASES_OF_IDENTITY, &revoke)?;
            let detail = format!("identity revoked by {by}");
            audit_in(c, now_ms, "identity revoke", id, &detail)?;
            let leases = all(c, sql::REVOKING_LEASES_OF_IDENTITY, &[Text(id)], sql::lease)?;
            Ok(Some(leases))
        })
    }

    fn insert_lease(&self, l: &NewLease<'_>, max_live: u32) -> Result<Inserted, StoreError> {
        let target = to_json(l.target);
        let lease = [
            Text(l.id),
            Text(l.identity_id),
            Text(l.role),
            Text(l.backend),
            Text(&target),
            Int(l.created_ms),
            Int(l.expires_ms),
            Int(i64::from(max_live)),
            Text(l.replica),
        ];
        let identity = [Text(l.identity_id)];
        self.engine.write(|c| {
            if E::LOCKS_ROWS && one(c, sql::LOCK_LIVE_IDENTITY, &identity, |_| Ok(()))?.is_none() {
                return Ok(Inserted::IdentityRevoked);
            }
            if c.execute(sql::INSERT_LEASE, &lease)? == 1 {
                return Ok(Inserted::Yes);
            }
            Ok(
                if value(c, sql::IDENTITY_REVOKED, &identity, |r| r.flag(0))? {
                    Inserted::IdentityRevoked
                } else {
                    Inserted::AtLimit
                },
            )
        })
    }

    fn activate_lease(
        &self,
        id: &str,
        handle: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseStatus>, StoreError> {
        self.engine.write(|c| {
            if c.execute(sql::ACTIVATE_LEASE, &[Text(id), Text(handle)])? == 1 {
                let detail = format!("credential {handle}");
                audit_in(c, now_ms, "lease issue", id, &detail)?;
            }
            Ok(lease_in(c, id)?.map(|l| l.status))
        })
    }

    fn fail_lease(&self, id: &str, error: &str, now_ms: i64) -> Result<(), StoreError> {
        self.engine.write(|c| {
            c.execute(sql::FAIL_LEASE, &[Text(id), Int(now_ms), Text(error)])?;
            audit_in(c, now_ms, "lease failed", id, error)
        })
    }

    fn lease(&self, id: &str) -> Result<Option<LeaseRow>, StoreError> {
        self.engine.read(|c| lease_in(c, id))
    }

    fn leases(&self, identity_id: Option<&str>) -> Result<Vec<LeaseRow>, StoreError> {
        self.engine
            .read(|c| all(c, sql::LEASES, &[OptText(identity_id)], sql::lease))
    }

    fn due_leases(
        &self,
        backend: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        let due = [Text(backend), Int(now_ms), Int(limit as i64)];
        self.engine
            .read(|c| all(c, sql::DUE_LEASES, &due, sql::lease))
    }

    fn claim_due(
        &self,
        backend: &str,
        replica: &str,
        now_ms: i64,
        claim_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        self.engine.claim_due(&Claim {
            backend,
            replica,
            now_ms,
            until_ms: claim_until_ms,
            limit: limit as i64,
        })
    }

    fn renew_claims(
        &self,
        replica: &str,
        now_ms: i64,
        claim_until_ms: i64,
    ) -> Result<usize, StoreError> {
        let renew = [Text(replica), Int(now_ms), Int(claim_until_ms)];
        self.engine.write(|c| c.execute(sql::RENEW_CLAIMS, &renew))
    }

    fn next_due_ms(&self, backend: &str) -> Result<Option<i64>, StoreError> {
        self.engine
            .read(|c| value(c, sql::NEXT_DUE, &[Text(backend)], |r| r.int_opt(0)))
    }

    fn begin_revoke(
        &self,
        id: &str,
        reason: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseRow>, StoreError> {
        self.engine.write(|c| {
            if c.execute(sql::BEGIN_REVOKE, &[Text(id), Text(reason), Int(now_ms)])? == 1 {
                let detail = format!("{reason} by {by}");
                audit_in(c, now_ms, "lease revoke requested", id, &detail)?;
            }
            lease_in(c, id)
        })
    }

    fn deleted(&self, id: &str, now_ms: i64) -> Result<Option<LeaseRow>, StoreError> {
        self.engine.write(|c| {
            if c.execute(sql::DELETED, &[Text(id), Int(now_ms)])? == 0 {
                return Ok(None);
            }
            let lease = lease_in(c, id)?;
            if let Some(l) = &lease {
                let (event, detail) = super::deleted_event(l);
                audit_in(c, now_ms, event, id, &detail)?;
            }
            Ok(lease)
        })
    }

    fn deletion_failed(
        &self,
        id: &str,
        error: &str,
        next_attempt_ms: i64,
    ) -> Result<(), StoreError> {
        let failed = [Text(id), Text(error), Int(next_attempt_ms)];
        self.engine.write(|c| {
            if c.execute(sql::DELETION_FAILED, &failed)? == 1 {
                audit_in(c, next_attempt_ms, "lease deletion failed", id, error)?;
            }
            Ok(())
        })
    }

    fn fail_pending(
        &self,
        replica: &str,
        now_ms: i64,
        alive_since_ms: i64,
    ) -> Result<usize, StoreError> {
        let pending = [Text(replica), Int(now_ms), Int(alive_since_ms)];
        self.engine
            .write(|c| c.execute(sql::FAIL_PENDING, &pending))
    }

    fn heartbeat(&self, replica: &str, now_ms: i64) -> Result<(), StoreError> {
        self.engine
            .write(|c| c.execute(sql::HEARTBEAT, &[Text(replica), Int(now_ms)]))?;
        Ok(())
    }

    fn replicas(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.engine.read(|c| {
            all(c, sql::REPLICAS, &[Int(since_ms)], |r| {
                Ok((r.text(0)?, r.int(1)?))
            })
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.engine.read(|c| value(c, sql::PING, &[], |_| Ok(())))
    }

    fn deployment_id(&self, configured: Option<&str>) -> Result<String, StoreError> {
        let new = super::new_deployment_id(configured);
        let stored = self.engine.write(|c| {
            c.execute(sql::STORE_DEPLOYMENT_ID, &[Text(&new)])?;
            value(c, sql::DEPLOYMENT_ID, &[], |r| r.text(0))
        })?;
        super::check_deployment(stored, configured)
    }

    fn lease_ids(&self) -> Result<HashSet<String>, StoreError> {
        self.engine
            .read(|c| all(c, sql::LEASE_IDS, &[], |r| r.text(0)))
    }

    fn live_lease_ids(&self) -> Result<HashSet<String>, StoreError> {
        self.engine
            .read(|c| all(c, sql::LIVE_LEASE_IDS, &[], |r| r.text(0)))
    }

    fn leases_of_unknown_backends(
        &self,
        configured: &[&str],
    ) -> Result<Vec<(String, usize)>, StoreError> {
        let all: Vec<(String, usize)> = self.engine.read(|c| {
            all(c, sql::LIVE_LEASES_PER_BACKEND, &[], |r| {
                Ok((r.text(0)?, r.int(1)? as usize))
            })
        })?;
        Ok(super::unknown_backends(all, configured))
    }

    fn prune_ended(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.engine
            .write(|c| c.execute(sql::PRUNE_ENDED, &[Int(before_ms)]))
    }

    fn prune_audit(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.engine
            .write(|c| c.execute(sql::PRUNE_AUDIT, &[Int(before_ms)]))
    }

    fn record_call(&self, call: &Call<'_>) -> Result<(), StoreError> {
        let recorded = [
            Text(call.identity_id),
            Int(call.at_ms),
            OptText(call.report),
            OptText(call.refused),
            Int(i64::from(call.failed)),
            OptText(call.address),
        ];
        self.engine.write(|c| {
            c.execute(sql::RECORD_CALL, &recorded)?;
            if let Some(report) = call.report {
                let history = [
                    Text(call.identity_id),
                    Int(call.at_ms),
                    Text(report),
                    Int(call.history_after_ms),
                ];
                c.execute(sql::ADD_HISTORY, &history)?;
            }
            Ok(())
        })
    }

    fn health(&self) -> Result<Vec<HealthRow>, StoreError> {
        self.engine.read(|c| all(c, sql::HEALTH, &[], sql::health))
    }

    fn gateway_addresses(&self, since_ms: i64) -> Result<Vec<String>, StoreError> {
        self.engine
            .read(|c| all(c, sql::GATEWAY_ADDRESSES, &[Int(since_ms)], |r| r.text(0)))
    }

    fn health_history(
        &self,
        identity_id: &str,
        since_ms: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let which = [Text(identity_id), Int(since_ms)];
        self.engine.read(|c| {
            all(c, sql::HEALTH_HISTORY, &which, |r| {
                Ok((r.int(0)?, r.text(1)?))
            })
        })
    }

    fn prune_health(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.engine
            .write(|c| c.execute(sql::PRUNE_HEALTH, &[Int(before_ms)]))
    }

    fn set_admin(
        &self,
        name: &str,
        password_hash: &str,
        now_ms: i64,
        replace: bool,
    ) -> Result<bool, StoreError> {
        let changed = self.engine.write(|c| match replace {
            true => c.execute(sql::SET_ADMIN_PASSWORD, &[Text(name), Text(password_hash)]),
            false => c.execute(
                sql::ADD_ADMIN,
                &[Text(name), Text(password_hash), Int(now_ms)],
            ),
        })?;
        Ok(changed == 1)
    }

    fn admin_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.engine
            .read(|c| one(c, sql::ADMIN_HASH, &[Text(name)], |r| r.text(0)))
    }

    fn admins(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.engine
            .read(|c| all(c, sql::ADMINS, &[], |r| Ok((r.text(0)?, r.int(1)?))))
    }

    fn remove_admin(&self, name: &str) -> Result<bool, StoreError> {
        let removed = self.engine.write(|c| {
            c.execute(sql::REMOVE_ADMIN_SESSIONS, &[Text(name)])?;
            c.execute(sql::REMOVE_ADMIN, &[Text(name)])
        })?;
        Ok(removed == 1)
    }

    fn insert_session(
        &self,
        token_hash: &str,
        admin: &str,
        csrf: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        let row = [
            Text(token_hash),
            Text(admin),
            Text(csrf),
            Int(now_ms),
            Int(expires_ms),
        ];
        self.engine
            .write(|c| c.execute(sql::INSERT_SESSION, &row))?;
        Ok(())
    }

    fn session(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        let which = [Text(token_hash), Int(now_ms)];
        self.engine
            .read(|c| one(c, sql::SESSION, &which, |r| Ok((r.text(0)?, r.text(1)?))))
    }

    fn delete_session(&self, token_hash: &str) -> Result<(), StoreError> {
        self.engine
            .write(|c| c.execute(sql::DELETE_SESSION, &[Text(token_hash)]))?;
        Ok(())
    }

    fn prune_sessions(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.engine
            .write(|c| c.execute(sql::PRUNE_SESSIONS, &[Int(now_ms)]))
    }

    fn latest_leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        self.engine
            .read(|c| all(c, sql::LATEST_LEASES, &[], sql::lease))
    }

    fn audit(
        &self,
        now_ms: i64,
        event: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.engine
            .write(|c| audit_in(c, now_ms, event, subject, detail))
    }

    fn audit_trail(&self) -> Result<Vec<(i64, String, String, String)>, StoreError> {
        self.engine.read(|c| {
            all(c, sql::AUDIT_TRAIL, &[], |r| {
                Ok((r.int(0)?, r.text(1)?, r.text(2)?, r.text(3)?))
            })
        })
    }

    fn audit_page(&self, before: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let args = [Int(before), Int(i64::from(limit))];
        self.engine
            .read(|c| all(c, sql::AUDIT_PAGE, &args, audit_row))
    }

    fn audit_of_identity(
        &self,
        identity_id: &str,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let args = [Text(identity_id), Int(i64::from(limit))];
        self.engine
            .read(|c| all(c, sql::AUDIT_OF_IDENTITY, &args, audit_row))
    }
}
