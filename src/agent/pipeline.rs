//! Starting the gateway's pipeline: the spool opened, the credential in
//! force, and the named threads that move points: `appender`
//! (`store/appender`), `writer` (`output/writer`), `spool-packer`, with
//! leases `lease` (`credential/lease/thread`) and `tickets`, and `mqtt`
//! (`intake`), started last by [`Pipeline::start_intake`] so that a test
//! can feed the pipeline instead. Each thread reports its end through the
//! `ended` callback, so the supervisor waits on events rather than polls.
//! Starting owns nothing after it returns: [`Pipeline`] holds the handles.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::AgentError;
use crate::agent::credential::configured;
use crate::agent::credential::lease::LeaseSettings;
use crate::agent::credential::lease::thread::{self as lease_thread, KeeperHandle};
use crate::agent::credential::{Outcomes, Slot};
use crate::agent::deadletter::DeadLetters;
use crate::agent::intake::Intake;
use crate::agent::message::{AckToken, Handover};
use crate::agent::output::sink::Sink;
use crate::agent::output::writer::Writer;
use crate::agent::report::health::Prober;
use crate::agent::report::status::{Reporter, Sources};
use crate::agent::stats::Stats;
use crate::agent::store::appender::{self, Appender};
use crate::agent::store::arrivals::Arrivals;
use crate::agent::store::decode::Decoder;
use crate::agent::store::spool::{self, Spool};
use crate::agent::store::trueclock::{TrueClock, Trust};
use crate::config::{BatchLimits, Config, Subscription, Writing};
use crate::lifecycle::health::Health;
use crate::shutdown::Shutdown;

/// Groups of messages queued between intake and appender. The byte budget
/// of the intake bounds what they hold; this bounds how many.
const QUEUE: usize = 1024;

/// Where a pipeline thread's end is reported, with its name.
pub type Ended = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The running pipeline: its shared parts and its threads.
pub struct Pipeline {
    pub spool: Arc<Spool>,
    pub stats: Arc<Stats>,
    pub health: Arc<Health>,
    pub slot: Arc<Slot>,
    pub reporter: Arc<Reporter>,
    pub dead_letters: Arc<Mutex<DeadLetters>>,
    /// Live settings a reload replaces.
    pub batch: Arc<Mutex<BatchLimits>>,
    pub subscriptions: watch::Sender<Vec<Subscription>>,
    /// With leases: the keeper.
    pub keeper: Option<KeeperHandle>,
    pub threads: Vec<(&'static str, JoinHandle<()>)>,
    ended: Ended,
}

/// The intake's ends of the pipeline: what it hands over, the acks it
/// sends, and the subscriptions as reloads change them.
pub struct Feed {
    pub deliveries: mpsc::Sender<Handover>,
    pub acks: mpsc::UnboundedReceiver<AckToken>,
    pub reload: watch::Receiver<Vec<Subscription>>,
}

impl Pipeline {
    /// Opens the spool and starts every thread but the intake.
    pub fn start(
        config: &Config,
        shutdown: &Shutdown,
        ended: Ended,
    ) -> Result<(Pipeline, Feed), AgentError> {
        prepare_dir(&config.state_dir)?;
        if config.writing.is_leased() {
            prepare_dir(&config.ticket_dir)?;
        }
        let spool = open_spool(config, shutdown)?;
        let stats = Arc::new(Stats::new(config.mqtt.subscribe.len()));
        let health = Arc::new(Health::default());
        let dead_letters = dead_letter_file(config);
        let slot = Slot::new(shutdown);
        let mut threads = Vec::new();
        let clock = true_clock(config);
        let (outcomes, keeper) = credential_source(
            config,
            &slot,
            &clock,
            &health,
            shutdown,
            &ended,
            &mut threads,
        )?;
        let arrivals = Arc::new(Arrivals::default());
        let reporter = Arc::new(Reporter::new(
            &config.state_dir,
            Sources {
                stats: stats.clone(),
                spool: spool.clone(),
                arrivals: arrivals.clone(),
                view: keeper.as_ref().map(|k| k.view.clone()),
            },
        ));
        send_health(keeper.as_ref(), &reporter);
        let batch = Arc::new(Mutex::new(config.batch.clone()));
        let writer = Writer {
            sink: Sink::new(config.writing.gzip(), config.writing.timeout()),
            slot: slot.clone(),
            outcomes,
            batch: batch.clone(),
            spool: spool.clone(),
            shutdown: shutdown.clone(),
            stats: stats.clone(),
            beat: health.beat("writer"),
            dead_letters: dead_letters.clone(),
            clock,
        };
        threads.push(("writer", spawn("writer", &ended, move || writer.run())?));
        threads.push(start_packer(&spool, shutdown, &ended)?);
        let (delivery_tx, delivery_rx) = mpsc::channel(QUEUE);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (subscriptions, reload) = watch::channel(config.mqtt.subscribe.clone());
        let appender = Appender {
            spool: spool.clone(),
            dead_letters: dead_letters.clone(),
            deliveries: delivery_rx,
            decoder: Decoder::new(
                config.mqtt.subscribe.clone(),
                config.mqtt.max_packet_size as usize,
                config.mqtt.point_limits,
            ),
            reload: reload.clone(),
            acks: ack_tx,
            shutdown: shutdown.clone(),
            stats: stats.clone(),
            beat: health.beat("appender"),
            arrivals,
            record_bytes: appender::RECORD_BYTES
                .min(config.batch.max_bytes as usize)
                .min((config.spool.max_bytes / 8) as usize),
            record_points: config.batch.max_lines as u64,
            page: crate::lifecycle::files::page_size(),
        };
        threads.push((
            "appender",
            spawn("appender", &ended, move || appender.run())?,
        ));
        let pipeline = Pipeline {
            spool,
            stats,
            health,
            slot,
            reporter,
            dead_letters,
            batch,
            subscriptions,
            keeper,
            threads,
            ended,
        };
        let feed = Feed {
            deliveries: delivery_tx,
            acks: ack_rx,
            reload,
        };
        Ok((pipeline, feed))
    }

