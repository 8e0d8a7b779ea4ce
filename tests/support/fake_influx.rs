//! In-test InfluxDB 2.x and 3.x servers (write endpoints and the token
//! management the lease authority calls), following
//! docs/influxdb-api.md, because neither can be installed here.
//! Where that file is silent, the real servers' behaviour is followed and
//! noted below.
//!
//! Everywhere: one request per connection (`Connection: close`), each on
//! its own thread, on a loopback port; the server stops when dropped.
//! Request bodies may be sized or chunked. Query parameters are
//! percent-decoded (`+` is a space). `State::unavailable` answers every
//! request with 503 (2.x `{"code":"unavailable",..}`, 3.x `{"error":..}`)
//! before anything else. Every status answered is appended to
//! `State::answers`, every request to `State::requests`.
//!
//! ## 2.x (`Flavor::V2`); errors are JSON `{"code","message"}`
//! - Unknown path 404 `not found`; a known path with another method 405.
//! - Auth: `Token <t>` or `Bearer <t>`. `State::token` is the operator
//!   token (all permissions); the token of a live authorization is its
//!   permissions. A missing, unknown or deleted token is 401
//!   `{"code":"unauthorized","message":"unauthorized access"}`.
//! - The operator token is also listed as an authorization ("admin's
//!   Token", id `State::operator_id`); deleting it (`operator_deleted`) or
//!   setting it inactive (`operator_status`) takes effect as on a real
//!   server.
//! - Managing authorizations or reading buckets needs the permission on
//!   `{"type":"authorizations"|"buckets","orgID":org}`: a token without it
//!   (e.g. a leased write token) gets 401 `unauthorized` with the message
//!   `write:orgs/ORG/authorizations is unauthorized`, as 2.x's authorizer
//!   says (EUnauthorized), except that a list is only filtered (200, what
//!   the caller may read). An inactive token is allowed nothing.
//! - `GET /api/v2/buckets?orgID=..&name=..` (`org=` ignored) -> 200
//!   `{"links","buckets":[..]}`: `State::bucket` (id `State::bucket_id`,
//!   type `user`) and the system buckets `_monitoring` and `_tasks`. A
//!   `name` that no bucket of that org has is 404 `bucket "NAME" not found`.
//! - `POST /api/v2/authorizations` `{"orgID","description","status",
//!   "permissions":[{"action","resource":{"type","id","orgID"}}]}` -> 201
//!   with `id`, `token` (64 random bytes, URL-safe base64 with `==`, 88
//!   chars), `status` (default `active`), `description`, `orgID`, `userID`,
//!   `permissions` (as sent), `createdAt`, `updatedAt` (RFC 3339), `links`.
//!   In this order: 400 `invalid` for a body that is not JSON, no or an
//!   empty permissions list, an action other than read/write, an unknown
//!   resource type, a resource id that is not 16 hex digits, a missing
//!   orgID, or a status other than active/inactive; 401 (above); 403
//!   `forbidden` when a non-operator caller grants a permission it does not
//!   hold; 400 `invalid` `organization not found` when orgID is not
//!   `State::org`; 404 `not found` for a resource orgID other than
//!   `State::org`, or a bucket id none of the buckets has.
//! - `GET /api/v2/authorizations[?orgID=..]` -> 200 `{"links",
//!   "authorizations":[..]}`, tokens shown as `REDACTED` (2.9+).
//! - `GET|PATCH|DELETE /api/v2/authorizations/{id}`: 400 `invalid` for an
//!   id that is not 16 hex digits, 404 `authorization not found` for an
//!   unknown one (checked before the permission, as 2.x does). GET -> 200,
//!   PATCH `{"status","description"}` -> 200 (token REDACTED), DELETE ->
//!   204, recorded with its time in `deleted_authorizations`.
//! - `POST /api/v2/write?org=..&bucket=..` (`orgID=` also taken): 401 as
//!   above; then the scripted answers; 413 over a body limit (as sent and
//!   after gzip); 400 `invalid` for an org other than `State::org`; 404 for
//!   a bucket other than `State::bucket`; 403 `forbidden` `insufficient
//!   permissions for write` for a token without write on
//!   `{"type":"buckets","id":bucket_id,"orgID":org}` (a permission without
//!   id or orgID covers every bucket or org) or an INACTIVE one (as
//!   docs/influxdb-api.md says: inactive is 403, deleted is 401); 500 for a
//!   broken gzip body; 400 `invalid` quoting the first malformed line and
//!   refusing the whole batch; 422 for a field type conflict (the other
//!   points written); 204.
//!
//! ## 3.x (`Flavor::V3`); errors are JSON `{"error": ..}`
//! - Auth comes first on every path (3.x authenticates even /health):
//!   `Bearer <t>` or `Token <t>` (case-sensitive scheme, one space); a
//!   missing, unknown, deleted or expired token is 401 with an EMPTY body,
//!   another scheme 400. `State::token` is the operator token `_admin`
//!   (token_id 0). A named admin token (Core) may do all the operator may;
//!   an Enterprise token with permissions may only what they grant:
//!   managing tokens or querying with one is 403. Then unknown paths are
//!   404, a known path with another method 405.
//! - `POST /api/v3/configure/token/named_admin` (415 without
//!   `Content-Type: application/json`) `{"token_name","expiry_secs"?}` ->
//!   201 `{"id","name","token","hash","created_at","expiry"}` (times RFC
//!   3339, `expiry` null without one). Tokens are `apiv3_` + 86 URL-safe
//!   base64 chars; `hash` is 128 hex digits (not a real SHA-512). 400 for
//!   a bad body, 409 when the name exists (expired but not deleted tokens
//!   and `_admin` included).
//! - `POST /api/v3/enterprise/configure/token` (404 unless
//!   `State::enterprise`, like Core) `{"token_name","permissions":
//!   [{"resource_type":"db"|"system"|"*","resource_names":[..],
//!   "actions":["read"|"write"|"*",..]}],"expiry_secs"?}` -> 201, same
//!   shape; 415, 400 (no or bad permissions), 409 as above.
//! - `DELETE /api/v3/configure/token?token_name=N` -> 200 empty body,
//!   recorded with its time in `deleted_v3_tokens`; 400 without a name, 404
//!   unknown, 405 for `_admin`.
//! - `GET /api/v3/query_sql?db=_internal&q=..system.tokens..&format=json`
//!   (or POST with those as a JSON body) -> 200 JSON array of every token
//!   not deleted, expired ones too, `_admin` first: `{"token_id","name",
//!   "hash","created_at","expiry","permissions"}`. Times are shown as
//!   SQL timestamps without zone (`2025-06-01T12:00:00.123`), a null
//!   (no expiry) is left out of its row as the JSON output omits nulls;
//!   permissions are `*:*:*` for admin tokens, else `TYPE:NAMES:ACTIONS`
//!   (names and actions joined by `,`, several permissions by `;`). Other
//!   databases, queries or formats are 400 (the fake knows only this one).
//! - `POST /api/v3/write_lp?db=..&accept_partial=true`: 401 as above; then
//!   the scripted answers; 413 over a body limit (as sent and after gzip);
//!   404 for a database other than `State::bucket`; 403 for an Enterprise
//!   token without write on it; 400 for a broken gzip body; then each line
//!   is read as the server's write validator reads it (`v3_write`): 400
//!   `partial write of line protocol occurred` listing each refused line
//!   with its number and the first 20 bytes of the line (as sent for a
//!   parse error, as the server renders it for a type conflict, a
//!   repeated field or too many columns), the good lines written; 422 with
//!   the same body when a refusal was the column limit
//!   (`State::v3_column_limit`); with `accept_partial=false`, 400 `parsing
//!   failed for write_lp endpoint` naming the first refusal, and nothing
//!   written; 204. With `State::v3_cut_panics` (3.6 to 3.9), a refusal
//!   whose 20-byte cut falls inside a character closes the connection
//!   without an answer (recorded as status 0), after the good lines are
//!   written (with `accept_partial=false`, nothing is).
//!
//! Which lines are malformed is what the real servers' parsers say; here a
//! line fails when our own parser refuses it or when it contains the
//! `poison` text a test sets, because leasegate never sends a line its own
//! parser refuses; the 3.x server also runs InfluxDB 3's own parser (the
//! `influxdb-line-protocol` crate), which refuses forms 1.x takes (`m
//! v=.5`, `m v=1 `) with its own messages. Field types are remembered per measurement as the real
//! servers do. Tests can script answers for the write endpoints (429, 503,
//! 403, with or without Retry-After) ahead of the real ones.

