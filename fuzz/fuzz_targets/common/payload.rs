//! What the two payload targets share: reading a subscription's decoding
//! settings from the input's first bytes, and the checks every decoded
//! point must pass.

use leasegate::config::{Format, Precision};
use leasegate::lineproto::{self, Point};
use leasegate::payload::{Decoding, TopicTemplate};

/// The static tags a subscription may set, when the flags ask for them.
pub const STATIC_TAGS: [(&str, &str); 2] = [("site", "north"), ("device", "d1")];

/// A decoding, the topic and the payload, read from the input.
pub struct Case<'a> {
    pub decoding: Decoding,
    pub topic: String,
    pub payload: &'a [u8],
    /// The tag names the template captures, when it parsed.
    pub template_tags: Vec<String>,
}

/// Input layout: one flags byte, then (when bit 2 is set) a topic
/// template and a topic, each ended by a NUL byte, then the payload.
///
/// Flags: bits 0-1 precision (ns, us, ms, s); bit 2 template; bit 3 the
/// static tags; bit 4 the subscription's measurement `sub`.
pub fn case(data: &[u8], format: Format) -> Option<Case<'_>> {
    let (&flags, rest) = data.split_first()?;
    let precision = match flags & 3 {
        0 => Precision::Nanoseconds,
        1 => Precision::Microseconds,
        2 => Precision::Milliseconds,
        _ => Precision::Seconds,
    };
    let (mut template, mut topic, mut payload) = (None, String::new(), rest);
    let mut template_tags = Vec::new();
    if flags & 4 != 0 {
        let (t, rest) = super::split_at_byte(rest, 0);
        let (topic_bytes, rest) = super::split_at_byte(rest, 0);
        let text = String::from_utf8_lossy(t);
        topic = String::from_utf8_lossy(topic_bytes).into_owned();
        payload = rest;
        template = check_template(&text);
        if template.is_some() {
            template_tags = text
                .split('/')
                .filter_map(|l| l.strip_prefix('{')?.strip_suffix('}'))
                .filter(|n| *n != "measurement")
                .map(str::to_owned)
                .collect();
        }
    }
    let tags = if flags & 8 != 0 {
        STATIC_TAGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    } else {
        Vec::new()
    };
    Some(Case {
        decoding: Decoding {
            format,
            precision,
            template,
            tags,
            measurement: (flags & 16 != 0).then(|| "sub".to_owned()),
            limits: Default::default(),
        },
        topic,
        payload,
        template_tags,
    })
}

/// Parses a template and checks what can be said of it without its
/// private levels.
fn check_template(text: &str) -> Option<TopicTemplate> {
    let t = TopicTemplate::parse(text).ok()?;
    let levels: Vec<&str> = text.split('/').collect();
    assert_eq!(
        t.has_measurement(),
        levels.contains(&"{measurement}"),
        "has_measurement of {text:?}"
    );
    for level in &levels {
        let placeholder = level.starts_with('{') && level.ends_with('}') && level.len() >= 2;
        if !placeholder && *level != "+" {
            assert!(
                !level.contains(['{', '}', '#', '+']),
                "template {text:?} accepted the level {level:?}"
            );
        }
    }
    Some(t)
}

/// Every decoded point is valid, carries the static tags and the tags the
/// template captured, and the line our writer makes of it reads back as
/// the same point.
pub fn check_point(case: &Case<'_>, point: &Point) {
    point
        .validate()
        .unwrap_or_else(|e| panic!("decode gave a point that fails validate: {e}: {point:?}"));
    for (k, _) in &case.decoding.tags {
        assert!(
            point.tags.iter().any(|(pk, _)| pk == k),
            "static tag {k:?} missing from {point:?}"
        );
    }
    for k in &case.template_tags {
        assert!(
            point.tags.iter().any(|(pk, _)| pk == k),
            "template tag {k:?} missing from {point:?}"
        );
    }
    let mut line = String::new();
    lineproto::write_line(&mut line, point).expect("a valid point is written");
    let body = line.strip_suffix('\n').expect("a line ends with a newline");
    match lineproto::parse_line(body, 0, 1) {
        Some(Ok(again)) => assert_eq!(&again, point, "written as {body:?}"),
        other => panic!("written line {body:?} does not parse back: {other:?}"),
    }
}
