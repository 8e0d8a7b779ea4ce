//! One InfluxDB write endpoint: builds the request for the configured API
//! (v1, v2 or v3), sends a batch body, and classifies the answer.
//!
//! The sink owns the wire format of a write and the credential header; it
//! must never log or return the credential (errors carry the URL without
//! query secrets, because none are ever put in the URL), and it must never
//! decide what to do about a failure: it says what happened and the writer
//! chooses.

use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;

use std::sync::{Arc, Mutex};

use super::lease::LeaseLink;
use super::refusal::{self, Refusal, RefusedLine};
use crate::config::{Api, Influx};
use crate::secret::Secret;

/// How long a write refused for its lease waits for the next lease.
const NEW_LEASE_WAIT: Duration = Duration::from_secs(20);

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .user_agent(concat!("leasegate/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// How much of an error body is read. InfluxDB's are short JSON, but a 3.x
/// partial write lists every refused line, and a 1.x one quotes them.
const MAX_ERROR_BODY: u64 = 256 << 10;
/// How much of a server message goes into a log line or an error.
const MAX_MESSAGE: usize = 2048;

pub struct Sink {
    agent: ureq::Agent,
    gzip: bool,
    /// Where and how writes go now: fixed with static credentials, swapped
    /// whole by the lease keeper with leases (None while there is no lease,
    /// and writes wait).
    dest: Mutex<Option<Arc<Dest>>>,
    /// With leases: where a refused credential is reported.
    leases: Option<Arc<LeaseLink>>,
    /// The lease the last write went with: a refusal is about that one,
    /// not about one installed while the write was in flight.
    last_used: Mutex<Option<String>>,
}

/// One write destination and its credential.
struct Dest {
    api: Api,
    url: String,
    /// `host:port`, for the reachability probe.
    server: Option<String>,
    /// Replaced when the credential's file holds a new one.
    authorization: Option<Secret>,
    username: Option<String>,
    secret_file: Option<std::path::PathBuf>,
    lease_id: Option<String>,
}

impl Dest {
    fn new(influx: &Influx, lease_id: Option<String>) -> Dest {
        let secret = match influx.api {
            Api::V1 => influx.password.as_ref(),
            Api::V2 | Api::V3 => influx.token.as_ref(),
        };
        let url = write_url(influx);
        let server = url.parse::<ureq::http::Uri>().ok().and_then(|uri| {
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            Some(format!("{}:{port}", uri.host()?))
        });
        Dest {
            api: influx.api,
            url,
            server,
            authorization: authorization(influx.api, influx.username.as_deref(), secret),
            username: influx.username.clone(),
            secret_file: influx.secret_file.clone(),
            lease_id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot reach InfluxDB at {url}")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("InfluxDB answered {status}: {}", cut(message))]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
        /// The refused lines a 3.x partial write lists.
        refused: Vec<RefusedLine>,
    },
    #[error("cannot compress the batch")]
    Compress(#[source] std::io::Error),
    #[error("no lease to write with yet")]
    NoLease,
}

impl WriteError {
    /// What this failure says about the content of `data`, the batch it
    /// tried to write ([`refusal::read`]).
    pub fn refusal(&self, api: Api, data: &[u8]) -> Refusal {
        match self {
            WriteError::Status {
                status,
                message,
                refused,
                ..
            } => refusal::read(api, *status, message, refused, data),
            _ => Refusal::NotContent,
        }
    }
}

/// A server message short enough for a log line.
fn cut(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

impl Sink {
    /// A sink with static credentials from the configuration.
    pub fn new(influx: &Influx) -> Sink {
        Sink {
            agent: agent(influx.timeout),
            gzip: influx.gzip,
            dest: Mutex::new(Some(Arc::new(Dest::new(influx, None)))),
            leases: None,
            last_used: Mutex::new(None),
        }
    }

    /// A sink that writes with leases: nothing until the first is installed.
    pub fn leased(gzip: bool, timeout: Duration, leases: Arc<LeaseLink>) -> Sink {
        Sink {
            agent: agent(timeout),
            gzip,
            dest: Mutex::new(None),
            leases: Some(leases),
            last_used: Mutex::new(None),
        }
    }

    fn dest(&self) -> Option<Arc<Dest>> {
        self.dest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Switches every later write to `influx` (settings and credential
    /// built from a lease) at once.
    pub fn install(&self, influx: &Influx, lease_id: &str) {
        let dest = Arc::new(Dest::new(influx, Some(lease_id.to_owned())));
        *self.dest.lock().unwrap_or_else(|p| p.into_inner()) = Some(dest);
    }

    /// No credential any more (the lease expired or the identity was
    /// revoked): writes wait.
    pub fn clear(&self) {
        *self.dest.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The lease the writes use now, if any.
    pub fn lease_id(&self) -> Option<String> {
        self.dest().and_then(|d| d.lease_id.clone())
    }

    /// Where the credential comes from, for messages.
    pub fn secret_file(&self) -> Option<std::path::PathBuf> {
        self.dest().and_then(|d| d.secret_file.clone())
    }

    pub fn is_leased(&self) -> bool {
        self.leases.is_some()
    }

    /// InfluxDB refused the credential. With leases: reports it to the lease
    /// keeper and waits (bounded) for another lease; Ok(true) when one came.
    /// With static credentials: reads the credential's file again; Ok(true)
    /// when it now holds a different one, which later writes use.
    pub fn reload_credential(&self, shutdown: &crate::shutdown::Shutdown) -> Result<bool, String> {
        let Some(dest) = self.dest() else {
            return Ok(false);
        };
        if let Some(leases) = &self.leases {
            let refused = self
                .last_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            if dest.lease_id.as_deref() != Some(refused.as_str()) {
                // A newer lease came while the write was in flight.
                return Ok(true);
            }
            leases.report_refused(&refused);
            let deadline = std::time::Instant::now() + NEW_LEASE_WAIT;
            while std::time::Instant::now() < deadline {
                match self.lease_id() {
                    Some(id) if id != refused => return Ok(true),
                    // The keeper dropped it (identity revoked): the writer
                    // waits for a lease instead.
                    None => return Ok(false),
                    Some(_) => {}
                }
                if shutdown.sleep(Duration::from_millis(50)) {
                    return Ok(false);
                }
            }
            return Ok(false);
        }
        let Some(path) = &dest.secret_file else {
            return Ok(false);
        };
        // The error names the file and the OS error, never the content.
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let secret = Secret::new(text.trim());
        if secret.expose().is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        let fresh = authorization(dest.api, dest.username.as_deref(), Some(&secret));
        if dest.authorization.as_ref().map(Secret::expose) == fresh.as_ref().map(Secret::expose) {
            return Ok(false);
        }
        let updated = Dest {
            api: dest.api,
            url: dest.url.clone(),
            server: dest.server.clone(),
            authorization: fresh,
            username: dest.username.clone(),
            secret_file: dest.secret_file.clone(),
            lease_id: None,
        };
        *self.dest.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(updated));
        Ok(true)
    }

    pub fn url(&self) -> String {
        self.dest().map(|d| d.url.clone()).unwrap_or_default()
    }

    pub fn api(&self) -> Api {
        self.dest().map_or(Api::V1, |d| d.api)
    }

    /// Whether InfluxDB's port takes TCP connections again, for ending a
    /// backoff wait early once a server that was down is back: a cheap
    /// probe, not a write, so it never hammers a server that is up but
    /// failing.
    pub fn reachable(&self, timeout: Duration) -> bool {
        use std::net::{TcpStream, ToSocketAddrs};
        let Some(dest) = self.dest() else {
            return false;
        };
        let Some(Ok(addrs)) = dest.server.as_ref().map(|s| s.to_socket_addrs()) else {
            return false;
        };
        addrs
            .into_iter()
            .any(|a| TcpStream::connect_timeout(&a, timeout).is_ok())
    }

    /// Sends one batch of line protocol (each line ending in `\n`).
    pub fn write(&self, lines: &[u8]) -> Result<(), WriteError> {
        let Some(dest) = self.dest() else {
            return Err(WriteError::NoLease);
        };
        if self.leases.is_some() {
            *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = dest.lease_id.clone();
        }
        let mut request = self
            .agent
            .post(&dest.url)
            .header("Content-Type", "text/plain; charset=utf-8");
        if let Some(auth) = &dest.authorization {
            request = request.header("Authorization", auth.expose());
        }
        let response = if self.gzip {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(lines.len() / 4),
                flate2::Compression::fast(),
            );
            enc.write_all(lines).map_err(WriteError::Compress)?;
            let body = enc.finish().map_err(WriteError::Compress)?;
            request.header("Content-Encoding", "gzip").send(&body[..])
        } else {
            request.send(lines)
        };
        let mut response = response.map_err(|source| WriteError::Transport {
            url: dest.url.clone(),
            source,
        })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            if let (Some(leases), Some(id)) = (&self.leases, &dest.lease_id) {
                leases.wrote_with(id);
            }
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Only the start of a long error body is kept (read_to_string with a
        // limit fails outright on a longer body).
        let mut raw = Vec::new();
        let _ = std::io::Read::read_to_end(
            &mut std::io::Read::take(response.body_mut().as_reader(), MAX_ERROR_BODY),
            &mut raw,
        );
        let body = String::from_utf8_lossy(&raw);
        Err(WriteError::Status {
            status,
            message: error_message(&body),
            retry_after,
            refused: refusal::refused_lines(&body),
        })
    }
}

/// Picks the human message out of InfluxDB's JSON error bodies
/// (`{"error": ..}` on 1.x and 3.x, `{"code": .., "message": ..}` on 2.x),
/// falling back to the raw text.
fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    field("message")
        .or_else(|| field("error"))
        .unwrap_or_else(|| {
            let t = body.trim();
            if t.is_empty() {
                "(empty body)".to_owned()
            } else {
                t.to_owned()
            }
        })
}

fn write_url(influx: &Influx) -> String {
    let q = |s: &Option<String>| crate::percent_encode(s.as_deref().unwrap_or_default());
    match influx.api {
        Api::V1 => {
            let mut url = format!(
                "{}/write?db={}&precision=ns",
                influx.url,
                q(&influx.database)
            );
            if influx.retention_policy.is_some() {
                url.push_str(&format!("&rp={}", q(&influx.retention_policy)));
            }
            url
        }
        Api::V2 => format!(
            "{}/api/v2/write?org={}&bucket={}&precision=ns",
            influx.url,
            q(&influx.org),
            q(&influx.bucket)
        ),
        Api::V3 => format!(
            "{}/api/v3/write_lp?db={}&precision=ns&accept_partial=true",
            influx.url,
            q(&influx.database)
        ),
    }
}

/// The Authorization header value: Basic for 1.x (influxd 1.6 does not take
/// `Token`), `Token` for 2.x, `Bearer` for 3.x.
fn authorization(api: Api, username: Option<&str>, secret: Option<&Secret>) -> Option<Secret> {
    let secret = secret?.expose();
    match api {
        Api::V1 => {
            let pair = format!("{}:{secret}", username?);
            Some(Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )))
        }
        Api::V2 => Some(Secret::new(format!("Token {secret}"))),
        Api::V3 => Some(Secret::new(format!("Bearer {secret}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn influx(api: Api) -> Influx {
        Influx {
            api,
            url: "http://h:8086".into(),
            database: Some("my db".into()),
            retention_policy: None,
            org: Some("o&g".into()),
            bucket: Some("b".into()),
            username: Some("u".into()),
            password: Some(Secret::new("p")),
            token: Some(Secret::new("tok")),
            secret_file: None,
            gzip: true,
            timeout: Duration::from_secs(1),
        }
    }

    fn auth(influx: &Influx) -> String {
        Sink::new(influx)
            .dest()
            .unwrap()
            .authorization
            .as_ref()
            .unwrap()
            .expose()
            .to_owned()
    }

    #[test]
    fn the_probe_targets_the_url_s_host_and_port() {
        let mut i = influx(Api::V2);
        assert_eq!(
            Sink::new(&i).dest().unwrap().server.clone().as_deref(),
            Some("h:8086")
        );
        i.url = "https://influx.example".into();
        assert_eq!(
            Sink::new(&i).dest().unwrap().server.clone().as_deref(),
            Some("influx.example:443")
        );
        i.url = "http://[::1]:9999".into();
        assert_eq!(
            Sink::new(&i).dest().unwrap().server.clone().as_deref(),
            Some("[::1]:9999")
        );
    }

    #[test]
    fn each_api_gets_its_endpoint_and_scheme() {
        let v1 = influx(Api::V1);
        assert_eq!(
            write_url(&v1),
            "http://h:8086/write?db=my%20db&precision=ns"
        );
        assert_eq!(auth(&v1), "Basic dTpw");
        let v2 = influx(Api::V2);
        assert_eq!(
            write_url(&v2),
            "http://h:8086/api/v2/write?org=o%26g&bucket=b&precision=ns"
        );
        assert_eq!(auth(&v2), "Token tok");
        let v3 = influx(Api::V3);
        assert_eq!(
            write_url(&v3),
            "http://h:8086/api/v3/write_lp?db=my%20db&precision=ns&accept_partial=true"
        );
        assert_eq!(auth(&v3), "Bearer tok");
    }

    #[test]
    fn error_messages_come_out_of_each_json_shape() {
        assert_eq!(
            error_message(r#"{"error":"authorization failed"}"#),
            "authorization failed"
        );
        assert_eq!(
            error_message(r#"{"code":"invalid","message":"bad line"}"#),
            "bad line"
        );
        assert_eq!(error_message(""), "(empty body)");
        assert_eq!(error_message("oops"), "oops");
    }
}
