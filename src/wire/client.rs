//! The gateway's side of the authority's HTTP API (`crate::wire::api`):
//! enroll, and create, list, show and revoke leases with the identity
//! credential. It owns trust in the authority: the ticket's pins (the
//! deployment's CA, or one certificate), checked by [`PinnedVerifier`] in
//! the TLS handshake of every connection before a request leaves, or the
//! system's roots when configured.
//! It never sends a secret anywhere but the authority it trusts, and its
//! errors never carry one.

mod verifier;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use ureq::unversioned::transport::{
    Buffers, ConnectProxyConnector, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout,
    TcpConnector, Transport, TransportAdapter,
};

use crate::secret::Secret;
use crate::wire::api::{
    ApiError, EnrollRequest, Enrollment, ErrorBody, ErrorCode, LeaseGrant, LeaseInfo, LeaseList,
    LeaseRequest,
};

use verifier::{NotVouched, PinMismatch};
pub use verifier::{PinnedVerifier, verify_chain};

const TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the authority at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error(
        "the authority at {url} presents a {of} with SHA-256 fingerprint {found}, but the ticket pins {pinned}"
    )]
    Mismatch {
        url: String,
        /// "certificate", or "certificate chain to a CA" with a CA pin.
        of: &'static str,
        found: String,
        pinned: String,
    },
    /// The chain ends at the pinned CA, but the certificate is not one it
    /// vouches for here: for another host, expired, or not signed by it.
    /// An impostor showing the CA's public certificate looks like this; so
    /// does an authority whose certificate lapsed.
    #[error("the authority at {url} presents a certificate that is {why}")]
    Untrusted { url: String, why: String },
    #[error("TLS to the authority at {url}: {message}")]
    Tls { url: String, message: String },
    #[error("the authority refused: {} ({})", .0.message, .0.code.name())]
    Refused(ApiError),
    #[error("the authority answered HTTP {status} with no reason leasegate understands: {body}")]
    BadAnswer { status: u16, body: String },
    /// The authority made lease `lease_id`, but its grant is not one this
    /// gateway can write with (say, an API it does not know, from a newer
    /// authority): the gateway's limit, not the authority's fault.
    #[error("the authority granted lease {lease_id}, but this gateway cannot use it: {reason}")]
    UnusableGrant { lease_id: String, reason: String },
}

impl ClientError {
    /// Whether trying again later can succeed: the authority or the network
    /// is down, or InfluxDB behind it failed. Everything else is final for
    /// the ticket or identity it was about.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Tls { .. } => true,
            ClientError::BadAnswer { status, .. } => *status >= 500 || *status == 429,
            ClientError::Refused(e) => e.code.is_retryable(),
            ClientError::Mismatch { .. }
            | ClientError::Untrusted { .. }
            | ClientError::UnusableGrant { .. } => false,
        }
    }

    /// The server is not shown to be the authority the pins name: maybe
    /// someone in between, to be told as a possible attack.
    pub fn is_impostor(&self) -> bool {
        matches!(
            self,
            ClientError::Mismatch { .. } | ClientError::Untrusted { .. }
        )
    }

    /// Trouble of the one replica asked, which another URL of the same
    /// deployment may not have: worth trying the next URL at once. A
    /// certificate that fails the pins there is tried elsewhere too (the
    /// pins are checked there alike); an answer with a reason is the
    /// deployment's and stands.
    pub fn replica_trouble(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Tls { .. }
            | ClientError::Mismatch { .. }
            | ClientError::Untrusted { .. } => true,
            ClientError::BadAnswer { status, .. } => *status >= 500,
            ClientError::Refused(e) => e.code == ErrorCode::Internal,
            ClientError::UnusableGrant { .. } => false,
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused(e) => Some(e.code),
            _ => None,
        }
    }

    /// The stable reason for a `.reason` file: the authority's code, or
    /// what went wrong here.
    pub fn reason_code(&self) -> String {
        match self {
            ClientError::Refused(e) => e.code.name(),
            ClientError::Mismatch { .. } => "certificate_mismatch".into(),
            ClientError::Untrusted { .. } => "certificate_untrusted".into(),
            ClientError::Tls { .. } => "tls".into(),
            ClientError::Unreachable { .. } => "unreachable".into(),
            ClientError::BadAnswer { .. } => "bad_answer".into(),
            ClientError::UnusableGrant { .. } => "unusable_grant".into(),
        }
    }
}