mod v3_write;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use leasegate::lineproto::FieldValue;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    V2,
    V3,
}

/// A 2.x authorization (token) created through the API or by a test.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub id: String,
    pub token: String,
    /// `active` or `inactive`.
    pub status: String,
    pub description: String,
    pub org_id: String,
    pub user_id: String,
    /// The list as sent: `[{"action","resource":{"type","id","orgID"}}]`.
    pub permissions: Value,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A 3.x token created through the API or by a test.
#[derive(Debug, Clone)]
pub struct V3Token {
    pub id: u64,
    pub name: String,
    pub token: String,
    pub expiry: Option<SystemTime>,
    /// `"*:*:*"` for a named admin token, else the Enterprise list as sent:
    /// `[{"resource_type","resource_names","actions"}]`.
    pub permissions: Value,
    pub created_at: SystemTime,
}

impl V3Token {
    pub fn is_admin(&self) -> bool {
        self.permissions == ADMIN_PERMISSIONS
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }
}

/// What a 3.x named admin token's permissions are.
pub const ADMIN_PERMISSIONS: &str = "*:*:*";

#[derive(Default)]
pub struct State {
    /// The operator (admin) token: all permissions, may manage tokens.
    pub token: String,
    /// 2.x only: the org, by name in writes and by ID (`orgID`) elsewhere.
    pub org: String,
    /// The 2.x bucket or the 3.x database.
    pub bucket: String,
    /// Bodies larger than this (as sent, or after gzip) get 413.
    pub max_body: usize,
    /// Lines containing this are malformed to the server.
    pub poison: Option<String>,
    /// Answers given by the write endpoints before any real handling, after
    /// auth: (status, Retry-After).
    pub scripted: VecDeque<(u16, Option<u64>)>,
    /// Every line written, in order.
    pub lines: Vec<String>,
    /// Every status answered, in order.
    pub answers: Vec<u16>,
    /// Every request, in order: "METHOD /path?query STATUS".
    pub requests: Vec<String>,
    /// Every request gets 503 while this is set.
    pub unavailable: bool,
    /// 2.x: the id of `bucket` (16 lowercase hex digits).
    pub bucket_id: String,
    /// 2.x: the operator's user, the `userID` of what it creates.
    pub user_id: String,
    /// 2.x: the operator token's own authorization id.
    pub operator_id: String,
    /// 2.x: `active` or `inactive`, changed by a PATCH of `operator_id`.
    pub operator_status: String,
    /// 2.x: set by a DELETE of `operator_id`; the token no longer works.
    pub operator_deleted: bool,
    /// 2.x: live authorizations, in order of creation.
    pub authorizations: Vec<Authorization>,
    /// 2.x: each deleted authorization and when it was deleted.
    pub deleted_authorizations: Vec<(Authorization, SystemTime)>,
    /// 3.x: whether the Enterprise token endpoint exists.
    pub enterprise: bool,
    /// 3.x: tokens not deleted (expired ones included), in order.
    pub v3_tokens: Vec<V3Token>,
    /// 3.x: each deleted token and when it was deleted.
    pub deleted_v3_tokens: Vec<(V3Token, SystemTime)>,
    /// 3.x: the id the next token gets (`_admin` is 0).
    next_v3_id: u64,
    /// The ids of the 2.x system buckets `_monitoring` and `_tasks`.
    system_bucket_ids: [String; 2],
    started: Option<SystemTime>,
    /// The type of each field once written: (measurement, field) -> type.
    types: HashMap<(String, String), &'static str>,
    /// 3.x: each table's columns and their types.
    pub v3_tables: v3_write::Tables,
    /// 3.x: columns a table may have (tags, fields and time; 500 by
    /// default, as the server's `--num-total-columns-per-table-limit`).
    pub v3_column_limit: usize,
    /// 3.x before 3.10: a refused line whose 20-byte cut splits a
    /// character makes the server panic while answering: the good lines
    /// are written and the connection closes without an answer.
    pub v3_cut_panics: bool,
}

