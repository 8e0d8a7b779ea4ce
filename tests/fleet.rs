//! The operator's view of the fleet (#28): gateways' health reports in
//! their lease requests, checked and kept by a real authority, and the
//! states derived from them, seen through `fleet --json` and the
//! authority's `/metrics`, with real gateways, Mosquitto and InfluxDB 1.x.

use std::time::Duration;

use serde_json::Value;
use support::authority::{AuthorityServer, role, v1_backend};
use support::{ADMIN_PASSWORD, ADMIN_USER, Influx};

/// An authority on `influx` whose `sensor` role writes to `sensors`.
fn authority_for(influx: &Influx, head: &str) -> AuthorityServer {
    influx.query("CREATE DATABASE sensors");
    AuthorityServer::start(&format!(
        "{head}{}{}",
        v1_backend("main", &influx.url(), ADMIN_USER, ADMIN_PASSWORD),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    ))
}

/// A report as a gateway sends it, as JSON.
fn good_report() -> Value {
    serde_json::json!({
        "version": "0.1.0", "target": "x86_64-linux", "uptime_secs": 60,
        "points_in_per_sec": 10.0, "points_out_per_sec": 10.0,
        "spool_bytes": 4096, "points_waiting": 3, "oldest_waiting_secs": 0,
        "runway_hours": 900.0, "dead_letters": 0,
        "last_write": {"outcome": "ok", "status": 204, "ago_secs": 1},
        "clock_synchronized": true, "clock_offset_ms": 3.5,
        "disk_free_bytes": 1000000000u64, "mqtt_connected": true, "spool_error": null
    })
}

fn lease_call(ttl: u64, health: &str) -> Vec<u8> {
    format!(r#"{{"ttl_secs": {ttl}, "health": {health}}}"#).into_bytes()
}

fn gateway<'a>(fleet: &'a [Value], name: &str) -> &'a Value {
    fleet
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {fleet:?}"))
}

#[test]
fn a_bad_report_is_refused_by_name_and_audited_and_the_lease_still_granted() {
    let influx = Influx::start();
    let authority = authority_for(&influx, "");
    let ticket = authority.ticket("iot-sensor", &["--usage-count", "8"]);

    let mut negative = good_report();
    negative["points_waiting"] = Value::from(-5);
    let mut unknown = good_report();
    unknown["password"] = Value::from("hunter2");
    let ten_mb = format!(r#"{{"spool_error": "{}"}}"#, "x".repeat(10 << 20));
    let mut not_utf8 = br#"{"version": ""#.to_vec();
    not_utf8.extend_from_slice(&[0xc3, 0x28, 0xff]);
    not_utf8.extend_from_slice(br#""}"#);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "negative",
            lease_call(60, &negative.to_string()),
            "health.points_waiting: -5 is negative",
        ),
        (
            "unknown",
            lease_call(60, &unknown.to_string()),
            "unknown field \"password\"",
        ),
        (
            "oversized",
            lease_call(60, &ten_mb),
            "over the 4096 allowed",
        ),
        (
            "not-utf8",
            [&br#"{"ttl_secs": 60, "health": "#[..], &not_utf8, b"}"].concat(),
            "not valid JSON",
        ),
        (
            "not-an-object",
            lease_call(60, "[1, 2]"),
            "not a JSON object",
        ),
        ("good", lease_call(60, &good_report().to_string()), ""),
    ];
    for (name, body, _) in &cases {
        let (_, credential) = authority.enroll_ok(&ticket, name);
        let (status, answer) = authority.post_raw("/v1/leases", &credential, body);
        assert_eq!(status, 201, "{name}: {answer}");
        assert_eq!(answer["ttl_secs"], 60, "{name}: the request's ttl was lost");
        assert!(answer["secret"].is_string(), "{name}: {answer}");
    }

    let fleet = authority.fleet();
    for (name, _, wanted) in &cases {
        let g = gateway(&fleet, name);
        if wanted.is_empty() {
            assert_eq!(g["report_refused"], Value::Null, "{g}");
            assert_eq!(g["report"]["points_waiting"], 3, "{g}");
            assert_eq!(g["state"], "ok", "{g}");
        } else {
            let why = g["report_refused"].as_str().unwrap_or_default();
            assert!(
                why.contains(wanted),
                "{name}: {why:?} does not say {wanted:?}"
            );
            assert_eq!(g["report"], Value::Null, "{g}");
        }
    }
    let log = authority.log();
    for (name, _, wanted) in &cases {
        if !wanted.is_empty() {
            let audited = log.lines().any(|l| {
                l.contains("audit: health report refused") && l.contains(&format!(" {name}: "))
            });
            assert!(audited, "{name} not audited:\n{log}");
        }
    }
    assert!(!log.contains("hunter2"), "a report's value reached the log");
    assert!(!authority.store_dump().contains("hunter2"));
}
