//! A small pool of PostgreSQL connections with a cache of prepared
//! statements per connection. A request waits for a free connection a
//! bounded time, and a broken connection is dropped, never handed out
//! again.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ::postgres::{Client, Row, Statement};

use super::Params;
use super::StoreError;
use super::tls::MakeRustls;

/// How long a caller waits for a free connection before the request fails.
pub(super) const POOL_WAIT: Duration = Duration::from_secs(10);

/// At most `max` connections, made on demand and kept while they work; a
/// broken one (the database restarted, a replica failed over) is dropped
/// when it comes back and the next caller gets a new one.
pub(super) struct Pool {
    pub(super) url: String,
    pub(super) config: ::postgres::Config,
    pub(super) tls: Option<MakeRustls>,
    pub(super) idle: Mutex<Vec<Pooled>>,
    pub(super) free: Mutex<usize>,
    pub(super) freed: Condvar,
    pub(super) max: usize,
}

/// A connection out of the [`Pool`]; back in when dropped.
pub(super) struct Conn<'a> {
    pub(super) pool: &'a Pool,
    pub(super) client: Option<Pooled>,
}

/// A client and the statements prepared on it: PostgreSQL then parses
/// and plans each of the store's statements once per connection, not at
/// every call (that was most of the server's CPU per lease request in the
/// fleet benchmark).
pub(super) struct Pooled {
    pub(super) client: Client,
    pub(super) statements: HashMap<String, Statement>,
}

/// Statements kept per connection, at most: the store has fewer.
pub(super) const STATEMENTS: usize = 256;

impl Pool {
    pub(super) fn get(&self) -> Result<Conn<'_>, StoreError> {
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

    pub(super) fn connect(&self) -> Result<Client, StoreError> {
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

/// The same calls as [`Client`]'s, through the connection's prepared
/// statements (these win over the `Deref` to the client). A failed call
/// forgets them: a statement may be stale after another replica migrated
/// the schema, and is prepared again next time.
impl Conn<'_> {
    pub(super) fn pooled(&mut self) -> &mut Pooled {
        self.client
            .as_mut()
            .expect("a Conn holds its client until dropped")
    }

    pub(super) fn statement(&mut self, sql: &str) -> Result<Statement, ::postgres::Error> {
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

    pub(super) fn cached<T>(
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

    pub(super) fn execute(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<u64, ::postgres::Error> {
        self.cached(sql, |c, st| c.execute(st, params))
    }

    pub(super) fn query(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, ::postgres::Error> {
        self.cached(sql, |c, st| c.query(st, params))
    }

    pub(super) fn query_one(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Row, ::postgres::Error> {
        self.cached(sql, |c, st| c.query_one(st, params))
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
