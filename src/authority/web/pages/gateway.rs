//! One gateway's page: its state and why, its last report, its reports
//! over the kept history as inline SVG charts, its leases (with revoke
//! buttons) and the audit rows about it.

use std::fmt::Write as _;

use crate::authority::service::GatewayView;
use crate::wire::health::HealthReport;

use super::chart::{Series, line_chart};
use super::{Section, esc, signed_in, when};

pub fn gateway(
    admin: &str,
    csrf: &str,
    view: &GatewayView,
    message: Option<&Result<String, String>>,
    now_ms: i64,
) -> String {
    let g = &view.gateway;
    let facts = facts(g, now_ms);
    let history = &view.history;
    let series = |label, class, colour, f: fn(&HealthReport) -> f64| Series {
        label,
        class,
        colour,
        points: history.iter().map(|(t, r)| (*t, f(r))).collect(),
    };
    let rates = line_chart(
        "chart-rates",
        "Points a second",
        &[
            series("in", "l-in", "#1d3557", |r| r.points_in_per_sec),
            series("out", "l-out", "#2a7a2a", |r| r.points_out_per_sec),
        ],
        now_ms,
    );
    let waiting = line_chart(
        "chart-waiting",
        "Points waiting to be written",
        &[series("waiting", "l-wait", "#b36b00", |r| {
            r.points_waiting as f64
        })],
        now_ms,
    );
    let mut audit = String::new();
    for row in &view.audit {
        let _ = write!(
            audit,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(row.at_ms, now_ms),
            esc(&row.event),
            esc(&row.subject),
            esc(&row.detail)
        );
    }
    signed_in(
        &g.name,
        Section::Fleet,
        admin,
        csrf,
        false,
        &format!(
            "{}<h2 id=name>{}</h2><dl class=facts id=facts>{facts}</dl>\
             <h3>History</h3>{rates}{waiting}\
             <h3>Leases</h3>{}\
             <h3>Audit</h3><table id=audit><thead><tr><th>When</th><th>Event</th><th>Subject</th><th>Detail</th></tr></thead>\
             <tbody>{audit}</tbody></table>",
            super::notice(message),
            esc(&g.name),
            super::leases::lease_table(&view.leases, csrf, Some(&g.identity_id), now_ms),
        ),
    )
}

/// The gateway's state, identity and last report as a list of facts.
fn facts(g: &crate::authority::fleet::Gateway, now_ms: i64) -> String {
    let mut facts = String::new();
    let mut fact = |name: &str, value: String| {
        let _ = write!(facts, "<dt>{}</dt><dd>{value}</dd>", esc(name));
    };
    fact(
        "State",
        format!(
            "<span id=state class=\"state s-{0}\">{0}</span>",
            g.state.as_str()
        ),
    );
    if !g.why.is_empty() {
        fact(
            "Why",
            format!("<span class=why>{}</span>", esc(&g.why.join("; "))),
        );
    }
    fact("Identity", esc(&g.identity_id));
    fact("Role", esc(&g.role));
    let attributes = crate::authority::service::attribute_pairs(&g.attributes);
    fact("Attributes", esc(&attributes));
    fact(
        "Last call",
        g.last_call_ms.map_or("never".into(), |t| when(t, now_ms)),
    );
    if let Some(t) = g.lease_expires_ms {
        fact(
            "Lease",
            format!(
                "<span data-expires=\"{t}\">{}</span>",
                esc(&crate::render::expiry(t, now_ms))
            ),
        );
    }
    if let Some(why) = &g.report_refused {
        fact("Last report refused", esc(why));
    }
    if let (Some(r), Some(at)) = (&g.report, g.report_ms) {
        fact("Last report", when(at, now_ms));
        report_facts(r, &mut fact);
    }
    facts
}

/// The last report's figures, each in words an operator reads.
fn report_facts(r: &HealthReport, fact: &mut impl FnMut(&str, String)) {
    fact("Version", esc(&format!("{} ({})", r.version, r.target)));
    fact(
        "Up for",
        esc(&humantime::format_duration(std::time::Duration::from_secs(r.uptime_secs)).to_string()),
    );
    fact(
        "Points a second",
        format!(
            "{:.1} in, {:.1} out",
            r.points_in_per_sec, r.points_out_per_sec
        ),
    );
    let oldest = r
        .oldest_waiting_secs
        .map(|s| format!(", the oldest {s} s old"))
        .unwrap_or_default();
    fact(
        "Waiting",
        format!("{} points{}", r.points_waiting, esc(&oldest)),
    );
    fact("Spool", format!("{} bytes", r.spool_bytes));
    if let Some(h) = r.runway_hours {
        fact("Runway", format!("{h:.1} h"));
    }
    if let Some(free) = r.disk_free_bytes {
        fact("Disk free", format!("{} MB", free / 1_000_000));
    }
    fact("Dead letters", r.dead_letters.to_string());
    if let Some(w) = &r.last_write {
        let status = w.status.map(|s| format!(" ({s})")).unwrap_or_default();
        fact(
            "Last write",
            esc(&format!(
                "{}{status}, {} s ago",
                w.outcome.as_str(),
                w.ago_secs
            )),
        );
    }
    let clock = match (r.clock_synchronized, r.clock_offset_ms) {
        (_, Some(ms)) => format!("{ms:.0} ms off the authority's"),
        (Some(true), None) => "synchronized".into(),
        (Some(false), None) => "not synchronized".into(),
        (None, None) => "unknown".into(),
    };
    fact("Clock", esc(&clock));
    fact(
        "MQTT",
        (if r.mqtt_connected {
            "connected"
        } else {
            "not connected"
        })
        .into(),
    );
    if let Some(e) = &r.spool_error {
        fact("Spool error", esc(e));
    }
}
