//! The authority's TLS identity: the deployment's CA, this replica's
//! certificate signed by it, and the SHA-256 fingerprints tickets carry so
//! gateways can pin them. It also serves an operator's `cert_file` and
//! `key_file`, or a self-signed `cert.pem` left in the state dir while it
//! exists.
//!
//! It owns the key files' mode (0600) and must never replace a CA that
//! exists: every ticket handed out pins it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::authority::config::AuthorityConfig;
use crate::wire::client::{Pins, verify_chain};

/// A certificate is signed anew at start when it would not pass a
/// gateway's check this far ahead.
pub const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long a replica's certificate is valid (from when it is made).
const LEAF_LIFETIME: Duration = Duration::from_secs(2 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

pub struct Identity {
    /// This replica's certificate first, then the chain up to the CA.
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub pins: Pins,
    /// What lease grants tell gateways of the CA.
    pub deployment_ca: Option<crate::wire::api::DeploymentCa>,
}

impl Identity {
    /// Lowercase hex SHA-256 of the certificate served.
    pub fn fingerprint(&self) -> String {
        crate::secret::sha256_hex(self.certs[0].as_ref())
    }
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Where the served certificate and its key are, and what they are.
enum Layout {
    /// `cert_file`/`key_file` from the operator's PKI; `ca_cert_file`, if
    /// set, is their issuer. Tickets pin that issuer when set, else the
    /// certificate.
    Configured {
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
    },
    /// The deployment CA (state dir or config) and this replica's
    /// certificate in the state dir; `legacy` when the self-signed
    /// `cert.pem` of an older authority is still there and served.
    /// The CA is made on first start unless `ca_cert_file`/`ca_key_file`
    /// name one: replicas share it by those files. `cert.pem` is served
    /// while it exists because the gateways enrolled with it pin it
    /// (README, "Moving to the deployment CA").
    Deployment {
        ca_cert: PathBuf,
        ca_key: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        legacy: bool,
    },
}

fn layout(config: &AuthorityConfig) -> Layout {
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        return Layout::Configured {
            cert: cert.clone(),
            key: key.clone(),
            ca: config.ca_cert_file.clone(),
        };
    }
    let dir = &config.state_dir;
    let (ca_cert, ca_key) = match (&config.ca_cert_file, &config.ca_key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (dir.join("ca.pem"), dir.join("ca-key.pem")),
    };
    let legacy = dir.join("cert.pem").exists();
    let (cert, key) = if legacy {
        (dir.join("cert.pem"), dir.join("key.pem"))
    } else {
        (dir.join("leaf.pem"), dir.join("leaf-key.pem"))
    };
    Layout::Deployment {
        ca_cert,
        ca_key,
        cert,
        key,
        legacy,
    }
}

/// The names this replica's certificate is for: the host of its
/// `public_url`, those of `public_urls` (a load balancer's name may lead
/// to any replica) and the loopback names.
fn names(config: &AuthorityConfig) -> Vec<String> {
    let mut names = Vec::new();
    let urls = std::iter::once(&config.public_url).chain(&config.public_urls);
    for host in urls.filter_map(|u| host_of(u)) {
        if !names.contains(&host) {
            names.push(host);
        }
    }
    for local in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == local) {
            names.push(local.to_owned());
        }
    }
    names
}

