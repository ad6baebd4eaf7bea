//! The EST client: one HTTPS connection per operation (HTTP/1.1 over rustls).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use estuary_wire::operation::Operation;
use estuary_wire::{body, media, multipart, pkcs7};

use crate::tls::{client_config, ClientIdentity, ServerTrust};
use crate::EstUrl;

/// Largest response body accepted.
const MAX_RESPONSE: usize = 1024 * 1024;

/// What can go wrong talking to an EST server. Messages are meant for operators.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad local configuration (files, keys, URL).
    #[error("{0}")]
    Config(String),
    /// TCP connect failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The server.
        url: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server's certificate does not name the host or IP of the URL.
    #[error("the server certificate is not valid for {host}: {source}")]
    ServerNameMismatch {
        /// Host or IP from the URL.
        host: String,
        /// rustls's words.
        #[source]
        source: rustls::Error,
    },
    /// The server's certificate does not chain to the trusted certificates.
    #[error("the server certificate is not trusted: {0}")]
    UntrustedServer(#[source] rustls::Error),
    /// Any other TLS failure.
    #[error("TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// The TLS handshake failed for another reason than rustls (the connection broke).
    #[error("TLS: {0}")]
    TlsIo(#[source] std::io::Error),
    /// The server answered with an error status.
    #[error("server answered {status}{}", answer_body(body))]
    Status {
        /// HTTP status.
        status: u16,
        /// The response body (trimmed).
        body: String,
    },
    /// The response is not what RFC 7030 says it should be.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    /// A URL that does not parse.
    #[error("{text:?} is not a URL: {source}")]
    BadUrl {
        /// The URL as written.
        text: String,
        /// The URI parser's error.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// A file could not be read, written or looked at.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file that must be this program's own is not (see [`crate::files::check_own_file`]).
    #[error("{}: {source}", path.display())]
    NotOwnFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::files::FileProblem,
    },
    /// The agent's state directory may be written by someone else.
    #[error("state directory {} {source}: the agent keeps private keys there, and whoever else can \
             write there can plant one; use a directory of its own (--state-dir, [agent] state_dir), \
             or `chown` it and run `chmod 700 {}`", path.display(), path.display())]
    UnsafeStateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::files::FileProblem,
    },
    /// A config file that is not TOML (or not of the expected shape).
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// Encoding or decoding DER (a CSR, an extension, a certificate) failed.
    #[error("{what}: {source}")]
    Der {
        /// What was being encoded or decoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: der::Error,
    },
    /// A CA-side operation (key generation, writing a file atomically) failed.
    #[error(transparent)]
    Ca(#[from] estuary_ca::CaError),
    /// JSON (the agent's `state.json`) could not be written.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A response's certificate that must not be installed.
    #[error("{0}")]
    Unusable(String),
    /// An error with where it happened (a config key, a file).
    #[error("{context}: {source}")]
    Context {
        /// Where: a config key, a file name.
        context: String,
        /// What went wrong there.
        #[source]
        source: Box<ClientError>,
    },
}

impl ClientError {
    /// An OS error on the file at `path`.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A DER error while handling `what`.
    pub(crate) fn der(what: &'static str) -> impl Fn(der::Error) -> ClientError + Copy {
        move |source| ClientError::Der { what, source }
    }

    /// This error, prefixed with where it happened (`context: error`).
    pub fn context(self, context: impl Into<String>) -> Self {
        ClientError::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }
}

/// The result of an enrollment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollOutcome {
    /// 200: the certificates of the response, in wire order (the issued one first).
    Issued(Vec<Vec<u8>>),
    /// 202: the request is pending manual approval; ask again later (RFC 7030 §4.2.3).
    Pending {
        /// The server's `Retry-After`, in seconds.
        retry_after: Option<Duration>,
        /// The id of the waiting request, when the server names it (Estuary sends
        /// `X-Estuary-Approval-Request`): what the operator approves.
        request_id: Option<String>,
    },
}

/// The longest `Retry-After` believed: a server's larger value (up to 2^64 - 1 seconds) would
/// otherwise park a client for decades, or overflow the clock arithmetic.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// Parses a `Retry-After` in seconds (RFC 9110 §10.2.3), capped at [`MAX_RETRY_AFTER`]. An
/// HTTP-date or anything else unreadable gives `None` (the caller's own retry period applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: too many of them is just a very large number.
    let secs = value.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The header in which Estuary names a request waiting for approval.
pub const APPROVAL_REQUEST_HEADER: &str = "x-estuary-approval-request";

