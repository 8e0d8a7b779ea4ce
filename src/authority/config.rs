//! The authority's configuration (`leasegate-authority.toml`): types,
//! defaults and the rules between keys (roles must name a backend that
//! exists, `default_ttl` must not exceed `max_ttl`, plain HTTP only on
//! loopback).
//!
//! Like the gateway's, checking has no side effects beyond reading the
//! secret files the config names.

pub mod fleet;
mod store;

pub use store::{PostgresConfig, StoreConfig, StoreTls};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::table::Table;
use crate::config::{ConfigError, check_text, load_file, log_level, read_secret};
use crate::secret::Secret;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/leasegate-authority/leasegate-authority.toml";

/// The commented example printed by `leasegate-authority config example`.
pub const EXAMPLE: &str = include_str!("../../examples/leasegate-authority.toml");

#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    pub listen: SocketAddr,
    /// This replica's own URL: its certificate is for this host.
    pub public_url: String,
    /// Every URL of the deployment, in the order gateways try them (what
    /// tickets carry); `[public_url]` when `public_urls` is unset.
    pub public_urls: Vec<String>,
    pub state_dir: PathBuf,
    pub tls: bool,
    /// PEM certificate chain and key; when absent a self-signed pair is made
    /// in `state_dir` on first start.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The deployment's CA, which tickets pin: with `ca_key_file`, each
    /// replica signs its own certificate with it; with `cert_file`, only
    /// the certificate, as the issuer of that one. Without either, the CA
    /// is made on first start in `state_dir` (`ca.pem`, `ca-key.pem`).
    pub ca_cert_file: Option<PathBuf>,
    pub ca_key_file: Option<PathBuf>,
    pub log_level: Option<log::LevelFilter>,
    /// How long audit records are kept; older ones are pruned hourly.
    pub audit_retention: Duration,
    /// Names this deployment in every credential it makes in InfluxDB, so
    /// that deployments sharing one never touch each other's. Made at
    /// random on first start when not set.
    pub deployment_id: Option<String>,
    /// Where tickets, identities and leases live (`[store]`).
    pub store: StoreConfig,
    /// How fast enrollments are taken (`[enrollment]`).
    pub enrollment: EnrollmentLimits,
    pub backends: Vec<Backend>,
    pub roles: Vec<Role>,
    /// What gateways' reports make of the fleet (`[fleet]`).
    pub fleet: fleet::FleetSettings,
    /// `[metrics] listen`: the Prometheus page of the fleet, loopback only;
    /// off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// The web page (`[web]`).
    pub web: fleet::WebSettings,
}

/// `[enrollment]`: enrollments are the one unauthenticated request, so
/// each client address gets a token bucket (`per_address_burst`, then one
/// per `per_address_every`), and only `concurrency` run at once per
/// replica (the others wait a little, then get 429). A site whose
/// gateways all enroll through one NAT raises the burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnrollmentLimits {
    pub per_address_burst: u32,
    pub per_address_every: Duration,
    pub concurrency: usize,
}

impl Default for EnrollmentLimits {
    fn default() -> Self {
        EnrollmentLimits {
            per_address_burst: 20,
            per_address_every: Duration::from_secs(1),
            concurrency: 16,
        }
    }
}

/// A backend's InfluxDB API: the type the gateway's configuration and
/// the lease's target use too.
pub use crate::wire::api::InfluxApi as BackendKind;

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub kind: BackendKind,
    pub url: String,
    /// v2 only.
    pub org_id: Option<String>,
    /// v2 and v3.
    pub admin_token: Option<Secret>,
    /// v1 only.
    pub admin_username: Option<String>,
    /// v1 only.
    pub admin_password: Option<Secret>,
    /// v3 only: an Enterprise server, where tokens can be scoped to a
    /// database. Core cannot scope them.
    pub enterprise: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    /// Ticket attributes that select this role; all must be equal.
    pub matches: BTreeMap<String, String>,
    pub backend: String,
    /// Bucket name for v2, database name for v1 and v3; `{identity}` in it
    /// stands for the identity's name (see [`Role::target_for`]).
    pub target: String,
    pub access: Vec<Access>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// Live (pending or active) leases one identity may hold at once.
    pub max_active_leases: u32,
}

/// The placeholder a role's bucket or database may carry.
pub const IDENTITY_PLACEHOLDER: &str = "{identity}";

