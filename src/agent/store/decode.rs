//! Decoding: turns each MQTT message into line protocol for the spool, per
//! its subscription's format, and says why any part was rejected. Every
//! step is linear in the message's size, and each point is bounded in tags
//! and fields ([`lineproto::Limits`]).
//!
//! It must never run on the MQTT runtime, do I/O, or drop a message
//! silently: what it cannot take becomes a `Rejection` for the dead-letter
//! file.

use std::time::{Duration, Instant};

use crate::agent::deadletter::{Rejection, Source};
use crate::agent::message::{Delivery, Received};
use crate::agent::stats::Stats;
use crate::clock::{BootId, Stamping};
use crate::config::Subscription;
use crate::lineproto::{self, Point};
use crate::payload;

/// Whether every InfluxDB reads a valid line's own text as exactly the
/// parsed point. A few forms 1.x and 2.x take are read otherwise (or
/// refused) by InfluxDB 3, and writing the point anew smooths them over: a
/// tab (in a name, or among the blanks before the timestamp), an unescaped
/// `=` in a tag value, and floats written without a digit on one side of
/// the point (`.5`, `-.5`, `2.`, `1.e5`; docs/influxdb-api.md). One pass
/// over the bytes; a dot that only looks like such a float (a tag value
/// `v1.x`) costs a rewrite, nothing more.
fn forwardable(text: &str, point: &Point) -> bool {
    let b = text.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\t' => return false,
            b'.' => {
                let before = if i > 0 { b[i - 1] } else { b' ' };
                let digit_after = b.get(i + 1).is_some_and(u8::is_ascii_digit);
                if before == b'=' || before == b'-' || (before.is_ascii_digit() && !digit_after) {
                    return false;
                }
            }
            _ => {}
        }
    }
    !point.tags.iter().any(|(_, v)| v.contains('='))
}

/// Turns MQTT messages into line protocol for the spool. It runs on the
/// `appender` thread: a message is untrusted input, and the thread that
/// answers the broker's keep-alives must not wait for its decoding.
pub struct Decoder {
    subscriptions: Vec<Subscription>,
    /// How each subscription's messages decode, built once at start.
    decodings: Vec<payload::Decoding>,
    max_payload: usize,
    limits: lineproto::Limits,
    clock: ReceiptClock,
    log_limit: LogLimit,
}

/// At most a few warnings a minute about bad input, then one line saying
/// how many were left out: a misconfigured sensor must not flood the log.
struct LogLimit {
    window: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    const PER_MINUTE: u32 = 10;

    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(60) {
            if self.suppressed > 0 {
                log::warn!(
                    "{} more rejected messages in the last minute (see the dead-letter file)",
                    self.suppressed
                );
            }
            *self = LogLimit::default();
        }
        if self.logged < Self::PER_MINUTE {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit {
            window: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }
}

fn decodings(subscriptions: &[Subscription], limits: lineproto::Limits) -> Vec<payload::Decoding> {
    subscriptions
        .iter()
        .map(|sub| payload::Decoding {
            format: sub.format,
            precision: sub.precision,
            template: sub.topic_template.clone(),
            tags: sub.tags.clone(),
            measurement: sub.measurement.clone(),
            limits,
        })
        .collect()
}

impl Decoder {
    /// Reloaded subscriptions; the receipt clock stays.
    pub fn set_subscriptions(&mut self, subscriptions: Vec<Subscription>) {
        self.decodings = decodings(&subscriptions, self.limits);
        self.subscriptions = subscriptions;
    }

    pub fn new(
        subscriptions: Vec<Subscription>,
        max_payload: usize,
        limits: lineproto::Limits,
    ) -> Self {
        Decoder {
            decodings: decodings(&subscriptions, limits),
            subscriptions,
            max_payload,
            limits,
            clock: ReceiptClock::new(BootId::current()),
            log_limit: LogLimit::default(),
        }
    }

