//! Property tests for line protocol: whatever the writer emits parses back
//! to the same point, and the parser survives any bytes.

use leasegate::lineproto::{FieldValue, Point, parse_payload, write_line};
use proptest::prelude::*;

/// Text that exercises every escape: the special bytes of each part, a
/// literal backslash, a tab, a quote and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => proptest::char::range('a', 'z'),
            1 => proptest::sample::select(vec![' ', ',', '=', '\\', '"', '\t', '#', '_', 'é', '😀', '0']),
        ],
        1..12,
    )
    .prop_map(|chars| chars.into_iter().collect::<String>())
    .prop_filter("not representable", |s| {
        !s.starts_with('_')
            && !s.ends_with('\\')
            && !s
                .as_bytes()
                .windows(2)
                .any(|w| w[0] == b'\\' && matches!(w[1], b'\\' | b',' | b'=' | b' ' | b'"'))
    })
}

fn measurement() -> impl Strategy<Value = String> {
    text().prop_filter("reads as comment or blank", |s| !s.starts_with(['#', '\t']))
}

fn field_key() -> impl Strategy<Value = String> {
    text().prop_filter("reads as blank", |s| !s.starts_with('\t'))
}

fn field_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(FieldValue::Float),
        any::<i64>().prop_map(FieldValue::Integer),
        any::<u64>().prop_map(FieldValue::UInteger),
        any::<bool>().prop_map(FieldValue::Boolean),
        "[^\n]{0,40}".prop_map(FieldValue::String),
    ]
}

fn point() -> impl Strategy<Value = Point> {
    (
        measurement(),
        proptest::collection::btree_map(text(), text(), 0..4),
        proptest::collection::btree_map(field_key(), field_value(), 1..5),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(measurement, tags, fields, timestamp)| Point {
            measurement,
            tags: tags.into_iter().collect(),
            fields: fields.into_iter().collect(),
            timestamp,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn written_points_parse_back_equal(points in proptest::collection::vec(point(), 1..4)) {
        let mut text = String::new();
        for p in &points {
            write_line(&mut text, p).unwrap();
        }
        let parsed: Vec<Point> = parse_payload(text.as_bytes())
            .unwrap()
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(format!("{e} in {text:?}")))?;
        prop_assert_eq!(parsed, points);
    }

    #[test]
    fn parser_never_panics_and_accepted_lines_are_stable(bytes in proptest::collection::vec(
        prop_oneof![
            3 => proptest::sample::select(b"m v=1,t\\ \"\n=.-ei#u9".to_vec()),
            1 => any::<u8>(),
        ],
        0..64,
    )) {
        if let Ok(mut lines) = parse_payload(&bytes) {
            while let Some(result) = lines.next() {
                let Ok(point) = result else { continue };
                let mut again = String::new();
                write_line(&mut again, &point).unwrap();
                let reparsed: Vec<_> = parse_payload(again.as_bytes()).unwrap().collect();
                prop_assert_eq!(reparsed, vec![Ok(point.clone())]);
                // The daemon forwards a valid line's own text: it must read
                // as the same point, even with a timestamp added after it.
                let kept = lines.last_text();
                let reparsed: Vec<_> = parse_payload(kept.as_bytes()).unwrap().collect();
                prop_assert_eq!(reparsed, vec![Ok(point.clone())]);
                if point.timestamp.is_none() {
                    let stamped = format!("{kept} 42");
                    let reparsed: Vec<_> = parse_payload(stamped.as_bytes()).unwrap().collect();
                    let expected = Point { timestamp: Some(42), ..point };
                    prop_assert_eq!(reparsed, vec![Ok(expected)]);
                }
            }
        }
    }
}