impl State {
    /// A live 2.x authorization.
    pub fn authorization(&self, id: &str) -> Option<&Authorization> {
        self.authorizations.iter().find(|a| a.id == id)
    }

    pub fn live_authorization(&self, id: &str) -> bool {
        self.authorization(id).is_some()
    }

    /// When the 2.x authorization `id` was deleted.
    pub fn authorization_deleted_at(&self, id: &str) -> Option<SystemTime> {
        self.deleted_authorizations
            .iter()
            .find(|(a, _)| a.id == id)
            .map(|(_, t)| *t)
    }

    /// A 3.x token not deleted (maybe expired).
    pub fn v3_token(&self, name: &str) -> Option<&V3Token> {
        self.v3_tokens.iter().find(|t| t.name == name)
    }

    /// When the 3.x token `name` was (last) deleted.
    pub fn v3_token_deleted_at(&self, name: &str) -> Option<SystemTime> {
        self.deleted_v3_tokens
            .iter()
            .rev()
            .find(|(t, _)| t.name == name)
            .map(|(_, t)| *t)
    }

    /// The least-privilege 2.x permission list: write on `bucket` only.
    pub fn write_permissions(&self) -> Value {
        json!([{"action": "write", "resource": {
            "type": "buckets", "id": self.bucket_id, "orgID": self.org}}])
    }

    /// Adds a 2.x authorization as if created through the API (e.g. an
    /// orphan left by an earlier run), active.
    pub fn add_authorization(&mut self, description: &str, permissions: Value) -> Authorization {
        let now = SystemTime::now();
        let auth = Authorization {
            id: random_id(),
            token: base64::engine::general_purpose::URL_SAFE.encode(random_bytes(64)),
            status: "active".into(),
            description: description.into(),
            org_id: self.org.clone(),
            user_id: self.user_id.clone(),
            permissions,
            created_at: now,
            updated_at: now,
        };
        self.authorizations.push(auth.clone());
        auth
    }

    /// Adds a 3.x token as if created through the API: a named admin token
    /// for `permissions` None, else an Enterprise one.
    pub fn add_v3_token(
        &mut self,
        name: &str,
        expiry: Option<SystemTime>,
        permissions: Option<Value>,
    ) -> V3Token {
        self.next_v3_id = self.next_v3_id.max(1);
        let token = V3Token {
            id: self.next_v3_id,
            name: name.into(),
            token: format!(
                "apiv3_{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(64))
            ),
            expiry,
            permissions: permissions.unwrap_or_else(|| ADMIN_PERMISSIONS.into()),
            created_at: SystemTime::now(),
        };
        self.next_v3_id += 1;
        self.v3_tokens.push(token.clone());
        token
    }

    /// The operator token's authorization as 2.x lists it.
    fn operator_authorization(&self) -> Authorization {
        let started = self.started.unwrap_or(SystemTime::UNIX_EPOCH);
        let permissions: Vec<Value> = V2_RESOURCE_TYPES
            .iter()
            .flat_map(|t| ["read", "write"].map(|a| json!({"action": a, "resource": {"type": t}})))
            .collect();
        Authorization {
            id: self.operator_id.clone(),
            token: self.token.clone(),
            status: self.operator_status.clone(),
            description: "admin's Token".into(),
            org_id: self.org.clone(),
            user_id: self.user_id.clone(),
            permissions: Value::Array(permissions),
            created_at: started,
            updated_at: started,
        }
    }
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
            bucket_id: random_id(),
            user_id: random_id(),
            operator_id: random_id(),
            operator_status: "active".into(),
            next_v3_id: 1,
            v3_column_limit: 500,
            system_bucket_ids: [random_id(), random_id()],
            started: Some(SystemTime::now()),
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
                            let s = s.clone();
                            let _ = std::thread::Builder::new()
                                .name("fake-influx-conn".into())
                                .spawn(move || {
                                    let _ = serve(conn, flavor, &s);
                                });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
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

    /// 2.x: the ids of the live authorizations (the operator's left out).
    pub fn authorization_ids(&self) -> Vec<String> {
        self.with(|s| s.authorizations.iter().map(|a| a.id.clone()).collect())
    }

    pub fn live_authorization(&self, id: &str) -> bool {
        self.with(|s| s.live_authorization(id))
    }

