//! The EST endpoints (RFC 7030 §3.2.2) over the CA, auth and store.
//!
//! A request goes: [`route`] (path -> label + operation) -> method check ->
//! [`EstService::authenticate`] (a typed [`Requester`]) -> body decode (a verified CSR) ->
//! profile check -> [`CertificateAuthority::issue`] -> [`Store::record_issued`] (durable) ->
//! certs-only response.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use estuary_auth::{parse_basic_authorization, BasicUsers, ClientCertVerifier, Requester};
use estuary_ca::{CertificateAuthority, IssuedCertificate, ProfileSelection};
use estuary_store::{AuditRecord, CertificateRecord, Outcome, Store, StoreError};
use estuary_wire::csr::{decode_request_body, VerifiedCsr};
use estuary_wire::{body, media, pkcs7};
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::config::{is_operation, Limits};
use crate::error::EstError;

/// The path prefix of every EST endpoint (RFC 7030 §3.2.2, RFC 5785).
pub const WELL_KNOWN: &str = "/.well-known/est";

/// What the TLS accept loop learned about a connection, captured once.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The peer address.
    pub peer: SocketAddr,
    /// The client certificate chain as presented (leaf first), if any.
    pub client_chain: Option<Vec<Vec<u8>>>,
}

/// An EST operation (RFC 7030 §3.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /cacerts` (§4.1).
    CaCerts,
    /// `POST /simpleenroll` (§4.2.1).
    SimpleEnroll,
    /// `POST /simplereenroll` (§4.2.2).
    SimpleReenroll,
    /// `GET /csrattrs` (§4.5).
    CsrAttrs,
    /// `POST /fullcmc` (§4.3).
    FullCmc,
    /// `POST /serverkeygen` (§4.4).
    ServerKeyGen,
}

impl Operation {
    fn parse(segment: &str) -> Option<Self> {
        Some(match segment {
            "cacerts" => Operation::CaCerts,
            "simpleenroll" => Operation::SimpleEnroll,
            "simplereenroll" => Operation::SimpleReenroll,
            "csrattrs" => Operation::CsrAttrs,
            "fullcmc" => Operation::FullCmc,
            "serverkeygen" => Operation::ServerKeyGen,
            _ => return None,
        })
    }

