//! Validating parser for line protocol arriving from sensors.
//!
//! Accepts what InfluxDB accepts and rejects, line by line, everything the
//! facts sheet calls invalid, with the reason and the byte offset (counted
//! from the start of the payload) so that an operator can find the bad byte
//! in a dead-letter record. It must never panic or loop on any input, and it
//! never guesses: a value that is not exactly a float, integer, unsigned,
//! boolean or string is an error, not a string.

use super::{FieldValue, InvalidPoint, Limits, Point};

/// Why a line was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, byte {offset}: {kind}")]
pub struct ParseError {
    /// 1-based line number within the payload.
    pub line: usize,
    /// 0-based byte offset from the start of the payload.
    pub offset: usize,
    pub kind: ParseErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("payload is not valid UTF-8")]
    InvalidUtf8,
    #[error("missing measurement")]
    MissingMeasurement,
    #[error("tag {0:?} has no '=' and value")]
    TagWithoutValue(String),
    #[error("empty tag key")]
    EmptyTagKey,
    #[error("tag {0:?} has an empty value")]
    EmptyTagValue(String),
    #[error("no fields")]
    NoFields,
    #[error("field {0:?} has no '=' and value")]
    FieldWithoutValue(String),
    #[error("empty field key")]
    EmptyFieldKey,
    #[error("field {0:?} has an empty value")]
    EmptyFieldValue(String),
    #[error("field {field:?} has invalid value {value:?}")]
    InvalidFieldValue { field: String, value: String },
    #[error("field {0:?}: NaN and infinity are not valid values")]
    NonFinite(String),
    #[error("field {0:?}: integer out of the signed 64-bit range")]
    IntegerOutOfRange(String),
    #[error("field {0:?}: unsigned integer out of the 64-bit range")]
    UnsignedOutOfRange(String),
    #[error("field {0:?}: string has no closing quote")]
    UnterminatedString(String),
    #[error("field {0:?}: unexpected character after the closing quote")]
    AfterString(String),
    #[error("invalid timestamp {0:?}: expected a signed 64-bit integer")]
    InvalidTimestamp(String),
    #[error("unexpected text after the timestamp")]
    TrailingText,
    #[error("{0}")]
    InvalidPoint(#[from] InvalidPoint),
}

/// The lines of one payload, as points or errors; blank and `#` comment
/// lines are skipped.
pub struct PayloadLines<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
    /// The point text of the line `next` returned last.
    last: &'a str,
    limits: Limits,
}

/// Splits a payload into lines and parses each; invalid UTF-8 rejects the
/// whole payload because no line boundary in it can be trusted.
pub fn parse_payload(payload: &[u8]) -> Result<PayloadLines<'_>, ParseError> {
    parse_payload_with(payload, Limits::default())
}

/// [`parse_payload`] with per-point `limits`: a point over them is refused
/// as soon as its first extra tag or field is seen, before the rest of its
/// line costs anything.
pub fn parse_payload_with(payload: &[u8], limits: Limits) -> Result<PayloadLines<'_>, ParseError> {
    match std::str::from_utf8(payload) {
        Ok(text) => Ok(PayloadLines {
            text,
            pos: 0,
            line: 0,
            last: "",
            limits,
        }),
        Err(e) => {
            let offset = e.valid_up_to();
            let line = 1 + payload[..offset].iter().filter(|&&b| b == b'\n').count();
            Err(ParseError {
                line,
                offset,
                kind: ParseErrorKind::InvalidUtf8,
            })
        }
    }
}

impl<'a> PayloadLines<'a> {
    /// The text of the point `next` returned last, without the blanks
    /// around it or a `\r`: for a valid point, line protocol that InfluxDB
    /// reads as exactly that point, so it can be forwarded as it came.
    pub fn last_text(&self) -> &'a str {
        self.last
    }
}

impl Iterator for PayloadLines<'_> {
    type Item = Result<Point, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pos < self.text.len() {
            let start = self.pos;
            let end = line_end(self.text, start);
            self.pos = end + 1;
            self.line += 1;
            let line = &self.text[start..end];
            if let Some((result, span)) = parse_spanned(line, start, self.line, self.limits) {
                self.last = &line[span];
                return Some(result);
            }
        }
        None
    }
}

