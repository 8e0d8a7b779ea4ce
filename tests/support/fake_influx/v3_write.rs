//! How InfluxDB 3 reads a `write_lp` body, line by line, as its write
//! validator does (3.6 to 3.10, docs/influxdb-api.md "3.x"): which lines
//! it counts, what a refused line's `line_number` and `original_line` are,
//! and which refusals are schema limits (422 instead of 400).
//!
//! - Lines are split at a newline outside a quoted string value; blank and
//!   comment-only lines are skipped and not counted, so `line_number`
//!   (from 1) counts only the lines that hold something.
//! - A parse error's `original_line` is the raw text of the body's n-th
//!   line by `str::lines`, which does not skip blank lines (so after a
//!   blank line the server quotes a neighbour; leasegate never sends one).
//! - A validation error (a field type conflict, a repeated field, too many
//!   columns) quotes the server's own rendering of the parsed line:
//!   escaped names, string values without their quotes, floats as Rust
//!   prints them.
//! - Either is cut to its first 20 bytes when serialised (3.10 backs off
//!   to a character boundary; before 3.10 the server panics there:
//!   `cut_split` says when a refusal would make it).

use std::collections::HashMap;

use leasegate::lineproto::{FieldValue, Point};
use serde_json::{Value, json};

/// Each table's columns in the order they were made, with their types as
/// InfluxDB 3 names them (`iox::column_type::field::integer`, ...).
pub type Tables = HashMap<String, Vec<(String, &'static str)>>;

/// Bytes of `original_line` the server serialises.
const ORIGINAL_LINE_BYTES: usize = 20;

pub enum Outcome {
    /// `accept_partial=false` and a line failed: nothing is written, the
    /// schema is unchanged, and the first failure is the answer.
    Refused { first: Value, cut_split: bool },
    /// The lines written (raw text) and the refused ones, serialised as the
    /// server does; `limit_hit` when one refusal was a schema limit,
    /// `cut_split` when a refused line's byte cut splits a character.
    Written {
        lines: Vec<(String, Point)>,
        refused: Vec<Value>,
        limit_hit: bool,
        cut_split: bool,
    },
}

/// Validates `body` against `tables` the way the server's catalog
/// transaction does: the columns a line adds stay even when a later column
/// of the same line fails, and the schema is kept only when something is
/// written.
pub fn validate(
    body: &str,
    tables: &mut Tables,
    poison: Option<&str>,
    column_limit: usize,
    accept_partial: bool,
) -> Outcome {
    let mut txn = tables.clone();
    let mut raw_lines = body.lines();
    let mut written = Vec::new();
    let mut refused = Vec::new();
    let mut limit_hit = false;
    let mut cut_split = false;
    let counted = split_lines(body).filter(|l| !trim_leading(l).is_empty());
    for (index, line) in counted.enumerate() {
        // The server takes one raw line per counted one, whatever it is.
        let raw = raw_lines.next().unwrap_or_default();
        let line = trim_leading(line);
        let result = match parse(line, poison) {
            Err(why) => Err(refusal(raw, index, why)),
            Ok(point) => match qualify(&point, &mut txn, column_limit) {
                Ok(()) => Ok(point),
                Err(why) => Err(refusal(&render(&point), index, why)),
            },
        };
        match result {
            Ok(point) => written.push((line.to_owned(), point)),
            Err((first, split)) if !accept_partial => {
                return Outcome::Refused {
                    first,
                    cut_split: split,
                };
            }
            Err((e, split)) => {
                let message = e["error_message"].as_str().unwrap_or_default();
                limit_hit |= message.starts_with("Update to schema would exceed number of");
                cut_split |= split;
                refused.push(e);
            }
        }
    }
    *tables = txn;
    Outcome::Written {
        lines: written,
        refused,
        limit_hit,
        cut_split,
    }
}

/// One refused line as the server serialises it (its fields in this
/// order, `original_line` cut short), and whether a plain byte cut would
/// have split a character (where the server before 3.10 panics).
fn refusal(original: &str, index: usize, why: String) -> (Value, bool) {
    let mut end = original.len().min(ORIGINAL_LINE_BYTES);
    let split = !original.is_char_boundary(end);
    while !original.is_char_boundary(end) {
        end -= 1;
    }
    let refusal = json!({
        "error_message": why,
        "line_number": index + 1,
        "original_line": &original[..end],
    });
    (refusal, split)
}

/// Which lines are malformed is what InfluxDB 3's own parser says (the
/// `influxdb-line-protocol` crate the server uses: it refuses forms 1.x
/// takes, such as `m v=.5` or `m v=1 `, with its own message), then what
/// leasegate's parser says (for the point the fake keeps), or that the
/// line holds the test's poison.
fn parse(line: &str, poison: Option<&str>) -> Result<Point, String> {
    if poison.is_some_and(|p| line.contains(p)) {
        return Err("invalid field format".into());
    }
    if let Some(Err(e)) = influxdb_line_protocol::parse_lines(line).next() {
        return Err(e.to_string());
    }
    super::parse_one(line)
}

/// The catalog's checks for one parsed line, in the server's order: its
/// table, each tag, each field (then a repeated field), the time column.
fn qualify(point: &Point, txn: &mut Tables, column_limit: usize) -> Result<(), String> {
    let table = txn.entry(point.measurement.clone()).or_default();
    for (tag, _) in &point.tags {
        column_or_create(table, tag, "iox::column_type::tag", column_limit)?;
    }
    let mut seen = std::collections::HashSet::new();
    for (name, value) in &point.fields {
        column_or_create(table, name, field_type(value), column_limit)?;
        if !seen.insert(name) {
            return Err(format!(
                "invalid line protocol - multiple instances of '{name}' field found"
            ));
        }
    }
    column_or_create(table, "time", "iox::column_type::timestamp", column_limit)
}

fn column_or_create(
    table: &mut Vec<(String, &'static str)>,
    name: &str,
    kind: &'static str,
    column_limit: usize,
) -> Result<(), String> {
    match table.iter().find(|(n, _)| n == name) {
        Some((_, existing)) if *existing == kind => Ok(()),
        Some((_, existing)) => Err(format!(
            "invalid column type for column '{name}', expected {existing}, got {kind}"
        )),
        None if table.len() >= column_limit => Err(format!(
            "Update to schema would exceed number of columns per table limit of {column_limit} columns"
        )),
        None => {
            table.push((name.to_owned(), kind));
            Ok(())
        }
    }
}

fn field_type(value: &FieldValue) -> &'static str {
    match value {
        FieldValue::Float(_) => "iox::column_type::field::float",
        FieldValue::Integer(_) => "iox::column_type::field::integer",
        FieldValue::UInteger(_) => "iox::column_type::field::uinteger",
        FieldValue::String(_) => "iox::column_type::field::string",
        FieldValue::Boolean(_) => "iox::column_type::field::boolean",
    }
}

/// The parsed line as the server prints it back (its `Display`).
pub fn render(point: &Point) -> String {
    fn escaped(out: &mut String, text: &str, special: &[char]) {
        for c in text.chars() {
            if special.contains(&c) {
                out.push('\\');
            }
            out.push(c);
        }
    }
    const NAME: &[char] = &[',', '=', ' '];
    let mut out = String::new();
    escaped(&mut out, &point.measurement, &[',', ' ']);
    for (key, value) in &point.tags {
        out.push(',');
        escaped(&mut out, key, NAME);
        out.push('=');
        escaped(&mut out, value, NAME);
    }
    for (i, (key, value)) in point.fields.iter().enumerate() {
        out.push(if i == 0 { ' ' } else { ',' });
        escaped(&mut out, key, NAME);
        out.push('=');
        match value {
            FieldValue::Float(v) => out.push_str(&v.to_string()),
            FieldValue::Integer(v) => out.push_str(&format!("{v}i")),
            FieldValue::UInteger(v) => out.push_str(&format!("{v}u")),
            FieldValue::String(v) => escaped(&mut out, v, &['"']),
            FieldValue::Boolean(v) => out.push_str(&v.to_string()),
        }
    }
    if let Some(t) = point.timestamp {
        out.push_str(&format!(" {t}"));
    }
    out
}

/// The server's line splitter (a port of InfluxDB's `scanLine`): a newline
/// ends a line unless it is inside a quoted string field value.
fn split_lines(body: &str) -> impl Iterator<Item = &str> {
    let (mut quoted, mut fields, mut in_escape) = (false, false, false);
    let (mut equals, mut commas) = (0, 0);
    body.split(move |c| {
        if in_escape {
            in_escape = false;
            return false;
        }
        match c {
            '\\' => in_escape = true,
            ' ' => fields = true,
            '=' if fields && !quoted => equals += 1,
            ',' if fields && !quoted => commas += 1,
            '"' if fields && equals > commas => quoted = !quoted,
            '\n' if !quoted => {
                (fields, equals, commas) = (false, 0, 0);
                return true;
            }
            _ => {}
        }
        false
    })
}

/// A line without the blanks and whole comment lines before it.
fn trim_leading(mut line: &str) -> &str {
    loop {
        line = line.trim_start_matches([' ', '\t', '\n']);
        match line.strip_prefix('#') {
            Some(_) => line = &line[line.find('\n').unwrap_or(line.len())..],
            None => return line,
        }
    }
}
