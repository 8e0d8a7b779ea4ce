//! TLS client settings for the broker connection (`mqtts://`): the CA that
//! vouches for the broker and an optional client certificate, read from PEM
//! files into a rustls configuration once, when the configuration loads.
//!
//! It owns nothing but that translation. It must never print key material:
//! the built configuration is opaque in Debug output, and errors name the
//! file and what is wrong with it, never its content.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A ready rustls client configuration, shared by every reconnect, and
/// the files it was made from.
#[derive(Clone)]
pub struct TlsClient(pub Arc<rustls::ClientConfig>, pub TlsFiles);

/// Where a [`TlsClient`] came from: what a configuration reload compares,
/// since two built configurations cannot be compared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsClient").field(&self.1).finish()
    }
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        self.1 == other.1
    }
}

/// What went wrong, and under which configuration key.
#[derive(Debug)]
pub struct TlsProblem {
    pub key: &'static str,
    pub message: String,
}

fn problem(key: &'static str, message: impl Into<String>) -> TlsProblem {
    TlsProblem {
        key,
        message: message.into(),
    }
}

/// Builds the client configuration: the certificates of `ca_file` as the
/// only trust anchors, or the system's CA certificates without one; a
/// client certificate chain and key when both files are given. Uses ring
/// as the crypto provider (the only C rustls needs on the gateway).
/// Called when the configuration loads, so that `config check` finds an
/// unreadable file or a key that does not match its certificate before
/// the daemon runs.
pub fn client_config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<TlsClient, TlsProblem> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = read_certs(path, "ca_file")?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    problem(
                        "ca_file",
                        format!("{}: unusable CA certificate: {e}", path.display()),
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // One odd certificate in the system store is no reason to
                // refuse the rest.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(problem(
                    "ca_file",
                    "no system CA certificates found (install ca-certificates) and no ca_file set",
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| problem("url", format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let chain = read_certs(cert_path, "client_cert_file")?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                problem(
                    "client_key_file",
                    format!("{}: no usable private key ({e})", key_path.display()),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                problem(
                    "client_key_file",
                    format!(
                        "{} does not go with the certificate in {}: {e}",
                        key_path.display(),
                        cert_path.display()
                    ),
                )
            })?
        }
    };
    let files = TlsFiles {
        ca_file: ca_file.map(Path::to_owned),
        client_cert_file: client.map(|(c, _)| c.to_owned()),
        client_key_file: client.map(|(_, k)| k.to_owned()),
    };
    Ok(TlsClient(Arc::new(config), files))
}

fn read_certs(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsProblem> {
    let bytes = std::fs::read(path)
        .map_err(|e| problem(key, format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(key, format!("{}: bad PEM ({e})", path.display())))?;
    if certs.is_empty() {
        return Err(problem(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    /// Two CA files and two client certificates with their keys, made by
    /// rcgen (self-signed: each serves as its own trust anchor), in a
    /// temporary directory that lives as long as this value.
    pub struct TestPki {
        _dir: tempfile::TempDir,
        pub ca: PathBuf,
        pub ca2: PathBuf,
        pub cert: PathBuf,
        pub key: PathBuf,
        pub cert2: PathBuf,
        pub key2: PathBuf,
    }

    /// Writes a file holding a secret as it must be: mode 0600.
    pub fn write_secret(path: &std::path::Path, text: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    impl TestPki {
        pub fn new() -> TestPki {
            let dir = tempfile::tempdir().unwrap();
            let mut made = Vec::new();
            for name in ["ca", "ca2", "cert", "cert2"] {
                let pair =
                    rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
                let cert = dir.path().join(format!("{name}.pem"));
                let key = dir.path().join(format!("{name}.key"));
                std::fs::write(&cert, pair.cert.pem()).unwrap();
                write_secret(&key, &pair.signing_key.serialize_pem());
                made.push((cert, key));
            }
            let mut made = made.into_iter();
            let (ca, _) = made.next().unwrap();
            let (ca2, _) = made.next().unwrap();
            let (cert, key) = made.next().unwrap();
            let (cert2, key2) = made.next().unwrap();
            TestPki {
                _dir: dir,
                ca,
                ca2,
                cert,
                key,
                cert2,
                key2,
            }
        }
    }

    #[test]
    fn a_client_configuration_knows_its_files_and_hides_its_keys() {
        let pki = TestPki::new();
        let tls = super::client_config(Some(&pki.ca), Some((&pki.cert, &pki.key))).unwrap();
        assert_eq!(tls.1.ca_file.as_deref(), Some(pki.ca.as_path()));
        let shown = format!("{tls:?}");
        assert!(
            shown.contains("ca.pem") && !shown.contains("PRIVATE"),
            "{shown}"
        );
        let other = super::client_config(Some(&pki.ca2), Some((&pki.cert, &pki.key))).unwrap();
        assert!(tls != other);
        assert!(tls == super::client_config(Some(&pki.ca), Some((&pki.cert, &pki.key))).unwrap());
    }
}
