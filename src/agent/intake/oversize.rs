//! Clearing a message too large to take off the broker's session: a short
//! blocking connection of our own, on its own thread, with the session's
//! client id, TLS settings and credentials, records each oversized PUBLISH
//! for the dead-letter file and only then acks it; every other message
//! stays unacked for the real session. It must never hold more than a
//! buffer and a sample of a message, never ack one it did not record, and
//! never log the password. It stops at the first message the broker sends
//! afresh; a QoS 0 message sent meanwhile is lost, and counted.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::deadletter::{DeadLetters, Rejection, Source};
use crate::agent::stats::Stats;
use crate::agent::store::decode::topic_matches;
use crate::config::Mqtt;
use crate::shutdown::Shutdown;

/// Bytes of an oversized message kept for the dead-letter record.
pub const SAMPLE: usize = 1024;
/// The broker resends what was in flight right after CONNACK: a second
/// without a packet means it has nothing more to resend.
const IDLE: Duration = Duration::from_secs(1);
/// How long a read inside a packet may wait for data before the link is
/// taken for dead.
const STALL: Duration = Duration::from_secs(30);
/// Packets looked at per clearing, at most.
const MAX_PACKETS: usize = 100_000;

/// An oversized message taken off the session.
#[derive(Debug, Clone)]
pub struct Cleared {
    pub topic: String,
    /// The whole payload's size.
    pub bytes: usize,
    /// Its first [`SAMPLE`] bytes.
    pub sample: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClearError {
    #[error("cannot connect to {broker}: {source}")]
    Connect {
        broker: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS to {broker}: {message}")]
    Tls { broker: String, message: String },
    #[error("the broker refused the connection (CONNACK return code {0})")]
    Refused(u8),
    #[error("the broker answered the connection with packet type {0}, not CONNACK")]
    NotConnAck(u8),
    #[error("the broker's packets do not parse: {0}")]
    Protocol(&'static str),
    #[error("reading from the broker: {0}")]
    Io(#[from] std::io::Error),
    #[error("stopped: shutting down")]
    Stopped,
    #[error("cannot record the message in the dead-letter file, so it stays unacked: {0}")]
    Record(#[source] std::io::Error),
}

/// What one clearing did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Clearing {
    /// Oversized messages recorded and acked.
    pub cleared: usize,
    /// QoS 0 messages the broker sent to this connection, lost.
    pub lost_qos0: usize,
}

trait Link: Read + Write {}
impl<T: Read + Write> Link for T {}

/// Connects as the session's client, takes every PUBLISH whose packet is
/// larger than `limit` bytes off the session: `record` must keep it first,
/// then it is acked. Other messages stay with the broker.
///
/// The MQTT client refuses such a packet by its header, so it never sits
/// in memory, but it drops the connection to do so; the broker, keeping
/// our session, would hand the message over again after every reconnect,
/// before anything queued behind it. Just enough MQTT 3.1.1 is spoken
/// here (CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, DISCONNECT). It stops
/// at the first message sent afresh (a resend carries the DUP flag), so
/// that the real session is away as briefly as possible.
pub fn clear(
    config: &Mqtt,
    limit: usize,
    record: &mut dyn FnMut(&Cleared) -> std::io::Result<()>,
    shutdown: &Shutdown,
) -> Result<Clearing, ClearError> {
    let broker = format!("{}:{}", config.url.host, config.url.port);
    let tcp = connect_tcp(config, &broker)?;
    tcp.set_read_timeout(Some(STALL))?;
    tcp.set_write_timeout(Some(STALL))?;
    let timeouts = tcp.try_clone()?;
    let mut link = wrap_tls(config, &broker, tcp)?;
    handshake(&mut link, config)?;
    let mut done = Clearing::default();
    let mut pinger = Pinger {
        last_sent: Instant::now(),
        every: config.keep_alive / 2,
    };
    let mut ended = false;
    for _ in 0..MAX_PACKETS {
        if shutdown.is_triggered() {
            return Err(ClearError::Stopped);
        }
        let (first, len) = match next_header(&mut link, &timeouts)? {
            Next::Packet(first, len) => (first, len),
            Next::Ended => {
                ended = true;
                break;
            }
            Next::Idle => break,
        };
        let mut left = len;
        let publish = first >> 4 == 3;
        let qos = (first >> 1) & 3;
        let resend = first & 0x08 != 0;
        if publish && qos == 0 {
            done.lost_qos0 += 1;
        }
        if publish && !resend && qos > 0 {
            // Fresh traffic: everything in flight has been resent, so the
            // oversized message is behind us. This one and the rest are
            // the session's, which comes back now. (A small one is read
            // to its end, so the connection closes cleanly behind our
            // DISCONNECT.)
            if len <= limit {
                skip(&mut link, &mut left, None, shutdown, &mut pinger)?;
            }
            break;
        }
        if !publish || len <= limit || qos > 1 {
            // Not ours to take: left unacked, the broker delivers it to the
            // session again. (QoS 2 needs a PUBREC, not a PUBACK; the
            // gateway subscribes at QoS 1 and never gets one.)
            skip(&mut link, &mut left, None, shutdown, &mut pinger)?;
            continue;
        }
        take(&mut link, qos, left, record, shutdown, &mut pinger)?;
        done.cleared += 1;
    }
    if !ended {
        // A broker that already closed needs no goodbye.
        let _ = link.write_all(&[0xE0, 0x00]).and_then(|()| link.flush());
    }
    Ok(done)
}

/// A TCP connection to the broker: every address of the host in turn, as
/// the session's client does.
fn connect_tcp(config: &Mqtt, broker: &str) -> Result<TcpStream, ClearError> {
    let connect_error = |source| ClearError::Connect {
        broker: broker.to_owned(),
        source,
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address");
    for addr in (config.url.host.as_str(), config.url.port)
        .to_socket_addrs()
        .map_err(connect_error)?
    {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(connect_error(last))
}

/// `tcp` as the link to speak MQTT over: through TLS with the session's
/// settings when it has them, else as it is.
fn wrap_tls(config: &Mqtt, broker: &str, tcp: TcpStream) -> Result<Box<dyn Link>, ClearError> {
    Ok(match &config.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let tls_error = |message: String| ClearError::Tls {
                broker: broker.to_owned(),
                message,
            };
            let name = rustls::pki_types::ServerName::try_from(config.url.host.clone())
                .map_err(|e| tls_error(e.to_string()))?;
            let conn = rustls::ClientConnection::new(tls.0.clone(), name)
                .map_err(|e| tls_error(e.to_string()))?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    })
}

/// Sends CONNECT and reads the broker's CONNACK, which must accept it.
fn handshake(link: &mut Box<dyn Link>, config: &Mqtt) -> Result<(), ClearError> {
    link.write_all(&connect_packet(config))?;
    link.flush()?;
    let (kind, len) = read_header(link)?.ok_or(ClearError::Protocol("no CONNACK"))?;
    if kind >> 4 != 2 || len != 2 {
        return Err(ClearError::NotConnAck(kind >> 4));
    }
    let mut ack = [0u8; 2];
    link.read_exact(&mut ack)?;
    if ack[1] != 0 {
        return Err(ClearError::Refused(ack[1]));
    }
    Ok(())
}

/// What waiting for the next packet found.
enum Next {
    /// A packet's first byte and remaining length.
    Packet(u8, usize),
    /// The broker closed the connection.
    Ended,
    /// Nothing came for [`IDLE`]: the broker has nothing more to resend.
    Idle,
}

/// Waits up to [`IDLE`] for the next packet's header; once one has come,
/// the rest of the packet may take up to [`STALL`] between reads.
fn next_header(link: &mut Box<dyn Link>, timeouts: &TcpStream) -> Result<Next, ClearError> {
    timeouts.set_read_timeout(Some(IDLE))?;
    let (first, len) = match read_header(link) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(Next::Ended),
        Err(ClearError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(Next::Idle);
        }
        Err(e) => return Err(e),
    };
    timeouts.set_read_timeout(Some(STALL))?;
    Ok(Next::Packet(first, len))
}

/// When we last sent the broker a packet, so that reading a long message
/// still pings it within its keep-alive and it does not take us for dead.
struct Pinger {
    last_sent: Instant,
    every: Duration,
}

impl Pinger {
    /// Sends a PINGREQ if nothing was sent for half the keep-alive.
    fn keep_alive(&mut self, link: &mut Box<dyn Link>) -> std::io::Result<()> {
        if self.last_sent.elapsed() >= self.every {
            link.write_all(&[0xC0, 0x00])?;
            link.flush()?;
            self.last_sent = Instant::now();
        }
        Ok(())
    }
}

/// Takes one oversized PUBLISH of QoS `qos` whose header has been read
/// (`left` bytes follow): reads its topic and packet id, passes its size
/// and sample to `record`, and acks it only once that succeeded.
fn take(
    link: &mut Box<dyn Link>,
    qos: u8,
    mut left: usize,
    record: &mut dyn FnMut(&Cleared) -> std::io::Result<()>,
    shutdown: &Shutdown,
    pinger: &mut Pinger,
) -> Result<(), ClearError> {
    let mut topic_len = [0u8; 2];
    link.read_exact(&mut topic_len)?;
    let topic_len = u16::from_be_bytes(topic_len) as usize;
    let ids = if qos > 0 { 2 } else { 0 };
    left = left
        .checked_sub(2 + topic_len + ids)
        .ok_or(ClearError::Protocol("a PUBLISH shorter than its topic"))?;
    let mut topic = vec![0u8; topic_len];
    link.read_exact(&mut topic)?;
    let mut pkid = [0u8; 2];
    if qos > 0 {
        link.read_exact(&mut pkid)?;
    }
    let bytes = left;
    let mut sample = Vec::with_capacity(SAMPLE);
    skip(link, &mut left, Some(&mut sample), shutdown, pinger)?;
    record(&Cleared {
        topic: String::from_utf8_lossy(&topic).into_owned(),
        bytes,
        sample,
    })
    .map_err(ClearError::Record)?;
    if qos == 1 {
        link.write_all(&[0x40, 0x02, pkid[0], pkid[1]])?;
        link.flush()?;
        pinger.last_sent = Instant::now();
    }
    Ok(())
}

/// Reads and drops `left` bytes through a small buffer, keeping the first
/// [`SAMPLE`] in `sample`, pinging the broker while it takes long.
fn skip(
    link: &mut Box<dyn Link>,
    left: &mut usize,
    mut sample: Option<&mut Vec<u8>>,
    shutdown: &Shutdown,
    pinger: &mut Pinger,
) -> Result<(), ClearError> {
    let mut buf = [0u8; 16 << 10];
    while *left > 0 {
        if shutdown.is_triggered() {
            return Err(ClearError::Stopped);
        }
        let n = link.read(&mut buf[..(*left).min(16 << 10)])?;
        if n == 0 {
            return Err(ClearError::Protocol("the connection ended inside a packet"));
        }
        if let Some(s) = sample.as_deref_mut() {
            let room = SAMPLE - s.len();
            s.extend_from_slice(&buf[..n.min(room)]);
        }
        *left -= n;
        pinger.keep_alive(link)?;
    }
    Ok(())
}

/// A packet's first byte and remaining length; `None` at a clean end.
fn read_header(link: &mut Box<dyn Link>) -> Result<Option<(u8, usize)>, ClearError> {
    let mut first = [0u8; 1];
    if link.read(&mut first)? == 0 {
        return Ok(None);
    }
    let mut len = 0usize;
    for i in 0..4 {
        let mut b = [0u8; 1];
        link.read_exact(&mut b)?;
        len |= ((b[0] & 0x7F) as usize) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some((first[0], len)));
        }
    }
    Err(ClearError::Protocol(
        "a remaining length of more than 4 bytes",
    ))
}

/// CONNECT for MQTT 3.1.1 with the session kept (clean session off) and
/// the session's client id and credentials.
fn connect_packet(config: &Mqtt) -> Vec<u8> {
    let mut body = Vec::new();
    let string = |body: &mut Vec<u8>, s: &[u8]| {
        body.extend_from_slice(&(s.len().min(65_535) as u16).to_be_bytes());
        body.extend_from_slice(&s[..s.len().min(65_535)]);
    };
    string(&mut body, b"MQTT");
    body.push(4);
    // As the session's client logs in: a name or password is sent only
    // when it is not empty.
    let user = config.username.as_deref().unwrap_or_default();
    let password = config
        .password
        .as_ref()
        .map(|p| p.expose())
        .unwrap_or_default();
    let mut flags = 0u8;
    if !user.is_empty() {
        flags |= 0x80;
    }
    if !password.is_empty() {
        flags |= 0x40;
    }
    body.push(flags);
    let keep_alive = config.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16;
    body.extend_from_slice(&keep_alive.to_be_bytes());
    string(&mut body, config.client_id.as_bytes());
    if !user.is_empty() {
        string(&mut body, user.as_bytes());
    }
    if !password.is_empty() {
        string(&mut body, password.as_bytes());
    }
    let mut packet = vec![0x10];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// MQTT's variable-length "remaining length": seven bits a byte, low first.
fn remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            return;
        }
    }
}