    /// A new group of messages begins: its receipt stamps are taken
    /// against one reading of the clocks.
    pub fn begin_group(&mut self) {
        self.clock.anchor = None;
    }

    /// How the receipt stamps of the group so far were taken; None if
    /// none was.
    pub fn stamping(&self) -> Option<Stamping> {
        self.clock.anchor.as_ref().map(|a| a.stamping)
    }

    /// The lines of one message, and what to ack once they are stored. The
    /// message's share of the byte budget moves into the delivery: it is
    /// given back only once the delivery is stored and dropped.
    pub fn decode(&mut self, message: Received, stats: &Stats) -> Delivery {
        let Received {
            publish,
            ack,
            at,
            arrived,
            budget,
        } = message;
        self.clock.received_at(arrived);
        let topic = publish.topic.as_str();
        let mut delivery = Delivery {
            lines: String::with_capacity(publish.payload.len() + 32),
            stamped: String::new(),
            points: 0,
            stamped_points: 0,
            ack,
            at,
            rejected: None,
            budget,
        };
        let found = self
            .subscriptions
            .iter()
            .position(|s| topic_matches(&s.topic, topic));
        let mut reasons = Reasons::default();
        match found {
            // Possible after a subscription was removed from the config
            // while the broker kept the session.
            None => reasons.push("matches no configured subscription".to_owned()),
            Some(_) if publish.payload.len() > self.max_payload => reasons.push(format!(
                "{} bytes, more than mqtt.max_packet_size ({})",
                publish.payload.len(),
                self.max_payload
            )),
            Some(i) if self.decodings[i].keeps_lines_as_they_are() => {
                match lineproto::parse_payload_with(&publish.payload, self.limits) {
                    Ok(mut lines) => {
                        while let Some(result) = lines.next() {
                            match result {
                                Ok(point) if forwardable(lines.last_text(), &point) => {
                                    let text = lines.last_text();
                                    if point.timestamp.is_none() {
                                        Stats::add(&stats.points_stamped, 1);
                                        let now = self.clock.next();
                                        let out = &mut delivery.stamped;
                                        out.push_str(text);
                                        out.push(' ');
                                        out.push_str(&now.to_string());
                                        out.push('\n');
                                        delivery.stamped_points += 1;
                                    } else {
                                        delivery.lines.push_str(text);
                                        delivery.lines.push('\n');
                                    }
                                    delivery.points += 1;
                                }
                                Ok(point) => {
                                    write_anew(&mut delivery, &mut self.clock, point, stats)
                                }
                                Err(e) => {
                                    reasons.invalid(stats, payload::PayloadError::from(e));
                                }
                            }
                        }
                    }
                    Err(e) => reasons.push(payload::PayloadError::from(e)),
                }
            }
            Some(i) => {
                let clock = &mut self.clock;
                payload::decode_each(&self.decodings[i], topic, &publish.payload, |result| {
                    match result {
                        Ok(point) => write_anew(&mut delivery, clock, point, stats),
                        Err(reason) => reasons.invalid(stats, reason),
                    }
                });
            }
        }
        if !reasons.is_empty() {
            let slot = found.unwrap_or(self.subscriptions.len());
            if let Some(counter) = stats.rejected.get(slot) {
                Stats::add(counter, 1);
            }
            let reason = reasons.join();
            if self.log_limit.allow() {
                log::warn!("rejected message on {topic:?}: {reason}");
            }
            delivery.rejected = Some(Rejection {
                source: Source::Mqtt,
                topic: topic.to_owned(),
                subscription: found
                    .map(|i| self.subscriptions[i].topic.clone())
                    .unwrap_or_default(),
                reason,
                payload: publish.payload.to_vec(),
            });
        }
        delivery
    }
}

/// Writes a point anew into the delivery, stamped with the time of receipt
/// if it has no timestamp.
fn write_anew(delivery: &mut Delivery, clock: &mut ReceiptClock, mut point: Point, stats: &Stats) {
    let out = if point.timestamp.is_none() {
        Stats::add(&stats.points_stamped, 1);
        point.timestamp = Some(clock.next());
        delivery.stamped_points += 1;
        &mut delivery.stamped
    } else {
        &mut delivery.lines
    };
    lineproto::write_point(out, &point);
    out.push('\n');
    delivery.points += 1;
}

/// Why parts of a message were rejected: the first few in words, the rest
/// only counted (a message of half a million bad lines must not make half
/// a million strings).
#[derive(Default)]
struct Reasons {
    kept: Vec<String>,
    more: usize,
}

impl Reasons {
    const KEPT: usize = 10;

