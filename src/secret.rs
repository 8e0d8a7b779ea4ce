//! A wrapper for secret strings (passwords, tokens, ticket secrets), and
//! the making ([`generate`]) and hashing ([`digest`]) of new ones.
//!
//! A secret's text leaves it only through [`Secret::expose`], where it is
//! put on the wire. It must never implement `Display`, its `Debug` never
//! shows the text, and only fields that opt in ([`wire`]) serialize it, so
//! a secret in a config, an error or a status struct cannot reach a log or
//! a report by accident.

use std::fmt;

use base64::Engine as _;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    /// The secret's text, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A new secret of `bytes` random bytes from the OS, as `prefix` followed by
/// unpadded base64url (URL-, header- and InfluxQL-quote-safe).
pub fn generate(prefix: &str, bytes: usize) -> Secret {
    Secret(format!("{prefix}{}", random_base64(bytes)))
}

/// `bytes` random bytes from the OS as unpadded base64url.
pub fn random_base64(bytes: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(bytes))
}

/// Random bytes from the OS. Panics only if the OS has no random source,
/// which no supported system lacks and no secret may do without.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom as _;
    let mut out = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the OS random source failed");
    out
}

/// Lowercase hex of `n` random bytes: ids that are safe in every name and
/// URL path they end up in.
pub fn random_hex(n: usize) -> String {
    hex(&random_bytes(n))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// SHA-256 of a secret's text, as lowercase hex: what a store keeps so that
/// a leaked store gives no usable secret. The secrets hashed here carry 256
/// random bits, so a fast hash is as strong as a slow one.
pub fn digest(secret: &Secret) -> String {
    sha256_hex(secret.0.as_bytes())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Serde for a [`Secret`] field that goes on the wire, used as
/// `#[serde(with = "crate::secret::wire")]`.
pub mod wire {
    use super::Secret;

    pub fn serialize<S: serde::Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&s.0)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Secret, D::Error> {
        <String as serde::Deserialize>::deserialize(de).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_text() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(<redacted>))");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn generated_secrets_are_long_distinct_and_hash_stably() {
        let a = generate("x_", 32);
        let b = generate("x_", 32);
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 2 + 43);
        assert!(
            a.expose()[2..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(digest(&a), digest(&a.clone()));
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
