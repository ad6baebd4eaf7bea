//! The EST endpoints (RFC 7030 §3.2.2): decode -> authenticate -> the label's rules -> the
//! authority -> encode.
//!
//! A request goes: [`route`] (path -> label + operation) -> the label's [`LabelPolicy`] ->
//! method check -> [`Authenticators::authenticate`] (every identity it proves) ->
//! [`admission`] (which of them the label accepts, for which subjects) -> rate limit -> body
//! decode (a verified CSR) -> [`Authority::enroll`] (this server's CA, or the EST server above
//! it) -> certs-only (or serverkeygen multipart) response.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use estuary_auth::{AuthFailure, Requester};
use estuary_ca::FileKeySigner;
use estuary_store::{AuditRecord, Outcome, Store};
use estuary_wire::csr::decode_request_body;
use estuary_wire::{body, media, multipart, pkcs7};
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::admission;
use crate::authenticate::{AuthSetup, Authenticators};
use crate::authority::{Authority, EnrollRequest, Enrollment, RequestContext};
use crate::config::{is_operation, LabelPolicy, Limits, RaRule, Settings};
use crate::denials::DenialTally;
use crate::error::{EstError, ServerError};
use crate::metrics::Metrics;
use crate::ratelimit::{address_key, RateLimiter};

/// The path prefix of every EST endpoint (RFC 7030 §3.2.2, RFC 5785).
pub const WELL_KNOWN: &str = "/.well-known/est";

/// The path of the CRL on the EST listener (and the CRL listener).
pub const CRL_PATH: &str = "/crl";

/// What the TLS accept loop learned about a connection, captured once.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The peer address.
    pub peer: SocketAddr,
    /// The client certificate chain as presented (leaf first), if any.
    pub client_chain: Option<Vec<Vec<u8>>>,
    /// The path validation of that chain against this CA, made by the first request of the
    /// connection and kept for the next ones (with the generation of the authenticators that
    /// made it: after a reload it is made again). Revocation is checked on every request.
    pub verified_ours: std::sync::OnceLock<(
        u64,
        Result<estuary_auth::VerifiedClientCert, estuary_auth::CertAuthFailure>,
    )>,
}

impl ConnectionInfo {
    /// A connection from `peer` that presented `client_chain`.
    pub fn new(peer: SocketAddr, client_chain: Option<Vec<Vec<u8>>>) -> Self {
        ConnectionInfo {
            peer,
            client_chain,
            verified_ours: std::sync::OnceLock::new(),
        }
    }
}

pub use estuary_wire::operation::Operation;

/// The HTTP method an operation is called with.
fn allowed_method(operation: Operation) -> Method {
    if operation.is_get() {
        Method::GET
    } else {
        Method::POST
    }
}

/// Splits `/.well-known/est[/<label>]/<operation>` (RFC 7030 §3.2.2).
pub fn route(path: &str) -> Result<(Option<&str>, Operation), EstError> {
    let not_found = || {
        EstError::NotFound(format!(
            "no such EST endpoint; use {WELL_KNOWN}/[<label>/]cacerts|simpleenroll|simplereenroll|csrattrs"
        ))
    };
    let rest = path
        .strip_prefix(WELL_KNOWN)
        .filter(|r| r.starts_with('/'))
        .ok_or_else(not_found)?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [op] => Ok((None, Operation::parse(op).ok_or_else(not_found)?)),
        [label, op] if !is_operation(label) => {
            Ok((Some(label), Operation::parse(op).ok_or_else(not_found)?))
        }
        _ => Err(not_found()),
    }
}

/// What a request was routed to, as the metrics and the log line count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Endpoint {
    /// An EST operation.
    Est(Operation),
    /// The CRL ([`CRL_PATH`]).
    Crl,
    /// A path that is neither.
    #[default]
    Other,
}

