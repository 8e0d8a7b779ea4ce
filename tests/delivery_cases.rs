//! Delivery cases beside the main path, against real Mosquitto and real
//! InfluxDB 1.x: a shared subscription split between two gateways (each
//! point taken by exactly one), QoS 0 messages (nothing to ack, still
//! forwarded), and a disk that fills up under the spool (acks stop, the
//! daemon keeps running, and once InfluxDB drains the spool every point
//! the broker held arrives).

use std::time::Duration;

use support::{
    Daemon, Influx, Mosquitto, final_counter, publish_all, static_config, wait_until, write_secret,
};

fn messages(from: u64, to: u64) -> Vec<(String, Vec<u8>)> {
    (from..to)
        .map(|i| {
            (
                format!("sensors/{}", i % 7),
                format!(
                    "cases,sensor=s{} seq={i}i {}",
                    i % 7,
                    1_700_000_000_000_000_000u64 + i
                )
                .into_bytes(),
            )
        })
        .collect()
}

/// The daemon config of the harness, with the subscription's filter and
/// the state directory replaced.
fn config(broker: &Mosquitto, influx: &Influx, client_id: &str, dir: &std::path::Path) -> String {
    influx.create_writer("sensors", "writer", "writer-pw");
    let pw = write_secret(dir, "influx.password", "writer-pw\n");
    static_config(broker, influx, client_id, &pw)
}

#[test]
fn a_shared_subscription_gives_each_point_to_exactly_one_gateway() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let mut daemons: Vec<Daemon> = ["gw-share-a", "gw-share-b"]
        .into_iter()
        .map(|id| {
            let dir = tempfile::tempdir().unwrap();
            let text = config(&broker, &influx, id, dir.path()).replace(
                "topic = \"sensors/#\"",
                "topic = \"$share/gateways/sensors/#\"",
            );
            Daemon::start_in(dir, &text)
        })
        .collect();
    for d in &daemons {
        assert!(
            d.wait_for_log(
                "subscribed to \"$share/gateways/sensors/#\"",
                1,
                Duration::from_secs(20)
            ),
            "{}",
            d.log()
        );
    }
    const N: u64 = 10_000;
    publish_all(
        broker.port,
        "pub-share",
        messages(0, N),
        Duration::from_secs(60),
    );
    assert!(
        wait_until(Duration::from_secs(60), || influx
            .count("sensors", "cases", "seq")
            == N),
        "{} of {N}",
        influx.count("sensors", "cases", "seq")
    );
    let mut taken = Vec::new();
    for d in &mut daemons {
        let status = d.terminate(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "{status:?}\n{}",
            d.log()
        );
        taken.push(final_counter(&d.log(), "messages in"));
    }
    // InfluxDB would merge a point written twice; the daemons' own counts
    // show that none was.
    assert_eq!(taken.iter().sum::<u64>(), N, "{taken:?}");
    assert!(
        taken.iter().all(|&t| t > 0),
        "one gateway took all: {taken:?}"
    );
}

#[test]
fn qos_0_messages_are_forwarded_without_acks() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let dir = tempfile::tempdir().unwrap();
    let text = config(&broker, &influx, "gw-qos0", dir.path());
    let mut daemon = Daemon::start_in(dir, &text);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));

    const N: u64 = 1000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, QoS};
        let options = MqttOptions::new("pub-qos0", "127.0.0.1", broker.port);
        let (client, mut eventloop) = AsyncClient::new(options, 2000);
        for (topic, payload) in messages(0, N) {
            client
                .publish(topic, QoS::AtMostOnce, false, payload)
                .await
                .unwrap();
        }
        client.disconnect().await.unwrap();
        // The publishes go out before the disconnect, in order.
        let sent = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(sent, Ok(true));
    });
    influx.assert_arrives("cases", N, Duration::from_secs(30), &daemon);
    daemon.stop_cleanly();
    assert_eq!(final_counter(&daemon.log(), "messages in"), N);
}

