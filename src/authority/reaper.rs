//! The reaper: one thread per backend deletes each lease's credential when
//! the lease expires and retries deletions that failed; beside it, the
//! `claims` thread and housekeeping (reconciling every backend hourly,
//! forgetting leases that ended over [`KEEP_ENDED`] ago).
//!
//! It never deletes a credential before its lease's expiry and never
//! issues anything. Replicas sharing a store must never work on one lease
//! at once: each due lease is claimed for [`CLAIM`] first.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::authority::backends::Backend;
use crate::authority::service::{Authority, now_ms, retry_delay};
use crate::lifecycle::health::Beat;
use crate::shutdown::Shutdown;

/// The longest the reaper sleeps without looking at the store.
pub const POLL: Duration = Duration::from_millis(250);
/// How long a claim on a due lease lasts unless renewed: the most a lease
/// waits when the replica that claimed it dies (on top of [`POLL`]).
pub const CLAIM: Duration = Duration::from_secs(1);
/// How often claims still held are renewed.
const CLAIM_RENEW: Duration = Duration::from_millis(250);
/// How often a replica says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A replica silent this long is dead: its leases left pending are failed
/// (a credential is made within the backend's timeout, far less).
pub const REPLICA_DEAD_AFTER: Duration = Duration::from_secs(30);
/// Due leases taken per pass; the rest come in the next, without sleeping.
const BATCH: usize = 64;
/// How often every backend is reconciled after the first success.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(3600);
/// How often housekeeping looks whether a reconcile is wanted before the
/// hour is up (pending leases of a dead replica were failed).
const RECONCILE_LOOK: Duration = Duration::from_secs(1);
/// How long ended leases stay listed.
pub const KEEP_ENDED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Starts one reaper per backend (so an unreachable InfluxDB delays only
/// its own deletions), the claims thread and the housekeeping thread.
/// `beats` gets one beat per backend, in `Authority::backends` order, for
/// the watchdog.
pub fn start(
    authority: Arc<Authority>,
    shutdown: Shutdown,
    beats: &[Arc<Beat>],
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let backends: Vec<Arc<Backend>> = authority.backends().cloned().collect();
    let mut threads = Vec::new();
    for (backend, beat) in backends.into_iter().zip(beats.iter().cloned()) {
        let (a, s) = (authority.clone(), shutdown.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("reaper-{}", backend.name()))
                .spawn(move || reap(&a, &backend, &s, &beat))?,
        );
    }
    let (a, s) = (authority.clone(), shutdown.clone());
    threads.push(
        std::thread::Builder::new()
            .name("claims".into())
            .spawn(move || keep_claims(&a, &s))?,
    );
    threads.push(
        std::thread::Builder::new()
            .name("housekeeping".into())
            .spawn(move || housekeeping(&authority, &shutdown))?,
    );
    Ok(threads)
}

/// Claims the due leases in expiry order and deletes their credentials.
/// The store, not memory, is the queue: it survives restarts, sees leases
/// the admin commands revoked, and its claims let replicas split the work
/// and take over those of one that died. It sleeps until the next lease is
/// due, at most [`POLL`] so leases issued meanwhile are seen in time.
fn reap(authority: &Authority, backend: &Backend, shutdown: &Shutdown, beat: &Beat) {
    while !shutdown.is_triggered() {
        beat.beat();
        let now = now_ms();
        let due = match authority.store().claim_due(
            backend.name(),
            authority.replica_id(),
            now,
            now + CLAIM.as_millis() as i64,
            BATCH,
        ) {
            Ok(d) => d,
            Err(e) => {
                log::error!("reaper {}: {}", backend.name(), crate::error_chain(&e));
                Vec::new()
            }
        };
        let full = due.len() == BATCH;
        let held = &authority.claims_held;
        held.fetch_add(due.len(), Ordering::SeqCst);
        for (i, lease) in due.iter().enumerate() {
            if shutdown.is_triggered() {
                // The rest lapse within CLAIM for the other replicas.
                held.fetch_sub(due.len() - i, Ordering::SeqCst);
                return;
            }
            beat.beat();
            let deleted = authority.delete_credential(lease);
            held.fetch_sub(1, Ordering::SeqCst);
            if deleted {
                log::debug!(
                    "lease {}: credential deleted {} ms after expiry",
                    lease.id,
                    now_ms() - lease.expires_ms
                );
            }
        }
        if full {
            continue;
        }
        let next_due = authority.store().next_due_ms(backend.name()).ok().flatten();
        let wait = next_due
            .map(|t| Duration::from_millis((t - now_ms()).max(0) as u64))
            .unwrap_or(POLL)
            .min(POLL);
        if shutdown.sleep(wait) {
            return;
        }
    }
}