impl Role {
    /// The bucket or database for leases of the identity named `identity`:
    /// with a template such as `sensors_{identity}`, each identity writes
    /// (and, with write access, can delete) only its own.
    pub fn target_for(&self, identity: &str) -> String {
        self.target.replace(IDENTITY_PLACEHOLDER, identity)
    }

    /// Whether each identity gets a bucket or database of its own.
    pub fn per_identity(&self) -> bool {
        self.target.contains(IDENTITY_PLACEHOLDER)
    }
}

impl AuthorityConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_file(path, read)
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        check_text(path, text, read)
    }
}

fn read(t: &Table<'_>) -> Option<AuthorityConfig> {
    let listen = read_listen(t);
    let tls = t.choice("tls", &[("on", true), ("off", false)], true);
    if let Some(addr) = listen
        && !tls
        && !addr.ip().is_loopback()
    {
        t.problem(
            "tls",
            "\"off\" is allowed only with a loopback listen address",
        );
    }
    let public_url = read_public_url(t, tls);
    let public_urls = read_public_urls(t, tls, public_url.as_deref());
    let state_dir = read_state_dir(t);
    let (cert_file, key_file) = read_cert_pair(t);
    let (ca_cert_file, ca_key_file) = read_ca_pair(t, cert_file.is_some());
    let log_level = log_level(t);
    let audit_retention = read_audit_retention(t);
    let deployment_id = read_deployment_id(t);
    let store = match t.table("store") {
        Some(st) => {
            let store = store::read_store(&st);
            st.finish();
            store
        }
        None => StoreConfig::Sqlite,
    };
    let enrollment = match t.table("enrollment") {
        Some(et) => {
            let limits = read_enrollment(&et);
            et.finish();
            limits
        }
        None => EnrollmentLimits::default(),
    };
    let (fleet, metrics_listen) = fleet::read_tables(t);
    let web = fleet::read_web(t);
    let backends = read_backends(t);
    let roles = read_roles(t, &backends);
    Some(AuthorityConfig {
        listen: listen?,
        public_url: public_url?,
        public_urls,
        state_dir,
        tls,
        cert_file,
        key_file,
        ca_cert_file,
        ca_key_file,
        log_level,
        audit_retention,
        deployment_id,
        store,
        enrollment,
        backends,
        roles,
        fleet,
        metrics_listen,
        web,
    })
}

fn read_enrollment(t: &Table<'_>) -> EnrollmentLimits {
    let d = EnrollmentLimits::default();
    EnrollmentLimits {
        per_address_burst: t.integer(
            "per_address_burst",
            d.per_address_burst.into(),
            1,
            1_000_000,
        ) as u32,
        per_address_every: t.duration(
            "per_address_every",
            d.per_address_every,
            Duration::from_millis(1),
        ),
        concurrency: t.integer("concurrency", d.concurrency as u64, 1, 1024) as usize,
    }
}

/// `listen`, parsed; None (with a problem noted) when it is no address.
fn read_listen(t: &Table<'_>) -> Option<SocketAddr> {
    let listen = t
        .string("listen")
        .unwrap_or_else(|| "0.0.0.0:7443".to_owned());
    match listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            t.problem(
                "listen",
                format!("{listen:?} is not an address:port such as \"0.0.0.0:7443\""),
            );
            None
        }
    }
}

/// `public_url`, which must carry no credentials and whose scheme must
/// match `tls`: gateways reach the authority by it.
fn read_public_url(t: &Table<'_>, tls: bool) -> Option<String> {
    let public_url = t.required_string("public_url");
    if let Some(url) = &public_url
        && let Err(problem) = check_public_url(url, tls)
    {
        t.problem("public_url", problem);
    }
    public_url
}

/// `public_urls`: every URL of the deployment, in the order gateways try
/// them; `public_url` alone when unset.
fn read_public_urls(t: &Table<'_>, tls: bool, public_url: Option<&str>) -> Vec<String> {
    let Some(urls) = t.strings("public_urls") else {
        return public_url.map(str::to_owned).into_iter().collect();
    };
    if urls.is_empty() || urls.len() > crate::wire::ticket::MAX_URLS {
        t.problem(
            "public_urls",
            format!("must list 1 to {} URLs", crate::wire::ticket::MAX_URLS),
        );
    }
    for (i, url) in urls.iter().enumerate() {
        if let Err(problem) = check_public_url(url, tls) {
            t.problem(&format!("public_urls[{i}]"), problem);
        } else if urls[..i].contains(url) {
            t.problem(&format!("public_urls[{i}]"), "is listed twice");
        }
    }
    urls
}

