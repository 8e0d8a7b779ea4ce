//! What the benchmarks read from /proc: one `key: value` field of a file
//! such as /proc/PID/status or /proc/PID/io. Never fails: a missing file
//! or field reads as 0, and the figure then shows it.

/// The number after `key` (e.g. `VmRSS:`, `write_bytes:`) in `path`.
pub fn field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
