//! The pipeline benchmark (README "Benchmarks", figures in BENCHMARKS.md):
//! real Mosquitto, real InfluxDB 1.x, an in-process HTTP sink that only
//! counts lines, the release `leasegate` binary, and load generators.
//!
//! It measures, in one run:
//! 1. throughput of a plain subscriber that only counts messages, and of
//!    leasegate into the counting sink and into InfluxDB, each taking the
//!    same backlog of queued QoS 1 messages from the broker (so publishers
//!    are not what is measured); leasegate/plain is the headline.
//!    BENCH_OLD_BIN=path gives an older build a turn in every round as
//!    well (old and new in alternating order) and prints new/old round by
//!    round (`--throughput-only` runs just this phase). Each run has an
//!    MQTT session of its own and must take in exactly its backlog;
//! 2. resident memory and CPU time per point at a steady 10,000 points/s;
//! 3. write amplification: spool bytes, and bytes the kernel wrote to the
//!    block device, per byte of MQTT payload;
//! 4. how fast the backlog drains after a 60 s InfluxDB outage, against
//!    the ingest rate;
//! 5. what an idle, connected daemon costs: CPU over 60 s and wakeups per
//!    second (context switches of all its threads), with static
//!    credentials and with a lease (`--idle-only` runs just this, and
//!    `--drain-only` just the drain);
//! 6. the rates gateways see (`--rates-only` runs just this): 10, 100 and
//!    1,000 one-point messages a second from a paced publisher, with each
//!    fsync policy, into InfluxDB 1.x: block-device bytes per payload
//!    byte, CPU per point against the full-speed figure of the same run,
//!    ack delay p50/p99 and RSS, median of 3; and 1,000 a second through
//!    a Mosquitto with its default `max_inflight_messages 20`, watching
//!    the broker's queue;
//! 7. a spool backlog of 200,000 points drained into InfluxDB 1.x against
//!    direct 5,000-line POSTs to the same server, and a backlog of as many
//!    messages queued in the broker, alternated three times
//!    (`--spool-drain-only` runs just this);
//! 8. the static armv7 build under qemu-arm against this machine's build:
//!    the same backlog into the counting sink, alternated, CPU per point of
//!    each and their ratio (`--arm-only`; needs the binary that
//!    `cross/build.sh armv7-unknown-linux-musleabihf` makes, or
//!    BENCH_ARM_BIN, and BENCH_ARM_RUNNER if not qemu-arm; skipped
//!    without it). Emulation is not an ARM core: the ratio says what
//!    emulation costs, not what a gateway will use;
//! 9. what a gateway's card sees (`--card-only`): the state dir on a fresh
//!    ext4 filesystem on a loop device, default configuration, 10, 100 and
//!    1,000 one-point messages a second into InfluxDB 1.x: bytes the
//!    device wrote (journal and metadata included) per payload byte,
//!    beside the process's own `write_bytes`, and per day; and what a sync
//!    of a file that grows costs beyond the same sync of a preallocated
//!    one (needs root);
//! 10. days of runway (`--runway-only`, examples/common/runway.rs): a
//!     72-hour InfluxDB outage at 100 points/s (1 hour with `--quick`,
//!     BENCH_RUNWAY_HOURS to choose) into the default spool: the bytes it
//!     takes packed, the drain of that backlog against direct 5,000-line
//!     POSTs, the packer's CPU per point natively and for the armv7 build
//!     under qemu, and DEFLATE against brotli on such lines.
//!
//! `--quick` runs smaller and shorter (a smoke run, not figures to quote).
//! Every wait is bounded; every process it starts is stopped by PID.
#![allow(unsafe_code)] // signals to the servers it started, by PID

#[path = "common/procfs.rs"]
mod procfs;
#[path = "common/runway.rs"]
mod runway;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::loopfs::{Io, LoopFs};
use support::{Daemon, Influx, Mosquitto, final_counter, gateway_head, publish_all, wait_until};

/// leasegate's default `batch.max_lines`.
const BATCH_LINES: u64 = 5000;

/// The counting sink takes any database; the 1.x API needs one named.
const SINK_DB: &str = "database = \"bench\"\n";

