//! What an InfluxDB write answer says about a batch's content: which lines
//! can never be written, and whether the server wrote the others, as line
//! indices of the batch as sent (each API's wording: [`read`]). It owns no
//! I/O and no retry policy (the writer decides), and it must never name a
//! line it cannot tie to the answer: it says so instead
//! ([`Refusal::Unknown`]) and the writer bisects.

use crate::config::Api;

/// One entry of a 3.x partial write's `data` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedLine {
    /// Counted from 1 over the lines that hold something.
    pub number: usize,
    /// The server's quote of the line: at most 20 bytes, and for a
    /// validation error its own rendering, not the text as sent.
    pub line: String,
    pub reason: String,
}

/// What a failed write says about the batch's content.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Nothing about the content: the request itself failed (a bad org or
    /// precision, a broken gzip body, a dead credential, an outage). The
    /// batch must be held and retried, never dropped.
    NotContent,
    /// These lines (indices from 0 into the batch) can never be written,
    /// each with the server's reason. `rest_written` says whether InfluxDB
    /// wrote the others (a partial write) or they must be sent again.
    Lines {
        bad: Vec<(usize, String)>,
        rest_written: bool,
    },
    /// These lines are older than the database's retention policy keeps,
    /// with the server's reason; InfluxDB wrote the others.
    BeyondRetention { bad: Vec<(usize, String)> },
    /// Some lines were refused for their content, but the answer does not
    /// say which: the caller has to bisect, which is slow but never drops
    /// a good line. Writing a line again is safe (InfluxDB merges a point
    /// written twice).
    Unknown,
}

/// Reads a refused write of `data` (whole lines, each ending in `\n`):
/// - 1.x: 400 `partial write:` with `unable to parse '<line>': <reason>`
///   for each malformed line, or naming the first field type conflict
///   (`input field "F" on measurement "M" is type T`), which then hides the
///   parse errors beside it. The valid lines were written; the named ones
///   are taken out and the rest is sent again (a point written twice
///   merges), so a conflict hidden behind the named one shows next time.
///   Into a shard that does not exist yet (a new database, or the first
///   write of a new shard period), a batch that gives one field two types
///   is refused whole as a bare `field type conflict`: the lines that
///   differ from the field's first type in the batch are taken out.
///   Points older than the retention policy keeps are dropped and the rest
///   written, with `partial write: points beyond retention policy
///   dropped=N`, which names none: the cutoff is a time, so they are the N
///   oldest points of the batch.
/// - 2.x: 400 `invalid` quoting the first malformed line, the whole batch
///   refused; 422 for a partial write: points beyond retention as in 1.x
///   (its storage is 1.x's), anything else (type conflicts) bisected.
/// - 3.x: 400 (422 when a schema limit was hit) `partial write of line
///   protocol occurred` listing each refused line by number; the rest was
///   written.
pub fn read(api: Api, status: u16, message: &str, refused: &[RefusedLine], data: &[u8]) -> Refusal {
    match (status, api) {
        (400 | 422, Api::V3) if message.contains("partial write") => by_number(refused, data),
        (400, Api::V1) | (422, Api::V2) if message.contains(RETENTION) => {
            beyond_retention(message, data).unwrap_or(Refusal::Unknown)
        }
        // 2.x words its conflicts as 1.x does (with Go-quoted names), but
        // that is read from its source, not seen from a server here: until
        // it is, a 422 is bisected.
        (422, _) => Refusal::Unknown,
        (400, Api::V1)
            if message.contains("partial write")
                || message.contains("unable to parse")
                || message.contains("field type conflict") =>
        {
            let mut bad = quoted_lines(message, data);
            if message.contains(CONFLICT) {
                bad.extend(conflicting_lines(message, data));
            } else if message.contains("field type conflict") {
                bad.extend(conflicts_within(data));
            }
            lines_or_unknown(bad)
        }
        (400, Api::V2) => {
            let bad = quoted_lines(message, data);
            if bad.is_empty() && message.contains("unable to parse '") {
                // The server complains of a line we cannot find in its
                // quote (its parser may split our text otherwise):
                // bisect rather than hold the batch for ever.
                Refusal::Unknown
            } else if bad.is_empty() {
                Refusal::NotContent
            } else {
                Refusal::Lines {
                    bad,
                    rest_written: false,
                }
            }
        }
        _ => Refusal::NotContent,
    }
}

