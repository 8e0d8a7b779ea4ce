//! Time a gateway can be trusted with, against real Mosquitto and InfluxDB
//! 1.x (and a real authority): points without a timestamp are stamped when
//! their message arrived, not when the gateway got round to storing it,
//! and a gateway whose clock is wrong (libfaketime) learns by how much from
//! the authority, and sends those stamps corrected: points kept before its
//! first lease, across a kill -9, across a restart the authority does not
//! see, and on both sides of a 2-hour step of its clock.

use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;
use support::authority::{AuthorityServer, role, v1_backend};
use support::{
    ADMIN_PASSWORD, ADMIN_USER, Daemon, FakeTime, Influx, Mosquitto, RawPublisher,
    faked_clock_argv, leased_config, wait_until,
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
    // are held up to commit_delay, and neither may move a stamp. Leased, as
    // a gateway runs: the lease tells the time, so nothing waits for a
    // kernel that NTP does not keep (as on CI's machine).
    let authority = authority_for(&influx);
    let config = leased_config(&broker, "gw-stamps", "1h")
        .replace("[batch]\nflush_interval = \"200ms\"\n", "");
    let mut daemon = Daemon::start(&config);
    drop_ticket(&daemon, &authority);
    let program = support::leasegate_argv();
    assert!(
        wait_until(Duration::from_secs(20), || {
            json_status(&program, &daemon)["enrollment"]["lease_id"].is_string()
        }),
        "{}",
        daemon.log()
    );
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
    let authority = authority_for(influx);
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
    drop_ticket(&daemon, &authority);
    (authority, daemon)
}

/// The authority for `influx`, with the `iot-sensor` role.
fn authority_for(influx: &Influx) -> AuthorityServer {
    influx.query("CREATE DATABASE sensors");
    AuthorityServer::start(&format!(
        "{}{}",
        v1_backend("main", &influx.url(), ADMIN_USER, ADMIN_PASSWORD),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    ))
}

/// Drops a ticket of `authority` into the daemon's ticket directory, as a
/// field tech does.
fn drop_ticket(daemon: &Daemon, authority: &AuthorityServer) {
    let tickets = daemon.dir.path().join("tickets");
    std::fs::create_dir_all(&tickets).unwrap();
    let tmp = tickets.join("gw.part");
    std::fs::write(&tmp, authority.ticket("iot-sensor", &[])).unwrap();
    std::fs::rename(&tmp, tickets.join("gw.ticket")).unwrap();
}

