//! The end-to-end demo behind README's first command: real Mosquitto and
//! InfluxDB 1.x on free loopback ports, the leasegate daemon forwarding
//! between them with static credentials, sample sensor points published at
//! QoS 1 and queried back from InfluxDB.
//!
//! It reuses the test harness, so everything it starts it stops again by
//! PID, also when it fails. Run it through `examples/demo.sh`, which
//! installs the Debian packages first.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{Daemon, Influx, Mosquitto, publish_all, static_config, wait_until, write_secret};

fn main() -> ExitCode {
    println!("== starting Mosquitto and InfluxDB 1.x on free loopback ports");
    let broker = Mosquitto::start();
    let influx = Influx::start();
    println!("   mosquitto {}   influxdb {}", broker.url(), influx.url());
    influx.create_writer("sensors", "writer", "demo-writer-pw");

    let dir = tempfile::tempdir().unwrap();
    let password = write_secret(dir.path(), "influx.password", "demo-writer-pw\n");
    let config = static_config(&broker, &influx, "demo-gateway", &password);
    println!(
        "== leasegate config:\n{}",
        indent(&config.replace("{dir}", &dir.path().display().to_string()))
    );
    let mut daemon = Daemon::start_in(dir, &config);
    if !daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)) {
        panic!("leasegate did not subscribe:\n{}", daemon.log());
    }

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
    println!("== publishing {total} messages at QoS 1 (waiting for every PUBACK)");
    publish_all(
        broker.port,
        "demo-sensor",
        messages,
        Duration::from_secs(60),
    );

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
    println!("== daemon log:\n{}", indent(&daemon.log()));
    let status = daemon.terminate(Duration::from_secs(10));
    println!("== SIGTERM: leasegate exited with {status:?}");
    if !arrived {
        // Returning (rather than exiting) lets the harness stop the servers.
        eprintln!("demo FAILED: not every point arrived");
        return ExitCode::FAILURE;
    }
    println!("== demo OK: 90 climate points and 1 door event forwarded; the bad line was rejected");
    ExitCode::SUCCESS
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("   {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