/// Where the line starting at `start` ends: at the first newline that is
/// neither escaped by a backslash nor inside a quoted string field, as
/// InfluxDB 1.x and 2.x split a body into lines (and InfluxDB 3 too). A
/// line holding such a newline is then refused whole, since no point can
/// carry one, rather than read as two.
fn line_end(text: &str, start: usize) -> usize {
    let bytes = text.as_bytes();
    let Some(newline) = memchr(b'\n', &bytes[start..]).map(|i| start + i) else {
        return text.len();
    };
    // Most lines hold neither a backslash nor a quote before their first
    // newline: the first newline ends them.
    if !bytes[start..newline]
        .iter()
        .any(|&b| b == b'\\' || b == b'"')
    {
        return newline;
    }
    let (mut i, mut fields, mut quoted) = (start, false, false);
    // In the field set, a quote opens or closes a string only where a
    // value starts or goes on: after a key's `=` and before its `,`.
    let (mut equals, mut commas) = (0u32, 0u32);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if i + 1 < bytes.len() => {
                i += 2;
                continue;
            }
            b' ' if !quoted => fields = true,
            b'=' if fields && !quoted => equals += 1,
            b',' if fields && !quoted => commas += 1,
            b'"' if fields && equals > commas => quoted = !quoted,
            b'\n' if !quoted => return i,
            _ => {}
        }
        i += 1;
    }
    text.len()
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Parses one line (without its `\n`). `base` is the line's byte offset in
/// its payload and `line` its 1-based number, used only in errors. Returns
/// `None` for a blank or comment line.
pub fn parse_line(line: &str, base: usize, line_no: usize) -> Option<Result<Point, ParseError>> {
    parse_spanned(line, base, line_no, Limits::default()).map(|(result, _)| result)
}

/// [`parse_line`], with the byte range of the point's text in `line`.
fn parse_spanned(
    line: &str,
    base: usize,
    line_no: usize,
    limits: Limits,
) -> Option<(Result<Point, ParseError>, std::ops::Range<usize>)> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut c = Cursor {
        text: line,
        pos: 0,
        base,
        line: line_no,
        end: 0,
        limits,
    };
    c.skip_blanks();
    if c.at_end() || c.peek() == Some(b'#') {
        return None;
    }
    let start = c.pos;
    let result = c.point();
    let end = c.end.max(start);
    Some((result, start..end))
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    base: usize,
    line: usize,
    /// Where the last token of a point ended (before trailing blanks).
    end: usize,
    limits: Limits,
}

const MEASUREMENT_ESCAPES: &[u8] = b", ";
const KEY_ESCAPES: &[u8] = b",= ";

impl<'a> Cursor<'a> {
    fn point(&mut self) -> Result<Point, ParseError> {
        let start = self.pos;
        let measurement = self.escaped(b", ", MEASUREMENT_ESCAPES);
        if measurement.is_empty() {
            return Err(self.err(start, ParseErrorKind::MissingMeasurement));
        }
        let mut tags = Vec::new();
        while self.peek() == Some(b',') {
            self.pos += 1;
            let key_at = self.pos;
            let key = self.escaped(b",= ", KEY_ESCAPES);
            if key.is_empty() {
                return Err(self.err(key_at, ParseErrorKind::EmptyTagKey));
            }
            if self.peek() != Some(b'=') {
                return Err(self.err(self.pos, ParseErrorKind::TagWithoutValue(key)));
            }
            self.pos += 1;
            let value_at = self.pos;
            let value = self.escaped(b", ", KEY_ESCAPES);
            if value.is_empty() {
                return Err(self.err(value_at, ParseErrorKind::EmptyTagValue(key)));
            }
            if tags.len() == self.limits.max_tags {
                let e = InvalidPoint::TooManyTags(self.limits.max_tags);
                return Err(self.err(key_at, e.into()));
            }
            tags.push((key, value));
        }
        self.skip_blanks();
        if self.at_end() {
            return Err(self.err(self.pos, ParseErrorKind::NoFields));
        }
        let mut fields = Vec::new();
        loop {
            let key_at = self.pos;
            let key = self.escaped(b",= ", KEY_ESCAPES);
            if key.is_empty() {
                return Err(self.err(key_at, ParseErrorKind::EmptyFieldKey));
            }
            if self.peek() != Some(b'=') {
                return Err(self.err(self.pos, ParseErrorKind::FieldWithoutValue(key)));
            }
            self.pos += 1;
            if fields.len() == self.limits.max_fields {
                let e = InvalidPoint::TooManyFields(self.limits.max_fields);
                return Err(self.err(key_at, e.into()));
            }
            let value = self.field_value(&key)?;
            fields.push((key, value));
            if self.peek() == Some(b',') {
                self.pos += 1;
            } else {
                break;
            }
        }
        self.end = self.pos;
        self.skip_blanks();
        let timestamp = if self.at_end() {
            None
        } else {
            let at = self.pos;
            let token = self.until(b" ");
            match parse_signed(token) {
                Some(ts) => Some(ts),
                None => {
                    return Err(self.err(at, ParseErrorKind::InvalidTimestamp(token.to_owned())));
                }
            }
        };
        if timestamp.is_some() {
            self.end = self.pos;
        }
        self.skip_blanks();
        if !self.at_end() {
            return Err(self.err(self.pos, ParseErrorKind::TrailingText));
        }
        let point = Point {
            measurement,
            tags,
            fields,
            timestamp,
        };
        point
            .validate()
            .map_err(|e| self.err(start, ParseErrorKind::InvalidPoint(e)))?;
        Ok(point)
    }

