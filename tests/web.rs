//! The authority's web page (#28) in headless Chromium, against a real
//! authority and InfluxDB 1.x: an admin added with the command line logs
//! in, sees the fleet and logs out; a request without a session, or a form
//! without its CSRF token, is refused; 20 wrong passwords lock the
//! address out, audited. Screenshots go under `target/tmp/screenshots/`.

use std::time::Duration;

use serde_json::Value;
use support::authority::{AuthorityServer, role, v1_backend};
use support::browser::Browser;
use support::{
    ADMIN_PASSWORD, ADMIN_USER, Daemon, Influx, Mosquitto, leased_config, leasegate_argv,
};

const PASSWORD: &str = "a long enough passphrase";

fn screenshot(browser: &Browser, name: &str) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("screenshots")
        .join(format!("{name}.png"));
    browser.screenshot(&path);
}

/// Logs `ops` in through the form `url` leads to, keeping a screenshot of
/// the filled-in form under `shot`.
fn log_in(browser: &Browser, url: &str, shot: Option<&str>) {
    browser.goto(url);
    browser
        .wait_for("#name", Duration::from_secs(20))
        .type_text("ops");
    if let Some(name) = shot {
        screenshot(browser, name);
    }
    browser
        .wait_for("#password", Duration::from_secs(5))
        .type_text(PASSWORD);
    browser.wait_for("#login", Duration::from_secs(5)).click();
}

/// A plain HTTP client that keeps redirects and statuses to itself.
fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// An authority with the web page on, for `influx`'s `sensors`, and an
/// admin `ops` added with the command line.
fn web_authority(influx: &Influx) -> AuthorityServer {
    influx.query("CREATE DATABASE sensors");
    let authority = AuthorityServer::start(&format!(
        "[web]\nenabled = true\n{}{}",
        v1_backend("main", &influx.url(), ADMIN_USER, ADMIN_PASSWORD),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    ));
    let added =
        authority.cli_with_stdin(&["admin", "add", "ops"], format!("{PASSWORD}\n").as_bytes());
    assert!(added.status.success(), "{}", added.stderr);
    authority
}

#[test]
fn an_admin_logs_in_sees_the_fleet_and_logs_out_and_strangers_are_refused() {
    let influx = Influx::start();
    let authority = web_authority(&influx);
    let (_, credential) = authority.enroll_ok(&authority.ticket("iot-sensor", &[]), "gw-web");
    authority.lease_ok(&credential, Some(600));
    let base = authority.url();

    // Without a session: to the login page.
    let bare = http().get(format!("{base}/ui/")).call().unwrap();
    assert_eq!(bare.status().as_u16(), 303);
    assert_eq!(bare.headers()["location"], "/ui/login");
    let csp = bare.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'self'"),
        "{csp}"
    );

    let downloads = tempfile::tempdir().unwrap();
    let browser = Browser::start(downloads.path());
    log_in(&browser, &format!("{base}/ui/"), Some("login"));
    let table = browser.wait_for("#fleet", Duration::from_secs(20)).text();
    assert!(
        table.contains("gw-web") && table.contains("sensor"),
        "{table}"
    );
    assert_eq!(
        browser.wait_for("#admin", Duration::from_secs(5)).text(),
        "ops"
    );
    // The lease's time left counts down in the page's own script.
    let countdown = browser.run("return document.querySelector('[data-expires]').textContent");
    assert!(
        countdown.as_str().is_some_and(|t| t.starts_with("in ")),
        "{countdown}"
    );
    screenshot(&browser, "fleet");
    let session: Vec<Value> = browser
        .cookies()
        .into_iter()
        .filter(|c| c["name"] == "lg_session")
        .collect();
    assert_eq!(session.len(), 1, "{session:?}");
    assert_eq!(session[0]["httpOnly"], true);
    assert_eq!(session[0]["secure"], true);
    assert_eq!(session[0]["sameSite"], "Strict");
    browser.wait_for("#logout", Duration::from_secs(5)).click();
    browser.wait_for("#login", Duration::from_secs(20));
    browser.goto(&format!("{base}/ui/"));
    browser.wait_for("#login", Duration::from_secs(20));

    // A form without its CSRF token (or with another's) is refused, and
    // the session stays.
    let (status, cookie) = authority.web_login("ops", PASSWORD);
    assert_eq!(status, 303);
    let cookie = format!("lg_session={}", cookie.unwrap());
    for body in ["", "csrf=0123456789abcdef0123456789abcdef"] {
        let refused = http()
            .post(format!("{base}/ui/logout"))
            .header("Cookie", &cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body)
            .unwrap();
        assert_eq!(refused.status().as_u16(), 403, "{body:?}");
    }
    let still = http()
        .get(format!("{base}/ui/"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(still.status().as_u16(), 200);

    // 20 wrong passwords lock this address out, and say so.
    for i in 0..20 {
        let (status, cookie) = authority.web_login("ops", "not the passphrase");
        assert_eq!((status, cookie), (401, None), "attempt {i}");
    }
    let (status, _) = authority.web_login("ops", PASSWORD);
    assert_eq!(status, 429, "the right password is refused while locked");
    let log = authority.log();
    assert!(
        log.contains("audit: admin login ops: from 127.0.0.1"),
        "{log}"
    );
    assert!(
        log.contains("audit: admin login refused ops: wrong name or password"),
        "{log}"
    );
    assert!(
        log.contains("audit: admin login locked 127.0.0.1: 20 wrong passwords"),
        "{log}"
    );
    assert!(log.contains("audit: admin logout ops"), "{log}");
    assert!(!log.contains(PASSWORD), "the password reached the log");
}

/// The file Chromium finished downloading into `dir` (not a partial one).
fn downloaded(dir: &std::path::Path, within: Duration) -> Option<std::path::PathBuf> {
    let mut found = None;
    support::wait_until(within, || {
        found = std::fs::read_dir(dir).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "ticket"))
        });
        found.is_some()
    });
    found
}