/// What to tell the user about a 202 (RFC 7030 §4.2.3): which request waits, how the operator
/// approves it, and `then` (what happens next on this side).
pub fn pending_instructions(
    request_id: Option<&str>,
    retry_after: Option<Duration>,
    then: &str,
) -> String {
    let after = retry_after.map_or(String::new(), |d| {
        format!(" (Retry-After: {}s)", d.as_secs())
    });
    match request_id {
        Some(id) => format!(
            "the server holds the request for manual approval as request {id}{after}: on the server, run `estuary requests approve {id}` (or `estuary requests reject {id} --reason ...`); {then}"
        ),
        None => format!(
            "the server holds the request for manual approval{after}: ask its operator to approve it; {then}"
        ),
    }
}

/// The result of `serverkeygen` (RFC 7030 §4.4.2).
#[derive(Clone)]
pub struct ServerKeyGenResult {
    /// The private key the server generated, PKCS#8 DER (wiped from memory when dropped).
    pub key_pkcs8: Vec<u8>,
    /// The certificates (issued one first).
    pub certificates: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ServerKeyGenResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeyGenResult")
            .field("key_pkcs8", &"<redacted>")
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

impl Drop for ServerKeyGenResult {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key_pkcs8);
    }
}

/// A raw response.
#[derive(Debug)]
struct Response {
    status: StatusCode,
    content_type: Option<String>,
    retry_after: Option<Duration>,
    approval_request: Option<String>,
    body: Bytes,
}

/// Builds an [`EstClient`].
#[derive(Debug, Clone)]
pub struct EstClientBuilder {
    url: EstUrl,
    trust: Option<ServerTrust>,
    identity: Option<ClientIdentity>,
    basic: Option<(String, String)>,
    label: Option<String>,
    timeout: Duration,
}

impl EstClientBuilder {
    /// Trust these certificates (DER) as anchors for the server's certificate.
    pub fn trust_anchors(mut self, anchors: Vec<Vec<u8>>) -> Self {
        self.trust = Some(ServerTrust::Anchors(anchors));
        self
    }

    /// Do not verify the server (trust on first use); the chain it sends is recorded.
    pub fn trust_on_first_use(mut self) -> Self {
        self.trust = Some(ServerTrust::FirstUse(Arc::new(Mutex::new(Vec::new()))));
        self
    }

    /// Present this client certificate chain (leaf first) and PKCS#8 key in the TLS handshake.
    pub fn client_identity(mut self, chain: Vec<Vec<u8>>, key_pkcs8: Vec<u8>) -> Self {
        self.identity = Some(ClientIdentity { chain, key_pkcs8 });
        self
    }

    /// Send HTTP Basic credentials on every request.
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.basic = Some((user.to_string(), password.to_string()));
        self
    }

    /// Use an EST label (`/.well-known/est/<label>/...`).
    pub fn label(mut self, label: Option<String>) -> Self {
        self.label = label.filter(|l| !l.is_empty());
        self
    }

    /// Time for each request (connect, handshake, response).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The client.
    pub fn build(self) -> Result<EstClient, ClientError> {
        let trust = self.trust.ok_or_else(|| {
            ClientError::Config(
                "no trust anchor for the server: give trusted certificates, or trust on first use"
                    .into(),
            )
        })?;
        let config = client_config(&trust, self.identity.as_ref())?;
        Ok(EstClient {
            url: self.url,
            trust,
            config: Arc::new(config),
            basic: self.basic,
            label: self.label,
            timeout: self.timeout,
        })
    }
}

/// An EST client for one server URL.
#[derive(Debug, Clone)]
pub struct EstClient {
    url: EstUrl,
    trust: ServerTrust,
    config: Arc<rustls::ClientConfig>,
    basic: Option<(String, String)>,
    label: Option<String>,
    timeout: Duration,
}

