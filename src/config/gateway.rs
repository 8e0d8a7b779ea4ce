//! The gateway's configuration (`leasegate.toml`): types, defaults and the
//! rules between keys.
//!
//! Must never reach the network or create files: checking a config has no
//! side effects, so `config check` is safe to run on a live gateway.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::reader::{Problems, Table};
use super::tls::TlsClient;
use super::{ConfigError, check_text, load_file, log_level, read_secret};
use crate::payload::TopicTemplate;
use crate::secret::Secret;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/leasegate/leasegate.toml";

/// The commented example printed by `leasegate config example`.
pub const EXAMPLE: &str = include_str!("../../examples/leasegate.toml");

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub state_dir: PathBuf,
    pub ticket_dir: PathBuf,
    /// Where the status socket lives; by default systemd's
    /// `$RUNTIME_DIRECTORY` (/run/leasegate), else the state dir.
    pub runtime_dir: Option<PathBuf>,
    /// Overrides the default log level when `RUST_LOG` is not set.
    pub log_level: Option<log::LevelFilter>,
    /// How long `run` may take to drain after SIGTERM before it exits.
    pub shutdown_timeout: Duration,
    pub mqtt: Mqtt,
    /// Where writes go and with what credential.
    pub writing: Writing,
    /// `[metrics] listen`: a loopback address for the Prometheus text
    /// endpoint; None (the default) serves none.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub batch: BatchLimits,
    pub spool: SpoolSettings,
    /// How points stamped on receipt are corrected (`[clock]`).
    pub clock: ClockSettings,
    /// Budget of the dead-letter file and its one rotated predecessor.
    pub dead_letter_max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mqtt {
    pub url: BrokerUrl,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keep_alive: Duration,
    /// Largest MQTT packet accepted from the broker.
    pub max_packet_size: u64,
    /// Most tags and fields in one point of a message.
    pub point_limits: crate::lineproto::Limits,
    pub subscribe: Vec<Subscription>,
    /// Set exactly when the url is `mqtts://`.
    pub tls: Option<TlsClient>,
    /// Follow Mosquitto's `$SYS` drop counter and warn when it rises.
    pub watch_broker_drops: bool,
    /// Publish a retained status message on `leasegate/<client id>/status`
    /// every `status_interval`, with a last will of "offline".
    pub publish_status: bool,
    pub status_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub topic: String,
    pub format: Format,
    /// Unit of the timestamps in this subscription's payloads.
    pub precision: Precision,
    /// Topic levels that become tags and the measurement.
    pub topic_template: Option<TopicTemplate>,
    /// Tags added to every point of this subscription.
    pub tags: Vec<(String, String)>,
    /// Measurement for JSON and value payloads that name none.
    pub measurement: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Line,
    Json,
    Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
}

impl Precision {
    /// Nanoseconds per unit of this precision.
    pub fn nanos(self) -> i64 {
        match self {
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
        }
    }
}

/// The InfluxDB API of a write: one type with the wire's and the
/// authority's.
pub use crate::api::InfluxApi as Api;

/// How the gateway writes: exactly one of the two, so no code has to
/// handle both or neither.
#[derive(Debug, Clone, PartialEq)]
pub enum Writing {
    /// `[influxdb]` names a destination and a credential of its own.
    Static(Influx),
    /// Credentials leased from an authority after enrolling with a ticket;
    /// `[influxdb]`, if present, only overrides the URL, gzip and timeout.
    Leased(LeaseConfig),
}

impl Writing {
    pub fn lease(&self) -> Option<&LeaseConfig> {
        match self {
            Writing::Leased(l) => Some(l),
            Writing::Static(_) => None,
        }
    }

    pub fn is_leased(&self) -> bool {
        self.lease().is_some()
    }

    /// Whether write bodies are gzipped.
    pub fn gzip(&self) -> bool {
        match self {
            Writing::Static(i) => i.gzip,
            Writing::Leased(l) => l.gzip,
        }
    }

    /// How long one write may take.
    pub fn timeout(&self) -> Duration {
        match self {
            Writing::Static(i) => i.timeout,
            Writing::Leased(l) => l.timeout,
        }
    }
}

/// Static InfluxDB write settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Influx {
    pub api: Api,
    pub url: String,
    /// v1 and v3.
    pub database: Option<String>,
    /// v1 only; empty means the database's default retention policy.
    pub retention_policy: Option<String>,
    /// v2 only.
    pub org: Option<String>,
    /// v2 only.
    pub bucket: Option<String>,
    /// v1 only.
    pub username: Option<String>,
    /// v1 only.
    pub password: Option<Secret>,
    /// v2 and v3.
    pub token: Option<Secret>,
    /// The file the password (v1) or token (v2, v3) came from, read again
    /// when InfluxDB refuses the credential, so a rotated one is taken up
    /// without a restart.
    pub secret_file: Option<PathBuf>,
    pub gzip: bool,
    pub timeout: Duration,
}

/// Leased writing: the identity to enroll as, the lease to ask for, and
/// what of the lease's write settings the gateway overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseConfig {
    pub identity_name: String,
    pub ttl: Option<Duration>,
    /// Trust the authority through the system's CA certificates rather
    /// than the certificate the ticket pins.
    pub system_trust: bool,
    /// `[influxdb] url`: replaces the URL the lease names.
    pub url_override: Option<String>,
    pub gzip: bool,
    pub timeout: Duration,
}