/// Renews this process's claims while it holds any, so a deletion slower
/// than [`CLAIM`] (an InfluxDB slow to answer) is not taken over by
/// another replica while it runs; a process that dies stops renewing.
///
/// It also says every [`HEARTBEAT`] that this replica is alive (in the
/// store, and in its status report for `status`), and fails
/// the leases that replicas silent for [`REPLICA_DEAD_AFTER`] left pending
/// (a replica restarted at once is a new replica; its former self's
/// pending leases are failed once that has been silent long enough).
fn keep_claims(authority: &Authority, shutdown: &Shutdown) {
    let mut last_beat = std::time::Instant::now();
    loop {
        if last_beat.elapsed() >= HEARTBEAT {
            last_beat = std::time::Instant::now();
            let (store, replica, now) = (authority.store(), authority.replica_id(), now_ms());
            let dead_before = now - REPLICA_DEAD_AFTER.as_millis() as i64;
            let (health, beat) =
                crate::authority::status::StoreHealth::measure(store.kind(), || {
                    store.heartbeat(replica, now)
                });
            crate::authority::status::write_report(authority, health);
            let outcome = beat.and_then(|()| store.fail_pending(replica, now, dead_before));
            match outcome {
                Ok(0) => {}
                Ok(n) => {
                    log::warn!(
                        "{n} lease(s) left pending by a stopped authority replica marked failed; their credentials are reconciled now"
                    );
                    // The dead replica may have made the credential before
                    // it died: only a reconcile finds it.
                    authority.reconcile_soon.store(true, Ordering::SeqCst);
                }
                Err(e) => log::warn!("replica heartbeat: {}", crate::error_chain(&e)),
            }
        }
        if authority.claims_held.load(Ordering::SeqCst) > 0 {
            let now = now_ms();
            if let Err(e) = authority.store().renew_claims(
                authority.replica_id(),
                now,
                now + CLAIM.as_millis() as i64,
            ) {
                log::warn!("renewing claims on due leases: {}", crate::error_chain(&e));
            }
        }
        if shutdown.sleep(CLAIM_RENEW) {
            return;
        }
    }
}

/// Reconciles every backend at start and then hourly, and forgets ended
/// leases and old audit records. Apart from the reapers, so a slow
/// reconcile never delays an expiry.
fn housekeeping(authority: &Authority, shutdown: &Shutdown) {
    let backends: Vec<Arc<Backend>> = authority.backends().cloned().collect();
    let mut attempts = 0;
    loop {
        let mut failed = false;
        for backend in &backends {
            if shutdown.is_triggered() {
                return;
            }
            if let Err(message) = reconcile(authority, backend, shutdown) {
                log::warn!("backend {}: reconcile failed: {message}", backend.name());
                failed = true;
            }
        }
        let horizon = now_ms() - KEEP_ENDED.as_millis() as i64;
        match authority.store().prune_ended(horizon) {
            Ok(0) => {}
            Ok(n) => log::info!(
                "forgot {n} lease(s) that ended over {} ago",
                humantime::format_duration(KEEP_ENDED)
            ),
            Err(e) => log::warn!("pruning ended leases: {}", crate::error_chain(&e)),
        }
        let keep = authority.config().audit_retention;
        let cutoff = now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        match authority.store().prune_audit(cutoff) {
            Ok(0) => {}
            Ok(n) => log::info!(
                "pruned {n} audit record(s) older than {} (audit_retention)",
                humantime::format_duration(keep)
            ),
            Err(e) => log::warn!("pruning the audit trail: {}", crate::error_chain(&e)),
        }
        let keep = authority.config().fleet.history;
        let cutoff = now_ms().saturating_sub(keep.as_millis() as i64);
        if let Err(e) = authority.store().prune_health(cutoff) {
            log::warn!(
                "pruning gateways' report history: {}",
                crate::error_chain(&e)
            );
        }
        if let Err(e) = authority.store().prune_sessions(now_ms()) {
            log::warn!("pruning expired web sessions: {}", crate::error_chain(&e));
        }
        let wait = if failed {
            attempts += 1;
            retry_delay(attempts - 1)
        } else {
            attempts = 0;
            RECONCILE_EVERY
        };
        let until = std::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if shutdown.sleep(left.min(RECONCILE_LOOK)) {
                return;
            }
            if left.is_zero() || authority.reconcile_soon.swap(false, Ordering::SeqCst) {
                break;
            }
        }
    }
}

fn reconcile(authority: &Authority, backend: &Backend, shutdown: &Shutdown) -> Result<(), String> {
    let roles: Vec<_> = authority
        .config()
        .roles
        .iter()
        .filter(|r| r.backend == backend.name())
        .collect();
    backend
        .prepare(&roles)
        .map_err(|e| crate::error_chain(&e))?;
    let deleted = backend.reconcile(
        || {
            let store = authority.store();
            let live = store.live_lease_ids().map_err(|e| crate::error_chain(&e))?;
            let known = store.lease_ids().map_err(|e| crate::error_chain(&e))?;
            Ok((live, known))
        },
        || shutdown.is_triggered(),
    )?;
    log::info!(
        "backend {}: reconciled with the store; {deleted} orphaned credential(s) deleted",
        backend.name()
    );
    Ok(())
}