/// How the gateway trusts the authority.
#[derive(Clone)]
pub enum Trust {
    /// Plain HTTP (an authority with `tls = "off"` on loopback).
    None,
    /// The pinned CA's certificates, or exactly the pinned certificate.
    Pinned(Pins),
    /// The system's CA certificates.
    System,
}

/// What a ticket pins: SHA-256 fingerprints (lowercase hex of the DER).
/// A CA pin lets a replica's certificate be replaced, or a replica be
/// added, without enrolling again; a certificate pin names one certificate
/// exactly, as a known-hosts line names one SSH host key (README,
/// "Security model").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    /// The deployment's CA: any certificate it signed for the host.
    pub ca: Option<String>,
    /// Exactly this certificate (tickets of authorities without a CA).
    pub leaf: Option<String>,
}

impl Pins {
    pub fn leaf(fingerprint: &str) -> Pins {
        Pins {
            ca: None,
            leaf: Some(fingerprint.to_owned()),
        }
    }

    pub fn ca(fingerprint: &str) -> Pins {
        Pins {
            ca: Some(fingerprint.to_owned()),
            leaf: None,
        }
    }
}

/// The authority's API at one or more URLs (replicas of one deployment):
/// each call goes to the URL that answered last, and on trouble a replica
/// might not share (unreachable, TLS, a 5xx) straight on to the next, so
/// a dead replica costs one failed call. The pins are checked on every
/// URL alike: a secret goes only where they verified.
pub struct AuthorityClient {
    bases: Vec<String>,
    preferred: std::sync::atomic::AtomicUsize,
    agent: ureq::Agent,
}

impl AuthorityClient {
    pub fn new(base: &str, trust: &Trust) -> Result<AuthorityClient, ClientError> {
        Self::with_urls(&[base.to_owned()], trust)
    }