impl Endpoint {
    /// The `endpoint` label of `estuary_requests_total`.
    fn metric_label(self) -> &'static str {
        match self {
            Endpoint::Est(operation) => operation.as_str(),
            Endpoint::Crl => "crl",
            Endpoint::Other => "other",
        }
    }

    /// The EST operation, if the request is one.
    fn operation(self) -> Option<Operation> {
        match self {
            Endpoint::Est(operation) => Some(operation),
            Endpoint::Crl | Endpoint::Other => None,
        }
    }
}

/// Per-request facts for the log line, the metrics and the audit trail.
#[derive(Debug, Default)]
struct RequestFacts {
    request_id: String,
    /// How the requester proved its identity ([`Requester::method`]); `None` when it did not.
    auth_method: Option<&'static str>,
    requester: String,
    label: String,
    endpoint: Endpoint,
    serial: Option<String>,
    /// Why authentication failed (metrics), when it did.
    auth_failure: Option<AuthFailure>,
}

/// What survives a configuration reload: the authority (CA or upstream), the store, the
/// metrics.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Who issues: this server's CA, or the EST server above it.
    pub authority: Arc<dyn Authority>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Refusals of requests without a valid identity, summed for the audit trail.
    pub denials: Arc<DenialTally>,
}

/// Everything the EST endpoints need, shared by all connections. No lock is held across a
/// request: the user table, verifier and policies are read-only (a reload builds a new service
/// and swaps it in); the store batches writes; counters are atomic or sharded.
#[derive(Debug)]
pub struct EstService {
    shared: Shared,
    csrattrs_body: Option<Bytes>,
    authenticators: Authenticators,
    default_label: LabelPolicy,
    labels: BTreeMap<String, LabelPolicy>,
    registration_authorities: BTreeMap<String, RaRule>,
    limits: Limits,
    per_address: Arc<RateLimiter>,
    per_identity: Arc<RateLimiter>,
    failed_auth_cost: u32,
    request_prefix: String,
    request_counter: AtomicU64,
    audit_retention: Option<Duration>,
    /// The encoded `/cacerts` bodies of the authority's current chain.
    cacerts_cache: arc_swap::ArcSwap<Option<CaCertsBodies>>,
}

impl EstService {
    /// Builds the service from settings; the `/csrattrs` body is encoded once.
    pub fn new(
        settings: &Settings,
        shared: Shared,
        auth: AuthSetup,
        limiters: (Arc<RateLimiter>, Arc<RateLimiter>),
    ) -> Result<Self, ServerError> {
        let csrattrs_body = if settings.csrattrs.is_empty() {
            None
        } else {
            let der = estuary_wire::csrattrs::encode_oids(&settings.csrattrs)
                .map_err(ServerError::CsrAttrsEncoding)?;
            Some(Bytes::from(body::encode_base64_lines(&der)))
        };
        let mut prefix = [0u8; 3];
        aws_lc_rs::rand::fill(&mut prefix).map_err(|_| ServerError::NoRandomness)?;
        Ok(EstService {
            shared,
            csrattrs_body,
            authenticators: Authenticators::new(auth),
            default_label: settings.default_label.clone(),
            labels: settings.labels.clone(),
            registration_authorities: settings.registration_authorities.clone(),
            limits: settings.limits.clone(),
            per_address: limiters.0,
            per_identity: limiters.1,
            failed_auth_cost: settings.rate_limits.failed_auth_cost,
            request_prefix: hex::encode(prefix),
            request_counter: AtomicU64::new(1),
            audit_retention: settings.audit_retention,
            cacerts_cache: arc_swap::ArcSwap::from_pointee(None),
        })
    }

    /// The authenticators (and the bootstrap CRLs they hold).
    pub fn authenticators(&self) -> &Authenticators {
        &self.authenticators
    }

