//! The authority's web page (#28) in headless Chromium, against a real
//! authority and InfluxDB 1.x: an admin added with the command line logs
//! in, sees the fleet and logs out; a request without a session, or a form
//! without its CSRF token, is refused; 20 wrong passwords lock the
//! address out, audited. Screenshots go under `target/tmp/screenshots/`.

use std::time::Duration;

use serde_json::Value;
use support::authority::{AuthorityServer, role, v1_backend};
use support::browser::Browser;
use support::{ADMIN_PASSWORD, ADMIN_USER, Influx};

const PASSWORD: &str = "a long enough passphrase";

fn screenshot(browser: &Browser, name: &str) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("screenshots")
        .join(format!("{name}.png"));
    browser.screenshot(&path);
}

/// A plain HTTP client that keeps redirects and statuses to itself.
fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

#[test]
fn an_admin_logs_in_sees_the_fleet_and_logs_out_and_strangers_are_refused() {
    let influx = Influx::start();
    influx.query("CREATE DATABASE sensors");
    let authority = AuthorityServer::start(&format!(
        "[web]\nenabled = true\n{}{}",
        v1_backend("main", &influx.url(), ADMIN_USER, ADMIN_PASSWORD),
        role("sensor", "iot-sensor", "main", "database", "sensors")
    ));
    let (_, credential) = authority.enroll_ok(&authority.ticket("iot-sensor", &[]), "gw-web");
    authority.lease_ok(&credential, Some(600));
    let added =
        authority.cli_with_stdin(&["admin", "add", "ops"], format!("{PASSWORD}\n").as_bytes());
    assert!(added.status.success(), "{}", added.stderr);
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
    browser.goto(&format!("{base}/ui/"));
    browser
        .wait_for("#name", Duration::from_secs(20))
        .type_text("ops");
    screenshot(&browser, "login");
    browser
        .wait_for("#password", Duration::from_secs(5))
        .type_text(PASSWORD);
    browser.wait_for("#login", Duration::from_secs(5)).click();
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
