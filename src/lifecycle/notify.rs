//! systemd's notify protocol, written against `$NOTIFY_SOCKET` directly
//! (one datagram per message, `KEY=VALUE` lines): `READY=1`, `STATUS=` and
//! `STOPPING=1`. It owns only the socket: what to say and when is the
//! caller's. Without `$NOTIFY_SOCKET` (not under systemd, or
//! `Type=simple`) every call does nothing.
//!
//! A failed send is ignored: the service must never stop because its
//! supervisor went away. It must never send a secret.

use std::os::unix::net::{SocketAddr, UnixDatagram};

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The socket named by `$NOTIFY_SOCKET`: a path, or `@name` for an
    /// abstract socket.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            use std::os::unix::ffi::OsStrExt as _;
            let bytes = name.as_bytes();
            let addr = match bytes.strip_prefix(b"@") {
                Some(abstract_name) => {
                    use std::os::linux::net::SocketAddrExt as _;
                    SocketAddr::from_abstract_name(abstract_name).ok()?
                }
                None => SocketAddr::from_pathname(std::path::Path::new(&name)).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { target }
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `message` (one or more `KEY=VALUE` lines).
    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            log::debug!("cannot notify systemd: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
        };
        n.send("READY=1\nSTATUS=up");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
        let none = Notifier { target: None };
        assert!(!none.is_enabled());
        none.send("READY=1");
    }
}
