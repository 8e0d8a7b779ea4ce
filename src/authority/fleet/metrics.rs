//! The fleet's Prometheus page (`[metrics] listen`, loopback only, off by
//! default): how many gateways are in each state, and a gauge per gateway
//! and figure of its last report, labelled by name and identity id. It
//! renders what `crate::authority::fleet` derives and never shows a
//! secret (none is in the rows).

use std::fmt::Write as _;

use super::{Gateway, counts};

/// The page for `gateways` assessed at `now_ms`.
pub fn render(gateways: &[Gateway], now_ms: i64) -> String {
    let mut page = String::new();
    help(
        &mut page,
        "leasegate_fleet_gateways",
        "Gateways in each state (a gateway shows its worst).",
    );
    for (state, n) in counts(gateways) {
        let _ = writeln!(
            page,
            "leasegate_fleet_gateways{{state=\"{}\"}} {n}",
            state.as_str()
        );
    }
    help(
        &mut page,
        "leasegate_gateway_state",
        "1 for the state each gateway is in.",
    );
    for g in gateways {
        let _ = writeln!(
            page,
            "leasegate_gateway_state{{{},state=\"{}\"}} 1",
            labels(g),
            g.state.as_str()
        );
    }
    for (name, text, value) in FIGURES {
        help(&mut page, name, text);
        for g in gateways {
            if let Some(v) = value(g, now_ms) {
                let _ = writeln!(page, "{name}{{{}}} {v}", labels(g));
            }
        }
    }
    page
}

type Figure = fn(&Gateway, i64) -> Option<f64>;

/// Each gauge per gateway: its name, help and value (None: not known).
const FIGURES: [(&str, &str, Figure); 10] = [
    (
        "leasegate_gateway_last_call_age_seconds",
        "Seconds since the gateway's last lease call.",
        |g, now| g.last_call_ms.map(|t| (now - t) as f64 / 1e3),
    ),
    (
        "leasegate_gateway_lease_remaining_seconds",
        "Seconds until its newest lease expires (negative: expired).",
        |g, now| g.lease_expires_ms.map(|t| (t - now) as f64 / 1e3),
    ),
    (
        "leasegate_gateway_points_waiting",
        "Points in its spool not yet written, at its last report.",
        |g, _| g.report.as_ref().map(|r| r.points_waiting as f64),
    ),
    (
        "leasegate_gateway_oldest_waiting_seconds",
        "Age of its oldest unsent point, at its last report.",
        |g, _| g.report.as_ref()?.oldest_waiting_secs.map(|s| s as f64),
    ),
    (
        "leasegate_gateway_runway_hours",
        "Hours until its spool is full at the rate points come, at its last report.",
        |g, _| g.report.as_ref()?.runway_hours,
    ),
    (
        "leasegate_gateway_points_in_per_second",
        "Points it took from MQTT per second, at its last report.",
        |g, _| g.report.as_ref().map(|r| r.points_in_per_sec),
    ),
    (
        "leasegate_gateway_points_out_per_second",
        "Points it wrote to InfluxDB per second, at its last report.",
        |g, _| g.report.as_ref().map(|r| r.points_out_per_sec),
    ),
    (
        "leasegate_gateway_clock_offset_seconds",
        "What to add to its clock to get the authority's, at its last report.",
        |g, _| g.report.as_ref()?.clock_offset_ms.map(|ms| ms / 1e3),
    ),
    (
        "leasegate_gateway_disk_free_bytes",
        "Free bytes on its spool's filesystem, at its last report.",
        |g, _| g.report.as_ref()?.disk_free_bytes.map(|b| b as f64),
    ),
    (
        "leasegate_gateway_dead_letters",
        "Points in its dead-letter file since its daemon started.",
        |g, _| g.report.as_ref().map(|r| r.dead_letters as f64),
    ),
];

fn help(page: &mut String, name: &str, text: &str) {
    let _ = writeln!(page, "# HELP {name} {text}\n# TYPE {name} gauge");
}

fn labels(g: &Gateway) -> String {
    format!(
        "name=\"{}\",identity=\"{}\"",
        escape(&g.name),
        escape(&g.identity_id)
    )
}

/// A label value as the exposition format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