impl Config {
    /// Where the running daemon puts its status socket.
    pub fn daemon_runtime_dir(&self) -> PathBuf {
        self.runtime_dir
            .clone()
            .or_else(|| std::env::var_os("RUNTIME_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| self.state_dir.clone())
    }

    /// Where `leasegate status` looks for it: the configured dir, else the
    /// unit's (/run/leasegate) and the state dir.
    pub fn status_dirs(&self) -> Vec<PathBuf> {
        match &self.runtime_dir {
            Some(d) => vec![d.clone()],
            None => std::env::var_os("RUNTIME_DIRECTORY")
                .map(PathBuf::from)
                .into_iter()
                .chain([PathBuf::from("/run/leasegate"), self.state_dir.clone()])
                .collect(),
        }
    }
}

/// Batch limits: a write goes when it reaches `max_lines` or `max_bytes`,
/// or `flush_interval` after its first line; a backlog goes in full batches
/// back to back.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchLimits {
    pub max_lines: usize,
    pub max_bytes: u64,
    pub flush_interval: Duration,
}

/// The disk spool between MQTT acks and InfluxDB writes.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolSettings {
    pub max_bytes: u64,
    pub fsync: FsyncPolicy,
    pub overflow: Overflow,
    /// The longest a received message waits for others to share its
    /// commit (and so for its ack): group commit.
    pub commit_delay: Duration,
}

/// `[clock]`: when receipt stamps are corrected, and how long they wait
/// for a clock worth trusting (README, "Receipt times").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSettings {
    /// A difference from the trusted time larger than this is corrected;
    /// a smaller one is left as the gateway's clock stamped it.
    pub max_offset: Duration,
    /// The longest points stamped on receipt wait after start for a
    /// trusted time before they go as stamped (and are counted).
    pub max_wait: Duration,
}

impl Default for ClockSettings {
    fn default() -> Self {
        ClockSettings {
            max_offset: Duration::from_secs(2),
            max_wait: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// One fsync per group of received messages, before they are acked.
    Batch,
    /// At most one fsync per interval: a power loss may lose up to one
    /// interval of acknowledged data.
    Interval(Duration),
    /// Leave flushing to the kernel.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Delete the oldest data (counted and logged as dropped).
    DropOldest,
    /// Refuse new data (counted and logged as dropped).
    DropNewest,
    /// Stop acking, so the broker holds new data until there is room.
    Block,
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load_file(path, read)
    }

    /// Checks TOML text; `path` is used only in messages.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        check_text(path, text, read)
    }
}

/// Reads the whole file, recording problems; returns `None` when a required
/// part is missing (the problems say which).
fn read(t: &Table<'_>) -> Option<Config> {
    let (state_dir, ticket_dir, runtime_dir) = read_dirs(t);
    let log_level = log_level(t);
    let shutdown_timeout = t.duration(
        "shutdown_timeout",
        Duration::from_secs(10),
        Duration::from_secs(1),
    );
    let mqtt = match t.table("mqtt") {
        Some(m) => {
            let mqtt = read_mqtt(&m);
            m.finish();
            mqtt
        }
        None => {
            if !t.has("mqtt") {
                t.problem("mqtt", "missing table (required)");
            }
            None
        }
    };
    let writing = read_writing(t, mqtt.as_ref().map(|m| m.client_id.as_str()));
    let metrics_listen = section(t, "metrics", read_metrics);
    let batch = section(t, "batch", read_batch);
    let spool = section(t, "spool", read_spool);
    let clock = section(t, "clock", read_clock);
    let dead_letter_max_bytes = section(t, "dead_letter", |d| {
        d.size("max_bytes", 16 << 20, 64 << 10, 1 << 30)
    });
    Some(Config {
        state_dir,
        ticket_dir,
        runtime_dir,
        log_level,
        shutdown_timeout,
        mqtt: mqtt?,
        writing: writing?,
        metrics_listen,
        batch,
        spool,
        clock,
        dead_letter_max_bytes,
    })
}

/// `state_dir`, `ticket_dir` (default: inside the state dir) and
/// `runtime_dir`, each of which must be absolute.
fn read_dirs(t: &Table<'_>) -> (PathBuf, PathBuf, Option<PathBuf>) {
    let state_dir = t
        .path("state_dir")
        .unwrap_or_else(|| PathBuf::from("/var/lib/leasegate"));
    let ticket_dir = t
        .path("ticket_dir")
        .unwrap_or_else(|| state_dir.join("tickets"));
    let runtime_dir = t.path("runtime_dir");
    for (key, dir) in [
        ("state_dir", Some(&state_dir)),
        ("ticket_dir", Some(&ticket_dir)),
        ("runtime_dir", runtime_dir.as_ref()),
    ]
    .into_iter()
    .filter_map(|(k, d)| Some((k, d?)))
    {
        if !dir.is_absolute() {
            t.problem(key, format!("{} is not an absolute path", dir.display()));
        }
    }
    (state_dir, ticket_dir, runtime_dir)
}

