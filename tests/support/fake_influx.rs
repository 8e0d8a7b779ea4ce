//! In-test InfluxDB 2.x and 3.x write endpoints, following
//! ../shared/influxdb-api.md, because neither can be installed here.
//!
//! - 2.x, `POST /api/v2/write?org=..&bucket=..`: `Token` (or `Bearer`)
//!   auth with 401 `unauthorized`; 404 `not found` for an unknown bucket and
//!   400 `invalid` for an unknown org; 400 `invalid` quoting the first
//!   malformed line and refusing the whole batch; 422 for a field type
//!   conflict (the other points written); JSON errors `{"code","message"}`.
//! - 3.x, `POST /api/v3/write_lp?db=..&accept_partial=true`: `Bearer` or
//!   `Token` (case-sensitive scheme, one space), 401 with an EMPTY body for a
//!   missing or unknown token, 400 for a malformed Authorization header;
//!   400 `partial write of line protocol occurred` listing each refused
//!   line with its number (from 1), the good lines written; JSON errors
//!   `{"error": ..}`.
//! - Both: 413 over a body limit (checked as sent and after gzip), gzip
//!   bodies (a broken one is 500 on 2.x, 400 on 3.x), 204 on success.
//!
//! Which lines are malformed is what the real servers' parsers say; here a
//! line fails when our own parser refuses it or when it contains the
//! `poison` text a test sets, because leasegate never sends a line its own
//! parser refuses. Field types are remembered per measurement as the real
//! servers do. Tests can script answers (429, 503, 403, with or without
//! Retry-After) ahead of the real ones. One request per connection, on a
//! loopback port; the server stops when dropped.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use leasegate::lineproto::FieldValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    V2,
    V3,
}

#[derive(Default)]
pub struct State {
    pub token: String,
    /// 2.x only.
    pub org: String,
    /// The 2.x bucket or the 3.x database.
    pub bucket: String,
    /// Bodies larger than this (as sent, or after gzip) get 413.
    pub max_body: usize,
    /// Lines containing this are malformed to the server.
    pub poison: Option<String>,
    /// Answers given before any real handling: (status, Retry-After).
    pub scripted: VecDeque<(u16, Option<u64>)>,
    /// Every line written, in order.
    pub lines: Vec<String>,
    /// Every status answered, in order.
    pub answers: Vec<u16>,
    /// The type of each field once written: (measurement, field) -> type.
    types: HashMap<(String, String), &'static str>,
}

