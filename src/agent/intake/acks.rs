//! The acks the appender releases once points are stored, sent to the
//! broker in order on the connection the messages came on (an ack for a
//! packet of an earlier connection is skipped, never sent on the new one),
//! and when the last one went out, for the group rule.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{Publish, QoS};
use tokio::sync::mpsc;

use crate::agent::message::AckToken;

use super::reader::Client;

/// Sends the acks the appender releases, in order, skipping those from an
/// earlier connection; when the appender is done (its sender dropped),
/// disconnects cleanly.
pub(super) async fn send_acks(
    client: Client,
    mut acks: mpsc::UnboundedReceiver<AckToken>,
    connection: Arc<AtomicU64>,
    acked: Arc<AckClock>,
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
        acked.mark();
    }
    if let Some(topic) = status_topic {
        // A clean stop sends no last will: say it ourselves.
        let _ = client
            .publish(topic, QoS::AtLeastOnce, true, "offline")
            .await;
    }
    let _ = client.disconnect().await;
}

/// When the acker last sent an ack, as microseconds since `epoch` (0:
/// never), shared without a lock between the acker task and the session.
pub(super) struct AckClock {
    pub(super) epoch: std::time::Instant,
    pub(super) micros: AtomicU64,
}

impl AckClock {
    pub(super) fn new() -> AckClock {
        AckClock {
            epoch: std::time::Instant::now(),
            micros: AtomicU64::new(0),
        }
    }

    pub(super) fn last(&self) -> Option<std::time::Instant> {
        match self.micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(self.epoch + Duration::from_micros(micros)),
        }
    }

    fn mark(&self) {
        let micros = self.epoch.elapsed().as_micros().max(1) as u64;
        self.micros.store(micros, Ordering::Relaxed);
    }
}
