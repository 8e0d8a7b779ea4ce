//! When each of the broker's packets arrived, while the reader pauses:
//! a timestamp-less point's receipt time is the data, and a message read
//! after a pause may have waited in the socket for most of it. It holds a
//! duplicate of the session's socket for that and to tell whether bytes
//! already wait unread (no pause then), and must never read from it or
//! write to it; it gives it up the moment the connection ends. Plain TCP
//! only: anything it cannot make sense of turns tracking off for the
//! connection, and the reader then keeps its pauses short.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use tokio::io::unix::AsyncFd;

/// Arrivals noted and not yet matched to a packet: more than a pause of
/// the fastest stream that still pauses brings.
const MAX_SAMPLES: usize = 4096;

/// Arrivals of one connection: (bytes received in all, when), in order;
/// plain values, so that the matching is tested without a socket. The
/// kernel's own receive stamps cannot tell this: TCP merges segments that
/// queue up unread into one buffer, which keeps only the latest stamp. So
/// each arrival notes the connection's byte count (`tcpi_bytes_received`),
/// and a packet is placed by where it ends in the stream (the packets'
/// sizes summed since the CONNACK).
#[derive(Debug, Default)]
pub struct Samples {
    samples: VecDeque<(u64, Instant)>,
    /// Bytes of the packets read so far on this connection.
    consumed: u64,
}

impl Samples {
    /// The connection had received `bytes` in all at `at`. False when
    /// that is nothing new.
    pub fn note(&mut self, bytes: u64, at: Instant) -> bool {
        if bytes <= self.consumed || self.samples.back().is_some_and(|(b, _)| *b >= bytes) {
            // Nothing new: the earlier time stays, as the right one.
            return false;
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((bytes, at));
        true
    }

    /// A packet of `size` bytes was read at `now`: when its last byte
    /// arrived, as far as the samples say, else `now`.
    pub fn packet(&mut self, size: u64, now: Instant) -> Instant {
        self.consumed += size;
        while self
            .samples
            .front()
            .is_some_and(|(bytes, _)| *bytes < self.consumed)
        {
            self.samples.pop_front();
        }
        match self.samples.front() {
            Some((_, at)) if *at <= now => *at,
            _ => now,
        }
    }

    /// Whether `received` (the kernel's count, now) can be right: the
    /// packets read cannot add up to more than the connection received.
    pub fn consistent(&self, received: u64) -> bool {
        self.consumed <= received
    }
}

/// Arrival tracking for the current connection, or nothing (before the
/// first CONNACK, over TLS, after a mismatch). Over TLS the stream's bytes
/// are not the packets' bytes.
#[derive(Default)]
pub struct Arrivals {
    socket: Option<OwnedFd>,
    /// The socket, registered with the runtime for its readiness during a
    /// pause ([`Arrivals::watch`]): between pauses it is not, so that a
    /// fast stream, read back to back, pays nothing for it.
    watched: Option<AsyncFd<OwnedFd>>,
    samples: Samples,
}

impl Arrivals {
    /// A new connection was made to one of `peers` (its CONNACK was just
    /// read): finds its socket among the process's.
    pub fn attach(peers: &[SocketAddr]) -> Arrivals {
        let socket = find_socket(peers);
        if socket.is_none() {
            log::debug!("no arrival tracking for this connection: its socket was not found");
        }
        Arrivals {
            socket,
            watched: None,
            samples: Samples::default(),
        }
    }

    pub fn is_tracking(&self) -> bool {
        self.socket.is_some() || self.watched.is_some()
    }

    /// The connection ended: gives the socket up at once, so that it never
    /// holds open a connection that rumqttc closed.
    pub fn detach(&mut self) {
        *self = Arrivals::default();
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match (&self.socket, &self.watched) {
            (Some(fd), _) => Some(fd.as_fd()),
            (None, Some(watched)) => Some(watched.get_ref().as_fd()),
            (None, None) => None,
        }
    }

