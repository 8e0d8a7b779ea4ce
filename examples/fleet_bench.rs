//! The fleet benchmark (README "Benchmarks", figures in BENCHMARKS.md):
//! simulated gateways against real `leasegate-authority` processes, in
//! two set-ups: one replica on SQLite, and two replicas on one real
//! PostgreSQL (Debian's package, started here) with the load split
//! between them. The backend is the in-test InfluxDB 2.x token endpoint
//! (tests/support/fake_influx.rs), fast enough that the authority is what
//! is measured; then real InfluxDB 1.x at a smaller scale, where the
//! backend's own time dominates.
//!
//! Each simulated gateway enrolls (one ticket good for all of them), takes
//! its first lease, and then renews as a gateway does: a new lease, then
//! the old one revoked, paced so that every gateway renews once per
//! [`RENEW_EVERY`]. It prints, per set-up:
//! - enrollments/s and first leases/s, all gateways as fast as the
//!   clients go;
//! - p50 and p99 of a lease request during the paced renewals, and how far
//!   the clients fell behind the pace;
//! - the authority processes' RSS and CPU per request over that phase;
//! - what the backend alone takes per token (p50, p99), measured apart, to
//!   take away from the lease figures;
//! - with the in-test backend, how long after its expiry each of
//!   [`LAG_LEASES`] short leases had its credential deleted (p50, p99, max):
//!   the tight figure behind the authority's 2 s promise, which the tests
//!   assert with a margin for a loaded machine.
//!
//! All requests come from 127.0.0.1, so the run raises the per-address
//! enrollment limits (`[enrollment]`) and keeps each replica's clients
//! under its per-address connection cap. `--quick` runs 500 gateways
//! for 10 s (a smoke run, not figures to quote); `--gateways N` and
//! `--seconds S` set the scale, `--only sqlite|postgres|v1` one set-up. Every wait is bounded; every process it
//! starts is stopped by PID.

#[path = "common/procfs.rs"]
mod procfs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::authority::{AuthorityServer, role, v1_backend, v2_backend};
use support::fake_influx::{FakeInflux, Flavor};
use support::postgres::Postgres;
use support::{ADMIN_PASSWORD, ADMIN_USER, Influx};

const ORG: &str = "0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-token-for-bench";
/// How often each gateway renews: a lease of about 90 s renewed at 2/3.
const RENEW_EVERY: Duration = Duration::from_secs(60);
/// Client threads per replica: under the 32 connections one address may
/// hold at a replica.
const CLIENTS_PER_REPLICA: usize = 16;
/// Leases of 2 to 6 s taken at once for the deletion-lag phase.
const LAG_LEASES: usize = 200;

struct Args {
    gateways: usize,
    seconds: u64,
    small_gateways: usize,
    /// `--only sqlite|postgres|v1`: just that set-up (v1: both on 1.x).
    only: Option<String>,
}

impl Args {
    fn runs(&self, setup: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == setup)
    }
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let quick = argv.iter().any(|a| a == "--quick");
    let value = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let gateways = value("--gateways").unwrap_or(if quick { 500 } else { 10_000 }) as usize;
    Args {
        gateways,
        seconds: value("--seconds").unwrap_or(if quick { 10 } else { 60 }),
        small_gateways: (gateways / 10).max(50),
        only: argv
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| argv.get(i + 1))
            .cloned(),
    }
}

/// One simulated gateway: its credential and its current lease.
struct Gateway {
    credential: String,
    lease: Option<String>,
}

