//! The browser harness the web page's tests stand on (#28): headless
//! Chromium from Debian's packages, driven over WebDriver, against a page
//! served on a loopback port here. It types into a form, submits it, reads
//! the answer, runs a script and keeps a screenshot under `target/`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::browser::Browser;

/// Serves a form on `/` and echoes what is posted to `/echo`, for at most
/// `n` connections; the posted bodies are kept in `posted`.
fn form_server(n: usize, posted: Arc<Mutex<Vec<String>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(n) {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut length = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let page = if line.starts_with("POST /echo") {
                let body = String::from_utf8_lossy(&body).into_owned();
                posted.lock().unwrap().push(body.clone());
                format!("<p id=echo>posted {body}</p>")
            } else {
                "<form method=post action=/echo><input name=who id=who>\
                 <button id=go>Send</button></form>"
                    .to_owned()
            };
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
                page.len()
            );
        }
    });
    port
}

#[test]
fn headless_chromium_fills_a_form_submits_it_and_keeps_a_screenshot() {
    let posted = Arc::new(Mutex::new(Vec::new()));
    let port = form_server(16, posted.clone());
    let downloads = tempfile::tempdir().unwrap();
    let browser = Browser::start(downloads.path());
    browser.goto(&format!("http://127.0.0.1:{port}/"));
    browser
        .wait_for("#who", Duration::from_secs(20))
        .type_text("gw-07");
    browser.wait_for("#go", Duration::from_secs(5)).click();
    let echo = browser.wait_for("#echo", Duration::from_secs(20)).text();
    assert_eq!(echo, "posted who=gw-07");
    assert_eq!(posted.lock().unwrap().as_slice(), ["who=gw-07"]);
    assert_eq!(browser.run("return 6 * 7"), 42);
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("screenshots")
        .join("harness.png");
    browser.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 1000,
        "{} bytes",
        png.len()
    );
}
