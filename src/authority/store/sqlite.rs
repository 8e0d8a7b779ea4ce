//! The SQLite engine: one file in the state dir (WAL mode, `synchronous =
//! FULL`, so a committed row survives a crash and the admin commands can
//! read and write while the server runs). The embedded default for a
//! single authority; several processes on one file are safe (SQLite's
//! locks), several machines are not: that is what [`super::postgres`] is
//! for. `PRAGMA user_version` counts the migrations run. It never talks to
//! InfluxDB and never holds a secret in clear.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, TransactionBehavior, params_from_iter};

use super::engine::{Args, Claim, Conn, Done, EachRow, Engine, SqlStore, Value, all, one};
use super::sql::{self, Cell, Row};
use super::{LeaseRow, StoreError};

/// The SQLite engine: one connection for everything that writes, one
/// caller at a time (SQLite writes one transaction at a time anyway), and
/// one for the reads that need no transaction (authenticating a bearer,
/// reading a lease), which in WAL mode neither wait for the writer nor
/// hold it up: in the fleet benchmark every request queued behind the
/// others' statements on the one connection.
pub struct Sqlite {
    conn: Mutex<Connection>,
    reader: Mutex<Connection>,
}

/// The SQLite [`Store`](super::Store).
pub type SqliteStore = SqlStore<Sqlite>;

impl SqlStore<Sqlite> {
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
        Ok(SqlStore {
            engine: Sqlite {
                conn: Mutex::new(conn),
                reader: Mutex::new(reader),
            },
        })
    }

    /// The number of migrations this build knows.
    pub fn known_version() -> i64 {
        sql::MIGRATIONS.len() as i64
    }
}

impl Sqlite {
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Engine for Sqlite {
    const KIND: &'static str = "sqlite";
    const LOCKS_ROWS: bool = false;

    fn write<T>(&self, f: impl FnOnce(&mut dyn Conn) -> Done<T>) -> Done<T> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done = f(&mut Lite(&tx))?;
        tx.commit()?;
        Ok(done)
    }

    fn read<T>(&self, f: impl FnOnce(&mut dyn Conn) -> Done<T>) -> Done<T> {
        f(&mut Lite(&self.reader()))
    }

    fn schema_version(&self) -> Done<i64> {
        Ok(self
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Looks before taking the write lock (most passes find nothing due,
    /// and admin commands and requests wait for that lock too), then claims
    /// and reads back in one transaction.
    fn claim_due(&self, claim: &Claim<'_>) -> Done<Vec<LeaseRow>> {
        let all_five = claim.params();
        let look = &all_five[..3];
        let any = one(&mut Lite(&self.conn()), sql::ANY_CLAIMABLE, look, |r| {
            r.flag(0)
        })?;
        if any != Some(true) {
            return Ok(Vec::new());
        }
        self.write(|c| {
            c.execute(sql::CLAIM, &all_five)?;
            all(c, sql::CLAIMED, &all_five[..4], sql::lease)
        })
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (v, text) in sql::pending(version, true)? {
        tx.execute_batch(&text)?;
        tx.pragma_update(None, "user_version", v)?;
    }
    tx.commit()?;
    Ok(())
}

/// A connection or transaction of the engine's, for the shared steps.
struct Lite<'c>(&'c Connection);

impl Conn for Lite<'_> {
    fn execute(&mut self, sql: &'static str, params: &Args<'_>) -> Done<usize> {
        Ok(self
            .0
            .prepare_cached(sql)?
            .execute(params_from_iter(params))?)
    }

    fn each(&mut self, sql: &'static str, params: &Args<'_>, row: &mut EachRow<'_>) -> Done<()> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut rows = stmt.query(params_from_iter(params))?;
        while let Some(r) = rows.next()? {
            row(r)?;
        }
        Ok(())
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Value::Text(s) => s.to_sql(),
            Value::OptText(s) => s.to_sql(),
            Value::Int(i) => i.to_sql(),
        }
    }
}

impl Row for rusqlite::Row<'_> {
    fn cell(&self, i: usize) -> Result<Cell, StoreError> {
        use rusqlite::types::ValueRef;
        Ok(match self.get_ref(i)? {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(n) => Cell::Int(n),
            ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
            other => {
                let kind = other.data_type();
                return Err(StoreError::Corrupt(
                    format!("column {i}"),
                    format!("{kind} where text or a number must be"),
                ));
            }
        })
    }
}

fn restrict_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::store::Store;

    #[test]
    fn migrates_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), sql::MIGRATIONS.len() as i64);
        drop(s);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), sql::MIGRATIONS.len() as i64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        s.engine
            .conn()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(s);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn every_statement_it_runs_is_valid_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("a.db")).unwrap();
        let conn = s.engine.conn();
        for sql in sql::SHARED
            .into_iter()
            .chain([sql::ANY_CLAIMABLE, sql::CLAIM, sql::CLAIMED])
        {
            if let Err(e) = conn.prepare(sql) {
                panic!("{e}: {sql}");
            }
        }
    }
}
