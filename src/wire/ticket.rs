//! The enrollment ticket: one line of text an admin hands to a field tech.
//! It owns the format, written by the authority and read by the gateway:
//! [`PREFIX`] and unpadded base64url of a JSON [`Ticket`] (the authority's
//! URLs, the ticket id, the secret, its pins, an expiry and attributes).
//! Surrounding whitespace is ignored.
//!
//! A ticket holds a secret: its `Debug` never shows it, and a parse error
//! must never quote the ticket's text.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The format's version: a later format is told apart and refused by
/// name. The rest is URL-safe characters on one line, which survives copy,
/// paste, mail and CRLF editors.
pub const PREFIX: &str = "LGT1.";

/// Most URLs a ticket may carry: enough for any deployment's replicas
/// and load balancers, few enough that a dead list is tried quickly.
pub const MAX_URLS: usize = 8;

/// Random bytes in a ticket secret: 256 bits, twice the 128 asked for.
pub const SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ticket {
    /// The authority's base URL (its `public_url`).
    pub url: String,
    /// Every URL of the deployment, in the order to try them (its
    /// `public_urls`); empty when `url` is the only one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// The ticket's id, for logs and `ticket revoke`; not a secret.
    pub id: String,
    #[serde(with = "crate::secret::wire")]
    pub secret: Secret,
    /// Lowercase hex SHA-256 of the authority's DER certificate; absent
    /// when it serves plain HTTP. Gateways older than the CA read only this
    /// pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    /// Lowercase hex SHA-256 of the deployment CA's DER certificate: when
    /// present, what the gateway pins (any certificate the CA signed).
    /// Absent from plain HTTP authorities and from those older than the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_sha256: Option<String>,
    /// Unix seconds after which the authority refuses the ticket; the
    /// authority's clock decides, this is for people and early warnings.
    pub expires: u64,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The identity name the ticket enrolls, when the admin bound one: the
    /// gateway enrolls under it whatever its own `identity_name` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_name: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("the ticket is empty")]
    Empty,
    #[error("not a leasegate ticket: it does not start with {PREFIX}")]
    NotATicket,
    #[error("ticket format version {0} is not one this leasegate reads (it reads {PREFIX})")]
    Version(String),
    #[error("the ticket's text after {PREFIX} is not base64url (character {0})")]
    Encoding(usize),
    #[error("the ticket's content is not valid: {0}")]
    Content(String),
    #[error("the ticket's secret is not {SECRET_BYTES} base64url-encoded bytes")]
    Secret,
    #[error("{0}; tickets are read only from regular files, never through a link")]
    NotRegular(String),
    #[error("the ticket file is {0} bytes, more than the 64 KiB a ticket can be")]
    TooLarge(u64),
    #[error("the ticket is not UTF-8 text: byte {0} is not valid UTF-8")]
    NotUtf8(usize),
}

impl Ticket {
    /// The one-line text form, without a line end.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a ticket always serializes");
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Reads a ticket from a file's text: whitespace, CR and LF around it
    /// are ignored.
    pub fn parse(text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(TicketError::Empty);
        }
        let Some(body) = text.strip_prefix(PREFIX) else {
            // "LGT2.xxx" is a newer format, anything else not a ticket.
            return Err(match text.split_once('.') {
                Some((v, _)) if v.len() <= 8 && v.starts_with("LGT") => {
                    TicketError::Version(v[3..].to_owned())
                }
                _ => TicketError::NotATicket,
            });
        };
        if let Some(at) = body
            .bytes()
            .position(|c| !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_'))
        {
            return Err(TicketError::Encoding(PREFIX.len() + at + 1));
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TicketError::Encoding(PREFIX.len() + body.len()))?;
        // serde's messages name the field, never the secret's value.
        let ticket: Ticket =
            serde_json::from_slice(&json).map_err(|e| TicketError::Content(e.to_string()))?;
        if !secret_is_well_formed(ticket.secret.expose()) {
            return Err(TicketError::Secret);
        }
        if !(ticket.url.starts_with("https://") || ticket.url.starts_with("http://")) {
            return Err(TicketError::Content(
                "url must start with https:// or http://".into(),
            ));
        }
        if ticket.urls.len() > MAX_URLS {
            return Err(TicketError::Content(format!(
                "urls lists {} URLs, more than {MAX_URLS}",
                ticket.urls.len()
            )));
        }
        let scheme = if ticket.url.starts_with("https://") {
            "https://"
        } else {
            "http://"
        };
        if let Some(i) = ticket.urls.iter().position(|u| !u.starts_with(scheme)) {
            return Err(TicketError::Content(format!(
                "urls[{i}] must start with {scheme}, as url does"
            )));
        }
        if ticket.url.starts_with("https://")
            && ticket.cert_sha256.is_none()
            && ticket.ca_sha256.is_none()
        {
            return Err(TicketError::Content(
                "an https:// ticket must carry ca_sha256 or cert_sha256".into(),
            ));
        }
        for (key, pin) in [
            ("cert_sha256", &ticket.cert_sha256),
            ("ca_sha256", &ticket.ca_sha256),
        ] {
            if let Some(pin) = pin
                && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(TicketError::Content(format!("{key} must be 64 hex digits")));
            }
        }
        if let Some(name) = &ticket.identity_name
            && !crate::wire::api::identity_name_is_valid(name)
        {
            return Err(TicketError::Content(
                "identity_name must be 1 to 128 characters of A-Z a-z 0-9 . _ -".into(),
            ));
        }
        Ok(ticket)
    }
}

