//! Logger setup shared by both binaries: `RUST_LOG` wins when set, else
//! the configured level, else `info`. When stderr is systemd's journal,
//! each line is `<PRIORITY>target: message`; elsewhere env_logger's usual
//! format.
//!
//! It must never let a secret reach the log: nothing in this crate logs a
//! secret at any level, and this module adds no output of its own.

/// The syslog priority journald takes from a `<N>` line prefix (so that
/// `journalctl -p warning` works).
pub fn journal_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether stderr is the journal stream systemd named in `JOURNAL_STREAM`
/// (`DEV:INODE`): a command started from a shell that inherited the
/// variable writes to a terminal and keeps the usual format.
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let stream = stream.to_string_lossy().into_owned();
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// Whether `RUST_LOG` decides (then a reload leaves the level alone).
fn from_env() -> bool {
    std::env::var_os("RUST_LOG").is_some()
}

/// A reloaded `log_level` (ignored while `RUST_LOG` is set, which wins).
pub fn set_level(level: Option<log::LevelFilter>) {
    if !from_env() {
        log::set_max_level(level.unwrap_or(log::LevelFilter::Info));
    }
}

pub fn init(level: Option<log::LevelFilter>) {
    let mut builder = env_logger::Builder::new();
    // Everything passes env_logger's own filter; the level is the global
    // maximum, which a reload can change.
    builder.filter_level(log::LevelFilter::Trace);
    // Dependencies' chatter at info (connection pool, TLS) is noise on a
    // gateway's journal.
    builder.filter_module("rumqttc", log::LevelFilter::Warn);
    builder.filter_module("ureq", log::LevelFilter::Warn);
    builder.filter_module("rustls", log::LevelFilter::Warn);
    // No timestamp in the journal: it has its own.
    if stderr_is_the_journal() {
        builder.format(|buf, record| {
            use std::io::Write as _;
            writeln!(
                buf,
                "<{}>{}: {}",
                journal_priority(record.level()),
                record.target(),
                record.args()
            )
        });
    }
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    if builder.try_init().is_ok() {
        set_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_priorities_follow_syslog() {
        assert_eq!(journal_priority(log::Level::Error), 3);
        assert_eq!(journal_priority(log::Level::Warn), 4);
        assert_eq!(journal_priority(log::Level::Info), 6);
        assert_eq!(journal_priority(log::Level::Debug), 7);
    }
}