/// How 1.x (and 2.x) tell of points older than the retention policy.
const RETENTION: &str = "points beyond retention policy dropped=";

/// The `N` of `dropped=N` as the oldest points of `data`; None when the
/// batch does not have that many points with a timestamp (the answer
/// cannot be mapped onto it).
fn beyond_retention(message: &str, data: &[u8]) -> Option<Refusal> {
    let at = message.find(RETENTION)? + RETENTION.len();
    let digits: String = message[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let dropped: usize = digits.parse().ok()?;
    let mut stamped: Vec<(i64, usize)> = points(data)
        .filter_map(|(index, point)| point.timestamp.map(|t| (t, index)))
        .collect();
    if dropped == 0 || dropped > stamped.len() {
        return None;
    }
    stamped.sort_unstable();
    let reason = "partial write: points beyond retention policy";
    Some(Refusal::BeyondRetention {
        bad: stamped[..dropped]
            .iter()
            .map(|&(_, index)| (index, reason.to_owned()))
            .collect(),
    })
}

fn lines_or_unknown(bad: Vec<(usize, String)>) -> Refusal {
    if bad.is_empty() {
        Refusal::Unknown
    } else {
        Refusal::Lines {
            bad,
            rest_written: false,
        }
    }
}

/// A 3.x partial write, read by its line numbers. The server counts only
/// lines that hold something (blank and comment lines are skipped), so the
/// numbers are mapped the same way; each quote must then agree with the
/// line it points at, loosely, because the server re-renders and cuts it:
/// its measurement, as far as the quote goes, must be the line's.
fn by_number(refused: &[RefusedLine], data: &[u8]) -> Refusal {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let counted: Vec<usize> = (0..lines.len())
        .filter(|&i| !is_blank_or_comment(lines[i]))
        .collect();
    let mut bad = Vec::with_capacity(refused.len());
    for r in refused {
        let Some(&index) = r.number.checked_sub(1).and_then(|n| counted.get(n)) else {
            return Refusal::Unknown;
        };
        if !same_measurement(lines[index], r.line.as_bytes()) {
            return Refusal::Unknown;
        }
        bad.push((index, r.reason.clone()));
    }
    if bad.is_empty() {
        return Refusal::Unknown;
    }
    Refusal::Lines {
        bad,
        rest_written: true,
    }
}

/// Whether line protocol reads `line` as nothing (InfluxDB skips blanks,
/// spaces, tabs and comment lines without counting them).
fn is_blank_or_comment(line: &[u8]) -> bool {
    match line.iter().find(|&&b| b != b' ' && b != b'\t') {
        None => true,
        Some(&b) => b == b'#',
    }
}

/// Whether the quote's measurement is the line's, tolerating what the
/// server does to a quote: escapes written its own way (backslashes are
/// ignored on both sides) and a cut anywhere (a quote that ends inside the
/// measurement need only be its start). An empty quote agrees with nothing.
fn same_measurement(line: &[u8], quote: &[u8]) -> bool {
    let (sent, _) = measurement(line);
    let (quoted, whole) = measurement(quote);
    if quoted.is_empty() {
        return false;
    }
    if whole {
        sent == quoted
    } else {
        sent.starts_with(&quoted)
    }
}

/// The measurement at the start of `line` without its backslashes, and
/// whether it ended at a delimiter (false when the text ran out first).
fn measurement(line: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut bytes = line.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => {
                if let Some(&next) = bytes.next() {
                    out.push(next);
                }
            }
            b',' | b' ' => return (out, true),
            _ => out.push(b),
        }
    }
    (out, false)
}

