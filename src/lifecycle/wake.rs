//! Sleeping in poll(2) until a file descriptor is ready or someone wakes
//! the thread: a listening socket, an inotify queue, and an eventfd
//! ([`Waker`]) that shutdown (or anyone else) writes to; and the two loops
//! that serve a listener so: a connection at a time, or many requests.
//!
//! It exists so that threads waiting on the kernel rather than on a
//! condition variable sleep without a timeout and still stop at once. What
//! readiness or a request means is the caller's.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};

use crate::shutdown::Shutdown;

/// An eventfd: [`Waker::wake`] makes it readable until [`Waker::drain`].
#[derive(Clone)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    pub fn new() -> std::io::Result<Waker> {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Waker { fd: Arc::new(fd) })
    }

    /// A waker that shutdown wakes.
    pub fn for_shutdown(shutdown: &Shutdown) -> std::io::Result<Waker> {
        let waker = Waker::new()?;
        let woken = waker.clone();
        shutdown.on_trigger(move || woken.wake());
        Ok(waker)
    }

    pub fn wake(&self) {
        let _ = rustix::io::write(&*self.fd, &1u64.to_ne_bytes());
    }

    /// Reads the count back, so that the next wait sleeps again.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*self.fd, &mut buf);
    }
}

/// Sleeps until one of `fds` is readable, `waker` is woken or `timeout`
/// passes (None: no timeout). Returns which of `fds` are readable, and
/// whether the waker was (it is drained then). An interrupted wait returns
/// with nothing ready.
pub fn wait(fds: &[BorrowedFd<'_>], waker: &Waker, timeout: Option<Duration>) -> (Vec<bool>, bool) {
    let timeout = timeout.map(|t| {
        rustix::event::Timespec::try_from(t.max(Duration::from_millis(1))).unwrap_or(
            rustix::event::Timespec {
                tv_sec: i64::from(u32::MAX),
                tv_nsec: 0,
            },
        )
    });
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
        .collect();
    polled.push(PollFd::new(&*waker.fd, PollFlags::IN));
    if rustix::event::poll(&mut polled, timeout.as_ref()).is_err() {
        return (vec![false; fds.len()], false);
    }
    let ready: Vec<bool> = polled.iter().map(|p| !p.revents().is_empty()).collect();
    let woken = ready[fds.len()];
    if woken {
        waker.drain();
    }
    (ready[..fds.len()].to_vec(), woken)
}

/// Serves connections on `listener` (made non-blocking here) until
/// `shutdown`, one at a time, sleeping in poll(2) between them.
pub fn serve_each<L, C>(
    listener: &L,
    shutdown: &Shutdown,
    accept: impl Fn(&L) -> std::io::Result<C>,
    mut handle: impl FnMut(C),
) -> std::io::Result<()>
where
    L: AsFd,
{
    let waker = Waker::for_shutdown(shutdown)?;
    rustix::io::ioctl_fionbio(listener, true)?;
    while !shutdown.is_triggered() {
        let (ready, _) = wait(&[listener.as_fd()], &waker, None);
        if !ready.first().copied().unwrap_or(false) {
            continue;
        }
        accept_all(listener, shutdown, &accept, &mut handle);
    }
    Ok(())
}

/// Takes every connection waiting on the (non-blocking) `listener`. A
/// failed `accept` (out of file descriptors, say) is retried after a pause
/// instead of in a loop.
fn accept_all<L, C>(
    listener: &L,
    shutdown: &Shutdown,
    accept: &impl Fn(&L) -> std::io::Result<C>,
    mut each: impl FnMut(C),
) {
    loop {
        match accept(listener) {
            Ok(conn) => each(conn),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("cannot accept a connection: {e}");
                shutdown.sleep(Duration::from_millis(100));
                break;
            }
        }
    }
}

/// How [`serve_requests`] treats its connections.
pub struct Requests {
    /// Connections waiting for their request at once; past it, the one
    /// waiting longest is closed.
    pub most: usize,
    /// How long a connection may take to send its request.
    pub within: Duration,
    /// The most bytes of a request kept: a longer one is handled as it is.
    pub max_bytes: usize,
}

