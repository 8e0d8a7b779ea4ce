//! An in-test InfluxDB 2.x write endpoint (`POST /api/v2/write`), following
//! ../shared/influxdb-api.md, because 2.x cannot be installed here:
//! `Token` (or `Bearer`) auth with 401 `unauthorized`, 413 `request too
//! large` over a body limit, gzip bodies (500 when broken, as OSS does),
//! 404 `not found` for an unknown org or bucket, 400 `invalid` rejecting
//! the whole batch on a malformed line, 204 on success, and JSON error
//! bodies `{"code", "message"}`. Tests can script answers (429 and 503 with
//! or without Retry-After) ahead of the real ones. It serves one request
//! per connection on a loopback port and stops when dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Default)]
pub struct State {
    pub token: String,
    pub org: String,
    pub bucket: String,
    /// Bodies larger than this (as sent) get 413.
    pub max_body: usize,
    /// Answers given before any real handling: (status, Retry-After).
    pub scripted: VecDeque<(u16, Option<u64>)>,
    /// Every line written, in order.
    pub lines: Vec<String>,
    /// Every status answered, in order.
    pub answers: Vec<u16>,
}

pub struct FakeV2 {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeV2 {
    pub fn start(token: &str, org: &str, bucket: &str, max_body: usize) -> FakeV2 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            org: org.into(),
            bucket: bucket.into(),
            max_body,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fake-influx-v2".into())
            .spawn(move || {
                while !st.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let _ = serve(conn, &s);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .unwrap();
        FakeV2 {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

impl Drop for FakeV2 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let length: usize = header(&headers, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;

    let (status, retry_after, message) = answer(&request_line, &headers, &body, state);
    state.lock().unwrap().answers.push(status);
    let reason = match status {
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        413 => "Request Entity Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    if let Some(s) = retry_after {
        out.push_str(&format!("Retry-After: {s}\r\n"));
    }
    match message {
        Some((code, msg)) => {
            let body = serde_json::json!({"code": code, "message": msg}).to_string();
            out.push_str(&format!(
                "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    let mut conn = reader.into_inner();
    conn.write_all(out.as_bytes())?;
    conn.flush()
}

type Answer = (u16, Option<u64>, Option<(&'static str, String)>);

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn answer(
    request_line: &str,
    headers: &[(String, String)],
    body: &[u8],
    state: &Mutex<State>,
) -> Answer {
    let mut st = state.lock().unwrap();
    let target = request_line.split(' ').nth(1).unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !request_line.starts_with("POST ") || path != "/api/v2/write" {
        return (
            404,
            None,
            Some(("not found", format!("path {path} not found"))),
        );
    }
    let auth_ok = header(headers, "authorization").is_some_and(|v| {
        v.strip_prefix("Token ")
            .or_else(|| v.strip_prefix("Bearer "))
            == Some(st.token.as_str())
    });
    if !auth_ok {
        return (
            401,
            None,
            Some(("unauthorized", "unauthorized access".into())),
        );
    }
    if let Some((status, retry)) = st.scripted.pop_front() {
        return (
            status,
            retry,
            Some(("too many requests", "scripted answer".into())),
        );
    }
    if body.len() > st.max_body {
        return (
            413,
            None,
            Some((
                "request too large",
                format!("body of {} bytes exceeds the limit", body.len()),
            )),
        );
    }
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_default()
            .to_owned()
    };
    if param("org") != st.org {
        return (
            400,
            None,
            Some((
                "invalid",
                format!("organization name \"{}\" not found", param("org")),
            )),
        );
    }
    if param("bucket") != st.bucket {
        return (
            404,
            None,
            Some((
                "not found",
                format!("bucket \"{}\" not found", param("bucket")),
            )),
        );
    }
    let raw = if header(headers, "content-encoding") == Some("gzip") {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .is_err()
        {
            return (
                500,
                None,
                Some(("internal error", "unable to decode gzip body".into())),
            );
        }
        out
    } else {
        body.to_vec()
    };
    let mut lines = Vec::new();
    match leasegate::lineproto::parse_payload(&raw) {
        Ok(parsed) => {
            let text = String::from_utf8_lossy(&raw).into_owned();
            for (point, line) in parsed.zip(text.lines().filter(|l| !l.trim().is_empty())) {
                if let Err(e) = point {
                    return (
                        400,
                        None,
                        Some(("invalid", format!("unable to parse '{line}': {e}"))),
                    );
                }
                lines.push(line.to_owned());
            }
        }
        Err(e) => return (400, None, Some(("invalid", e.to_string()))),
    }
    st.lines.extend(lines);
    (204, None, None)
}
