//! The point model and the rules a point must follow to be writable.
//!
//! Validation lives here rather than in the writer so that every source of
//! points (the parser, JSON payloads, tests) is held to the same rules before
//! a point is accepted into the pipeline. It must never silently change a
//! point: a point that cannot be written exactly is rejected with the reason.

use std::fmt;

use super::{Limits, MAX_SERIES_KEY_BYTES, MAX_STRING_FIELD_BYTES};

/// One field value. Floats are never NaN or infinite in a valid point.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Float(f64),
    Integer(i64),
    /// `12u`: accepted by InfluxDB 2.x and 3.x only.
    UInteger(u64),
    String(String),
    Boolean(bool),
}

/// A single point: measurement, tag set, field set and optional timestamp.
///
/// Tags and fields keep the order they were given in; InfluxDB orders tags
/// itself, and keeping the input order makes a parse/write round trip exact.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub measurement: String,
    pub tags: Vec<(String, String)>,
    pub fields: Vec<(String, FieldValue)>,
    /// Nanoseconds since the Unix epoch unless a precision says otherwise.
    pub timestamp: Option<i64>,
}

/// Why a point cannot be written as line protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPoint {
    #[error("missing measurement")]
    EmptyMeasurement,
    /// A measurement starting with `#` reads as a comment; a measurement or
    /// field key starting with a tab reads as the blank before it.
    #[error("{0:?} starts with a tab or '#', which line protocol reads as blank or comment")]
    BadStart(String),
    #[error("point has no fields")]
    NoFields,
    #[error("empty tag key")]
    EmptyTagKey,
    #[error("tag {0:?} has an empty value")]
    EmptyTagValue(String),
    #[error("empty field key")]
    EmptyFieldKey,
    #[error("duplicate tag key {0:?}")]
    DuplicateTag(String),
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    #[error(
        "{0:?} has a backslash before a space, comma, equals sign, backslash or (in a measurement or field key) quote, which InfluxDB versions read differently"
    )]
    AmbiguousBackslash(String),
    #[error("field {0:?} is given twice with values of different types")]
    FieldTypeClash(String),
    #[error("name {0:?} starts with '_', which InfluxDB reserves")]
    ReservedName(String),
    #[error("{0:?} contains a newline, which line protocol cannot escape")]
    Newline(String),
    #[error("{0:?} ends with a backslash, which line protocol cannot represent")]
    TrailingBackslash(String),
    #[error("field {0:?} is not a finite number")]
    NonFinite(String),
    #[error("series key is {0} bytes, more than the {MAX_SERIES_KEY_BYTES} InfluxDB accepts")]
    SeriesKeyTooLong(usize),
    #[error("string field {0:?} is longer than {MAX_STRING_FIELD_BYTES} bytes")]
    StringTooLong(String),
    #[error("more than {0} tags in one point (mqtt.max_tags_per_point)")]
    TooManyTags(usize),
    #[error("more than {0} fields in one point (mqtt.max_fields_per_point)")]
    TooManyFields(usize),
}

impl Point {
    /// Checks every rule of line protocol that a writer cannot fix by escaping.
    pub fn validate(&self) -> Result<(), InvalidPoint> {
        check_name(&self.measurement, || InvalidPoint::EmptyMeasurement, true)?;
        if self.measurement.starts_with(['#', '\t']) {
            return Err(InvalidPoint::BadStart(self.measurement.clone()));
        }
        // InfluxDB measures the series key as written, escapes included.
        let escaped = |t: &str, equals_too: bool| {
            t.len()
                + t.bytes()
                    .filter(|&b| b == b',' || b == b' ' || (equals_too && b == b'='))
                    .count()
        };
        let mut series_key = escaped(&self.measurement, false);
        for (key, value) in &self.tags {
            check_name(key, || InvalidPoint::EmptyTagKey, false)?;
            check_text(value, || InvalidPoint::EmptyTagValue(key.clone()))?;
            series_key += 2 + escaped(key, true) + escaped(value, true);
        }
        if let Some(key) = first_duplicate(&self.tags) {
            return Err(InvalidPoint::DuplicateTag(key.to_owned()));
        }
        if series_key > MAX_SERIES_KEY_BYTES {
            return Err(InvalidPoint::SeriesKeyTooLong(series_key));
        }
        if self.fields.is_empty() {
            return Err(InvalidPoint::NoFields);
        }
        for (key, value) in &self.fields {
            check_name(key, || InvalidPoint::EmptyFieldKey, true)?;
            if key.starts_with('\t') {
                return Err(InvalidPoint::BadStart(key.clone()));
            }
            match value {
                FieldValue::Float(f) if !f.is_finite() => {
                    return Err(InvalidPoint::NonFinite(key.clone()));
                }
                FieldValue::String(s) => {
                    if s.len() > MAX_STRING_FIELD_BYTES {
                        return Err(InvalidPoint::StringTooLong(key.clone()));
                    }
                    if s.contains('\n') {
                        return Err(InvalidPoint::Newline(key.clone()));
                    }
                }
                _ => {}
            }
        }
        // A field key given twice with values of one type is left to the
        // server, which keeps the last (InfluxDB 1.x, 2.x and 3.x alike).
        // With two types 1.x refuses the whole write as a type conflict,
        // naming no line, which would cost a bisection of the batch: it is
        // refused here instead.
        if let Some(key) = first_type_clash(&self.fields) {
            return Err(InvalidPoint::FieldTypeClash(key.to_owned()));
        }
        Ok(())
    }

