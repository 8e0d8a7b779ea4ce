//! The broker session's event loop: takes each event from the MQTT
//! client, hands messages to the appender in groups, resubscribes and
//! republishes the status on each new connection, and clears an oversized
//! message when the broker keeps sending it. It must never wait on the
//! disk, on HTTP or on decoding: a hostile payload must not delay a
//! keep-alive.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{Event, Outgoing, Packet, Publish, QoS, SubscribeReasonCode};
use tokio::sync::mpsc;

use crate::agent::deadletter::DeadLetters;
use crate::agent::message::{AckToken, Handover, Received};
use crate::agent::stats::Stats;
use crate::backoff::Backoff;
use crate::config::{Mqtt, Subscription};
use crate::shutdown::Shutdown;

use super::Next;
use super::group::GroupRule;
use super::group::Held;
use super::oversize::clear_oversized;
use super::oversize::oversized;
use super::queue_bytes;
use super::reader::{Client, Polled};
use super::topic::BROKER_DROPS;
use super::topic::DropWatch;
use super::topic::Subscribed;
use super::topic::resubscribe;

/// What the event loop keeps between events.
pub(super) struct Session {
    pub(super) client: Client,
    pub(super) config: Mqtt,
    pub(super) stats: Arc<Stats>,
    pub(super) broker: String,
    /// Bytes of messages between here and the appender: with the broker's
    /// in-flight window this bounds what a flood of large messages can
    /// hold in memory.
    pub(super) budget: Arc<tokio::sync::Semaphore>,
    pub(super) budget_bytes: usize,
    /// Number of the current broker connection (1 is the first), for ack
    /// tokens: the Outbox counts CONNACKs the same way.
    pub(super) current: u64,
    pub(super) connected: tokio::sync::watch::Sender<bool>,
    pub(super) backoff: Backoff,
    /// Set once the broker has confirmed the configured subscriptions.
    pub(super) subscribed_once: bool,
    pub(super) subscribed: Box<dyn Fn() + Send>,
    /// Filters a reload added that the broker has not confirmed yet.
    pub(super) unconfirmed: Vec<String>,
    pub(super) drops: DropWatch,
    /// Brokers answer SUBSCRIBEs in order: what each SubAck is for.
    pub(super) suback_for: std::collections::VecDeque<Subscribed>,
}

