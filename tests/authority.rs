//! The lease authority end to end: the real `leasegate-authority` binary,
//! real InfluxDB 1.x, and the in-test 2.x/3.x token APIs
//! (support/fake_influx.rs, which follows docs/influxdb-api.md).
//!
//! Times: lease expiries are the authority's wall-clock milliseconds, and
//! the fake records each deletion with the same clock, so "gone within 2 s
//! after expiry, none before" is checked per credential.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leasegate::now_ms;
use serde_json::Value;
use support::authority::{
    AuthorityServer, role, v1_backend, v1_sensor_body, v2_backend, v3_backend,
};
use support::fake_influx::{FakeInflux, Flavor};
use support::{ADMIN_PASSWORD, ADMIN_USER, DELETION_BOUND_MS, Influx, wait_until};

const ORG: &str = "0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-token-for-tests";

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn v2_setup() -> (FakeInflux, AuthorityServer) {
    v2_setup_with("")
}

/// `v2_setup` with `role_extra` appended to the role's table.
fn v2_setup_with(role_extra: &str) -> (FakeInflux, AuthorityServer) {
    let fake = FakeInflux::start(Flavor::V2, ADMIN_TOKEN, ORG, "sensors", 1 << 20);
    let body = format!(
        "{}{}{role_extra}",
        v2_backend("main", &fake.url(), ORG, ADMIN_TOKEN),
        role("sensor", "iot-sensor", "main", "bucket", "sensors")
    );
    let authority = AuthorityServer::start(&body);
    (fake, authority)
}

/// Writes one point with Basic auth as `user:password`; the status.
fn v1_write(influx: &Influx, secret: &str) -> u16 {
    use base64::Engine as _;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = base64::engine::general_purpose::STANDARD.encode(secret);
    agent
        .post(format!("{}/write?db=sensors", influx.url()))
        .header("Authorization", &format!("Basic {auth}"))
        .send("m v=1")
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn v1_lease_user_writes_and_is_gone_within_2s_of_expiry() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let authority = AuthorityServer::start(&v1_sensor_body(&influx, "", ""));
    let ticket = authority.ticket("iot-sensor", &[]);
    let (_, credential) = authority.enroll_ok(&ticket, "gw-1");
    let lease = authority.lease_ok(&credential, Some(3));
    assert_eq!(lease["ttl_secs"], 3);
    assert_eq!(lease["target"]["api"], "influxdb-v1");
    assert_eq!(lease["target"]["database"], "sensors");
    assert_eq!(lease["target"]["url"], influx.url());
    let secret = lease["secret"].as_str().unwrap();
    let user = secret.split(':').next().unwrap();
    // lg_<deployment>_<lease id>: another deployment's users are not ours.
    assert!(
        user.starts_with("lg_") && user.ends_with(&format!("_{}", lease["id"].as_str().unwrap())),
        "{user}"
    );
    assert_eq!(v1_write(&influx, secret), 204, "the lease's user writes");
    let grants = influx.query(&format!("SHOW GRANTS FOR \"{user}\""));
    assert_eq!(grants["results"][0]["series"][0]["values"][0][1], "WRITE");

    let expires = lease["expires_ms"].as_i64().unwrap();
    // Still there just before expiry.
    std::thread::sleep(Duration::from_millis(
        (expires - now_ms() - 400).max(0) as u64
    ));
    assert!(influx.users().contains(&user.to_owned()), "deleted early");
    let gone = wait_until(
        Duration::from_millis(DELETION_BOUND_MS as u64 + 1000),
        || !influx.users().contains(&user.to_owned()),
    );
    let gone_at = now_ms();
    assert!(gone, "user still there:\n{}", authority.log());
    assert!(
        gone_at - expires <= DELETION_BOUND_MS,
        "gone {} ms after expiry",
        gone_at - expires
    );
    assert_eq!(
        v1_write(&influx, secret),
        401,
        "a write with the dead lease"
    );
    let listed = authority.leases();
    assert_eq!(listed[0]["status"], "expired");
}

