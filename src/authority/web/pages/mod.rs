//! The HTML of the web page, made from rows the service returns: every
//! value escaped, no inline script or style (the CSP forbids them), the
//! page complete without JavaScript. It never receives a secret to show
//! (a new ticket leaves as a download, never in a page).

mod audit;
mod chart;
mod fleet;
mod gateway;
mod leases;
mod tickets;

pub use audit::audit;
pub use fleet::{FleetFilter, fleet};
pub use gateway::gateway;
pub use leases::leases;
pub use tickets::{TicketForm, ticket_created, tickets};

/// The one stylesheet.
pub const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}\
header{display:flex;gap:1em;align-items:center;padding:.6em 1em;background:#1d3557;color:#fff}\
header h1{font-size:1.1em;margin:0;flex:1}header form{margin:0}\
main{padding:1em}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd;vertical-align:top}\
.state{font-weight:600}.s-ok{color:#2a7a2a}.s-late,.s-clock,.s-backlog{color:#b36b00}\
.s-missing,.s-refused,.s-revoked{color:#b00020}.why{color:#555}\
.error{color:#b00020}.ok{color:#2a7a2a}nav a{margin-right:.8em}form.login{max-width:20em}\
form.login input{display:block;width:100%;margin:.2em 0 .8em}\
header nav a{color:#fff}header nav a.here{text-decoration:none;font-weight:600}\
form.inline{display:inline;margin:0}form.filters{margin:.5em 0}form.filters *{margin-right:.4em}\
form.create{display:grid;grid-template-columns:max-content 20em;gap:.4em .8em;align-items:start}\
form.create button{grid-column:2;justify-self:start}\
.chart{margin:.4em 0 1em}.chart svg{background:#fafafa;border:1px solid #ddd}\
.legend span{margin-right:1em}.l-in{color:#1d3557}.l-out{color:#2a7a2a}.l-wait{color:#b36b00}\
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dl.facts dd{margin:0}\
.pager a{margin-right:1em}";

/// Live countdowns of the lease time left, and a refresh every 15 s.
pub const JS: &str = r#""use strict";
function tick(){
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-expires]")) {
    const left = Math.round((Number(el.dataset.expires) - now) / 1000);
    el.textContent = left > 0 ? "in " + left + "s" : "expired " + (-left) + "s ago";
  }
}
tick();
setInterval(tick, 1000);
if (document.body.dataset.refresh) { setTimeout(() => location.reload(), 15000); }
"#;

/// `text` for an HTML text node or a quoted attribute.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn document(title: &str, refresh: bool, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width\">\
         <title>{} - leasegate</title><link rel=stylesheet href=\"/ui/app.css\">\
         <script src=\"/ui/app.js\" defer></script></head>\
         <body{}>{body}</body></html>",
        esc(title),
        if refresh { " data-refresh=1" } else { "" }
    )
}

/// The pages an admin moves between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Fleet,
    Tickets,
    Leases,
    Audit,
}

/// A signed-in page: the header with the sections, the admin's name and
/// the logout form, then `body`.
fn signed_in(
    title: &str,
    here: Section,
    admin: &str,
    csrf: &str,
    refresh: bool,
    body: &str,
) -> String {
    let mut nav = String::from("<nav>");
    for (section, href, label) in [
        (Section::Fleet, "/ui/", "Fleet"),
        (Section::Tickets, "/ui/tickets", "Tickets"),
        (Section::Leases, "/ui/leases", "Leases"),
        (Section::Audit, "/ui/audit", "Audit"),
    ] {
        let class = if section == here { " class=here" } else { "" };
        nav.push_str(&format!("<a href=\"{href}\"{class}>{label}</a>"));
    }
    nav.push_str("</nav>");
    document(
        title,
        refresh,
        &format!(
            "<header><h1>leasegate authority</h1>{nav}<span id=admin>{}</span>\
             <form method=post action=\"/ui/logout\"><input type=hidden name=csrf value=\"{}\">\
             <button id=logout>Log out</button></form></header><main>{body}</main>",
            esc(admin),
            esc(csrf)
        ),
    )
}

/// A button that posts `fields` and the CSRF token to `action`.
fn post_button(action: &str, csrf: &str, fields: &[(&str, &str)], id: &str, label: &str) -> String {
    let mut hidden = format!("<input type=hidden name=csrf value=\"{}\">", esc(csrf));
    for (name, value) in fields {
        hidden.push_str(&format!(
            "<input type=hidden name=\"{}\" value=\"{}\">",
            esc(name),
            esc(value)
        ));
    }
    format!(
        "<form class=inline method=post action=\"{}\">{hidden}<button id=\"{}\">{}</button></form>",
        esc(action),
        esc(id),
        esc(label)
    )
}

/// A time as the tables show it: relative to now, the exact time on hover.
fn when(at_ms: i64, now_ms: i64) -> String {
    format!(
        "<span title=\"{}\">{}</span>",
        esc(&utc(at_ms)),
        esc(&crate::render::relative(at_ms, now_ms))
    )
}

/// Unix milliseconds as an RFC 3339 UTC time, to the second.
fn utc(at_ms: i64) -> String {
    humantime::format_rfc3339_seconds(crate::render::unix_ms(at_ms)).to_string()
}

/// A message above a page's content, after a change: `Ok(text)` done,
/// `Err(text)` refused.
fn notice(message: Option<&Result<String, String>>) -> String {
    match message {
        Some(Ok(m)) => format!("<p class=ok id=message>{}</p>", esc(m)),
        Some(Err(m)) => format!("<p class=error id=message>{}</p>", esc(m)),
        None => String::new(),
    }
}

pub fn error(message: &str) -> String {
    document(
        "Error",
        false,
        &format!(
            "<main><p class=error>{}</p><p><a href=\"/ui/\">Back</a></p></main>",
            esc(message)
        ),
    )
}

pub fn login(csrf: &str, message: Option<&str>) -> String {
    let message = message
        .map(|m| format!("<p class=error id=message>{}</p>", esc(m)))
        .unwrap_or_default();
    document(
        "Log in",
        false,
        &format!(
            "<header><h1>leasegate authority</h1></header><main>{message}\
             <form class=login method=post action=\"/ui/login\">\
             <input type=hidden name=csrf value=\"{}\">\
             <label>Name<input name=name id=name autocomplete=username required></label>\
             <label>Password<input name=password id=password type=password autocomplete=current-password required></label>\
             <button id=login>Log in</button></form></main>",
            esc(csrf)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let page = error("<script>alert(1)</script>");
        assert!(!page.contains("<script>alert"), "{page}");
    }
}
