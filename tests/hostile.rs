//! Attacks from the network, tried on loopback against the real binaries:
//! each test here reproduced its attack against the code before its fix.
//!
//! - A man in the middle holding another certificate from the authority's
//!   own CA gets nothing from a gateway, at enrollment or after; through an
//!   HTTP CONNECT proxy the pin holds just the same.
//! - A sensor's message with 120,000 fields is refused at once, and the
//!   broker session that carries it never times out.
//! - A 200 MiB message is refused before it is read into memory, and the
//!   pipeline flows on.
//! - 1,100 connections trickling request bodies (or headers) from many
//!   addresses leave an enrolled gateway's lease requests answered within
//!   a second.
//! - A flood of bad enrollments is throttled per address and costs the
//!   audit trail a record or two a minute, not one each.
//! - Whatever lands in the ticket directory (a 1 GB file, invalid UTF-8, a
//!   symlink, a FIFO, a planted `.reason` symlink) is refused by name
//!   without being read whole, followed or waited on.
//! - Every file holding sensor data or a secret is private, and so are the
//!   directories, whatever the umask.
#![allow(unsafe_code)] // attacks need raw system calls (a FIFO, resource limits)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasegate::wire::ticket::Ticket;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::authority::{AuthorityServer, role, v1_backend};
use support::pki::{Ca, Leaf};
use support::{Daemon, Influx, Mosquitto, publish_all, start_static_daemon, wait_until};

/// A TCP front for the authority that passes the first `passthrough`
/// connections through untouched and terminates every later one with its
/// own certificate, keeping whatever the client sends it once TLS is up.
struct Interceptor {
    port: u16,
    passthrough: Arc<AtomicUsize>,
    /// Application bytes the interceptor decrypted.
    received: Arc<Mutex<Vec<u8>>>,
    /// Connections it terminated with its own certificate.
    intercepted: Arc<AtomicUsize>,
}

