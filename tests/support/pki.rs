//! Test certificates made per test with rcgen: a CA and the leaf
//! certificates it signs, written as PEM files (keys mode 0600).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

use super::write_secret;

/// A CA, and PEM files of certificates it signed.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// A certificate issued by a [`Ca`]: its DER, and PEM of it and its key.
pub struct Leaf {
    pub der: Vec<u8>,
    pub pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.clone().self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A certificate for localhost and 127.0.0.1 signed by this CA.
    pub fn leaf(&self, name: &str) -> Leaf {
        self.leaf_with(name, &["localhost"], true, false)
    }

    /// A certificate signed by this CA for the DNS `names` (and 127.0.0.1
    /// with `loopback`), valid now, or only in 2020 when `expired`.
    pub fn leaf_with(&self, name: &str, names: &[&str], loopback: bool, expired: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).unwrap();
        if loopback {
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `NAME.pem` and `NAME.key` (0600) into `dir`: a certificate
    /// for 127.0.0.1 signed by this CA.
    pub fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        self.leaf(name).write(dir, name, None)
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}

impl Leaf {
    /// Writes `NAME.pem` (followed by `chain`, the issuer's PEM, when
    /// given) and `NAME.key` (0600) into `dir`.
    pub fn write(&self, dir: &Path, name: &str, chain: Option<&str>) -> (PathBuf, PathBuf) {
        let cert_path = dir.join(format!("{name}.pem"));
        std::fs::write(
            &cert_path,
            format!("{}{}", self.pem, chain.unwrap_or_default()),
        )
        .unwrap();
        let key_path = write_secret(dir, &format!("{name}.key"), &self.key_pem);
        (cert_path, key_path)
    }
}
