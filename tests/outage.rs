//! Outages against real servers: InfluxDB stopped for a minute, and a
//! small spool through a two-minute outage where the only loss allowed is
//! the overflow policy's, counted exactly.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{
    Daemon, Influx, Mosquitto, final_counter, publish_all, start_static_daemon, wait_until,
};

const BASE_TS: u64 = 1_700_000_000_000_000_000;

/// One point a message, with a field of noise so that the spool's packs
/// cannot shrink an outage below its budget.
fn points(measurement: &str, seqs: std::ops::Range<u64>) -> Vec<(String, Vec<u8>)> {
    seqs.map(|seq| {
        let noise = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ seq;
        let line = format!(
            "{measurement} seq={seq}i,noise=\"{noise:016x}\" {}",
            BASE_TS + seq
        );
        ("sensors/outage".to_owned(), line.into_bytes())
    })
    .collect()
}

/// Publishes `chunks` chunks of `per_chunk` points, one chunk every
/// `every`, starting at sequence number `first`.
fn publish_steadily(
    port: u16,
    measurement: &'static str,
    first: u64,
    chunks: u64,
    per_chunk: u64,
    every: Duration,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        for c in 0..chunks {
            let from = first + c * per_chunk;
            publish_all(
                port,
                &format!("pub-{measurement}"),
                points(measurement, from..from + per_chunk),
                Duration::from_secs(60),
            );
            let next = every * (c as u32 + 1);
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    })
}

/// Bytes waiting in the spool for InfluxDB, as `leasegate status --json`
/// says (segment files are preallocated and outlive what they held, so
/// their sizes do not say it).
fn spool_bytes(daemon: &Daemon) -> u64 {
    let report = support::status_of(&support::leasegate_argv(), daemon, true);
    serde_json::from_str::<serde_json::Value>(&report)
        .ok()
        .and_then(|r| r["spool_bytes"].as_u64())
        .unwrap_or_else(|| panic!("no spool_bytes in the status: {report:?}"))
}

#[test]
fn influxdb_stopped_for_a_minute_mid_stream_loses_nothing() {
    let broker = Mosquitto::start();
    let mut influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-outage-60", "");
    publish_all(
        broker.port,
        "pub-before",
        points("minute", 0..1000),
        Duration::from_secs(60),
    );
    assert!(wait_until(Duration::from_secs(30), || influx
        .count("sensors", "minute", "seq")
        == 1000));

    influx.stop();
    let publisher = publish_steadily(broker.port, "minute", 1000, 20, 500, Duration::from_secs(3));
    let mut grew_to = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        grew_to = grew_to.max(spool_bytes(&daemon));
        std::thread::sleep(Duration::from_millis(500));
    }
    publisher.join().expect("publisher");
    influx.restart();

    assert!(
        grew_to > 200_000,
        "the spool should hold the outage's points, reached {grew_to} bytes"
    );
    let all = wait_until(Duration::from_secs(180), || {
        influx.count("sensors", "minute", "seq") == 11_000
    });
    assert!(
        all,
        "{} of 11000 arrived\n{}",
        influx.count("sensors", "minute", "seq"),
        daemon.log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || spool_bytes(&daemon) == 0),
        "spool did not drain: {} bytes left",
        spool_bytes(&daemon)
    );
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn a_small_spool_through_a_two_minute_outage_drops_exactly_what_it_counts() {
    let broker = Mosquitto::start();
    let mut influx = Influx::start();
    // Packed, a minute of these 1,000 points/s still takes over 480 KB
    // (16 hex digits of noise a point pack to 8 bytes at best): a quarter
    // of a MiB cannot hold it.
    let spool = "[spool]\nmax_bytes = \"256KiB\"\noverflow = \"drop_oldest\"\n";
    let mut daemon = start_static_daemon(&broker, &influx, "gw-outage-120", spool);

    influx.stop();
    const PUBLISHED: u64 = 60 * 1000;
    let publisher = publish_steadily(broker.port, "budget", 0, 60, 1000, Duration::from_secs(2));
    publisher.join().expect("publisher");
    assert!(
        spool_bytes(&daemon) <= 256 << 10,
        "spool over its budget: {}",
        spool_bytes(&daemon)
    );
    influx.restart();

    // Drained: nothing waits, and the count stable.
    assert!(
        wait_until(Duration::from_secs(180), || spool_bytes(&daemon) == 0),
        "spool did not drain: {} bytes left\n{}",
        spool_bytes(&daemon),
        daemon.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let log = daemon.log();
    let dropped = final_counter(&log, "dropped by the spool");
    let stored = influx.count("sensors", "budget", "seq");
    assert!(
        dropped > 0,
        "a 256 KiB spool cannot hold {PUBLISHED} points\n{log}"
    );
    assert_eq!(final_counter(&log, "left in the spool"), 0);
    assert_eq!(
        PUBLISHED - stored,
        dropped,
        "missing points must equal the drop counter\n{log}"
    );
    assert!(log.contains("dropped the oldest"), "drops must be logged");
}