impl Interceptor {
    fn start(upstream: u16, leaf: &Leaf, ca_pem: &str, passthrough: usize) -> Interceptor {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(format!("{}{ca_pem}", leaf.pem).as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
        );
        let i = Interceptor {
            port,
            passthrough: Arc::new(AtomicUsize::new(passthrough)),
            received: Arc::default(),
            intercepted: Arc::default(),
        };
        let (left, received, intercepted) = (
            i.passthrough.clone(),
            i.received.clone(),
            i.intercepted.clone(),
        );
        std::thread::spawn(move || {
            // Bounded: a test makes a handful of connections.
            for stream in listener.incoming().take(64) {
                let Ok(client) = stream else { continue };
                let pass = left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if pass {
                    relay(client, upstream);
                } else {
                    intercepted.fetch_add(1, Ordering::SeqCst);
                    let (config, received) = (config.clone(), received.clone());
                    std::thread::spawn(move || terminate(client, config, received));
                }
            }
        });
        i
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

/// Copies bytes both ways between `client` and the authority.
fn relay(client: TcpStream, upstream: u16) {
    let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
    for (mut from, mut to) in [
        (client.try_clone().unwrap(), server.try_clone().unwrap()),
        (server, client),
    ] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
}

/// Plays the authority with the interceptor's own certificate and keeps
/// every byte the client sends once the handshake completes.
fn terminate(
    mut sock: TcpStream,
    config: Arc<rustls::ServerConfig>,
    received: Arc<Mutex<Vec<u8>>>,
) {
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let mut buf = [0u8; 4096];
    while let Ok(n) = tls.read(&mut buf) {
        if n == 0 {
            break;
        }
        received.lock().unwrap().extend_from_slice(&buf[..n]);
        if received
            .lock()
            .unwrap()
            .windows(4)
            .any(|w| w == b"\r\n\r\n")
        {
            // Enough to look like the authority to a careless client.
            let _ = tls.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            break;
        }
    }
}

/// Backend and role of an authority whose InfluxDB is never reached:
/// enrollment does not touch InfluxDB.
fn unreached_backend() -> String {
    format!(
        "{}{}",
        v1_backend("main", "http://127.0.0.1:9", "admin", "pw"),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    )
}

/// Backend and role of an authority on a real InfluxDB 1.x, for tests that
/// need leases to be made.
fn influx_backend(influx: &Influx) -> String {
    format!(
        "{}{}",
        v1_backend(
            "main",
            &influx.url(),
            support::ADMIN_USER,
            support::ADMIN_PASSWORD
        ),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    )
}

/// A leased gateway's config: its state and ticket dirs in `{dir}`.
fn leased_config(broker: &Mosquitto, client_id: &str) -> String {
    format!(
        r#"state_dir = "{{dir}}/state"
ticket_dir = "{{dir}}/tickets"
[mqtt]
url = "{}"
client_id = "{client_id}"
[[mqtt.subscribe]]
topic = "sensors/#"
"#,
        broker.url()
    )
}

/// Publishes 50 points of measurement `after` and waits for all of them
/// in InfluxDB: the pipeline still flows.
fn fifty_more_arrive(broker: &Mosquitto, influx: &Influx, daemon: &Daemon) {
    let points = (0..50)
        .map(|i| {
            (
                "sensors/after".to_owned(),
                format!("after seq={i}i {}", 1_700_000_000_000_000_000u64 + i).into_bytes(),
            )
        })
        .collect();
    publish_all(broker.port, "after-sensor", points, Duration::from_secs(20));
    influx.assert_arrives("after", 50, Duration::from_secs(30), daemon);
}

/// An HTTPS authority serving `leaf` (with its CA in the chain) on the
/// loopback, with a role for `service = iot-sensor` on a v1 backend that is
/// never reached (enrollment does not touch InfluxDB).
fn authority_on(leaf: &Leaf, ca: &Ca) -> AuthorityServer {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write(dir.path(), "authority", Some(&ca.pem));
    let body = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n{}",
        cert.display(),
        key.display(),
        unreached_backend()
    );
    let a = AuthorityServer::start_with(&body, true, "info");
    // The certificate files must outlive the server's start.
    let _kept = dir.keep();
    a
}

/// The ticket the authority issues, with its URL pointed at `url`.
fn ticket_via(authority: &AuthorityServer, url: &str) -> (Ticket, String) {
    let mut ticket = Ticket::parse(&authority.ticket("iot-sensor", &[])).unwrap();
    ticket.url = url.to_owned();
    (ticket.clone(), ticket.encode())
}

#[test]
fn a_man_in_the_middle_with_a_certificate_from_the_same_ca_gets_nothing() {
    let ca = Ca::new("the authority's CA");
    let real = ca.leaf("authority");
    let forged = ca.leaf("interceptor");
    let authority = authority_on(&real, &ca);
    let pinned = leasegate::secret::sha256_hex(&real.der);

    // At enrollment: the interceptor lets n connections through to the real
    // authority, then answers every later one itself.
    for passthrough in [0, 1] {
        let mitm = Interceptor::start(authority.port, &forged, &ca.pem, passthrough);
        let (ticket, line) = ticket_via(&authority, &mitm.url());
        assert_eq!(ticket.cert_sha256.as_deref(), Some(pinned.as_str()));
        let result = leasegate::agent::credential::identity::redeem(&line, "gw-mitm", false);
        let got = mitm.received();
        assert!(
            got.is_empty(),
            "passthrough {passthrough}: the interceptor read {} bytes:\n{}",
            got.len(),
            String::from_utf8_lossy(&got)
        );
        assert!(
            !String::from_utf8_lossy(&got).contains(ticket.secret.expose()),
            "the ticket secret reached the interceptor"
        );
        match result {
            // Every connection the client made went to the real authority.
            Ok(_) => assert_eq!(mitm.intercepted.load(Ordering::SeqCst), 0),
            Err(e) => {
                let text = leasegate::error_chain(&e);
                assert_eq!(e.reason_code(), "certificate_mismatch", "{text}");
                assert!(
                    text.contains(&pinned),
                    "names the pinned fingerprint: {text}"
                );
                let found = leasegate::secret::sha256_hex(&forged.der);
                assert!(text.contains(&found), "names the one it found: {text}");
            }
        }
    }

    // After enrollment: the identity was made through the real authority;
    // then the interceptor takes over every connection.
    let mitm = Interceptor::start(authority.port, &forged, &ca.pem, usize::MAX);
    let (_, line) = ticket_via(&authority, &mitm.url());
    let identity = leasegate::agent::credential::identity::redeem(&line, "gw-later", false)
        .expect("enrollment through the real authority");
    mitm.passthrough.store(0, Ordering::SeqCst);
    let client = identity.client().expect("a client for the stored identity");
    let lease = client.create_lease(&identity.credential, None, None);
    let listed = client.leases(&identity.credential);
    let got = mitm.received();
    assert!(
        got.is_empty(),
        "the interceptor read {} bytes after enrollment:\n{}",
        got.len(),
        String::from_utf8_lossy(&got)
    );
    assert!(mitm.intercepted.load(Ordering::SeqCst) >= 2);
    for err in [
        lease.unwrap_err().to_string(),
        listed.unwrap_err().to_string(),
    ] {
        assert!(err.contains(&pinned), "a mismatch naming the pin: {err}");
    }
    assert!(!authority.log().contains(identity.credential.expose()));
}

/// An HTTPS authority serving `leaf`, its tickets pinning `ca`.
fn authority_pinning_ca(leaf: &Leaf, ca: &Ca) -> AuthorityServer {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write(dir.path(), "authority", Some(&ca.pem));
    let ca_file = ca.write(dir.path(), "ca.pem");
    let body = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\nca_cert_file = \"{}\"\n{}",
        cert.display(),
        key.display(),
        ca_file.display(),
        unreached_backend()
    );
    let a = AuthorityServer::start_with(&body, true, "info");
    let _kept = dir.keep();
    a
}

