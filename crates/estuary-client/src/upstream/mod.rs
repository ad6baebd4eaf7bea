//! The upstream side of a registration authority (RA): an Estuary server started with
//! `--upstream` has no CA of its own and forwards enrollments to the EST server above it.
//!
//! - [`UpstreamClient`]: `cacerts`, forwarded enrollments ([`UpstreamClient::forward`], always
//!   answering a [`ForwardOutcome`] within the deadline), the upstream CRL
//!   ([`UpstreamClient::fetch_crl`]). HTTP/1.1 connections are kept alive and reused per
//!   client identity; the identity (the RA certificate) can be swapped at run time.
//! - [`UpstreamCrl`] and [`UpstreamCrlCache`]: the upstream CA's CRL, verified against the
//!   issuing CA, never replaced by an older one.
//! - [`RaIdentity`]: the RA's own TLS server certificate and RA client certificate in its data
//!   directory, enrolled and renewed through the upstream.

mod crl;
mod ra;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use estuary_wire::{body, media, pkcs7};

use crate::http::{classify_tls_error, parse_retry_after, APPROVAL_REQUEST_HEADER};
use crate::tls::{client_config, ClientIdentity, ServerTrust};
use crate::{ClientError, EstUrl};

pub use crl::{UpstreamCrl, UpstreamCrlCache};
pub use ra::{
    Provisioned, ProvisionedCert, RaIdentity, RA_CERT_FILE, RA_KEY_FILE, RA_SERVER_CERT_FILE,
    RA_SERVER_KEY_FILE,
};

/// Largest enrollment or `cacerts` response body accepted from the upstream.
pub const MAX_ENROLL_RESPONSE: usize = 1024 * 1024;

/// Largest CRL accepted from the upstream.
pub const MAX_CRL_RESPONSE: usize = 10 * 1024 * 1024;

/// The header naming the original requester of a forwarded request. The upstream records it
/// in its audit trail; it is informational and never used for authorization.
pub const ON_BEHALF_OF_HEADER: &str = "x-estuary-on-behalf-of";
/// The header in which a registration authority names the serial (hex) of the certificate a
/// forwarded renewal renews; like [`ON_BEHALF_OF_HEADER`], read only from an RA.
pub const RENEWING_SERIAL_HEADER: &str = "x-estuary-renewing-serial";

/// The path at which an Estuary server serves its DER CRL (on its TLS port).
pub const UPSTREAM_CRL_PATH: &str = "/crl";

/// Longest on-behalf-of value sent (after escaping).
const MAX_ON_BEHALF_OF: usize = 512;

/// Longest refusal message passed on from the upstream.
const MAX_MESSAGE_CHARS: usize = 600;

/// How long an idle kept-alive connection is reused; older ones are closed. Below Estuary's
/// default idle timeout (`header_timeout`, 30 s): a request on a connection the server is
/// closing at that moment has to be sent again.
const MAX_IDLE: Duration = Duration::from_secs(20);

/// Most idle connections kept per identity.
const MAX_IDLE_CONNECTIONS: usize = 64;