    /// `/cacerts` (RFC 7030 §4.1.3): the same bytes until the authority's chain changes, so
    /// the base64 bodies are made once per chain and layout.
    fn cacerts_response(&self, layout: body::Layout) -> Response<Full<Bytes>> {
        let der = self.shared.authority.cacerts();
        let cached = self.cacerts_cache.load();
        let body = match cached.as_ref() {
            Some(c) if c.der == der => c.body(layout),
            _ => {
                let fresh = CaCertsBodies {
                    lines: Bytes::from(body::encode_base64(&der, body::Layout::Lines64)),
                    single: Bytes::from(body::encode_base64(&der, body::Layout::SingleLine)),
                    der,
                };
                let body = fresh.body(layout);
                self.cacerts_cache.store(Arc::new(Some(fresh)));
                body
            }
        };
        certs_only_body_response(body)
    }

    /// How long audit events are kept.
    pub fn audit_retention(&self) -> Option<Duration> {
        self.audit_retention
    }

    /// The parts that survive a reload.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The rate limiters (per address, per identity), kept across a reload when their
    /// budgets do not change, so that a reload does not forgive a password guesser.
    pub fn limiters(&self) -> (Arc<RateLimiter>, Arc<RateLimiter>) {
        (self.per_address.clone(), self.per_identity.clone())
    }