#[test]
fn impostors_with_the_pinned_cas_chain_are_named_as_attacks_not_weather() {
    let ca = Ca::new("the authority's CA");
    let authority = authority_pinning_ca(&ca.leaf("authority"), &ca);
    let look_alike = Ca::new("the authority's CA");
    let impostors = [
        (
            "a leaf for another host",
            ca.leaf_with("elsewhere", &["elsewhere.example"], false, false),
            "not valid for",
        ),
        (
            "an expired leaf",
            ca.leaf_with("old", &["localhost"], true, true),
            "expired",
        ),
        (
            "a leaf of a look-alike CA",
            look_alike.leaf("authority"),
            "not signed by the pinned CA",
        ),
    ];
    for (what, leaf, why) in impostors {
        // Each sends the real CA's certificate in its chain: it is public.
        let mitm = Interceptor::start(authority.port, &leaf, &ca.pem, 0);
        let (ticket, line) = ticket_via(&authority, &mitm.url());
        assert!(ticket.ca_sha256.is_some(), "the ticket pins the CA");
        let e = leasegate::agent::credential::identity::redeem(&line, "gw", false).expect_err(what);
        let text = leasegate::error_chain(&e);
        assert_eq!(e.reason_code(), "certificate_untrusted", "{what}: {text}");
        assert!(!e.is_transient(), "{what} taken for weather: {text}");
        assert!(text.contains(why), "{what}: {text} does not say {why:?}");
        assert!(mitm.received().is_empty(), "{what}: bytes reached it");
    }

    // Listed first, an impostor is passed over: the identity names the
    // authority that answered.
    let mitm = Interceptor::start(authority.port, &look_alike.leaf("authority"), &ca.pem, 0);
    let mut ticket = Ticket::parse(&authority.ticket("iot-sensor", &[])).unwrap();
    ticket.url = mitm.url();
    ticket.urls = vec![mitm.url(), authority.url()];
    let identity = leasegate::agent::credential::identity::redeem(&ticket.encode(), "gw-2", false)
        .expect("enrolled at the real authority");
    assert_eq!(identity.authority_url, authority.url());
    assert!(mitm.received().is_empty());
}

/// One line of protocol just under 1 MiB with 120,000 distinct fields.
fn wide_line() -> String {
    let mut line = String::from("wide ");
    for i in 0..120_000u32 {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&format!("{i:x}=1"));
    }
    line.push_str(" 1700000000000000000");
    assert!(line.len() < 1 << 20, "{} bytes", line.len());
    line
}

