//! The lease authority (`leasegate-authority`): tickets, identities, roles
//! and the real InfluxDB credentials behind each lease. Its parts: the
//! decisions ([`service`]) over the durable state ([`store`]) and InfluxDB
//! ([`backends`], [`reaper`]); the HTTPS front ([`server`], [`tls`]);
//! [`config`], [`status`] and [`admin`]. [`run`] wires them for `serve`.
//!
//! Compiled only with the `authority` feature: the gateway must never need
//! anything here. The store never holds a secret, only hashes.

pub mod admin;
pub mod backends;
pub mod config;
pub mod fleet;
pub mod reaper;
pub mod server;
pub mod service;
pub mod status;
pub mod store;
pub mod tls;
pub mod web;

use std::net::TcpListener;
use std::sync::Arc;

use crate::lifecycle::health::{Beat, Health};
use crate::lifecycle::watchdog::Watchdog;
use crate::shutdown::Shutdown;
use config::AuthorityConfig;
use service::Authority;

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("state dir {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("{path}: {message}")]
    Lock { path: String, message: String },
}

/// Holds the state dir's lock while the server runs: two servers on one
/// store would each take the other's leases in creation for crashed ones.
/// The OS drops the lock with the process, so a crash leaves none behind.
fn lock_state_dir(config: &AuthorityConfig) -> Result<std::fs::File, AuthorityError> {
    let path = config.state_dir.join("serve.lock");
    let fail = |message: String| AuthorityError::Lock {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| fail(e.to_string()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(fail(
            "another leasegate-authority serve runs on this state dir".into(),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(fail(e.to_string())),
    }
}

/// Creates the state dir (mode 0700) if it is missing.
pub fn ensure_state_dir(config: &AuthorityConfig) -> Result<(), AuthorityError> {
    crate::lifecycle::files::create_private_dir(&config.state_dir).map_err(|source| {
        AuthorityError::StateDir {
            path: config.state_dir.display().to_string(),
            source,
        }
    })
}

/// Opens the authority for the admin commands: the same store and
/// backends as the server, which may be running at the same time.
pub fn open(config: AuthorityConfig) -> Result<Authority, AuthorityError> {
    ensure_state_dir(&config)?;
    let pins = tls::pins(&config)?;
    Ok(Authority::open(config, pins)?)
}

/// Before serving: says this replica is alive, fails the leases a
/// stopped one left pending, and warns of what the configuration lacks.
fn start_up(authority: &Authority) -> Result<(), AuthorityError> {
    let now = service::now_ms();
    let (health, beat) = status::StoreHealth::measure(authority.store().kind(), || {
        authority.store().heartbeat(authority.replica_id(), now)
    });
    beat?;
    status::write_report(authority, health);
    let failed = authority.store().fail_pending(
        authority.replica_id(),
        now,
        now - reaper::REPLICA_DEAD_AFTER.as_millis() as i64,
    )?;
    if failed > 0 {
        log::warn!(
            "{failed} lease(s) were being created by an authority that stopped; marked failed, their credentials are reconciled"
        );
    }
    for backend in authority.backends() {
        if let Some(w) = backend.warning() {
            log::warn!("{w}");
        }
    }
    let configured: Vec<&str> = authority.backends().map(|b| b.name()).collect();
    for (backend, n) in authority.store().leases_of_unknown_backends(&configured)? {
        log::error!(
            "{n} live lease(s) name backend {backend:?}, which is not in the configuration: their credentials stay in InfluxDB until it is added back"
        );
    }
    Ok(())
}

/// The fleet's Prometheus page, when `[metrics] listen` is set.
fn serve_fleet_metrics(
    authority: &Arc<Authority>,
    shutdown: &Shutdown,
) -> Result<Option<std::thread::JoinHandle<()>>, AuthorityError> {
    let Some(listen) = authority.config().metrics_listen else {
        return Ok(None);
    };
    let a = authority.clone();
    let render = move || match a.fleet() {
        Ok(gateways) => fleet::metrics::render(&gateways, service::now_ms()),
        // The error is logged where it happened; a scrape that fails is
        // what Prometheus alerts on.
        Err(_) => String::new(),
    };
    crate::lifecycle::page::serve(
        "fleet-metrics",
        listen,
        "/metrics",
        shutdown.clone(),
        render,
    )
    .map(Some)
    .map_err(|source| AuthorityError::Bind {
        addr: listen.to_string(),
        source,
    })
}

/// `leasegate-authority serve`: runs until `shutdown`.
pub fn run(config: AuthorityConfig, shutdown: Shutdown) -> Result<(), AuthorityError> {
    ensure_state_dir(&config)?;
    let _lock = lock_state_dir(&config)?;
    let (tls_config, pins, deployment_ca) = if config.tls {
        let identity = tls::load_or_create(&config)?;
        let (pins, ca) = (identity.pins.clone(), identity.deployment_ca.clone());
        (Some(tls::server_config(identity)?), Some(pins), ca)
    } else {
        (None, None, None)
    };
    let listen = config.listen;
    let authority =
        Arc::new(Authority::open(config, pins.clone())?.with_deployment_ca(deployment_ca));
    start_up(&authority)?;
    let listener = TcpListener::bind(listen).map_err(|source| AuthorityError::Bind {
        addr: listen.to_string(),
        source,
    })?;
    // The watchdog pings while the HTTP runtime and every reaper make
    // progress; one silent for half the interval withholds the ping.
    let health = Arc::new(Health::default());
    let http_beat = health.beat("authority-http");
    let reaper_beats: Vec<Arc<Beat>> = authority
        .backends()
        .map(|b| health.beat(&format!("reaper-{}", b.name())))
        .collect();
    let reapers = reaper::start(authority.clone(), shutdown.clone(), &reaper_beats)
        .map_err(AuthorityError::Thread)?;
    let watchdog = match Watchdog::from_env() {
        Some(w) => Some(
            w.spawn(health, shutdown.clone())
                .map_err(AuthorityError::Thread)?,
        ),
        None => None,
    };
    match &pins {
        Some(p) => log::info!(
            "serving https on {} (certificate sha256 {}{})",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            p.leaf.as_deref().unwrap_or("?"),
            p.ca.as_ref()
                .map(|ca| format!(", deployment CA sha256 {ca}"))
                .unwrap_or_default()
        ),
        None => log::info!(
            "serving plain http on {} (tls = \"off\", loopback only)",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        ),
    }
    log::info!(
        "replica {} of deployment {}",
        authority.replica_id(),
        authority.deployment_id()
    );
    let metrics = serve_fleet_metrics(&authority, &shutdown)?;
    let notifier = crate::lifecycle::notify::Notifier::from_env();
    notifier.send(&format!("READY=1\nSTATUS=serving on {listen}"));
    let served = server::serve(authority, listener, tls_config, shutdown.clone(), http_beat);
    notifier.send("STOPPING=1");
    // The server may also have stopped on an error: everything stops.
    shutdown.trigger();
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    shutdown.trigger();
    for r in reapers {
        let _ = r.join();
    }
    if let Some(m) = metrics {
        let _ = m.join();
    }
    served?;
    log::info!("stopped");
    Ok(())
}
