//! MQTT intake: keeps the broker session, subscribes at QoS 1, hands the
//! messages as they came to the `appender` thread in groups (`group`), and
//! sends the acks that thread releases once the points are stored. It must
//! never wait on an HTTP write, on the disk or on decoding (a hostile
//! payload must not delay a keep-alive): raw messages go over a channel
//! bounded in bytes while the event loop keeps being polled. It never acks
//! a packet id on a connection other than the one the message arrived on.

mod acks;
pub(crate) mod arrival;
pub(crate) mod group;
mod outbox;
pub(crate) mod oversize;
pub(crate) mod reader;
mod session;
mod topic;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::sync::mpsc;

use crate::agent::deadletter::DeadLetters;
use crate::agent::message::{AckToken, Handover};
use crate::agent::stats::Stats;
use crate::agent::store::spool::Tail;
use crate::config::{Mqtt, Subscription};
use crate::lifecycle::health::Beat;
use crate::shutdown::Shutdown;

use self::acks::AckClock;
use self::acks::send_acks;
use self::group::GroupRule;
use self::group::Held;
use self::group::sleep_until;
use self::outbox::Outbox;
use self::oversize::incoming_limit;
use self::reader::{Client, Pace, forward_events};
use self::session::Session;
use self::topic::publish_status;

pub struct Intake {
    pub config: Mqtt,
    pub deliveries: mpsc::Sender<Handover>,
    /// `spool.commit_delay`: the longest a message is held for its group.
    pub commit_delay: Duration,
    /// Where the spool's next append goes, so that groups end at page
    /// boundaries.
    pub tail: Tail,
    pub acks: mpsc::UnboundedReceiver<AckToken>,
    pub shutdown: Shutdown,
    pub stats: Arc<Stats>,
    /// Where a message cleared off the session unread is recorded.
    pub dead_letters: Arc<std::sync::Mutex<DeadLetters>>,
    /// New subscriptions from a configuration reload (SIGHUP).
    pub reload: tokio::sync::watch::Receiver<Vec<Subscription>>,
    /// With `publish_status`: the report to publish, retained.
    pub status: Option<Arc<crate::agent::report::status::Reporter>>,
    /// With systemd's watchdog: this runtime's beat and how often a task
    /// on it beats (it runs only while the thread is not stuck). Without
    /// one, nothing wakes for it.
    pub beat: Option<(Arc<Beat>, Duration)>,
    /// Told once, when the broker first confirms the subscriptions.
    pub subscribed: Box<dyn Fn() + Send>,
}

impl Intake {
    pub async fn run(self) {
        let Intake {
            config,
            deliveries,
            commit_delay,
            tail,
            acks,
            shutdown,
            stats,
            dead_letters,
            mut reload,
            status,
            beat,
            subscribed,
        } = self;
        let status_topic = status
            .as_ref()
            .map(|_| format!("leasegate/{}/status", config.client_id));
        let (client, eventloop) = AsyncClient::new(options(&config, status_topic.as_deref()), 1024);
        let client = Client::new(client);
        let (connected, watch_connected) = tokio::sync::watch::channel(false);
        let helpers = Helpers {
            client: client.clone(),
            acks,
            status: status.zip(status_topic),
            status_interval: config.status_interval,
            connected: watch_connected,
            beat,
        };
        let outbox = Arc::new(Outbox::default());
        let (tasks, acked) = helpers.spawn(&outbox);
        let (mut events, resume, poller) = start_reader(
            eventloop,
            (&client, outbox),
            &config,
            commit_delay,
            &acked,
            &stats,
        );
        let mut session = Session::new(client, config, stats, connected, subscribed);
        let mut held = Held {
            group: Vec::new(),
            rule: GroupRule::new(commit_delay, crate::lifecycle::files::page_size()),
            tail,
            tail_at_handover: 0,
            expected_tail: 0,
            acked,
            acked_seen: 0,
        };
        let mut deliveries = Some(deliveries);
        loop {
            let due = held.rule.deadline();
            let event = tokio::select! {
                biased;
                _ = shutdown.wait(), if deliveries.is_some() => {
                    // What is held goes first. Closing the channel then
                    // lets the appender finish; the acker disconnects once
                    // those acks are out.
                    held.hand_over(deliveries.as_ref(), &shutdown, "shutdown").await;
                    deliveries = None;
                    continue;
                }
                Ok(()) = reload.changed() => {
                    let new = reload.borrow_and_update().clone();
                    session.resubscribe(new);
                    continue;
                }
                _ = sleep_until(due), if due.is_some() => {
                    let why = due.map_or("", |(_, why)| why.as_str());
                    held.hand_over(deliveries.as_ref(), &shutdown, why).await;
                    continue;
                }
                read = events.recv() => match read {
                    Some(read) => read,
                    None => break,
                },
            };
            let go_on = session
                .on_event(
                    event.event,
                    (event.earliest, event.arrived),
                    &mut held,
                    deliveries.as_ref(),
                    &shutdown,
                    &dead_letters,
                )
                .await;
            if matches!(go_on, Next::Resume) {
                // Reconnects once the backoff is over.
                let _ = resume.try_send(());
            }
            if matches!(go_on, Next::Stop) {
                break;
            }
        }
        poller.abort();
        for t in tasks {
            t.abort();
        }
    }
}

