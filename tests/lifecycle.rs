//! The gateway's lease lifecycle end to end: real Mosquitto, real InfluxDB
//! 1.x, a real `leasegate-authority` and the `leasegate` daemon, joined by a
//! ticket dropped into the daemon's ticket directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::authority::{AuthorityServer, role, v1_backend};
use support::publish_seq as publish;
use support::{ADMIN_PASSWORD, ADMIN_USER, Daemon, Influx, Mosquitto, leased_config, wait_until};

fn authority_for(influx: &Influx) -> AuthorityServer {
    AuthorityServer::start(&authority_body(influx))
}

fn authority_body(influx: &Influx) -> String {
    format!(
        "{}{}",
        v1_backend("main", &influx.url(), ADMIN_USER, ADMIN_PASSWORD),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    )
}

fn servers() -> (Mosquitto, Influx) {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    (broker, influx)
}

fn tickets(daemon: &Daemon) -> PathBuf {
    daemon.dir.path().join("tickets")
}

fn drop_ticket(daemon: &Daemon, name: &str, line: &str) -> PathBuf {
    let dir = tickets(daemon);
    std::fs::create_dir_all(&dir).unwrap();
    // Written aside and renamed in, as a careful tech (or scp) would; the
    // CRLF is what a Windows editor leaves.
    let tmp = dir.join(format!("{name}.part"));
    std::fs::write(&tmp, format!("{line}\r\n")).unwrap();
    let path = dir.join(format!("{name}.ticket"));
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn status(daemon: &Daemon) -> Value {
    let out = support::leasegate_command()
        .arg("--config")
        .arg(daemon.dir.path().join("leasegate.toml"))
        .args(["status", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        Value::String(format!(
            "no status: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

fn leasegate_users(influx: &Influx) -> Vec<String> {
    let mut users = influx.users();
    users.retain(|u| u.starts_with("lg_"));
    users
}

fn enrolled(daemon: &Daemon, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let s = status(daemon);
        s["enrollment"]["state"] == "enrolled" && s["enrollment"]["lease_id"].is_string()
    })
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_dropped_ticket_enrolls_within_5s_and_points_reach_influxdb() {
    let (broker, influx) = servers();
    let authority = authority_for(&influx);
    let daemon = Daemon::start(&leased_config(&broker, "gw-drop", "1h"));
    assert!(daemon.wait_for_log("waiting for a ticket", 1, Duration::from_secs(10)));
    // Only a subscribed session gets the broker's messages (a slow start,
    // as under qemu, subscribes after it says it waits for a ticket).
    assert!(daemon.wait_for_log("ready:", 1, Duration::from_secs(10)));
    // Points published before enrollment wait in the spool.
    publish(&broker, "early", 0, 50);
    let waiting = wait_until(Duration::from_secs(5), || {
        status(&daemon)["enrollment"]["state"] == "waiting for a ticket"
    });
    assert!(waiting, "{}", status(&daemon));

    let ticket = drop_ticket(&daemon, "gw", &authority.ticket("iot-sensor", &[]));
    let t0 = Instant::now();
    assert!(
        enrolled(&daemon, Duration::from_secs(5)),
        "not enrolled within 5 s:\n{}",
        daemon.log()
    );
    eprintln!("enrolled {:?} after the drop", t0.elapsed());
    assert!(!ticket.exists(), "the used ticket is deleted");
    let state = daemon.dir.path().join("state");
    assert_eq!(mode(&state.join("identity.json")), 0o600);
    assert_eq!(mode(&state.join("lease.json")), 0o600);
    // `status` asks the daemon through its socket (the report file is only
    // the fallback).
    assert_eq!(mode(&state.join("status.sock")), 0o660);
    std::fs::remove_file(state.join("status.json")).unwrap();
    assert_eq!(status(&daemon)["enrollment"]["state"], "enrolled");
    publish(&broker, "later", 0, 50);
    influx.assert_arrives("early", 50, Duration::from_secs(20), &daemon);
    influx.assert_arrives("later", 50, Duration::from_secs(20), &daemon);
    let s = status(&daemon);
    assert_eq!(s["enrollment"]["identity_name"], "gw-drop");
    // The report is rewritten every second.
    assert!(wait_until(
        Duration::from_secs(3),
        || status(&daemon)["points_written"] == 100
    ));
    assert_eq!(s["mqtt_connected"], true);
    // The human status has every field.
    let out = support::leasegate_command()
        .arg("--config")
        .arg(daemon.dir.path().join("leasegate.toml"))
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for field in [
        "enrollment:",
        "identity:",
        "lease:",
        "expires:",
        "next renewal:",
        "last error:",
        "mqtt:",
        "points in:",
        "written:",
        "dead-lettered:",
        "dropped:",
        "spool:",
    ] {
        assert!(text.contains(field), "status lacks {field}:\n{text}");
    }
    assert!(text.contains("in 59m") || text.contains("in 1h"), "{text}");
}

#[test]
fn six_second_leases_renew_through_a_minute_with_no_refused_write() {
    let (broker, influx) = servers();
    let authority = authority_for(&influx);
    let mut daemon = Daemon::start(&leased_config(&broker, "gw-renew", "6s"));
    drop_ticket(&daemon, "gw", &authority.ticket("iot-sensor", &[]));
    assert!(
        enrolled(&daemon, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(60) {
        publish(&broker, "steady", sent, 20);
        sent += 20;
        std::thread::sleep(Duration::from_millis(250));
    }
    influx.assert_arrives("steady", sent, Duration::from_secs(30), &daemon);
    let s = status(&daemon);
    let renewals = s["enrollment"]["renewals"].as_u64().unwrap();
    eprintln!("{renewals} renewals in 60 s; {sent} points");
    assert!(renewals >= 8, "only {renewals} renewals:\n{}", daemon.log());
    let users = leasegate_users(&influx);
    assert!(users.len() <= 2, "leasegate users left: {users:?}");
    daemon.stop_cleanly();
    let log = daemon.log();
    assert!(
        !log.contains("refused lease"),
        "a write was refused:\n{log}"
    );
    // As the writer words a refusal ("InfluxDB answered 401: ..."); a bare
    // " 403" also matches durations such as "3s 403ms".
    assert!(
        !log.contains("answered 401") && !log.contains("answered 403"),
        "{log}"
    );
}

#[test]
fn a_lease_revoked_mid_stream_is_replaced_and_no_point_is_lost() {
    let (broker, influx) = servers();
    let authority = authority_for(&influx);
    let daemon = Daemon::start(&leased_config(&broker, "gw-revoke", "10m"));
    drop_ticket(&daemon, "gw", &authority.ticket("iot-sensor", &[]));
    assert!(
        enrolled(&daemon, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
    publish(&broker, "rv", 0, 200);
    influx.assert_arrives("rv", 200, Duration::from_secs(20), &daemon);
    let lease = status(&daemon)["enrollment"]["lease_id"]
        .as_str()
        .unwrap()
        .to_owned();
    authority.cli_ok(&["lease", "revoke", &lease]);
    publish(&broker, "rv", 200, 300);
    influx.assert_arrives("rv", 500, Duration::from_secs(30), &daemon);
    assert!(
        daemon
            .log()
            .contains(&format!("InfluxDB refused lease {lease}")),
        "{}",
        daemon.log()
    );
    let replaced = wait_until(Duration::from_secs(5), || {
        status(&daemon)["enrollment"]["lease_id"]
            .as_str()
            .is_some_and(|l| l != lease)
    });
    assert!(replaced, "{}", status(&daemon));
}

#[test]
fn the_authority_away_longer_than_the_ttl_loses_nothing() {
    let (broker, influx) = servers();
    let mut authority = authority_for(&influx);
    let mut daemon = Daemon::start(&leased_config(&broker, "gw-away", "4s"));
    drop_ticket(&daemon, "gw", &authority.ticket("iot-sensor", &[]));
    assert!(
        enrolled(&daemon, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
    publish(&broker, "away", 0, 100);
    influx.assert_arrives("away", 100, Duration::from_secs(20), &daemon);
    assert!(authority.terminate().is_some_and(|s| s.success()));
    // 10 s away: the 4 s lease runs out (and the authority's reaper, down
    // too, deletes its user once back).
    for round in 0..10 {
        publish(&broker, "away", 100 + round * 20, 20);
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(daemon.is_running());
    assert!(
        daemon.log().contains("cannot get a lease"),
        "{}",
        daemon.log()
    );
    authority.restart();
    influx.assert_arrives("away", 300, Duration::from_secs(60), &daemon);
    assert!(daemon.is_running(), "the daemon never exits");
}

#[test]
fn a_revoked_identity_waits_for_a_new_ticket_and_the_held_points_arrive() {
    let (broker, influx) = servers();
    let authority = authority_for(&influx);
    let daemon = Daemon::start(&leased_config(&broker, "gw-again", "1h"));
    drop_ticket(&daemon, "first", &authority.ticket("iot-sensor", &[]));
    assert!(
        enrolled(&daemon, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
    let identity = status(&daemon)["enrollment"]["identity_id"]
        .as_str()
        .unwrap()
        .to_owned();
    authority.cli_ok(&["identity", "revoke", &identity]);
    // The next write is refused (the lease went with the identity); the
    // authority then refuses the identity.
    publish(&broker, "held", 0, 100);
    let waiting = wait_until(Duration::from_secs(20), || {
        status(&daemon)["enrollment"]["state"] == "waiting for a ticket"
    });
    assert!(waiting, "{}", daemon.log());
    publish(&broker, "held", 100, 100);
    std::thread::sleep(Duration::from_secs(1));
    let s = status(&daemon);
    assert!(
        s["spool_points"].as_u64().unwrap() > 0,
        "points are held: {s}"
    );
    assert!(!daemon.dir.path().join("state/identity.json").exists());

    drop_ticket(&daemon, "second", &authority.ticket("iot-sensor", &[]));
    assert!(
        enrolled(&daemon, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
    influx.assert_arrives("held", 200, Duration::from_secs(30), &daemon);
    assert_ne!(
        status(&daemon)["enrollment"]["identity_id"]
            .as_str()
            .unwrap(),
        identity
    );
}

#[test]
fn each_bad_ticket_is_rejected_with_its_reason_and_an_unreachable_authority_keeps_it() {
    let (broker, influx) = servers();
    let mut authority = authority_for(&influx);
    let tls = AuthorityServer::start_with(&authority_body(&influx), true, "info");
    let daemon = Daemon::start(&leased_config(&broker, "gw-bad", "1h"));
    assert!(daemon.wait_for_log("waiting for a ticket", 1, Duration::from_secs(10)));

    let expired = authority.ticket("iot-sensor", &["--expires-in", "1s"]);
    let used = authority.ticket("iot-sensor", &[]);
    authority.enroll_ok(&used, "someone-else");
    let revoked = authority.ticket("iot-sensor", &[]);
    let id = leasegate::wire::ticket::Ticket::parse(&revoked).unwrap().id;
    authority.cli_ok(&["ticket", "revoke", &id]);
    let mut pinned =
        leasegate::wire::ticket::Ticket::parse(&tls.ticket("iot-sensor", &[])).unwrap();
    // The ticket pins another CA than the one that signed the
    // authority's certificate.
    let real = pinned.ca_sha256.clone().unwrap();
    let pinned_id = pinned.id.clone();
    pinned.ca_sha256 = Some("00".repeat(32));
    let mismatch = pinned.encode();
    // Valid, but its role is gone by the time it is used.
    let no_role = authority.ticket("iot-sensor", &[]);
    let config = std::fs::read_to_string(authority.config_path()).unwrap();
    std::fs::write(
        authority.config_path(),
        config.replace("service = \"iot-sensor\"", "service = \"retired\""),
    )
    .unwrap();
    authority.restart();
    std::thread::sleep(Duration::from_millis(1200));

    let cases = [
        (
            "malformed",
            "this is not a ticket".to_owned(),
            "ticket_malformed",
        ),
        ("expired", expired, "ticket_expired"),
        ("used", used, "ticket_used_up"),
        ("revoked", revoked, "ticket_revoked"),
        ("norole", no_role, "no_role_matches"),
        ("mismatch", mismatch, "certificate_mismatch"),
    ];
    for (name, line, _) in &cases {
        drop_ticket(&daemon, name, line);
    }
    let dir = tickets(&daemon);
    for (name, _, code) in &cases {
        let rejected = dir.join(format!("{name}.ticket.rejected"));
        let reason = dir.join(format!("{name}.ticket.reason"));
        assert!(
            wait_until(Duration::from_secs(10), || rejected.exists()),
            "{name} not rejected:\n{}",
            daemon.log()
        );
        let text = std::fs::read_to_string(&reason).unwrap();
        assert!(text.starts_with(code), "{name}: {text}");
        assert!(!dir.join(format!("{name}.ticket")).exists());
    }
    let reason = std::fs::read_to_string(dir.join("mismatch.ticket.reason")).unwrap();
    assert!(
        reason.contains(&real) && reason.contains(&"00".repeat(32)),
        "both fingerprints named: {reason}"
    );
    // Its secret never left, so the ticket still works at the authority:
    // the operator is told what that may mean and what to do.
    let advice = format!("leasegate-authority ticket revoke {pinned_id}");
    assert!(
        reason.contains("POSSIBLE ATTACK") && reason.contains(&advice),
        "{reason}"
    );
    assert!(daemon.log().contains(&advice));

    // An authority that cannot be reached is no reason to reject.
    let mut away =
        leasegate::wire::ticket::Ticket::parse(&authority.ticket("retired", &[])).unwrap();
    away.url = format!("http://127.0.0.1:{}", support::free_port());
    let kept = drop_ticket(&daemon, "away", &away.encode());
    assert!(daemon.wait_for_log("kept for another try", 1, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_secs(2));
    assert!(kept.exists(), "the ticket stays for the next try");
    assert!(!dir.join("away.ticket.rejected").exists());
    assert!(status(&daemon)["enrollment"]["state"] == "waiting for a ticket");
}

#[test]
fn a_restart_with_a_valid_stored_lease_creates_no_new_one() {
    let (broker, influx) = servers();
    let authority = authority_for(&influx);
    let mut daemon = Daemon::start(&leased_config(&broker, "gw-restart", "10m"));
    drop_ticket(&daemon, "gw", &authority.ticket("iot-sensor", &[]));
    assert!(
        enrolled(&daemon, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
    let before = status(&daemon)["enrollment"]["lease_id"]
        .as_str()
        .unwrap()
        .to_owned();
    daemon.stop_cleanly();
    daemon.restart();
    assert!(
        enrolled(&daemon, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
    publish(&broker, "restart", 0, 100);
    influx.assert_arrives("restart", 100, Duration::from_secs(20), &daemon);
    assert_eq!(status(&daemon)["enrollment"]["lease_id"], before.as_str());
    assert_eq!(authority.leases().len(), 1, "no new lease was created");
    assert!(
        daemon
            .log()
            .contains(&format!("reusing stored lease {before}"))
    );
}

#[test]
fn enroll_and_lease_commands_work_with_the_stored_identity() {
    let (broker, influx) = servers();
    let authority = authority_for(&influx);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("leasegate.toml");
    std::fs::write(
        &conf,
        leased_config(&broker, "gw-cli", "10m").replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();
    let ticket = dir.path().join("gw.ticket");
    let line = authority.ticket("iot-sensor", &[]);
    std::fs::write(&ticket, &line).unwrap();
    let run = |args: &[&str]| {
        let out = support::leasegate_command()
            .arg("--config")
            .arg(&conf)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["enroll", ticket.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("enrolled as gw-cli"), "{out}");
    assert!(!ticket.exists(), "the used ticket is deleted");
    let (code, out, _) = run(&["lease", "create", "--ttl", "5m", "--json"]);
    assert_eq!(code, Some(0));
    let lease: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(lease["ttl_secs"], 300);
    let id = lease["id"].as_str().unwrap();
    let (_, out, _) = run(&["lease", "list"]);
    assert!(
        out.contains(id) && out.contains("gw-cli") && out.contains("in 5m"),
        "{out}"
    );
    let (_, out, _) = run(&["lease", "show", id]);
    assert!(out.contains("status:      active"), "{out}");
    let (code, out, _) = run(&["lease", "revoke", id]);
    assert_eq!(code, Some(0));
    assert!(out.contains("revoked"), "{out}");
    // Enrolling again with the used ticket fails with its reason, and the
    // file is renamed as in the ticket directory.
    std::fs::write(&ticket, &line).unwrap();
    let (code, _, err) = run(&["enroll", ticket.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("ticket_used_up"), "{err}");
    assert!(dir.path().join("gw.ticket.rejected").exists());
    let reason = std::fs::read_to_string(dir.path().join("gw.ticket.reason")).unwrap();
    assert!(reason.starts_with("ticket_used_up"), "{reason}");
}

#[test]
fn leases_refused_before_they_ever_wrote_back_off_instead_of_churning() {
    let (broker, influx) = servers();
    // A role that may only read: InfluxDB refuses every write with its
    // leases (403), however new.
    let body = authority_body(&influx).replace("access = [\"write\"]", "access = [\"read\"]");
    let authority = AuthorityServer::start(&body);
    let mut daemon = Daemon::start(&leased_config(&broker, "gw-churn", "10m"));
    drop_ticket(&daemon, "gw", &authority.ticket("iot-sensor", &[]));
    assert!(
        enrolled(&daemon, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
    publish(&broker, "churn", 0, 10);
    std::thread::sleep(Duration::from_secs(15));
    let leases = authority.leases().len();
    eprintln!("{leases} leases in 15 s of refused writes");
    // 1 s, 2 s, 4 s, 8 s of backoff: about five, never one per write.
    assert!(
        (2..=7).contains(&leases),
        "{leases} leases:\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("before it wrote anything"),
        "{}",
        daemon.log()
    );
    assert!(daemon.is_running());
    // Nothing was lost: the points are held (spooled, not written, not
    // dropped).
    let s = status(&daemon);
    assert_eq!(
        (s["points_in"].as_u64(), s["points_written"].as_u64()),
        (Some(10), Some(0)),
        "{s}"
    );
    assert_eq!(s["points_dropped"], 0);
}

fn renewals(daemon: &Daemon) -> u64 {
    status(daemon)["enrollment"]["renewals"]
        .as_u64()
        .unwrap_or(0)
}

fn ca_fingerprint(authority: &AuthorityServer) -> String {
    use rustls::pki_types::pem::PemObject as _;
    let der =
        rustls::pki_types::CertificateDer::from_pem_file(authority.state_dir().join("ca.pem"))
            .unwrap();
    leasegate::secret::sha256_hex(der.as_ref())
}

#[test]
fn a_replaced_certificate_from_the_ca_needs_no_new_ticket_and_another_ca_is_refused() {
    let (broker, influx) = servers();
    let mut authority = AuthorityServer::start_with(&authority_body(&influx), true, "info");
    let mut daemon = Daemon::start(&leased_config(&broker, "gw-ca", "6s"));
    drop_ticket(&daemon, "gw", &authority.ticket("iot-sensor", &[]));
    assert!(
        enrolled(&daemon, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
    let identity_file = daemon.dir.path().join("state/identity.json");
    let identity = std::fs::read_to_string(&identity_file).unwrap();
    let pinned = ca_fingerprint(&authority);
    assert!(identity.contains(&pinned), "the identity pins the CA");
    publish(&broker, "before", 0, 50);
    influx.assert_arrives("before", 50, Duration::from_secs(30), &daemon);

    // The replica's certificate is replaced: a new one from the same CA.
    let leaf = authority.state_dir().join("leaf.pem");
    let old_leaf = std::fs::read(&leaf).unwrap();
    std::fs::remove_file(&leaf).unwrap();
    authority.restart();
    assert_ne!(std::fs::read(&leaf).unwrap(), old_leaf, "a new certificate");
    let at = renewals(&daemon);
    let mut sent = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        publish(&broker, "after", sent, 20);
        sent += 20;
        std::thread::sleep(Duration::from_millis(250));
    }
    influx.assert_arrives("after", sent, Duration::from_secs(30), &daemon);
    assert!(
        renewals(&daemon) >= at + 2,
        "no renewals with the new certificate:\n{}",
        daemon.log()
    );
    assert_eq!(
        std::fs::read_to_string(&identity_file).unwrap(),
        identity,
        "the same identity, not enrolled again"
    );

    // A new CA (its files lost and made again): the gateway refuses it,
    // naming both, and keeps running on the lease it holds.
    authority.terminate();
    let leases = authority.leases().len();
    for f in ["ca.pem", "ca-key.pem", "leaf.pem", "leaf-key.pem"] {
        std::fs::remove_file(authority.state_dir().join(f)).unwrap();
    }
    authority.restart();
    let other = ca_fingerprint(&authority);
    assert_ne!(other, pinned);
    let named = wait_until(Duration::from_secs(20), || {
        daemon
            .log()
            .lines()
            .any(|l| l.contains("cannot get a lease") && l.contains(&pinned) && l.contains(&other))
    });
    assert!(named, "{}", daemon.log());
    assert!(daemon.is_running());
    assert_eq!(authority.leases().len(), leases, "a request got through");
}

#[test]
fn a_gateway_that_pinned_the_old_self_signed_certificate_moves_to_the_ca() {
    let (broker, influx) = servers();
    let mut authority = AuthorityServer::start_with(&authority_body(&influx), true, "info");
    // The state dir of an authority from before the CA: one self-signed
    // certificate, which its tickets pinned.
    authority.terminate();
    let state = authority.state_dir();
    for f in ["ca.pem", "ca-key.pem", "leaf.pem", "leaf-key.pem"] {
        std::fs::remove_file(state.join(f)).unwrap();
    }
    let old = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(state.join("cert.pem"), old.cert.pem()).unwrap();
    std::fs::write(state.join("key.pem"), old.signing_key.serialize_pem()).unwrap();
    let old_pin = leasegate::secret::sha256_hex(old.cert.der().as_ref());
    authority.restart();
    let ticket =
        leasegate::wire::ticket::Ticket::parse(&authority.ticket("iot-sensor", &[])).unwrap();
    assert_eq!(ticket.cert_sha256.as_deref(), Some(old_pin.as_str()));
    assert_eq!(
        ticket.ca_sha256, None,
        "the CA does not sign what is served"
    );

    let daemon = Daemon::start(&leased_config(&broker, "gw-move", "6s"));
    drop_ticket(&daemon, "gw", &ticket.encode());
    assert!(
        enrolled(&daemon, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
    let identity_file = daemon.dir.path().join("state/identity.json");
    let read_identity = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(&identity_file).unwrap()).unwrap()
    };
    let ca = ca_fingerprint(&authority);
    // The first grant names the CA: it is pinned beside the certificate.
    assert!(
        wait_until(Duration::from_secs(10), || read_identity()["ca_sha256"]
            == ca.as_str()),
        "{}",
        daemon.log()
    );
    assert_eq!(read_identity()["cert_sha256"], old_pin.as_str());
    let id = read_identity()["identity_id"].clone();
    publish(&broker, "before", 0, 50);
    influx.assert_arrives("before", 50, Duration::from_secs(30), &daemon);

    // The operator retires the old certificate: the replica serves one
    // the CA signed, and the gateway drops the old pin at its next lease.
    authority.terminate();
    std::fs::remove_file(state.join("cert.pem")).unwrap();
    std::fs::remove_file(state.join("key.pem")).unwrap();
    authority.restart();
    assert!(state.join("leaf.pem").exists());
    assert!(
        wait_until(Duration::from_secs(15), || read_identity()
            .get("cert_sha256")
            .is_none()),
        "{}",
        daemon.log()
    );
    assert_eq!(read_identity()["ca_sha256"], ca.as_str());
    assert_eq!(read_identity()["identity_id"], id, "not enrolled again");
    publish(&broker, "after", 0, 50);
    influx.assert_arrives("after", 50, Duration::from_secs(30), &daemon);
    let log = daemon.log();
    assert!(
        !log.contains("answered 401") && !log.contains("answered 403"),
        "{log}"
    );
}
