//! The real credentials behind leases, in each kind of InfluxDB (2.x
//! authorizations, 1.x users, 3.x tokens; docs/influxdb-api.md): creates
//! least-privilege ones tagged with the lease id, deletes them by handle,
//! and lists the tagged ones. Every call blocks, bounded by a timeout.
//!
//! It never logs or returns a credential except inside the [`Grant`] it
//! hands back, scrubs a new password out of any error text InfluxDB might
//! echo, and keeps no state beyond resolved bucket ids.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::authority::config::{Access, Backend as BackendConfig, BackendKind, Role};
use crate::secret::{self, Secret};
use crate::wire::api::Target;

/// Prefix of every 2.x description and 3.x token name leasegate makes:
/// `leasegate:<deployment>:<lease id>:<identity name>:<expiry unix>`, so
/// the state can be rebuilt from InfluxDB and orphans found, and never
/// another deployment's (two authorities may share an InfluxDB).
pub const TAG: &str = "leasegate:";
/// Prefix of every 1.x user leasegate makes: `lg_<deployment>_<lease id>`.
pub const V1_USER_PREFIX: &str = "lg_";

/// Whose a leasegate-looking credential is, by its exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// Made by this deployment for this lease.
    Here(String),
    /// Named the way authorities named credentials before deployment ids
    /// (`lg_<lease>`, `leasegate:<lease>:...`): ours only if this store
    /// knows the lease.
    Unscoped(String),
}

const TIMEOUT: Duration = Duration::from_secs(10);
/// Deletions are small and come due on time: a hung one must not hold up
/// the expiries queued behind it for long; it is retried instead.
const DELETE_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_MESSAGE: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {backend}: {action}: {source}")]
    Transport {
        backend: String,
        action: String,
        #[source]
        source: ureq::Error,
    },
    #[error("backend {backend}: {action}: HTTP {status}: {message}")]
    Status {
        backend: String,
        action: String,
        status: u16,
        message: String,
    },
    #[error("backend {backend}: {action}: {message}")]
    Answer {
        backend: String,
        action: String,
        message: String,
    },
}

/// A new credential: its secret (for the gateway, once) and its handle
/// (for the store, to delete it).
pub struct Grant {
    pub secret: Secret,
    pub handle: String,
}

/// What a credential is for.
pub struct Wanted<'a> {
    pub lease_id: &'a str,
    pub identity_name: &'a str,
    pub expires_unix: i64,
    pub ttl: Duration,
    pub role: &'a Role,
    /// The role's bucket or database for this identity.
    pub target: &'a str,
}

/// One configured InfluxDB. Its calls block: callers run them off the
/// async runtime.
pub struct Backend {
    config: BackendConfig,
    /// This deployment's id, in every credential's name (see [`Made`]).
    deployment: String,
    agent: ureq::Agent,
    delete_agent: ureq::Agent,
    /// The value of the Authorization header for admin calls.
    authorization: Secret,
    /// 2.x: bucket name -> id, resolved at start or on first use.
    bucket_ids: Mutex<HashMap<String, String>>,
}

