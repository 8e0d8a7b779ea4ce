//! Running under systemd: the notify protocol against a socket of the
//! test's own (`$NOTIFY_SOCKET`), with a real Mosquitto.
#![allow(unsafe_code)] // signals to the daemons it started, by PID

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Mosquitto, free_port, leasegate_command};

fn config(dir: &std::path::Path, broker_url: &str) -> std::path::PathBuf {
    let conf = dir.join("gw.toml");
    std::fs::write(
        &conf,
        format!(
            "state_dir = \"{}\"\n[mqtt]\nurl = \"{broker_url}\"\nclient_id = \"gw-notify\"\n[[mqtt.subscribe]]\ntopic = \"sensors/#\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    conf
}

/// Datagrams received within `timeout`, each as text.
fn receive(socket: &UnixDatagram, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    out
}

#[test]
fn ready_only_once_subscribed_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();

    // No broker: the daemon runs but is not ready.
    let conf = config(dir.path(), &format!("mqtt://127.0.0.1:{}", free_port()));
    let log = std::fs::File::create(dir.path().join("a.log")).unwrap();
    let mut lonely = leasegate_command()
        .args(["--config", conf.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let heard = receive(&socket, Duration::from_secs(3));
    let _ = lonely.kill();
    let _ = lonely.wait();
    assert!(
        !heard.iter().any(|m| m.contains("READY=1")),
        "READY without a broker: {heard:?}"
    );

    // With the broker: READY=1 once the subscription is confirmed.
    let broker = Mosquitto::start();
    let conf = config(dir.path(), &broker.url());
    let log_path = dir.path().join("b.log");
    let mut daemon = leasegate_command()
        .args(["--config", conf.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let heard = receive(&socket, Duration::from_secs(10));
    let ready = heard.iter().find(|m| m.contains("READY=1"));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(ready.is_some(), "no READY=1: {heard:?}\n{log}");
    assert!(
        log.contains("subscribed to \"sensors/#\""),
        "READY came before the SubAck:\n{log}"
    );
    assert!(
        ready.unwrap().contains("STATUS=") && ready.unwrap().contains("mqtt connected"),
        "{ready:?}"
    );
    // SIGTERM: STOPPING=1, and a clean exit.
    // SAFETY: kill(2) on the PID of the child this test started.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let heard = receive(&socket, Duration::from_secs(5));
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(heard.iter().any(|m| m.contains("STOPPING=1")), "{heard:?}");
}

#[test]
fn watchdog_pings_while_healthy_and_stop_when_the_writer_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // An "InfluxDB" that takes connections and never answers: a write to
    // it (with a one-hour timeout) wedges the writer thread.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        hung.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && conns.len() < 16 {
            if let Ok((c, _)) = hung.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let broker = Mosquitto::start();
    let conf = dir.path().join("gw.toml");
    std::fs::write(
        &conf,
        format!(
            "state_dir = \"{}\"\n[mqtt]\nurl = \"{}\"\nclient_id = \"gw-dog\"\n[[mqtt.subscribe]]\ntopic = \"sensors/#\"\n[influxdb]\nurl = \"http://127.0.0.1:{hung_port}\"\ndatabase = \"sensors\"\ntimeout = \"1h\"\n[batch]\nflush_interval = \"100ms\"\n",
            dir.path().join("state").display(),
            broker.url()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("d.log");
    let mut daemon = leasegate_command()
        .args(["--config", conf.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let healthy = receive(&socket, Duration::from_secs(3));
    let pings = healthy.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "pings while healthy: {healthy:?}");

    support::publish_all(
        broker.port,
        "pub-dog",
        vec![("sensors/a".into(), b"m v=1 1700000000000000000".to_vec())],
        Duration::from_secs(10),
    );
    // The writer is now inside a write that never returns; after half the
    // interval (1 s) without a beat the pings stop.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = receive(&socket, Duration::from_millis(100));
    let stalled = receive(&socket, Duration::from_secs(3));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !stalled.iter().any(|m| m.contains("WATCHDOG=1")),
        "pings while the writer is wedged: {stalled:?}\n{log}"
    );
    assert!(
        log.contains("the writer thread has made no progress"),
        "{log}"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(held);
}

#[test]
fn sigterm_under_load_exits_0_within_10s_and_a_restart_delivers_every_acked_point() {
    use support::{Influx, publish_all, start_static_daemon, wait_until};
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-term", "");
    const EACH: u64 = 20_000;
    let port = broker.port;
    let publishers: Vec<_> = (0..2u64)
        .map(|p| {
            std::thread::spawn(move || {
                let messages = (0..EACH)
                    .map(|i| {
                        let seq = p * EACH + i;
                        (
                            format!("sensors/p{p}"),
                            format!("term seq={seq}i {}", 1_700_000_000_000_000_000u64 + seq)
                                .into_bytes(),
                        )
                    })
                    .collect();
                publish_all(
                    port,
                    &format!("pub-term-{p}"),
                    messages,
                    Duration::from_secs(300),
                );
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(120), || influx
        .count("sensors", "term", "seq")
        >= 10_000));
    let t0 = Instant::now();
    let status = daemon.terminate(Duration::from_secs(10));
    let took = t0.elapsed();
    eprintln!("SIGTERM under load: exited {status:?} after {took:?}");
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?} after {took:?}\n{}",
        daemon.log()
    );
    daemon.restart();
    for p in publishers {
        p.join().unwrap();
    }
    let all = wait_until(Duration::from_secs(120), || {
        influx.count("sensors", "term", "seq") == 2 * EACH
    });
    assert!(
        all,
        "{} of {}\n{}",
        influx.count("sensors", "term", "seq"),
        2 * EACH,
        daemon.log()
    );
}

#[test]
fn sighup_adds_a_subscription_without_a_restart_and_a_broken_file_keeps_the_old_one() {
    use support::{Influx, publish_all, start_static_daemon};
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemon = start_static_daemon(&broker, &influx, "gw-hup", support::NO_CLOCK_WAIT);
    let conf = daemon.dir.path().join("leasegate.toml");
    let original = std::fs::read_to_string(&conf).unwrap();
    let publish = |topic: &str, measurement: &str, from: u64, n: u64| {
        let messages = (from..from + n)
            .map(|i| {
                (
                    topic.to_owned(),
                    format!(
                        "{measurement} seq={i}i {}",
                        1_700_000_000_000_000_000u64 + i
                    )
                    .into_bytes(),
                )
            })
            .collect();
        publish_all(
            broker.port,
            &format!("pub-{measurement}-{from}"),
            messages,
            Duration::from_secs(60),
        );
    };
    publish("sensors/a", "before", 0, 200);
    influx.assert_arrives("before", 200, Duration::from_secs(20), &daemon);

    // A second subscription, with a JSON payload format, and a new batch
    // size; the first subscription's messages keep flowing meanwhile.
    std::fs::write(
        &conf,
        format!(
            "{original}[[mqtt.subscribe]]\ntopic = \"extra/+\"\nformat = \"json\"\nmeasurement = \"extra\"\n[batch]\nmax_lines = 100\n"
        ),
    )
    .unwrap();
    let flowing = {
        let port = broker.port;
        std::thread::spawn(move || {
            for round in 0..10u64 {
                let messages = (0..20u64)
                    .map(|i| {
                        let seq = round * 20 + i;
                        (
                            "sensors/b".to_owned(),
                            format!("during seq={seq}i {}", 1_700_000_000_000_000_000u64 + seq)
                                .into_bytes(),
                        )
                    })
                    .collect();
                publish_all(
                    port,
                    &format!("pub-during-{round}"),
                    messages,
                    Duration::from_secs(60),
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // SAFETY: kill(2) on the PID of the daemon this test started.
    unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGHUP) };
    assert!(
        daemon.wait_for_log("subscribed to \"extra/+\"", 1, Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    let messages = (0..50u64)
        .map(|i| {
            (
                format!("extra/s{i}"),
                format!("{{\"seq\": {i}}}").into_bytes(),
            )
        })
        .collect();
    publish_all(broker.port, "pub-extra", messages, Duration::from_secs(60));
    flowing.join().unwrap();
    influx.assert_arrives("during", 200, Duration::from_secs(20), &daemon);
    let extra = support::wait_until(Duration::from_secs(20), || {
        influx.count("sensors", "extra", "seq") == 50
    });
    assert!(
        extra,
        "{} of 50 on the new subscription\n{}",
        influx.count("sensors", "extra", "seq"),
        daemon.log()
    );
    assert!(
        daemon
            .log()
            .contains("reloaded: subscriptions [\"sensors/#\", \"extra/+\"], batch 100 lines")
    );

    // A broken file: refused, named, and the running configuration stays.
    std::fs::write(&conf, format!("{original}[batch]\nmax_lines = \"lots\"\n")).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGHUP) };
    assert!(
        daemon.wait_for_log("reload refused", 1, Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    assert!(daemon.log().contains("batch.max_lines"), "{}", daemon.log());
    let messages = (50..60u64)
        .map(|i| {
            (
                format!("extra/s{i}"),
                format!("{{\"seq\": {i}}}").into_bytes(),
            )
        })
        .collect();
    publish_all(
        broker.port,
        "pub-extra-2",
        messages,
        Duration::from_secs(60),
    );
    let still = support::wait_until(Duration::from_secs(20), || {
        influx.count("sensors", "extra", "seq") == 60
    });
    assert!(
        still,
        "the old configuration stopped working\n{}",
        daemon.log()
    );
    assert!(daemon.is_running());
    daemon.stop_cleanly();
}

#[test]
fn metrics_endpoint_and_retained_mqtt_status_with_an_offline_will() {
    use support::{
        Daemon, Influx, publish_all, static_config, wait_until, watch_topic, write_secret,
    };
    let broker = Mosquitto::start();
    let influx = Influx::start();
    influx.create_writer("sensors", "writer", "writer-pw");
    let dir = tempfile::tempdir().unwrap();
    let pw = write_secret(dir.path(), "influx.password", "writer-pw\n");
    let metrics_port = free_port();
    let config = static_config(&broker, &influx, "gw-stat", &pw).replacen(
        "[mqtt]\n",
        "[mqtt]\npublish_status = true\nstatus_interval = \"1s\"\n",
        1,
    ) + &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n");
    let mut daemon = Daemon::start_in(dir, &config);
    assert!(
        daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    let messages = (0..100u64)
        .map(|i| {
            (
                "sensors/m".to_owned(),
                format!("met seq={i}i {}", 1_700_000_000_000_000_000u64 + i).into_bytes(),
            )
        })
        .collect();
    publish_all(broker.port, "pub-met", messages, Duration::from_secs(30));
    influx.assert_arrives("met", 100, Duration::from_secs(20), &daemon);

    let scrape = || support::scrape_metrics(metrics_port);
    let value = support::metric_value;
    assert!(wait_until(Duration::from_secs(5), || value(
        &scrape(),
        "leasegate_points_written_total"
    ) == Some(100.0)));
    let text = scrape();
    assert_eq!(
        value(&text, "leasegate_points_in_total"),
        Some(100.0),
        "{text}"
    );
    assert_eq!(value(&text, "leasegate_points_dropped_total"), Some(0.0));
    assert_eq!(value(&text, "leasegate_mqtt_connected"), Some(1.0));
    assert!(
        value(&text, "leasegate_write_duration_seconds_count").unwrap() >= 1.0,
        "{text}"
    );
    assert!(text.contains("leasegate_write_duration_seconds_bucket{le=\"+Inf\"}"));
    assert!(text.contains("# TYPE leasegate_spool_bytes gauge"));
    assert!(!text.contains("writer-pw"));

    // The retained status carries the report; kill -9 and the broker
    // publishes the will.
    let seen = watch_topic(
        broker.port,
        "leasegate/gw-stat/status",
        Duration::from_secs(10),
        |s| !s.is_empty(),
    );
    let report: serde_json::Value = serde_json::from_str(&seen[0]).unwrap_or_default();
    assert_eq!(report["credentials"], "static", "{seen:?}");
    assert!(report["points_written"].as_u64().is_some());
    daemon.kill9();
    let seen = watch_topic(
        broker.port,
        "leasegate/gw-stat/status",
        Duration::from_secs(10),
        |s| s.iter().any(|m| m == "offline"),
    );
    assert!(seen.iter().any(|m| m == "offline"), "{seen:?}");
}

#[test]
fn a_long_flush_interval_is_no_stall_for_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let broker = Mosquitto::start();
    let conf = dir.path().join("gw.toml");
    // The writer holds the first point for ten seconds, waiting for more:
    // that is waiting for input, not a wedged thread.
    std::fs::write(
        &conf,
        format!(
            "state_dir = \"{}\"\n[mqtt]\nurl = \"{}\"\nclient_id = \"gw-flush\"\n[[mqtt.subscribe]]\ntopic = \"sensors/#\"\n[influxdb]\nurl = \"http://127.0.0.1:{}\"\ndatabase = \"sensors\"\n[batch]\nflush_interval = \"10s\"\n",
            dir.path().join("state").display(),
            broker.url(),
            free_port()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("d.log");
    let mut daemon = leasegate_command()
        .args(["--config", conf.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let started = receive(&socket, Duration::from_secs(3));
    assert!(started.iter().any(|m| m.contains("READY=1")), "{started:?}");
    support::publish_all(
        broker.port,
        "pub-flush",
        vec![("sensors/a".into(), b"m v=1 1700000000000000000".to_vec())],
        Duration::from_secs(10),
    );
    let waiting = receive(&socket, Duration::from_secs(4));
    let log = std::fs::read_to_string(&log_path).unwrap();
    let pings = waiting.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        pings >= 6,
        "{pings} pings while the batch waits: {waiting:?}\n{log}"
    );
    assert!(!log.contains("made no progress"), "{log}");
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[test]
fn the_authority_is_ready_once_it_listens_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let port = free_port();
    let conf = dir.path().join("authority.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nstate_dir = \"{}\"\ntls = \"off\"\n{}{}",
            dir.path().join("state").display(),
            support::authority::v1_backend("main", &format!("http://127.0.0.1:{}", free_port()), "admin", "pw"),
            support::authority::role("sensor", "iot-sensor", "main", "database", "sensors"),
        ),
    )
    .unwrap();
    let mut authority = Command::new(support::authority::authority_binary())
        .args(["--config", conf.to_str().unwrap(), "serve"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("a.log")).unwrap())
        .spawn()
        .unwrap();
    let heard = receive(&socket, Duration::from_secs(3));
    assert!(
        heard.first().is_some_and(|m| m.starts_with("READY=1")),
        "{heard:?}"
    );
    let pings = heard.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "{heard:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    // SAFETY: kill(2) on the PID of the child this test started.
    unsafe { libc::kill(authority.id() as libc::pid_t, libc::SIGTERM) };
    let heard = receive(&socket, Duration::from_secs(3));
    let status = authority.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(heard.iter().any(|m| m.contains("STOPPING=1")), "{heard:?}");
}

/// A gateway without systemd runs what the unit runs: README's foreground
/// invocation (section "Without systemd") and its procd and BusyBox
/// examples must stay the unit's `ExecStart`, or a field team following
/// README would run something the tests never ran.
#[test]
fn readme_runs_the_daemon_without_systemd_exactly_as_the_unit_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/leasegate.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("leasegate.service has an ExecStart= line")
        .trim();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("### Without systemd")
        .nth(1)
        .expect("README has a section \"Without systemd\"");
    let section = section.split("\n### ").next().unwrap();
    assert!(
        section.contains(&format!("```sh\n{exec}\n```")),
        "README's foreground invocation is not the unit's ExecStart `{exec}`"
    );
    assert!(
        section.contains(&format!("procd_set_param command {exec}\n")),
        "README's procd script does not run `{exec}`"
    );
    assert!(
        section.contains(&format!("/usr/bin/chpst -u leasegate {exec}\n")),
        "README's inittab line does not run `{exec}`"
    );
    for signal in ["SIGTERM", "SIGINT", "SIGHUP"] {
        assert!(
            section.contains(signal),
            "README does not say what {signal} does"
        );
    }
}

/// Idle connections to the metrics endpoint (a port scanner, a stuck
/// client, or someone on the box who wants to blind monitoring) must not
/// hold up a scrape: it used to serve one connection at a time, each
/// allowed 2 s to send its request, so 20 idle connections made a scrape
/// wait about 40 s. The scrape is allowed 5 s here, far above what it
/// takes on a loaded machine and far below the serial wait.
#[test]
fn idle_connections_do_not_hold_up_a_scrape() {
    use std::io::{Read as _, Write as _};
    use support::{Daemon, Influx, static_config, write_secret};
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let dir = tempfile::tempdir().unwrap();
    let pw = write_secret(dir.path(), "influx.password", "writer-pw\n");
    let metrics_port = free_port();
    let config = static_config(&broker, &influx, "gw-idle-scrape", &pw)
        + &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n");
    let mut daemon = Daemon::start_in(dir, &config);
    assert!(
        daemon.wait_for_log("Prometheus metrics on", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    let idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap())
        .collect();
    let started = Instant::now();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    let _ = conn.read_to_string(&mut page);
    let took = started.elapsed();
    assert!(page.contains("leasegate_points_written_total"), "{page}");
    assert!(
        took < Duration::from_secs(5),
        "a scrape behind 20 idle connections took {took:?}"
    );
    // A request sent in pieces is still answered.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET /met").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    slow.write_all(b"rics HTTP/1.1\r\n\r\n").unwrap();
    let mut page = String::new();
    let _ = slow.read_to_string(&mut page);
    assert!(page.starts_with("HTTP/1.0 200 OK"), "{page}");
    drop(idle);
    assert!(daemon.is_running());
    daemon.stop_cleanly();
}
