//! The whole pipeline in this process, without a daemon and without the
//! MQTT intake: the test hands messages to the appender as the intake
//! would, takes the acks it releases, and reads what the in-test InfluxDB
//! got. Spool, decoder, dead-letter file, credential, writer and sink are
//! the real ones.

use std::sync::Arc;
use std::time::Duration;

use leasegate::agent::{AckToken, Feed, Pipeline, Received};
use leasegate::config::Config;
use leasegate::shutdown::Shutdown;
use rumqttc::{Publish, QoS};
use support::fake_influx::{FakeInflux, Flavor};
use support::wait_until;

fn config(dir: &std::path::Path, influx: &FakeInflux) -> Config {
    let text = format!(
        r#"state_dir = "{}/state"
[mqtt]
url = "mqtt://127.0.0.1:1"
client_id = "in-process"
[[mqtt.subscribe]]
topic = "sensors/#"
[influxdb]
api = "v2"
url = "{}"
org = "org"
bucket = "bucket"
token = "tok"
[batch]
flush_interval = "50ms"
"#,
        dir.display(),
        influx.url()
    );
    Config::from_toml(&dir.join("leasegate.toml"), &text).unwrap()
}

fn message(pkid: u16, payload: String) -> Received {
    let mut publish = Publish::new("sensors/a", QoS::AtLeastOnce, payload.into_bytes());
    publish.pkid = pkid;
    Received {
        publish,
        ack: Some(AckToken {
            connection: 1,
            pkid,
        }),
        at: std::time::Instant::now(),
        arrived: std::time::Instant::now(),
        budget: None,
    }
}

#[test]
fn messages_handed_over_are_acked_once_spooled_and_written_exactly_once() {
    let influx = FakeInflux::start(Flavor::V2, "tok", "org", "bucket", 1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &influx);
    let shutdown = Shutdown::new();
    let (ended_tx, ended) = std::sync::mpsc::channel();
    let (pipeline, feed) = Pipeline::start(
        &config,
        &shutdown,
        Arc::new(move |name| {
            let _ = ended_tx.send(name);
        }),
    )
    .unwrap();
    let Feed {
        deliveries,
        mut acks,
        ..
    } = feed;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    // 100 messages of three points each, and one the decoder refuses.
    for pkid in 1..=100u16 {
        let lines: Vec<String> = (0..3)
            .map(|j| {
                let seq = u64::from(pkid) * 3 + j;
                format!("p,s=s{j} seq={seq}i {}", 1_700_000_000_000_000_000u64 + seq)
            })
            .collect();
        deliveries
            .blocking_send(vec![message(pkid, lines.join("\n"))])
            .unwrap();
    }
    deliveries
        .blocking_send(vec![message(101, "not line protocol".into())])
        .unwrap();

    // Every ack comes back, in order, the refused message's too (it is in
    // the dead-letter file before its ack).
    rt.block_on(async {
        for pkid in 1..=101u16 {
            let token = tokio::time::timeout(Duration::from_secs(20), acks.recv())
                .await
                .expect("an ack within 20 s")
                .expect("the appender is running");
            assert_eq!(
                token,
                AckToken {
                    connection: 1,
                    pkid
                }
            );
        }
    });
    assert!(
        wait_until(Duration::from_secs(20), || influx.with(|s| s.lines.len())
            >= 300),
        "{} of 300 written",
        influx.with(|s| s.lines.len())
    );
    let dead = std::fs::read_to_string(dir.path().join("state/dead-letter.jsonl")).unwrap();
    assert!(dead.contains("not line protocol"), "{dead}");

    // Shutdown: the appender ends when the intake's end goes away, the
    // writer and the spool's packer at the shutdown; each says so.
    drop(deliveries);
    shutdown.trigger();
    let mut seen: Vec<&str> = (0..pipeline.threads.len())
        .map(|_| {
            ended
                .recv_timeout(Duration::from_secs(10))
                .expect("a thread ended")
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, ["appender", "spool-packer", "writer"]);
    for (_, thread) in pipeline.threads {
        thread.join().unwrap();
    }
    let mut seqs: Vec<u64> = influx.with(|s| {
        s.lines
            .iter()
            .map(|l| {
                l.split("seq=")
                    .nth(1)
                    .unwrap()
                    .split('i')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    });
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (3..303).collect::<Vec<u64>>(),
        "each point exactly once"
    );
    assert_eq!(pipeline.spool.stats().points_unread, 0);
}

#[test]
fn an_interval_fsync_comes_while_the_writer_waits_for_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    // Leased writing with no ticket: the writer waits for a credential
    // that does not come, and the spool syncs every 200 ms.
    let text = format!(
        r#"state_dir = "{}/state"
[mqtt]
url = "mqtt://127.0.0.1:1"
client_id = "in-process-leased"
[[mqtt.subscribe]]
topic = "sensors/#"
[spool]
fsync = "interval"
fsync_interval = "200ms"
[batch]
flush_interval = "50ms"
"#,
        dir.path().display()
    );
    let config = Config::from_toml(&dir.path().join("leasegate.toml"), &text).unwrap();
    let shutdown = Shutdown::new();
    let (pipeline, feed) = Pipeline::start(&config, &shutdown, Arc::new(|_| {})).unwrap();
    let Feed {
        deliveries,
        mut acks,
        ..
    } = feed;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // A first message gets the writer holding a batch; the next ones are
    // acked while it waits.
    for pkid in 1..=20u16 {
        deliveries
            .blocking_send(vec![message(pkid, format!("p seq={pkid}i {pkid}"))])
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), acks.recv())
                .await
                .expect("an ack")
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    // Acked means on disk within about one interval, however long the
    // writer waits.
    assert!(
        wait_until(Duration::from_secs(2), || !pipeline.spool.stats().unsynced),
        "acked points left unsynced while the writer waits for a lease"
    );
    drop(deliveries);
    shutdown.trigger();
    for (_, thread) in pipeline.threads {
        thread.join().unwrap();
    }
}