    /// Limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Handles one HTTP request and writes its log line. Never fails: errors become responses.
    pub async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnectionInfo>,
        request: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let request_id = format!(
            "{}-{}",
            self.request_prefix,
            self.request_counter.fetch_add(1, Ordering::Relaxed)
        );
        let mut facts = RequestFacts {
            request_id: request_id.clone(),
            ..Default::default()
        };
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let address = address_key(conn.peer.ip());
        // Routed once, before the rate limit, so that a 429 is counted under its endpoint.
        let routed = if path == CRL_PATH {
            Ok(None)
        } else {
            route(&path).map(Some)
        };
        facts.endpoint = match &routed {
            Ok(Some((_, operation))) => Endpoint::Est(*operation),
            Ok(None) => Endpoint::Crl,
            Err(_) => Endpoint::Other,
        };
        let result = match self.per_address.take(&address, 1) {
            Err(wait) => Err(EstError::TooManyRequests(wait)),
            Ok(()) => {
                // Every line logged while the request is handled carries its id.
                let span = tracing::info_span!("request", id = %request_id);
                self.dispatch(&conn, request, routed, &mut facts)
                    .instrument(span)
                    .await
            }
        };
        let (response, denial) = match result {
            Ok(r) => (r, None),
            Err(e) => {
                if let EstError::Internal(detail) = &e {
                    tracing::error!(request_id, error = %detail, "internal error");
                }
                if let EstError::TooManyRequests(_) = &e {
                    self.shared.metrics.rate_limited();
                }
                if let EstError::Unauthorized(_) = &e {
                    // Password guessing pays more than a request.
                    self.per_address
                        .charge(&address, self.failed_auth_cost.saturating_sub(1));
                }
                let reason = e.public_message();
                (e.into_response(&request_id), Some(reason))
            }
        };
        let status = response.status();
        if let Some(failure) = &facts.auth_failure {
            self.shared.metrics.auth_failure(failure);
        }
        self.shared
            .metrics
            .request(facts.endpoint.metric_label(), &facts.label, status.as_u16());
        // A path is the client's to choose (up to the 64 KiB header limit): the log keeps its
        // first 256 characters (a URI's path is ASCII: 256 bytes), so that long paths cannot
        // crowd other lines out of the log buffer.
        let path = &*truncate(&path, 256);
        tracing::info!(
            request_id,
            peer = %conn.peer,
            method = %method,
            path,
            auth = facts.auth_method.unwrap_or("none"),
            // Who the request claimed or proved to be (`auth="none"` with `basic:carol`: a
            // wrong password for carol), as the audit trail names it.
            identity = if facts.requester.is_empty() { "-" } else { facts.requester.as_str() },
            label = facts.label,
            status = status.as_u16(),
            serial = facts.serial.as_deref().unwrap_or("-"),
            // Why it was refused (a 401 says it only here: its body is empty).
            error = denial.as_deref().unwrap_or("-"),
            // Whole microseconds: 3.935, not 3.9353419999999995.
            elapsed_ms = started.elapsed().as_micros() as f64 / 1000.0,
            "request"
        );
        let Some(reason) = denial else {
            return response;
        };
        let Some(auth_method) = facts.auth_method else {
            // Anyone can send these: counted, summed into one audit event a minute.
            self.shared.denials.count(&address, status.as_u16());
            return response;
        };
        // Only a refused enrollment by a proved identity uses up that identity's budget of
        // individual audit events (successful requests must not).
        let refused_enrollment = facts.endpoint.operation().filter(|op| is_enrollment(*op));
        if let Some(operation) =
            refused_enrollment.filter(|_| self.shared.denials.admit_authenticated(&facts.requester))
        {
            let audit = AuditRecord {
                time: unix_now(),
                request_id: facts.request_id.clone(),
                peer: conn.peer.to_string(),
                requester: facts.requester.clone(),
                auth_method: auth_method.to_string(),
                label: facts.label.clone(),
                operation: operation.as_str().to_string(),
                outcome: Outcome::Denied,
                status: status.as_u16(),
                serial: facts.serial.clone(),
                reason: Some(reason),
            };
            let store = self.shared.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.record_audit(audit).await {
                    tracing::error!(error = %e, "could not record audit event");
                }
            });
        }
        response
    }

    /// `routed`: `None` for the CRL, else the label and operation (or the routing error).
    async fn dispatch(
        &self,
        conn: &ConnectionInfo,
        request: Request<Incoming>,
        routed: Result<Option<(Option<&str>, Operation)>, EstError>,
        facts: &mut RequestFacts,
    ) -> Result<Response<Full<Bytes>>, EstError> {
        let Some((label, operation)) = routed? else {
            return crl_response(self.shared.authority.crl(), request.method());
        };
        let policy = match label {
            None => &self.default_label,
            Some(l) => {
                let policy = self
                    .labels
                    .get(l)
                    .ok_or_else(|| EstError::NotFound(format!("unknown EST label {l:?}")))?;
                // Only known labels reach the metrics: unknown ones must not create series.
                facts.label = l.to_string();
                policy
            }
        };
        let allowed = allowed_method(operation);
        let method = request.method();
        let head_of_get = allowed == Method::GET && method == Method::HEAD;
        if method != allowed && !head_of_get {
            return Err(EstError::MethodNotAllowed(if allowed == Method::GET {
                "GET"
            } else {
                "POST"
            }));
        }
        match operation {
            // RFC 7030 §4.1.1: no authentication for /cacerts; any Authorization header is ignored.
            Operation::CaCerts => {
                Ok(self.cacerts_response(LayoutHints::of(request.headers()).layout(None)))
            }
            Operation::CsrAttrs => Ok(match &self.csrattrs_body {
                // RFC 7030 §4.5.2: 204 when there are no attributes to ask for.
                None => Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| EstError::Internal(e.to_string()))?,
                Some(b) => Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, media::CSRATTRS)
                    .header("Content-Transfer-Encoding", media::BASE64)
                    .body(Full::new(b.clone()))
                    .map_err(|e| EstError::Internal(e.to_string()))?,
            }),
            Operation::FullCmc => Err(EstError::NotImplemented("fullcmc")),
            Operation::ServerKeyGen if !policy.serverkeygen => {
                Err(EstError::NotImplemented("serverkeygen (for this label)"))
            }
            Operation::SimpleEnroll | Operation::SimpleReenroll | Operation::ServerKeyGen => {
                self.enroll(operation, policy, conn, request, facts).await
            }
        }
    }

    /// simpleenroll, simplereenroll, serverkeygen: authenticate -> the label's rules ->
    /// decode the CSR -> the authority -> encode its answer.
    async fn enroll(
        &self,
        operation: Operation,
        policy: &LabelPolicy,
        conn: &ConnectionInfo,
        request: Request<Incoming>,
        facts: &mut RequestFacts,
    ) -> Result<Response<Full<Bytes>>, EstError> {
        let authority = &*self.shared.authority;
        let mut auth = self
            .authenticators
            .authenticate(conn, request.headers(), authority)
            .await;
        // A registration authority acts as one only when it forwards (and names whom for):
        // then only as one, so that a forwarded request can never be issued as the RA's own
        // certificate (for the RA's name). Asking for itself, its certificate is a client
        // certificate like any other, with RFC 7030 §4.2.2's identity check on renewal.
        let is_ra = |c: &admission::Candidate| {
            matches!(c.requester, Requester::RegistrationAuthority { .. })
        };
        let forwarded =
            request.headers().contains_key(ON_BEHALF_OF) && auth.candidates.iter().any(is_ra);
        auth.candidates.retain(|c| is_ra(c) == forwarded);
        let label_name = if facts.label.is_empty() {
            "(default)".to_string()
        } else {
            facts.label.clone()
        };
        facts.requester = auth
            .candidates
            .first()
            .map_or_else(|| auth.claimed.clone(), |c| c.requester.identity());
        if auth.candidates.is_empty() {
            if auth.password_busy {
                // Over this address's or user's share of password checks: refused at once
                // instead of queueing (see password_gate).
                facts.auth_failure = Some(AuthFailure::PasswordCheckBusy);
                return Err(EstError::TooManyRequests(Duration::from_secs(1)).with_detail(
                    "a password check from this address is already in progress (one at a time per address)",
                ));
            }
            facts.auth_failure = Some(auth.failure());
            if auth
                .failures
                .iter()
                .any(|(f, _)| matches!(f, AuthFailure::StoreError))
            {
                // The certificate could not be looked up (the database is unreachable): not
                // the device's fault, and worth repeating, so 503 rather than 401.
                return Err(EstError::Unavailable(
                    Duration::from_secs(5),
                    auth.failure_message(),
                ));
            }
            return Err(EstError::Unauthorized(auth.failure_message()));
        }
        if auth
            .failures
            .iter()
            .any(|(failure, _)| *failure == AuthFailure::WrongPassword)
        {
            // A wrong password costs the same whether or not a certificate came with it, so a
            // device's certificate is no cover for guessing another user's password.
            self.shared
                .metrics
                .auth_failure(&AuthFailure::WrongPassword);
            self.per_address
                .charge(&address_key(conn.peer.ip()), self.failed_auth_cost);
        }
        let refused = |facts: &mut RequestFacts, refusal: admission::Refusal| {
            facts.auth_failure = refusal.code;
            refusal.error
        };
        let accepted = match admission::accepted_identities(
            policy,
            &label_name,
            operation,
            &auth.candidates,
        ) {
            Ok(accepted) => accepted,
            Err(refusal) => {
                facts.auth_method = auth.candidates.first().map(|c| c.requester.method());
                return Err(refused(facts, refusal));
            }
        };
        if let Some(first) = accepted.first() {
            facts.auth_method = Some(first.requester.method());
            facts.requester = first.requester.identity();
        }

        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !media::is_pkcs10(content_type) {
            return Err(EstError::UnsupportedMediaType(format!(
                "Content-Type must be {} (RFC 7030 §4.2.1), not {:?}",
                media::PKCS10,
                content_type
            )));
        }
        // What is needed of the headers, owned: the request (whose headers share hyper's read
        // buffer) is dropped with its body read, so that hyper reads the next request into the
        // same buffer instead of allocating a new one while this one is handled.
        let headers = request.headers();
        let on_behalf_of = headers
            .get(ON_BEHALF_OF)
            .and_then(|v| v.to_str().ok())
            .map(|v| truncate(v, 512).into_owned());
        let renewing_serial = headers
            .get(RENEWING_SERIAL)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 64 && v.chars().all(|c| c.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase);
        let layout_hints = LayoutHints::of(headers);
        let body = self.read_body(request).await?;
        let layout = layout_hints.layout(Some(&body));
        let csr = decode_request_body(&body).map_err(|e| EstError::BadRequest(e.to_string()))?;
        if csr.subject.0.is_empty() && csr.requested.subject_alt_name.is_none() {
            // RFC 5280 §4.1.2.6: an empty subject needs a subjectAltName.
            return Err(EstError::BadRequest(
                "the CSR has an empty subject and no subjectAltName: a certificate needs one of them".into(),
            ));
        }
        let admitted = admission::admit(
            policy,
            &label_name,
            &self.registration_authorities,
            operation,
            &accepted,
            &csr,
        )
        .map_err(|refusal| refused(facts, refusal))?;
        let auth_method = admitted.requester.method();
        facts.auth_method = Some(auth_method);
        facts.requester = admitted.requester.identity();
        if let Requester::RegistrationAuthority { .. } = admitted.requester {
            // One address carries every device behind a registration authority: its
            // requests do not count against that address's limit (the RA limits its devices).
            self.per_address.refund(&address_key(conn.peer.ip()), 1);
        }
        self.per_identity
            .take(&facts.requester, 1)
            .map_err(EstError::TooManyRequests)?;
        let enrollment = authority
            .enroll(EnrollRequest {
                requester: &admitted.requester,
                on_behalf_of: on_behalf_of.filter(|_| {
                    matches!(admitted.requester, Requester::RegistrationAuthority { .. })
                }),
                renewing_serial: match &admitted.requester {
                    Requester::ClientCert(cert) => Some(cert.serial_hex.clone()),
                    Requester::RegistrationAuthority { .. } => renewing_serial,
                    _ => None,
                },
                label_name: &facts.label,
                label: policy,
                origin_label: admitted.origin_label,
                operation,
                csr,
                body: &body,
                context: RequestContext {
                    request_id: &facts.request_id,
                    peer: conn.peer,
                    auth_method,
                },
            })
            .await?;
        match enrollment {
            Enrollment::Issued {
                certificate,
                serial,
                server_key,
            } => {
                facts.serial = Some(serial);
                let certs_only = pkcs7::certs_only_of_one(&certificate);
                match server_key {
                    None => Ok(certs_only_response(&certs_only, layout)),
                    Some(key) => serverkeygen_response(&key, &certs_only),
                }
            }
            Enrollment::Repeated {
                certificate,
                serial,
            } => {
                facts.serial = Some(serial);
                let certs_only = pkcs7::certs_only_of_one(&certificate);
                Ok(certs_only_response(&certs_only, body::Layout::Lines64))
            }
            Enrollment::Pending { id, retry_after } => Ok(accepted_response(id, retry_after)),
        }
    }

    async fn read_body(&self, request: Request<Incoming>) -> Result<Bytes, EstError> {
        let max = self.limits.max_body_bytes;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            drain(request.into_body()).await;
            return Err(EstError::PayloadTooLarge(max));
        }
        let mut body = request.into_body();
        let mut collected = Vec::new();
        let read = tokio::time::timeout(self.limits.body_timeout, async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    EstError::BadRequest(format!("could not read the request body: {e}"))
                })?;
                if let Some(data) = frame.data_ref() {
                    if collected.len() + data.len() > max {
                        return Err(EstError::PayloadTooLarge(max));
                    }
                    collected.extend_from_slice(data);
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| EstError::RequestTimeout)?;
        if let Err(e) = read {
            if matches!(e, EstError::PayloadTooLarge(_)) {
                drain(body).await;
            }
            return Err(e);
        }
        Ok(Bytes::from(collected))
    }
}