struct Sizes {
    backlog: u64,
    reps: usize,
    steady_secs: u64,
    outage_secs: u64,
    drain_ingest: u64,
    /// Points in the spool backlog of the drain-against-direct phase.
    spool_drain: u64,
    /// Points in the backlog of the armv7-under-qemu phase.
    arm_backlog: u64,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            backlog: 20_000,
            reps: 1,
            steady_secs: 5,
            outage_secs: 5,
            drain_ingest: 2_000,
            spool_drain: 20_000,
            arm_backlog: 20_000,
        }
    } else {
        Sizes {
            backlog: 300_000,
            reps: 5,
            steady_secs: 30,
            outage_secs: 60,
            drain_ingest: 2_000,
            spool_drain: 200_000,
            arm_backlog: 100_000,
        }
    };
    let broker = Mosquitto::start();
    let influx = Influx::start();
    influx.create_writer("sensors", "writer", "writer-pw");
    let sink = CountingSink::start();
    let mut report = Report::default();
    let idle_secs = if quick { 10 } else { 60 };
    if std::env::args().any(|a| a == "--spool-drain-only") {
        let mut influx = influx;
        report.extend(drain_vs_direct(
            &broker,
            &mut influx,
            sizes.spool_drain,
            sizes.reps.min(3),
        ));
        println!("machine: {}", machine());
        println!("{}", report.0.join("\n"));
        return;
    }
    if std::env::args().any(|a| a == "--drain-only") {
        report.extend(drain_after_outage(
            &broker,
            influx,
            sizes.drain_ingest,
            sizes.outage_secs,
        ));
        println!("{}", report.0.join("\n"));
        return;
    }
    if std::env::args().any(|a| a == "--rates-only") {
        report.extend(rates(&broker, &influx, quick));
        println!("machine: {}", machine());
        println!("{}", report.0.join("\n"));
        return;
    }
    if std::env::args().any(|a| a == "--card-only") {
        report.extend(card(&broker, &influx, quick));
        println!("machine: {}", machine());
        println!("{}", report.0.join("\n"));
        return;
    }
    let runway_hours = std::env::var("BENCH_RUNWAY_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(if quick { 1 } else { 72 });
    if std::env::args().any(|a| a == "--runway-only") {
        let mut influx = influx;
        report.extend(runway::runway(&broker, &mut influx, runway_hours));
        report.extend(runway::pack_costs(&broker));
        report.extend(runway::codecs());
        println!("machine: {}", machine());
        println!("{}", report.0.join("\n"));
        return;
    }
    if std::env::args().any(|a| a == "--idle-only") {
        report.extend(idle(&broker, &influx, idle_secs));
        println!("machine: {}", machine());
        println!("{}", report.0.join("\n"));
        return;
    }

    if std::env::args().any(|a| a == "--arm-only") {
        report.extend(arm_under_qemu(
            &broker,
            &sink,
            sizes.arm_backlog,
            sizes.reps.min(3),
        ));
        println!("machine: {}", machine());
        println!("{}", report.0.join("\n"));
        return;
    }

    // 1. Throughput on a backlog. The machine is shared and noisy, so the
    // plain subscriber and leasegate take turns, and the medians count.
    // With BENCH_OLD_BIN an older build takes its turn in every round too
    // (old and new in alternating order), so that both are divided by the
    // same rounds of the plain subscriber: the drift of this machine
    // between runs is larger than what is compared.
    let n = sizes.backlog;
    let native = support::leasegate_argv();
    let old = std::env::var_os("BENCH_OLD_BIN").map(|bin| vec![bin]);
    let mut builds = vec![("new", native.clone())];
    if let Some(old) = &old {
        builds.push(("old", old.clone()));
    }
    // Which build a figure is of, when there are two.
    let label = |name: &str| {
        if old.is_some() {
            format!(" ({name} build)")
        } else {
            String::new()
        }
    };
    let mut plains = Vec::new();
    let mut sinks = vec![Vec::new(); builds.len()];
    let mut ratios = vec![Vec::new(); builds.len()];
    let mut paired = Vec::new();
    for rep in 1..=sizes.reps {
        let plain = plain_subscriber_rate(&broker, n);
        plains.push(plain);
        let mut order: Vec<usize> = (0..builds.len()).collect();
        if rep % 2 == 0 {
            order.reverse();
        }
        let mut this_round = vec![0.0; builds.len()];
        for i in order {
            // A session (client id and topics) of its own: messages one
            // run left queued would otherwise reach the next run's first
            // start, be spooled there, and count as the next backlog's.
            let (to_sink, _, log) = leasegate_backlog_rate(
                &builds[i].1,
                &broker,
                &sink.url(),
                SINK_DB,
                n,
                &format!("tput_sink_{rep}_{}", builds[i].0),
                Duration::from_millis(2),
                || sink.lines(),
            );
            let received = messages_in(&log);
            eprintln!(
                "bench: (round {rep}, {} build: plain {} msg/s, leasegate {} points/s, ratio {:.2}; messages in: {received:?})",
                builds[i].0,
                round(plain),
                round(to_sink),
                to_sink / plain
            );
            // Each start must have read its own backlog from the broker,
            // once: nothing before it, no more than it (a redelivered
            // message counts twice), no fewer (points from elsewhere).
            assert_eq!(
                received,
                vec![0, n],
                "round {rep}, {} build: messages in per start",
                builds[i].0
            );
            this_round[i] = to_sink;
            sinks[i].push(to_sink);
            ratios[i].push(to_sink / plain);
        }
        if builds.len() == 2 {
            paired.push(this_round[0] / this_round[1]);
        }
    }
    let plain = median(&mut plains);
    report.push(format!(
        "plain subscriber (QoS 1, counts only): {} msg/s (median of {})",
        round(plain),
        sizes.reps
    ));
    for (i, (name, _)) in builds.iter().enumerate() {
        let label = label(name);
        let median_ratio = median(&mut ratios[i]);
        report.push(format!(
            "leasegate{label} -> counting sink (fsync = batch): {} points/s; ratio leasegate/plain {:.2} (median of {} paired rounds, from {:.2} to {:.2})",
            round(median(&mut sinks[i])),
            median_ratio,
            sizes.reps,
            ratios[i].first().unwrap(),
            ratios[i].last().unwrap(),
        ));
    }
    // The median of the paired rounds, when an older build took turns.
    let mut new_over_old = None;
    if !paired.is_empty() {
        let spread = format!(
            "from {:.2} to {:.2}",
            paired.iter().cloned().fold(f64::INFINITY, f64::min),
            paired.iter().cloned().fold(0.0, f64::max)
        );
        new_over_old = Some(median(&mut paired));
        report.push(format!(
            "new/old into the counting sink, round by round: {:.2} (median of {}, {spread})",
            new_over_old.unwrap_or_default(),
            sizes.reps
        ));
    }
    report.extend(into_influx(&builds, &broker, &influx, n, plain));

    if std::env::args().any(|a| a == "--throughput-only") {
        println!("{}", report.0.join("\n"));
        // BENCH_REQUIRE_NOT_LOWER: the run fails when the new build's
        // median round is below the old one's (#25's throughput line).
        if std::env::var_os("BENCH_REQUIRE_NOT_LOWER").is_some()
            && new_over_old.is_some_and(|r| r < 1.0)
        {
            eprintln!("bench: the new build is lower than the old one (BENCH_REQUIRE_NOT_LOWER)");
            // exit() skips destructors: the servers are stopped first.
            drop((sink, influx, broker));
            std::process::exit(1);
        }
        return;
    }

    // 2 and 3. Steady load.
    report.extend(steady(&broker, &sink, 10_000, sizes.steady_secs));

    // 5. Idle (before the drain, which stops this InfluxDB).
    report.extend(idle(&broker, &influx, idle_secs));

    // 6. The rates gateways see.
    report.extend(rates(&broker, &influx, quick));

    // 9. What the card sees.
    report.extend(card(&broker, &influx, quick));

    // 7. A spool backlog against direct POSTs.
    let mut influx = influx;
    // 10. Days of runway.
    report.extend(runway::runway(&broker, &mut influx, runway_hours));
    report.extend(runway::pack_costs(&broker));
    report.extend(runway::codecs());
    report.extend(drain_vs_direct(
        &broker,
        &mut influx,
        sizes.spool_drain,
        sizes.reps,
    ));

    // 8. The armv7 build under qemu (before the drain, which stops InfluxDB
    // and takes the broker's sessions).
    report.extend(arm_under_qemu(
        &broker,
        &sink,
        sizes.arm_backlog,
        sizes.reps.min(3),
    ));

    // 4. Drain after an outage.
    report.extend(drain_after_outage(
        &broker,
        influx,
        sizes.drain_ingest,
        sizes.outage_secs,
    ));

    println!(
        "\n## leasegate pipeline benchmark{}",
        if quick {
            " (--quick: smoke run, not figures)"
        } else {
            ""
        }
    );
    println!("machine: {}", machine());
    for line in report.0 {
        println!("- {line}");
    }
}

/// Phase 1's starts into InfluxDB 1.x. With two builds, each goes once
/// first and once second: the first writer of a run also has the server
/// create the shard and warm up.
fn into_influx(
    builds: &[(&str, Vec<OsString>)],
    broker: &Mosquitto,
    influx: &Influx,
    n: u64,
    plain: f64,
) -> Vec<String> {
    let passes = builds.len();
    let mut rates = vec![Vec::new(); builds.len()];
    for pass in 0..passes {
        let mut order: Vec<usize> = (0..builds.len()).collect();
        order.rotate_left(pass);
        for i in order {
            // Each start its own measurement: the same points written
            // again would overwrite the first start's, and the count never
            // grow.
            let measurement = if passes == 2 {
                format!("tput_influx_{}_{pass}", builds[i].0)
            } else {
                "tput_influx".to_owned()
            };
            let (to_influx, ..) = leasegate_backlog_rate(
                &builds[i].1,
                broker,
                &influx.url(),
                "database = \"sensors\"\nusername = \"writer\"\npassword = \"writer-pw\"\n",
                n,
                &measurement,
                Duration::from_millis(50),
                || influx.count("sensors", &measurement, "seq"),
            );
            rates[i].push(to_influx);
        }
    }
    let mut lines = Vec::new();
    for (i, (name, _)) in builds.iter().enumerate() {
        let label = if passes == 2 {
            format!(" ({name} build, first and second)")
        } else {
            String::new()
        };
        let each: Vec<String> = rates[i].iter().map(|r| round(*r).to_string()).collect();
        let mean = rates[i].iter().sum::<f64>() / rates[i].len() as f64;
        lines.push(format!(
            "leasegate{label} -> InfluxDB 1.x: {} points/s, ratio to plain {:.2}",
            each.join(" and "),
            mean / plain
        ));
    }
    if passes == 2 {
        lines.push(format!(
            "new/old into InfluxDB 1.x: {:.2} (sums of both orders)",
            rates[0].iter().sum::<f64>() / rates[1].iter().sum::<f64>()
        ));
    }
    lines
}

/// The figures, printed as they come (for progress) and together at the end.
#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    fn push(&mut self, line: String) {
        eprintln!("bench: {line}");
        self.0.push(line);
    }

    fn extend(&mut self, lines: Vec<String>) {
        lines.into_iter().for_each(|l| self.push(l));
    }
}

/// The middle value (sorts `xs`).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn round(x: f64) -> u64 {
    x.round() as u64
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb >> 20);
    format!(
        "{cpu}, {cores} cores, {mem} GiB, {}",
        std::env::consts::ARCH
    )
}

/// One sensor point per message, as most sensors publish.
fn message(measurement: &str, i: u64) -> (String, Vec<u8>) {
    let line = format!(
        "{measurement},sensor=s{:03} seq={i}i,value={}.{} {}",
        i % 100,
        i % 1000,
        i % 7,
        1_700_000_000_000_000_000u64 + i
    );
    // Each phase has its own topics, so no session queues another's load.
    (
        format!("bench/{measurement}/{}", i % 100),
        line.into_bytes(),
    )
}

