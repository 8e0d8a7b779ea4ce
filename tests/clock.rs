//! Time a gateway can be trusted with, against real Mosquitto and InfluxDB
//! 1.x (and a real authority): points without a timestamp are stamped when
//! their message arrived, not when the gateway got round to storing it,
//! and a gateway whose clock is wrong (libfaketime) learns by how much from
//! the authority.

mod support;

use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;
use support::authority::{AuthorityServer, role, v1_backend};
use support::{
    ADMIN_PASSWORD, ADMIN_USER, Daemon, FakeTime, Influx, Mosquitto, RawPublisher,
    faked_clock_argv, leased_config, start_static_daemon, wait_until,
};

/// Held by each test here: the receipt-time test measures milliseconds,
/// and another test starting its servers beside it on two cores would
/// measure the machine instead.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Nanoseconds since the epoch.
fn ns(t: std::time::SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// The `q` quantile of `xs` (sorted in place).
fn quantile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[((xs.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn receipt_stamps_are_the_arrival_times_and_keep_the_spacing() {
    let _alone = alone();
    let broker = Mosquitto::start();
    let influx = Influx::start();
    // Default settings: the reader pauses between light reads and groups
    // are held up to commit_delay, and neither may move a stamp.
    let mut daemon = start_static_daemon(&broker, &influx, "gw-stamps", "");
    let mut publisher = RawPublisher::connect(broker.port, "sensor-50hz");
    let n = 150;
    let every = Duration::from_millis(20);
    let start = Instant::now() + Duration::from_millis(50);
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let due = start + every * i as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let at = publisher.publish("sensors/vib", format!("vib seq={i}i").as_bytes());
        sent.push(ns(at));
    }
    publisher.finish();
    influx.assert_arrives("vib", n as u64, Duration::from_secs(30), &daemon);
    let mut stamped = influx.stamped("sensors", "vib", "seq");
    stamped.sort_by_key(|(_, seq)| *seq);
    assert_eq!(stamped.len(), n);
    let mut errors: Vec<f64> = stamped
        .iter()
        .map(|(t, seq)| (t - sent[*seq as usize]).abs() as f64 / 1e6)
        .collect();
    let gaps: Vec<f64> = stamped
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) as f64 / 1e6)
        .collect();
    let sent_gaps: Vec<f64> = sent
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .collect();
    let within = gaps.iter().filter(|g| (5.0..=35.0).contains(*g)).count();
    let p99 = quantile(&mut errors, 0.99);
    let report = format!(
        "p99 |stamp - publish| {p99:.2} ms (max {:.2}); {within}/{} gaps within 20 +- 15 ms; \
         stamp gaps {:?}...; publish gaps {:?}...",
        errors[errors.len() - 1],
        gaps.len(),
        &gaps[..10],
        &sent_gaps[..10],
    );
    eprintln!("{report}");
    assert!(p99 <= 25.0, "{report}\n{}", daemon.log());
    assert!(
        within * 100 >= gaps.len() * 95,
        "{report}\n{}",
        daemon.log()
    );
    daemon.stop_cleanly();
}

/// `leasegate status` as a shell on the gateway runs it: under the same
/// clock as the daemon (`program`).
fn status_by(program: &[std::ffi::OsString], daemon: &Daemon, json: bool) -> String {
    support::status_of(program, daemon, json)
}

fn json_status(program: &[std::ffi::OsString], daemon: &Daemon) -> Value {
    serde_json::from_str(&status_by(program, daemon, true)).unwrap_or(Value::Null)
}

/// A real authority for `influx`, and a leased gateway run by `program`
/// (its clock faked) that enrolls with a ticket dropped into its ticket
/// directory; it publishes its status over MQTT every second and serves
/// `/metrics` on `metrics_port`.
fn leased_gateway(
    broker: &Mosquitto,
    influx: &Influx,
    program: Vec<std::ffi::OsString>,
    client_id: &str,
    metrics_port: u16,
) -> (AuthorityServer, Daemon) {
    influx.query("CREATE DATABASE sensors");
    let authority = AuthorityServer::start(&format!(
        "{}{}",
        v1_backend("main", &influx.url(), ADMIN_USER, ADMIN_PASSWORD),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = leased_config(broker, client_id, "1h").replacen(
        "[mqtt]\n",
        "[mqtt]\npublish_status = true\nstatus_interval = \"1s\"\n",
        1,
    ) + &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n");
    let daemon = Daemon::start_program(program, dir, &config, "info");
    assert!(
        daemon.wait_for_log("ready:", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    let tickets = daemon.dir.path().join("tickets");
    std::fs::create_dir_all(&tickets).unwrap();
    let tmp = tickets.join("gw.part");
    std::fs::write(&tmp, authority.ticket("iot-sensor", &[])).unwrap();
    std::fs::rename(&tmp, tickets.join("gw.ticket")).unwrap();
    (authority, daemon)
}

#[test]
fn a_gateway_three_days_behind_learns_its_offset_from_the_authority() {
    let _alone = alone();
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let behind = faked_clock_argv(FakeTime::By("-3d"));
    let metrics_port = support::free_port();
    let (_authority, mut daemon) =
        leased_gateway(&broker, &influx, behind.clone(), "gw-behind", metrics_port);
    let measured = wait_until(Duration::from_secs(20), || {
        json_status(&behind, &daemon)["enrollment"]["clock_offset_ms"].is_number()
    });
    assert!(
        measured,
        "{}\n{}",
        status_by(&behind, &daemon, true),
        daemon.log()
    );
    let s = json_status(&behind, &daemon);
    let offset = s["enrollment"]["clock_offset_ms"].as_f64().unwrap();
    let error = s["enrollment"]["clock_offset_error_ms"].as_f64().unwrap();
    let three_days = 3.0 * 86_400_000.0;
    assert!(
        (offset - three_days).abs() <= 1_000.0 && error <= 1_000.0,
        "offset {offset} ms, error {error} ms"
    );
    assert!(s["clock_synchronized"].is_boolean(), "{s}");
    let text = status_by(&behind, &daemon, false);
    assert!(text.contains("running (pid"), "{text}");
    assert!(text.contains("3days behind the authority's"), "{text}");
    assert!(
        daemon.log().contains("this gateway's clock is 3days"),
        "{}",
        daemon.log()
    );
    // /metrics and the MQTT status say the same.
    let metrics = support::scrape_metrics(metrics_port);
    let seconds = support::metric_value(&metrics, "leasegate_clock_offset_seconds");
    assert!(
        seconds.is_some_and(|s| (s - 259_200.0).abs() <= 1.0),
        "{metrics}"
    );
    assert!(
        support::metric_value(&metrics, "leasegate_clock_offset_error_seconds")
            .is_some_and(|e| e <= 1.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("leasegate_clock_synchronized "),
        "{metrics}"
    );
    let topic = "leasegate/gw-behind/status";
    let has_offset = |seen: &[String]| {
        seen.iter().any(|m| {
            serde_json::from_str::<Value>(m)
                .is_ok_and(|r| r["enrollment"]["clock_offset_ms"].is_number())
        })
    };
    let seen = support::watch_topic(broker.port, topic, Duration::from_secs(10), has_offset);
    assert!(has_offset(&seen), "{seen:?}");
    daemon.stop_cleanly();
}