/// Reads and discards (a bounded amount of) a body that will not be used, so that closing the
/// connection afterwards does not reset it and destroy the error response before the client
/// reads it (a "lingering close").
async fn drain(mut body: Incoming) {
    const MAX_DRAIN: usize = 1024 * 1024;
    let mut seen = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > MAX_DRAIN {
                break;
            }
        }
    })
    .await;
}

/// The header a registration authority names the original requester in (for the audit
/// trail; never used to authorize).
pub use estuary_client::upstream::ON_BEHALF_OF_HEADER as ON_BEHALF_OF;
/// The header a registration authority names the certificate a forwarded renewal renews in.
pub use estuary_client::upstream::RENEWING_SERIAL_HEADER as RENEWING_SERIAL;

/// The response header of a 202 that names the waiting request (for `estuary requests
/// approve ID`).
pub const APPROVAL_REQUEST_ID: &str = "x-estuary-approval-request";

/// 202 Accepted with `Retry-After` (RFC 7030 §4.2.3), and an empty body: Bouncy Castle's
/// client reads `Retry-After` and closes the response unread, which fails on any body. The
/// waiting request's id is in a header and in the log.
fn accepted_response(id: Option<i64>, retry_after: Duration) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
        headers.insert(header::RETRY_AFTER, v);
    }
    if let Some(Ok(v)) = id.map(|id| http::HeaderValue::from_str(&id.to_string())) {
        headers.insert(APPROVAL_REQUEST_ID, v);
    }
    response
}