/// An HTTP client as a gateway's: keep-alive, JSON, bounded.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let result = match method {
        "POST" => {
            let mut r = agent.post(url).header("Content-Type", "application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body.unwrap_or("{}"))
        }
        _ => {
            let mut r = agent.delete(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
    };
    match result {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

/// Sorted latencies; the q-quantile in ms.
fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs `work(i, agent)` for i in 0..n on `CLIENTS_PER_REPLICA` threads
/// per URL (request i goes to `urls[i % len]`); the wall time and each
/// call's latency.
fn fan_out(
    n: usize,
    urls: &[String],
    work: &(dyn Fn(usize, &str, &ureq::Agent) -> bool + Sync),
) -> (Duration, Vec<Duration>, usize) {
    // Replica r takes the indexes i = r, r + len, r + 2 len, ...
    let next: Vec<AtomicUsize> = urls.iter().map(|_| AtomicUsize::new(0)).collect();
    let latencies = Mutex::new(Vec::with_capacity(n));
    let failures = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for (r, url) in urls.iter().enumerate() {
            for _ in 0..CLIENTS_PER_REPLICA {
                let (next, latencies, failures) = (&next[r], &latencies, &failures);
                s.spawn(move || {
                    let agent = agent();
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst) * urls.len() + r;
                        if i >= n {
                            break;
                        }
                        let t = Instant::now();
                        if !work(i, url, &agent) {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                        mine.push(t.elapsed());
                    }
                    latencies.lock().unwrap().extend(mine);
                });
            }
        }
    });
    let mut all = latencies.into_inner().unwrap();
    all.sort();
    (started.elapsed(), all, failures.into_inner())
}

struct Procs(Vec<u32>);

impl Procs {
    fn cpu(&self) -> Duration {
        self.0.iter().map(|p| procfs::cpu_time(*p)).sum()
    }

    fn rss_kib(&self) -> Vec<u64> {
        self.0
            .iter()
            .map(|p| procfs::field(&format!("/proc/{p}/status"), "VmRSS:"))
            .collect()
    }
}

/// One set-up's run: enroll, first leases, paced renewals. `db` is the
/// PostgreSQL server's PID, whose CPU is reported beside the
/// authority's.
fn run(
    label: &str,
    replicas: &[&AuthorityServer],
    db: Option<u32>,
    gateways: usize,
    seconds: u64,
    deletions: Option<&FakeInflux>,
) {
    let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();
    let procs = Procs(replicas.iter().map(|r| r.pid()).collect());
    let ticket = leasegate::wire::ticket::Ticket::parse(&replicas[0].ticket(
        "iot-sensor",
        &["--usage-count", &gateways.to_string(), "--expires-in", "2h"],
    ))
    .unwrap();
    let secret = ticket.secret.expose().to_owned();
    let fleet: Vec<Mutex<Gateway>> = (0..gateways)
        .map(|_| {
            Mutex::new(Gateway {
                credential: String::new(),
                lease: None,
            })
        })
        .collect();

    let (took, lat, failed) = fan_out(gateways, &urls, &|i, url, agent| {
        let body = serde_json::json!({"ticket_secret": secret, "identity_name": format!("gw-{i}")});
        let (status, answer) = send(
            agent,
            "POST",
            &format!("{url}/v1/enroll"),
            None,
            Some(&body.to_string()),
        );
        if status != 201 {
            eprintln!("enroll gw-{i}: {status} {answer}");
            return false;
        }
        fleet[i].lock().unwrap().credential = answer["credential"].as_str().unwrap().to_owned();
        true
    });
    println!(
        "{label}: {gateways} enrollments in {:.1} s = {:.0}/s (p50 {:.1} ms, p99 {:.1} ms, {failed} failed)",
        took.as_secs_f64(),
        gateways as f64 / took.as_secs_f64(),
        quantile(&lat, 0.5),
        quantile(&lat, 0.99)
    );

    let (took, lat, failed) = fan_out(gateways, &urls, &|i, url, agent| {
        renew(&fleet, i, url, agent, 90, |_| ()).is_some()
    });
    println!(
        "{label}: {gateways} first leases in {:.1} s = {:.0}/s (p50 {:.1} ms, p99 {:.1} ms, {failed} failed)",
        took.as_secs_f64(),
        gateways as f64 / took.as_secs_f64(),
        quantile(&lat, 0.5),
        quantile(&lat, 0.99)
    );

    // Paced renewals: request k is due at k / rate; a client late for it
    // sends at once (and the lateness is reported).
    let rate = gateways as f64 / RENEW_EVERY.as_secs_f64();
    let total = (rate * seconds as f64) as usize;
    let cpu_before = procs.cpu();
    let db_before = db.map(procfs::tree_cpu_time).unwrap_or_default();
    let own_before = procfs::cpu_time(std::process::id());
    let machine_before = procfs::machine_ticks();
    let latest = Mutex::new(Duration::ZERO);
    let lease_latencies = Mutex::new(Vec::with_capacity(total));
    let t0 = Instant::now();
    let (took, _, failed) = fan_out(total, &urls, &|k, url, agent| {
        let due = t0 + Duration::from_secs_f64(k as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            let mut l = latest.lock().unwrap();
            *l = (*l).max(now - due);
        }
        renew(&fleet, k % gateways, url, agent, 90, |took| {
            lease_latencies.lock().unwrap().push(took)
        })
        .is_some()
    });
    let cpu = procs.cpu() - cpu_before;
    let db_cpu = db.map(procfs::tree_cpu_time).unwrap_or_default() - db_before;
    let own_cpu = procfs::cpu_time(std::process::id()) - own_before;
    let machine = procfs::machine_ticks();
    let busy = (machine.0 - machine_before.0) as f64 / (machine.1 - machine_before.1).max(1) as f64;
    let mut lat = lease_latencies.into_inner().unwrap();
    lat.sort();
    let requests = total * 2;
    println!(
        "{label}: renewals of {gateways} gateways every {} s ({rate:.0} leases/s + as many revokes) for {:.0} s: lease p50 {:.1} ms, p99 {:.1} ms, {failed} failed; clients at most {:.0} ms behind the pace",
        RENEW_EVERY.as_secs(),
        took.as_secs_f64(),
        quantile(&lat, 0.5),
        quantile(&lat, 0.99),
        latest.into_inner().unwrap().as_secs_f64() * 1000.0
    );
    println!(
        "{label}: authority CPU {:.0} us per request ({requests} requests, {:.2} s CPU over {} process(es)); RSS {:?} KiB",
        cpu.as_secs_f64() * 1e6 / requests as f64,
        cpu.as_secs_f64(),
        procs.0.len(),
        procs.rss_kib()
    );
    println!(
        "{label}: meanwhile the machine was {:.0}% busy ({} cores); CPU per request of PostgreSQL {:.0} us, of the simulated gateways and the in-test backend {:.0} us",
        busy * 100.0,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        db_cpu.as_secs_f64() * 1e6 / requests as f64,
        own_cpu.as_secs_f64() * 1e6 / requests as f64
    );
    fleet_page(label, replicas[0], gateways);
    if let Some(fake) = deletions {
        deletion_lag(label, &urls, &fleet, fake, gateways.min(LAG_LEASES));
    }
}

