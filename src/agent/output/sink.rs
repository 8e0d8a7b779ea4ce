//! One InfluxDB write: sends a batch body with a given [`Credential`] and
//! classifies the answer. The sink owns the HTTP side of a write
//! (compression, headers, reading the answer, bounded). It holds no
//! credential and decides neither which one to use nor what to do about a
//! failure: it says what happened, and the writer chooses. It must never
//! log or return a credential: errors carry the URL (never holding a
//! secret) and the server's message, cut short.

use std::io::Write as _;
use std::time::Duration;

use crate::agent::credential::Credential;
use crate::agent::output::refusal::{self, Refusal, RefusedLine};
use crate::config::Api;

/// How much of an error body is read. InfluxDB's are short JSON, but a 3.x
/// partial write lists every refused line, and a 1.x one quotes them.
const MAX_ERROR_BODY: u64 = 256 << 10;
/// How much of a server message goes into a log line or an error.
const MAX_MESSAGE: usize = 2048;

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

    /// Whether the server took the request and closed the connection
    /// without an answer (not a refused connection, not a timeout).
    pub fn unanswered(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        match self {
            WriteError::Transport {
                source: ureq::Error::Io(e),
                ..
            } => matches!(
                e.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            ),
            _ => false,
        }
    }

    /// What the server said, or the failure when it said nothing.
    pub fn server_message(&self) -> String {
        match self {
            WriteError::Status { message, .. } => message.clone(),
            _ => self.to_string(),
        }
    }

    /// The HTTP status, or 0 when there was no answer.
    pub fn status(&self) -> u16 {
        match self {
            WriteError::Status { status, .. } => *status,
            _ => 0,
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

/// The HTTP client for writes, with the settings that do not change with
/// the credential.
pub struct Sink {
    agent: ureq::Agent,
    gzip: bool,
}

impl Sink {
    /// `timeout` bounds a whole write; `gzip` compresses bodies.
    pub fn new(gzip: bool, timeout: Duration) -> Sink {
        Sink {
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .user_agent(concat!("leasegate/", env!("CARGO_PKG_VERSION")))
                .build()
                .into(),
            gzip,
        }
    }

    /// Sends one batch of line protocol (each line ending in `\n`).
    pub fn write(&self, credential: &Credential, lines: &[u8]) -> Result<(), WriteError> {
        let mut request = self
            .agent
            .post(&credential.write_url)
            .header("Content-Type", "text/plain; charset=utf-8");
        if let Some(auth) = &credential.authorization {
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
            url: credential.write_url.clone(),
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
            refused: refusal::refused_lines(&body),
        })
    }
}

impl Sink {
    /// Whether `credential`'s server answers a request (`GET /ping`, which
    /// InfluxDB 1.x, 2.x and 3.x serve; any status is an answer), within
    /// `timeout`: tells a server that fails on one batch from one that is
    /// away.
    pub fn answers(&self, credential: &Credential, timeout: Duration) -> bool {
        let Some(url) = credential.ping_url() else {
            return false;
        };
        let mut request = self
            .agent
            .get(&url)
            .config()
            .timeout_global(Some(timeout))
            .build();
        if let Some(auth) = &credential.authorization {
            request = request.header("Authorization", auth.expose());
        }
        request.call().is_ok()
    }
}

/// Whether `credential`'s server takes TCP connections again, for ending a
/// backoff wait early once a server that was down is back: a cheap probe,
/// not a write, so it never hammers a server that is up but failing.
pub fn reachable(credential: &Credential, timeout: Duration) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let Some(Ok(addrs)) = credential.server().map(|s| s.to_socket_addrs()) else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, timeout).is_ok())
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_long_message_is_cut_at_a_character() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = cut(&long);
        assert!(cut.len() <= MAX_MESSAGE && cut.chars().all(|c| c == 'é'));
    }
}
