//! Writes the seed corpora under fuzz/corpus/<target>/ (see
//! docs/fuzzing.md): hand-picked inputs, plus the ones only leasegate can
//! make (a ticket from `Ticket::encode`, a segment from the spool API).
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example make_seeds
//!
//! Then minimize each corpus with `cargo fuzz cmin` before committing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leasegate::agent::store::spool::{FsyncPolicy, Overflow, SizeOrPercent, Spool, SpoolConfig};
use leasegate::wire::api::{
    ApiError, EnrollRequest, Enrollment, ErrorBody, ErrorCode, LeaseGrant, LeaseInfo, LeaseList,
    LeaseRequest, LeaseStatus, Target,
};
use leasegate::secret::Secret;
use leasegate::wire::ticket::Ticket;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    lineproto(&root.join("lineproto"));
    payloads(&root);
    tickets(&root.join("ticket"));
    configs(&root.join("config"));
    spool(&root.join("spool"));
    bodies(&root.join("authority_bodies"));
    answers(&root.join("write_answer"));
}

/// Write answers as the real servers gave them (docs/influxdb-api.md),
/// each with the batch it answered: API byte, status byte, body, NUL,
/// batch.
fn answers(dir: &Path) {
    let batch = "pw,k=a v=2i 1700000000000000002\npw,k=a v=\"text\" 1700000000000000003\npw,k=a v=4i 1700000000000000004\n";
    let seeds: &[(&str, u8, u8, &str)] = &[
        (
            "v3-type-conflict",
            2,
            0,
            r#"{"error":"partial write of line protocol occurred","data":[{"error_message":"invalid column type for column 'v', expected iox::column_type::field::integer, got iox::column_type::field::string","line_number":2,"original_line":"pw,k=a v=text 170000"}]}"#,
        ),
        (
            "v3-column-limit",
            2,
            2,
            r#"{"error":"partial write of line protocol occurred","data":[{"error_message":"Update to schema would exceed number of columns per table limit of 500 columns","line_number":1,"original_line":"pw,k=a v=2i 17000000"}]}"#,
        ),
        (
            "v1-named-conflict",
            0,
            0,
            "partial write: field type conflict: input field \"v\" on measurement \"pw\" is type string, already exists as type integer dropped=1",
        ),
        ("v1-bare-conflict", 0, 0, "field type conflict"),
        (
            "v1-unable-to-parse",
            0,
            0,
            "partial write: unable to parse 'pw,k=a v=4i 1700000000000000004': invalid number dropped=0",
        ),
        (
            "v2-invalid",
            1,
            0,
            "unable to parse 'pw,k=a v=2i 1700000000000000002': invalid field format",
        ),
    ];
    for (name, api, status, body) in seeds {
        let mut input = vec![*api, *status];
        input.extend_from_slice(body.as_bytes());
        input.push(0);
        input.extend_from_slice(batch.as_bytes());
        put(dir, name, input);
    }
}

fn put(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn with_mode(mode: u8, text: impl AsRef<[u8]>) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(text.as_ref());
    v
}

const LINES: &[(&str, &str)] = &[
    (
        "full",
        "cpu,host=server01,region=us-west usage_idle=98.2,usage_user=1.1 1700000000000000000",
    ),
    (
        "types",
        "m f=1.5,i=-3i,u=7u,s=\"text\",b=true,t=T,fa=FALSE 1",
    ),
    ("floats", "m a=1,b=-1.2e+78,c=.5,d=2.,e=3E-2,f=+4,g=-0"),
    (
        "escapes",
        "we\\ ather\\,x,lo\\ c\\==a\\,b\\ c\\=d t\\ emp=21.5,s=\"say \\\"hi\\\" \\\\o/\" 17",
    ),
    (
        "literal-backslash",
        "m\\x,t\\a=v\\b f\\z=\"a\\nb\",g=\"c\\\\\" -5",
    ),
    ("comment-blank", "# a comment\n\n   \n\tm v=1i\n"),
    ("crlf", "m v=1 5\r\nm v=2 6\r\n"),
    ("multi", "a v=1\nb,t=x v=2i 3\nc v=\"z\" -4\n"),
    (
        "unicode",
        "température,lieu=cuisine valeur=21.5,note=\"été\" 1",
    ),
    ("tabs", "m v=1\t5\nm\tv=1"),
    ("underscore", "_m v=1\nm _v=1\nm,_t=a v=1"),
    ("duplicates", "m,t=a,t=b v=1\nm v=1,v=2"),
    ("quoted-newline", "m s=\"line one\nline two\" 1"),
    ("escaped-newline", "m,t=a\\\nb v=1"),
    (
        "big-numbers",
        "m i=9223372036854775807i,u=18446744073709551615u,f=1e308 9223372036854775807",
    ),
    (
        "bad",
        "m v=NaN\nm v=1.2.3\nm v=\"open\nm v=1 12.5\n,t=1 v=1\nm,t= v=1",
    ),
    ("trailing-backslash", "m\\ v=1\nm,t=a\\ v=1"),
    ("equals-in-measurement", "m=x,t=a=b v=1"),
    ("string-backslash-space", "m,t=a\\\\ b v=1"),
];

