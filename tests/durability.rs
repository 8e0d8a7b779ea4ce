//! Durability against real servers: nothing acknowledged to the broker is
//! lost when the daemon is killed, and a damaged spool costs only the
//! damaged records.

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Influx, Mosquitto, publish_all, start_static_daemon, wait_until};

const BASE_TS: u64 = 1_700_000_000_000_000_000;

fn messages(publisher: u64, n: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let seq = publisher * n + i;
            let line = format!("dur,pub=p{publisher} seq={seq}i {}", BASE_TS + seq);
            (format!("sensors/p{publisher}"), line.into_bytes())
        })
        .collect()
}

#[test]
fn sigkill_twice_mid_stream_loses_nothing() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-kill", "");
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 25_000;
    let port = broker.port;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            std::thread::spawn(move || {
                publish_all(
                    port,
                    &format!("pub-kill-{p}"),
                    messages(p, EACH),
                    Duration::from_secs(300),
                )
            })
        })
        .collect();

    for (round, after) in [(1, 20_000u64), (2, 55_000)] {
        let reached = wait_until(Duration::from_secs(120), || {
            influx.count("sensors", "dur", "seq") >= after
        });
        assert!(
            reached,
            "round {round}: stuck at {}\n{}",
            influx.count("sensors", "dur", "seq"),
            daemon.log()
        );
        daemon.kill9();
        daemon.restart();
    }
    for p in publishers {
        p.join().expect("publisher");
    }
    let total = PUBLISHERS * EACH;
    let all = wait_until(Duration::from_secs(180), || {
        influx.count("sensors", "dur", "seq") == total
    });
    assert!(
        all,
        "{} of {total} distinct points in InfluxDB\n{}",
        influx.count("sensors", "dur", "seq"),
        daemon.log()
    );
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}

