//! A QoS 1 publisher at a steady rate, on a thread of its own, that counts
//! what the broker accepted (its PUBACKs): the points a gateway must not
//! lose are those, not those handed to a client library.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

pub struct Paced {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Paced {
    /// Publishes message `i` (from `message(i)`, a topic and a payload)
    /// at `rate` a second from i = `from`, until stopped.
    pub fn start(
        port: u16,
        client_id: &str,
        rate: u64,
        from: u64,
        message: impl Fn(u64) -> (String, Vec<u8>) + Send + 'static,
    ) -> Paced {
        let (stop, sent, accepted): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
            Default::default();
        let (s, n, a) = (stop.clone(), sent.clone(), accepted.clone());
        let client_id = client_id.to_owned();
        let thread = std::thread::Builder::new()
            .name("test-paced".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(publish_paced(port, client_id, rate, from, message, s, n, a));
            })
            .unwrap();
        Paced {
            stop,
            sent,
            accepted,
            thread: Some(thread),
        }
    }

    /// Messages handed to the connection so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Messages the broker acknowledged so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops publishing and waits (at most 30 s) for the broker's acks of
    /// what was sent; returns how many it accepted.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.accepted()
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn publish_paced(
    port: u16,
    client_id: String,
    rate: u64,
    from: u64,
    message: impl Fn(u64) -> (String, Vec<u8>),
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_inflight(1000).set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let acks = accepted.clone();
    let driver = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Incoming(Packet::PubAck(_))) {
                acks.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // 100 ticks a second, each publishing its share.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while i < due {
            let (topic, payload) = message(from + i);
            if client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
            i += 1;
            sent.store(i, Ordering::SeqCst);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.load(Ordering::SeqCst) < i && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.disconnect().await.ok();
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
}