    /// A client for every URL in `bases`, tried in that order.
    pub fn with_urls(bases: &[String], trust: &Trust) -> Result<AuthorityClient, ClientError> {
        let base = bases.first().map(String::as_str).unwrap_or_default();
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            // A replica whose host is gone answers nothing at all: the
            // next URL is tried after this, not after the whole TIMEOUT.
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .http_status_as_error(false)
            // The authority never redirects; a redirect is not followed
            // anywhere with a credential.
            .max_redirects(0)
            .user_agent(concat!("leasegate/", env!("CARGO_PKG_VERSION")));
        let agent = match trust {
            // Plain HTTP is for a loopback authority only: a proxy from the
            // environment would carry it, in clear, to the proxy's own
            // loopback.
            Trust::None => config.proxy(None).build().into(),
            Trust::Pinned(pins) => {
                let tls = PinnedTls::new(pins).map_err(|e| ClientError::Tls {
                    url: base.to_owned(),
                    message: e.to_string(),
                })?;
                // A CONNECT proxy from the environment still works: the
                // tunnel is plain TCP, and TLS with the pin runs inside it.
                ureq::Agent::with_parts(
                    config.build(),
                    ().chain(ConnectProxyConnector::default())
                        .chain(TcpConnector::default())
                        .chain(tls),
                    ureq::unversioned::resolver::DefaultResolver::default(),
                )
            }
            Trust::System => {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    return Err(ClientError::Tls {
                        url: base.to_owned(),
                        message: "no system CA certificates found".into(),
                    });
                }
                let roots = found
                    .certs
                    .iter()
                    .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                    .collect();
                config = config.tls_config(
                    ureq::tls::TlsConfig::builder()
                        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
                        .build(),
                );
                config.build().into()
            }
        };
        Ok(AuthorityClient {
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect(),
            preferred: std::sync::atomic::AtomicUsize::new(0),
            agent,
        })
    }

    /// Starts with `url`, if it is one of this client's (the one that
    /// answered last time).
    pub fn preferring(self, url: Option<&str>) -> AuthorityClient {
        if let Some(i) = url.and_then(|u| self.bases.iter().position(|b| b == u)) {
            self.preferred
                .store(i, std::sync::atomic::Ordering::Relaxed);
        }
        self
    }

    /// The URL the next call goes to first: the one that answered last.
    pub fn url(&self) -> &str {
        let i = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        self.bases.get(i).map(String::as_str).unwrap_or_default()
    }

    pub fn enroll(
        &self,
        ticket_secret: &Secret,
        identity_name: &str,
    ) -> Result<Enrollment, ClientError> {
        let body = EnrollRequest {
            ticket_secret: ticket_secret.clone(),
            identity_name: identity_name.to_owned(),
        };
        self.call("POST", "/v1/enroll", None, Some(json(&body)), 201)
    }

    pub fn create_lease(
        &self,
        credential: &Secret,
        ttl: Option<Duration>,
        health: Option<&crate::wire::health::HealthReport>,
    ) -> Result<LeaseGrant, ClientError> {
        let request = LeaseRequest {
            ttl_secs: ttl.map(|t| t.as_secs().max(1)),
        };
        let body = crate::wire::health::LeaseCall {
            request: &request,
            health,
        };
        let (mut round_trip, sent) = (
            crate::clock::RoundTrip::starting(),
            std::time::Instant::now(),
        );
        let answer: serde_json::Value = self.call(
            "POST",
            "/v1/leases",
            Some(credential),
            Some(json(&body)),
            201,
        )?;
        round_trip.took = sent.elapsed();
        // A lease exists once the authority said 201: one this gateway
        // cannot read is named by its id, so that it can be given back.
        let lease_id = answer.get("id").and_then(|v| v.as_str()).map(str::to_owned);
        let grant: Result<LeaseGrant, _> = serde_json::from_value(answer);
        grant
            .map(|mut grant| {
                grant.round_trip = Some(round_trip);
                grant
            })
            .map_err(|e| match lease_id {
                Some(lease_id) => ClientError::UnusableGrant {
                    lease_id,
                    reason: e.to_string(),
                },
                None => ClientError::BadAnswer {
                    status: 201,
                    body: format!("not the expected JSON: {e}"),
                },
            })
    }

    pub fn leases(&self, credential: &Secret) -> Result<Vec<LeaseInfo>, ClientError> {
        self.call::<LeaseList>("GET", "/v1/leases", Some(credential), None, 200)
            .map(|l| l.leases)
    }

    pub fn lease(&self, credential: &Secret, id: &str) -> Result<LeaseInfo, ClientError> {
        let path = format!("/v1/leases/{}", crate::percent_encode(id));
        self.call("GET", &path, Some(credential), None, 200)
    }

    pub fn revoke(&self, credential: &Secret, id: &str) -> Result<LeaseInfo, ClientError> {
        let path = format!("/v1/leases/{}", crate::percent_encode(id));
        self.call("DELETE", &path, Some(credential), None, 200)
    }

    /// One request, to each URL in turn from the preferred one until one
    /// answers with something other than a replica's own trouble.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        credential: Option<&Secret>,
        body: Option<String>,
        expect: u16,
    ) -> Result<T, ClientError> {
        use std::sync::atomic::Ordering;
        let start = self.preferred.load(Ordering::Relaxed);
        let n = self.bases.len().max(1);
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let base = self.bases.get(i).map(String::as_str).unwrap_or_default();
            match self.call_one(base, method, path, credential, body.clone(), expect) {
                Err(e) if k + 1 < n && e.replica_trouble() => {
                    let next = &self.bases[(i + 1) % n];
                    log::warn!("{}; trying the authority at {next}", crate::error_chain(&e));
                    last = Some(e);
                }
                outcome => {
                    if outcome.is_ok() || !matches!(&outcome, Err(e) if e.replica_trouble()) {
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return outcome;
                }
            }
        }
        Err(last.expect("at least one URL was tried"))
    }

    fn call_one<T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        method: &str,
        path: &str,
        credential: Option<&Secret>,
        body: Option<String>,
        expect: u16,
    ) -> Result<T, ClientError> {
        let url = format!("{base}{path}");
        let bearer = credential.map(|c| format!("Bearer {}", c.expose()));
        let result = match method {
            "POST" => {
                let mut r = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(b) = &bearer {
                    r = r.header("Authorization", b);
                }
                r.send(body.unwrap_or_default())
            }
            "DELETE" => {
                let mut r = self.agent.delete(&url);
                if let Some(b) = &bearer {
                    r = r.header("Authorization", b);
                }
                r.call()
            }
            _ => {
                let mut r = self.agent.get(&url);
                if let Some(b) = &bearer {
                    r = r.header("Authorization", b);
                }
                r.call()
            }
        };
        let mut response = result.map_err(|source| transport_error(base, source))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|source| ClientError::Unreachable {
                url: base.to_owned(),
                source,
            })?;
        if status == expect {
            return serde_json::from_str(&text).map_err(|e| ClientError::BadAnswer {
                status,
                body: format!("not the expected JSON: {e}"),
            });
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => Err(ClientError::Refused(e.error)),
            // Never echoed: a 2xx body may hold a credential, and any
            // other JSON is not ours to print.
            Err(_) if (200..300).contains(&status) || text.trim_start().starts_with('{') => {
                Err(ClientError::BadAnswer {
                    status,
                    body: format!("{} bytes, not the expected answer", text.len()),
                })
            }
            Err(_) => Err(ClientError::BadAnswer {
                status,
                body: text.chars().take(200).collect(),
            }),
        }
    }
}