/// What can go wrong on the upstream side (not the forwarded outcomes: see [`ForwardOutcome`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Bad local configuration (trust anchors, client certificate, URL, label).
    #[error("upstream configuration: {0}")]
    Config(String),
    /// Connecting, the TLS handshake or the HTTP exchange failed, or no answer in time.
    #[error("upstream {url}: {source}")]
    Transport {
        /// The upstream.
        url: String,
        /// What failed.
        #[source]
        source: ClientError,
    },
    /// The upstream answered with an error status.
    #[error("upstream {url} answered {status}: {message}")]
    Status {
        /// The upstream.
        url: String,
        /// HTTP status.
        status: u16,
        /// The upstream's reason (without its request id), or the status text.
        message: String,
        /// The upstream's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The upstream's answer is not what RFC 7030 (or Estuary's `/crl`) says it should be.
    #[error("upstream {url}: unexpected response: {detail}")]
    Protocol {
        /// The upstream.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// The upstream's CRL is unusable (unreadable, or not signed by the upstream CA).
    #[error("upstream CRL: {0}")]
    Crl(String),
    /// An enrollment of the RA's own certificates waits for manual approval at the upstream
    /// (202): ask again after `retry_after`.
    #[error("{}", pending_message(.what, .request_id.as_deref(), *.retry_after))]
    Pending {
        /// Which certificate ("the RA certificate", "the RA server certificate").
        what: String,
        /// When to ask again.
        retry_after: Duration,
        /// The upstream's id of the waiting request (what its operator approves).
        request_id: Option<String>,
    },
    /// The upstream refused to issue one of the RA's own certificates (4xx).
    #[error("the upstream refused {what}: {status} {message}")]
    Refused {
        /// Which certificate.
        what: String,
        /// HTTP status (401: the RA's configured credential is not accepted).
        status: u16,
        /// The upstream's reason.
        message: String,
    },
    /// The upstream issued a certificate that cannot be used.
    #[error("the upstream issued an unusable {what}: {detail}")]
    BadIssued {
        /// Which certificate.
        what: String,
        /// Why it is unusable.
        detail: String,
    },
    /// Reading or writing the RA's files, or building a CSR.
    #[error("{context}: {source}")]
    Local {
        /// What was being done.
        context: String,
        /// The failure.
        #[source]
        source: ClientError,
    },
    /// Generating a key.
    #[error("generating a key: {0}")]
    Key(#[source] estuary_ca::CaError),
}

fn pending_message(what: &str, request_id: Option<&str>, retry_after: Duration) -> String {
    crate::pending_instructions(
        request_id,
        Some(retry_after),
        &format!("{what} is enrolled when it is approved; ask again after {retry_after:?}"),
    )
}

/// A forwarded EST operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// `POST /simpleenroll`.
    SimpleEnroll,
    /// `POST /simplereenroll` (the upstream authenticates the RA, not the device: it sees a
    /// re-enrollment by the RA on the device's behalf).
    SimpleReenroll,
}

impl Forwarded {
    /// The EST operation.
    pub fn operation(self) -> estuary_wire::operation::Operation {
        match self {
            Forwarded::SimpleEnroll => estuary_wire::operation::Operation::SimpleEnroll,
            Forwarded::SimpleReenroll => estuary_wire::operation::Operation::SimpleReenroll,
        }
    }

    /// The operation's path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Forwarded::SimpleEnroll => "simpleenroll",
            Forwarded::SimpleReenroll => "simplereenroll",
        }
    }
}

/// What the upstream made of a forwarded enrollment. Never an error: every failure is one of
/// these, within the client's deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// 200: the certificates of the certs-only PKCS#7 response, in wire order (leaf first).
    Issued {
        /// Leaf first.
        chain: Vec<Vec<u8>>,
    },
    /// 202: the upstream holds the request for manual approval.
    Pending {
        /// The upstream's `Retry-After` (or a default).
        retry_after: Duration,
        /// The upstream's id of the waiting request (what its operator approves), if it said.
        request_id: Option<String>,
    },
    /// 4xx (other than 429): the upstream refused the request. A 401 means the upstream did
    /// not accept the RA's own credential: it is not the device's fault, and should not be
    /// passed to the device as a 401.
    Refused {
        /// The upstream's status.
        status: u16,
        /// The upstream's reason (without its request id), or the status text.
        message: String,
    },
    /// The upstream could not be asked or could not answer: connection refused, TLS failure,
    /// no answer within the deadline, 5xx, 429, or an answer that is not valid EST.
    Unavailable {
        /// The upstream's `Retry-After` when it sent one, else the client's default.
        retry_after: Duration,
        /// What happened, for the log and the requester.
        reason: String,
    },
}

