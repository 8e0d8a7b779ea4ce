//! The in-test InfluxDB servers of tests/support/fake_influx.rs checked
//! against the token management contract of docs/influxdb-api.md
//! (what the lease authority calls), with ureq as the authority uses it:
//! 2.x buckets and authorizations, 3.x named admin and Enterprise tokens,
//! and how writes answer a leased, inactive, deleted or expired token.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use support::fake_influx::{FakeInflux, Flavor};

const ADMIN: &str = "admin-token";

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One request; `auth` is the whole Authorization header value.
fn call(
    method: &str,
    url: &str,
    auth: Option<&str>,
    content_type: Option<&str>,
    body: &str,
) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    fn headers<B>(
        mut r: ureq::RequestBuilder<B>,
        auth: Option<&str>,
        content_type: Option<&str>,
    ) -> ureq::RequestBuilder<B> {
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        if let Some(c) = content_type {
            r = r.header("Content-Type", c);
        }
        r
    }
    let response = match method {
        "GET" => headers(agent.get(url), auth, content_type).call(),
        "DELETE" => headers(agent.delete(url), auth, content_type).call(),
        "POST" => headers(agent.post(url), auth, content_type).send(body),
        "PATCH" => headers(agent.patch(url), auth, content_type).send(body),
        other => panic!("no {other} here"),
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    Reply {
        status: response.status().as_u16(),
        body: response.body_mut().read_to_string().unwrap(),
    }
}

fn token(t: &str) -> Option<String> {
    Some(format!("Token {t}"))
}

fn bearer(t: &str) -> Option<String> {
    Some(format!("Bearer {t}"))
}

fn v2_write(influx: &FakeInflux, auth: Option<String>, line: &str) -> Reply {
    call(
        "POST",
        &format!("{}/api/v2/write?org=my-org&bucket=my-bucket", influx.url()),
        auth.as_deref(),
        Some("text/plain; charset=utf-8"),
        line,
    )
}

