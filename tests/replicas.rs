//! Several `leasegate-authority` replicas on one PostgreSQL store, end to
//! end: real authority processes, real PostgreSQL (Debian's `postgresql`,
//! started here on a free loopback port) and real InfluxDB 1.x.
//!
//! What replicas must add up to: one ticket redeemed once however many
//! replicas are asked at once; every credential deleted on time by
//! whichever replica is alive, also when one dies mid-work; and
//! deployments sharing an InfluxDB each cleaning up only their own.
//! Times are wall-clock milliseconds, the authority's clock and ours.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use leasegate::now_ms;
use serde_json::Value;
use support::authority::{AuthorityServer, v1_sensor_body};
use support::postgres::Postgres;
use support::{Influx, wait_until};

/// The first replica of a deployment on a new database of `pg`.
fn first_replica(pg: &Arc<Postgres>, body: &str) -> AuthorityServer {
    AuthorityServer::start_on(body, false, "info", Some((pg.clone(), pg.database())))
}

fn ticket_secret(line: &str) -> String {
    leasegate::wire::ticket::Ticket::parse(line)
        .unwrap()
        .secret
        .expose()
        .to_owned()
}

/// The user name of a v1 lease's `user:password` secret.
fn lease_user(lease: &Value) -> String {
    let secret = lease["secret"].as_str().unwrap();
    secret.split(':').next().unwrap().to_owned()
}

#[test]
fn fifty_redemptions_over_two_replicas_give_exactly_one_identity() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let pg = Arc::new(Postgres::start());
    // All 50 come from 127.0.0.1, more than an address's default burst.
    let body = v1_sensor_body(&influx, "[enrollment]\nper_address_burst = 100\n", "");
    let a = first_replica(&pg, &body);
    let b = a.replica(&body);
    let secret = ticket_secret(&a.ticket("iot-sensor", &[]));
    // All 50 wait at one barrier, so the requests meet in the store.
    let barrier = std::sync::Barrier::new(50);
    let results: Vec<(usize, u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (replica, secret, barrier) = ([&a, &b][i % 2], &secret, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let (status, body) = replica.enroll(secret, &format!("gw-{i}"));
                    (i % 2, status, body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<_> = results.iter().filter(|r| r.1 == 201).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for (_, status, body) in results.iter().filter(|r| r.1 != 201) {
        assert_eq!(*status, 403, "{body}");
        assert_eq!(body["error"]["code"], "ticket_used_up", "{body}");
    }
    // Both replicas answered refusals: the race was across them.
    for replica in 0..2 {
        assert!(
            results.iter().any(|r| r.0 == replica && r.1 == 403),
            "replica {replica} refused none: {results:?}"
        );
    }
    // And both see the one identity in the store.
    for replica in [&a, &b] {
        let listed: Value =
            serde_json::from_str(&replica.cli_ok(&["identity", "list", "--json"])).unwrap();
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["id"], won[0].2["identity_id"]);
    }
}

/// A TCP relay on the loopback to `target`, which can be told to hold
/// what clients send (an InfluxDB that stopped answering one replica, so
/// that replica is caught mid-deletion, holding its claim).
struct Relay {
    port: u16,
    hold: Arc<AtomicBool>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(AtomicBool::new(false));
        let flag = hold.clone();
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                for client in listener.incoming().take(256) {
                    let Ok(client) = client else { continue };
                    let Ok(upstream) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    let pumps = [
                        (
                            client.try_clone().unwrap(),
                            upstream.try_clone().unwrap(),
                            true,
                        ),
                        (upstream, client, false),
                    ];
                    for (mut from, mut to, held) in pumps {
                        let flag = flag.clone();
                        std::thread::spawn(move || {
                            use std::io::{Read as _, Write as _};
                            let mut buf = [0u8; 8192];
                            while let Ok(n) = from.read(&mut buf) {
                                // Held for a minute at most: bounded, and
                                // longer than the test needs.
                                let until = Instant::now() + Duration::from_secs(60);
                                while held && flag.load(Ordering::SeqCst) && Instant::now() < until
                                {
                                    std::thread::sleep(Duration::from_millis(10));
                                }
                                if n == 0 || to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        });
                    }
                }
            })
            .unwrap();
        Relay { port, hold }
    }
}

