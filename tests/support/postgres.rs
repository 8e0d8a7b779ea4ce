//! Real PostgreSQL (Debian's `postgresql` package) for the store tests: a
//! cluster made by `initdb` in a temporary directory, served by `postgres`
//! on a free loopback port, stopped by its PID. PostgreSQL refuses to run
//! as root, so under root the cluster belongs to, and the server runs as,
//! the `postgres` system user the package creates.
//!
//! Logins over TCP need a password (scram-sha-256), so the store's
//! `password_file` path is what the tests use. Each test takes a database
//! of its own ([`Postgres::database`]) on the one server of its test binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, tail, wait_until};

pub const SUPERUSER: &str = "postgres";
pub const PASSWORD: &str = "pg-pw-for-tests";

pub struct Postgres {
    pub port: u16,
    child: Child,
    dir: TempDir,
    /// Owner of the cluster when the tests run as root.
    owner: Option<(u32, u32)>,
    bin: PathBuf,
    databases: AtomicU32,
}

/// The newest installed server's bin directory.
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("no PostgreSQL server under /usr/lib/postgresql: install the Debian package postgresql (tests/install-servers.sh)")
    })
}

/// uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_user() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .expect("running as root needs the postgres system user (Debian package postgresql)")
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = server_bin();
        let dir = tempfile::tempdir().unwrap();
        let owner = super::is_root().then(postgres_user);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let pwfile = dir.path().join("pwfile");
        fs::write(&pwfile, PASSWORD).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let out = as_owner(Command::new(bin.join("initdb")), owner)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = None;
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = launch(&bin, dir.path(), owner, port) {
                pg = Some((port, child));
                break;
            }
        }
        let Some((port, child)) = pg else {
            panic!(
                "postgres did not start; log:\n{}",
                tail(&dir.path().join("postgres.log"), 4000)
            );
        };
        Postgres {
            port,
            child,
            dir,
            owner,
            bin,
            databases: AtomicU32::new(0),
        }
    }

    /// A new, empty database; its name.
    pub fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        self.admin(&format!("CREATE DATABASE {name}"));
        name
    }

    /// The store URL for `database` (no password: that is in
    /// [`Postgres::password_file`]).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// A file with the superuser's password, mode 0600, in `dir`.
    pub fn password_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("pg-password");
        fs::write(&path, PASSWORD).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Runs SQL as the superuser over the unix socket; panics on failure.
    pub fn admin(&self, sql: &str) -> String {
        let out = as_owner(Command::new(self.bin.join("psql")), self.owner)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Postgres {
    /// The server's (postmaster's) PID; its connections are its children.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server (fast shutdown) and waits until it no longer
    /// accepts connections; the files stay, it is not started again.
    pub fn stop(&self) {
        super::signal(self.child.id(), libc::SIGINT);
        let down = wait_until(Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
        assert!(down, "postgres did not stop");
    }

    /// A client on `database` as the superuser, over TCP: what a test
    /// reads of the store beside the authority.
    pub fn client(&self, database: &str) -> ::postgres::Client {
        ::postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user={SUPERUSER} password={PASSWORD} dbname={database} connect_timeout=10",
                self.port
            ),
            ::postgres::NoTls,
        )
        .unwrap_or_else(|e| panic!("connect to {database}: {e}"))
    }

    /// `database` as SQL text (`pg_dump`): what a stolen backup would show.
    pub fn dump(&self, database: &str) -> String {
        let out = as_owner(Command::new(self.bin.join("pg_dump")), self.owner)
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, database])
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump {database}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dump = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(dump.contains("CREATE TABLE"), "pg_dump printed no schema");
        dump
    }
}

fn as_owner(mut command: Command, owner: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
        command.env("HOME", "/tmp");
    }
    command.current_dir("/");
    command
}

/// Starts the server on `port` and waits until it accepts connections;
/// None if it exits first (the port may have been taken meanwhile).
fn launch(bin: &Path, dir: &Path, owner: Option<(u32, u32)>, port: u16) -> Option<Child> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .unwrap();
    if let Some((uid, gid)) = owner {
        let _ = std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid));
    }
    let mut child = as_owner(Command::new(bin.join("postgres")), owner)
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string()])
        .arg("-k")
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            // Test data need not survive a power cut; the tests run faster.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start postgres");
    // pg_isready says yes only once the server accepts logins (a socket
    // that exists may still answer "the database system is starting up").
    let ready = wait_until(Duration::from_secs(30), || {
        matches!(child.try_wait(), Ok(None))
            && dir.join(format!(".s.PGSQL.{port}")).exists()
            && as_owner(Command::new(bin.join("pg_isready")), owner)
                .arg("-h")
                .arg(dir)
                .args(["-p", &port.to_string(), "-U", SUPERUSER, "-q"])
                .status()
                .is_ok_and(|s| s.success())
    });
    if !ready {
        super::signal(child.id(), libc::SIGKILL);
        let _ = child.wait();
        return None;
    }
    Some(child)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for clients).
        super::signal(self.child.id(), libc::SIGINT);
        if super::wait_exit(&mut self.child, Duration::from_secs(10)).is_none() {
            super::signal(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- postgres log (tail) ---\n{}",
                tail(&self.dir.path().join("postgres.log"), 3000)
            );
        }
    }
}
