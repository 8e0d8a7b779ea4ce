//! The authority's TLS identity: the configured certificate, or a
//! self-signed one made on first start and kept in the state dir, and the
//! SHA-256 fingerprint every ticket carries so a gateway can pin it.
//!
//! It owns the key file's mode (0600) and never regenerates a certificate
//! that exists: tickets already handed out pin it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::authority::config::AuthorityConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Lowercase hex SHA-256 of the leaf certificate's DER.
    pub fingerprint: String,
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The certificate and key files in use: the configured ones, or those in
/// the state dir.
pub fn paths(config: &AuthorityConfig) -> (PathBuf, PathBuf) {
    match (&config.cert_file, &config.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (
            config.state_dir.join("cert.pem"),
            config.state_dir.join("key.pem"),
        ),
    }
}

/// Loads the TLS identity, making the self-signed one first if there is
/// neither a configured nor a stored certificate.
pub fn load_or_create(config: &AuthorityConfig) -> Result<Identity, TlsError> {
    let (cert_path, key_path) = paths(config);
    if config.cert_file.is_none() && !cert_path.exists() {
        generate(config, &cert_path, &key_path)?;
    }
    load(&cert_path, &key_path)
}

fn generate(config: &AuthorityConfig, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(host) = host_of(&config.public_url)
        && !names.contains(&host)
    {
        names.insert(0, host);
    }
    let made =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    // Both files are written aside and renamed in, the certificate last:
    // a certificate on disk means its key is complete too. A key left
    // without one by a crash is simply made again.
    let key_tmp = key_path.with_extension("pem.tmp");
    let cert_tmp = cert_path.with_extension("pem.tmp");
    write_synced(&key_tmp, made.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_synced(&cert_tmp, made.cert.pem().as_bytes(), 0o644)?;
    std::fs::rename(&key_tmp, key_path).map_err(|e| file_error(key_path, e.to_string()))?;
    std::fs::rename(&cert_tmp, cert_path).map_err(|e| file_error(cert_path, e.to_string()))?;
    if let Some(dir) = cert_path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    log::info!(
        "made a self-signed certificate {} (tickets pin its fingerprint; keep it)",
        cert_path.display()
    );
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
        fingerprint,
    })
}

/// Only the fingerprint, for admin commands that print tickets. They never
/// make the certificate: that is the server's, made under its lock.
pub fn fingerprint(config: &AuthorityConfig) -> Result<Option<String>, TlsError> {
    if !config.tls {
        return Ok(None);
    }
    let (cert_path, key_path) = paths(config);
    if !cert_path.exists() {
        return Err(file_error(
            &cert_path,
            "no certificate yet: start `leasegate-authority serve` once (it makes a self-signed one), or set cert_file and key_file",
        ));
    }
    load(&cert_path, &key_path).map(|i| Some(i.fingerprint))
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
