//! The `leasegate-authority` binary under test: `serve` as a child process
//! on a free loopback port with its state in a temp dir, its admin
//! commands run beside it, and an HTTP client for its API.
//!
//! Like every server here it is started and stopped by its PID. Every
//! process's output (server and admin commands) is appended to one log
//! file, so a test can search all of it for secrets.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::postgres::Postgres;
use super::{free_port, signal, stop_child, tail, wait_exit, wait_until};

/// The `leasegate-authority` binary: cargo names it for integration
/// tests; the examples (demo, bench) find it beside their own directory.
pub fn authority_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LEASEGATE_AUTHORITY_BIN") {
        return PathBuf::from(path);
    }
    if let Some(path) = option_env!("CARGO_BIN_EXE_leasegate-authority") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    match exe.parent().and_then(std::path::Path::parent) {
        Some(dir) if dir.join("leasegate-authority").is_file() => dir.join("leasegate-authority"),
        _ => panic!(
            "leasegate-authority not found beside {}: run `cargo build --bins` first",
            exe.display()
        ),
    }
}

pub struct AuthorityServer {
    child: Option<Child>,
    pub dir: TempDir,
    pub port: u16,
    pub tls: bool,
    pub rust_log: String,
    http: ureq::Agent,
    /// With `LEASEGATE_TEST_STORE=postgres`: the PostgreSQL server and
    /// database the authority keeps its state in (else SQLite in
    /// `state_dir`).
    /// Replicas of one deployment share it ([`AuthorityServer::replica`]).
    pub postgres: Option<(Arc<Postgres>, String)>,
}

/// Whether this test run keeps the authority's state in PostgreSQL
/// (`LEASEGATE_TEST_STORE=postgres`, as tests/run.sh sets for a second
/// run of the authority suite).
pub fn store_is_postgres() -> bool {
    match std::env::var("LEASEGATE_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("LEASEGATE_TEST_STORE={other:?}: use sqlite or postgres"),
    }
}

/// A v1 backend named `name` on a real InfluxDB 1.x, and a role `role`
/// matching `service = <service>` that writes to `database`.
pub fn v1_backend(name: &str, influx_url: &str, admin: &str, password: &str) -> String {
    format!(
        "[[backend]]\nname = \"{name}\"\nkind = \"influxdb-v1\"\nurl = \"{influx_url}\"\nadmin_username = \"{admin}\"\nadmin_password = \"{password}\"\n"
    )
}

pub fn v2_backend(name: &str, url: &str, org_id: &str, token: &str) -> String {
    format!(
        "[[backend]]\nname = \"{name}\"\nkind = \"influxdb-v2\"\nurl = \"{url}\"\norg_id = \"{org_id}\"\nadmin_token = \"{token}\"\n"
    )
}

pub fn v3_backend(name: &str, url: &str, token: &str, enterprise: bool) -> String {
    format!(
        "[[backend]]\nname = \"{name}\"\nkind = \"influxdb-v3\"\nurl = \"{url}\"\nadmin_token = \"{token}\"\nenterprise = {enterprise}\n"
    )
}

/// A role; `target_key` is `bucket` (v2) or `database` (v1, v3).
pub fn role(name: &str, service: &str, backend: &str, target_key: &str, target: &str) -> String {
    format!(
        "[[role]]\nname = \"{name}\"\nmatch = {{ service = \"{service}\" }}\nbackend = \"{backend}\"\n{target_key} = \"{target}\"\naccess = [\"write\"]\ndefault_ttl = \"15m\"\nmax_ttl = \"1h\"\n"
    )
}

