//! Phase 10 of the bench (`--runway-only`): days of runway. An InfluxDB
//! 1.x outage of `hours` at 100 points/s of realistic sensor lines (20
//! sensors on 4 sites, temperature and humidity, stamped in nanoseconds as
//! receipt stamps are, 10 ms apart with jitter) is published into a
//! daemon with the default spool (256 MiB, `drop_oldest`); the bench
//! prints what the spool holds it in (packed), what was dropped, and the
//! packer's CPU per point (from the daemon's own `/metrics`). Then
//! InfluxDB comes back, and the drain of that backlog is timed against
//! the same InfluxDB taking direct 5,000-line POSTs of such lines in the
//! same run.
//!
//! The publisher sends 75 lines a message (what a group commit holds at
//! 100 points/s), at a bounded rate, so that a 72-hour outage takes
//! minutes; every wait is bounded.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::ffi::OsString;

use super::{
    BATCH_LINES, INFLUX_TARGET, arm_program, daemon_config, metric, round, start_daemon,
    start_daemon_as,
};
use support::paced::Paced;
use support::{Influx, Mosquitto, wait_until};

/// Points a second during the outage.
const RATE: u64 = 100;
/// Lines per published message.
const LINES_PER_MESSAGE: u64 = 75;
/// Messages a second the publisher sends (150,000 points/s).
const MESSAGES_PER_SEC: u64 = 2_000;
/// Lines the direct POSTs carry at most (the rate does not need more).
const DIRECT_SAMPLE: u64 = 2_000_000;

