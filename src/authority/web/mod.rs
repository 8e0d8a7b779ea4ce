//! The web page for admins (`[web] enabled`) under `/ui`: login and
//! logout here, the fleet, gateways, tickets, leases and audit in `views`.
//! Server-rendered HTML that works without JavaScript; its one script and
//! stylesheet are served here (a strict Content-Security-Policy allows
//! nothing else). Sessions are cookies (HttpOnly, Secure, SameSite=Strict)
//! whose token the store keeps hashed; every form carries a CSRF token;
//! wrong passwords lock an address out a while, audited. It never renders
//! a secret.

mod limiter;
mod pages;
mod views;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::authority::service::Authority;
use crate::secret::Secret;

use self::limiter::Limiter;

/// The session cookie, and the one that carries the login form's CSRF
/// token before there is a session.
const SESSION: &str = "lg_session";
const LOGIN: &str = "lg_login";

#[derive(Clone)]
struct Web {
    authority: Arc<Authority>,
    limiter: Arc<Limiter>,
    downloads: Arc<views::Downloads>,
}

/// The client's address, as the server's accept loop tells every request.
#[derive(Debug, Clone, Copy)]
pub struct Client(pub IpAddr);

/// The page's routes, all under `/ui`.
pub fn router(authority: Arc<Authority>) -> Router {
    Router::new()
        .route("/ui", get(views::fleet))
        .route("/ui/", get(views::fleet))
        .route("/ui/gateway/{id}", get(views::gateway))
        .route(
            "/ui/tickets",
            get(views::tickets).post(views::create_ticket),
        )
        .route("/ui/tickets/revoke", post(views::revoke_ticket))
        .route("/ui/tickets/download/{token}", get(views::download_ticket))
        .route("/ui/leases", get(views::leases))
        .route("/ui/leases/revoke", post(views::revoke_lease))
        .route("/ui/audit", get(views::audit))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/app.css", get(css))
        .route("/ui/app.js", get(js))
        .layer(axum::middleware::from_fn(headers))
        .with_state(Web {
            authority,
            limiter: Arc::default(),
            downloads: Arc::default(),
        })
}

/// What every page of `/ui` is sent with: nothing from elsewhere, no
/// inline script or style, no framing, no caching, no referrer.
async fn headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut r = next.run(request).await;
    let h = r.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css")], pages::CSS).into_response()
}

async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript")], pages::JS).into_response()
}

/// A cookie's value from the request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(name: &str, value: &str, max_age: Duration) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!(
            "{name}={value}; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
            max_age.as_secs()
        ),
    )
}

/// Whether two tokens are the same, in time that does not tell how much
/// of them matched.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The signed-in admin and the session's CSRF token, or None.
async fn signed_in(web: &Web, headers: &HeaderMap) -> Option<(String, String, Secret)> {
    let token = Secret::new(cookie(headers, SESSION)?);
    let a = web.authority.clone();
    let t = token.clone();
    let found = tokio::task::spawn_blocking(move || a.session(&t)).await;
    match found {
        Ok(Ok(Some((admin, csrf)))) => Some((admin, csrf, token)),
        _ => None,
    }
}

fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

fn page(status: StatusCode, html: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

async fn login_page(headers: HeaderMap) -> Response {
    let token = cookie(&headers, LOGIN)
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| crate::secret::random_hex(16));
    let mut r = page(StatusCode::OK, pages::login(&token, None));
    if let Ok(v) = set_cookie(LOGIN, &token, Duration::from_secs(3600))
        .1
        .parse()
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(serde::Deserialize)]
struct LoginForm {
    name: String,
    password: String,
    csrf: String,
}

async fn login(
    State(web): State<Web>,
    Extension(Client(ip)): Extension<Client>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN).unwrap_or_default();
    if expected.is_empty() || !same(&expected, &form.csrf) {
        return page(
            StatusCode::FORBIDDEN,
            pages::error("The form's CSRF token is missing or wrong: load the login page again."),
        );
    }
    if let Some(wait) = web.limiter.locked(ip) {
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(
                &expected,
                Some(&format!(
                    "Too many wrong passwords from your address: try again in {}.",
                    humantime::format_duration(Duration::from_secs(wait.as_secs() + 1))
                )),
            ),
        );
    }
    let a = web.authority.clone();
    let (name, password) = (form.name.clone(), Secret::new(form.password));
    let ttl = a.config().web.session_ttl;
    let opened = tokio::task::spawn_blocking(move || {
        if a.check_admin(&name, &password)? {
            a.open_session(&name, ttl, ip).map(Some)
        } else {
            a.login_refused(&name, ip).map(|()| None)
        }
    })
    .await;
    match opened {
        Ok(Ok(Some(session))) => {
            web.limiter.succeeded(ip);
            let mut r = Redirect::to("/ui/").into_response();
            let (k, v) = set_cookie(SESSION, session.token.expose(), ttl);
            if let Ok(v) = v.parse() {
                r.headers_mut().append(k, v);
            }
            r
        }
        Ok(Ok(None)) => {
            if let Some(why) = web.limiter.failed(ip) {
                let a = web.authority.clone();
                let _ = tokio::task::spawn_blocking(move || a.login_locked(ip, &why)).await;
            }
            page(
                StatusCode::UNAUTHORIZED,
                pages::login(&expected, Some("Wrong name or password.")),
            )
        }
        _ => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::error("The login failed; see the authority's log."),
        ),
    }
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(web): State<Web>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    let Some((admin, csrf, token)) = signed_in(&web, &headers).await else {
        return to_login();
    };
    if !same(&csrf, &form.csrf) {
        return page(
            StatusCode::FORBIDDEN,
            pages::error("The form's CSRF token is missing or wrong."),
        );
    }
    let a = web.authority.clone();
    let _ = tokio::task::spawn_blocking(move || a.close_session(&token, &admin)).await;
    let mut r = to_login();
    let (k, v) = set_cookie(SESSION, "", Duration::ZERO);
    if let Ok(v) = v.parse() {
        r.headers_mut().append(k, v);
    }
    r
}