fn check_public_url(url: &str, tls: bool) -> Result<(), String> {
    if url_has_userinfo(url) {
        // Every ticket carries the URL, and tickets are handed around.
        return Err(format!(
            "{:?} carries credentials; tickets would hand them to every gateway",
            crate::config::redact_url(url)
        ));
    }
    let scheme_ok = if tls {
        url.starts_with("https://")
    } else {
        url.starts_with("http://")
    };
    if !scheme_ok {
        return Err(format!(
            "{:?} must start with {}",
            crate::config::redact_url(url),
            if tls {
                "https://"
            } else {
                "http:// (tls is off)"
            }
        ));
    }
    if url
        .parse::<ureq::http::Uri>()
        .map_or(true, |u| u.host().is_none())
    {
        return Err(format!(
            "{:?} is not a URL with a host",
            crate::config::redact_url(url)
        ));
    }
    Ok(())
}

/// `state_dir`, which must be absolute.
fn read_state_dir(t: &Table<'_>) -> PathBuf {
    let state_dir = t
        .path("state_dir")
        .unwrap_or_else(|| PathBuf::from("/var/lib/leasegate-authority"));
    if !state_dir.is_absolute() {
        t.problem(
            "state_dir",
            format!("{} is not an absolute path", state_dir.display()),
        );
    }
    state_dir
}

/// `cert_file` and `key_file`: both or neither, since one is no use
/// without the other.
fn read_cert_pair(t: &Table<'_>) -> (Option<PathBuf>, Option<PathBuf>) {
    let cert_file = t.path("cert_file");
    let key_file = t.path("key_file");
    if let Some(key) = &key_file {
        crate::config::check_secret_mode(t, "key_file", key);
    }
    if cert_file.is_some() != key_file.is_some() {
        t.problem(
            if cert_file.is_some() {
                "key_file"
            } else {
                "cert_file"
            },
            "set cert_file and key_file together",
        );
    }
    (cert_file, key_file)
}

/// `ca_cert_file` and `ca_key_file`: both, to sign this replica's own
/// certificate; the certificate alone only beside `cert_file` (it names
/// that certificate's issuer, for tickets to pin); a key alone never.
fn read_ca_pair(t: &Table<'_>, has_cert_file: bool) -> (Option<PathBuf>, Option<PathBuf>) {
    let ca_cert_file = t.path("ca_cert_file");
    let ca_key_file = t.path("ca_key_file");
    if let Some(key) = &ca_key_file {
        crate::config::check_secret_mode(t, "ca_key_file", key);
    }
    match (&ca_cert_file, &ca_key_file) {
        (None, Some(_)) => t.problem("ca_cert_file", "set it with ca_key_file"),
        (Some(_), None) if !has_cert_file => t.problem(
            "ca_key_file",
            "set it with ca_cert_file (or set cert_file and key_file, signed by that CA)",
        ),
        (Some(_), Some(_)) if has_cert_file => t.problem(
            "ca_key_file",
            "not with cert_file: either the CA signs this replica's certificate, or cert_file is the certificate",
        ),
        _ => {}
    }
    (ca_cert_file, ca_key_file)
}

/// `audit_retention`, from a day to 100 years.
fn read_audit_retention(t: &Table<'_>) -> Duration {
    let audit_retention = t.duration(
        "audit_retention",
        Duration::from_secs(365 * 24 * 3600),
        Duration::from_secs(24 * 3600),
    );
    // Past this the cutoff would leave the clock's range; "keep for ever"
    // is written as this much.
    if audit_retention > Duration::from_secs(100 * 365 * 24 * 3600) {
        t.problem("audit_retention", "must be at most 100 years");
    }
    audit_retention
}

