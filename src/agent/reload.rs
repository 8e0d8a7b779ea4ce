//! SIGHUP: the configuration file read again and applied to the running
//! gateway where it can be.
//!
//! An invalid file is refused with every problem logged, and the running
//! configuration stays. A valid one takes effect at once for subscriptions
//! and formats (on the live broker session), batch limits and the log
//! level, and the ticket directory is looked at again; every other changed
//! key ([`config::restart_required`]) is named as waiting for a restart,
//! and keeps its running value (so a later reload names it again). It
//! never logs a secret: keys are named, values are not.

use std::path::Path;
use std::sync::Mutex;

use tokio::sync::watch;

use super::tickets::Rescan;
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
    let mut running = current;
    running.mqtt.subscribe = new.mqtt.subscribe;
    running.batch = new.batch;
    running.log_level = new.log_level;
    running
}