/// Publishes `n` messages from 4 publishers in parallel, each waiting for
/// its PUBACKs.
fn preload(broker: &Mosquitto, measurement: &str, n: u64) -> u64 {
    let mut bytes = 0;
    let parts: Vec<Vec<(String, Vec<u8>)>> = (0..4)
        .map(|p| {
            (0..n)
                .filter(|i| i % 4 == p)
                .map(|i| message(measurement, i))
                .collect()
        })
        .collect();
    for part in &parts {
        bytes += part.iter().map(|(_, p)| p.len() as u64).sum::<u64>();
    }
    std::thread::scope(|s| {
        for (p, part) in parts.into_iter().enumerate() {
            let port = broker.port;
            std::thread::Builder::new()
                .name(format!("bench-pub-{p}"))
                .spawn_scoped(s, move || {
                    publish_all(
                        port,
                        &format!("bench-pub-{p}"),
                        part,
                        Duration::from_secs(300),
                    )
                })
                .unwrap();
        }
    });
    bytes
}

/// Connects a persistent-session subscriber, subscribes, and (with
/// `count`) counts messages until `count` arrive; returns the elapsed time
/// from connecting.
fn subscriber(port: u16, client_id: &str, count: Option<u64>) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(30));
        let started = Instant::now();
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        client
            .subscribe("bench/plain/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        let mut seen = 0;
        loop {
            let event = tokio::time::timeout_at(deadline, eventloop.poll())
                .await
                .expect("plain subscriber timed out")
                .expect("plain subscriber connection");
            match event {
                Event::Incoming(Packet::SubAck(_)) if count.is_none() => break,
                Event::Incoming(Packet::Publish(_)) => {
                    seen += 1;
                    if Some(seen) == count {
                        break;
                    }
                }
                _ => {}
            }
        }
        let elapsed = started.elapsed();
        client.disconnect().await.ok();
        let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
        elapsed
    })
}

fn plain_subscriber_rate(broker: &Mosquitto, n: u64) -> f64 {
    subscriber(broker.port, "bench-plain", None);
    preload(broker, "plain", n);
    let took = subscriber(broker.port, "bench-plain", Some(n));
    // Leave the session clean for later phases.
    let _ = subscriber_unsubscribe(broker.port, "bench-plain");
    n as f64 / took.as_secs_f64()
}

/// Ends a persistent session so the broker stops queueing for it.
fn subscriber_unsubscribe(port: u16, client_id: &str) -> Option<()> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(true);
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    for event in connection.iter().take(10) {
        if matches!(event, Ok(Event::Incoming(Packet::ConnAck(_)))) {
            break;
        }
    }
    client.disconnect().ok()
}

/// The messages each start of a daemon took in, from its stop lines.
fn messages_in(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split_once("stopped: ")?.1.split_once(" messages in"))
        .filter_map(|(n, _)| n.parse().ok())
        .collect()
}

/// `BENCH_KEEP_LOG=PATH` keeps each daemon's log, appended to
/// `PATH.<measurement>` (every round of a phase, in order).
fn keep_log(measurement: &str, log: &str) {
    use std::io::Write as _;
    if let Ok(path) = std::env::var("BENCH_KEEP_LOG") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{path}.{measurement}"))
            .unwrap();
        writeln!(file, "--- a daemon's log ---\n{log}").unwrap();
    }
}

/// The daemon under test; `BENCH_LOG` sets its log level (default info).
fn start_daemon(config: &str) -> Daemon {
    start_daemon_as(support::leasegate_argv(), config)
}

/// The same with `program` (a binary, or an emulator and a binary).
fn start_daemon_as(program: Vec<OsString>, config: &str) -> Daemon {
    let level = std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into());
    Daemon::start_program(program, tempfile::tempdir().unwrap(), config, &level)
}

/// A daemon taking the messages of one phase (`bench/<measurement>/#`).
fn daemon_config(broker: &Mosquitto, influx_url: &str, target: &str, measurement: &str) -> String {
    format!(
        "{}[influxdb]\napi = \"v1\"\nurl = \"{influx_url}\"\n{target}",
        gateway_head(
            broker,
            &format!("bench-{measurement}"),
            &format!("bench/{measurement}/#")
        )
    )
}

/// Starts leasegate (it subscribes), stops it, queues `n` messages, starts
/// it again and times until `written()` reaches `n`. Returns points/s,
/// CPU per point (µs) and the daemon's final log.
// One call per measurement, each a different mix of these; a struct
// for them is the cleaner shape, left for a later change.
#[allow(clippy::too_many_arguments)]
fn leasegate_backlog_rate(
    program: &[OsString],
    broker: &Mosquitto,
    url: &str,
    target: &str,
    n: u64,
    measurement: &str,
    poll_every: Duration,
    written: impl Fn() -> u64,
) -> (f64, f64, String) {
    let config = daemon_config(broker, url, target, measurement);
    let mut daemon = start_daemon_as(program.to_vec(), &config);
    assert!(
        daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    assert!(daemon.terminate(Duration::from_secs(10)).is_some());
    let before = written();
    preload(broker, measurement, n);
    let started = Instant::now();
    daemon.restart();
    let perf = Observer::attach(measurement, daemon.pid(), 2999);
    // The last batch is partial and waits out flush_interval for more;
    // that wait is not throughput, so the clock stops at the last full one.
    let counted = n - BATCH_LINES;
    // When the first point lands splits the figure into start-up (spawn,
    // connect, subscribe, first batch) and the stream itself.
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while written() < before + counted && Instant::now() < deadline {
        if first.is_none() && written() > before {
            first = Some(started.elapsed());
        }
        std::thread::sleep(poll_every);
    }
    let took = started.elapsed();
    let first = first.unwrap_or(took);
    perf.stop();
    let proc = Proc { pid: daemon.pid() };
    let cpu = proc.cpu();
    let cpu_per_point = cpu.as_secs_f64() * 1e6 / counted as f64;
    let threads = proc
        .threads_cpu()
        .iter()
        .filter(|(_, cpu)| *cpu >= Duration::from_millis(5))
        .map(|(name, cpu)| format!("{name} {:.2}", cpu.as_secs_f64() * 1e6 / counted as f64))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "bench: ({measurement}: leasegate used {cpu_per_point:.2} us of CPU per point ({threads}), {:.0}% of one core; first point after {} ms, then {} points/s)",
        cpu.as_secs_f64() / took.as_secs_f64() * 100.0,
        first.as_millis(),
        round(counted as f64 / (took - first).as_secs_f64().max(1e-3)),
    );
    assert!(
        wait_until(Duration::from_secs(60), || written() >= before + n),
        "only {} of {n} arrived\n{}",
        written() - before,
        daemon.log()
    );
    assert!(daemon.terminate(Duration::from_secs(10)).is_some());
    keep_log(measurement, &daemon.log());
    (
        counted as f64 / took.as_secs_f64(),
        cpu_per_point,
        daemon.log(),
    )
}

/// Phase 8: the armv7 static build under user-mode qemu and this
/// machine's build take turns on the same backlog into the counting sink.
/// The armv7 build under its emulator (BENCH_ARM_BIN, BENCH_ARM_RUNNER),
/// and the emulator's name; why not, if the build is not there.
fn arm_program() -> Result<(Vec<OsString>, String), String> {
    let binary = std::env::var("BENCH_ARM_BIN")
        .unwrap_or_else(|_| "target/cross/armv7-unknown-linux-musleabihf/release/leasegate".into());
    let binary = std::path::absolute(&binary).unwrap_or_else(|_| binary.clone().into());
    if !binary.is_file() {
        return Err(format!(
            "skipped, no {} (`cross/build.sh armv7-unknown-linux-musleabihf` makes it)",
            binary.display()
        ));
    }
    let runner = std::env::var("BENCH_ARM_RUNNER").unwrap_or_else(|_| "qemu-arm".into());
    Ok((
        vec![OsString::from(&runner), binary.into_os_string()],
        runner,
    ))
}