/// Static or leased writing. Where to write or with what credential, in
/// `[influxdb]`, means static writing (as before leases); without either
/// the gateway writes with leases, and `[influxdb]` only overrides the URL,
/// gzip and timeout. `client_id` is the default identity name.
fn read_writing(t: &Table<'_>, client_id: Option<&str>) -> Option<Writing> {
    // Read whichever way the gateway writes, so that they are never
    // reported as unknown keys.
    let (ttl, system_trust) = section(t, "lease", |l| {
        let ttl = l
            .has("ttl")
            .then(|| l.duration("ttl", Duration::from_secs(900), Duration::from_secs(1)));
        let system = l.choice("trust", &[("pinned", false), ("system", true)], false);
        (ttl, system)
    });
    let named = t.string("identity_name");
    let influx_table = t.table("influxdb");
    let static_credentials = influx_table
        .as_ref()
        .is_some_and(|i| STATIC_KEYS.into_iter().any(|k| i.has(k)));
    let (url_override, gzip, timeout) = match influx_table {
        Some(i) if static_credentials => {
            let influx = read_influx(&i);
            i.finish();
            return influx.map(Writing::Static);
        }
        Some(i) => {
            let o = read_lease_overrides(&i);
            i.finish();
            o
        }
        None => (None, true, Duration::from_secs(10)),
    };
    let identity_name = named.or_else(|| client_id.map(str::to_owned))?;
    if !crate::api::identity_name_is_valid(&identity_name) {
        t.problem(
            "identity_name",
            format!(
                "{identity_name:?} (from {}) must be 1 to 128 of A-Z a-z 0-9 . _ -; set identity_name",
                if t.has("identity_name") { "identity_name" } else { "mqtt.client_id" }
            ),
        );
    }
    Some(Writing::Leased(LeaseConfig {
        identity_name,
        ttl,
        system_trust,
        url_override,
        gzip,
        timeout,
    }))
}

/// `[metrics] listen`: a loopback address, since the page has no
/// authentication.
fn read_metrics(m: &Table<'_>) -> Option<std::net::SocketAddr> {
    let listen = m.string("listen")?;
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Some(a),
        Ok(_) => {
            m.problem(
                "listen",
                format!("{listen:?} is not a loopback address; the endpoint has no authentication"),
            );
            None
        }
        Err(_) => {
            m.problem(
                "listen",
                format!("{listen:?} is not an address:port such as \"127.0.0.1:9464\""),
            );
            None
        }
    }
}

