//! The gateway configuration's unit tests: each key's reading and errors.

use super::*;

fn problems(text: &str) -> Vec<String> {
    match Config::from_toml(Path::new("t.toml"), text) {
        Ok(_) => Vec::new(),
        Err(e) => e.lines(),
    }
}

const MINIMAL: &str = r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[mqtt.subscribe]]
topic = "sensors/#"
[influxdb]
url = "http://127.0.0.1:8086"
database = "sensors"
"#;

#[test]
fn example_passes_the_check() {
    let c = Config::from_toml(Path::new("example"), EXAMPLE).unwrap();
    assert_eq!(c.mqtt.subscribe.len(), 1);
    // The example writes with leases.
    let Writing::Leased(l) = c.writing else {
        panic!("static: {:?}", c.writing)
    };
    assert_eq!(l.identity_name, "gw-01");
    assert!(!l.system_trust && l.url_override.is_none() && l.ttl.is_none());
}

#[test]
fn the_metrics_endpoint_is_loopback_only() {
    let base = "[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[[mqtt.subscribe]]\ntopic = \"a/#\"\n";
    let c = Config::from_toml(Path::new("m"), base).unwrap();
    assert_eq!(c.metrics_listen, None);
    assert!(!c.mqtt.publish_status);
    let ok = format!("{base}[metrics]\nlisten = \"127.0.0.1:9464\"\n");
    let c = Config::from_toml(Path::new("m"), &ok).unwrap();
    assert_eq!(c.metrics_listen.unwrap().port(), 9464);
    let open = format!("{base}[metrics]\nlisten = \"0.0.0.0:9464\"\n");
    let lines = Config::from_toml(Path::new("m"), &open)
        .unwrap_err()
        .lines();
    assert_eq!(
        lines,
        vec![
            "m: metrics.listen: \"0.0.0.0:9464\" is not a loopback address; the endpoint has no authentication"
        ]
    );
}

#[test]
fn without_credentials_influxdb_only_overrides_the_lease() {
    let text = r#"
identity_name = "gw:1"
[lease]
ttl = "6s"
trust = "system"
[mqtt]
url = "mqtt://127.0.0.1"
[[mqtt.subscribe]]
topic = "a/#"
[influxdb]
url = "http://other:8086"
api = "v2"
"#;
    let leased = text.replace("api = \"v2\"\n", "");
    let lines = Config::from_toml(Path::new("l.toml"), &leased)
        .unwrap_err()
        .lines();
    assert_eq!(
        lines,
        vec![
            "l.toml: identity_name: \"gw:1\" (from identity_name) must be 1 to 128 of A-Z a-z 0-9 . _ -; set identity_name",
        ]
    );
    // A destination in [influxdb] means static writing, with its rules.
    let lines = Config::from_toml(Path::new("l.toml"), text)
        .unwrap_err()
        .lines();
    assert!(
        lines.iter().any(|l| l.contains("influxdb.org: missing")),
        "{lines:?}"
    );
    let ok = text
        .replace("identity_name = \"gw:1\"\n", "")
        .replace("api = \"v2\"\n", "");
    let c = Config::from_toml(Path::new("l.toml"), &ok).unwrap();
    let Writing::Leased(l) = c.writing else {
        panic!("static: {:?}", c.writing)
    };
    assert_eq!(l.ttl, Some(Duration::from_secs(6)));
    assert!(l.system_trust);
    assert_eq!(l.url_override.as_deref(), Some("http://other:8086"));
    assert!(l.identity_name.starts_with("leasegate"));
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_toml(Path::new("m"), MINIMAL).unwrap();
    assert_eq!(c.state_dir, Path::new("/var/lib/leasegate"));
    assert_eq!(c.ticket_dir, Path::new("/var/lib/leasegate/tickets"));
    assert_eq!(c.batch.max_lines, 5000);
    assert_eq!(c.batch.max_bytes, 1 << 20);
    assert_eq!(c.batch.flush_interval, Duration::from_secs(1));
    assert_eq!(c.spool.max_bytes, 256 << 20);
    assert_eq!(
        (c.spool.fsync, c.spool.overflow),
        (FsyncPolicy::Batch, Overflow::DropOldest)
    );
    assert!(c.mqtt.client_id.starts_with("leasegate"));
    assert_eq!(c.mqtt.subscribe[0].format, Format::Line);
    let Writing::Static(i) = c.writing else {
        panic!("leased: {:?}", c.writing)
    };
    assert_eq!((i.api, i.gzip), (Api::V1, true));
}

