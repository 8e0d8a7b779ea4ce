//! JSON payloads (`format = "json"`), with topic templates, static tags,
//! the subscription's measurement and every precision.
//!
//! Input: see `common::payload::case` (a flags byte, an optional template
//! and topic, then the payload).
//!
//! Properties: `decode` never panics; a JSON message is all or nothing
//! (one error, or one point per object); every point is valid, carries the
//! static and template tags, and round-trips through our writer and
//! parser; an integer `time` is the timestamp in the subscription's
//! precision, and a structured object's `measurement` is the point's.

#![no_main]

use leasegate::config::Format;
use leasegate::payload;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

mod common;

fuzz_target!(|data: &[u8]| common::timed(data, check));

fn check(data: &[u8]) {
    let Some(case) = common::payload::case(data, Format::Json) else {
        return;
    };
    let results = payload::decode(&case.decoding, &case.topic, case.payload);
    if results.iter().any(Result::is_err) {
        assert_eq!(results.len(), 1, "a JSON message is refused whole");
        let _ = results[0].as_ref().err().map(ToString::to_string);
        return;
    }
    let points: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    for p in &points {
        common::payload::check_point(&case, p);
    }
    // A reference reading of the JSON for what can be said simply.
    let doc: Value = serde_json::from_slice(case.payload).expect("decode accepted invalid JSON");
    let objects: Vec<&Value> = match &doc {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    assert_eq!(objects.len(), points.len(), "one point per object");
    let nanos = case.decoding.precision.nanos();
    for (obj, p) in objects.iter().zip(&points) {
        let obj = obj.as_object().expect("decode accepted a non-object");
        if let Some(t) = obj.get("time").and_then(Value::as_i64) {
            assert_eq!(
                p.timestamp,
                Some(t * nanos),
                "time {t} read as {:?}",
                p.timestamp
            );
        }
        if obj.contains_key("fields") {
            if let Some(Value::String(m)) = obj.get("measurement") {
                assert_eq!(&p.measurement, m);
            }
            let fields = obj["fields"].as_object().expect("fields is an object");
            assert_eq!(fields.len(), p.fields.len(), "one field per member");
        } else {
            let members = obj.keys().filter(|k| *k != "time").count();
            assert_eq!(members, p.fields.len(), "one field per member");
        }
    }
}