fn arm_under_qemu(broker: &Mosquitto, sink: &CountingSink, n: u64, reps: usize) -> Vec<String> {
    let (arm, runner) = match arm_program() {
        Ok(arm) => arm,
        Err(skipped) => return vec![format!("armv7 under qemu: {skipped}")],
    };
    let native = support::leasegate_argv();
    let (mut native_cpu, mut arm_cpu, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut native_rate, mut arm_rate) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let one = |program: &[OsString], name: &str| {
            leasegate_backlog_rate(
                program,
                broker,
                &sink.url(),
                SINK_DB,
                n,
                &format!("arch_{name}_{rep}"),
                Duration::from_millis(2),
                || sink.lines(),
            )
        };
        let (x_rate, x_cpu, _) = one(&native, "native");
        let (a_rate, a_cpu, _) = one(&arm, "armv7");
        eprintln!(
            "bench: (armv7 round {rep}: native {x_cpu:.2} us/pt, armv7 under {runner} {a_cpu:.2} us/pt, ratio {:.1})",
            a_cpu / x_cpu
        );
        native_cpu.push(x_cpu);
        arm_cpu.push(a_cpu);
        ratios.push(a_cpu / x_cpu);
        native_rate.push(x_rate);
        arm_rate.push(a_rate);
    }
    ratios.sort_by(f64::total_cmp);
    vec![format!(
        "armv7 static build under {runner} vs this machine's build, {n}-point backlog into the counting sink, alternated {reps}x: CPU per point {:.1} us vs {:.2} us, ratio {:.1} (from {:.1} to {:.1}); {} vs {} points/s",
        median(&mut arm_cpu),
        median(&mut native_cpu),
        median(&mut ratios.clone()),
        ratios.first().unwrap(),
        ratios.last().unwrap(),
        round(median(&mut arm_rate)),
        round(median(&mut native_rate)),
    )]
}

/// Publishes at `rate` messages/s until `stop` is set; returns payload
/// bytes and messages sent through `sent`.
fn paced_publisher(
    port: u16,
    measurement: String,
    rate: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("bench-paced".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut options = MqttOptions::new("bench-paced", "127.0.0.1", port);
                options.set_inflight(1000).set_clean_session(true);
                let (client, mut eventloop) = AsyncClient::new(options, 10_000);
                let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
                // 100 ticks a second, each publishing its share.
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let started = Instant::now();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                    while i < due {
                        let (topic, payload) = message(&measurement, i);
                        bytes.fetch_add(payload.len() as u64, Ordering::SeqCst);
                        client
                            .publish(topic, QoS::AtLeastOnce, false, payload)
                            .await
                            .unwrap();
                        i += 1;
                        sent.store(i, Ordering::SeqCst);
                    }
                }
                // The queued publishes go out before the disconnect; the
                // driver ends when the broker closes the connection.
                client.disconnect().await.ok();
                let _ = tokio::time::timeout(Duration::from_secs(30), driver).await;
            });
        })
        .unwrap()
}

struct Proc {
    pid: u32,
}

impl Proc {
    fn rss_kib(&self) -> u64 {
        procfs::field(&format!("/proc/{}/status", self.pid), "VmRSS:")
    }

    /// User plus system CPU time, to the nanosecond: `/proc/PID/stat`
    /// counts in 10 ms ticks, which at 100 points/s over 12 s is a sixth
    /// of the figure. Its threads' own counters (`schedstat`) are exact
    /// but lose a thread that has exited, so the larger of the two counts.
    fn cpu(&self) -> Duration {
        let threads: u64 = threads_of(self.pid).iter().map(|(_, ns, _)| ns).sum();
        procfs::cpu_time(self.pid).max(Duration::from_nanos(threads))
    }

    /// CPU time of each thread by name (threads of one name summed,
    /// from [`threads_of`]): where a build's CPU goes.
    fn threads_cpu(&self) -> Vec<(String, Duration)> {
        let mut threads: Vec<(String, Duration)> = Vec::new();
        for (name, ns, _) in threads_of(self.pid) {
            let name = name.split('/').next().unwrap_or_default().to_owned();
            match threads.iter_mut().find(|(n, _)| *n == name) {
                Some((_, cpu)) => *cpu += Duration::from_nanos(ns),
                None => threads.push((name, Duration::from_nanos(ns))),
            }
        }
        threads.sort_by_key(|t| std::cmp::Reverse(t.1));
        threads
    }

    /// Bytes this process caused to be written to the block device.
    fn write_bytes(&self) -> u64 {
        procfs::field(&format!("/proc/{}/io", self.pid), "write_bytes:")
    }
}

fn steady(broker: &Mosquitto, sink: &CountingSink, rate: u64, secs: u64) -> Vec<String> {
    let config = daemon_config(broker, &sink.url(), SINK_DB, "steady");
    let mut daemon = start_daemon(&config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
    let proc = Proc { pid: daemon.pid() };
    let base = sink.lines();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let publisher = paced_publisher(
        broker.port,
        "steady".into(),
        rate,
        stop.clone(),
        sent.clone(),
        bytes.clone(),
    );
    // Warm up, then measure over the window.
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, lines0, disk0, t0) = (proc.cpu(), sink.lines(), proc.write_bytes(), Instant::now());
    let mut max_rss = 0;
    let mut samples = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        let rss = proc.rss_kib();
        max_rss = max_rss.max(rss);
        samples.push(rss);
    }
    let (cpu1, lines1, disk1, window) =
        (proc.cpu(), sink.lines(), proc.write_bytes(), t0.elapsed());
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    let total = sent.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(60), || sink.lines() >= base + total),
        "steady load did not arrive: {} of {total}\n{}",
        sink.lines() - base,
        daemon.log()
    );
    assert!(daemon.terminate(Duration::from_secs(10)).is_some());
    let log = daemon.log();
    let points = lines1 - lines0;
    let per_point = (cpu1 - cpu0).as_secs_f64() / points.max(1) as f64;
    let payload = bytes.load(Ordering::SeqCst);
    let appended = final_counter(&log, "bytes appended");
    samples.sort_unstable();
    let median = samples.get(samples.len() / 2).copied().unwrap_or(0);
    vec![
        format!(
            "steady load: offered {rate} points/s, delivered {} points/s over {:.0} s",
            round(points as f64 / window.as_secs_f64()),
            window.as_secs_f64()
        ),
        format!(
            "resident memory at that load: {:.1} MiB at most, {:.1} MiB median (target under 20 MiB)",
            max_rss as f64 / 1024.0,
            median as f64 / 1024.0
        ),
        format!(
            "CPU time per point: {:.2} us ({:.0}% of one core)",
            per_point * 1e6,
            (cpu1 - cpu0).as_secs_f64() / window.as_secs_f64() * 100.0
        ),
        format!(
            "write amplification: spool {:.2} bytes appended per payload byte; block device {:.2} bytes per payload byte in the window ({} payload bytes in all)",
            appended as f64 / payload.max(1) as f64,
            (disk1 - disk0) as f64
                / (points as f64 * payload as f64 / total.max(1) as f64).max(1.0),
            payload
        ),
    ]
}