#[test]
fn an_admin_hands_out_a_ticket_watches_the_gateway_enroll_and_revokes_its_lease_in_the_browser() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let authority = web_authority(&influx);
    // A gateway waiting for its ticket; its leases last long enough not
    // to renew while the test looks at one.
    let mut gateway = Daemon::start_program(
        leasegate_argv(),
        tempfile::tempdir().unwrap(),
        &leased_config(&broker, "gw-browser", "10m"),
        "info",
    );
    assert!(
        gateway.wait_for_log("ready:", 1, Duration::from_secs(20)),
        "{}",
        gateway.log()
    );
    let tickets = gateway.dir.path().join("tickets");
    std::fs::create_dir_all(&tickets).unwrap();
    let base = authority.url();

    let downloads = tempfile::tempdir().unwrap();
    let browser = Browser::start(downloads.path());
    log_in(&browser, &format!("{base}/ui/login"), None);
    browser.wait_for("#fleet", Duration::from_secs(20));

    // Create a ticket bound to the gateway's name, and download it once.
    browser.goto(&format!("{base}/ui/tickets"));
    browser
        .wait_for("#attributes", Duration::from_secs(20))
        .type_text("service=iot-sensor\nsite=north");
    let expires = browser.wait_for("#expires_in", Duration::from_secs(5));
    expires.clear();
    expires.type_text("2h");
    browser
        .wait_for("#identity_name", Duration::from_secs(5))
        .type_text("gw-browser");
    screenshot(&browser, "tickets");
    browser
        .wait_for("#create-ticket", Duration::from_secs(5))
        .click();
    let link = browser.wait_for("#download", Duration::from_secs(20));
    let href = link.attribute("href");
    screenshot(&browser, "ticket-created");
    assert!(
        !browser.text().contains("LGT1"),
        "the ticket's secret is in the page"
    );
    link.click();
    let file = downloaded(downloads.path(), Duration::from_secs(30)).expect("no ticket downloaded");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("LGT1."), "{text}");
    // Once only.
    let session = browser
        .cookies()
        .into_iter()
        .find(|c| c["name"] == "lg_session")
        .expect("a session cookie");
    let again = http()
        .get(format!(
            "{base}{href}",
            href = href.trim_start_matches(&base)
        ))
        .header(
            "Cookie",
            &format!("lg_session={}", session["value"].as_str().unwrap()),
        )
        .call()
        .unwrap();
    assert_eq!(again.status().as_u16(), 410);
    let again = again.into_body().read_to_string().unwrap();
    assert!(again.contains("downloaded already"), "{again}");

    // The technician drops it in; the gateway enrolls and is on the fleet
    // page within 2 s.
    let part = tickets.join("gw.part");
    std::fs::write(&part, &text).unwrap();
    std::fs::rename(&part, tickets.join("gw.ticket")).unwrap();
    assert!(
        gateway.wait_for_log("enrolled with ticket", 1, Duration::from_secs(30)),
        "{}",
        gateway.log()
    );
    let enrolled = std::time::Instant::now();
    let mut listed = None;
    for _ in 0..40 {
        browser.goto(&format!("{base}/ui/"));
        let table = browser.wait_for("#fleet", Duration::from_secs(20)).text();
        if table.contains("gw-browser") {
            listed = Some(enrolled.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = listed.expect("the gateway never appeared on the fleet page");
    assert!(listed <= Duration::from_secs(2), "listed after {listed:?}");
    // Filters by role and attribute.
    for (query, shown) in [
        ("role=sensor", true),
        ("role=other", false),
        ("attr=site%3Dnorth", true),
        ("attr=site%3Dsouth", false),
        ("attr=site", true),
    ] {
        browser.goto(&format!("{base}/ui/?{query}"));
        let table = browser.wait_for("#fleet", Duration::from_secs(20)).text();
        assert_eq!(table.contains("gw-browser"), shown, "{query}: {table}");
    }

    // Its lease, from its own page; revoked there, and its InfluxDB user is
    // gone within 2 s.
    let lease = {
        let mut found = None;
        support::wait_until(Duration::from_secs(30), || {
            found = authority
                .leases()
                .into_iter()
                .find(|l| l["issued_for"] == "gw-browser" && l["status"] == "active");
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no lease for the gateway\n{}", gateway.log()))
    };
    let lease_id = lease["id"].as_str().unwrap().to_owned();
    let user_of_lease = || {
        influx
            .users()
            .into_iter()
            .find(|u| u.ends_with(&format!("_{lease_id}")))
    };
    assert!(user_of_lease().is_some(), "{:?}", influx.users());
    for (query, shown) in [
        ("state=ok&role=sensor&attr=service%3Diot-sensor", true),
        ("state=late", false),
    ] {
        browser.goto(&format!("{base}/ui/?{query}"));
        let table = browser.wait_for("#fleet", Duration::from_secs(20)).text();
        assert_eq!(table.contains("gw-browser"), shown, "{query}: {table}");
    }
    browser.goto(&format!("{base}/ui/"));
    browser
        .wait_for("#fleet a", Duration::from_secs(20))
        .click();
    let facts = browser.wait_for("#facts", Duration::from_secs(20)).text();
    assert!(facts.contains("site=north"), "{facts}");
    browser.wait_for("#chart-rates, #chart-waiting", Duration::from_secs(5));
    screenshot(&browser, "gateway");
    browser
        .wait_for(&format!("#revoke-{lease_id}"), Duration::from_secs(5))
        .click();
    let revoked_at = std::time::Instant::now();
    let gone = support::wait_until(Duration::from_secs(10), || user_of_lease().is_none());
    let took = revoked_at.elapsed();
    assert!(
        gone && took <= Duration::from_secs(2),
        "user still there after {took:?}"
    );
    let message = browser.wait_for("#message", Duration::from_secs(20)).text();
    assert_eq!(message, format!("Lease {lease_id} revoked."));

    // Every change is in the audit trail with the admin's name.
    browser.goto(&format!("{base}/ui/leases?all=1"));
    let leases = browser.wait_for("#leases", Duration::from_secs(20)).text();
    assert!(leases.contains(&lease_id), "{leases}");
    screenshot(&browser, "leases");
    browser.goto(&format!("{base}/ui/audit"));
    let audit = browser.wait_for("#audit", Duration::from_secs(20)).text();
    screenshot(&browser, "audit");
    let row = |event: &str, subject: &str, by: &str| {
        audit
            .lines()
            .any(|l| l.contains(event) && l.contains(subject) && l.contains(by))
    };
    assert!(
        row("ticket create", "", "by admin ops"),
        "no ticket create by ops in\n{audit}"
    );
    assert!(
        row("lease revoke requested", &lease_id, "revoke by admin ops"),
        "no lease revoke by ops in\n{audit}"
    );

    browser.wait_for("#logout", Duration::from_secs(5)).click();
    browser.wait_for("#login", Duration::from_secs(20));
    let log = authority.log() + &gateway.log();
    assert!(!log.contains(text.trim()), "the ticket reached a log");
    gateway.stop_cleanly();
}

/// The session's CSRF token, from a page's forms.
fn csrf_of(page: &str) -> String {
    page.split("name=csrf value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form with the CSRF token")
        .to_owned()
}

#[test]
fn the_ticket_form_names_a_bad_field_the_audit_trail_pages_and_a_revoke_is_audited() {
    let influx = Influx::start();
    let authority = web_authority(&influx);
    let (_, session) = authority.web_login("ops", PASSWORD);
    let cookie = format!("lg_session={}", session.unwrap());
    let base = authority.url();
    let get = |path: &str| {
        let mut r = http()
            .get(format!("{base}{path}"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let post = |path: &str, body: &str| {
        let mut r = http()
            .post(format!("{base}{path}"))
            .header("Cookie", &cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.to_owned())
            .unwrap();
        let location = r
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        (
            r.status().as_u16(),
            location,
            r.body_mut().read_to_string().unwrap(),
        )
    };
    let (status, page) = get("/ui/tickets");
    assert_eq!(status, 200);
    let csrf = csrf_of(&page);

    // A bad field is named, and the form keeps what was typed.
    for (body, wanted) in [
        (
            "uses=0&expires_in=1h",
            "Uses: &quot;0&quot; is not a whole number",
        ),
        (
            "uses=1&expires_in=soon",
            "Expires in: &quot;soon&quot; is not a duration",
        ),
        (
            "uses=1&expires_in=1h&attributes=site",
            "Attributes, line 1: &quot;site&quot; is not key=value.",
        ),
        (
            "uses=1&expires_in=1h&attributes=service%3Dnothing-matches",
            "The ticket was not created: no [[role]] matches",
        ),
    ] {
        let (status, _, page) = post("/ui/tickets", &format!("csrf={csrf}&{body}"));
        assert_eq!(status, 400, "{body}");
        assert!(page.contains(wanted), "{body}: {wanted} not in {page}");
    }
    // Without the token nothing is created.
    let (status, _, _) = post(
        "/ui/tickets",
        "uses=1&expires_in=1h&attributes=service%3Diot-sensor",
    );
    assert_eq!(status, 403);

    // 60 tickets: more audit rows than a page holds.
    let mut ids = Vec::new();
    for _ in 0..60 {
        let (status, _, page) = post(
            "/ui/tickets",
            &format!("csrf={csrf}&uses=1&expires_in=1h&attributes=service%3Diot-sensor"),
        );
        assert_eq!(status, 200, "{page}");
        let id = page
            .split("id=message>Ticket ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap()
            .to_owned();
        ids.push(id);
    }
    let (status, location, _) = post("/ui/tickets/revoke", &format!("csrf={csrf}&id={}", ids[0]));
    assert_eq!(status, 303);
    assert_eq!(
        location.as_deref(),
        Some(&*format!("/ui/tickets?revoked={}", ids[0]))
    );
    let (_, page) = get(location.as_deref().unwrap());
    assert!(
        page.contains(&format!("Ticket {} revoked.", ids[0])),
        "{page}"
    );
    assert!(
        page.contains(&format!("<tr id=\"ticket-{}\">", ids[0]))
            && page.matches("revoked").count() >= 2,
        "{page}"
    );

    // The trail, newest first, a page at a time, every row once.
    let trail = authority.cli_ok(&["audit", "--json", "--limit", "1000"]);
    let all: Vec<Value> = serde_json::from_str(&trail).unwrap();
    let (mut rows, mut next, mut pages) = (Vec::new(), Some("/ui/audit".to_owned()), 0);
    while let Some(path) = next.take() {
        let (status, page) = get(&path);
        assert_eq!(status, 200);
        rows.extend(
            page.split("<tr id=\"audit-")
                .skip(1)
                .map(|r| r.split('"').next().unwrap().parse::<i64>().unwrap()),
        );
        next = page
            .split("id=older href=\"")
            .nth(1)
            .map(|r| r.split('"').next().unwrap().replace("&amp;", "&"));
        pages += 1;
        assert!(pages <= 10, "the pager does not end");
    }
    assert_eq!(rows.len(), all.len(), "{rows:?}");
    assert!(
        rows.windows(2).all(|w| w[0] > w[1]),
        "newest first: {rows:?}"
    );
    assert_eq!(pages, all.len().div_ceil(50));
    let (_, first) = get("/ui/audit");
    assert!(first.contains("ticket revoked by admin ops"), "{first}");
}