/// A failed request: a certificate that is not the pinned one, and other
/// TLS trouble (a name that does not match), are told apart from an
/// unreachable authority.
fn transport_error(base: &str, source: ureq::Error) -> ClientError {
    let tls = match &source {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(e) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    let other = match tls {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            Some(&other.0)
        }
        _ => None,
    };
    if let Some(u) = other.and_then(|o| o.downcast_ref::<NotVouched>()) {
        return ClientError::Untrusted {
            url: base.to_owned(),
            why: u.0.clone(),
        };
    }
    let mismatch = other.and_then(|o| o.downcast_ref::<PinMismatch>());
    match (mismatch, tls) {
        (Some(m), _) => ClientError::Mismatch {
            url: base.to_owned(),
            of: m.of,
            found: m.found.clone(),
            pinned: m.pinned.clone(),
        },
        (None, Some(e)) => ClientError::Tls {
            url: base.to_owned(),
            message: e.to_string(),
        },
        (None, None) => match &source {
            ureq::Error::Tls(message) => ClientError::Tls {
                url: base.to_owned(),
                message: (*message).to_owned(),
            },
            _ => ClientError::Unreachable {
                url: base.to_owned(),
                source,
            },
        },
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data always serializes")
}

/// ureq's TLS step with our own rustls configuration: ureq's built-in one
/// takes only root certificates, and a root would trust every certificate
/// its CA signs.
#[derive(Debug)]
struct PinnedTls {
    config: Arc<rustls::ClientConfig>,
}

impl PinnedTls {
    fn new(pins: &Pins) -> Result<PinnedTls, ClientError> {
        let verifier = PinnedVerifier::new(pins)?;
        let provider = verifier.provider.clone();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls {
                url: String::new(),
                message: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(PinnedTls {
            config: Arc::new(config),
        })
    }
}

impl<In: Transport> Connector<In> for PinnedTls {
    type Out = Either<In, PinnedTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails<'_>,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() {
            // Only the hop to an http:// CONNECT proxy: the pinned agent
            // asks for https URLs alone and follows no redirect.
            return Ok(Some(Either::A(transport)));
        }
        if transport.is_tls() {
            // TLS that did not check the pin (an https proxy's, say) is
            // not trusted to carry the authority's traffic.
            return Err(ureq::Error::Tls(
                "a pinned authority is reached only over TLS that checks the pin",
            ));
        }
        let host = details
            .uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = ServerName::try_from(host).map_err(|_| ureq::Error::Tls("invalid host name"))?;
        let mut conn = rustls::ClientConnection::new(self.config.clone(), name)?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        // The handshake, pin check included, completes before ureq writes
        // the request.
        conn.complete_io(&mut sock)?;
        Ok(Some(Either::B(PinnedTransport {
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            stream: rustls::StreamOwned::new(conn, sock),
        })))
    }
}