/// The lines of `data` that `message` quotes as `unable to parse '<line>':`
/// (1.x and 2.x), each with the reason that follows the quote.
fn quoted_lines(message: &str, data: &[u8]) -> Vec<(usize, String)> {
    const QUOTE: &str = "unable to parse '";
    if !message.contains(QUOTE) {
        return Vec::new();
    }
    let mut bad = Vec::new();
    for (index, line) in data.split(|&b| b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        // The server skips these without a word, so it never quotes them.
        if is_blank_or_comment(line.as_bytes()) {
            continue;
        }
        let quoted = format!("{QUOTE}{line}': ");
        if let Some(at) = message.find(&quoted) {
            let reason = message[at + quoted.len()..]
                .split('\n')
                .next()
                .unwrap_or_default();
            // 1.x puts the drop count after the last reason.
            let reason = reason.split(" dropped=").next().unwrap_or(reason);
            bad.push((index, reason.to_owned()));
        }
    }
    bad
}

/// The lines of `data` that carry the field type conflict `message` names
/// (1.x: `field type conflict: input field "F" on measurement "M"
/// is type T, already exists as type U`): every line of measurement M whose
/// field F has type T. Names are compared unescaped, as the server prints
/// them; a line that does not parse is never one of them. (1.x keeps field
/// types per shard, so in a batch that spans a shard boundary such a line
/// may have been written after all: it is then dead-lettered although
/// InfluxDB has it, which loses nothing.)
fn conflicting_lines(message: &str, data: &[u8]) -> Vec<(usize, String)> {
    let Some(at) = message.find(CONFLICT) else {
        return Vec::new();
    };
    let conflict = &message[at..];
    let conflict = conflict.split(" dropped=").next().unwrap_or(conflict);
    let mut bad = Vec::new();
    for (index, point) in points(data) {
        let named = point.fields.iter().any(|(name, value)| {
            let claim = format!(
                "{CONFLICT}{name}\" on measurement \"{}\" is type {},",
                point.measurement,
                type_name(value)
            );
            conflict.starts_with(&claim)
        });
        if named {
            bad.push((index, conflict.to_owned()));
        }
    }
    bad
}

/// How 1.x starts naming a field type conflict.
const CONFLICT: &str = "field type conflict: input field \"";

/// The lines of `data` that give a field another type than its first line
/// in the batch did (1.x's bare `field type conflict`, which names none):
/// the lines a bisection would find, since it writes the earlier ones
/// first.
fn conflicts_within(data: &[u8]) -> Vec<(usize, String)> {
    let mut first: std::collections::HashMap<(String, String), &'static str> =
        std::collections::HashMap::new();
    let mut bad = Vec::new();
    for (index, point) in points(data) {
        let mut clash = None;
        for (name, value) in &point.fields {
            let kind = type_name(value);
            let known = first
                .entry((point.measurement.clone(), name.clone()))
                .or_insert(kind);
            if *known != kind && clash.is_none() {
                clash = Some(format!(
                    "field type conflict: input field \"{name}\" on measurement \"{}\" is type {kind}, earlier in the batch type {known}",
                    point.measurement
                ));
            }
        }
        if let Some(reason) = clash {
            bad.push((index, reason));
        }
    }
    bad
}

/// The lines of `data` that parse, with their indices (from 0).
fn points(data: &[u8]) -> impl Iterator<Item = (usize, crate::lineproto::Point)> + '_ {
    data.split(|&b| b == b'\n')
        .enumerate()
        .filter_map(|(index, line)| {
            let text = std::str::from_utf8(line).ok()?;
            crate::lineproto::parse_line(text, 0, index + 1)?
                .ok()
                .map(|point| (index, point))
        })
}