/// Serves requests on `listener` (non-blocking here) until `shutdown`,
/// reading every waiting connection as its bytes come, in one poll(2)
/// loop: a connection that sends nothing costs a slot until its time is
/// up, never another client's turn. `handle` gets a connection (blocking
/// again) once `complete` says its request is whole, or at its end of
/// file.
pub fn serve_requests<L, C>(
    listener: &L,
    shutdown: &Shutdown,
    rules: &Requests,
    accept: impl Fn(&L) -> std::io::Result<C>,
    complete: impl Fn(&[u8]) -> bool,
    mut handle: impl FnMut(C, &[u8]),
) -> std::io::Result<()>
where
    L: AsFd,
    C: AsFd,
{
    use std::time::Instant;
    let waker = Waker::for_shutdown(shutdown)?;
    rustix::io::ioctl_fionbio(listener, true)?;
    let mut waiting: std::collections::VecDeque<(C, Vec<u8>, Instant)> = Default::default();
    while !shutdown.is_triggered() {
        let now = Instant::now();
        waiting.retain(|(_, _, since)| now.duration_since(*since) < rules.within);
        let timeout = waiting
            .front()
            .map(|(_, _, since)| (*since + rules.within).saturating_duration_since(now));
        let ready = {
            let mut fds = vec![listener.as_fd()];
            fds.extend(waiting.iter().map(|(c, _, _)| c.as_fd()));
            wait(&fds, &waker, timeout).0
        };
        // Read before accepting, so that the indexes still match.
        let mut i = waiting.len();
        while i > 0 {
            i -= 1;
            if !ready.get(i + 1).copied().unwrap_or(false) {
                continue;
            }
            let (conn, buf, _) = &mut waiting[i];
            let mut chunk = [0u8; 1024];
            let whole = match rustix::io::read(conn.as_fd(), &mut chunk) {
                Ok(0) => true,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    complete(buf) || buf.len() >= rules.max_bytes
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => false,
                Err(_) => {
                    waiting.remove(i);
                    continue;
                }
            };
            if whole {
                let (conn, buf, _) = waiting.remove(i).expect("index in range");
                let _ = rustix::io::ioctl_fionbio(&conn, false);
                handle(conn, &buf);
            }
        }
        if !ready.first().copied().unwrap_or(false) {
            continue;
        }
        accept_all(listener, shutdown, &accept, |conn| {
            let _ = rustix::io::ioctl_fionbio(&conn, true);
            if waiting.len() >= rules.most.max(1) {
                waiting.pop_front();
            }
            waiting.push_back((conn, Vec::new(), Instant::now()));
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeping_server_wakes_for_a_connection_and_stops_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let shutdown = Shutdown::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let s = shutdown.clone();
        let server = std::thread::spawn(move || {
            serve_each(
                &listener,
                &s,
                |l| l.accept().map(|(c, _)| c),
                |_conn| tx.send(()).unwrap(),
            )
        });
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        // The socket file is gone: shutdown still stops it.
        std::fs::remove_file(&path).unwrap();
        shutdown.trigger();
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_request_is_served_while_other_connections_idle_and_the_oldest_goes() {
        use std::io::{Read as _, Write as _};
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let server = std::thread::spawn(move || {
            let rules = Requests {
                most: 4,
                within: Duration::from_secs(30),
                max_bytes: 64,
            };
            serve_requests(
                &listener,
                &s,
                &rules,
                |l| l.accept().map(|(c, _)| c),
                |r| r.ends_with(b"\n"),
                |mut c: TcpStream, r: &[u8]| {
                    let _ = c.write_all(r);
                },
            )
        });
        let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"he").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c.write_all(b"llo\n").unwrap();
        let mut back = String::new();
        c.read_to_string(&mut back).unwrap();
        assert_eq!(back, "hello\n");
        // Past `most`, the connection waiting longest is closed.
        let _more: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut oldest = &idle[0];
        oldest
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(oldest.read(&mut [0u8; 1]).unwrap(), 0);
        shutdown.trigger();
        server.join().unwrap().unwrap();
    }
}
