//! The end-to-end demo behind README's first command: real Mosquitto and
//! InfluxDB 1.x on free loopback ports, a `leasegate-authority` (HTTPS with
//! its self-signed certificate) with its embedded store, and the leasegate
//! daemon. A ticket is created and dropped into the running daemon's ticket
//! directory; the daemon enrolls, writes with short leases that it renews,
//! and the sample sensor points are queried back from InfluxDB.
//!
//! It reuses the test harness, so everything it starts it stops again by
//! PID, also when it fails. Run it through `examples/demo.sh`, which
//! installs the Debian packages first.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::authority::{AuthorityServer, role, v1_backend};
use support::{ADMIN_PASSWORD, ADMIN_USER, Daemon, Influx, Mosquitto, publish_all, wait_until};

fn main() -> ExitCode {
    println!("== starting Mosquitto and InfluxDB 1.x on free loopback ports");
    let broker = Mosquitto::start();
    let influx = Influx::start();
    println!("   mosquitto {}   influxdb {}", broker.url(), influx.url());
    influx.query("CREATE DATABASE sensors");

    let body = format!(
        "{}{}",
        v1_backend("main", &influx.url(), ADMIN_USER, ADMIN_PASSWORD),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    );
    let authority = AuthorityServer::start_with(&body, true, "info");
    println!(
        "== leasegate-authority serving {} (self-signed certificate, made on first start)",
        authority.url()
    );
    println!(
        "   config:\n{}",
        indent(&std::fs::read_to_string(authority.config_path()).unwrap())
    );

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"state_dir = "{{dir}}/state"
ticket_dir = "{{dir}}/tickets"
[lease]
# Short, so that renewals show within the demo.
ttl = "8s"
[mqtt]
url = "{}"
client_id = "demo-gateway"
[[mqtt.subscribe]]
topic = "sensors/#"
"#,
        broker.url()
    );
    let ticket_dir = dir.path().join("tickets");
    println!(
        "== leasegate config (no InfluxDB settings: the lease brings them):\n{}",
        indent(&config.replace("{dir}", &dir.path().display().to_string()))
    );
    let mut daemon = Daemon::start_in(dir, &config);
    if !daemon.wait_for_log("waiting for a ticket", 1, Duration::from_secs(20)) {
        panic!("leasegate did not start:\n{}", daemon.log());
    }
    println!(
        "== leasegate-authority ticket create --attribute service=iot-sensor > tickets/demo.ticket"
    );
    let line = authority.ticket("iot-sensor", &[]);
    std::fs::create_dir_all(&ticket_dir).unwrap();
    let part = ticket_dir.join("demo.part");
    std::fs::write(&part, format!("{line}\n")).unwrap();
    std::fs::rename(&part, ticket_dir.join("demo.ticket")).unwrap();
    if !daemon.wait_for_log("lease ", 1, Duration::from_secs(10))
        || !daemon.wait_for_log("obtained", 1, Duration::from_secs(10))
    {
        panic!("leasegate did not enroll:\n{}", daemon.log());
    }
    println!(
        "   enrolled; the ticket file is gone: {}",
        !ticket_dir.join("demo.ticket").exists()
    );

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut messages = Vec::new();
    for minute in 0..30u64 {
        let ts = now - (30 - minute) * 60_000_000_000;
        for (i, room) in ["kitchen", "cellar", "attic"].iter().enumerate() {
            let temp = 18.0 + i as f64 * 2.5 + (minute as f64 / 5.0).sin();
            let humidity = 40 + (minute + i as u64 * 7) % 20;
            let line =
                format!("climate,room={room} temperature={temp:.2},humidity={humidity}i {ts}");
            messages.push((format!("sensors/{room}/climate"), line.into_bytes()));
        }
    }
    // One reading without a timestamp (stamped at receipt) and one bad line,
    // which is rejected and logged while the rest flows.
    messages.push((
        "sensors/hall/door".into(),
        b"door,room=hall open=true".to_vec(),
    ));
    messages.push((
        "sensors/hall/door".into(),
        b"door,room=hall open=maybe".to_vec(),
    ));
    let total = messages.len();
    println!(
        "== publishing {total} messages at QoS 1 in three waves over 20 s, while the 8 s leases renew"
    );
    let waves: Vec<Vec<(String, Vec<u8>)>> = messages
        .chunks(total.div_ceil(3))
        .map(|c| c.to_vec())
        .collect();
    for (i, wave) in waves.into_iter().enumerate() {
        publish_all(
            broker.port,
            &format!("demo-sensor-{i}"),
            wave,
            Duration::from_secs(60),
        );
        std::thread::sleep(Duration::from_secs(7));
    }

    let arrived = wait_until(Duration::from_secs(30), || {
        influx.count("sensors", "climate", "temperature") == 90
            && influx.count("sensors", "door", "open") == 1
    });
    println!("== queried back from InfluxDB:");
    let json = influx.query(
        "SELECT count(temperature), mean(temperature), min(humidity), max(humidity) \
         FROM sensors.autogen.climate GROUP BY room",
    );
    println!(
        "   {:<8} {:>6} {:>10} {:>8} {:>8}",
        "room", "points", "mean °C", "min RH%", "max RH%"
    );
    for series in json["results"][0]["series"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let row = &series["values"][0];
        println!(
            "   {:<8} {:>6} {:>10.2} {:>8} {:>8}",
            series["tags"]["room"].as_str().unwrap_or("?"),
            row[1].to_string(),
            row[2].as_f64().unwrap_or(f64::NAN),
            row[3].to_string(),
            row[4].to_string()
        );
    }
    println!(
        "   door events: {}",
        influx.count("sensors", "door", "open")
    );
    let status = support::leasegate_command()
        .arg("--config")
        .arg(daemon.dir.path().join("leasegate.toml"))
        .arg("status")
        .output()
        .unwrap();
    println!(
        "== leasegate status:\n{}",
        indent(&String::from_utf8_lossy(&status.stdout))
    );
    println!(
        "== leasegate-authority lease list:\n{}",
        indent(&authority.cli_ok(&["lease", "list"]))
    );
    println!("== daemon log:\n{}", indent(&daemon.log()));
    let renewals = daemon.log().matches("obtained").count().saturating_sub(1);
    let status = daemon.terminate(Duration::from_secs(10));
    println!("== SIGTERM: leasegate exited with {status:?}");
    if !arrived {
        // Returning (rather than exiting) lets the harness stop the servers.
        eprintln!("demo FAILED: not every point arrived");
        return ExitCode::FAILURE;
    }
    println!(
        "== demo OK: enrolled from a dropped ticket; 90 climate points and 1 door event forwarded with {renewals} lease renewal(s); the bad line was rejected"
    );
    ExitCode::SUCCESS
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("   {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
