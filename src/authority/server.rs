//! The authority's HTTP(S) front: routes of [`crate::api`] onto
//! [`Authority`], over rustls unless TLS is off.
//!
//! It owns the wire: parsing bodies and bearer credentials, mapping each
//! [`ApiError`] to its status, and the accept loop with its bounded
//! shutdown. Every call into the authority runs on the blocking pool,
//! because it may wait on SQLite or InfluxDB. It decides nothing itself and
//! never logs a request body or header (they hold secrets).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;

use crate::api::{ApiError, EnrollRequest, ErrorBody, ErrorCode, LeaseList, LeaseRequest};
use crate::authority::service::Authority;
use crate::authority::store::IdentityRow;
use crate::secret::Secret;
use crate::shutdown::Shutdown;

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get once shutdown starts.
pub const DRAIN: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;
/// Request bodies are small JSON objects.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen: {0}")]
    Listen(#[source] std::io::Error),
}

pub fn router(authority: Arc<Authority>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/enroll", post(enroll))
        .route("/v1/leases", post(create_lease).get(list_leases))
        .route("/v1/leases/{id}", get(show_lease).delete(revoke_lease))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(authority)
}

/// Serves until `shutdown`, then gives requests in flight [`DRAIN`].
/// `beat` is bumped four times a second by a task on the server's runtime: it
/// stops if the runtime is wedged.
pub fn serve(
    authority: Arc<Authority>,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: Shutdown,
    beat: Arc<crate::agent::health::Beat>,
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
    let app = router(authority);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            beat.beat();
        }
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(ServerError::Listen)?;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let slot = tokio::select! {
                _ = shutdown.wait() => break,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            };
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
            let service = TowerToHyperService::new(app.clone());
            let (acceptor, shutdown) = (acceptor.clone(), shutdown.clone());
            connections.spawn(async move {
                let _slot = slot;
                let result = match acceptor {
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => serve_connection(tls, service, &shutdown).await,
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
                    None => serve_connection(stream, service, &shutdown).await,
                };
                if let Err(e) = result {
                    log::debug!("{peer}: connection: {e}");
                }
            });
        }
        // Requests in flight finish (each connection closes after its
        // current response), within the bound.
        let drained = tokio::time::timeout(DRAIN, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            log::warn!("{} connection(s) cut at shutdown after {:?}", connections.len(), DRAIN);
        }
        Ok::<(), ServerError>(())
    })?;
    runtime.shutdown_timeout(DRAIN);
    Ok(())
}

/// One HTTP/1.1 connection: a client slow to send its headers is cut, and
/// at shutdown the connection ends after its current answer.
async fn serve_connection<I>(
    io: I,
    service: TowerToHyperService<Router>,
    shutdown: &Shutdown,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        // serde names the field and position, never a value.
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request body is not valid: {e}"),
        )
    })
}

fn bearer(headers: &HeaderMap) -> Result<Secret, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Secret::new(t.trim()))
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

async fn not_found() -> Response {
    error_response(ApiError::new(ErrorCode::InvalidRequest, "no such route"))
}

async fn enroll(State(a): State<Arc<Authority>>, body: Bytes) -> Response {
    let result = async {
        let req: EnrollRequest = parse_body(&body)?;
        blocking(move || a.enroll(&req)).await
    }
    .await;
    match result {
        Ok(e) => ok_json(StatusCode::CREATED, &e),
        Err(e) => error_response(e),
    }
}

/// Runs `f` for the identity the request's bearer credential belongs to,
/// on the blocking pool, and answers `ok` with its result.
async fn as_identity<T: serde::Serialize + Send + 'static>(
    a: Arc<Authority>,
    headers: &HeaderMap,
    ok: StatusCode,
    f: impl FnOnce(&Authority, &IdentityRow) -> Result<T, ApiError> + Send + 'static,
) -> Response {
    let result = async {
        let credential = bearer(headers)?;
        blocking(move || {
            let identity = a.authenticate(&credential)?;
            f(&a, &identity)
        })
        .await
    }
    .await;
    match result {
        Ok(v) => ok_json(ok, &v),
        Err(e) => error_response(e),
    }
}

async fn create_lease(
    State(a): State<Arc<Authority>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: LeaseRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LeaseRequest::default()
    } else {
        match parse_body(&body) {
            Ok(r) => r,
            Err(e) => return error_response(e),
        }
    };
    as_identity(a, &headers, StatusCode::CREATED, move |a, i| {
        a.create_lease(i, &req)
    })
    .await
}

async fn list_leases(State(a): State<Arc<Authority>>, headers: HeaderMap) -> Response {
    as_identity(a, &headers, StatusCode::OK, |a, i| {
        a.leases(Some(&i.id)).map(|leases| LeaseList { leases })
    })
    .await
}

async fn show_lease(
    State(a): State<Arc<Authority>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    as_identity(a, &headers, StatusCode::OK, move |a, i| {
        a.lease(&id, Some(&i.id))
    })
    .await
}

async fn revoke_lease(
    State(a): State<Arc<Authority>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    as_identity(a, &headers, StatusCode::OK, move |a, i| {
        a.revoke_lease(&id, Some(&i.id))
    })
    .await
}