    /// 3.x: the names of the tokens not deleted (`_admin` left out).
    pub fn v3_token_names(&self) -> Vec<String> {
        self.with(|s| s.v3_tokens.iter().map(|t| t.name.clone()).collect())
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

/// Every 2.x resource type a permission may name.
const V2_RESOURCE_TYPES: [&str; 18] = [
    "authorizations",
    "buckets",
    "dashboards",
    "orgs",
    "sources",
    "tasks",
    "telegrafs",
    "users",
    "variables",
    "scrapers",
    "secrets",
    "labels",
    "views",
    "documents",
    "notificationRules",
    "notificationEndpoints",
    "checks",
    "dbrp",
];

fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut out));
    if read.is_err() {
        // Each RandomState has fresh keys: good enough for a test server.
        for chunk in out.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(chunk.len() as u64);
            chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A 2.x id: 16 lowercase hex digits.
fn random_id() -> String {
    hex(&random_bytes(8))
}

fn is_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A stand-in for the SHA-512 3.x shows: 128 hex digits from the token.
fn fake_hash(token: &str) -> String {
    let mut out = String::new();
    for i in 0..8u64 {
        // DefaultHasher::new() has fixed keys: the same token, the same hash.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u64(i);
        h.write(token.as_bytes());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// An SQL timestamp as 3.x's JSON query output shows it (no zone).
fn sql_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t)
        .to_string()
        .trim_end_matches('Z')
        .to_owned()
}

/// The status recorded for a request answered by closing the connection.
pub const NO_ANSWER: u16 = 0;

/// An answer: status, Retry-After, JSON body (none for an empty body).
struct Answer(u16, Option<u64>, Option<Value>);

fn serve(conn: TcpStream, flavor: Flavor, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    // A connection that sends nothing (a reachability probe) is no request.
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
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
    let chunked = header(&headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(&mut reader)?
    } else {
        let length: usize = header(&headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        body
    };

    let request = Request::parse(&request_line);
    let Answer(status, retry_after, json) = {
        let mut st = state.lock().unwrap();
        let answer = if st.unavailable {
            match flavor {
                Flavor::V2 => v2_error(503, "unavailable", "service unavailable"),
                Flavor::V3 => v3_error(503, "service unavailable"),
            }
        } else {
            match flavor {
                Flavor::V2 => answer_v2(&request, &headers, &body, &mut st),
                Flavor::V3 => answer_v3(&request, &headers, &body, &mut st),
            }
        };
        st.answers.push(answer.0);
        st.requests.push(format!(
            "{} {} {}",
            request.method,
            request_line.split(' ').nth(1).unwrap_or_default(),
            answer.0
        ));
        answer
    };
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
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
            let body = json_text(&json);
            out.push_str(&format!(
                "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    let mut conn = reader.into_inner();
    if status == NO_ANSWER {
        return conn.shutdown(std::net::Shutdown::Both);
    }
    conn.write_all(out.as_bytes())?;
    conn.flush()
}

/// A JSON body as the servers order it: keys sorted (as serde_json's map
/// keeps them), except that 3.x's error struct puts `error` before `data`.
fn json_text(json: &Value) -> String {
    match json.as_object() {
        Some(map) if map.contains_key("error") && map.contains_key("data") => {
            let rest: Vec<String> = map
                .iter()
                .filter(|(k, _)| *k != "error")
                .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
                .collect();
            format!("{{\"error\":{},{}}}", map["error"], rest.join(","))
        }
        _ => json.to_string(),
    }
}

/// A `Transfer-Encoding: chunked` body, trailers skipped.
fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {size_line:?}")))?;
        if size == 0 {
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
    }
}

/// The parts of a request line the endpoints look at.
#[derive(Clone, Copy)]
struct Request<'a> {
    /// GET, POST, PATCH, DELETE, ...
    method: &'a str,
    path: &'a str,
    /// Raw (percent-encoded); read it with `param`.
    query: &'a str,
}

impl<'a> Request<'a> {
    fn parse(request_line: &'a str) -> Self {
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method,
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

/// `%XX` decoded and `+` as a space; a broken escape is kept as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escape = b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit();
        if escape {
            let digits = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or_default();
            out.push(u8::from_str_radix(digits, 16).unwrap_or_default());
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A query parameter, decoded.
fn param_opt(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn param(query: &str, name: &str) -> String {
    param_opt(query, name).unwrap_or_default()
}

fn v2_error(status: u16, code: &str, message: impl Into<String>) -> Answer {
    let message: String = message.into();
    Answer(
        status,
        None,
        Some(json!({"code": code, "message": message})),
    )
}

fn v3_error(status: u16, message: impl Into<String>) -> Answer {
    let message: String = message.into();
    Answer(status, None, Some(json!({"error": message})))
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
    /// Why the line's field types conflict.
    Conflict(String),
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
            Some(why) => out.push(Checked::Conflict(why)),
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

/// Who a 2.x request comes from.
enum Caller {
    Operator,
    /// An authorization's token: whether it is active, its permissions.
    Auth(bool, Value),
}

impl Caller {
    /// Whether the caller holds `wanted` (`{"action","resource"}`).
    fn allows(&self, st: &State, wanted: &Value) -> bool {
        match self {
            Caller::Operator => st.operator_status == "active",
            Caller::Auth(active, permissions) => {
                *active
                    && permissions
                        .as_array()
                        .is_some_and(|held| held.iter().any(|p| covers(p, wanted)))
            }
        }
    }
}

fn scheme_token(headers: &[(String, String)]) -> Option<&str> {
    header(headers, "authorization").and_then(|v| {
        v.strip_prefix("Token ")
            .or_else(|| v.strip_prefix("Bearer "))
    })
}

/// The caller of a 2.x request, None for a missing, unknown or deleted
/// token.
fn v2_caller(headers: &[(String, String)], st: &State) -> Option<Caller> {
    let token = scheme_token(headers)?;
    if token == st.token && !st.operator_deleted {
        return Some(Caller::Operator);
    }
    st.authorizations
        .iter()
        .find(|a| a.token == token)
        .map(|a| Caller::Auth(a.status == "active", a.permissions.clone()))
}

/// Whether the 2.x permission `held` covers `wanted`: same action and
/// type, and an id or orgID in `held` only when `wanted` has the same.
fn covers(held: &Value, wanted: &Value) -> bool {
    let (h, w) = (&held["resource"], &wanted["resource"]);
    held["action"] == wanted["action"]
        && h["type"] == w["type"]
        && ["id", "orgID"]
            .iter()
            .all(|k| h[k].is_null() || h.get(k) == w.get(k))
}

fn permission(action: &str, kind: &str, id: Option<&str>, org: &str) -> Value {
    let mut resource = json!({"type": kind, "orgID": org});
    if let Some(id) = id {
        resource["id"] = json!(id);
    }
    json!({"action": action, "resource": resource})
}

/// `write:orgs/ORG/buckets/ID`, as 2.x prints a permission.
fn permission_text(p: &Value) -> String {
    let r = &p["resource"];
    let mut text = p["action"].as_str().unwrap_or_default().to_owned() + ":";
    if let Some(org) = r["orgID"].as_str() {
        text.push_str(&format!("orgs/{org}/"));
    }
    text.push_str(r["type"].as_str().unwrap_or_default());
    if let Some(id) = r["id"].as_str() {
        text.push_str(&format!("/{id}"));
    }
    text
}

/// What 2.x's authorizer answers for a permission the caller lacks.
fn unauthorized_for(wanted: &Value) -> Answer {
    v2_error(
        401,
        "unauthorized",
        format!("{} is unauthorized", permission_text(wanted)),
    )
}

fn answer_v2(
    request: &Request<'_>,
    headers: &[(String, String)],
    body: &[u8],
    st: &mut State,
) -> Answer {
    let Request {
        method,
        path,
        query,
    } = *request;
    let by_id = path
        .strip_prefix("/api/v2/authorizations/")
        .filter(|id| !id.is_empty() && !id.contains('/'));
    let methods: &[&str] = match path {
        "/api/v2/write" => &["POST"],
        "/api/v2/buckets" => &["GET"],
        "/api/v2/authorizations" => &["GET", "POST"],
        _ if by_id.is_some() => &["GET", "PATCH", "DELETE"],
        _ => return v2_error(404, "not found", format!("path {path} not found")),
    };
    if !methods.contains(&method) {
        return v2_error(405, "method not allowed", "method not allowed");
    }
    let Some(caller) = v2_caller(headers, st) else {
        return v2_error(401, "unauthorized", "unauthorized access");
    };
    if let Some(id) = by_id {
        return authorization_by_id(method, id, body, &caller, st);
    }
    match (method, path) {
        (_, "/api/v2/write") => write_v2(query, headers, body, &caller, st),
        (_, "/api/v2/buckets") => get_buckets(query, &caller, st),
        ("GET", _) => list_authorizations(query, &caller, st),
        _ => create_authorization(body, &caller, st),
    }
}

/// The 2.x buckets of the org: `bucket`, then the system buckets.
fn all_buckets(st: &State) -> Vec<Value> {
    let started = rfc3339(st.started.unwrap_or(SystemTime::UNIX_EPOCH));
    let [monitoring, tasks] = &st.system_bucket_ids;
    [
        (&st.bucket_id, st.bucket.as_str(), "user", 0),
        (monitoring, "_monitoring", "system", 604_800),
        (tasks, "_tasks", "system", 259_200),
    ]
    .into_iter()
    .map(|(id, name, kind, seconds)| {
        json!({
            "id": id,
            "orgID": st.org,
            "type": kind,
            "name": name,
            "description": if kind == "system" { "System bucket" } else { "" },
            "retentionRules": [{
                "type": "expire",
                "everySeconds": seconds,
                "shardGroupDurationSeconds": if seconds == 0 { 604_800 } else { 86_400 },
            }],
            "createdAt": started,
            "updatedAt": started,
            "links": {
                "self": format!("/api/v2/buckets/{id}"),
                "org": format!("/api/v2/orgs/{}", st.org),
                "write": format!("/api/v2/write?org={}&bucket={id}", st.org),
                "labels": format!("/api/v2/buckets/{id}/labels"),
                "members": format!("/api/v2/buckets/{id}/members"),
                "owners": format!("/api/v2/buckets/{id}/owners"),
            },
            "labels": [],
        })
    })
    .collect()
}

fn get_buckets(query: &str, caller: &Caller, st: &State) -> Answer {
    let org_id = param_opt(query, "orgID");
    let name = param_opt(query, "name");
    let in_org = org_id.as_deref().is_none_or(|o| o == st.org);
    let mut found = Vec::new();
    for bucket in all_buckets(st) {
        if !in_org || name.as_deref().is_some_and(|n| bucket["name"] != n) {
            continue;
        }
        let id = bucket["id"].as_str().unwrap_or_default();
        let wanted = permission("read", "buckets", Some(id), &st.org);
        if !caller.allows(st, &wanted) {
            if name.is_some() {
                return unauthorized_for(&wanted);
            }
            continue;
        }
        found.push(bucket);
    }
    if let Some(name) = name.filter(|_| found.is_empty()) {
        return v2_error(404, "not found", format!("bucket \"{name}\" not found"));
    }
    let mut link = "/api/v2/buckets?descending=false&limit=20&offset=0".to_owned();
    if let Some(o) = org_id {
        link.push_str(&format!("&orgID={o}"));
    }
    Answer(
        200,
        None,
        Some(json!({"links": {"self": link}, "buckets": found})),
    )
}

fn authorization_json(a: &Authorization, redact: bool) -> Value {
    json!({
        "id": a.id,
        "token": if redact { "REDACTED" } else { a.token.as_str() },
        "status": a.status,
        "description": a.description,
        "orgID": a.org_id,
        "userID": a.user_id,
        "permissions": a.permissions,
        "createdAt": rfc3339(a.created_at),
        "updatedAt": rfc3339(a.updated_at),
        "links": {
            "self": format!("/api/v2/authorizations/{}", a.id),
            "user": format!("/api/v2/users/{}", a.user_id),
        },
    })
}

fn invalid(message: impl Into<String>) -> Answer {
    v2_error(400, "invalid", message)
}

fn json_object(body: &[u8]) -> Result<Value, Answer> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(invalid("invalid json structure: expected an object")),
        Err(e) => Err(invalid(format!("invalid json structure: {e}"))),
    }
}

fn status_of(v: Option<&Value>) -> Result<Option<String>, Answer> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "active" || s == "inactive" => Ok(Some(s.clone())),
        Some(_) => Err(invalid("status must be \"active\" or \"inactive\"")),
    }
}

fn create_authorization(body: &[u8], caller: &Caller, st: &mut State) -> Answer {
    let request = match json_object(body) {
        Ok(v) => v,
        Err(a) => return a,
    };
    let permissions = match request.get("permissions") {
        Some(Value::Array(ps)) if !ps.is_empty() => ps.clone(),
        None | Some(Value::Null) | Some(Value::Array(_)) => {
            return invalid("authorization must include permissions");
        }
        Some(_) => return invalid("invalid json structure: permissions must be a list"),
    };
    for p in &permissions {
        if !matches!(p["action"].as_str(), Some("read" | "write")) {
            return invalid("unknown action for permission");
        }
        let kind = p["resource"]["type"].as_str().unwrap_or_default();
        if !V2_RESOURCE_TYPES.contains(&kind) {
            return invalid("unknown resource type for permission");
        }
        match &p["resource"]["id"] {
            Value::Null => {}
            Value::String(id) if is_id(id) => {}
            _ => return invalid("id must have a length of 16 bytes"),
        }
        if !matches!(&p["resource"]["orgID"], Value::Null | Value::String(_)) {
            return invalid("id must have a length of 16 bytes");
        }
    }
    let org_id = match request.get("orgID") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return invalid("org id required"),
    };
    let status = match status_of(request.get("status")) {
        Ok(s) => s.unwrap_or_else(|| "active".into()),
        Err(a) => return a,
    };
    let wanted = permission("write", "authorizations", None, &org_id);
    if !caller.allows(st, &wanted) {
        return unauthorized_for(&wanted);
    }
    if matches!(caller, Caller::Auth(..))
        && let Some(p) = permissions.iter().find(|p| !caller.allows(st, p))
    {
        return v2_error(
            403,
            "forbidden",
            format!("permission {} is not allowed", permission_text(p)),
        );
    }
    if org_id != st.org {
        return invalid("organization not found");
    }
    let bucket_ids = [
        &st.bucket_id,
        &st.system_bucket_ids[0],
        &st.system_bucket_ids[1],
    ];
    for p in &permissions {
        let r = &p["resource"];
        if r["orgID"].as_str().is_some_and(|o| o != st.org) {
            return v2_error(404, "not found", "organization not found");
        }
        let unknown_bucket = r["type"] == "buckets"
            && r["id"]
                .as_str()
                .is_some_and(|id| !bucket_ids.iter().any(|b| *b == id));
        if unknown_bucket {
            return v2_error(404, "not found", "bucket not found");
        }
    }
    let mut auth = st.add_authorization(
        request["description"].as_str().unwrap_or_default(),
        Value::Array(permissions),
    );
    auth.status = status;
    if let Some(user) = request["userID"].as_str() {
        auth.user_id = user.into();
    }
    if let Some(stored) = st.authorizations.last_mut() {
        *stored = auth.clone();
    }
    Answer(201, None, Some(authorization_json(&auth, false)))
}

fn list_authorizations(query: &str, caller: &Caller, st: &State) -> Answer {
    let org_id = param_opt(query, "orgID");
    let operator = (!st.operator_deleted).then(|| st.operator_authorization());
    let listed: Vec<Value> = operator
        .iter()
        .chain(&st.authorizations)
        .filter(|a| org_id.as_deref().is_none_or(|o| a.org_id == o))
        .filter(|a| {
            caller.allows(
                st,
                &permission("read", "authorizations", Some(&a.id), &a.org_id),
            )
        })
        .map(|a| authorization_json(a, true))
        .collect();
    let mut link = "/api/v2/authorizations".to_owned();
    if let Some(o) = org_id {
        link.push_str(&format!("?orgID={o}"));
    }
    Answer(
        200,
        None,
        Some(json!({"links": {"self": link}, "authorizations": listed})),
    )
}

fn authorization_by_id(
    method: &str,
    id: &str,
    body: &[u8],
    caller: &Caller,
    st: &mut State,
) -> Answer {
    if !is_id(id) {
        return invalid("id must have a length of 16 bytes");
    }
    let operator = id == st.operator_id && !st.operator_deleted;
    let found = if operator {
        Some(st.operator_authorization())
    } else {
        st.authorization(id).cloned()
    };
    let Some(mut auth) = found else {
        return v2_error(404, "not found", "authorization not found");
    };
    let action = if method == "GET" { "read" } else { "write" };
    let wanted = permission(action, "authorizations", Some(id), &auth.org_id);
    if !caller.allows(st, &wanted) {
        return unauthorized_for(&wanted);
    }
    match method {
        "GET" => Answer(200, None, Some(authorization_json(&auth, true))),
        "PATCH" => {
            let request = match json_object(body) {
                Ok(v) => v,
                Err(a) => return a,
            };
            match status_of(request.get("status")) {
                Ok(Some(s)) => auth.status = s,
                Ok(None) => {}
                Err(a) => return a,
            }
            if let Some(d) = request["description"].as_str() {
                auth.description = d.into();
            }
            auth.updated_at = SystemTime::now();
            if operator {
                st.operator_status = auth.status.clone();
            } else if let Some(stored) = st.authorizations.iter_mut().find(|a| a.id == id) {
                *stored = auth.clone();
            }
            Answer(200, None, Some(authorization_json(&auth, true)))
        }
        _ => {
            if operator {
                st.operator_deleted = true;
            } else {
                st.authorizations.retain(|a| a.id != id);
                st.deleted_authorizations.push((auth, SystemTime::now()));
            }
            Answer(204, None, None)
        }
    }
}

fn write_v2(
    query: &str,
    headers: &[(String, String)],
    body: &[u8],
    caller: &Caller,
    st: &mut State,
) -> Answer {
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
    let org = param_opt(query, "org")
        .or_else(|| param_opt(query, "orgID"))
        .unwrap_or_default();
    if org != st.org {
        return v2_error(
            400,
            "invalid",
            format!("organization name \"{org}\" not found"),
        );
    }
    if param(query, "bucket") != st.bucket {
        return v2_error(
            404,
            "not found",
            format!("bucket \"{}\" not found", param(query, "bucket")),
        );
    }
    let wanted = permission("write", "buckets", Some(&st.bucket_id), &st.org);
    if !caller.allows(st, &wanted) {
        return v2_error(403, "forbidden", "insufficient permissions for write");
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
            Checked::Conflict(why) => conflicts.push(why),
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

/// Who a 3.x request comes from.
enum V3Caller {
    Operator,
    Token(V3Token),
}

impl V3Caller {
    fn is_admin(&self) -> bool {
        match self {
            V3Caller::Operator => true,
            V3Caller::Token(t) => t.is_admin(),
        }
    }

    fn may_write(&self, db: &str) -> bool {
        let has = |list: &Value, x: &str| {
            list.as_array()
                .is_some_and(|l| l.iter().any(|e| e == x || e == "*"))
        };
        match self {
            V3Caller::Operator => true,
            V3Caller::Token(t) => {
                t.is_admin()
                    || t.permissions.as_array().is_some_and(|ps| {
                        ps.iter().any(|p| {
                            matches!(p["resource_type"].as_str(), Some("db" | "*"))
                                && has(&p["resource_names"], db)
                                && has(&p["actions"], "write")
                        })
                    })
            }
        }
    }
}

fn answer_v3(
    request: &Request<'_>,
    headers: &[(String, String)],
    body: &[u8],
    st: &mut State,
) -> Answer {
    let Request {
        method,
        path,
        query,
    } = *request;
    let caller = match header(headers, "authorization") {
        None => return Answer(401, None, None),
        Some(v) => {
            let token = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("Token "));
            let Some(token) = token else {
                return v3_error(400, "invalid Authorization header");
            };
            let now = SystemTime::now();
            if token == st.token {
                V3Caller::Operator
            } else {
                match st
                    .v3_tokens
                    .iter()
                    .find(|t| t.token == token && !t.expired(now))
                {
                    Some(t) => V3Caller::Token(t.clone()),
                    None => return Answer(401, None, None),
                }
            }
        }
    };
    let methods: &[&str] = match path {
        "/api/v3/write_lp" => &["POST"],
        "/api/v3/configure/token/named_admin" => &["POST"],
        "/api/v3/enterprise/configure/token" if st.enterprise => &["POST"],
        "/api/v3/configure/token" => &["DELETE"],
        "/api/v3/query_sql" => &["GET", "POST"],
        _ => return v3_error(404, format!("path {path} not found")),
    };
    if !methods.contains(&method) {
        return v3_error(405, "method not allowed");
    }
    if path == "/api/v3/write_lp" {
        return write_v3(query, headers, body, &caller, st);
    }
    if !caller.is_admin() {
        return v3_error(403, "forbidden: the token is not an admin token");
    }
    match path {
        "/api/v3/configure/token" => delete_v3_token(query, st),
        "/api/v3/query_sql" => query_v3_tokens(method, query, body, st),
        _ => create_v3_token(path, headers, body, st),
    }
}

fn valid_v3_permission(p: &Value) -> bool {
    let list_of = |v: &Value, ok: &dyn Fn(&str) -> bool| {
        v.as_array()
            .is_some_and(|l| !l.is_empty() && l.iter().all(|x| x.as_str().is_some_and(ok)))
    };
    matches!(p["resource_type"].as_str(), Some("db" | "system" | "*"))
        && list_of(&p["resource_names"], &|n| !n.is_empty())
        && list_of(&p["actions"], &|a| matches!(a, "read" | "write" | "*"))
}

fn v3_token_json(t: &V3Token) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "token": t.token,
        "hash": fake_hash(&t.token),
        "created_at": rfc3339(t.created_at),
        "expiry": t.expiry.map(rfc3339),
    })
}

