//! MQTT intake: keeps the broker session, subscribes at QoS 1, hands each
//! message to the `spool` thread as it came, and sends the acks that thread
//! releases once the points are stored.
//!
//! The session is persistent (clean session off) with manual acks, so a
//! message that is not stored yet stays with the broker across restarts and
//! reconnects. This module must never wait on an HTTP write, on the disk or
//! on decoding (a hostile payload must not delay a keep-alive): it passes
//! raw messages over a channel bounded in bytes and keeps polling the event
//! loop (pings, acks, reconnects), and it never acks a packet id on a
//! connection other than the one the message arrived on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;

use super::appender::AckToken;
use super::deadletter::{DeadLetters, Rejection, Source};
use super::decode::{Received, topic_matches};
use super::stats::Stats;
use crate::backoff::Backoff;
use crate::config::{Mqtt, Subscription};
use crate::shutdown::Shutdown;

pub struct Intake {
    pub config: Mqtt,
    pub deliveries: mpsc::Sender<Received>,
    pub acks: mpsc::UnboundedReceiver<AckToken>,
    pub shutdown: Shutdown,
    pub stats: Arc<Stats>,
    /// Where a message cleared off the session unread is recorded.
    pub dead_letters: Arc<std::sync::Mutex<DeadLetters>>,
    /// New subscriptions from a configuration reload (SIGHUP).
    pub reload: tokio::sync::watch::Receiver<Vec<Subscription>>,
    /// With `publish_status`: the report to publish, retained.
    pub status: Option<Arc<super::status::Reporter>>,
}