pub struct FakeInflux {
    pub port: u16,
    pub flavor: Flavor,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeInflux {
    /// `org` is ignored for 3.x; `bucket` is the 3.x database.
    pub fn start(flavor: Flavor, token: &str, org: &str, bucket: &str, max_body: usize) -> Self {
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
            .name("fake-influx".into())
            .spawn(move || {
                while !st.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let _ = serve(conn, flavor, &s);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .unwrap();
        FakeInflux {
            port,
            flavor,
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

impl Drop for FakeInflux {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An answer: status, Retry-After, JSON body (none for an empty body).
struct Answer(u16, Option<u64>, Option<serde_json::Value>);

fn serve(conn: TcpStream, flavor: Flavor, state: &Mutex<State>) -> std::io::Result<()> {
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

    let request = Request::parse(&request_line);
    let Answer(status, retry_after, json) = {
        let mut st = state.lock().unwrap();
        let answer = match flavor {
            Flavor::V2 => answer_v2(&request, &headers, &body, &mut st),
            Flavor::V3 => answer_v3(&request, &headers, &body, &mut st),
        };
        st.answers.push(answer.0);
        answer
    };
    let reason = match status {
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    if let Some(s) = retry_after {
        out.push_str(&format!("Retry-After: {s}\r\n"));
    }
    match json {
        Some(json) => {
            let body = json.to_string();
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

/// The parts of a request line the endpoints look at.
#[derive(Clone, Copy)]
struct Request<'a> {
    post: bool,
    path: &'a str,
    query: &'a str,
}

impl<'a> Request<'a> {
    fn parse(request_line: &'a str) -> Self {
        let target = request_line.split(' ').nth(1).unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            post: request_line.starts_with("POST "),
            path,
            query,
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn param(query: &str, name: &str) -> String {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_default()
        .to_owned()
}

fn v2_error(status: u16, code: &str, message: impl Into<String>) -> Answer {
    let message: String = message.into();
    Answer(
        status,
        None,
        Some(serde_json::json!({"code": code, "message": message})),
    )
}

fn v3_error(status: u16, message: impl Into<String>) -> Answer {
    let message: String = message.into();
    Answer(status, None, Some(serde_json::json!({"error": message})))
}

/// The body as sent, or None for a broken gzip body.
fn decoded(headers: &[(String, String)], body: &[u8]) -> Option<Vec<u8>> {
    if header(headers, "content-encoding") != Some("gzip") {
        return Some(body.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// One line as the server's parser and schema see it.
enum Checked {
    /// The line, its measurement and its fields' types.
    Good(String, String, Vec<(String, &'static str)>),
    Malformed(String, String),
    Conflict(String, String),
}

/// Parses every non-empty line and checks field types against what is
/// stored and what came earlier in the batch (as a real server does).
fn check(raw: &[u8], st: &State) -> Vec<Checked> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let mut pending: HashMap<(String, String), &'static str> = HashMap::new();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let poisoned = st.poison.as_deref().is_some_and(|p| line.contains(p));
        let point = match parse_one(line) {
            _ if poisoned => {
                out.push(Checked::Malformed(
                    line.into(),
                    "invalid field format".into(),
                ));
                continue;
            }
            Ok(p) => p,
            Err(e) => {
                out.push(Checked::Malformed(line.into(), e.to_string()));
                continue;
            }
        };
        let mut fields = Vec::new();
        let mut conflict = None;
        for (name, value) in &point.fields {
            let kind = match value {
                FieldValue::Float(_) => "float",
                FieldValue::Integer(_) => "integer",
                FieldValue::UInteger(_) => "unsigned",
                FieldValue::String(_) => "string",
                FieldValue::Boolean(_) => "boolean",
            };
            let key = (point.measurement.clone(), name.clone());
            let known = st.types.get(&key).or(pending.get(&key));
            if let Some(existing) = known.filter(|k| **k != kind) {
                conflict = Some(format!(
                    "field type conflict: input field \"{name}\" on measurement \"{}\" is type {kind}, already exists as type {existing}",
                    point.measurement
                ));
                break;
            }
            fields.push((name.clone(), kind));
        }
        match conflict {
            Some(why) => out.push(Checked::Conflict(line.into(), why)),
            None => {
                for (name, kind) in &fields {
                    pending.insert((point.measurement.clone(), name.clone()), kind);
                }
                out.push(Checked::Good(
                    line.into(),
                    point.measurement.clone(),
                    fields,
                ));
            }
        }
    }
    out
}

fn parse_one(line: &str) -> Result<leasegate::lineproto::Point, String> {
    match leasegate::lineproto::parse_payload(line.as_bytes()) {
        Ok(mut lines) => match lines.next() {
            Some(Ok(point)) => Ok(point),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("no point".into()),
        },
        Err(e) => Err(e.to_string()),
    }
}

fn store(st: &mut State, line: String, measurement: String, fields: Vec<(String, &'static str)>) {
    for (name, kind) in fields {
        st.types.insert((measurement.clone(), name), kind);
    }
    st.lines.push(line);
}

fn answer_v2(
    request: &Request<'_>,
    headers: &[(String, String)],
    body: &[u8],
    st: &mut State,
) -> Answer {
    let Request { post, path, query } = *request;
    if !post || path != "/api/v2/write" {
        return v2_error(404, "not found", format!("path {path} not found"));
    }
    let auth_ok = header(headers, "authorization").is_some_and(|v| {
        v.strip_prefix("Token ")
            .or_else(|| v.strip_prefix("Bearer "))
            == Some(st.token.as_str())
    });
    if !auth_ok {
        return v2_error(401, "unauthorized", "unauthorized access");
    }
    if let Some((status, retry)) = st.scripted.pop_front() {
        let Answer(s, _, json) = v2_error(status, "scripted", "scripted answer");
        return Answer(s, retry, json);
    }
    if body.len() > st.max_body {
        return v2_error(
            413,
            "request too large",
            format!("body of {} bytes exceeds the limit", body.len()),
        );
    }
    if param(query, "org") != st.org {
        return v2_error(
            400,
            "invalid",
            format!("organization name \"{}\" not found", param(query, "org")),
        );
    }
    if param(query, "bucket") != st.bucket {
        return v2_error(
            404,
            "not found",
            format!("bucket \"{}\" not found", param(query, "bucket")),
        );
    }
    let Some(raw) = decoded(headers, body) else {
        return v2_error(500, "internal error", "unable to decode gzip body");
    };
    if raw.len() > st.max_body {
        return v2_error(413, "request too large", "decompressed body too large");
    }
    let checked = check(&raw, st);
    // OSS parses the whole batch first and refuses all of it for one
    // malformed line, quoting the first.
    if let Some(Checked::Malformed(line, why)) =
        checked.iter().find(|c| matches!(c, Checked::Malformed(..)))
    {
        return v2_error(400, "invalid", format!("unable to parse '{line}': {why}"));
    }
    let mut conflicts = Vec::new();
    for c in checked {
        match c {
            Checked::Good(line, measurement, fields) => store(st, line, measurement, fields),
            Checked::Conflict(_, why) => conflicts.push(why),
            Checked::Malformed(..) => unreachable!(),
        }
    }
    if conflicts.is_empty() {
        Answer(204, None, None)
    } else {
        v2_error(
            422,
            "unprocessable entity",
            format!(
                "failure writing points to database: partial write: {} dropped={}",
                conflicts[0],
                conflicts.len()
            ),
        )
    }
}

fn answer_v3(
    request: &Request<'_>,
    headers: &[(String, String)],
    body: &[u8],
    st: &mut State,
) -> Answer {
    let Request { post, path, query } = *request;
    if !post || path != "/api/v3/write_lp" {
        return v3_error(404, format!("path {path} not found"));
    }
    match header(headers, "authorization") {
        None => return Answer(401, None, None),
        Some(v) => {
            let token = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("Token "));
            match token {
                None => return v3_error(400, "invalid Authorization header"),
                Some(t) if t != st.token => return Answer(401, None, None),
                Some(_) => {}
            }
        }
    }
    if let Some((status, retry)) = st.scripted.pop_front() {
        let Answer(s, _, json) = v3_error(status, "scripted answer");
        return Answer(s, retry, json);
    }
    if body.len() > st.max_body {
        return v3_error(413, "the request was too large");
    }
    if param(query, "db") != st.bucket {
        // Writes create the database on 3.x; a test that sees this named
        // the wrong one.
        return v3_error(404, format!("database not found: {}", param(query, "db")));
    }
    let Some(raw) = decoded(headers, body) else {
        return v3_error(400, "invalid gzip body");
    };
    if raw.len() > st.max_body {
        return v3_error(413, "the request was too large");
    }
    let accept_partial = param(query, "accept_partial") != "false";
    let checked = check(&raw, st);
    let mut refused = Vec::new();
    let mut good = Vec::new();
    for (i, c) in checked.into_iter().enumerate() {
        match c {
            Checked::Good(line, measurement, fields) => good.push((line, measurement, fields)),
            Checked::Malformed(line, why) | Checked::Conflict(line, why) => {
                refused.push(serde_json::json!({
                    "original_line": line,
                    "line_number": i + 1,
                    "error_message": why,
                }))
            }
        }
    }
    if refused.is_empty() || accept_partial {
        for (line, measurement, fields) in good {
            store(st, line, measurement, fields);
        }
    }
    if refused.is_empty() {
        return Answer(204, None, None);
    }
    Answer(
        400,
        None,
        Some(serde_json::json!({
            "error": "partial write of line protocol occurred",
            "data": refused,
        })),
    )
}
