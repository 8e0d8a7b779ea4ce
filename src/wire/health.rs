//! The health report a gateway sends with each lease request, and how the
//! authority reads a lease request that carries one. The report is
//! untrusted input: it is checked field by field, and a bad one is
//! refused with a named error without ever failing the lease request.
//! Nothing here holds a secret; times are relative (seconds ago), never
//! the gateway's clock, which may be wrong.

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::api::{ApiError, ErrorCode, LeaseRequest};

/// The most a report may take, as JSON: the gateway's are about 600 bytes.
pub const MAX_REPORT_BYTES: usize = 4096;
/// Longest free-text field (the spool's error, the last write's answer).
const MAX_TEXT: usize = 256;
/// Any count or byte figure: 2^50 is a petabyte, far beyond a gateway.
const MAX_COUNT: u64 = 1 << 50;
/// Any rate: a gateway takes thousands of points a second, not billions.
const MAX_RATE: f64 = 1e9;
/// Uptime, ages and the like: ten years.
const MAX_SECS: u64 = 10 * 366 * 24 * 3600;

/// What a gateway tells of itself at each lease call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HealthReport {
    /// The gateway's version and build target (`0.1.0`, `aarch64-linux`).
    pub version: String,
    pub target: String,
    pub uptime_secs: u64,
    /// Points taken from MQTT and written to InfluxDB per second, since
    /// the previous report.
    pub points_in_per_sec: f64,
    pub points_out_per_sec: f64,
    pub spool_bytes: u64,
    /// Points in the spool, not yet written, and the age of the oldest.
    pub points_waiting: u64,
    pub oldest_waiting_secs: Option<u64>,
    /// Hours until the spool is full at the current rate, if nothing is
    /// written; None while no points come.
    pub runway_hours: Option<f64>,
    /// Points in the dead-letter file since the daemon started.
    pub dead_letters: u64,
    pub last_write: Option<LastWrite>,
    /// The kernel's clock discipline, and the offset to the authority's
    /// clock at the last lease (ms to add to the gateway's time).
    pub clock_synchronized: Option<bool>,
    pub clock_offset_ms: Option<f64>,
    /// Free bytes on the spool's filesystem.
    pub disk_free_bytes: Option<u64>,
    pub mqtt_connected: bool,
    /// Why the spool cannot store points, while it cannot.
    pub spool_error: Option<String>,
    /// While the gateway backs off (failed lease calls, refused leases),
    /// the longest it waits before its next call.
    pub retry_within_secs: Option<u64>,
}

/// The last answer InfluxDB gave (or did not give) to a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastWrite {
    pub outcome: WriteOutcome,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    pub ago_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteOutcome {
    /// Written.
    Ok,
    /// A 4xx answer: the lines or the credential were refused.
    Refused,
    /// No answer, or a 5xx: retried.
    Failed,
}

impl WriteOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOutcome::Ok => "ok",
            WriteOutcome::Refused => "refused",
            WriteOutcome::Failed => "failed",
        }
    }

    /// What an answer with HTTP `status` (0: none) means.
    pub fn of_status(status: u16) -> WriteOutcome {
        match status {
            200..=299 => WriteOutcome::Ok,
            // 429 is "later", not "no".
            400..=499 if status != 429 => WriteOutcome::Refused,
            _ => WriteOutcome::Failed,
        }
    }
}

/// Why a report was refused; the lease request it came with is answered
/// all the same.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HealthError {
    #[error("the health report is {bytes} bytes or more, over the {max} allowed")]
    TooLarge { bytes: usize, max: usize },
    #[error("the health report is not valid JSON: {0}")]
    Malformed(String),
    #[error("the health report is not a JSON object")]
    NotAnObject,
    #[error("the health report has an unknown field {0:?}")]
    UnknownField(String),
    #[error("health.{field}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

/// The report of a lease request: none (an older gateway), one that
/// passed the checks, or why it did not.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Absent,
    Report(Box<HealthReport>),
    Refused(HealthError),
}

/// `POST /v1/leases` as the gateway sends it: the request's fields first
/// (so that a report cut off or broken leaves them readable), then the
/// report.
#[derive(Debug, Serialize)]
pub struct LeaseCall<'a> {
    #[serde(flatten)]
    pub request: &'a LeaseRequest,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<&'a HealthReport>,
}