#[test]
fn a_message_with_120k_fields_is_refused_at_once_and_the_session_stays() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let daemon = start_static_daemon(&broker, &influx, "gw-wide", "");
    let dead_letters = daemon.dir.path().join("state/dead-letter.jsonl");
    let started = std::time::Instant::now();
    publish_all(
        broker.port,
        "wide-sensor",
        vec![("sensors/wide".to_owned(), wide_line().into_bytes())],
        Duration::from_secs(10),
    );
    let published = started.elapsed();
    let refused = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&dead_letters).is_ok_and(|t| t.contains("sensors/wide"))
    });
    let took = started.elapsed() - published;
    assert!(refused, "not refused within 10 s:\n{}", daemon.log());
    eprintln!("refused {took:?} after the broker had it");
    let dead = std::fs::read_to_string(&dead_letters).unwrap();
    assert!(
        dead.contains("fields"),
        "the reason names the field count: {dead}"
    );
    // The pipeline flows on; the session was never cut.
    fifty_more_arrive(&broker, &influx, &daemon);
    let log = daemon.log();
    assert_eq!(
        log.matches("connected to MQTT broker").count(),
        1,
        "the session was cut:\n{log}"
    );
    assert!(took < Duration::from_secs(1), "refused only after {took:?}");
}

/// The most memory the process has held (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_200_mib_message_is_refused_unread_and_memory_stays_bounded() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let mut daemon = start_static_daemon(&broker, &influx, "gw-huge", "");
    let dead_letters = daemon.dir.path().join("state/dead-letter.jsonl");
    let huge = vec![b'x'; 200 << 20];
    publish_all(
        broker.port,
        "huge-sensor",
        vec![("sensors/huge".to_owned(), huge)],
        Duration::from_secs(60),
    );
    let refused = wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&dead_letters).is_ok_and(|t| t.contains("sensors/huge"))
    });
    assert!(refused, "not refused within 60 s:\n{}", daemon.log());
    let dead = std::fs::read_to_string(&dead_letters).unwrap();
    assert!(
        dead.contains("209715200 bytes"),
        "the record names the size: {}",
        &dead[..dead.len().min(2000)]
    );
    // The pipeline flows on, and the broker does not hand the message
    // over again.
    fifty_more_arrive(&broker, &influx, &daemon);
    std::thread::sleep(Duration::from_secs(2));
    let records = std::fs::read_to_string(&dead_letters)
        .unwrap()
        .matches("sensors/huge")
        .count();
    assert_eq!(records, 1, "refused once, not on every redelivery");
    assert!(daemon.is_running());
    let peak = peak_rss(daemon.pid());
    eprintln!("peak RSS {} KiB", peak / 1024);
    assert!(
        peak < 32 << 20,
        "peak RSS {} MiB after a 200 MiB message",
        peak >> 20
    );
}

/// A leased gateway used through its command line (`leasegate enroll`,
/// `lease create`): its configuration and state in a temporary directory,
/// enrolled with a ticket of `authority`, calling from 127.0.0.1.
struct CliGateway {
    dir: tempfile::TempDir,
}

impl CliGateway {
    fn enrolled(broker: &Mosquitto, authority: &AuthorityServer, client_id: &str) -> CliGateway {
        let dir = tempfile::tempdir().unwrap();
        let config =
            leased_config(broker, client_id).replace("{dir}", &dir.path().display().to_string());
        std::fs::write(dir.path().join("leasegate.toml"), config).unwrap();
        let gw = CliGateway { dir };
        let ticket = gw.dir.path().join("gw.ticket");
        std::fs::write(&ticket, authority.ticket("iot-sensor", &[])).unwrap();
        gw.run(&["enroll", ticket.to_str().unwrap()])
            .expect("enrolled");
        gw
    }

    /// Runs `leasegate ARGS`: its standard output, or both outputs when
    /// it fails.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = support::leasegate_command()
            .arg("--config")
            .arg(self.dir.path().join("leasegate.toml"))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match out.status.success() {
            true => Ok(text),
            false => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
        }
    }
}