/// How to reach the upstream: [`UpstreamConfig::new`], then set the fields wanted.
#[derive(Clone)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// The upstream's EST URL (`https://parent:8085/.well-known/est`).
    pub url: EstUrl,
    /// Trust anchors for the upstream's TLS certificate (DER), e.g. from
    /// [`parse_trust_anchors_pem`] of the `--upstream-ca` file.
    pub trust_anchors: Vec<Vec<u8>>,
    /// HTTP Basic credentials sent on every request.
    pub basic: Option<(String, String)>,
    /// The configured TLS client certificate chain (leaf first) and PKCS#8 DER key, e.g. a
    /// bootstrap certificate: used to enroll the RA certificate.
    pub identity: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    /// Deadline of each request: connect, TLS handshake, request and the whole response.
    pub timeout: Duration,
    /// The `retry_after` of [`ForwardOutcome::Unavailable`] when the upstream sent none.
    pub default_retry: Duration,
    /// The `retry_after` of [`ForwardOutcome::Pending`] when the upstream sent none.
    pub default_pending_retry: Duration,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("url", &self.url.to_string())
            .field("trust_anchors", &self.trust_anchors.len())
            .field("basic_user", &self.basic.as_ref().map(|(u, _)| u))
            .field("identity", &self.identity.as_ref().map(|(c, _)| c.len()))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamConfig {
    /// A configuration with defaults: 30 s deadline, retry after 30 s (unavailable) or 60 s
    /// (pending) when the upstream does not say.
    pub fn new(url: EstUrl, trust_anchors: Vec<Vec<u8>>) -> Self {
        UpstreamConfig {
            url,
            trust_anchors,
            basic: None,
            identity: None,
            timeout: Duration::from_secs(30),
            default_retry: Duration::from_secs(30),
            default_pending_retry: Duration::from_secs(60),
        }
    }
}

/// Reads the `CERTIFICATE` blocks of PEM text (the contents of the `--upstream-ca` file).
pub fn parse_trust_anchors_pem(text: &[u8]) -> Result<Vec<Vec<u8>>, UpstreamError> {
    let text = std::str::from_utf8(text)
        .map_err(|_| UpstreamError::Config("upstream CA file: not PEM text".into()))?;
    let blocks = pem::parse_many(text)
        .map_err(|e| UpstreamError::Config(format!("upstream CA file: {e}")))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(UpstreamError::Config(
            "upstream CA file: no CERTIFICATE in it".into(),
        ));
    }
    Ok(certs)
}

/// A kept-alive connection.
struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// A TLS configuration (one client identity) and its idle connections.
struct Channel {
    config: Arc<rustls::ClientConfig>,
    /// The client certificate presented, if any.
    leaf: Option<Vec<u8>>,
    idle: Mutex<Vec<Idle>>,
}

