//! Configuration: the gateway's types, how they are read from TOML, and the
//! checks that `config check` and `run` share.
//!
//! Types are plain data apart from the logic that uses them (as in Azure's
//! iot-identity-service): the rest of the crate receives a checked
//! [`Config`] and never sees TOML. Reading must never stop at the first
//! problem: every problem is collected with its key path so an operator fixes
//! a file in one pass. Nothing here opens sockets or starts anything.

mod changes;
mod gateway;
pub mod table;
pub mod tls;
pub mod units;

use std::path::{Path, PathBuf};

pub use changes::restart_required;
pub use gateway::{
    Api, BatchLimits, BrokerUrl, ClockSettings, Config, DEFAULT_CONFIG_PATH, EXAMPLE, Format,
    FsyncPolicy, Influx, LeaseConfig, Mqtt, Overflow, Precision, SpoolSettings, Subscription,
    Writing,
};
pub use table::Problem;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", problems.len(), render(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// One line per problem, each naming the file and the key, as printed by
    /// `config check` and by `run` before it exits with EX_CONFIG.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Reads the file at `path` and checks it with `read`.
pub(crate) fn load_file<T>(
    path: &Path,
    read: impl FnOnce(&table::Table<'_>) -> Option<T>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    check_text(path, &text, read)
}

/// Parses TOML text and runs `read` over it, then reports unknown keys.
/// Succeeds only when no problem at all was found; `path` is used only in
/// messages (secret files are named by absolute paths).
pub(crate) fn check_text<T>(
    path: &Path,
    text: &str,
    read: impl FnOnce(&table::Table<'_>) -> Option<T>,
) -> Result<T, ConfigError> {
    let table = parse_toml(path, text)?;
    let problems = table::Problems::default();
    let root = table::Table::root(&table, &problems);
    let config = read(&root);
    root.finish();
    let problems = problems.into_vec();
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        }),
    }
}

/// Parses TOML text into a table, turning a syntax error into one message
/// with line and column.
fn parse_toml(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
        let message = match e.span() {
            Some(span) => {
                let (line, col) = line_col(text, span.start);
                format!("line {line}, column {col}: {}", e.message())
            }
            None => e.message().to_owned(),
        };
        ConfigError::Syntax {
            path: path.to_owned(),
            message,
        }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    // The parser's offset may fall inside a multi-byte character.
    let cut = (0..=offset.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let before = &text[..cut];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// A URL as it may appear in a message: any `user:password@` replaced, so
/// a credential typed into a URL never reaches a log.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}<redacted>@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// The `log_level` key both binaries share; `None` leaves the default.
pub(crate) fn log_level(t: &table::Table<'_>) -> Option<log::LevelFilter> {
    use log::LevelFilter as L;
    t.choice(
        "log_level",
        &[
            ("off", Some(L::Off)),
            ("error", Some(L::Error)),
            ("warn", Some(L::Warn)),
            ("info", Some(L::Info)),
            ("debug", Some(L::Debug)),
            ("trace", Some(L::Trace)),
        ],
        None,
    )
}

/// Refuses a file holding a secret (a password, a token, a private key)
/// that others may read or its group may change, as OpenSSH refuses such
/// a key: 0600 or 0640 (with the service's group) is fine. A file that
/// cannot be read is reported by whoever reads it.
pub(crate) fn check_secret_mode(t: &table::Table<'_>, key: &'static str, path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    let why = if mode & 0o007 != 0 {
        "others may read it"
    } else if mode & 0o020 != 0 {
        "its group may change it"
    } else {
        return;
    };
    t.problem(
        key,
        format!(
            "{} is mode {mode:04o}: {why}; chmod 600 (or 640 with the service's group)",
            path.display()
        ),
    );
}

/// Reads a secret that may be given inline (`key`) or in a file
/// (`key_file`); never both. The file's content is trimmed of surrounding
/// whitespace so a trailing newline from an editor is not part of it.
pub(crate) fn read_secret(
    t: &table::Table<'_>,
    key: &'static str,
    file_key: &'static str,
) -> Option<crate::secret::Secret> {
    let inline = t.string(key);
    let file = t.path(file_key);
    match (inline, file) {
        (Some(_), Some(_)) => {
            t.problem(
                file_key,
                format!("set either {key} or {file_key}, not both"),
            );
            None
        }
        (Some(s), None) => Some(crate::secret::Secret::new(s)),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().is_empty() => {
                t.problem(file_key, format!("{} is empty", path.display()));
                None
            }
            Ok(s) => {
                check_secret_mode(t, file_key, &path);
                Some(crate::secret::Secret::new(s.trim()))
            }
            Err(e) => {
                t.problem(file_key, format!("cannot read {}: {e}", path.display()));
                None
            }
        },
        (None, None) => None,
    }
}
