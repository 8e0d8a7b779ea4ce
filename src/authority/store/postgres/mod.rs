//! The PostgreSQL engine: any number of authority replicas on one
//! database. Every step that more than one replica may take at once is one
//! conditional statement or a transaction holding the row it depends on,
//! never a read followed by a write on its result. It never logs or
//! returns the database password (it comes from `password_file`) and never
//! talks to InfluxDB.

mod pool;
mod tls;

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use ::postgres::types::ToSql;

use crate::authority::config::{PostgresConfig, StoreTls};

use self::pool::Pool;
use self::tls::MakeRustls;
use super::engine::{Args, Claim, Conn, Done, EachRow, Engine, SqlStore, Value, all};
use super::sql::{self, Cell, Row};
use super::{LeaseRow, StoreError};

/// The advisory lock migrations run under ("lgmigrat" in ASCII), so that
/// replicas starting together migrate once.
const MIGRATION_LOCK: i64 = 0x6c67_6d69_6772_6174;

/// The PostgreSQL engine: a small pool of connections.
pub struct Postgres {
    pool: Pool,
}

/// The PostgreSQL [`Store`](super::Store).
pub type PostgresStore = SqlStore<Postgres>;

impl SqlStore<Postgres> {
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
        let store = SqlStore {
            engine: Postgres {
                pool: Pool {
                    url: config.url.clone(),
                    config: pg,
                    tls,
                    idle: Mutex::new(Vec::new()),
                    free: Mutex::new(config.max_connections),
                    freed: Condvar::new(),
                    max: config.max_connections,
                },
            },
        };
        store.engine.migrate()?;
        Ok(store)
    }

    /// The number of migrations this build knows.
    pub fn known_version() -> i64 {
        sql::MIGRATIONS.len() as i64
    }
}

impl Postgres {
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
        for (v, text) in sql::pending(version, false)? {
            tx.batch_execute(&text)?;
            tx.execute("UPDATE leasegate_schema SET version = $1", &[&v])?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl Engine for Postgres {
    const KIND: &'static str = "postgres";
    const LOCKS_ROWS: bool = true;

    fn write<T>(&self, f: impl FnOnce(&mut dyn Conn) -> Done<T>) -> Done<T> {
        let mut conn = self.pool.get()?;
        let mut tx = conn.transaction()?;
        let out = f(&mut tx)?;
        tx.commit()?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&mut dyn Conn) -> Done<T>) -> Done<T> {
        f(&mut self.pool.get()?)
    }

    fn schema_version(&self) -> Done<i64> {
        Ok(self
            .pool
            .get()?
            .query_one("SELECT version FROM leasegate_schema", &[])?
            .try_get(0)?)
    }

    /// One statement, outside an explicit transaction (see
    /// [`sql::CLAIM_DUE_LOCKING`]).
    fn claim_due(&self, claim: &Claim<'_>) -> Done<Vec<LeaseRow>> {
        let mut conn = self.pool.get()?;
        all(
            &mut conn,
            sql::CLAIM_DUE_LOCKING,
            &claim.params(),
            sql::lease,
        )
    }
}

/// The parameters as the driver binds them.
fn bind<'a>(params: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|v| match v {
            Value::Text(s) => s as &(dyn ToSql + Sync),
            Value::OptText(s) => s,
            Value::Int(i) => i,
        })
        .collect()
}

/// Statements on a pooled connection go through its statement cache.
impl Conn for pool::Conn<'_> {
    fn execute(&mut self, sql: &'static str, params: &Args<'_>) -> Done<usize> {
        Ok(pool::Conn::execute(self, pg(sql), &bind(params))? as usize)
    }

    fn each(&mut self, sql: &'static str, params: &Args<'_>, row: &mut EachRow<'_>) -> Done<()> {
        for r in self.query(pg(sql), &bind(params))? {
            row(&r)?;
        }
        Ok(())
    }
}

impl Conn for ::postgres::Transaction<'_> {
    fn execute(&mut self, sql: &'static str, params: &Args<'_>) -> Done<usize> {
        Ok(::postgres::Transaction::execute(self, pg(sql), &bind(params))? as usize)
    }

    fn each(&mut self, sql: &'static str, params: &Args<'_>, row: &mut EachRow<'_>) -> Done<()> {
        for r in self.query(pg(sql), &bind(params))? {
            row(&r)?;
        }
        Ok(())
    }
}

impl Row for ::postgres::Row {
    fn cell(&self, i: usize) -> Result<Cell, StoreError> {
        use ::postgres::types::Type;
        let kind = self.columns().get(i).map(|c| c.type_().clone());
        Ok(match kind {
            Some(Type::INT8) => self
                .try_get::<_, Option<i64>>(i)?
                .map_or(Cell::Null, Cell::Int),
            Some(Type::INT4) => self
                .try_get::<_, Option<i32>>(i)?
                .map_or(Cell::Null, |n| Cell::Int(n.into())),
            Some(Type::BOOL) => self
                .try_get::<_, Option<bool>>(i)?
                .map_or(Cell::Null, |b| Cell::Int(b.into())),
            _ => self
                .try_get::<_, Option<String>>(i)?
                .map_or(Cell::Null, Cell::Text),
        })
    }
}

/// `statement` as PostgreSQL numbers its placeholders, rewritten once per
/// statement for the life of the process (the statements are a fixed set).
fn pg(statement: &'static str) -> &'static str {
    static TEXTS: Mutex<Vec<(&'static str, &'static str)>> = Mutex::new(Vec::new());
    let mut texts = TEXTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, text)) = texts.iter().find(|(s, _)| std::ptr::eq(*s, statement)) {
        return text;
    }
    let text: &'static str = Box::leak(sql::dollars(statement).into_boxed_str());
    texts.push((statement, text));
    text
}

type Params<'p> = [&'p (dyn ::postgres::types::ToSql + Sync)];