impl Channel {
    fn new(trust: &ServerTrust, identity: Option<&ClientIdentity>) -> Result<Self, UpstreamError> {
        let config = client_config(trust, identity).map_err(|e| match e {
            ClientError::Config(m) => UpstreamError::Config(m),
            other => UpstreamError::Config(other.to_string()),
        })?;
        Ok(Channel {
            config: Arc::new(config),
            leaf: identity.and_then(|i| i.chain.first().cloned()),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// An idle connection that is still open and young enough, if any.
    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < MAX_IDLE {
                return Some(c.sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() < MAX_IDLE);
            if idle.len() < MAX_IDLE_CONNECTIONS {
                idle.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }
}

/// A response read to the end (bounded).
#[derive(Debug)]
struct RawResponse {
    status: StatusCode,
    content_type: Option<String>,
    retry_after: Option<Duration>,
    approval_request: Option<String>,
    body: Bytes,
}

/// A request, buildable more than once (a kept-alive connection may have been closed).
struct Outgoing<'a> {
    method: Method,
    path: String,
    body: Option<Bytes>,
    on_behalf_of: Option<&'a HeaderValue>,
    renewing: Option<&'a HeaderValue>,
}

/// The EST client of a registration authority, towards its upstream EST server. Cheap to
/// share (`Arc`); every method may run concurrently.
pub struct UpstreamClient {
    url: EstUrl,
    url_text: String,
    trust: ServerTrust,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    default_retry: Duration,
    default_pending_retry: Duration,
    /// The configured identity (e.g. a bootstrap certificate), or none.
    configured: Arc<Channel>,
    /// The identity forwarded requests use: the configured one, or the RA certificate.
    current: ArcSwap<Channel>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("url", &self.url_text)
            .field("basic", &self.authorization.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// A client for `config`. Fails on unusable trust anchors or client credentials.
    pub fn new(config: UpstreamConfig) -> Result<Self, UpstreamError> {
        if config.trust_anchors.is_empty() {
            return Err(UpstreamError::Config(
                "no trust anchor for the upstream's certificate".into(),
            ));
        }
        let trust = ServerTrust::Anchors(config.trust_anchors);
        let identity = config
            .identity
            .map(|(chain, key_pkcs8)| ClientIdentity { chain, key_pkcs8 });
        let configured = Arc::new(Channel::new(&trust, identity.as_ref())?);
        let authorization = match &config.basic {
            Some((user, password)) => {
                let token = zeroize::Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
                );
                let mut value = HeaderValue::from_str(&format!("Basic {}", token.as_str()))
                    .map_err(|_| {
                        UpstreamError::Config("the upstream user name is not valid".into())
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(UpstreamClient {
            url_text: config.url.to_string(),
            url: config.url,
            trust,
            authorization,
            timeout: config.timeout,
            default_retry: config.default_retry,
            default_pending_retry: config.default_pending_retry,
            current: ArcSwap::new(configured.clone()),
            configured,
        })
    }

    /// The upstream URL.
    pub fn url(&self) -> &EstUrl {
        &self.url
    }

    /// The per-request deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Uses this client certificate chain (leaf first) and PKCS#8 DER key for every later
    /// request (the RA certificate, after it was enrolled or renewed). Requests under way
    /// finish with the identity they started with; idle connections of the old identity are
    /// closed.
    pub fn set_identity(
        &self,
        chain: Vec<Vec<u8>>,
        key_pkcs8: Vec<u8>,
    ) -> Result<(), UpstreamError> {
        let identity = ClientIdentity { chain, key_pkcs8 };
        let channel = Arc::new(self.channel_for(Some(&identity))?);
        self.current.store(channel);
        Ok(())
    }

    /// Goes back to the configured identity (e.g. when the RA certificate has expired).
    pub fn reset_identity(&self) {
        self.current.store(self.configured.clone());
    }

    /// Whether requests present a TLS client certificate now.
    pub fn has_client_certificate(&self) -> bool {
        self.current.load().leaf.is_some()
    }

    /// The client certificate requests present now (DER), if any.
    pub fn current_leaf(&self) -> Option<Vec<u8>> {
        self.current.load().leaf.clone()
    }

    fn channel_for(&self, identity: Option<&ClientIdentity>) -> Result<Channel, UpstreamError> {
        Channel::new(&self.trust, identity)
    }

    /// A channel of its own for this identity (not kept).
    fn channel_with(
        &self,
        chain: Vec<Vec<u8>>,
        key_pkcs8: Vec<u8>,
    ) -> Result<Arc<Channel>, UpstreamError> {
        let identity = ClientIdentity { chain, key_pkcs8 };
        Ok(Arc::new(self.channel_for(Some(&identity))?))
    }

    fn configured_channel(&self) -> Arc<Channel> {
        self.configured.clone()
    }

    fn current_channel(&self) -> Arc<Channel> {
        self.current.load_full()
    }

    /// `GET /cacerts` of the upstream: its CA certificates (DER), in wire order.
    pub async fn cacerts(&self) -> Result<Vec<Vec<u8>>, UpstreamError> {
        let channel = self.current.load_full();
        let path = self
            .url
            .operation_path(None, estuary_wire::operation::Operation::CaCerts);
        let r = self
            .exchange(
                &channel,
                Outgoing {
                    method: Method::GET,
                    path,
                    body: None,
                    on_behalf_of: None,
                    renewing: None,
                },
                MAX_ENROLL_RESPONSE,
            )
            .await?;
        if r.status != StatusCode::OK {
            return Err(self.status_error(&r));
        }
        certs_only(&r).map_err(|detail| self.protocol(detail))
    }

    /// Forwards an enrollment on behalf of `on_behalf_of` (the original requester's identity,
    /// sent as [`ON_BEHALF_OF_HEADER`]) under the upstream label `label`. Answers within the
    /// deadline, whatever the upstream does.
    pub async fn forward(
        &self,
        label: Option<&str>,
        operation: Forwarded,
        csr_der: &[u8],
        on_behalf_of: &str,
        renewing_serial: Option<&str>,
    ) -> ForwardOutcome {
        let channel = self.current.load_full();
        let header = on_behalf_of_value(on_behalf_of);
        // The serial (hex) of the device certificate being renewed, so that the CA can refuse
        // the renewal of a certificate it has revoked before the RA's CRL says so.
        let renewing = renewing_serial
            .filter(|s| s.len() <= 64 && s.chars().all(|c| c.is_ascii_hexdigit()))
            .and_then(|s| HeaderValue::from_str(s).ok());
        match self
            .enroll_on(
                &channel,
                label,
                operation,
                csr_der,
                Some(&header),
                renewing.as_ref(),
            )
            .await
        {
            Ok(r) => outcome_of(&r, self.default_retry, self.default_pending_retry),
            Err(e) => ForwardOutcome::Unavailable {
                retry_after: self.default_retry,
                reason: e.to_string(),
            },
        }
    }

    async fn enroll_on(
        &self,
        channel: &Channel,
        label: Option<&str>,
        operation: Forwarded,
        csr_der: &[u8],
        on_behalf_of: Option<&HeaderValue>,
        renewing: Option<&HeaderValue>,
    ) -> Result<RawResponse, UpstreamError> {
        let label = label.filter(|l| !l.is_empty());
        if let Some(l) = label {
            check_label(l)?;
        }
        let path = self.url.operation_path(label, operation.operation());
        if let Some(r) = &on_behalf_of {
            tracing::debug!(upstream = %self.url_text, path, on_behalf_of = ?r, "forwarding");
        }
        self.exchange(
            channel,
            Outgoing {
                method: Method::POST,
                path,
                body: Some(Bytes::from(body::encode_base64_lines(csr_der))),
                on_behalf_of,
                renewing,
            },
            MAX_ENROLL_RESPONSE,
        )
        .await
    }

    /// Fetches the upstream's CRL from `/crl` on its TLS port and verifies it against the
    /// issuing CA among `cacerts` (the upstream's `/cacerts` chain; issuing CA first).
    pub async fn fetch_crl_with(&self, cacerts: &[Vec<u8>]) -> Result<UpstreamCrl, UpstreamError> {
        let channel = self.current.load_full();
        let r = self
            .exchange(
                &channel,
                Outgoing {
                    method: Method::GET,
                    path: UPSTREAM_CRL_PATH.to_string(),
                    body: None,
                    on_behalf_of: None,
                    renewing: None,
                },
                MAX_CRL_RESPONSE,
            )
            .await?;
        if r.status != StatusCode::OK {
            return Err(self.status_error(&r));
        }
        UpstreamCrl::parse(&r.body, cacerts)
    }

    /// Fetches `/cacerts`, then the CRL ([`UpstreamClient::fetch_crl_with`]).
    pub async fn fetch_crl(&self) -> Result<UpstreamCrl, UpstreamError> {
        let cacerts = self.cacerts().await?;
        self.fetch_crl_with(&cacerts).await
    }

    fn status_error(&self, r: &RawResponse) -> UpstreamError {
        UpstreamError::Status {
            url: self.url_text.clone(),
            status: r.status.as_u16(),
            message: refusal_message(r.status, &r.body),
            retry_after: r.retry_after,
        }
    }

    fn protocol(&self, detail: String) -> UpstreamError {
        UpstreamError::Protocol {
            url: self.url_text.clone(),
            detail,
        }
    }

    fn transport(&self, source: ClientError) -> UpstreamError {
        UpstreamError::Transport {
            url: self.url_text.clone(),
            source,
        }
    }

    /// One request and its whole response within the deadline, on a kept-alive connection
    /// when there is one. A request that fails on a reused connection before any response
    /// (the server closed it while idle) is sent once more on a new connection.
    async fn exchange(
        &self,
        channel: &Channel,
        outgoing: Outgoing<'_>,
        limit: usize,
    ) -> Result<RawResponse, UpstreamError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            while let Some(mut sender) = channel.take_idle() {
                if sender.ready().await.is_err() {
                    continue;
                }
                let request = self.build(channel, &outgoing)?;
                match sender.try_send_request(request).await {
                    Ok(response) => return self.read(channel, sender, response, limit).await,
                    // Not sent: the connection had closed; try the next one.
                    Err(e) if e.message().is_some() => continue,
                    // Sent, and the connection failed before an answer (the server closed it
                    // as it went idle): once more, on a new connection.
                    Err(e) => {
                        tracing::debug!(upstream = %self.url_text, error = %e.error(), "a kept-alive connection failed; sending again on a new one");
                        break;
                    }
                }
            }
            let mut sender = self.connect(channel).await?;
            let request = self.build(channel, &outgoing)?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.transport(ClientError::Protocol(format!("HTTP: {e}"))))?;
            self.read(channel, sender, response, limit).await
        })
        .await
        .map_err(|_| self.transport(ClientError::Timeout(timeout)))?
    }

    async fn connect(&self, channel: &Channel) -> Result<SendRequest<Full<Bytes>>, UpstreamError> {
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| {
                self.transport(ClientError::Connect {
                    url: self.url_text.clone(),
                    source: e,
                })
            })?;
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(self.url.host.clone())
            .map_err(|e| UpstreamError::Config(format!("host {:?}: {e}", self.url.host)))?;
        let tls = TlsConnector::from(channel.config.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| self.transport(classify_tls_error(e, &self.url.host)))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.transport(ClientError::Protocol(format!("HTTP: {e}"))))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    fn build(
        &self,
        channel: &Channel,
        o: &Outgoing<'_>,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        let mut request = Request::builder()
            .method(o.method.clone())
            .uri(o.path.as_str())
            .header(header::HOST, self.url.authority())
            .header(
                header::USER_AGENT,
                concat!("estuary-ra/", env!("CARGO_PKG_VERSION")),
            );
        // The RA's password is for enrolling its RA certificate, with the configured identity:
        // never sent with a forwarded request (it must not widen what a device may get), nor
        // once the RA certificate authenticates (the parent may have removed the user).
        let configured_identity = channel.leaf == self.configured.leaf;
        if let (Some(value), None, true) =
            (&self.authorization, o.on_behalf_of, configured_identity)
        {
            request = request.header(header::AUTHORIZATION, value.clone());
        }
        if let Some(value) = o.renewing {
            request = request.header(RENEWING_SERIAL_HEADER, value.clone());
        }
        if let Some(value) = o.on_behalf_of {
            request = request.header(ON_BEHALF_OF_HEADER, value.clone());
        }
        let body = match &o.body {
            Some(b) => {
                request = request
                    .header(header::CONTENT_TYPE, media::PKCS10)
                    .header("Content-Transfer-Encoding", media::BASE64);
                b.clone()
            }
            None => Bytes::new(),
        };
        request
            .body(Full::new(body))
            .map_err(|e| UpstreamError::Config(format!("request to the upstream: {e}")))
    }

    async fn read(
        &self,
        channel: &Channel,
        sender: SendRequest<Full<Bytes>>,
        response: http::Response<hyper::body::Incoming>,
        limit: usize,
    ) -> Result<RawResponse, UpstreamError> {
        let status = response.status();
        let header_text = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header_text(header::CONTENT_TYPE.as_str());
        let retry_after = header_text(header::RETRY_AFTER.as_str());
        let approval_request = header_text(APPROVAL_REQUEST_HEADER);
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                self.protocol(format!("reading the response (at most {limit} bytes): {e}"))
            })?
            .to_bytes();
        channel.put_idle(sender);
        Ok(RawResponse::new(
            status,
            content_type,
            retry_after.as_deref(),
            approval_request.as_deref(),
            body,
        ))
    }
}