#[test]
fn v2_authorization_is_least_privilege_and_deleted_at_expiry_or_revoke() {
    let (fake, authority) = v2_setup();
    let ticket = authority.ticket("iot-sensor", &["--usage-count", "2"]);
    let (_, credential) = authority.enroll_ok(&ticket, "gw-2");

    let lease = authority.lease_ok(&credential, Some(3));
    let id = lease["id"].as_str().unwrap();
    assert_eq!(lease["target"]["api"], "influxdb-v2");
    assert_eq!(lease["target"]["org"], ORG);
    assert_eq!(lease["target"]["bucket"], "sensors");
    let auth = fake
        .with(|st| {
            st.authorizations
                .iter()
                .find(|a| a.description.contains(id))
                .cloned()
        })
        .expect("an authorization for the lease");
    let bucket_id = fake.with(|st| st.bucket_id.clone());
    assert_eq!(auth.org_id, ORG);
    assert_eq!(auth.token, lease["secret"].as_str().unwrap());
    assert_eq!(
        auth.permissions,
        serde_json::json!([{"action": "write", "resource": {"type": "buckets", "id": bucket_id, "orgID": ORG}}])
    );
    let expires = lease["expires_ms"].as_i64().unwrap();
    // leasegate:<deployment>:<lease>:<identity>:<expiry>
    let parts: Vec<&str> = auth.description.split(':').collect();
    assert_eq!((parts[0], parts[2], parts[3]), ("leasegate", id, "gw-2"));
    assert!(!parts[1].is_empty(), "{}", auth.description);
    let tagged_expiry: i64 = parts[4].parse().unwrap();
    assert!((tagged_expiry * 1000 - expires).abs() <= 1000);

    assert!(wait_until(Duration::from_secs(6), || !fake
        .live_authorization(&auth.id)));
    let deleted = unix_ms(
        fake.with(|st| st.authorization_deleted_at(&auth.id))
            .unwrap(),
    );
    assert!(deleted >= expires, "deleted {} ms early", expires - deleted);
    assert!(
        deleted - expires <= DELETION_BOUND_MS,
        "deleted {} ms late",
        deleted - expires
    );

    // Revoked through the API: gone at once.
    let lease = authority.lease_ok(&credential, Some(600));
    let id = lease["id"].as_str().unwrap();
    let auth_id = fake
        .with(|st| {
            st.authorizations
                .iter()
                .find(|a| a.description.contains(id))
                .map(|a| a.id.clone())
        })
        .unwrap();
    let (status, body) = authority.delete(&format!("/v1/leases/{id}"), &credential);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "revoked");
    assert!(
        !fake.live_authorization(&auth_id),
        "deleted when the revoke answered"
    );

    // Revoked with the admin command while the server runs: gone at once.
    let lease = authority.lease_ok(&credential, Some(600));
    let id = lease["id"].as_str().unwrap();
    let auth_id = fake
        .with(|st| {
            st.authorizations
                .iter()
                .find(|a| a.description.contains(id))
                .map(|a| a.id.clone())
        })
        .unwrap();
    let out = authority.cli_ok(&["lease", "revoke", id]);
    assert!(out.contains("revoked"), "{out}");
    assert!(!fake.live_authorization(&auth_id));
    let (status, body) = authority.get(&format!("/v1/leases/{id}"), &credential);
    assert_eq!((status, body["status"].as_str()), (200, Some("revoked")));

    // A lease TTL above the role's max_ttl is capped.
    let lease = authority.lease_ok(&credential, Some(86_400));
    assert_eq!(lease["ttl_secs"], 3600);
    // Another identity sees none of these.
    let (_, other) = authority.enroll_ok(&ticket, "gw-3");
    let (status, body) = authority.get("/v1/leases", &other);
    assert_eq!(status, 200);
    assert_eq!(body["leases"].as_array().unwrap().len(), 0);
    let (status, body) = authority.get(
        &format!("/v1/leases/{}", lease["id"].as_str().unwrap()),
        &other,
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("lease_unknown"))
    );
    let (status, _) = authority.get("/v1/leases", &credential);
    assert_eq!(status, 200);
}

#[test]
fn v2_restart_mid_lease_still_deletes_on_time_and_orphans_go_at_start() {
    let fake = FakeInflux::start(Flavor::V2, ADMIN_TOKEN, ORG, "sensors", 1 << 20);
    let perms = fake.with(|st| st.write_permissions());
    let orphan = fake.with(|st| {
        st.add_authorization(
            "leasegate:test-dep:00000000deadbeef:gw-old:1700000000",
            perms.clone(),
        )
    });
    let foreign = fake.with(|st| st.add_authorization("grafana reader", perms.clone()));
    // Another deployment's, and one named as before deployment ids whose
    // lease this store never knew: neither is this authority's to delete.
    let other = fake.with(|st| {
        st.add_authorization(
            "leasegate:other-dep:00000000deadbeef:gw-old:1700000000",
            perms.clone(),
        )
    });
    let unscoped = fake.with(|st| {
        st.add_authorization(
            "leasegate:00000000deadbeef:gw-old:1700000000",
            perms.clone(),
        )
    });
    // A second backend on the same InfluxDB: its reconcile must not take
    // the first one's live credentials for orphans.
    let body = format!(
        "deployment_id = \"test-dep\"\n{}{}{}{}",
        v2_backend("main", &fake.url(), ORG, ADMIN_TOKEN),
        v2_backend("mirror", &fake.url(), ORG, ADMIN_TOKEN),
        role("sensor", "iot-sensor", "main", "bucket", "sensors"),
        role("mirrored", "mirrored", "mirror", "bucket", "sensors"),
    );
    let mut authority = AuthorityServer::start(&body);
    assert!(
        wait_until(Duration::from_secs(5), || !fake
            .live_authorization(&orphan.id)),
        "the leasegate-tagged orphan is deleted at start:\n{}",
        authority.log()
    );
    assert!(fake.live_authorization(&foreign.id), "others' tokens stay");
    assert!(
        fake.live_authorization(&other.id),
        "another deployment's stay"
    );
    assert!(
        fake.live_authorization(&unscoped.id),
        "an unknown unscoped one stays"
    );

    let ticket = authority.ticket("iot-sensor", &[]);
    let (_, credential) = authority.enroll_ok(&ticket, "gw-4");
    let lease = authority.lease_ok(&credential, Some(4));
    let long = authority.lease_ok(&credential, Some(600));
    let find = |id: &str| {
        fake.with(|st| {
            st.authorizations
                .iter()
                .find(|a| a.description.contains(id))
                .map(|a| a.id.clone())
        })
        .unwrap()
    };
    let (auth_id, long_auth) = (
        find(lease["id"].as_str().unwrap()),
        find(long["id"].as_str().unwrap()),
    );
    let status = authority.terminate();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    std::thread::sleep(Duration::from_secs(1));
    authority.restart();
    let expires = lease["expires_ms"].as_i64().unwrap();
    assert!(wait_until(Duration::from_secs(8), || !fake
        .live_authorization(&auth_id)));
    let deleted = unix_ms(
        fake.with(|st| st.authorization_deleted_at(&auth_id))
            .unwrap(),
    );
    assert!(
        deleted >= expires && deleted - expires <= DELETION_BOUND_MS,
        "deleted at {} ms from expiry",
        deleted - expires
    );
    assert!(
        fake.live_authorization(&long_auth),
        "a live lease survives the restart's reconcile"
    );
    assert!(authority.log().contains("backend mirror: reconciled"));

    // A second server on the same state dir is refused, and the first
    // one keeps serving.
    let second = std::process::Command::new(support::authority::authority_binary())
        .arg("--config")
        .arg(authority.config_path())
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another leasegate-authority serve runs on this state dir"),
        "{err}"
    );
    assert!(authority.is_running());
}

