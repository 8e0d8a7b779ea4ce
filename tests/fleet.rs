//! The operator's view of the fleet (#28): gateways' health reports in
//! their lease requests, checked and kept by a real authority, and the
//! states derived from them, seen through `fleet --json` and the
//! authority's `/metrics`, with real gateways, Mosquitto and InfluxDB 1.x.

use std::time::Duration;

use serde_json::Value;
use support::authority::{AuthorityServer, role, v1_backend};
use support::{
    ADMIN_PASSWORD, ADMIN_USER, Daemon, FakeTime, Influx, Mosquitto, faked_clock_argv, free_port,
    leased_config, leasegate_argv, publish_seq, scrape_metrics, wait_until,
};

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

/// A leased gateway named `name` (its MQTT client id) subscribed to
/// `sensors/<name>/#` with 4 s leases, run by `program`, `extra` appended
/// to its configuration; its ticket (for `service`) dropped in once it is
/// ready.
fn gateway_process(
    broker: &Mosquitto,
    authority: &AuthorityServer,
    program: Vec<std::ffi::OsString>,
    name: &str,
    service: &str,
    extra: &str,
) -> Daemon {
    let config = leased_config(broker, name, "4s").replace(
        "topic = \"sensors/#\"",
        &format!("topic = \"sensors/{name}/#\""),
    ) + extra;
    let daemon = Daemon::start_program(program, tempfile::tempdir().unwrap(), &config, "info");
    assert!(
        daemon.wait_for_log("ready:", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    let tickets = daemon.dir.path().join("tickets");
    std::fs::create_dir_all(&tickets).unwrap();
    let tmp = tickets.join("gw.part");
    std::fs::write(&tmp, authority.ticket(service, &[])).unwrap();
    std::fs::rename(&tmp, tickets.join("gw.ticket")).unwrap();
    daemon
}

/// Each gateway's state on the authority's `/metrics`, by name.
fn states_on_metrics(port: u16) -> std::collections::HashMap<String, String> {
    scrape_metrics(port)
        .lines()
        .filter_map(|l| l.strip_prefix("leasegate_gateway_state{name=\""))
        .filter_map(|l| {
            let (name, rest) = l.split_once('"')?;
            let state = rest.split("state=\"").nth(1)?.split('"').next()?;
            Some((name.to_owned(), state.to_owned()))
        })
        .collect()
}

/// Waits until `fleet --json` shows `name` in `state`; the gateway's row.
fn wait_for_state(authority: &AuthorityServer, name: &str, state: &str, within: Duration) -> Value {
    let mut last = Value::Null;
    let seen = wait_until(within, || {
        last = gateway(&authority.fleet(), name).clone();
        last["state"] == state
    });
    assert!(seen, "{name} never showed {state}: {last:#}");
    last
}

#[test]
fn the_fleet_shows_each_gateway_late_missing_refused_clock_and_backlog() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut far = Influx::start();
    far.query("CREATE DATABASE sensors2");
    let metrics_port = free_port();
    let reader = role("reader", "iot-reader", "main", "database", "sensors")
        .replace("access = [\"write\"]", "access = [\"read\"]");
    let head = format!(
        "[fleet]\nbacklog_after = \"5s\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n{}{reader}{}",
        v1_backend("far", &far.url(), ADMIN_USER, ADMIN_PASSWORD),
        role("far", "iot-far", "far", "database", "sensors2"),
    );
    let authority = authority_for(&influx, &head);
    let plain = leasegate_argv;
    let steady = gateway_process(&broker, &authority, plain(), "gw-steady", "iot-sensor", "");
    let _refused = gateway_process(&broker, &authority, plain(), "gw-refused", "iot-reader", "");
    let behind = faked_clock_argv(FakeTime::By("-1h"));
    let _clock = gateway_process(&broker, &authority, behind, "gw-clock", "iot-sensor", "");
    let small = "[spool]\nmax_bytes = \"1MiB\"\n";
    let backlog = gateway_process(&broker, &authority, plain(), "gw-backlog", "iot-far", small);

    // Every gateway with its report, within a renewal of its first lease.
    let names = ["gw-steady", "gw-refused", "gw-clock", "gw-backlog"];
    let all_reported = wait_until(Duration::from_secs(20), || {
        let fleet = authority.fleet();
        names.iter().all(|n| {
            fleet
                .iter()
                .any(|g| g["name"] == *n && g["report"]["version"].is_string())
        })
    });
    assert!(all_reported, "{:#?}", authority.fleet());
    let fleet = authority.fleet();
    let report = &gateway(&fleet, "gw-steady")["report"];
    assert_eq!(report["mqtt_connected"], true, "{report}");
    assert!(report["disk_free_bytes"].as_u64() > Some(0), "{report}");
    assert_eq!(gateway(&fleet, "gw-steady")["state"], "ok", "{fleet:#?}");

    // Refused: its role may only read.
    publish_seq(&broker, "gw-refused/x", 0, 3);
    let g = wait_for_state(&authority, "gw-refused", "refused", Duration::from_secs(20));
    assert_eq!(g["report"]["last_write"]["status"], 403, "{g}");

    // Clock: an hour behind, known from its first lease, told at the next.
    let g = wait_for_state(&authority, "gw-clock", "clock", Duration::from_secs(20));
    let offset = g["report"]["clock_offset_ms"].as_f64().unwrap_or(0.0);
    assert!((offset - 3_600_000.0).abs() < 5_000.0, "{g}");

    // Backlog: its InfluxDB gone, points wait and the spool fills.
    far.stop();
    publish_seq(&broker, "gw-backlog/x", 0, 200);
    let g = wait_for_state(&authority, "gw-backlog", "backlog", Duration::from_secs(40));
    let r = &g["report"];
    assert!(r["points_waiting"].as_u64() >= Some(200), "{g}");
    assert!(r["runway_hours"].as_f64().is_some_and(|h| h > 0.0), "{g}");
    assert!(
        g["why"][0]
            .as_str()
            .unwrap_or_default()
            .contains("oldest unsent point"),
        "{g}"
    );

    // Late, then missing: stopped, it calls no more.
    steady.freeze();
    let mut seen: Vec<String> = Vec::new();
    let settled = wait_until(Duration::from_secs(20), || {
        let state = states_on_metrics(metrics_port)
            .remove("gw-steady")
            .unwrap_or_default();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        state == "missing"
    });
    assert!(settled, "{seen:?}");
    eprintln!("gw-steady went {seen:?}");
    let late = seen.iter().position(|s| s == "late");
    assert!(late.is_some(), "never late before missing: {seen:?}");

    // The same through fleet --json, --state and /metrics.
    let fleet = authority.fleet();
    for (name, state) in [
        ("gw-steady", "missing"),
        ("gw-refused", "refused"),
        ("gw-clock", "clock"),
        ("gw-backlog", "backlog"),
    ] {
        assert_eq!(gateway(&fleet, name)["state"], state, "{fleet:#?}");
    }
    let only = authority.cli_ok(&["fleet", "--json", "--state", "backlog"]);
    let only: Vec<Value> = serde_json::from_str(&only).unwrap();
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0]["name"], "gw-backlog");
    let table = authority.cli_ok(&["fleet"]);
    assert!(
        table.contains("gw-clock") && table.contains("behind"),
        "{table}"
    );
    let page = scrape_metrics(metrics_port);
    for state in ["missing", "refused", "clock", "backlog"] {
        let line = format!("leasegate_fleet_gateways{{state=\"{state}\"}} 1");
        assert!(page.lines().any(|l| l == line), "no {line} in\n{page}");
    }
    assert!(
        page.contains("leasegate_gateway_runway_hours{name=\"gw-backlog\""),
        "{page}"
    );
    steady.thaw();
    drop(backlog);
}