/// A field type as 1.x names it in a conflict.
fn type_name(value: &crate::lineproto::FieldValue) -> &'static str {
    use crate::lineproto::FieldValue;
    match value {
        FieldValue::Float(_) => "float",
        FieldValue::Integer(_) => "integer",
        FieldValue::UInteger(_) => "unsigned",
        FieldValue::String(_) => "string",
        FieldValue::Boolean(_) => "boolean",
    }
}

/// The `data` list of a 3.x partial write:
/// `[{"error_message": .., "line_number": .., "original_line": ..}]`.
pub fn refused_lines(body: &str) -> Vec<RefusedLine> {
    let Ok(parsed) = serde_json::from_str::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let Some(data) = parsed.get("data").and_then(|d| d.as_array()) else {
        return Vec::new();
    };
    data.iter()
        .filter_map(|entry| {
            let text = |k: &str| entry.get(k).and_then(|m| m.as_str()).map(str::to_owned);
            Some(RefusedLine {
                number: usize::try_from(entry.get("line_number")?.as_u64()?).ok()?,
                line: text("original_line")?,
                reason: text("error_message").unwrap_or_else(|| "refused".into()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(api: Api, status: u16, message: &str, data: &[u8]) -> Refusal {
        read(api, status, message, &[], data)
    }

    const BATCH: &[u8] = b"p v=1i 1\np v=x 2\np v=2i 3\np v=3u 5\n";

    #[test]
    fn a_1x_partial_write_names_its_malformed_lines() {
        // As influxd 1.6 answers that batch.
        let message = "partial write: unable to parse 'p v=x 2': invalid boolean\nunable to parse 'p v=3u 5': invalid number dropped=0";
        assert_eq!(
            reading(Api::V1, 400, message, BATCH),
            Refusal::Lines {
                bad: vec![(1, "invalid boolean".into()), (3, "invalid number".into())],
                rest_written: false
            }
        );
        // A conflict that names nothing in the batch: bisect.
        let conflict = "partial write: field type conflict: input field \"v\" on measurement \"r\" is type float, already exists as type integer dropped=1";
        assert_eq!(reading(Api::V1, 400, conflict, BATCH), Refusal::Unknown);
        // A bare conflict where the batch agrees with itself: bisect.
        assert_eq!(
            reading(Api::V1, 400, "field type conflict", b"p v=1i 1\np v=2i 2\n"),
            Refusal::Unknown
        );
        // The request itself was wrong: hold.
        for (code, msg) in [
            (400, "unable to decode gzip body"),
            (401, "authorization failed"),
            (500, "retention policy not found: x"),
        ] {
            assert_eq!(reading(Api::V1, code, msg, BATCH), Refusal::NotContent);
        }
    }

    #[test]
    fn a_1x_type_conflict_names_the_lines_that_carry_it() {
        // As influxd 1.6.7 answered this batch after `pw,k=a v=1i 1` (the
        // string and the float conflict, only the first is named).
        let batch = b"pw,k=a v=2i 5\npw,k=a v=\"text\" 6\npw,k=a v=4.5 7\npw,k=a v=4i 8\nother v=\"s\" 9\npw,k=a w=\"s\" 10\n";
        let message = "partial write: field type conflict: input field \"v\" on measurement \"pw\" is type string, already exists as type integer dropped=2";
        let reason = "field type conflict: input field \"v\" on measurement \"pw\" is type string, already exists as type integer";
        assert_eq!(
            reading(Api::V1, 400, message, batch),
            Refusal::Lines {
                bad: vec![(1, reason.into())],
                rest_written: false
            }
        );
        // Into a new shard the same batch is refused whole, naming nothing
        // (1.6.7 on a new database): each field keeps its first type.
        assert_eq!(
            reading(Api::V1, 400, "field type conflict", batch),
            Refusal::Lines {
                bad: vec![
                    (1, "field type conflict: input field \"v\" on measurement \"pw\" is type string, earlier in the batch type integer".into()),
                    (2, "field type conflict: input field \"v\" on measurement \"pw\" is type float, earlier in the batch type integer".into()),
                ],
                rest_written: false
            }
        );
        // Names as the server prints them: unescaped.
        let escaped = b"pw\\ x,k=a\\ b v=1i 43\npw\\ x v=\"s\" 44\n";
        let message = "partial write: field type conflict: input field \"v\" on measurement \"pw x\" is type integer, already exists as type string dropped=1";
        assert!(matches!(
            reading(Api::V1, 400, message, escaped),
            Refusal::Lines { bad, .. } if bad.len() == 1 && bad[0].0 == 0
        ));
    }

    #[test]
    fn points_beyond_retention_are_the_oldest_of_the_batch() {
        let batch = b"r v=1 300\nr v=2 100\nr v=3 400\nr v=4 200\n";
        let reason = "partial write: points beyond retention policy".to_owned();
        assert_eq!(
            reading(
                Api::V1,
                400,
                "partial write: points beyond retention policy dropped=2",
                batch
            ),
            Refusal::BeyondRetention {
                bad: vec![(1, reason.clone()), (3, reason.clone())]
            }
        );
        // 2.x words it as 1.x, inside its own message, with 422.
        assert_eq!(
            reading(
                Api::V2,
                422,
                "failure writing points to database: partial write: points beyond retention policy dropped=1",
                batch
            ),
            Refusal::BeyondRetention {
                bad: vec![(1, reason)]
            }
        );
        // A count the batch cannot hold is not mapped: bisect.
        for msg in [
            "partial write: points beyond retention policy dropped=5",
            "partial write: points beyond retention policy dropped=0",
            "partial write: points beyond retention policy dropped=x",
        ] {
            assert_eq!(reading(Api::V1, 400, msg, batch), Refusal::Unknown, "{msg}");
        }
    }

    #[test]
    fn a_2x_refusal_names_its_first_bad_line_or_is_held() {
        assert_eq!(
            reading(
                Api::V2,
                400,
                "unable to parse 'p v=x 2': invalid boolean",
                BATCH
            ),
            Refusal::Lines {
                bad: vec![(1, "invalid boolean".into())],
                rest_written: false
            }
        );
        // A partial write of a type conflict: bisect.
        let msg = "failure writing points to database: partial write: field type conflict: input field \"v\" on measurement \"p\" is type unsigned, already exists as type integer dropped=1";
        assert_eq!(reading(Api::V2, 422, msg, BATCH), Refusal::Unknown);
        // A quote that matches none of our lines: still content, bisected.
        assert_eq!(
            reading(
                Api::V2,
                400,
                "unable to parse 'other v=1 1': something",
                BATCH
            ),
            Refusal::Unknown
        );
        // No line quoted at all: a bad org or precision, never the content.
        for msg in [
            "organization name \"x\" not found",
            "write buffer error: parsing for line protocol failed",
        ] {
            assert_eq!(reading(Api::V2, 400, msg, BATCH), Refusal::NotContent);
        }
    }

    fn v3(body: &str, data: &[u8]) -> Refusal {
        read(
            Api::V3,
            400,
            "partial write of line protocol occurred",
            &refused_lines(body),
            data,
        )
    }

    #[test]
    fn a_quote_never_names_a_line_the_server_skips() {
        // Found by fuzzing: a quote of a tab matched a tab-only line, which
        // the server skips without a word and so cannot have refused.
        let batch = b"p v=1 1\n\t\n# note\n";
        for msg in ["unable to parse '\t': x", "unable to parse '# note': x"] {
            assert_eq!(reading(Api::V2, 400, msg, batch), Refusal::Unknown, "{msg}");
        }
    }

    #[test]
    fn a_3x_partial_write_is_read_by_line_number() {
        // As a real 3.6.0 answered: a re-rendered quote, cut to 20 bytes.
        let data = b"pw,k=a v=2i 1700000000000000002\npw,k=a v=\"text\" 1700000000000000003\npw,k=a v=4i 1700000000000000004\n";
        let body = r#"{"error":"partial write of line protocol occurred","data":[{"error_message":"invalid column type for column 'v', expected iox::column_type::field::integer, got iox::column_type::field::string","line_number":2,"original_line":"pw,k=a v=text 170000"}]}"#;
        assert_eq!(
            v3(body, data),
            Refusal::Lines {
                bad: vec![(1, "invalid column type for column 'v', expected iox::column_type::field::integer, got iox::column_type::field::string".into())],
                rest_written: true
            }
        );
        // A quote cut inside the measurement agrees with its start.
        let long = b"temperature_outside,room=a v=1i 1\ntemperature_outside,room=a v=\"x\" 2\n";
        let body = r#"{"data":[{"error_message":"e","line_number":2,"original_line":"temperature_outside,"}]}"#;
        assert!(matches!(v3(body, long), Refusal::Lines { bad, .. } if bad == [(1, "e".into())]));
        let body = r#"{"data":[{"error_message":"e","line_number":2,"original_line":"temperature_outs"}]}"#;
        assert!(matches!(v3(body, long), Refusal::Lines { .. }));
        // Blank and comment lines are not counted by the server.
        let spaced = b"# note\np v=1i 1\n\np v=\"x\" 2\n";
        let body = r#"{"data":[{"error_message":"e","line_number":2,"original_line":"p v=x 2"}]}"#;
        assert!(matches!(v3(body, spaced), Refusal::Lines { bad, .. } if bad == [(3, "e".into())]));
        // A 422 (a schema limit) is read the same way.
        let limit = read(
            Api::V3,
            422,
            "partial write of line protocol occurred",
            &refused_lines(
                r#"{"data":[{"error_message":"Update to schema would exceed number of columns per table limit of 500 columns","line_number":1,"original_line":"pw,k=a v=2i 17000000"}]}"#,
            ),
            data,
        );
        assert!(matches!(limit, Refusal::Lines { bad, rest_written: true } if bad[0].0 == 0));
    }

    #[test]
    fn a_3x_answer_that_does_not_fit_the_batch_is_bisected() {
        let data = b"pw,k=a v=2i 1\nother,k=a v=\"x\" 2\n";
        for entry in [
            // The number points at a line of another measurement.
            r#"{"line_number":1,"original_line":"other,k=a v=x 2","error_message":"e"}"#,
            // Out of range, zero, or an empty quote.
            r#"{"line_number":3,"original_line":"pw","error_message":"e"}"#,
            r#"{"line_number":0,"original_line":"pw","error_message":"e"}"#,
            r#"{"line_number":1,"original_line":"","error_message":"e"}"#,
            // A whole measurement that is only the start of ours.
            r#"{"line_number":1,"original_line":"p,k=a v=2i 1","error_message":"e"}"#,
        ] {
            let body = format!(r#"{{"data":[{entry}]}}"#);
            assert_eq!(v3(&body, data), Refusal::Unknown, "{entry}");
        }
        // Nothing listed at all.
        assert_eq!(v3(r#"{"data":[]}"#, data), Refusal::Unknown);
        // Not a partial write: the request itself.
        assert_eq!(
            read(Api::V3, 400, "invalid Authorization header", &[], data),
            Refusal::NotContent
        );
    }

    #[test]
    fn escapes_do_not_hide_a_measurement() {
        assert_eq!(measurement(b"a\\ b,t=1 v=1"), (b"a b".to_vec(), true));
        assert_eq!(measurement(b"a\\,b v=1"), (b"a,b".to_vec(), true));
        assert_eq!(measurement(b"abc"), (b"abc".to_vec(), false));
        assert!(same_measurement(b"a\\ b v=1i 1", b"a\\ b v=1i"));
        assert!(!same_measurement(b"ab v=1i 1", b"a v=1i"));
    }
}
