//! The gateway's side of the authority's HTTP API (`crate::api`): enroll,
//! and create, list, show and revoke leases with the identity credential.
//!
//! It owns trust in the authority. A self-signed authority is trusted by
//! the SHA-256 fingerprint its ticket pins: [`fetch_certificate`] takes the
//! certificate chain from a TLS handshake (signatures checked, chain not),
//! and goes on only if the leaf's fingerprint is the pinned one; from then
//! on the chain's last certificate (the leaf itself when self-signed) is
//! the one trust anchor of every connection, with the usual checks of name
//! and signature. (ureq takes no custom verifier, so the pin itself is
//! checked at enrollment.) Or the system's roots, when configured. It never
//! sends a secret anywhere but the authority it trusts, and its errors
//! never carry one.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::api::{
    ApiError, EnrollRequest, Enrollment, ErrorBody, ErrorCode, LeaseGrant, LeaseInfo, LeaseList,
    LeaseRequest,
};
use crate::secret::{Secret, sha256_hex};

const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the authority at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error(
        "the authority at {url} presents a certificate with SHA-256 fingerprint {found}, but the ticket pins {pinned}"
    )]
    Mismatch {
        url: String,
        found: String,
        pinned: String,
    },
    #[error("TLS to the authority at {url}: {message}")]
    Tls { url: String, message: String },
    #[error("the authority refused: {} ({})", .0.message, .0.code.name())]
    Refused(ApiError),
    #[error("the authority answered HTTP {status} with no reason leasegate understands: {body}")]
    BadAnswer { status: u16, body: String },
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
            ClientError::Mismatch { .. } => false,
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
            ClientError::Tls { .. } => "tls".into(),
            ClientError::Unreachable { .. } => "unreachable".into(),
            ClientError::BadAnswer { .. } => "bad_answer".into(),
        }
    }
}

/// How the gateway trusts the authority.
#[derive(Clone)]
pub enum Trust {
    /// Plain HTTP (an authority with `tls = "off"` on loopback).
    None,
    /// Exactly this certificate (DER), whose fingerprint a ticket pinned.
    Pinned(Vec<u8>),
    /// The system's CA certificates.
    System,
}

pub struct AuthorityClient {
    base: String,
    agent: ureq::Agent,
}

impl AuthorityClient {
    pub fn new(base: &str, trust: &Trust) -> Result<AuthorityClient, ClientError> {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("leasegate/", env!("CARGO_PKG_VERSION")));
        let roots: Option<Vec<ureq::tls::Certificate<'static>>> = match trust {
            Trust::None => None,
            Trust::Pinned(der) => Some(vec![ureq::tls::Certificate::from_der(der).to_owned()]),
            Trust::System => {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    return Err(ClientError::Tls {
                        url: base.to_owned(),
                        message: "no system CA certificates found".into(),
                    });
                }
                Some(
                    found
                        .certs
                        .iter()
                        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                        .collect(),
                )
            }
        };
        if let Some(roots) = roots {
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
                    .build(),
            );
        }
        Ok(AuthorityClient {
            base: base.trim_end_matches('/').to_owned(),
            agent: config.build().into(),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
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
    ) -> Result<LeaseGrant, ClientError> {
        let body = LeaseRequest {
            ttl_secs: ttl.map(|t| t.as_secs().max(1)),
        };
        self.call(
            "POST",
            "/v1/leases",
            Some(credential),
            Some(json(&body)),
            201,
        )
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

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        credential: Option<&Secret>,
        body: Option<String>,
        expect: u16,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
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
        let mut response = result.map_err(|source| self.transport_error(source))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
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

    /// A failed request: TLS trouble (a changed certificate, a name that
    /// does not match) is told apart from an unreachable authority.
    fn transport_error(&self, source: ureq::Error) -> ClientError {
        let tls = match &source {
            ureq::Error::Rustls(e) => Some(e.to_string()),
            ureq::Error::Tls(e) => Some((*e).to_owned()),
            ureq::Error::Io(e) => e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map(|e| e.to_string()),
            _ => None,
        };
        match tls {
            Some(message) => ClientError::Tls {
                url: self.base.clone(),
                message,
            },
            None => ClientError::Unreachable {
                url: self.base.clone(),
                source,
            },
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data always serializes")
}

/// Takes the authority's certificate from a TLS handshake and returns it
/// (DER) if its SHA-256 fingerprint is `pinned`; names both fingerprints
/// when it is not.
pub fn fetch_certificate(url: &str, pinned: &str) -> Result<Vec<u8>, ClientError> {
    let tls_error = |message: String| ClientError::Tls {
        url: url.to_owned(),
        message,
    };
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| tls_error(format!("not a URL: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| tls_error("the URL has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TakeAnyCertificate(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone()).map_err(|e| tls_error(e.to_string()))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| tls_error(e.to_string()))?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| tls_error(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| tls_error(format!("{host} has no address")))?;
    let mut sock = std::net::TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| {
        ClientError::Unreachable {
            url: url.to_owned(),
            source: ureq::Error::Io(e),
        }
    })?;
    sock.set_read_timeout(Some(TIMEOUT)).ok();
    sock.set_write_timeout(Some(TIMEOUT)).ok();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| tls_error(format!("handshake: {e}")))?;
    }
    let chain = conn
        .peer_certificates()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| tls_error("the server sent no certificate".into()))?;
    let found = sha256_hex(chain[0].as_ref());
    // The anchor for later connections: the leaf itself when self-signed,
    // else the last certificate the server sends (its CA side), so a
    // configured CA-issued certificate verifies as well.
    let cert = chain[chain.len() - 1].as_ref().to_vec();
    if !found.eq_ignore_ascii_case(pinned) {
        return Err(ClientError::Mismatch {
            url: url.to_owned(),
            found,
            pinned: pinned.to_owned(),
        });
    }
    Ok(cert)
}

/// Accepts whatever certificate the server shows (the caller compares its
/// fingerprint) but still checks the handshake signatures, so the server
/// must hold the certificate's key.
#[derive(Debug)]
struct TakeAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for TakeAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