/// Loads the TLS identity for `serve`, making the CA on first start and
/// this replica's certificate whenever the one there would not do.
///
/// The certificate is made anew when it would fail a gateway's check
/// within [`RENEW_BEFORE`] (another CA, other names, near its end):
/// gateways pin the CA, so a new certificate needs no new ticket.
pub fn load_or_create(config: &AuthorityConfig) -> Result<Identity, TlsError> {
    match layout(config) {
        Layout::Configured { cert, key, ca } => {
            let mut identity = load(&cert, &key)?;
            if let Some(ca_path) = ca {
                let ca = load_cert(&ca_path)?;
                let name = server_name(config)?;
                verify_chain(
                    &ca,
                    &identity.certs[0],
                    &identity.certs[1..],
                    &name,
                    UnixTime::now(),
                )
                .map_err(|e| {
                    file_error(
                        &cert,
                        format!(
                            "is not a certificate ca_cert_file {} signed for {}: {e}",
                            ca_path.display(),
                            name.to_str()
                        ),
                    )
                })?;
                let ca_pin = crate::secret::sha256_hex(ca.as_ref());
                identity.pins.ca = Some(ca_pin.clone());
                identity.deployment_ca = Some(crate::wire::api::DeploymentCa {
                    sha256: ca_pin,
                    signs_served_certificate: true,
                });
                if !identity.certs.contains(&ca) {
                    identity.certs.push(ca);
                }
            }
            Ok(identity)
        }
        Layout::Deployment {
            ca_cert,
            ca_key,
            cert,
            key,
            legacy,
        } => {
            if !ca_cert.exists() {
                if config.ca_cert_file.is_some() {
                    return Err(file_error(&ca_cert, "does not exist (ca_cert_file)"));
                }
                make_ca(config, &ca_cert, &ca_key)?;
            }
            let ca = load_cert(&ca_cert)?;
            let ca_pin = crate::secret::sha256_hex(ca.as_ref());
            if legacy {
                log::warn!(
                    "serving the self-signed certificate {} that gateways enrolled before the deployment CA pin; once they all know the CA (sha256 {ca_pin}), remove it and its key (README, \"Moving to the deployment CA\")",
                    cert.display()
                );
                let mut identity = load(&cert, &key)?;
                // Tickets pin the served certificate only: a gateway that
                // pinned the CA would refuse it.
                identity.pins = Pins::leaf(&identity.fingerprint());
                identity.deployment_ca = Some(crate::wire::api::DeploymentCa {
                    sha256: ca_pin,
                    signs_served_certificate: false,
                });
                return Ok(identity);
            }
            let renew_check = UnixTime::since_unix_epoch(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    + RENEW_BEFORE,
            );
            let usable = cert.exists()
                && load(&cert, &key).is_ok_and(|id| {
                    names(config).into_iter().all(|n| {
                        ServerName::try_from(n).is_ok_and(|name| {
                            verify_chain(&ca, &id.certs[0], &[], &name, renew_check).is_ok()
                        })
                    })
                });
            if !usable {
                make_leaf(config, &ca, &ca_key, &cert, &key)?;
            }
            let mut identity = load(&cert, &key)?;
            identity.certs.truncate(1);
            identity.certs.push(ca);
            identity.pins = Pins {
                ca: Some(ca_pin.clone()),
                leaf: Some(identity.fingerprint()),
            };
            identity.deployment_ca = Some(crate::wire::api::DeploymentCa {
                sha256: ca_pin,
                signs_served_certificate: true,
            });
            Ok(identity)
        }
    }
}

fn server_name(config: &AuthorityConfig) -> Result<ServerName<'static>, TlsError> {
    let host = host_of(&config.public_url).unwrap_or_else(|| "localhost".into());
    ServerName::try_from(host.clone())
        .map_err(|_| TlsError::Generate(format!("public_url's host {host:?} is not a name")))
}

fn make_ca(config: &AuthorityConfig, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    let label = config
        .deployment_id
        .clone()
        .unwrap_or_else(|| crate::secret::random_hex(4));
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("leasegate authority CA {label}"),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    // Valid from the epoch to rcgen's default end (4096): a gateway
    // whose clock is not set yet still trusts its deployment's CA.
    params.not_before = rcgen::date_time_ymd(1970, 1, 1);
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    write_pair(cert_path, &cert.pem(), key_path, &key.serialize_pem())?;
    log::info!(
        "made the deployment CA {} (sha256 {}); tickets pin it: keep it and its key, and give both to every replica",
        cert_path.display(),
        crate::secret::sha256_hex(cert.der().as_ref())
    );
    Ok(())
}

