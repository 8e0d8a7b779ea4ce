//! The leases page: every lease, live ones first to revoke, each with a
//! revoke button (a form with the CSRF token). The gateway page shows its
//! own leases with the same rows.

use std::fmt::Write as _;

use crate::wire::api::{LeaseInfo, LeaseStatus};

use super::{Section, esc, notice, post_button, signed_in, when};

/// Whether a revoke can still change the lease.
fn revocable(l: &LeaseInfo) -> bool {
    matches!(l.status, LeaseStatus::Pending | LeaseStatus::Active)
}

/// The table of `leases`; `back` is the identity whose page the revoke
/// returns to (None: the leases page).
pub(super) fn lease_table<'a>(
    leases: impl IntoIterator<Item = &'a LeaseInfo>,
    csrf: &str,
    back: Option<&str>,
    now_ms: i64,
) -> String {
    let mut rows = String::new();
    for l in leases {
        let mut status = l.status.as_str().to_owned();
        if let Some(e) = &l.last_error {
            let _ = write!(status, " ({e})");
        }
        let expires = if revocable(l) {
            format!(
                "<span data-expires=\"{}\">{}</span>",
                l.expires_ms,
                esc(&crate::render::expiry(l.expires_ms, now_ms))
            )
        } else {
            esc(&crate::render::expiry(l.expires_ms, now_ms))
        };
        let action = if revocable(l) {
            let mut fields = vec![("id", l.id.as_str())];
            if let Some(identity) = back {
                fields.push(("gateway", identity));
            }
            post_button(
                "/ui/leases/revoke",
                csrf,
                &fields,
                &format!("revoke-{}", l.id),
                "Revoke",
            )
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            "<tr id=\"lease-{id}\"><td>{id}</td><td><a href=\"/ui/gateway/{identity}\">{}</a></td><td>{}</td>\
             <td>{}</td><td>{expires}</td><td class=status>{}</td><td>{action}</td></tr>",
            esc(&l.issued_for),
            esc(&l.role),
            when(l.created_ms, now_ms),
            esc(&status),
            id = esc(&l.id),
            identity = esc(&l.identity_id),
        );
    }
    format!(
        "<table id=leases><thead><tr><th>ID</th><th>Issued for</th><th>Role</th><th>Created</th>\
         <th>Expires</th><th>Status</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

/// `leases`: live ones unless `all`.
pub fn leases(
    admin: &str,
    csrf: &str,
    leases: &[LeaseInfo],
    all: bool,
    message: Option<&Result<String, String>>,
    now_ms: i64,
) -> String {
    let shown: Vec<&LeaseInfo> = leases
        .iter()
        .filter(|l| {
            all || matches!(
                l.status,
                LeaseStatus::Pending | LeaseStatus::Active | LeaseStatus::Revoking
            )
        })
        .collect();
    let switch = if all {
        "<a href=\"/ui/leases\" id=live-only>Live leases only</a>"
    } else {
        "<a href=\"/ui/leases?all=1\" id=all-leases>Ended leases too</a>"
    };
    signed_in(
        "Leases",
        Section::Leases,
        admin,
        csrf,
        false,
        &format!(
            "{}<h2 id=count>{} {}leases</h2><p>{switch}</p>{}",
            notice(message),
            shown.len(),
            if all { "" } else { "live " },
            lease_table(shown.iter().copied(), csrf, None, now_ms)
        ),
    )
}
