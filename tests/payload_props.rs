//! Property tests for the payload decoders: no input makes them panic, and
//! whatever they accept is a point InfluxDB can take (it validates and
//! writes as line protocol that parses back equal).

use leasegate::config::{Format, Precision};
use leasegate::lineproto::{parse_payload, write_line};
use leasegate::payload::{Decoding, TopicTemplate, decode};
use proptest::prelude::*;

fn decoding(format: Format) -> Decoding {
    Decoding {
        format,
        precision: Precision::Milliseconds,
        template: Some(TopicTemplate::parse("s/{site}/{measurement}").unwrap()),
        tags: vec![("gw".into(), "g1".into())],
        measurement: Some("m".into()),
        limits: Default::default(),
    }
}

/// JSON-ish text: the decoder must survive near misses as well as noise.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        proptest::collection::vec(
            proptest::sample::select(
                br#"{}[]:," "measurement" "tags" "fields" "time" "t" 1 -2.5e3 true null "x\"y" 17000000 "2023-11-14T22:13:20Z" _ "#
                    .split(|b| *b == b' ')
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            ),
            0..30,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn check(format: Format, topic: &str, payload: &[u8]) -> Result<(), TestCaseError> {
    for point in decode(&decoding(format), topic, payload)
        .into_iter()
        .flatten()
    {
        let mut text = String::new();
        write_line(&mut text, &point)
            .map_err(|e| TestCaseError::fail(format!("accepted an invalid point: {e}")))?;
        let back: Vec<_> = parse_payload(text.as_bytes()).unwrap().collect();
        prop_assert_eq!(back, vec![Ok(point)]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn json_decoding_never_panics_and_accepts_only_valid_points(payload in jsonish(), site in "[a-z_]{0,3}") {
        check(Format::Json, &format!("s/{site}/env"), &payload)?;
    }

    #[test]
    fn value_decoding_never_panics_and_accepts_only_valid_points(
        payload in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..20),
            "[-+0-9.eEiunaNIfty\" tT]{0,12}".prop_map(String::into_bytes),
        ],
        measurement in "[a-z#_\t ]{0,4}",
    ) {
        check(Format::Value, &format!("s/x/{measurement}"), &payload)?;
    }
}