fn create_v3_token(
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    st: &mut State,
) -> Answer {
    let json_type = header(headers, "content-type").is_some_and(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case("application/json")
    });
    if !json_type {
        return v3_error(415, "the request must have Content-Type: application/json");
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return v3_error(400, "invalid JSON body: expected an object"),
        Err(e) => return v3_error(400, format!("invalid JSON body: {e}")),
    };
    let name = match &request["token_name"] {
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => return v3_error(400, "token_name is required"),
    };
    let expiry_secs = match &request["expiry_secs"] {
        Value::Null => None,
        v => match v.as_u64() {
            Some(s) => Some(s),
            None => return v3_error(400, "expiry_secs must be a whole number of seconds"),
        },
    };
    let permissions = if path == "/api/v3/enterprise/configure/token" {
        match &request["permissions"] {
            Value::Array(ps) if !ps.is_empty() && ps.iter().all(valid_v3_permission) => {
                Some(Value::Array(ps.clone()))
            }
            _ => {
                return v3_error(
                    400,
                    "permissions must be a non-empty list of {resource_type, resource_names, actions}",
                );
            }
        }
    } else {
        None
    };
    if name == "_admin" || st.v3_token(&name).is_some() {
        return v3_error(409, format!("token name already exists, {name}"));
    }
    let expiry = expiry_secs.map(|s| SystemTime::now() + Duration::from_secs(s));
    let token = st.add_v3_token(&name, expiry, permissions);
    Answer(201, None, Some(v3_token_json(&token)))
}

