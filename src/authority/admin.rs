//! What the admin commands print: aligned tables for people (times as "in
//! 9m 58s" or "expired 3s ago") and JSON views for scripts.
//!
//! Pure formatting over rows the service returns: it never reads the store
//! itself, and the views it builds have no field that could hold a secret.

use serde::Serialize;

use crate::authority::store::{IdentityRow, TicketRow};
use crate::render::table;
pub use crate::render::{expiry, lease_detail, lease_table, relative};

#[derive(Serialize)]
pub struct TicketView<'a> {
    pub id: &'a str,
    pub attributes: &'a std::collections::BTreeMap<String, String>,
    pub role: Option<&'a str>,
    /// The one identity name the ticket enrolls, when bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_name: Option<&'a str>,
    pub usage_count: u32,
    pub used: u32,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub status: &'static str,
}

pub fn ticket_status(t: &TicketRow, now_ms: i64) -> &'static str {
    if t.revoked_ms.is_some() {
        "revoked"
    } else if t.used >= t.usage_count {
        "used up"
    } else if t.expires_ms <= now_ms {
        "expired"
    } else {
        "valid"
    }
}

pub fn ticket_views(tickets: &[TicketRow], now_ms: i64) -> Vec<TicketView<'_>> {
    tickets
        .iter()
        .map(|t| TicketView {
            id: &t.id,
            attributes: &t.attributes,
            role: t.role.as_deref(),
            identity_name: t.identity_name.as_deref(),
            usage_count: t.usage_count,
            used: t.used,
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            status: ticket_status(t, now_ms),
        })
        .collect()
}

pub fn ticket_table(tickets: &[TicketRow], now_ms: i64) -> String {
    let rows = tickets
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                crate::authority::service::show_attributes(&t.attributes),
                t.role.clone().unwrap_or_else(|| "-".into()),
                t.identity_name.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}", t.used, t.usage_count),
                relative(t.created_ms, now_ms),
                expiry(t.expires_ms, now_ms),
                ticket_status(t, now_ms).to_owned(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "ATTRIBUTES",
            "ROLE",
            "IDENTITY",
            "USED",
            "CREATED",
            "EXPIRES",
            "STATUS",
        ],
        rows,
    )
}

#[derive(Serialize)]
pub struct IdentityView<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub role: &'a str,
    pub ticket_id: &'a str,
    pub attributes: &'a std::collections::BTreeMap<String, String>,
    pub created_ms: i64,
    pub status: &'static str,
}

pub fn identity_views(identities: &[IdentityRow]) -> Vec<IdentityView<'_>> {
    identities
        .iter()
        .map(|i| IdentityView {
            id: &i.id,
            name: &i.name,
            role: &i.role,
            ticket_id: &i.ticket_id,
            attributes: &i.attributes,
            created_ms: i.created_ms,
            status: if i.revoked_ms.is_some() {
                "revoked"
            } else {
                "active"
            },
        })
        .collect()
}

pub fn identity_table(identities: &[IdentityRow], now_ms: i64) -> String {
    let rows = identity_views(identities)
        .into_iter()
        .map(|i| {
            vec![
                i.id.to_owned(),
                i.name.to_owned(),
                i.role.to_owned(),
                i.ticket_id.to_owned(),
                relative(i.created_ms, now_ms),
                i.status.to_owned(),
            ]
        })
        .collect();
    table(&["ID", "NAME", "ROLE", "TICKET", "CREATED", "STATUS"], rows)
}

/// The fleet for people: a row per gateway, the reasons of its state.
/// The audit trail as the command line prints it: exact UTC times, as
/// an operator matches them against the journal.
pub fn audit_table(rows: &[crate::authority::store::AuditRow]) -> String {
    let rows = rows
        .iter()
        .map(|r| {
            vec![
                r.seq.to_string(),
                humantime::format_rfc3339_millis(crate::render::unix_ms(r.at_ms)).to_string(),
                r.event.clone(),
                r.subject.clone(),
                r.detail.clone(),
            ]
        })
        .collect();
    table(&["SEQ", "AT", "EVENT", "SUBJECT", "DETAIL"], rows)
}

pub fn fleet_table(gateways: &[crate::authority::fleet::Gateway], now_ms: i64) -> String {
    let rows = gateways
        .iter()
        .map(|g| {
            let r = g.report.as_ref();
            vec![
                g.name.clone(),
                g.state.as_str().to_owned(),
                g.last_call_ms
                    .map_or("never".into(), |t| relative(t, now_ms)),
                g.lease_expires_ms.map_or("-".into(), |t| expiry(t, now_ms)),
                r.and_then(|r| r.runway_hours)
                    .map_or("-".into(), |h| format!("{h:.1} h")),
                r.map_or("-".into(), |r| r.points_waiting.to_string()),
                g.why.join("; "),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "LAST CALL",
            "LEASE",
            "RUNWAY",
            "WAITING",
            "WHY",
        ],
        rows,
    )
}
