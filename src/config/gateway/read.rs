//! Reading the gateway's configuration from its TOML table: every key
//! checked where it is read, each error naming its key, defaults filled
//! in. It collects every problem of a file instead of stopping at the
//! first, and never puts a secret it reads into a problem's text.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Api;
use crate::config::table::{Problems, Table};
use crate::config::tls::TlsClient;
use crate::config::{log_level, read_secret};
use crate::payload::TopicTemplate;

use super::check::check_http_url;
use super::{
    BatchLimits, BrokerUrl, ClockSettings, Config, DEFAULT_COMMIT_DELAY, DEFAULT_MIN_FREE, Format,
    FsyncPolicy, Influx, LeaseConfig, Mqtt, Overflow, Precision, SpoolSettings, Subscription,
    Writing, check_topic_filter, parse_broker_url,
};

/// Reads the whole file, recording problems; returns `None` when a required
/// part is missing (the problems say which).
pub(super) fn read(t: &Table<'_>) -> Option<Config> {
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
pub(super) fn read_dirs(t: &Table<'_>) -> (PathBuf, PathBuf, Option<PathBuf>) {
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
pub(super) fn read_writing(t: &Table<'_>, client_id: Option<&str>) -> Option<Writing> {
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
    if !crate::wire::api::identity_name_is_valid(&identity_name) {
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
pub(super) fn read_metrics(m: &Table<'_>) -> Option<std::net::SocketAddr> {
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

pub(super) fn read_mqtt(t: &Table<'_>) -> Option<Mqtt> {
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
pub(super) fn read_tls(t: &Table<'_>, url: Option<&BrokerUrl>) -> Option<TlsClient> {
    const KEYS: [&str; 3] = ["ca_file", "client_cert_file", "client_key_file"];
    let ca_file = t.path("ca_file");
    let cert = t.path("client_cert_file");
    let key = t.path("client_key_file");
    if let Some(k) = &key {
        crate::config::check_secret_mode(t, "client_key_file", k);
    }
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
    match crate::config::tls::client_config(ca_file.as_deref(), client) {
        Ok(tls) => Some(tls),
        Err(p) => {
            t.problem(p.key, p.message);
            None
        }
    }
}

pub(super) fn read_subscription(t: &Table<'_>) -> Option<Subscription> {
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
pub(super) const STATIC_KEYS: [&str; 10] = [
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
pub(super) fn read_lease_overrides(t: &Table<'_>) -> (Option<String>, bool, Duration) {
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

pub(super) fn read_influx(t: &Table<'_>) -> Option<Influx> {
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
pub(super) fn check_influx_keys(t: &Table<'_>, i: &Influx) {
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
pub(super) fn section<T>(t: &Table<'_>, key: &'static str, read: impl Fn(&Table<'_>) -> T) -> T {
    match t.table(key) {
        Some(table) => {
            let value = read(&table);
            table.finish();
            value
        }
        None => read(&Table::root(&toml::Table::new(), &Problems::default())),
    }
}

pub(super) fn read_batch(t: &Table<'_>) -> BatchLimits {
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

pub(super) const MAX_COMMIT_DELAY: Duration = Duration::from_secs(5);

pub(super) fn read_spool(t: &Table<'_>) -> SpoolSettings {
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
        min_free: t.size_or_percent("min_free", DEFAULT_MIN_FREE, 50),
    }
}

pub(super) fn read_clock(t: &Table<'_>) -> ClockSettings {
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

/// `leasegate-HOSTNAME`: stable across restarts, distinct per gateway, so the
/// broker finds this gateway's persistent session again.
pub(super) fn default_client_id() -> String {
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
