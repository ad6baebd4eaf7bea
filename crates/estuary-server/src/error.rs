//! Every error a client can see, and how it becomes an HTTP response. This is the only place
//! where errors are mapped to status codes.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

/// Longest refusal message (see [`EstError::public_message`]).
pub const MAX_MESSAGE_CHARS: usize = 600;

/// The response header that carries the request id of a refusal (also in the log line).
pub const REQUEST_ID: &str = "x-request-id";

/// An EST request that failed. The message is sent to the client as `text/plain`, so it says
/// what was wrong without internal details; `Internal` sends only the request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EstError {
    /// 400: the body or CSR is malformed, or a re-enrollment changes subject/SAN.
    BadRequest(String),
    /// 401: no or wrong credentials (with `WWW-Authenticate: Basic`).
    Unauthorized(String),
    /// 403: authenticated, but not allowed (including profile refusals).
    Forbidden(String),
    /// 404: unknown path or label.
    NotFound(String),
    /// 405: wrong method; the value is the `Allow` header.
    MethodNotAllowed(&'static str),
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 413: the body is larger than the limit.
    PayloadTooLarge(usize),
    /// 415: wrong `Content-Type`.
    UnsupportedMediaType(String),
    /// 429: over a rate limit; the value is the `Retry-After`.
    TooManyRequests(std::time::Duration),
    /// 429 with a reason (e.g. too many requests waiting for approval).
    TooManyRequestsBecause(std::time::Duration, String),
    /// 500: something failed inside; logged with the request id.
    Internal(String),
    /// 501: an EST operation this server does not implement.
    NotImplemented(&'static str),
    /// 409: a concurrent request changed the state first (handled inside; not normally sent).
    Conflict,
    /// 503 with `Retry-After`: the EST server above this registration authority did not answer
    /// in time (or at all); the request may be repeated.
    Unavailable(std::time::Duration, String),
    /// The EST server above this registration authority refused the request: its status and
    /// reason, passed on.
    Upstream(StatusCode, String),
}

impl std::fmt::Display for EstError {
    /// The client's message, and for internal errors the detail that the client is not sent.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EstError::Internal(detail) => write!(f, "internal error: {detail}"),
            other => f.write_str(&other.full_message()),
        }
    }
}

impl std::error::Error for EstError {}

/// "1 second", "5 seconds".
fn seconds(d: std::time::Duration) -> String {
    match d.as_secs().max(1) {
        1 => "1 second".into(),
        n => format!("{n} seconds"),
    }
}

impl EstError {
    /// A 429 that says why.
    pub fn with_detail(self, why: &str) -> Self {
        match self {
            EstError::TooManyRequests(wait) => EstError::TooManyRequestsBecause(wait, why.into()),
            other => other,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            EstError::BadRequest(_) => StatusCode::BAD_REQUEST,
            EstError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            EstError::Forbidden(_) => StatusCode::FORBIDDEN,
            EstError::NotFound(_) => StatusCode::NOT_FOUND,
            EstError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            EstError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            EstError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            EstError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            EstError::TooManyRequests(_) | EstError::TooManyRequestsBecause(..) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            EstError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            EstError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            EstError::Conflict => StatusCode::CONFLICT,
            EstError::Unavailable(..) => StatusCode::SERVICE_UNAVAILABLE,
            EstError::Upstream(status, _) => *status,
        }
    }

    /// The message for the client (and the audit trail and log line), at most
    /// [`MAX_MESSAGE_CHARS`] characters: it may quote what the client sent (a subject), and a
    /// client must not be able to make every refusal cost kilobytes of disk.
    pub fn public_message(&self) -> String {
        let full = self.full_message();
        if full.chars().count() <= MAX_MESSAGE_CHARS {
            full
        } else {
            let mut short: String = full.chars().take(MAX_MESSAGE_CHARS).collect();
            short.push_str("...");
            short
        }
    }

    fn full_message(&self) -> String {
        match self {
            EstError::BadRequest(m)
            | EstError::Unauthorized(m)
            | EstError::Forbidden(m)
            | EstError::NotFound(m)
            | EstError::UnsupportedMediaType(m)
            | EstError::Upstream(_, m) => m.clone(),
            EstError::Unavailable(wait, why) => {
                format!("{why}; try again in {}", seconds(*wait))
            }
            EstError::MethodNotAllowed(allow) => format!("method not allowed; use {allow}"),
            EstError::RequestTimeout => "the request body did not arrive in time".into(),
            EstError::PayloadTooLarge(max) => format!("request body is larger than {max} bytes"),
            EstError::TooManyRequests(wait) => {
                format!("too many requests; try again in {}", seconds(*wait))
            }
            EstError::TooManyRequestsBecause(wait, why) => {
                format!("{why}; try again in {}", seconds(*wait))
            }
            EstError::Internal(_) => "internal error".into(),
            EstError::NotImplemented(op) => format!("{op} is not implemented by this server"),
            EstError::Conflict => {
                "a concurrent request changed this request first; try again".into()
            }
        }
    }

    /// The response, carrying the request id so that a user's report can be found in the log.
    ///
    /// A 401 challenge has an empty body (`Content-Length: 0`): Bouncy Castle's EST client
    /// reads the `WWW-Authenticate` header and closes the response without reading the body,
    /// which fails on any body of more than one byte. The explanation is in the log line.
    pub fn into_response(self, request_id: &str) -> Response<Full<Bytes>> {
        let mut body = self.public_message();
        body.push_str(&format!(" (request id {request_id})\n"));
        let mut builder = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(REQUEST_ID, request_id);
        match &self {
            EstError::Unauthorized(_) => {
                // RFC 7617 §2 challenge; RFC 7030 §3.2.3.
                let mut response = Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header(header::WWW_AUTHENTICATE, "Basic realm=\"estuary\"")
                    .header(REQUEST_ID, request_id)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                crate::header_case::apply(&mut response);
                return response;
            }
            EstError::MethodNotAllowed(allow) => {
                builder = builder.header(header::ALLOW, *allow);
            }
            EstError::TooManyRequests(wait)
            | EstError::TooManyRequestsBecause(wait, _)
            | EstError::Unavailable(wait, _) => {
                builder = builder.header(header::RETRY_AFTER, wait.as_secs().max(1).to_string());
            }
            _ => {}
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"internal error\n"))))
    }
}