/// Publishes `n` timestamp-less points `measurement seq=<from + i>` 50 ms
/// apart, and `own` points carrying their true time; returns the true
/// publish time of each timestamp-less one, by seq.
fn publish_unstamped(
    broker: &Mosquitto,
    measurement: &str,
    from: i64,
    n: i64,
    own: i64,
) -> Vec<(i64, i64)> {
    let mut publisher = RawPublisher::connect(broker.port, &format!("pub-{measurement}-{from}"));
    let mut sent = Vec::new();
    for i in from..from + n {
        let at = publisher.publish(
            &format!("sensors/{measurement}"),
            format!("{measurement} seq={i}i").as_bytes(),
        );
        sent.push((i, ns(at)));
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in from..from + own {
        let line = format!("own_{measurement} seq={i}i {}", OWN_TIME + i);
        publisher.publish("sensors/own", line.as_bytes());
    }
    publisher.finish();
    sent
}

/// The sensors' own times: far from now, and never moved by the gateway.
const OWN_TIME: i64 = 1_600_000_000_000_000_000;

/// Asserts every published point is in InfluxDB within `within` of its
/// true publish time, and the sensor-stamped ones exactly as sent.
fn assert_true_times(
    influx: &Influx,
    measurement: &str,
    sent: &[(i64, i64)],
    own: i64,
    within: Duration,
    daemon: &Daemon,
) {
    influx.assert_arrives(
        measurement,
        sent.len() as u64,
        Duration::from_secs(60),
        daemon,
    );
    let stamped = influx.stamped("sensors", measurement, "seq");
    let by_seq: std::collections::HashMap<i64, i64> =
        stamped.iter().map(|&(t, s)| (s, t)).collect();
    let worst = sent
        .iter()
        .map(|(seq, at)| (by_seq[seq] - at).abs())
        .max()
        .unwrap_or(0);
    eprintln!(
        "{measurement}: worst |stamp - publish time| {:.1} ms",
        worst as f64 / 1e6
    );
    assert!(
        worst <= within.as_nanos() as i64,
        "{measurement}: a stamp is {:.3} s from its publish time\n{stamped:?}\n{sent:?}\n{}",
        worst as f64 / 1e9,
        daemon.log()
    );
    let measurement = format!("own_{measurement}");
    let wanted = own as u64;
    let arrived = wait_until(Duration::from_secs(30), || {
        influx.count("sensors", &measurement, "seq") == wanted
    });
    assert!(arrived, "{}", daemon.log());
    for (t, seq) in influx.stamped("sensors", &measurement, "seq") {
        assert_eq!(t, OWN_TIME + seq, "a sensor's own time was changed");
    }
}

/// Waits until the daemon's status says it stored `n` points.
fn stored(program: &[std::ffi::OsString], daemon: &Daemon, n: u64) -> bool {
    wait_until(Duration::from_secs(20), || {
        json_status(program, daemon)["points_in"].as_u64() >= Some(n)
    })
}

/// Waits until the broker has `n` acks from the gateway `client_id`.
fn acked(broker: &Mosquitto, client_id: &str, n: usize) -> bool {
    wait_until(Duration::from_secs(20), || {
        broker.pubacks_from(client_id) >= n
    })
}

#[test]
fn a_gateway_three_days_behind_sends_every_receipt_stamp_corrected() {
    let _alone = alone();
    let broker = Mosquitto::start_logging_packets();
    let mut influx = Influx::start();
    let mut authority = authority_for(&influx);
    let behind = faked_clock_argv(FakeTime::By("-3d"));
    let config = leased_config(&broker, "gw-3d", "1h");
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_program(behind.clone(), dir, &config, "info");
    assert!(
        daemon.wait_for_log("ready:", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );

    // Before the first lease (no ticket yet): kept, and a kill -9 while
    // they wait loses none.
    let mut early = publish_unstamped(&broker, "early", 0, 10, 3);
    assert!(stored(&behind, &daemon, 13), "{}", daemon.log());
    // Killed once the broker has its acks: a message killed between its
    // commit and its ack comes again, and is stamped again on arrival.
    assert!(acked(&broker, "gw-3d", 13), "{}", daemon.log());
    daemon.kill9();
    daemon.restart();
    assert!(
        daemon.wait_for_log("ready:", 2, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    early.extend(publish_unstamped(&broker, "early", 10, 10, 0));
    drop_ticket(&daemon, &authority);
    assert_true_times(&influx, "early", &early, 3, Duration::from_secs(1), &daemon);
    let s = json_status(&behind, &daemon);
    assert_eq!(s["points_time_corrected"].as_u64(), Some(20), "{s}");
    assert_eq!(s["points_time_unverified"].as_u64(), Some(0), "{s}");
    assert!(
        daemon
            .log()
            .contains("points stamped on receipt are corrected by +3days"),
        "{}",
        daemon.log()
    );

    // Restarted while InfluxDB and the authority are away: the stored
    // lease writes once InfluxDB is back, and this boot's time comes from
    // what the gateway kept, not from a new lease.
    influx.stop();
    let before = json_status(&behind, &daemon)["points_in"].as_u64().unwrap();
    let late = publish_unstamped(&broker, "late", 0, 10, 2);
    assert!(stored(&behind, &daemon, before + 12), "{}", daemon.log());
    assert!(acked(&broker, "gw-3d", 13 + 10 + 12), "{}", daemon.log());
    authority.kill();
    daemon.kill9();
    daemon.restart();
    assert!(
        daemon.wait_for_log("ready:", 3, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    influx.restart();
    assert_true_times(&influx, "late", &late, 2, Duration::from_secs(1), &daemon);
    let log = daemon.log();
    assert!(
        log.contains("this boot's true time is known from clock.json"),
        "{log}"
    );
    daemon.stop_cleanly();
}

#[test]
fn a_two_hour_step_of_the_clock_neither_churns_leases_nor_moves_stamps() {
    let _alone = alone();
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let authority = authority_for(&influx);
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let program = faked_clock_argv(FakeTime::File(&offset));
    let ttl = 6.0;
    let config = leased_config(&broker, "gw-step", "6s");
    let mut daemon = Daemon::start_program(program.clone(), dir, &config, "info");
    assert!(
        daemon.wait_for_log("ready:", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    drop_ticket(&daemon, &authority);
    assert!(
        wait_until(Duration::from_secs(20), || {
            json_status(&program, &daemon)["enrollment"]["lease_id"].is_string()
        }),
        "{}",
        daemon.log()
    );
    let leased = Instant::now();
    let renewals = || {
        json_status(&program, &daemon)["enrollment"]["renewals"]
            .as_u64()
            .unwrap_or(0)
    };
    let first = renewals();
    // Points before, between and after two steps: forward 2 h (as NTP
    // setting a clock that was behind), then back (as an admin's date -s).
    let mut sent = publish_unstamped(&broker, "step", 0, 80, 4);
    std::fs::write(&offset, "+2h\n").unwrap();
    sent.extend(publish_unstamped(&broker, "step", 80, 120, 0));
    std::fs::write(&offset, "+0\n").unwrap();
    sent.extend(publish_unstamped(&broker, "step", 200, 80, 0));
    let elapsed = leased.elapsed().as_secs_f64();
    let renewed = renewals() - first;
    // Renewals at 53-60 % of the lifetime on the monotonic clock; a
    // second of slack each for a slow round trip on a busy machine.
    let most = (elapsed / (0.53 * ttl)).ceil() as u64 + 1;
    let least = (elapsed / (0.60 * ttl + 1.0)).floor() as u64;
    eprintln!("{renewed} renewals in {elapsed:.1} s (expected {least}..={most})");
    assert!(
        (least.saturating_sub(1)..=most).contains(&renewed),
        "{renewed} renewals in {elapsed:.1} s\n{}",
        daemon.log()
    );
    assert_true_times(&influx, "step", &sent, 4, Duration::from_secs(1), &daemon);
    let s = json_status(&program, &daemon);
    assert!(s["points_time_corrected"].as_u64() >= Some(1), "{s}");
    daemon.stop_cleanly();
    let log = daemon.log();
    assert!(
        !log.contains("answered 401") && !log.contains("answered 403"),
        "a write was refused:\n{log}"
    );
    assert!(!log.contains("expired"), "a lease expired:\n{log}");
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

#[test]
fn static_credentials_wait_for_a_synchronised_kernel_at_most_max_wait() {
    let _alone = alone();
    let broker = Mosquitto::start();
    let influx = Influx::start();
    // The daemon reads the same kernel state: this machine's decides which
    // way the test goes (CI's kernel is kept by no NTP daemon).
    let synchronized = leasegate::clock::kernel().is_some_and(|k| k.synchronized);
    let started = Instant::now();
    let mut daemon = support::start_static_daemon(
        &broker,
        &influx,
        "gw-static-clock",
        "[clock]\nmax_wait = \"4s\"\n",
    );
    let sent = publish_unstamped(&broker, "unsynced", 0, 10, 2);
    assert_true_times(
        &influx,
        "unsynced",
        &sent,
        2,
        Duration::from_secs(1),
        &daemon,
    );
    let took = started.elapsed();
    let s = json_status(&support::leasegate_argv(), &daemon);
    eprintln!("kernel synchronised: {synchronized}; all arrived after {took:?}");
    let log = daemon.log();
    if synchronized {
        assert_eq!(s["points_time_unverified"].as_u64(), Some(0), "{s}");
        assert_eq!(s["points_time_corrected"].as_u64(), Some(0), "{s}");
    } else {
        // Held for max_wait, then sent as stamped and counted; a busy
        // machine only makes it later.
        assert!(took >= Duration::from_secs(4), "{took:?}\n{log}");
        assert_eq!(s["points_time_unverified"].as_u64(), Some(10), "{s}");
        assert!(
            log.contains("no trusted time after clock.max_wait (4s)"),
            "{log}"
        );
    }
    daemon.stop_cleanly();
}
