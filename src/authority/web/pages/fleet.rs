//! The fleet page: one row per gateway with its state, last call, lease
//! countdown, runway and why it is not `ok`; filters by state, role and
//! attribute as plain links and a GET form (no script needed). A row stays
//! small (a fleet of 1,000 must weigh under 300 KB): attributes are on
//! each gateway's own page.

use std::fmt::Write as _;

use crate::authority::fleet::{Gateway, State};

use super::{Section, esc, signed_in};

/// What the fleet is filtered by (the query string of `/ui/`).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct FleetFilter {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    /// `key=value`: gateways whose identity has that attribute.
    #[serde(default)]
    pub attr: Option<String>,
}

impl FleetFilter {
    /// The state asked for, if it names one.
    pub fn state(&self) -> Option<State> {
        self.state.as_deref().and_then(State::parse)
    }

    fn role(&self) -> Option<&str> {
        self.role.as_deref().filter(|r| !r.is_empty())
    }

    /// The attribute asked for as (key, value); a bare key matches any
    /// value.
    fn attribute(&self) -> Option<(&str, Option<&str>)> {
        let a = self.attr.as_deref()?.trim();
        if a.is_empty() {
            return None;
        }
        Some(match a.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (a, None),
        })
    }

    pub fn keeps(&self, g: &Gateway) -> bool {
        self.state().is_none_or(|s| g.state == s)
            && self.role().is_none_or(|r| g.role == r)
            && self.attribute().is_none_or(|(k, v)| {
                g.attributes
                    .get(k)
                    .is_some_and(|have| v.is_none_or(|v| have == v))
            })
    }
}

/// `gateways` are those the filter kept; `roles`, every role seen in the
/// fleet (for the filter's choices).
pub fn fleet(
    admin: &str,
    csrf: &str,
    gateways: &[Gateway],
    filter: &FleetFilter,
    roles: &[String],
    now_ms: i64,
) -> String {
    let mut rows = String::new();
    for g in gateways {
        let r = g.report.as_ref();
        let _ = write!(
            rows,
            "<tr id=\"gw-{id}\"><td><a href=\"/ui/gateway/{id}\">{}</a></td><td class=\"state s-{st}\">{st}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=why>{}</td></tr>",
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
            id = esc(&g.identity_id),
            st = g.state.as_str(),
        );
    }
    let shown = filter.state();
    let mut states = String::from("<nav id=states><a href=\"/ui/\">all</a>");
    for st in State::ALL {
        let _ = write!(states, "<a href=\"/ui/?state={0}\">{0}</a>", st.as_str());
    }
    states.push_str("</nav>");
    let mut state_options = String::from("<option value=\"\">any state</option>");
    for st in State::ALL {
        let selected = if shown == Some(st) { " selected" } else { "" };
        let _ = write!(state_options, "<option{selected}>{}</option>", st.as_str());
    }
    let mut role_options = String::from("<option value=\"\">any role</option>");
    for role in roles {
        let selected = if filter.role() == Some(role.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(role_options, "<option{selected}>{}</option>", esc(role));
    }
    let filters = format!(
        "<form class=filters method=get action=\"/ui/\"><select name=state id=f-state>{state_options}</select>\
         <select name=role id=f-role>{role_options}</select>\
         <input name=attr id=f-attr placeholder=\"attribute=value\" value=\"{}\">\
         <button id=filter>Filter</button></form>",
        esc(filter.attr.as_deref().unwrap_or(""))
    );
    let heading = match shown {
        Some(st) => format!("{} gateways {}", gateways.len(), st.as_str()),
        None => format!("{} gateways", gateways.len()),
    };
    signed_in(
        "Fleet",
        Section::Fleet,
        admin,
        csrf,
        true,
        &format!(
            "{states}{filters}<h2 id=count>{heading}</h2>\
             <table id=fleet><thead><tr><th>Name</th><th>State</th><th>Role</th><th>Last call</th>\
             <th>Lease</th><th>Runway</th><th>Waiting</th><th>Why</th></tr></thead><tbody>{rows}</tbody></table>"
        ),
    )
}