/// A TLS connection for ureq, after `PinnedTls`'s handshake.
pub struct PinnedTransport {
    buffers: LazyBuffers,
    stream: rustls::StreamOwned<rustls::ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for PinnedTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedTransport").finish_non_exhaustive()
    }
}

impl Transport for PinnedTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        use std::io::Write as _;
        self.stream.sock.set_timeout(timeout);
        self.stream.write_all(&self.buffers.output()[..amount])?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        use std::io::Read as _;
        self.stream.sock.set_timeout(timeout);
        let n = self.stream.read(self.buffers.input_append_buf())?;
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.sock.get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::sha256_hex;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::{CertificateDer, UnixTime};

    struct Ca {
        cert: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn leaf(ca: &Ca, host: &str) -> CertificateDer<'static> {
        let params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        params.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn verify(pins: &Pins, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let v = PinnedVerifier::new(pins).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        v.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
                    o.to_string()
                }
                other => format!("other: {other}"),
            })
    }

    #[test]
    fn a_ca_pin_takes_any_certificate_it_signed_for_the_host_and_nothing_else() {
        let ours = ca("ours");
        let theirs = ca("theirs");
        let ours_pin = sha256_hex(ours.cert.der().as_ref());
        let theirs_pin = sha256_hex(theirs.cert.der().as_ref());
        let pins = Pins::ca(&ours_pin);
        let ours_der = ours.cert.der().clone();
        // Two certificates of one CA: a replaced one, another replica's.
        for _ in 0..2 {
            verify(&pins, &[leaf(&ours, "127.0.0.1"), ours_der.clone()]).unwrap();
        }
        // Another CA's: refused, naming both.
        let e = verify(
            &pins,
            &[leaf(&theirs, "127.0.0.1"), theirs.cert.der().clone()],
        )
        .unwrap_err();
        assert!(e.contains(&ours_pin) && e.contains(&theirs_pin), "{e}");
        // Another CA's certificate sent with our CA's beside it: an
        // impostor showing our CA's public certificate.
        let e = verify(&pins, &[leaf(&theirs, "127.0.0.1"), ours_der.clone()]).unwrap_err();
        assert_eq!(e, "not signed by the pinned CA");
        // Ours, but for another host.
        let e = verify(&pins, &[leaf(&ours, "authority.example"), ours_der]).unwrap_err();
        assert!(e.starts_with("not valid for this host"), "{e}");
        // Our CA's own certificate as the server's.
        let e = verify(&pins, &[ours.cert.der().clone()]).unwrap_err();
        assert!(e.contains(&ours_pin), "{e}");
    }

    #[test]
    fn a_certificate_pin_takes_that_certificate_only() {
        let ours = ca("ours");
        let served = leaf(&ours, "127.0.0.1");
        let pins = Pins::leaf(&sha256_hex(served.as_ref()));
        verify(&pins, std::slice::from_ref(&served)).unwrap();
        // Another of the same CA is refused: the pin names one.
        let e = verify(&pins, &[leaf(&ours, "127.0.0.1"), ours.cert.der().clone()]).unwrap_err();
        assert!(e.contains("is not the pinned"), "{e}");
        assert!(PinnedVerifier::new(&Pins::default()).is_err());
        assert!(PinnedVerifier::new(&Pins::ca("abc")).is_err());
    }
}