impl Ticket {
    /// The URLs to try, in order: `urls`, or `url` alone.
    pub fn all_urls(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }

    /// What a gateway pins: the CA when the ticket names one (then any
    /// certificate it signed is the authority's), else the certificate.
    pub fn pins(&self) -> crate::wire::client::Pins {
        match (&self.ca_sha256, &self.cert_sha256) {
            (Some(ca), _) => crate::wire::client::Pins::ca(&ca.to_ascii_lowercase()),
            (None, Some(leaf)) => crate::wire::client::Pins::leaf(&leaf.to_ascii_lowercase()),
            (None, None) => crate::wire::client::Pins::default(),
        }
    }
}

/// Whether `secret` has the shape of a ticket secret; the authority checks
/// this before any lookup, so a mangled secret is reported as malformed
/// rather than unknown.
pub fn secret_is_well_formed(secret: &str) -> bool {
    secret.len() == (SECRET_BYTES * 4).div_ceil(3)
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(secret)
            .is_ok_and(|b| b.len() == SECRET_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ticket {
        Ticket {
            url: "https://authority.example:7443".into(),
            urls: Vec::new(),
            id: "0123456789abcdef".into(),
            secret: Secret::new(crate::secret::random_base64(SECRET_BYTES)),
            cert_sha256: Some("ab".repeat(32)),
            ca_sha256: None,
            expires: 1_900_000_000,
            attributes: [("service".to_owned(), "iot-sensor".to_owned())].into(),
            identity_name: None,
        }
    }

    #[test]
    fn round_trips_through_whitespace_and_crlf() {
        let t = sample();
        let line = t.encode();
        assert!(line.starts_with("LGT1."));
        assert!(!line.contains(char::is_whitespace));
        for text in [
            line.clone(),
            format!("{line}\n"),
            format!("  {line}\r\n"),
            format!("\r\n{line}\r\n\r\n"),
        ] {
            let back = Ticket::parse(&text).unwrap();
            assert_eq!(back.secret, t.secret);
            assert_eq!(back.url, t.url);
            assert_eq!(back.attributes, t.attributes);
            assert_eq!(back.cert_sha256, t.cert_sha256);
        }
    }

    fn err(text: &str) -> TicketError {
        Ticket::parse(text).unwrap_err()
    }

    #[test]
    fn each_kind_of_bad_text_has_its_own_error() {
        let line = sample().encode();
        assert_eq!(err(" \r\n"), TicketError::Empty);
        assert_eq!(err("hello"), TicketError::NotATicket);
        assert_eq!(
            err(&line.replacen("LGT1.", "LGT2.", 1)),
            TicketError::Version("2".into())
        );
        assert_eq!(
            err(&format!("{}!{}", &line[..10], &line[10..])),
            TicketError::Encoding(11)
        );
        let cut = Ticket::parse(&line[..line.len() - 20]).unwrap_err();
        assert!(matches!(
            cut,
            TicketError::Content(_) | TicketError::Encoding(_)
        ));
        let mut short = sample();
        short.secret = Secret::new("abc");
        assert_eq!(err(&short.encode()), TicketError::Secret);
        let mut no_pin = sample();
        no_pin.cert_sha256 = None;
        assert!(
            matches!(Ticket::parse(&no_pin.encode()), Err(TicketError::Content(m)) if m.contains("cert_sha256"))
        );
    }

    #[test]
    fn every_url_of_the_deployment_is_carried_and_checked() {
        let mut t = sample();
        assert_eq!(t.all_urls(), [t.url.clone()]);
        t.urls = vec![
            "https://a.example:7443".into(),
            "https://b.example:7443".into(),
        ];
        let back = Ticket::parse(&t.encode()).unwrap();
        assert_eq!(back.all_urls(), t.urls);
        let mut mixed = t.clone();
        mixed.urls.push("http://c.example:7443".into());
        assert!(
            matches!(Ticket::parse(&mixed.encode()), Err(TicketError::Content(m)) if m.contains("urls[2]"))
        );
        let mut many = t.clone();
        many.urls = (0..=MAX_URLS)
            .map(|i| format!("https://r{i}.example"))
            .collect();
        assert!(
            matches!(Ticket::parse(&many.encode()), Err(TicketError::Content(m)) if m.contains("more than"))
        );
        // A ticket with only the CA's pin, as gateways pin it.
        let mut ca_only = sample();
        ca_only.cert_sha256 = None;
        ca_only.ca_sha256 = Some("CD".repeat(32));
        let back = Ticket::parse(&ca_only.encode()).unwrap();
        assert_eq!(back.pins(), crate::wire::client::Pins::ca(&"cd".repeat(32)));
        ca_only.ca_sha256 = Some("xyz".into());
        assert!(
            matches!(Ticket::parse(&ca_only.encode()), Err(TicketError::Content(m)) if m.contains("ca_sha256"))
        );
    }

    #[test]
    fn errors_and_debug_never_show_the_secret() {
        let t = sample();
        let secret = t.secret.expose().to_owned();
        assert!(!format!("{t:?}").contains(&secret));
        let line = t.encode();
        for bad in [&line[..line.len() - 3], &line[..40]] {
            if let Err(e) = Ticket::parse(bad) {
                assert!(!e.to_string().contains(&secret));
            }
        }
    }
}
