//! The EST endpoints (RFC 7030 §3.2.2) over the CA, auth and store.
//!
//! A request goes: [`route`] (path -> label + operation) -> the label's [`LabelPolicy`] ->
//! method check -> [`EstService::authenticate`] (typed [`Requester`]s) -> authorize (the
//! label's auth rules) -> rate limit -> body decode (a verified CSR) -> profile check ->
//! approval (for manual labels) -> [`CertificateAuthority::issue`] ->
//! [`Store::record_issued`] (durable) -> certs-only (or serverkeygen multipart) response.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use estuary_auth::{
    parse_basic_authorization, BasicUsers, BootstrapCrl, ClientCertVerifier, Requester,
    VerifiedClientCert,
};
use estuary_ca::{
    CertificateAuthority, CheckedRequest, FileKeySigner, IssuedCertificate, KeyChoice,
    PolicyContext,
};
use estuary_store::{
    AuditRecord, CertificateRecord, CertificateStatus, NewRequest, Outcome, RequestStatus, Store,
    StoreError,
};
use estuary_wire::csr::{decode_request_body, VerifiedCsr};
use estuary_wire::{body, media, multipart, pkcs7};
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use x509_cert::ext::Extension;

use crate::bootstrap_crl::CrlFeed;
use crate::config::{
    is_operation, AuthRules, LabelPolicy, Limits, Settings, SubjectRule, CLIENT_CN, DEFAULT_LABEL,
};
use crate::crl::CrlPublisher;
use crate::denials::DenialTally;
use crate::error::EstError;
use crate::metrics::Metrics;
use crate::password_gate::PasswordGate;
use crate::ratelimit::RateLimiter;

/// The path prefix of every EST endpoint (RFC 7030 §3.2.2, RFC 5785).
pub const WELL_KNOWN: &str = "/.well-known/est";

/// Most requests one identity may have waiting for approval.
const MAX_PENDING_PER_REQUESTER: u64 = 100;
/// Most requests one source address (IPv6: one /64) may have waiting for approval.
const MAX_PENDING_PER_ADDRESS: u64 = 20;
/// Most requests one public key may have waiting for approval: a client resends the same
/// CSR (RFC 7030 §4.2.3), so a second one for the same key is a client that lost track.
const MAX_PENDING_PER_KEY: u64 = 1;

/// The path of the CRL on the EST listener (and the CRL listener).
pub const CRL_PATH: &str = "/crl";

/// What the TLS accept loop learned about a connection, captured once.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The peer address.
    pub peer: SocketAddr,
    /// The client certificate chain as presented (leaf first), if any.
    pub client_chain: Option<Vec<Vec<u8>>>,
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

/// Per-request facts for the log line, the metrics and the audit trail.
#[derive(Debug, Default)]
struct RequestFacts {
    request_id: String,
    auth_method: &'static str,
    requester: String,
    label: String,
    operation: &'static str,
    serial: Option<String>,
    /// Why authentication failed (metrics), when it did.
    auth_failure: Option<&'static str>,
    /// Where the line of the certificate being issued began, when a certificate of ours
    /// authenticated the request (else this request's label).
    origin_label: Option<String>,
}

/// What survives a configuration reload: the CA, the store, the metrics, the CRL.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The issuing CA.
    pub ca: CertificateAuthority,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The current CRL.
    pub crl: Arc<CrlPublisher>,
    /// Refusals of requests without a valid identity, summed for the audit trail.
    pub denials: Arc<DenialTally>,
}

/// Everything the EST endpoints need, shared by all connections. No lock is held across a
/// request: the CA key, user table, verifier and policies are read-only (a reload builds a new
/// service and swaps it in); the store batches writes; counters are atomic or sharded.
#[derive(Debug)]
pub struct EstService {
    shared: Shared,
    cacerts_der: Bytes,
    csrattrs_body: Option<Bytes>,
    users: Arc<BasicUsers>,
    verifier: ClientCertVerifier,
    validity: Duration,
    default_label: LabelPolicy,
    labels: BTreeMap<String, LabelPolicy>,
    limits: Limits,
    approval_retry_after: Duration,
    /// Added to every issued certificate (the CRL distribution point).
    extra_extensions: Vec<Extension>,
    per_address: Arc<RateLimiter>,
    per_identity: Arc<RateLimiter>,
    failed_auth_cost: u32,
    request_prefix: String,
    request_counter: AtomicU64,
    /// Bounds concurrent argon2 verifications (each costs ~19 MiB and a core for ~15 ms), so a
    /// flood of wrong passwords cannot exhaust memory or starve issuance, and shares them
    /// fairly between addresses and user names.
    password_gate: PasswordGate,
    /// The bootstrap CAs' CRLs in force, and where they come from.
    bootstrap_crls: ArcSwap<Vec<LoadedCrl>>,
    crl_feeds: Vec<CrlFeed>,
    audit_retention: Option<Duration>,
    /// Subjects of this server's CA chain, as [`comparable_name`] gives them: no CA
    /// certificate may be issued with one.
    ca_subjects: Vec<ComparableName>,
}

/// A bootstrap CRL and when it was read.
#[derive(Debug, Clone)]
pub struct LoadedCrl {
    /// The CRL.
    pub crl: Arc<BootstrapCrl>,
    /// When it was read or fetched.
    pub loaded_at: Instant,
}

/// What a request's own CA construction and auth need from the caller.
#[derive(Debug)]
pub struct AuthSetup {
    /// Users.
    pub users: BasicUsers,
    /// Client certificate verifier.
    pub verifier: ClientCertVerifier,
    /// Bootstrap CRLs loaded now.
    pub bootstrap_crls: Vec<Arc<BootstrapCrl>>,
    /// Where they come from.
    pub crl_feeds: Vec<CrlFeed>,
}

