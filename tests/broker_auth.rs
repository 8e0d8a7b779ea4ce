//! The broker connection's protections against real Mosquitto: `mqtts://`
//! with a CA file and a client certificate (Mosquitto requiring one), a
//! broker certificate from the wrong CA refused with a clear error, and a
//! username with a password file against a broker without anonymous
//! access. Certificates are made for each test with rcgen; the publisher
//! uses a second, plain listener of the same broker.

use std::time::Duration;

use support::pki::Ca;
use support::{Daemon, Influx, Mosquitto, free_port, publish_all, write_secret};

fn line(i: u64) -> (String, Vec<u8>) {
    (
        "sensors/tls".to_owned(),
        format!("secure seq={i}i {}", 1_700_000_000_000_000_000u64 + i).into_bytes(),
    )
}

/// A broker with a plain listener (for the publisher) and a TLS listener
/// that requires a client certificate from `ca`.
fn tls_broker(ca: &Ca, tls_port: u16) -> Mosquitto {
    Mosquitto::start_with("", |dir| {
        let ca_file = ca.write(dir, "broker-ca.pem");
        let (cert, key) = ca.issue(dir, "broker");
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            ca_file.display(),
            cert.display(),
            key.display()
        )
    })
}

fn daemon_config(mqtt: &str, influx: &Influx) -> String {
    influx.create_writer("sensors", "writer", "writer-pw");
    format!(
        r#"state_dir = "{{dir}}/state"
[mqtt]
{mqtt}
client_id = "gw-secure"
[[mqtt.subscribe]]
topic = "sensors/#"
[influxdb]
api = "v1"
url = "{}"
database = "sensors"
username = "writer"
password = "writer-pw"
"#,
        influx.url()
    )
}

/// Starts the daemon, waits until it has subscribed, publishes `n` points
/// through the broker's plain listener and waits until all are in InfluxDB.
fn start_and_deliver(
    dir: tempfile::TempDir,
    mqtt: &str,
    broker: &Mosquitto,
    influx: &Influx,
    n: u64,
) -> Daemon {
    let daemon = Daemon::start_in(dir, &daemon_config(mqtt, influx));
    assert!(
        daemon.wait_for_log("subscribed to", 1, Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    let before = influx.count("sensors", "secure", "seq");
    publish_all(
        broker.port,
        "pub-secure",
        (before..before + n).map(line).collect(),
        Duration::from_secs(30),
    );
    influx.assert_arrives("secure", before + n, Duration::from_secs(30), &daemon);
    daemon
}

/// A message over `max_packet_size` is taken off the session by a second
/// connection that must log in the same way (TLS, client certificate or
/// password): it is dead-lettered, and the points after it arrive.
fn an_oversized_message_is_cleared_and_the_rest_delivered(
    daemon: &Daemon,
    broker: &Mosquitto,
    influx: &Influx,
) {
    publish_all(
        broker.port,
        "pub-big",
        vec![("sensors/big".to_owned(), vec![b'x'; 3 << 20])],
        Duration::from_secs(30),
    );
    let before = influx.count("sensors", "secure", "seq");
    publish_all(
        broker.port,
        "pub-secure",
        (before..before + 100).map(line).collect(),
        Duration::from_secs(30),
    );
    influx.assert_arrives("secure", before + 100, Duration::from_secs(30), daemon);
    let dead = std::fs::read_to_string(daemon.dir.path().join("state/dead-letter.jsonl"))
        .unwrap_or_default();
    assert!(
        dead.contains("sensors/big") && dead.contains("3145728 bytes"),
        "{dead}\n{}",
        daemon.log()
    );
}

#[test]
fn mqtts_with_a_ca_file_and_a_client_certificate_delivers() {
    let ca = Ca::new("leasegate test CA");
    let tls_port = free_port();
    let broker = tls_broker(&ca, tls_port);
    let influx = Influx::start();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (cert, key) = ca.issue(dir.path(), "gateway");
    let mqtt = format!(
        "url = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        ca_file.display(),
        cert.display(),
        key.display()
    );
    let mut daemon = start_and_deliver(dir, &mqtt, &broker, &influx, 500);
    an_oversized_message_is_cleared_and_the_rest_delivered(&daemon, &broker, &influx);
    let log = daemon.log();
    assert!(!log.contains("BEGIN"), "key material in the log:\n{log}");
    daemon.stop_cleanly();
}

#[test]
fn a_broker_certificate_from_another_ca_is_refused_clearly() {
    let ca = Ca::new("the broker's CA");
    let tls_port = free_port();
    let _broker = tls_broker(&ca, tls_port);
    let influx = Influx::start();
    let dir = tempfile::tempdir().unwrap();
    let other = Ca::new("some other CA");
    let ca_file = other.write(dir.path(), "ca.pem");
    let (cert, key) = ca.issue(dir.path(), "gateway");
    let mqtt = format!(
        "url = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        ca_file.display(),
        cert.display(),
        key.display()
    );
    let mut daemon = Daemon::start_in(dir, &daemon_config(&mqtt, &influx));
    // It says why, keeps trying, and never falls back to plain text.
    assert!(
        daemon.wait_for_log("UnknownIssuer", 2, Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    assert!(daemon.is_running());
    assert!(!daemon.log().contains("subscribed to"));
    daemon.stop_cleanly();
}

#[test]
fn a_password_file_logs_in_and_a_wrong_password_is_named() {
    let auth_port = free_port();
    let broker = Mosquitto::start_with("per_listener_settings true\n", |dir| {
        let passwords = dir.join("passwords");
        let status =
            std::process::Command::new(support::find_binary("mosquitto_passwd", "mosquitto"))
                .args(["-b", "-c"])
                .arg(&passwords)
                .args(["gateway", "s3cret-broker-pw"])
                .status()
                .unwrap();
        assert!(status.success());
        format!(
            "listener {auth_port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            passwords.display()
        )
    });
    let influx = Influx::start();

    // A wrong password: refused, said so, and the password is not shown.
    let dir = tempfile::tempdir().unwrap();
    let wrong = write_secret(dir.path(), "mqtt.password", "not-the-password\n");
    let mqtt = format!(
        "url = \"mqtt://127.0.0.1:{auth_port}\"\nusername = \"gateway\"\npassword_file = \"{}\"",
        wrong.display()
    );
    let mut daemon = Daemon::start_in(dir, &daemon_config(&mqtt, &influx));
    assert!(
        daemon.wait_for_log("NotAuthorized", 1, Duration::from_secs(30))
            || daemon.wait_for_log("BadUserNamePassword", 1, Duration::from_secs(1)),
        "{}",
        daemon.log()
    );
    assert!(!daemon.log().contains("not-the-password"));
    assert!(daemon.terminate(Duration::from_secs(10)).is_some());

    // The right one: delivered.
    let dir = tempfile::tempdir().unwrap();
    let right = write_secret(dir.path(), "mqtt.password", "s3cret-broker-pw\n");
    let mqtt = format!(
        "url = \"mqtt://127.0.0.1:{auth_port}\"\nusername = \"gateway\"\npassword_file = \"{}\"",
        right.display()
    );
    let mut daemon = start_and_deliver(dir, &mqtt, &broker, &influx, 100);
    an_oversized_message_is_cleared_and_the_rest_delivered(&daemon, &broker, &influx);
    assert!(!daemon.log().contains("s3cret-broker-pw"));
    daemon.stop_cleanly();
}
