//! Turning points into line protocol text.
//!
//! Escaping follows `docs/influxdb-api.md` exactly: measurement escapes comma and
//! space; tag keys, tag values and field keys escape comma, `=` and space;
//! string field values escape `"` and `\`. This module must never emit a
//! line that the parser in this crate would read back differently, which is
//! why it refuses points that fail [`Point::validate`].

use std::fmt::Write as _;

use super::{FieldValue, InvalidPoint, Point};

/// Appends one point as a line (with a trailing `\n`) to `out`.
///
/// A point without a timestamp is written without one, so InfluxDB stamps it
/// with its own clock; the pipeline stamps points at receipt before this.
pub fn write_line(out: &mut String, point: &Point) -> Result<(), InvalidPoint> {
    point.validate()?;
    write_point(out, point);
    out.push('\n');
    Ok(())
}

/// Appends one already validated point, without a newline.
pub fn write_point(out: &mut String, point: &Point) {
    escape_into(out, &point.measurement, &[',', ' ']);
    for (key, value) in &point.tags {
        out.push(',');
        escape_into(out, key, &[',', '=', ' ']);
        out.push('=');
        escape_into(out, value, &[',', '=', ' ']);
    }
    out.push(' ');
    for (i, (key, value)) in point.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape_into(out, key, &[',', '=', ' ']);
        out.push('=');
        write_field_value(out, value);
    }
    if let Some(ts) = point.timestamp {
        out.push(' ');
        // Writing to a String cannot fail.
        let _ = write!(out, "{ts}");
    }
}

pub(super) fn write_field_value(out: &mut String, value: &FieldValue) {
    match value {
        // Debug formatting is the shortest text that parses back to the same
        // f64 and uses an exponent for very large or small values, which
        // keeps lines short ("1e300" rather than 301 digits).
        FieldValue::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        FieldValue::Integer(i) => {
            let _ = write!(out, "{i}i");
        }
        FieldValue::UInteger(u) => {
            let _ = write!(out, "{u}u");
        }
        FieldValue::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        FieldValue::String(s) => {
            out.push('"');
            escape_into(out, s, &['"', '\\']);
            out.push('"');
        }
    }
}

fn escape_into(out: &mut String, text: &str, special: &[char]) {
    for c in text.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point() -> Point {
        Point {
            measurement: "we ather,x".into(),
            tags: vec![("lo c=".into(), "a,b c=d".into())],
            fields: vec![
                ("t emp".into(), FieldValue::Float(21.5)),
                ("n".into(), FieldValue::Integer(-3)),
                ("u".into(), FieldValue::UInteger(7)),
                ("s".into(), FieldValue::String(r#"say "hi" \o/"#.into())),
                ("ok".into(), FieldValue::Boolean(true)),
            ],
            timestamp: Some(1_700_000_000_000_000_000),
        }
    }

    #[test]
    fn escapes_each_part_as_the_facts_sheet_says() {
        let mut out = String::new();
        write_line(&mut out, &point()).unwrap();
        assert_eq!(
            out,
            "we\\ ather\\,x,lo\\ c\\==a\\,b\\ c\\=d t\\ emp=21.5,n=-3i,u=7u,\
             s=\"say \\\"hi\\\" \\\\o/\",ok=true 1700000000000000000\n"
        );
    }

    #[test]
    fn floats_use_short_forms() {
        let mut out = String::new();
        for f in [1.0, 1e300, -2.5e-7] {
            write_field_value(&mut out, &FieldValue::Float(f));
            out.push(' ');
        }
        assert_eq!(out, "1.0 1e300 -2.5e-7 ");
    }

    #[test]
    fn refuses_points_it_cannot_represent() {
        let mut p = point();
        p.fields[0].1 = FieldValue::Float(f64::NAN);
        assert_eq!(
            write_line(&mut String::new(), &p),
            Err(InvalidPoint::NonFinite("t emp".into()))
        );
        let mut p = point();
        p.tags[0].1 = "ends\\".into();
        assert!(matches!(
            write_line(&mut String::new(), &p),
            Err(InvalidPoint::TrailingBackslash(_))
        ));
        let mut p = point();
        p.fields.clear();
        assert_eq!(
            write_line(&mut String::new(), &p),
            Err(InvalidPoint::NoFields)
        );
    }
}
