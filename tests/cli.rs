//! The command-line surface of both binaries: help on every level,
//! versions, config example and check, and exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const GATEWAY: &str = env!("CARGO_BIN_EXE_leasegate");
const AUTHORITY: &str = env!("CARGO_BIN_EXE_leasegate-authority");

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("LEASEGATE_CONFIG")
        .output()
        .unwrap()
}

fn run_with_stdin(bin: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const BAD: &str = r#"
[mqtt]
client_id = "gw-01"
kepp_alive = "30s"
[[mqtt.subscribe]]
topic = "sensors/#"
[influxdb]
url = "http://127.0.0.1:8086"
database = "sensors"
timeout = "10 lightyears"
[clock]
max_offset = "0s"
max_wait = "soon"
"#;

#[test]
fn config_check_names_every_problem_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, BAD).unwrap();
    for args in [["config", "check"], ["run", ""]] {
        let args: Vec<&str> = args.iter().copied().filter(|a| !a.is_empty()).collect();
        let mut all = vec!["--config", path.to_str().unwrap()];
        all.extend(args);
        let out = run(GATEWAY, &all);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{all:?}: {err}");
        assert!(err.contains("mqtt.url: missing (required)"), "{err}");
        assert!(
            err.contains("mqtt.kepp_alive: unknown key; did you mean \"keep_alive\"?"),
            "{err}"
        );
        assert!(
            err.contains("influxdb.timeout: invalid duration \"10 lightyears\""),
            "{err}"
        );
        assert!(
            err.contains("clock.max_offset: \"0s\" is shorter than the minimum 1ms"),
            "{err}"
        );
        assert!(
            err.contains("clock.max_wait: invalid duration \"soon\""),
            "{err}"
        );
    }
}

#[test]
fn config_env_var_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, BAD).unwrap();
    let out = Command::new(GATEWAY)
        .args(["config", "check"])
        .env("LEASEGATE_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains(path.to_str().unwrap()));
}