    /// Whether the point stays within `limits`' tag and field counts.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), InvalidPoint> {
        if self.tags.len() > limits.max_tags {
            return Err(InvalidPoint::TooManyTags(limits.max_tags));
        }
        if self.fields.len() > limits.max_fields {
            return Err(InvalidPoint::TooManyFields(limits.max_fields));
        }
        Ok(())
    }
}

/// The first key that appears a second time, in time linear in the number
/// of pairs: a hostile point may carry many thousands (a pairwise search
/// took 25 s for 120,000 fields). A handful is compared directly, cheaper
/// than hashing.
fn first_duplicate<V>(pairs: &[(String, V)]) -> Option<&str> {
    if pairs.len() <= 16 {
        return pairs
            .iter()
            .enumerate()
            .find(|(i, (k, _))| pairs[..*i].iter().any(|(seen, _)| seen == k))
            .map(|(_, (k, _))| k.as_str());
    }
    let mut seen = std::collections::HashSet::with_capacity(pairs.len());
    pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .find(|k| !seen.insert(*k))
}

/// The first key given twice with values of different types, in time
/// linear in the number of fields.
fn first_type_clash(fields: &[(String, FieldValue)]) -> Option<&str> {
    let kind = |v: &FieldValue| std::mem::discriminant(v);
    if fields.len() <= 16 {
        return fields
            .iter()
            .enumerate()
            .find(|(i, (k, v))| {
                fields[..*i]
                    .iter()
                    .any(|(seen, w)| seen == k && kind(w) != kind(v))
            })
            .map(|(_, (k, _))| k.as_str());
    }
    let mut seen = std::collections::HashMap::with_capacity(fields.len());
    fields
        .iter()
        .find(|(k, v)| *seen.entry(k.as_str()).or_insert_with(|| kind(v)) != kind(v))
        .map(|(k, _)| k.as_str())
}

/// What one pass over a name found (validation runs for every point, so a
/// name is read once, not once per rule).
#[derive(Default)]
struct Scanned {
    newline: bool,
    nul: bool,
    /// A backslash before a backslash, comma, `=` or space.
    ambiguous: bool,
    /// A backslash before a quote.
    quote_escape: bool,
}

fn scan(text: &str) -> Scanned {
    let mut found = Scanned::default();
    let mut after_backslash = false;
    for &b in text.as_bytes() {
        match b {
            b'\n' => found.newline = true,
            0 => found.nul = true,
            b'\\' | b',' | b'=' | b' ' if after_backslash => found.ambiguous = true,
            b'"' if after_backslash => found.quote_escape = true,
            _ => {}
        }
        after_backslash = b == b'\\';
    }
    found
}

/// Rules for measurement, tag keys and field keys. `quote_is_escape`: in
/// a measurement and a field key, InfluxDB 1.x and 2.x read `\"` as an
/// escaped quote (the name `m"x`) while ours and InfluxDB 3 keep the
/// backslash; no text means the same to both, so such a name is refused
/// (in tags every server keeps the backslash).
fn check_name(
    name: &str,
    if_empty: impl FnOnce() -> InvalidPoint,
    quote_is_escape: bool,
) -> Result<(), InvalidPoint> {
    let scanned = check_text(name, if_empty)?;
    if name.starts_with('_') {
        return Err(InvalidPoint::ReservedName(name.to_owned()));
    }
    if quote_is_escape && scanned.quote_escape {
        return Err(InvalidPoint::AmbiguousBackslash(name.to_owned()));
    }
    Ok(())
}

/// Rules for every unquoted text of a line, tag values included.
fn check_text(
    text: &str,
    if_empty: impl FnOnce() -> InvalidPoint,
) -> Result<Scanned, InvalidPoint> {
    if text.is_empty() {
        return Err(if_empty());
    }
    let scanned = scan(text);
    // A carriage return inside a name is kept, as InfluxDB keeps it; only
    // one that ends a line is taken for a CRLF line end.
    if scanned.newline {
        return Err(InvalidPoint::Newline(text.to_owned()));
    }
    // InfluxDB 3 refuses a NUL in a name; 1.x skips one at the start of a
    // line. Neither stores the name as written.
    if scanned.nul {
        return Err(InvalidPoint::Nul(text.to_owned()));
    }
    if text.ends_with('\\') {
        return Err(InvalidPoint::TrailingBackslash(text.to_owned()));
    }
    // Written out, such a backslash stands before an escape (`a\\,b`):
    // InfluxDB 1.x and 2.x split lines reading `\\` as one escape, 3.x
    // reads it as one backslash, and no text means the same to all of them.
    if scanned.ambiguous {
        return Err(InvalidPoint::AmbiguousBackslash(text.to_owned()));
    }
    Ok(scanned)
}

impl fmt::Display for FieldValue {
    /// The value as line protocol writes it (strings quoted and escaped).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        super::write::write_field_value(&mut s, self);
        f.write_str(&s)
    }
}