/// Reads a lease request's body: `body` as received, `cut` when more came
/// than was kept. The request's own fields must be valid; the report's
/// trouble only refuses the report. A report that is cut off, or broken
/// where nothing else is, refuses the report and keeps the request's
/// fields written before it.
pub fn read_lease_call(body: &[u8], cut: bool) -> Result<(LeaseRequest, Health), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) && !cut {
        return Ok((LeaseRequest::default(), Health::Absent));
    }
    let whole = if cut {
        None
    } else {
        Some(serde_json::from_slice::<Value>(body))
    };
    let broken = match whole {
        Some(Ok(Value::Object(mut map))) => {
            let health = map.remove("health");
            let request: LeaseRequest = serde_json::from_value(Value::Object(map))
                .map_err(|e| invalid(format!("the request body is not valid: {e}")))?;
            let health = match health {
                None | Some(Value::Null) => Health::Absent,
                Some(v) => match HealthReport::check(&v) {
                    Ok(r) => Health::Report(Box::new(r)),
                    Err(e) => Health::Refused(e),
                },
            };
            return Ok((request, health));
        }
        Some(Ok(_)) => return Err(invalid("the request body is not a JSON object")),
        Some(Err(e)) => e.to_string(),
        None => String::new(),
    };
    // Read again up to where it breaks, noting the fields on the way.
    let mut seen = Prefix::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    let read = (&mut seen).deserialize(&mut de);
    let broke_in_report = seen.in_health || (read.is_ok() && seen.had_health);
    if !broke_in_report {
        let why = if cut {
            format!("the request body is larger than {} bytes", body.len())
        } else {
            format!("the request body is not valid: {broken}")
        };
        return Err(invalid(why));
    }
    let refused = if cut {
        HealthError::TooLarge {
            bytes: body.len(),
            max: MAX_REPORT_BYTES,
        }
    } else {
        HealthError::Malformed(broken)
    };
    Ok((
        LeaseRequest {
            ttl_secs: seen.ttl_secs,
        },
        Health::Refused(refused),
    ))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

/// What was read of a lease request before it broke off.
#[derive(Default)]
struct Prefix {
    ttl_secs: Option<u64>,
    /// Reading the report when it broke.
    in_health: bool,
    had_health: bool,
}

impl<'de> DeserializeSeed<'de> for &mut Prefix {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Prefix {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a lease request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "ttl_secs" => self.ttl_secs = map.next_value()?,
                "health" => {
                    (self.in_health, self.had_health) = (true, true);
                    map.next_value::<IgnoredAny>()?;
                    self.in_health = false;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

impl HealthReport {
    /// The report in `value`, checked field by field: every field known,
    /// each of its type and within its bounds, the whole within
    /// [`MAX_REPORT_BYTES`].
    pub fn check(value: &Value) -> Result<HealthReport, HealthError> {
        let bytes = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
        if bytes > MAX_REPORT_BYTES {
            return Err(HealthError::TooLarge {
                bytes,
                max: MAX_REPORT_BYTES,
            });
        }
        let map = value.as_object().ok_or(HealthError::NotAnObject)?;
        if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(HealthError::UnknownField(
                unknown.chars().take(64).collect(),
            ));
        }
        let f = Fields(map);
        Ok(HealthReport {
            version: f.text("version", 32)?.unwrap_or_default(),
            target: f.text("target", 64)?.unwrap_or_default(),
            uptime_secs: f.count("uptime_secs", MAX_SECS)?.unwrap_or(0),
            points_in_per_sec: f.rate("points_in_per_sec", MAX_RATE)?.unwrap_or(0.0),
            points_out_per_sec: f.rate("points_out_per_sec", MAX_RATE)?.unwrap_or(0.0),
            spool_bytes: f.count("spool_bytes", MAX_COUNT)?.unwrap_or(0),
            points_waiting: f.count("points_waiting", MAX_COUNT)?.unwrap_or(0),
            oldest_waiting_secs: f.count("oldest_waiting_secs", MAX_SECS)?,
            runway_hours: f.rate("runway_hours", MAX_SECS as f64 / 3600.0)?,
            dead_letters: f.count("dead_letters", MAX_COUNT)?.unwrap_or(0),
            last_write: f.last_write()?,
            clock_synchronized: f.flag("clock_synchronized")?,
            clock_offset_ms: f.offset("clock_offset_ms")?,
            disk_free_bytes: f.count("disk_free_bytes", MAX_COUNT)?,
            mqtt_connected: f.flag("mqtt_connected")?.unwrap_or(false),
            spool_error: f.text("spool_error", MAX_TEXT)?,
            retry_within_secs: f.count("retry_within_secs", MAX_SECS)?,
        })
    }
}

const FIELDS: [&str; 17] = [
    "version",
    "target",
    "uptime_secs",
    "points_in_per_sec",
    "points_out_per_sec",
    "spool_bytes",
    "points_waiting",
    "oldest_waiting_secs",
    "runway_hours",
    "dead_letters",
    "last_write",
    "clock_synchronized",
    "clock_offset_ms",
    "disk_free_bytes",
    "mqtt_connected",
    "spool_error",
    "retry_within_secs",
];

/// A report's fields, each read with its check; absent and null are None.
struct Fields<'a>(&'a Map<String, Value>);

fn problem(field: &'static str, problem: impl Into<String>) -> HealthError {
    HealthError::Field {
        field,
        problem: problem.into(),
    }
}

/// A value named in an error, cut short: it is the sender's text.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s,
    }
}

