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

use crate::config::{Api, Influx};
use crate::secret::Secret;

/// How much of an error body is kept for logs; InfluxDB's are short JSON.
const MAX_ERROR_BODY: u64 = 4096;

pub struct Sink {
    api: Api,
    agent: ureq::Agent,
    url: String,
    authorization: Option<Secret>,
    gzip: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot reach InfluxDB at {url}")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("InfluxDB answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("cannot compress the batch")]
    Compress(#[source] std::io::Error),
}

impl WriteError {
    /// InfluxDB wrote the valid lines of the batch and refused the rest for
    /// their content (a partial write): sending it again cannot help, and
    /// holding it would stall everything behind it. Any other 400 (a bad
    /// org or precision, a broken gzip body, a malformed header, or a 2.x
    /// rejection of the whole batch) leaves the points unwritten, so the
    /// batch must be kept and retried, never dropped.
    pub fn is_partial_write(&self, api: Api) -> bool {
        match self {
            WriteError::Status { status: 422, .. } => true,
            WriteError::Status {
                status: 400,
                message,
                ..
            } => matches!(api, Api::V1 | Api::V3) && message.contains("partial write"),
            _ => false,
        }
    }
}

impl Sink {
    pub fn new(influx: &Influx) -> Sink {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(influx.timeout))
            .http_status_as_error(false)
            .user_agent(concat!("leasegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Sink {
            api: influx.api,
            agent,
            url: write_url(influx),
            authorization: authorization(influx),
            gzip: influx.gzip,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn api(&self) -> Api {
        self.api
    }

    /// Sends one batch of line protocol (each line ending in `\n`).
    pub fn write(&self, lines: &[u8]) -> Result<(), WriteError> {
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "text/plain; charset=utf-8");
        if let Some(auth) = &self.authorization {
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
            url: self.url.clone(),
            source,
        })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
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
    let q = |s: &Option<String>| percent_encode(s.as_deref().unwrap_or_default());
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
fn authorization(influx: &Influx) -> Option<Secret> {
    match influx.api {
        Api::V1 => {
            let user = influx.username.as_deref()?;
            let password = influx.password.as_ref()?;
            let pair = format!("{user}:{}", password.expose());
            Some(Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )))
        }
        Api::V2 => Some(Secret::new(format!(
            "Token {}",
            influx.token.as_ref()?.expose()
        ))),
        Api::V3 => Some(Secret::new(format!(
            "Bearer {}",
            influx.token.as_ref()?.expose()
        ))),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
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
            gzip: true,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn each_api_gets_its_endpoint_and_scheme() {
        let v1 = influx(Api::V1);
        assert_eq!(
            write_url(&v1),
            "http://h:8086/write?db=my%20db&precision=ns"
        );
        assert_eq!(authorization(&v1).unwrap().expose(), "Basic dTpw");
        let v2 = influx(Api::V2);
        assert_eq!(
            write_url(&v2),
            "http://h:8086/api/v2/write?org=o%26g&bucket=b&precision=ns"
        );
        assert_eq!(authorization(&v2).unwrap().expose(), "Token tok");
        let v3 = influx(Api::V3);
        assert_eq!(
            write_url(&v3),
            "http://h:8086/api/v3/write_lp?db=my%20db&precision=ns&accept_partial=true"
        );
        assert_eq!(authorization(&v3).unwrap().expose(), "Bearer tok");
    }

    #[test]
    fn only_partial_writes_count_as_refused_content() {
        let status = |status: u16, message: &str| WriteError::Status {
            status,
            message: message.into(),
            retry_after: None,
        };
        let v1_partial = status(
            400,
            "partial write: unable to parse 'x': invalid field format dropped=1",
        );
        assert!(v1_partial.is_partial_write(Api::V1));
        assert!(status(400, "partial write of line protocol occurred").is_partial_write(Api::V3));
        assert!(status(422, "field type conflict").is_partial_write(Api::V2));
        // The whole batch was rejected, or the request itself was wrong.
        assert!(
            !status(400, "write buffer error: parsing for line protocol failed")
                .is_partial_write(Api::V2)
        );
        assert!(!status(400, "organization name \"x\" not found").is_partial_write(Api::V2));
        assert!(!status(400, "unable to decode gzip body").is_partial_write(Api::V1));
        assert!(!status(401, "authorization failed").is_partial_write(Api::V1));
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