#[test]
fn names_unknown_key_bad_duration_and_missing_url_together() {
    let p = problems(
        r#"
[mqtt]
client_id = "gw"
keep_alive = "soon"
[[mqtt.subscribe]]
topik = "a/#"
[influxdb]
url = "http://x:8086"
database = "d"
"#,
    );
    assert_eq!(
        p,
        vec![
            "t.toml: mqtt.url: missing (required)",
            "t.toml: mqtt.keep_alive: invalid duration \"soon\": expected number at 0",
            "t.toml: mqtt.subscribe[0].topic: missing (required)",
            "t.toml: mqtt.subscribe[0].topik: unknown key; did you mean \"topic\"?",
        ]
    );
}

#[test]
fn secrets_never_appear_in_problems_or_debug() {
    let text = MINIMAL.replace(
        "database = \"sensors\"",
        "database = \"sensors\"\ntoken = \"s3cr3t-token\"",
    );
    let p = problems(&text).join("\n");
    assert!(p.contains("influxdb.token: not used"), "{p}");
    assert!(!p.contains("s3cr3t"));
    let text = MINIMAL.replace(
        "database = \"sensors\"",
        "database = \"sensors\"\nusername = \"u\"\npassword = \"pw-XYZ\"",
    );
    let c = Config::from_toml(Path::new("m"), &text).unwrap();
    assert!(!format!("{c:?}").contains("pw-XYZ"));
}

#[test]
fn secret_files_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    crate::config::tls::tests::write_secret(&file, "from-file\n");
    let text = MINIMAL.replace(
        "database = \"sensors\"",
        &format!(
            "database = \"sensors\"\nusername = \"u\"\npassword_file = {:?}",
            file.display().to_string()
        ),
    );
    let c = Config::from_toml(Path::new("m"), &text).unwrap();
    let Writing::Static(i) = c.writing else {
        panic!("leased: {:?}", c.writing)
    };
    assert_eq!(i.password.unwrap().expose(), "from-file");
    let missing = text.replace("/pw", "/nope");
    let p = problems(&missing).join("\n");
    assert!(p.contains("influxdb.password_file: cannot read"), "{p}");
}

#[test]
fn api_rules() {
    let v2 = MINIMAL.replace("database = \"sensors\"", "api = \"v2\"\ndatabase = \"x\"");
    assert_eq!(
        problems(&v2),
        [
            "t.toml: influxdb.org: missing (required with api = \"v2\")",
            "t.toml: influxdb.bucket: missing (required with api = \"v2\")",
            "t.toml: influxdb.token: missing (required with api = \"v2\" (or token_file))",
            "t.toml: influxdb.database: not used with api = \"v2\" (it uses org and bucket)",
        ]
    );
}

#[test]
fn empty_or_out_of_range_mqtt_settings_are_named() {
    let empty = MINIMAL.replace(
        "[[mqtt.subscribe]]\ntopic = \"sensors/#\"\n",
        "subscribe = []\n",
    );
    assert!(
        problems(&empty)
            .iter()
            .any(|p| p.contains("mqtt.subscribe: missing")),
        "{:?}",
        problems(&empty)
    );
    let long = MINIMAL.replace(
        "[[mqtt.subscribe]]",
        "keep_alive = \"1day\"\n[[mqtt.subscribe]]",
    );
    assert!(
        problems(&long)
            .iter()
            .any(|p| p.contains("mqtt.keep_alive: must be at most 65535s"))
    );
    let v3 = MINIMAL.replace(
        "database = \"sensors\"",
        "api = \"v3\"\ndatabase = \"s\"\ntoken = \"t\"\npassword = \"p\"",
    );
    assert!(
        problems(&v3)
            .iter()
            .any(|p| p.contains("influxdb.password: not used with api")),
        "{:?}",
        problems(&v3)
    );
}

