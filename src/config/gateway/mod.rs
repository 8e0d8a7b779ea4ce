//! The gateway's configuration (`leasegate.toml`): types, defaults and the
//! rules between keys.
//!
//! Must never reach the network or create files: checking a config has no
//! side effects, so `config check` is safe to run on a live gateway.

mod check;
mod read;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::payload::TopicTemplate;
use crate::secret::Secret;

use super::tls::TlsClient;
use super::units::SizeOrPercent;
use super::{ConfigError, check_text, load_file};

pub use self::check::{check_topic_filter, parse_broker_url};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/leasegate/leasegate.toml";

/// The commented example printed by `leasegate config example`.
pub const EXAMPLE: &str = include_str!("../../../examples/leasegate.toml");

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
pub use crate::wire::api::InfluxApi as Api;

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
    /// What the spool leaves free on its filesystem, whatever its budget.
    pub min_free: SizeOrPercent,
}

/// `spool.min_free` unless set: 5 % of the filesystem, at most 1 GiB (of
/// a 64 MiB card 3.2 MiB, of an 8 GB one 400 MB, of a 32 GB one or a
/// server's disk 1 GiB). Uncapped, 5 % of a 250 GB disk kept a gateway on
/// a build machine from storing a single point with 10 GB free.
pub const DEFAULT_MIN_FREE: SizeOrPercent = SizeOrPercent::PercentUpTo(5, 1 << 30);

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
        load_file(path, read::read)
    }

    /// Checks TOML text; `path` is used only in messages.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        check_text(path, text, read::read)
    }
}

/// `spool.commit_delay` by default: long enough for a page of one-point
/// messages to gather at 100 messages a second, short enough that every
/// ack goes out within a second (figures: BENCHMARKS.md, "rates gateways
/// see").
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(750);
