//! Line protocol: our parser and writer, and a differential check against
//! InfluxData's own parser (`influxdb-line-protocol`, the one InfluxDB 3
//! uses).
//!
//! Properties that must hold for every input:
//! - `parse_payload` never panics; an invalid UTF-8 payload is refused
//!   whole, every error names a line and a byte offset inside the payload.
//! - Every point we accept passes `Point::validate`, and the line our
//!   writer makes of it parses back to the same point; so does the text
//!   `last_text` keeps for forwarding as it came.
//! - Differential: each line goes to both parsers. They disagree when (A)
//!   we accept and InfluxDB's parser rejects, (B) we reject and it
//!   accepts, (C) both accept different points, (W) it reads the line our
//!   writer made of an accepted point differently from us, or (Split) it
//!   cuts the payload into lines differently. Every disagreement must fall
//!   in a documented class of `CLASSES` (docs/fuzzing.md explains each);
//!   an unexplained one panics.
//!
//! With `LEASEGATE_FUZZ_DIFF_DIR` set, unexplained disagreements are not
//! fatal: the shortest line of each distinct signature is kept in that
//! directory instead (how the classes were found; docs/fuzzing.md).

#![no_main]

use influxdb_line_protocol as ilp;
use leasegate::lineproto::{self, FieldValue, Point};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| common::timed(data, check));

fn check(data: &[u8]) {
    let Some(text) = ours_payload(data) else {
        return;
    };
    // The lines as InfluxDB cuts a body (its `split_lines` is a port of
    // the Go server's scanLine): a newline inside a quoted string or after
    // a backslash does not end a line there.
    for piece in ilp::split_lines(text) {
        if piece.contains('\n') {
            held_newline(piece);
        } else {
            differential(piece);
        }
    }
}

/// A line that holds a newline for InfluxDB. Ours must refuse it whole
/// (no point can carry a newline); reading it as two lines is a Split
/// disagreement.
fn held_newline(piece: &str) {
    let ours: Vec<_> = match lineproto::parse_payload(piece.as_bytes()) {
        Ok(lines) => lines.collect(),
        Err(_) => return,
    };
    if let [Err(e)] = ours.as_slice() {
        let refused = Outcome::Reject(error_name(&e.kind));
        let t = theirs(piece);
        if matches!(t, Outcome::Point(_)) {
            report(Kind::B, piece, None, &refused, &t);
        }
        return;
    }
    if ours.is_empty() {
        return;
    }
    report(Kind::Split, piece, None, &Outcome::Skip, &Outcome::Skip);
}

/// Our payload API on the whole input, with its own properties; returns
/// the text when it is UTF-8.
fn ours_payload(data: &[u8]) -> Option<&str> {
    let line_count = 1 + data.iter().filter(|&&b| b == b'\n').count();
    let mut lines = match lineproto::parse_payload(data) {
        Ok(lines) => lines,
        Err(e) => {
            let not_utf8 = std::str::from_utf8(data).is_err();
            assert!(not_utf8, "a UTF-8 payload was refused whole: {e}");
            assert!(
                e.offset < data.len(),
                "offset {} past the payload",
                e.offset
            );
            assert!(e.line >= 1 && e.line <= line_count);
            return None;
        }
    };
    let mut last_line = 0;
    while let Some(result) = lines.next() {
        match result {
            Ok(point) => {
                round_trip(&point);
                let kept = lines.last_text();
                let again = lineproto::parse_line(kept, 0, 1);
                assert_eq!(
                    again.as_ref().map(|r| r.as_ref().ok()),
                    Some(Some(&point)),
                    "last_text {kept:?} does not read as the point it came from"
                );
            }
            Err(e) => {
                assert!(
                    e.offset <= data.len(),
                    "offset {} past the payload",
                    e.offset
                );
                assert!(e.line >= 1 && e.line <= line_count, "line {}", e.line);
                assert!(e.line >= last_line, "line numbers go back");
                last_line = e.line;
                // Rendering an error must not panic either.
                let _ = e.to_string();
            }
        }
    }
    std::str::from_utf8(data).ok()
}

