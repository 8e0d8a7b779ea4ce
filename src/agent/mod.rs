//! The gateway daemon (`leasegate run`): MQTT in ([`intake`]), disk spool
//! ([`store`]), InfluxDB out ([`output`]), with the credential writes go
//! with ([`credential`]) and what an operator sees ([`report`]). [`run`]
//! starts the named threads ([`pipeline`]), supervises them until the
//! [`Shutdown`] fires and drains them within the configured bound. A point
//! is acked to the broker only once it is in the spool, and leaves the
//! spool only once InfluxDB has it. `run` never exits the process itself
//! (the binary decides exit codes).

pub mod credential;
mod deadletter;
pub mod intake;
mod message;
pub mod output;
pub mod pipeline;
mod reload;
pub mod report;
mod stats;
pub mod store;
mod supervise;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub use message::{AckToken, Handover, Received};
pub use output::sink::{Sink, WriteError};
pub use pipeline::{Feed, Pipeline};
use report::{metrics, status};
pub use stats::Stats;
use store::spool;
use supervise::{Event, Supervised, Supervisor};

use crate::config::Config;
use crate::lifecycle::notify::Notifier;
use crate::lifecycle::watchdog::Watchdog;
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot prepare the state directory {0}")]
    StateDir(PathBuf, #[source] std::io::Error),
    #[error("cannot open the spool")]
    Spool(#[source] spool::SpoolError),
    #[error("cannot start the {0} thread")]
    Spawn(&'static str, #[source] std::io::Error),
    #[error("cannot install the SIGHUP handler")]
    Signals(#[source] std::io::Error),
    #[error("the {0} thread stopped unexpectedly")]
    ThreadDied(&'static str),
    #[error(
        "did not finish draining within {} (still busy: {})",
        humantime::format_duration(*.0),
        .1
    )]
    DrainTimeout(Duration, String),
}

/// A configuration reload on SIGHUP: the file to read again.
pub struct Reload {
    pub path: PathBuf,
}

/// Runs the daemon until `shutdown` fires, then drains within
/// `config.shutdown_timeout`. Returns the pipeline's counters.
pub fn run(
    config: &Config,
    shutdown: Shutdown,
    reload: Option<Reload>,
) -> Result<Arc<Stats>, AgentError> {
    let (events, supervised) = std::sync::mpsc::channel::<Event>();
    let stop = events.clone();
    shutdown.on_trigger(move || {
        let _ = stop.send(Event::Shutdown);
    });
    if reload.is_some() {
        forward_sighup(events.clone(), &shutdown)?;
    }
    let ended = events.clone();
    let ended: pipeline::Ended = Arc::new(move |name| {
        let _ = ended.send(Event::Ended(name));
    });
    let (mut pipeline, feed) = Pipeline::start(config, &shutdown, ended)?;
    let watchdog = Watchdog::from_env();
    if let Some(w) = &watchdog {
        warn_if_writes_outlast(config, w.interval());
    }
    let subscribed = events.clone();
    pipeline.start_intake(
        config,
        feed,
        &shutdown,
        watchdog.as_ref().map(|w| w.interval() / 8),
        Box::new(move || {
            let _ = subscribed.send(Event::Subscribed);
        }),
    )?;
    drop(events);
    let status_thread = status::serve(
        &config.daemon_runtime_dir(),
        pipeline.reporter.clone(),
        shutdown.clone(),
    );
    pipeline.reporter.write_file();
    let metrics_thread = config.metrics_listen.and_then(|listen| {
        metrics::serve(listen, pipeline.reporter.clone(), shutdown.clone())
            .map_err(|e| log::error!("no metrics endpoint on {listen}: {e}"))
            .ok()
    });
    let notifier = Notifier::from_env();
    let supervisor = Supervisor {
        pipeline: &pipeline,
        config: config.clone(),
        reload_path: reload.map(|r| r.path),
        status_socket: status_thread.is_some(),
        notifier,
        watchdog,
    };
    let result = supervisor.run(&supervised, &shutdown);
    Notifier::from_env().send("STOPPING=1\nSTATUS=draining");
    pipeline.reporter.stopped();
    for t in [status_thread, metrics_thread].into_iter().flatten() {
        let _ = t.join();
    }
    let (died, stats) = drain(pipeline, &supervised, result)?;
    match died {
        Some(name) => Err(AgentError::ThreadDied(name)),
        None => Ok(stats),
    }
}

/// Waits, within the configured bound, for every pipeline thread to end,
/// and logs what the run did. Returns the thread that died, if one did.
/// A write still in flight at the bound is left: its batch is in the spool
/// and goes again after the restart.
fn drain(
    pipeline: Pipeline,
    events: &Receiver<Event>,
    supervised: Supervised,
) -> Result<(Option<&'static str>, Arc<Stats>), AgentError> {
    let Supervised {
        config,
        mut died,
        mut ended,
    } = supervised;
    let deadline = Instant::now() + config.shutdown_timeout;
    let names: Vec<&'static str> = pipeline.threads.iter().map(|(n, _)| *n).collect();
    let busy = |ended: &[&str]| -> Vec<&'static str> {
        names
            .iter()
            .copied()
            .filter(|n| !ended.contains(n))
            .collect()
    };
    while !busy(&ended).is_empty() {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Ended(name)) => ended.push(name),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                if busy(&ended) != ["writer"] {
                    return Err(AgentError::DrainTimeout(
                        config.shutdown_timeout,
                        busy(&ended).join(", "),
                    ));
                }
                log::warn!(
                    "a write to InfluxDB is still in flight; leaving it, its points stay in the spool"
                );
                break;
            }
        }
    }
    for (name, t) in pipeline.threads {
        if ended.contains(&name) && t.join().is_err() {
            died.get_or_insert(name);
        }
    }
    log_totals(&config, &pipeline.stats, &pipeline.spool);
    Ok((died, pipeline.stats))
}

/// The run's final counts, and the rejections per subscription.
fn log_totals(config: &Config, stats: &Stats, spool: &spool::Spool) {
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
    if let (Some(p50), Some(p99)) = (
        stats.ack_delay.quantile(0.5),
        stats.ack_delay.quantile(0.99),
    ) {
        log::info!(
            "acks waited p50 {} us, p99 {} us from arrival ({} acks)",
            p50.as_micros(),
            p99.as_micros(),
            stats.ack_delay.count()
        );
    }
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
}

/// SIGHUP becomes a reload event, from a thread of its own (the handler
/// itself only writes to a pipe); the thread ends at shutdown.
fn forward_sighup(
    events: std::sync::mpsc::Sender<Event>,
    shutdown: &Shutdown,
) -> Result<(), AgentError> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(AgentError::Signals)?;
    let handle = signals.handle();
    shutdown.on_trigger(move || handle.close());
    crate::lifecycle::threads::spawn("sighup", move || {
        for _ in signals.forever() {
            if events.send(Event::Reload).is_err() {
                return;
            }
        }
    })
    .map_err(|e| AgentError::Spawn("sighup", e))?;
    Ok(())
}

/// A write that may take half the watchdog's interval would be taken for a
/// wedged daemon: said at start, so that WatchdogSec is raised.
fn warn_if_writes_outlast(config: &Config, interval: Duration) {
    let timeout = config.writing.timeout();
    if timeout >= interval / 2 {
        log::warn!(
            "influxdb.timeout ({}) is not below half the watchdog interval ({}): one slow write would be taken for a wedged daemon; raise WatchdogSec",
            humantime::format_duration(timeout),
            humantime::format_duration(interval)
        );
    }
}
