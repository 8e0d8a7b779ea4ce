//! The spool on a card, as a gateway's SD card sees it: `state_dir` on a
//! real ext4 filesystem on a loop device (tests/support/loopfs.rs), real
//! Mosquitto and InfluxDB 1.x. A card that turns read-only, a card that is
//! full, and power cuts taken as copies of the device while the daemon is
//! frozen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::loopfs::{Io, LoopFs};
use support::paced::Paced;
use support::{
    Daemon, Influx, Mosquitto, free_port, metric_value, scrape_metrics, start_static_daemon_on,
    status_of, wait_until,
};

const BASE_TS: u64 = 1_700_000_000_000_000_000;

/// Point `i` of `measurement`, a sensor reading of realistic shape with
/// its own timestamp (1 ms apart), so that a point written twice is
/// still one point.
fn point(measurement: &str, i: u64) -> (String, Vec<u8>) {
    (
        format!("sensors/{measurement}"),
        format!(
            "{measurement},site=north,room=r{} seq={i}i,temp=21.{} {}",
            i % 7,
            i % 10,
            BASE_TS + i * 1_000_000
        )
        .into_bytes(),
    )
}

/// The ids of the spool's segment files on the card.
fn segment_ids(card: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(card.join("spool"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// Starts a stopped daemon again and waits until it subscribed; returns
/// what it logged in this start.
fn restart(daemon: &mut Daemon) -> String {
    let start = daemon.log().len();
    daemon.restart();
    assert!(
        wait_until(Duration::from_secs(20), || daemon.log()[start..]
            .contains("subscribed to")),
        "did not start again\n{}",
        daemon.log()
    );
    daemon.log()[start..].to_owned()
}

fn files_named(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

fn acks(metrics_port: u16) -> f64 {
    metric_value(
        &scrape_metrics(metrics_port),
        "leasegate_ack_delay_seconds_count",
    )
    .expect("the ack count on the metrics page")
}

/// An SD card turns read-only after errors: the kernel remounts it so at
/// once (tests/support/loopfs.rs raises an ext4 error on a filesystem
/// mounted `errors=remount-ro`). While it is, nothing may be acked (the
/// broker keeps the messages), `leasegate status` and `/metrics` must say
/// why, the daemon stays up, and its retries must not use up segment
/// files; once the card is back (checked and mounted again, as after a
/// reboot), every point the broker accepted arrives.
#[test]
fn a_card_gone_read_only_stops_acks_says_why_and_loses_nothing() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut card = LoopFs::new(64 << 20, Io::Buffered);
    let metrics = free_port();
    let mut daemon = start_static_daemon_on(
        &card.path(),
        &broker,
        &influx,
        "gw-ro",
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    let publisher = Paced::start(broker.port, "pub-ro", 100, 0, |i| point("ro", i));
    assert!(
        wait_until(Duration::from_secs(30), || influx
            .count("sensors", "ro", "seq")
            >= 300),
        "the stream did not start\n{}",
        daemon.log()
    );
    let before = segment_ids(&card.path());
    card.fail_read_only();
    let program = support::leasegate_argv();
    let mut report = String::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            report = status_of(&program, &daemon, true);
            report.contains("Read-only file system")
        }),
        "status does not say why nothing is acked:\n{report}\n{}",
        daemon.log()
    );
    let human = status_of(&program, &daemon, false);
    assert!(
        human.contains("not acking") && human.contains("Read-only file system"),
        "{human}"
    );
    let page = scrape_metrics(metrics);
    assert_eq!(
        metric_value(&page, "leasegate_spool_failing"),
        Some(1.0),
        "{page}"
    );
    // No acks while the card is read-only (one group may have been
    // committed as the error came).
    let acked = acks(metrics);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(acks(metrics), acked, "acked while read-only");
    assert!(daemon.is_running());
    assert_eq!(
        segment_ids(&card.path()),
        before,
        "retries touched the segments"
    );

    // The card comes back, as after a reboot: the daemon stops (within its
    // shutdown bound, though its disk fails), the card is checked.
    daemon.stop_cleanly();
    card.check_and_remount();
    let log = restart(&mut daemon);
    assert!(!log.contains("damage"), "{log}");
    // The segment taking appends before goes on: no new file.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(segment_ids(&card.path()), before, "{}", daemon.log());
    let accepted = publisher.stop();
    assert!(accepted >= 1_000, "only {accepted} accepted");
    assert!(
        wait_until(Duration::from_secs(90), || {
            influx.count("sensors", "ro", "seq") >= accepted
        }),
        "{} of {accepted} broker-accepted points in InfluxDB\n{}",
        influx.count("sensors", "ro", "seq"),
        daemon.log()
    );
    assert!(!status_of(&program, &daemon, true).contains("Read-only"));
    assert_eq!(
        metric_value(&scrape_metrics(metrics), "leasegate_spool_failing"),
        Some(0.0)
    );
    daemon.stop_cleanly();
}

/// A full card is not damage: the writes that failed on it must leave no
/// empty or half-written segment behind that the next start would report
/// as damaged and move aside; once space is freed, everything arrives.
#[test]
fn a_full_card_is_not_damage() {
    let broker = Mosquitto::start();
    let mut influx = Influx::start();
    let card = LoopFs::new(16 << 20, Io::Buffered);
    // Without the free-space floor, to run into the full disk itself.
    let mut daemon = start_static_daemon_on(
        &card.path(),
        &broker,
        &influx,
        "gw-full",
        "[spool]\nmin_free = 0\n",
    );
    // InfluxDB away: the points stay in the spool and fill the card.
    influx.stop();
    let filler = card.fill_leaving(256 << 10);
    const N: u64 = 20_000;
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        support::publish_all(
            port,
            "pub-full",
            (0..N).map(|i| point("full", i)).collect(),
            Duration::from_secs(120),
        )
    });
    assert!(
        daemon.wait_for_log("No space left on device", 1, Duration::from_secs(60)),
        "the card did not fill\n{}",
        daemon.log()
    );
    // Several retries on the full card.
    std::thread::sleep(Duration::from_secs(3));
    publisher.join().unwrap();
    daemon.stop_cleanly();
    // Started again on the still full card, then once space is back.
    for round in ["full", "freed"] {
        let log = restart(&mut daemon);
        assert!(!log.contains("damage"), "{round}: {log}");
        let spool = card.path().join("spool");
        assert_eq!(
            files_named(&spool, ".corrupt"),
            Vec::<PathBuf>::new(),
            "{round}: {log}"
        );
        if round == "full" {
            daemon.stop_cleanly();
            std::fs::remove_file(&filler).unwrap();
        }
    }
    influx.restart();
    influx.assert_arrives("full", N, Duration::from_secs(120), &daemon);
    daemon.stop_cleanly();
}

