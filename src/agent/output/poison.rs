//! Batches the server fails on: a write that ends, again and again, with
//! the connection closed and no answer while the server answers other
//! requests holds a line the server cannot take. The writer then splits
//! the batch, down to that line, which goes to the dead-letter file.
//! This module only tells when a batch is to be treated so; it never
//! writes, splits or drops anything itself, and never calls a batch
//! poisoned while the server is away (a refused connection, a timeout, or
//! no answer to a probe either).

use std::time::Duration;

use crate::agent::credential::Credential;
use crate::agent::output::sink::{Sink, WriteError};

/// Unanswered writes of a batch before it is suspected: a server that
/// restarts or a proxy that drops one connection is not a poisoned batch.
pub const TRIES: u32 = 3;
/// Unanswered writes of one line alone, found by splitting a suspected
/// batch, before it is dead-lettered.
const TRIES_ALONE: u32 = 2;
/// How long the probe of the server waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts one batch's unanswered writes in a row. InfluxDB 3 before 3.10
/// panics answering some refused lines (docs/influxdb-api.md); retrying
/// such a batch whole would hold everything behind it forever.
pub struct Unanswered {
    times: u32,
    /// A part of a suspected batch: split at its first unanswered write.
    suspect: bool,
}

impl Unanswered {
    pub fn new(suspect: bool) -> Self {
        Unanswered { times: 0, suspect }
    }

    /// Notes a failed write of the batch (`lines` of them); true when it is
    /// to be split, or dead-lettered if it is one line: its writes went
    /// unanswered often enough and the server answers a probe now.
    pub fn poisoned(
        &mut self,
        e: &WriteError,
        lines: u64,
        sink: &Sink,
        credential: &Credential,
    ) -> bool {
        if !e.unanswered() {
            self.times = 0;
            return false;
        }
        self.times += 1;
        let needed = match (self.suspect, lines) {
            (false, _) => TRIES,
            (true, 1) => TRIES_ALONE,
            (true, _) => 1,
        };
        self.times >= needed && sink.answers(credential, PROBE_TIMEOUT)
    }

    /// Why a line found this way is dead-lettered.
    pub fn reason(&self) -> String {
        format!(
            "InfluxDB closed the connection without an answer each time this line was written ({} times alone), while it answered other requests (InfluxDB 3 before 3.10 does so for a refused line whose first 20 bytes end inside a character)",
            self.times
        )
    }

    /// What the log says when a batch is split for it.
    pub fn split_reason(&self) -> String {
        format!(
            "InfluxDB closed the connection without an answer {} time(s) for this batch while it answers other requests: looking for the line it fails on",
            self.times
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Api;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A loopback server that reads each request's head and closes without
    /// an answer, except that it answers `GET /ping` when `pings`.
    fn server(pings: bool) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::Builder::new()
            .name("poison-test-server".into())
            .spawn(move || {
                for conn in listener.incoming().take(64) {
                    let Ok(mut conn) = conn else { continue };
                    let mut line = String::new();
                    let _ = BufReader::new(&conn).read_line(&mut line);
                    if pings && line.starts_with("GET /ping ") {
                        let _ =
                            conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
                    }
                }
            })
            .unwrap();
        port
    }

    fn credential(port: u16) -> Credential {
        Credential {
            api: Api::V3,
            write_url: format!("http://127.0.0.1:{port}/api/v3/write_lp?db=d"),
            authorization: None,
            origin: crate::agent::credential::Origin::Static { file: None },
        }
    }

    fn unanswered_write(sink: &Sink, credential: &Credential) -> WriteError {
        let e = sink.write(credential, b"m v=1\nm v=2\n").unwrap_err();
        assert!(e.unanswered(), "{e:?}");
        e
    }

    #[test]
    fn a_batch_is_suspected_after_its_tries_only_if_the_server_answers_others() {
        let sink = Sink::new(false, Duration::from_secs(5));
        let answering = credential(server(true));
        let mut batch = Unanswered::new(false);
        for _ in 1..TRIES {
            let e = unanswered_write(&sink, &answering);
            assert!(!batch.poisoned(&e, 2, &sink, &answering));
        }
        let e = unanswered_write(&sink, &answering);
        assert!(batch.poisoned(&e, 2, &sink, &answering));
        // A part of it at its first; a line alone at its second.
        assert!(Unanswered::new(true).poisoned(&e, 2, &sink, &answering));
        let mut alone = Unanswered::new(true);
        assert!(!alone.poisoned(&e, 1, &sink, &answering));
        assert!(alone.poisoned(&e, 1, &sink, &answering));

        // A server that answers nothing is away, not failing on the batch.
        let silent = credential(server(false));
        let mut batch = Unanswered::new(true);
        for _ in 0..5 {
            let e = unanswered_write(&sink, &silent);
            assert!(!batch.poisoned(&e, 1, &sink, &silent));
        }
    }

    #[test]
    fn another_failure_starts_the_count_again() {
        let sink = Sink::new(false, Duration::from_secs(5));
        let answering = credential(server(true));
        let mut batch = Unanswered::new(false);
        let refused = credential({
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        });
        for _ in 1..TRIES {
            let e = unanswered_write(&sink, &answering);
            assert!(!batch.poisoned(&e, 2, &sink, &answering));
        }
        let away = sink.write(&refused, b"m v=1\n").unwrap_err();
        assert!(!away.unanswered(), "{away:?}");
        assert!(!batch.poisoned(&away, 2, &sink, &answering));
        let e = unanswered_write(&sink, &answering);
        assert!(!batch.poisoned(&e, 2, &sink, &answering));
    }
}