/// Gateway `i` renews as a gateway does: a new lease of `ttl_secs`
/// (`took` gets the request's latency), then the one it held given back,
/// which is not part of that latency. None (said) when the lease is
/// refused.
fn renew(
    fleet: &[Mutex<Gateway>],
    i: usize,
    url: &str,
    agent: &ureq::Agent,
    ttl_secs: u64,
    took: impl FnOnce(Duration),
) -> Option<Value> {
    let credential = fleet[i].lock().unwrap().credential.clone();
    let t = Instant::now();
    let (status, answer) = send(
        agent,
        "POST",
        &format!("{url}/v1/leases"),
        Some(&credential),
        Some(&format!(
            "{{\"ttl_secs\": {ttl_secs}, \"health\": {REPORT}}}"
        )),
    );
    took(t.elapsed());
    if status != 201 {
        eprintln!("lease gw-{i}: {status} {answer}");
        return None;
    }
    let new = answer["id"].as_str().unwrap().to_owned();
    let old = fleet[i].lock().unwrap().lease.replace(new);
    if let Some(old) = old {
        let (s, a) = send(
            agent,
            "DELETE",
            &format!("{url}/v1/leases/{old}"),
            Some(&credential),
            None,
        );
        if s != 200 {
            eprintln!("revoke {old}: {s} {a}");
        }
    }
    Some(answer)
}

