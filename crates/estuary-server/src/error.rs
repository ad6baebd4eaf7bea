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

/// Why the server could not be prepared, reloaded or kept up to date: its data directory, CA,
/// store, TLS identity, configuration, bootstrap CAs and CRLs, upstream. Unlike [`EstError`],
/// never sent to a client.
///
/// `Display` gives the whole message with the underlying error's text (`bootstrap_ca: FILE:
/// what is wrong`); the underlying error is also kept as `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The CA, its data directory or the server's TLS identity.
    #[error(transparent)]
    Ca(#[from] estuary_ca::CaError),
    /// The store.
    #[error(transparent)]
    Store(#[from] estuary_store::StoreError),
    /// The configuration.
    #[error(transparent)]
    Config(Box<crate::config::ConfigError>),
    /// Users, trust anchors.
    #[error(transparent)]
    Auth(#[from] estuary_auth::AuthError),
    /// The upstream (registration authority).
    #[error(transparent)]
    Upstream(Box<estuary_client::upstream::UpstreamError>),
    /// Setting up the authority failed in a way an EST request could also meet (a
    /// registration authority's first contact with its upstream).
    #[error(transparent)]
    Est(#[from] EstError),
    /// The store holds another CA key's certificates (`bind_store_to_ca`).
    #[error("the certificate store {database} belongs to another CA key ({recorded}); this server's CA key has id {ours}. Every server on one store must use the same CA: give this data directory the ca-cert.pem and ca-key.pem of the store's CA (from your backup or a node of this store), or import the same HSM key with `estuary ca import` (docs/cluster.md).{created} If this CA replaces the store's on purpose (devices must then be given its root, and enroll again), start once with ESTUARY_ACCEPT_NEW_CA_KEY={ours}")]
    StoreOfAnotherCa {
        /// The store (password hidden).
        database: String,
        /// The CA key id the store recorded, or why the store is not this CA's.
        recorded: String,
        /// This server's CA key id.
        ours: String,
        /// What this start created, if it created the CA (a sentence, or empty).
        created: String,
    },
    /// A `bootstrap_ca` file could not be read.
    #[error("bootstrap_ca: {0}")]
    BootstrapCa(#[source] estuary_ca::CaError),
    /// A `bootstrap_crl` file could not be read.
    #[error("bootstrap_crl.{name}: {}: {source}", path.display())]
    BootstrapCrlRead {
        /// The bootstrap CA's name.
        name: String,
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A `bootstrap_crl` URL could not be fetched.
    #[error("bootstrap_crl.{name}: {url}: {source}")]
    BootstrapCrlFetch {
        /// The bootstrap CA's name.
        name: String,
        /// The URL.
        url: String,
        /// What went wrong.
        #[source]
        source: crate::bootstrap_crl::CrlFetchError,
    },
    /// A bootstrap CRL is not its CA's CRL, or does not parse.
    #[error("bootstrap_crl.{name}: {source}")]
    BootstrapCrl {
        /// The bootstrap CA's name.
        name: String,
        /// What is wrong with it.
        #[source]
        source: estuary_auth::AuthError,
    },
    /// The authority has no CA certificate for client certificates to chain to.
    #[error("CA chain is empty")]
    EmptyCaChain,
    /// `crl.url` cannot go into a certificate.
    #[error("crl.url: {0}")]
    CrlUrl(#[source] estuary_ca::CaError),
    /// The `/cacerts` body could not be encoded.
    #[error("encoding /cacerts: {0}")]
    CaCertsEncoding(#[source] estuary_wire::WireError),
    /// The `/csrattrs` body could not be encoded.
    #[error("encoding /csrattrs: {0}")]
    CsrAttrsEncoding(#[source] estuary_wire::WireError),
    /// The system's random number generator failed.
    #[error("no randomness")]
    NoRandomness,
    /// The TLS server key or certificate, or the TLS versions, are not usable by rustls.
    #[error("{what}: {source}")]
    Tls {
        /// What was being set up (`TLS server key`, ...).
        what: &'static str,
        /// rustls's error.
        #[source]
        source: rustls::Error,
    },
    /// A listen address could not be bound.
    #[error(
        "cannot listen on {address}: {source}; free the port, or choose another \
         (listen = [\"ADDR:PORT\"] in the config, or --listen ADDR:PORT)"
    )]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// No listen address at all could be bound.
    #[error("no listen address could be bound")]
    NoListener,
    /// A registration authority without `[upstream]`.
    #[error("no [upstream] in the settings")]
    NoUpstream,
    /// A registration authority's data directory started without its upstream.
    #[error(
        "{} belongs to a registration authority (it holds ra-cert.pem and no CA key): give it its \
         upstream with [upstream] in the config file or --upstream URL",
        .0.display()
    )]
    RegistrationAuthorityDataDir(std::path::PathBuf),
    /// `[upstream] url` is not an EST URL.
    #[error("[upstream] url {url:?}: {source}")]
    UpstreamUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        #[source]
        source: Box<estuary_client::ClientError>,
    },
    /// `[upstream] ca` is not set.
    #[error(
        "[upstream] ca (--upstream-ca) is required: the root certificate that the upstream's TLS certificate chains to"
    )]
    UpstreamCaMissing,
    /// `[upstream] ca` could not be read.
    #[error(
        "[upstream] ca: cannot read {} (the upstream's root certificate, e.g. saved with `estuary client cacerts`): {source}",
        path.display()
    )]
    UpstreamCaRead {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// `[upstream] ca` holds no usable trust anchor.
    #[error("[upstream] ca {}: {source}", path.display())]
    UpstreamCa {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<estuary_client::upstream::UpstreamError>,
    },
    /// `[upstream] cert` could not be read.
    #[error("[upstream] cert: {0}")]
    UpstreamCert(#[source] estuary_ca::CaError),
    /// `[upstream] key` could not be read.
    #[error("[upstream] key: cannot read {}: {source}", path.display())]
    UpstreamKeyRead {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// `[upstream] key` is not PEM.
    #[error("[upstream] key {}: {source}", path.display())]
    UpstreamKey {
        /// The file.
        path: std::path::PathBuf,
        /// The PEM parser's error.
        #[source]
        source: pem::PemError,
    },
    /// A `<!-- keys:SECTION -->` marker of the configuration reference without ` -->`.
    #[error("unterminated <!-- keys: marker")]
    UnterminatedKeysMarker,
    /// A `<!-- keys:SECTION -->` block names a section that has no keys.
    #[error("keys:{0}: no such section")]
    UnknownKeysSection(String),
    /// A `<!-- keys:SECTION -->` block that is not closed.
    #[error("keys:{0}: no <!-- /keys --> after it")]
    UnclosedKeysBlock(String),
}

impl From<crate::config::ConfigError> for ServerError {
    fn from(e: crate::config::ConfigError) -> Self {
        ServerError::Config(Box::new(e))
    }
}

impl From<estuary_client::upstream::UpstreamError> for ServerError {
    fn from(e: estuary_client::upstream::UpstreamError) -> Self {
        ServerError::Upstream(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// The messages are those of the strings they replace, and the cause stays reachable.
    #[test]
    fn server_errors_keep_their_message_and_source() {
        let listen = ServerError::Listen {
            address: "127.0.0.1:8085".parse().unwrap(),
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use"),
        };
        assert_eq!(
            listen.to_string(),
            "cannot listen on 127.0.0.1:8085: address in use; free the port, or choose another \
             (listen = [\"ADDR:PORT\"] in the config, or --listen ADDR:PORT)"
        );
        let io = listen
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);

        let fetch = ServerError::BootstrapCrlFetch {
            name: "mfg".into(),
            url: "http://crl.test/mfg.crl".into(),
            source: crate::bootstrap_crl::CrlFetchError::Status("HTTP/1.1 404 Not Found".into()),
        };
        assert_eq!(
            fetch.to_string(),
            "bootstrap_crl.mfg: http://crl.test/mfg.crl: the server answered \"HTTP/1.1 404 Not Found\""
        );
        assert!(fetch.source().is_some());
        // Wrapped errors say nothing of their own: no cause printed twice.
        let store = ServerError::from(estuary_store::StoreError::Missing("/x/estuary.db".into()));
        assert_eq!(
            store.to_string(),
            estuary_store::StoreError::Missing("/x/estuary.db".into()).to_string()
        );
    }
}
