//! SIGHUP: reads the configuration file again and applies it to the
//! running gateway where it can: subscriptions and formats, batch limits,
//! the log level, and a new look at the ticket directory. Every other
//! changed key ([`config::restart_required`]) is named as waiting for a
//! restart and keeps its running value.
//!
//! It never applies an invalid file (every problem is logged, the running
//! configuration stays), and never logs a secret: keys, not values.

use std::path::Path;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::agent::credential::tickets::Rescan;
use crate::config::{self, BatchLimits, Config, Subscription};

/// What a reload changes in the running pipeline.
pub struct Live<'a> {
    pub subscriptions: &'a watch::Sender<Vec<Subscription>>,
    pub batch: &'a Mutex<BatchLimits>,
    pub rescan: Option<&'a Rescan>,
}

/// Reads `path` again and applies it; returns the configuration now in
/// force.
pub fn apply(path: &Path, current: Config, live: &Live<'_>) -> Config {
    log::info!("SIGHUP: reloading {}", path.display());
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for line in e.lines() {
                log::error!("reload refused, the running configuration stays: {line}");
            }
            return current;
        }
    };
    let restart = config::restart_required(&current, &new);
    if !restart.is_empty() {
        log::warn!(
            "reload: {} changed; that takes effect after a restart",
            restart.join(", ")
        );
    }
    let topics: Vec<&str> = new
        .mqtt
        .subscribe
        .iter()
        .map(|s| s.topic.as_str())
        .collect();
    live.subscriptions.send_replace(new.mqtt.subscribe.clone());
    *live.batch.lock().unwrap_or_else(|p| p.into_inner()) = new.batch.clone();
    crate::logging::set_level(new.log_level);
    if let Some(rescan) = live.rescan {
        rescan.now();
    }
    log::info!(
        "reloaded: subscriptions {topics:?}, batch {} lines / {} bytes / {:?}",
        new.batch.max_lines,
        new.batch.max_bytes,
        new.batch.flush_interval
    );
    // Only what applies live is taken: a key waiting for a restart keeps
    // its running value, so a later reload names it again.
    let mut running = current;
    running.mqtt.subscribe = new.mqtt.subscribe;
    running.batch = new.batch;
    running.log_level = new.log_level;
    running
}