impl Session {
    pub(super) fn new(
        client: Client,
        config: Mqtt,
        stats: Arc<Stats>,
        connected: tokio::sync::watch::Sender<bool>,
        subscribed: Box<dyn Fn() + Send>,
    ) -> Session {
        let budget_bytes = queue_bytes(config.max_packet_size);
        Session {
            client,
            broker: format!("{}:{}", config.url.host, config.url.port),
            config,
            stats,
            budget: Arc::new(tokio::sync::Semaphore::new(budget_bytes)),
            budget_bytes,
            current: 0,
            connected,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 0.25),
            subscribed_once: false,
            subscribed,
            unconfirmed: Vec::new(),
            drops: DropWatch::default(),
            suback_for: std::collections::VecDeque::new(),
        }
    }

    fn set_connected(&self, up: bool) {
        self.stats.mqtt_connected.store(up, Ordering::Relaxed);
        self.connected.send_replace(up);
    }

    fn on_connack(&mut self, ack: &rumqttc::ConnAck) {
        self.backoff.reset();
        self.set_connected(true);
        self.current += 1;
        log::info!(
            "connected to MQTT broker {} (session present: {})",
            self.broker,
            ack.session_present
        );
        // A broker that kept our session kept our subscriptions too;
        // subscribing again would replay retained messages. SUBSCRIBEs of
        // the old connection that were never answered are gone with it.
        self.suback_for.clear();
        if !ack.session_present || !self.subscribed_once {
            let filters = self
                .config
                .subscribe
                .iter()
                .map(|s| rumqttc::SubscribeFilter::new(s.topic.clone(), QoS::AtLeastOnce));
            self.unconfirmed.clear();
            // Not awaited: this task is the one that drains the request
            // queue the call would wait on.
            match self.client.try_subscribe_many(filters) {
                Ok(()) => self.suback_for.push_back(Subscribed::Configured),
                Err(e) => log::error!("cannot subscribe: {e}"),
            }
            // Apart, so that a broker that refuses it (or disconnects for
            // it) costs only the warning.
            if self.config.watch_broker_drops
                && self
                    .client
                    .try_subscribe(BROKER_DROPS, QoS::AtMostOnce)
                    .is_ok()
            {
                self.suback_for.push_back(Subscribed::BrokerDrops);
            }
        } else if !self.unconfirmed.is_empty() {
            // Added by a reload and not confirmed before the connection
            // dropped: the kept session lacks them.
            let filters = self
                .unconfirmed
                .iter()
                .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
            if self.client.try_subscribe_many(filters).is_ok() {
                self.suback_for
                    .push_back(Subscribed::Added(self.unconfirmed.clone()));
            }
        }
    }

    fn on_suback(&mut self, ack: &rumqttc::SubAck) {
        match self.suback_for.pop_front() {
            Some(Subscribed::BrokerDrops) => {
                log::debug!("broker drop counter subscription: {:?}", ack.return_codes);
            }
            Some(Subscribed::Added(topics)) => {
                self.unconfirmed.retain(|t| !topics.contains(t));
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
            Some(Subscribed::Configured) | None => {
                for (sub, code) in self.config.subscribe.iter().zip(&ack.return_codes) {
                    match code {
                        SubscribeReasonCode::Failure => {
                            log::error!("broker refused the subscription to {:?}", sub.topic)
                        }
                        SubscribeReasonCode::Success(qos) => {
                            log::info!("subscribed to {:?} at {qos:?}", sub.topic)
                        }
                    }
                }
                if !self.subscribed_once {
                    self.subscribed_once = true;
                    (self.subscribed)();
                }
            }
        }
    }

    /// Acts on one connection event; says whether the loop goes on.
    pub(super) async fn on_event(
        &mut self,
        event: Polled,
        times: (std::time::Instant, std::time::Instant),
        held: &mut Held,
        deliveries: Option<&mpsc::Sender<Handover>>,
        shutdown: &Shutdown,
        dead_letters: &Arc<std::sync::Mutex<DeadLetters>>,
    ) -> Next {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.on_connack(&ack);
                Next::Go
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                self.on_suback(&ack);
                Next::Go
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                self.on_publish(publish, times, held, deliveries, shutdown)
                    .await;
                Next::Go
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Next::Stop,
            Ok(_) => Next::Go,
            // Stopping and the connection is gone: nothing more can be
            // acked; the broker redelivers the rest.
            Err(_) if deliveries.is_none() => {
                self.set_connected(false);
                Next::Stop
            }
            Err(e) => {
                // Stored, not dropped: the QoS 0 ones would be lost.
                held.hand_over(deliveries, shutdown, "connection lost")
                    .await;
                if self.on_error(&e, dead_letters, shutdown).await {
                    Next::Resume
                } else {
                    Next::Stop
                }
            }
        }
    }

    /// Adds a message as it came (as early as `earliest`, as [`Pace`]
    /// stamps it, and its receipt time `arrived`) to the held group,
    /// handing the group
    /// over when the group rule says so. A QoS 0 message that does not fit
    /// in the byte budget is dropped (it promises nothing); a QoS 1 message
    /// waits for room, as the broker keeps it until it is acked.
    async fn on_publish(
        &mut self,
        publish: Publish,
        (earliest, arrived): (std::time::Instant, std::time::Instant),
        held: &mut Held,
        deliveries: Option<&mpsc::Sender<Handover>>,
        shutdown: &Shutdown,
    ) {
        if publish.topic == BROKER_DROPS {
            if let Some(warning) = self.drops.observe(&publish.payload) {
                log::warn!("{warning}");
            }
            return;
        }
        if deliveries.is_none() {
            // Shutting down: left unacked, the broker redelivers it.
            return;
        }
        Stats::add(&self.stats.messages_in, 1);
        let bytes = (publish.payload.len() + publish.topic.len()).min(self.budget_bytes) as u32;
        let ack = (publish.qos != QoS::AtMostOnce).then_some(AckToken {
            connection: self.current,
            pkid: publish.pkid,
        });
        let estimate = GroupRule::estimate(&publish.payload);
        if held.rule.ends_before(estimate) {
            held.hand_over(deliveries, shutdown, "page full").await;
        }
        let permit = match self.budget.clone().try_acquire_many_owned(bytes) {
            Ok(permit) => Some(permit),
            Err(_) if ack.is_none() => {
                log::warn!(
                    "dropped a QoS 0 message on {:?}: writer is behind",
                    publish.topic
                );
                return;
            }
            Err(_) => {
                // The held group holds budget too: it goes first, or this
                // wait could be for itself. Then waits while the appender
                // is behind.
                held.hand_over(deliveries, shutdown, "budget").await;
                tokio::select! {
                    permit = self.budget.clone().acquire_many_owned(bytes) => permit.ok(),
                    // Shutdown while the spool is not taking more: left
                    // unacked, the broker keeps the message.
                    _ = shutdown.wait() => return,
                }
            }
        };
        let now = std::time::Instant::now();
        held.seen_acks();
        let tail = held.tail_now();
        let why = held.rule.add_read(estimate, earliest, now, tail);
        held.group.push(Received {
            publish,
            ack,
            at: earliest,
            arrived,
            budget: permit,
        });
        if why.is_some() {
            held.hand_over(deliveries, shutdown, "size").await;
        }
    }

    /// The connection failed: clears an oversized message off the session
    /// if that was why, else waits out the backoff before reconnecting.
    /// False when the loop should end.
    async fn on_error(
        &mut self,
        e: &rumqttc::ConnectionError,
        dead_letters: &Arc<std::sync::Mutex<DeadLetters>>,
        shutdown: &Shutdown,
    ) -> bool {
        self.set_connected(false);
        if let Some(size) = oversized(e) {
            log::warn!(
                "the broker handed over a message of {size} bytes, more than mqtt.max_packet_size ({}); taking it off the session unread",
                self.config.max_packet_size
            );
            let cleared = clear_oversized(&self.config, dead_letters, &self.stats, shutdown);
            let cleared = tokio::select! {
                n = cleared => n,
                _ = shutdown.wait() => 0,
            };
            if cleared > 0 {
                // What came after it is delivered at once.
                return true;
            }
        }
        let delay = self.backoff.next_delay();
        log::warn!(
            "MQTT broker {}: {}; reconnecting in {}",
            self.broker,
            crate::error_chain(e),
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => {}
        }
        true
    }

    /// Applies reloaded subscriptions on the live session (the appender's
    /// decoder takes the new formats from the same reload).
    pub(super) fn resubscribe(&mut self, new: Vec<Subscription>) {
        resubscribe(
            &self.client,
            &mut self.config,
            &mut self.suback_for,
            &mut self.unconfirmed,
            new,
        );
    }
}