impl EstService {
    /// Builds the service from settings; the `/cacerts` and `/csrattrs` bodies are encoded once.
    pub fn new(
        settings: &Settings,
        shared: Shared,
        auth: AuthSetup,
        extra_extensions: Vec<Extension>,
        limiters: (Arc<RateLimiter>, Arc<RateLimiter>),
    ) -> Result<Self, String> {
        let cacerts = pkcs7::certs_only_from_der(shared.ca.chain_der())
            .map_err(|e| format!("encoding /cacerts: {e}"))?;
        let csrattrs_body = if settings.csrattrs.is_empty() {
            None
        } else {
            let der = estuary_wire::csrattrs::encode_oids(&settings.csrattrs)
                .map_err(|e| format!("encoding /csrattrs: {e}"))?;
            Some(Bytes::from(body::encode_base64_lines(&der)))
        };
        let ca_subjects = shared
            .ca
            .chain_der()
            .iter()
            .filter_map(|d| {
                use der::Decode;
                x509_cert::Certificate::from_der(d)
                    .ok()
                    .map(|c| comparable_name(&c.tbs_certificate.subject))
            })
            .collect();
        let now = Instant::now();
        let loaded = auth
            .bootstrap_crls
            .into_iter()
            .map(|crl| LoadedCrl {
                crl,
                loaded_at: now,
            })
            .collect();
        let mut prefix = [0u8; 3];
        aws_lc_rs::rand::fill(&mut prefix).map_err(|_| "no randomness".to_string())?;
        Ok(EstService {
            shared,
            cacerts_der: Bytes::from(cacerts),
            csrattrs_body,
            users: Arc::new(auth.users),
            verifier: auth.verifier,
            validity: settings.validity,
            default_label: settings.default_label.clone(),
            labels: settings.labels.clone(),
            limits: settings.limits.clone(),
            approval_retry_after: settings.approval_retry_after,
            extra_extensions,
            per_address: limiters.0,
            per_identity: limiters.1,
            failed_auth_cost: settings.rate_limits.failed_auth_cost,
            request_prefix: hex::encode(prefix),
            request_counter: AtomicU64::new(1),
            password_gate: PasswordGate::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            bootstrap_crls: ArcSwap::from_pointee(loaded),
            crl_feeds: auth.crl_feeds,
            audit_retention: settings.audit_retention,
            ca_subjects,
        })
    }

    /// Reads the bootstrap CRLs again: files every time, URLs when their copy is an hour old
    /// or its CRL is near its nextUpdate. A source that fails keeps its previous CRL (which
    /// refuses its CA's certificates once past its nextUpdate). Blocking.
    pub fn refresh_bootstrap_crls(&self, data_dir: &std::path::Path) {
        if self.crl_feeds.is_empty() {
            return;
        }
        let current = self.bootstrap_crls.load_full();
        let mut next = Vec::with_capacity(self.crl_feeds.len());
        for feed in &self.crl_feeds {
            let old = current.iter().find(|c| c.crl.name == feed.name);
            let due = match (&feed.source, old) {
                (crate::config::CrlSource::File(_), _) | (_, None) => true,
                (crate::config::CrlSource::Url(_), Some(old)) => {
                    old.loaded_at.elapsed() >= Duration::from_secs(3600)
                        || old
                            .crl
                            .next_update
                            .is_some_and(|t| t <= SystemTime::now() + Duration::from_secs(600))
                }
            };
            if !due {
                next.extend(old.cloned());
                continue;
            }
            match feed.load(data_dir) {
                Ok(crl) => next.push(LoadedCrl {
                    crl: crate::bootstrap_crl::newer_of(Arc::new(crl), old.map(|o| &o.crl)),
                    loaded_at: Instant::now(),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "bootstrap CRL not refreshed; the previous one stays in force");
                    if let Some(old) = old {
                        crate::bootstrap_crl::warn_if_stale(&old.crl);
                    }
                    next.extend(old.cloned());
                }
            }
        }
        self.bootstrap_crls.store(Arc::new(next));
    }

    /// How long audit events are kept.
    pub fn audit_retention(&self) -> Option<Duration> {
        self.audit_retention
    }