    /// A pause starts: registers the socket for readiness and notes what
    /// has arrived so far.
    #[allow(unsafe_code)] // tokio registers a raw descriptor only unsafely
    pub fn watch(&mut self, now: Instant) {
        if let Some(fd) = self.socket.take() {
            // SAFETY: an OwnedFd stays open, on the same description,
            // until the AsyncFd that owns it is dropped or gives it back.
            match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
                Ok(watched) => self.watched = Some(watched),
                Err(e) => {
                    log::debug!("no arrival tracking: {e}");
                    self.detach();
                    return;
                }
            }
        }
        self.note(now);
    }

    /// The pause is over: the socket leaves the runtime's watch.
    pub fn unwatch(&mut self) {
        if let Some(watched) = self.watched.take() {
            self.socket = Some(watched.into_inner());
        }
    }

    /// Notes what has arrived by `now`; true if bytes came that were not
    /// noted yet. Turns tracking off if the count cannot be right.
    fn note(&mut self, now: Instant) -> bool {
        let Some(fd) = self.fd() else {
            return false;
        };
        match bytes_received(fd) {
            Ok(bytes) if self.samples.consistent(bytes) => self.samples.note(bytes, now),
            Ok(bytes) => {
                log::warn!(
                    "receipt stamps: the packets read add up to more than the {bytes} bytes the connection received; stamping on read for this connection"
                );
                self.detach();
                false
            }
            Err(e) => {
                log::debug!("no arrival tracking: {e}");
                self.detach();
                false
            }
        }
    }

    /// Waits, while watched, for the socket to be readable and notes what
    /// arrived; true if that was new. Never returns when not watched.
    pub async fn next_arrival(&mut self) -> bool {
        let Some(watched) = &self.watched else {
            return std::future::pending().await;
        };
        match watched.readable().await {
            Ok(mut ready) => ready.clear_ready(),
            Err(e) => {
                log::debug!("no arrival tracking: {e}");
                self.detach();
                return false;
            }
        }
        self.note(Instant::now())
    }

    /// Has the kernel send the TCP ack for what was read now rather than
    /// later. After our own packets (a group's acks) the kernel holds its
    /// acks back for a while, hoping to send them with our next packet,
    /// and a broker with Nagle's algorithm on sends nothing more until one
    /// comes: the next message would arrive up to tens of milliseconds
    /// late.
    pub fn ack_now(&self) {
        if let Some(fd) = self.fd() {
            let _ = rustix::net::sockopt::set_tcp_quickack(fd, true);
        }
    }

    /// Whether bytes wait unread in the socket: then the last read ended
    /// at a boundary of a stream that is already there (a backlog after
    /// a connect, the broker's next window), not a light stream, and a
    /// pause would only hold it up. False when not tracking.
    pub fn waiting(&self) -> bool {
        self.fd()
            .is_some_and(|fd| rustix::io::ioctl_fionread(fd).is_ok_and(|n| n > 0))
    }

    /// When a packet of `size` bytes, read at `now`, arrived.
    pub fn packet(&mut self, size: usize, now: Instant) -> Instant {
        if !self.is_tracking() {
            return now;
        }
        self.samples.packet(size as u64, now)
    }
}

/// The TCP socket of this process connected to one of `peers`, duplicated;
/// None when there is none, or more than one (which one is the session's
/// cannot be told).
#[allow(unsafe_code)] // std borrows a descriptor by number only unsafely
fn find_socket(peers: &[SocketAddr]) -> Option<OwnedFd> {
    let mut found: Option<OwnedFd> = None;
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(raw) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // SAFETY: the descriptor is only used for the calls below, each of
        // which fails cleanly on a descriptor that was closed meanwhile.
        // The duplicate it yields is checked again, as our own.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        if !connected_to(fd, peers) {
            continue;
        }
        let Ok(dup) = rustix::io::fcntl_dupfd_cloexec(fd, 0) else {
            continue;
        };
        if connected_to(dup.as_fd(), peers) {
            if found.is_some() {
                return None;
            }
            found = Some(dup);
        }
    }
    found
}

