//! InfluxDB write answers: `leasegate::agent::output::refusal::{refused_lines, read}`,
//! which read what a refused write says about the batch (the answer comes
//! from the network, the batch is the gateway's own).
//!
//! Input: an API byte (1.x, 2.x, 3.x), a status byte (400, 422 or another
//! status), then the answer's body and the batch, split at the first NUL.
//! The batch is made of whole lines, each ending in a newline, as the
//! writer sends them.
//!
//! Properties: neither function panics. An answer read as refused lines
//! names at least one, and only indices of lines the batch has, never one
//! the server skips (spaces and tabs only, or a comment); for 3.x the rest counts as written, for 1.x and 2.x it never
//! does (it is sent again). An answer that is not 400 or 422 is never read
//! as content.

#![no_main]

use leasegate::agent::output::refusal::{self, Refusal};
use leasegate::config::Api;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| common::timed(data, check));

fn check(data: &[u8]) {
    let [api, status, rest @ ..] = data else {
        return;
    };
    let api = match api % 3 {
        0 => Api::V1,
        1 => Api::V2,
        _ => Api::V3,
    };
    let status = match status % 4 {
        0 | 1 => 400,
        2 => 422,
        _ => 500 + u16::from(*status),
    };
    let (body, batch) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b""[..]),
    };
    let body = String::from_utf8_lossy(body);
    let mut batch = String::from_utf8_lossy(batch).into_owned();
    if !batch.is_empty() && !batch.ends_with('\n') {
        batch.push('\n');
    }
    let refused = refusal::refused_lines(&body);
    let lines: Vec<&str> = batch.split_inclusive('\n').collect();
    match refusal::read(api, status, &body, &refused, batch.as_bytes()) {
        Refusal::Lines { bad, rest_written } => {
            assert!(matches!(status, 400 | 422), "{status} read as content");
            assert!(!bad.is_empty(), "refused lines without a line");
            for (index, _) in &bad {
                let line = lines
                    .get(*index)
                    .unwrap_or_else(|| panic!("index {index} of a batch of {} lines", lines.len()));
                assert!(!skipped(line), "skipped line {index} named");
            }
            assert_eq!(rest_written, api == Api::V3);
        }
        Refusal::BeyondRetention { bad } => {
            assert!(matches!((status, api), (400, Api::V1) | (422, Api::V2)));
            assert!(!bad.is_empty(), "retention named no line");
            for (index, _) in &bad {
                let line = lines
                    .get(*index)
                    .unwrap_or_else(|| panic!("index {index} of a batch of {} lines", lines.len()));
                assert!(!skipped(line), "skipped line {index} named");
            }
        }
        Refusal::Unknown => assert!(matches!(status, 400 | 422)),
        Refusal::NotContent => {}
    }
}

/// Whether InfluxDB reads the line as nothing: it skips lines of spaces and
/// tabs and comment lines without counting them, so it never refuses one.
fn skipped(line: &str) -> bool {
    let text = line.trim_end_matches('\n').trim_start_matches([' ', '\t']);
    text.is_empty() || text.starts_with('#')
}
