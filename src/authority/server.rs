//! The authority's HTTP(S) front: routes of [`crate::wire::api`] onto
//! [`Authority`], over rustls unless TLS is off. It owns the wire (bodies,
//! bearer credentials, each [`ApiError`]'s status) and who is served when
//! many ask at once ([`Gate`], in `gate.rs`). Calls into the authority run on the
//! blocking pool.
//!
//! It decides nothing itself, never logs a request body or header (they
//! hold secrets), and no client may hold its capacity by being slow.

mod gate;

pub use gate::{Admitted, Gate, MAX_PER_ADDRESS};
use gate::{ESTABLISHED_FOR, client_key};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use tower::ServiceExt as _;

use crate::authority::service::{Authority, CallFrom};
use crate::authority::store::IdentityRow;
use crate::secret::Secret;
use crate::shutdown::Shutdown;
use crate::wire::api::{ApiError, EnrollRequest, ErrorBody, ErrorCode, LeaseList};

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get once shutdown starts.
pub const DRAIN: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body, once its headers
/// are in: the bodies are small JSON objects.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take from its headers to its answer, body and
/// InfluxDB calls included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one connection may stay open; the request in flight finishes.
/// Gateways make a call every few minutes, each on a new connection.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long an enrollment waits for one of the `[enrollment]
/// concurrency` slots before it is refused with 429: a burst of a site's
/// gateways is served in turn rather than sent back to retry.
const ENROLL_QUEUE: Duration = Duration::from_secs(5);
/// Request bodies are small JSON objects.
const MAX_BODY: usize = 64 * 1024;
/// The most of an authenticated lease request's body that is read (and
/// dropped past [`MAX_BODY`]) before the connection is refused.
const MAX_DROPPED: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen: {0}")]
    Listen(#[source] std::io::Error),
}

/// The client's address, put into each request by the accept loop.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

#[derive(Clone)]
struct App {
    authority: Arc<Authority>,
    gate: Arc<Gate>,
    /// The last `/healthz` store check and when: probes, however many,
    /// cost the store one query per [`HEALTH_FOR`].
    health: Arc<tokio::sync::Mutex<Option<(Instant, bool)>>>,
}

/// How long a `/healthz` store check answers for.
const HEALTH_FOR: Duration = Duration::from_secs(1);

fn router(app: App) -> Router {
    let web = app
        .authority
        .config()
        .web
        .enabled
        .then(|| crate::authority::web::router(app.authority.clone()));
    let api = Router::new()
        .route("/v1/health", get(health))
        .route("/healthz", get(healthz))
        .route("/v1/enroll", post(enroll))
        .route("/v1/leases", post(create_lease).get(list_leases))
        .route("/v1/leases/{id}", get(show_lease).delete(revoke_lease))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(deadline))
        .with_state(app);
    match web {
        Some(web) => api.merge(web),
        None => api,
    }
}

/// Every request answers within [`REQUEST_TIMEOUT`] of its headers.
async fn deadline(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut r = error_response(ApiError::new(
                ErrorCode::Internal,
                "the request took too long and was cut",
            ));
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
    }
}

/// Serves until `shutdown`, then gives requests in flight [`DRAIN`].
/// `beat` is bumped four times a second by a task on the server's runtime: it
/// stops if the runtime is wedged.
pub fn serve(
    authority: Arc<Authority>,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: Shutdown,
    beat: Arc<crate::lifecycle::health::Beat>,
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .thread_name("authority-http")
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    listener
        .set_nonblocking(true)
        .map_err(ServerError::Listen)?;
    let gate = Arc::new(Gate::new(authority.config().enrollment));
    // Before the first connection: a restarted replica, or one gateways
    // fail over to, knows them at once.
    gate.learn(&authority.gateway_addresses(ESTABLISHED_FOR));
    let app = router(App {
        authority: authority.clone(),
        gate: gate.clone(),
        health: Arc::default(),
    });
    runtime.spawn(learn_gateways(authority.clone(), gate.clone()));
    runtime.spawn(summarize_refusals(authority));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    runtime.spawn(heartbeat(beat));
    runtime.block_on(accept_loop(listener, gate, app, acceptor, shutdown))?;
    runtime.shutdown_timeout(DRAIN);
    Ok(())
}

/// Tells the gate, every minute, the addresses gateways called other
/// replicas from.
async fn learn_gateways(authority: Arc<Authority>, gate: Arc<Gate>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        let a = authority.clone();
        let found = tokio::task::spawn_blocking(move || a.gateway_addresses(ESTABLISHED_FOR)).await;
        if let Ok(addresses) = found {
            gate.learn(&addresses);
        }
    }
}

/// Writes the summaries of refused enrollments once their minute is over,
/// also when no further refusal comes to close it.
async fn summarize_refusals(authority: Arc<Authority>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let a = authority.clone();
        let flushed = tokio::task::spawn_blocking(move || a.flush_refusals()).await;
        if let Ok(Err(e)) = flushed {
            log::warn!("audit of refused enrollments: {}", crate::error_chain(&e));
        }
    }
}