fn read_mqtt(t: &Table<'_>) -> Option<Mqtt> {
    let url = t
        .required_string("url")
        .and_then(|u| match parse_broker_url(&u) {
            Ok(url) => Some(url),
            Err(e) => {
                t.problem("url", e);
                None
            }
        });
    let client_id = t.string("client_id").unwrap_or_else(default_client_id);
    if client_id.is_empty() || client_id.len() > 65_535 {
        t.problem("client_id", "must be 1 to 65535 bytes");
    }
    let username = t.string("username");
    let password = read_secret(t, "password", "password_file");
    if password.is_some() && username.is_none() {
        t.problem(
            "password",
            "set username too: MQTT sends a password only with a username",
        );
    }
    let keep_alive = t.duration(
        "keep_alive",
        Duration::from_secs(30),
        Duration::from_secs(5),
    );
    // MQTT carries the keep-alive as 16-bit seconds.
    if keep_alive > Duration::from_secs(u64::from(u16::MAX)) {
        t.problem(
            "keep_alive",
            "must be at most 65535s (18h 12m 15s), MQTT's limit",
        );
    }
    let max_packet_size = t.size("max_packet_size", 1 << 20, 1024, 256 << 20);
    let defaults = crate::lineproto::Limits::default();
    let point_limits = crate::lineproto::Limits {
        max_tags: t.integer("max_tags_per_point", defaults.max_tags as u64, 1, 65_535) as usize,
        max_fields: t.integer(
            "max_fields_per_point",
            defaults.max_fields as u64,
            1,
            65_535,
        ) as usize,
    };
    let subscribe: Vec<Subscription> = t
        .tables("subscribe")
        .into_iter()
        .filter_map(|s| {
            let sub = read_subscription(&s);
            s.finish();
            sub
        })
        .collect();
    if !t.has("subscribe") || t.tables_len("subscribe") == Some(0) {
        t.problem(
            "subscribe",
            "missing: add at least one [[mqtt.subscribe]] table with a topic",
        );
    }
    let tls = read_tls(t, url.as_ref());
    let watch_broker_drops = t.bool("watch_broker_drops", true);
    let publish_status = t.bool("publish_status", false);
    let status_interval = t.duration(
        "status_interval",
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    Some(Mqtt {
        url: url?,
        client_id,
        username,
        password,
        keep_alive,
        max_packet_size,
        point_limits,
        subscribe,
        tls,
        watch_broker_drops,
        publish_status,
        status_interval,
    })
}

/// The TLS settings of an `mqtts://` broker; refused beside `mqtt://`,
/// where they would suggest a protection the connection does not have.
fn read_tls(t: &Table<'_>, url: Option<&BrokerUrl>) -> Option<TlsClient> {
    const KEYS: [&str; 3] = ["ca_file", "client_cert_file", "client_key_file"];
    let ca_file = t.path("ca_file");
    let cert = t.path("client_cert_file");
    let key = t.path("client_key_file");
    match url {
        Some(u) if u.tls => {}
        Some(_) => {
            for k in KEYS.into_iter().filter(|k| t.has(k)) {
                t.problem(k, "only used with an mqtts:// url");
            }
            return None;
        }
        None => return None,
    }
    let client = match (&cert, &key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        (Some(_), None) => {
            t.problem("client_key_file", "missing: client_cert_file needs its key");
            return None;
        }
        (None, Some(_)) => {
            t.problem(
                "client_cert_file",
                "missing: client_key_file needs its certificate",
            );
            return None;
        }
    };
    match super::tls::client_config(ca_file.as_deref(), client) {
        Ok(tls) => Some(tls),
        Err(p) => {
            t.problem(p.key, p.message);
            None
        }
    }
}

fn read_subscription(t: &Table<'_>) -> Option<Subscription> {
    let topic = t.required_string("topic");
    if let Some(topic) = &topic
        && let Err(e) = check_topic_filter(topic)
    {
        t.problem("topic", e);
    }
    let format = t.choice(
        "format",
        &[
            ("line", Format::Line),
            ("json", Format::Json),
            ("value", Format::Value),
        ],
        Format::Line,
    );
    let precision = t.choice(
        "precision",
        &[
            ("ns", Precision::Nanoseconds),
            ("us", Precision::Microseconds),
            ("ms", Precision::Milliseconds),
            ("s", Precision::Seconds),
        ],
        Precision::Nanoseconds,
    );
    let topic_template =
        t.string("topic_template")
            .and_then(|text| match TopicTemplate::parse(&text) {
                Ok(template) => Some(template),
                Err(e) => {
                    t.problem("topic_template", e);
                    None
                }
            });
    let tags = t.string_map("tags");
    for (key, value) in &tags {
        if key.is_empty() || key.starts_with('_') || value.is_empty() {
            t.problem(
                "tags",
                format!("tag {key:?} = {value:?} needs a key not starting with '_' and a value"),
            );
        }
    }
    let measurement = t.string("measurement");
    let measured = measurement.is_some()
        || topic_template
            .as_ref()
            .is_some_and(TopicTemplate::has_measurement);
    if format == Format::Value && !measured {
        t.problem(
            "measurement",
            "missing: a value payload names no measurement; set measurement or a {measurement} level in topic_template",
        );
    }
    Some(Subscription {
        topic: topic?,
        format,
        precision,
        topic_template,
        tags,
        measurement,
    })
}

/// Keys of `[influxdb]` that make the gateway write statically: a
/// destination or a credential of its own.
const STATIC_KEYS: [&str; 10] = [
    "api",
    "database",
    "retention_policy",
    "org",
    "bucket",
    "username",
    "password",
    "password_file",
    "token",
    "token_file",
];

/// `[influxdb]` with none of [`STATIC_KEYS`]: what the gateway overrides of
/// a lease's write settings (url, gzip, timeout). The rest comes from the
/// lease.
fn read_lease_overrides(t: &Table<'_>) -> (Option<String>, bool, Duration) {
    let url = t.string("url").and_then(|u| match check_http_url(&u) {
        Ok(()) => Some(u.trim_end_matches('/').to_owned()),
        Err(e) => {
            t.problem("url", e);
            None
        }
    });
    let gzip = t.bool("gzip", true);
    let timeout = t.duration(
        "timeout",
        Duration::from_secs(10),
        Duration::from_millis(100),
    );
    (url, gzip, timeout)
}

fn read_influx(t: &Table<'_>) -> Option<Influx> {
    let api = t.choice(
        "api",
        &[("v1", Api::V1), ("v2", Api::V2), ("v3", Api::V3)],
        Api::V1,
    );
    let url = t
        .required_string("url")
        .and_then(|u| match check_http_url(&u) {
            Ok(()) => Some(u.trim_end_matches('/').to_owned()),
            Err(e) => {
                t.problem("url", e);
                None
            }
        });
    let influx = Influx {
        api,
        url: url.clone().unwrap_or_default(),
        database: t.string("database"),
        retention_policy: t.string("retention_policy"),
        org: t.string("org"),
        bucket: t.string("bucket"),
        username: t.string("username"),
        password: read_secret(t, "password", "password_file"),
        token: read_secret(t, "token", "token_file"),
        secret_file: match api {
            Api::V1 => t.path("password_file"),
            Api::V2 | Api::V3 => t.path("token_file"),
        },
        gzip: t.bool("gzip", true),
        timeout: t.duration(
            "timeout",
            Duration::from_secs(10),
            Duration::from_millis(100),
        ),
    };
    check_influx_keys(t, &influx);
    url.map(|_| influx)
}

/// Records a problem for each key the chosen API needs and lacks, or has
/// and does not use.
fn check_influx_keys(t: &Table<'_>, i: &Influx) {
    let Influx {
        api,
        database,
        retention_policy,
        org,
        bucket,
        username,
        password,
        token,
        ..
    } = i;
    let api = *api;
    let need = |key: &str, present: bool, why: &str| {
        if !present {
            t.problem(key, format!("missing (required {why})"));
        }
    };
    let refuse = |key: &str, present: bool, why: &str| {
        if present {
            t.problem(key, format!("not used {why}"));
        }
    };
    match api {
        Api::V1 => {
            need("database", database.is_some(), "with api = \"v1\"");
            refuse("org", org.is_some(), "with api = \"v1\" (it uses database)");
            refuse(
                "bucket",
                bucket.is_some(),
                "with api = \"v1\" (it uses database)",
            );
            refuse(
                "token",
                token.is_some(),
                "with api = \"v1\" (it uses username and password)",
            );
            if username.is_some() != password.is_some() {
                t.problem(
                    if username.is_some() {
                        "password"
                    } else {
                        "username"
                    },
                    "set username and password together",
                );
            }
        }
        Api::V2 | Api::V3 if password.is_some() => {
            t.problem(
                if t.has("password") {
                    "password"
                } else {
                    "password_file"
                },
                "not used with api = \"v2\" or \"v3\" (they use token or token_file)",
            );
        }
        Api::V2 => {
            need("org", org.is_some(), "with api = \"v2\"");
            need("bucket", bucket.is_some(), "with api = \"v2\"");
            need(
                "token",
                token.is_some(),
                "with api = \"v2\" (or token_file)",
            );
            refuse(
                "database",
                database.is_some(),
                "with api = \"v2\" (it uses org and bucket)",
            );
            refuse(
                "username",
                username.is_some(),
                "with api = \"v2\" (it uses token)",
            );
        }
        Api::V3 => {
            need("database", database.is_some(), "with api = \"v3\"");
            need(
                "token",
                token.is_some(),
                "with api = \"v3\" (or token_file)",
            );
            refuse("org", org.is_some(), "with api = \"v3\" (it uses database)");
            refuse(
                "username",
                username.is_some(),
                "with api = \"v3\" (it uses token)",
            );
        }
    }
    if retention_policy.is_some() && api != Api::V1 {
        t.problem("retention_policy", "only used with api = \"v1\"");
    }
}

/// Reads an optional table; when it is absent, reading an empty table
/// yields the defaults, so they are written in one place.
fn section<T>(t: &Table<'_>, key: &'static str, read: impl Fn(&Table<'_>) -> T) -> T {
    match t.table(key) {
        Some(table) => {
            let value = read(&table);
            table.finish();
            value
        }
        None => read(&Table::root(&toml::Table::new(), &Problems::default())),
    }
}

fn read_batch(t: &Table<'_>) -> BatchLimits {
    BatchLimits {
        max_lines: t.integer("max_lines", 5000, 1, 1_000_000) as usize,
        max_bytes: t.size("max_bytes", 1 << 20, 1024, 64 << 20),
        flush_interval: t.duration(
            "flush_interval",
            Duration::from_secs(1),
            Duration::from_millis(10),
        ),
    }
}

/// `spool.commit_delay` by default: long enough for a page of one-point
/// messages to gather at 100 messages a second, short enough that every
/// ack goes out within a second (figures: BENCHMARKS.md, "rates gateways
/// see").
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(750);
const MAX_COMMIT_DELAY: Duration = Duration::from_secs(5);

fn read_spool(t: &Table<'_>) -> SpoolSettings {
    let max_bytes = t.size("max_bytes", 256 << 20, 64 << 10, 1 << 40);
    let fsync = t.choice(
        "fsync",
        &[
            ("batch", Some(FsyncPolicy::Batch)),
            ("interval", None),
            ("never", Some(FsyncPolicy::Never)),
        ],
        Some(FsyncPolicy::Batch),
    );
    let interval = t.duration(
        "fsync_interval",
        Duration::from_secs(1),
        Duration::from_millis(10),
    );
    if fsync.is_some() && t.has("fsync_interval") {
        t.problem("fsync_interval", "only used with fsync = \"interval\"");
    }
    let overflow = t.choice(
        "overflow",
        &[
            ("drop_oldest", Overflow::DropOldest),
            ("drop_newest", Overflow::DropNewest),
            ("block", Overflow::Block),
        ],
        Overflow::DropOldest,
    );
    let mut commit_delay = t.duration("commit_delay", DEFAULT_COMMIT_DELAY, Duration::ZERO);
    if commit_delay > MAX_COMMIT_DELAY {
        t.problem(
            "commit_delay",
            format!(
                "{} is longer than the maximum {}: every ack would wait that long",
                humantime::format_duration(commit_delay),
                humantime::format_duration(MAX_COMMIT_DELAY)
            ),
        );
        commit_delay = DEFAULT_COMMIT_DELAY;
    }
    SpoolSettings {
        max_bytes,
        fsync: fsync.unwrap_or(FsyncPolicy::Interval(interval)),
        overflow,
        commit_delay,
    }
}

fn read_clock(t: &Table<'_>) -> ClockSettings {
    let default = ClockSettings::default();
    let max_offset = t.duration("max_offset", default.max_offset, Duration::from_millis(1));
    let max_wait = t.duration("max_wait", default.max_wait, Duration::ZERO);
    if max_wait > Duration::from_secs(7 * 86_400) {
        t.problem(
            "max_wait",
            "longer than a week: points stamped on receipt would wait that long",
        );
    }
    ClockSettings {
        max_offset,
        max_wait,
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`; nothing after the
/// authority, because a path or credentials in the URL would be ignored
/// silently by MQTT.
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    let shown = super::redact_url(url);
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(format!("{shown:?} must start with mqtt:// or mqtts://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '@', '?']) {
        return Err(format!(
            "{shown:?} must be only scheme, host and port (set username and password as keys)"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 address in brackets has colons of its own.
        Some((h, p)) if !p.contains(']') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{shown:?} has an invalid port {p:?}"))?;
            (h, port)
        }
        _ => (rest, default_port),
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "{shown:?}: write an IPv6 address in brackets, as mqtt://[::1]:1883"
        ));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{shown:?} has no host"));
    }
    Ok(BrokerUrl {
        tls,
        host: host.to_owned(),
        port,
    })
}

fn check_http_url(url: &str) -> Result<(), String> {
    let shown = super::redact_url(url);
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{shown:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{shown:?} has no host"));
    }
    if rest
        .split('/')
        .next()
        .is_some_and(|authority| authority.contains('@'))
    {
        return Err(format!(
            "{shown:?} must not carry credentials; use username/password or token keys"
        ));
    }
    Ok(())
}

/// MQTT topic filter rules: `#` only as the whole last level, `+` only as a
/// whole level, no NUL, and a `$share/GROUP/` prefix with a filter after it.
pub fn check_topic_filter(filter: &str) -> Result<(), String> {
    let inner = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, f))
                if !group.is_empty() && !group.contains(['+', '#']) && !f.is_empty() =>
            {
                f
            }
            _ => {
                return Err(format!(
                    "{filter:?}: a shared subscription is $share/GROUP/FILTER"
                ));
            }
        },
        None => filter,
    };
    if inner.contains('\0') {
        return Err(format!("{filter:?} contains a NUL character"));
    }
    let levels: Vec<&str> = inner.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "{filter:?}: '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}

/// `leasegate-HOSTNAME`: stable across restarts, distinct per gateway, so the
/// broker finds this gateway's persistent session again.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if host.is_empty() {
        "leasegate".to_owned()
    } else {
        format!("leasegate-{host}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match Config::from_toml(Path::new("t.toml"), text) {
            Ok(_) => Vec::new(),
            Err(e) => e.lines(),
        }
    }

    const MINIMAL: &str = r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[mqtt.subscribe]]