    fn field_value(&mut self, key: &str) -> Result<FieldValue, ParseError> {
        let at = self.pos;
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let value = self.quoted(key, at)?;
            return match self.peek() {
                None | Some(b',' | b' ') => Ok(FieldValue::String(value)),
                Some(_) => Err(self.err(self.pos, ParseErrorKind::AfterString(key.to_owned()))),
            };
        }
        // Only a comma or a space ends a value: a tab is part of it (and
        // makes it invalid), as InfluxDB reads it.
        let token = self.until(b", ");
        classify(token).map_err(|kind| self.err(at, kind(key.to_owned(), token.to_owned())))
    }

    /// Reads a string field body after its opening quote, through the
    /// closing quote. Only `\"` and `\\` are escapes inside strings.
    fn quoted(&mut self, key: &str, opening: usize) -> Result<String, ParseError> {
        let bytes = self.text.as_bytes();
        let mut out = String::new();
        let mut seg = self.pos;
        while self.pos < bytes.len() {
            match bytes[self.pos] {
                b'\\' if matches!(bytes.get(self.pos + 1), Some(b'"' | b'\\')) => {
                    out.push_str(&self.text[seg..self.pos]);
                    seg = self.pos + 1;
                    self.pos += 2;
                }
                b'"' => {
                    out.push_str(&self.text[seg..self.pos]);
                    self.pos += 1;
                    return Ok(out);
                }
                _ => self.pos += 1,
            }
        }
        Err(self.err(opening, ParseErrorKind::UnterminatedString(key.to_owned())))
    }

    /// Reads up to (not including) the first unescaped byte of `stop`.
    /// A backslash escapes only the bytes in `escapable`; before anything
    /// else it is a literal backslash.
    // Inlined so that each call site's constant byte sets compile to plain
    // comparisons: this loop is most of the CPU a message costs.
    #[inline(always)]
    fn escaped(&mut self, stop: &[u8], escapable: &[u8]) -> String {
        let bytes = self.text.as_bytes();
        let mut out = String::new();
        let mut seg = self.pos;
        while self.pos < bytes.len() {
            let b = bytes[self.pos];
            if b == b'\\'
                && bytes
                    .get(self.pos + 1)
                    .is_some_and(|n| escapable.contains(n))
            {
                out.push_str(&self.text[seg..self.pos]);
                seg = self.pos + 1;
                self.pos += 2;
                continue;
            }
            if stop.contains(&b) {
                break;
            }
            self.pos += 1;
        }
        out.push_str(&self.text[seg..self.pos]);
        out
    }

    #[inline(always)]
    fn until(&mut self, stop: &[u8]) -> &'a str {
        let start = self.pos;
        let bytes = self.text.as_bytes();
        while self.pos < bytes.len() && !stop.contains(&bytes[self.pos]) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn skip_blanks(&mut self) {
        let bytes = self.text.as_bytes();
        while self.pos < bytes.len() && matches!(bytes[self.pos], b' ' | b'\t') {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn err(&self, at: usize, kind: ParseErrorKind) -> ParseError {
        ParseError {
            line: self.line,
            offset: self.base + at,
            kind,
        }
    }
}

type KindFor = fn(String, String) -> ParseErrorKind;

/// Classifies an unquoted field value. On error, returns how to build the
/// error from the field key and the token.
fn classify(token: &str) -> Result<FieldValue, KindFor> {
    match token {
        "" => return Err(|key, _| ParseErrorKind::EmptyFieldValue(key)),
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Boolean(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Boolean(false)),
        _ => {}
    }
    if let Some(digits) = token.strip_suffix('i') {
        if !is_integer_text(digits, true) {
            return Err(invalid_value);
        }
        return digits
            .parse::<i64>()
            .map(FieldValue::Integer)
            .map_err(|_| (|key, _| ParseErrorKind::IntegerOutOfRange(key)) as KindFor);
    }
    if let Some(digits) = token.strip_suffix('u') {
        if !is_integer_text(digits, false) {
            return Err(invalid_value);
        }
        return digits
            .parse::<u64>()
            .map(FieldValue::UInteger)
            .map_err(|_| (|key, _| ParseErrorKind::UnsignedOutOfRange(key)) as KindFor);
    }
    let unsigned = token.trim_start_matches(['+', '-']);
    if unsigned.eq_ignore_ascii_case("nan")
        || unsigned.eq_ignore_ascii_case("inf")
        || unsigned.eq_ignore_ascii_case("infinity")
    {
        return Err(|key, _| ParseErrorKind::NonFinite(key));
    }
    if !is_float_text(token) {
        return Err(invalid_value);
    }
    match token.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(FieldValue::Float(f)),
        // Overflow such as 1e999 parses to infinity.
        _ => Err(|key, _| ParseErrorKind::NonFinite(key)),
    }
}