/// A small deterministic hash, for noise that is the same in every run.
fn noise(i: u64) -> u64 {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

/// Line `i` of the outage that starts at `t0` (ns): about 60 bytes.
pub fn line(measurement: &str, t0: u64, i: u64) -> String {
    let sensor = i % 20;
    let drift =
        |period: f64, amplitude: f64| amplitude * ((i / 20) as f64 / period + sensor as f64).sin();
    let temp = 21.0 + drift(3000.0, 3.0) + (noise(i) % 100) as f64 / 1000.0;
    let hum = 50.0 + drift(5000.0, 8.0) + (noise(i + 1) % 10) as f64 / 10.0;
    // 10 ms apart, received up to 0.3 ms early or late.
    let stamp = t0 + i * 10_000_000 + noise(i + 2) % 600_000;
    format!(
        "{measurement},site=s{},id=t{sensor:02} temp={temp:.2},hum={hum:.1} {stamp}",
        sensor % 4
    )
}

/// `LINES_PER_MESSAGE` lines from message `m`, one body.
fn body(measurement: &str, t0: u64, m: u64) -> Vec<u8> {
    let first = m * LINES_PER_MESSAGE;
    (first..first + LINES_PER_MESSAGE)
        .map(|i| line(measurement, t0, i))
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Bytes the files of `dir` take on disk (their blocks).
fn on_disk(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

pub fn runway(broker: &Mosquitto, influx: &mut Influx, hours: u64) -> Vec<String> {
    let mut report = Vec::new();
    let measurement = "runway";
    let t0 = now_ns() - hours * 3600 * 1_000_000_000;
    let messages = hours * 3600 * RATE / LINES_PER_MESSAGE;
    let port = support::free_port();
    let config = format!(
        "{}[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        daemon_config(broker, &influx.url(), INFLUX_TARGET, measurement)
    );
    influx.stop();
    let mut daemon = start_daemon(&config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
    let publisher = Paced::start(broker.port, "pub-runway", MESSAGES_PER_SEC, 0, move |m| {
        (format!("bench/{measurement}/a"), body(measurement, t0, m))
    });
    let publishing = Duration::from_secs(messages / MESSAGES_PER_SEC * 3 + 60);
    assert!(
        wait_until(publishing, || publisher.sent() >= messages),
        "published {} of {messages} messages",
        publisher.sent()
    );
    let points = publisher.stop() * LINES_PER_MESSAGE;
    let stored = wait_until(Duration::from_secs(600), || {
        metric(port, "leasegate_points_in_total") >= points
    });
    assert!(stored, "the outage was not spooled\n{}", daemon.log());
    // The packer catches up: its count stays put for 6 s (it looks every 2 s).
    let mut packed = metric(port, "leasegate_spool_packed_segments");
    let settled = wait_until(Duration::from_secs(300), || {
        std::thread::sleep(Duration::from_secs(6));
        let now = metric(port, "leasegate_spool_packed_segments");
        std::mem::replace(&mut packed, now) == now
    });
    assert!(settled, "the packer did not settle");
    let status: serde_json::Value = serde_json::from_str(&support::status_of(
        &support::leasegate_argv(),
        &daemon,
        true,
    ))
    .unwrap();
    let line_bytes: u64 = (0..points.min(100_000))
        .map(|i| line(measurement, t0, i).len() as u64 + 1)
        .sum::<u64>()
        * points
        / points.min(100_000);
    let spool_bytes = status["spool_bytes"].as_u64().unwrap_or(0);
    let disk = on_disk(&daemon.dir.path().join("state/spool"));
    let budget = 256u64 << 20;
    let packed_points = metric(port, "leasegate_spool_packed_points_total");
    let pack_cpu = metric_f64(port, "leasegate_spool_pack_cpu_seconds_total");
    report.push(format!(
        "runway: {hours} h at {RATE} points/s ({points} points, {:.2} GB of line protocol, {:.0} bytes a line) held in {} bytes of the default 256 MiB spool ({:.0} %; {} bytes on disk), {} dropped, {} segments packed; {:.2}x the line protocol; packing {:.2} us of CPU per point ({packed_points} packed)",
        line_bytes as f64 / 1e9,
        line_bytes as f64 / points as f64,
        spool_bytes,
        100.0 * spool_bytes as f64 / budget as f64,
        disk,
        status["points_dropped"],
        status["spool_packed_segments"],
        line_bytes as f64 / spool_bytes.max(1) as f64,
        pack_cpu * 1e6 / packed_points.max(1) as f64,
    ));
    assert!(daemon.terminate(Duration::from_secs(15)).is_some());

    influx.restart();
    let direct = direct_rate(influx, t0, points.min(DIRECT_SAMPLE));
    let started = Instant::now();
    daemon.restart();
    let counted = points - BATCH_LINES;
    let drained = wait_until(Duration::from_secs(3600), || {
        metric(port, "leasegate_points_written_total") >= counted
    });
    let took = started.elapsed();
    assert!(drained, "the backlog did not drain\n{}", daemon.log());
    let drain = counted as f64 / took.as_secs_f64();
    report.push(format!(
        "runway: that backlog drained into InfluxDB 1.x at {} points/s from the daemon's start; direct 5,000-line POSTs of such lines to the same InfluxDB {} points/s; ratio {:.2}",
        round(drain),
        round(direct),
        drain / direct
    ));
    assert!(daemon.terminate(Duration::from_secs(15)).is_some());
    report
}

/// The packer's CPU per point in `program` (the native build, or the
/// armv7 one under qemu): an hour of the outage's lines published into a
/// daemon whose InfluxDB refuses connections, until its packer settles.
fn pack_cost(broker: &Mosquitto, program: Vec<OsString>, name: &str) -> (f64, u64) {
    let measurement = format!("packcost_{name}");
    let port = support::free_port();
    let closed = support::free_port();
    let config = format!(
        "{}[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        daemon_config(
            broker,
            &format!("http://127.0.0.1:{closed}"),
            INFLUX_TARGET,
            &measurement
        )
    );
    let mut daemon = start_daemon_as(program, &config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(60)));
    let messages = 3600 * RATE / LINES_PER_MESSAGE;
    let t0 = now_ns() - 3_600_000_000_000;
    let m = measurement.clone();
    let publisher = Paced::start(
        broker.port,
        &format!("pub-{name}"),
        MESSAGES_PER_SEC,
        0,
        move |i| (format!("bench/{m}/a"), body(&m, t0, i)),
    );
    assert!(wait_until(Duration::from_secs(120), || publisher.sent() >= messages));
    let points = publisher.stop() * LINES_PER_MESSAGE;
    assert!(
        wait_until(Duration::from_secs(900), || metric(
            port,
            "leasegate_points_in_total"
        ) >= points),
        "{name}: the hour was not spooled\n{}",
        daemon.log()
    );
    let mut packed = metric(port, "leasegate_spool_packed_points_total");
    assert!(wait_until(Duration::from_secs(600), || {
        std::thread::sleep(Duration::from_secs(8));
        let now = metric(port, "leasegate_spool_packed_points_total");
        std::mem::replace(&mut packed, now) == now && now > 0
    }));
    let cpu = metric_f64(port, "leasegate_spool_pack_cpu_seconds_total");
    assert!(daemon.terminate(Duration::from_secs(30)).is_some());
    (cpu * 1e6 / packed.max(1) as f64, packed)
}

/// Packing's CPU per point, natively and (when the armv7 build is there)
/// under qemu-arm.
pub fn pack_costs(broker: &Mosquitto) -> Vec<String> {
    let (native, n) = pack_cost(broker, support::leasegate_argv(), "native");
    let mut line = format!(
        "packing at full speed: {native:.2} us of CPU per point natively ({n} points packed)"
    );
    match arm_program() {
        Ok((arm, runner)) => {
            let (emulated, n) = pack_cost(broker, arm, "armv7");
            line.push_str(&format!(
                ", {emulated:.2} us for the armv7 build under {runner} ({n} points; {:.1}x)",
                emulated / native
            ));
        }
        Err(skipped) => line.push_str(&format!("; armv7: {skipped}")),
    }
    vec![line]
}

/// The spool's codec against another pure-Rust one, on the outage's
/// lines in 64 KiB blocks as plain text (the spool's packs also write
/// timestamps as differences, which the daemon's own figure includes):
/// bytes of lines per byte packed, and ns of CPU per line.
pub fn codecs() -> Vec<String> {
    use std::io::Write as _;
    let t0 = now_ns();
    let text: String = (0..200_000u64)
        .map(|i| line("codec", t0, i) + "\n")
        .collect();
    let blocks: Vec<&[u8]> = text.as_bytes().chunks(64 << 10).collect();
    let measure = |pack: &dyn Fn(&[u8]) -> usize| {
        let started = Instant::now();
        let packed: usize = blocks.iter().map(|b| pack(b)).sum();
        let ns = started.elapsed().as_nanos() as f64 / 200_000.0;
        (text.len() as f64 / packed as f64, ns)
    };
    let deflate = |level: u32| {
        move |block: &[u8]| {
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
            e.write_all(block).unwrap();
            e.finish().unwrap().len()
        }
    };
    let brotli = |quality: u32| {
        move |block: &[u8]| {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, quality, 22);
                w.write_all(block).unwrap();
            }
            out.len()
        }
    };
    let mut parts = Vec::new();
    for (name, (ratio, ns)) in [
        ("DEFLATE 1 (miniz_oxide)", measure(&deflate(1))),
        ("DEFLATE 6 (the spool's)", measure(&deflate(6))),
        ("DEFLATE 9", measure(&deflate(9))),
        ("brotli 5", measure(&brotli(5))),
        ("brotli 9", measure(&brotli(9))),
    ] {
        parts.push(format!("{name} {ratio:.2}x at {ns:.0} ns a line"));
    }
    vec![format!(
        "codecs on the outage's lines as text, 64 KiB blocks: {}",
        parts.join("; ")
    )]
}

/// Points a second InfluxDB takes as uncompressed 5,000-line POSTs of
/// `n` lines of the outage's shape (another measurement), one at a time.
fn direct_rate(influx: &Influx, t0: u64, n: u64) -> f64 {
    let n = n - n % BATCH_LINES;
    let bodies: Vec<String> = (0..n)
        .step_by(BATCH_LINES as usize)
        .map(|first| {
            (first..first + BATCH_LINES)
                .map(|i| line("runway_direct", t0, i) + "\n")
                .collect()
        })
        .collect();
    let started = Instant::now();
    for body in &bodies {
        let (status, answer) = influx.write("sensors", body);
        assert_eq!(status, 204, "{answer}");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn metric_f64(port: u16, name: &str) -> f64 {
    support::metric_value(&support::scrape_metrics(port), name).unwrap_or(0.0)
}
