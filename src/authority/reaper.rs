//! The reaper: deletes each lease's credential when the lease expires, and
//! retries deletions that failed.
//!
//! One named thread per backend, so an unreachable InfluxDB delays only its
//! own deletions. Each pass takes the due leases from the store in expiry
//! order (the store, not memory, is the queue: it survives restarts and
//! sees leases the admin commands revoked), and sleeps until the next one
//! is due, at most [`POLL`] so leases issued meanwhile are seen in time. It
//! also reconciles its backend once at start, retrying until InfluxDB
//! answers. It never deletes a lease's credential before its expiry and
//! never issues anything.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::authority::backends::Backend;
use crate::authority::service::{Authority, now_ms, retry_delay};
use crate::shutdown::Shutdown;

/// The longest the reaper sleeps without looking at the store.
pub const POLL: Duration = Duration::from_millis(250);
/// Due leases taken per pass; the rest come in the next, without sleeping.
const BATCH: usize = 64;

pub fn start(
    authority: Arc<Authority>,
    shutdown: Shutdown,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let backends: Vec<Arc<Backend>> = authority.backends().cloned().collect();
    backends
        .into_iter()
        .map(|backend| {
            let (a, s) = (authority.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name(format!("reaper-{}", backend.name()))
                .spawn(move || run(&a, &backend, &s))
        })
        .collect()
}

fn run(authority: &Authority, backend: &Backend, shutdown: &Shutdown) {
    let mut reconcile_attempts = 0;
    let mut next_reconcile = Some(now_ms());
    while !shutdown.is_triggered() {
        let now = now_ms();
        if next_reconcile.is_some_and(|t| t <= now) {
            next_reconcile = match reconcile(authority, backend) {
                Ok(()) => None,
                Err(message) => {
                    let delay = retry_delay(reconcile_attempts);
                    reconcile_attempts += 1;
                    log::warn!(
                        "backend {}: start-up reconcile failed, retrying in {:?}: {message}",
                        backend.name(),
                        delay
                    );
                    Some(now + delay.as_millis() as i64)
                }
            };
        }
        let due = match authority
            .store()
            .due_leases(backend.name(), now_ms(), BATCH)
        {
            Ok(d) => d,
            Err(e) => {
                log::error!("reaper {}: {}", backend.name(), crate::error_chain(&e));
                Vec::new()
            }
        };
        let full = due.len() == BATCH;
        for lease in &due {
            if shutdown.is_triggered() {
                return;
            }
            if authority.delete_credential(lease) {
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

fn reconcile(authority: &Authority, backend: &Backend) -> Result<(), String> {
    let roles: Vec<_> = authority
        .config()
        .roles
        .iter()
        .filter(|r| r.backend == backend.name())
        .collect();
    backend
        .prepare(&roles)
        .map_err(|e| crate::error_chain(&e))?;
    let deleted = backend.reconcile(|| {
        authority
            .store()
            .live_lease_ids(backend.name())
            .map_err(|e| crate::error_chain(&e))
    })?;
    log::info!(
        "backend {}: reconciled with the store; {deleted} orphaned credential(s) deleted",
        backend.name()
    );
    Ok(())
}
