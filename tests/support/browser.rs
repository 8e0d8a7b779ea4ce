//! Headless Chromium (Debian's `chromium` and `chromium-driver`) driven
//! over the W3C WebDriver protocol: chromedriver started on a free
//! loopback port in a temporary directory and stopped by PID. The few
//! endpoints the tests use are plain JSON over the HTTP client already in
//! the tree; no async runtime in synchronous tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::{free_port, wait_until};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process with one headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    http: ureq::Agent,
    /// Where screenshots and downloads go.
    pub downloads: PathBuf,
    _profile: tempfile::TempDir,
}

/// One element of the page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that downloads into
    /// `downloads`.
    pub fn start(downloads: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new(find("chromedriver"))
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver): tests/install-servers.sh installs it");
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let up = wait_until(Duration::from_secs(20), || {
            http.get(format!("{base}/status")).call().is_ok()
        });
        assert!(up, "chromedriver did not come up");
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            base,
            http,
            downloads: downloads.to_owned(),
            _profile: profile,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find("chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--disable-background-networking",
                         "--no-first-run", "--window-size=1280,900",
                         format!("--user-data-dir={}", b._profile.path().display())],
                "prefs": {"download.default_directory": downloads.display().to_string(),
                          "download.prompt_for_download": false}
            }
        }}});
        let session = b.call("POST", "/session", Some(caps));
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"))
            .to_owned();
        b.base = format!("{}/session/{id}", b.base);
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let answer = match (method, body) {
            ("POST", body) => self
                .http
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
            ("DELETE", _) => self.http.delete(&url).call(),
            _ => self.http.get(&url).call(),
        };
        let mut answer = answer.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let text = answer
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        v.get("value").cloned().unwrap_or(v)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's visible text.
    pub fn text(&self) -> String {
        self.find("body").map(|e| e.text()).unwrap_or_default()
    }

    /// The first element `css` selects, if there is one.
    pub fn find(&self, css: &str) -> Option<Element<'_>> {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT].as_str().map(|id| Element {
            browser: self,
            id: id.to_owned(),
        })
    }

    /// Waits (bounded) for `css` to select an element.
    pub fn wait_for(&self, css: &str, within: Duration) -> Element<'_> {
        let mut found = None;
        wait_until(within, || {
            found = self.find(css).map(|e| e.id);
            found.is_some()
        });
        Element {
            browser: self,
            id: found.unwrap_or_else(|| panic!("no {css} on {}:\n{}", self.url(), self.text())),
        }
    }

    /// Runs `script` in the page and returns what it returns.
    pub fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Writes a PNG of the page to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let shot = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().unwrap_or_default())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// The page's cookies, as WebDriver gives them.
    pub fn cookies(&self) -> Vec<Value> {
        self.call("GET", "/cookie", None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Element<'_> {
    pub fn click(&self) {
        self.browser
            .call("POST", &format!("/element/{}/click", self.id), None);
    }

    pub fn type_text(&self, text: &str) {
        self.browser.call(
            "POST",
            &format!("/element/{}/value", self.id),
            Some(json!({ "text": text })),
        );
    }

    /// Empties an input or a textarea.
    pub fn clear(&self) {
        self.browser
            .call("POST", &format!("/element/{}/clear", self.id), None);
    }

    /// An attribute's value as the page has it ("" if absent).
    pub fn attribute(&self, name: &str) -> String {
        self.browser
            .call(
                "GET",
                &format!("/element/{}/attribute/{name}", self.id),
                None,
            )
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn text(&self) -> String {
        self.browser
            .call("GET", &format!("/element/{}/text", self.id), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).call();
        super::stop_child(&mut self.driver);
    }
}

fn find(name: &str) -> PathBuf {
    ["/usr/bin", "/usr/lib/chromium"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} (Debian chromium, chromium-driver): tests/install-servers.sh installs it"
            )
        })
}