impl EstClient {
    /// Starts building a client for `url`.
    pub fn builder(url: EstUrl) -> EstClientBuilder {
        EstClientBuilder {
            url,
            trust: None,
            identity: None,
            basic: None,
            label: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// The server URL.
    pub fn url(&self) -> &EstUrl {
        &self.url
    }

    /// With trust on first use: the chain the server sent in the last handshake.
    pub fn observed_server_chain(&self) -> Vec<Vec<u8>> {
        match &self.trust {
            ServerTrust::FirstUse(seen) => seen.lock().map(|s| s.clone()).unwrap_or_default(),
            ServerTrust::Anchors(_) => Vec::new(),
        }
    }

    /// `GET /cacerts` (RFC 7030 §4.1): the CA certificates.
    pub async fn cacerts(&self) -> Result<Vec<Vec<u8>>, ClientError> {
        let r = self.request(Operation::CaCerts, None).await?;
        expect_ok(&r)?;
        certs_only(&r)
    }

    /// `GET /cacerts`, also returning the response's `Content-Type` as sent.
    pub async fn cacerts_with_content_type(&self) -> Result<(String, Vec<Vec<u8>>), ClientError> {
        let r = self.request(Operation::CaCerts, None).await?;
        expect_ok(&r)?;
        Ok((r.content_type.clone().unwrap_or_default(), certs_only(&r)?))
    }

    /// `POST /simpleenroll`, also returning the response's `Content-Type` as sent.
    pub async fn simpleenroll_with_content_type(
        &self,
        csr_der: &[u8],
    ) -> Result<(String, EnrollOutcome), ClientError> {
        let r = self
            .request(
                Operation::SimpleEnroll,
                Some(body::encode_base64_lines(csr_der)),
            )
            .await?;
        if r.status == StatusCode::ACCEPTED {
            return Ok((
                String::new(),
                EnrollOutcome::Pending {
                    retry_after: r.retry_after,
                    request_id: r.approval_request.clone(),
                },
            ));
        }
        expect_ok(&r)?;
        Ok((
            r.content_type.clone().unwrap_or_default(),
            EnrollOutcome::Issued(certs_only(&r)?),
        ))
    }

    /// `POST /simpleenroll` (RFC 7030 §4.2.1).
    pub async fn simpleenroll(&self, csr_der: &[u8]) -> Result<EnrollOutcome, ClientError> {
        self.enroll(Operation::SimpleEnroll, csr_der).await
    }

    /// `POST /simplereenroll` (RFC 7030 §4.2.2); the client identity must be the certificate
    /// being renewed.
    pub async fn simplereenroll(&self, csr_der: &[u8]) -> Result<EnrollOutcome, ClientError> {
        self.enroll(Operation::SimpleReenroll, csr_der).await
    }

    async fn enroll(
        &self,
        operation: Operation,
        csr_der: &[u8],
    ) -> Result<EnrollOutcome, ClientError> {
        let r = self
            .request(operation, Some(body::encode_base64_lines(csr_der)))
            .await?;
        if r.status == StatusCode::ACCEPTED {
            return Ok(EnrollOutcome::Pending {
                retry_after: r.retry_after,
                request_id: r.approval_request.clone(),
            });
        }
        expect_ok(&r)?;
        Ok(EnrollOutcome::Issued(certs_only(&r)?))
    }

    /// `GET /csrattrs` (RFC 7030 §4.5): the DER `CsrAttrs`, or `None` when the server has none (204).
    pub async fn csrattrs(&self) -> Result<Option<Vec<u8>>, ClientError> {
        let r = self.request(Operation::CsrAttrs, None).await?;
        if r.status == StatusCode::NO_CONTENT || (r.status == StatusCode::OK && r.body.is_empty()) {
            return Ok(None);
        }
        expect_ok(&r)?;
        // RFC 8951 §3; libest ends this body with a NUL byte.
        body::decode_base64_response(&r.body)
            .map(Some)
            .map_err(|e| ClientError::Protocol(format!("csrattrs body: {e}")))
    }

    /// `POST /serverkeygen` (RFC 7030 §4.4): the server makes the key pair.
    pub async fn serverkeygen(&self, csr_der: &[u8]) -> Result<ServerKeyGenResult, ClientError> {
        let r = self
            .request(
                Operation::ServerKeyGen,
                Some(body::encode_base64_lines(csr_der)),
            )
            .await?;
        expect_ok(&r)?;
        let content_type = r.content_type.clone().unwrap_or_default();
        let parts = multipart::parse(&content_type, &r.body)
            .map_err(|e| ClientError::Protocol(format!("serverkeygen: {e}")))?;
        let mut key = None;
        let mut certificates = None;
        for part in parts {
            let essence = media::essence(&part.content_type);
            if essence == "application/pkcs8" {
                key =
                    Some(body::decode_base64_response(&part.body).map_err(|e| {
                        ClientError::Protocol(format!("serverkeygen key part: {e}"))
                    })?);
            } else if essence == "application/pkcs7-mime" {
                certificates = Some(pkcs7::certificates_from_body(&part.body).map_err(|e| {
                    ClientError::Protocol(format!("serverkeygen certificate part: {e}"))
                })?);
            }
        }
        match (key, certificates) {
            (Some(key_pkcs8), Some(certificates)) => Ok(ServerKeyGenResult {
                key_pkcs8,
                certificates,
            }),
            _ => Err(ClientError::Protocol(
                "serverkeygen response lacks the application/pkcs8 or the application/pkcs7-mime part".into(),
            )),
        }
    }

    async fn request(
        &self,
        operation: Operation,
        body_text: Option<String>,
    ) -> Result<Response, ClientError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.request_inner(operation, body_text))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn request_inner(
        &self,
        operation: Operation,
        body_text: Option<String>,
    ) -> Result<Response, ClientError> {
        let url_text = self.url.to_string();
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|source| ClientError::Connect {
                url: url_text.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(self.url.host.clone())
            .map_err(|e| ClientError::Config(format!("host {:?}: {e}", self.url.host)))?;
        let tls = TlsConnector::from(self.config.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| classify_tls_error(e, &self.url.host))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Protocol(format!("HTTP: {e}")))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let path = self.url.operation_path(self.label.as_deref(), operation);
        let method = if operation.is_get() {
            Method::GET
        } else {
            Method::POST
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.url.authority())
            .header(
                header::USER_AGENT,
                concat!("estuary/", env!("CARGO_PKG_VERSION")),
            );
        if let Some((user, password)) = &self.basic {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request = request.header(header::AUTHORIZATION, format!("Basic {token}"));
        }
        let body_bytes = match body_text {
            Some(text) => {
                request = request
                    .header(header::CONTENT_TYPE, media::PKCS10)
                    .header("Content-Transfer-Encoding", media::BASE64);
                Bytes::from(text)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body_bytes))
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Protocol(format!("HTTP: {e}")))?;
        let status = response.status();
        let header_text = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header_text(header::CONTENT_TYPE.as_str());
        // An id of printable characters only: it is shown to the user as a command argument.
        let approval_request = header_text(APPROVAL_REQUEST_HEADER)
            .map(|v| v.trim().to_string())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        let retry_after = header_text(header::RETRY_AFTER.as_str())
            .as_deref()
            .and_then(parse_retry_after);
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(format!("reading the response: {e}")))?
            .to_bytes();
        Ok(Response {
            status,
            content_type,
            retry_after,
            approval_request,
            body,
        })
    }
}

