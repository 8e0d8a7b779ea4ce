//! Every InfluxDB write answer handled as specified, against the in-test
//! InfluxDB 2.x endpoint (tests/support/v2.rs): 413 splits, 429 and 503
//! wait (Retry-After honoured), 401 and 404 hold the points, and nothing
//! is lost or written twice.

mod support;

use std::time::Duration;

use support::v2::FakeV2;
use support::{Daemon, Mosquitto, publish_all, wait_until};

fn points(from: u64, to: u64) -> Vec<(String, Vec<u8>)> {
    (from..to)
        .map(|i| {
            let line = format!(
                "answers,sensor=s{} seq={i}i {}",
                i % 5,
                1_700_000_000_000_000_000u64 + i
            );
            ("sensors/a".to_owned(), line.into_bytes())
        })
        .collect()
}

#[test]
fn a_v2_server_gets_every_point_through_413_429_503_401_and_404() {
    let broker = Mosquitto::start();
    let influx = FakeV2::start("tok-v2", "my-org", "my-bucket", 2000);
    influx.with(|s| s.scripted.extend([(429, Some(1)), (503, None)]));
    let config = format!(
        r#"state_dir = "{{dir}}/state"
[mqtt]
url = "{}"
client_id = "gw-v2"
[[mqtt.subscribe]]
topic = "sensors/#"
[influxdb]
api = "v2"
url = "{}"
org = "my-org"
bucket = "my-bucket"
token = "tok-v2"
gzip = false
[batch]
flush_interval = "200ms"
"#,
        broker.url(),
        influx.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_in(dir, &config);
    assert!(
        daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );

    // 300 points of about 55 bytes need 413 splits to fit 2000-byte bodies.
    publish_all(
        broker.port,
        "pub-v2",
        points(0, 300),
        Duration::from_secs(30),
    );
    let arrived = |n: usize| {
        wait_until(Duration::from_secs(60), || {
            influx.with(|s| s.lines.len()) >= n
        })
    };
    assert!(
        arrived(300),
        "{} of 300\n{}",
        influx.with(|s| s.lines.len()),
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        log.contains("InfluxDB answered 429") && log.contains("retrying in 1s"),
        "{log}"
    );
    assert!(log.contains("InfluxDB answered 503"), "{log}");
    assert!(
        log.contains("too large (413); writing it in halves"),
        "{log}"
    );

    // A dead token: points are held, not dropped, until it works again.
    influx.with(|s| s.token = "rotated".into());
    publish_all(
        broker.port,
        "pub-v2",
        points(300, 320),
        Duration::from_secs(30),
    );
    assert!(
        daemon.wait_for_log("InfluxDB answered 401", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    influx.with(|s| s.token = "tok-v2".into());
    assert!(arrived(320), "{}", daemon.log());

    // A missing bucket: held, retried slowly, said clearly.
    influx.with(|s| s.bucket = "renamed".into());
    publish_all(
        broker.port,
        "pub-v2",
        points(320, 330),
        Duration::from_secs(30),
    );
    assert!(
        daemon.wait_for_log(
            "the database or bucket does not exist",
            1,
            Duration::from_secs(20)
        ),
        "{}",
        daemon.log()
    );
    influx.with(|s| s.bucket = "my-bucket".into());
    assert!(
        wait_until(Duration::from_secs(60), || influx.with(|s| s.lines.len())
            >= 330),
        "{}",
        daemon.log()
    );

    // Exactly once each, in order per series.
    let lines = influx.with(|s| s.lines.clone());
    let mut seqs: Vec<u64> = lines
        .iter()
        .map(|l| {
            l.split("seq=")
                .nth(1)
                .unwrap()
                .split('i')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    for sensor in 0..5 {
        let series: Vec<u64> = seqs.iter().copied().filter(|s| s % 5 == sensor).collect();
        assert!(
            series.windows(2).all(|w| w[0] < w[1]),
            "series s{sensor} out of order"
        );
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..330).collect::<Vec<_>>());
    assert!(influx.with(|s| s.answers.contains(&413)));
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}