/// The spool never takes the card's last `spool.min_free` (5 % by
/// default): with another file filling a 64 MiB card to just above it, an
/// InfluxDB outage ends in the overflow policy (`drop_oldest`, counted),
/// not in a full disk; once the file is deleted, the spool has its room
/// back.
#[test]
fn the_spool_leaves_min_free_on_the_card() {
    let broker = Mosquitto::start();
    let mut influx = Influx::start();
    let card = LoopFs::new(64 << 20, Io::Buffered);
    let metrics = free_port();
    let mut daemon = start_static_daemon_on(
        &card.path(),
        &broker,
        &influx,
        "gw-floor",
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    influx.stop();
    let min_free = card.size() * 5 / 100;
    let filler = card.fill_leaving(min_free + (1 << 20));
    let metric = |name: &str| metric_value(&scrape_metrics(metrics), name).unwrap_or(-1.0);
    const N: u64 = 40_000;
    let publish = |from: u64| {
        support::publish_all(
            broker.port,
            &format!("pub-floor-{from}"),
            (from..from + N).map(|i| point("floor", i)).collect(),
            Duration::from_secs(120),
        )
    };
    publish(0);
    // Every message acked: stored, or stored and then dropped as oldest.
    assert!(
        wait_until(Duration::from_secs(60), || acks(metrics) >= N as f64),
        "{} of {N} acked\n{}",
        acks(metrics),
        daemon.log()
    );
    let dropped = metric("leasegate_points_dropped_total");
    assert!(dropped > 0.0, "nothing dropped\n{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("to leave spool.min_free free"), "{log}");
    assert!(!log.contains("No space left"), "{log}");
    // Small files (status, clock) may take a little of it.
    assert!(
        card.available() + (256 << 10) >= min_free,
        "{} bytes left, min_free {min_free}",
        card.available()
    );

    std::fs::remove_file(&filler).unwrap();
    publish(N);
    assert!(
        wait_until(Duration::from_secs(60), || acks(metrics) >= 2.0 * N as f64),
        "{} of {} acked\n{}",
        acks(metrics),
        2 * N,
        daemon.log()
    );
    assert_eq!(
        metric("leasegate_points_dropped_total"),
        dropped,
        "dropped with room on the card"
    );
    influx.restart();
    let want = 2 * N - dropped as u64;
    influx.assert_arrives("floor", want, Duration::from_secs(120), &daemon);
    daemon.stop_cleanly();
    let log = restart(&mut daemon);
    assert!(!log.contains("damage"), "{log}");
    daemon.stop_cleanly();
}

/// A card already within `spool.min_free` when the first points come, the
/// spool empty, so that there is nothing old to drop: nothing can be
/// stored, so nothing may be acked, and the log, `leasegate status` and
/// `/metrics` must say so and why (the floor, not a failing card), not
/// wait in silence; once room comes back, every point arrives.
#[test]
fn a_card_within_min_free_before_any_point_says_why_and_loses_nothing() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let card = LoopFs::new(64 << 20, Io::Buffered);
    let metrics = free_port();
    let mut daemon = start_static_daemon_on(
        &card.path(),
        &broker,
        &influx,
        "gw-floor-first",
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    let min_free = card.size() * 5 / 100;
    let filler = card.fill_leaving(min_free / 2);
    const N: u64 = 200;
    support::publish_all(
        broker.port,
        "pub-floor-first",
        (0..N).map(|i| point("floor_first", i)).collect(),
        Duration::from_secs(60),
    );
    let program = support::leasegate_argv();
    let mut report = String::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            report = status_of(&program, &daemon, false);
            report.contains("spool.min_free")
        }),
        "status does not say why nothing is acked:\n{report}\n{}",
        daemon.log()
    );
    assert!(report.contains("not acking"), "{report}");
    let log = daemon.log();
    assert!(
        log.contains("spool.min_free") && log.contains("not acking"),
        "{log}"
    );
    assert_eq!(acks(metrics), 0.0, "acked with no room to store");
    assert_eq!(
        metric_value(&scrape_metrics(metrics), "leasegate_spool_failing"),
        Some(1.0)
    );

    std::fs::remove_file(&filler).unwrap();
    influx.assert_arrives("floor_first", N, Duration::from_secs(60), &daemon);
    assert!(
        wait_until(Duration::from_secs(10), || !status_of(
            &program, &daemon, false
        )
        .contains("not acking")),
        "{}",
        status_of(&program, &daemon, false)
    );
    assert_eq!(
        metric_value(&scrape_metrics(metrics), "leasegate_spool_failing"),
        Some(0.0)
    );
    daemon.stop_cleanly();
}