fn expect_ok(r: &Response) -> Result<(), ClientError> {
    if r.status == StatusCode::OK {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&r.body);
    Err(ClientError::Status {
        status: r.status.as_u16(),
        body: text.trim().chars().take(500).collect(),
    })
}

fn certs_only(r: &Response) -> Result<Vec<Vec<u8>>, ClientError> {
    let content_type = r.content_type.as_deref().unwrap_or("");
    if media::essence(content_type) != "application/pkcs7-mime" {
        return Err(ClientError::Protocol(format!(
            "Content-Type is {content_type:?}, not application/pkcs7-mime (RFC 7030 §4.1.3)"
        )));
    }
    pkcs7::certificates_from_body(&r.body).map_err(|e| ClientError::Protocol(e.to_string()))
}

pub(crate) fn classify_tls_error(e: std::io::Error, host: &str) -> ClientError {
    use rustls::CertificateError as C;
    let Some(inner) = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .cloned()
    else {
        return ClientError::TlsIo(e);
    };
    match inner {
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => ClientError::ServerNameMismatch {
            host: host.to_string(),
            source: inner,
        },
        rustls::Error::InvalidCertificate(
            C::UnknownIssuer | C::BadSignature | C::Expired | C::ExpiredContext { .. },
        ) => ClientError::UntrustedServer(inner),
        other => ClientError::Tls(other),
    }
}

/// The body of an error answer as [`ClientError::Status`] shows it: after a colon, or said to
/// be empty (a 401 from an EST server usually is; the reason is in the server's log).
fn answer_body(body: &str) -> String {
    if body.is_empty() {
        " with an empty body".to_string()
    } else {
        format!(": {body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_capped() {
        assert_eq!(parse_retry_after(" 60 "), Some(Duration::from_secs(60)));
        assert_eq!(
            parse_retry_after("18446744073709551615"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("1000000000"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    #[test]
    fn an_error_answer_names_its_body_or_says_it_is_empty() {
        let empty = ClientError::Status {
            status: 401,
            body: String::new(),
        };
        assert_eq!(empty.to_string(), "server answered 401 with an empty body");
        let said = ClientError::Status {
            status: 403,
            body: "not allowed on this label".into(),
        };
        assert_eq!(
            said.to_string(),
            "server answered 403: not allowed on this label"
        );
    }
}