/// `deployment_id`, if set: short and plain, as it goes into the name of
/// every credential made in InfluxDB.
fn read_deployment_id(t: &Table<'_>) -> Option<String> {
    let deployment_id = t.string("deployment_id");
    if let Some(d) = &deployment_id
        && (d.is_empty()
            || d.len() > 32
            || !d
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    {
        t.problem(
            "deployment_id",
            "must be 1 to 32 characters of a-z, 0-9 and -",
        );
    }
    deployment_id
}

/// Every `[[backend]]`: at least one, and no name twice (roles name them).
fn read_backends(t: &Table<'_>) -> Vec<Backend> {
    let backends: Vec<Backend> = t
        .tables("backend")
        .into_iter()
        .filter_map(|b| {
            let backend = read_backend(&b);
            b.finish();
            backend
        })
        .collect();
    if backends.is_empty() && t.tables_len("backend").unwrap_or(0) == 0 {
        t.problem("backend", "missing: add at least one [[backend]]");
    }
    for (i, b) in backends.iter().enumerate() {
        if backends[..i].iter().any(|o| o.name == b.name) {
            t.problem(
                &format!("backend[{i}].name"),
                format!("{:?} is used by an earlier backend", b.name),
            );
        }
    }
    backends
}

/// Every `[[role]]`, at least one, each checked against `backends`.
fn read_roles(t: &Table<'_>, backends: &[Backend]) -> Vec<Role> {
    let role_tables = t.tables("role");
    if t.tables_len("role").unwrap_or(0) == 0 {
        t.problem("role", "missing: add at least one [[role]]");
    }
    role_tables
        .into_iter()
        .filter_map(|r| {
            let role = read_role(&r, backends);
            r.finish();
            role
        })
        .collect()
}

fn read_backend(t: &Table<'_>) -> Option<Backend> {
    let name = t.required_string("name");
    let kind = t.choice(
        "kind",
        &BackendKind::ALL.map(|k| (k.wire_name(), k)),
        BackendKind::V2,
    );
    if !t.has("kind") {
        t.problem(
            "kind",
            "missing (required): influxdb-v1, influxdb-v2 or influxdb-v3",
        );
    }
    let url = t.required_string("url");
    if let Some(u) = &url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            t.problem(
                "url",
                format!(
                    "{:?} must start with http:// or https://",
                    crate::config::redact_url(u)
                ),
            );
        } else if crate::config::redact_url(u) != *u {
            t.problem("url", "must not carry credentials; use admin_username and admin_password_file or admin_token_file");
        }
    }
    let org_id = t.string("org_id");
    let admin_token = read_secret(t, "admin_token", "admin_token_file");
    let admin_username = t.string("admin_username");
    let admin_password = read_secret(t, "admin_password", "admin_password_file");
    let enterprise = t.bool("enterprise", false);
    if enterprise && kind != BackendKind::V3 {
        t.problem("enterprise", "applies only to influxdb-v3 backends");
    }
    match kind {
        BackendKind::V1 => {
            if admin_username.is_none() {
                t.problem("admin_username", "missing (required for influxdb-v1)");
            }
            if admin_password.is_none() {
                t.problem(
                    "admin_password_file",
                    "missing (required for influxdb-v1, or admin_password)",
                );
            }
        }
        BackendKind::V2 | BackendKind::V3 => {
            if kind == BackendKind::V2 && org_id.is_none() {
                t.problem("org_id", "missing (required for influxdb-v2)");
            }
            if admin_token.is_none() {
                t.problem(
                    "admin_token_file",
                    "missing (required for this kind, or admin_token)",
                );
            }
        }
    }
    Some(Backend {
        name: name?,
        kind,
        url: url?.trim_end_matches('/').to_owned(),
        org_id,
        admin_token,
        admin_username,
        admin_password,
        enterprise,
    })
}

fn read_role(t: &Table<'_>, backends: &[Backend]) -> Option<Role> {
    let name = t.required_string("name");
    let matches: BTreeMap<String, String> = t.string_map("match").into_iter().collect();
    if matches.is_empty() {
        t.problem("match", "missing: a role needs at least one attribute to match, such as { service = \"iot-sensor\" }");
    }
    let backend_name = t.required_string("backend");
    let backend = backend_name
        .as_ref()
        .and_then(|n| backends.iter().find(|b| &b.name == n));
    if let (Some(n), None) = (&backend_name, backend) {
        t.problem("backend", format!("{n:?} names no [[backend]]"));
    }
    let target = read_target(t, backend);
    if let Some(target) = &target {
        check_target_template(t, backend, target);
    }
    let max_active_leases = t.integer("max_active_leases", 5, 1, 10_000) as u32;
    let access = read_access(t);
    let (default_ttl, max_ttl) = read_ttls(t);
    Some(Role {
        name: name?,
        matches,
        backend: backend_name?,
        target: target?,
        access,
        default_ttl,
        max_ttl,
        max_active_leases,
    })
}

