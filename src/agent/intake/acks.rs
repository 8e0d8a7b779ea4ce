//! The acks the appender releases once points are stored, handed on in
//! order to the [`Outbox`] (which skips an ack for a packet of an earlier
//! connection, never sending it on the new one), and when the last one
//! was handed on (it goes out at the reader's next turn), for the group
//! rule.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{Publish, QoS};
use tokio::sync::mpsc;

use crate::agent::message::AckToken;

use super::outbox::{Outbox, Route};
use super::reader::Client;

/// Sends the acks the appender releases, in order, through `outbox`;
/// when the appender is done (its sender dropped), disconnects cleanly.
pub(super) async fn send_acks(
    client: Client,
    mut acks: mpsc::UnboundedReceiver<AckToken>,
    outbox: Arc<Outbox>,
    acked: Arc<AckClock>,
    status_topic: Option<String>,
) {
    while let Some(token) = acks.recv().await {
        match outbox.push(token.connection, token.pkid) {
            Route::Dropped => continue,
            Route::Queued => {}
            Route::Bell => {
                let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
                p.pkid = token.pkid;
                if let Err(e) = client.ack(&p).await {
                    log::warn!("cannot queue MQTT ack: {e}");
                }
            }
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

/// When the acker last handed an ack on, as microseconds since `epoch`
/// (0: never), shared without a lock between the acker task and the
/// session.
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
