//! The credential that writes go with, in one place: the [`Credential`]
//! (API, write URL, `Authorization` value and where they came from), the
//! [`Slot`] its owner puts it in, and the [`Outcomes`] line on which the
//! writer reports whether InfluxDB took it or refused it.
//!
//! This is a leaf: it knows no lease, no sink and no HTTP client. Nothing
//! here polls (waiters sleep on the slot's condition variable), and it
//! never shows a secret (a credential's `Debug` hides its `Authorization`).

pub(crate) mod configured;
pub mod identity;
pub mod lease;
pub(crate) mod tickets;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::config::{Api, Influx};
use crate::secret::Secret;
use crate::shutdown::Shutdown;

/// Where a credential came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `[influxdb]` of the configuration; `file` is where its password or
    /// token is read from (again, when InfluxDB refuses it).
    Static { file: Option<PathBuf> },
    /// A lease from the authority.
    Lease { id: String },
}

/// One write destination and the credential for it: everything a write
/// needs that can change while the daemon runs.
#[derive(Debug, Clone)]
pub struct Credential {
    pub api: Api,
    /// The whole write URL (no secret is ever put in it).
    pub write_url: String,
    /// The `Authorization` header's value; None writes without one.
    pub authorization: Option<Secret>,
    pub origin: Origin,
}

impl Credential {
    /// The credential for `influx`'s settings: its write endpoint and
    /// authorization scheme per API.
    pub fn for_influx(influx: &Influx, origin: Origin) -> Credential {
        let secret = match influx.api {
            Api::V1 => influx.password.as_ref(),
            Api::V2 | Api::V3 => influx.token.as_ref(),
        };
        Credential {
            api: influx.api,
            write_url: write_url(influx),
            authorization: authorization(influx.api, influx.username.as_deref(), secret),
            origin,
        }
    }

    /// The same destination with another secret (a rotated password or
    /// token read from its file).
    pub fn with_secret(&self, username: Option<&str>, secret: &Secret) -> Credential {
        Credential {
            authorization: authorization(self.api, username, Some(secret)),
            ..self.clone()
        }
    }

    /// The lease this credential is, if it is one.
    pub fn lease_id(&self) -> Option<&str> {
        match &self.origin {
            Origin::Lease { id } => Some(id),
            Origin::Static { .. } => None,
        }
    }

    /// `host:port` of the write URL, for a reachability probe.
    pub fn server(&self) -> Option<String> {
        let uri = self.write_url.parse::<ureq::http::Uri>().ok()?;
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        Some(format!("{}:{port}", uri.host()?))
    }

    /// The server's `/ping` URL (the write URL's scheme and authority).
    pub fn ping_url(&self) -> Option<String> {
        let uri = self.write_url.parse::<ureq::http::Uri>().ok()?;
        Some(format!("{}://{}/ping", uri.scheme_str()?, uri.authority()?))
    }

    /// What to call it in a message: "lease ID", or "the credential" and
    /// the file it is read from.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::Lease { id } => format!("lease {id}"),
            Origin::Static { file: Some(f) } => format!("the credential from {}", f.display()),
            Origin::Static { file: None } => "the credential".into(),
        }
    }
}

/// The endpoint of each API, with the database, bucket and precision
/// (`docs/influxdb-api.md`, "Writes").
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

/// The credential in force, or none (not enrolled, or the last lease ran
/// out): writes wait then. Every change gets a new version, which is how a
/// waiter tells that the credential changed.
#[derive(Debug, Default)]
pub struct Slot {
    current: Mutex<Current>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Current {
    version: u64,
    credential: Option<Arc<Credential>>,
}

impl Slot {
    /// A slot that wakes its waiters when `shutdown` starts.
    pub fn new(shutdown: &Shutdown) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        let woken = Arc::downgrade(&slot);
        shutdown.on_trigger(move || {
            if let Some(slot) = woken.upgrade() {
                // Under the lock, so a waiter between its check and its
                // wait cannot miss it.
                let _guard = slot.current.lock().unwrap_or_else(|p| p.into_inner());
                slot.changed.notify_all();
            }
        });
        slot
    }

    /// The credential in force and its version.
    pub fn current(&self) -> (u64, Option<Arc<Credential>>) {
        let c = self.lock();
        (c.version, c.credential.clone())
    }

    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Puts `credential` in force for every later write.
    pub fn set(&self, credential: Credential) {
        self.replace(Some(Arc::new(credential)));
    }

    /// No credential any more: writes wait.
    pub fn clear(&self) {
        self.replace(None);
    }