/// Whether `fd` is a TCP socket connected to one of `peers`.
fn connected_to(fd: BorrowedFd<'_>, peers: &[SocketAddr]) -> bool {
    use rustix::net::{SocketAddrAny, SocketType, getpeername, sockopt};
    if !matches!(sockopt::socket_type(fd), Ok(SocketType::STREAM)) {
        return false;
    }
    let Ok(Some(peer)) = getpeername(fd) else {
        return false;
    };
    let peer: Result<SocketAddr, _> = SocketAddrAny::try_into(peer);
    peer.is_ok_and(|p| peers.contains(&p)) && bytes_received(fd).is_ok()
}

/// The bytes the TCP connection on `fd` has received since it was made.
#[allow(unsafe_code)] // getsockopt(TCP_INFO): no safe wrapper has it
fn bytes_received(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is
    // that large, and sets `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + 8;
    if (len as usize) < needed {
        // Kernels before 4.1 do not count.
        return Err(std::io::Error::from(std::io::ErrorKind::Unsupported));
    }
    // SAFETY: zeroed, then (partly) written by the kernel: every field is
    // an integer, for which any bytes are a value.
    Ok(unsafe { info.assume_init() }.tcpi_bytes_received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn each_packet_takes_the_arrival_that_brought_its_last_byte() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        // CONNACK read at once (no samples: read time).
        assert_eq!(s.packet(4, t0), t0);
        // A pause starts with 4 bytes received; three 30-byte packets
        // arrive 20 ms apart, the last two in one segment.
        s.note(4, t0 + MS);
        s.note(34, t0 + 20 * MS);
        s.note(94, t0 + 40 * MS);
        let read = t0 + 93 * MS;
        assert_eq!(s.packet(30, read), t0 + 20 * MS);
        assert_eq!(s.packet(30, read), t0 + 40 * MS);
        assert_eq!(s.packet(30, read), t0 + 40 * MS);
        // One that came after the last arrival noted: stamped when read.
        assert_eq!(s.packet(30, read + MS), read + MS);
    }

    #[test]
    fn a_packet_split_over_arrivals_takes_the_last() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        s.packet(4, t0);
        s.note(1004, t0 + 10 * MS);
        s.note(3004, t0 + 12 * MS);
        assert_eq!(s.packet(3000, t0 + 50 * MS), t0 + 12 * MS);
    }

    #[test]
    fn a_repeated_count_keeps_the_earlier_time_and_the_log_is_bounded() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        assert!(s.note(10, t0));
        assert!(!s.note(10, t0 + 50 * MS));
        assert_eq!(s.packet(10, t0 + 60 * MS), t0);
        for i in 0..(MAX_SAMPLES as u64 + 10) {
            s.note(20 + i, t0);
        }
        assert_eq!(s.samples.len(), MAX_SAMPLES);
    }

    #[test]
    fn a_count_below_what_was_read_is_inconsistent() {
        let mut s = Samples::default();
        s.packet(100, Instant::now());
        assert!(s.consistent(100));
        assert!(!s.consistent(99));
    }

    #[test]
    fn the_kernel_counts_what_a_connection_received() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.write_all(&[7u8; 1234]).unwrap();
        if let Err(e) = bytes_received(client.as_fd()) {
            // qemu-user passes TCP_INFO on as an int: no count there, and
            // the daemon stamps on read (tested by the e2e suites).
            assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
            eprintln!("TCP_INFO does not count bytes here ({e}); skipped");
            return;
        }
        let until = Instant::now() + Duration::from_secs(10);
        while bytes_received(client.as_fd()).unwrap() < 1234 && Instant::now() < until {
            std::thread::sleep(MS);
        }
        assert_eq!(bytes_received(client.as_fd()).unwrap(), 1234);
        // Found among the process's descriptors by its peer, as a
        // duplicate that counts the same.
        let dup = find_socket(&[addr]).expect("the client's socket");
        assert_eq!(bytes_received(dup.as_fd()).unwrap(), 1234);
        // Those bytes wait unread: a pause would only hold them up.
        drop(dup);
        let mut arrivals = Arrivals::attach(&[addr]);
        assert!(arrivals.waiting());
        drop(server);
        let mut rest = Vec::new();
        let mut client = client;
        client.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len(), 1234);
        assert!(!arrivals.waiting(), "all read: nothing waits");
        arrivals.detach();
        assert!(!arrivals.waiting(), "not tracking");
    }
}