/// CPU time (ns, exact: /proc/PID/task/*/schedstat) and context switches
/// (voluntary and not) of every thread of `pid`, by thread name.
fn threads_of(pid: u32) -> Vec<(String, u64, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .map(|t| {
            let dir = t.path();
            let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let ns = std::fs::read_to_string(dir.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
                .unwrap_or(0);
            let status = dir.join("status").display().to_string();
            let switches = procfs::field(&status, "voluntary_ctxt_switches:")
                + procfs::field(&status, "nonvoluntary_ctxt_switches:");
            (
                format!("{}/{}", name.trim(), t.file_name().to_string_lossy()),
                ns,
                switches,
            )
        })
        .collect()
}

/// One idle daemon: subscribed, a few points written, then `secs` of
/// nothing. Returns its CPU share of one core, wakeups per second, and the
/// threads that woke.
fn idle_window(daemon: &Daemon, secs: u64) -> (f64, f64, String) {
    let before = threads_of(daemon.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after = threads_of(daemon.pid());
    let window = t0.elapsed().as_secs_f64();
    let (mut cpu, mut switches, mut who) = (0u64, 0u64, Vec::new());
    for (name, ns, sw) in &after {
        let (ns0, sw0) = before
            .iter()
            .find(|(n, ..)| n == name)
            .map_or((0, 0), |(_, ns, sw)| (*ns, *sw));
        cpu += ns - ns0.min(*ns);
        switches += sw - sw0.min(*sw);
        if sw > &sw0 {
            let thread = name.split('/').next().unwrap_or_default();
            who.push(format!("{thread} {}", sw - sw0));
        }
    }
    (
        cpu as f64 / 1e9 / window * 100.0,
        switches as f64 / window,
        if who.is_empty() {
            "none".into()
        } else {
            who.join(", ")
        },
    )
}

/// What an idle, connected daemon costs (target: under 0.05% of a core,
/// at most one wakeup per second): with static credentials, and enrolled
/// with a lease of an hour.
fn idle(broker: &Mosquitto, influx: &Influx, secs: u64) -> Vec<String> {
    let mut out = Vec::new();
    let config = daemon_config(
        broker,
        &influx.url(),
        "database = \"sensors\"\nusername = \"writer\"\npassword = \"writer-pw\"\n",
        "idle_static",
    );
    let mut daemon = start_daemon(&config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
    publish_all(
        broker.port,
        "idle-pub",
        (0..10).map(|i| message("idle_static", i)).collect(),
        Duration::from_secs(30),
    );
    influx.assert_arrives("idle_static", 10, Duration::from_secs(20), &daemon);
    std::thread::sleep(Duration::from_secs(3));
    let (cpu, wakeups, who) = idle_window(&daemon, secs);
    assert!(daemon.terminate(Duration::from_secs(10)).is_some());
    out.push(format!(
        "idle, static credentials, over {secs} s: {cpu:.4}% of one core, {wakeups:.2} wakeups/s (threads that woke: {who})"
    ));

    let authority = support::authority::AuthorityServer::start(&format!(
        "{}{}",
        support::authority::v1_backend(
            "main",
            &influx.url(),
            support::ADMIN_USER,
            support::ADMIN_PASSWORD
        ),
        support::authority::role("sensor", "iot-sensor", "main", "database", "sensors")
    ));
    let config = format!(
        "{}[lease]\nttl = \"1h\"\n",
        gateway_head(broker, "bench-idle-leased", "bench/idle_leased/#")
    );
    let mut daemon = start_daemon(&config);
    assert!(daemon.wait_for_log("waiting for a ticket", 1, Duration::from_secs(20)));
    let tickets = daemon.dir.path().join("state/tickets");
    std::fs::write(
        tickets.join("gw.ticket"),
        authority.ticket("iot-sensor", &[]),
    )
    .unwrap();
    assert!(
        daemon.wait_for_log("obtained", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    publish_all(
        broker.port,
        "idle-pub-2",
        (0..10).map(|i| message("idle_leased", i)).collect(),
        Duration::from_secs(30),
    );
    influx.assert_arrives("idle_leased", 10, Duration::from_secs(20), &daemon);
    std::thread::sleep(Duration::from_secs(3));
    let (cpu, wakeups, who) = idle_window(&daemon, secs);
    assert!(daemon.terminate(Duration::from_secs(10)).is_some());
    out.push(format!(
        "idle, enrolled with a 1 h lease, over {secs} s: {cpu:.4}% of one core, {wakeups:.2} wakeups/s (threads that woke: {who})"
    ));
    out
}

fn drain_after_outage(
    broker: &Mosquitto,
    mut influx: Influx,
    rate: u64,
    outage_secs: u64,
) -> Vec<String> {
    let config = daemon_config(
        broker,
        &influx.url(),
        "database = \"sensors\"\nusername = \"writer\"\npassword = \"writer-pw\"\n",
        "drain",
    );
    let mut daemon = start_daemon(&config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let publisher = paced_publisher(
        broker.port,
        "drain".into(),
        rate,
        stop.clone(),
        sent.clone(),
        Arc::new(AtomicU64::new(0)),
    );
    let count = |influx: &Influx| influx.count("sensors", "drain", "seq");
    std::thread::sleep(Duration::from_secs(3));
    influx.stop();
    std::thread::sleep(Duration::from_secs(outage_secs));
    influx.restart();
    let started = Instant::now();
    let written_at_restart = count(&influx);
    let backlog = sent.load(Ordering::SeqCst) - written_at_restart;
    // Caught up: what is left is no more than one flush interval's worth.
    let caught_up = wait_until(Duration::from_secs(300), || {
        let sent = sent.load(Ordering::SeqCst);
        sent.saturating_sub(count(&influx)) <= rate
    });
    let took = started.elapsed();
    let drained = count(&influx) - written_at_restart;
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    let total = sent.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(120), || count(&influx) >= total),
        "after the outage only {} of {total} points arrived\n{}",
        count(&influx),
        daemon.log()
    );
    assert!(daemon.terminate(Duration::from_secs(10)).is_some());
    assert!(caught_up, "the backlog did not drain\n{}", daemon.log());
    let drain_rate = drained as f64 / took.as_secs_f64();
    vec![
        format!(
            "backlog after a {outage_secs} s InfluxDB outage at {rate} points/s: {backlog} points, caught up in {:.1} s",
            took.as_secs_f64()
        ),
        format!(
            "drain rate: {} points/s written while catching up, {:.1}x the ingest rate (target at least 5x); all {total} points arrived",
            round(drain_rate),
            drain_rate / rate as f64
        ),
    ]
}

/// An HTTP/1.1 server that answers 204 to every request and counts the
/// lines in the bodies (gzip or not): InfluxDB's write contract at its
/// cheapest, to show what leasegate itself costs.
struct CountingSink {
    port: u16,
    lines: Arc<AtomicU64>,
}

impl CountingSink {
    fn start() -> CountingSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let lines = Arc::new(AtomicU64::new(0));
        let counter = lines.clone();
        std::thread::Builder::new()
            .name("bench-sink".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let counter = counter.clone();
                    std::thread::Builder::new()
                        .name("bench-sink-conn".into())
                        .spawn(move || {
                            let _ = serve_counting(conn, &counter);
                        })
                        .unwrap();
                }
            })
            .unwrap();
        CountingSink { port, lines }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn lines(&self) -> u64 {
        self.lines.load(Ordering::SeqCst)
    }
}

fn serve_counting(conn: TcpStream, lines: &AtomicU64) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut length = 0usize;
        let mut gzip = false;
        let mut first = true;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" && !first {
                break;
            }
            first = false;
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("content-encoding:") && lower.contains("gzip") {
                gzip = true;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let counted = if gzip {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut raw)?;
            raw.iter().filter(|&&b| b == b'\n').count()
        } else {
            body.iter().filter(|&&b| b == b'\n').count()
        };
        lines.fetch_add(counted as u64, Ordering::SeqCst);
        out.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")?;
    }
}

/// InfluxDB 1.x as the benchmark's writer account sees it.
const INFLUX_TARGET: &str =
    "database = \"sensors\"\nusername = \"writer\"\npassword = \"writer-pw\"\n";

/// One cell of the "rates gateways see" table.
struct AtRate {
    /// Block-device bytes per payload byte over the window.
    block: f64,
    cpu_us: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mib: f64,
    delivered: f64,
    /// Context switches of all threads per point.
    wakeups: f64,
    /// Bytes the card's loop device wrote per payload byte (the journal
    /// and metadata included); 0 when the state dir is not on one.
    device: f64,
}