#[test]
fn two_hundred_leases_each_gone_within_2s_after_expiry_none_before() {
    // One identity holding 200 at once: its role allows that many.
    let (fake, authority) = v2_setup_with("max_active_leases = 200\n");
    let ticket = authority.ticket("iot-sensor", &[]);
    let (_, credential) = authority.enroll_ok(&ticket, "gw-many");
    let mut seed = now_ms() as u64;
    eprintln!("seed {seed}");
    let mut leases = Vec::new();
    for _ in 0..200 {
        let ttl = 1 + support::lcg(&mut seed) % 20;
        let lease = authority.lease_ok(&credential, Some(ttl));
        leases.push((
            lease["id"].as_str().unwrap().to_owned(),
            lease["expires_ms"].as_i64().unwrap(),
        ));
    }
    let last = leases.iter().map(|l| l.1).max().unwrap();
    let all_gone = wait_until(
        Duration::from_millis((last - now_ms() + 5000).max(0) as u64),
        || {
            fake.with(|st| {
                st.authorizations
                    .iter()
                    .all(|a| !a.description.starts_with("leasegate:"))
            })
        },
    );
    assert!(all_gone, "credentials left after the last expiry");
    let mut worst = 0;
    for (id, expires) in &leases {
        let deleted = fake.with(|st| {
            st.deleted_authorizations
                .iter()
                .find(|(a, _)| a.description.contains(id.as_str()))
                .map(|(_, t)| unix_ms(*t))
        });
        let deleted = deleted.unwrap_or_else(|| panic!("lease {id} never deleted"));
        assert!(
            deleted >= *expires,
            "lease {id} deleted {} ms before expiry",
            expires - deleted
        );
        assert!(
            deleted - expires <= DELETION_BOUND_MS,
            "lease {id} deleted {} ms after expiry",
            deleted - expires
        );
        worst = worst.max(deleted - expires);
    }
    eprintln!("200 leases: latest deletion {worst} ms after expiry");
    let listed = authority.leases();
    assert_eq!(listed.len(), 200);
    assert!(listed.iter().all(|l| l["status"] == "expired"));
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[test]
fn each_bad_ticket_has_its_own_reason_and_usage_counts_hold_under_concurrency() {
    let (_fake, mut authority) = v2_setup();
    let secret_of = |line: &str| {
        leasegate::wire::ticket::Ticket::parse(line)
            .unwrap()
            .secret
            .expose()
            .to_owned()
    };

    let expired = secret_of(&authority.ticket("iot-sensor", &["--expires-in", "1s"]));
    let used = secret_of(&authority.ticket("iot-sensor", &[]));
    let revoked_line = authority.ticket("iot-sensor", &[]);
    let revoked_id = leasegate::wire::ticket::Ticket::parse(&revoked_line)
        .unwrap()
        .id;
    authority.cli_ok(&["ticket", "revoke", &revoked_id]);
    assert_eq!(authority.enroll(&used, "gw-a").0, 201);
    std::thread::sleep(Duration::from_millis(1200));

    let cases = [
        (expired.clone(), 403, "ticket_expired"),
        (used.clone(), 403, "ticket_used_up"),
        (secret_of(&revoked_line), 403, "ticket_revoked"),
        (leasegate::secret::random_base64(32), 403, "ticket_unknown"),
        ("not-a-ticket-secret".to_owned(), 400, "ticket_malformed"),
    ];
    for (secret, status, code) in &cases {
        let (s, body) = authority.enroll(secret, "gw-b");
        assert_eq!((s, error_code(&body)), (*status, *code), "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, body) = authority.enroll(&leasegate::secret::random_base64(32), "bad name!");
    assert_eq!((s, error_code(&body)), (400, "invalid_request"));
    let list = authority.cli_ok(&["ticket", "list"]);
    assert!(
        list.contains("revoked") && list.contains("used up") && list.contains("expired"),
        "{list}"
    );

    // 10 enrollments at once on a ticket good for 3.
    let three = secret_of(&authority.ticket("iot-sensor", &["--usage-count", "3"]));
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let (a, secret) = (&authority, &three);
                s.spawn(move || {
                    let (status, body) = a.enroll(secret, &format!("gw-c{i}"));
                    (status, error_code(&body).to_owned())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.0 == 201).count(),
        3,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .filter(|r| r.0 != 201)
            .all(|r| r.1 == "ticket_used_up"),
        "{results:?}"
    );

    // No role matches: the ticket's role was removed from the
    // configuration before it was used.
    let orphaned = secret_of(&authority.ticket("iot-sensor", &[]));
    let config = std::fs::read_to_string(authority.config_path()).unwrap();
    let no_sensor_role = config.replace("service = \"iot-sensor\"", "service = \"something-else\"");
    std::fs::write(authority.config_path(), no_sensor_role).unwrap();
    authority.restart();
    let (s, body) = authority.enroll(&orphaned, "gw-d");
    assert_eq!((s, error_code(&body)), (403, "no_role_matches"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("service=iot-sensor")
    );
    // And an admin cannot make a ticket that no role would take.
    let out = authority.cli(&["ticket", "create", "--attribute", "service=iot-sensor"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("no [[role]] matches"), "{}", out.stderr);
    let trail = authority.log();
    for code in [
        "ticket_expired",
        "ticket_used_up",
        "ticket_revoked",
        "ticket_unknown",
        "ticket_malformed",
        "no_role_matches",
    ] {
        assert!(trail.contains(code), "the audit log names {code}");
    }
}

#[test]
fn revoking_an_identity_removes_all_its_credentials_from_influxdb() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let authority = AuthorityServer::start(&v1_sensor_body(&influx, "", ""));
    let ticket = authority.ticket("iot-sensor", &["--usage-count", "2"]);
    let (identity, credential) = authority.enroll_ok(&ticket, "gw-5");
    let (_, bystander) = authority.enroll_ok(&ticket, "gw-6");
    let secrets: Vec<String> = (0..3)
        .map(|_| {
            authority.lease_ok(&credential, Some(600))["secret"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let kept = authority.lease_ok(&bystander, Some(600));
    for s in &secrets {
        assert_eq!(v1_write(&influx, s), 204);
    }
    let out = authority.cli_ok(&["identity", "revoke", &identity]);
    assert!(out.contains("3 lease(s)"), "{out}");
    let users = influx.users();
    for s in &secrets {
        let user = s.split(':').next().unwrap();
        assert!(
            !users.contains(&user.to_owned()),
            "{user} still in InfluxDB"
        );
        assert_eq!(v1_write(&influx, s), 401);
    }
    assert_eq!(
        v1_write(&influx, kept["secret"].as_str().unwrap()),
        204,
        "another identity's lease lives"
    );
    let (status, body) = authority.create_lease(&credential, None);
    assert_eq!((status, error_code(&body)), (403, "identity_revoked"));
    let (status, body) = authority.create_lease("lgi_unknown", None);
    assert_eq!((status, error_code(&body)), (401, "identity_unknown"));
    let identities = authority.cli_ok(&["identity", "list"]);
    assert!(
        identities.contains("revoked") && identities.contains("gw-5"),
        "{identities}"
    );
}

#[test]
fn influxdb_down_at_expiry_is_retried_shown_revoking_and_blocks_no_issuing() {
    let mut influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let fake = FakeInflux::start(Flavor::V2, ADMIN_TOKEN, ORG, "sensors", 1 << 20);
    let body = format!(
        "{}{}{}{}",
        v1_backend("one", &influx.url(), ADMIN_USER, ADMIN_PASSWORD),
        v2_backend("two", &fake.url(), ORG, ADMIN_TOKEN),
        role("sensor", "iot-sensor", "one", "database", "sensors"),
        role("other", "other", "two", "bucket", "sensors"),
    );
    let authority = AuthorityServer::start(&body);
    let (_, c1) = authority.enroll_ok(&authority.ticket("iot-sensor", &[]), "gw-7");
    let (_, c2) = authority.enroll_ok(&authority.ticket("other", &[]), "gw-8");
    let lease = authority.lease_ok(&c1, Some(2));
    let user = lease["secret"]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    influx.stop();
    let revoking = wait_until(Duration::from_secs(8), || {
        authority
            .leases()
            .iter()
            .any(|l| l["status"] == "revoking" && l["last_error"].is_string())
    });
    assert!(
        revoking,
        "lease list shows the failed deletion:\n{}",
        authority.log()
    );
    let human = authority.cli_ok(&["lease", "list"]);
    assert!(
        human.contains("revoking") && human.contains("expired"),
        "{human}"
    );
    // Issuing on another backend goes on meanwhile.
    let t0 = std::time::Instant::now();
    let other = authority.lease_ok(&c2, Some(600));
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(other["target"]["api"], "influxdb-v2");
    // And the same backend's issuing fails fast with a clear reason.
    let (status, body) = authority.create_lease(&c1, Some(60));
    assert_eq!(
        (status, error_code(&body)),
        (502, "backend_failed"),
        "{body}"
    );

    influx.restart();
    let expired = wait_until(Duration::from_secs(30), || {
        authority
            .leases()
            .iter()
            .any(|l| l["id"] == lease["id"] && l["status"] == "expired")
    });
    assert!(
        expired,
        "the deletion was retried until it succeeded:\n{}",
        authority.log()
    );
    assert!(!influx.users().contains(&user));
}

#[test]
fn v3_tokens_expire_natively_and_are_deleted_on_revoke() {
    let fake = FakeInflux::start(Flavor::V3, ADMIN_TOKEN, "", "sensors", 1 << 20);
    let body = format!(
        "{}{}",
        v3_backend("core", &fake.url(), ADMIN_TOKEN, false),
        role("sensor", "iot-sensor", "core", "database", "sensors")
    );
    let authority = AuthorityServer::start(&body);
    assert!(
        authority.log().contains("Core cannot scope tokens"),
        "{}",
        authority.log()
    );
    let (_, credential) = authority.enroll_ok(&authority.ticket("iot-sensor", &[]), "gw-9");
    let lease = authority.lease_ok(&credential, Some(120));
    let id = lease["id"].as_str().unwrap();
    assert_eq!(lease["target"]["api"], "influxdb-v3");
    assert_eq!(lease["target"]["database"], "sensors");
    let name = fake
        .v3_token_names()
        .into_iter()
        .find(|n| n.contains(id))
        .expect("a token");
    let token = fake.with(|st| st.v3_token(&name).cloned()).unwrap();
    assert_eq!(token.token, lease["secret"].as_str().unwrap());
    let native = unix_ms(token.expiry.expect("expiry_secs was sent"));
    assert!((native - lease["expires_ms"].as_i64().unwrap()).abs() <= 1500);
    let (status, _) = authority.delete(&format!("/v1/leases/{id}"), &credential);
    assert_eq!(status, 200);
    assert!(
        fake.with(|st| st.v3_token_deleted_at(&name)).is_some(),
        "deleted on revoke"
    );

    // Enterprise: database-scoped tokens.
    let fake = FakeInflux::start(Flavor::V3, ADMIN_TOKEN, "", "sensors", 1 << 20);
    fake.with(|st| st.enterprise = true);
    let body = format!(
        "{}{}",
        v3_backend("ent", &fake.url(), ADMIN_TOKEN, true),
        role("sensor", "iot-sensor", "ent", "database", "sensors")
    );
    let authority = AuthorityServer::start(&body);
    let (_, credential) = authority.enroll_ok(&authority.ticket("iot-sensor", &[]), "gw-10");
    let lease = authority.lease_ok(&credential, Some(120));
    let name = fake
        .v3_token_names()
        .into_iter()
        .find(|n| n.contains(lease["id"].as_str().unwrap()))
        .unwrap();
    let token = fake.with(|st| st.v3_token(&name).cloned()).unwrap();
    assert_eq!(
        token.permissions,
        serde_json::json!([{"resource_type": "db", "resource_names": ["sensors"], "actions": ["write"]}])
    );
}

#[test]
fn no_secret_reaches_any_log_in_a_full_run() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let mut authority =
        AuthorityServer::start_with(&v1_sensor_body(&influx, "", ""), false, "trace");
    let ticket_line = authority.ticket("iot-sensor", &[]);
    let ticket = leasegate::wire::ticket::Ticket::parse(&ticket_line).unwrap();
    let (identity, credential) = authority.enroll_ok(&ticket_line, "gw-11");
    let lease = authority.lease_ok(&credential, Some(30));
    let lease_secret = lease["secret"].as_str().unwrap().to_owned();
    let password = lease_secret.split_once(':').unwrap().1.to_owned();
    assert_eq!(v1_write(&influx, &lease_secret), 204);
    // A refused enrollment with the used ticket, a list, a show, a revoke.
    assert_eq!(authority.enroll(ticket.secret.expose(), "gw-11").0, 403);
    authority.cli_ok(&["lease", "list"]);
    authority.cli_ok(&["lease", "show", lease["id"].as_str().unwrap()]);
    authority.cli_ok(&["lease", "show", "--json", lease["id"].as_str().unwrap()]);
    authority.cli_ok(&["ticket", "list", "--json"]);
    let second = authority.lease_ok(&credential, Some(30));
    let second_secret = second["secret"].as_str().unwrap().to_owned();
    authority.delete(
        &format!("/v1/leases/{}", lease["id"].as_str().unwrap()),
        &credential,
    );
    authority.cli_ok(&["identity", "revoke", &identity]);
    assert_eq!(authority.terminate().map(|s| s.success()), Some(true));

    let log = authority.log();
    assert!(
        log.contains("audit: enroll"),
        "the log is the one checked:\n{log}"
    );
    assert!(log.contains("audit: lease issue") && log.contains("audit: lease revoke"));
    let mut secrets = vec![
        ("ticket secret", ticket.secret.expose().to_owned()),
        ("identity credential", credential.clone()),
        ("lease secret", lease_secret.clone()),
        ("lease password", password),
        ("second lease secret", second_secret),
        ("admin password", ADMIN_PASSWORD.to_owned()),
        ("ticket line", ticket_line.clone()),
    ];
    // The same secrets base64'd (as in a Basic header) would be as bad.
    use base64::Engine as _;
    secrets.push((
        "basic header",
        base64::engine::general_purpose::STANDARD.encode(&lease_secret),
    ));
    for (what, secret) in &secrets {
        assert!(!log.contains(secret.as_str()), "the {what} is in the log");
    }
    // The store holds hashes, never the secrets themselves.
    let db = authority.store_dump();
    for (what, secret) in &secrets[..5] {
        assert!(!db.contains(secret.as_str()), "the {what} is in the store");
    }
}

fn cert_der(path: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_file(path).unwrap()
}

#[test]
fn https_with_the_deployment_ca_pinned_in_every_ticket() {
    let fake = FakeInflux::start(Flavor::V2, ADMIN_TOKEN, ORG, "sensors", 1 << 20);
    let body = format!(
        "{}{}",
        v2_backend("main", &fake.url(), ORG, ADMIN_TOKEN),
        role("sensor", "iot-sensor", "main", "bucket", "sensors")
    );
    let mut authority = AuthorityServer::start_with(&body, true, "info");
    let state = authority.state_dir();
    use std::os::unix::fs::PermissionsExt as _;
    for key in ["ca-key.pem", "leaf-key.pem"] {
        assert_eq!(
            std::fs::metadata(state.join(key))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600,
            "{key}"
        );
    }
    let ca = cert_der(&state.join("ca.pem"));
    let ca_fingerprint = leasegate::secret::sha256_hex(ca.as_ref());
    let leaf_fingerprint =
        leasegate::secret::sha256_hex(cert_der(&state.join("leaf.pem")).as_ref());

    let line = authority.ticket("iot-sensor", &[]);
    let ticket = leasegate::wire::ticket::Ticket::parse(&line).unwrap();
    assert_eq!(ticket.ca_sha256.as_deref(), Some(ca_fingerprint.as_str()));
    // For gateways older than the CA, which read only the certificate's.
    assert_eq!(
        ticket.cert_sha256.as_deref(),
        Some(leaf_fingerprint.as_str())
    );
    assert_eq!(ticket.url, authority.url());

    // A client with the CA as its only root enrolls over HTTPS: the
    // certificate is the CA's for the host the URL names, by the usual
    // web PKI checks.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                    ureq::tls::Certificate::from_der(ca.as_ref()).to_owned(),
                ])))
                .build(),
        )
        .build()
        .into();
    let mut resp = agent
        .post(format!("{}/v1/enroll", authority.url()))
        .header("Content-Type", "application/json")
        .send(
            serde_json::json!({"ticket_secret": ticket.secret.expose(), "identity_name": "gw-tls"})
                .to_string(),
        )
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        201,
        "{}",
        resp.body_mut().read_to_string().unwrap()
    );
    // Plain HTTP on the TLS port gets nowhere.
    let plain: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    assert!(
        plain
            .get(format!("http://127.0.0.1:{}/v1/health", authority.port))
            .call()
            .is_err()
    );

    // CA and certificate survive a restart; a certificate removed is
    // signed anew by the same CA, which tickets already out still pin.
    authority.restart();
    let again =
        leasegate::wire::ticket::Ticket::parse(&authority.ticket("iot-sensor", &[])).unwrap();
    assert_eq!(again.ca_sha256, ticket.ca_sha256);
    assert_eq!(again.cert_sha256, ticket.cert_sha256);
    std::fs::remove_file(state.join("leaf.pem")).unwrap();
    authority.restart();
    let renewed =
        leasegate::wire::ticket::Ticket::parse(&authority.ticket("iot-sensor", &[])).unwrap();
    assert_eq!(renewed.ca_sha256, ticket.ca_sha256);
    assert_ne!(renewed.cert_sha256, ticket.cert_sha256);
}