impl Fields<'_> {
    fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    fn count(&self, field: &'static str, max: u64) -> Result<Option<u64>, HealthError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            Some(n) => Err(problem(field, format!("{n} is over the most, {max}"))),
            None if v.as_i64().is_some_and(|n| n < 0) => {
                Err(problem(field, format!("{} is negative", shown(v))))
            }
            None => Err(problem(
                field,
                format!("{} is not a whole number", shown(v)),
            )),
        }
    }

    fn rate(&self, field: &'static str, max: f64) -> Result<Option<f64>, HealthError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        match v.as_f64() {
            Some(x) if x < 0.0 => Err(problem(field, format!("{} is negative", shown(v)))),
            Some(x) if x <= max => Ok(Some(x)),
            Some(_) => Err(problem(
                field,
                format!("{} is over the most, {max}", shown(v)),
            )),
            None => Err(problem(field, format!("{} is not a number", shown(v)))),
        }
    }

    /// A clock offset: either sign, up to a century.
    fn offset(&self, field: &'static str) -> Result<Option<f64>, HealthError> {
        const CENTURY_MS: f64 = 100.0 * 366.0 * 86_400_000.0;
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        match v.as_f64() {
            Some(x) if x.abs() <= CENTURY_MS => Ok(Some(x)),
            Some(_) => Err(problem(field, format!("{} is over a century", shown(v)))),
            None => Err(problem(field, format!("{} is not a number", shown(v)))),
        }
    }

    fn flag(&self, field: &'static str) -> Result<Option<bool>, HealthError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(problem(field, format!("{} is not true or false", shown(v)))),
        }
    }

    /// Printable text (no control characters), at most `max` bytes.
    fn text(&self, field: &'static str, max: usize) -> Result<Option<String>, HealthError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        let Some(s) = v.as_str() else {
            return Err(problem(field, format!("{} is not text", shown(v))));
        };
        if s.len() > max {
            return Err(problem(
                field,
                format!("{} bytes, over the most, {max}", s.len()),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(problem(field, "holds a control character"));
        }
        Ok(Some(s.to_owned()))
    }

    fn last_write(&self) -> Result<Option<LastWrite>, HealthError> {
        const FIELD: &str = "last_write";
        let Some(v) = self.get(FIELD) else {
            return Ok(None);
        };
        let Some(map) = v.as_object() else {
            return Err(problem(FIELD, format!("{} is not an object", shown(v))));
        };
        if let Some(k) = map
            .keys()
            .find(|k| !["outcome", "status", "ago_secs"].contains(&k.as_str()))
        {
            return Err(problem(FIELD, format!("unknown field {k:?}")));
        }
        let outcome = match map.get("outcome").and_then(Value::as_str) {
            Some("ok") => WriteOutcome::Ok,
            Some("refused") => WriteOutcome::Refused,
            Some("failed") => WriteOutcome::Failed,
            _ => return Err(problem(FIELD, "outcome is not one of ok, refused, failed")),
        };
        let inner = Fields(map);
        let status = match inner.count("status", 599) {
            Ok(Some(s)) if s >= 100 => Some(s as u16),
            Ok(None) => None,
            _ => return Err(problem(FIELD, "status is not an HTTP status")),
        };
        let ago_secs = match inner.count("ago_secs", MAX_SECS) {
            Ok(Some(s)) => s,
            _ => return Err(problem(FIELD, "ago_secs is not a number of seconds")),
        };
        Ok(Some(LastWrite {
            outcome,
            status,
            ago_secs,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> HealthReport {
        HealthReport {
            version: "0.1.0".into(),
            target: "aarch64-linux".into(),
            uptime_secs: 3600,
            points_in_per_sec: 100.0,
            points_out_per_sec: 99.5,
            spool_bytes: 4096,
            points_waiting: 12,
            oldest_waiting_secs: Some(1),
            runway_hours: Some(80.5),
            dead_letters: 3,
            last_write: Some(LastWrite {
                outcome: WriteOutcome::Ok,
                status: Some(204),
                ago_secs: 0,
            }),
            clock_synchronized: Some(true),
            clock_offset_ms: Some(-12.5),
            disk_free_bytes: Some(1 << 30),
            mqtt_connected: true,
            spool_error: None,
            retry_within_secs: Some(8),
        }
    }

    fn call(report: &HealthReport, ttl: Option<u64>) -> Vec<u8> {
        let request = LeaseRequest { ttl_secs: ttl };
        serde_json::to_vec(&LeaseCall {
            request: &request,
            health: Some(report),
        })
        .unwrap()
    }

    fn refused(body: &[u8], cut: bool) -> (Option<u64>, HealthError) {
        match read_lease_call(body, cut).unwrap() {
            (req, Health::Refused(e)) => (req.ttl_secs, e),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_gateways_report_reads_back_as_sent() {
        let (req, health) = read_lease_call(&call(&report(), Some(60)), false).unwrap();
        assert_eq!(req.ttl_secs, Some(60));
        assert_eq!(health, Health::Report(Box::new(report())));
        let size = call(&report(), Some(60)).len();
        assert!(size < MAX_REPORT_BYTES / 4, "{size}");
    }

    #[test]
    fn a_request_without_a_report_is_an_older_gateways() {
        for body in [
            &b""[..],
            b"{}",
            br#"{"ttl_secs": 5}"#,
            br#"{"health": null}"#,
        ] {
            let (_, health) = read_lease_call(body, false).unwrap();
            assert_eq!(health, Health::Absent);
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: [(&str, Value, &str); 9] = [
            (
                "points_waiting",
                Value::from(-5),
                "health.points_waiting: -5 is negative",
            ),
            ("points_in_per_sec", Value::from(-0.5), "negative"),
            ("uptime_secs", Value::from("long"), "not a whole number"),
            ("version", Value::from("x".repeat(33)), "33 bytes"),
            (
                "spool_error",
                Value::from("a\u{1b}[31m"),
                "control character",
            ),
            (
                "mqtt_connected",
                Value::from(1),
                "health.mqtt_connected: 1 is not true or false",
            ),
            ("clock_offset_ms", Value::from(1e30), "over a century"),
            (
                "last_write",
                serde_json::json!({"outcome": "maybe", "ago_secs": 1}),
                "outcome",
            ),
            ("spool_bytes", Value::from(u64::MAX), "over the most"),
        ];
        for (field, value, wanted) in cases {
            let mut v = serde_json::to_value(report()).unwrap();
            v[field] = value;
            let e = HealthReport::check(&v).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(wanted), "{field}: {e}");
        }
        let mut v = serde_json::to_value(report()).unwrap();
        v["password"] = Value::from("x");
        assert_eq!(
            HealthReport::check(&v),
            Err(HealthError::UnknownField("password".into()))
        );
        assert_eq!(
            HealthReport::check(&Value::from(3)),
            Err(HealthError::NotAnObject)
        );
    }

    #[test]
    fn an_oversized_report_is_refused_and_the_request_kept() {
        let mut big = report();
        big.spool_error = Some("x".repeat(5000));
        let body = call(&big, Some(30));
        let (ttl, e) = refused(&body, false);
        assert_eq!(ttl, Some(30));
        assert!(matches!(e, HealthError::TooLarge { .. }), "{e}");
        // Cut off by the server's body limit: the ttl before it still counts.
        let (ttl, e) = refused(&body[..1000], true);
        assert_eq!(ttl, Some(30));
        assert!(
            matches!(e, HealthError::TooLarge { bytes: 1000, .. }),
            "{e}"
        );
    }

    #[test]
    fn a_report_that_is_not_json_is_refused_and_the_request_kept() {
        let mut body = br#"{"ttl_secs": 7, "health": {"version": ""#.to_vec();
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(br#""}}"#);
        let (ttl, e) = refused(&body, false);
        assert_eq!(ttl, Some(7));
        assert!(matches!(e, HealthError::Malformed(_)), "{e}");
        let (ttl, e) = refused(br#"{"ttl_secs": 7, "health": {"version": "#, false);
        assert_eq!(ttl, Some(7));
        assert!(matches!(e, HealthError::Malformed(_)), "{e}");
    }

    #[test]
    fn a_broken_request_outside_the_report_is_still_invalid() {
        for (body, cut) in [
            (&br#"{"ttl_secs": "soon", "health": {}}"#[..], false),
            (br#"{"ttl_secs": 7"#, false),
            (br#"[1, 2]"#, false),
            (br#"{"ttl_secs": 7, "other": "xxxxxxxxxx"#, true),
        ] {
            let e = read_lease_call(body, cut).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
        }
    }

    #[test]
    fn an_answer_status_is_an_outcome() {
        assert_eq!(WriteOutcome::of_status(204), WriteOutcome::Ok);
        assert_eq!(WriteOutcome::of_status(403), WriteOutcome::Refused);
        assert_eq!(WriteOutcome::of_status(429), WriteOutcome::Failed);
        assert_eq!(WriteOutcome::of_status(503), WriteOutcome::Failed);
        assert_eq!(WriteOutcome::of_status(0), WriteOutcome::Failed);
    }
}