    /// The operation's path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::CaCerts => "cacerts",
            Operation::SimpleEnroll => "simpleenroll",
            Operation::SimpleReenroll => "simplereenroll",
            Operation::CsrAttrs => "csrattrs",
            Operation::FullCmc => "fullcmc",
            Operation::ServerKeyGen => "serverkeygen",
        }
    }

    fn allowed_method(self) -> Method {
        match self {
            Operation::CaCerts | Operation::CsrAttrs => Method::GET,
            _ => Method::POST,
        }
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

/// Per-request facts for the log line and the audit trail.
#[derive(Debug, Default)]
struct RequestFacts {
    request_id: String,
    auth_method: &'static str,
    requester: String,
    label: String,
    operation: &'static str,
    serial: Option<String>,
}

/// Everything the EST endpoints need, shared by all connections. No lock is held across a
/// request: the CA key, user table and verifier are read-only; the store batches writes.
#[derive(Debug)]
pub struct EstService {
    ca: CertificateAuthority,
    cacerts_der: Bytes,
    csrattrs_body: Option<Bytes>,
    store: Arc<dyn Store>,
    users: Arc<BasicUsers>,
    verifier: ClientCertVerifier,
    validity: Duration,
    default_profile: ProfileSelection,
    labels: BTreeMap<String, ProfileSelection>,
    limits: Limits,
    request_prefix: String,
    request_counter: AtomicU64,
    /// Bounds concurrent argon2 verifications (each costs ~19 MiB and a core for ~15 ms), so a
    /// flood of wrong passwords cannot exhaust memory or starve issuance.
    password_checks: Arc<tokio::sync::Semaphore>,
}

/// Inputs for [`EstService::new`].
#[derive(Debug)]
pub struct EstServiceParts {
    /// The issuing CA.
    pub ca: CertificateAuthority,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Basic users.
    pub users: Arc<BasicUsers>,
    /// Client certificate verifier.
    pub verifier: ClientCertVerifier,
    /// Issued certificate lifetime.
    pub validity: Duration,
    /// Profile for unlabeled requests.
    pub default_profile: ProfileSelection,
    /// Labels.
    pub labels: BTreeMap<String, ProfileSelection>,
    /// `/csrattrs` OIDs.
    pub csrattrs: Vec<const_oid::ObjectIdentifier>,
    /// Limits.
    pub limits: Limits,
}

impl EstService {
    /// Builds the service; the `/cacerts` and `/csrattrs` bodies are encoded once here.
    pub fn new(parts: EstServiceParts) -> Result<Self, String> {
        let cacerts = pkcs7::certs_only_from_der(parts.ca.chain_der())
            .map_err(|e| format!("encoding /cacerts: {e}"))?;
        let csrattrs_body = if parts.csrattrs.is_empty() {
            None
        } else {
            let der = estuary_wire::csrattrs::encode_oids(&parts.csrattrs)
                .map_err(|e| format!("encoding /csrattrs: {e}"))?;
            Some(Bytes::from(body::encode_base64_lines(&der)))
        };
        let mut prefix = [0u8; 3];
        aws_lc_rs::rand::fill(&mut prefix).map_err(|_| "no randomness".to_string())?;
        Ok(EstService {
            cacerts_der: Bytes::from(cacerts),
            csrattrs_body,
            ca: parts.ca,
            store: parts.store,
            users: parts.users,
            verifier: parts.verifier,
            validity: parts.validity,
            default_profile: parts.default_profile,
            labels: parts.labels,
            limits: parts.limits,
            request_prefix: hex::encode(prefix),
            request_counter: AtomicU64::new(1),
            password_checks: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        })
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
            ..Default::default()
        };
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let result = self.dispatch(&conn, request, &mut facts).await;
        let (response, denial) = match result {
            Ok(r) => (r, None),
            Err(e) => {
                if let EstError::Internal(detail) = &e {
                    tracing::error!(request_id, error = %detail, "internal error");
                }
                let reason = e.public_message();
                (e.into_response(&request_id), Some(reason))
            }
        };
        let status = response.status();
        tracing::info!(
            request_id,
            peer = %conn.peer,
            method = %method,
            path,
            auth = facts.auth_method,
            label = facts.label,
            status = status.as_u16(),
            serial = facts.serial.as_deref().unwrap_or("-"),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        if let (Some(reason), true) = (denial, is_enrollment(facts.operation)) {
            let audit = self.audit(&conn, &facts, Outcome::Denied, status, Some(reason));
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.record_audit(audit).await {
                    tracing::error!(error = %e, "could not record audit event");
                }
            });
        }
        response
    }

    async fn dispatch(
        &self,
        conn: &ConnectionInfo,
        request: Request<Incoming>,
        facts: &mut RequestFacts,
    ) -> Result<Response<Full<Bytes>>, EstError> {
        let (label, operation) = route(request.uri().path())?;
        facts.operation = operation.as_str();
        let profile = match label {
            None => self.default_profile,
            Some(l) => {
                facts.label = l.to_string();
                *self
                    .labels
                    .get(l)
                    .ok_or_else(|| EstError::NotFound(format!("unknown EST label {l:?}")))?
            }
        };
        let allowed = operation.allowed_method();
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
            Operation::ServerKeyGen => Err(EstError::NotImplemented("serverkeygen")),
            Operation::SimpleEnroll | Operation::SimpleReenroll => {
                self.enroll(operation, profile, conn, request, facts).await
            }
        }
    }

    async fn enroll(
        &self,
        operation: Operation,
        profile: ProfileSelection,
        conn: &ConnectionInfo,
        request: Request<Incoming>,
        facts: &mut RequestFacts,
    ) -> Result<Response<Full<Bytes>>, EstError> {
        let auth = self.authenticate(conn, request.headers()).await;
        facts.auth_method = auth.requester.as_ref().map_or("none", Requester::method);
        facts.requester = auth
            .requester
            .as_ref()
            .map_or_else(|| auth.claimed.clone(), Requester::identity);
        let failure = auth.failure_message();
        let requester = match (operation, auth.requester) {
            (_, None) => return Err(EstError::Unauthorized(failure)),
            // RFC 7030 §4.2.2: re-enrollment is authenticated by the certificate being renewed.
            (Operation::SimpleReenroll, Some(Requester::ClientCert(cert))) => Requester::ClientCert(cert),
            (Operation::SimpleReenroll, Some(_)) => {
                return Err(EstError::Forbidden(
                    "simplereenroll requires the certificate being renewed (issued by this CA, valid, not revoked) \
                     as the TLS client certificate; use simpleenroll for a first enrollment"
                        .into(),
                ))
            }
            (_, Some(r)) => r,
        };

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

        if let Requester::ClientCert(cert) = &requester {
            if operation == Operation::SimpleReenroll {
                check_reenroll_identity(cert, &csr)?;
            }
        }
        let profile = profile.select(&csr);
        profile
            .check(&csr)
            .map_err(|refusal| EstError::Forbidden(refusal.0))?;

        let issued = self
            .issue_and_record(&csr, profile, &requester, conn, facts)
            .await?;
        let der = pkcs7::certs_only(std::slice::from_ref(&issued.certificate))
            .map_err(|e| EstError::Internal(e.to_string()))?;
        Ok(certs_only_response(&der, layout))
    }

    /// Signs, then records durably; only then is the certificate released. A serial collision
    /// (astronomically rare with 126 random bits) is retried with a new serial.
    async fn issue_and_record(
        &self,
        csr: &VerifiedCsr,
        profile: estuary_ca::Profile,
        requester: &Requester,
        conn: &ConnectionInfo,
        facts: &mut RequestFacts,
    ) -> Result<IssuedCertificate, EstError> {
        for _ in 0..3 {
            let issued = self
                .ca
                .issue(csr, profile, self.validity)
                .map_err(|e| EstError::Internal(format!("issuing: {e}")))?;
            facts.serial = Some(issued.serial_hex.clone());
            let record = certificate_record(&issued, &facts.label, &requester.identity());
            let audit = self.audit(conn, facts, Outcome::Issued, StatusCode::OK, None);
            match self.store.record_issued(record, audit).await {
                Ok(()) => return Ok(issued),
                Err(StoreError::DuplicateSerial(s)) => {
                    tracing::warn!(serial = s, "serial collision, issuing again");
                }
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
            return Err(EstError::PayloadTooLarge(max));
        }
        let collected = tokio::time::timeout(
            self.limits.body_timeout,
            Limited::new(request.into_body(), max).collect(),
        )
        .await
        .map_err(|_| EstError::RequestTimeout)?;
        match collected {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(EstError::PayloadTooLarge(max))
            }
            Err(e) => Err(EstError::BadRequest(format!(
                "could not read the request body: {e}"
            ))),
        }
    }

    /// Turns the connection's client certificate and the `Authorization` header into a
    /// requester. Preference: a certificate from this CA, then a bootstrap certificate, then
    /// Basic. A presented credential that fails is reported but does not hide one that works
    /// (an expired device certificate plus a good password authenticates by password).
    async fn authenticate(&self, conn: &ConnectionInfo, headers: &HeaderMap) -> AuthOutcome {
        let mut outcome = AuthOutcome::default();
        let now = SystemTime::now();
        if let Some(chain) = &conn.client_chain {
            match self.verifier.verify_ours(chain, now) {
                Ok(cert) => match self.store.is_revoked(&cert.serial_hex).await {
                    Ok(Some(true)) => outcome
                        .failures
                        .push("client certificate is revoked".into()),
                    Ok(None) => outcome.failures.push(
                        "client certificate is not in this server's certificate store".into(),
                    ),
                    Ok(Some(false)) => {
                        outcome.requester = Some(Requester::ClientCert(cert));
                        return outcome;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "revocation check failed");
                        outcome
                            .failures
                            .push("client certificate could not be checked".into());
                    }
                },
                Err(ours) => match self.verifier.verify_bootstrap(chain, now) {
                    Ok(cert) => {
                        outcome.requester = Some(Requester::BootstrapCert(cert));
                        return outcome;
                    }
                    Err(_) => outcome.failures.push(ours.to_string()),
                },
            }
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return outcome;
        };
        let Some((user, password)) = value.to_str().ok().and_then(parse_basic_authorization) else {
            outcome
                .failures
                .push("Authorization header is not HTTP Basic (RFC 7617)".into());
            return outcome;
        };
        outcome.claimed = format!("basic:{}", truncate(&user, 128));
        let ok = match self.users.check_cached(&user, &password) {
            Some(ok) => ok,
            None => {
                let users = self.users.clone();
                let (u, p) = (user.clone(), password);
                match self.password_checks.clone().acquire_owned().await {
                    Ok(permit) => tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        users.verify(&u, &p)
                    })
                    .await
                    .unwrap_or(false),
                    Err(_) => false,
                }
            }
        };
        if ok {
            outcome.requester = Some(Requester::BasicUser { name: user });
        } else {
            outcome.failures.push("wrong user name or password".into());
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
            outcome: outcome.as_str().to_string(),
            status: status.as_u16(),
            serial: facts.serial.clone(),
            reason,
        }
    }
}

/// The result of [`EstService::authenticate`].
#[derive(Debug, Default)]
struct AuthOutcome {
    requester: Option<Requester>,
    /// What the failed credential claimed to be (`basic:NAME`), for the audit trail.
    claimed: String,
    failures: Vec<String>,
}

impl AuthOutcome {
    fn failure_message(&self) -> String {
        if self.failures.is_empty() {
            "authentication required: send HTTP Basic credentials or a TLS client certificate issued by this CA"
                .into()
        } else {
            format!("authentication failed: {}", self.failures.join("; "))
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

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

fn is_enrollment(operation: &str) -> bool {
    matches!(operation, "simpleenroll" | "simplereenroll")
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unix_now() -> i64 {
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
