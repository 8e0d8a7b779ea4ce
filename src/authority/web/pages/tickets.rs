//! The tickets page: the form that creates one (attributes, uses, expiry,
//! role, identity name), every ticket with its status and a revoke button,
//! and the page after a creation, whose one link downloads the new ticket
//! once. The ticket's secret never appears in a page.

use std::fmt::Write as _;

use crate::authority::admin::ticket_status;
use crate::authority::store::TicketRow;

use super::{Section, esc, notice, post_button, signed_in, when};

/// The create form as posted (every field text, checked by the handler),
/// and what the form shows again after a refusal.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct TicketForm {
    #[serde(default)]
    pub csrf: String,
    /// `key=value`, one a line.
    #[serde(default)]
    pub attributes: String,
    #[serde(default)]
    pub uses: String,
    /// A duration: `1h`, `7d`.
    #[serde(default)]
    pub expires_in: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub identity_name: String,
}

pub fn tickets(
    admin: &str,
    csrf: &str,
    tickets: &[TicketRow],
    roles: &[String],
    form: &TicketForm,
    message: Option<&Result<String, String>>,
    now_ms: i64,
) -> String {
    let mut role_options =
        String::from("<option value=\"\">the first whose attributes match</option>");
    for role in roles {
        let selected = if form.role == *role { " selected" } else { "" };
        let _ = write!(role_options, "<option{selected}>{}</option>", esc(role));
    }
    let uses = if form.uses.is_empty() {
        "1"
    } else {
        &form.uses
    };
    let expires = if form.expires_in.is_empty() {
        "24h"
    } else {
        &form.expires_in
    };
    let create = format!(
        "<form class=create id=create method=post action=\"/ui/tickets\">\
         <input type=hidden name=csrf value=\"{}\">\
         <label for=attributes>Attributes (key=value, one a line)</label>\
         <textarea name=attributes id=attributes rows=3>{}</textarea>\
         <label for=uses>Uses</label><input name=uses id=uses inputmode=numeric value=\"{}\">\
         <label for=expires_in>Expires in</label><input name=expires_in id=expires_in value=\"{}\">\
         <label for=role>Role</label><select name=role id=role>{role_options}</select>\
         <label for=identity_name>Identity name (optional)</label>\
         <input name=identity_name id=identity_name value=\"{}\">\
         <button id=create-ticket>Create ticket</button></form>",
        esc(csrf),
        esc(&form.attributes),
        esc(uses),
        esc(expires),
        esc(&form.identity_name),
    );
    let mut rows = String::new();
    for t in tickets.iter().rev() {
        let status = ticket_status(t, now_ms);
        let attributes = crate::authority::service::attribute_pairs(&t.attributes);
        let revoke = if status == "valid" {
            post_button(
                "/ui/tickets/revoke",
                csrf,
                &[("id", &t.id)],
                &format!("revoke-{}", t.id),
                "Revoke",
            )
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            "<tr id=\"ticket-{id}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{} of {}</td>\
             <td>{}</td><td>{}</td><td class=status>{status}</td><td>{revoke}</td></tr>",
            esc(&attributes),
            esc(t.role.as_deref().unwrap_or("-")),
            esc(t.identity_name.as_deref().unwrap_or("-")),
            t.used,
            t.usage_count,
            when(t.created_ms, now_ms),
            esc(&crate::render::expiry(t.expires_ms, now_ms)),
            id = esc(&t.id),
        );
    }
    signed_in(
        "Tickets",
        Section::Tickets,
        admin,
        csrf,
        false,
        &format!(
            "{}<h2>New ticket</h2>{create}<h2 id=count>{} tickets</h2>\
             <table id=tickets><thead><tr><th>ID</th><th>Attributes</th><th>Role</th><th>Identity name</th>\
             <th>Used</th><th>Created</th><th>Expires</th><th>Status</th><th></th></tr></thead><tbody>{rows}</tbody></table>",
            notice(message),
            tickets.len()
        ),
    )
}

/// After a creation: the one link that downloads the ticket file.
pub fn ticket_created(admin: &str, csrf: &str, id: &str, download: &str, expires: &str) -> String {
    signed_in(
        "Ticket created",
        Section::Tickets,
        admin,
        csrf,
        false,
        &format!(
            "<p class=ok id=message>Ticket {id} created. Its file can be downloaded once, within 10 minutes: \
             hand it to the technician, who drops it into the gateway's ticket directory. \
             The ticket expires {}.</p>\
             <p><a id=download href=\"{}\" download>Download {id}.ticket</a></p>\
             <p><a href=\"/ui/tickets\">Back to the tickets</a></p>",
            esc(expires),
            esc(download),
            id = esc(id),
        ),
    )
}
