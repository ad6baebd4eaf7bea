//! Plain-HTTP listeners: the admin listener (`/metrics` in Prometheus text format, `/healthz`,
//! `/readyz`) and the CRL listener (`/crl`, for relying parties that fetch CRLs over http).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::ServiceHandle;

/// What a plain-HTTP listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainRole {
    /// `/metrics`, `/healthz`, `/readyz`, `/crl`.
    Admin,
    /// `/crl` only.
    Crl,
}

/// Serves plain HTTP on `listener` until the process ends.
pub async fn serve_plain(listener: TcpListener, handle: ServiceHandle, role: PlainRole) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |request| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(respond(&handle, role, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
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
        (_, crate::est::CRL_PATH) => match shared.crl.current() {
            Some(der) => text(StatusCode::OK, "application/pkix-crl", der),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "CRL not ready\n",
            ),
        },
        (PlainRole::Admin, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        (PlainRole::Admin, "/healthz") => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        (PlainRole::Admin, "/readyz") => {
            let store_ok = tokio::time::timeout(Duration::from_secs(5), shared.store.ping())
                .await
                .is_ok_and(|r| r.is_ok());
            let crl_ok = shared.crl.is_fresh();
            if store_ok && crl_ok {
                text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!(
                        "not ready: store {}, CRL {}\n",
                        if store_ok { "ok" } else { "failing" },
                        if crl_ok {
                            "ok"
                        } else {
                            "missing or past nextUpdate"
                        }
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
