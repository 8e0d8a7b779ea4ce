//! Time a gateway can be trusted with, against real Mosquitto and InfluxDB
//! 1.x: points without a timestamp are stamped when their message arrived,
//! not when the gateway got round to storing it.

mod support;

use std::time::{Duration, Instant, UNIX_EPOCH};

use support::{Influx, Mosquitto, RawPublisher, start_static_daemon};

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
