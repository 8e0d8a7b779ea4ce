//! What a configuration reload (SIGHUP) can apply to a running gateway,
//! and which changed keys need a restart, named by their path in the file.
//! A reload applies the subscriptions and their formats, the batch limits
//! and the log level; every other change is listed here.
//!
//! It compares values, never their `Debug` text (a secret or a TLS setting
//! prints the same whatever it holds). It never reads files and never
//! names a secret's value.

use super::gateway::{Config, Influx, LeaseConfig, Mqtt, Writing};

/// The keys whose change between `old` and `new` takes effect only after a
/// restart, in file order.
pub fn restart_required(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key: &'static str, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    check("state_dir", old.state_dir != new.state_dir);
    check("ticket_dir", old.ticket_dir != new.ticket_dir);
    check("runtime_dir", old.runtime_dir != new.runtime_dir);
    check(
        "shutdown_timeout",
        old.shutdown_timeout != new.shutdown_timeout,
    );
    mqtt_changes(&old.mqtt, &new.mqtt, &mut check);
    writing_changes(&old.writing, &new.writing, &mut check);
    check("metrics.listen", old.metrics_listen != new.metrics_listen);
    check(
        "spool.max_bytes",
        old.spool.max_bytes != new.spool.max_bytes,
    );
    check("spool.fsync", old.spool.fsync != new.spool.fsync);
    check("spool.overflow", old.spool.overflow != new.spool.overflow);
    check("spool.min_free", old.spool.min_free != new.spool.min_free);
    check(
        "spool.commit_delay",
        old.spool.commit_delay != new.spool.commit_delay,
    );
    check(
        "clock.max_offset",
        old.clock.max_offset != new.clock.max_offset,
    );
    check("clock.max_wait", old.clock.max_wait != new.clock.max_wait);
    check(
        "dead_letter.max_bytes",
        old.dead_letter_max_bytes != new.dead_letter_max_bytes,
    );
    keys
}

