//! The fleet as the authority sees it: each identity's lease calls and
//! health reports (`crate::wire::health`), and the state derived from
//! them, `ok`, `late`, `missing`, `refused`, `backlog`, `clock` or
//! `revoked`. The derivation is a pure function of the rows and the time
//! ([`assess`]); nothing here writes the store or calls a gateway.

pub mod metrics;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::authority::store::{HealthRow, IdentityRow, LeaseRow};
use crate::wire::api::{LEASE_RETRY_CAP, LEASE_RETRY_FIRST, LeaseStatus};
use crate::wire::health::{HealthReport, WriteOutcome};

pub use crate::authority::config::fleet::FleetSettings;

/// A gateway's renewal interval when only one call is known: the share of
/// the lease's lifetime after which gateways renew at the latest
/// (`crate::agent::credential::lease::RENEW_AT`, less its jitter).
const RENEW_SHARE: f64 = 0.6;
/// A late gateway has missed this many renewal intervals and a half.
const LATE_AFTER_INTERVALS: f64 = 1.5;
/// The runway counts only while points wait at least this long: a
/// gateway writing as fast as it takes has nothing at risk.
const RUNWAY_NEEDS_WAITING_SECS: u64 = 60;

/// What an operator needs to know first, worst first: a gateway shows the
/// first of these that holds, and lists every one that holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Revoked by an admin: it gets no more leases.
    Revoked,
    /// Late, and its lease has run out: it cannot be writing.
    Missing,
    /// No lease call for 1.5 renewal intervals.
    Late,
    /// InfluxDB refused its last write.
    Refused,
    /// Points wait too long in its spool, or the spool fills.
    Backlog,
    /// Its clock is off the authority's by more than allowed.
    Clock,
    Ok,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Ok,
        State::Late,
        State::Missing,
        State::Refused,
        State::Backlog,
        State::Clock,
        State::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Revoked => "revoked",
            State::Missing => "missing",
            State::Late => "late",
            State::Refused => "refused",
            State::Backlog => "backlog",
            State::Clock => "clock",
            State::Ok => "ok",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// One gateway as the fleet views show it. Holds no secret: identities'
/// credentials and leases' InfluxDB secrets are never in the rows.
#[derive(Debug, Clone, Serialize)]
pub struct Gateway {
    pub identity_id: String,
    pub name: String,
    pub role: String,
    pub attributes: BTreeMap<String, String>,
    pub state: State,
    /// Every condition that holds, in words, worst first.
    pub why: Vec<String>,
    /// Its last lease call (authority time, Unix ms).
    pub last_call_ms: Option<i64>,
    pub lease_id: Option<String>,
    pub lease_status: Option<LeaseStatus>,
    pub lease_expires_ms: Option<i64>,
    /// When its last accepted report came, and the report.
    pub report_ms: Option<i64>,
    pub report: Option<HealthReport>,
    /// Why the report of its last call was refused.
    pub report_refused: Option<String>,
}

/// Every identity with its newest lease and health row, assessed at
/// `now_ms`, in the identities' order.
pub fn gateways(
    identities: &[IdentityRow],
    latest: &[LeaseRow],
    health: &[HealthRow],
    now_ms: i64,
    s: &FleetSettings,
) -> Vec<Gateway> {
    let leases: HashMap<&str, &LeaseRow> =
        latest.iter().map(|l| (l.identity_id.as_str(), l)).collect();
    let rows: HashMap<&str, &HealthRow> =
        health.iter().map(|h| (h.identity_id.as_str(), h)).collect();
    identities
        .iter()
        .map(|i| {
            assess(
                i,
                leases.get(i.id.as_str()).copied(),
                rows.get(i.id.as_str()).copied(),
                now_ms,
                s,
            )
        })
        .collect()
}

/// One gateway's state at `now_ms`, from its identity, newest lease and
/// health row.
pub fn assess(
    identity: &IdentityRow,
    lease: Option<&LeaseRow>,
    health: Option<&HealthRow>,
    now_ms: i64,
    s: &FleetSettings,
) -> Gateway {
    let report = health
        .and_then(|h| h.report.as_deref())
        .and_then(|r| serde_json::from_str::<HealthReport>(r).ok());
    // A gateway from before reports, or rows from before this version:
    // its newest lease tells when it last called.
    let last_call_ms = health.map(|h| h.called_ms).or(lease.map(|l| l.created_ms));
    let mut found: Vec<(State, String)> = Vec::new();
    if identity.revoked_ms.is_some() {
        found.push((State::Revoked, "revoked by an admin".into()));
    }
    match last_call_ms {
        None => found.push((State::Missing, "has never asked for a lease".into())),
        Some(called) => {
            let interval =
                renewal_interval_ms(health, lease).max(retry_within_ms(health, &report, lease));
            let silent = now_ms - called;
            if silent as f64 > LATE_AFTER_INTERVALS * interval as f64 {
                let expires = lease.map(|l| l.expires_ms);
                if expires.is_none_or(|e| e <= now_ms) {
                    found.push((
                        State::Missing,
                        format!(
                            "no lease call for {}, and its lease has run out",
                            secs(silent)
                        ),
                    ));
                } else {
                    found.push((
                        State::Late,
                        format!(
                            "no lease call for {} (it renews about every {})",
                            secs(silent),
                            secs(interval)
                        ),
                    ));
                }
            }
        }
    }
    if let Some(r) = &report {
        found.extend(report_conditions(r, s));
    }
    found.sort_by_key(|(state, _)| *state);
    Gateway {
        identity_id: identity.id.clone(),
        name: identity.name.clone(),
        role: identity.role.clone(),
        attributes: identity.attributes.clone(),
        state: found.first().map_or(State::Ok, |(state, _)| *state),
        why: found.into_iter().map(|(_, why)| why).collect(),
        last_call_ms,
        lease_id: lease.map(|l| l.id.clone()),
        lease_status: lease.map(|l| l.status),
        lease_expires_ms: lease.map(|l| l.expires_ms),
        report_ms: health.and_then(|h| h.report_ms),
        report,
        report_refused: health.and_then(|h| h.refused.clone()),
    }
}