/// Bumps `beat` four times a second, for as long as the runtime runs
/// tasks: the health check sees a wedged runtime by the beat stopping.
async fn heartbeat(beat: Arc<crate::lifecycle::health::Beat>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        beat.beat();
    }
}

/// Accepts connections until `shutdown`, each admitted by `gate` and
/// served on a task of its own, then gives those in flight [`DRAIN`].
async fn accept_loop(
    listener: std::net::TcpListener,
    gate: Arc<Gate>,
    app: Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shutdown: Shutdown,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(ServerError::Listen)?;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        // Never waits for room: a connection that cannot be served is
        // closed at once, so the listen backlog never fills with them
        // and a gateway's connection is always looked at.
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause
                    // rather than spin.
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(admitted) = admit_or_log(&gate, peer) else {
            continue;
        };
        let (acceptor, shutdown, app) = (acceptor.clone(), shutdown.clone(), app.clone());
        connections.spawn(connection(admitted, stream, acceptor, app, peer, shutdown));
    }
    // Requests in flight finish (each connection closes after its
    // current response), within the bound.
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::warn!(
            "{} connection(s) cut at shutdown after {:?}",
            connections.len(),
            DRAIN
        );
    }
    Ok(())
}

/// The [`Gate`]'s admission of a connection from `peer`, or None (the
/// connection is dropped), the refusal logged once a minute at most.
fn admit_or_log(gate: &Arc<Gate>, peer: SocketAddr) -> Option<Admitted> {
    match gate.admit(peer.ip()) {
        Ok(a) => Some(a),
        Err(why) => {
            if gate.log_refusal() {
                log::warn!(
                    "refusing connections from {}: {why} (logged once a minute)",
                    peer.ip()
                );
            }
            None
        }
    }
}

/// One admitted connection, through its TLS handshake (bounded by
/// [`HANDSHAKE_TIMEOUT`]) unless TLS is off; its place in the [`Gate`]
/// goes back when it ends.
async fn connection(
    admitted: Admitted,
    stream: tokio::net::TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    peer: SocketAddr,
    shutdown: Shutdown,
) {
    let _admitted = admitted;
    let result = match acceptor {
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_connection(tls, app, peer, &shutdown).await,
                Ok(Err(e)) => {
                    log::debug!("{peer}: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    log::debug!("{peer}: TLS handshake timed out");
                    return;
                }
            }
        }
        None => serve_connection(stream, app, peer, &shutdown).await,
    };
    if let Err(e) = result {
        log::debug!("{peer}: connection: {e}");
    }
}

/// One HTTP/1.1 connection: a client slow to send its headers is cut, and
/// at shutdown or at the end of its lifetime the connection ends after its
/// current answer.
async fn serve_connection<I>(
    io: I,
    app: Router,
    peer: SocketAddr,
    shutdown: &Shutdown,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(Peer(peer));
            request
                .extensions_mut()
                .insert(crate::authority::web::Client(peer.ip()));
            app.clone().oneshot(request)
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.wait() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

fn error_response(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(ErrorBody { error: e })).into_response()
}

fn ok_json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    (status, axum::Json(value)).into_response()
}

/// Runs `f` on the blocking pool: it may wait on SQLite or InfluxDB.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| {
        Err(ApiError::new(
            ErrorCode::Internal,
            "the request's task failed",
        ))
    })
}

/// The request body, read within [`BODY_TIMEOUT`] and [`MAX_BODY`].
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request body is larger than {MAX_BODY} bytes or broken off"),
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(BODY_TIMEOUT)
            ),
        )),
    }
}

/// An authenticated request's body: the first [`MAX_BODY`] bytes, and
/// whether more came. The rest is read and dropped (up to
/// [`MAX_DROPPED`], within [`BODY_TIMEOUT`]), so that an oversized health
/// report costs the report, not the lease request it came with.
async fn read_body_kept(mut body: Body) -> Result<(Vec<u8>, bool), ApiError> {
    use hyper::body::Body as _;
    let read = async {
        let (mut kept, mut total) = (Vec::new(), 0usize);
        loop {
            let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
            match frame.await {
                None => return Ok((kept, total > MAX_BODY)),
                Some(Err(_)) => return Err("broken off"),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    total = total.saturating_add(data.len());
                    if total > MAX_DROPPED {
                        return Err("too large");
                    }
                    let room = MAX_BODY.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        }
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(kept)) => Ok(kept),
        Ok(Err(why)) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request body is {why} (at most {MAX_DROPPED} bytes are read)"),
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(BODY_TIMEOUT)
            ),
        )),
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        // serde names the field and position, never a value.
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request body is not valid: {e}"),
        )
    })
}

/// The bearer credential: the scheme's name in any case (RFC 9110 11.1),
/// then the credential.
fn bearer(headers: &HeaderMap) -> Result<Secret, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| Secret::new(t.trim()))
        .filter(|t| !t.expose().is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::IdentityUnknown,
                "missing Authorization: Bearer <identity credential>",
            )
        })
}