/// The replica id `replica` logged at start.
fn replica_id(replica: &AuthorityServer) -> String {
    let log = replica.log();
    let line = log
        .lines()
        .find_map(|l| l.split("replica ").nth(1))
        .unwrap_or_else(|| panic!("no replica id in the log:\n{log}"));
    line.split(' ').next().unwrap().to_owned()
}

/// For each leasegate user seen in InfluxDB: when it was last seen and
/// when it was first seen gone (the end of the first SHOW USERS without
/// it). Polls every 50 ms until `stop`, for at most 3 minutes.
type Sightings = HashMap<String, (i64, Option<i64>)>;

fn watch_users(influx: &Influx, stop: &AtomicBool) -> Sightings {
    let mut seen = Sightings::new();
    let sweep = |seen: &mut Sightings| {
        let users = influx.users();
        let at = now_ms();
        for u in users.iter().filter(|u| u.starts_with("lg_")) {
            *seen.entry(u.clone()).or_insert((at, None)) = (at, None);
        }
        for (u, entry) in seen.iter_mut() {
            if entry.1.is_none() && !users.contains(u) {
                entry.1 = Some(at);
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        sweep(&mut seen);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Once more after the stop: what went since the last sweep (the test
    // stops the watch as soon as it sees the last user gone itself).
    sweep(&mut seen);
    seen
}

#[test]
fn two_hundred_leases_over_two_replicas_one_killed_halfway_each_deleted_on_time() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let pg = Arc::new(Postgres::start());
    // Replica a reaches InfluxDB through a relay that can stop answering.
    let relay = Relay::start(influx.port);
    let relayed = format!("http://127.0.0.1:{}", relay.port);
    let body = v1_sensor_body(&influx, "", "max_active_leases = 200\n");
    let mut a = first_replica(&pg, &body.replace(&influx.url(), &relayed));
    let b = a.replica(&body);
    let database = a.postgres.as_ref().unwrap().1.clone();
    let mut db = pg.client(&database);
    let id_a = replica_id(&a);
    let (_, credential) = a.enroll_ok(&a.ticket("iot-sensor", &[]), "gw-many");
    let stop = AtomicBool::new(false);
    let (influx, stop) = (&influx, &stop);
    std::thread::scope(|s| {
        let watch = std::thread::Builder::new()
            .name("user-watch".into())
            .spawn_scoped(s, move || watch_users(influx, stop))
            .unwrap();
        let mut seed = now_ms() as u64;
        eprintln!("seed {seed}");
        let ttls: Vec<u64> = (0..200).map(|_| 1 + support::lcg(&mut seed) % 20).collect();
        // Two clients per replica, each taking every fourth lease.
        let mut leases: Vec<(usize, String, i64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|k| {
                    let (replica, credential, ttls) = ([&a, &b][k % 2], &credential, &ttls);
                    s.spawn(move || {
                        (k..200)
                            .step_by(4)
                            .map(|i| {
                                let lease = replica.lease_ok(credential, Some(ttls[i]));
                                let expires = lease["expires_ms"].as_i64().unwrap();
                                (k % 2, lease_user(&lease), expires)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        leases.sort_by_key(|l| l.2);
        // Halfway, when the 100th lease falls due, InfluxDB stops answering
        // replica a; as soon as a holds a claim on a due lease (its deletion
        // hangs), it is killed, and b must take that lease over too.
        let halfway = leases[99].2;
        std::thread::sleep(Duration::from_millis((halfway - now_ms()).max(0) as u64));
        relay.hold.store(true, Ordering::SeqCst);
        let mut stuck = Vec::new();
        let caught = wait_until(Duration::from_secs(15), || {
            stuck = db
            .query(
                "SELECT id FROM leases WHERE claimed_by = $1 AND status = 'active' AND claim_until_ms > $2",
                &[&id_a, &now_ms()],
            )
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
            !stuck.is_empty()
        });
        assert!(caught, "replica a never claimed a due lease");
        a.kill();
        let killed_at = now_ms();
        eprintln!("replica a killed at {killed_at} holding claims on {stuck:?}");
        let last = leases.last().unwrap().2;
        let all_gone = wait_until(
            Duration::from_millis((last - now_ms() + 5000).max(0) as u64),
            || !influx.users().iter().any(|u| u.starts_with("lg_")),
        );
        stop.store(true, Ordering::SeqCst);
        let seen = watch.join().unwrap();
        assert!(
            all_gone,
            "users left: {:?}",
            influx
                .users()
                .iter()
                .filter(|u| u.starts_with("lg_"))
                .collect::<Vec<_>>()
        );
        let mut worst = 0;
        let mut after_kill_from_a = 0;
        for (made_by, user, expires) in &leases {
            let (last_seen, gone) = seen
                .get(user)
                .copied()
                .unwrap_or_else(|| panic!("{user} was never seen in InfluxDB"));
            let gone = gone.unwrap_or_else(|| panic!("{user} was not seen gone"));
            assert!(
                gone >= *expires,
                "{user} gone at {gone}, before its expiry {expires} (last seen {last_seen})"
            );
            assert!(
                gone - expires <= support::DELETION_BOUND_MS,
                "{user} (made by replica {made_by}, expiry {expires}, replica a killed at {killed_at}) gone {} ms after expiry",
                gone - expires
            );
            worst = worst.max(gone - expires);
            if *made_by == 0 && *expires >= killed_at {
                after_kill_from_a += 1;
            }
        }
        // The leases a held claims on when it died were not lost with it.
        let listed = b.leases();
        for id in &stuck {
            let lease = listed.iter().find(|l| l["id"] == id.as_str()).unwrap();
            assert_eq!(lease["status"], "expired", "{lease}");
        }
        assert!(
            after_kill_from_a > 10,
            "too few of the killed replica's leases fell due after it died ({after_kill_from_a})"
        );
        eprintln!(
            "200 leases: worst {worst} ms after expiry; {after_kill_from_a} of the killed replica's were deleted by the other"
        );
        assert_eq!(listed.len(), 200);
        assert!(
            listed.iter().all(|l| l["status"] == "expired"),
            "{listed:?}"
        );
    });
}

#[test]
fn two_deployments_on_one_influxdb_each_reconcile_away_only_their_own_stale_credentials() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let pg = Arc::new(Postgres::start());
    // Plant A: two replicas on PostgreSQL; plant B: one, on a database of
    // its own on the same server.
    let body_a = v1_sensor_body(&influx, "deployment_id = \"plant-a\"\n", "");
    let body_b = v1_sensor_body(&influx, "deployment_id = \"plant-b\"\n", "");
    let mut a1 = first_replica(&pg, &body_a);
    let a2 = a1.replica(&body_a);
    let mut b = first_replica(&pg, &body_b);
    let live_user = |d: &AuthorityServer| {
        let (_, credential) = d.enroll_ok(&d.ticket("iot-sensor", &[]), "gw-live");
        lease_user(&d.lease_ok(&credential, Some(600)))
    };
    let live_a = live_user(&a2);
    let live_b = live_user(&b);
    assert!(live_a.starts_with("lg_plant-a_"), "{live_a}");
    assert!(live_b.starts_with("lg_plant-b_"), "{live_b}");
    // Credentials each deployment made for leases its store no longer
    // knows (as a crash between making and recording one leaves behind).
    let stale = |plant: &str| format!("lg_{plant}_{:016x}", support::lcg(&mut (now_ms() as u64)));
    let (stale_a, stale_b) = (stale("plant-a"), stale("plant-b"));
    for user in [&stale_a, &stale_b] {
        influx.query(&format!("CREATE USER \"{user}\" WITH PASSWORD 'x'"));
    }
    let reconciled = |d: &AuthorityServer, times: usize| {
        wait_until(Duration::from_secs(15), || {
            d.log().matches("backend main: reconciled").count() >= times
        })
    };
    // A restarted replica of plant A reconciles: its own stale one goes.
    a1.restart();
    assert!(reconciled(&a1, 2), "{}", a1.log());
    let users = influx.users();
    assert!(!users.contains(&stale_a), "{users:?}");
    for kept in [&stale_b, &live_a, &live_b] {
        assert!(users.contains(kept), "plant a deleted {kept}: {users:?}");
    }
    // Plant B restarted: its own stale one goes, plant A's live one stays.
    b.restart();
    assert!(reconciled(&b, 2), "{}", b.log());
    let users = influx.users();
    assert!(!users.contains(&stale_b), "{users:?}");
    for kept in [&live_a, &live_b] {
        assert!(users.contains(kept), "{kept} was deleted: {users:?}");
    }
    assert!(
        a1.log().contains("1 orphaned credential(s) deleted")
            && b.log().contains("1 orphaned credential(s) deleted"),
        "{}\n{}",
        a1.log(),
        b.log()
    );
}

#[test]
fn a_replica_killed_while_making_a_credential_leaves_no_user_behind() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let pg = Arc::new(Postgres::start());
    let relay = Relay::start(influx.port);
    let relayed = format!("http://127.0.0.1:{}", relay.port);
    let body = v1_sensor_body(&influx, "", "");
    let mut a = first_replica(&pg, &body.replace(&influx.url(), &relayed));
    let b = a.replica(&body);
    let mut db = pg.client(&a.postgres.as_ref().unwrap().1);
    let id_a = replica_id(&a);
    let (_, credential) = b.enroll_ok(&b.ticket("iot-sensor", &[]), "gw-orphan");
    // InfluxDB stops answering a; a lease asked of a hangs in creation.
    relay.hold.store(true, Ordering::SeqCst);
    let url = format!("{}/v1/leases", a.url());
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let _ = agent
            .post(&url)
            .header("Authorization", &format!("Bearer {credential}"))
            .header("Content-Type", "application/json")
            .send("{}");
    });
    let pending = wait_until(Duration::from_secs(10), || {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM leases WHERE status = 'pending' AND created_by = $1",
                &[&id_a],
            )
            .unwrap()
            .get(0);
        n == 1
    });
    assert!(pending, "no lease pending on replica a");
    // a dies; its request reaches InfluxDB afterwards, so the user exists
    // but no one will ever hold its password or delete it by its lease.
    a.kill();
    relay.hold.store(false, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || influx
            .users()
            .iter()
            .any(|u| u.starts_with("lg_"))),
        "the held CREATE USER never reached InfluxDB"
    );
    // b finds a silent and fails the lease, then reconciles the user away.
    let gone = wait_until(reaper_dead_after() + Duration::from_secs(15), || {
        !influx.users().iter().any(|u| u.starts_with("lg_"))
    });
    assert!(gone, "{:?}\n{}", influx.users(), b.log());
    let lease = &b.leases()[0];
    assert_eq!(lease["status"], "failed", "{lease}");
    assert!(
        b.log().contains("1 orphaned credential(s) deleted"),
        "{}",
        b.log()
    );
}

/// How long a replica must be silent before its pending leases are
/// failed, and a heartbeat's period on top.
fn reaper_dead_after() -> Duration {
    leasegate::authority::reaper::REPLICA_DEAD_AFTER + Duration::from_secs(5)
}

#[test]
fn a_gateway_keeps_writing_while_its_replica_is_killed_and_restarted() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let broker = support::Mosquitto::start();
    let pg = Arc::new(Postgres::start());
    // Two HTTPS replicas; the second signs its certificate with the
    // first's CA. Both list both URLs, once both ports are known.
    let body = v1_sensor_body(&influx, "", "");
    let mut a = AuthorityServer::start_on(&body, true, "info", Some((pg.clone(), pg.database())));
    let ca_files = format!(
        "ca_cert_file = \"{}\"\nca_key_file = \"{}\"\n",
        a.state_dir().join("ca.pem").display(),
        a.state_dir().join("ca-key.pem").display()
    );
    let mut b = a.replica(&format!("{ca_files}{body}"));
    let urls = format!("public_urls = [\"{}\", \"{}\"]\n", a.url(), b.url());
    a.write_config(&format!("{urls}{body}"));
    a.restart();
    b.write_config(&format!("{urls}{ca_files}{body}"));
    b.restart();
    let ticket = leasegate::wire::ticket::Ticket::parse(&a.ticket("iot-sensor", &[])).unwrap();
    assert_eq!(ticket.urls, [a.url(), b.url()]);

    let dir = tempfile::tempdir().unwrap();
    let mut daemon =
        support::Daemon::start_in(dir, &support::leased_config(&broker, "gw-failover", "6s"));
    assert!(daemon.wait_for_log("waiting for a ticket", 1, Duration::from_secs(10)));
    let tickets = daemon.dir.path().join("tickets");
    std::fs::write(tickets.join("gw.part"), ticket.encode()).unwrap();
    std::fs::rename(tickets.join("gw.part"), tickets.join("gw.ticket")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || daemon
            .log()
            .contains("obtained for")),
        "{}",
        daemon.log()
    );
    // Points flow all along; the replica in use dies at 10 s and comes
    // back at 25 s.
    let start = Instant::now();
    let (mut sent, mut killed, mut back) = (0, false, false);
    while start.elapsed() < Duration::from_secs(40) {
        support::publish_seq(&broker, "steady", sent, 20);
        sent += 20;
        if !killed && start.elapsed() >= Duration::from_secs(10) {
            a.kill();
            killed = true;
        }
        if !back && start.elapsed() >= Duration::from_secs(25) {
            a.restart();
            back = true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    influx.assert_arrives("steady", sent, Duration::from_secs(30), &daemon);
    daemon.stop_cleanly();
    let log = daemon.log();
    let obtained = log.matches("obtained for").count();
    assert!(obtained >= 6, "only {obtained} leases in 40 s:\n{log}");
    let failovers = log
        .matches(&format!("trying the authority at {}", b.url()))
        .count();
    assert!(
        (1..=2).contains(&failovers),
        "{failovers} calls failed over to the second replica:\n{log}"
    );
    assert!(!log.contains("cannot get a lease"), "{log}");
    assert!(
        !log.contains("refused lease")
            && !log.contains("answered 401")
            && !log.contains("answered 403"),
        "a write was refused:\n{log}"
    );
    eprintln!("{sent} points, {obtained} leases, {failovers} failed call(s) to the dead replica");
}

fn get_json(url: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut r = agent.get(url).call().unwrap();
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

#[test]
fn status_shows_each_replica_and_the_store_and_healthz_follows_the_store() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let pg = Arc::new(Postgres::start());
    let body = v1_sensor_body(&influx, "", "");
    let mut a = first_replica(&pg, &body);
    let b = a.replica(&body);
    let (id_a, id_b) = (replica_id(&a), replica_id(&b));
    let out = a.cli(&["status", "--json"]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let s: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(s["this_replica"]["replica"], id_a.as_str(), "{s}");
    assert_eq!(s["serving"], true);
    assert_eq!(s["store"]["ok"], true);
    assert_eq!(s["store"]["kind"], "postgres");
    assert!(s["this_replica"]["claims_held"].is_u64());
    let seen: Vec<(&str, bool, bool)> = s["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["replica"].as_str().unwrap(),
                r["alive"].as_bool().unwrap(),
                r["this"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(seen.contains(&(id_a.as_str(), true, true)), "{seen:?}");
    assert!(seen.contains(&(id_b.as_str(), true, false)), "{seen:?}");
    let text = b.cli_ok(&["status"]);
    assert!(text.contains(&id_b) && text.contains("serving"), "{text}");
    for (replica, id) in [(&a, &id_a), (&b, &id_b)] {
        let (code, answer) = get_json(&format!("{}/healthz", replica.url()));
        assert_eq!(
            (code, answer["replica"].as_str()),
            (200, Some(id.as_str())),
            "{answer}"
        );
    }

    // A replica killed: its report goes stale, and status says so.
    a.kill();
    std::thread::sleep(leasegate::authority::status::STALE + Duration::from_secs(1));
    let out = a.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stdout.contains("NOT SERVING"), "{}", out.stdout);

    // The store gone: /healthz sends the load balancer elsewhere, and
    // status names the store as failing.
    pg.stop();
    let unhealthy = wait_until(Duration::from_secs(30), || {
        get_json(&format!("{}/healthz", b.url())).0 == 503
    });
    assert!(unhealthy, "{}", b.log());
    let out = b.cli(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", out.stdout, out.stderr);
    let s: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(s["store"]["ok"], false, "{s}");
    assert!(
        s["store"]["error"]
            .as_str()
            .is_some_and(|e| !e.contains(support::postgres::PASSWORD))
    );
}
