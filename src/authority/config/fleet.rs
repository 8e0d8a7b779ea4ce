//! `[fleet]`, `[metrics]` and `[web]` in the authority's configuration:
//! how long gateways' reports are kept, the thresholds of the fleet's
//! states, where the fleet's Prometheus page listens, and the web page.
//! Types, defaults and checks only; the states are derived in
//! `crate::authority::fleet`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::table::Table;

#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    /// How long reports stay in each gateway's history.
    pub history: Duration,
    /// At most one report per this interval goes into the history.
    pub history_every: Duration,
    /// `backlog` once the oldest unsent point is this old.
    pub backlog_after: Duration,
    /// `backlog` when the spool is full in less than this (while points
    /// wait).
    pub runway_under: Duration,
    /// `clock` when a gateway's clock is off the authority's by more.
    pub clock_offset: Duration,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            history: Duration::from_secs(24 * 3600),
            // A report is about 560 bytes: one every 5 minutes for a day
            // is 160 KB a gateway, 160 MB for a thousand.
            history_every: Duration::from_secs(5 * 60),
            backlog_after: Duration::from_secs(10 * 60),
            runway_under: Duration::from_secs(24 * 3600),
            clock_offset: Duration::from_secs(2),
        }
    }
}

/// `[fleet]`: each key optional, its default above.
pub fn read(t: &Table<'_>) -> FleetSettings {
    let d = FleetSettings::default();
    let second = Duration::from_secs(1);
    let s = FleetSettings {
        history: t.duration("history", d.history, Duration::from_secs(60)),
        history_every: t.duration("history_every", d.history_every, second),
        backlog_after: t.duration("backlog_after", d.backlog_after, second),
        runway_under: t.duration("runway_under", d.runway_under, Duration::ZERO),
        clock_offset: t.duration("clock_offset", d.clock_offset, Duration::from_millis(100)),
    };
    if s.history_every > s.history {
        t.problem("history_every", "must not be longer than fleet.history");
    }
    s
}

/// `[metrics] listen`: a loopback address, as the gateway's; the page
/// names every gateway, and has no login.
pub fn read_metrics_listen(t: &Table<'_>) -> Option<SocketAddr> {
    let listen = t.required_string("listen")?;
    match listen.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Some(a),
        Ok(_) => {
            t.problem(
                "listen",
                format!("{listen:?} is not a loopback address; put a proxy with a login in front for others"),
            );
            None
        }
        Err(_) => {
            t.problem(
                "listen",
                format!("{listen:?} is not an address:port such as \"127.0.0.1:9466\""),
            );
            None
        }
    }
}

/// `[web]`: the web page for admins, under `/ui` on the authority's own
/// listener; off unless `enabled`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WebSettings {
    pub enabled: bool,
    /// How long a login lasts.
    pub session_ttl: Duration,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            enabled: false,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// `[web]`, optional.
pub fn read_web(t: &Table<'_>) -> WebSettings {
    let Some(wt) = t.table("web") else {
        return WebSettings::default();
    };
    let d = WebSettings::default();
    let web = WebSettings {
        enabled: wt.bool("enabled", d.enabled),
        session_ttl: wt.duration("session_ttl", d.session_ttl, Duration::from_secs(60)),
    };
    wt.finish();
    web
}

/// `[fleet]` and `[metrics]`, each optional.
pub fn read_tables(t: &Table<'_>) -> (FleetSettings, Option<SocketAddr>) {
    let settings = match t.table("fleet") {
        Some(ft) => {
            let settings = read(&ft);
            ft.finish();
            settings
        }
        None => FleetSettings::default(),
    };
    let metrics_listen = t.table("metrics").and_then(|mt| {
        let listen = read_metrics_listen(&mt);
        mt.finish();
        listen
    });
    (settings, metrics_listen)
}
