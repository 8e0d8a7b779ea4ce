//! Gateways' lease calls and health reports: recorded at each call
//! (a refused report audited, never failing the call), and the fleet
//! assessed from them (`crate::authority::fleet`).

use crate::authority::fleet::{self, Gateway};
use crate::authority::store::{AuditRow, Call, IdentityRow};
use crate::now_ms;
use crate::wire::api::{ApiError, LeaseInfo};
use crate::wire::health::{Health, HealthReport};

use super::Authority;

/// Audit rows shown on a gateway's page.
const GATEWAY_AUDIT_ROWS: u32 = 50;

/// One gateway as its page shows it.
pub struct GatewayView {
    pub gateway: Gateway,
    /// Its reports over the kept history, oldest first.
    pub history: Vec<(i64, HealthReport)>,
    /// Its leases, newest first.
    pub leases: Vec<LeaseInfo>,
    /// The newest rows of the audit trail about it and its leases.
    pub audit: Vec<AuditRow>,
}

/// A lease call as the server saw it: the report it carried, and the
/// client's address (its network, for IPv6).
pub struct CallFrom<'a> {
    pub health: &'a Health,
    pub address: Option<std::net::IpAddr>,
}

impl Authority {
    /// Records a lease call of `identity` made at `now`, with its report,
    /// and whether it `failed`. A store failure is logged and the call
    /// goes on: a lease matters more than a report.
    pub fn record_call(&self, identity: &IdentityRow, call: &CallFrom<'_>, now: i64, failed: bool) {
        let health = call.health;
        let (report, refused) = match health {
            Health::Absent => (None, None),
            Health::Report(r) => (serde_json::to_string(r).ok(), None),
            Health::Refused(e) => (None, Some(e.to_string())),
        };
        if let Some(why) = &refused {
            let key = format!("health:{}", identity.id);
            let record = (
                "health report refused",
                identity.name.as_str(),
                why.as_str(),
            );
            if let Err(e) = self.audit_refusal(now, &key, &identity.name, record) {
                log::warn!("audit: {}", crate::error_chain(&e));
            }
        }
        let every = self.config.fleet.history_every.as_millis() as i64;
        let address = call.address.map(|a| a.to_string());
        let call = Call {
            identity_id: &identity.id,
            at_ms: now,
            report: report.as_deref(),
            refused: refused.as_deref(),
            failed,
            address: address.as_deref(),
            history_after_ms: now - every,
        };
        if let Err(e) = self.store().record_call(&call) {
            log::warn!(
                "recording the lease call of {}: {}",
                identity.name,
                crate::error_chain(&e)
            );
        }
    }

    /// The addresses gateways called from in the last `within`: the
    /// server keeps a share of its connections for them.
    pub fn gateway_addresses(&self, within: std::time::Duration) -> Vec<std::net::IpAddr> {
        let since = now_ms() - within.as_millis() as i64;
        match self.store().gateway_addresses(since) {
            Ok(found) => found.iter().filter_map(|a| a.parse().ok()).collect(),
            Err(e) => {
                log::warn!("reading gateways' addresses: {}", crate::error_chain(&e));
                Vec::new()
            }
        }
    }

    /// Every gateway, assessed now.
    pub fn fleet(&self) -> Result<Vec<Gateway>, ApiError> {
        let store = self.store();
        let identities = store.identities()?;
        let latest = store.latest_leases()?;
        let health = store.health()?;
        Ok(fleet::gateways(
            &identities,
            &latest,
            &health,
            now_ms(),
            &self.config.fleet,
        ))
    }

    /// One gateway with its history, leases and audit rows; None if no
    /// identity has the id. A history row that no longer reads as a report
    /// (written by another version) is left out.
    pub fn gateway(&self, identity_id: &str) -> Result<Option<GatewayView>, ApiError> {
        let Some(gateway) = self
            .fleet()?
            .into_iter()
            .find(|g| g.identity_id == identity_id)
        else {
            return Ok(None);
        };
        let store = self.store();
        let since = now_ms() - self.config.fleet.history.as_millis() as i64;
        let history = store
            .health_history(identity_id, since)?
            .into_iter()
            .filter_map(|(at, json)| Some((at, serde_json::from_str(&json).ok()?)))
            .collect();
        let mut leases = self.leases(Some(identity_id))?;
        leases.sort_by_key(|l| std::cmp::Reverse(l.created_ms));
        let audit = store.audit_of_identity(identity_id, GATEWAY_AUDIT_ROWS)?;
        Ok(Some(GatewayView {
            gateway,
            history,
            leases,
            audit,
        }))
    }

    /// A page of the audit trail, newest first, before row `before`.
    pub fn audit_page(&self, before: Option<i64>, rows: u32) -> Result<Vec<AuditRow>, ApiError> {
        Ok(self.store().audit_page(before.unwrap_or(i64::MAX), rows)?)
    }
}