/// Power cuts, chained: at 1,000 points/s the daemon is frozen, its card
/// copied as a cut would leave it (the loop device writes through to its
/// image file, so the copy holds exactly what reached the card), the
/// daemon killed, and a new one started on the copy, checked by e2fsck as
/// at boot, with the same client id. Five times; every point the broker
/// accepted must reach InfluxDB, and no start may report damage.
#[test]
fn chained_power_cuts_lose_no_broker_accepted_point() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut card = LoopFs::new(64 << 20, Io::Direct);
    let mut daemon = start_static_daemon_on(&card.path(), &broker, &influx, "gw-cut", "");
    let publisher = Paced::start(broker.port, "pub-cut", 1_000, 0, |i| point("cut", i));
    let started = Instant::now();
    for cut in 1..=5u32 {
        // Cut at uneven moments, so that some fall inside a commit.
        std::thread::sleep(Duration::from_millis(1_500 + 337 * u64::from(cut)));
        daemon.freeze();
        let restored = LoopFs::restored(card.image(), Io::Direct);
        daemon.kill9();
        let log = daemon.log();
        assert!(!log.contains("damage"), "cut {cut}: {log}");
        drop(daemon);
        card = restored;
        daemon = start_static_daemon_on(&card.path(), &broker, &influx, "gw-cut", "");
    }
    let accepted = publisher.stop();
    assert!(
        accepted as f64 >= 500.0 * started.elapsed().as_secs_f64(),
        "only {accepted} accepted in {:?}",
        started.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(120), || {
            influx.count("sensors", "cut", "seq") >= accepted
        }),
        "{} of {accepted} broker-accepted points in InfluxDB\n{}",
        influx.count("sensors", "cut", "seq"),
        daemon.log()
    );
    let log = daemon.log();
    assert!(!log.contains("damage"), "{log}");
    daemon.stop_cleanly();
}