#[test]
fn a_full_disk_stops_acks_and_every_point_arrives_once_there_is_room() {
    let broker = Mosquitto::start();
    let mut influx = Influx::start();
    let dir = tempfile::tempdir().unwrap();
    // The spool may grow to 64 MiB, but its disk holds 1 MiB.
    let text = config(&broker, &influx, "gw-full", dir.path()).replace(
        "state_dir = \"{dir}/state\"",
        "state_dir = \"{dir}/small/state\"",
    ) + "[spool]\nmax_bytes = \"64MiB\"\n# The full disk itself, not the floor before it (tests/card.rs).\nmin_free = 0\n";
    let mut daemon = Daemon::start_on_small_disk(dir, &text, 1 << 20);
    assert!(
        daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    // InfluxDB is down, so the spool grows until the disk is full.
    influx.stop();
    const N: u64 = 40_000;
    publish_all(
        broker.port,
        "pub-full",
        messages(0, N),
        Duration::from_secs(60),
    );
    assert!(
        daemon.wait_for_log("No space left on device", 1, Duration::from_secs(60)),
        "{}",
        daemon.log()
    );
    assert!(daemon.log().contains("not acking"), "{}", daemon.log());
    std::thread::sleep(Duration::from_secs(2));
    assert!(daemon.is_running(), "{}", daemon.log());

    // Room again: the spool drains, the held messages come, all arrive.
    influx.restart();
    influx.assert_arrives("cases", N, Duration::from_secs(120), &daemon);
    daemon.stop_cleanly();
    let log = daemon.log();
    assert_eq!(final_counter(&log, "dropped by the spool"), 0, "{log}");
}

/// Each message its own spool record (two do not fit in one), so that the
/// disk fills up in the middle of a group of messages stored under one
/// commit: what the group had appended before must become readable, or its
/// segment could never be freed and the spool would stay full for ever.
#[test]
fn a_disk_that_fills_in_the_middle_of_a_group_frees_up_again() {
    let broker = Mosquitto::start();
    let mut influx = Influx::start();
    let dir = tempfile::tempdir().unwrap();
    let text = config(&broker, &influx, "gw-full-group", dir.path()).replace(
        "state_dir = \"{dir}/state\"",
        "state_dir = \"{dir}/small/state\"",
    ) + "[spool]\nmax_bytes = \"64MiB\"\n# The full disk itself, not the floor before it (tests/card.rs).\nmin_free = 0\n";
    let mut daemon = Daemon::start_on_small_disk(dir, &text, 1 << 20);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
    influx.stop();
    const N: u64 = 300;
    let pad = "x".repeat(10_000);
    let messages: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            let line = format!(
                "cases,sensor=s{} seq={i}i,pad=\"{pad}\" {}",
                i % 7,
                1_700_000_000_000_000_000u64 + i
            );
            (format!("sensors/{}", i % 7), line.into_bytes())
        })
        .collect();
    publish_all(
        broker.port,
        "pub-full-group",
        messages,
        Duration::from_secs(60),
    );
    assert!(
        daemon.wait_for_log("No space left on device", 1, Duration::from_secs(60)),
        "{}",
        daemon.log()
    );
    influx.restart();
    influx.assert_arrives("cases", N, Duration::from_secs(90), &daemon);
    daemon.stop_cleanly();
    assert_eq!(final_counter(&daemon.log(), "dropped by the spool"), 0);
}

#[test]
fn the_daemon_says_when_the_broker_dropped_messages_it_could_not_queue() {
    // Mosquitto's default queue limit, and $SYS updates every second.
    let broker = Mosquitto::start_with("", |_| {
        "max_queued_messages 100\nsys_interval 1\n".to_owned()
    });
    let influx = Influx::start();
    let dir = tempfile::tempdir().unwrap();
    let text = config(&broker, &influx, "gw-drops", dir.path());
    let mut daemon = Daemon::start_in(dir, &text);
    assert!(daemon.wait_for_log("subscribed to", 1, Duration::from_secs(20)));
    assert!(daemon.terminate(Duration::from_secs(10)).is_some());
    // While the daemon is away the broker keeps 100 and drops the rest.
    publish_all(
        broker.port,
        "pub-drops",
        messages(0, 500),
        Duration::from_secs(30),
    );
    daemon.restart();
    assert!(
        daemon.wait_for_log("the MQTT broker", 1, Duration::from_secs(20)),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        log.contains("dropped messages since it started") || log.contains("more messages"),
        "{log}"
    );
    assert!(log.contains("raise the limit"), "{log}");
    // What the broker kept still arrives.
    assert!(
        wait_until(Duration::from_secs(30), || influx
            .count("sensors", "cases", "seq")
            >= 100),
        "{}",
        daemon.log()
    );
    daemon.stop_cleanly();
}