impl RawResponse {
    /// An answer as read: `Retry-After` parsed, an approval request id kept only when it is a
    /// short token.
    fn new(
        status: StatusCode,
        content_type: Option<String>,
        retry_after: Option<&str>,
        approval_request: Option<&str>,
        body: Bytes,
    ) -> Self {
        RawResponse {
            status,
            content_type,
            retry_after: retry_after.and_then(parse_retry_after),
            approval_request: approval_request
                .map(str::trim)
                .map(str::to_string)
                .filter(|v| {
                    !v.is_empty()
                        && v.len() <= 64
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                }),
            body,
        }
    }
}

/// What a forwarded enrollment's answer means, from its status, `Content-Type`,
/// `Retry-After`, `X-Estuary-Approval-Request` and body (the parsing the RA applies to its
/// parent's answers; public for the fuzz target).
pub fn answer_outcome(
    status: u16,
    content_type: Option<&str>,
    retry_after: Option<&str>,
    approval_request: Option<&str>,
    body: &[u8],
) -> ForwardOutcome {
    let Ok(status) = StatusCode::from_u16(status) else {
        return ForwardOutcome::Unavailable {
            retry_after: Duration::from_secs(30),
            reason: format!("the upstream answered with status {status}"),
        };
    };
    let raw = RawResponse::new(
        status,
        content_type.map(str::to_string),
        retry_after,
        approval_request,
        Bytes::copy_from_slice(body),
    );
    outcome_of(&raw, Duration::from_secs(30), Duration::from_secs(60))
}