#[test]
fn missing_config_file_exits_78_with_its_path() {
    let out = run(GATEWAY, &["--config", "/nonexistent/leasegate.toml", "run"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/leasegate.toml"));
}

#[test]
fn example_configs_pass_their_own_check() {
    for bin in [GATEWAY, AUTHORITY] {
        let example = run(bin, &["config", "example"]);
        assert!(example.status.success());
        assert!(
            text(&example.stdout)
                .lines()
                .filter(|l| l.starts_with('#'))
                .count()
                > 10,
            "not commented"
        );
        let check = run_with_stdin(
            bin,
            &["config", "check", "--config", "/dev/stdin"],
            &example.stdout,
        );
        assert!(check.status.success(), "{bin}: {}", text(&check.stderr));
        assert!(text(&check.stdout).contains("ok"));
    }
}

#[test]
fn authority_config_check_exits_78() {
    let out = run_with_stdin(
        AUTHORITY,
        &["config", "check", "--config", "/dev/stdin"],
        b"listen = \"nowhere\"\npublic_url = \"https://a\"\n[[backend]]\nname = \"b\"\n",
    );
    assert_eq!(out.status.code(), Some(78));
    let err = text(&out.stderr);
    assert!(
        err.contains("listen: \"nowhere\" is not an address:port"),
        "{err}"
    );
    assert!(err.contains("backend[0].kind: missing"), "{err}");
    assert!(err.contains("role: missing"), "{err}");
}

#[test]
fn plain_tcp_to_a_database_is_judged_by_the_address_the_client_dials() {
    // host names this machine, hostaddr another: the client dials hostaddr,
    // and the password would go there in clear text.
    for url in [
        "postgres://leasegate@localhost/leasegate?hostaddr=192.0.2.10",
        "postgres://leasegate@/leasegate?hostaddr=192.0.2.10",
    ] {
        let config = format!(
            "public_url = \"http://127.0.0.1:7443\"\nlisten = \"127.0.0.1:7443\"\ntls = \"off\"\n[store]\nurl = \"{url}\"\ntls = \"off\"\n"
        );
        let out = run_with_stdin(
            AUTHORITY,
            &["config", "check", "--config", "/dev/stdin"],
            config.as_bytes(),
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{url}: {err}");
        assert!(
            err.contains("store.tls: \"off\" is allowed only for a loopback address or a unix socket; the client would connect to 192.0.2.10"),
            "{url}: {err}"
        );
    }
}

#[test]
fn the_database_client_dials_hostaddr_the_address_the_check_judges() {
    // 127.0.0.2 stands in for a remote host: the URL's host names this
    // machine, hostaddr another address. The check above judges hostaddr;
    // here the real client, started by `serve`, is seen dialing it and
    // sending its startup message there, with no TLS.
    let remote = match std::net::TcpListener::bind("127.0.0.2:0") {
        Ok(l) => l,
        Err(e) => panic!("127.0.0.2 (loopback) cannot be bound here: {e}"),
    };
    let port = remote.local_addr().unwrap().port();
    remote.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen_port = listen.local_addr().unwrap().port();
    drop(listen);
    let config = dir.path().join("authority.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{listen_port}\"\npublic_url = \"http://127.0.0.1:{listen_port}\"\n\
             tls = \"off\"\nstate_dir = \"{state}\"\n\
             [store]\nurl = \"postgres://leasegate@localhost:{port}/leasegate?hostaddr=127.0.0.2\"\ntls = \"off\"\n\
             [[backend]]\nname = \"main\"\nkind = \"influxdb-v1\"\nurl = \"http://127.0.0.1:9\"\n\
             admin_username = \"admin\"\nadmin_password = \"pw\"\n\
             [[role]]\nname = \"sensor\"\nmatch = {{ service = \"iot-sensor\" }}\nbackend = \"main\"\n\
             database = \"sensors\"\naccess = [\"write\"]\ndefault_ttl = \"15m\"\nmax_ttl = \"1h\"\n",
            state = dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut authority = Command::new(AUTHORITY)
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut startup = Vec::new();
    while std::time::Instant::now() < deadline {
        match remote.accept() {
            Ok((mut conn, _)) => {
                use std::io::Read;
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let mut buf = [0u8; 512];
                let n = conn.read(&mut buf).unwrap_or(0);
                startup.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    // Ours, by PID.
    let _ = authority.kill();
    let out = authority.wait_with_output().unwrap();
    let user = b"user\0leasegate\0";
    assert!(
        startup.windows(user.len()).any(|w| w == user),
        "no plain startup message reached hostaddr ({} bytes); the authority said:\n{}",
        startup.len(),
        text(&out.stderr)
    );
}

#[test]
fn secret_files_others_may_read_are_refused_by_key() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let ca_cert = dir.path().join("ca.pem");
    let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
    std::fs::write(&ca_cert, ca.cert.pem()).unwrap();
    let ca_key = dir.path().join("ca-key.pem");
    std::fs::write(&ca_key, ca.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let authority = format!(
        "public_url = \"https://127.0.0.1:7443\"\nca_cert_file = \"{}\"\nca_key_file = \"{}\"\n\
         [[backend]]\nname = \"main\"\nkind = \"influxdb-v1\"\nurl = \"http://127.0.0.1:8086\"\n\
         admin_username = \"admin\"\nadmin_password_file = \"{}\"\n\
         [[role]]\nname = \"r\"\nmatch = {{ service = \"s\" }}\nbackend = \"main\"\ndatabase = \"d\"\n",
        ca_cert.display(),
        ca_key.display(),
        secret("admin.password", 0o604),
    );
    let out = run_with_stdin(
        AUTHORITY,
        &["config", "check", "--config", "/dev/stdin"],
        authority.as_bytes(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains(&format!("ca_key_file: {} is mode 0644: others may read it; chmod 600 (or 640 with the service's group)", ca_key.display())),
        "{err}"
    );
    assert!(
        err.contains("backend[0].admin_password_file:") && err.contains("mode 0604"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");

    // The gateway's: a group may read (0640), others may not; none may write.
    let gateway = |mode: u32| {
        format!(
            "state_dir = \"{0}/state\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"g\"\n\
             [[mqtt.subscribe]]\ntopic = \"s/#\"\n[influxdb]\nurl = \"http://127.0.0.1:8086\"\napi = \"v2\"\n\
             org = \"o\"\nbucket = \"b\"\ntoken_file = \"{1}\"\n",
            dir.path().display(),
            secret(&format!("token-{mode:o}"), mode)
        )
    };
    for (mode, ok) in [
        (0o600, true),
        (0o640, true),
        (0o400, true),
        (0o644, false),
        (0o660, false),
        (0o606, false),
    ] {
        let out = run_with_stdin(
            GATEWAY,
            &["config", "check", "--config", "/dev/stdin"],
            gateway(mode).as_bytes(),
        );
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(if ok { 0 } else { 78 }),
            "{mode:o}: {err}"
        );
        if !ok {
            assert!(
                err.contains("influxdb.token_file: ") && err.contains(&format!("mode 0{mode:o}")),
                "{err}"
            );
        }
    }
}

#[test]
fn version_and_help_on_every_level() {
    for bin in [GATEWAY, AUTHORITY] {
        let out = run(bin, &["--version"]);
        assert!(out.status.success());
        assert!(text(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
    let gateway: &[&[&str]] = &[
        &[],
        &["run"],
        &["enroll"],
        &["lease"],
        &["lease", "create"],
        &["lease", "list"],
        &["lease", "show"],
        &["lease", "revoke"],
        &["status"],
        &["config"],
        &["config", "example"],
        &["config", "check"],
    ];
    let authority: &[&[&str]] = &[
        &[],
        &["serve"],
        &["ticket"],
        &["ticket", "create"],
        &["ticket", "list"],
        &["ticket", "revoke"],
        &["identity"],
        &["identity", "list"],
        &["identity", "revoke"],
        &["lease"],
        &["lease", "list"],
        &["lease", "show"],
        &["lease", "revoke"],
        &["config"],
        &["config", "example"],
        &["config", "check"],
    ];
    for (bin, levels) in [(GATEWAY, gateway), (AUTHORITY, authority)] {
        for level in levels {
            let mut args = level.to_vec();
            args.push("--help");
            let out = run(bin, &args);
            assert!(out.status.success(), "{bin} {args:?}");
            let help = text(&out.stdout);
            assert!(help.contains("Usage:"), "{bin} {args:?}: {help}");
            assert!(help.contains("--config"), "{bin} {args:?} lacks --config");
        }
    }
}

#[test]
fn gateway_commands_need_a_leased_config() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.toml");
    let m = missing.to_str().unwrap();
    for args in [&["enroll", "x.ticket"][..], &["lease", "list"], &["status"]] {
        let mut all = vec!["--config", m];
        all.extend_from_slice(args);
        let out = run(GATEWAY, &all);
        assert_eq!(out.status.code(), Some(78), "{args:?}");
        assert!(
            text(&out.stderr).contains("none.toml"),
            "{}",
            text(&out.stderr)
        );
    }
    // With static credentials there is nothing to enroll.
    let conf = dir.path().join("static.toml");
    std::fs::write(
        &conf,
        format!(
            "state_dir = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n[[mqtt.subscribe]]\ntopic = \"a/#\"\n[influxdb]\nurl = \"http://127.0.0.1:1\"\ndatabase = \"d\"\nusername = \"u\"\npassword = \"p\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = run(
        GATEWAY,
        &["--config", conf.to_str().unwrap(), "lease", "list"],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out.stderr).contains("static credentials"),
        "{}",
        text(&out.stderr)
    );
    // Leased but not enrolled.
    std::fs::write(
        &conf,
        format!(
            "state_dir = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\nclient_id = \"gw-1\"\n[[mqtt.subscribe]]\ntopic = \"a/#\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = run(
        GATEWAY,
        &["--config", conf.to_str().unwrap(), "lease", "list"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not enrolled"),
        "{}",
        text(&out.stderr)
    );
    let out = run(GATEWAY, &["--config", conf.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is the daemon running?"),
        "{}",
        text(&out.stderr)
    );
}

const AUTHORITY_CONFIG: &str = r#"
listen = "127.0.0.1:1"
public_url = "http://127.0.0.1:1"
state_dir = "{dir}/state"
tls = "off"
[[backend]]
name = "main"
kind = "influxdb-v1"
url = "http://127.0.0.1:1"
admin_username = "admin"
admin_password = "x"
[[role]]
name = "sensor"
match = { service = "iot-sensor" }
backend = "main"
database = "sensors"
"#;

#[test]
fn authority_commands_refuse_bad_arguments_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("a.toml");
    let body = AUTHORITY_CONFIG.replace("{dir}", &dir.path().display().to_string());
    std::fs::write(&conf, &body).unwrap();
    let c = conf.to_str().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["ticket", "create", "--attribute", "service"],
            2,
            "expected KEY=VALUE",
        ),
        (
            &["ticket", "create", "--attribute", "service=other"],
            2,
            "no [[role]] matches",
        ),
        (
            &[
                "ticket",
                "create",
                "--attribute",
                "service=iot-sensor",
                "--role",
                "x",
            ],
            2,
            "no [[role]] is named \"x\"",
        ),
        (
            &[
                "ticket",
                "create",
                "--attribute",
                "service=iot-sensor",
                "--usage-count",
                "0",
            ],
            2,
            "at least 1",
        ),
        (&["ticket", "revoke", "nope"], 2, "no ticket nope"),
        (&["lease", "show", "nope"], 2, "no lease nope"),
        (&["identity", "revoke", "nope"], 2, "no identity nope"),
    ];
    for (args, code, message) in cases {
        let mut all = vec!["--config", c];
        all.extend_from_slice(args);
        let out = run(AUTHORITY, &all);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    // A fresh store lists nothing, in both forms; the state dir is 0700.
    let out = run(AUTHORITY, &["--config", c, "lease", "list", "--json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");
    let out = run(AUTHORITY, &["--config", c, "ticket", "list"]);
    assert!(text(&out.stdout).starts_with("ID"), "{}", text(&out.stdout));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("state"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    // serve with a configuration error exits 78 naming the key.
    std::fs::write(&conf, body.replace("tls = \"off\"", "tls = \"maybe\"")).unwrap();
    let out = run(AUTHORITY, &["--config", c, "serve"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains("tls"), "{}", text(&out.stderr));
}

#[test]
fn under_systemd_log_lines_carry_syslog_priorities_and_no_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gw.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &conf,
        format!(
            "state_dir = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"gw-j\"\n[[mqtt.subscribe]]\ntopic = \"a/#\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    // stderr is a file whose device and inode JOURNAL_STREAM names, as
    // systemd does for the journal's stream.
    let run_with = |stream: &dyn Fn(&std::fs::Metadata) -> String| {
        let path = dir.path().join(format!("err-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let file = std::fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        let mut child = Command::new(GATEWAY)
            .args(["--config", conf.to_str().unwrap(), "run"])
            .env("JOURNAL_STREAM", stream(&meta))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let _ = child.kill();
        let _ = child.wait();
        std::fs::read_to_string(&path).unwrap()
    };
    use std::os::unix::fs::MetadataExt as _;
    let inherited = run_with(&|_| "8:12345".to_owned());
    assert!(
        inherited.lines().all(|l| !l.starts_with('<')),
        "a stale JOURNAL_STREAM is not the journal: {inherited}"
    );
    let err = run_with(&|m| format!("{}:{}", m.dev(), m.ino()));
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>leasegate: leasegate ")),
        "{err}"
    );
    // The broker is not there: a warning, at priority 4.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>leasegate::agent::intake::")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with('<') && !l.contains("Z ")),
        "{err}"
    );
}
