//! Sleeping in poll(2) until a file descriptor is ready or someone wakes
//! the thread: a listening socket, an inotify queue, and an eventfd
//! ([`Waker`]) that shutdown (or anyone else) writes to.
//!
//! It exists so that threads waiting on the kernel rather than on a
//! condition variable sleep without a timeout and still stop at once. It
//! owns the eventfd and nothing else; what readiness means is the
//! caller's.

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
/// `shutdown`, one at a time, sleeping in poll(2) between them. A failed
/// `accept` (out of file descriptors, say) is retried after a pause
/// instead of in a loop.
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
        loop {
            match accept(listener) {
                Ok(conn) => handle(conn),
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
}
