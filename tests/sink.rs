//! The sink alone against the in-test InfluxDB 2.x and 3.x servers: a
//! credential goes in, a batch goes out, and the answer comes back
//! classified. No lease, no writer, no daemon.

use std::time::Duration;

use leasegate::agent::Sink;
use leasegate::agent::credential::{Credential, Origin};
use leasegate::agent::output::refusal::Refusal;
use leasegate::agent::output::sink::{self, WriteError};
use leasegate::config::{Api, Influx};
use leasegate::secret::Secret;
use support::fake_influx::{FakeInflux, Flavor};

fn influx(api: Api, url: &str, token: &str) -> Influx {
    Influx {
        api,
        url: url.into(),
        database: Some("sensors".into()),
        retention_policy: None,
        org: Some("my-org".into()),
        bucket: Some("my-bucket".into()),
        username: None,
        password: None,
        token: Some(Secret::new(token)),
        secret_file: None,
        gzip: true,
        timeout: Duration::from_secs(5),
    }
}

fn credential(api: Api, url: &str, token: &str) -> Credential {
    Credential::for_influx(&influx(api, url, token), Origin::Static { file: None })
}

const BATCH: &[u8] = b"m,s=a v=1i 1\nm,s=a v=2i 2\nm,s=b v=3i 3\n";

#[test]
fn a_batch_goes_to_2x_with_or_without_gzip_and_a_refusal_says_why() {
    let fake = FakeInflux::start(Flavor::V2, "tok", "my-org", "my-bucket", 1 << 20);
    let good = credential(Api::V2, &fake.url(), "tok");
    for gzip in [true, false] {
        let sink = Sink::new(gzip, Duration::from_secs(5));
        sink.write(&good, BATCH).unwrap();
    }
    assert_eq!(fake.with(|s| s.lines.len()), 6);

    // A credential InfluxDB does not know: 401, its message, and nothing
    // about the content.
    let sink = Sink::new(true, Duration::from_secs(5));
    let e = sink
        .write(&credential(Api::V2, &fake.url(), "wrong"), BATCH)
        .unwrap_err();
    assert_eq!(e.status(), 401);
    assert!(e.to_string().contains("unauthorized access"), "{e}");
    assert_eq!(e.refusal(Api::V2, BATCH), Refusal::NotContent);
    assert!(!e.to_string().contains("wrong") && !format!("{e:?}").contains("wrong"));

    // A malformed line: the whole batch refused, the line named.
    fake.with(|s| s.poison = Some("poison".into()));
    let batch = b"m,s=a v=4i 4\nm,s=a poison=1i 5\n";
    let e = sink.write(&good, batch).unwrap_err();
    assert_eq!(
        e.refusal(Api::V2, batch),
        Refusal::Lines {
            bad: vec![(1, "invalid field format".into())],
            rest_written: false
        }
    );
    // 429 with Retry-After: read as the wait it asks for.
    fake.with(|s| s.scripted.push_back((429, Some(7))));
    match sink.write(&good, BATCH).unwrap_err() {
        WriteError::Status {
            status: 429,
            retry_after,
            ..
        } => assert_eq!(retry_after, Some(Duration::from_secs(7))),
        other => panic!("{other}"),
    }
}

#[test]
fn a_3x_partial_write_comes_back_as_the_refused_line_and_the_rest_written() {
    let fake = FakeInflux::start(Flavor::V3, "apiv3_tok", "", "sensors", 1 << 20);
    let good = credential(Api::V3, &fake.url(), "apiv3_tok");
    let sink = Sink::new(false, Duration::from_secs(5));
    sink.write(&good, b"m,s=a v=1i 1\n").unwrap();
    let batch = b"m,s=a v=2i 2\nm,s=a v=\"text\" 3\nm,s=a v=4i 4\n";
    let e = sink.write(&good, batch).unwrap_err();
    match e.refusal(Api::V3, batch) {
        Refusal::Lines { bad, rest_written } => {
            assert!(rest_written);
            assert_eq!(bad.len(), 1);
            assert_eq!(bad[0].0, 1);
            assert!(bad[0].1.contains("invalid column type"), "{}", bad[0].1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.with(|s| s.lines.len()), 3);
    // A server that takes connections is reachable; a closed port is not.
    assert!(sink::reachable(&good, Duration::from_secs(1)));
    let closed = credential(
        Api::V3,
        &format!("http://127.0.0.1:{}", support::free_port()),
        "x",
    );
    assert!(!sink::reachable(&closed, Duration::from_millis(500)));
    let e = sink.write(&closed, batch).unwrap_err();
    assert!(matches!(e, WriteError::Transport { .. }), "{e}");
}
