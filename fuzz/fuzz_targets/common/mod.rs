//! Shared by every fuzz target: the per-input time bound.
//!
//! libFuzzer's own `-timeout` is in whole seconds, and the issue asks for
//! more than 100 ms on one input to fail. So each target runs its body
//! through [`timed`]: when `LEASEGATE_FUZZ_MAX_MS` is set (the CI script
//! sets it to 100), an input that takes longer is run once more, and if
//! the second run is slow too the target panics, which libFuzzer reports
//! as a crash and saves as an artifact. The rerun keeps a scheduler hiccup
//! on a busy machine from failing CI; a really slow input is slow twice.
//! Unset (a local run), nothing is measured.

#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn limit() -> Option<Duration> {
    static LIMIT: OnceLock<Option<Duration>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let ms: u64 = std::env::var("LEASEGATE_FUZZ_MAX_MS")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (ms > 0).then(|| Duration::from_millis(ms))
    })
}

/// Runs `body` on `data`, enforcing the per-input time bound (see above).
pub fn timed(data: &[u8], body: impl Fn(&[u8])) {
    let Some(limit) = limit() else {
        body(data);
        return;
    };
    let start = Instant::now();
    body(data);
    let first = start.elapsed();
    if first <= limit {
        return;
    }
    let start = Instant::now();
    body(data);
    let second = start.elapsed();
    if second > limit {
        panic!(
            "slow input: {} bytes took {} ms and {} ms, over the {} ms bound",
            data.len(),
            first.as_millis(),
            second.as_millis(),
            limit.as_millis()
        );
    }
}

/// Splits `data` at the first `sep`, or returns all of it and an empty rest.
pub fn split_at_byte(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

pub mod payload;

/// Whether `bug` is listed in `LEASEGATE_FUZZ_KNOWN` (comma-separated):
/// a bug found and reported but not fixed yet, which a run may be told to
/// step over so it can look for others. Unset, every check is strict.
pub fn known(bug: &str) -> bool {
    static KNOWN: OnceLock<Vec<String>> = OnceLock::new();
    KNOWN
        .get_or_init(|| {
            std::env::var("LEASEGATE_FUZZ_KNOWN")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|k| k == bug)
}