impl Intake {
    pub async fn run(self) {
        let Intake {
            mut config,
            deliveries,
            acks,
            shutdown,
            stats,
            dead_letters,
            mut reload,
            status,
        } = self;
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
        let status_topic = status
            .as_ref()
            .map(|_| format!("leasegate/{}/status", config.client_id));
        if let Some(topic) = &status_topic {
            // The broker says "offline" for us if we vanish without a word.
            options.set_last_will(rumqttc::LastWill::new(
                topic.clone(),
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let status_task = match (&status, &status_topic) {
            (Some(reporter), Some(topic)) => Some(tokio::spawn(publish_status(
                client.clone(),
                topic.clone(),
                reporter.clone(),
                config.status_interval,
                stats.clone(),
            ))),
            _ => None,
        };
        let broker = format!("{}:{}", config.url.host, config.url.port);
        let connection = Arc::new(AtomicU64::new(0));
        let acker = tokio::spawn(send_acks(
            client.clone(),
            acks,
            connection.clone(),
            status_topic.clone(),
        ));
        // The watchdog's beat for this thread: a task on the same
        // single-threaded runtime runs only while the thread is not stuck.
        let beats = {
            let stats = stats.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    stats.health.mqtt.beat();
                }
            })
        };

        let mut deliveries = Some(deliveries);
        // Bytes of messages between here and the spool thread: with the
        // broker's in-flight window this bounds what a flood of large
        // messages can hold in memory.
        let budget_bytes = queue_bytes(config.max_packet_size);
        let budget = Arc::new(tokio::sync::Semaphore::new(budget_bytes));
        // Number of the current broker connection, for ack tokens.
        let mut current = 0;
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 0.25);
        // Set once the broker has confirmed the configured subscriptions.
        let mut subscribed_once = false;
        // Filters a reload added that the broker has not confirmed yet.
        let mut unconfirmed: Vec<String> = Vec::new();
        let mut drops = DropWatch::default();
        // Brokers answer SUBSCRIBEs in order: what each SubAck is for.
        let mut suback_for = std::collections::VecDeque::new();
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.wait(), if deliveries.is_some() => {
                    // Closing the channel lets the writer finish its last
                    // batch; the acker disconnects once those acks are out.
                    deliveries = None;
                    continue;
                }
                Ok(()) = reload.changed() => {
                    let new = reload.borrow_and_update().clone();
                    resubscribe(
                        &client,
                        &mut config,
                        &mut suback_for,
                        &mut unconfirmed,
                        new,
                    );
                    continue;
                }
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff.reset();
                    stats.mqtt_connected.store(true, Ordering::Relaxed);
                    current = connection.fetch_add(1, Ordering::SeqCst) + 1;
                    log::info!(
                        "connected to MQTT broker {broker} (session present: {})",
                        ack.session_present
                    );
                    // A broker that kept our session kept our subscriptions
                    // too; subscribing again would replay retained messages.
                    // SUBSCRIBEs of the old connection that were never
                    // answered are gone with it.
                    suback_for.clear();
                    if !ack.session_present || !subscribed_once {
                        let filters = config.subscribe.iter().map(|s| {
                            rumqttc::SubscribeFilter::new(s.topic.clone(), QoS::AtLeastOnce)
                        });
                        unconfirmed.clear();
                        // Not awaited: this task is the one that drains the
                        // request queue the call would wait on.
                        match client.try_subscribe_many(filters) {
                            Ok(()) => suback_for.push_back(Subscribed::Configured),
                            Err(e) => log::error!("cannot subscribe: {e}"),
                        }
                        // Apart, so that a broker that refuses it (or
                        // disconnects for it) costs only the warning.
                        if config.watch_broker_drops
                            && client.try_subscribe(BROKER_DROPS, QoS::AtMostOnce).is_ok()
                        {
                            suback_for.push_back(Subscribed::BrokerDrops);
                        }
                    } else if !unconfirmed.is_empty() {
                        // Added by a reload and not confirmed before the
                        // connection dropped: the kept session lacks them.
                        let filters = unconfirmed
                            .iter()
                            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                        if client.try_subscribe_many(filters).is_ok() {
                            suback_for.push_back(Subscribed::Added(unconfirmed.clone()));
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack)))
                    if suback_for.front() == Some(&Subscribed::BrokerDrops) =>
                {
                    suback_for.pop_front();
                    log::debug!("broker drop counter subscription: {:?}", ack.return_codes);
                }
                Ok(Event::Incoming(Packet::SubAck(ack)))
                    if matches!(suback_for.front(), Some(Subscribed::Added(_))) =>
                {
                    if let Some(Subscribed::Added(topics)) = suback_for.pop_front() {
                        unconfirmed.retain(|t| !topics.contains(t));
                        for (topic, code) in topics.iter().zip(&ack.return_codes) {
                            match code {
                                SubscribeReasonCode::Failure => {
                                    log::error!("broker refused the new subscription to {topic:?}")
                                }
                                SubscribeReasonCode::Success(qos) => {
                                    log::info!("subscribed to {topic:?} at {qos:?} (reload)")
                                }
                            }
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    suback_for.pop_front();
                    subscribed_once = true;
                    stats.subscribed.store(true, Ordering::Relaxed);
                    for (sub, code) in config.subscribe.iter().zip(&ack.return_codes) {
                        match code {
                            SubscribeReasonCode::Failure => {
                                log::error!("broker refused the subscription to {:?}", sub.topic)
                            }
                            SubscribeReasonCode::Success(qos) => {
                                log::info!("subscribed to {:?} at {qos:?}", sub.topic)
                            }
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == BROKER_DROPS => {
                    if let Some(warning) = drops.observe(&publish.payload) {
                        log::warn!("{warning}");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let Some(tx) = &deliveries else {
                        // Shutting down: left unacked, the broker redelivers it.
                        continue;
                    };
                    Stats::add(&stats.messages_in, 1);
                    let bytes =
                        (publish.payload.len() + publish.topic.len()).min(budget_bytes) as u32;
                    let ack = (publish.qos != QoS::AtMostOnce).then_some(AckToken {
                        connection: current,
                        pkid: publish.pkid,
                    });
                    if ack.is_none() {
                        // QoS 0 promises nothing; never stall the event
                        // loop for it.
                        let sent =
                            budget
                                .clone()
                                .try_acquire_many_owned(bytes)
                                .ok()
                                .and_then(|permit| {
                                    let topic = publish.topic.clone();
                                    let received = Received {
                                        publish,
                                        ack,
                                        budget: Some(permit),
                                    };
                                    tx.try_send(received).err().map(|_| topic)
                                });
                        if let Some(topic) = sent {
                            log::warn!("dropped a QoS 0 message on {topic:?}: writer is behind");
                        }
                    } else {
                        // Waits while the spool thread is behind: the broker
                        // keeps the message until it is acked.
                        tokio::select! {
                            sent = async {
                                let permit = budget.clone().acquire_many_owned(bytes).await.ok();
                                tx.send(Received { publish, ack, budget: permit }).await
                            } => if sent.is_err() {
                                log::error!("spool thread stopped; message left for the broker to redeliver");
                            },
                            // Shutdown while the spool is not taking more:
                            // left unacked, the broker keeps the message.
                            _ = shutdown.wait() => {}
                        }
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    stats.mqtt_connected.store(false, Ordering::Relaxed);
                    if deliveries.is_none() {
                        // Stopping and the connection is gone: nothing more
                        // can be acked; the broker redelivers the rest.
                        break;
                    }
                    if let Some(size) = oversized(&e) {
                        log::warn!(
                            "the broker handed over a message of {size} bytes, more than mqtt.max_packet_size ({}); taking it off the session unread",
                            config.max_packet_size
                        );
                        let cleared = clear_oversized(&config, &dead_letters, &stats, &shutdown);
                        let cleared = tokio::select! {
                            n = cleared => n,
                            _ = shutdown.wait() => 0,
                        };
                        if cleared > 0 {
                            // What came after it is delivered at once.
                            continue;
                        }
                    }
                    let delay = backoff.next_delay();
                    log::warn!(
                        "MQTT broker {broker}: {}; reconnecting in {}",
                        crate::error_chain(&e),
                        humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait() => {}
                    }
                }
            }
        }
        acker.abort();
        beats.abort();
        if let Some(t) = status_task {
            t.abort();
        }
    }
}

/// Sends the acks the spool thread releases, in order, skipping those from
/// an earlier connection; when the spool thread is done (its sender
/// dropped), disconnects cleanly.
async fn send_acks(
    client: AsyncClient,
    mut acks: mpsc::UnboundedReceiver<AckToken>,
    connection: Arc<AtomicU64>,
    status_topic: Option<String>,
) {
    while let Some(token) = acks.recv().await {
        if token.connection != connection.load(Ordering::SeqCst) {
            // The broker resends that message on the new connection; its
            // new copy is acked once stored.
            continue;
        }
        let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
        p.pkid = token.pkid;
        if let Err(e) = client.ack(&p).await {
            log::warn!("cannot queue MQTT ack: {e}");
        }
    }
    if let Some(topic) = status_topic {
        // A clean stop sends no last will: say it ourselves.
        let _ = client
            .publish(topic, QoS::AtLeastOnce, true, "offline")
            .await;
    }
    let _ = client.disconnect().await;
}

/// Publishes the status report, retained, every `interval` while the
/// broker session is up (and once soon after each connection).
async fn publish_status(
    client: AsyncClient,
    topic: String,
    reporter: Arc<super::status::Reporter>,
    interval: Duration,
    stats: Arc<Stats>,
) {
    let mut was_connected = false;
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let connected = stats.mqtt_connected.load(Ordering::Relaxed);
        let due = (connected && !was_connected) || since.elapsed() >= interval;
        was_connected = connected;
        if !connected || !due {
            continue;
        }
        let Some(report) = reporter.last() else {
            continue;
        };
        let body = serde_json::to_vec(&report).expect("plain data always serializes");
        if let Err(e) = client.try_publish(topic.clone(), QoS::AtLeastOnce, true, body) {
            log::debug!("cannot queue the status message: {e}");
        }
        since = tokio::time::Instant::now();
    }
}

/// Where Mosquitto publishes how many messages it dropped for queue and
/// in-flight limits (every `sys_interval`). While the daemon is away the
/// broker's queue is the only buffer, so a drop there is data lost before
/// leasegate could take it: the daemon says so. Other brokers never publish
/// it, and nothing changes.
const BROKER_DROPS: &str = "$SYS/broker/publish/messages/dropped";

#[derive(Debug, PartialEq, Eq)]
enum Subscribed {
    Configured,
    BrokerDrops,
    /// Subscriptions a reload added, in order.
    Added(Vec<String>),
}

/// Applies reloaded subscriptions on the live session (the spool thread's
/// decoder takes the new formats from the same reload): new filters are
/// subscribed and dropped ones unsubscribed. A message already on its way for a dropped filter finds
/// no subscription and goes to the dead-letter file, acked: nothing is
/// lost silently.
fn resubscribe(
    client: &AsyncClient,
    config: &mut Mqtt,
    suback_for: &mut std::collections::VecDeque<Subscribed>,
    unconfirmed: &mut Vec<String>,
    new: Vec<Subscription>,
) {
    let had = |t: &str| config.subscribe.iter().any(|s| s.topic == t);
    let added: Vec<String> = new
        .iter()
        .filter(|s| !had(&s.topic))
        .map(|s| s.topic.clone())
        .collect();
    unconfirmed.retain(|t| new.iter().any(|s| &s.topic == t));
    let removed: Vec<String> = config
        .subscribe
        .iter()
        .filter(|s| !new.iter().any(|n| n.topic == s.topic))
        .map(|s| s.topic.clone())
        .collect();
    config.subscribe = new;
    if !added.is_empty() {
        let filters = added
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        unconfirmed.extend(added.iter().cloned());
        match client.try_subscribe_many(filters) {
            Ok(()) => suback_for.push_back(Subscribed::Added(added)),
            Err(e) => log::error!("cannot subscribe to the reloaded filters: {e}"),
        }
    }
    for topic in removed {
        match client.try_unsubscribe(topic.clone()) {
            Ok(()) => log::info!("unsubscribed from {topic:?} (reload)"),
            Err(e) => log::error!("cannot unsubscribe from {topic:?}: {e}"),
        }
    }
}

/// Follows the broker's drop counter across reconnects.
#[derive(Default)]
struct DropWatch {
    last: Option<u64>,
}

impl DropWatch {
    /// A warning when the broker reports drops not reported before.
    fn observe(&mut self, payload: &[u8]) -> Option<String> {
        let now: u64 = std::str::from_utf8(payload).ok()?.trim().parse().ok()?;
        let before = self.last.replace(now);
        let hint = "it drops QoS 1 messages beyond max_queued_messages for a client that is \
                    away or behind; if they were this gateway's, they are lost: raise the \
                    limit (README: What to set on the gateway's Mosquitto)";
        match before {
            None if now > 0 => Some(format!(
                "the MQTT broker reports {now} dropped messages since it started; {hint}"
            )),
            Some(b) if now > b => Some(format!(
                "the MQTT broker dropped {} more messages ({now} since it started); {hint}",
                now - b
            )),
            _ => None,
        }
    }
}

/// The largest packet taken from the broker: a payload of
/// `max_packet_size` with the longest topic MQTT allows and a packet id. A
/// payload just over the limit still arrives and is refused by the decoder
/// (kept whole in the dead-letter record); anything larger is refused by
/// its header.
fn incoming_limit(max_packet_size: u64) -> usize {
    max_packet_size as usize + 2 + 65_535 + 2
}

/// The size of the packet the client refused for its size, if that is why
/// the connection dropped.
fn oversized(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(size),
        )) => Some(*size),
        _ => None,
    }
}