fn crl_response(crl: Option<Bytes>, method: &Method) -> Result<Response<Full<Bytes>>, EstError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(EstError::MethodNotAllowed("GET"));
    }
    let der = crl.ok_or_else(|| EstError::Internal("the CRL is not ready yet".into()))?;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/pkix-crl")
        .body(Full::new(der))
        .map_err(|e| EstError::Internal(e.to_string()))
}

/// RFC 7030 §4.4.2: `multipart/mixed` with the `application/pkcs8` private key, then the
/// certs-only part. The key is in this response only: never stored, never logged.
fn serverkeygen_response(
    key: &FileKeySigner,
    certs_only: &[u8],
) -> Result<Response<Full<Bytes>>, EstError> {
    let mut nonce = [0u8; 12];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| EstError::Internal("no randomness".into()))?;
    let boundary = format!("estuary-{}", hex::encode(nonce));
    let cte = vec![(
        "Content-Transfer-Encoding".to_string(),
        media::BASE64.to_string(),
    )];
    let parts = [
        multipart::Part {
            content_type: "application/pkcs8".into(),
            headers: cte.clone(),
            // The key's DER is wiped once encoded; the base64 copy becomes the response body,
            // which hyper owns from here on.
            body: body::encode_base64_lines(&zeroize::Zeroizing::new(
                key.key_pair().serialize_der(),
            ))
            .into_bytes(),
        },
        multipart::Part {
            content_type: media::PKCS7_CERTS_ONLY.into(),
            headers: cte,
            body: body::encode_base64_lines(certs_only).into_bytes(),
        },
    ];
    Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/mixed; boundary={boundary}"),
        )
        .body(Full::new(Bytes::from(multipart::encode(&boundary, &parts))))
        .map_err(|e| EstError::Internal(e.to_string()))
}