/// Writing an accepted point and reading it back gives the same point.
fn round_trip(point: &Point) {
    point
        .validate()
        .unwrap_or_else(|e| panic!("parser accepted a point that fails validate: {e}: {point:?}"));
    let mut line = String::new();
    lineproto::write_line(&mut line, point).expect("valid point");
    assert!(line.ends_with('\n'));
    let body = &line[..line.len() - 1];
    assert!(
        !body.contains('\n'),
        "written line has an inner newline: {body:?}"
    );
    match lineproto::parse_line(body, 0, 1) {
        Some(Ok(again)) => assert_eq!(&again, point, "written as {body:?}"),
        other => panic!("written line {body:?} does not parse back: {other:?}"),
    }
}

/// A point in a form both parsers' results compare in: floats by bits.
#[derive(Debug, Clone, PartialEq)]
struct Norm {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, Val)>,
    timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    F(u64),
    I(i64),
    U(u64),
    S(String),
    B(bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Blank or comment line.
    Skip,
    Point(Norm),
    /// Refused, with the error's variant name.
    Reject(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// We accept, InfluxDB's parser rejects.
    A,
    /// We reject, InfluxDB's parser accepts.
    B,
    /// Both accept, different points (or one skips the line).
    C,
    /// InfluxDB's parser reads our written form of a point differently.
    W,
    /// The payload is cut into lines differently.
    Split,
}

fn norm_ours(p: &Point) -> Norm {
    Norm {
        measurement: p.measurement.clone(),
        tags: p.tags.clone(),
        fields: p
            .fields
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    FieldValue::Float(f) => Val::F(f.to_bits()),
                    FieldValue::Integer(i) => Val::I(*i),
                    FieldValue::UInteger(u) => Val::U(*u),
                    FieldValue::String(s) => Val::S(s.clone()),
                    FieldValue::Boolean(b) => Val::B(*b),
                };
                (k.clone(), v)
            })
            .collect(),
        timestamp: p.timestamp,
    }
}

fn ours(line: &str) -> (Outcome, Option<Point>) {
    match lineproto::parse_line(line, 0, 1) {
        None => (Outcome::Skip, None),
        Some(Ok(p)) => (Outcome::Point(norm_ours(&p)), Some(p)),
        Some(Err(e)) => (Outcome::Reject(error_name(&e.kind)), None),
    }
}

fn theirs(line: &str) -> Outcome {
    let mut results = ilp::parse_lines(line);
    let outcome = match results.next() {
        None => Outcome::Skip,
        Some(Ok(l)) => Outcome::Point(Norm {
            measurement: l.series.measurement.to_string(),
            tags: l
                .series
                .tag_set
                .iter()
                .flatten()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fields: l
                .field_set
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        ilp::FieldValue::F64(f) => Val::F(f.to_bits()),
                        ilp::FieldValue::I64(i) => Val::I(*i),
                        ilp::FieldValue::U64(u) => Val::U(*u),
                        ilp::FieldValue::String(s) => Val::S(s.to_string()),
                        ilp::FieldValue::Boolean(b) => Val::B(*b),
                    };
                    (k.to_string(), v)
                })
                .collect(),
            timestamp: l.timestamp,
        }),
        Some(Err(e)) => Outcome::Reject(variant(&format!("{e:?}"))),
    };
    // One line without a newline is at most one result.
    if !line.contains('\n') {
        assert!(results.next().is_none());
    }
    outcome
}

/// Our error's variant, with the inner one of `InvalidPoint`.
fn error_name(kind: &lineproto::ParseErrorKind) -> String {
    let debug = format!("{kind:?}");
    match debug.strip_prefix("InvalidPoint(") {
        Some(inner) => format!("InvalidPoint/{}", variant(inner)),
        None => variant(&debug),
    }
}

/// The variant name of a `Debug` rendering, with the nom error kind of a
/// generic parse error, for disagreement signatures.
fn variant(debug: &str) -> String {
    let end = debug.find([' ', '(', '{']).unwrap_or(debug.len());
    let name = &debug[..end];
    match debug.find("kind: ") {
        Some(i) if name == "GenericParsingError" => {
            let kind = &debug[i + 6..];
            let kind_end = kind.find([',', ' ', '}']).unwrap_or(kind.len());
            format!("{name}/{}", &kind[..kind_end])
        }
        _ => name.to_owned(),
    }
}