/// Runs [`super::oversize::clear`] on a thread of its own (it blocks on
/// the network) while the session is down; each message it takes is in
/// the dead-letter file before it is acked.
async fn clear_oversized(
    config: &Mqtt,
    dead_letters: &Arc<std::sync::Mutex<DeadLetters>>,
    stats: &Arc<Stats>,
    shutdown: &Shutdown,
) -> usize {
    let (done, result) = tokio::sync::oneshot::channel();
    let (config, dead_letters, stats, shutdown) = (
        config.clone(),
        dead_letters.clone(),
        stats.clone(),
        shutdown.clone(),
    );
    let spawned = std::thread::Builder::new()
        .name("mqtt-clear".into())
        .spawn(move || {
            let limit = incoming_limit(config.max_packet_size);
            let mut record = |c: &super::oversize::Cleared| {
                let slot = config
                    .subscribe
                    .iter()
                    .position(|s| topic_matches(&s.topic, &c.topic));
                Stats::add(&stats.messages_in, 1);
                if let Some(counter) = stats.rejected.get(slot.unwrap_or(config.subscribe.len())) {
                    Stats::add(counter, 1);
                }
                let reason = format!(
                    "{} bytes, more than mqtt.max_packet_size ({}); taken off the session unread, its first {} bytes kept",
                    c.bytes,
                    config.max_packet_size,
                    c.sample.len()
                );
                log::warn!("rejected message on {:?}: {reason}", c.topic);
                dead_letters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .try_record(&Rejection {
                        source: Source::Mqtt,
                        topic: c.topic.clone(),
                        subscription: slot
                            .map(|i| config.subscribe[i].topic.clone())
                            .unwrap_or_default(),
                        reason,
                        payload: c.sample.clone(),
                    })
            };
            let outcome = super::oversize::clear(&config, limit, &mut record, &shutdown);
            let _ = done.send(outcome);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the thread that clears an oversized message: {e}");
        return 0;
    }
    match result.await {
        Ok(Ok(done)) => {
            if done.lost_qos0 > 0 {
                log::warn!(
                    "{} QoS 0 message(s) reached the clearing connection and are lost",
                    done.lost_qos0
                );
            }
            if done.cleared == 0 {
                log::info!("no oversized message was waiting any more");
            } else {
                log::info!(
                    "{} oversized message(s) taken off the session",
                    done.cleared
                );
            }
            done.cleared
        }
        Ok(Err(e)) => {
            log::warn!(
                "could not clear the oversized message, trying again after reconnecting: {}",
                crate::error_chain(&e)
            );
            0
        }
        Err(_) => 0,
    }
}

/// Bytes of payload allowed between the session and the spool thread:
/// room for a few of the largest messages taken, and never less than 8 MiB
/// so that small messages stream.
fn queue_bytes(max_packet_size: u64) -> usize {
    (max_packet_size as usize)
        .saturating_mul(2)
        .clamp(8 << 20, u32::MAX as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_drops_are_reported_once_each() {
        let mut w = DropWatch::default();
        assert!(w.observe(b"0").is_none());
        let first = w.observe(b"400").unwrap();
        assert!(
            first.contains("dropped 400 more messages (400 since"),
            "{first}"
        );
        assert!(w.observe(b"400").is_none());
        assert!(w.observe(b"not a number").is_none());
        // Seen for the first time with drops already counted.
        let mut w = DropWatch::default();
        let first = w.observe(b"12\n").unwrap();
        assert!(first.contains("reports 12 dropped messages"), "{first}");
        // A broker restart resets its counter: no warning for going down.
        assert!(w.observe(b"3").is_none());
    }
}