/// The base64 layout of a response. Estuary writes 64-column lines (RFC 8951 allows any
/// whitespace; `openssl base64 -d` needs lines), except for one known client whose decoder
/// does not skip whitespace: strongSwan `pki` 5.9 sends no `User-Agent` and no
/// `Content-Transfer-Encoding`, and its CSR as one line. A request of that shape gets one line
/// back. (IoT Edge, which also sends no `User-Agent`, accepts either layout.) These are the
/// headers' part of that choice; [`LayoutHints::layout`] adds the body's.
#[derive(Debug, Clone, Copy)]
struct LayoutHints {
    no_user_agent: bool,
    no_content_transfer_encoding: bool,
}

impl LayoutHints {
    fn of(headers: &HeaderMap) -> Self {
        LayoutHints {
            no_user_agent: !headers.contains_key(header::USER_AGENT),
            no_content_transfer_encoding: !headers.contains_key("content-transfer-encoding"),
        }
    }

    fn layout(self, body: Option<&[u8]>) -> body::Layout {
        let single_line_body = body.is_none_or(|b| !b.trim_ascii().contains(&b'\n'));
        if self.no_user_agent && self.no_content_transfer_encoding && single_line_body {
            body::Layout::SingleLine
        } else {
            body::Layout::Lines64
        }
    }
}