    fn replace(&self, credential: Option<Arc<Credential>>) {
        let mut c = self.lock();
        c.version += 1;
        c.credential = credential;
        drop(c);
        self.changed.notify_all();
    }

    /// Waits until the version is no longer `from`, for at most `timeout`
    /// (None: as long as it takes) or until shutdown. True if it changed.
    /// Woken by [`Slot::set`], [`Slot::clear`] and shutdown: nothing polls.
    pub fn wait_changed(&self, from: u64, timeout: Option<Duration>, shutdown: &Shutdown) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        crate::shutdown::wait_while(&self.changed, self.lock(), deadline, shutdown, |c| {
            c.version != from
        })
        .1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a write with a credential came to, for its owner.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// InfluxDB took a write made with it (reported once per credential).
    Wrote(Arc<Credential>),
    /// InfluxDB refused it (401 or 403).
    Refused {
        credential: Arc<Credential>,
        status: u16,
    },
}

/// The line from the writer to the credential's owner (the static
/// credential or the lease keeper), so that the owner can replace a
/// refused credential. Delivery must not block the writer: an owner with a
/// thread queues the outcome, one without handles it at once.
pub struct Outcomes(Box<dyn Fn(Outcome) + Send + Sync>);

impl Outcomes {
    pub fn new(deliver: impl Fn(Outcome) + Send + Sync + 'static) -> Outcomes {
        Outcomes(Box::new(deliver))
    }

    pub fn send(&self, outcome: Outcome) {
        (self.0)(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn influx(api: Api) -> Influx {
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

    fn statically(influx: &Influx) -> Credential {
        Credential::for_influx(influx, Origin::Static { file: None })
    }

    #[test]
    fn each_api_gets_its_endpoint_and_scheme() {
        let v1 = statically(&influx(Api::V1));
        assert_eq!(v1.write_url, "http://h:8086/write?db=my%20db&precision=ns");
        assert_eq!(v1.authorization.as_ref().unwrap().expose(), "Basic dTpw");
        let v2 = statically(&influx(Api::V2));
        assert_eq!(
            v2.write_url,
            "http://h:8086/api/v2/write?org=o%26g&bucket=b&precision=ns"
        );
        assert_eq!(v2.authorization.as_ref().unwrap().expose(), "Token tok");
        let v3 = statically(&influx(Api::V3));
        assert_eq!(
            v3.write_url,
            "http://h:8086/api/v3/write_lp?db=my%20db&precision=ns&accept_partial=true"
        );
        assert_eq!(v3.authorization.as_ref().unwrap().expose(), "Bearer tok");
        let rotated = v2.with_secret(None, &Secret::new("new"));
        assert_eq!(rotated.authorization.unwrap().expose(), "Token new");
        assert!(!format!("{v1:?}").contains("dTpw"), "{v1:?}");
    }

    #[test]
    fn the_probe_targets_the_url_s_host_and_port() {
        let mut i = influx(Api::V2);
        assert_eq!(statically(&i).server().as_deref(), Some("h:8086"));
        i.url = "https://influx.example".into();
        assert_eq!(
            statically(&i).server().as_deref(),
            Some("influx.example:443")
        );
        i.url = "http://[::1]:9999".into();
        assert_eq!(statically(&i).server().as_deref(), Some("[::1]:9999"));
    }

    #[test]
    fn a_waiter_wakes_on_a_change_or_at_shutdown_without_polling() {
        let shutdown = Shutdown::new();
        let slot = Slot::new(&shutdown);
        let (v, none) = slot.current();
        assert!(none.is_none());
        assert!(!slot.wait_changed(v, Some(Duration::from_millis(20)), &shutdown));
        let waiter = {
            let (slot, shutdown) = (slot.clone(), shutdown.clone());
            std::thread::spawn(move || slot.wait_changed(v, None, &shutdown))
        };
        std::thread::sleep(Duration::from_millis(30));
        slot.set(statically(&influx(Api::V3)));
        assert!(waiter.join().unwrap());
        let (v, some) = slot.current();
        assert_eq!(some.unwrap().api, Api::V3);
        let waiter = {
            let (slot, shutdown) = (slot.clone(), shutdown.clone());
            std::thread::spawn(move || slot.wait_changed(v, None, &shutdown))
        };
        std::thread::sleep(Duration::from_millis(30));
        shutdown.trigger();
        assert!(!waiter.join().unwrap(), "shutdown is no change");
        slot.clear();
        assert!(slot.current().1.is_none() && slot.version() == v + 1);
    }
}
