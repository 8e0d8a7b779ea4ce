//! The audit trail, newest first, a page at a time: each page links to
//! the one after it by the last row's place in the trail, so rows written
//! meanwhile never shift what a page shows.

use std::fmt::Write as _;

use crate::authority::store::AuditRow;

use super::{Section, esc, signed_in, when};

/// `rows` of one page; `older`: the `before` of the next page, if there
/// may be one.
pub fn audit(
    admin: &str,
    csrf: &str,
    rows: &[AuditRow],
    first_page: bool,
    older: Option<i64>,
    now_ms: i64,
) -> String {
    let mut body = String::new();
    for row in rows {
        let _ = write!(
            body,
            "<tr id=\"audit-{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            row.seq,
            when(row.at_ms, now_ms),
            esc(&row.event),
            esc(&row.subject),
            esc(&row.detail)
        );
    }
    let mut pager = String::from("<p class=pager>");
    if !first_page {
        pager.push_str("<a id=newest href=\"/ui/audit\">Newest</a>");
    }
    if let Some(before) = older {
        let _ = write!(
            pager,
            "<a id=older href=\"/ui/audit?before={before}\">Older</a>"
        );
    }
    pager.push_str("</p>");
    signed_in(
        "Audit",
        Section::Audit,
        admin,
        csrf,
        false,
        &format!(
            "<h2>Audit trail</h2><table id=audit><thead><tr><th>When</th><th>Event</th><th>Subject</th>\
             <th>Detail</th></tr></thead><tbody>{body}</tbody></table>{pager}"
        ),
    )
}
