//! End to end against real servers: points published at QoS 1 to a real
//! Mosquitto reach a real InfluxDB 1.x through `leasegate run`.

use std::time::Duration;

use support::{
    Daemon, Influx, Mosquitto, publish_all, start_static_daemon, static_config, wait_until,
    write_secret,
};

#[test]
fn ten_thousand_points_arrive_exactly() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-e2e", "");

    const N: u64 = 10_000;
    let base: u64 = 1_700_000_000_000_000_000;
    let messages = (0..N)
        .map(|i| {
            let line = format!(
                "e2e,gw=gw-e2e,slot=s{} seq={i}i,value={}.25 {}",
                i % 7,
                i * 3,
                base + i
            );
            (format!("sensors/room{}/temp", i % 10), line.into_bytes())
        })
        .collect();
    publish_all(broker.port, "pub-e2e", messages, Duration::from_secs(120));

    let arrived = wait_until(Duration::from_secs(60), || {
        influx.count("sensors", "e2e", "seq") >= N
    });
    assert!(
        arrived,
        "only {} of {N} points arrived",
        influx.count("sensors", "e2e", "seq")
    );
    // Nothing extra either: no point counted twice, none invented.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(influx.count("sensors", "e2e", "seq"), N);
    let seqs: Vec<u64> = influx
        .values("sensors", "e2e", "seq")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (0..N).collect::<Vec<_>>(),
        "points out of order or altered"
    );

    let status = daemon
        .terminate(Duration::from_secs(10))
        .expect("exits within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // Counted by the daemon itself: InfluxDB would merge a point written
    // twice, so only the daemon's own count shows duplicates.
    let log = daemon.log();
    assert!(
        log.contains("10000 messages in, 10000 points spooled, 10000 written"),
        "{log}"
    );

    // Every ack reached the broker before the stop: the session it kept
    // has nothing to send again. An ack lost on its way (a queued one
    // never written, or the last ones not flushed) comes back as a
    // redelivered message here.
    daemon.restart();
    assert!(
        daemon.wait_for_log("connected to MQTT broker", 2, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    daemon.stop_cleanly();
    assert_eq!(
        support::final_counter(&daemon.log(), "messages in"),
        0,
        "{}",
        daemon.log()
    );
}

#[test]
fn no_secret_reaches_even_a_trace_log() {
    use base64::Engine as _;
    let broker = Mosquitto::start();
    let influx = Influx::start();
    influx.create_writer("sensors", "writer", "writer-pw");
    let dir = tempfile::tempdir().unwrap();
    let pw = write_secret(dir.path(), "influx.password", "writer-pw");
    let config = static_config(&broker, &influx, "gw-trace", &pw);
    let mut daemon = Daemon::start_logging(
        dir,
        &config,
        "trace,ureq=trace,ureq_proto=trace,rumqttc=trace",
    );
    assert!(
        daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    let messages = vec![(
        "sensors/t".to_owned(),
        b"trace seq=1i 1700000000000000000".to_vec(),
    )];
    publish_all(broker.port, "pub-trace", messages, Duration::from_secs(30));
    assert!(wait_until(Duration::from_secs(20), || influx
        .count("sensors", "trace", "seq")
        == 1));
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let log = daemon.log();
    let basic = base64::engine::general_purpose::STANDARD.encode("writer:writer-pw");
    assert!(
        log.contains("TRACE ureq") || log.contains("DEBUG ureq"),
        "expected ureq's trace:\n{log}"
    );
    assert!(!log.contains("writer-pw"), "password in the log");
    assert!(!log.contains(&basic), "Basic credentials in the log");
}

#[test]
fn special_characters_survive_the_round_trip_to_influxdb() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-escape", "");
    // Every escape of the facts sheet, and text InfluxDB must store as is.
    let line = r#"we\ ather\,x,loc=a\,b\ c\=d,path=C:\temp t\ emp=21.5,s="say \"hi\" \\o/ é😀",n=-3i 1700000000000000000"#;
    publish_all(
        broker.port,
        "pub-escape",
        vec![("sensors/e".to_owned(), line.as_bytes().to_vec())],
        Duration::from_secs(30),
    );
    let query = r#"SELECT "t emp", "s", "n", "loc", "path" FROM "sensors"."autogen"."we ather,x""#;
    let arrived = wait_until(Duration::from_secs(20), || {
        influx.query(query)["results"][0]["series"][0]["values"][0].is_array()
    });
    assert!(arrived, "{}", daemon.log());
    let row = influx.query(query)["results"][0]["series"][0]["values"][0].clone();
    assert_eq!(row[1], 21.5);
    assert_eq!(row[2], r#"say "hi" \o/ é😀"#);
    assert_eq!(row[3], -3);
    assert_eq!(row[4], "a,b c=d");
    assert_eq!(row[5], r"C:\temp");
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn bad_lines_are_rejected_and_the_pipeline_keeps_flowing() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-bad", support::NO_CLOCK_WAIT);

    let messages = vec![
        // Good and bad lines in one message: the good ones still go.
        (
            "sensors/a".to_owned(),
            b"mixed seq=1i\nmixed seq=oops\nmixed seq=2i\n".to_vec(),
        ),
        ("sensors/b".to_owned(), b"\xff\xfe not utf-8".to_vec()),
        ("sensors/c".to_owned(), b"mixed seq=NaN".to_vec()),
        ("sensors/d".to_owned(), b"".to_vec()),
        // Two lines of one series without timestamps: stamped at receipt
        // with distinct times, so InfluxDB keeps both.
        (
            "sensors/e".to_owned(),
            b"mixed seq=3i\nmixed seq=4i".to_vec(),
        ),
        (
            "sensors/f".to_owned(),
            b"mixed,t=x seq=5i 1700000000 \r\n".to_vec(),
        ),
    ];
    publish_all(broker.port, "pub-bad", messages, Duration::from_secs(30));

    assert!(
        wait_until(Duration::from_secs(30), || influx
            .count("sensors", "mixed", "seq")
            >= 5),
        "good points did not arrive: {}",
        influx.count("sensors", "mixed", "seq")
    );
    let mut seqs: Vec<u64> = influx
        .values("sensors", "mixed", "seq")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);

    let log = daemon.log();
    assert!(
        log.contains("field \"seq\" has invalid value \"oops\""),
        "{log}"
    );
    assert!(log.contains("payload is not valid UTF-8"), "{log}");
    assert!(log.contains("NaN and infinity"), "{log}");
    assert!(daemon.is_running(), "daemon died on bad input");
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );

    // Each rejected message is in the dead-letter file with its reason.
    let dead = std::fs::read_to_string(daemon.dir.path().join("state/dead-letter.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_topic = |t: &str| {
        records
            .iter()
            .find(|r| r["topic"] == t)
            .unwrap_or_else(|| panic!("no {t} in {dead}"))
    };
    assert!(
        by_topic("sensors/a")["reason"]
            .as_str()
            .unwrap()
            .contains("invalid value \"oops\"")
    );
    assert_eq!(
        by_topic("sensors/a")["payload"],
        "mixed seq=1i\nmixed seq=oops\nmixed seq=2i\n"
    );
    assert!(
        by_topic("sensors/b")["reason"]
            .as_str()
            .unwrap()
            .contains("UTF-8")
    );
    assert_eq!(by_topic("sensors/b")["payload_base64"], "//4gbm90IHV0Zi04");
    assert!(
        by_topic("sensors/c")["reason"]
            .as_str()
            .unwrap()
            .contains("NaN")
    );
    assert_eq!(by_topic("sensors/c")["subscription"], "sensors/#");
    assert_eq!(records.len(), 3, "{dead}");
    assert!(
        daemon
            .log()
            .contains("rejected 3 messages on subscription \"sensors/#\""),
        "{}",
        daemon.log()
    );
}

#[test]
fn points_published_while_influxdb_is_unreachable_arrive_once_it_is_back() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-outage", "");
    // Lock the writer out: InfluxDB answers 401 until the user is back.
    influx.query("DROP USER \"writer\"");

    let messages = (0..50u64)
        .map(|i| {
            (
                "sensors/x".to_owned(),
                format!("outage seq={i}i {}", 1_700_000_000_000_000_000u64 + i).into_bytes(),
            )
        })
        .collect();
    publish_all(broker.port, "pub-outage", messages, Duration::from_secs(30));
    assert!(
        daemon.wait_for_log("InfluxDB answered 401", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    assert_eq!(influx.count("sensors", "outage", "seq"), 0);

    influx.query("CREATE USER \"writer\" WITH PASSWORD 'writer-pw'");
    influx.query("GRANT WRITE ON \"sensors\" TO \"writer\"");
    assert!(
        wait_until(Duration::from_secs(90), || influx
            .count("sensors", "outage", "seq")
            == 50),
        "held points did not arrive: {}",
        influx.count("sensors", "outage", "seq")
    );
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn sigterm_while_writes_fail_exits_in_time_and_a_restart_delivers_everything() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    influx.create_writer("sensors", "writer", "writer-pw");
    let dir = tempfile::tempdir().unwrap();
    let pw = write_secret(dir.path(), "influx.password", "writer-pw");
    let config = format!(
        "shutdown_timeout = \"3s\"\n{}",
        static_config(&broker, &influx, "gw-restart", &pw)
    );
    let mut daemon = Daemon::start_in(dir, &config);
    assert!(
        daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );

    influx.query("DROP USER \"writer\"");
    let messages = (0..20u64)
        .map(|i| {
            let line = format!("restart seq={i}i {}", 1_700_000_000_000_000_000u64 + i);
            ("sensors/r".to_owned(), line.into_bytes())
        })
        .collect();
    publish_all(
        broker.port,
        "pub-restart",
        messages,
        Duration::from_secs(30),
    );
    assert!(
        daemon.wait_for_log("InfluxDB answered 401", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );

    let status = daemon
        .terminate(Duration::from_secs(6))
        .expect("exits within the 3 s bound (plus slack)");
    assert!(status.success(), "{status:?}");
    assert!(
        daemon.log().contains("they stay in the spool"),
        "{}",
        daemon.log()
    );
    assert_eq!(influx.count("sensors", "restart", "seq"), 0);

    // The points were acked to the broker, so only the spool has them now.
    influx.query("CREATE USER \"writer\" WITH PASSWORD 'writer-pw'");
    influx.query("GRANT WRITE ON \"sensors\" TO \"writer\"");
    daemon.restart();
    assert!(
        wait_until(Duration::from_secs(30), || influx
            .count("sensors", "restart", "seq")
            == 20),
        "after restart {} of 20 arrived\n{}",
        influx.count("sensors", "restart", "seq"),
        daemon.log()
    );
    assert!(
        daemon.log().contains("spool holds 20 points from before"),
        "{}",
        daemon.log()
    );
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn a_missing_server_binary_names_the_package_to_install() {
    let panic = std::panic::catch_unwind(|| {
        support::find_binary("no-such-server-for-leasegate", "some-package")
    })
    .expect_err("must fail, never skip");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("install the Debian package `some-package`"),
        "{message}"
    );
}

#[test]
fn json_and_value_payloads_with_topic_templates_reach_influxdb() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    influx.create_writer("sensors", "writer", "writer-pw");
    let dir = tempfile::tempdir().unwrap();
    let pw = write_secret(dir.path(), "influx.password", "writer-pw");
    let config = format!(
        r#"{}
[[mqtt.subscribe]]
topic = "json/#"
format = "json"
topic_template = "json/{{site}}/+"
measurement = "env"
precision = "ms"

[[mqtt.subscribe]]
topic = "values/#"
format = "value"
topic_template = "values/{{site}}/{{device}}/{{measurement}}"
tags = {{ source = "value" }}
"#,
        static_config(&broker, &influx, "gw-formats", &pw)
    ) + support::NO_CLOCK_WAIT;
    let mut daemon = Daemon::start_in(dir, &config);
    assert!(
        daemon.wait_for_log("subscribed to \"values/#\"", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );

    let messages: Vec<(String, Vec<u8>)> = [
        ("json/north/a", r#"{"temp": 21.5, "hum": 40, "time": 1700000000000}"#),
        (
            "json/north/b",
            r#"[{"measurement": "env2", "tags": {"k": "v"}, "fields": {"x": 1}, "time": "2023-11-14T22:13:20Z"}]"#,
        ),
        ("values/south/dev1/temperature", "19.5"),
        ("values/south/dev1/count", "7i"),
        ("values/south/dev1/door", "open"),
        // Rejected, each for its own reason; the rest keeps flowing.
        ("values/south/dev1/temperature", "NaN"),
        ("json/north/c", r#"{"temp": [1]}"#),
        ("json/north/d", r#"{"temp": 1"#),
        ("values/too/short", "1"),
    ]
    .into_iter()
    .map(|(t, p)| (t.to_owned(), p.as_bytes().to_vec()))
    .collect();
    publish_all(
        broker.port,
        "pub-formats",
        messages,
        Duration::from_secs(30),
    );

    let q = |query: &str| influx.query(query)["results"][0]["series"][0].clone();
    assert!(
        wait_until(Duration::from_secs(20), || influx
            .count("sensors", "door", "value")
            == 1
            && influx.count("sensors", "env", "temp") == 1
            && influx.count("sensors", "env2", "x") == 1),
        "{}",
        daemon.log()
    );
    let env = q(r#"SELECT "temp", "hum", "site" FROM "sensors"."autogen"."env""#);
    // precision = "ms": 1700000000000 ms is this instant.
    assert_eq!(env["values"][0][0], "2023-11-14T22:13:20Z");
    assert_eq!(
        (env["values"][0][1].as_f64(), env["values"][0][2].as_f64()),
        (Some(21.5), Some(40.0))
    );
    assert_eq!(env["values"][0][3], "north");
    let env2 = q(r#"SELECT "x", "k", "site" FROM "sensors"."autogen"."env2""#);
    assert_eq!(
        (env2["values"][0][2].as_str(), env2["values"][0][3].as_str()),
        (Some("v"), Some("north"))
    );
    let temp =
        q(r#"SELECT "value", "site", "device", "source" FROM "sensors"."autogen"."temperature""#);
    assert_eq!(
        temp["values"].as_array().map(Vec::len),
        Some(1),
        "NaN must not arrive"
    );
    assert_eq!(temp["values"][0][1].as_f64(), Some(19.5));
    assert_eq!(
        temp["values"][0],
        serde_json::json!([temp["values"][0][0], 19.5, "south", "dev1", "value"])
    );
    assert_eq!(
        q(r#"SELECT "value" FROM "sensors"."autogen"."count""#)["values"][0][1],
        7
    );
    assert_eq!(
        q(r#"SELECT "value" FROM "sensors"."autogen"."door""#)["values"][0][1],
        "open"
    );

    let log = daemon.log();
    for reason in [
        "value payload \"NaN\" is not a number",
        "field \"temp\": must be a number, boolean or string, found an array",
        "invalid JSON at line 1",
        "topic \"values/too/short\" does not fit",
    ] {
        assert!(log.contains(reason), "missing {reason:?} in\n{log}");
    }
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}
