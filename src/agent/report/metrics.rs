//! The optional Prometheus text endpoint (`[metrics] listen`, loopback
//! only, off by default): `GET /metrics` answers the pipeline's counters,
//! the spool's size, the lease's seconds left, the clock's state and
//! offset, and the write latency histogram in the text exposition format.
//!
//! It owns only the rendering; `crate::lifecycle::page` serves it (the
//! gateway build carries no HTTP server library for one read-only page).
//! It never exposes a credential or an identity secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::agent::report::status::{Report, Reporter, Sources};
use crate::agent::stats::Stats;
use crate::shutdown::Shutdown;

/// The page being written.
struct Page(String);

impl Page {
    fn metric(&mut self, name: &str, kind: &str, help: &str, value: String) {
        self.0.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
}

pub fn render(reporter: &Reporter) -> String {
    let s = reporter.sources();
    let mut page = Page(String::new());
    counters(&mut page, s);
    runway(&mut page, &reporter.report(), &s.spool.stats());
    clock(&mut page, s);
    histograms(&mut page, &s.stats);
    page.0
}

/// The pipeline's counters and gauges.
fn counters(page: &mut Page, s: &Sources) {
    let st = &s.stats;
    let spool = s.spool.stats();
    page.metric(
        "leasegate_points_in_total",
        "counter",
        "Points stored in the spool and acknowledged to the broker.",
        Stats::get(&st.points_in).to_string(),
    );
    page.metric(
        "leasegate_points_written_total",
        "counter",
        "Points InfluxDB accepted.",
        Stats::get(&st.points_written).to_string(),
    );
    page.metric(
        "leasegate_spool_failing",
        "gauge",
        "1 while the spool cannot store points (a read-only, full or failing disk, or no room left by spool.max_bytes or spool.min_free with nothing to drop): nothing is acked meanwhile.",
        u8::from(spool.fault.is_some()).to_string(),
    );
    page.metric(
        "leasegate_points_dropped_total",
        "counter",
        "Points dropped by the spool's overflow policy.",
        spool.dropped_points.to_string(),
    );
    page.metric(
        "leasegate_points_dead_lettered_total",
        "counter",
        "Invalid points and points InfluxDB refused, kept in the dead-letter file.",
        (Stats::get(&st.points_invalid) + Stats::get(&st.points_refused)).to_string(),
    );
    page.metric(
        "leasegate_spool_bytes",
        "gauge",
        "Bytes in the spool.",
        spool.bytes.to_string(),
    );
    page.metric(
        "leasegate_spool_points",
        "gauge",
        "Points in the spool not yet read by the writer.",
        spool.points_unread.to_string(),
    );
    page.metric(
        "leasegate_mqtt_connected",
        "gauge",
        "1 while the broker session is up.",
        u8::from(st.mqtt_connected.load(std::sync::atomic::Ordering::Relaxed)).to_string(),
    );
    page.metric(
        "leasegate_points_beyond_retention_total",
        "counter",
        "Points InfluxDB dropped as older than its retention policy keeps (dead-lettered).",
        Stats::get(&st.points_beyond_retention).to_string(),
    );
    page.metric(
        "leasegate_points_time_corrected_total",
        "counter",
        "Points stamped on receipt whose stamps a trusted time (the authority's, or a synchronised kernel's) corrected.",
        Stats::get(&st.points_time_corrected).to_string(),
    );
    page.metric(
        "leasegate_points_time_unverified_total",
        "counter",
        "Points stamped on receipt sent as stamped because no trusted time came in clock.max_wait (or they were of an earlier boot).",
        Stats::get(&st.points_time_unverified).to_string(),
    );
    page.metric(
        "leasegate_points_stamped_total",
        "counter",
        "Points that came without a timestamp and got the time their message arrived.",
        Stats::get(&st.points_stamped).to_string(),
    );
}

/// How long the spool holds out without InfluxDB, and how long the
/// oldest point in it has waited.
fn runway(page: &mut Page, r: &Report, spool: &crate::agent::store::spool::SpoolStats) {
    page.metric(
        "leasegate_spool_packed_points_total",
        "counter",
        "Points whose spool segments were packed (compressed) while they waited.",
        spool.packed_points.to_string(),
    );
    page.metric(
        "leasegate_spool_pack_cpu_seconds_total",
        "counter",
        "CPU time the spool's packer used.",
        format!("{:.6}", spool.pack_cpu.as_secs_f64()),
    );
    page.metric(
        "leasegate_spool_runway_seconds",
        "gauge",
        "Seconds until the spool is full if nothing is written, at the rate points came over the last minute, packed as the last pack was (+Inf while none come).",
        r.spool_runway_secs
            .map_or("+Inf".to_owned(), |s| s.to_string()),
    );
    page.metric(
        "leasegate_spool_oldest_point_age_seconds",
        "gauge",
        "Seconds since the oldest point still in the spool arrived (0 when it is empty).",
        r.oldest_point_age_secs.unwrap_or(0).to_string(),
    );
    page.metric(
        "leasegate_spool_packed_segments",
        "gauge",
        "Spool segments packed (compressed) while they wait for InfluxDB.",
        r.spool_packed_segments.to_string(),
    );
}

/// The kernel's clock state, and with leases the lease's time left and
/// the offset to the authority's clock.
fn clock(page: &mut Page, s: &Sources) {
    if let Some(kernel) = crate::clock::kernel() {
        page.metric(
            "leasegate_clock_synchronized",
            "gauge",
            "1 while the kernel says an NTP (or like) daemon keeps its clock in sync.",
            u8::from(kernel.synchronized).to_string(),
        );
        page.metric(
            "leasegate_clock_max_error_seconds",
            "gauge",
            "The kernel's bound on its clock's error.",
            (kernel.max_error_us as f64 / 1e6).to_string(),
        );
    }
    if let Some(view) = &s.view {
        let view = view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let left = view
            .lease_expires_ms
            .map(|t| ((t - crate::now_ms()).max(0) as f64 / 1000.0).to_string())
            .unwrap_or_else(|| "0".into());
        page.metric(
            "leasegate_lease_seconds_left",
            "gauge",
            "Seconds until the current lease expires (0 without one).",
            left,
        );
        if let (Some(ms), Some(err), Some(at)) = (
            view.clock_offset_ms,
            view.clock_offset_error_ms,
            view.clock_measured_ms,
        ) {
            page.metric(
                "leasegate_clock_offset_seconds",
                "gauge",
                "The authority's clock less this gateway's, at the last lease.",
                (ms / 1e3).to_string(),
            );
            page.metric(
                "leasegate_clock_offset_error_seconds",
                "gauge",
                "The bound on that offset's error: half the lease request's round trip.",
                (err / 1e3).to_string(),
            );
            page.metric(
                "leasegate_clock_offset_measured_timestamp_seconds",
                "gauge",
                "When the offset was measured, by this gateway's clock.",
                (at as f64 / 1e3).to_string(),
            );
        }
    }
}

/// The write latency histogram and the ack delay summary.
fn histograms(page: &mut Page, st: &Stats) {
    let (buckets, count, sum) = st.write_latency.snapshot();
    page.0.push_str(
        "# HELP leasegate_write_duration_seconds Time InfluxDB took for accepted writes.\n\
         # TYPE leasegate_write_duration_seconds histogram\n",
    );
    for (bound, n) in buckets {
        page.0.push_str(&format!(
            "leasegate_write_duration_seconds_bucket{{le=\"{bound}\"}} {n}\n"
        ));
    }
    page.0.push_str(&format!(
        "leasegate_write_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
         leasegate_write_duration_seconds_sum {sum}\n\
         leasegate_write_duration_seconds_count {count}\n"
    ));
    page.0.push_str(
        "# HELP leasegate_ack_delay_seconds Time from a QoS 1 message's arrival to its ack (group commit and fsync).\n\
         # TYPE leasegate_ack_delay_seconds summary\n",
    );
    for q in [0.5, 0.99] {
        if let Some(d) = st.ack_delay.quantile(q) {
            page.0.push_str(&format!(
                "leasegate_ack_delay_seconds{{quantile=\"{q}\"}} {}\n",
                d.as_secs_f64()
            ));
        }
    }
    page.0.push_str(&format!(
        "leasegate_ack_delay_seconds_sum {}\nleasegate_ack_delay_seconds_count {}\n",
        st.ack_delay.sum_secs(),
        st.ack_delay.count()
    ));
}

/// Serves `/metrics` on `listen` until `shutdown`, on its own thread,
/// which sleeps in poll(2) until a client or the shutdown comes.
pub fn serve(
    listen: SocketAddr,
    reporter: Arc<Reporter>,
    shutdown: Shutdown,
) -> std::io::Result<JoinHandle<()>> {
    crate::lifecycle::page::serve("metrics", listen, "/metrics", shutdown, move || {
        render(&reporter)
    })
}
