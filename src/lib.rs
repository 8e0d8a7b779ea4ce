//! leasegate: forwards MQTT sensor readings to InfluxDB with short-lived,
//! least-privilege leased credentials. The library holds all the logic;
//! the binaries in `src/bin` are thin command-line shells over it. The
//! gateway build must never carry server-only parts: they stay behind the
//! `authority` cargo feature.
//! Modules: [`lineproto`], [`config`], [`payload`], [`agent`] (the
//! gateway's pipeline), [`wire`] (what both binaries speak), [`lifecycle`]
//! (what both daemons share), [`shutdown`], [`backoff`], [`secret`].

pub mod agent;
#[cfg(feature = "authority")]
pub mod authority;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod exit;
pub mod lifecycle;
pub mod lineproto;
pub mod logging;
pub mod payload;
pub mod render;
pub mod secret;
pub mod shutdown;
pub mod wire;

/// An error with all its causes, joined by ": ", for one log line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a
/// query parameter or path segment.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Unix milliseconds on this machine's wall clock, for records and
/// displays; lifetimes are measured on the monotonic clock instead.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
