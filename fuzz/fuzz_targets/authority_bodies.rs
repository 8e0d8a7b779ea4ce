//! The authority's request bodies and the answers the gateway reads,
//! through the same types and checks the server and client use
//! (`leasegate::wire::api`, `leasegate::wire::ticket::secret_is_well_formed`).
//!
//! Input: a mode byte, then the body. Modes: 0 `POST /v1/enroll`
//! (`EnrollRequest`, then the service's identity-name and secret checks),
//! 1 `POST /v1/leases` (`LeaseRequest`; a blank body is the default
//! request, as in the server), 2 the answers a gateway parses
//! (`Enrollment`, `LeaseGrant`, `LeaseInfo`, `LeaseList`, `ErrorBody`),
//! 3 the secret and identity-name checks on raw text.
//!
//! Properties: nothing panics; whatever parses serializes and parses back
//! to the same value; the two checks agree with a plain reading of their
//! rules; a refused enroll body's message never quotes its secret.

#![no_main]

use base64::Engine as _;
use leasegate::wire::api::{
    self, EnrollRequest, Enrollment, ErrorBody, LeaseGrant, LeaseInfo, LeaseList, LeaseRequest,
};
use leasegate::wire::ticket;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

mod common;

fuzz_target!(|data: &[u8]| common::timed(data, check));

fn check(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => enroll(body),
        1 => lease(body),
        2 => {
            round_trip::<Enrollment>(body);
            round_trip::<LeaseGrant>(body);
            round_trip::<LeaseInfo>(body);
            round_trip::<LeaseList>(body);
            round_trip::<ErrorBody>(body);
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            secret_check(&text);
            name_check(&text);
        }
    }
}

fn enroll(body: &[u8]) {
    match serde_json::from_slice::<EnrollRequest>(body) {
        Ok(req) => {
            let again: EnrollRequest = reparse(&req);
            assert_eq!(again.ticket_secret, req.ticket_secret);
            assert_eq!(again.identity_name, req.identity_name);
            name_check(&req.identity_name);
            secret_check(req.ticket_secret.expose());
            // Debug (what a log line would show) never has the secret.
            let secret = req.ticket_secret.expose();
            if !short(secret) && !req.identity_name.contains(secret) {
                assert!(
                    !format!("{req:?}").contains(secret),
                    "Debug shows the secret"
                );
            }
        }
        Err(e) => {
            // The server's message: "the request body is not valid: {e}".
            let message = e.to_string();
            if let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice(body)
                && let Some(serde_json::Value::String(secret)) = obj.get("ticket_secret")
                && distinctive(secret, body)
            {
                assert!(
                    !message.contains(secret.as_str()),
                    "refusal quotes the secret: {message}"
                );
            }
        }
    }
}

/// Too short to tell apart from the words of a `Debug` rendering.
fn short(s: &str) -> bool {
    s.len() < 16
}

fn distinctive(secret: &str, body: &[u8]) -> bool {
    secret.len() >= 16
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && secret.bytes().any(|b| b.is_ascii_digit())
        && String::from_utf8_lossy(body).matches(secret).count() == 1
}

fn lease(body: &[u8]) {
    let req = if body.iter().all(u8::is_ascii_whitespace) {
        LeaseRequest::default()
    } else {
        match serde_json::from_slice::<LeaseRequest>(body) {
            Ok(r) => r,
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
    };
    let again: LeaseRequest = reparse(&req);
    assert_eq!(again.ttl_secs, req.ttl_secs);
}

fn reparse<T: Serialize + DeserializeOwned>(value: &T) -> T {
    let bytes = serde_json::to_vec(value).expect("serializes");
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{} does not parse back: {e}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// Parses `body` as `T`; if it parses, its serialization is stable.
fn round_trip<T: Serialize + DeserializeOwned>(body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let first = serde_json::to_value(&value).expect("serializes");
    let again: T = reparse(&value);
    let second = serde_json::to_value(&again).expect("serializes");
    assert_eq!(
        first,
        second,
        "{} changes on a round trip",
        std::any::type_name::<T>()
    );
}

/// `secret_is_well_formed` is exactly: 43 base64url characters that
/// decode to 32 bytes.
fn secret_check(secret: &str) {
    let expected = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(secret)
            .is_ok_and(|b| b.len() == ticket::SECRET_BYTES);
    assert_eq!(
        ticket::secret_is_well_formed(secret),
        expected,
        "secret_is_well_formed({secret:?})"
    );
}

/// `identity_name_is_valid` is exactly: 1 to 128 of `A-Z a-z 0-9 . _ -`.
fn name_check(name: &str) {
    let expected = (1..=128).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    assert_eq!(
        api::identity_name_is_valid(name),
        expected,
        "identity_name_is_valid({name:?})"
    );
}