    fn push(&mut self, reason: impl std::fmt::Display) {
        if self.kept.len() < Self::KEPT {
            self.kept.push(reason.to_string());
        } else {
            self.more += 1;
        }
    }

    /// An invalid point: counted, and its reason kept.
    fn invalid(&mut self, stats: &Stats, reason: impl std::fmt::Display) {
        Stats::add(&stats.points_invalid, 1);
        self.push(reason);
    }

    fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    fn join(&self) -> String {
        let mut text = self.kept.join("; ");
        if self.more > 0 {
            text.push_str(&format!("; and {} more", self.more));
        }
        text
    }
}

/// Gives points without a timestamp the time their message arrived, in
/// nanoseconds: its time on `CLOCK_BOOTTIME` plus the wall clock's lead on
/// it, read once per group ([`Stamping`], stored with the points so that
/// they can be corrected). Strictly increasing on the boot's time line:
/// two such points of one series with the same time would otherwise be
/// merged by InfluxDB into one; a step of the wall clock moves the stamps
/// after it, and never bunches them.
struct ReceiptClock {
    boot: BootId,
    last_boot_ns: i64,
    /// When the message being decoded arrived (monotonic).
    arrived: Option<Instant>,
    /// The clocks as the group's first stamp read them: most messages
    /// carry their own times, and reading the clocks for each would cost a
    /// fast stream.
    anchor: Option<Anchor>,
}

struct Anchor {
    stamping: Stamping,
    boot_ns: i64,
    at: Instant,
}

impl ReceiptClock {
    fn new(boot: BootId) -> Self {
        ReceiptClock {
            boot,
            last_boot_ns: i64::MIN,
            arrived: None,
            anchor: None,
        }
    }

    /// The message being decoded arrived at `at`.
    fn received_at(&mut self, at: Instant) {
        self.arrived = Some(at);
    }