#[test]
fn spool_settings() {
    let text = format!(
        "{MINIMAL}[spool]\nmax_bytes = \"1MiB\"\nfsync = \"interval\"\nfsync_interval = \"250ms\"\noverflow = \"block\"\n"
    );
    let c = Config::from_toml(Path::new("m"), &text).unwrap();
    assert_eq!(c.spool.max_bytes, 1 << 20);
    assert_eq!(
        c.spool.fsync,
        FsyncPolicy::Interval(Duration::from_millis(250))
    );
    assert_eq!(c.spool.overflow, Overflow::Block);
    assert_eq!(c.spool.min_free, DEFAULT_MIN_FREE);
    // 5 % of a card, but not 12 GB of a 250 GB disk.
    assert_eq!(DEFAULT_MIN_FREE.of(64 << 20), (64 << 20) / 20);
    assert_eq!(DEFAULT_MIN_FREE.of(250_000_000_000), 1 << 30);
    for (text, want) in [
        ("\"10%\"", SizeOrPercent::Percent(10)),
        ("\"64MiB\"", SizeOrPercent::Bytes(64 << 20)),
        ("0", SizeOrPercent::Bytes(0)),
    ] {
        let c = Config::from_toml(
            Path::new("m"),
            &format!("{MINIMAL}[spool]\nmin_free = {text}\n"),
        )
        .unwrap();
        assert_eq!(c.spool.min_free, want, "{text}");
    }
    let bad = format!(
        "{MINIMAL}[spool]\nfsync = \"batch\"\nfsync_interval = \"1s\"\noverflow = \"drop_everything\"\nmin_free = \"60%\"\n"
    );
    assert_eq!(
        problems(&bad),
        [
            "t.toml: spool.fsync_interval: only used with fsync = \"interval\"",
            "t.toml: spool.overflow: \"drop_everything\" is not one of drop_oldest, drop_newest, block",
            "t.toml: spool.min_free: \"60%\" is not a whole percentage from 0% to 50%",
        ]
    );
    let bad = format!("{MINIMAL}[spool]\nmin_free = true\n");
    assert_eq!(
        problems(&bad),
        [
            "t.toml: spool.min_free: expected a size such as \"64MiB\" or a share such as \"5%\", found a boolean"
        ]
    );
}

#[test]
fn clock_settings_default_and_are_checked_by_key() {
    let c = Config::from_toml(Path::new("m"), MINIMAL).unwrap();
    assert_eq!(c.clock, ClockSettings::default());
    let set = format!("{MINIMAL}[clock]\nmax_offset = \"500ms\"\nmax_wait = \"0s\"\n");
    let c = Config::from_toml(Path::new("m"), &set).unwrap();
    assert_eq!(c.clock.max_offset, Duration::from_millis(500));
    assert_eq!(c.clock.max_wait, Duration::ZERO);
    let bad = format!("{MINIMAL}[clock]\nmax_offset = 2\nmax_wait = \"30d\"\nmax_ofset = \"1s\"\n");
    let problems = problems(&bad);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].starts_with("t.toml: clock.max_offset: expected a duration"),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("clock.max_wait: longer than a week")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("clock.max_ofset: unknown key")),
        "{problems:?}"
    );
}