/// A role's `bucket` (influxdb-v2) or `database` (v1 and v3), whichever
/// its backend's kind uses; either when the backend is unknown, which is
/// already a problem of its own.
fn read_target(t: &Table<'_>, backend: Option<&Backend>) -> Option<String> {
    let bucket = t.string("bucket");
    let database = t.string("database");
    match backend.map(|b| b.kind) {
        Some(BackendKind::V2) => {
            if database.is_some() {
                t.problem("database", "influxdb-v2 backends use bucket");
            }
            bucket.or_else(|| {
                t.problem("bucket", "missing (required for an influxdb-v2 backend)");
                None
            })
        }
        Some(_) => {
            if bucket.is_some() {
                t.problem(
                    "bucket",
                    "influxdb-v1 and influxdb-v3 backends use database",
                );
            }
            database.or_else(|| {
                t.problem(
                    "database",
                    "missing (required for influxdb-v1 and influxdb-v3 backends)",
                );
                None
            })
        }
        None => bucket.or(database),
    }
}

/// Notes a problem if a role's bucket or database carries a placeholder
/// other than [`IDENTITY_PLACEHOLDER`], or nothing but it.
fn check_target_template(t: &Table<'_>, backend: Option<&Backend>, target: &str) {
    let key = if bucket_key(backend) {
        "bucket"
    } else {
        "database"
    };
    let literal = target.replace(IDENTITY_PLACEHOLDER, "");
    if literal.contains(['{', '}']) {
        t.problem(
            key,
            format!("{target:?}: the only placeholder is {IDENTITY_PLACEHOLDER}"),
        );
    } else if literal.is_empty() {
        // An identity named `_internal` would get that database.
        t.problem(
            key,
            format!("{target:?}: put a prefix or suffix around {IDENTITY_PLACEHOLDER}"),
        );
    }
}

/// A role's `access`: write when not set, and never empty.
fn read_access(t: &Table<'_>) -> Vec<Access> {
    let access: Vec<Access> = t
        .strings("access")
        .unwrap_or_else(|| vec!["write".to_owned()])
        .iter()
        .filter_map(|a| match a.as_str() {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            other => {
                t.problem("access", format!("{other:?} is not one of read, write"));
                None
            }
        })
        .collect();
    if t.tables_len("access") == Some(0) {
        t.problem("access", "must list at least one of read, write");
    }
    access
}

/// A role's `default_ttl` and `max_ttl`, the default no longer than the
/// most.
fn read_ttls(t: &Table<'_>) -> (Duration, Duration) {
    let default_ttl = t.duration(
        "default_ttl",
        Duration::from_secs(15 * 60),
        Duration::from_secs(1),
    );
    let max_ttl = t.duration(
        "max_ttl",
        Duration::from_secs(60 * 60),
        Duration::from_secs(1),
    );
    if default_ttl > max_ttl {
        t.problem("default_ttl", "must not be longer than max_ttl");
    }
    (default_ttl, max_ttl)
}

/// Whether a URL carries `user[:password]@` before its host. Read from the
/// text itself, so a URL no parser accepts cannot slip through.
fn url_has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