/// How long after its expiry each lease's credential was deleted, from
/// the in-test backend's record of each DELETE (so no watcher's polling is
/// in the figure). `n` gateways renew with a lease of 2 to 6 s, giving
/// their long one back, as the paced phase does.
fn deletion_lag(
    label: &str,
    urls: &[String],
    fleet: &[Mutex<Gateway>],
    fake: &FakeInflux,
    n: usize,
) {
    let expiries = Mutex::new(HashMap::<String, i64>::new());
    let (_, _, failed) = fan_out(n, urls, &|i, url, agent| {
        let Some(answer) = renew(fleet, i, url, agent, 2 + i as u64 % 5, |_| ()) else {
            return false;
        };
        let id = answer["id"].as_str().unwrap().to_owned();
        expiries
            .lock()
            .unwrap()
            .insert(id, answer["expires_ms"].as_i64().unwrap());
        true
    });
    let expiries = expiries.into_inner().unwrap();
    // The backend tags each credential `leasegate:<deployment>:<lease>:...`.
    let lags = || -> Vec<i64> {
        fake.with(|st| {
            st.deleted_authorizations
                .iter()
                .filter_map(|(a, at)| {
                    let expires = expiries.get(a.description.split(':').nth(2)?)?;
                    let at = at.duration_since(std::time::UNIX_EPOCH).ok()?;
                    Some(at.as_millis() as i64 - expires)
                })
                .collect()
        })
    };
    let last = expiries.values().copied().max().unwrap_or(0);
    let now = leasegate::now_ms();
    let deadline = Instant::now()
        + Duration::from_millis((last - now).max(0) as u64)
        + Duration::from_secs(15);
    while lags().len() < expiries.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut lags = lags();
    lags.sort_unstable();
    let at = |q: f64| {
        lags.get(((lags.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(-1)
    };
    println!(
        "{label}: {} leases of 2-6 s deleted after expiry: p50 {} ms, p99 {} ms, max {} ms, none early: {} (promise 2,000 ms); {} not deleted within 15 s, {failed} failed",
        expiries.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        lags.first().is_none_or(|&l| l >= 0),
        expiries.len() - lags.len(),
    );
}

/// What the fake token endpoint alone takes per token (create + delete),
/// straight from a client: the share of a lease request that is the
/// backend's, not the authority's.
fn backend_alone(fake: &FakeInflux, n: usize) {
    let agent = agent();
    let bucket = fake.with(|s| s.bucket_id.clone());
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let body = serde_json::json!({
            "orgID": ORG,
            "description": "bench",
            "status": "active",
            "permissions": [{"action": "write", "resource": {"type": "buckets", "id": bucket, "orgID": ORG}}],
        });
        let t = Instant::now();
        let r = agent
            .post(format!("{}/api/v2/authorizations", fake.url()))
            .header("Authorization", &format!("Token {ADMIN_TOKEN}"))
            .header("Content-Type", "application/json")
            .send(body.to_string());
        lat.push(t.elapsed());
        if let Ok(mut r) = r {
            assert_eq!(r.status().as_u16(), 201, "the backend refused the token");
            let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default())
                .unwrap_or(Value::Null);
            if let Some(id) = v["id"].as_str() {
                let _ = agent
                    .delete(format!("{}/api/v2/authorizations/{id}", fake.url()))
                    .header("Authorization", &format!("Token {ADMIN_TOKEN}"))
                    .call();
            }
        }
    }
    lat.sort();
    println!(
        "backend alone (in-test 2.x endpoint): create authorization p50 {:.2} ms, p99 {:.2} ms",
        quantile(&lat, 0.5),
        quantile(&lat, 0.99)
    );
}

/// The head every replica's configuration shares.
const LIMITS: &str =
    "[enrollment]\nper_address_burst = 1000000\nconcurrency = 64\n[web]\nenabled = true\n";

/// The health report each lease request carries, as a gateway's (about
/// 560 bytes).
const REPORT: &str = r#"{"version":"0.1.0","target":"aarch64-linux","uptime_secs":86400,"points_in_per_sec":100.0,"points_out_per_sec":99.8,"spool_bytes":40960,"points_waiting":12,"oldest_waiting_secs":1,"runway_hours":96.5,"dead_letters":0,"last_write":{"outcome":"ok","status":204,"ago_secs":0},"clock_synchronized":true,"clock_offset_ms":-3.2,"disk_free_bytes":12000000000,"mqtt_connected":true,"spool_error":null,"retry_within_secs":null}"#;

/// The web page's fleet with every gateway: logs in over HTTP as an
/// admin, then times `GET /ui/` (the store read, the states, the HTML)
/// and weighs the page.
fn fleet_page(label: &str, replica: &AuthorityServer, gateways: usize) {
    let password = "a benchmark's passphrase";
    let added = replica.cli_with_stdin(
        &["admin", "add", "bench"],
        format!("{password}\n").as_bytes(),
    );
    assert!(added.status.success(), "{}", added.stderr);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let url = replica.url();
    let (_, session) = replica.web_login("bench", password);
    let cookie = format!("lg_session={}", session.expect("logged in"));
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let mut page = agent
            .get(format!("{url}/ui/"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        let body = page
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap();
        times.push(t.elapsed());
        bytes = body.len();
    }
    times.sort();
    println!(
        "{label}: the fleet page with {gateways} gateways: {bytes} bytes ({:.0} per gateway), served in p50 {:.1} ms, p99 {:.1} ms (20 loads)",
        bytes as f64 / gateways as f64,
        quantile(&times, 0.5),
        quantile(&times, 0.99)
    );
}

fn body_v2(fake: &FakeInflux) -> String {
    format!(
        "{LIMITS}{}{}",
        v2_backend("main", &fake.url(), ORG, ADMIN_TOKEN),
        role("sensor", "iot-sensor", "main", "bucket", "sensors")
    )
}

fn body_v1(influx: &Influx) -> String {
    format!(
        "{LIMITS}{}{}",
        v1_backend("main", &influx.url(), ADMIN_USER, ADMIN_PASSWORD),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    )
}

fn main() {
    let a = args();
    println!(
        "fleet benchmark: {} gateways, renewing every {} s, {} s of renewals; {} client threads per replica",
        a.gateways,
        RENEW_EVERY.as_secs(),
        a.seconds,
        CLIENTS_PER_REPLICA
    );
    let fake = FakeInflux::start(Flavor::V2, ADMIN_TOKEN, ORG, "sensors", 1 << 20);
    backend_alone(&fake, 500);
    if a.runs("sqlite") {
        sqlite_setup(
            "sqlite",
            &body_v2(&fake),
            a.gateways,
            a.seconds,
            Some(&fake),
        );
    }
    let pg = Arc::new(Postgres::start());
    if a.runs("postgres") {
        postgres_setup(
            "postgres",
            &pg,
            &body_v2(&fake),
            a.gateways,
            a.seconds,
            Some(&fake),
        );
    }
    if !a.runs("v1") {
        return;
    }
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let body = body_v1(&influx);
    sqlite_setup(
        "influxdb 1.x, sqlite",
        &body,
        a.small_gateways,
        a.seconds,
        None,
    );
    postgres_setup(
        "influxdb 1.x, postgres",
        &pg,
        &body,
        a.small_gateways,
        a.seconds,
        None,
    );
}

/// One replica on SQLite in its state dir.
fn sqlite_setup(
    label: &str,
    body: &str,
    gateways: usize,
    seconds: u64,
    deletions: Option<&FakeInflux>,
) {
    let one = AuthorityServer::start_on(body, false, "warn", None);
    run(
        &format!("{label}, 1 replica"),
        &[&one],
        None,
        gateways,
        seconds,
        deletions,
    );
}

/// Two replicas on a new database of `pg`.
fn postgres_setup(
    label: &str,
    pg: &Arc<Postgres>,
    body: &str,
    gateways: usize,
    seconds: u64,
    deletions: Option<&FakeInflux>,
) {
    let first = AuthorityServer::start_on(body, false, "warn", Some((pg.clone(), pg.database())));
    let second = first.replica(body);
    run(
        &format!("{label}, 2 replicas"),
        &[&first, &second],
        Some(pg.pid()),
        gateways,
        seconds,
        deletions,
    );
}