#[test]
fn commit_delay_defaults_and_bounds() {
    let c = Config::from_toml(Path::new("m"), MINIMAL).unwrap();
    assert_eq!(c.spool.commit_delay, DEFAULT_COMMIT_DELAY);
    let at_once = format!("{MINIMAL}[spool]\ncommit_delay = \"0s\"\n");
    let c = Config::from_toml(Path::new("m"), &at_once).unwrap();
    assert_eq!(c.spool.commit_delay, Duration::ZERO);
    assert_eq!(
        problems(&format!("{MINIMAL}[spool]\ncommit_delay = \"1m\"\n")),
        [
            "t.toml: spool.commit_delay: 1m is longer than the maximum 5s: every ack would wait that long"
        ]
    );
}

#[test]
fn syntax_errors_give_line_and_column() {
    let p = problems("[mqtt]\nurl = \n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("t.toml: line 2, column 7"), "{p:?}");
}

#[test]
fn tls_files_are_checked_and_only_taken_with_mqtts() {
    let with = |url: &str, extra: &str| {
        problems(&MINIMAL.replace("mqtt://", url).replace(
            "[[mqtt.subscribe]]",
            &format!("{extra}\n[[mqtt.subscribe]]"),
        ))
    };
    let p = with("mqtts://", "ca_file = \"/nonexistent/ca.pem\"");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("mqtt.ca_file: cannot read /nonexistent/ca.pem"),
        "{p:?}"
    );
    let p = with("mqtt://", "ca_file = \"/etc/ca.pem\"");
    assert!(
        p[0].contains("mqtt.ca_file: only used with an mqtts:// url"),
        "{p:?}"
    );
    let p = with("mqtts://", "client_cert_file = \"/etc/c.pem\"");
    assert!(p[0].contains("mqtt.client_key_file: missing"), "{p:?}");
}

#[test]
fn urls_with_credentials_are_refused_without_showing_them() {
    for text in [
        MINIMAL.replace(
            "mqtt://127.0.0.1:1883",
            "mqtt://gw:mqtt-pw-1@127.0.0.1:1883",
        ),
        MINIMAL.replace(
            "http://127.0.0.1:8086",
            "http://writer:influx-pw-2@127.0.0.1:8086",
        ),
        MINIMAL.replace(
            "http://127.0.0.1:8086",
            "ftp://writer:influx-pw-2@127.0.0.1:8086",
        ),
        MINIMAL.replace(
            "database = \"sensors\"",
            "database = \"sensors\"\nusername = \"u\"\npassword = 876543",
        ),
    ] {
        let p = problems(&text).join("\n");
        assert!(!p.is_empty());
        assert!(
            !p.contains("pw-1") && !p.contains("pw-2") && !p.contains("876543"),
            "{p}"
        );
    }
}

#[test]
fn broker_urls() {
    assert_eq!(
        parse_broker_url("mqtts://broker.example"),
        Ok(BrokerUrl {
            tls: true,
            host: "broker.example".into(),
            port: 8883
        })
    );
    assert_eq!(parse_broker_url("mqtt://[::1]:1884").unwrap().host, "::1");
    assert_eq!(parse_broker_url("mqtt://[::1]").unwrap().port, 1883);
    assert!(
        parse_broker_url("mqtt://::1")
            .unwrap_err()
            .contains("in brackets")
    );
    assert!(parse_broker_url("tcp://x").is_err());
    assert!(parse_broker_url("mqtt://x:0").is_err());
    assert!(parse_broker_url("mqtt://u:p@x").is_err());
    assert!(parse_broker_url("mqtt://x/path").is_err());
}

#[test]
fn topic_filters() {
    for ok in ["a/#", "#", "+/b/+", "$share/g/a/#", "a"] {
        assert_eq!(check_topic_filter(ok), Ok(()), "{ok}");
    }
    for bad in [
        "a/#/b",
        "a#",
        "a/b+",
        "$share/g",
        "$share//a",
        "$share/g+/a",
    ] {
        assert!(check_topic_filter(bad).is_err(), "{bad}");
    }
}
