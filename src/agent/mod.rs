//! The gateway daemon (`leasegate run`): MQTT in, disk spool, InfluxDB out.
//!
//! Three named threads do the work. `mqtt` runs the broker session on a
//! single-threaded tokio runtime ([`intake`]); `spool` decodes messages
//! ([`decode`]), appends them to the disk spool and acks them once
//! committed ([`appender`]); `writer` reads batches from the spool and writes them to
//! InfluxDB with blocking HTTP ([`writer`]). A point is acked to the broker
//! only once it is in the spool, and leaves the spool only once InfluxDB
//! has it. [`run`] owns the threads' lifetimes: it must return within the
//! configured shutdown bound after the [`Shutdown`] fires, and it never
//! exits the process itself (the binary decides exit codes).

mod appender;
mod deadletter;
mod decode;
pub mod health;
pub mod identity;
mod intake;
pub mod lease;
pub mod metrics;
mod oversize;
pub mod refusal;
mod sink;
pub mod spool;
mod stats;
pub mod status;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use sink::{Sink, WriteError};
pub use stats::Stats;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// Deliveries queued between intake and spool. QoS 1 messages are bounded
/// by the broker's in-flight window anyway; this bounds QoS 0 floods.
const QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot prepare the state directory {0}")]
    StateDir(std::path::PathBuf, #[source] std::io::Error),
    #[error("cannot open the spool")]
    Spool(#[source] spool::SpoolError),
    #[error("cannot start the {0} thread")]
    Spawn(&'static str, #[source] std::io::Error),
    #[error("the {0} thread stopped unexpectedly")]
    ThreadDied(&'static str),
    #[error("did not finish draining within {}", humantime::format_duration(*.0))]
    DrainTimeout(Duration),
}

/// Runs the daemon until `shutdown` fires, then drains within
/// `config.shutdown_timeout`. Returns the pipeline's counters.
/// A configuration reload (SIGHUP): the file to read again, and the flag
/// the signal handler sets.
pub struct Reload {
    pub path: std::path::PathBuf,
    pub requested: Arc<std::sync::atomic::AtomicBool>,
}

pub fn run(
    config: &Config,
    shutdown: Shutdown,
    reload: Option<Reload>,
) -> Result<Arc<Stats>, AgentError> {
    prepare_state_dir(&config.state_dir)?;
    if config.lease.is_some() {
        prepare_state_dir(&config.ticket_dir)?;
    }
    let (spool, recovery) = spool::Spool::open(spool::SpoolConfig {
        dir: config.state_dir.join("spool"),
        max_bytes: config.spool.max_bytes,
        fsync: config.spool.fsync,
        overflow: config.spool.overflow,
    })
    .map_err(AgentError::Spool)?;
    for damage in &recovery.damage {
        log::error!("spool damage: {damage}");
    }
    if recovery.points > 0 {
        log::info!(
            "spool holds {} points from before ({} bytes in {} segments); delivering them first",
            recovery.points,
            recovery.bytes,
            recovery.segments
        );
    }
    let spool = Arc::new(spool);
    let stats = Arc::new(Stats::new(config.mqtt.subscribe.len()));
    stats.health.start();
    if config.lease.is_none() {
        // No lease keeper with static credentials.
        stats.health.lease.set_idle(true);
    }
    let (delivery_tx, delivery_rx) = mpsc::channel(QUEUE);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();

    let dead_letters =
        deadletter::DeadLetters::new(&config.state_dir, config.dead_letter_max_bytes);
    log::info!(
        "rejected messages and refused lines go to {}",
        dead_letters.path().display()
    );
    let dead_letters = Arc::new(Mutex::new(dead_letters));

    let link = Arc::new(lease::LeaseLink::default());
    let (sink, keeper) = match (&config.influxdb, &config.lease) {
        (Some(influx), _) => {
            let sink = Arc::new(Sink::new(influx));
            log::info!("writing to {} with static credentials", sink.url());
            (sink, None)
        }
        (None, Some(l)) => {
            let sink = Arc::new(Sink::leased(l.gzip, l.timeout, link.clone()));
            let keeper = lease::LeaseKeeper {
                settings: lease::LeaseSettings {
                    state_dir: config.state_dir.clone(),
                    ticket_dir: config.ticket_dir.clone(),
                    lease: l.clone(),
                },
                sink: sink.clone(),
                link: link.clone(),
                shutdown: shutdown.clone(),
                stats: stats.clone(),
            };
            (sink, Some(keeper))
        }
        (None, None) => unreachable!("the config check gives one of the two"),
    };
    let keeper = match keeper {
        Some(k) => Some(spawn("lease", move || k.run())?),
        None => None,
    };
    let batch = Arc::new(Mutex::new(config.batch.clone()));
    let writer = writer::Writer {
        sink,
        batch: batch.clone(),
        spool: spool.clone(),
        shutdown: shutdown.clone(),
        stats: stats.clone(),
        dead_letters: dead_letters.clone(),
    };
    let writer = spawn("writer", move || writer.run())?;

    let (subscriptions, reloaded_subscriptions) =
        tokio::sync::watch::channel(config.mqtt.subscribe.clone());
    let appender = appender::Appender {
        spool: spool.clone(),
        dead_letters: dead_letters.clone(),
        deliveries: delivery_rx,
        decoder: decode::Decoder::new(
            config.mqtt.subscribe.clone(),
            config.mqtt.max_packet_size as usize,
            config.mqtt.point_limits,
        ),
        reload: reloaded_subscriptions.clone(),
        acks: ack_tx,
        shutdown: shutdown.clone(),
        stats: stats.clone(),
        record_bytes: appender::RECORD_BYTES
            .min(config.batch.max_bytes as usize)
            .min((config.spool.max_bytes / 8) as usize),
        record_points: config.batch.max_lines as u64,
    };
    let appender = spawn("spool", move || appender.run())?;

    let reporter = Arc::new(status::Reporter::new(
        &config.state_dir,
        config.lease.is_some(),
    ));
    let intake = intake::Intake {
        reload: reloaded_subscriptions,
        status: config.mqtt.publish_status.then(|| reporter.clone()),
        config: config.mqtt.clone(),
        deliveries: delivery_tx,
        acks: ack_rx,
        shutdown: shutdown.clone(),
        stats: stats.clone(),
        dead_letters,
    };
    let mqtt = spawn(
        "mqtt",
        move || match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(intake.run()),
            Err(e) => log::error!("cannot start the MQTT runtime: {e}"),
        },
    )?;

    let mut current = config.clone();
    let mut threads = vec![("writer", writer), ("spool", appender), ("mqtt", mqtt)];
    threads.extend(keeper.map(|k| ("lease", k)));
    let mut died = None;
    let status_thread = status::serve(
        &config.daemon_runtime_dir(),
        reporter.clone(),
        shutdown.clone(),
    );
    let metrics_thread = match config.metrics_listen {
        Some(listen) => {
            let sources = metrics::Sources {
                stats: stats.clone(),
                spool: spool.clone(),
                link: link.clone(),
                leased: config.lease.is_some(),
            };
            match metrics::serve(listen, sources, shutdown.clone()) {
                Ok(t) => Some(t),
                Err(e) => {
                    log::error!("no metrics endpoint on {listen}: {e}");
                    None
                }
            }
        }
        None => None,
    };
    // systemd hears READY=1 only once the spool is open (it is) and the
    // broker has confirmed the subscriptions: then messages flow.
    let notifier = crate::notify::Notifier::from_env();
    let mut ready = false;
    let mut last_status = Instant::now();
    // WATCHDOG=1 at a quarter of systemd's interval, and only while every
    // thread makes progress (or is idle): silence for half the interval
    // withholds it.
    let watchdog = health::watchdog_interval();
    if let Some(interval) = watchdog {
        let timeouts = [
            config
                .influxdb
                .as_ref()
                .map(|i| ("influxdb.timeout", i.timeout)),
            config
                .lease
                .as_ref()
                .map(|l| ("influxdb.timeout", l.timeout)),
        ];
        for (key, timeout) in timeouts.into_iter().flatten() {
            if timeout >= interval / 2 {
                log::warn!(
                    "{key} ({}) is not below half the watchdog interval ({}): one slow write would be taken for a wedged daemon; raise WatchdogSec",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                );
            }
        }
    }
    let mut last_ping = Instant::now();
    let mut withheld = false;
    while !shutdown.sleep(Duration::from_millis(200)) {
        if let Some((name, _)) = threads.iter().find(|(_, t)| t.is_finished()) {
            died = Some(*name);
            shutdown.trigger();
        }
        reporter.maybe_write(&stats, &spool, &link);
        if let Some(r) = &reload
            && r.requested.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            current = reload_config(&r.path, current, &subscriptions, &batch, &link);
        }
        if let Some(interval) = watchdog
            && last_ping.elapsed() >= interval / 4
        {
            match stats.health.stalled(interval / 2) {
                None => {
                    notifier.send("WATCHDOG=1");
                    last_ping = Instant::now();
                    withheld = false;
                }
                Some((thread, silent)) if !withheld => {
                    log::error!(
                        "the {thread} thread has made no progress for {}; withholding the watchdog ping",
                        humantime::format_duration(
                            Duration::from_millis(silent.as_millis() as u64)
                        )
                    );
                    withheld = true;
                }
                Some(_) => {}
            }
        }
        // Until READY, a healthy daemon waiting for its broker asks systemd
        // for more start-up time, so a broker down at boot is no failed
        // start.
        if !ready
            && notifier.is_enabled()
            && last_status.elapsed() >= Duration::from_secs(10)
            && stats.health.stalled(Duration::from_secs(30)).is_none()
        {
            notifier.send("EXTEND_TIMEOUT_USEC=60000000\nSTATUS=waiting for the broker to confirm the subscriptions");
            last_status = Instant::now();
        }
        let subscribed = stats.subscribed.load(std::sync::atomic::Ordering::Relaxed);
        if (subscribed && !ready) || (ready && last_status.elapsed() >= Duration::from_secs(5)) {
            let line = reporter
                .last()
                .map(|r| status::one_line(&r, crate::now_ms()))
                .unwrap_or_default();
            if ready {
                notifier.send(&format!("STATUS={line}"));
            } else {
                notifier.send(&format!("READY=1\nSTATUS={line}"));
                log::info!("ready: the spool is open and the subscriptions are confirmed");
                ready = true;
            }
            last_status = Instant::now();
        }
    }
    notifier.send("STOPPING=1\nSTATUS=draining");
    reporter.stopped();
    for t in [status_thread, metrics_thread].into_iter().flatten() {
        let _ = t.join();
    }
    let deadline = Instant::now() + config.shutdown_timeout;
    while threads.iter().any(|(_, t)| !t.is_finished()) {
        if Instant::now() >= deadline {
            let busy: Vec<&str> = threads
                .iter()
                .filter(|(_, t)| !t.is_finished())
                .map(|(n, _)| *n)
                .collect();
            if busy != ["writer"] {
                return Err(AgentError::DrainTimeout(config.shutdown_timeout));
            }
            // Only a write request is still in flight; its batch is in the
            // spool and goes again after the restart.
            log::warn!(
                "a write to InfluxDB is still in flight; leaving it, its points stay in the spool"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (name, t) in threads {
        if !t.is_finished() {
            continue;
        }
        if t.join().is_err() {
            died.get_or_insert(name);
        }
    }
    let spool_stats = spool.stats();
    log::info!(
        "stopped: {} messages in, {} points spooled, {} written, {} invalid, {} refused by InfluxDB, \
         {} dropped by the spool's overflow policy, {} left in the spool ({} bytes appended to it)",
        Stats::get(&stats.messages_in),
        Stats::get(&stats.points_in),
        Stats::get(&stats.points_written),
        Stats::get(&stats.points_invalid),
        Stats::get(&stats.points_refused),
        spool_stats.dropped_points,
        spool_stats.points_unread,
        spool_stats.appended_bytes,
    );
    for (i, counter) in stats.rejected.iter().enumerate() {
        let rejected = Stats::get(counter);
        if rejected > 0 {
            let name = config
                .mqtt
                .subscribe
                .get(i)
                .map_or("(no subscription)", |s| s.topic.as_str());
            log::info!("rejected {rejected} messages on subscription {name:?}");
        }
    }
    match died {
        Some(name) => Err(AgentError::ThreadDied(name)),
        None => Ok(stats),
    }
}

/// SIGHUP: reads the file again. An invalid one is refused with every
/// problem logged, and the running configuration stays. A valid one takes
/// effect at once for subscriptions and formats (on the live broker
/// session), batch limits and the log level, and rescans the ticket
/// directory; settings that need a restart are named. Returns the
/// configuration now in force.
fn reload_config(
    path: &Path,
    current: Config,
    subscriptions: &tokio::sync::watch::Sender<Vec<crate::config::Subscription>>,
    batch: &Mutex<crate::config::Batch>,
    link: &lease::LeaseLink,
) -> Config {
    log::info!("SIGHUP: reloading {}", path.display());
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for line in e.lines() {
                log::error!("reload refused, the running configuration stays: {line}");
            }
            return current;
        }
    };
    // What a reload applies: subscriptions, batch limits, log level. Every
    // other difference is named and waits for a restart; the running
    // values stay (so a later reload names it again).
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut restart = Vec::new();
    let mqtt_rest = |m: &crate::config::Mqtt| {
        let mut m = m.clone();
        m.subscribe.clear();
        format!("{m:?}")
    };
    for (name, changed) in [
        ("state_dir", new.state_dir != current.state_dir),
        ("ticket_dir", new.ticket_dir != current.ticket_dir),
        ("runtime_dir", new.runtime_dir != current.runtime_dir),
        (
            "shutdown_timeout",
            new.shutdown_timeout != current.shutdown_timeout,
        ),
        (
            "[mqtt] (but its subscriptions)",
            mqtt_rest(&new.mqtt) != mqtt_rest(&current.mqtt),
        ),
        ("[influxdb]", differs(&new.influxdb, &current.influxdb)),
        ("[lease]", differs(&new.lease, &current.lease)),
        ("[metrics]", new.metrics_listen != current.metrics_listen),
        ("[spool]", differs(&new.spool, &current.spool)),
        (
            "dead_letter",
            new.dead_letter_max_bytes != current.dead_letter_max_bytes,
        ),
    ] {
        if changed {
            restart.push(name);
        }
    }
    if !restart.is_empty() {
        log::warn!(
            "reload: {} changed; that takes effect after a restart",
            restart.join(", ")
        );
    }
    let topics: Vec<&str> = new
        .mqtt
        .subscribe
        .iter()
        .map(|s| s.topic.as_str())
        .collect();
    subscriptions.send_replace(new.mqtt.subscribe.clone());
    *batch.lock().unwrap_or_else(|p| p.into_inner()) = new.batch.clone();
    crate::logging::set_level(new.log_level);
    link.rescan_tickets();
    log::info!(
        "reloaded: subscriptions {topics:?}, batch {} lines / {} bytes / {:?}",
        new.batch.max_lines,
        new.batch.max_bytes,
        new.batch.flush_interval
    );
    let mut running = current;
    running.mqtt.subscribe = new.mqtt.subscribe;
    running.batch = new.batch;
    running.log_level = new.log_level;
    running
}

/// Creates the state directory owner-only: the spool holds sensor data and,
/// later, the identity and leases.
fn prepare_state_dir(dir: &Path) -> Result<(), AgentError> {
    private_dir(dir).map_err(|e| AgentError::StateDir(dir.to_owned(), e))
}

/// Creates `dir` (and its parents) with mode 0700, and takes group and
/// other access away from it if it already had any: it holds sensor data
/// or secrets, and the umask of whoever started us must not decide who
/// may read them.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
        log::info!(
            "{} was mode {mode:o}; made it {:o} (owner only)",
            dir.display(),
            mode & 0o700
        );
    }
    Ok(())
}

fn spawn(
    name: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, AgentError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|e| AgentError::Spawn(name, e))
}