/// A TCP connection to `to` from the loopback address `from` (all of
/// 127.0.0.0/8 is the loopback on Linux), so that one test can be many
/// clients.
fn connect_from(
    from: std::net::Ipv4Addr,
    to: std::net::SocketAddrV4,
) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    fn sockaddr(a: std::net::SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor owned here; on success it
    // moves into the TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(std::net::SocketAddrV4::new(from, 0));
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(to);
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Raises this process's open-file limit to its hard limit (children
/// started after inherit it): the test holds over a thousand sockets.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

#[test]
fn slow_request_bodies_cannot_lock_an_enrolled_gateway_out() {
    raise_fd_limit();
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let authority = AuthorityServer::start(&influx_backend(&influx));
    // A gateway (the leasegate binary) enrolls and leases before the
    // attack: an established identity, on 127.0.0.1.
    let broker = Mosquitto::start();
    let cli = CliGateway::enrolled(&broker, &authority, "gw-steady");
    let gateway = |args: &[&str]| cli.run(args);
    let lease = || {
        let started = std::time::Instant::now();
        let result = gateway(&["lease", "create", "--ttl", "1m", "--json"]);
        let took = started.elapsed();
        // As a gateway does, the lease it replaces goes (its role allows
        // only a few at once).
        if let Ok(json) = &result {
            let lease: serde_json::Value = serde_json::from_str(json).unwrap();
            gateway(&["lease", "revoke", lease["id"].as_str().unwrap()]).expect("revoked");
        }
        (took, result)
    };
    let (_, first) = lease();
    first.expect("a lease before the attack");

    // Slow bodies (declared 60 KB, a byte every 2 s), then slow headers
    // (a header line a byte at a time): 1,100 connections each, from 44
    // other loopback addresses, more than the server serves at once.
    let target = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, authority.port);
    let slow_body = "POST /v1/enroll HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{";
    let slow_header = "POST /v1/leases HTTP/1.1\r\nhost: a\r\nx-slow: ";
    for (wave, head) in [("slow bodies", slow_body), ("slow headers", slow_header)] {
        let mut slow = Vec::new();
        for i in 0..1_100u32 {
            let from = std::net::Ipv4Addr::new(127, 0, 1, 2 + (i / 25) as u8);
            if let Ok(mut s) = connect_from(from, target) {
                s.set_write_timeout(Some(Duration::from_millis(200))).ok();
                if s.write_all(head.as_bytes()).is_ok() {
                    slow.push(s);
                }
            }
        }
        eprintln!("{wave}: {} connections open", slow.len());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trickle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Bounded: 10 rounds of 2 s.
                for _ in 0..10 {
                    for s in &mut slow {
                        let _ = s.write_all(b"x");
                    }
                    for _ in 0..20 {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        };
        // The gateway keeps getting its leases, each within a second,
        // while the trickle goes on.
        let mut worst = Duration::ZERO;
        for round in 0..12 {
            let (took, result) = lease();
            worst = worst.max(took);
            assert!(
                result.is_ok() && took < Duration::from_secs(1),
                "{wave}: lease {round}: {took:?} {:?}\n{}",
                result.err().map(|e| e.to_string()),
                support::tail(&authority.log_path(), 3000)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        stop.store(true, Ordering::SeqCst);
        trickle.join().unwrap();
        eprintln!("{wave}: slowest lease under attack {worst:?}");
    }
    assert!(
        authority.log().contains("refusing connections from"),
        "the refusals are logged"
    );
}

/// Keeps `per_address` idle connections from each of `addresses` open to
/// `target` (each reopened when the server closes it) until `stop`, or
/// 60 s at most; how many are open is in `open`.
fn idle_flood(
    target: std::net::SocketAddrV4,
    addresses: Vec<std::net::Ipv4Addr>,
    per_address: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut held: Vec<(std::net::Ipv4Addr, Option<TcpStream>)> = addresses
            .iter()
            .flat_map(|a| std::iter::repeat_n(*a, per_address))
            .map(|a| (a, None))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            for (from, conn) in &mut held {
                let closed = conn.as_ref().is_none_or(|c| {
                    c.set_nonblocking(true).ok();
                    matches!(c.peek(&mut [0u8; 1]), Ok(0))
                        || matches!(c.peek(&mut [0u8; 1]), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
                });
                if closed {
                    *conn = connect_from(*from, target).ok();
                }
            }
            open.store(
                held.iter().filter(|(_, c)| c.is_some()).count(),
                Ordering::SeqCst,
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[test]
fn a_restarted_authority_keeps_its_reserved_slots_for_known_gateways() {
    raise_fd_limit();
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let mut authority = AuthorityServer::start(&influx_backend(&influx));
    let broker = Mosquitto::start();
    let cli = CliGateway::enrolled(&broker, &authority, "gw-known");
    let lease = || {
        let json = cli.run(&["lease", "create", "--ttl", "1m", "--json"])?;
        let lease: serde_json::Value = serde_json::from_str(&json).unwrap();
        cli.run(&["lease", "revoke", lease["id"].as_str().unwrap()])
    };
    lease().expect("a lease before the restart");

    // Restarted (or failed over to): 24 addresses hold 32 idle connections
    // each, every one reopened when the server cuts it, filling all the
    // slots but the reserved share.
    authority.restart();
    let target = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, authority.port);
    let flooders = (0..24)
        .map(|i| std::net::Ipv4Addr::new(127, 0, 2, 2 + i))
        .collect();
    let (stop, open) = (
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let flood = idle_flood(target, flooders, 32, stop.clone(), open.clone());
    let full = wait_until(Duration::from_secs(20), || {
        open.load(Ordering::SeqCst) >= 768
    });
    assert!(
        full,
        "the flood holds {} connections",
        open.load(Ordering::SeqCst)
    );
    let mut failed = Vec::new();
    for call in 0..20 {
        if let Err(e) = lease() {
            failed.push(format!("{call}: {e}"));
        }
    }
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of 20 lease calls of a known gateway failed after a restart under the flood:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn a_flood_of_bad_enrollments_is_throttled_and_audited_in_summary() {
    let authority = AuthorityServer::start(&unreached_backend());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("{}/v1/enroll", authority.url());
    let unknown = leasegate::secret::random_base64(leasegate::wire::ticket::SECRET_BYTES);
    let body = format!(r#"{{"ticket_secret":"{unknown}","identity_name":"flood"}}"#);
    let mut statuses = std::collections::BTreeMap::new();
    let started = std::time::Instant::now();
    for _ in 0..6_000 {
        let r = agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.as_str())
            .unwrap();
        let retry = r.headers().get("retry-after").is_some();
        *statuses.entry((r.status().as_u16(), retry)).or_insert(0) += 1;
    }
    let took = started.elapsed();
    eprintln!("6,000 enrollments in {took:?}: {statuses:?}");
    // A burst gets through, then about one a second; the rest are told
    // when to come back.
    let answered = statuses.get(&(403, false)).copied().unwrap_or(0);
    assert!(
        answered <= 20 + took.as_secs() as usize + 2,
        "{answered} refusals answered in {took:?}: {statuses:?}"
    );
    assert!(statuses.get(&(429, true)).copied().unwrap_or(0) >= 6_000 - answered);
    // The audit trail has the first refusal in full, and the rest summed
    // up once their minute is over: not a record each.
    let log = authority.log();
    let audited = log.matches("audit: enroll refused ").count();
    assert!(
        audited <= 2,
        "{audited} audit records for one kind of refusal"
    );
    assert!(log.contains("ticket_unknown"), "{log}");
}

#[test]
fn hostile_files_in_the_ticket_directory_are_refused_unread() {
    use std::os::unix::fs::symlink;
    let broker = Mosquitto::start();
    let authority = AuthorityServer::start(&unreached_backend());
    let mut daemon = Daemon::start(&leased_config(&broker, "gw-tickets"));
    let dir = daemon.dir.path().join("tickets");
    assert!(wait_until(Duration::from_secs(10), || dir.is_dir()));
    let outside = daemon.dir.path().join("victim.txt");
    std::fs::write(&outside, "precious\n").unwrap();
    // A 1 GB ticket (sparse: no disk used).
    let big = std::fs::File::create(dir.join("big.ticket")).unwrap();
    big.set_len(1 << 30).unwrap();
    drop(big);
    // Invalid UTF-8.
    std::fs::write(dir.join("latin1.ticket"), b"LGT1.\xff\xfe\xfd\n").unwrap();
    // A symlink to a file outside.
    symlink(&outside, dir.join("link.ticket")).unwrap();
    // A FIFO: opening it for reading would wait for a writer forever.
    let fifo = std::ffi::CString::new(dir.join("fifo.ticket").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path made here.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    // A malformed ticket whose .reason is planted as a symlink to a file
    // outside.
    symlink(&outside, dir.join("planted.ticket.reason")).unwrap();
    std::fs::write(dir.join("planted.ticket"), "not a ticket\n").unwrap();

    let reason = |name: &str| std::fs::read_to_string(dir.join(format!("{name}.ticket.reason")));
    let settled = wait_until(Duration::from_secs(20), || {
        ["big", "latin1", "link", "planted"]
            .iter()
            .all(|n| reason(n).is_ok_and(|r| r.contains("ticket_malformed")))
    });
    let listing: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(settled, "{listing:?}\n{}", daemon.log());
    assert!(
        reason("big").unwrap().contains("64 KiB"),
        "{:?}",
        reason("big")
    );
    assert!(
        reason("latin1").unwrap().contains("UTF-8"),
        "{:?}",
        reason("latin1")
    );
    assert!(
        reason("link").unwrap().contains("not a regular file"),
        "{:?}",
        reason("link")
    );
    // Nothing outside the directory was read into a reason or written.
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious\n");
    assert!(!reason("link").unwrap().contains("precious"));
    // A reason says it once.
    let planted = reason("planted").unwrap();
    assert_eq!(
        planted.matches("does not start with LGT1.").count(),
        1,
        "{planted}"
    );
    assert!(
        std::fs::symlink_metadata(dir.join("link.ticket.rejected"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link itself is set aside, not what it points at"
    );
    // The watcher is not stuck on the FIFO: a good ticket still enrolls.
    let good = authority.ticket("iot-sensor", &[]);
    std::fs::write(dir.join("good.part"), format!("{good}\n")).unwrap();
    std::fs::rename(dir.join("good.part"), dir.join("good.ticket")).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || daemon
            .dir
            .path()
            .join("state/identity.json")
            .exists()),
        "{}",
        daemon.log()
    );
    assert!(daemon.is_running());
    let peak = peak_rss(daemon.pid());
    eprintln!("peak RSS {} KiB", peak / 1024);
    assert!(peak < 32 << 20, "peak RSS {} MiB", peak >> 20);
}

/// Modes of everything under `dir` that is not private to its owner.
fn not_private(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            found.push(format!("{} {mode:o}", d.display()));
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            // The status socket is 0660 on purpose (for the admin group,
            // in runtime_dir); it holds nothing, and in the state dir the
            // directory's own mode keeps others out.
            let socket = std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type());
            if meta.is_dir() {
                todo.push(path);
            } else if !socket && meta.permissions().mode() & 0o077 != 0 {
                found.push(format!(
                    "{} {:o}",
                    path.display(),
                    meta.permissions().mode() & 0o777
                ));
            }
        }
    }
    found
}

#[test]
fn state_and_spool_are_private_whatever_the_umask() {
    let broker = Mosquitto::start();
    let authority = AuthorityServer::start(&unreached_backend());
    let config = leased_config(&broker, "gw-private");
    // `leasegate enroll` as a tech would run it, under umask 0, before
    // the daemon ever ran: it makes the state dir itself.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("leasegate.toml"),
        config.replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();
    let ticket = dir.path().join("gw.ticket");
    std::fs::write(&ticket, authority.ticket("iot-sensor", &[])).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"umask 0; exec "$@""#)
        .arg("sh")
        .args(support::leasegate_argv())
        .arg("--config")
        .arg(dir.path().join("leasegate.toml"))
        .arg("enroll")
        .arg(&ticket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(not_private(&dir.path().join("state")), Vec::<String>::new());
    // The daemon (run with umask 0 by the harness) spools, dead-letters
    // and keeps its lease under it.
    let daemon = Daemon::start_in(dir, &config);
    assert!(
        daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    let messages = (0..20)
        .map(|i| {
            (
                "sensors/p".to_owned(),
                format!("p v={i} {}", 1_700_000_000_000_000_000u64 + i).into_bytes(),
            )
        })
        .chain([("sensors/p".to_owned(), b"not line protocol".to_vec())])
        .collect();
    publish_all(
        broker.port,
        "pub-private",
        messages,
        Duration::from_secs(10),
    );
    let state = daemon.dir.path().join("state");
    assert!(wait_until(Duration::from_secs(10), || state
        .join("dead-letter.jsonl")
        .exists()));
    assert!(std::fs::read_dir(state.join("spool")).unwrap().count() > 0);
    assert_eq!(not_private(&state), Vec::<String>::new());
}

/// An HTTP CONNECT proxy on the loopback: tunnels each connection to the
/// host it names and keeps every byte it relays (which must all be TLS).
struct ConnectProxy {
    port: u16,
    targets: Arc<Mutex<Vec<String>>>,
    relayed: Arc<Mutex<Vec<u8>>>,
}

impl ConnectProxy {
    fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (targets, relayed) = (
            Arc::<Mutex<Vec<String>>>::default(),
            Arc::<Mutex<Vec<u8>>>::default(),
        );
        let (t, r) = (targets.clone(), relayed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(16) {
                let Ok(mut client) = stream else { continue };
                let (t, r) = (t.clone(), r.clone());
                std::thread::spawn(move || {
                    client.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if client.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let Some(target) = head
                        .strip_prefix("CONNECT ")
                        .and_then(|h| h.split(' ').next())
                    else {
                        return;
                    };
                    t.lock().unwrap().push(target.to_owned());
                    let upstream = TcpStream::connect(target).unwrap();
                    client
                        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                        .unwrap();
                    client.set_read_timeout(None).ok();
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                        (upstream, client),
                    ] {
                        let r = r.clone();
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = from.read(&mut buf) {
                                if n == 0 || to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                r.lock().unwrap().extend_from_slice(&buf[..n]);
                            }
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        });
                    }
                });
            }
        });
        ConnectProxy {
            port,
            targets,
            relayed,
        }
    }
}

#[test]
fn through_an_http_connect_proxy_the_pin_is_checked_and_only_tls_passes() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let authority = AuthorityServer::start_with(&influx_backend(&influx), true, "info");
    let proxy = ConnectProxy::start();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("leasegate.toml");
    std::fs::write(
        &conf,
        leased_config(&Mosquitto::start(), "gw-proxied")
            .replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();
    let line = authority.ticket("iot-sensor", &[]);
    let secret = Ticket::parse(&line).unwrap().secret.expose().to_owned();
    let ticket = dir.path().join("gw.ticket");
    std::fs::write(&ticket, &line).unwrap();
    // As a gateway behind a site proxy runs them: HTTPS_PROXY set.
    let run = |args: &[&str]| {
        let out = support::leasegate_command()
            .arg("--config")
            .arg(&conf)
            .args(args)
            .env("HTTPS_PROXY", format!("http://127.0.0.1:{}", proxy.port))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["enroll", ticket.to_str().unwrap()]);
    let lease: serde_json::Value =
        serde_json::from_str(&run(&["lease", "create", "--json"])).unwrap();
    assert!(lease["id"].is_string(), "{lease}");
    let target = format!("127.0.0.1:{}", authority.port);
    let targets = proxy.targets.lock().unwrap().clone();
    assert!(
        targets.len() >= 2 && targets.iter().all(|t| *t == target),
        "{targets:?}"
    );
    // The proxy saw only TLS: no request line, no ticket secret.
    let relayed = String::from_utf8_lossy(&proxy.relayed.lock().unwrap()).into_owned();
    assert!(!relayed.contains("POST /v1/") && !relayed.contains(&secret));
}