async fn health() -> Response {
    ok_json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// For a load balancer: 200 while this replica can do its work (the
/// store answers), else 503, so traffic goes to the other replicas. The
/// reason stays in the log; the answer names none of the store's details.
async fn healthz(State(app): State<App>) -> Response {
    // Held across the check: probes arriving meanwhile wait for its result.
    let mut last = app.health.lock().await;
    let ok = match *last {
        Some((at, ok)) if at.elapsed() < HEALTH_FOR => ok,
        _ => {
            let a = app.authority.clone();
            let ok = match tokio::task::spawn_blocking(move || a.store().ping()).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    log::warn!("/healthz: {}", crate::error_chain(&e));
                    false
                }
                Err(_) => false,
            };
            *last = Some((Instant::now(), ok));
            ok
        }
    };
    drop(last);
    let replica = app.authority.replica_id();
    if ok {
        ok_json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "replica": replica}),
        )
    } else {
        ok_json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "unavailable", "replica": replica, "reason": "the store does not answer"}),
        )
    }
}

async fn not_found() -> Response {
    error_response(ApiError::new(ErrorCode::InvalidRequest, "no such route"))
}

/// A 429 that says when to come back.
fn rate_limited(wait: Duration, message: &str) -> Response {
    let mut r = error_response(ApiError::new(ErrorCode::RateLimited, message));
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The one route open to anyone: rate-limited per address and capped in
/// concurrency.
async fn enroll(
    State(app): State<App>,
    Extension(Peer(peer)): Extension<Peer>,
    body: Body,
) -> Response {
    if let Err(wait) = app.gate.enroll_allowed(peer.ip()) {
        return rate_limited(
            wait,
            "too many enrollments from this address; try again later",
        );
    }
    let slot = tokio::time::timeout(ENROLL_QUEUE, app.gate.enrolling.acquire()).await;
    let Ok(Ok(_slot)) = slot else {
        return rate_limited(
            Duration::from_secs(1),
            "too many enrollments at once; try again later",
        );
    };
    let a = app.authority.clone();
    let result = async {
        let body = read_body(body).await?;
        let req: EnrollRequest = parse_body(&body)?;
        blocking(move || a.enroll(&req, Some(peer.ip()))).await
    }
    .await;
    match result {
        Ok(e) => {
            app.gate.established(peer.ip());
            ok_json(StatusCode::CREATED, &e)
        }
        Err(e) => error_response(e),
    }
}

/// The identity of the request's bearer credential, checked before any
/// body is read; its address then counts as a gateway's.
async fn identity(
    app: &App,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<IdentityRow, ApiError> {
    let credential = bearer(headers)?;
    let a = app.authority.clone();
    let identity = blocking(move || a.authenticate(&credential)).await?;
    app.gate.established(peer.ip());
    Ok(identity)
}

/// Runs `f` for the identity the request's bearer credential belongs to,
/// on the blocking pool, and answers `ok` with its result.
async fn as_identity<T: serde::Serialize + Send + 'static>(
    app: App,
    headers: &HeaderMap,
    peer: SocketAddr,
    ok: StatusCode,
    f: impl FnOnce(&Authority, &IdentityRow) -> Result<T, ApiError> + Send + 'static,
) -> Response {
    let result = async {
        let identity = identity(&app, headers, peer).await?;
        let a = app.authority.clone();
        blocking(move || f(&a, &identity)).await
    }
    .await;
    match result {
        Ok(v) => ok_json(ok, &v),
        Err(e) => error_response(e),
    }
}

async fn create_lease(
    State(app): State<App>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let identity = identity(&app, &headers, peer).await?;
        let (body, cut) = read_body_kept(body).await?;
        let (req, health) = crate::wire::health::read_lease_call(&body, cut)?;
        let a = app.authority.clone();
        let address = Some(client_key(peer.ip()));
        blocking(move || {
            let call = CallFrom {
                health: &health,
                address,
            };
            a.create_lease(&identity, &req, &call)
        })
        .await
    }
    .await;
    match result {
        Ok(grant) => ok_json(StatusCode::CREATED, &grant),
        Err(e) => error_response(e),
    }
}

async fn list_leases(
    State(app): State<App>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    as_identity(app, &headers, peer, StatusCode::OK, |a, i| {
        a.leases(Some(&i.id)).map(|leases| LeaseList { leases })
    })
    .await
}

async fn show_lease(
    State(app): State<App>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    as_identity(app, &headers, peer, StatusCode::OK, move |a, i| {
        a.lease(&id, Some(&i.id))
    })
    .await
}

async fn revoke_lease(
    State(app): State<App>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    as_identity(app, &headers, peer, StatusCode::OK, move |a, i| {
        a.revoke_lease(&id, Some(&i.id), "its gateway")
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_never_empty() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            bearer(&h).map(|s| s.expose().to_owned())
        };
        for v in [
            "Bearer lgi_x",
            "bearer lgi_x",
            "BEARER  lgi_x ",
            " Bearer lgi_x",
        ] {
            assert_eq!(with(v).unwrap(), "lgi_x", "{v:?}");
        }
        for v in ["Basic lgi_x", "Bearer", "Bearer ", "Bearerlgi_x", "lgi_x"] {
            assert!(with(v).is_err(), "{v:?}");
        }
    }
}