fn delete_v3_token(query: &str, st: &mut State) -> Answer {
    let Some(name) = param_opt(query, "token_name").filter(|n| !n.is_empty()) else {
        return v3_error(400, "token_name is required");
    };
    if name == "_admin" {
        return v3_error(405, "cannot delete the operator token");
    }
    let Some(i) = st.v3_tokens.iter().position(|t| t.name == name) else {
        return v3_error(404, format!("token not found: {name}"));
    };
    let token = st.v3_tokens.remove(i);
    st.deleted_v3_tokens.push((token, SystemTime::now()));
    Answer(200, None, None)
}

/// `*:*:*`, or `db:a,b:read,write` for each Enterprise permission.
fn v3_permissions_text(p: &Value) -> String {
    let join = |v: &Value| {
        v.as_array()
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    match p {
        Value::String(s) => s.clone(),
        Value::Array(ps) => ps
            .iter()
            .map(|p| {
                format!(
                    "{}:{}:{}",
                    p["resource_type"].as_str().unwrap_or_default(),
                    join(&p["resource_names"]),
                    join(&p["actions"])
                )
            })
            .collect::<Vec<_>>()
            .join(";"),
        other => other.to_string(),
    }
}

fn query_v3_tokens(method: &str, query: &str, body: &[u8], st: &State) -> Answer {
    let (db, q, format) = if method == "POST" {
        let request: Value = serde_json::from_slice(body).unwrap_or_default();
        let field = |k: &str| request[k].as_str().map(str::to_owned);
        (
            field("db").unwrap_or_default(),
            field("q").unwrap_or_default(),
            field("format").unwrap_or_else(|| "json".into()),
        )
    } else {
        (
            param(query, "db"),
            param(query, "q"),
            param_opt(query, "format").unwrap_or_else(|| "json".into()),
        )
    };
    if db != "_internal" && db != st.bucket {
        return v3_error(404, format!("database not found: {db}"));
    }
    if db != "_internal" || !q.contains("system.tokens") || format != "json" {
        return v3_error(
            400,
            "this fake only answers SELECT .. FROM system.tokens on db _internal, format json",
        );
    }
    let row = |id: u64, name: &str, token: &str, created: SystemTime, expiry, perms: &Value| {
        let mut row = json!({
            "token_id": id,
            "name": name,
            "hash": fake_hash(token),
            "created_at": sql_time(created),
            "permissions": v3_permissions_text(perms),
        });
        if let Some(e) = expiry {
            row["expiry"] = json!(sql_time(e));
        }
        row
    };
    let started = st.started.unwrap_or(SystemTime::UNIX_EPOCH);
    let mut rows = vec![row(
        0,
        "_admin",
        &st.token,
        started,
        None,
        &json!(ADMIN_PERMISSIONS),
    )];
    for t in &st.v3_tokens {
        rows.push(row(
            t.id,
            &t.name,
            &t.token,
            t.created_at,
            t.expiry,
            &t.permissions,
        ));
    }
    Answer(200, None, Some(Value::Array(rows)))
}

fn write_v3(
    query: &str,
    headers: &[(String, String)],
    body: &[u8],
    caller: &V3Caller,
    st: &mut State,
) -> Answer {
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
    if !caller.may_write(&st.bucket) {
        return v3_error(403, "forbidden: the token may not write to this database");
    }
    let Some(raw) = decoded(headers, body) else {
        return v3_error(400, "invalid gzip body");
    };
    if raw.len() > st.max_body {
        return v3_error(413, "the request was too large");
    }
    let accept_partial = param(query, "accept_partial") != "false";
    let text = String::from_utf8_lossy(&raw).into_owned();
    let poison = st.poison.clone();
    let limit = st.v3_column_limit;
    let panics = st.v3_cut_panics;
    match v3_write::validate(
        &text,
        &mut st.v3_tables,
        poison.as_deref(),
        limit,
        accept_partial,
    ) {
        v3_write::Outcome::Refused { cut_split, .. } if panics && cut_split => {
            Answer(NO_ANSWER, None, None)
        }
        v3_write::Outcome::Refused { first, .. } => Answer(
            400,
            None,
            Some(json!({"error": "parsing failed for write_lp endpoint", "data": first})),
        ),
        v3_write::Outcome::Written {
            lines,
            refused,
            limit_hit,
            cut_split,
        } => {
            st.lines.extend(lines.into_iter().map(|(line, _)| line));
            if refused.is_empty() {
                return Answer(204, None, None);
            }
            if panics && cut_split {
                return Answer(NO_ANSWER, None, None);
            }
            Answer(
                if limit_hit { 422 } else { 400 },
                None,
                Some(json!({
                    "error": "partial write of line protocol occurred",
                    "data": refused,
                })),
            )
        }
    }
}