/// Starts the task that reads the broker connection ([`forward_events`]),
/// paced for `commit_delay`.
fn start_reader(
    eventloop: rumqttc::EventLoop,
    (client, outbox): (&Client, Arc<Outbox>),
    config: &Mqtt,
    commit_delay: Duration,
    acked: &Arc<AckClock>,
    stats: &Arc<Stats>,
) -> (
    mpsc::Receiver<reader::Read>,
    mpsc::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let pace = Pace::new(commit_delay);
    log::debug!(
        "MQTT reads pause up to {:?} between light reads",
        pace.pause()
    );
    let broker = (!config.url.tls).then(|| (config.url.host.clone(), config.url.port));
    let (acked, stats) = (acked.clone(), stats.clone());
    forward_events(
        eventloop,
        (client, outbox),
        pace,
        broker,
        move || acked.last(),
        move || Stats::get(&stats.points_stamped),
    )
}

/// What the session's loop does after an event.
enum Next {
    Go,
    /// Go on, and let the poller reconnect (after a failed connection).
    Resume,
    Stop,
}

/// The intake's tasks beside the event loop: the acker, the status
/// publisher and the watchdog beat.
struct Helpers {
    client: Client,
    acks: mpsc::UnboundedReceiver<AckToken>,
    /// With `publish_status`: the report and its topic.
    status: Option<(Arc<crate::agent::report::status::Reporter>, String)>,
    status_interval: Duration,
    connected: tokio::sync::watch::Receiver<bool>,
    beat: Option<(Arc<Beat>, Duration)>,
}

impl Helpers {
    /// Spawns them, the acker queueing into `outbox`; returns their
    /// handles and the clock of the acker's last ack.
    fn spawn(self, outbox: &Arc<Outbox>) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AckClock>) {
        let mut tasks = Vec::new();
        let status_topic = self.status.as_ref().map(|(_, topic)| topic.clone());
        if let Some((reporter, topic)) = self.status {
            tasks.push(tokio::spawn(publish_status(
                self.client.clone(),
                topic,
                reporter,
                self.status_interval,
                self.connected,
            )));
        }
        let acked = Arc::new(AckClock::new());
        tasks.push(tokio::spawn(send_acks(
            self.client,
            self.acks,
            outbox.clone(),
            acked.clone(),
            status_topic,
        )));
        if let Some((beat, every)) = self.beat {
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    beat.beat();
                }
            }));
        }
        (tasks, acked)
    }
}

/// The session's options: a persistent session (clean session off) with
/// manual acks, so that a message not stored yet stays with the broker
/// across restarts and reconnects; the broker's TLS and login, and a last
/// will when the status is published.
fn options(config: &Mqtt, status_topic: Option<&str>) -> MqttOptions {
    let mut options = MqttOptions::new(&config.client_id, &config.url.host, config.url.port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        // A larger packet is refused by its header, before it is read;
        // the connection drops and `oversize` clears it off the session.
        .set_max_packet_size(incoming_limit(config.max_packet_size), 64 * 1024);
    if let Some(tls) = &config.tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.0.clone()),
        ));
    }
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        options.set_credentials(user, password.expose());
    } else if let Some(user) = &config.username {
        options.set_credentials(user, "");
    }
    if let Some(topic) = status_topic {
        // The broker says "offline" for us if we vanish without a word.
        options.set_last_will(rumqttc::LastWill::new(
            topic,
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    }
    options
}

/// Bytes of payload allowed between the session and the appender:
/// room for a few of the largest messages taken, and never less than 8 MiB
/// so that small messages stream.
fn queue_bytes(max_packet_size: u64) -> usize {
    (max_packet_size as usize)
        .saturating_mul(2)
        .clamp(8 << 20, u32::MAX as usize)
}