/// 200 with a certs-only body: `application/pkcs7-mime; smime-type=certs-only`, base64
/// (RFC 7030 §4.1.3, §4.2.3; RFC 8951 §3).
fn certs_only_response(der: &[u8], layout: body::Layout) -> Response<Full<Bytes>> {
    certs_only_body_response(Bytes::from(body::encode_base64(der, layout)))
}

/// The `/cacerts` body in both layouts, for one chain.
#[derive(Debug)]
struct CaCertsBodies {
    der: Bytes,
    lines: Bytes,
    single: Bytes,
}

impl CaCertsBodies {
    fn body(&self, layout: body::Layout) -> Bytes {
        match layout {
            body::Layout::SingleLine => self.single.clone(),
            _ => self.lines.clone(),
        }
    }
}

/// 200 with an encoded certs-only body.
fn certs_only_body_response(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(media::PKCS7_CERTS_ONLY),
    );
    headers.insert(
        "content-transfer-encoding",
        http::HeaderValue::from_static(media::BASE64),
    );
    response
}

/// The first `max_chars` characters of `text` (borrowed when it is no longer).
pub(crate) fn truncate(text: &str, max_chars: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => std::borrow::Cow::Owned(text[..cut].to_owned()),
        None => std::borrow::Cow::Borrowed(text),
    }
}

/// Whether `operation` asks for a certificate (its refusals are audited).
fn is_enrollment(operation: Operation) -> bool {
    match operation {
        Operation::SimpleEnroll | Operation::SimpleReenroll | Operation::ServerKeyGen => true,
        Operation::CaCerts | Operation::CsrAttrs | Operation::FullCmc => false,
    }
}

/// UNIX seconds of `t` (0 before 1970).
pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// UNIX seconds now.
pub(crate) fn unix_now() -> i64 {
    unix(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_at_a_character_and_borrows_what_it_does_not_cut() {
        assert!(matches!(
            truncate("/short", 256),
            std::borrow::Cow::Borrowed("/short")
        ));
        assert!(matches!(
            truncate(&"x".repeat(256), 256),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(truncate(&"/a".repeat(300), 256).len(), 256);
        let long = "é".repeat(200);
        let cut = truncate(&long, 127);
        assert_eq!(cut.chars().count(), 127);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn routes_operations_and_labels() {
        assert_eq!(
            route("/.well-known/est/cacerts").ok(),
            Some((None, Operation::CaCerts))
        );
        assert_eq!(
            route("/.well-known/est//simpleenroll").ok(),
            Some((None, Operation::SimpleEnroll))
        );
        assert_eq!(
            route("/.well-known/est/edge-ca/simpleenroll").ok(),
            Some((Some("edge-ca"), Operation::SimpleEnroll))
        );
        assert!(route("/.well-known/est/nothing").is_err());
        assert!(route("/.well-known/est/a/b/cacerts").is_err());
        assert!(route("/cacerts").is_err());
        assert!(route("/.well-known/estcacerts").is_err());
    }

    /// The `endpoint` labels of `estuary_requests_total` are those of before the enum.
    #[test]
    fn endpoint_labels_and_enrollments() {
        assert_eq!(Endpoint::Crl.metric_label(), "crl");
        assert_eq!(Endpoint::Other.metric_label(), "other");
        assert_eq!(Endpoint::default(), Endpoint::Other);
        for op in Operation::ALL {
            assert_eq!(Endpoint::Est(op).metric_label(), op.as_str());
            assert_eq!(Endpoint::Est(op).operation(), Some(op));
        }
        let enrollments: Vec<&str> = Operation::ALL
            .into_iter()
            .filter(|op| is_enrollment(*op))
            .map(Operation::as_str)
            .collect();
        assert_eq!(
            enrollments,
            ["simpleenroll", "simplereenroll", "serverkeygen"]
        );
        assert_eq!(Endpoint::Crl.operation(), None);
    }
}