#[test]
fn a_removed_role_is_not_replaced_by_whichever_role_now_matches() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    influx.query("CREATE DATABASE other");
    let backend = v1_backend("main", &influx.url(), ADMIN_USER, ADMIN_PASSWORD);
    let sensor = role("sensor", "iot-sensor", "main", "database", "sensors");
    let fallback = role("fallback", "iot-sensor", "main", "database", "other");
    let mut authority = AuthorityServer::start(&format!("{backend}{sensor}{fallback}"));
    let (_, credential) = authority.enroll_ok(&authority.ticket("iot-sensor", &[]), "gw-role");
    assert_eq!(authority.lease_ok(&credential, None)["role"], "sensor");
    // The identity's role goes; another role still matches its attributes.
    authority.write_config(&format!("{backend}{fallback}"));
    authority.restart();
    let (status, body) = authority.create_lease(&credential, None);
    assert_eq!(
        (status, error_code(&body)),
        (403, "no_role_matches"),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"sensor\""), "{message}");
    assert!(
        !authority.leases().iter().any(|l| l["role"] == "fallback"),
        "no lease under another role"
    );
    assert!(
        authority.log().contains("audit: lease refused gw-role"),
        "{}",
        authority.log()
    );
}

#[test]
fn two_deployments_on_one_influxdb_never_delete_each_others_credentials() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let first = AuthorityServer::start(&v1_sensor_body(&influx, "", ""));
    let (_, credential) = first.enroll_ok(&first.ticket("iot-sensor", &[]), "gw-first");
    let leases: Vec<String> = (0..4)
        .map(|_| {
            let l = first.lease_ok(&credential, Some(600));
            l["secret"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    // An admin's own users that merely look like leasegate's.
    influx.query("CREATE USER lg_x WITH PASSWORD 'x'");
    influx.query("CREATE USER lg_0123456789abcdef WITH PASSWORD 'x'");
    // A second deployment starts on the same InfluxDB and reconciles.
    let second = AuthorityServer::start(&v1_sensor_body(&influx, "", ""));
    assert!(
        wait_until(Duration::from_secs(10), || second
            .log()
            .contains("backend main: reconciled")),
        "{}",
        second.log()
    );
    let users = influx.users();
    for user in leases
        .iter()
        .map(String::as_str)
        .chain(["lg_x", "lg_0123456789abcdef"])
    {
        assert!(
            users.iter().any(|u| u == user),
            "{user} was deleted: {users:?}"
        );
    }
    // The first one's leases still write.
    let secret = first.lease_ok(&credential, Some(600))["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(v1_write(&influx, &secret), 204);
}

/// Runs an InfluxQL statement as a lease's user (`user:password`).
fn v1_query_as(influx: &Influx, secret: &str, db: &str, q: &str) -> (u16, String) {
    use base64::Engine as _;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = base64::engine::general_purpose::STANDARD.encode(secret);
    let mut r = agent
        .post(format!("{}/query", influx.url()))
        .header("Authorization", &format!("Basic {auth}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("db={db}&q={}", q.replace(' ', "+")))
        .unwrap();
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

#[test]
fn write_access_is_confined_to_a_database_per_identity_and_leases_are_capped() {
    let influx = Influx::start();
    let body = format!(
        "{}[[role]]\nname = \"own\"\nmatch = {{ service = \"iot-sensor\" }}\nbackend = \"main\"\ndatabase = \"sensors_{{identity}}\"\naccess = [\"write\"]\nmax_active_leases = 3\n",
        v1_backend("main", &influx.url(), ADMIN_USER, ADMIN_PASSWORD)
    );
    let authority = AuthorityServer::start(&body);
    // The name picks the database, so the admin binds it in the ticket; a
    // ticket for this role without one is refused.
    let unbound = authority.cli(&["ticket", "create", "--attribute", "service=iot-sensor"]);
    assert_eq!(unbound.status.code(), Some(2), "{}", unbound.stderr);
    assert!(
        unbound.stderr.contains("--identity-name"),
        "{}",
        unbound.stderr
    );
    let for_name = |name: &str| authority.ticket("iot-sensor", &["--identity-name", name]);
    let (_, a) = authority.enroll_ok(&for_name("gw-a"), "gw-a");
    let (_, b) = authority.enroll_ok(&for_name("gw-b"), "gw-b");
    // Another gateway's ticket cannot enroll under gw-a's name (and so get
    // at gw-a's database).
    let other = leasegate::wire::ticket::Ticket::parse(&for_name("gw-c")).unwrap();
    let (status, body) = authority.enroll(other.secret.expose(), "gw-a");
    assert_eq!(
        (status, error_code(&body)),
        (403, "identity_name_mismatch"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"gw-c\""),
        "{body}"
    );
    // A gateway enrolls under the ticket's name whatever its own config
    // says.
    let c =
        leasegate::agent::credential::identity::redeem(&other.encode(), "configured-name", false)
            .unwrap();
    assert_eq!(c.identity_name, "gw-c");
    let lease_a = authority.lease_ok(&a, None);
    assert_eq!(lease_a["target"]["database"], "sensors_gw-a");
    let lease_b = authority.lease_ok(&b, None);
    assert_eq!(lease_b["target"]["database"], "sensors_gw-b");
    let (secret_a, secret_b) = (
        lease_a["secret"].as_str().unwrap().to_owned(),
        lease_b["secret"].as_str().unwrap().to_owned(),
    );
    // Each writes its own database (made for it)...
    for (secret, db) in [(&secret_a, "sensors_gw-a"), (&secret_b, "sensors_gw-b")] {
        use base64::Engine as _;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let auth = base64::engine::general_purpose::STANDARD.encode(secret);
        let status = agent
            .post(format!("{}/write?db={db}", influx.url()))
            .header("Authorization", &format!("Basic {auth}"))
            .send("m v=1 1700000000000000000")
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 204, "{db}");
    }
    // ...and WRITE is enough to delete in it (what README says of write
    // access), but not in another identity's database.
    let (status, text) = v1_query_as(&influx, &secret_a, "sensors_gw-a", "DELETE FROM m");
    assert!(status == 200 && !text.contains("error"), "{status} {text}");
    let gone = influx.query("SELECT count(v) FROM \"sensors_gw-a\".autogen.m");
    assert!(gone["results"][0]["series"].is_null(), "deleted: {gone}");
    let (status, text) = v1_query_as(&influx, &secret_a, "sensors_gw-b", "DELETE FROM m");
    assert!(
        status == 403 || text.contains("not authorized"),
        "{status} {text}"
    );
    let kept = influx.query("SELECT count(v) FROM \"sensors_gw-b\".autogen.m");
    assert_eq!(kept["results"][0]["series"][0]["values"][0][1], 1, "{kept}");

    // At most max_active_leases live leases per identity.
    let second = authority.lease_ok(&a, None);
    authority.lease_ok(&a, None);
    let (status, refused) = authority.create_lease(&a, None);
    assert_eq!(
        (status, error_code(&refused)),
        (429, "lease_limit"),
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_active_leases"),
        "{refused}"
    );
    authority.delete(
        &format!("/v1/leases/{}", second["id"].as_str().unwrap()),
        &a,
    );
    authority.lease_ok(&a, None);
    // Another identity is not held back by it.
    authority.lease_ok(&b, None);
}

#[test]
fn a_role_turned_per_identity_refuses_identities_that_chose_their_own_name() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let backend = v1_backend("main", &influx.url(), ADMIN_USER, ADMIN_PASSWORD);
    let mut authority = AuthorityServer::start(&format!(
        "{backend}{}",
        role("sensor", "iot-sensor", "main", "database", "sensors")
    ));
    // Enrolled before the role named {identity}: the gateway chose the
    // name, and it could have chosen another gateway's.
    let (_, chosen) = authority.enroll_ok(&authority.ticket("iot-sensor", &[]), "gw-07");
    authority.lease_ok(&chosen, None);
    authority.write_config(&format!(
        "{backend}{}",
        role(
            "sensor",
            "iot-sensor",
            "main",
            "database",
            "sensors_{identity}"
        )
    ));
    authority.restart();
    let (status, body) = authority.create_lease(&chosen, None);
    assert_eq!(
        (status, error_code(&body)),
        (403, "identity_name_mismatch"),
        "{body}"
    );
    assert!(
        !influx
            .query("SHOW DATABASES")
            .to_string()
            .contains("sensors_gw-07"),
        "no database made for a name nobody bound"
    );
    // One enrolled with a bound name gets its own.
    let line = authority.ticket("iot-sensor", &["--identity-name", "gw-08"]);
    let (_, bound) = authority.enroll_ok(&line, "gw-08");
    assert_eq!(
        authority.lease_ok(&bound, None)["target"]["database"],
        "sensors_gw-08"
    );
}

#[test]
fn a_replica_given_the_deployment_ca_is_trusted_by_tickets_of_another() {
    let fake = FakeInflux::start(Flavor::V2, ADMIN_TOKEN, ORG, "sensors", 1 << 20);
    let body = format!(
        "{}{}",
        v2_backend("main", &fake.url(), ORG, ADMIN_TOKEN),
        role("sensor", "iot-sensor", "main", "bucket", "sensors")
    );
    let first = AuthorityServer::start_with(&body, true, "info");
    let ca = first.state_dir().join("ca.pem");
    let ca_key = first.state_dir().join("ca-key.pem");
    let second = AuthorityServer::start_with(
        &format!(
            "ca_cert_file = \"{}\"\nca_key_file = \"{}\"\n{body}",
            ca.display(),
            ca_key.display()
        ),
        true,
        "info",
    );
    assert!(!second.state_dir().join("ca.pem").exists());
    let ticket = |a: &AuthorityServer| {
        leasegate::wire::ticket::Ticket::parse(&a.ticket("iot-sensor", &[])).unwrap()
    };
    let (t1, t2) = (ticket(&first), ticket(&second));
    assert_eq!(t1.ca_sha256, t2.ca_sha256);
    assert_ne!(
        t1.cert_sha256, t2.cert_sha256,
        "each replica its own certificate"
    );
    // The pins of the first replica's ticket take the second replica.
    let client = leasegate::wire::client::AuthorityClient::new(
        &second.url(),
        &leasegate::wire::client::Trust::Pinned(t1.pins()),
    )
    .unwrap();
    let enrolled = client.enroll(&t2.secret, "gw-second").unwrap();
    assert!(!enrolled.identity_id.is_empty());
}

/// A port another process holds (a free port taken again by a test
/// running beside this one) is not taken for the authority coming up: the
/// harness waits for this authority's own "serving" line, not only for a
/// port that accepts, and says why it never came.
#[test]
fn an_authority_that_cannot_bind_is_not_taken_for_one_that_came_up() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    for tls in [true, false] {
        let started = std::panic::catch_unwind(|| {
            AuthorityServer::start_on_port(&unreached(), tls, "info", None, port)
        });
        let Err(panic) = started else {
            panic!("tls {tls}: an authority that could not bind was taken as up");
        };
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            message.contains("did not come up") && message.contains("in use"),
            "tls {tls}: {message}"
        );
    }
}

/// Backend and role of an authority whose InfluxDB is never reached.
fn unreached() -> String {
    format!(
        "{}{}",
        v1_backend("main", "http://127.0.0.1:9", "admin", "pw"),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    )
}