fn differential(line: &str) {
    let (o, point) = ours(line);
    // InfluxDB gets a line without the '\r' of a CRLF line end: the
    // gateway forwards `last_text` or writes the point anew ("crlf").
    let line_sent = line.strip_suffix('\r').unwrap_or(line);
    let t = theirs(line_sent);
    let kind = match (&o, &t) {
        (Outcome::Point(a), Outcome::Point(b)) if a == b => None,
        (Outcome::Skip, Outcome::Skip) | (Outcome::Reject(_), Outcome::Reject(_)) => None,
        (Outcome::Point(_), Outcome::Reject(_)) => Some(Kind::A),
        (Outcome::Reject(_), Outcome::Point(_)) => Some(Kind::B),
        _ => Some(Kind::C),
    };
    if let Some(kind) = kind {
        report(kind, line_sent, None, &o, &t);
    }
    // What InfluxDB reads from the line we would write for this point.
    if let (Some(point), Outcome::Point(norm)) = (point, &o) {
        let mut written = String::new();
        lineproto::write_point(&mut written, &point);
        let t = theirs(&written);
        if t != Outcome::Point(norm.clone()) {
            report(Kind::W, line, Some(&written), &o, &t);
        }
    }
}

fn report(kind: Kind, line: &str, written: Option<&str>, ours: &Outcome, theirs: &Outcome) {
    let d = Diff {
        kind,
        line,
        written,
        ours,
        theirs,
    };
    static EXPLORE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let explore = EXPLORE
        .get_or_init(|| std::env::var_os("LEASEGATE_FUZZ_DIFF_DIR").map(Into::into))
        .as_deref();
    let class = CLASSES.iter().find(|(_, _, test)| test(&d));
    match class {
        // Deliberate, or a bug of ours this run was told to step over.
        Some((name, bug, _)) if !bug || common::known(name) => {
            if let Some(dir) = explore {
                keep_shortest(dir, &format!("class-{name}-{kind:?}"), line, ours, theirs);
            }
            return;
        }
        _ => {}
    }
    let sig = signature(kind, ours, theirs);
    if let Some(dir) = explore {
        keep_shortest(dir, &sig, line, ours, theirs);
        return;
    }
    let what = match class {
        Some((name, ..)) => format!(
            "known bug `{name}` of our parser (docs/fuzzing.md); fix it, or list it in \
             LEASEGATE_FUZZ_KNOWN to step over it"
        ),
        None => format!("unexplained disagreement with InfluxDB's parser ({sig})"),
    };
    let pieces = if kind == Kind::Split {
        format!(
            "\n  InfluxDB's lines: {:?}",
            ilp::split_lines(line).collect::<Vec<_>>()
        )
    } else {
        String::new()
    };
    panic!("{what}\n  line:   {line:?}\n  ours:   {ours:?}\n  theirs: {theirs:?}{pieces}");
}

fn signature(kind: Kind, ours: &Outcome, theirs: &Outcome) -> String {
    let side = |o: &Outcome| match o {
        Outcome::Skip => "skip".to_owned(),
        Outcome::Point(_) => "point".to_owned(),
        Outcome::Reject(v) => v.clone(),
    };
    let what = match (ours, theirs) {
        (Outcome::Point(a), Outcome::Point(b)) => {
            let mut parts = Vec::new();
            if a.measurement != b.measurement {
                parts.push("measurement");
            }
            if a.tags != b.tags {
                parts.push("tags");
            }
            if a.fields.len() != b.fields.len()
                || a.fields.iter().zip(&b.fields).any(|(x, y)| x.0 != y.0)
            {
                parts.push("field-keys");
            } else if a.fields != b.fields {
                let types = a
                    .fields
                    .iter()
                    .zip(&b.fields)
                    .any(|(x, y)| std::mem::discriminant(&x.1) != std::mem::discriminant(&y.1));
                parts.push(if types { "field-types" } else { "field-values" });
            }
            if a.timestamp != b.timestamp {
                parts.push("timestamp");
            }
            parts.join("+")
        }
        _ => String::new(),
    };
    format!("{kind:?}.{}.{}.{what}", side(ours), side(theirs))
}

