//! What `leasegate-authority status` shows: this replica (from the report
//! `serve` writes to `state_dir/status.json` at start and each heartbeat),
//! the replicas the store heard from lately, the claims held, and whether
//! the store answers. It owns the report's shape and its rendering.
//!
//! Nothing in it may be a secret: ids, times, counts, and the store's error
//! chains, which never carry its password.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::authority::config::AuthorityConfig;
use crate::authority::service::Authority;
use crate::authority::store::Store;

pub const STATUS_FILE: &str = "status.json";
/// A report older than this means `serve` is not running (or is stuck):
/// three heartbeats missed.
pub const STALE: Duration = Duration::from_secs(15);
/// Replicas heard from within this are listed.
pub const RECENT: Duration = Duration::from_secs(15 * 60);

/// What a running `serve` says of itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub replica: String,
    pub deployment: String,
    pub pid: u32,
    pub version: String,
    pub started_ms: i64,
    pub updated_ms: i64,
    pub public_url: String,
    /// Due leases claimed and not yet dealt with.
    pub claims_held: usize,
    /// The store as the last heartbeat found it.
    pub store: StoreHealth,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreHealth {
    /// "sqlite" or "postgres".
    pub kind: String,
    pub ok: bool,
    /// How long the check took.
    pub latency_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StoreHealth {
    /// Runs `check` against a store of `kind` and times it; the outcome
    /// too, for the caller to act on.
    pub fn measure<T>(
        kind: &str,
        check: impl FnOnce() -> Result<T, crate::authority::store::StoreError>,
    ) -> (StoreHealth, Result<T, crate::authority::store::StoreError>) {
        let started = Instant::now();
        let outcome = check();
        let health = StoreHealth {
            kind: kind.to_owned(),
            ok: outcome.is_ok(),
            latency_ms: started.elapsed().as_millis() as u64,
            error: outcome.as_ref().err().map(|e| crate::error_chain(e)),
        };
        (health, outcome)
    }
}

/// A replica the store heard from.
#[derive(Debug, Clone, Serialize)]
pub struct SeenReplica {
    pub replica: String,
    pub seen_ms: i64,
    /// Heard from within the time after which its unfinished work is taken
    /// over (the reaper's `REPLICA_DEAD_AFTER`).
    pub alive: bool,
    /// The one whose report is in this state dir.
    pub this: bool,
}

/// Everything `status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// This state dir's `serve`, from its report; None if it never wrote
    /// one.
    pub this_replica: Option<ReplicaReport>,
    /// Whether that report is fresh (younger than [`STALE`]).
    pub serving: bool,
    pub replicas: Vec<SeenReplica>,
    /// The store as this command found it.
    pub store: StoreHealth,
}

impl Status {
    /// Healthy: this replica serves and the store answers.
    pub fn healthy(&self) -> bool {
        self.serving && self.store.ok
    }
}

/// This process's report, with `store` as its heartbeat found it.
pub fn report(authority: &Authority, store: StoreHealth) -> ReplicaReport {
    ReplicaReport {
        replica: authority.replica_id().to_owned(),
        deployment: authority.deployment_id().to_owned(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_ms: authority.started_ms(),
        updated_ms: crate::authority::service::now_ms(),
        public_url: authority.config().public_url.clone(),
        claims_held: authority
            .claims_held
            .load(std::sync::atomic::Ordering::SeqCst),
        store,
    }
}

/// Writes this process's report (not synced: a status file must not wear
/// a disk); a failure is logged once in a while by the caller's schedule,
/// never fatal.
pub fn write_report(authority: &Authority, store: StoreHealth) {
    let dir = &authority.config().state_dir;
    let path = dir.join(STATUS_FILE);
    if let Err(e) = crate::lifecycle::files::write_json(&path, &report(authority, store), false) {
        log::warn!("cannot write {}: {e}", path.display());
    }
}

pub fn read_report(state_dir: &Path) -> Option<ReplicaReport> {
    let text = std::fs::read(state_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Gathers the status: the report in the state dir, and the store's own
/// word (or why it could not be opened), so a store that no longer answers
/// shows even when the server cannot say so any more. A replica heard
/// from within `alive_within` counts as alive.
pub fn gather(config: &AuthorityConfig, now_ms: i64, alive_within: Duration) -> Status {
    let this_replica = read_report(&config.state_dir);
    let serving = this_replica
        .as_ref()
        .is_some_and(|r| now_ms - r.updated_ms < STALE.as_millis() as i64);
    let this_id = this_replica.as_ref().map(|r| r.replica.clone());
    let store = crate::authority::store::open(&config.store, &config.state_dir);
    let (store, replicas) = match store {
        Ok(store) => seen(
            store.as_ref(),
            now_ms - alive_within.as_millis() as i64,
            this_id.as_deref(),
        ),
        Err(e) => (
            StoreHealth {
                kind: match config.store {
                    crate::authority::config::StoreConfig::Sqlite => "sqlite",
                    crate::authority::config::StoreConfig::Postgres(_) => "postgres",
                }
                .to_owned(),
                ok: false,
                latency_ms: 0,
                error: Some(crate::error_chain(&e)),
            },
            Vec::new(),
        ),
    };
    Status {
        this_replica,
        serving,
        replicas,
        store,
    }
}

fn seen(
    store: &dyn Store,
    alive_after: i64,
    this: Option<&str>,
) -> (StoreHealth, Vec<SeenReplica>) {
    let now_ms = crate::authority::service::now_ms();
    let (health, rows) = StoreHealth::measure(store.kind(), || {
        store.replicas(now_ms - RECENT.as_millis() as i64)
    });
    let rows = rows.unwrap_or_default();
    let replicas = rows
        .into_iter()
        .map(|(replica, seen_ms)| SeenReplica {
            this: this == Some(replica.as_str()),
            alive: seen_ms >= alive_after,
            replica,
            seen_ms,
        })
        .collect();
    (health, replicas)
}

fn ago(now_ms: i64, then_ms: i64) -> String {
    let d = Duration::from_secs(((now_ms - then_ms).max(0) / 1000) as u64);
    format!("{} ago", humantime::format_duration(d))
}

/// The human form.
pub fn render(s: &Status, now_ms: i64) -> String {
    let mut out = String::new();
    match &s.this_replica {
        Some(r) => {
            out.push_str(&format!(
                "replica:     {} ({}), pid {}, leasegate-authority {}\n",
                r.replica,
                if s.serving {
                    "serving"
                } else {
                    "NOT SERVING: report is stale"
                },
                r.pid,
                r.version
            ));
            out.push_str(&format!("deployment:  {}\n", r.deployment));
            out.push_str(&format!("public url:  {}\n", r.public_url));
            out.push_str(&format!(
                "started:     {}; report {}\n",
                ago(now_ms, r.started_ms),
                ago(now_ms, r.updated_ms)
            ));
            out.push_str(&format!("claims held: {}\n", r.claims_held));
        }
        None => out.push_str("replica:     none has run on this state dir\n"),
    }
    out.push_str(&format!(
        "store:       {} {} ({} ms){}\n",
        s.store.kind,
        if s.store.ok { "ok" } else { "FAILING" },
        s.store.latency_ms,
        s.store
            .error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "replicas:    {} heard from in the last {}\n",
        s.replicas.len(),
        humantime::format_duration(RECENT)
    ));
    for r in &s.replicas {
        out.push_str(&format!(
            "  {}  {:<6} seen {}{}\n",
            r.replica,
            if r.alive { "alive" } else { "gone" },
            ago(now_ms, r.seen_ms),
            if r.this { "  (this one)" } else { "" }
        ));
    }
    out
}