    /// Starts the `mqtt` thread on `feed`: the broker session on a
    /// single-threaded tokio runtime. `beat_every`: with a watchdog, how
    /// often its runtime beats; `subscribed` is told when the broker first
    /// confirms the subscriptions.
    pub fn start_intake(
        &mut self,
        config: &Config,
        feed: Feed,
        shutdown: &Shutdown,
        beat_every: Option<Duration>,
        subscribed: Box<dyn Fn() + Send>,
    ) -> Result<(), AgentError> {
        let intake = Intake {
            config: config.mqtt.clone(),
            deliveries: feed.deliveries,
            commit_delay: config.spool.commit_delay,
            tail: self.spool.tail(),
            acks: feed.acks,
            shutdown: shutdown.clone(),
            stats: self.stats.clone(),
            dead_letters: self.dead_letters.clone(),
            reload: feed.reload,
            status: config.mqtt.publish_status.then(|| self.reporter.clone()),
            beat: beat_every.map(|every| (self.health.beat("mqtt"), every)),
            subscribed,
        };
        let thread =
            spawn(
                "mqtt",
                &self.ended,
                move || match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    // A task, not the `block_on` future: tokio checks the
                    // driver (an `epoll_wait`) before polling that future
                    // each time a task wakes it, which on a backlog is once
                    // a message; tasks waking tasks stay in the run queue.
                    // A panic goes on as the thread's, as before.
                    Ok(rt) => {
                        if let Err(e) = rt.block_on(rt.spawn(intake.run()))
                            && e.is_panic()
                        {
                            std::panic::resume_unwind(e.into_panic());
                        }
                    }
                    Err(e) => log::error!("cannot start the MQTT runtime: {e}"),
                },
            )?;
        self.threads.push(("mqtt", thread));
        Ok(())
    }
}

/// Lease requests carry the gateway's health from now on; static
/// credentials have no authority to tell.
fn send_health(keeper: Option<&KeeperHandle>, reporter: &Arc<Reporter>) {
    if let Some(keeper) = keeper {
        let prober = Prober::new(reporter.clone());
        let _ = keeper.probe.set(Box::new(move || prober.report()));
    }
}