/// Keeps the shortest line seen for a signature in `dir` (explore mode).
fn keep_shortest(dir: &std::path::Path, sig: &str, line: &str, ours: &Outcome, theirs: &Outcome) {
    let name: String = sig
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{name}.txt"));
    let shorter = match std::fs::read(&path) {
        Ok(old) => {
            let old_len = old.iter().position(|&b| b == b'\n').unwrap_or(old.len());
            format!("{line:?}").len() < old_len
        }
        Err(_) => true,
    };
    if shorter {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(
            &path,
            format!("{line:?}\nours:   {ours:?}\ntheirs: {theirs:?}\n"),
        );
    }
}

/// One disagreement, tested against [`CLASSES`].
struct Diff<'a> {
    kind: Kind,
    /// The input line (the whole payload for [`Kind::Split`]).
    line: &'a str,
    /// For [`Kind::W`]: the line our writer made of our point.
    written: Option<&'a str>,
    ours: &'a Outcome,
    theirs: &'a Outcome,
}

impl Diff<'_> {
    fn ours_point(&self) -> Option<&Norm> {
        match self.ours {
            Outcome::Point(p) => Some(p),
            _ => None,
        }
    }

    fn theirs_point(&self) -> Option<&Norm> {
        match self.theirs {
            Outcome::Point(p) => Some(p),
            _ => None,
        }
    }

    fn ours_error(&self) -> &str {
        match self.ours {
            Outcome::Reject(e) => e,
            _ => "",
        }
    }

    /// The text InfluxDB's parser read: the line, or our written form.
    fn text(&self) -> &str {
        self.written.unwrap_or(self.line)
    }
}

/// Every name of a point: measurement, tag keys and values, field keys.
fn names(p: &Norm) -> impl Iterator<Item = &str> {
    std::iter::once(p.measurement.as_str())
        .chain(p.tags.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
        .chain(p.fields.iter().map(|(k, _)| k.as_str()))
}

/// A float written in a form the Go parser (InfluxDB 1.x and 2.x) reads
/// and InfluxDB 3's does not: no digit before the point (`.5`, `-.5`) or
/// none after it (`1.`, `1.e5`). Looks at every token after a '='.
fn has_go_only_float(text: &str) -> bool {
    text.match_indices('=').any(|(i, _)| {
        let rest = &text[i + 1..];
        let token = &rest[..rest.find([',', ' ', '\t']).unwrap_or(rest.len())];
        let t = token.strip_prefix('-').unwrap_or(token);
        let mantissa = &t[..t.find(['e', 'E']).unwrap_or(t.len())];
        let Some((int, frac)) = mantissa.split_once('.') else {
            return false;
        };
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        digits(int) && digits(frac) && (int.is_empty() != frac.is_empty())
    })
}

/// `text` with the inside of every quoted string field masked (`x`), so
/// that the tests below look at names and separators only. Strings are
/// found as InfluxDB's line splitter finds them: in the field set (after
/// the first unescaped space after the line's leading blanks), a quote
/// opens or closes one where a value
/// starts or goes on (more `=` than `,` so far).
fn unquoted(text: &str) -> String {
    let body = text.trim_start_matches([' ', '\t']);
    let mut out = text[..text.len() - body.len()].to_owned();
    let (mut escaped, mut fields, mut quoted) = (false, false, false);
    let (mut equals, mut commas) = (0u32, 0u32);
    for c in body.chars() {
        let was_quoted = quoted;
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ' ' && !quoted {
            fields = true;
        } else if fields && !quoted && c == '=' {
            equals += 1;
        } else if fields && !quoted && c == ',' {
            commas += 1;
        } else if fields && c == '"' && equals > commas {
            quoted = !quoted;
        }
        out.push(if was_quoted && quoted { 'x' } else { c });
    }
    out
}

/// Whether a tab directly follows a non-blank byte outside strings, after
/// the line's leading blanks: where InfluxDB 1.x reads it as part of a
/// name or value.
fn tab_after_value(line: &str) -> bool {
    let u = unquoted(line);
    let b = u.trim_start_matches([' ', '\t']).as_bytes();
    (1..b.len()).any(|i| b[i] == b'\t' && !matches!(b[i - 1], b' ' | b'\t'))
}

/// Deliberate classes and known bugs: (name, whether it is a bug in our
/// parser, the test). Each is explained in docs/fuzzing.md under its name.
type Class = (&'static str, bool, fn(&Diff<'_>) -> bool);

