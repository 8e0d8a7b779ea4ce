//! One read-only text page over plain HTTP/1.0 on its own thread: the
//! Prometheus endpoints of both daemons. It reads every waiting
//! connection in one poll(2) loop ([`wake::serve_requests`]), so an idle
//! client never holds up a scrape. It owns no content: `render` makes the
//! page for each request, and must never put a secret on it.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::lifecycle::wake;
use crate::shutdown::Shutdown;

/// A scraper sends its request at once; 64 connections waiting on a
/// loopback port are far more than Prometheus and a person with curl.
const REQUESTS: wake::Requests = wake::Requests {
    most: 64,
    within: Duration::from_secs(2),
    max_bytes: 8 << 10,
};

/// Serves `GET {path}` on `listen` until `shutdown`, on thread `name`.
pub fn serve(
    name: &'static str,
    listen: SocketAddr,
    path: &'static str,
    shutdown: Shutdown,
    render: impl Fn() -> String + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(listen)?;
    log::info!(
        "Prometheus metrics on http://{}{path}",
        listener.local_addr()?
    );
    crate::lifecycle::threads::spawn(name, move || {
        let served = wake::serve_requests(
            &listener,
            &shutdown,
            &REQUESTS,
            |l| l.accept().map(|(conn, _)| conn),
            |request| {
                request.windows(4).any(|w| w == b"\r\n\r\n")
                    || request.windows(2).any(|w| w == b"\n\n")
            },
            |conn, request| answer(conn, request, path, &render),
        );
        if let Err(e) = served {
            log::warn!("the {name} endpoint stopped: {e}");
        }
    })
}

/// One request: the page for `GET {path}`, 404 for anything else.
fn answer(mut conn: std::net::TcpStream, request: &[u8], path: &str, render: &impl Fn() -> String) {
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let line = String::from_utf8_lossy(request);
    let line = line.lines().next().unwrap_or_default();
    let wanted = format!("GET {path}");
    let answer = if line == wanted || line.starts_with(&format!("{wanted} ")) {
        let body = render();
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
    };
    let _ = conn.write_all(answer.as_bytes());
}