/// The largest packet taken from the broker: a payload of
/// `max_packet_size` with the longest topic MQTT allows and a packet id. A
/// payload just over the limit still arrives and is refused by the decoder
/// (kept whole in the dead-letter record); anything larger is refused by
/// its header.
pub(super) fn incoming_limit(max_packet_size: u64) -> usize {
    max_packet_size as usize + 2 + 65_535 + 2
}

/// The size of the packet the client refused for its size, if that is why
/// the connection dropped.
pub(super) fn oversized(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(size),
        )) => Some(*size),
        _ => None,
    }
}

/// Runs [`crate::agent::intake::oversize::clear`] on a thread of its own (it blocks on
/// the network) while the session is down; each message it takes is in
/// the dead-letter file before it is acked.
pub(super) async fn clear_oversized(
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
            let mut record = |c: &Cleared| {
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
            let outcome = clear(&config, limit, &mut record, &shutdown);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_keeps_the_session_and_carries_the_credentials() {
        let toml = "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"gw-1\"\nusername = \"u\"\npassword_file = \"PW\"\n[[mqtt.subscribe]]\ntopic = \"s/#\"\n[influxdb]\napi = \"v1\"\nurl = \"http://127.0.0.1:8086\"\ndatabase = \"d\"\n";
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        crate::config::tls::tests::write_secret(&pw, "p\n");
        let toml = toml.replace("PW", &pw.display().to_string());
        let config = crate::config::Config::from_toml(&dir.path().join("t.toml"), &toml)
            .unwrap_or_else(|e| panic!("{:?}", e.lines()));
        let p = connect_packet(&config.mqtt);
        assert_eq!(p[0], 0x10);
        assert_eq!(&p[2..8], b"\x00\x04MQTT");
        assert_eq!(p[8], 4);
        assert_eq!(
            p[9],
            0x80 | 0x40,
            "username and password, clean session off"
        );
        assert!(p.ends_with(b"\x00\x04gw-1\x00\x01u\x00\x01p"));
    }

    /// The gateway's MQTT settings for a broker on `port`.
    fn mqtt(port: u16) -> Mqtt {
        let toml = format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"gw-1\"\n[[mqtt.subscribe]]\ntopic = \"s/#\"\n[influxdb]\napi = \"v1\"\nurl = \"http://127.0.0.1:8086\"\ndatabase = \"d\"\n"
        );
        crate::config::Config::from_toml(std::path::Path::new("t.toml"), &toml)
            .unwrap_or_else(|e| panic!("{:?}", e.lines()))
            .mqtt
    }

    fn publish(first: u8, pkid: u16, topic: &str, payload_len: usize) -> Vec<u8> {
        let remaining = 2 + topic.len() + 2 + payload_len;
        let mut p = vec![first];
        remaining_length(&mut p, remaining);
        p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        p.extend_from_slice(topic.as_bytes());
        p.extend_from_slice(&pkid.to_be_bytes());
        p.extend(std::iter::repeat_n(b'x', payload_len));
        p
    }

    /// A broker that answers CONNECT and then sends `packets`; returns what
    /// the client sent after its CONNECT.
    fn broker(packets: Vec<u8>) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut head = [0u8; 2];
            sock.read_exact(&mut head).unwrap();
            let mut connect = vec![0u8; head[1] as usize];
            sock.read_exact(&mut connect).unwrap();
            sock.write_all(&[0x20, 0x02, 0x01, 0x00]).unwrap();
            sock.write_all(&packets).unwrap();
            let mut rest = Vec::new();
            let _ = sock.read_to_end(&mut rest);
            rest
        });
        (port, handle)
    }

    #[test]
    fn the_oversized_resend_is_recorded_then_acked_and_fresh_traffic_ends_the_clearing() {
        // In flight before (DUP): a small message and an oversized one;
        // then a fresh one, which must be left for the session.
        let mut packets = publish(0x3A, 5, "s/small", 10);
        packets.extend(publish(0x3A, 7, "s/big", 100_000));
        packets.extend(publish(0x32, 9, "s/fresh", 10));
        let (port, sent) = broker(packets);
        let mut seen = Vec::new();
        let started = Instant::now();
        let done = clear(
            &mqtt(port),
            50_000,
            &mut |c| {
                seen.push((c.topic.clone(), c.bytes, c.sample.len()));
                Ok(())
            },
            &Shutdown::new(),
        )
        .unwrap();
        assert!(
            started.elapsed() < IDLE,
            "ended by the fresh message, not by waiting"
        );
        assert_eq!(
            done,
            Clearing {
                cleared: 1,
                lost_qos0: 0
            }
        );
        assert_eq!(seen, [("s/big".to_owned(), 100_000, SAMPLE)]);
        // A PUBACK for packet 7 only, then DISCONNECT.
        assert_eq!(sent.join().unwrap(), [0x40, 0x02, 0x00, 0x07, 0xE0, 0x00]);
    }

    #[test]
    fn a_message_that_cannot_be_recorded_is_not_acked() {
        let (port, sent) = broker(publish(0x3A, 7, "s/big", 100_000));
        let result = clear(
            &mqtt(port),
            50_000,
            &mut |_| Err(std::io::Error::other("disk full")),
            &Shutdown::new(),
        );
        assert!(matches!(result, Err(ClearError::Record(_))), "{result:?}");
        assert!(
            !sent.join().unwrap().starts_with(&[0x40]),
            "no PUBACK for a message that is nowhere"
        );
    }
}