impl Backend {
    pub fn new(config: &BackendConfig, deployment: &str) -> Backend {
        let agent = |timeout| {
            ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .user_agent(concat!("leasegate-authority/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        let expose = |s: &Option<Secret>| {
            s.as_ref()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default()
        };
        let authorization = Secret::new(match config.kind {
            BackendKind::V1 => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    config.admin_username.as_deref().unwrap_or_default(),
                    expose(&config.admin_password)
                ))
            ),
            BackendKind::V2 => format!("Token {}", expose(&config.admin_token)),
            BackendKind::V3 => format!("Bearer {}", expose(&config.admin_token)),
        });
        Backend {
            config: config.clone(),
            deployment: deployment.to_owned(),
            agent: agent(TIMEOUT),
            delete_agent: agent(DELETE_TIMEOUT),
            authorization,
            bucket_ids: Mutex::new(HashMap::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn kind(&self) -> BackendKind {
        self.config.kind
    }

    /// What an operator must know about this backend at start.
    pub fn warning(&self) -> Option<String> {
        (self.config.kind == BackendKind::V3 && !self.config.enterprise).then(|| format!(
            "backend {}: InfluxDB 3 Core cannot scope tokens, so each lease is a named admin token with full access until it expires; set enterprise = true on an Enterprise server for database-scoped tokens",
            self.config.name
        ))
    }

    /// Where a lease of `role` writes.
    /// Where a lease writes: `target` is the role's bucket or database,
    /// resolved for the identity.
    pub fn target(&self, target: &str) -> Target {
        let v2 = self.config.kind == BackendKind::V2;
        Target {
            api: self.config.kind,
            url: self.config.url.clone(),
            org: if v2 { self.config.org_id.clone() } else { None },
            bucket: v2.then(|| target.to_owned()),
            database: (!v2).then(|| target.to_owned()),
        }
    }

    /// Checks that need InfluxDB: 2.x bucket ids for `roles`. A failure
    /// here is not fatal (InfluxDB may come up later); creation resolves
    /// again.
    pub fn prepare(&self, roles: &[&Role]) -> Result<(), BackendError> {
        if self.config.kind == BackendKind::V2 {
            // A per-identity bucket is looked up when its first lease is.
            for role in roles.iter().filter(|r| !r.per_identity()) {
                self.bucket_id(&role.target)?;
            }
        }
        Ok(())
    }

    pub fn create(&self, w: &Wanted<'_>) -> Result<Grant, BackendError> {
        match self.config.kind {
            BackendKind::V1 => self.v1_create(w),
            BackendKind::V2 => self.v2_create(w),
            BackendKind::V3 => self.v3_create(w),
        }
    }

    /// Deletes a credential; one that is already gone counts as deleted.
    pub fn delete(&self, handle: &str) -> Result<(), BackendError> {
        match self.config.kind {
            BackendKind::V1 => {
                let answer = self.influxql(
                    &self.delete_agent,
                    "drop user",
                    &format!("DROP USER {}", ident(handle)),
                )?;
                match statement_error(&answer) {
                    Some(e) if !e.contains("not found") => Err(self.answer_error("drop user", e)),
                    _ => Ok(()),
                }
            }
            BackendKind::V2 => self.delete_at(
                "delete authorization",
                &format!(
                    "{}/api/v2/authorizations/{}",
                    self.config.url,
                    encode(handle)
                ),
            ),
            BackendKind::V3 => self.delete_at(
                "delete token",
                &format!(
                    "{}/api/v3/configure/token?token_name={}",
                    self.config.url,
                    encode(handle)
                ),
            ),
        }
    }

    /// DELETE `url`; gone already (404) counts as deleted.
    fn delete_at(&self, action: &str, url: &str) -> Result<(), BackendError> {
        let (status, body) = self.call(
            action,
            self.delete_agent
                .delete(url)
                .header("Authorization", self.authorization.expose())
                .call(),
        )?;
        match status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.status_error(action, status, &body)),
        }
    }

    /// The leasegate-made credentials that exist in InfluxDB, as (handle,
    /// lease id).
    pub fn tagged(&self) -> Result<Vec<(String, Made)>, BackendError> {
        let found = self.tagged_handles()?;
        Ok(found
            .into_iter()
            .filter_map(|(handle, tag)| made(&tag, &self.deployment).map(|m| (handle, m)))
            .collect())
    }