fn invalid_value(field: String, value: String) -> ParseErrorKind {
    ParseErrorKind::InvalidFieldValue { field, value }
}

fn is_integer_text(text: &str, signed: bool) -> bool {
    let digits = if signed {
        text.strip_prefix('-').unwrap_or(text)
    } else {
        text
    };
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `-? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`, the float
/// syntax InfluxDB reads (no `+` before a number: its servers refuse one). Checked by hand because Rust's `f64::from_str`
/// also takes "inf", "nan" and "infinity".
fn is_float_text(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

fn parse_signed(token: &str) -> Option<i64> {
    if is_integer_text(token, true) {
        token.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_of_each_point_is_kept_without_its_blanks() {
        let payload = b"  m,t=a\\  v=1i 5 \r\n# note\n\tm v=\"x y\"  \nm v=2\n";
        let mut lines = parse_payload(payload).unwrap();
        let mut texts = Vec::new();
        while let Some(point) = lines.next() {
            point.unwrap();
            texts.push(lines.last_text());
        }
        assert_eq!(texts, ["m,t=a\\  v=1i 5", "m v=\"x y\"", "m v=2"]);
    }

    fn one(line: &str) -> Result<Point, ParseError> {
        let mut lines = parse_payload(line.as_bytes()).unwrap();
        let first = lines.next().expect("a point or an error");
        assert!(lines.next().is_none());
        first
    }

    fn kind(line: &str) -> (usize, ParseErrorKind) {
        let e = one(line).expect_err(line);
        (e.offset, e.kind)
    }

    #[test]
    fn parses_a_full_line() {
        let p = one("cpu\\ load,host=a\\,b,dc=x\\=y usage=0.5,n=-3i,u=4u,s=\"q\\\"\\\\z\",ok=T 17")
            .unwrap();
        assert_eq!(p.measurement, "cpu load");
        assert_eq!(
            p.tags,
            vec![("host".into(), "a,b".into()), ("dc".into(), "x=y".into())]
        );
        assert_eq!(
            p.fields,
            vec![
                ("usage".into(), FieldValue::Float(0.5)),
                ("n".into(), FieldValue::Integer(-3)),
                ("u".into(), FieldValue::UInteger(4)),
                ("s".into(), FieldValue::String("q\"\\z".into())),
                ("ok".into(), FieldValue::Boolean(true)),
            ]
        );
        assert_eq!(p.timestamp, Some(17));
    }

    #[test]
    fn accepts_every_boolean_and_float_form() {
        for b in ["t", "T", "true", "True", "TRUE"] {
            assert_eq!(
                one(&format!("m v={b}")).unwrap().fields[0].1,
                FieldValue::Boolean(true)
            );
        }
        for b in ["f", "F", "false", "False", "FALSE"] {
            assert_eq!(
                one(&format!("m v={b}")).unwrap().fields[0].1,
                FieldValue::Boolean(false)
            );
        }
        for (text, value) in [
            ("1", 1.0),
            ("1.5", 1.5),
            ("-1.2e+78", -1.2e78),
            (".5", 0.5),
            ("2.", 2.0),
            ("3E-2", 0.03),
        ] {
            assert_eq!(
                one(&format!("m v={text}")).unwrap().fields[0].1,
                FieldValue::Float(value),
                "{text}"
            );
        }
    }

    #[test]
    fn backslash_before_other_bytes_is_literal() {
        let p = one("m\\x,t\\a=v\\b f\\z=\"a\\nb\"").unwrap();
        assert_eq!(p.measurement, "m\\x");
        assert_eq!(p.tags[0], ("t\\a".into(), "v\\b".into()));
        assert_eq!(
            p.fields[0],
            ("f\\z".into(), FieldValue::String("a\\nb".into()))
        );
    }

    #[test]
    fn skips_blank_and_comment_lines_and_tolerates_crlf() {
        let text = "# header\r\n\r\n  \nm v=1 5\r\nm v=2 6\n";
        let points: Vec<_> = parse_payload(text.as_bytes())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[1].timestamp, Some(6));
    }

    #[test]
    fn offsets_count_from_the_payload_start() {
        let text = "m v=1\nm v=oops\n";
        let errors: Vec<_> = parse_payload(text.as_bytes())
            .unwrap()
            .filter_map(Result::err)
            .collect();
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].offset), (2, 10));
        assert_eq!(
            errors[0].to_string(),
            "line 2, byte 10: field \"v\" has invalid value \"oops\""
        );
    }

    #[test]
    fn rejects_each_invalid_form_with_its_reason() {
        use ParseErrorKind as K;
        let cases: Vec<(&str, usize, ParseErrorKind)> = vec![
            (",t=1 v=1", 0, K::MissingMeasurement),
            ("m  ", 3, K::NoFields),
            ("m", 1, K::NoFields),
            ("m,t=a", 5, K::NoFields),
            ("m v", 3, K::FieldWithoutValue("v".into())),
            ("m =1", 2, K::EmptyFieldKey),
            ("m v=", 4, K::EmptyFieldValue("v".into())),
            ("m v=1,", 6, K::EmptyFieldKey),
            ("m,t v=1", 3, K::TagWithoutValue("t".into())),
            ("m,=a v=1", 2, K::EmptyTagKey),
            ("m,t= v=1", 4, K::EmptyTagValue("t".into())),
            ("m v=NaN", 4, K::NonFinite("v".into())),
            ("m v=-Inf", 4, K::NonFinite("v".into())),
            ("m v=+inf", 4, K::NonFinite("v".into())),
            ("m v=1e999", 4, K::NonFinite("v".into())),
            (
                "m v=1.2.3",
                4,
                K::InvalidFieldValue {
                    field: "v".into(),
                    value: "1.2.3".into(),
                },
            ),
            (
                "m v=yes",
                4,
                K::InvalidFieldValue {
                    field: "v".into(),
                    value: "yes".into(),
                },
            ),
            (
                "m v=1.5i",
                4,
                K::InvalidFieldValue {
                    field: "v".into(),
                    value: "1.5i".into(),
                },
            ),
            (
                "m v=-3u",
                4,
                K::InvalidFieldValue {
                    field: "v".into(),
                    value: "-3u".into(),
                },
            ),
            (
                "m v=9223372036854775808i",
                4,
                K::IntegerOutOfRange("v".into()),
            ),
            (
                "m v=18446744073709551616u",
                4,
                K::UnsignedOutOfRange("v".into()),
            ),
            ("m v=\"open", 4, K::UnterminatedString("v".into())),
            ("m v=\"a\"b", 7, K::AfterString("v".into())),
            ("m v=1 12.5", 6, K::InvalidTimestamp("12.5".into())),
            (
                "m v=1 9223372036854775808",
                6,
                K::InvalidTimestamp("9223372036854775808".into()),
            ),
            ("m v=1 1 extra", 8, K::TrailingText),
            (
                "_m v=1",
                0,
                K::InvalidPoint(InvalidPoint::ReservedName("_m".into())),
            ),
            (
                "m,_t=a v=1",
                0,
                K::InvalidPoint(InvalidPoint::ReservedName("_t".into())),
            ),
            (
                "m _v=1",
                0,
                K::InvalidPoint(InvalidPoint::ReservedName("_v".into())),
            ),
            (
                "m,t=a,t=b v=1",
                0,
                K::InvalidPoint(InvalidPoint::DuplicateTag("t".into())),
            ),
        ];
        for (line, offset, expected) in cases {
            assert_eq!(kind(line), (offset, expected), "{line:?}");
        }
    }

    #[test]
    fn rejects_oversized_series_keys_and_strings() {
        let long_tag = format!("m,t={} v=1", "x".repeat(70_000));
        assert!(matches!(
            kind(&long_tag).1,
            ParseErrorKind::InvalidPoint(InvalidPoint::SeriesKeyTooLong(_))
        ));
        let long_string = format!("m v=\"{}\"", "x".repeat((1 << 20) + 1));
        assert_eq!(
            kind(&long_string).1,
            ParseErrorKind::InvalidPoint(InvalidPoint::StringTooLong("v".into()))
        );
    }

    #[test]
    fn rejects_invalid_utf8_at_its_offset() {
        let e = parse_payload(b"m v=1\nm v=\"\xff\"").err().unwrap();
        assert_eq!(
            (e.line, e.offset, e.kind),
            (2, 11, ParseErrorKind::InvalidUtf8)
        );
    }

    /// Where our reading differed from what InfluxDB servers apply (found
    /// by the differential fuzz target, docs/fuzzing.md), ours now follows
    /// the servers.
    #[test]
    fn reads_lines_as_influxdb_servers_do() {
        // Refused by 1.x/2.x and by InfluxDB 3's parser.
        for line in [
            "m v=+1",
            "m v=+1.5",
            "m v=1\t5",
            "m v=1\t",
            "m v=1 5\t",
            "m v=\"x\"\t5",
            "\0m v=1",
            "m,t=a\0 v=1",
            "m v\0=1",
            // Read by 1.x as an escaped backslash and a separator, by ours
            // as a backslash and an escaped comma: refused by both.
            "m,t=a\\\\,b v=1",
            "m\\\\ v=1",
            // 1.x reads `\"` in a measurement or field key as a quote.
            "m\\\"x v=1",
            "m k\\\"=1",
            // A field twice with two types: 1.x refuses the whole write.
            "m g=1,g=\"x\"",
        ] {
            assert!(one(line).is_err(), "{line:?} must be refused");
        }
        // A CR inside a name is part of it, as the servers read it.
        assert_eq!(one("m\r v=1").unwrap().measurement, "m\r");
        assert_eq!(one("m,t=a\rb v=1\r").unwrap().tags[0].1, "a\rb");
        // Blanks after the space that ends the field set are skipped.
        assert_eq!(one("m v=1 \t5").unwrap().timestamp, Some(5));
        // A repeated field of one type is the servers' to resolve (the
        // last wins).
        let p = one("m v=1,v=2").unwrap();
        assert_eq!(p.fields.len(), 2);
        // In a tag, every server keeps `\"` as it is.
        assert_eq!(one("m,t=a\\\"b v=1").unwrap().tags[0].1, "a\\\"b");
        // A newline after a backslash, or inside a quoted string, does not
        // end the line: such a line is refused whole (no escape writes a
        // newline), and its second half is never read as a point.
        for payload in [
            &b"m,t=a\\\nb v=1\nok v=2\n"[..],
            b"m s=\"a\nb\" 1\nok v=2\n",
        ] {
            let results: Vec<_> = parse_payload(payload).unwrap().collect();
            assert_eq!(results.len(), 2, "{:?}", String::from_utf8_lossy(payload));
            assert!(results[0].is_err());
            assert_eq!(results[1].as_ref().unwrap().measurement, "ok");
        }
    }
}