    /// Prometheus lines for the bootstrap CRLs: seconds until each one's nextUpdate (negative
    /// once past it: that CA's certificates are refused), and whether each is loaded at all.
    pub fn render_bootstrap_crl_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        if self.crl_feeds.is_empty() {
            return;
        }
        let loaded = self.bootstrap_crls.load();
        let now = SystemTime::now();
        let name = "estuary_bootstrap_crl_next_update_seconds";
        let _ = writeln!(out, "# HELP {name} Seconds until a bootstrap CA's CRL reaches its nextUpdate (negative: past it, the CA's certificates are refused).\n# TYPE {name} gauge");
        for c in loaded.iter() {
            if let Some(next) = c.crl.next_update {
                let secs = match next.duration_since(now) {
                    Ok(d) => d.as_secs() as i64,
                    Err(e) => -(e.duration().as_secs() as i64),
                };
                let _ = writeln!(out, "{name}{{ca=\"{}\"}} {secs}", c.crl.name);
            }
        }
        let name = "estuary_bootstrap_crl_loaded";
        let _ = writeln!(out, "# HELP {name} Whether a bootstrap CA's configured CRL is loaded (0: its certificates are refused).\n# TYPE {name} gauge");
        for feed in &self.crl_feeds {
            let is_loaded = loaded.iter().any(|c| c.crl.name == feed.name);
            let _ = writeln!(
                out,
                "{name}{{ca=\"{}\"}} {}",
                feed.name,
                u8::from(is_loaded)
            );
        }
    }

    /// Bootstrap CAs whose certificates are refused now because their CRL is missing or past
    /// its nextUpdate (for `/readyz`'s body).
    pub fn bootstrap_crl_problems(&self) -> Vec<String> {
        let loaded = self.bootstrap_crls.load();
        let now = SystemTime::now();
        self.crl_feeds
            .iter()
            .filter_map(
                |feed| match loaded.iter().find(|c| c.crl.name == feed.name) {
                    None => Some(format!("bootstrap CRL {} is not loaded", feed.name)),
                    Some(c) if c.crl.next_update.is_some_and(|t| t <= now) => Some(format!(
                        "bootstrap CRL {} is past its nextUpdate",
                        feed.name
                    )),
                    Some(_) => None,
                },
            )
            .collect()
    }

    /// The bootstrap CRLs in force (for `/readyz` and tests).
    pub fn bootstrap_crls(&self) -> Arc<Vec<LoadedCrl>> {
        self.bootstrap_crls.load_full()
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
            auth_method: "none",
            operation: "other",
            ..Default::default()
        };
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let address = rate_key(conn.peer.ip());
        // Routed once, before the rate limit, so that a 429 is counted under its endpoint.
        let routed = if path == CRL_PATH {
            Ok(None)
        } else {
            route(&path).map(Some)
        };
        match &routed {
            Ok(Some((_, operation))) => facts.operation = operation.as_str(),
            Ok(None) => facts.operation = "crl",
            Err(_) => {}
        }
        let result = match self.per_address.take(&address, 1) {
            Err(wait) => Err(EstError::TooManyRequests(wait)),
            Ok(()) => self.dispatch(&conn, request, routed, &mut facts).await,
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
        if let Some(reason) = facts.auth_failure {
            self.shared.metrics.auth_failure(reason);
        }
        self.shared
            .metrics
            .request(facts.operation, &facts.label, status.as_u16());
        tracing::info!(
            request_id,
            peer = %conn.peer,
            method = %method,
            path,
            auth = facts.auth_method,
            // Who the request claimed or proved to be (`auth="none"` with `basic:carol`: a
            // wrong password for carol), as the audit trail names it.
            identity = if facts.requester.is_empty() { "-" } else { facts.requester.as_str() },
            label = facts.label,
            status = status.as_u16(),
            serial = facts.serial.as_deref().unwrap_or("-"),
            // Why it was refused (a 401 says it only here: its body is empty).
            error = denial.as_deref().unwrap_or("-"),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        let proved_identity = facts.auth_method != "none";
        if denial.is_some() && !proved_identity {
            // Anyone can send these: counted, summed into one audit event a minute.
            self.shared.denials.count(&address, status.as_u16());
        }
        if let (Some(reason), true, true) = (
            denial,
            proved_identity,
            is_enrollment(facts.operation)
                && self.shared.denials.admit_authenticated(&facts.requester),
        ) {
            let audit = self.audit(&conn, &facts, Outcome::Denied, status, Some(reason));
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
            return crl_response(&self.shared.crl, request.method());
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
            Operation::CaCerts => Ok(certs_only_response(
                &self.cacerts_der,
                response_layout(request.headers(), None),
            )),
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

    async fn enroll(
        &self,
        operation: Operation,
        policy: &LabelPolicy,
        conn: &ConnectionInfo,
        request: Request<Incoming>,
        facts: &mut RequestFacts,
    ) -> Result<Response<Full<Bytes>>, EstError> {
        let auth = self.authenticate(conn, request.headers()).await;
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
                facts.auth_failure = Some("password_check_busy");
                return Err(EstError::TooManyRequests(Duration::from_secs(1)).with_detail(
                    "a password check from this address is already in progress (one at a time per address)",
                ));
            }
            facts.auth_failure = Some(auth.failure_code());
            return Err(EstError::Unauthorized(auth.failure_message()));
        }
        if auth
            .failures
            .iter()
            .any(|(code, _)| *code == "wrong_password")
        {
            // A wrong password costs the same whether or not a certificate came with it, so a
            // device's certificate is no cover for guessing another user's password.
            self.shared.metrics.auth_failure("wrong_password");
            self.per_address
                .charge(&rate_key(conn.peer.ip()), self.failed_auth_cost);
        }
        // The identities that this label accepts (and, for simplereenroll, only the
        // certificate being renewed: RFC 7030 §4.2.2), best first.
        let allowed: Vec<&Candidate> = auth
            .candidates
            .iter()
            .filter(|c| {
                allowed_by(&policy.auth, c)
                    && (operation != Operation::SimpleReenroll
                        || matches!(c.requester, Requester::ClientCert(_)))
            })
            .collect();
        let Some(first_allowed) = allowed.first() else {
            facts.auth_method = auth
                .candidates
                .first()
                .map_or("none", |c| c.requester.method());
            facts.auth_failure = Some("not_allowed");
            if operation == Operation::SimpleReenroll
                && !auth
                    .candidates
                    .iter()
                    .any(|c| matches!(c.requester, Requester::ClientCert(_)))
            {
                return Err(EstError::Forbidden(
                    "simplereenroll requires the certificate being renewed (issued by this CA, valid, not revoked) \
                     as the TLS client certificate; use simpleenroll for a first enrollment"
                        .into(),
                ));
            }
            return Err(EstError::Forbidden(format!(
                "label {label_name} does not accept {}; it accepts: {}",
                auth.candidates
                    .iter()
                    .map(Candidate::describe)
                    .collect::<Vec<_>>()
                    .join(", "),
                policy.auth.describe()
            )));
        };
        facts.auth_method = first_allowed.requester.method();
        facts.requester = first_allowed.requester.identity();

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
        let layout_headers = request.headers().clone();
        let body = self.read_body(request).await?;
        let layout = response_layout(&layout_headers, Some(&body));
        let csr = decode_request_body(&body).map_err(|e| EstError::BadRequest(e.to_string()))?;
        if csr.subject.0.is_empty() && csr.requested.subject_alt_name.is_none() {
            // RFC 5280 §4.1.2.6: an empty subject needs a subjectAltName.
            return Err(EstError::BadRequest(
                "the CSR has an empty subject and no subjectAltName: a certificate needs one of them".into(),
            ));
        }
        // The first accepted identity whose subject rule this CSR satisfies (IoT Edge sends
        // its certificate and Basic together: the password still works for a subject the
        // certificate may not ask for).
        let requester = match allowed
            .iter()
            .find(|c| subject_allowed(&policy.subject, &c.requester, &csr).is_ok())
        {
            Some(c) => {
                // A renewal (the same subject, and the same subjectAltName or none) obtained
                // with a certificate of ours continues its line: the new certificate keeps the
                // origin label, so re-issuing under another label cannot widen what a
                // `client-cert:label:` rule accepts. A certificate for another name is a new
                // line that begins here.
                if let (Requester::ClientCert(cert), Some(status)) = (&c.requester, &c.issued_under)
                {
                    let renewal = cert.subject_name == csr.subject
                        && csr
                            .requested
                            .subject_alt_name
                            .as_ref()
                            .is_none_or(|san| Some(san) == cert.subject_alt_name.as_ref());
                    if renewal {
                        facts.origin_label = Some(status.origin_label.clone());
                    }
                }
                c.requester.clone()
            }
            None => {
                facts.auth_failure = Some("subject_not_allowed");
                let refusal = subject_allowed(&policy.subject, &first_allowed.requester, &csr)
                    .err()
                    .unwrap_or_default();
                return Err(EstError::Forbidden(format!(
                    "label {label_name}: {refusal}"
                )));
            }
        };
        facts.auth_method = requester.method();
        facts.requester = requester.identity();
        self.per_identity
            .take(&facts.requester, 1)
            .map_err(EstError::TooManyRequests)?;
        if let (Operation::SimpleReenroll, Requester::ClientCert(cert)) = (operation, &requester) {
            check_reenroll_identity(cert, &csr)?;
        }
        let profile = policy.profile.select(&csr);
        if profile.ca.is_some() && self.ca_subjects.contains(&comparable_name(&csr.subject)) {
            // A CA certificate named like this server's CA or root would be confused with it
            // by path building (RFC 5280 §6.1): refused, whatever the profile allows.
            return Err(EstError::Forbidden(format!(
                "a CA certificate may not have the subject of this server's CA or root ({})",
                csr.subject
            )));
        }
        // RFC 7030 §4.4.1: for serverkeygen the server makes the key; the CSR's key only signed
        // it. The policy is checked for the key type that will be made; the key itself is made
        // only once the request may be issued (not for every poll of a pending request).
        let server_key_type = (operation == Operation::ServerKeyGen).then(|| {
            profile
                .serverkeygen_key_type
                .unwrap_or_else(|| KeyChoice::for_key_type(csr.key_type))
        });
        let basic_user = match &requester {
            Requester::BasicUser { name } => Some(name.as_str()),
            _ => None,
        };
        // Only serverkeygen needs a copy (with the key type to be generated) for the check.
        let with_server_key_type = server_key_type.map(|k| VerifiedCsr {
            key_type: k.key_type(),
            ..csr.clone()
        });
        let checked = profile
            .check(
                with_server_key_type.as_ref().unwrap_or(&csr),
                PolicyContext { basic_user },
            )
            .map_err(|refusal| EstError::Forbidden(refusal.0))?
            .into_owned();

        let completes_request = if policy.manual_approval {
            match self
                .approval(operation, &body, &csr, &requester, conn, facts)
                .await?
            {
                Approval::Proceed(id) => Some(id),
                Approval::Respond(r) => return Ok(r),
            }
        } else {
            None
        };
        // Key generation (RSA takes up to seconds) runs off the async worker threads.
        let server_key = match server_key_type {
            Some(choice) => Some(
                tokio::task::spawn_blocking(move || generate_key(choice))
                    .await
                    .map_err(|e| EstError::Internal(format!("key generation: {e}")))??,
            ),
            None => None,
        };
        let (csr, checked) = match &server_key {
            Some(key) => {
                let csr = with_public_key(&csr, key)?;
                let checked = checked
                    .with_public_key(csr.public_key.clone())
                    .map_err(|e| EstError::Internal(e.to_string()))?;
                (csr, checked)
            }
            None => (csr, checked),
        };
        let issued = match self
            .issue_and_record(&checked, &requester, conn, facts, completes_request)
            .await
        {
            Err(EstError::Conflict) => {
                // A concurrent retry of the same approved request issued first: answer as for
                // a repeated request.
                return match self
                    .approval(operation, &body, &csr, &requester, conn, facts)
                    .await?
                {
                    Approval::Respond(r) => Ok(r),
                    Approval::Proceed(_) => {
                        Err(EstError::Internal("approved request issued twice".into()))
                    }
                };
            }
            other => other?,
        };
        let certs_only = pkcs7::certs_only(std::slice::from_ref(&issued.certificate))
            .map_err(|e| EstError::Internal(e.to_string()))?;
        match server_key {
            None => Ok(certs_only_response(&certs_only, layout)),
            Some(key) => serverkeygen_response(&key, &certs_only),
        }
    }

    /// RFC 7030 §4.2.3: a request under a manual label is recorded and answered with 202 and
    /// `Retry-After` until an operator decides; the client repeats the same request.
    async fn approval(
        &self,
        operation: Operation,
        body: &[u8],
        csr: &VerifiedCsr,
        requester: &Requester,
        conn: &ConnectionInfo,
        facts: &mut RequestFacts,
    ) -> Result<Approval, EstError> {
        let store_err = |e: StoreError| EstError::Internal(format!("store: {e}"));
        // One request per (label, operation, requester, CSR): an approval under one label, for
        // one operation or for one identity does not carry over to another.
        let identity = requester.identity();
        let request_hash = |with_identity: bool| {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            ctx.update(facts.label.as_bytes());
            ctx.update(b"\0");
            ctx.update(operation.as_str().as_bytes());
            ctx.update(b"\0");
            if with_identity {
                ctx.update(identity.as_bytes());
                ctx.update(b"\0");
            }
            ctx.update(&csr.der);
            hex::encode(ctx.finish())
        };
        let hash = request_hash(true);
        let mut existing = self
            .shared
            .store
            .find_request(&hash)
            .await
            .map_err(store_err)?;
        if existing.is_none() {
            // A request made before requests were keyed by identity (schema v3 and older).
            existing = self
                .shared
                .store
                .find_request(&request_hash(false))
                .await
                .map_err(store_err)?
                .filter(|r| r.requester == identity);
        }
        // An issued request is answered again to a client that missed its answer, until the
        // client has its certificate: once it authenticates with it (a renewal), or once the
        // certificate has expired or been revoked, the same CSR (RSA signatures are
        // deterministic, so a renewal with the same key repeats it byte for byte) is a new
        // request for the operator.
        if let Some(done) = existing
            .as_ref()
            .filter(|r| r.status == RequestStatus::Issued)
        {
            let serial = done.serial.clone().unwrap_or_default();
            let holds_it = matches!(requester, Requester::ClientCert(c) if c.serial_hex == serial);
            let spent = match self
                .shared
                .store
                .find_certificate(&serial)
                .await
                .map_err(store_err)?
            {
                Some(cert) => cert.revoked_at.is_some() || cert.not_after <= unix_now(),
                None => true,
            };
            if holds_it || spent {
                self.shared
                    .store
                    .retire_request(done.id)
                    .await
                    .map_err(store_err)?;
                existing = None;
            }
        }
        let request = match existing {
            Some(r) => r,
            None => {
                // Neither an identity (shared by a fleet), nor one address, nor one key can
                // fill the operators' queue (or the database).
                use der::Encode;
                let key_der = csr
                    .public_key
                    .to_der()
                    .map_err(|e| EstError::Internal(e.to_string()))?;
                let key_sha256 = hex::encode(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    &key_der,
                ));
                let peer_key = rate_key(conn.peer.ip());
                let pending = self
                    .shared
                    .store
                    .pending_counts(&requester.identity(), &peer_key, &key_sha256)
                    .await
                    .map_err(store_err)?;
                if pending.by_key >= MAX_PENDING_PER_KEY {
                    return Err(
                        EstError::TooManyRequests(self.approval_retry_after).with_detail(
                            "a request for this public key is already waiting for approval; \
                         send that same CSR again instead of a new one (RFC 7030 §4.2.3)",
                        ),
                    );
                }
                if pending.by_address >= MAX_PENDING_PER_ADDRESS
                    || pending.by_requester >= MAX_PENDING_PER_REQUESTER
                {
                    return Err(EstError::TooManyRequests(self.approval_retry_after).with_detail(
                        "too many requests from this address or identity are waiting for approval",
                    ));
                }
                let created = self
                    .shared
                    .store
                    .create_request(NewRequest {
                        csr_sha256: hash,
                        csr: body.to_vec(),
                        subject: csr.subject.to_string(),
                        label: facts.label.clone(),
                        operation: operation.as_str().into(),
                        requester: requester.identity(),
                        peer: conn.peer.to_string(),
                        peer_key,
                        key_sha256,
                        created_at: unix_now(),
                    })
                    .await
                    .map_err(store_err)?;
                let audit = self.audit(
                    conn,
                    facts,
                    Outcome::Pending,
                    StatusCode::ACCEPTED,
                    Some(format!("request {} waits for approval", created.id)),
                );
                self.shared
                    .store
                    .record_audit(audit)
                    .await
                    .map_err(store_err)?;
                created
            }
        };
        if request.requester != requester.identity() {
            return Err(EstError::Forbidden(format!(
                "request {} for this CSR was made by another identity",
                request.id
            )));
        }
        match request.status {
            RequestStatus::Pending => Ok(Approval::Respond(accepted_response(
                request.id,
                self.approval_retry_after,
            ))),
            RequestStatus::Approved => Ok(Approval::Proceed(request.id)),
            RequestStatus::Rejected => Err(EstError::Forbidden(format!(
                "request {} was rejected: {}",
                request.id,
                request.reason.as_deref().unwrap_or("no reason given")
            ))),
            RequestStatus::Issued => {
                if operation == Operation::ServerKeyGen {
                    return Err(EstError::Forbidden(format!(
                        "request {} was already answered with its key; the server does not keep keys (RFC 7030 §4.4)",
                        request.id
                    )));
                }
                // The client asked again after its certificate was issued: the same answer.
                let serial = request.serial.unwrap_or_default();
                let cert = self
                    .shared
                    .store
                    .find_certificate(&serial)
                    .await
                    .map_err(store_err)?
                    .ok_or_else(|| {
                        EstError::Internal(format!("issued certificate {serial} not in the store"))
                    })?;
                facts.serial = Some(serial);
                // A client resending an answered request must not write a row each time.
                if self.shared.denials.admit_authenticated(&identity) {
                    let audit = self.audit(
                        conn,
                        facts,
                        Outcome::Repeated,
                        StatusCode::OK,
                        Some(format!("request {} answered again", request.id)),
                    );
                    self.shared
                        .store
                        .record_audit(audit)
                        .await
                        .map_err(store_err)?;
                }
                let der = pkcs7::certs_only_from_der(&[cert.der])
                    .map_err(|e| EstError::Internal(e.to_string()))?;
                Ok(Approval::Respond(certs_only_response(
                    &der,
                    body::Layout::Lines64,
                )))
            }
        }
    }

    /// Signs, then records durably; only then is the certificate released. A serial collision
    /// (astronomically rare with 126 random bits) is retried with a new serial.
    async fn issue_and_record(
        &self,
        checked: &CheckedRequest<'_>,
        requester: &Requester,
        conn: &ConnectionInfo,
        facts: &mut RequestFacts,
        completes_request: Option<i64>,
    ) -> Result<IssuedCertificate, EstError> {
        let metrics = &self.shared.metrics;
        for _ in 0..3 {
            let started = Instant::now();
            let issued = if self.shared.ca.signer().may_block() {
                // A slow signature (RSA CA key) must not hold an async worker thread.
                let (ca, checked) = (self.shared.ca.clone(), checked.clone().into_owned());
                let (validity, extra) = (self.validity, self.extra_extensions.clone());
                tokio::task::spawn_blocking(move || ca.issue(&checked, validity, &extra))
                    .await
                    .map_err(|e| EstError::Internal(format!("issuing: {e}")))?
            } else {
                self.shared
                    .ca
                    .issue(checked, self.validity, &self.extra_extensions)
            }
            .map_err(|e| EstError::Internal(format!("issuing: {e}")))?;
            metrics.issuance_seconds.observe(started.elapsed());
            facts.serial = Some(issued.serial_hex.clone());
            let origin = facts.origin_label.as_deref().unwrap_or(&facts.label);
            let record = certificate_record(&issued, &facts.label, origin, &requester.identity());
            let audit = self.audit(conn, facts, Outcome::Issued, StatusCode::OK, None);
            let stored = Instant::now();
            let result = self
                .shared
                .store
                .record_issued(record, audit, completes_request)
                .await;
            metrics.store_seconds.observe(stored.elapsed());
            match result {
                Ok(()) => {
                    metrics.issued(&checked.profile().name, &facts.label);
                    return Ok(issued);
                }
                Err(StoreError::DuplicateSerial(s)) => {
                    tracing::warn!(serial = s, "serial collision, issuing again");
                }
                Err(StoreError::RequestNotApproved(_)) => return Err(EstError::Conflict),
                Err(e) => return Err(EstError::Internal(format!("store: {e}"))),
            }
        }
        Err(EstError::Internal(
            "could not find a free serial number".into(),
        ))
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

    /// Every identity the request proves, best first: a certificate from this CA (valid,
    /// recorded, not revoked), a bootstrap certificate, a Basic user. A credential that fails
    /// is reported but does not hide one that works (an expired device certificate plus a good
    /// password authenticates by password).
    async fn authenticate(&self, conn: &ConnectionInfo, headers: &HeaderMap) -> AuthOutcome {
        let mut outcome = AuthOutcome::default();
        let now = SystemTime::now();
        if let Some(chain) = &conn.client_chain {
            match self.verifier.verify_ours(chain, now) {
                Ok(cert) => match self.shared.store.certificate_status(&cert.serial_hex).await {
                    Ok(Some(status)) if status.revoked => {
                        outcome.fail("certificate_revoked", "client certificate is revoked")
                    }
                    Ok(Some(status)) => outcome.candidates.push(Candidate {
                        requester: Requester::ClientCert(cert),
                        issued_under: Some(status),
                    }),
                    Ok(None) => outcome.fail(
                        "certificate_unknown",
                        "client certificate is not in this server's certificate store",
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "revocation check failed");
                        outcome.fail("store_error", "client certificate could not be checked");
                    }
                },
                Err(ours) => {
                    let crls: Vec<Arc<BootstrapCrl>> = self
                        .bootstrap_crls
                        .load()
                        .iter()
                        .map(|c| c.crl.clone())
                        .collect();
                    match self.verifier.verify_bootstrap(chain, now, &crls) {
                        // A CRL is configured for its CA but not loaded (its URL has not
                        // answered yet): revocation cannot be checked, so it is refused.
                        Ok(cert)
                            if self.crl_feeds.iter().any(|f| f.name == cert.anchor)
                                && !crls.iter().any(|c| c.name == cert.anchor) =>
                        {
                            outcome.fail(
                                "certificate_crl_unusable",
                                &format!(
                                    "the CRL of bootstrap CA {} has not been loaded yet, so its certificates are refused",
                                    cert.anchor
                                ),
                            )
                        }
                        Ok(cert) => outcome.candidates.push(Candidate {
                            requester: Requester::BootstrapCert(cert),
                            issued_under: None,
                        }),
                        // Say why the certificate that came closest failed.
                        Err(bootstrap) => {
                            let e = if ours == estuary_auth::CertAuthFailure::UnknownIssuer {
                                bootstrap
                            } else {
                                ours
                            };
                            outcome.fail(e.code(), &e.to_string())
                        }
                    }
                }
            }
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return outcome;
        };
        let Some((user, password)) = value.to_str().ok().and_then(parse_basic_authorization) else {
            outcome.fail(
                "bad_authorization_header",
                "Authorization header is not HTTP Basic (RFC 7617)",
            );
            return outcome;
        };
        outcome.claimed = format!("basic:{}", truncate(&user, 128));
        let ok = match self.users.check_cached(&user, &password) {
            Some(ok) => ok,
            None => {
                let Some(pass) = self.password_gate.enter(&rate_key(conn.peer.ip())) else {
                    outcome.password_busy = true;
                    return outcome;
                };
                let users = self.users.clone();
                let (u, p) = (user.clone(), password);
                // Every unknown name queues as one name: guesses with random user names take
                // one running slot between them, not all of them.
                let queue = if self.users.knows(&user) {
                    truncate(&user, 128)
                } else {
                    crate::password_gate::UNKNOWN_USERS.to_string()
                };
                match self.password_gate.slot(&pass, &queue).await {
                    Some(slot) => tokio::task::spawn_blocking(move || {
                        let _slot = slot;
                        let _pass = pass;
                        users.verify(&u, &p)
                    })
                    .await
                    .unwrap_or(false),
                    None => false,
                }
            }
        };
        if ok {
            outcome.candidates.push(Candidate {
                requester: Requester::BasicUser { name: user },
                issued_under: None,
            });
        } else {
            outcome.fail("wrong_password", "wrong user name or password");
        }
        outcome
    }

    fn audit(
        &self,
        conn: &ConnectionInfo,
        facts: &RequestFacts,
        outcome: Outcome,
        status: StatusCode,
        reason: Option<String>,
    ) -> AuditRecord {
        AuditRecord {
            time: unix_now(),
            request_id: facts.request_id.clone(),
            peer: conn.peer.to_string(),
            requester: facts.requester.clone(),
            auth_method: facts.auth_method.to_string(),
            label: facts.label.clone(),
            operation: facts.operation.to_string(),
            outcome,
            status: status.as_u16(),
            serial: facts.serial.clone(),
            reason,
        }
    }
}