/// leasegate at `rate` one-point messages a second with `spool` settings,
/// into InfluxDB 1.x, measured over `secs` after a warm-up; with the state
/// dir on `card` if given.
fn at_rate(
    broker: &Mosquitto,
    influx: &Influx,
    rate: u64,
    spool: &str,
    secs: u64,
    measurement: &str,
    card: Option<&LoopFs>,
) -> AtRate {
    let mut config = format!(
        "{}[spool]\n{spool}",
        daemon_config(broker, &influx.url(), INFLUX_TARGET, measurement)
    );
    if let Some(card) = card {
        config = config.replace("{dir}/state", &card.path().display().to_string());
    }
    let device = || card.map_or(0, |c| c.written_bytes());
    let mut daemon = start_daemon(&config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
    let proc = Proc { pid: daemon.pid() };
    let publisher = Paced::start(broker.port, measurement, rate);
    // Past the first seconds, in which the reader keeps receipt times
    // precise until it knows whether the stream needs them: a gateway's
    // steady state is what counts.
    std::thread::sleep(Duration::from_secs(6));
    if let Some(card) = card.filter(|_| rate >= 1000) {
        // And past a new card's one-time cost: its second segment file is
        // written full of zeros once (from then on files are recycled),
        // which at this rate falls in the first minute.
        let second = card.path().join("spool/00000000000000000002.seg");
        assert!(wait_until(Duration::from_secs(150), || second.exists()));
        std::thread::sleep(Duration::from_secs(2));
    }
    let perf = Observer::attach(measurement, daemon.pid(), 999);
    let threads0 = threads_of(daemon.pid());
    let start = (
        proc.cpu(),
        proc.write_bytes(),
        publisher.sent(),
        publisher.bytes(),
        Instant::now(),
    );
    let device0 = device();
    let mut max_rss = 0;
    while start.4.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        max_rss = max_rss.max(proc.rss_kib());
    }
    let (cpu, disk, n, payload, window) = (
        proc.cpu() - start.0,
        proc.write_bytes() - start.1,
        publisher.sent() - start.2,
        publisher.bytes() - start.3,
        start.4.elapsed(),
    );
    let device = device() - device0;
    let (wakeups, by_thread) = per_thread(&threads0, &threads_of(daemon.pid()), n.max(1));
    eprintln!("bench: ({measurement}: per point, by thread: {by_thread})");
    perf.stop();
    let total = publisher.stop();
    influx.assert_arrives(measurement, total, Duration::from_secs(60), &daemon);
    assert!(daemon.terminate(Duration::from_secs(10)).is_some());
    keep_log(measurement, &daemon.log());
    let (p50, p99) = ack_delays(&daemon.log());
    AtRate {
        block: disk as f64 / payload.max(1) as f64,
        cpu_us: cpu.as_secs_f64() * 1e6 / n.max(1) as f64,
        p50_ms: p50,
        p99_ms: p99,
        rss_mib: max_rss as f64 / 1024.0,
        delivered: n as f64 / window.as_secs_f64(),
        wakeups,
        device: device as f64 / payload.max(1) as f64,
    }
}

/// Phase 9 (`--card-only`): what a gateway's card sees. The state dir on
/// a fresh ext4 filesystem (mkfs defaults but for lazy init, default mount
/// options) on a loop device, default configuration, one-point messages at
/// 10, 100 and 1,000 a second into InfluxDB 1.x: the bytes the device
/// wrote (the journal and metadata included) per payload byte, beside
/// the process's own `write_bytes`, and what that makes a day.
fn card(broker: &Mosquitto, influx: &Influx, quick: bool) -> Vec<String> {
    let (reps, secs) = if quick { (1, 8) } else { (3, 60) };
    let secs = rate_secs(secs);
    let only = only_rates();
    let mut out = vec![
        format!(
            "card (state dir on ext4 on a loop device, default config, {secs} s windows, median of {reps}):"
        ),
        "| rate | device bytes per payload byte (journal included) | process write_bytes per payload byte | device writes per day |".into(),
        "| --- | --- | --- | --- |".into(),
    ];
    for rate in [10, 100, 1000] {
        if only.as_ref().is_some_and(|o| !o.contains(&rate)) {
            continue;
        }
        let cells: Vec<(AtRate, f64)> = (0..reps)
            .map(|rep| {
                let card = LoopFs::new(256 << 20, Io::Buffered);
                let m = format!("card_{rate}_{rep}");
                let cell = at_rate(broker, influx, rate, "", secs, &m, Some(&card));
                let payload_per_s = rate as f64 * message(&m, 0).1.len() as f64;
                (cell, payload_per_s)
            })
            .collect();
        let device = med_of(cells.iter().map(|c| c.0.device));
        let proc = med_of(cells.iter().map(|c| c.0.block));
        let per_day = device * med_of(cells.iter().map(|c| c.1)) * 86_400.0;
        out.push(format!(
            "| {rate}/s | {device:.2}x | {proc:.2}x | {:.0} MiB |",
            per_day / f64::from(1 << 20)
        ));
    }
    out.extend(growth_cost());
    out
}

/// What a sync of a file that grows costs the card beyond the same sync
/// of a preallocated one (the spool's `GROWTH_PER_SYNC`): appends of a
/// few sizes, each followed by fdatasync, into a new file and into one
/// written full of zeros and synced first, on a fresh ext4 loop device.
fn growth_cost() -> Vec<String> {
    use std::os::unix::fs::FileExt as _;
    const SYNCS: u64 = 300;
    let card = LoopFs::new(128 << 20, Io::Buffered);
    let mut out = vec![
        format!("device bytes per fdatasync after an append ({SYNCS} each, journal included):"),
        "| append | growing file | preallocated file | growing costs more by |".into(),
        "| --- | --- | --- | --- |".into(),
    ];
    for record in [100usize, 1000, 12 << 10] {
        let bytes = vec![b'x'; record];
        let per_sync = |grow: bool| {
            let path = card.path().join(format!("f-{record}-{grow}"));
            let file = std::fs::File::create(&path).unwrap();
            if !grow {
                file.write_all_at(&vec![0; 8 << 20], 0).unwrap();
                file.sync_data().unwrap();
            }
            let before = card.written_bytes();
            for i in 0..SYNCS {
                file.write_all_at(&bytes, i * record as u64).unwrap();
                file.sync_data().unwrap();
            }
            (card.written_bytes() - before) as f64 / SYNCS as f64 / 1024.0
        };
        let (grown, preallocated) = (per_sync(true), per_sync(false));
        out.push(format!(
            "| {record} B | {grown:.1} KiB | {preallocated:.1} KiB | {:.1} KiB |",
            grown - preallocated
        ));
    }
    out
}

