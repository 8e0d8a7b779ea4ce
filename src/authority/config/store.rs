//! `[store]` in the authority's configuration: SQLite in `state_dir`, or
//! PostgreSQL by URL, checked so that a bad URL, a password in it or
//! plain TCP to another machine is a configuration problem (exit 78), not
//! a failure at the first request. Types and checks only.

use std::path::PathBuf;

use crate::config::read_secret;
use crate::config::table::Table;
use crate::secret::Secret;

/// `[store]`: SQLite in `state_dir` unless a PostgreSQL `url` is set.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    Sqlite,
    Postgres(PostgresConfig),
}

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://user@host[:port]/database`, never with a password.
    pub url: String,
    pub password: Option<Secret>,
    pub tls: StoreTls,
    /// PEM CA certificates for the database's certificate; the system's
    /// CAs when absent.
    pub ca_file: Option<PathBuf>,
    /// Connections this replica keeps at most.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreTls {
    /// TLS, with the server's certificate verified.
    Require,
    /// Plain TCP: only to a loopback address or a unix socket.
    Off,
}

/// `[store]`: with `url`, PostgreSQL, checked here so that a bad URL, a
/// password in it or plain TCP to another machine is a configuration
/// problem (exit 78), not a failure at the first request.
pub(super) fn read_store(t: &Table<'_>) -> StoreConfig {
    let tls = t.choice(
        "tls",
        &[("require", StoreTls::Require), ("off", StoreTls::Off)],
        StoreTls::Require,
    );
    let password = read_secret(t, "password", "password_file");
    let ca_file = t.path("ca_file");
    let max_connections = t.integer("max_connections", 16, 1, 1000) as usize;
    let Some(url) = t.string("url") else {
        for key in [
            "password",
            "password_file",
            "tls",
            "ca_file",
            "max_connections",
        ] {
            if t.has(key) {
                t.problem(key, "applies only with url (a PostgreSQL store)");
            }
        }
        return StoreConfig::Sqlite;
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        t.problem(
            "url",
            format!(
                "{:?} is no PostgreSQL URL (postgres://user@host/database); leave url out for SQLite in state_dir",
                crate::config::redact_url(&url)
            ),
        );
        return StoreConfig::Sqlite;
    }
    match url.parse::<postgres::Config>() {
        Err(e) => t.problem("url", format!("{:?}: {e}", crate::config::redact_url(&url))),
        Ok(pg) => {
            if pg.get_password().is_some() {
                t.problem(
                    "url",
                    "must not carry a password (it would show in logs and status); use password_file",
                );
            }
            if url.contains("sslmode=") {
                t.problem("url", "sslmode in the URL: set store.tls instead");
            }
            if tls == StoreTls::Off
                && let Some(remote) = connects_to(&pg).into_iter().find(|t| !t.is_local())
            {
                t.problem(
                    "tls",
                    format!(
                        "\"off\" is allowed only for a loopback address or a unix socket; the client would connect to {remote}"
                    ),
                );
            }
        }
    }
    if tls == StoreTls::Require
        && let Err(p) = crate::config::tls::client_config(ca_file.as_deref(), None)
    {
        t.problem(
            if p.key == "ca_file" { "ca_file" } else { "tls" },
            p.message,
        );
    }
    StoreConfig::Postgres(PostgresConfig {
        url,
        password,
        tls,
        ca_file,
        max_connections,
    })
}

/// Where the PostgreSQL client connects, as it decides: the i-th
/// `hostaddr` when given (the i-th host then only names the server for
/// TLS), else the i-th host.
fn connects_to(pg: &postgres::Config) -> Vec<Target> {
    let (hosts, addrs) = (pg.get_hosts(), pg.get_hostaddrs());
    (0..hosts.len().max(addrs.len()))
        .filter_map(|i| match (addrs.get(i), hosts.get(i)) {
            (Some(ip), _) => Some(Target::Ip(*ip)),
            (None, Some(postgres::config::Host::Unix(_))) => Some(Target::Unix),
            (None, Some(postgres::config::Host::Tcp(name))) => Some(Target::Name(name.clone())),
            (None, None) => None,
        })
        .collect()
}

/// One place [`connects_to`] finds.
enum Target {
    Unix,
    Ip(std::net::IpAddr),
    Name(String),
}

impl Target {
    fn is_local(&self) -> bool {
        match self {
            Target::Unix => true,
            Target::Ip(ip) => ip.is_loopback(),
            Target::Name(name) => {
                name == "localhost"
                    || name
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix => f.write_str("a unix socket"),
            Target::Ip(ip) => write!(f, "{ip}"),
            Target::Name(name) => f.write_str(name),
        }
    }
}