#[test]
fn admins_are_added_with_the_command_line_and_kept_only_as_argon2id_hashes() {
    let influx = Influx::start();
    let authority = authority_for(&influx, "");
    let password = b"a long enough passphrase\n";
    let out = authority.cli_with_stdin(&["admin", "add", "ops"], password);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "admin ops added");
    // Taken once; a second add names the way to change it.
    let again = authority.cli_with_stdin(&["admin", "add", "ops"], password);
    assert_eq!(again.status.code(), Some(2), "{}", again.stderr);
    assert!(
        again.stderr.contains("admin \"ops\" exists; --replace"),
        "{}",
        again.stderr
    );
    let short = authority.cli_with_stdin(&["admin", "add", "ops2"], b"too short\n");
    assert_eq!(short.status.code(), Some(2));
    assert!(
        short.stderr.contains("12 characters at least"),
        "{}",
        short.stderr
    );
    let bad = authority.cli_with_stdin(&["admin", "add", "o p s"], password);
    assert_eq!(bad.status.code(), Some(2));
    let replaced = authority.cli_with_stdin(
        &["admin", "add", "ops", "--replace"],
        b"another long passphrase\n",
    );
    assert!(replaced.status.success(), "{}", replaced.stderr);

    let list: Vec<Value> =
        serde_json::from_str(&authority.cli_ok(&["admin", "list", "--json"])).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "ops");
    let dump = authority.store_dump();
    assert!(
        dump.contains("$argon2id$v=19$"),
        "no Argon2id hash in the store"
    );
    for secret in ["a long enough passphrase", "another long passphrase"] {
        assert!(!dump.contains(secret), "a password is in the store");
        assert!(
            !authority.log().contains(secret),
            "a password reached the log"
        );
    }
    let log = authority.log();
    assert!(
        log.contains("audit: admin added ops: by the command line"),
        "{log}"
    );
    assert!(log.contains("audit: admin password set ops"), "{log}");
    assert_eq!(
        authority.cli_ok(&["admin", "remove", "ops"]).trim(),
        "admin ops removed"
    );
    assert_eq!(
        authority.cli(&["admin", "remove", "ops"]).status.code(),
        Some(2)
    );
    assert!(authority.cli_ok(&["admin", "list", "--json"]).trim() == "[]");
}