/// The rate-limit key of an address: IPv4 as is, IPv6 by /64 (one host may own a whole /64).
fn rate_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
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

/// What the approval step decided.
enum Approval {
    /// Issue now, completing this request.
    Proceed(i64),
    /// Answer with this (202, or the certificate issued before).
    Respond(Response<Full<Bytes>>),
}

/// One identity a request proved, with what the store knows of a certificate of ours.
#[derive(Debug)]
struct Candidate {
    requester: Requester,
    /// For a certificate this CA issued: its label, profile and revocation state.
    issued_under: Option<CertificateStatus>,
}

impl Candidate {
    fn describe(&self) -> String {
        match &self.issued_under {
            Some(s) => {
                let name = |l: &str| {
                    if l.is_empty() {
                        DEFAULT_LABEL.to_string()
                    } else {
                        l.to_string()
                    }
                };
                let origin = if s.origin_label == s.label {
                    String::new()
                } else {
                    format!(", first issued under label {}", name(&s.origin_label))
                };
                format!(
                    "{} (issued under label {}{origin}, profile {})",
                    self.requester.identity(),
                    name(&s.label),
                    s.profile
                )
            }
            None => self.requester.identity(),
        }
    }
}

fn allowed_by(rules: &AuthRules, candidate: &Candidate) -> bool {
    match &candidate.requester {
        Requester::BasicUser { name } => {
            rules.basic_any || rules.basic_users.iter().any(|u| u == name)
        }
        Requester::ClientCert(_) => {
            rules.client_cert
                || candidate.issued_under.as_ref().is_some_and(|s| {
                    // Where the certificate's line began, not where it was last re-issued.
                    let label = if s.origin_label.is_empty() {
                        DEFAULT_LABEL
                    } else {
                        s.origin_label.as_str()
                    };
                    rules.client_cert_labels.iter().any(|l| l == label)
                        || rules.client_cert_profiles.contains(&s.profile)
                })
        }
        Requester::BootstrapCert(c) => {
            rules.bootstrap_any || rules.bootstrap_named.contains(&c.anchor)
        }
    }
}

