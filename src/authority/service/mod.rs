//! The authority's decisions: who may enroll, which role an identity gets,
//! how long a lease lives, and when its credential goes. The HTTP server
//! and the admin commands both call this; neither decides anything itself.
//! It owns the order of every lease's steps: recorded, active once its
//! credential exists, revoking until its deletion succeeds.
//!
//! No store call may span an InfluxDB call, and it never returns or logs a
//! secret except in the one answer that hands it out.

pub mod admins;
mod enroll;
mod fleet;
mod leases;

pub use fleet::{CallFrom, GatewayView};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::authority::backends::Backend;
use crate::authority::config::{AuthorityConfig, Role};
use crate::authority::store::{IdentityRow, LeaseRow, Store, StoreError};
use crate::secret::{self, Secret};
use crate::wire::api::{ApiError, ErrorCode, LeaseInfo, LeaseRequest};

use self::enroll::Refusals;

/// Identity credentials: 256 random bits.
const CREDENTIAL_BYTES: usize = 32;
/// A failed deletion is retried after 1 s, doubling up to this, jittered.
const RETRY_CAP: Duration = Duration::from_secs(60);

pub use crate::now_ms;

/// The decisions, over the store and the backends. Each store call is a
/// step of its own and never spans an InfluxDB call, so a slow or dead
/// InfluxDB never blocks enrollment or another backend's leases.
pub struct Authority {
    config: AuthorityConfig,
    store: Box<dyn Store>,
    /// Refused enrollments not yet in the audit trail (see [`Refusals`]).
    refusals: Mutex<Refusals>,
    backends: HashMap<String, Arc<Backend>>,
    /// The fingerprints tickets carry; None with tls off.
    pins: Option<crate::wire::client::Pins>,
    /// The deployment CA, told in every lease grant (see
    /// [`DeploymentCa`]); None with tls off or without a CA.
    deployment_ca: Option<crate::wire::api::DeploymentCa>,
    /// This process among the replicas sharing the store: new at every
    /// start, so a restarted process never mistakes a dead one's claims
    /// for its own.
    replica: String,
    /// The stored deployment id every credential is named with.
    deployment: String,
    /// When this process opened the authority (wall-clock ms).
    started_ms: i64,
    /// Due leases this process has claimed and not yet dealt with; the
    /// claims are renewed while there are any.
    pub claims_held: std::sync::atomic::AtomicUsize,
    /// Set when leases another replica left pending were failed: their
    /// credentials may exist, and housekeeping reconciles at once.
    pub reconcile_soon: std::sync::atomic::AtomicBool,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        log::error!("{}", crate::error_chain(&e));
        ApiError::new(
            ErrorCode::Internal,
            "the authority's store failed; see its log",
        )
    }
}

impl Authority {
    pub fn open(
        config: AuthorityConfig,
        pins: Option<crate::wire::client::Pins>,
    ) -> Result<Authority, StoreError> {
        let store = crate::authority::store::open(&config.store, &config.state_dir)?;
        let deployment = store.deployment_id(config.deployment_id.as_deref())?;
        let backends = config
            .backends
            .iter()
            .map(|b| (b.name.clone(), Arc::new(Backend::new(b, &deployment))))
            .collect();
        Ok(Authority {
            deployment,
            started_ms: now_ms(),
            config,
            store,
            refusals: Mutex::default(),
            backends,
            pins,
            deployment_ca: None,
            replica: secret::random_hex(8),
            claims_held: std::sync::atomic::AtomicUsize::new(0),
            reconcile_soon: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// This process's replica id (claims on due leases carry it).
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// What `serve` tells gateways of the deployment CA in each grant.
    pub fn with_deployment_ca(mut self, ca: Option<crate::wire::api::DeploymentCa>) -> Authority {
        self.deployment_ca = ca;
        self
    }

    /// When this process opened the authority.
    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }

    /// This deployment's id (see `deployment_id` in the configuration).
    pub fn deployment_id(&self) -> &str {
        &self.deployment
    }

    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.values()
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    // --- tickets (admin) ---

    /// The identity a bearer credential belongs to, if it may still act.
    pub fn authenticate(&self, credential: &Secret) -> Result<IdentityRow, ApiError> {
        match self
            .store()
            .identity_by_credential(&secret::digest(credential))?
        {
            None => Err(ApiError::new(
                ErrorCode::IdentityUnknown,
                "unknown identity credential",
            )),
            Some(i) if i.revoked_ms.is_some() => Err(ApiError::new(
                ErrorCode::IdentityRevoked,
                format!("identity {} ({}) was revoked", i.id, i.name),
            )),
            Some(i) => Ok(i),
        }
    }

    /// Whether the identity may still act, by id.
    fn authenticate_id(&self, id: &str) -> Result<(), ApiError> {
        let revoked = self
            .store()
            .identities()?
            .into_iter()
            .any(|i| i.id == id && i.revoked_ms.is_some());
        if revoked {
            return Err(ApiError::new(
                ErrorCode::IdentityRevoked,
                format!("identity {id} was revoked"),
            ));
        }
        Ok(())
    }

    // --- leases ---
}

/// How long a lease asked for with `req` lives under `role`: the role's
/// default, or what was asked capped at the role's most.
fn lease_ttl(req: &LeaseRequest, role: &Role) -> Result<Duration, ApiError> {
    match req.ttl_secs {
        Some(0) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "ttl_secs must be at least 1",
        )),
        Some(s) => Ok(Duration::from_secs(s).min(role.max_ttl)),
        None => Ok(role.default_ttl),
    }
}

/// 1 s doubling per failed attempt up to `RETRY_CAP`, less up to 25% at
/// random so that many failed deletions do not retry in step.
pub fn retry_delay(attempts: u32) -> Duration {
    let step = Duration::from_secs(1)
        .saturating_mul(1u32 << attempts.min(16))
        .min(RETRY_CAP);
    let r = secret::random_bytes(1)[0] as f64 / 255.0;
    step.mul_f64(1.0 - 0.25 * r)
}

pub fn info(l: &LeaseRow) -> LeaseInfo {
    LeaseInfo {
        id: l.id.clone(),
        identity_id: l.identity_id.clone(),
        issued_for: l.identity_name.clone(),
        role: l.role.clone(),
        status: l.status,
        ttl_secs: ((l.expires_ms - l.created_ms).max(0) as u64).div_ceil(1000),
        created_ms: l.created_ms,
        expires_ms: l.expires_ms,
        target: l.target.clone(),
        last_error: l.last_error.clone(),
    }
}

pub fn show_attributes(a: &BTreeMap<String, String>) -> String {
    format!("{{{}}}", attribute_pairs(a))
}

/// `k=v, k=v`, as pages list attributes.
pub fn attribute_pairs(a: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = a.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(", ")
}
