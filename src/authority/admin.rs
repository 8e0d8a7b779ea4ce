//! What the admin commands print: aligned tables for people (times as "in
//! 9m 58s" or "expired 3s ago") and JSON views for scripts.
//!
//! Pure formatting over rows the service returns: it never reads the store
//! itself, and the views it builds have no field that could hold a secret.

use std::time::Duration;

use serde::Serialize;

use crate::api::LeaseInfo;
use crate::authority::store::{IdentityRow, TicketRow};

/// "in 9m 58s" for a future time, "3s ago" for a past one (to the second).
pub fn relative(at_ms: i64, now_ms: i64) -> String {
    let secs =
        |d: i64| humantime::format_duration(Duration::from_secs((d / 1000) as u64)).to_string();
    if at_ms > now_ms {
        format!("in {}", secs(at_ms - now_ms + 999))
    } else {
        format!("{} ago", secs(now_ms - at_ms))
    }
}

/// An expiry: "in 9m 58s", or "expired 3s ago".
pub fn expiry(at_ms: i64, now_ms: i64) -> String {
    if at_ms > now_ms {
        relative(at_ms, now_ms)
    } else {
        format!("expired {}", relative(at_ms, now_ms))
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
    out
}

pub fn lease_table(leases: &[LeaseInfo], now_ms: i64) -> String {
    let rows = leases
        .iter()
        .map(|l| {
            let mut status = l.status.as_str().to_owned();
            if let Some(e) = &l.last_error {
                status.push_str(&format!(" ({e})"));
            }
            vec![
                l.id.clone(),
                l.issued_for.clone(),
                l.role.clone(),
                relative(l.created_ms, now_ms),
                expiry(l.expires_ms, now_ms),
                status,
            ]
        })
        .collect();
    table(
        &["ID", "ISSUED FOR", "ROLE", "CREATED", "EXPIRES", "STATUS"],
        rows,
    )
}

pub fn lease_detail(l: &LeaseInfo, now_ms: i64) -> String {
    let t = &l.target;
    let mut out = format!(
        "id:          {}\nissued for:  {} ({})\nrole:        {}\nstatus:      {}\ncreated:     {}\nexpires:     {}\nttl:         {}\napi:         {}\nurl:         {}\n",
        l.id,
        l.issued_for,
        l.identity_id,
        l.role,
        l.status.as_str(),
        relative(l.created_ms, now_ms),
        expiry(l.expires_ms, now_ms),
        humantime::format_duration(Duration::from_secs(l.ttl_secs)),
        t.api,
        t.url
    );
    for (k, v) in [
        ("org", &t.org),
        ("bucket", &t.bucket),
        ("database", &t.database),
    ] {
        if let Some(v) = v {
            out.push_str(&format!("{:<13}{v}\n", format!("{k}:")));
        }
    }
    if let Some(e) = &l.last_error {
        out.push_str(&format!("last error:  {e}\n"));
    }
    out
}

#[derive(Serialize)]
pub struct TicketView<'a> {
    pub id: &'a str,
    pub attributes: &'a std::collections::BTreeMap<String, String>,
    pub role: Option<&'a str>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_say_them() {
        let now = 1_000_000;
        assert_eq!(expiry(now + 598_000, now), "in 9m 58s");
        assert_eq!(expiry(now - 3_000, now), "expired 3s ago");
        assert_eq!(relative(now - 62_500, now), "1m 2s ago");
        assert_eq!(expiry(now + 200, now), "in 1s");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATUS"],
            vec![vec!["abcdef".into(), "active".into()]],
        );
        assert_eq!(t, "ID      STATUS\nabcdef  active\n");
    }
}