/// The label's subject rule for a request authenticated by a certificate (see
/// [`SubjectRule`]); Basic-authenticated requests are bound by the profile instead.
fn subject_allowed(
    rule: &SubjectRule,
    requester: &Requester,
    csr: &VerifiedCsr,
) -> Result<(), String> {
    let cert: &VerifiedClientCert = match requester {
        Requester::BasicUser { .. } => return Ok(()),
        Requester::ClientCert(c) | Requester::BootstrapCert(c) => c,
    };
    match rule {
        SubjectRule::Any => Ok(()),
        SubjectRule::SameAsClientCert => {
            if cert.subject_name != csr.subject {
                return Err(format!(
                    "a request authenticated by certificate {:?} may only ask for that subject, not {:?} \
                     (subject = \"same-as-client-cert\")",
                    cert.subject,
                    csr.subject.to_string()
                ));
            }
            match &csr.requested.subject_alt_name {
                Some(san) if Some(san) != cert.subject_alt_name.as_ref() => Err(format!(
                    "a request authenticated by certificate {:?} may only ask for its subjectAltName (or none) \
                     (subject = \"same-as-client-cert\")",
                    cert.subject
                )),
                _ => Ok(()),
            }
        }
        SubjectRule::Pattern(pattern) => {
            let client_cn = cert
                .common_names()
                .and_then(|cns| cns.into_iter().next())
                .ok_or_else(|| {
                    format!(
                        "the subject pattern {pattern:?} needs a readable CN in the client certificate {:?}",
                        truncate(&cert.subject, 256)
                    )
                })?;
            let expanded = pattern.replace(CLIENT_CN, &regex_escape(&client_cn));
            let regex = regex_lite::Regex::new(&format!("^(?:{expanded})$"))
                .map_err(|e| format!("subject pattern {pattern:?}: {e}"))?;
            let Some(cns) = estuary_auth::common_names(&csr.subject) else {
                return Err(
                    "the CSR has a CN in a string type the subject pattern cannot check (use UTF8String or PrintableString)"
                        .into(),
                );
            };
            // A pattern speaks for the CN; every other attribute must be one the client
            // certificate has (no new organisation, UID, ...).
            let client_attributes: Vec<_> = cert
                .subject_name
                .0
                .iter()
                .flat_map(|rdn| rdn.0.iter())
                .collect();
            if let Some(extra) = csr
                .subject
                .0
                .iter()
                .flat_map(|rdn| rdn.0.iter())
                .filter(|atv| atv.oid != const_oid::db::rfc4519::CN)
                .find(|atv| !client_attributes.contains(atv))
            {
                return Err(format!(
                    "a request authenticated by certificate {:?} may add no subject attribute but the CN \
                     (subject = {pattern:?}); the CSR has {} that the certificate does not",
                    truncate(&cert.subject, 256),
                    extra.oid
                ));
            }
            if let Some(san) = &csr.requested.subject_alt_name {
                if Some(san) != cert.subject_alt_name.as_ref() {
                    return Err(format!(
                        "a request authenticated by certificate {:?} may only ask for its subjectAltName (or none) \
                         (subject = {pattern:?})",
                        cert.subject
                    ));
                }
            }
            if cns.is_empty() || !cns.iter().all(|cn| regex.is_match(cn)) {
                return Err(format!(
                    "a request authenticated by certificate {:?} may only ask for a CN matching {pattern:?} \
                     ({CLIENT_CN} = {client_cn:?}); the CSR asks for {:?}",
                    cert.subject,
                    csr.subject.to_string()
                ));
            }
            Ok(())
        }
    }
}