fn make_leaf(
    config: &AuthorityConfig,
    ca: &CertificateDer<'_>,
    ca_key_path: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let ca_key_pem =
        std::fs::read_to_string(ca_key_path).map_err(|e| file_error(ca_key_path, e.to_string()))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| file_error(ca_key_path, format!("no usable CA key: {e}")))?;
    let issuer = rcgen::Issuer::from_ca_cert_der(ca, ca_key).map_err(generate)?;
    let mut params = rcgen::CertificateParams::new(names(config)).map_err(generate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "leasegate-authority");
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    // Valid from the epoch: a gateway whose clock is not set yet still
    // takes it (the CA pin, not the date, says whose it is).
    params.not_before = rcgen::date_time_ymd(1970, 1, 1);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let end_days = (now + LEAF_LIFETIME).as_secs() / 86_400;
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(end_days * 86_400);
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;
    write_pair(cert_path, &cert.pem(), key_path, &key.serialize_pem())?;
    log::info!(
        "made this replica's certificate {} for {:?}, signed by the deployment CA",
        cert_path.display(),
        names(config)
    );
    Ok(())
}

/// Writes both files aside and renames them in, the certificate last: a
/// certificate on disk means its key is complete too. A key left without
/// one by a crash is simply made again.
fn write_pair(cert_path: &Path, cert: &str, key_path: &Path, key: &str) -> Result<(), TlsError> {
    let key_tmp = key_path.with_extension("pem.tmp");
    let cert_tmp = cert_path.with_extension("pem.tmp");
    write_synced(&key_tmp, key.as_bytes(), 0o600)?;
    write_synced(&cert_tmp, cert.as_bytes(), 0o644)?;
    std::fs::rename(&key_tmp, key_path).map_err(|e| file_error(key_path, e.to_string()))?;
    std::fs::rename(&cert_tmp, cert_path).map_err(|e| file_error(cert_path, e.to_string()))?;
    if let Some(dir) = cert_path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| file_error(path, e.to_string()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| file_error(path, e.to_string()))
}

fn load_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_file(path).map_err(|e| file_error(path, e.to_string()))
}

pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| file_error(cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert_path, e.to_string()))?;
    let Some(leaf) = certs.first() else {
        return Err(file_error(cert_path, "holds no certificate"));
    };
    let fingerprint = crate::secret::sha256_hex(leaf.as_ref());
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| file_error(key_path, format!("no usable private key: {e}")))?;
    Ok(Identity {
        certs,
        key,
        pins: Pins::leaf(&fingerprint),
        deployment_ca: None,
    })
}

/// Only the pins, for admin commands that print tickets. They never make
/// a certificate: that is the server's, made under its lock.
pub fn pins(config: &AuthorityConfig) -> Result<Option<Pins>, TlsError> {
    if !config.tls {
        return Ok(None);
    }
    let missing = |path: &Path| {
        file_error(
            path,
            "no certificate yet: start `leasegate-authority serve` once (it makes the deployment CA and its certificate), or set cert_file and key_file",
        )
    };
    match layout(config) {
        Layout::Configured { cert, ca, .. } => {
            let leaf = load_cert(&cert)?;
            let mut pins = Pins::leaf(&crate::secret::sha256_hex(leaf.as_ref()));
            if let Some(ca) = ca {
                pins.ca = Some(crate::secret::sha256_hex(load_cert(&ca)?.as_ref()));
            }
            Ok(Some(pins))
        }
        Layout::Deployment {
            ca_cert,
            cert,
            legacy,
            ..
        } => {
            if !cert.exists() {
                return Err(missing(&cert));
            }
            let leaf = crate::secret::sha256_hex(load_cert(&cert)?.as_ref());
            if legacy {
                return Ok(Some(Pins::leaf(&leaf)));
            }
            if !ca_cert.exists() {
                return Err(missing(&ca_cert));
            }
            Ok(Some(Pins {
                ca: Some(crate::secret::sha256_hex(load_cert(&ca_cert)?.as_ref())),
                leaf: Some(leaf),
            }))
        }
    }
}

pub fn server_config(identity: Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(identity.certs, identity.key)?;
    Ok(Arc::new(config))
}

fn host_of(url: &str) -> Option<String> {
    let uri = url.parse::<ureq::http::Uri>().ok()?;
    let host = uri.host()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
}