/// A label as RFC 7030 §3.2.2 allows in a path segment (what Estuary's labels are made of).
fn check_label(label: &str) -> Result<(), UpstreamError> {
    if label.len() <= 64
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && label != "."
        && label != ".."
    {
        Ok(())
    } else {
        Err(UpstreamError::Config(format!(
            "upstream label {label:?}: letters, digits, '-', '_' and '.' only"
        )))
    }
}

/// The on-behalf-of header value: printable ASCII as it is, anything else (and `%`)
/// percent-encoded as UTF-8, at most [`MAX_ON_BEHALF_OF`] characters.
fn on_behalf_of_value(identity: &str) -> HeaderValue {
    let mut out = String::new();
    for c in identity.chars() {
        let piece = if (' '..='~').contains(&c) && c != '%' {
            c.to_string()
        } else {
            let mut buf = [0u8; 4];
            c.encode_utf8(&mut buf)
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect()
        };
        if out.len() + piece.len() > MAX_ON_BEHALF_OF {
            break;
        }
        out.push_str(&piece);
    }
    HeaderValue::from_str(out.trim()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The certificates of a certs-only PKCS#7 response.
fn certs_only(r: &RawResponse) -> Result<Vec<Vec<u8>>, String> {
    let content_type = r.content_type.as_deref().unwrap_or("");
    if media::essence(content_type) != "application/pkcs7-mime" {
        return Err(format!(
            "Content-Type is {content_type:?}, not application/pkcs7-mime (RFC 7030 §4.1.3)"
        ));
    }
    let certs = pkcs7::certificates_from_body(&r.body).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("the PKCS#7 response holds no certificate".into());
    }
    Ok(certs)
}

/// The upstream's reason: the text body without Estuary's ` (request id ...)` suffix, control
/// characters replaced, at most [`MAX_MESSAGE_CHARS`] characters; the status text when the
/// body says nothing.
fn refusal_message(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut text = text.trim();
    if let Some(start) = text.rfind(" (request id ") {
        if text.ends_with(')') {
            text = text[..start].trim_end();
        }
    }
    let mut message: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if message.trim().is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string();
    }
    message
}