/// A name as RFC 5280 §7.1 compares names: attribute by attribute, string values without
/// case and with whitespace collapsed (the RFC 4518 essentials), so `CN=ESTUARY  Issuing CA`
/// matches `CN=Estuary Issuing CA`.
fn comparable_name(name: &x509_cert::name::Name) -> ComparableName {
    name.0
        .iter()
        .map(|rdn| {
            let mut atvs: Vec<(String, String)> = rdn
                .0
                .iter()
                .map(|atv| {
                    let any = &atv.value;
                    let text = estuary_wire::name::directory_string(any).or_else(|| {
                        any.decode_as::<der::asn1::BmpString>()
                            .ok()
                            .map(|s| s.to_string())
                    });
                    let value = match text {
                        Some(t) => t
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ")
                            .to_lowercase(),
                        // Not a string: compare the encoding.
                        None => hex::encode(any.value()),
                    };
                    (atv.oid.to_string(), value)
                })
                .collect();
            atvs.sort();
            atvs
        })
        .collect()
}

/// A name in the form [`comparable_name`] gives.
type ComparableName = Vec<Vec<(String, String)>>;

/// `text` as a regular expression that matches exactly it.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The response header of a 202 that names the waiting request (for `estuary requests
/// approve ID`).
pub const APPROVAL_REQUEST_ID: &str = "x-estuary-approval-request";

