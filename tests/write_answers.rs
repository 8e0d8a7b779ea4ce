//! Every InfluxDB write answer handled as specified: 1.x against the real
//! server, 2.x and 3.x against the in-test endpoints of
//! tests/support/fake_influx.rs. 413 splits, 429 and 503 wait (Retry-After
//! honoured), 401, 403 and 404 hold the points, lines refused for their
//! content (400, 422) go to the dead-letter file while the rest is written,
//! and nothing else is lost.

use std::time::Duration;

use support::fake_influx::{FakeInflux, Flavor};
use support::{
    Daemon, Influx, Mosquitto, gateway_head, publish_all, start_static_daemon, wait_until,
};

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
    let influx = FakeInflux::start(Flavor::V2, "tok-v2", "my-org", "my-bucket", 2000);
    influx.with(|s| s.scripted.extend([(429, Some(1)), (503, None)]));
    let config = format!(
        r#"{}[influxdb]
api = "v2"
url = "{}"
org = "my-org"
bucket = "my-bucket"
token = "tok-v2"
gzip = false
[batch]
flush_interval = "200ms"
"#,
        gateway_head(&broker, "gw-v2", "sensors/#"),
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
        log.contains("too large (413); writing the batch of"),
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

/// 200 points of 4 series; some are malformed to the server (`poison`) and
/// some conflict with the integer type of `seq` (a float). Returns the
/// messages and the seqs that must arrive.
type Messages = Vec<(String, Vec<u8>)>;

fn mixed_points(poison: &str) -> (Messages, Vec<u64>, Vec<u64>) {
    let mut messages = Vec::new();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for i in 1..=200u64 {
        let t = 1_700_000_000_000_000_000u64 + i;
        let line = if i % 37 == 10 {
            bad.push(i);
            format!("refusals,sensor=s{} seq={i}i,{poison}=1i {t}", i % 4)
        } else if i % 41 == 20 {
            bad.push(i);
            format!("refusals,sensor=s{} seq={i}.5 {t}", i % 4)
        } else {
            good.push(i);
            format!("refusals,sensor=s{} seq={i}i {t}", i % 4)
        };
        // Several lines per message, so refused lines sit amid good ones.
        if i % 5 == 1 {
            messages.push(("sensors/r".to_owned(), Vec::new()));
        }
        let body = &mut messages.last_mut().unwrap().1;
        body.extend_from_slice(line.as_bytes());
        body.push(b'\n');
    }
    (messages, good, bad)
}

fn seq_of(line: &str) -> u64 {
    let v = line.split("seq=").nth(1).unwrap();
    v[..v.find(|c: char| !c.is_ascii_digit()).unwrap()]
        .parse()
        .unwrap()
}

/// The seqs InfluxDB holds (a point written twice merges, as InfluxDB does),
/// checking that each series first arrived in order.
fn distinct_in_order(lines: &[String]) -> Vec<u64> {
    let mut seen = std::collections::BTreeSet::new();
    let mut last = std::collections::HashMap::new();
    for line in lines {
        let seq = seq_of(line);
        if seen.insert(seq) {
            let series = line.split(' ').next().unwrap().to_owned();
            let previous = last.insert(series.clone(), seq).unwrap_or(0);
            assert!(previous < seq, "{series}: {seq} after {previous}");
        }
    }
    seen.into_iter().collect()
}

/// The lines the daemon dead-lettered as refused by InfluxDB.
fn refused_seqs(daemon: &Daemon) -> Vec<u64> {
    let path = daemon.dir.path().join("state/dead-letter.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut seqs: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["source"] == "influxdb")
        .map(|r| {
            assert!(
                r["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("InfluxDB refused the line: "),
                "{r}"
            );
            seq_of(r["payload"].as_str().unwrap())
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

fn refusals_config(broker: &Mosquitto, influx_section: &str) -> String {
    format!(
        "{}{influx_section}\n[batch]\nflush_interval = \"300ms\"\n",
        gateway_head(broker, "gw-refusals", "sensors/#")
    )
}

/// Publishes the mixed points and checks that the good ones arrive, each
/// series in order, and exactly the refused ones are dead-lettered.
fn refusals_are_dead_lettered(
    broker: &Mosquitto,
    daemon: &mut Daemon,
    poison: &str,
    written: impl Fn() -> Vec<String>,
) {
    let (messages, good, bad) = mixed_points(poison);
    publish_all(
        broker.port,
        "pub-refusals",
        messages,
        Duration::from_secs(30),
    );
    assert!(
        wait_until(Duration::from_secs(60), || refused_seqs(daemon).len()
            >= bad.len()
            && distinct_in_order(&written()).len() >= good.len()),
        "refused {:?} of {bad:?}; {} of {} written\n{}",
        refused_seqs(daemon),
        distinct_in_order(&written()).len(),
        good.len(),
        daemon.log()
    );
    assert_eq!(distinct_in_order(&written()), good);
    assert_eq!(refused_seqs(daemon), bad);
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!("{} refused by InfluxDB", bad.len())),
        "{log}"
    );
    assert!(log.contains(", 0 left in the spool"), "{log}");
}

#[test]
fn a_v2_server_s_refused_lines_are_dead_lettered_and_the_rest_written() {
    let broker = Mosquitto::start();
    let influx = FakeInflux::start(Flavor::V2, "tok", "org", "bucket", 1 << 20);
    influx.with(|s| s.poison = Some("poison".into()));
    let config = refusals_config(
        &broker,
        &format!(
            "[influxdb]\napi = \"v2\"\nurl = \"{}\"\norg = \"org\"\nbucket = \"bucket\"\ntoken = \"tok\"\n",
            influx.url()
        ),
    );
    let mut daemon = Daemon::start(&config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
    refusals_are_dead_lettered(&broker, &mut daemon, "poison", || {
        influx.with(|s| s.lines.clone())
    });
    // Both kinds of refusal were met: a whole batch (400) and a partial
    // write without line numbers (422).
    let answers = influx.with(|s| s.answers.clone());
    assert!(
        answers.contains(&400) && answers.contains(&422),
        "{answers:?}"
    );
    let log = daemon.log();
    assert!(log.contains("without saying which"), "{log}");
}

#[test]
fn a_v3_server_gets_every_point_through_its_answers() {
    let broker = Mosquitto::start();
    let influx = FakeInflux::start(Flavor::V3, "apiv3_tok", "", "sensors", 2000);
    influx.with(|s| {
        s.poison = Some("poison".into());
        s.scripted.extend([(403, None), (503, Some(1))]);
    });
    // gzip stays on: the server checks the limit after decompressing too.
    let config = refusals_config(
        &broker,
        &format!(
            "[influxdb]\napi = \"v3\"\nurl = \"{}\"\ndatabase = \"sensors\"\ntoken = \"apiv3_tok\"\n",
            influx.url()
        ),
    );
    let mut daemon = Daemon::start(&config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));

    // A token that stops working (401, empty body): held, not dropped.
    influx.with(|s| s.token = "apiv3_rotated".into());
    publish_all(
        broker.port,
        "pub-v3",
        points(0, 20),
        Duration::from_secs(30),
    );
    assert!(
        daemon.wait_for_log(
            "InfluxDB answered 401: (empty body)",
            1,
            Duration::from_secs(20)
        ),
        "{}",
        daemon.log()
    );
    assert!(influx.with(|s| s.lines.is_empty()));
    influx.with(|s| s.token = "apiv3_tok".into());
    assert!(
        wait_until(Duration::from_secs(30), || influx.with(|s| s.lines.len())
            >= 20),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(log.contains("InfluxDB answered 403"), "{log}");
    assert!(
        log.contains("InfluxDB answered 503") && log.contains("retrying in 1s"),
        "{log}"
    );
    influx.with(|s| s.lines.clear());

    // Partial writes name their lines: those are dead-lettered, the rest
    // was written by the server and is not sent again.
    refusals_are_dead_lettered(&broker, &mut daemon, "poison", || {
        influx.with(|s| s.lines.clone())
    });
    let lines = influx.with(|s| s.lines.clone());
    assert_eq!(
        lines.len(),
        distinct_in_order(&lines).len(),
        "written twice"
    );
    assert!(influx.with(|s| s.answers.contains(&413)));
}

/// Forms InfluxDB 1.x takes and InfluxDB 3's parser refuses (trailing
/// blanks, floats without a digit on one side of the point) come from
/// real sensors: written in a form 3.x takes, never dead-lettered. The
/// in-test server refuses them as the real one does (it runs 3.x's parser).
#[test]
fn lines_only_influxdb_1_takes_are_written_to_a_v3_server() {
    let broker = Mosquitto::start();
    let influx = FakeInflux::start(Flavor::V3, "apiv3_tok", "", "sensors", 1 << 20);
    let config = refusals_config(
        &broker,
        &format!(
            "[influxdb]\napi = \"v3\"\nurl = \"{}\"\ndatabase = \"sensors\"\ntoken = \"apiv3_tok\"\n{}",
            influx.url(),
            support::NO_CLOCK_WAIT
        ),
    );
    let daemon = Daemon::start(&config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
    let sent = [
        "forms,s=a v=1 1700000000000000001 ",
        "forms,s=a v=1 ",
        "forms,s=b v=.5 1700000000000000002",
        "forms,s=c v=-.5 1700000000000000003",
        "forms,s=d v=2. 1700000000000000004",
        "forms,s=e v=1.e5 1700000000000000005",
    ];
    publish_all(
        broker.port,
        "pub-forms",
        sent.iter()
            .map(|l| ("sensors/forms".to_owned(), l.as_bytes().to_vec()))
            .collect(),
        Duration::from_secs(30),
    );
    assert!(
        wait_until(Duration::from_secs(30), || influx.with(|s| s.lines.len())
            >= sent.len()),
        "{:?}\n{}",
        influx.with(|s| s.lines.clone()),
        daemon.log()
    );
    let lines = influx.with(|s| s.lines.clone());
    for want in ["v=0.5 ", "v=-0.5 ", "v=2.0 ", "v=100000.0 "] {
        assert!(lines.iter().any(|l| l.contains(want)), "{want}: {lines:?}");
    }
    assert!(influx.with(|s| !s.answers.contains(&400)), "{lines:?}");
    let dead = std::fs::read_to_string(daemon.dir.path().join("state/dead-letter.jsonl"))
        .unwrap_or_default();
    assert!(dead.is_empty(), "{dead}");
}

#[test]
fn one_type_conflict_in_a_5000_line_v3_batch_costs_no_extra_request() {
    let broker = Mosquitto::start();
    let influx = FakeInflux::start(Flavor::V3, "apiv3_tok", "", "sensors", 16 << 20);
    // One batch of exactly 5,000 lines: the writer waits for a full batch.
    let config = format!(
        "{}[influxdb]\napi = \"v3\"\nurl = \"{}\"\ndatabase = \"sensors\"\ntoken = \"apiv3_tok\"\n[batch]\nmax_lines = 5000\nflush_interval = \"60s\"\n",
        gateway_head(&broker, "gw-v3-5k", "sensors/#"),
        influx.url()
    );
    let mut daemon = Daemon::start(&config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));

    // Line 2,500 sends `seq` as a string where the batch made it an
    // integer: the server refuses it and quotes its own rendering of it
    // ("big,sensor=s4 seq=te"), which is not the line as sent.
    let bad_seq = 2500u64;
    let line = |i: u64| {
        let t = 1_700_000_000_000_000_000u64 + i;
        if i == bad_seq {
            format!("big,sensor=s{} seq=\"text {i}\" {t}", i % 5)
        } else {
            format!("big,sensor=s{} seq={i}i {t}", i % 5)
        }
    };
    let messages: Vec<(String, Vec<u8>)> = (0..50u64)
        .map(|m| {
            let body: Vec<String> = (m * 100 + 1..=m * 100 + 100).map(line).collect();
            ("sensors/big".to_owned(), body.join("\n").into_bytes())
        })
        .collect();
    publish_all(broker.port, "pub-v3-5k", messages, Duration::from_secs(30));

    let dead = || {
        std::fs::read_to_string(daemon.dir.path().join("state/dead-letter.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["source"] == "influxdb")
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || influx.with(|s| s.lines.len())
            >= 4999
            && !dead().is_empty()),
        "{} written\n{}",
        influx.with(|s| s.lines.len()),
        daemon.log()
    );
    // Give a bisection, had there been one, time to show.
    std::thread::sleep(Duration::from_millis(500));
    let writes: Vec<String> = influx.with(|s| {
        s.requests
            .iter()
            .filter(|r| r.contains("/api/v3/write_lp"))
            .cloned()
            .collect()
    });
    assert_eq!(writes.len(), 1, "one request for the batch: {writes:?}");
    assert!(writes[0].ends_with(" 400"), "{writes:?}");

    let dead = dead();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["payload"], line(bad_seq));
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid column type for column 'seq'"),
        "{}",
        dead[0]
    );
    let mut written: Vec<u64> = influx.with(|s| s.lines.iter().map(|l| seq_of(l)).collect());
    written.sort_unstable();
    let expected: Vec<u64> = (1..=5000).filter(|&i| i != bad_seq).collect();
    assert_eq!(written, expected, "each of the other 4,999 exactly once");
    let log = daemon.log();
    assert!(!log.contains("without saying which"), "{log}");
    daemon.stop_cleanly();
}

/// The `refusals` points a real 1.x holds, as lines that carry their seq.
fn v1_refusals(influx: &Influx) -> Vec<String> {
    influx
        .values("sensors", "refusals", "seq")
        .iter()
        .map(|v| format!("refusals seq={}i", v.as_u64().unwrap()))
        .collect()
}

#[test]
fn a_v1_server_s_refused_lines_are_dead_lettered_and_the_rest_written() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-v1-refusals", "");
    // InfluxDB 1.x has no unsigned integers: `12u` is malformed to it.
    refusals_are_dead_lettered(&broker, &mut daemon, "unsigned=1u,x", || {
        v1_refusals(&influx)
    });
    // Into a new database 1.x refuses a batch that gives `seq` two types
    // whole, naming no line; it is read from the batch, not bisected.
    let log = daemon.log();
    assert!(
        log.contains("InfluxDB answered 400: field type conflict)"),
        "{log}"
    );
    assert!(!log.contains("without saying which"), "{log}");
}

#[test]
fn a_v1_server_s_named_type_conflicts_are_read_not_bisected() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-v1-conflicts", "");
    // A point of another measurement in the same shard period: the shard
    // exists, so 1.x writes the rest and names the first conflict.
    assert_eq!(
        influx.write("sensors", "seed v=1i 1700000000000000000").0,
        204
    );
    refusals_are_dead_lettered(&broker, &mut daemon, "unsigned=1u,x", || {
        v1_refusals(&influx)
    });
    let log = daemon.log();
    assert!(
        log.contains("partial write: field type conflict: input field \"seq\" on measurement \"refusals\" is type float, already exists as type integer"),
        "{log}"
    );
    assert!(!log.contains("without saying which"), "{log}");
}

#[test]
fn a_rotated_token_file_is_taken_up_without_a_restart() {
    let broker = Mosquitto::start();
    let influx = FakeInflux::start(Flavor::V2, "tok-first", "org", "bucket", 1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let token_file = support::write_secret(dir.path(), "influx.token", "tok-first\n");
    let config = refusals_config(
        &broker,
        &format!(
            "[influxdb]\napi = \"v2\"\nurl = \"{}\"\norg = \"org\"\nbucket = \"bucket\"\ntoken_file = \"{}\"\n",
            influx.url(),
            token_file.display()
        ),
    );
    let mut daemon = Daemon::start_in(dir, &config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
    publish_all(
        broker.port,
        "pub-rotate",
        points(0, 10),
        Duration::from_secs(30),
    );
    assert!(wait_until(Duration::from_secs(30), || influx
        .with(|s| s.lines.len())
        >= 10));

    // The operator rotates the token: InfluxDB refuses the old one, the
    // points are held, and the new file content is taken up at once.
    influx.with(|s| s.token = "tok-second".into());
    publish_all(
        broker.port,
        "pub-rotate",
        points(10, 20),
        Duration::from_secs(30),
    );
    assert!(
        daemon.wait_for_log(
            "it is read again before each retry",
            1,
            Duration::from_secs(20)
        ),
        "{}",
        daemon.log()
    );
    std::fs::write(&token_file, "tok-second\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || influx.with(|s| s.lines.len())
            >= 20),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(log.contains("took the new one from"), "{log}");
    assert!(
        !log.contains("tok-first") && !log.contains("tok-second"),
        "{log}"
    );
    daemon.stop_cleanly();
    assert_eq!(
        influx.with(|s| s.lines.len()),
        20,
        "a point written twice or lost"
    );
}

#[test]
fn points_beyond_a_short_retention_policy_are_dead_lettered_and_the_rest_written_once() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    // A 1 h retention policy: 1.x drops older points and writes the rest,
    // answering 400 "partial write: points beyond retention policy
    // dropped=N" without naming them.
    influx.query("CREATE DATABASE sensors WITH DURATION 1h");
    let metrics_port = support::free_port();
    let mut daemon = start_static_daemon(
        &broker,
        &influx,
        "gw-retention",
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let two_hours = 7_200_000_000_000u64;
    // One message, so one batch: the even seqs two hours old, the odd ones
    // fresh.
    let body: Vec<String> = (0..10u64)
        .map(|i| {
            let t = if i % 2 == 0 { now - two_hours } else { now } + i;
            format!("ret,k=a seq={i}i {t}")
        })
        .collect();
    publish_all(
        broker.port,
        "pub-retention",
        vec![("sensors/r".to_owned(), body.join("\n").into_bytes())],
        Duration::from_secs(10),
    );
    let dead = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(daemon.dir.path().join("state/dead-letter.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["source"] == "influxdb")
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || dead().len() >= 5),
        "{:?}\n{}",
        dead(),
        daemon.log()
    );
    let mut seqs: Vec<String> = dead()
        .iter()
        .map(|r| {
            let reason = r["reason"].as_str().unwrap();
            assert!(
                reason.contains("points beyond retention policy"),
                "{reason}"
            );
            r["payload"]
                .as_str()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .to_owned()
        })
        .collect();
    seqs.sort();
    assert_eq!(seqs, ["seq=0i", "seq=2i", "seq=4i", "seq=6i", "seq=8i"]);
    let mut fresh: Vec<u64> = influx
        .values("sensors", "ret", "seq")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    fresh.sort_unstable();
    assert_eq!(fresh, [1, 3, 5, 7, 9]);
    // Read from the answer, not bisected: one request, the fresh points
    // written once (by it) and counted once.
    let log = daemon.log();
    assert!(!log.contains("without saying which"), "{log}");
    assert!(!log.contains("in halves"), "{log}");
    let metrics = support::scrape_metrics(metrics_port);
    assert_eq!(
        support::metric_value(&metrics, "leasegate_points_written_total"),
        Some(5.0),
        "{metrics}"
    );
    assert_eq!(
        support::metric_value(&metrics, "leasegate_points_beyond_retention_total"),
        Some(5.0),
        "{metrics}"
    );
    let status: serde_json::Value = serde_json::from_str(&support::status_of(
        &support::leasegate_argv(),
        &daemon,
        true,
    ))
    .unwrap();
    assert_eq!(status["points_beyond_retention"], 5, "{status}");
    assert_eq!(status["points_written"], 5, "{status}");
    daemon.stop_cleanly();
}

/// InfluxDB 3 before 3.10 panics answering a refused line whose first 20
/// bytes end inside a character: the connection closes without an answer
/// while the server goes on answering other requests. Such a batch is
/// split down to the line, which is dead-lettered; everything else is
/// written, the points that come after it too (the in-test server does
/// what the real one does, docs/influxdb-api.md).
#[test]
fn a_batch_the_server_dies_on_is_split_and_its_line_dead_lettered() {
    let broker = Mosquitto::start();
    let influx = FakeInflux::start(Flavor::V3, "apiv3_tok", "", "sensors", 1 << 20);
    influx.with(|s| s.v3_cut_panics = true);
    let config = format!(
        "{}[influxdb]\napi = \"v3\"\nurl = \"{}\"\ndatabase = \"sensors\"\ntoken = \"apiv3_tok\"\n",
        gateway_head(&broker, "gw-v3-poison", "sensors/#"),
        influx.url()
    );
    let mut daemon = Daemon::start(&config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));

    let t0 = 1_700_000_000_000_000_000u64;
    let good = |i: u64| {
        (
            "sensors/p".to_owned(),
            format!("killer,s=s{} v={i}i {}", i % 3, t0 + i).into_bytes(),
        )
    };
    // `v` is an integer by then: the server refuses the line and renders
    // it `killer,t=aaaaaaaaaaé v=s ...`, whose byte 20 is inside the `é`.
    let bad = "killer,t=aaaaaaaaaa\u{e9} v=\"s\" 1700000000000000100";
    let mut first: Vec<_> = (0..100).map(good).collect();
    first.push(("sensors/p".to_owned(), bad.as_bytes().to_vec()));
    first.extend((101..201).map(good));
    publish_all(broker.port, "pub-poison-1", first, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(8));
    publish_all(
        broker.port,
        "pub-poison-2",
        (201..301).map(good).collect(),
        Duration::from_secs(30),
    );
    let last_published = std::time::Instant::now();
    let written = || {
        influx.with(|s| {
            s.lines
                .iter()
                .filter(|l| l.starts_with("killer,s="))
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        })
    };
    let all = wait_until(Duration::from_secs(30), || written() == 300);
    assert!(all, "{} of 300 written\n{}", written(), daemon.log());
    eprintln!(
        "all 300 written {:?} after the last was published; answers: {:?}",
        last_published.elapsed(),
        influx.with(|s| s.answers.clone())
    );
    let dead: Vec<serde_json::Value> =
        std::fs::read_to_string(daemon.dir.path().join("state/dead-letter.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["payload"], bad, "{dead:?}");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(reason.contains("without an answer"), "{reason}");
    assert!(
        influx.with(|s| s.answers.contains(&support::fake_influx::NO_ANSWER)),
        "the server never failed"
    );
    assert!(daemon.is_running());
}