fn lineproto(dir: &Path) {
    for (name, text) in LINES {
        put(dir, name, text);
    }
}

fn payloads(root: &Path) {
    let json = root.join("payload_json");
    // Flags: bits 0-1 precision, 2 template, 3 static tags, 4 measurement.
    let template = b"sensors/{site}/+/{measurement}\0sensors/north/x/temp\0";
    let with_template = |flags: u8, payload: &str| {
        let mut v = vec![flags | 4];
        v.extend_from_slice(template);
        v.extend_from_slice(payload.as_bytes());
        v
    };
    put(
        &json,
        "flat",
        with_mode(16, r#"{"temperature": 21.5, "ok": true, "state": "on"}"#),
    );
    put(
        &json,
        "flat-time-ms",
        with_mode(16 | 2, r#"{"t": 1, "time": 1700000000000}"#),
    );
    put(
        &json,
        "structured",
        with_mode(
            8,
            r#"{"measurement": "env", "tags": {"room": "a", "floor": 2, "x": true}, "fields": {"t": 21.5, "h": 40, "s": "x"}, "time": "2024-01-02T03:04:05.123Z"}"#,
        ),
    );
    put(
        &json,
        "array",
        with_mode(
            16 | 3,
            r#"[{"v": 1, "time": 1700000000}, {"measurement": "m", "fields": {"v": 2}}]"#,
        ),
    );
    put(&json, "template", with_template(8, r#"{"value": 3.25e2}"#));
    put(
        &json,
        "bad",
        with_mode(16, r#"{"v": [1], "n": null, "big": 1e999}"#),
    );

    let value = root.join("payload_value");
    for (name, text) in [
        ("float", " 21.5\n"),
        ("int", "42i"),
        ("uint", "7u"),
        ("bool", "TRUE"),
        ("quoted", "\"quoted text\""),
        ("text", "hello world"),
        ("nan", "NaN"),
        ("neg-exp", "-1.5e-3"),
    ] {
        put(&value, name, with_mode(16, text));
    }
    let mut v = vec![4 | 8 | 32 | 1];
    v.extend_from_slice(template);
    v.extend_from_slice(b"m,site=south v=1 1700000000000000\n# c\nm v=2i\nbad line\n");
    put(&value, "line-template", v);
    put(
        &value,
        "line-plain",
        with_mode(32 | 3, "cpu,host=a usage=0.5 1700000000\n"),
    );
}

fn sample_ticket(url: &str, pin: bool) -> Ticket {
    Ticket {
        url: url.into(),
        urls: Vec::new(),
        id: "0123456789abcdef".into(),
        secret: Secret::new(leasegate::secret::random_base64(
            leasegate::wire::ticket::SECRET_BYTES,
        )),
        cert_sha256: pin.then(|| "ab".repeat(32)),
        ca_sha256: None,
        expires: 1_900_000_000,
        attributes: [("service".to_owned(), "iot-sensor".to_owned())].into(),
        identity_name: None,
    }
}

fn tickets(dir: &Path) {
    let https = sample_ticket("https://authority.example:7443", true);
    let mut http = sample_ticket("http://127.0.0.1:7080", false);
    http.identity_name = Some("gw-07".into());
    put(dir, "https", with_mode(0, https.encode()));
    put(
        dir,
        "http-crlf",
        with_mode(0, format!("  {}\r\n", http.encode())),
    );
    put(
        dir,
        "newer-version",
        with_mode(0, https.encode().replacen("LGT1.", "LGT2.", 1)),
    );
    put(
        dir,
        "json-https",
        with_mode(1, serde_json::to_vec(&https).unwrap()),
    );
    put(
        dir,
        "json-http",
        with_mode(3, serde_json::to_vec(&http).unwrap()),
    );
    let mut no_pin = serde_json::to_value(&https).unwrap();
    no_pin.as_object_mut().unwrap().remove("cert_sha256");
    put(
        dir,
        "json-no-pin",
        with_mode(1, serde_json::to_vec(&no_pin).unwrap()),
    );
}

fn configs(dir: &Path) {
    let gateway = include_str!("../../examples/leasegate.toml");
    let authority = include_str!("../../examples/leasegate-authority.toml");
    put(dir, "gateway-example", with_mode(0, gateway));
    put(dir, "authority-example", with_mode(1, authority));
    put(
        dir,
        "gateway-static-tls",
        with_mode(
            0,
            r#"state_dir = "/var/lib/leasegate"
[mqtt]
url = "mqtts://[::1]:8883"
client_id = "gw-01"
username = "gw"
password_file = "/tmp/leasegate-fuzz/password"
ca_file = "/tmp/leasegate-fuzz/ca.pem"
client_cert_file = "/tmp/leasegate-fuzz/client.pem"
client_key_file = "/tmp/leasegate-fuzz/client.key"
[[mqtt.subscribe]]
topic = "sensors/+/+/#"
format = "json"
topic_template = "sensors/{site}/{device}/{measurement}"
precision = "ms"
tags = { source = "mqtt" }
[influxdb]
api = "v2"
url = "https://influx.example:8086"
org = "acme"
bucket = "sensors"
token = "tok-0123456789abcdefgh"
[spool]
max_bytes = "64MiB"
fsync = "interval"
fsync_interval = "500ms"
overflow = "block"
"#,
        ),
    );
    put(
        dir,
        "gateway-v1-system-ca",
        with_mode(
            0,
            r#"[mqtt]
url = "mqtts://broker.example"
[[mqtt.subscribe]]
topic = "$share/g/a/b"
format = "value"
measurement = "m"
[influxdb]
api = "v1"
url = "http://127.0.0.1:8086"
database = "db"
username = "u"
password_file = "/tmp/leasegate-fuzz/empty"
"#,
        ),
    );
    put(
        dir,
        "authority-v1-v3",
        with_mode(
            1,
            r#"listen = "127.0.0.1:7080"
public_url = "http://127.0.0.1:7080"
tls = "off"
cert_file = "/tmp/leasegate-fuzz/client.pem"
[[backend]]
name = "one"
kind = "influxdb-v1"
url = "http://127.0.0.1:8086"
admin_username = "admin"
admin_password_file = "/tmp/leasegate-fuzz/password"
[[backend]]
name = "three"
kind = "influxdb-v3"
url = "http://127.0.0.1:8181"
admin_token = "apiv3_0123456789abcdefghij"
[[role]]
name = "r"
match = { service = "x" }
backend = "one"
database = "db"
access = ["write", "read"]
"#,
        ),
    );
    put(dir, "syntax-error", with_mode(0, "[mqtt\nurl = 'x'"));
    for (name, text) in [
        ("url", "mqtt://[::1]:1883"),
        ("url-tls", "mqtts://broker.example:8883/"),
        ("size", " 64 KiB "),
        ("duration", "1h 30m"),
        ("filter", "$share/group/sensors/+/#"),
    ] {
        put(dir, name, with_mode(2, text));
    }
}

fn spool(dir: &Path) {
    let scratch = std::env::temp_dir().join(format!("leasegate-seed-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let config = SpoolConfig {
        dir: scratch.clone(),
        max_bytes: 1 << 20,
        fsync: FsyncPolicy::Batch,
        overflow: Overflow::Block,
        min_free: SizeOrPercent::Bytes(0),
    };
    let (s, _) = Spool::open(config).unwrap();
    for (i, line) in ["m,t=a v=1i 1\n", "m v=2 2\nm v=3 3\n", "cpu usage=0.5\n"]
        .iter()
        .enumerate()
    {
        s.append(line.as_bytes(), i as u64 + 1).unwrap();
    }
    // Points stamped on receipt: a timed record, its stamping first.
    let stamping = leasegate::clock::Stamping {
        boot: leasegate::clock::BootId(*b"0123456789abcdef"),
        wall_minus_boot_ns: -259_200_000_000_000,
    };
    s.append_stamped(stamping, b"m v=4 4\nm v=5 5\n", 2).unwrap();
    s.commit().unwrap();
    // Nothing released: the segment file holds all four records.
    let _ = s.read(100, 1 << 20, Duration::ZERO).unwrap();
    drop(s);
    let segs: Vec<PathBuf> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segs.len(), 1);
    let segment = std::fs::read(&segs[0]).unwrap();
    let _ = std::fs::remove_dir_all(&scratch);
    put(dir, "segment", with_mode(0, &segment));
    put(dir, "segment-and-second", with_mode(2, &segment));
    put(
        dir,
        "segment-torn",
        with_mode(0, &segment[..segment.len() - 5]),
    );
    let mut flipped = segment.clone();
    flipped[8 + 14 + 3] ^= 0x20;
    put(dir, "segment-flipped", with_mode(0, &flipped));
    put(dir, "not-a-segment", with_mode(0, "hello"));
    // Described records: damage, where (2 bytes), flip, then (len, points, payload)*.
    let described = |name: &str, damage: u8, at: u16, payloads: &[&str]| {
        let mut v = vec![1, damage, at as u8, (at >> 8) as u8, 0x10];
        for p in payloads {
            v.push(p.len() as u8);
            v.push(1);
            v.extend_from_slice(p.as_bytes());
        }
        put(dir, name, v);
    };
    described("described-intact", 0, 0, &["m v=1\n", "m v=2\n"]);
    described("described-flip", 1, 30, &["m v=1\n", "m v=2\n", "m v=3\n"]);
    described("described-cut", 2, 40, &["m v=1\n", "m v=2\n", "m v=3\n"]);
    described("described-junk", 3, 22, &["m v=1\n", "m v=2\n"]);
}

fn bodies(dir: &Path) {
    let secret = leasegate::secret::random_base64(leasegate::wire::ticket::SECRET_BYTES);
    let enroll = EnrollRequest {
        ticket_secret: Secret::new(secret.clone()),
        identity_name: "gw-07.site_3".into(),
    };
    put(
        dir,
        "enroll",
        with_mode(0, serde_json::to_vec(&enroll).unwrap()),
    );
    put(
        dir,
        "enroll-bad",
        with_mode(
            0,
            r#"{"ticket_secret": 12, "identity_name": "a b", "extra": [1]}"#,
        ),
    );
    put(
        dir,
        "lease",
        with_mode(
            1,
            serde_json::to_vec(&LeaseRequest {
                ttl_secs: Some(900),
            })
            .unwrap(),
        ),
    );
    put(dir, "lease-blank", with_mode(1, " \n"));
    put(dir, "lease-empty-object", with_mode(1, "{}"));
    let target = Target {
        api: leasegate::wire::api::InfluxApi::V2,
        url: "https://influx.example:8086".into(),
        org: Some("ec4a5f5fee6ed685".into()),
        bucket: Some("sensors".into()),
        database: None,
    };
    let info = LeaseInfo {
        id: "0123456789abcdef".into(),
        identity_id: "fedcba9876543210".into(),
        issued_for: "gw-07".into(),
        role: "sensor".into(),
        status: LeaseStatus::Revoking,
        ttl_secs: 900,
        created_ms: 1_700_000_000_000,
        expires_ms: 1_700_000_900_000,
        target,
        last_error: Some("deletion failed".into()),
    };
    let grant = LeaseGrant {
        lease: info.clone(),
        secret: Secret::new("tok-secret"),
        deployment_ca: None,
        authority_time_ms: Some(1_700_000_000_123),
        round_trip: None,
    };
    let enrollment = Enrollment {
        identity_id: "fedcba9876543210".into(),
        identity_name: "gw-07".into(),
        role: "sensor".into(),
        attributes: BTreeMap::from([("service".to_owned(), "iot-sensor".to_owned())]),
        credential: Secret::new("lgi_credential"),
    };
    put(
        dir,
        "grant",
        with_mode(2, serde_json::to_vec(&grant).unwrap()),
    );
    put(
        dir,
        "enrollment",
        with_mode(2, serde_json::to_vec(&enrollment).unwrap()),
    );
    put(
        dir,
        "lease-list",
        with_mode(
            2,
            serde_json::to_vec(&LeaseList { leases: vec![info] }).unwrap(),
        ),
    );
    put(
        dir,
        "error",
        with_mode(
            2,
            serde_json::to_vec(&ErrorBody {
                error: ApiError::new(ErrorCode::TicketUsedUp, "used up"),
            })
            .unwrap(),
        ),
    );
    put(dir, "secret-text", with_mode(3, &secret));
}
