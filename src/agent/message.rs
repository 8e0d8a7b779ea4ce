//! What travels between the pipeline's threads, from the broker to the
//! spool: a message as it came ([`Received`]), what the decoder made of it
//! ([`Delivery`]) and the ack it is owed ([`AckToken`]).
//!
//! Plain data, a leaf the stages share: it imports no stage, and nothing
//! here acts.

use std::time::Instant;

use rumqttc::Publish;

use crate::agent::deadletter::Rejection;

/// Messages the intake hands over together, to be stored under one commit
/// (`crate::agent::intake::group`).
pub type Handover = Vec<Received>;

/// One message as it came from the broker, on its way to be decoded.
#[derive(Debug)]
pub struct Received {
    pub publish: Publish,
    /// What to acknowledge once stored; `None` for QoS 0 messages.
    pub ack: Option<AckToken>,
    /// When the intake took it from the broker, for the ack's delay.
    pub at: Instant,
    /// When it arrived on the broker connection: the receipt time of its
    /// points that carry no timestamp.
    pub arrived: Instant,
    /// The message's share of the bytes allowed in flight between the
    /// MQTT session and the spool, given back when the message is dropped
    /// after decoding.
    #[allow(dead_code, reason = "held, not read: dropping it gives the bytes back")]
    pub budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The lines decoded from one MQTT message, and how to acknowledge it.
#[derive(Debug)]
pub struct Delivery {
    /// Line protocol, each line ending in `\n`: the points that carry
    /// their own timestamp.
    pub lines: String,
    /// The points stamped with the time of receipt, in lines of their
    /// own: they are stored so that the stamps can be corrected
    /// (`crate::agent::store::trueclock`).
    pub stamped: String,
    /// All points, in both.
    pub points: u64,
    pub stamped_points: u64,
    /// What to acknowledge once stored; `None` for QoS 0 messages.
    pub ack: Option<AckToken>,
    /// When the intake took it from the broker.
    pub at: Instant,
    /// Why (part of) the message was rejected, for the dead-letter file.
    pub rejected: Option<Rejection>,
    /// The message's share of the bytes allowed between the MQTT session
    /// and the spool: held until the delivery is stored and dropped, so a
    /// group waiting for its commit counts against the budget too.
    #[allow(dead_code, reason = "held, not read: dropping it gives the bytes back")]
    pub budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Delivery {
    /// The lines stamped on receipt (`stamped`) or the others, and how
    /// many points they hold.
    pub fn part(&self, stamped: bool) -> (&[u8], u64) {
        if stamped {
            (self.stamped.as_bytes(), self.stamped_points)
        } else {
            (self.lines.as_bytes(), self.points - self.stamped_points)
        }
    }
}

/// A packet id is only meaningful on the connection it arrived on: after a
/// reconnect the broker resends unacked messages and may reuse the id for
/// another message, so an ack carries its connection's number and the
/// acker drops acks from earlier connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub connection: u64,
    pub pkid: u16,
}
