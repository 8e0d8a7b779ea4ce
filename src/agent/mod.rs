//! The gateway daemon (`leasegate run`): MQTT in, InfluxDB out.
//!
//! Two named threads do the work: `mqtt` runs the broker session on a
//! single-threaded tokio runtime ([`intake`]), `writer` batches and writes
//! with blocking HTTP ([`writer`]); they meet at a bounded channel, and acks
//! flow back once InfluxDB has taken the points. [`run`] owns their
//! lifetimes: it must return within the configured shutdown bound after the
//! [`Shutdown`] fires, and it never exits the process itself (the binary
//! decides exit codes).

mod intake;
mod sink;
pub mod spool;
mod stats;
mod writer;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use sink::{Sink, WriteError};
pub use stats::Stats;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// Deliveries queued between intake and writer. QoS 1 messages are bounded
/// by the broker's in-flight window anyway; this bounds QoS 0 floods.
const QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("config has no [influxdb] table to write to")]
    NoInfluxdb,
    #[error("cannot start the {0} thread")]
    Spawn(&'static str, #[source] std::io::Error),
    #[error("the {0} thread stopped unexpectedly")]
    ThreadDied(&'static str),
    #[error("did not finish draining within {}", humantime::format_duration(*.0))]
    DrainTimeout(Duration),
}

/// Runs the daemon until `shutdown` fires, then drains within
/// `config.shutdown_timeout`. Returns the pipeline's counters.
pub fn run(config: &Config, shutdown: Shutdown) -> Result<Arc<Stats>, AgentError> {
    let influx = config.influxdb.as_ref().ok_or(AgentError::NoInfluxdb)?;
    let stats = Arc::new(Stats::default());
    let (delivery_tx, delivery_rx) = mpsc::channel(QUEUE);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();

    let sink = Sink::new(influx);
    log::info!("writing to {}", sink.url());
    let writer = writer::Writer {
        sink,
        batch: config.batch.clone(),
        deliveries: delivery_rx,
        acks: ack_tx,
        shutdown: shutdown.clone(),
        stats: stats.clone(),
        // Leave a share of the bound for the acks and the disconnect.
        drain_timeout: config.shutdown_timeout.mul_f64(0.8),
    };
    let writer = spawn("writer", move || writer.run())?;

    let intake = intake::Intake {
        config: config.mqtt.clone(),
        deliveries: delivery_tx,
        acks: ack_rx,
        shutdown: shutdown.clone(),
        stats: stats.clone(),
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

    let threads = [("writer", writer), ("mqtt", mqtt)];
    let mut died = None;
    while !shutdown.sleep(Duration::from_millis(200)) {
        if let Some((name, _)) = threads.iter().find(|(_, t)| t.is_finished()) {
            died = Some(*name);
            shutdown.trigger();
        }
    }
    let deadline = Instant::now() + config.shutdown_timeout;
    while threads.iter().any(|(_, t)| !t.is_finished()) {
        if Instant::now() >= deadline {
            return Err(AgentError::DrainTimeout(config.shutdown_timeout));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (name, t) in threads {
        if t.join().is_err() {
            died.get_or_insert(name);
        }
    }
    log::info!(
        "stopped: {} messages in, {} points written, {} invalid, {} refused by InfluxDB",
        Stats::get(&stats.messages_in),
        Stats::get(&stats.points_written),
        Stats::get(&stats.points_invalid),
        Stats::get(&stats.points_refused),
    );
    match died {
        Some(name) => Err(AgentError::ThreadDied(name)),
        None => Ok(stats),
    }
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