fn bucket_key(backend: Option<&Backend>) -> bool {
    backend.is_some_and(|b| b.kind == BackendKind::V2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_passes_the_check() {
        let c = AuthorityConfig::from_toml(Path::new("example"), EXAMPLE).unwrap();
        assert_eq!(c.roles[0].backend, c.backends[0].name);
    }

    #[test]
    fn cross_key_rules() {
        let text = r#"
listen = "0.0.0.0:8080"
tls = "off"
public_url = "http://a:8080"
[[backend]]
name = "main"
kind = "influxdb-v2"
url = "http://influx:8086"
[[role]]
name = "r"
match = { service = "x" }
backend = "other"
access = ["write", "delete"]
default_ttl = "2h"
max_ttl = "1h"
"#;
        let lines = AuthorityConfig::from_toml(Path::new("a.toml"), text)
            .unwrap_err()
            .lines();
        assert_eq!(
            lines,
            vec![
                "a.toml: tls: \"off\" is allowed only with a loopback listen address",
                "a.toml: backend[0].org_id: missing (required for influxdb-v2)",
                "a.toml: backend[0].admin_token_file: missing (required for this kind, or admin_token)",
                "a.toml: role[0].backend: \"other\" names no [[backend]]",
                "a.toml: role[0].access: \"delete\" is not one of read, write",
                "a.toml: role[0].default_ttl: must not be longer than max_ttl",
            ]
        );
    }

    #[test]
    fn a_public_url_with_credentials_is_refused_without_showing_them() {
        let text = EXAMPLE.replacen(
            "public_url = \"https://",
            "public_url = \"https://admin:hunter2@",
            1,
        );
        assert_ne!(text, EXAMPLE, "the example sets an https public_url");
        let lines = AuthorityConfig::from_toml(Path::new("a.toml"), &text)
            .unwrap_err()
            .lines();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("public_url") && l.contains("carries credentials")),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains("hunter2")), "{lines:?}");
        // Also when the URL is one no parser would take.
        assert!(url_has_userinfo("https://admin:p{w@host:7443/x"));
        assert!(!url_has_userinfo("https://host:7443/a@b?c=d@e"));
    }

    #[test]
    fn enrollment_limits_default_and_are_checked_by_key() {
        let c = AuthorityConfig::from_toml(Path::new("a.toml"), EXAMPLE).unwrap();
        assert_eq!(c.enrollment, EnrollmentLimits::default());
        let text = format!(
            "{EXAMPLE}\n[enrollment]\nper_address_burst = 500\nper_address_every = \"100ms\"\nconcurrency = 64\n"
        );
        let c = AuthorityConfig::from_toml(Path::new("a.toml"), &text).unwrap();
        assert_eq!(
            c.enrollment,
            EnrollmentLimits {
                per_address_burst: 500,
                per_address_every: Duration::from_millis(100),
                concurrency: 64,
            }
        );
        let text = format!(
            "{EXAMPLE}\n[enrollment]\nper_address_burst = 0\nconcurrency = 5000\nburst = 3\n"
        );
        let lines = AuthorityConfig::from_toml(Path::new("a.toml"), &text)
            .unwrap_err()
            .lines();
        for key in [
            "enrollment.per_address_burst",
            "enrollment.concurrency",
            "enrollment.burst",
        ] {
            assert!(
                lines.iter().any(|l| l.contains(key)),
                "{key} not named: {lines:?}"
            );
        }
    }

    #[test]
    fn the_ca_files_go_together_or_beside_a_certificate_of_ones_own() {
        let check = |keys: &str| {
            let text = EXAMPLE.replacen("tls = \"on\"\n", &format!("tls = \"on\"\n{keys}"), 1);
            AuthorityConfig::from_toml(Path::new("a.toml"), &text).map_err(|e| e.lines())
        };
        let c = check("ca_cert_file = \"/c.pem\"\nca_key_file = \"/k.pem\"\n").unwrap();
        assert_eq!(c.ca_key_file.as_deref(), Some(Path::new("/k.pem")));
        check("cert_file = \"/l.pem\"\nkey_file = \"/lk.pem\"\nca_cert_file = \"/c.pem\"\n")
            .unwrap();
        for (keys, key) in [
            ("ca_key_file = \"/k.pem\"\n", "ca_cert_file"),
            ("ca_cert_file = \"/c.pem\"\n", "ca_key_file"),
            (
                "cert_file = \"/l.pem\"\nkey_file = \"/lk.pem\"\nca_cert_file = \"/c.pem\"\nca_key_file = \"/k.pem\"\n",
                "ca_key_file",
            ),
        ] {
            let lines = check(keys).unwrap_err();
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("a.toml: {key}:"))),
                "{keys}: {lines:?}"
            );
        }
    }

    #[test]
    fn public_urls_list_the_deployment_and_each_is_checked() {
        let c = AuthorityConfig::from_toml(Path::new("a.toml"), EXAMPLE).unwrap();
        assert_eq!(c.public_urls, std::slice::from_ref(&c.public_url));
        let with = |urls: &str| {
            let text = EXAMPLE.replacen(
                "tls = \"on\"\n",
                &format!("tls = \"on\"\npublic_urls = {urls}\n"),
                1,
            );
            AuthorityConfig::from_toml(Path::new("a.toml"), &text).map_err(|e| e.lines())
        };
        let c = with(r#"["https://a.example:7443", "https://b.example:7443"]"#).unwrap();
        assert_eq!(c.public_urls.len(), 2);
        for (urls, key) in [
            (r#"[]"#, "public_urls"),
            (
                r#"["https://a.example", "http://b.example"]"#,
                "public_urls[1]",
            ),
            (
                r#"["https://a.example", "https://a.example"]"#,
                "public_urls[1]",
            ),
            (r#"["https://u:pw@a.example"]"#, "public_urls[0]"),
        ] {
            let lines = with(urls).unwrap_err();
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("a.toml: {key}:"))),
                "{urls}: {lines:?}"
            );
            assert!(!lines.iter().any(|l| l.contains(":pw@")), "{lines:?}");
        }
    }

    fn with_store(store: &str) -> Result<AuthorityConfig, Vec<String>> {
        let text = format!("{EXAMPLE}\n[store]\n{store}\n");
        AuthorityConfig::from_toml(Path::new("a.toml"), &text).map_err(|e| e.lines())
    }

    #[test]
    fn the_store_is_sqlite_unless_a_postgres_url_is_set() {
        let c = AuthorityConfig::from_toml(Path::new("a.toml"), EXAMPLE).unwrap();
        assert!(matches!(c.store, StoreConfig::Sqlite));
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        crate::config::tls::tests::write_secret(&pw, "s3cret-db-pw\n");
        let c = with_store(&format!(
            "url = \"postgres://leasegate@127.0.0.1:5432/leasegate\"\npassword_file = \"{}\"\ntls = \"off\"\nmax_connections = 4",
            pw.display()
        ))
        .unwrap();
        let StoreConfig::Postgres(pg) = &c.store else {
            panic!("a postgres url makes a PostgreSQL store");
        };
        assert_eq!(pg.password.as_ref().unwrap().expose(), "s3cret-db-pw");
        assert_eq!((pg.tls, pg.max_connections), (StoreTls::Off, 4));
        assert!(
            !format!("{c:?}").contains("s3cret-db-pw"),
            "Debug shows the database password"
        );
    }

    #[test]
    fn each_bad_store_setting_is_named() {
        let cases = [
            (
                "url = \"postgres://leasegate:hunter2@db.example/leasegate\"",
                "a.toml: store.url: must not carry a password (it would show in logs and status); use password_file",
            ),
            (
                "url = \"postgres://leasegate@db.example/leasegate\"\ntls = \"off\"",
                "a.toml: store.tls: \"off\" is allowed only for a loopback address or a unix socket",
            ),
            (
                "url = \"mysql://db.example/leasegate\"",
                "a.toml: store.url: \"mysql://db.example/leasegate\" is no PostgreSQL URL (postgres://user@host/database); leave url out for SQLite in state_dir",
            ),
            (
                "url = \"postgres://leasegate@db.example/leasegate?sslmode=disable\"",
                "a.toml: store.url: sslmode in the URL: set store.tls instead",
            ),
            (
                "password_file = \"/nonexistent\"",
                "a.toml: store.password_file: cannot read /nonexistent: No such file or directory (os error 2)",
            ),
            (
                "max_connections = 4",
                "a.toml: store.max_connections: applies only with url (a PostgreSQL store)",
            ),
            (
                "url = \"postgres://leasegate@127.0.0.1/l\"\nca_file = \"/nonexistent.pem\"",
                "a.toml: store.ca_file",
            ),
            ("uri = \"postgres://x@y/z\"", "a.toml: store.uri"),
            // The client connects to hostaddr when it is given, whatever
            // the host says.
            (
                "url = \"postgres://leasegate@localhost/l?hostaddr=192.0.2.10\"\ntls = \"off\"",
                "a.toml: store.tls: \"off\" is allowed only for a loopback address or a unix socket; the client would connect to 192.0.2.10",
            ),
            (
                "url = \"postgres://leasegate@/l?hostaddr=192.0.2.10\"\ntls = \"off\"",
                "a.toml: store.tls: \"off\" is allowed only for a loopback address or a unix socket; the client would connect to 192.0.2.10",
            ),
            (
                "url = \"postgres://leasegate@localhost,127.0.0.1/l?hostaddr=127.0.0.1,10.0.0.7\"\ntls = \"off\"",
                "a.toml: store.tls: \"off\" is allowed only for a loopback address or a unix socket; the client would connect to 10.0.0.7",
            ),
        ];
        for (store, want) in cases {
            let lines = with_store(store).expect_err(store);
            assert!(
                lines.iter().any(|l| l.starts_with(want)),
                "{store:?}: want {want:?} in {lines:?}"
            );
            assert!(!lines.iter().any(|l| l.contains("hunter2")), "{lines:?}");
        }
    }
}