fn v3_write(influx: &FakeInflux, auth: Option<String>, line: &str) -> Reply {
    call(
        "POST",
        &format!(
            "{}/api/v3/write_lp?db=sensors&accept_partial=true",
            influx.url()
        ),
        auth.as_deref(),
        Some("text/plain; charset=utf-8"),
        line,
    )
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn url_safe(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[test]
fn v2_buckets_are_found_by_name_and_an_unknown_name_is_404() {
    let influx = FakeInflux::start(Flavor::V2, ADMIN, "my-org", "my bucket", 1 << 20);
    let bucket_id = influx.with(|s| s.bucket_id.clone());
    assert!(is_hex_id(&bucket_id), "{bucket_id}");

    // The name percent-encoded, `org=` beside orgID ignored.
    let found = call(
        "GET",
        &format!(
            "{}/api/v2/buckets?orgID=my-org&org=whatever&name=my%20bucket",
            influx.url()
        ),
        token(ADMIN).as_deref(),
        None,
        "",
    );
    assert_eq!(found.status, 200, "{}", found.body);
    let buckets = found.json()["buckets"].as_array().unwrap().clone();
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    assert_eq!(buckets[0]["id"], bucket_id.as_str());
    assert_eq!(buckets[0]["name"], "my bucket");
    assert_eq!(buckets[0]["orgID"], "my-org");
    assert_eq!(buckets[0]["type"], "user");
    assert!(buckets[0]["retentionRules"].is_array());

    // Bearer works too; without a name every bucket of the org is listed.
    let all = call(
        "GET",
        &format!("{}/api/v2/buckets?orgID=my-org", influx.url()),
        bearer(ADMIN).as_deref(),
        None,
        "",
    );
    assert_eq!(all.status, 200);
    let names: Vec<Value> = all.json()["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].clone())
        .collect();
    assert_eq!(
        names,
        [json!("my bucket"), json!("_monitoring"), json!("_tasks")]
    );

    let unknown = call(
        "GET",
        &format!("{}/api/v2/buckets?orgID=my-org&name=nope", influx.url()),
        token(ADMIN).as_deref(),
        None,
        "",
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.json(),
        json!({"code": "not found", "message": "bucket \"nope\" not found"})
    );
    let other_org = call(
        "GET",
        &format!("{}/api/v2/buckets?orgID=other&name=my+bucket", influx.url()),
        token(ADMIN).as_deref(),
        None,
        "",
    );
    assert_eq!(other_org.status, 404);

    for auth in [None, token("wrong")] {
        let refused = call(
            "GET",
            &format!("{}/api/v2/buckets?orgID=my-org", influx.url()),
            auth.as_deref(),
            None,
            "",
        );
        assert_eq!(refused.status, 401);
        assert_eq!(
            refused.json(),
            json!({"code": "unauthorized", "message": "unauthorized access"})
        );
    }
}

#[test]
fn v2_authorizations_are_created_listed_deactivated_and_deleted() {
    let influx = FakeInflux::start(Flavor::V2, ADMIN, "my-org", "my-bucket", 1 << 20);
    let (bucket_id, write) = influx.with(|s| (s.bucket_id.clone(), s.write_permissions()));
    let url = format!("{}/api/v2/authorizations", influx.url());
    let create = |body: &Value| {
        call(
            "POST",
            &url,
            token(ADMIN).as_deref(),
            Some("application/json"),
            &body.to_string(),
        )
    };

    // Refusals, none of which creates anything.
    let empty = create(&json!({"orgID": "my-org", "description": "x", "permissions": []}));
    assert_eq!(empty.status, 400, "{}", empty.body);
    assert_eq!(empty.json()["code"], "invalid");
    let missing = create(&json!({"orgID": "my-org", "description": "x"}));
    assert_eq!(missing.status, 400);
    let no_org = create(&json!({"description": "x", "permissions": write}));
    assert_eq!(no_org.status, 400);
    assert_eq!(no_org.json()["code"], "invalid");
    let broken = call(
        "POST",
        &url,
        token(ADMIN).as_deref(),
        Some("application/json"),
        "{not json",
    );
    assert_eq!(broken.status, 400);
    assert_eq!(broken.json()["code"], "invalid");
    let other_org = create(&json!({"orgID": "other-org", "permissions": write}));
    assert_eq!(other_org.status, 400);
    let other_bucket = create(
        &json!({"orgID": "my-org", "permissions": [{"action": "write",
        "resource": {"type": "buckets", "id": "0123456789abcdef", "orgID": "my-org"}}]}),
    );
    assert_eq!(other_bucket.status, 404, "{}", other_bucket.body);
    assert_eq!(other_bucket.json()["code"], "not found");
    let no_auth = call("POST", &url, None, Some("application/json"), "{}");
    assert_eq!(no_auth.status, 401);
    assert!(influx.authorization_ids().is_empty());

    // Created: 201 with the plaintext token, once.
    let before = SystemTime::now();
    let created = create(
        &json!({"orgID": "my-org", "description": "leasegate lease gw-1",
        "status": "active", "permissions": write}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let auth = created.json();
    let id = auth["id"].as_str().unwrap().to_owned();
    let leased = auth["token"].as_str().unwrap().to_owned();
    assert!(is_hex_id(&id), "{id}");
    assert_eq!(leased.len(), 88, "{leased}");
    assert!(leased.ends_with("==") && url_safe(leased.trim_end_matches('=')));
    assert_eq!(auth["status"], "active");
    assert_eq!(auth["description"], "leasegate lease gw-1");
    assert_eq!(auth["orgID"], "my-org");
    assert!(is_hex_id(auth["userID"].as_str().unwrap()));
    assert_eq!(auth["permissions"], write);
    assert_eq!(auth["permissions"][0]["resource"]["id"], bucket_id.as_str());
    for field in ["createdAt", "updatedAt"] {
        let at = humantime::parse_rfc3339(auth[field].as_str().unwrap()).unwrap();
        assert!(at >= before - Duration::from_secs(1), "{field}");
    }
    let stored = influx.with(|s| s.authorization(&id).cloned()).unwrap();
    assert_eq!(stored.token, leased);
    assert_eq!(stored.org_id, "my-org");
    assert_eq!(stored.permissions, write);

    // The leased token writes, and may not manage tokens.
    assert_eq!(
        v2_write(&influx, token(&leased), "m,s=a v=1i 1").status,
        204
    );
    assert_eq!(influx.with(|s| s.lines.clone()), ["m,s=a v=1i 1"]);
    let escalate = call(
        "POST",
        &url,
        token(&leased).as_deref(),
        Some("application/json"),
        &json!({"orgID": "my-org", "permissions": write}).to_string(),
    );
    assert_eq!(escalate.status, 401, "{}", escalate.body);
    assert_eq!(escalate.json()["code"], "unauthorized");
    let self_delete = call(
        "DELETE",
        &format!("{url}/{id}"),
        token(&leased).as_deref(),
        None,
        "",
    );
    assert_eq!(self_delete.status, 401);
    let its_list = call(
        "GET",
        &format!("{url}?orgID=my-org"),
        token(&leased).as_deref(),
        None,
        "",
    );
    assert_eq!(its_list.status, 200);
    assert_eq!(its_list.json()["authorizations"], json!([]));

    // Listed with the token REDACTED, the operator's own among them.
    let listed = call(
        "GET",
        &format!("{url}?orgID=my-org"),
        token(ADMIN).as_deref(),
        None,
        "",
    );
    assert_eq!(listed.status, 200, "{}", listed.body);
    let list = listed.json()["authorizations"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|a| a["token"] == "REDACTED"), "{list:?}");
    let ours = list.iter().find(|a| a["id"] == id.as_str()).unwrap();
    assert_eq!(ours["description"], "leasegate lease gw-1");
    assert_eq!(ours["permissions"], write);
    let operator = influx.with(|s| s.operator_id.clone());
    assert!(list.iter().any(|a| a["id"] == operator.as_str()));

    let one = call(
        "GET",
        &format!("{url}/{id}"),
        token(ADMIN).as_deref(),
        None,
        "",
    );
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["token"], "REDACTED");
    let none = call(
        "GET",
        &format!("{url}/0123456789abcdef"),
        token(ADMIN).as_deref(),
        None,
        "",
    );
    assert_eq!(none.status, 404);
    assert_eq!(
        none.json(),
        json!({"code": "not found", "message": "authorization not found"})
    );

    // Inactive: 403 on write (docs/influxdb-api.md), active again: written.
    let patch = |status: &str| {
        call(
            "PATCH",
            &format!("{url}/{id}"),
            token(ADMIN).as_deref(),
            Some("application/json"),
            &json!({"status": status}).to_string(),
        )
    };
    let inactive = patch("inactive");
    assert_eq!(inactive.status, 200, "{}", inactive.body);
    assert_eq!(inactive.json()["status"], "inactive");
    assert_eq!(v2_write(&influx, token(&leased), "m v=2i 2").status, 403);
    assert_eq!(patch("active").status, 200);
    assert_eq!(v2_write(&influx, token(&leased), "m v=3i 3").status, 204);

    // A token without write on the bucket: 403.
    let reader = influx.with(|s| {
        let p = json!([{"action": "read", "resource": {"type": "buckets",
            "id": s.bucket_id, "orgID": s.org}}]);
        s.add_authorization("reader", p).token
    });
    let refused = v2_write(&influx, token(&reader), "m v=4i 4");
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.json(),
        json!({"code": "forbidden", "message": "insufficient permissions for write"})
    );

    // Deleted: 204 and recorded with its time; its token is 401; again 404.
    let before = SystemTime::now();
    let deleted = call(
        "DELETE",
        &format!("{url}/{id}"),
        token(ADMIN).as_deref(),
        None,
        "",
    );
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert!(deleted.body.is_empty());
    assert!(!influx.live_authorization(&id));
    let at = influx.with(|s| s.authorization_deleted_at(&id)).unwrap();
    assert!(at >= before && at <= SystemTime::now());
    assert_eq!(influx.with(|s| s.deleted_authorizations.len()), 1);
    let after = v2_write(&influx, token(&leased), "m v=5i 5");
    assert_eq!(after.status, 401);
    assert_eq!(after.json()["code"], "unauthorized");
    let again = call(
        "DELETE",
        &format!("{url}/{id}"),
        token(ADMIN).as_deref(),
        None,
        "",
    );
    assert_eq!(again.status, 404);

    // An outage of the API: 503 for everything, then back.
    influx.with(|s| s.unavailable = true);
    let down = call("GET", &url, token(ADMIN).as_deref(), None, "");
    assert_eq!(down.status, 503);
    assert_eq!(down.json()["code"], "unavailable");
    assert_eq!(v2_write(&influx, token(ADMIN), "m v=6i 6").status, 503);
    influx.with(|s| s.unavailable = false);
    assert_eq!(
        call("GET", &url, token(ADMIN).as_deref(), None, "").status,
        200
    );
    assert_eq!(influx.with(|s| s.lines.len()), 2);
}

fn named_admin(influx: &FakeInflux, body: &Value) -> Reply {
    call(
        "POST",
        &format!("{}/api/v3/configure/token/named_admin", influx.url()),
        bearer(ADMIN).as_deref(),
        Some("application/json"),
        &body.to_string(),
    )
}

fn delete_v3(influx: &FakeInflux, name: &str) -> Reply {
    call(
        "DELETE",
        &format!("{}/api/v3/configure/token?token_name={name}", influx.url()),
        bearer(ADMIN).as_deref(),
        None,
        "",
    )
}

fn system_tokens(influx: &FakeInflux) -> Vec<Value> {
    let listed = call(
        "GET",
        &format!(
            "{}/api/v3/query_sql?db=_internal&q=SELECT%20*%20FROM%20system.tokens&format=json",
            influx.url()
        ),
        bearer(ADMIN).as_deref(),
        None,
        "",
    );
    assert_eq!(listed.status, 200, "{}", listed.body);
    listed.json().as_array().unwrap().clone()
}

#[test]
fn v3_named_admin_tokens_are_created_listed_and_deleted() {
    let influx = FakeInflux::start(Flavor::V3, ADMIN, "", "sensors", 1 << 20);
    let url = format!("{}/api/v3/configure/token/named_admin", influx.url());
    let body = json!({"token_name": "lease-gw-1", "expiry_secs": 3600}).to_string();

    let untyped = call("POST", &url, bearer(ADMIN).as_deref(), None, &body);
    assert_eq!(untyped.status, 415, "{}", untyped.body);
    let text = call(
        "POST",
        &url,
        bearer(ADMIN).as_deref(),
        Some("text/plain"),
        &body,
    );
    assert_eq!(text.status, 415);
    let anonymous = call("POST", &url, None, Some("application/json"), &body);
    assert_eq!((anonymous.status, anonymous.body.as_str()), (401, ""));
    assert!(influx.v3_token_names().is_empty());

    let before = SystemTime::now();
    let created = named_admin(
        &influx,
        &json!({"token_name": "lease-gw-1", "expiry_secs": 3600}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let t = created.json();
    let leased = t["token"].as_str().unwrap().to_owned();
    assert!(leased.starts_with("apiv3_"), "{leased}");
    assert_eq!(leased.len(), 6 + 86);
    assert!(url_safe(&leased["apiv3_".len()..]));
    assert_eq!(t["name"], "lease-gw-1");
    assert!(t["id"].is_u64() && t["hash"].is_string());
    humantime::parse_rfc3339(t["created_at"].as_str().unwrap()).unwrap();
    let expiry = humantime::parse_rfc3339(t["expiry"].as_str().unwrap()).unwrap();
    let lasts = expiry.duration_since(before).unwrap();
    assert!(
        lasts >= Duration::from_secs(3599) && lasts <= Duration::from_secs(3601),
        "{lasts:?}"
    );

    let duplicate = named_admin(&influx, &json!({"token_name": "lease-gw-1"}));
    assert_eq!(duplicate.status, 409);
    assert_eq!(
        named_admin(&influx, &json!({"token_name": "_admin"})).status,
        409
    );
    let no_expiry = named_admin(&influx, &json!({"token_name": "forever"}));
    assert_eq!(no_expiry.status, 201);
    assert_eq!(no_expiry.json()["expiry"], Value::Null);

    // It writes (Bearer or Token); unknown tokens get 401 with no body.
    assert_eq!(v3_write(&influx, bearer(&leased), "m v=1i 1").status, 204);
    assert_eq!(v3_write(&influx, token(&leased), "m v=2i 2").status, 204);
    let unknown = v3_write(&influx, bearer("apiv3_nope"), "m v=3i 3");
    assert_eq!((unknown.status, unknown.body.as_str()), (401, ""));

    let rows = system_tokens(&influx);
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["_admin", "lease-gw-1", "forever"]);
    for r in &rows {
        assert_eq!(r["permissions"], "*:*:*", "{r}");
        for field in ["token_id", "hash", "created_at"] {
            assert!(!r[field].is_null(), "{field} in {r}");
        }
    }
    assert_eq!(rows[1]["token_id"], t["id"]);
    assert!(rows[1]["expiry"].is_string() && rows[2].get("expiry").is_none());

    // Deleted: 200 with an empty body, recorded; then 401 and 404.
    let before = SystemTime::now();
    let deleted = delete_v3(&influx, "lease-gw-1");
    assert_eq!((deleted.status, deleted.body.as_str()), (200, ""));
    let at = influx
        .with(|s| s.v3_token_deleted_at("lease-gw-1"))
        .unwrap();
    assert!(at >= before && at <= SystemTime::now());
    assert_eq!(influx.v3_token_names(), ["forever"]);
    let after = v3_write(&influx, bearer(&leased), "m v=4i 4");
    assert_eq!((after.status, after.body.as_str()), (401, ""));
    assert_eq!(delete_v3(&influx, "lease-gw-1").status, 404);
    assert_eq!(delete_v3(&influx, "_admin").status, 405);
    assert_eq!(system_tokens(&influx).len(), 2);
    assert_eq!(influx.with(|s| s.lines.len()), 2);

    // An outage: 503 with a 3.x error body.
    influx.with(|s| s.unavailable = true);
    let down = delete_v3(&influx, "forever");
    assert_eq!(down.status, 503);
    assert!(down.json()["error"].is_string());
    influx.with(|s| s.unavailable = false);
    assert_eq!(delete_v3(&influx, "forever").status, 200);
}

#[test]
fn an_expired_v3_token_is_401_but_stays_listed_until_deleted() {
    let influx = FakeInflux::start(Flavor::V3, ADMIN, "", "sensors", 1 << 20);
    let created = named_admin(&influx, &json!({"token_name": "short", "expiry_secs": 1}));
    assert_eq!(created.status, 201, "{}", created.body);
    let short = created.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(v3_write(&influx, bearer(&short), "m v=1i 1").status, 204);

    std::thread::sleep(Duration::from_millis(1500));
    let expired = v3_write(&influx, bearer(&short), "m v=2i 2");
    assert_eq!((expired.status, expired.body.as_str()), (401, ""));
    assert_eq!(influx.with(|s| s.lines.len()), 1);
    let rows = system_tokens(&influx);
    assert!(
        rows.iter()
            .any(|r| r["name"] == "short" && r["expiry"].is_string())
    );
    assert_eq!(delete_v3(&influx, "short").status, 200);
    assert!(!system_tokens(&influx).iter().any(|r| r["name"] == "short"));
}

#[test]
fn v3_enterprise_tokens_are_scoped_to_their_database() {
    let influx = FakeInflux::start(Flavor::V3, ADMIN, "", "sensors", 1 << 20);
    let url = format!("{}/api/v3/enterprise/configure/token", influx.url());
    let scoped = |name: &str, db: &str| {
        json!({"token_name": name, "expiry_secs": 60, "permissions": [
            {"resource_type": "db", "resource_names": [db], "actions": ["write"]}]})
        .to_string()
    };
    let post = |body: &str| {
        call(
            "POST",
            &url,
            bearer(ADMIN).as_deref(),
            Some("application/json"),
            body,
        )
    };

    // Core has no such endpoint.
    assert_eq!(post(&scoped("w", "sensors")).status, 404);

    influx.with(|s| s.enterprise = true);
    let created = post(&scoped("w", "sensors"));
    assert_eq!(created.status, 201, "{}", created.body);
    let writer = created.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(post(&scoped("w", "sensors")).status, 409);
    let no_permissions = post(&json!({"token_name": "p", "permissions": []}).to_string());
    assert_eq!(no_permissions.status, 400);
    let elsewhere = post(&scoped("other", "other-db"));
    assert_eq!(elsewhere.status, 201);
    let other = elsewhere.json()["token"].as_str().unwrap().to_owned();

    assert_eq!(v3_write(&influx, bearer(&writer), "m v=1i 1").status, 204);
    assert_eq!(v3_write(&influx, bearer(&other), "m v=2i 2").status, 403);
    // A scoped token manages nothing.
    let escalate = call(
        "POST",
        &url,
        bearer(&writer).as_deref(),
        Some("application/json"),
        &scoped("x", "sensors"),
    );
    assert_eq!(escalate.status, 403);

    let rows = system_tokens(&influx);
    let row = rows.iter().find(|r| r["name"] == "w").unwrap();
    assert_eq!(row["permissions"], "db:sensors:write");
}

#[test]
fn a_v3_partial_write_answers_as_a_real_3_6_server_does() {
    let influx = FakeInflux::start(Flavor::V3, ADMIN, "", "sensors", 1 << 20);
    let first = v3_write(&influx, bearer(ADMIN), "pw,k=a v=1i 1700000000000000001");
    assert_eq!(first.status, 204, "{}", first.body);

    // A type conflict (a validation error), as a real 3.6.0 Core answered
    // it, byte for byte: the server's rendering of the line, cut to 20
    // bytes, without the string's quotes.
    let conflict = v3_write(
        &influx,
        bearer(ADMIN),
        "pw,k=a v=2i 1700000000000000002\npw,k=a v=\"text\" 1700000000000000003\npw,k=a v=4i 1700000000000000004",
    );
    assert_eq!(conflict.status, 400);
    assert_eq!(
        conflict.body,
        r#"{"error":"partial write of line protocol occurred","data":[{"error_message":"invalid column type for column 'v', expected iox::column_type::field::integer, got iox::column_type::field::string","line_number":2,"original_line":"pw,k=a v=text 170000"}]}"#
    );
    assert_eq!(influx.with(|s| s.lines.len()), 3, "the other two written");

    // A parse error quotes the line as sent (cut to 20 bytes), numbered
    // among the lines that hold something: blank and comment lines are
    // not counted.
    let malformed = v3_write(
        &influx,
        bearer(ADMIN),
        "# a comment\npw,k=b v=2i 5\npw,k=b v=\"unterminated 6\npw,k=b v=3i 7\n",
    );
    assert_eq!(malformed.status, 400, "{}", malformed.body);
    let data = malformed.json()["data"].clone();
    assert_eq!(data.as_array().unwrap().len(), 1, "{data}");
    assert_eq!(data[0]["line_number"], 2);
    // The raw line paired with the second counted line is the body's
    // second line by `str::lines`: the server does not skip the comment
    // there, so it quotes the good line before the bad one.
    assert_eq!(data[0]["original_line"], "pw,k=b v=2i 5");

    // A float where integers are stored: rendered as Rust prints floats.
    let float = v3_write(&influx, bearer(ADMIN), "pw,k=a v=2.50 8");
    assert_eq!(float.json()["data"][0]["original_line"], "pw,k=a v=2.5 8");

    // A cut never splits a character.
    let wide = v3_write(
        &influx,
        bearer(ADMIN),
        "pw,k=aaaaaaaaaaaaaa\u{e9} v=\"x\" 9",
    );
    assert_eq!(
        wide.json()["data"][0]["original_line"],
        "pw,k=aaaaaaaaaaaaaa"
    );

    // A repeated field is refused by the validator even with one type.
    let twice = v3_write(&influx, bearer(ADMIN), "pw,k=a v=5i,v=6i 10");
    assert_eq!(
        twice.json()["data"][0]["error_message"],
        "invalid line protocol - multiple instances of 'v' field found"
    );

    // Without accept_partial the first refusal is the whole answer.
    let all_or_nothing = call(
        "POST",
        &format!(
            "{}/api/v3/write_lp?db=sensors&accept_partial=false",
            influx.url()
        ),
        bearer(ADMIN).as_deref(),
        Some("text/plain; charset=utf-8"),
        "pw,k=c v=1i 11\npw,k=c v=\"s\" 12",
    );
    assert_eq!(all_or_nothing.status, 400);
    let answer = all_or_nothing.json();
    assert_eq!(answer["error"], "parsing failed for write_lp endpoint");
    assert_eq!(answer["data"]["line_number"], 2);
    assert!(!influx.with(|s| s.lines.iter().any(|l| l.starts_with("pw,k=c"))));
}

/// Before 3.10 the server cuts `original_line` at byte 20 even inside a
/// character, and panics there: the good lines of the batch are written,
/// the connection closes without an answer, and the server goes on
/// answering other requests.
#[test]
fn a_v3_server_before_3_10_closes_without_an_answer_on_a_split_cut() {
    let influx = FakeInflux::start(Flavor::V3, ADMIN, "", "sensors", 1 << 20);
    influx.with(|s| s.v3_cut_panics = true);
    let first = v3_write(&influx, bearer(ADMIN), "m,t=a v=1i 1");
    assert_eq!(first.status, 204, "{}", first.body);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!(
        "{}/api/v3/write_lp?db=sensors&accept_partial=true",
        influx.url()
    );
    // Rendered as the server does, `m,t=aaaaaaaaaaaaaaa\u{e9} v=s 3`: byte
    // 20 is inside the `\u{e9}`.
    let body = "m,t=a v=2i 2\nm,t=aaaaaaaaaaaaaaa\u{e9} v=\"s\" 3\nm,t=a v=4i 4\n";
    let e = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {ADMIN}"))
        .send(body)
        .expect_err("no answer");
    assert!(
        matches!(&e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof),
        "{e:?}"
    );
    assert_eq!(
        influx.with(|s| (s.lines.len(), s.answers.last().copied())),
        (3, Some(support::fake_influx::NO_ANSWER))
    );
    // A refusal whose cut falls between characters is answered.
    let narrow = v3_write(&influx, bearer(ADMIN), "m,t=aaaaaaaaaaaaaa\u{e9} v=\"s\" 5");
    assert_eq!(narrow.status, 400, "{}", narrow.body);
    assert_eq!(
        narrow.json()["data"][0]["original_line"],
        "m,t=aaaaaaaaaaaaaa\u{e9}"
    );
}

#[test]
fn a_v3_table_over_its_column_limit_is_a_422_partial_write() {
    let influx = FakeInflux::start(Flavor::V3, ADMIN, "", "sensors", 1 << 20);
    influx.with(|s| s.v3_column_limit = 4);
    // pw: k, a, b, time: full.
    let reply = v3_write(
        &influx,
        bearer(ADMIN),
        "pw,k=x a=1i,b=2i 1\npw,k=x a=3i,c=4i 2\npw,k=x b=5i 3",
    );
    assert_eq!(reply.status, 422, "{}", reply.body);
    let data = reply.json()["data"].clone();
    assert_eq!(data.as_array().unwrap().len(), 1);
    assert_eq!(data[0]["line_number"], 2);
    assert_eq!(
        data[0]["error_message"],
        "Update to schema would exceed number of columns per table limit of 4 columns"
    );
    assert_eq!(data[0]["original_line"], "pw,k=x a=3i,c=4i 2");
    assert_eq!(influx.with(|s| s.lines.len()), 2);
}