/// 202 Accepted with `Retry-After` (RFC 7030 §4.2.3), and an empty body: Bouncy Castle's
/// client reads `Retry-After` and closes the response unread, which fails on any body. The
/// waiting request's id is in a header and in the log.
fn accepted_response(id: i64, retry_after: Duration) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
        headers.insert(header::RETRY_AFTER, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&id.to_string()) {
        headers.insert(APPROVAL_REQUEST_ID, v);
    }
    response
}

fn crl_response(crl: &CrlPublisher, method: &Method) -> Result<Response<Full<Bytes>>, EstError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(EstError::MethodNotAllowed("GET"));
    }
    let der = crl
        .current()
        .ok_or_else(|| EstError::Internal("the CRL is not ready yet".into()))?;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/pkix-crl")
        .body(Full::new(der))
        .map_err(|e| EstError::Internal(e.to_string()))
}

fn generate_key(choice: KeyChoice) -> Result<FileKeySigner, EstError> {
    let pair = choice
        .generate()
        .map_err(|e| EstError::Internal(format!("key generation: {e}")))?;
    FileKeySigner::new(pair).map_err(|e| EstError::Internal(format!("key generation: {e}")))
}

/// The CSR's subject and extensions with another public key (serverkeygen).
fn with_public_key(csr: &VerifiedCsr, key: &FileKeySigner) -> Result<VerifiedCsr, EstError> {
    use der::Decode;
    use estuary_ca::CaSigner;
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der())
        .map_err(|e| EstError::Internal(e.to_string()))?;
    let key_type =
        estuary_wire::KeyType::from_spki(&spki).map_err(|e| EstError::Internal(e.to_string()))?;
    Ok(VerifiedCsr {
        public_key: spki,
        key_type,
        ..csr.clone()
    })
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

