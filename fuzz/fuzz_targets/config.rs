//! Configuration readers: the gateway's (`Config::from_toml`), the
//! authority's (`AuthorityConfig::from_toml`), and the unit parsers they
//! use (durations, sizes). Broker URLs and topic filters are reached
//! through the gateway's reader (their functions are not public).
//!
//! Input: a mode byte, then text. Mode 0 the gateway's TOML, 1 the
//! authority's, 2 the text through the unit parsers.
//!
//! The readers open the files a config names (`*_file` keys) and, for
//! `mqtts://` without `ca_file`, the system's CA certificates. To keep the
//! target hermetic and fast, inputs whose `*_file` values lie outside the
//! fixture directory (`/tmp/leasegate-fuzz`, filled with a throwaway CA,
//! client certificate, key and password file on start) are skipped, and `SSL_CERT_FILE` points at a fixture CA.
//!
//! Properties: nothing panics; a refusal lists at least one problem (the
//! reader says why it refused), each rendered line names the file; a
//! password or token given in the file is never shown by a problem or by
//! the accepted config's `Debug`.

#![no_main]

use std::path::Path;
use std::sync::Once;

use leasegate::authority::config::AuthorityConfig;
use leasegate::config::{Config, ConfigError, units};
use libfuzzer_sys::fuzz_target;

mod common;

const FIXTURES: &str = "/tmp/leasegate-fuzz";
const PATH: &str = "/etc/leasegate/fuzz.toml";

fuzz_target!(|data: &[u8]| {
    static INIT: Once = Once::new();
    INIT.call_once(init);
    common::timed(data, check)
});

/// Writes the fixture files the seeds name (a throwaway self-signed CA
/// and client certificate with its key, made here so no key is kept in
/// the repository, a password file and an empty one) and points the
/// system CA store at the CA.
fn init() {
    let dir = Path::new(FIXTURES);
    std::fs::create_dir_all(dir.join("certs")).expect("fixture dir");
    let ca = rcgen::generate_simple_self_signed(vec!["leasegate-fuzz-ca".to_owned()])
        .expect("fixture CA");
    let client = rcgen::generate_simple_self_signed(vec!["leasegate-fuzz-client".to_owned()])
        .expect("fixture client certificate");
    let files: [(&str, Vec<u8>); 5] = [
        ("ca.pem", ca.cert.pem().into_bytes()),
        ("client.pem", client.cert.pem().into_bytes()),
        (
            "client.key",
            client.signing_key.serialize_pem().into_bytes(),
        ),
        ("password", b"fixture-password-0123456789ab\n".to_vec()),
        ("empty", b"\n".to_vec()),
    ];
    for (name, bytes) in files {
        // Written aside and renamed, so parallel jobs never read half a file.
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, bytes).expect("fixture file");
        std::fs::rename(&tmp, dir.join(name)).expect("fixture file");
    }
    // SAFETY: called once, before this process runs any input, while no
    // other thread of ours reads the environment.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", dir.join("ca.pem"));
        std::env::set_var("SSL_CERT_DIR", dir.join("certs"));
    }
}

fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match mode % 3 {
        0 | 1 => {
            let Some(secrets) = hermetic(&text) else {
                return;
            };
            let path = Path::new(PATH);
            let (debug, result) = if mode % 3 == 0 {
                let r = Config::from_toml(path, &text);
                (r.as_ref().ok().map(|c| format!("{c:?}")), r.err())
            } else {
                let r = AuthorityConfig::from_toml(path, &text);
                (r.as_ref().ok().map(|c| format!("{c:?}")), r.err())
            };
            let shown = match (&debug, &result) {
                (Some(d), _) => d.clone(),
                (None, Some(e)) => refused(e),
                (None, None) => unreachable!(),
            };
            for s in &secrets {
                assert!(!shown.contains(s.as_str()), "a secret is shown: {shown}");
            }
        }
        _ => small_parsers(&text),
    }
}

/// A refusal: at least one problem, each line naming the file.
fn refused(e: &ConfigError) -> String {
    if let ConfigError::Invalid { problems, .. } = e {
        assert!(!problems.is_empty(), "refused without saying why");
    }
    let lines = e.lines();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line.starts_with(PATH),
            "a problem line without the file: {line}"
        );
    }
    let mut all = lines.join("\n");
    all.push_str(&e.to_string());
    all
}

/// `None` when a `*_file` key names anything but a fixture (the input is
/// skipped); else the distinctive secrets the text gives inline, which no
/// message may show.
fn hermetic(text: &str) -> Option<Vec<String>> {
    let Ok(table) = text.parse::<toml::Table>() else {
        // The reader stops at the syntax error too, before any file.
        return Some(Vec::new());
    };
    let mut secrets = Vec::new();
    let mut ok = true;
    walk(&toml::Value::Table(table), "", &mut |key, value| {
        if key.ends_with("_file")
            && let toml::Value::String(s) = value
            && (!s.starts_with(FIXTURES) || s.contains(".."))
        {
            ok = false;
        }
        if matches!(key, "password" | "token" | "admin_token" | "admin_password")
            && let toml::Value::String(s) = value
            && distinctive(s, text)
        {
            secrets.push(s.clone());
        }
    });
    ok.then_some(secrets)
}

fn walk(value: &toml::Value, key: &str, f: &mut impl FnMut(&str, &toml::Value)) {
    f(key, value);
    match value {
        toml::Value::Table(t) => t.iter().for_each(|(k, v)| walk(v, k, f)),
        toml::Value::Array(a) => a.iter().for_each(|v| walk(v, key, f)),
        _ => {}
    }
}

/// Long, of base64url characters with a digit, and once in the text: a
/// secret no message could show by chance.
fn distinctive(s: &str, text: &str) -> bool {
    s.len() >= 16
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && s.bytes().any(|b| b.is_ascii_digit())
        && text.matches(s).count() == 1
}

fn small_parsers(text: &str) {
    match units::parse_size(text) {
        Ok(n) => {
            // A whole number, then optionally one known unit.
            let t = text.trim();
            let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
            let unit = t[digits.len()..].trim();
            let factor: u64 = match unit {
                "" | "B" => 1,
                "kB" | "KB" => 1_000,
                "KiB" => 1 << 10,
                "MB" => 1_000_000,
                "MiB" => 1 << 20,
                "GB" => 1_000_000_000,
                "GiB" => 1 << 30,
                other => panic!("size {t:?} with unit {other:?} read as {n}"),
            };
            assert_eq!(
                digits
                    .parse::<u64>()
                    .ok()
                    .and_then(|d| d.checked_mul(factor)),
                Some(n)
            );
        }
        Err(e) => assert!(
            e.contains(&format!("{text:?}")),
            "message {e:?} does not quote the text"
        ),
    }
    let _ = units::parse_duration(text);
}
