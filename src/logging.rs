//! Logger setup shared by both binaries.
//!
//! `RUST_LOG` wins when set; otherwise the configured level, else `info`.
//! Must never log at a level that could carry secrets by default: nothing
//! in this crate logs a secret at any level, and this module adds nothing.

pub fn init(level: Option<log::LevelFilter>) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level.unwrap_or(log::LevelFilter::Info));
    // Dependencies' chatter at info (connection pool, TLS) is noise on a
    // gateway's journal.
    builder.filter_module("rumqttc", log::LevelFilter::Warn);
    builder.filter_module("ureq", log::LevelFilter::Warn);
    builder.filter_module("rustls", log::LevelFilter::Warn);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    let _ = builder.try_init();
}