/// BENCH_RATE_SECS shortens (or lengthens) each rate window.
fn rate_secs(default: u64) -> u64 {
    std::env::var("BENCH_RATE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// BENCH_RATES=100,1000 runs only those rates (while tuning).
fn only_rates() -> Option<Vec<u64>> {
    std::env::var("BENCH_RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
}

fn med_of(xs: impl Iterator<Item = f64>) -> f64 {
    median(&mut xs.collect::<Vec<_>>())
}

/// Context switches per point of all threads between two
/// [`threads_of`] samples, and each thread's CPU (µs) and switches per
/// point, for the log.
fn per_thread(
    before: &[(String, u64, u64)],
    after: &[(String, u64, u64)],
    points: u64,
) -> (f64, String) {
    let (mut total, mut parts) = (0u64, Vec::new());
    for (name, ns, switches) in after {
        let (ns0, sw0) = before
            .iter()
            .find(|(n, ..)| n == name)
            .map_or((0, 0), |(_, ns, sw)| (*ns, *sw));
        let (ns, sw) = (ns.saturating_sub(ns0), switches.saturating_sub(sw0));
        total += sw;
        if sw > 0 {
            parts.push(format!(
                "{} {:.1} us, {:.2} switches",
                name.split('/').next().unwrap_or(name),
                ns as f64 / 1e3 / points as f64,
                sw as f64 / points as f64
            ));
        }
    }
    (total as f64 / points as f64, parts.join("; "))
}

/// The ack delays (ms) the daemon logged when it stopped.
fn ack_delays(log: &str) -> (f64, f64) {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("acks waited p50"))
        .unwrap_or_else(|| panic!("no ack delay in the log\n{log}"));
    let after = |key: &str| -> f64 {
        line.split(key)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1000.0
    };
    (after("p50 "), after("p99 "))
}

/// The median of `f` over the cells.
fn med(cells: &[AtRate], f: impl Fn(&AtRate) -> f64) -> f64 {
    let mut v: Vec<f64> = cells.iter().map(f).collect();
    median(&mut v)
}

/// The "rates gateways see" table, a full-speed figure of the same run to
/// compare with, and 1,000 points/s through a broker with Mosquitto's
/// default in-flight window.
fn rates(broker: &Mosquitto, influx: &Influx, quick: bool) -> Vec<String> {
    let (reps, secs) = if quick { (1, 5) } else { (3, 20) };
    let secs = rate_secs(secs);
    let mut out = Vec::new();
    let mut full = Vec::new();
    for rep in 0..reps {
        let (_, cpu, _) = leasegate_backlog_rate(
            &support::leasegate_argv(),
            broker,
            &influx.url(),
            INFLUX_TARGET,
            if quick { 20_000 } else { 100_000 },
            &format!("rates_full_{rep}"),
            Duration::from_millis(50),
            || influx.count("sensors", &format!("rates_full_{rep}"), "seq"),
        );
        full.push(cpu);
    }
    let full = median(&mut full);
    out.push(format!(
        "rates: full speed (a backlog into InfluxDB 1.x, fsync = batch): {full:.2} us of CPU per point (median of {reps})"
    ));
    out.push(
        "rates table (one-point messages of ~65 bytes from a paced QoS 1 publisher, into InfluxDB 1.x; median of the runs):"
            .into(),
    );
    out.push(
        "| rate | fsync | block-device bytes per payload byte | CPU per point | CPU vs full speed | wake-ups per point | ack delay p50 / p99 | RSS | delivered |"
            .into(),
    );
    out.push("| --- | --- | --- | --- | --- | --- | --- | --- | --- |".into());
    let policies = [
        ("batch (default)", "fsync = \"batch\"\n"),
        ("interval (1s)", "fsync = \"interval\"\n"),
        ("never", "fsync = \"never\"\n"),
    ];
    let only = only_rates();
    for rate in [10, 100, 1000] {
        if only.as_ref().is_some_and(|o| !o.contains(&rate)) {
            continue;
        }
        for (name, spool) in policies {
            // BENCH_FSYNC=batch runs only that policy (while tuning).
            if std::env::var("BENCH_FSYNC").is_ok_and(|f| !name.starts_with(f.as_str())) {
                continue;
            }
            let cells: Vec<AtRate> = (0..reps)
                .map(|rep| {
                    let m = format!("rates_{rate}_{}_{rep}", &name[..5]);
                    // 10/s needs a longer window to mean anything.
                    let window = if rate == 10 { secs * 2 } else { secs };
                    at_rate(broker, influx, rate, spool, window, &m, None)
                })
                .collect();
            let cpu = med(&cells, |c| c.cpu_us);
            out.push(format!(
                "| {rate}/s | {name} | {:.2}x | {cpu:.1} us | {:.1}x | {:.2} | {:.0} / {:.0} ms | {:.1} MiB | {:.0}/s |",
                med(&cells, |c| c.block),
                cpu / full,
                med(&cells, |c| c.wakeups),
                med(&cells, |c| c.p50_ms),
                med(&cells, |c| c.p99_ms),
                med(&cells, |c| c.rss_mib),
                med(&cells, |c| c.delivered),
            ));
        }
    }
    out.extend(small_window(influx, if quick { 5 } else { 30 }));
    out.extend(receipt_stamps(broker, influx, quick));
    out
}

/// How far from its publish time a point without a timestamp is stamped,
/// at 10, 100 and 1,000 messages a second from a publisher that notes
/// when each message left (default settings, into InfluxDB 1.x).
fn receipt_stamps(broker: &Mosquitto, influx: &Influx, quick: bool) -> Vec<String> {
    let mut out = vec![
        "receipt stamps (one-point messages without a timestamp; |stamp - publish time|, and the share of gaps between consecutive stamps within a quarter of the publisher's):".to_owned(),
        "| rate | points | p50 | p99 | max | gaps kept | CPU per point |".to_owned(),
        "| --- | --- | --- | --- | --- | --- | --- |".to_owned(),
    ];
    for (rate, secs) in [(10u64, 30u64), (100, 20), (1000, 10)] {
        let secs = if quick { secs.div_ceil(5) } else { secs };
        let measurement = format!("stamps_{rate}");
        // The stamps as taken: with static credentials they would wait
        // clock.max_wait for a kernel no NTP daemon keeps (as here).
        let config = daemon_config(broker, &influx.url(), INFLUX_TARGET, &measurement)
            + support::NO_CLOCK_WAIT;
        let mut daemon = start_daemon(&config);
        assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
        let mut publisher =
            support::RawPublisher::connect(broker.port, &format!("pub-{measurement}"));
        let n = rate * secs;
        let every = Duration::from_secs_f64(1.0 / rate as f64);
        let proc = Proc { pid: daemon.pid() };
        let cpu0 = proc.cpu();
        let start = Instant::now();
        let sent: Vec<i64> = (0..n)
            .map(|i| {
                let due = start + every.mul_f64(i as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let line = format!(
                    "{measurement},sensor=s{:03} seq={i}i,value={}.{}",
                    i % 100,
                    i % 1000,
                    i % 7
                );
                let at =
                    publisher.publish(&format!("bench/{measurement}/{}", i % 100), line.as_bytes());
                at.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
            })
            .collect();
        let cpu = (proc.cpu() - cpu0).as_secs_f64() * 1e6 / n as f64;
        publisher.finish();
        influx.assert_arrives(&measurement, n, Duration::from_secs(60), &daemon);
        assert!(daemon.terminate(Duration::from_secs(10)).is_some());
        let mut stamped = influx.stamped("sensors", &measurement, "seq");
        stamped.sort_by_key(|(_, seq)| *seq);
        let mut errors: Vec<f64> = stamped
            .iter()
            .map(|(t, seq)| (t - sent[*seq as usize]).abs() as f64 / 1e6)
            .collect();
        let kept = stamped
            .windows(2)
            .filter(|w| {
                let (stamp, publish) = (
                    w[1].0 - w[0].0,
                    sent[w[1].1 as usize] - sent[w[0].1 as usize],
                );
                (stamp - publish).abs() * 4 <= publish
            })
            .count();
        errors.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |q: f64| errors[((errors.len() - 1) as f64 * q).round() as usize];
        out.push(format!(
            "| {rate}/s | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1}% | {cpu:.1} us |",
            errors.len(),
            q(0.5),
            q(0.99),
            q(1.0),
            kept as f64 * 100.0 / (errors.len() - 1).max(1) as f64
        ));
    }
    out
}

/// 1,000 points/s through a Mosquitto with its default in-flight window
/// (20): the delivered rate, and the broker's stored messages
/// (`$SYS/broker/store/messages/count`) over the window.
fn small_window(influx: &Influx, secs: u64) -> Vec<String> {
    let broker = Mosquitto::start_with("", |_| {
        "max_inflight_messages 20\nsys_interval 1\n".to_owned()
    });
    let store = SysCounter::watch(broker.port, "$SYS/broker/store/messages/count");
    let rate = 1000;
    let measurement = "rates_window20";
    let config = daemon_config(&broker, &influx.url(), INFLUX_TARGET, measurement);
    let mut daemon = start_daemon(&config);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
    let proc = Proc { pid: daemon.pid() };
    let publisher = Paced::start(broker.port, measurement, rate);
    std::thread::sleep(Duration::from_secs(3));
    let (disk0, payload0, t0) = (proc.write_bytes(), publisher.bytes(), Instant::now());
    let mut samples = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(store.get());
    }
    let in_points = influx.count("sensors", measurement, "seq");
    let window = t0.elapsed().as_secs_f64();
    let (disk, payload) = (proc.write_bytes() - disk0, publisher.bytes() - payload0);
    let lag = publisher.sent().saturating_sub(in_points);
    let total = publisher.stop();
    influx.assert_arrives(measurement, total, Duration::from_secs(60), &daemon);
    assert!(daemon.terminate(Duration::from_secs(10)).is_some());
    let (p50, p99) = ack_delays(&daemon.log());
    let half = samples.len() / 2;
    let first: f64 = samples[..half].iter().sum::<u64>() as f64 / half.max(1) as f64;
    let second: f64 =
        samples[half..].iter().sum::<u64>() as f64 / (samples.len() - half).max(1) as f64;
    vec![format!(
        "Mosquitto with max_inflight_messages 20, {rate} points/s offered over {window:.0} s: broker store {first:.0} messages on average in the first half of the window, {second:.0} in the second (max {}); {lag} points not yet in InfluxDB at the end (one flush interval is ~{rate}); ack delay p50 {p50:.0} ms, p99 {p99:.0} ms; block device {:.2} bytes per payload byte",
        samples.iter().max().copied().unwrap_or(0),
        disk as f64 / payload.max(1) as f64,
    )]
}

/// A [`paced_publisher`] on `measurement`'s topics and what it sent.
struct Paced {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Paced {
    fn start(port: u16, measurement: &str, rate: u64) -> Paced {
        let (stop, sent, bytes) = Default::default();
        let thread = paced_publisher(
            port,
            measurement.into(),
            rate,
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&bytes),
        );
        Paced {
            stop,
            sent,
            bytes,
            thread,
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Stops it; returns how many messages it sent in all.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        self.sent.load(Ordering::SeqCst)
    }
}

/// The latest value of a numeric `$SYS` topic, followed on a thread of its
/// own for the life of the process (the broker ends it).
struct SysCounter(Arc<AtomicU64>);

impl SysCounter {
    fn watch(port: u16, topic: &'static str) -> SysCounter {
        let value = Arc::new(AtomicU64::new(0));
        let v = value.clone();
        std::thread::Builder::new()
            .name("bench-sys".into())
            .spawn(move || {
                let mut options = MqttOptions::new("bench-sys", "127.0.0.1", port);
                options.set_clean_session(true);
                let (client, mut connection) = rumqttc::Client::new(options, 10);
                client.subscribe(topic, QoS::AtMostOnce).unwrap();
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Some(n) = std::str::from_utf8(&p.payload)
                                .ok()
                                .and_then(|t| t.trim().parse().ok())
                            {
                                v.store(n, Ordering::SeqCst);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            })
            .unwrap();
        SysCounter(value)
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A tool watching the daemon during a measured window, for profiling:
/// `BENCH_PERF=DIR` records a perf profile to `DIR/perf-<phase>.data`;
/// `BENCH_ATTACH='cmd'` runs `cmd` under `sh -c` with `{pid}` and
/// `{phase}` replaced (`strace -c -f -p {pid}`, say). Stopped with SIGINT.
struct Observer(Option<std::process::Child>);

impl Observer {
    fn attach(phase: &str, pid: u32, hz: u32) -> Observer {
        let command = if let Ok(cmd) = std::env::var("BENCH_ATTACH") {
            // exec: the SIGINT goes to the tool, not to the shell.
            format!("exec {cmd}")
                .replace("{pid}", &pid.to_string())
                .replace("{phase}", phase)
        } else if let Ok(dir) = std::env::var("BENCH_PERF") {
            format!("exec perf record -F {hz} -g -o {dir}/perf-{phase}.data -p {pid} 2>/dev/null")
        } else {
            return Observer(None);
        };
        let child = std::process::Command::new("sh")
            .args(["-c", &command])
            .spawn()
            .expect("BENCH_ATTACH/BENCH_PERF command");
        // Attaching takes a moment; what it misses is not the window.
        std::thread::sleep(Duration::from_millis(200));
        Observer(Some(child))
    }

    fn stop(self) {
        if let Some(mut child) = self.0 {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

/// A daemon's `/metrics` value of `name` (0 if it is not up yet).
fn metric(port: u16, name: &str) -> u64 {
    let Ok(mut resp) = ureq::get(format!("http://127.0.0.1:{port}/metrics")).call() else {
        return 0;
    };
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// The drain of a spool backlog into InfluxDB 1.x against the same
/// InfluxDB taking direct 5,000-line POSTs, alternated, `reps` times in
/// one run. The backlog is `n` points spooled while InfluxDB was down; the
/// daemon is then restarted with InfluxDB up (so no retry backoff is
/// measured) and timed from its start, spool recovery included, until
/// InfluxDB has taken all but the last batch (as in
/// [`leasegate_backlog_rate`]). The direct POSTs carry the same lines,
/// uncompressed, one request at a time, as fast as InfluxDB answers.
fn drain_vs_direct(broker: &Mosquitto, influx: &mut Influx, n: u64, reps: usize) -> Vec<String> {
    let counted = n - BATCH_LINES;
    let (mut directs, mut drains, mut ratios, mut cpus) = (vec![], vec![], vec![], vec![]);
    let mut brokers = vec![];
    for rep in 0..reps {
        let direct = {
            let measurement = format!("direct_{rep}");
            let bodies: Vec<String> = (0..counted)
                .collect::<Vec<u64>>()
                .chunks(BATCH_LINES as usize)
                .map(|chunk| {
                    let mut body = String::new();
                    for &i in chunk {
                        body.push_str(&String::from_utf8(message(&measurement, i).1).unwrap());
                        body.push('\n');
                    }
                    body
                })
                .collect();
            let t0 = Instant::now();
            for body in &bodies {
                let (status, answer) = influx.write("sensors", body);
                assert_eq!(status, 204, "{answer}");
            }
            counted as f64 / t0.elapsed().as_secs_f64()
        };
        // The whole path too: a backlog queued in the broker's session.
        // Progress is read from the daemon, not by counting in InfluxDB:
        // a count every few ms takes InfluxDB's CPU from the writes.
        let mqtt_m = format!("mqttdrain_{rep}");
        let port = support::free_port();
        let (from_broker, ..) = leasegate_backlog_rate(
            &support::leasegate_argv(),
            broker,
            &influx.url(),
            &format!("{INFLUX_TARGET}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
            n,
            &mqtt_m,
            Duration::from_millis(20),
            || metric(port, "leasegate_points_written_total"),
        );
        assert!(
            wait_until(Duration::from_secs(60), || influx
                .count("sensors", &mqtt_m, "seq")
                == n),
            "{} of {n} points of the broker backlog in InfluxDB",
            influx.count("sensors", &mqtt_m, "seq")
        );
        let measurement = format!("spooldrain_{rep}");
        let port = support::free_port();
        let config = format!(
            "{}[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            daemon_config(broker, &influx.url(), INFLUX_TARGET, &measurement)
        );
        influx.stop();
        let mut daemon = start_daemon(&config);
        assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
        preload(broker, &measurement, n);
        assert!(
            wait_until(Duration::from_secs(120), || metric(
                port,
                "leasegate_points_in_total"
            ) >= n),
            "the backlog was not spooled\n{}",
            daemon.log()
        );
        assert!(daemon.terminate(Duration::from_secs(10)).is_some());
        influx.restart();
        let started = Instant::now();
        daemon.restart();
        let perf = Observer::attach(&measurement, daemon.pid(), 2999);
        let drained = wait_until(Duration::from_secs(300), || {
            metric(port, "leasegate_points_written_total") >= counted
        });
        let took = started.elapsed();
        perf.stop();
        assert!(drained, "the spool did not drain\n{}", daemon.log());
        let cpu = Proc { pid: daemon.pid() }.cpu();
        influx.assert_arrives(&measurement, n, Duration::from_secs(60), &daemon);
        assert!(daemon.terminate(Duration::from_secs(10)).is_some());
        let drain = counted as f64 / took.as_secs_f64();
        eprintln!(
            "bench: (round {rep}: direct POSTs {} points/s, spool drain {} points/s, ratio {:.2}, {:.2} us of CPU per point; broker backlog {} points/s, ratio {:.2})",
            round(direct),
            round(drain),
            drain / direct,
            cpu.as_secs_f64() * 1e6 / counted as f64,
            round(from_broker),
            from_broker / direct,
        );
        brokers.push(from_broker / direct);
        directs.push(direct);
        drains.push(drain);
        ratios.push(drain / direct);
        cpus.push(cpu.as_secs_f64() * 1e6 / counted as f64);
    }
    let list = |xs: &[f64]| {
        xs.iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        format!(
            "spool backlog of {n} points into InfluxDB 1.x: {} points/s from the daemon's start; direct 5,000-line POSTs to the same InfluxDB {} points/s; ratio drain/direct {:.2} (median of {reps} alternated rounds, ratios {}); {:.2} us of CPU per point",
            round(median(&mut drains)),
            round(median(&mut directs)),
            median(&mut ratios.clone()),
            list(&ratios),
            median(&mut cpus),
        ),
        format!(
            "a backlog of {n} messages queued in the broker, into the same InfluxDB: ratio to the direct POSTs {:.2} (median, ratios {})",
            median(&mut brokers.clone()),
            list(&brokers),
        ),
    ]
}
