//! The ticket's pins checked in the TLS handshake ([`PinnedVerifier`]):
//! exactly the pinned certificate, or one the pinned CA signed for the
//! host; and why a server failed them, told apart for the log (another
//! CA's chain, or a certificate the pinned CA does not vouch for here).
//! It trusts nothing else, and never lets a request leave before it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ClientError, Pins};
use crate::secret::sha256_hex;

/// The certificate a server showed was not the one the ticket pinned, or
/// its chain does not end at the pinned CA; the verifier's error, carried
/// through rustls and ureq to [`ClientError`].
#[derive(Debug, thiserror::Error)]
#[error("{of} SHA-256 {found} is not the pinned {pinned}")]
pub(super) struct PinMismatch {
    pub(super) of: &'static str,
    pub(super) found: String,
    pub(super) pinned: String,
}

/// The pinned CA is in the chain, but does not vouch for the certificate
/// here; why, for people.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct NotVouched(pub(super) String);

/// What `verify_chain`'s refusal means, once the pinned CA was found.
fn not_vouched(e: rustls::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    let why = match &e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("not valid for this host ({c:?})")
            }
            C::Expired | C::ExpiredContext { .. } => "expired".to_owned(),
            C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".to_owned(),
            C::UnknownIssuer | C::BadSignature => "not signed by the pinned CA".to_owned(),
            other => format!("refused by the pinned CA's rules ({other:?})"),
        },
        other => format!("refused by the pinned CA's rules ({other})"),
    };
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(NotVouched(why)),
    )))
}

fn mismatch(of: &'static str, found: String, pinned: &str) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(PinMismatch {
            of,
            found,
            pinned: pinned.to_owned(),
        }),
    )))
}

/// Whether `leaf` (with `intermediates`) is a certificate `ca` signed
/// for `name`, valid at `now`: the usual web PKI checks, with `ca` as the
/// only root. The authority asks the same question of its own certificate
/// before serving it.
pub fn verify_chain(
    ca: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone().into_owned())?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier
        .verify_server_cert(leaf, intermediates, name, &[], now)
        .map(|_| ())
}

/// Accepts a certificate the pinned CA signed for the host (the CA's
/// certificate comes in the chain the server sends, and is known by its
/// fingerprint), or exactly the pinned certificate, whatever it says of
/// itself (a self-signed certificate's name and dates are the authority's
/// own word, and the pin already says which one is meant). Either way the
/// handshake's signatures are checked with the certificate's key, so the
/// server must hold that key.
#[derive(Debug)]
pub struct PinnedVerifier {
    pins: Pins,
    pub(super) provider: Arc<rustls::crypto::CryptoProvider>,
}

fn check_pin(what: &str, pin: &Option<String>) -> Result<Option<String>, ClientError> {
    match pin {
        Some(p) if p.len() != 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Err(ClientError::Tls {
                url: String::new(),
                message: format!(
                    "the pinned {what} fingerprint is not 64 hex digits ({} characters)",
                    p.len()
                ),
            })
        }
        p => Ok(p.as_ref().map(|p| p.to_ascii_lowercase())),
    }
}

impl PinnedVerifier {
    /// A verifier for `pins`, each lowercase or uppercase hex of 32 bytes.
    pub fn new(pins: &Pins) -> Result<PinnedVerifier, ClientError> {
        let pins = Pins {
            ca: check_pin("CA", &pins.ca)?,
            leaf: check_pin("certificate", &pins.leaf)?,
        };
        if pins.ca.is_none() && pins.leaf.is_none() {
            return Err(ClientError::Tls {
                url: String::new(),
                message: "nothing pinned".into(),
            });
        }
        Ok(PinnedVerifier {
            pins,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = sha256_hex(end_entity.as_ref());
        if self.pins.leaf.as_deref() == Some(found.as_str()) {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(ca) = &self.pins.ca else {
            return Err(mismatch(
                "certificate",
                found,
                self.pins.leaf.as_deref().unwrap_or(""),
            ));
        };
        let Some(at) = intermediates
            .iter()
            .position(|c| sha256_hex(c.as_ref()) == *ca)
        else {
            // Named by the last certificate of the chain it sent: its root
            // as far as the server says, or the certificate itself.
            let root = intermediates.last().unwrap_or(end_entity);
            return Err(mismatch(
                "certificate chain to a CA",
                sha256_hex(root.as_ref()),
                ca,
            ));
        };
        let between: Vec<CertificateDer<'_>> = intermediates[..at].to_vec();
        verify_chain(&intermediates[at], end_entity, &between, server_name, now)
            .map_err(not_vouched)?;
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