/// At gateway rates a group of messages waits for its commit (and its
/// acks with it, `spool.commit_delay`): a daemon killed then must have
/// acked none of the held messages, so the broker delivers them again.
#[test]
fn sigkill_while_groups_wait_for_their_commit_loses_nothing() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-group", "");
    const CHUNKS: u64 = 60;
    const EACH: u64 = 20;
    let port = broker.port;
    // About 200 messages a second in bursts of 20: a group gathers over
    // several bursts before its page is full.
    let publisher = std::thread::spawn(move || {
        for chunk in 0..CHUNKS {
            let batch = (0..EACH)
                .map(|i| {
                    let seq = chunk * EACH + i;
                    let line = format!("grp,pub=p seq={seq}i {}", BASE_TS + seq);
                    ("sensors/p".to_owned(), line.into_bytes())
                })
                .collect();
            publish_all(
                port,
                &format!("pub-group-{chunk}"),
                batch,
                Duration::from_secs(60),
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(1500));
        assert!(daemon.is_running(), "round {round}\n{}", daemon.log());
        daemon.kill9();
        daemon.restart();
    }
    publisher.join().expect("publisher");
    let total = CHUNKS * EACH;
    let all = wait_until(Duration::from_secs(60), || {
        influx.count("sensors", "grp", "seq") == total
    });
    assert!(
        all,
        "{} of {total} distinct points in InfluxDB\n{}",
        influx.count("sensors", "grp", "seq"),
        daemon.log()
    );
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}

fn segments(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(state.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_damaged_spool_costs_only_the_damaged_records() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    // Small segments so the points spread over several files.
    let mut daemon = start_static_daemon(
        &broker,
        &influx,
        "gw-damage",
        "[spool]\nmax_bytes = \"256KiB\"\n",
    );
    // Hold everything in the spool: InfluxDB refuses the writer.
    influx.query("DROP USER \"writer\"");
    const N: u64 = 3000;
    publish_all(
        broker.port,
        "pub-damage",
        messages(0, N),
        Duration::from_secs(60),
    );
    assert!(
        daemon.wait_for_log("InfluxDB answered 401", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    assert!(
        daemon
            .terminate(Duration::from_secs(15))
            .is_some_and(|s| s.success())
    );

    let state = daemon.dir.path().join("state");
    let files = segments(&state);
    assert!(files.len() >= 3, "expected several segments, got {files:?}");
    // Power loss: the newest file ends mid-record.
    let newest = files.last().unwrap();
    let len = std::fs::metadata(newest).unwrap().len();
    let torn = record_points_at(&std::fs::read(newest).unwrap(), len as usize - 7);
    std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    // Bit rot: a byte in the middle of the oldest file flips, in a record
    // of points (the middle may fall in a page's padding, which holds
    // none: the flip would cost nothing, and prove nothing).
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let (at, mut flipped) = points_record_from(&bytes, bytes.len() / 2);
    bytes[at] ^= 0x41;
    std::fs::write(&files[0], &bytes).unwrap();
    // And in the last record of the next (a preallocated one is followed
    // by unused space: the loss must still be said).
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let (at, last) = last_points_record(&bytes);
    bytes[at] ^= 0x41;
    std::fs::write(&files[1], &bytes).unwrap();
    flipped += last;

    influx.query("CREATE USER \"writer\" WITH PASSWORD 'writer-pw'");
    influx.query("GRANT WRITE ON \"sensors\" TO \"writer\"");
    daemon.restart();
    // The points of the two damaged records are lost, no more (the torn
    // one may be padding).
    let lost = torn + flipped;
    assert!(flipped >= 2 && lost < N / 2, "{torn} + {flipped}");
    let arrived = wait_until(Duration::from_secs(60), || {
        influx.count("sensors", "dur", "seq") == N - lost
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = daemon.log();
    assert!(
        arrived,
        "{} of {} arrived\n{log}",
        influx.count("sensors", "dur", "seq"),
        N - lost
    );
    assert_eq!(influx.count("sensors", "dur", "seq"), N - lost);
    // The torn tail was never acked under fsync = batch: said, not damage.
    assert!(log.contains("was cut short"), "{log}");
    // Both flips said, each naming its file.
    for file in &files[..2] {
        let said = format!("spool damage: {}: corrupt data", file.display());
        assert!(log.contains(&said), "no {said:?} in\n{log}");
    }
    assert!(daemon.is_running());
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}

/// The points held by the record of a spool segment that covers byte
/// `offset`, walking the format of src/agent/spool.rs: an 8-byte file
/// magic, then records of `"LG" | len u32 | points u32 | crc32 | payload`.
fn record_points_at(segment: &[u8], offset: usize) -> u64 {
    const HEADER: usize = 14;
    let mut at = 8;
    while at + HEADER <= segment.len() {
        assert_eq!(&segment[at..at + 2], b"LG", "record at {at}");
        let len = u32::from_le_bytes(segment[at + 2..at + 6].try_into().unwrap()) as usize;
        let points = u32::from_le_bytes(segment[at + 6..at + 10].try_into().unwrap());
        if offset < at + HEADER + len {
            return u64::from(points);
        }
        at += HEADER + len;
    }
    panic!("no record covers byte {offset}");
}

/// The first record at or after `offset` that holds points: a byte in
/// the middle of its payload, and its points.
fn points_record_from(segment: &[u8], offset: usize) -> (usize, u64) {
    const HEADER: usize = 14;
    let mut at = 8;
    while at + HEADER <= segment.len() {
        let len = u32::from_le_bytes(segment[at + 2..at + 6].try_into().unwrap()) as usize;
        let points = u32::from_le_bytes(segment[at + 6..at + 10].try_into().unwrap());
        if points > 0 && at + HEADER + len > offset {
            return (at + HEADER + len / 2, u64::from(points));
        }
        at += HEADER + len;
    }
    panic!("no record of points at or after byte {offset}");
}

/// The last record of a segment that holds points: a byte in the middle
/// of its payload, and its points. Stops at the zeros after the records.
fn last_points_record(segment: &[u8]) -> (usize, u64) {
    const HEADER: usize = 14;
    let mut at = 8;
    let mut last = None;
    while at + HEADER <= segment.len() && &segment[at..at + 2] == b"LG" {
        let len = u32::from_le_bytes(segment[at + 2..at + 6].try_into().unwrap()) as usize;
        let points = u32::from_le_bytes(segment[at + 6..at + 10].try_into().unwrap());
        if points > 0 {
            last = Some((at + HEADER + len / 2, u64::from(points)));
        }
        at += HEADER + len;
    }
    last.expect("a record of points")
}

#[test]
fn a_broker_restart_mid_stream_loses_no_acked_point() {
    let mut broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-broker", "");
    const FIRST: u64 = 60_000;
    // All acked by the broker; the daemon is still taking them when the
    // broker goes down, so some are only in the broker's persistence file.
    publish_all(
        broker.port,
        "pub-broker-1",
        messages(0, FIRST),
        Duration::from_secs(120),
    );
    broker.stop();
    let at_stop = influx.count("sensors", "dur", "seq");
    assert!(
        at_stop < FIRST,
        "not mid-stream: all {at_stop} points were through before the broker stopped"
    );
    broker.restart();
    assert!(
        daemon.wait_for_log("connected to MQTT broker", 2, Duration::from_secs(60)),
        "daemon did not reconnect\n{}",
        daemon.log()
    );
    let second: Vec<_> = messages(1, FIRST);
    publish_all(
        broker.port,
        "pub-broker-2",
        second,
        Duration::from_secs(120),
    );
    let all = wait_until(Duration::from_secs(120), || {
        influx.count("sensors", "dur", "seq") == 2 * FIRST
    });
    assert!(
        all,
        "{} of {} arrived\n{}",
        influx.count("sensors", "dur", "seq"),
        2 * FIRST,
        daemon.log()
    );
    assert!(daemon.is_running());
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}