/// What a command printed and how it ended.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl AuthorityServer {
    /// Starts `serve` with plain HTTP on loopback and `body` (backends and
    /// roles) after the generated head.
    pub fn start(body: &str) -> AuthorityServer {
        Self::start_with(body, false, "info")
    }

    pub fn start_with(body: &str, tls: bool, rust_log: &str) -> AuthorityServer {
        let postgres = store_is_postgres().then(|| {
            let pg = Postgres::start();
            let db = pg.database();
            (Arc::new(pg), db)
        });
        Self::start_on(body, tls, rust_log, postgres)
    }

    /// Starts `serve` with its state in `postgres` (server and database),
    /// or in SQLite in its state dir when `None`.
    pub fn start_on(
        body: &str,
        tls: bool,
        rust_log: &str,
        postgres: Option<(Arc<Postgres>, String)>,
    ) -> AuthorityServer {
        Self::start_on_port(body, tls, rust_log, postgres, free_port())
    }

    /// [`AuthorityServer::start_on`] with the port given.
    pub fn start_on_port(
        body: &str,
        tls: bool,
        rust_log: &str,
        postgres: Option<(Arc<Postgres>, String)>,
        port: u16,
    ) -> AuthorityServer {
        let dir = tempfile::tempdir().unwrap();
        let mut a = AuthorityServer {
            child: None,
            dir,
            port,
            tls,
            rust_log: rust_log.to_owned(),
            http: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into(),
            postgres,
        };
        a.write_config(body);
        a.launch();
        a
    }

    /// Another replica of this deployment: the same PostgreSQL database,
    /// its own port and state dir.
    pub fn replica(&self, body: &str) -> AuthorityServer {
        let postgres = self.postgres.clone();
        assert!(postgres.is_some(), "replicas share a PostgreSQL store");
        Self::start_on(body, self.tls, &self.rust_log, postgres)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("authority.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("authority.log")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Replaces backends and roles; takes effect at the next (re)start.
    pub fn write_config(&self, body: &str) {
        let scheme = if self.tls { "https" } else { "http" };
        let head = format!(
            "listen = \"127.0.0.1:{port}\"\npublic_url = \"{scheme}://127.0.0.1:{port}\"\nstate_dir = \"{state}\"\ntls = \"{tls}\"\n",
            port = self.port,
            state = self.state_dir().display(),
            tls = if self.tls { "on" } else { "off" },
        );
        let store = match &self.postgres {
            None => String::new(),
            Some((pg, db)) => format!(
                "\n[store]\nurl = \"{}\"\npassword_file = \"{}\"\ntls = \"off\"\n",
                pg.url(db),
                pg.password_file(self.dir.path()).display()
            ),
        };
        fs::write(self.config_path(), format!("{head}{body}{store}")).unwrap();
    }

    /// Everything the store holds, as text: the SQLite file and its WAL,
    /// or a dump of the PostgreSQL database.
    pub fn store_dump(&self) -> String {
        match &self.postgres {
            Some((pg, db)) => pg.dump(db),
            None => {
                let mut bytes = Vec::new();
                for f in ["authority.db", "authority.db-wal"] {
                    bytes.extend(fs::read(self.state_dir().join(f)).unwrap_or_default());
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }

    fn launch(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(authority_binary())
            .arg("--config")
            .arg(self.config_path())
            .arg("serve")
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start leasegate-authority");
        self.child = Some(child);
        // Its own listening socket, not only a port that accepts: another
        // process may hold the port (a free port taken again by a test
        // beside this one), and then this one never serves.
        let mut up = false;
        wait_until(Duration::from_secs(20), || {
            // One that exited is not waited for.
            if !self.is_running() {
                return true;
            }
            up = self.listens() && self.health();
            up
        });
        assert!(up, "the authority did not come up:\n{}", self.log());
    }

    /// Whether this authority's process holds the listening socket of its
    /// port (read from /proc: a port that accepts may be another's).
    fn listens(&self) -> bool {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return false;
        };
        let port = format!(":{:04X} ", self.port);
        let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|f| fs::read_to_string(f).ok())
            .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                // local address, state 0A (LISTEN), inode
                let local = format!("{} ", cols.get(1)?);
                (local.ends_with(&port) && cols.get(3) == Some(&"0A"))
                    .then(|| cols.get(9).map(|i| format!("socket:[{i}]")))
                    .flatten()
            })
            .collect();
        fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| fs::read_link(e.path()).ok())
            .any(|link| inodes.iter().any(|i| link.as_os_str() == i.as_str()))
    }

    fn health(&self) -> bool {
        if self.tls {
            // The port accepting is enough; TLS clients come with a test.
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        } else {
            self.http
                .get(format!("{}/v1/health", self.url()))
                .call()
                .is_ok_and(|r| r.status().as_u16() == 200)
        }
    }

    pub fn url(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if self.tls { "https" } else { "http" },
            self.port
        )
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM; the exit status if it exits within 15 s.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        signal(child.id(), libc::SIGTERM);
        wait_exit(child, Duration::from_secs(15))
    }

    /// SIGKILL: no drain, no goodbye; waits for the exit.
    pub fn kill(&mut self) {
        let child = self.child.as_mut().expect("running");
        signal(child.id(), libc::SIGKILL);
        assert!(wait_exit(child, Duration::from_secs(10)).is_some());
    }

    pub fn restart(&mut self) {
        if self.is_running() {
            let status = self.terminate();
            assert!(
                status.is_some_and(|s| s.success()),
                "authority exit {status:?}\n{}",
                self.log()
            );
        }
        self.launch();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs an admin command against the same config and store.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, b"")
    }

    /// [`AuthorityServer::cli`] with `input` on its standard input.
    pub fn cli_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(authority_binary())
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run leasegate-authority");
        let _ = child.stdin.take().expect("piped").write_all(input);
        let out = child.wait_with_output().expect("run leasegate-authority");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // Everything any process logged goes into the one log, and what it
        // printed too, but for the one output that is a secret by design:
        // the ticket line `ticket create` prints for the admin.
        let mut log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.log_path())
            .unwrap();
        let printed = if args.starts_with(&["ticket", "create"]) {
            "(the ticket line)\n"
        } else {
            stdout.as_str()
        };
        let _ = write!(log, "--- cli {args:?}\n{printed}{stderr}");
        Output {
            status: out.status,
            stdout,
            stderr,
        }
    }

    /// `cli`, asserting success.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "leasegate-authority {args:?}: {:?}\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// Creates a ticket with `service=<service>`; returns its line.
    pub fn ticket(&self, service: &str, extra: &[&str]) -> String {
        let attribute = format!("service={service}");
        let mut args = vec!["ticket", "create", "--attribute", &attribute];
        args.extend_from_slice(extra);
        self.cli_ok(&args).trim().to_owned()
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.url());
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let result = match (method, body) {
            ("POST", body) => {
                let mut r = self
                    .http
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(body.map(|b| b.to_string()).unwrap_or_default())
            }
            ("DELETE", _) => {
                let mut r = self.http.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = self.http.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn enroll(&self, ticket_secret: &str, name: &str) -> (u16, Value) {
        self.send(
            "POST",
            "/v1/enroll",
            None,
            Some(serde_json::json!({"ticket_secret": ticket_secret, "identity_name": name})),
        )
    }

    /// Enrolls with a ticket line; returns the identity credential.
    pub fn enroll_ok(&self, ticket_line: &str, name: &str) -> (String, String) {
        let ticket = leasegate::wire::ticket::Ticket::parse(ticket_line).unwrap();
        let (status, body) = self.enroll(ticket.secret.expose(), name);
        assert_eq!(status, 201, "enroll: {body}");
        (
            body["identity_id"].as_str().unwrap().to_owned(),
            body["credential"].as_str().unwrap().to_owned(),
        )
    }

    /// POSTs `body` as it is, bytes the JSON helpers could not make
    /// included.
    pub fn post_raw(&self, path: &str, bearer: &str, body: &[u8]) -> (u16, Value) {
        let result = self
            .http
            .post(format!("{}{path}", self.url()))
            .header("Content-Type", "application/json")
            .header("Authorization", &format!("Bearer {bearer}"))
            .send(body);
        let mut resp = result.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Logs in to the web page as admin `name` over plain HTTP, as a form
    /// does: the answer's status and the session cookie's value, if set.
    pub fn web_login(&self, name: &str, password: &str) -> (u16, Option<String>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let cookie_of = |r: &ureq::http::Response<ureq::Body>, cookie: &str| {
            r.headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| v.strip_prefix(&format!("{cookie}=")))
                .and_then(|v| v.split(';').next())
                .map(str::to_owned)
        };
        let base = self.url();
        let page = agent.get(format!("{base}/ui/login")).call().unwrap();
        let pre = cookie_of(&page, "lg_login").expect("the login page sets its CSRF cookie");
        let answer = agent
            .post(format!("{base}/ui/login"))
            .header("Cookie", &format!("lg_login={pre}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(format!(
                "name={name}&password={}&csrf={pre}",
                password.replace(' ', "+")
            ))
            .unwrap();
        (answer.status().as_u16(), cookie_of(&answer, "lg_session"))
    }

    /// `fleet --json` from the admin command.
    pub fn fleet(&self) -> Vec<Value> {
        let out = self.cli_ok(&["fleet", "--json"]);
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn create_lease(&self, credential: &str, ttl_secs: Option<u64>) -> (u16, Value) {
        let body = match ttl_secs {
            Some(t) => serde_json::json!({"ttl_secs": t}),
            None => serde_json::json!({}),
        };
        self.send("POST", "/v1/leases", Some(credential), Some(body))
    }

    pub fn lease_ok(&self, credential: &str, ttl_secs: Option<u64>) -> Value {
        let (status, body) = self.create_lease(credential, ttl_secs);
        assert_eq!(
            status,
            201,
            "create lease: {body}\n{}",
            tail(&self.log_path(), 3000)
        );
        body
    }

    pub fn get(&self, path: &str, credential: &str) -> (u16, Value) {
        self.send("GET", path, Some(credential), None)
    }

    pub fn delete(&self, path: &str, credential: &str) -> (u16, Value) {
        self.send("DELETE", path, Some(credential), None)
    }

    /// `lease list --json` from the admin command.
    pub fn leases(&self) -> Vec<Value> {
        let out = self.cli_ok(&["lease", "list", "--json"]);
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for AuthorityServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_child(child);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- authority log (tail) ---\n{}",
                tail(&self.log_path(), 6000)
            );
        }
    }
}

/// An authority body with the v1 backend `main` on `influx` and the
/// `sensor` role writing to `sensors`: `head` (top-level keys) before both,
/// `extra` (keys of the role's table) after.
pub fn v1_sensor_body(influx: &super::Influx, head: &str, extra: &str) -> String {
    format!(
        "{head}{}{}{extra}",
        v1_backend(
            "main",
            &influx.url(),
            super::ADMIN_USER,
            super::ADMIN_PASSWORD
        ),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    )
}