const CLASSES: &[Class] = &[
    // --- deliberate ---
    // Names starting with '_' are reserved by InfluxDB 2.x; 1.x and the
    // InfluxDB 3 parser take them.
    ("reserved-underscore", false, |d| {
        d.kind == Kind::B && d.ours_error() == "InvalidPoint/ReservedName"
    }),
    // The gateway's own bounds (tags and fields per point, series key,
    // string length).
    ("gateway-limits", false, |d| {
        d.kind == Kind::B
            && matches!(
                d.ours_error(),
                "InvalidPoint/TooManyTags"
                    | "InvalidPoint/TooManyFields"
                    | "InvalidPoint/SeriesKeyTooLong"
                    | "InvalidPoint/StringTooLong"
            )
    }),
    // A name with a backslash before a space, comma, '=' or backslash:
    // InfluxDB 1.x/2.x and InfluxDB 3 read it differently (see
    // "double-backslash"), so Point::validate refuses it.
    ("ambiguous-backslash", false, |d| {
        d.kind == Kind::B && d.ours_error() == "InvalidPoint/AmbiguousBackslash"
    }),
    // The same field twice with values of two types: InfluxDB 1.x refuses
    // the whole write as a type conflict naming no line (the writer would
    // have to bisect the batch to find it); the InfluxDB 3 crate parses
    // it. Refused at intake.
    ("field-type-clash", false, |d| {
        d.kind == Kind::B && d.ours_error() == "InvalidPoint/FieldTypeClash"
    }),
    // InfluxDB 1.x refuses "duplicate tags"; the InfluxDB 3 crate's
    // parse_lines does not look.
    ("duplicate-tags", false, |d| {
        d.kind == Kind::B && d.ours_error() == "InvalidPoint/DuplicateTag"
    }),
    // The InfluxDB 3 parser takes an unescaped ',' inside a tag or field
    // key; InfluxDB 1.x refuses it ("missing tag value", "missing field
    // key"), as we do.
    ("comma-in-key", false, |d| {
        d.kind == Kind::B
            && d.theirs_point().is_some_and(|p| {
                p.tags.iter().any(|(k, _)| k.contains(','))
                    || p.fields.iter().any(|(k, _)| k.contains(','))
            })
    }),
    // The InfluxDB 3 parser reads 1e999 as infinity; 1.x says "invalid
    // float", and NaN/infinity are invalid everywhere.
    ("float-overflow", false, |d| {
        d.kind == Kind::B
            && d.ours_error() == "NonFinite"
            && d.theirs_point().is_some_and(|p| {
                p.fields
                    .iter()
                    .any(|(_, v)| matches!(v, Val::F(bits) if !f64::from_bits(*bits).is_finite()))
            })
    }),
    // An unescaped ',' ending the field set: the InfluxDB 3 parser
    // ignores it, InfluxDB 1.x says "invalid field format", as we do.
    ("trailing-comma", false, |d| {
        d.kind == Kind::B
            && d.ours_error() == "EmptyFieldKey"
            && d.theirs_point()
                .is_some_and(|p| !p.fields.iter().any(|(k, _)| k.contains(',')))
    }),
    // Two backslashes in a name: InfluxDB 1.x keeps both (and reads `\ `,
    // `\,`, `\=` after them as escapes), the InfluxDB 3 parser reads them
    // as one escaped backslash. No text means the same to both.
    ("double-backslash", false, |d| {
        matches!(d.kind, Kind::A | Kind::C | Kind::W) && unquoted(d.text()).contains("\\\\")
    }),
    // Bug, fixed in ded069f (comes first so that it is not taken for a
    // NUL inside a name): NUL bytes at the start of a line. InfluxDB 1.x skips them like
    // blanks, the InfluxDB 3 parser refuses the line; we make them part of
    // the measurement.
    ("leading-nul", true, |d| {
        matches!(d.kind, Kind::A | Kind::W)
            && d.ours_point()
                .is_some_and(|p| p.measurement.starts_with('\0'))
    }),
    // A tab inside a name: part of the name for InfluxDB 1.x, a boundary
    // (and so an error) for the InfluxDB 3 parser.
    ("tab-in-name", false, |d| {
        matches!(d.kind, Kind::A | Kind::W)
            && d.ours_point()
                .is_some_and(|p| names(p).any(|n| n.contains('\t')))
    }),
    // A NUL inside a measurement: InfluxDB 1.x keeps it, the InfluxDB 3
    // parser refuses it.
    ("nul-in-measurement", false, |d| {
        matches!(d.kind, Kind::A | Kind::W)
            && d.ours_point().is_some_and(|p| p.measurement.contains('\0'))
    }),
    // `.5`, `-.5`, `1.`, `1.e5`: InfluxDB 1.x takes them (checked against
    // a real 1.6 server), the InfluxDB 3 parser does not.
    ("go-float-forms", false, |d| {
        matches!(d.kind, Kind::A | Kind::W) && has_go_only_float(&unquoted(d.text()))
    }),
    // Blanks that begin with a space, after the series key or the field
    // set (`m \tv=1`, `m v=1 `, `m v=1 \t5`): InfluxDB 1.x skips them,
    // the InfluxDB 3 parser takes only spaces, and at the end of a line
    // only after a timestamp.
    ("blanks-after-space", false, |d| {
        d.kind == Kind::A && !tab_after_value(d.line) && {
            let u = unquoted(d.line);
            let t = u.trim_start_matches([' ', '\t']);
            t.contains(" \t") || t.ends_with(' ')
        }
    }),
    // A line that holds a newline (inside a quoted string, or after a
    // backslash), refused whole: both servers take it, with the newline
    // in a value or a name; no point of ours can carry one (there is no
    // escape for it in line protocol, and the writer never emits one).
    ("newline-refused", false, |d| {
        d.kind == Kind::B && d.line.contains('\n')
    }),
    // A NUL byte inside a name: InfluxDB 1.x keeps it, the InfluxDB 3
    // parser keeps it in keys and refuses it in a measurement;
    // Point::validate refuses it everywhere (a rule added in
    // src/lineproto/point.rs while these targets were written).
    ("nul-in-name", false, |d| {
        d.kind == Kind::B && d.ours_error() == "InvalidPoint/Nul"
    }),
    // --- bugs of ours: found here, reported; the fixed ones stay so
    // that a regression fails (docs/fuzzing.md) ---
    // Fixed after ded069f: a '\r' inside a name. Both servers take it;
    // check_text refused it.
    ("cr-in-name", true, |d| {
        d.kind == Kind::B && d.ours_error() == "InvalidPoint/Newline"
    }),
    // Fixed in ded069f: the same field twice. Both servers take it (the
    // last wins); Point::validate refused it.
    ("duplicate-fields", true, |d| {
        d.kind == Kind::B && d.ours_error() == "InvalidPoint/DuplicateField"
    }),
    // Fixed in ded069f: `+1.5`. Both servers refuse a '+' before a
    // number ("invalid boolean" on 1.x); we read a float.
    ("plus-sign", true, |d| {
        matches!(d.kind, Kind::A) && (d.line.contains("=+") || d.line.contains(",+"))
    }),
    // Fixed in ded069f: a tab right after a field value or timestamp.
    // Both servers refuse the line (1.x "invalid number", "bad
    // timestamp"); we read it as a blank.
    ("tab-separator", true, |d| {
        d.kind == Kind::A
            && tab_after_value(d.line)
            && d.ours_point()
                .is_some_and(|p| !names(p).any(|n| n.contains('\t')))
    }),
    // Fixed in ded069f: a newline inside a quoted string or after a
    // backslash. Both servers read on into the next line; ours cut the
    // line there (refusing both halves, or taking what follows as a point
    // of its own: `m,t=a\⏎b v=1` gave `b v=1`). Ours now refuses such a
    // line whole ("newline-refused").
    ("split-line", true, |d| d.kind == Kind::Split),
];