/// An outage that brings more points than the spool's budget holds as
/// they came: the backlog's sealed segments are packed on the card, so
/// that nothing is dropped by the overflow policy; status and `/metrics`
/// say how long the spool holds out and how old its oldest point is; and
/// once InfluxDB is back every point the broker accepted arrives.
#[test]
fn an_outage_beyond_the_raw_budget_is_packed_and_nothing_is_dropped() {
    let broker = Mosquitto::start();
    let mut influx = Influx::start();
    let card = LoopFs::new(64 << 20, Io::Buffered);
    let metrics = free_port();
    // 2 MiB holds about 28,000 of these points as they come (75 bytes
    // each with the record's header); the outage brings 45,000.
    let mut daemon = start_static_daemon_on(
        &card.path(),
        &broker,
        &influx,
        "gw-pack",
        &format!(
            "[spool]\nmax_bytes = \"2MiB\"\noverflow = \"drop_oldest\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
        ),
    );
    influx.stop();
    const N: u64 = 45_000;
    let publisher = Paced::start(broker.port, "pub-pack", 2_500, 0, |i| point("pack", i));
    assert!(
        wait_until(Duration::from_secs(90), || publisher.sent() >= N),
        "sent only {}",
        publisher.sent()
    );
    let accepted = publisher.stop();
    let program = support::leasegate_argv();
    let mut report = serde_json::Value::Null;
    // The gateway acks after its commit: wait until it has them all.
    let all_in = wait_until(Duration::from_secs(60), || {
        report = serde_json::from_str(&status_of(&program, &daemon, true)).unwrap_or_default();
        report["points_in"].as_u64() >= Some(accepted)
    });
    assert!(all_in, "{report}\n{}", daemon.log());
    assert_eq!(report["points_dropped"], 0, "{report}\n{}", daemon.log());
    assert!(
        report["spool_packed_segments"].as_u64() >= Some(2),
        "{report}"
    );
    assert!(files_named(&card.path().join("spool"), ".segz").len() >= 2);
    assert!(report["spool_runway_secs"].as_u64().is_some(), "{report}");
    assert!(
        report["oldest_point_age_secs"].as_u64().is_some(),
        "{report}"
    );
    let human = status_of(&program, &daemon, false);
    assert!(
        human.contains("segments packed") && human.contains("without InfluxDB"),
        "{human}"
    );
    let page = scrape_metrics(metrics);
    for name in [
        "leasegate_spool_runway_seconds",
        "leasegate_spool_oldest_point_age_seconds",
        "leasegate_spool_packed_segments",
    ] {
        assert!(metric_value(&page, name).is_some(), "{name}\n{page}");
    }
    assert!(metric_value(&page, "leasegate_spool_packed_segments") >= Some(2.0));

    influx.restart();
    let arrived = wait_until(Duration::from_secs(120), || {
        influx.count("sensors", "pack", "seq") >= accepted
    });
    assert!(
        arrived,
        "{} of {accepted} arrived\n{}",
        influx.count("sensors", "pack", "seq"),
        daemon.log()
    );
    assert!(!daemon.log().contains("damage"), "{}", daemon.log());
    // Read and accepted: the packed files are gone.
    assert!(
        wait_until(Duration::from_secs(10), || files_named(
            &card.path().join("spool"),
            ".segz"
        )
        .is_empty()),
        "{:?}",
        files_named(&card.path().join("spool"), ".segz")
    );
    daemon.stop_cleanly();
}