topic = "sensors/#"
[influxdb]
url = "http://127.0.0.1:8086"
database = "sensors"
"#;

    #[test]
    fn example_passes_the_check() {
        let c = Config::from_toml(Path::new("example"), EXAMPLE).unwrap();
        assert_eq!(c.mqtt.subscribe.len(), 1);
        // The example writes with leases.
        let Writing::Leased(l) = c.writing else {
            panic!("static: {:?}", c.writing)
        };
        assert_eq!(l.identity_name, "gw-01");
        assert!(!l.system_trust && l.url_override.is_none() && l.ttl.is_none());
    }

    #[test]
    fn the_metrics_endpoint_is_loopback_only() {
        let base = "[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[[mqtt.subscribe]]\ntopic = \"a/#\"\n";
        let c = Config::from_toml(Path::new("m"), base).unwrap();
        assert_eq!(c.metrics_listen, None);
        assert!(!c.mqtt.publish_status);
        let ok = format!("{base}[metrics]\nlisten = \"127.0.0.1:9464\"\n");
        let c = Config::from_toml(Path::new("m"), &ok).unwrap();
        assert_eq!(c.metrics_listen.unwrap().port(), 9464);
        let open = format!("{base}[metrics]\nlisten = \"0.0.0.0:9464\"\n");
        let lines = Config::from_toml(Path::new("m"), &open)
            .unwrap_err()
            .lines();
        assert_eq!(
            lines,
            vec![
                "m: metrics.listen: \"0.0.0.0:9464\" is not a loopback address; the endpoint has no authentication"
            ]
        );
    }

    #[test]
    fn without_credentials_influxdb_only_overrides_the_lease() {
        let text = r#"
identity_name = "gw:1"
[lease]
ttl = "6s"
trust = "system"
[mqtt]
url = "mqtt://127.0.0.1"
[[mqtt.subscribe]]
topic = "a/#"
[influxdb]
url = "http://other:8086"
api = "v2"
"#;
        let leased = text.replace("api = \"v2\"\n", "");
        let lines = Config::from_toml(Path::new("l.toml"), &leased)
            .unwrap_err()
            .lines();
        assert_eq!(
            lines,
            vec![
                "l.toml: identity_name: \"gw:1\" (from identity_name) must be 1 to 128 of A-Z a-z 0-9 . _ -; set identity_name",
            ]
        );
        // A destination in [influxdb] means static writing, with its rules.
        let lines = Config::from_toml(Path::new("l.toml"), text)
            .unwrap_err()
            .lines();
        assert!(
            lines.iter().any(|l| l.contains("influxdb.org: missing")),
            "{lines:?}"
        );
        let ok = text
            .replace("identity_name = \"gw:1\"\n", "")
            .replace("api = \"v2\"\n", "");
        let c = Config::from_toml(Path::new("l.toml"), &ok).unwrap();
        let Writing::Leased(l) = c.writing else {
            panic!("static: {:?}", c.writing)
        };
        assert_eq!(l.ttl, Some(Duration::from_secs(6)));
        assert!(l.system_trust);
        assert_eq!(l.url_override.as_deref(), Some("http://other:8086"));
        assert!(l.identity_name.starts_with("leasegate"));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(Path::new("m"), MINIMAL).unwrap();
        assert_eq!(c.state_dir, Path::new("/var/lib/leasegate"));
        assert_eq!(c.ticket_dir, Path::new("/var/lib/leasegate/tickets"));
        assert_eq!(c.batch.max_lines, 5000);
        assert_eq!(c.batch.max_bytes, 1 << 20);
        assert_eq!(c.batch.flush_interval, Duration::from_secs(1));
        assert_eq!(c.spool.max_bytes, 256 << 20);
        assert_eq!(
            (c.spool.fsync, c.spool.overflow),
            (FsyncPolicy::Batch, Overflow::DropOldest)
        );
        assert!(c.mqtt.client_id.starts_with("leasegate"));
        assert_eq!(c.mqtt.subscribe[0].format, Format::Line);
        let Writing::Static(i) = c.writing else {
            panic!("leased: {:?}", c.writing)
        };
        assert_eq!((i.api, i.gzip), (Api::V1, true));
    }

    #[test]
    fn names_unknown_key_bad_duration_and_missing_url_together() {
        let p = problems(
            r#"
[mqtt]
client_id = "gw"
keep_alive = "soon"
[[mqtt.subscribe]]
topik = "a/#"
[influxdb]
url = "http://x:8086"
database = "d"
"#,
        );
        assert_eq!(
            p,
            vec![
                "t.toml: mqtt.url: missing (required)",
                "t.toml: mqtt.keep_alive: invalid duration \"soon\": expected number at 0",
                "t.toml: mqtt.subscribe[0].topic: missing (required)",
                "t.toml: mqtt.subscribe[0].topik: unknown key; did you mean \"topic\"?",
            ]
        );
    }

    #[test]
    fn secrets_never_appear_in_problems_or_debug() {
        let text = MINIMAL.replace(
            "database = \"sensors\"",
            "database = \"sensors\"\ntoken = \"s3cr3t-token\"",
        );
        let p = problems(&text).join("\n");
        assert!(p.contains("influxdb.token: not used"), "{p}");
        assert!(!p.contains("s3cr3t"));
        let text = MINIMAL.replace(
            "database = \"sensors\"",
            "database = \"sensors\"\nusername = \"u\"\npassword = \"pw-XYZ\"",
        );
        let c = Config::from_toml(Path::new("m"), &text).unwrap();
        assert!(!format!("{c:?}").contains("pw-XYZ"));
    }

    #[test]
    fn secret_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = MINIMAL.replace(
            "database = \"sensors\"",
            &format!(
                "database = \"sensors\"\nusername = \"u\"\npassword_file = {:?}",
                file.display().to_string()
            ),
        );
        let c = Config::from_toml(Path::new("m"), &text).unwrap();
        let Writing::Static(i) = c.writing else {
            panic!("leased: {:?}", c.writing)
        };
        assert_eq!(i.password.unwrap().expose(), "from-file");
        let missing = text.replace("/pw", "/nope");
        let p = problems(&missing).join("\n");
        assert!(p.contains("influxdb.password_file: cannot read"), "{p}");
    }

    #[test]
    fn api_rules() {
        let v2 = MINIMAL.replace("database = \"sensors\"", "api = \"v2\"\ndatabase = \"x\"");
        assert_eq!(
            problems(&v2),
            [
                "t.toml: influxdb.org: missing (required with api = \"v2\")",
                "t.toml: influxdb.bucket: missing (required with api = \"v2\")",
                "t.toml: influxdb.token: missing (required with api = \"v2\" (or token_file))",
                "t.toml: influxdb.database: not used with api = \"v2\" (it uses org and bucket)",
            ]
        );
    }

    #[test]
    fn empty_or_out_of_range_mqtt_settings_are_named() {
        let empty = MINIMAL.replace(
            "[[mqtt.subscribe]]\ntopic = \"sensors/#\"\n",
            "subscribe = []\n",
        );
        assert!(
            problems(&empty)
                .iter()
                .any(|p| p.contains("mqtt.subscribe: missing")),
            "{:?}",
            problems(&empty)
        );
        let long = MINIMAL.replace(
            "[[mqtt.subscribe]]",
            "keep_alive = \"1day\"\n[[mqtt.subscribe]]",
        );
        assert!(
            problems(&long)
                .iter()
                .any(|p| p.contains("mqtt.keep_alive: must be at most 65535s"))
        );
        let v3 = MINIMAL.replace(
            "database = \"sensors\"",
            "api = \"v3\"\ndatabase = \"s\"\ntoken = \"t\"\npassword = \"p\"",
        );
        assert!(
            problems(&v3)
                .iter()
                .any(|p| p.contains("influxdb.password: not used with api")),
            "{:?}",
            problems(&v3)
        );
    }

    #[test]
    fn spool_settings() {
        let text = format!(
            "{MINIMAL}[spool]\nmax_bytes = \"1MiB\"\nfsync = \"interval\"\nfsync_interval = \"250ms\"\noverflow = \"block\"\n"
        );
        let c = Config::from_toml(Path::new("m"), &text).unwrap();
        assert_eq!(c.spool.max_bytes, 1 << 20);
        assert_eq!(
            c.spool.fsync,
            FsyncPolicy::Interval(Duration::from_millis(250))
        );
        assert_eq!(c.spool.overflow, Overflow::Block);
        let bad = format!(
            "{MINIMAL}[spool]\nfsync = \"batch\"\nfsync_interval = \"1s\"\noverflow = \"drop_everything\"\n"
        );
        assert_eq!(
            problems(&bad),
            [
                "t.toml: spool.fsync_interval: only used with fsync = \"interval\"",
                "t.toml: spool.overflow: \"drop_everything\" is not one of drop_oldest, drop_newest, block",
            ]
        );
    }

    #[test]
    fn clock_settings_default_and_are_checked_by_key() {
        let c = Config::from_toml(Path::new("m"), MINIMAL).unwrap();
        assert_eq!(c.clock, ClockSettings::default());
        let set = format!("{MINIMAL}[clock]\nmax_offset = \"500ms\"\nmax_wait = \"0s\"\n");
        let c = Config::from_toml(Path::new("m"), &set).unwrap();
        assert_eq!(c.clock.max_offset, Duration::from_millis(500));
        assert_eq!(c.clock.max_wait, Duration::ZERO);
        let bad =
            format!("{MINIMAL}[clock]\nmax_offset = 2\nmax_wait = \"30d\"\nmax_ofset = \"1s\"\n");
        let problems = problems(&bad);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("t.toml: clock.max_offset: expected a duration"),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("clock.max_wait: longer than a week")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("clock.max_ofset: unknown key")),
            "{problems:?}"
        );
    }

    #[test]
    fn commit_delay_defaults_and_bounds() {
        let c = Config::from_toml(Path::new("m"), MINIMAL).unwrap();
        assert_eq!(c.spool.commit_delay, DEFAULT_COMMIT_DELAY);
        let at_once = format!("{MINIMAL}[spool]\ncommit_delay = \"0s\"\n");
        let c = Config::from_toml(Path::new("m"), &at_once).unwrap();
        assert_eq!(c.spool.commit_delay, Duration::ZERO);
        assert_eq!(
            problems(&format!("{MINIMAL}[spool]\ncommit_delay = \"1m\"\n")),
            [
                "t.toml: spool.commit_delay: 1m is longer than the maximum 5s: every ack would wait that long"
            ]
        );
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let p = problems("[mqtt]\nurl = \n");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("t.toml: line 2, column 7"), "{p:?}");
    }

    #[test]
    fn tls_files_are_checked_and_only_taken_with_mqtts() {
        let with = |url: &str, extra: &str| {
            problems(&MINIMAL.replace("mqtt://", url).replace(
                "[[mqtt.subscribe]]",
                &format!("{extra}\n[[mqtt.subscribe]]"),
            ))
        };
        let p = with("mqtts://", "ca_file = \"/nonexistent/ca.pem\"");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("mqtt.ca_file: cannot read /nonexistent/ca.pem"),
            "{p:?}"
        );
        let p = with("mqtt://", "ca_file = \"/etc/ca.pem\"");
        assert!(
            p[0].contains("mqtt.ca_file: only used with an mqtts:// url"),
            "{p:?}"
        );
        let p = with("mqtts://", "client_cert_file = \"/etc/c.pem\"");
        assert!(p[0].contains("mqtt.client_key_file: missing"), "{p:?}");
    }

    #[test]
    fn urls_with_credentials_are_refused_without_showing_them() {
        for text in [
            MINIMAL.replace(
                "mqtt://127.0.0.1:1883",
                "mqtt://gw:mqtt-pw-1@127.0.0.1:1883",
            ),
            MINIMAL.replace(
                "http://127.0.0.1:8086",
                "http://writer:influx-pw-2@127.0.0.1:8086",
            ),
            MINIMAL.replace(
                "http://127.0.0.1:8086",
                "ftp://writer:influx-pw-2@127.0.0.1:8086",
            ),
            MINIMAL.replace(
                "database = \"sensors\"",
                "database = \"sensors\"\nusername = \"u\"\npassword = 876543",
            ),
        ] {
            let p = problems(&text).join("\n");
            assert!(!p.is_empty());
            assert!(
                !p.contains("pw-1") && !p.contains("pw-2") && !p.contains("876543"),
                "{p}"
            );
        }
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtts://broker.example"),
            Ok(BrokerUrl {
                tls: true,
                host: "broker.example".into(),
                port: 8883
            })
        );
        assert_eq!(parse_broker_url("mqtt://[::1]:1884").unwrap().host, "::1");
        assert_eq!(parse_broker_url("mqtt://[::1]").unwrap().port, 1883);
        assert!(
            parse_broker_url("mqtt://::1")
                .unwrap_err()
                .contains("in brackets")
        );
        assert!(parse_broker_url("tcp://x").is_err());
        assert!(parse_broker_url("mqtt://x:0").is_err());
        assert!(parse_broker_url("mqtt://u:p@x").is_err());
        assert!(parse_broker_url("mqtt://x/path").is_err());
    }

    #[test]
    fn topic_filters() {
        for ok in ["a/#", "#", "+/b/+", "$share/g/a/#", "a"] {
            assert_eq!(check_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in [
            "a/#/b",
            "a#",
            "a/b+",
            "$share/g",
            "$share//a",
            "$share/g+/a",
        ] {
            assert!(check_topic_filter(bad).is_err(), "{bad}");
        }
    }
}