    /// (handle, the text carrying the tag): the user name on 1.x, the
    /// authorization id and its description on 2.x, the name on 3.x.
    fn tagged_handles(&self) -> Result<Vec<(String, String)>, BackendError> {
        match self.config.kind {
            BackendKind::V1 => {
                let answer = self.influxql(&self.agent, "show users", "SHOW USERS")?;
                if let Some(e) = statement_error(&answer) {
                    return Err(self.answer_error("show users", e));
                }
                let values = &answer["results"][0]["series"][0]["values"];
                Ok(values
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|row| row[0].as_str())
                    .filter(|u| u.starts_with(V1_USER_PREFIX))
                    .map(|u| (u.to_owned(), u.to_owned()))
                    .collect())
            }
            BackendKind::V2 => {
                let url = format!(
                    "{}/api/v2/authorizations?orgID={}",
                    self.config.url,
                    encode(self.config.org_id.as_deref().unwrap_or_default())
                );
                let action = "list authorizations";
                let v = self.get_json(action, &url)?;
                Ok(v["authorizations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| {
                        let (id, description) = (a["id"].as_str()?, a["description"].as_str()?);
                        description
                            .starts_with(TAG)
                            .then(|| (id.to_owned(), description.to_owned()))
                    })
                    .collect())
            }
            BackendKind::V3 => {
                let url = format!(
                    "{}/api/v3/query_sql?db=_internal&q={}&format=json",
                    self.config.url,
                    encode("SELECT * FROM system.tokens")
                );
                let action = "list tokens";
                let v = self.get_json(action, &url)?;
                Ok(v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t["name"].as_str())
                    .filter(|n| n.starts_with(TAG))
                    .map(|n| (n.to_owned(), n.to_owned()))
                    .collect())
            }
        }
    }

    /// Deletes every credential this deployment made whose lease is not
    /// live; nothing else, however much it looks like leasegate's.
    /// `leases` gives (live lease ids, every lease id the store knows) and
    /// is asked after InfluxDB is listed: a lease is recorded before its
    /// credential is made, so a credential made meanwhile is never taken
    /// for an orphan. Returns how many went.
    pub fn reconcile(
        &self,
        leases: impl FnOnce() -> Result<(HashSet<String>, HashSet<String>), String>,
        stop: impl Fn() -> bool,
    ) -> Result<usize, String> {
        let tagged = self.tagged().map_err(|e| crate::error_chain(&e))?;
        let (live, known) = leases()?;
        let mut deleted = 0;
        for (handle, made) in tagged {
            if stop() {
                break;
            }
            let orphan = match &made {
                Made::Here(id) => !live.contains(id),
                Made::Unscoped(id) => known.contains(id) && !live.contains(id),
            };
            if orphan {
                self.delete(&handle).map_err(|e| crate::error_chain(&e))?;
                log::info!(
                    "backend {}: deleted orphaned credential {handle} (no live lease holds it)",
                    self.config.name
                );
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    // --- 1.x ---

    fn v1_create(&self, w: &Wanted<'_>) -> Result<Grant, BackendError> {
        let user = format!("{V1_USER_PREFIX}{}_{}", self.deployment, w.lease_id);
        let password = secret::random_base64(24);
        let privilege = match (
            w.role.access.contains(&Access::Read),
            w.role.access.contains(&Access::Write),
        ) {
            (true, true) => "ALL",
            (true, false) => "READ",
            _ => "WRITE",
        };
        // A database of the identity's own is made with its first lease
        // (CREATE DATABASE does nothing to one that exists); a shared one
        // is the admin's to make.
        let create_database = if w.role.per_identity() {
            format!("CREATE DATABASE {}; ", ident(w.target))
        } else {
            String::new()
        };
        let q = format!(
            "{create_database}CREATE USER {} WITH PASSWORD '{password}'; GRANT {privilege} ON {} TO {}",
            ident(&user),
            ident(w.target),
            ident(&user)
        );
        let answer = self
            .influxql(&self.agent, "create user", &q)
            .map_err(|e| scrub(e, &password))?;
        if let Some(e) = statement_error(&answer) {
            let e = e.replace(&password, "<redacted>");
            // The user may exist without its grant: take it away again.
            let _ = self.delete(&user);
            return Err(self.answer_error("create user", &e));
        }
        Ok(Grant {
            secret: Secret::new(format!("{user}:{password}")),
            handle: user,
        })
    }

    /// Runs InfluxQL as the admin; the parsed answer, or an error for a
    /// failed request (a failed statement is inside the answer).
    fn influxql(&self, agent: &ureq::Agent, action: &str, q: &str) -> Result<Value, BackendError> {
        let url = format!("{}/query", self.config.url);
        let (status, body) = self.call(
            action,
            agent
                .post(&url)
                .header("Authorization", self.authorization.expose())
                .send_form([("q", q)]),
        )?;
        if status != 200 {
            return Err(self.status_error(action, status, &body));
        }
        self.json(action, &body)
    }

    // --- 2.x ---

    fn bucket_id(&self, bucket: &str) -> Result<String, BackendError> {
        if let Some(id) = self
            .bucket_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(bucket)
        {
            return Ok(id.clone());
        }
        let action = format!("find bucket {bucket:?}");
        let url = format!(
            "{}/api/v2/buckets?orgID={}&name={}",
            self.config.url,
            encode(self.config.org_id.as_deref().unwrap_or_default()),
            encode(bucket)
        );
        let v = self.get_json(&action, &url)?;
        let id = v["buckets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["name"].as_str() == Some(bucket))
            .and_then(|b| b["id"].as_str())
            .ok_or_else(|| self.answer_error(&action, "no such bucket in the organization"))?
            .to_owned();
        self.bucket_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(bucket.to_owned(), id.clone());
        Ok(id)
    }

    fn v2_create(&self, w: &Wanted<'_>) -> Result<Grant, BackendError> {
        let bucket_id = self.bucket_id(w.target)?;
        let org_id = self.config.org_id.clone().unwrap_or_default();
        let permissions: Vec<Value> = w
            .role
            .access
            .iter()
            .map(|a| {
                json!({
                    "action": access_name(*a),
                    // Both id and orgID: a permission without them would
                    // match every bucket of every organization.
                    "resource": {"type": "buckets", "id": bucket_id, "orgID": org_id},
                })
            })
            .collect();
        let body = json!({
            "orgID": org_id,
            "description": self.tag(w),
            "status": "active",
            "permissions": permissions,
        });
        let action = "create authorization";
        let url = format!("{}/api/v2/authorizations", self.config.url);
        let v = self.post_json(action, &url, &body, &[201])?;
        match (v["id"].as_str(), v["token"].as_str()) {
            (Some(id), Some(token)) => Ok(Grant {
                secret: Secret::new(token),
                handle: id.to_owned(),
            }),
            _ => Err(self.answer_error(action, "the answer has no id or token")),
        }
    }

    // --- 3.x ---

    fn v3_create(&self, w: &Wanted<'_>) -> Result<Grant, BackendError> {
        let name = self.tag(w);
        // Native expiry as a second line of defence; the reaper deletes at
        // expiry anyway.
        let expiry_secs = w.ttl.as_secs_f64().ceil() as u64;
        let (url, body) = if self.config.enterprise {
            let actions: Vec<&str> = w.role.access.iter().map(|a| access_name(*a)).collect();
            (
                format!("{}/api/v3/enterprise/configure/token", self.config.url),
                json!({
                    "token_name": name,
                    "permissions": [{"resource_type": "db", "resource_names": [w.target], "actions": actions}],
                    "expiry_secs": expiry_secs,
                }),
            )
        } else {
            (
                format!("{}/api/v3/configure/token/named_admin", self.config.url),
                json!({"token_name": name, "expiry_secs": expiry_secs}),
            )
        };
        let action = "create token";
        let v = self.post_json(action, &url, &body, &[200, 201])?;
        match v["token"].as_str() {
            Some(token) => Ok(Grant {
                secret: Secret::new(token),
                handle: name,
            }),
            None => Err(self.answer_error(action, "the answer has no token")),
        }
    }

    /// The name (3.x) or description (2.x) of a new credential.
    fn tag(&self, w: &Wanted<'_>) -> String {
        format!(
            "{TAG}{}:{}:{}:{}",
            self.deployment, w.lease_id, w.identity_name, w.expires_unix
        )
    }

    // --- plumbing ---

    fn call(
        &self,
        action: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String), BackendError> {
        let mut response = result.map_err(|source| BackendError::Transport {
            backend: self.config.name.clone(),
            action: action.to_owned(),
            source,
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .map_err(|source| BackendError::Transport {
                backend: self.config.name.clone(),
                action: action.to_owned(),
                source,
            })?;
        Ok((status, body))
    }

    /// GET `url` as the admin: the JSON answer of a 200.
    fn get_json(&self, action: &str, url: &str) -> Result<Value, BackendError> {
        let (status, body) = self.call(
            action,
            self.agent
                .get(url)
                .header("Authorization", self.authorization.expose())
                .call(),
        )?;
        if status != 200 {
            return Err(self.status_error(action, status, &body));
        }
        self.json(action, &body)
    }

    /// POST `body` as JSON as the admin: the JSON answer of an `ok` status.
    fn post_json(
        &self,
        action: &str,
        url: &str,
        body: &Value,
        ok: &[u16],
    ) -> Result<Value, BackendError> {
        let (status, text) = self.call(
            action,
            self.agent
                .post(url)
                .header("Authorization", self.authorization.expose())
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        )?;
        if !ok.contains(&status) {
            return Err(self.status_error(action, status, &text));
        }
        self.json(action, &text)
    }

    fn json(&self, action: &str, body: &str) -> Result<Value, BackendError> {
        serde_json::from_str(body)
            .map_err(|e| self.answer_error(action, &format!("the answer is not JSON: {e}")))
    }

    fn status_error(&self, action: &str, status: u16, body: &str) -> BackendError {
        // 2.x says {"code","message"}, 3.x {"error"}, 1.x {"error"}.
        let message = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| {
                v["message"]
                    .as_str()
                    .or(v["error"].as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| body.trim().to_owned());
        BackendError::Status {
            backend: self.config.name.clone(),
            action: action.to_owned(),
            status,
            message: shorten(&message),
        }
    }

    fn answer_error(&self, action: &str, message: &str) -> BackendError {
        BackendError::Answer {
            backend: self.config.name.clone(),
            action: action.to_owned(),
            message: shorten(message),
        }
    }
}

/// The first error in a 1.x answer, top-level or per statement.
fn statement_error(answer: &Value) -> Option<&str> {
    answer["error"].as_str().or_else(|| {
        answer["results"]
            .as_array()?
            .iter()
            .find_map(|r| r["error"].as_str())
    })
}

fn scrub(e: BackendError, password: &str) -> BackendError {
    match e {
        BackendError::Status {
            backend,
            action,
            status,
            message,
        } => BackendError::Status {
            backend,
            action,
            status,
            message: message.replace(password, "<redacted>"),
        },
        BackendError::Answer {
            backend,
            action,
            message,
        } => BackendError::Answer {
            backend,
            action,
            message: message.replace(password, "<redacted>"),
        },
        other => other,
    }
}

/// Whose the credential named (1.x) or tagged (2.x, 3.x) `text` is, for
/// deployment `deployment`; `None` unless the whole text has exactly one
/// of leasegate's forms.
pub fn made(text: &str, deployment: &str) -> Option<Made> {
    let lease_id = |s: &str| {
        (s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| s.to_owned())
    };
    if let Some(rest) = text.strip_prefix(V1_USER_PREFIX) {
        return match rest.split_once('_') {
            Some((d, id)) if d == deployment => lease_id(id).map(Made::Here),
            Some(_) => None,
            None => lease_id(rest).map(Made::Unscoped),
        };
    }
    let parts: Vec<&str> = text.strip_prefix(TAG)?.split(':').collect();
    let name_ok = |n: &str| crate::wire::api::identity_name_is_valid(n);
    let expiry_ok = |e: &str| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [d, id, name, expiry] if *d == deployment && name_ok(name) && expiry_ok(expiry) => {
            lease_id(id).map(Made::Here)
        }
        [id, name, expiry] if name_ok(name) && expiry_ok(expiry) => {
            lease_id(id).map(Made::Unscoped)
        }
        _ => None,
    }
}

/// An InfluxQL identifier, double-quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::Write => "write",
    }
}

fn encode(s: &str) -> String {
    crate::percent_encode(s)
}

fn shorten(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn influxql_identifiers_are_quoted() {
        assert_eq!(ident("lg_ab12"), "\"lg_ab12\"");
        assert_eq!(ident("we\"ird"), "\"we\\\"ird\"");
    }

    #[test]
    fn only_exact_names_of_this_deployment_are_ours() {
        let here = |id: &str| Some(Made::Here(id.to_owned()));
        let old = |id: &str| Some(Made::Unscoped(id.to_owned()));
        let id = "00ff00ff00ff00ff";
        assert_eq!(made(&format!("lg_a1b2c3_{id}"), "a1b2c3"), here(id));
        assert_eq!(
            made(&format!("leasegate:a1b2c3:{id}:gw-1:1900000000"), "a1b2c3"),
            here(id)
        );
        assert_eq!(made(&format!("lg_{id}"), "a1b2c3"), old(id));
        assert_eq!(
            made(&format!("leasegate:{id}:gw-1:1900000000"), "a1b2c3"),
            old(id)
        );
        for foreign in [
            format!("lg_ffffff_{id}"),
            format!("leasegate:ffffff:{id}:gw-1:1900000000"),
            "lg_x".to_owned(),
            "lg_a1b2c3_x".to_owned(),
            format!("lg_{id}0"),
            format!("lg_A1B2C3_{id}"),
            format!("leasegate:a1b2c3:{id}:gw-1:soon"),
            format!("leasegate:a1b2c3:{id}:gw 1:1900000000"),
            format!("leasegate:a1b2c3:{id}:gw-1:1900000000:extra"),
            "someone-elses".to_owned(),
            "grafana reader".to_owned(),
        ] {
            assert_eq!(made(&foreign, "a1b2c3"), None, "{foreign}");
        }
    }

    #[test]
    fn statement_errors_are_found_anywhere() {
        let v: Value = serde_json::from_str(
            r#"{"results":[{"statement_id":0},{"statement_id":1,"error":"database not found: x"}]}"#,
        )
        .unwrap();
        assert_eq!(statement_error(&v), Some("database not found: x"));
        let ok: Value = serde_json::from_str(r#"{"results":[{"statement_id":0}]}"#).unwrap();
        assert_eq!(statement_error(&ok), None);
    }
}
