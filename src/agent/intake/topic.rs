//! The session's topics beside the subscriptions: the status report
//! published retained on the status topic, subscriptions changed by a
//! reload on the live session, and Mosquitto's `$SYS` count of messages it
//! dropped, which the daemon says aloud (those were lost before it could
//! take them).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;

use crate::config::{Mqtt, Subscription};

use super::reader::Client;

/// Publishes the status report, retained, every `interval` while the
/// broker session is up, and once at each new connection.
pub(super) async fn publish_status(
    client: Client,
    topic: String,
    reporter: Arc<crate::agent::report::status::Reporter>,
    interval: Duration,
    mut connected: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = connected.changed() => {
                if changed.is_err() {
                    return;
                }
                if !*connected.borrow_and_update() {
                    continue;
                }
                tick.reset();
            }
            _ = tick.tick() => {
                if !*connected.borrow() {
                    continue;
                }
            }
        }
        let body = serde_json::to_vec(&reporter.report()).expect("plain data always serializes");
        if let Err(e) = client.try_publish(topic.clone(), QoS::AtLeastOnce, true, body) {
            log::debug!("cannot queue the status message: {e}");
        }
    }
}

/// Where Mosquitto publishes how many messages it dropped for queue and
/// in-flight limits (every `sys_interval`). While the daemon is away the
/// broker's queue is the only buffer, so a drop there is data lost before
/// leasegate could take it: the daemon says so. Other brokers never publish
/// it, and nothing changes.
pub(super) const BROKER_DROPS: &str = "$SYS/broker/publish/messages/dropped";

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Subscribed {
    Configured,
    BrokerDrops,
    /// Subscriptions a reload added, in order.
    Added(Vec<String>),
}

/// Applies reloaded subscriptions on the live session (the appender's
/// decoder takes the new formats from the same reload): new filters are
/// subscribed and dropped ones unsubscribed. A message already on its way for a dropped filter finds
/// no subscription and goes to the dead-letter file, acked: nothing is
/// lost silently.
pub(super) fn resubscribe(
    client: &Client,
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
pub(super) struct DropWatch {
    pub(super) last: Option<u64>,
}

impl DropWatch {
    /// A warning when the broker reports drops not reported before.
    pub(super) fn observe(&mut self, payload: &[u8]) -> Option<String> {
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
