//! Human forms of durations ("15m", "1h 30m") and sizes ("256MiB", "1MB").
//!
//! Owns only the text forms; it must not know which keys use them or what
//! ranges they allow (the config readers check those).

use std::time::Duration;

/// A size in bytes, or a share of some whole (such as a filesystem's
/// size) in whole percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeOrPercent {
    Bytes(u64),
    Percent(u8),
    /// A share, but never more than the bytes given: one default that
    /// suits an 8 GB card and a 1 TB disk (journald caps its own free-space
    /// floor the same way).
    PercentUpTo(u8, u64),
}

impl SizeOrPercent {
    /// The bytes this stands for, out of `whole`.
    pub fn of(self, whole: u64) -> u64 {
        match self {
            SizeOrPercent::Bytes(n) => n,
            SizeOrPercent::Percent(p) => (u128::from(whole) * u128::from(p) / 100) as u64,
            SizeOrPercent::PercentUpTo(p, at_most) => {
                SizeOrPercent::Percent(p).of(whole).min(at_most)
            }
        }
    }
}

/// Parses a duration such as "500ms", "15m" or "1h 30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Parses a size such as "256MiB", "1MB", "4096" or "64 KiB". Binary units
/// (KiB, MiB, GiB) are powers of 1024, decimal units (kB, MB, GB) of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let invalid = || {
        format!(
            "invalid size {text:?}: expected a whole number with an optional unit (B, kB, KiB, MB, MiB, GB, GiB)"
        )
    };
    if digits.is_empty() {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(invalid()),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size(" 64 KiB "), Ok(65_536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(
            parse_size("3 parsecs")
                .unwrap_err()
                .contains("\"3 parsecs\"")
        );
        assert!(
            parse_size("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("\"5 parsecs\"")
        );
    }
}