/// The result of [`EstService::authenticate`].
#[derive(Debug, Default)]
struct AuthOutcome {
    candidates: Vec<Candidate>,
    /// The password could not be checked now: this address or user name is over its share
    /// of password checks.
    password_busy: bool,
    /// What a failed credential claimed to be (`basic:NAME`), for the audit trail.
    claimed: String,
    failures: Vec<(&'static str, String)>,
}

impl AuthOutcome {
    fn fail(&mut self, code: &'static str, message: &str) {
        self.failures.push((code, message.to_string()));
    }

    fn failure_code(&self) -> &'static str {
        self.failures.first().map_or("no_credentials", |(c, _)| c)
    }

    fn failure_message(&self) -> String {
        if self.failures.is_empty() {
            "authentication required: send HTTP Basic credentials or a TLS client certificate issued by this CA"
                .into()
        } else {
            let messages: Vec<&str> = self.failures.iter().map(|(_, m)| m.as_str()).collect();
            format!("authentication failed: {}", messages.join("; "))
        }
    }
}

/// RFC 7030 §4.2.2: the Subject and SubjectAltName of a re-enrollment request must be
/// identical to those of the certificate being renewed; the key may be the same or new.
fn check_reenroll_identity(
    cert: &estuary_auth::VerifiedClientCert,
    csr: &VerifiedCsr,
) -> Result<(), EstError> {
    if cert.subject_name != csr.subject {
        return Err(EstError::BadRequest(format!(
            "simplereenroll: the CSR's subject {:?} differs from the certificate being renewed ({:?}); \
             RFC 7030 §4.2.2 requires them to be identical",
            csr.subject.to_string(),
            cert.subject
        )));
    }
    if cert.subject_alt_name != csr.requested.subject_alt_name {
        return Err(EstError::BadRequest(
            "simplereenroll: the CSR's subjectAltName differs from the certificate being renewed; \
             RFC 7030 §4.2.2 requires them to be identical"
                .into(),
        ));
    }
    Ok(())
}

fn certificate_record(
    issued: &IssuedCertificate,
    label: &str,
    origin_label: &str,
    requester: &str,
) -> CertificateRecord {
    CertificateRecord {
        serial: issued.serial_hex.clone(),
        subject: issued.subject.clone(),
        sans: issued.sans.clone(),
        not_before: unix(issued.not_before),
        not_after: unix(issued.not_after),
        sha256_thumbprint: issued.sha256_thumbprint.clone(),
        sha1_thumbprint: issued.sha1_thumbprint.clone(),
        profile: issued.profile.as_str().to_string(),
        label: label.to_string(),
        origin_label: origin_label.to_string(),
        requester: requester.to_string(),
        key_type: issued.key_type.config_name(),
        issued_at: unix_now(),
        revoked_at: None,
        der: issued.der.clone(),
    }
}

/// The base64 layout of a response. Estuary writes 64-column lines (RFC 8951 allows any
/// whitespace; `openssl base64 -d` needs lines), except for one known client whose decoder
/// does not skip whitespace: strongSwan `pki` 5.9 sends no `User-Agent` and no
/// `Content-Transfer-Encoding`, and its CSR as one line. A request of that shape gets one line
/// back. (IoT Edge, which also sends no `User-Agent`, accepts either layout.)
fn response_layout(headers: &HeaderMap, body: Option<&[u8]>) -> body::Layout {
    let no_user_agent = !headers.contains_key(header::USER_AGENT);
    let no_cte = !headers.contains_key("content-transfer-encoding");
    let single_line_body = body.is_none_or(|b| !b.trim_ascii().contains(&b'\n'));
    if no_user_agent && no_cte && single_line_body {
        body::Layout::SingleLine
    } else {
        body::Layout::Lines64
    }
}

/// 200 with a certs-only body: `application/pkcs7-mime; smime-type=certs-only`, base64
/// (RFC 7030 §4.1.3, §4.2.3; RFC 8951 §3).
fn certs_only_response(der: &[u8], layout: body::Layout) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body::encode_base64(der, layout))));
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

/// The first `max_chars` characters of `text`.
pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

fn is_enrollment(operation: &str) -> bool {
    matches!(
        operation,
        "simpleenroll" | "simplereenroll" | "serverkeygen"
    )
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
}