/// What a report says is wrong.
fn report_conditions(r: &HealthReport, s: &FleetSettings) -> Vec<(State, String)> {
    let mut found = Vec::new();
    if let Some(w) = &r.last_write
        && w.outcome == WriteOutcome::Refused
    {
        found.push((
            State::Refused,
            format!(
                "InfluxDB refused its last write ({}), {} ago",
                w.status.map_or("no status".into(), |st| st.to_string()),
                secs(w.ago_secs as i64 * 1000)
            ),
        ));
    }
    let waiting = r.oldest_waiting_secs.unwrap_or(0);
    if waiting >= s.backlog_after.as_secs() {
        found.push((
            State::Backlog,
            format!(
                "its oldest unsent point is {} old ({} points wait)",
                secs(waiting as i64 * 1000),
                r.points_waiting
            ),
        ));
    } else if let Some(hours) = r.runway_hours
        && hours * 3600.0 < s.runway_under.as_secs_f64()
        && waiting >= RUNWAY_NEEDS_WAITING_SECS
    {
        found.push((
            State::Backlog,
            format!("its spool is full in {hours:.1} h at the current rate"),
        ));
    }
    if let Some(offset) = r.clock_offset_ms
        && offset.abs() > s.clock_offset.as_millis() as f64
    {
        found.push((
            State::Clock,
            format!(
                "its clock is {} {} the authority's",
                secs(offset.abs() as i64),
                if offset > 0.0 { "behind" } else { "ahead of" }
            ),
        ));
    }
    found
}

/// How long after its last call the gateway calls again: after failed
/// calls, its backoff; else the gap between its last two calls when that
/// is a plausible renewal, or the share of its lease's lifetime gateways
/// renew at.
fn renewal_interval_ms(health: Option<&HealthRow>, lease: Option<&LeaseRow>) -> i64 {
    if let Some(failed) = health.map(|h| h.failed_calls).filter(|n| *n > 0) {
        let step = LEASE_RETRY_FIRST.saturating_mul(1 << (failed - 1).min(20));
        return step.min(LEASE_RETRY_CAP).as_millis() as i64;
    }
    let ttl = lease.map_or(0, |l| (l.expires_ms - l.created_ms).max(0));
    let nominal = (ttl as f64 * RENEW_SHARE) as i64;
    let gap = health.and_then(|h| h.previous_call_ms.map(|p| h.called_ms - p));
    match gap {
        Some(g) if g > 0 && (ttl == 0 || g <= ttl) => g,
        _ if nominal > 0 => nominal,
        _ => 60_000,
    }
}

/// What the gateway said of its backoff at its last call (if that call's
/// report was accepted), bounded by the longest a gateway waits: its
/// lease's lifetime or the backoff's cap.
fn retry_within_ms(
    health: Option<&HealthRow>,
    report: &Option<HealthReport>,
    lease: Option<&LeaseRow>,
) -> i64 {
    let current = health.is_some_and(|h| h.report_ms == Some(h.called_ms));
    let Some(secs) = report
        .as_ref()
        .and_then(|r| r.retry_within_secs)
        .filter(|_| current)
    else {
        return 0;
    };
    let ttl = lease.map_or(0, |l| (l.expires_ms - l.created_ms).max(0));
    let most = ttl.max(LEASE_RETRY_CAP.as_millis() as i64);
    (secs.saturating_mul(1000).min(most as u64)) as i64
}

/// `ms` as a short duration for people: "3s", "2m 5s".
fn secs(ms: i64) -> String {
    let d = std::time::Duration::from_secs((ms.max(0) as u64).div_ceil(1000));
    humantime::format_duration(d).to_string()
}

/// How many gateways are in each state, every state listed.
pub fn counts(gateways: &[Gateway]) -> Vec<(State, usize)> {
    State::ALL
        .into_iter()
        .map(|st| (st, gateways.iter().filter(|g| g.state == st).count()))
        .collect()
}

#[cfg(test)]
mod tests;
