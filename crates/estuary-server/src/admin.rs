//! Plain-HTTP listeners: the admin listener (`/metrics` in Prometheus text format, `/healthz`,
//! `/readyz`) and the CRL listener (`/crl`, for relying parties that fetch CRLs over http).
//!
//! Every plain listener has a connection cap, a header (and keep-alive idle) timeout, a cap on
//! a connection's life and graceful shutdown, like the EST listener ([`crate::serve`]): without
//! them, idle TCP connections to the CRL port used up the process's file descriptors and EST
//! enrollments timed out.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::ServiceHandle;

/// Most connections one plain-HTTP listener holds at once (or `limits.max_connections` if
/// that is smaller). Its answers are small and quick (a CRL, a metrics page), so a modest cap
/// serves any number of relying parties and Prometheus scrapers, and keeps the file
/// descriptors for EST.
pub const PLAIN_MAX_CONNECTIONS: usize = 256;
/// Longest a plain-HTTP client may take to send its headers, or stay idle between keep-alive
/// requests (or `limits.header_timeout` if that is shorter).
pub const PLAIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one plain-HTTP connection (or `limits.max_connection_age` if shorter).
pub const PLAIN_MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How long in-flight plain requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The connection cap of one plain-HTTP listener under `limits`.
pub fn plain_max_connections(limits: &Limits) -> usize {
    PLAIN_MAX_CONNECTIONS.min(limits.max_connections)
}

/// What a plain-HTTP listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainRole {
    /// `/metrics`, `/healthz`, `/readyz`, `/crl`.
    Admin,
    /// `/crl` only.
    Crl,
}

/// Serves plain HTTP on `listener` until `shutdown` completes, then lets requests in flight
/// finish (for a few seconds at most).
pub async fn serve_plain(
    listener: TcpListener,
    handle: ServiceHandle,
    role: PlainRole,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let connections = Arc::new(Semaphore::new(plain_max_connections(limits)));
    let header_timeout = PLAIN_HEADER_TIMEOUT.min(limits.header_timeout);
    let max_age = PLAIN_MAX_CONNECTION_AGE.min(limits.max_connection_age);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, ?role, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over the cap: close at once (the descriptor is released now, not when the client
        // gives up).
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, ?role, "plain-HTTP connection limit reached; closing new connection");
            drop(tcp);
            continue;
        };
        let handle = handle.clone();
        let opened = tokio::time::Instant::now();
        let svc = service_fn(move |request| {
            let handle = handle.clone();
            async move {
                let mut response = respond(&handle, role, request).await;
                crate::serve::close_after_if_aged(&mut response, opened, max_age);
                Ok::<_, Infallible>(response)
            }
        });
        // header_read_timeout also runs while a keep-alive connection is idle.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(16 * 1024)
            .serve_connection(TokioIo::new(tcp), svc);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            // A client that stops reading (so no header timeout runs) cannot hold a slot: past
            // max_age the next answer closes the connection; this cap, one header timeout
            // later, only cuts a client that is not taking its answers.
            if tokio::time::timeout(max_age + header_timeout, connection)
                .await
                .is_err()
            {
                tracing::debug!(%peer, ?role, "plain-HTTP connection closed at its age limit");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!(?role, "plain-HTTP connections still open after the grace period"),
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

async fn respond(
    handle: &ServiceHandle,
    role: PlainRole,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n",
        );
    }
    let service = handle.load_full();
    let shared = service.shared();
    match (role, request.uri().path()) {
        (_, crate::est::CRL_PATH) => match shared.authority.crl() {
            Some(der) => text(StatusCode::OK, "application/pkix-crl", der),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "CRL not ready\n",
            ),
        },
        (PlainRole::Admin, "/metrics") => {
            let mut body = shared.metrics.render();
            service
                .authenticators()
                .render_bootstrap_crl_metrics(&mut body);
            shared.authority.render_metrics(&mut body);
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            )
        }
        (PlainRole::Admin, "/healthz") => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        (PlainRole::Admin, "/readyz") => {
            let store_ok = tokio::time::timeout(Duration::from_secs(5), shared.store.ping())
                .await
                .is_ok_and(|r| r.is_ok());
            let crl_ok = shared.authority.crl_is_fresh();
            let authority_problems = shared.authority.readiness_problems();
            if store_ok && crl_ok && authority_problems.is_empty() {
                // Ready for everyone else; say whose certificates are refused now.
                let problems = service.authenticators().bootstrap_crl_problems();
                let body = if problems.is_empty() {
                    "ready\n".to_string()
                } else {
                    format!(
                        "ready; {}: those CAs' certificates are refused\n",
                        problems.join("; ")
                    )
                };
                text(StatusCode::OK, "text/plain; charset=utf-8", body)
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!(
                        "not ready: store {}, CRL {}{}\n",
                        if store_ok { "ok" } else { "failing" },
                        if crl_ok {
                            "ok"
                        } else {
                            "missing or past nextUpdate"
                        },
                        authority_problems
                            .iter()
                            .map(|p| format!(", {p}"))
                            .collect::<String>()
                    ),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    }
}