/// Maps an upstream answer to a forwarded enrollment.
fn outcome_of(
    r: &RawResponse,
    default_retry: Duration,
    default_pending: Duration,
) -> ForwardOutcome {
    let status = r.status;
    match status.as_u16() {
        200 => match certs_only(r) {
            Ok(chain) => ForwardOutcome::Issued { chain },
            Err(detail) => ForwardOutcome::Unavailable {
                retry_after: default_retry,
                reason: format!("the upstream's answer is not a certificate: {detail}"),
            },
        },
        202 => {
            if let Some(id) = &r.approval_request {
                tracing::info!(
                    upstream_request = id,
                    "the upstream holds the forwarded request for manual approval"
                );
            }
            ForwardOutcome::Pending {
                retry_after: r.retry_after.unwrap_or(default_pending),
                request_id: r.approval_request.clone(),
            }
        }
        429 => ForwardOutcome::Unavailable {
            retry_after: r.retry_after.unwrap_or(default_retry),
            reason: format!(
                "the upstream is busy (429): {}",
                refusal_message(status, &r.body)
            ),
        },
        400..=499 => ForwardOutcome::Refused {
            status: status.as_u16(),
            message: refusal_message(status, &r.body),
        },
        500..=599 => ForwardOutcome::Unavailable {
            retry_after: r.retry_after.unwrap_or(default_retry),
            reason: format!(
                "the upstream answered {}: {}",
                status.as_u16(),
                refusal_message(status, &r.body)
            ),
        },
        other => ForwardOutcome::Unavailable {
            retry_after: default_retry,
            reason: format!("the upstream answered an unexpected status {other}"),
        },
    }
}

#[cfg(test)]
mod tests;