/// `[mqtt]` but its subscriptions, which a reload applies.
fn mqtt_changes(old: &Mqtt, new: &Mqtt, check: &mut impl FnMut(&'static str, bool)) {
    check("mqtt.url", old.url != new.url);
    check("mqtt.client_id", old.client_id != new.client_id);
    check("mqtt.username", old.username != new.username);
    check("mqtt.password", old.password != new.password);
    check("mqtt.keep_alive", old.keep_alive != new.keep_alive);
    check(
        "mqtt.max_packet_size",
        old.max_packet_size != new.max_packet_size,
    );
    check(
        "mqtt.max_tags_per_point",
        old.point_limits.max_tags != new.point_limits.max_tags,
    );
    check(
        "mqtt.max_fields_per_point",
        old.point_limits.max_fields != new.point_limits.max_fields,
    );
    let files = |m: &Mqtt| m.tls.as_ref().map(|t| t.1.clone()).unwrap_or_default();
    let (a, b) = (files(old), files(new));
    check("mqtt.ca_file", a.ca_file != b.ca_file);
    check(
        "mqtt.client_cert_file",
        a.client_cert_file != b.client_cert_file,
    );
    check(
        "mqtt.client_key_file",
        a.client_key_file != b.client_key_file,
    );
    check(
        "mqtt.watch_broker_drops",
        old.watch_broker_drops != new.watch_broker_drops,
    );
    check(
        "mqtt.publish_status",
        old.publish_status != new.publish_status,
    );
    check(
        "mqtt.status_interval",
        old.status_interval != new.status_interval,
    );
}

fn writing_changes(old: &Writing, new: &Writing, check: &mut impl FnMut(&'static str, bool)) {
    match (old, new) {
        (Writing::Static(a), Writing::Static(b)) => influx_changes(a, b, check),
        (Writing::Leased(a), Writing::Leased(b)) => lease_changes(a, b, check),
        _ => check("[influxdb] (static credentials or leases)", true),
    }
}

fn influx_changes(old: &Influx, new: &Influx, check: &mut impl FnMut(&'static str, bool)) {
    check("influxdb.api", old.api != new.api);
    check("influxdb.url", old.url != new.url);
    check("influxdb.database", old.database != new.database);
    check(
        "influxdb.retention_policy",
        old.retention_policy != new.retention_policy,
    );
    check("influxdb.org", old.org != new.org);
    check("influxdb.bucket", old.bucket != new.bucket);
    check("influxdb.username", old.username != new.username);
    // A secret read from the same file as before is the running daemon's
    // to take up: it reads the file again when InfluxDB refuses the one in
    // use. An inline one, or one from another file, needs a restart.
    let live = old.secret_file.is_some() && old.secret_file == new.secret_file;
    check("influxdb.password", !live && old.password != new.password);
    check("influxdb.token", !live && old.token != new.token);
    check(
        "influxdb.password_file or token_file",
        old.secret_file != new.secret_file,
    );
    check("influxdb.gzip", old.gzip != new.gzip);
    check("influxdb.timeout", old.timeout != new.timeout);
}

fn lease_changes(old: &LeaseConfig, new: &LeaseConfig, check: &mut impl FnMut(&'static str, bool)) {
    check("identity_name", old.identity_name != new.identity_name);
    check("lease.ttl", old.ttl != new.ttl);
    check("lease.trust", old.system_trust != new.system_trust);
    check("influxdb.url", old.url_override != new.url_override);
    check("influxdb.gzip", old.gzip != new.gzip);
    check("influxdb.timeout", old.timeout != new.timeout);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const HEAD: &str = r#"state_dir = "/var/lib/lg"
[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "gw-1"
username = "gw"
[[mqtt.subscribe]]
topic = "sensors/#"
"#;

    /// HEAD with `password` in `[mqtt]`.
    fn head_with_password(password: &str) -> String {
        HEAD.replace(
            "username = \"gw\"\n",
            &format!("username = \"gw\"\npassword = \"{password}\"\n"),
        )
    }

    fn config(text: &str) -> Config {
        Config::from_toml(Path::new("/etc/leasegate.toml"), text)
            .unwrap_or_else(|e| panic!("{}", e.lines().join("\n")))
    }

    fn changed(old: &str, new: &str) -> Vec<&'static str> {
        restart_required(&config(old), &config(new))
    }

    fn with_secrets(mqtt_password: &str, token: &str) -> String {
        format!(
            "{}[influxdb]\napi = \"v2\"\nurl = \"http://127.0.0.1:8086\"\norg = \"o\"\nbucket = \"b\"\ntoken = \"{token}\"\n",
            head_with_password(mqtt_password)
        )
    }

    #[test]
    fn a_changed_inline_secret_is_named_though_it_prints_the_same() {
        let before = with_secrets("pw-1", "tok-1");
        assert_eq!(changed(&before, &before), Vec::<&str>::new());
        assert_eq!(
            changed(&before, &with_secrets("pw-2", "tok-1")),
            ["mqtt.password"]
        );
        assert_eq!(
            changed(&before, &with_secrets("pw-1", "tok-2")),
            ["influxdb.token"]
        );
        let v1 = |password: &str| {
            format!(
                "{HEAD}[influxdb]\nurl = \"http://127.0.0.1:8086\"\ndatabase = \"d\"\nusername = \"u\"\npassword = \"{password}\"\n"
            )
        };
        assert_eq!(changed(&v1("a"), &v1("b")), ["influxdb.password"]);
    }

    #[test]
    fn a_secret_file_rotated_in_place_is_taken_up_live_another_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        crate::config::tls::tests::write_secret(&one, "tok-1\n");
        crate::config::tls::tests::write_secret(&two, "tok-1\n");
        let file = |path: &Path| {
            format!(
                "{HEAD}[influxdb]\napi = \"v3\"\nurl = \"http://127.0.0.1:8181\"\ndatabase = \"d\"\ntoken_file = \"{}\"\n",
                path.display()
            )
        };
        let before = config(&file(&one));
        std::fs::write(&one, "tok-2\n").unwrap();
        assert!(restart_required(&before, &config(&file(&one))).is_empty());
        assert_eq!(
            restart_required(&config(&file(&one)), &config(&file(&two))),
            ["influxdb.token", "influxdb.password_file or token_file"]
        );
    }

    #[test]
    fn each_changed_tls_file_of_the_broker_is_named() {
        let pki = crate::config::tls::tests::TestPki::new();
        let tls = |ca: &Path, cert: &Path, key: &Path| {
            config(&format!(
                "{}client_id = \"gw-1\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n[[mqtt.subscribe]]\ntopic = \"s/#\"\n",
                "[mqtt]\nurl = \"mqtts://127.0.0.1:8883\"\n",
                ca.display(),
                cert.display(),
                key.display()
            ))
        };
        let base = tls(&pki.ca, &pki.cert, &pki.key);
        assert!(restart_required(&base, &tls(&pki.ca, &pki.cert, &pki.key)).is_empty());
        assert_eq!(
            restart_required(&base, &tls(&pki.ca2, &pki.cert, &pki.key)),
            ["mqtt.ca_file"]
        );
        assert_eq!(
            restart_required(&base, &tls(&pki.ca, &pki.cert2, &pki.key2)),
            ["mqtt.client_cert_file", "mqtt.client_key_file"]
        );
    }

    #[test]
    fn what_a_reload_applies_is_never_named() {
        let before = with_secrets("pw", "tok");
        let after = format!(
            "log_level = \"debug\"\n{}[[mqtt.subscribe]]\ntopic = \"other/#\"\nformat = \"json\"\n[batch]\nmax_lines = 10\n",
            before
                .replace("[influxdb]", "[influxdb]\ngzip = true")
                .replace("[[mqtt.subscribe]]\ntopic = \"sensors/#\"\n", "")
        );
        assert_eq!(changed(&before, &after), Vec::<&str>::new());
        let leased = format!("{HEAD}[lease]\nttl = \"10m\"\n");
        assert_eq!(
            changed(&leased, &format!("{HEAD}[lease]\nttl = \"20m\"\n")),
            ["lease.ttl"]
        );
        assert_eq!(
            changed(&leased, &with_secrets("pw", "tok"))
                .iter()
                .filter(|k| k.starts_with("[influxdb]"))
                .count(),
            1
        );
    }
}
