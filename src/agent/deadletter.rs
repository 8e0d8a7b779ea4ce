//! The dead-letter file: every rejected message, with its topic, its
//! subscription and the reason, as one JSON line in `state_dir`.
//!
//! Bounded and rotating: when `dead-letter.jsonl` reaches half the budget it
//! becomes `dead-letter.jsonl.1` (replacing the previous one), so the two
//! stay within `dead_letter.max_bytes`. Only appends and one rename, for SD
//! cards. It must never block the pipeline on a failure: a write error is
//! logged and the message is still acked (it was rejected either way).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;

/// Who refused the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The payload decoder: a message as it came from the broker.
    Mqtt,
    /// InfluxDB refused a stored line (a 400 or 422): one line of line
    /// protocol, without its topic.
    Influxdb,
}

/// A message the decoder rejected, or a line InfluxDB refused.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub source: Source,
    pub topic: String,
    /// The subscription's topic filter, or empty when none matched.
    pub subscription: String,
    pub reason: String,
    pub payload: Vec<u8>,
}

pub struct DeadLetters {
    path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    size: u64,
}

/// Largest payload kept per record; the rest is cut (and said so).
const MAX_PAYLOAD: usize = 64 << 10;

impl DeadLetters {
    pub fn new(state_dir: &Path, max_bytes: u64) -> DeadLetters {
        let path = state_dir.join("dead-letter.jsonl");
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        DeadLetters {
            path,
            max_bytes,
            file: None,
            size,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record; failures are logged, never returned.
    pub fn record(&mut self, r: &Rejection) {
        if let Err(e) = self.try_record(r) {
            log::error!(
                "cannot write the dead-letter file {}: {e}",
                self.path.display()
            );
        }
    }

    /// Appends one record, or says why it could not.
    pub fn try_record(&mut self, r: &Rejection) -> std::io::Result<()> {
        let written = self.append(r);
        if written.is_err() {
            self.file = None;
        }
        written
    }

    fn append(&mut self, r: &Rejection) -> std::io::Result<()> {
        let mut line = self.render(r);
        line.push('\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes / 2 {
            self.file = None;
            fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
            self.size = 0;
        }
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&self.path)?,
            );
        }
        self.file
            .as_mut()
            .expect("opened above")
            .write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn render(&self, r: &Rejection) -> String {
        let kept = &r.payload[..r.payload.len().min(MAX_PAYLOAD)];
        let mut record = serde_json::json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "source": match r.source {
                Source::Mqtt => "mqtt",
                Source::Influxdb => "influxdb",
            },
            "topic": r.topic,
            "subscription": r.subscription,
            "reason": r.reason,
            "bytes": r.payload.len(),
        });
        match std::str::from_utf8(kept) {
            Ok(text) => record["payload"] = text.into(),
            Err(_) => {
                record["payload_base64"] = base64::engine::general_purpose::STANDARD
                    .encode(kept)
                    .into()
            }
        }
        if kept.len() < r.payload.len() {
            record["truncated"] = true.into();
        }
        record.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(i: usize) -> Rejection {
        Rejection {
            source: Source::Mqtt,
            topic: format!("sensors/{i}"),
            subscription: "sensors/#".into(),
            reason: "line 1, byte 4: field \"v\" has invalid value \"x\"".into(),
            payload: format!("m v=x {i}").into_bytes(),
        }
    }

    #[test]
    fn records_are_json_lines_with_topic_reason_and_payload() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetters::new(dir.path(), 1 << 20);
        d.record(&rejection(1));
        d.record(&Rejection {
            payload: vec![0xff, 0xfe],
            ..rejection(2)
        });
        let text = fs::read_to_string(d.path()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["topic"], "sensors/1");
        assert_eq!(lines[0]["payload"], "m v=x 1");
        assert!(
            lines[0]["reason"]
                .as_str()
                .unwrap()
                .contains("invalid value")
        );
        assert_eq!(lines[1]["payload_base64"], "//4=");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(d.path()).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn the_file_rotates_within_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetters::new(dir.path(), 8 << 10);
        for i in 0..1000 {
            d.record(&rejection(i));
        }
        let current = fs::metadata(d.path()).unwrap().len();
        let previous = fs::metadata(d.path().with_extension("jsonl.1"))
            .unwrap()
            .len();
        assert!(current + previous <= 8 << 10, "{current} + {previous}");
        // The newest record is in the current file.
        assert!(
            fs::read_to_string(d.path())
                .unwrap()
                .contains("sensors/999")
        );
    }
}
