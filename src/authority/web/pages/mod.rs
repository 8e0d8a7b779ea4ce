//! The HTML of the web page, made from rows the service returns: every
//! value escaped, no inline script or style (the CSP forbids them), the
//! page complete without JavaScript. It never receives a secret to show.

use std::fmt::Write as _;

use crate::authority::fleet::{Gateway, State};

/// The one stylesheet.
pub const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}\
header{display:flex;gap:1em;align-items:center;padding:.6em 1em;background:#1d3557;color:#fff}\
header h1{font-size:1.1em;margin:0;flex:1}header form{margin:0}\
main{padding:1em}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd;vertical-align:top}\
.state{font-weight:600}.s-ok{color:#2a7a2a}.s-late,.s-clock,.s-backlog{color:#b36b00}\
.s-missing,.s-refused,.s-revoked{color:#b00020}.why{color:#555}\
.error{color:#b00020}nav a{margin-right:.8em}form.login{max-width:20em}\
form.login input{display:block;width:100%;margin:.2em 0 .8em}";

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

/// The fleet: one row per gateway, filters by state.
pub fn fleet(
    admin: &str,
    csrf: &str,
    gateways: &[Gateway],
    shown: Option<State>,
    now_ms: i64,
) -> String {
    let mut rows = String::new();
    for g in gateways {
        let r = g.report.as_ref();
        let _ = write!(
            rows,
            "<tr id=\"gw-{}\"><td>{}</td><td class=\"state s-{st}\">{st}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td class=why>{}</td></tr>",
            esc(&g.identity_id),
            esc(&g.name),
            esc(&g.role),
            g.last_call_ms
                .map_or("never".into(), |t| crate::render::relative(t, now_ms)),
            g.lease_expires_ms.map_or("-".into(), |t| format!(
                "<span data-expires=\"{t}\">{}</span>",
                esc(&crate::render::expiry(t, now_ms))
            )),
            r.and_then(|r| r.runway_hours)
                .map_or("-".into(), |h| format!("{h:.1} h")),
            r.map_or("-".into(), |r| r.points_waiting.to_string()),
            esc(&g.why.join("; ")),
            st = g.state.as_str(),
        );
    }
    let mut filters = String::from("<nav><a href=\"/ui/\">all</a>");
    for st in State::ALL {
        let _ = write!(filters, "<a href=\"/ui/?state={0}\">{0}</a>", st.as_str());
    }
    filters.push_str("</nav>");
    let heading = match shown {
        Some(st) => format!("{} gateways {}", gateways.len(), st.as_str()),
        None => format!("{} gateways", gateways.len()),
    };
    document(
        "Fleet",
        true,
        &format!(
            "<header><h1>leasegate authority</h1><span id=admin>{}</span>\
             <form method=post action=\"/ui/logout\"><input type=hidden name=csrf value=\"{}\">\
             <button id=logout>Log out</button></form></header><main>{filters}<h2 id=count>{heading}</h2>\
             <table id=fleet><thead><tr><th>Name</th><th>State</th><th>Role</th><th>Last call</th>\
             <th>Lease</th><th>Runway</th><th>Waiting</th><th>Why</th></tr></thead><tbody>{rows}</tbody></table></main>",
            esc(admin),
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