/// Each way of writing brings its own credential source: the static one
/// is put in the slot at once; the lease keeper starts on its thread and
/// puts a lease there when it has one. Returns the line for the writer's
/// outcomes, and the keeper.
fn credential_source(
    config: &Config,
    slot: &Arc<Slot>,
    clock: &Arc<TrueClock>,
    health: &Health,
    shutdown: &Shutdown,
    ended: &Ended,
    threads: &mut Vec<(&'static str, JoinHandle<()>)>,
) -> Result<(Outcomes, Option<KeeperHandle>), AgentError> {
    let lease = match &config.writing {
        Writing::Static(influx) => {
            return Ok((configured::install(influx, slot.clone()), None));
        }
        Writing::Leased(lease) => lease,
    };
    let settings = LeaseSettings {
        state_dir: config.state_dir.clone(),
        ticket_dir: config.ticket_dir.clone(),
        lease: lease.clone(),
    };
    let (outcomes, handle, thread) = lease_thread::start(
        settings,
        slot.clone(),
        clock.clone(),
        health.beat("lease"),
        shutdown,
        |body| watched("lease", ended, body),
    )
    .map_err(|e| AgentError::Spawn("lease", e))?;
    threads.push(("lease", thread));
    Ok((outcomes, Some(handle)))
}

/// The dead-letter file, and where it is, in the log.
fn dead_letter_file(config: &Config) -> Arc<Mutex<DeadLetters>> {
    let dead_letters = DeadLetters::new(&config.state_dir, config.dead_letter_max_bytes);
    log::info!(
        "rejected messages and refused lines go to {}",
        dead_letters.path().display()
    );
    Arc::new(Mutex::new(dead_letters))
}

/// What the gateway trusts about the time: the authority with leases,
/// the kernel with static credentials.
fn true_clock(config: &Config) -> Arc<TrueClock> {
    let trust = if config.writing.is_leased() {
        Trust::Authority
    } else {
        Trust::Kernel
    };
    Arc::new(TrueClock::open(
        Some(config.state_dir.clone()),
        config.clock,
        trust,
        Box::new(crate::clock::kernel),
    ))
}

/// Creates a state directory owner-only: it holds sensor data and, with
/// leases, the identity.
fn prepare_dir(dir: &std::path::Path) -> Result<(), AgentError> {
    crate::lifecycle::files::private_dir(dir).map_err(|e| AgentError::StateDir(dir.to_owned(), e))
}

/// Starts the thread that packs a backlog's segments ([`Spool::pack_until`]).
fn start_packer(
    spool: &Arc<Spool>,
    shutdown: &Shutdown,
    ended: &Ended,
) -> Result<(&'static str, JoinHandle<()>), AgentError> {
    let (spool, shutdown) = (spool.clone(), shutdown.clone());
    let thread = spawn("spool-packer", ended, move || spool.pack_until(&shutdown))?;
    Ok(("spool-packer", thread))
}

/// Opens the spool, reporting what it recovered; a shutdown wakes its
/// readers.
fn open_spool(config: &Config, shutdown: &Shutdown) -> Result<Arc<Spool>, AgentError> {
    let (spool, recovery) = Spool::open(spool::SpoolConfig {
        dir: config.state_dir.join("spool"),
        max_bytes: config.spool.max_bytes,
        fsync: config.spool.fsync,
        overflow: config.spool.overflow,
        min_free: config.spool.min_free,
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
    let wake = spool.clone();
    shutdown.on_trigger(move || wake.wake_readers());
    Ok(spool)
}

/// Starts `body` on the thread `name`, reporting its end to `ended`.
fn watched(
    name: &'static str,
    ended: &Ended,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let ended = ended.clone();
    crate::lifecycle::threads::spawn_watched(name, move || ended(name), body)
}

/// [`watched`], with the error the daemon reports.
fn spawn(
    name: &'static str,
    ended: &Ended,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, AgentError> {
    watched(name, ended, body).map_err(|e| AgentError::Spawn(name, e))
}
