//! Enrollment tickets: `leasegate::wire::ticket::Ticket::parse`.
//!
//! Input: a mode byte, then text. Mode bit 0 clear: the text is a ticket
//! file as it is (lossily UTF-8). Set: the text is the ticket's JSON,
//! which the target wraps as `LGT1.` + base64url, so the fuzzer explores
//! the content behind the encoding too (bit 1 adds the blanks and CRLF a
//! copied file may have around it).
//!
//! Properties: `parse` never panics. An accepted ticket has a well-formed
//! secret, an http(s) URL, a certificate pin (64 hex digits) when https, a
//! valid identity name if it binds one, and its encoding
//! is one line that parses back to the same ticket. A refusal never
//! quotes the ticket's secret.

#![no_main]

use base64::Engine as _;
use leasegate::wire::ticket::{self, Ticket};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| common::timed(data, check));

fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        assert_eq!(Ticket::parse("").err(), Some(ticket::TicketError::Empty));
        return;
    };
    let text = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rest);
        let blanks = if mode & 2 != 0 { " \r\n" } else { "" };
        format!("{blanks}{}{body}{blanks}", ticket::PREFIX)
    };
    match Ticket::parse(&text) {
        Ok(t) => accepted(&t),
        Err(e) => refused(&e, rest),
    }
}

fn accepted(t: &Ticket) {
    let secret = t.secret.expose();
    assert!(ticket::secret_is_well_formed(secret));
    assert!(t.url.starts_with("https://") || t.url.starts_with("http://"));
    if t.url.starts_with("https://") {
        assert!(t.cert_sha256.is_some(), "https ticket without a pin");
    }
    if let Some(pin) = &t.cert_sha256 {
        assert!(
            pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()),
            "pin {pin:?} is not 64 hex digits"
        );
    }
    if let Some(name) = &t.identity_name {
        assert!(
            leasegate::wire::api::identity_name_is_valid(name),
            "identity name {name:?}"
        );
    }
    let line = t.encode();
    assert!(line.starts_with(ticket::PREFIX));
    assert!(
        line.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "encoding is not one URL-safe line: {line:?}"
    );
    let again = Ticket::parse(&line).expect("an encoded ticket parses");
    assert_eq!(again.url, t.url);
    assert_eq!(again.id, t.id);
    assert_eq!(again.secret, t.secret);
    assert_eq!(again.cert_sha256, t.cert_sha256);
    assert_eq!(again.expires, t.expires);
    assert_eq!(again.attributes, t.attributes);
    assert_eq!(again.identity_name, t.identity_name);
    // Debug never shows the secret (unless another field holds its text).
    let elsewhere = t.url.contains(secret)
        || t.id.contains(secret)
        || t.cert_sha256.as_deref().is_some_and(|c| c.contains(secret))
        || t.attributes
            .iter()
            .any(|(k, v)| k.contains(secret) || v.contains(secret));
    if !elsewhere {
        assert!(!format!("{t:?}").contains(secret), "Debug shows the secret");
    }
}

/// A refusal's message never quotes the secret of the JSON it came from.
fn refused(e: &ticket::TicketError, json: &[u8]) {
    let message = e.to_string();
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(json)
    else {
        return;
    };
    let Some(serde_json::Value::String(secret)) = obj.get("secret") else {
        return;
    };
    // Only a secret that cannot be mistaken for the message's own words:
    // long, of base64url characters with a digit, and once in the input.
    let distinctive = secret.len() >= 16
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && secret.bytes().any(|b| b.is_ascii_digit())
        && String::from_utf8_lossy(json)
            .matches(secret.as_str())
            .count()
            == 1;
    if distinctive {
        assert!(
            !message.contains(secret.as_str()),
            "refusal quotes the secret: {message}"
        );
    }
}