    /// The receipt time in nanoseconds, later on the boot's time line
    /// than any given before.
    fn next(&mut self) -> i64 {
        let boot = self.boot;
        let anchor = self.anchor.get_or_insert_with(|| {
            // Each pair is read back to back, and the wall clock between
            // two reads of the boot's: a clock read can take a millisecond
            // (under qemu-user), and its cost must not bias the stamps.
            let at = Instant::now();
            let boot_ns = crate::clock::boottime_ns();
            let wall = crate::clock::wall_ns();
            let boot_after = crate::clock::boottime_ns();
            let boot_mid = boot_ns + (boot_after - boot_ns) / 2;
            Anchor {
                stamping: Stamping {
                    boot,
                    wall_minus_boot_ns: wall.saturating_sub(boot_mid),
                },
                boot_ns,
                at,
            }
        });
        let nanos = |d: Duration| d.as_nanos().min(i64::MAX as u128) as i64;
        let arrived_boot_ns = match self.arrived {
            Some(a) if a <= anchor.at => anchor.boot_ns.saturating_sub(nanos(anchor.at - a)),
            Some(a) => anchor.boot_ns.saturating_add(nanos(a - anchor.at)),
            None => anchor.boot_ns,
        };
        self.last_boot_ns = arrived_boot_ns.max(self.last_boot_ns.saturating_add(1));
        self.last_boot_ns
            .saturating_add(anchor.stamping.wall_minus_boot_ns)
    }
}

/// MQTT filter matching: `+` one level, `#` the rest (including none). A
/// `$share/GROUP/` prefix is not part of the topic.
pub(crate) fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
        None => filter,
    };
    // Wildcards at the first level do not match topics starting with '$'.
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::message::AckToken;
    use rumqttc::{Publish, QoS};

    #[test]
    fn filters_match_like_mqtt() {
        assert!(topic_matches("sensors/#", "sensors/a/b"));
        assert!(topic_matches("sensors/#", "sensors"));
        assert!(topic_matches("+/t", "a/t"));
        assert!(!topic_matches("+/t", "a/b/t"));
        assert!(topic_matches("$share/g/a/+", "a/x"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches("a//b", "a//b"));
    }

    #[test]
    fn receipt_stamps_are_strictly_increasing_even_when_messages_arrive_together() {
        let mut clock = ReceiptClock::new(BootId([7; 16]));
        let together = Instant::now();
        let mut last = i64::MIN;
        for _ in 0..1000 {
            clock.received_at(together);
            let ts = clock.next();
            assert!(ts > last);
            last = ts;
        }
    }

    #[test]
    fn a_step_of_the_wall_clock_between_groups_moves_stamps_and_never_bunches_them() {
        let mut clock = ReceiptClock::new(BootId([7; 16]));
        let at = Instant::now();
        clock.received_at(at);
        let first = clock.next();
        // The next group: the wall clock read two hours less (an NTP
        // step back), by hand.
        clock.anchor = None;
        clock.received_at(at + Duration::from_millis(20));
        let _ = clock.next();
        let anchor = clock.anchor.as_mut().unwrap();
        anchor.stamping.wall_minus_boot_ns -= 7_200_000_000_000;
        clock.received_at(at + Duration::from_millis(40));
        let after = clock.next();
        clock.received_at(at + Duration::from_millis(60));
        let later = clock.next();
        let back = first - after;
        assert!(
            (7_199_950_000_000..=7_200_000_000_000).contains(&back),
            "stepped back by {back} ns"
        );
        assert!(
            (19_000_000..=21_000_000).contains(&(later - after)),
            "the spacing stays: {}",
            later - after
        );
    }

    #[test]
    fn lines_influxdb_3_would_refuse_are_written_in_a_form_it_takes() {
        let stats = Stats::new(1);
        let mut d = Decoder::new(vec![line_subscription()], 64, lineproto::Limits::default());
        for (sent, stored) in [
            ("m v=1 7 ", "m v=1 7\n"),
            ("m v=.5 7", "m v=0.5 7\n"),
            ("m v=-.5 7", "m v=-0.5 7\n"),
            ("m v=2. 7", "m v=2.0 7\n"),
            ("m v=1.e5 7", "m v=100000.0 7\n"),
            ("m,t=a w=1,v=.25 7", "m,t=a w=1.0,v=0.25 7\n"),
            // Kept as sent: nothing to smooth over.
            (
                "m,host=a.example v=21.5,w=3i 7",
                "m,host=a.example v=21.5,w=3i 7\n",
            ),
        ] {
            let out = d.decode(received("s/1", sent, 1), &stats);
            assert_eq!(out.lines, stored, "{sent:?}");
        }
    }

    #[test]
    fn a_point_without_a_timestamp_gets_the_time_its_message_arrived() {
        let stats = Stats::new(1);
        let mut d = Decoder::new(vec![line_subscription()], 64, lineproto::Limits::default());
        let mut m = received("s/1", "m v=1\nm v=2 7\n", 1);
        // Read and decoded 400 ms after it arrived (a pause, a held group).
        // The clocks are read apart: 5 ms either side (under qemu-user a
        // clock read can take a millisecond).
        let before = crate::clock::wall_ns() - 405_000_000;
        m.arrived = Instant::now() - Duration::from_millis(400);
        let after = crate::clock::wall_ns() - 395_000_000;
        d.begin_group();
        let out = d.decode(m, &stats);
        assert_eq!((out.points, out.stamped_points), (2, 1));
        let stamp: i64 = out
            .stamped
            .trim_end()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (before..=after).contains(&stamp),
            "{before} <= {stamp} <= {after}"
        );
        assert!(out.stamped.starts_with("m v=1 "), "{}", out.stamped);
        // How it was stamped, for a later correction: the boot's time line
        // plus the wall clock's lead on it.
        let stamping = d.stamping().expect("a stamp was taken");
        let lead = crate::clock::wall_ns() - crate::clock::boottime_ns();
        assert!((stamping.wall_minus_boot_ns - lead).abs() < 5_000_000);
        // The sensor's own time stays, in the lines of their own.
        assert_eq!(out.lines, "m v=2 7\n");
        d.begin_group();
        assert_eq!(d.stamping(), None);
    }

    fn line_subscription() -> Subscription {
        Subscription {
            topic: "s/#".into(),
            format: crate::config::Format::Line,
            precision: crate::config::Precision::Nanoseconds,
            topic_template: None,
            tags: Vec::new(),
            measurement: None,
        }
    }

    fn received(topic: &str, payload: impl Into<Vec<u8>>, pkid: u16) -> Received {
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.into());
        publish.pkid = pkid;
        Received {
            publish,
            ack: Some(AckToken {
                connection: 1,
                pkid,
            }),
            at: Instant::now(),
            arrived: Instant::now(),
            budget: None,
        }
    }

    #[test]
    fn decoding_keeps_good_lines_and_counts_bad_ones() {
        let stats = Stats::new(1);
        let mut d = Decoder::new(vec![line_subscription()], 64, lineproto::Limits::default());
        let p = received("s/1", "m v=1 5\nm v=bad 6\nm,t=x v=2i 7\n", 9);
        let out = d.decode(p, &stats);
        // Valid lines go on as they came (no template, tags or precision).
        assert_eq!(out.lines, "m v=1 5\nm,t=x v=2i 7\n");
        assert_eq!((out.points, out.ack.map(|a| a.pkid)), (2, Some(9)));
        assert_eq!(Stats::get(&stats.points_invalid), 1);
        // Except forms InfluxDB's parser would read otherwise: written anew.
        let odd = received("s/1", "m,t=a=b v=1 6\nm v=1 \t7\n", 11);
        let rewritten = d.decode(odd, &stats);
        assert_eq!(rewritten.lines, "m,t=a\\=b v=1.0 6\nm v=1.0 7\n");
        // And what they refuse is refused here: a `+` before a number.
        let plus = d.decode(received("s/1", "m v=+1.5 5\n", 13), &stats);
        assert_eq!(plus.points, 0);
        let other = received("elsewhere", "m v=1", 12);
        assert_eq!(d.decode(other, &stats).points, 0);
        // A message of very many bad lines: ten reasons in words, the rest
        // counted, never a string each.
        let mut many = Decoder::new(
            vec![line_subscription()],
            2 << 20,
            lineproto::Limits::default(),
        );
        let bad = many.decode(received("s/1", "x\n".repeat(500_000), 12), &stats);
        let reason = bad.rejected.unwrap().reason;
        assert_eq!(reason.matches("line ").count(), 10, "{reason}");
        assert!(reason.ends_with("; and 499990 more"), "{reason}");
        let oversized = received("s/2", "m v=1 1\n".repeat(10), 10);
        let out = d.decode(oversized, &stats);
        assert_eq!(
            (out.points, out.ack.map(|a| a.pkid)),
            (0, Some(10)),
            "rejected, still acked"
        );
    }

    /// A line of `n` distinct fields (and as many tags when `tags`).
    fn wide(n: usize, tags: bool) -> String {
        let mut line = String::from("wide");
        if tags {
            for i in 0..n {
                line.push_str(&format!(",t{i:x}=v"));
            }
        }
        line.push(' ');
        let fields: Vec<String> = (0..n).map(|i| format!("{i:x}=1")).collect();
        line.push_str(&fields.join(","));
        line.push_str(" 1700000000000000000\n");
        line
    }

    #[test]
    fn points_over_the_tag_or_field_limit_are_refused_by_name() {
        let stats = Stats::new(1);
        let limits = lineproto::Limits {
            max_tags: 8,
            max_fields: 16,
        };
        let mut d = Decoder::new(vec![line_subscription()], 4 << 20, limits);
        let out = d.decode(received("s/1", wide(16, false), 1), &stats);
        assert_eq!((out.points, out.rejected.is_none()), (1, true));
        let out = d.decode(received("s/1", wide(17, false), 2), &stats);
        let reason = out.rejected.unwrap().reason;
        assert!(
            reason.contains("more than 16 fields") && reason.contains("mqtt.max_fields_per_point"),
            "{reason}"
        );
        let out = d.decode(received("s/1", wide(9, true), 3), &stats);
        let reason = out.rejected.unwrap().reason;
        assert!(
            reason.contains("more than 8 tags") && reason.contains("mqtt.max_tags_per_point"),
            "{reason}"
        );
        // JSON objects are held to the same limits.
        let mut json = line_subscription();
        json.format = crate::config::Format::Json;
        json.measurement = Some("m".into());
        let mut d = Decoder::new(vec![json], 4 << 20, limits);
        let fields: Vec<String> = (0..17).map(|i| format!("\"f{i}\":1")).collect();
        let body = format!("{{{}}}", fields.join(","));
        let reason = d
            .decode(received("s/1", body, 4), &stats)
            .rejected
            .unwrap()
            .reason;
        assert!(reason.contains("more than 16 fields"), "{reason}");
    }

    /// The hostile message of the issue: just under 1 MiB, 120,000 fields.
    /// Decoding it must cost about what any 1 MiB message costs, not the
    /// pairwise duplicate search that took 25 s. Compared with ordinary
    /// lines in the same run, so a slow machine cannot fail it.
    #[test]
    fn a_120k_field_line_costs_no_more_than_ordinary_lines_of_its_size() {
        let stats = Stats::new(1);
        let huge = lineproto::Limits {
            max_tags: 1 << 20,
            max_fields: 1 << 20,
        };
        let hostile = wide(120_000, false);
        assert!(hostile.len() < 1 << 20);
        let ordinary =
            "room,site=north temp=21.5,hum=40i 1700000000000000000\n".repeat(hostile.len() / 52);
        let time = |limits, payload: &str| {
            let mut d = Decoder::new(vec![line_subscription()], 2 << 20, limits);
            let started = Instant::now();
            let out = d.decode(received("s/1", payload.to_owned(), 1), &stats);
            (started.elapsed(), out)
        };
        let (base, out) = time(lineproto::Limits::default(), &ordinary);
        assert!(out.points > 10_000);
        // With the default limits it is refused at its 1025th field.
        let (refused, out) = time(lineproto::Limits::default(), &hostile);
        assert_eq!(out.points, 0);
        assert!(
            out.rejected
                .unwrap()
                .reason
                .contains("more than 1024 fields")
        );
        // Even allowed all its fields, every check is linear.
        let (accepted, out) = time(huge, &hostile);
        assert_eq!(out.points, 1);
        eprintln!(
            "1 MiB: ordinary lines {base:?}, 120k fields refused {refused:?}, accepted {accepted:?}"
        );
        assert!(
            refused <= base + Duration::from_millis(20),
            "{refused:?} vs {base:?}"
        );
        // Refused early, not after reading the whole line: a small share of
        // what the same bytes of ordinary lines cost (2-11 ms against about
        // 100 ms in a debug build on x86, 112 ms against 2.4 s under
        // qemu-aarch64, where a wall-clock bound of 100 ms failed).
        assert!(refused < base / 4, "{refused:?} vs {base:?}");
        assert!(
            accepted <= base * 10 + Duration::from_millis(50),
            "{accepted:?} vs {base:?}"
        );
    }
}
