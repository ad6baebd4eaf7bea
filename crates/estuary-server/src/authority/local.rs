//! This server's own CA: profile check, manual approval, signing, and the durable record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use estuary_auth::Requester;
use estuary_ca::{
    CertificateAuthority, CheckedRequest, FileKeySigner, IssuedCertificate, KeyChoice,
    PolicyContext,
};
use estuary_store::{
    AuditRecord, CertificateRecord, NewRequest, Outcome, RequestStatus, Store, StoreError,
};
use estuary_wire::csr::VerifiedCsr;
use http::StatusCode;
use x509_cert::ext::Extension;

use super::{Authority, EnrollRequest, Enrollment, Standing};
use crate::admission::{comparable_name, ComparableName};
use crate::config::Settings;
use crate::crl::CrlPublisher;
use crate::denials::DenialTally;
use crate::error::{EstError, ServerError};
use crate::est::{unix_now, Operation};
use crate::metrics::Metrics;
use crate::ratelimit::address_key;

/// Most requests one identity may have waiting for approval.
const MAX_PENDING_PER_REQUESTER: u64 = 100;
/// Most requests one source address (IPv6: one /64) may have waiting for approval.
const MAX_PENDING_PER_ADDRESS: u64 = 20;
/// Most requests a registration authority may have waiting for approval (for all the devices
/// behind it; each key still has at most [`MAX_PENDING_PER_KEY`]).
const MAX_PENDING_PER_RA: u64 = 10_000;
/// Most requests one public key may have waiting for approval: a client resends the same
/// CSR (RFC 7030 §4.2.3), so a second one for the same key is a client that lost track.
const MAX_PENDING_PER_KEY: u64 = 1;

/// The part of the settings a reload changes.
#[derive(Debug)]
struct IssuanceSettings {
    /// Certificate lifetime when the profile sets none.
    validity: Duration,
    /// Added to every issued certificate (the CRL distribution point).
    extra_extensions: Vec<Extension>,
    /// `Retry-After` of a request waiting for approval.
    approval_retry_after: Duration,
}

impl IssuanceSettings {
    fn from_settings(settings: &Settings) -> Result<Self, ServerError> {
        let extra_extensions = match &settings.crl.url {
            Some(url) => {
                vec![estuary_ca::crl::crl_distribution_points(url).map_err(ServerError::CrlUrl)?]
            }
            None => vec![],
        };
        Ok(IssuanceSettings {
            validity: settings.validity,
            extra_extensions,
            approval_retry_after: settings.approval_retry_after,
        })
    }
}

/// The CA of this server, its store, and its CRL.
#[derive(Debug)]
pub struct LocalAuthority {
    ca: CertificateAuthority,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    denials: Arc<DenialTally>,
    crl: Arc<CrlPublisher>,
    cacerts: Bytes,
    /// Subjects of this server's CA chain, as [`comparable_name`] gives them: no CA
    /// certificate may be issued with one.
    ca_subjects: Vec<ComparableName>,
    settings: ArcSwap<IssuanceSettings>,
    /// Signatures (RSA keys, PKCS#11 tokens) and key generations in blocking threads at once.
    signing_slots: Arc<tokio::sync::Semaphore>,
}

impl LocalAuthority {
    /// The authority of `ca`; the `/cacerts` body is encoded once.
    pub fn new(
        ca: CertificateAuthority,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        denials: Arc<DenialTally>,
        settings: &Settings,
    ) -> Result<Self, ServerError> {
        let cacerts = estuary_wire::pkcs7::certs_only_from_der(ca.chain_der())
            .map_err(ServerError::CaCertsEncoding)?;
        let ca_subjects = ca
            .chain_der()
            .iter()
            .filter_map(|d| {
                use der::Decode;
                x509_cert::Certificate::from_der(d)
                    .ok()
                    .map(|c| comparable_name(&c.tbs_certificate.subject))
            })
            .collect();
        let crl = Arc::new(CrlPublisher::new(
            ca.clone(),
            store.clone(),
            settings.crl.validity,
        ));
        Ok(LocalAuthority {
            ca,
            store,
            metrics,
            denials,
            crl,
            cacerts: Bytes::from(cacerts),
            ca_subjects,
            settings: ArcSwap::from_pointee(IssuanceSettings::from_settings(settings)?),
            signing_slots: Arc::new(tokio::sync::Semaphore::new(signing_slots())),
        })
    }

    /// The CA.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The CRL publisher.
    pub fn crl_publisher(&self) -> &Arc<CrlPublisher> {
        &self.crl
    }

    /// RFC 7030 §4.2.3: a request under a manual label is recorded and answered with 202 and
    /// `Retry-After` until an operator decides; the client repeats the same request.
    async fn approval(&self, request: &EnrollRequest<'_>) -> Result<Approval, EstError> {
        let settings = self.settings.load();
        let (operation, csr, requester) = (request.operation, &request.csr, request.requester);
        // One request per (label, operation, requester, CSR): an approval under one label, for
        // one operation or for one identity does not carry over to another.
        let identity = requester.identity();
        let request_hash = |with_identity: bool| {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            ctx.update(request.label_name.as_bytes());
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
        let mut existing = self.store.find_request(&hash).await.map_err(store_err)?;
        if existing.is_none() {
            // A request made before requests were keyed by identity (schema v3 and older).
            existing = self
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
            // The client renews with it (or its registration authority says so).
            let holds_it = request.renewing_serial.as_deref() == Some(serial.as_str());
            let spent = match self
                .store
                .certificate_by_serial(&serial)
                .await
                .map_err(store_err)?
            {
                Some(cert) => cert.revoked_at.is_some() || cert.not_after <= unix_now(),
                None => true,
            };
            if holds_it || spent {
                self.store
                    .retire_request(done.id)
                    .await
                    .map_err(store_err)?;
                existing = None;
            }
        }
        let waiting = match existing {
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
                // A registration authority is one address and one identity for many devices:
                // its requests are counted under its own name, with a larger cap.
                // Per device behind it (whom it forwards for) instead of per address, so that
                // one device cannot fill the RA's share.
                let (peer_key, max_per_requester) = match requester {
                    Requester::RegistrationAuthority { .. } => (
                        format!(
                            "{identity} for {}",
                            request.on_behalf_of.as_deref().unwrap_or("-")
                        ),
                        MAX_PENDING_PER_RA,
                    ),
                    _ => (
                        address_key(request.context.peer.ip()),
                        MAX_PENDING_PER_REQUESTER,
                    ),
                };
                let pending = self
                    .store
                    .pending_counts(&identity, &peer_key, &key_sha256)
                    .await
                    .map_err(store_err)?;
                if pending.by_key >= MAX_PENDING_PER_KEY {
                    return Err(EstError::TooManyRequests(settings.approval_retry_after)
                        .with_detail(
                            "a request for this public key is already waiting for approval; \
                         send that same CSR again instead of a new one (RFC 7030 §4.2.3)",
                        ));
                }
                if pending.by_address >= MAX_PENDING_PER_ADDRESS
                    || pending.by_requester >= max_per_requester
                {
                    return Err(EstError::TooManyRequests(settings.approval_retry_after)
                        .with_detail(
                        "too many requests from this address or identity are waiting for approval",
                    ));
                }
                let created = self
                    .store
                    .create_request(NewRequest {
                        csr_sha256: hash,
                        csr: request.body.to_vec(),
                        subject: estuary_wire::name::rfc4514(&csr.subject),
                        label: request.label_name.to_string(),
                        operation: operation.as_str().into(),
                        requester: identity.clone(),
                        peer: request.context.peer.to_string(),
                        peer_key,
                        key_sha256,
                        created_at: unix_now(),
                    })
                    .await
                    .map_err(store_err)?;
                let audit = audit_record(
                    request,
                    Outcome::Pending,
                    StatusCode::ACCEPTED,
                    None,
                    Some(format!("request {} waits for approval", created.id)),
                );
                self.store.record_audit(audit).await.map_err(store_err)?;
                created
            }
        };
        if waiting.requester != identity {
            return Err(EstError::Forbidden(format!(
                "request {} for this CSR was made by another identity",
                waiting.id
            )));
        }
        match waiting.status {
            RequestStatus::Pending => Ok(Approval::Answer(Box::new(Enrollment::Pending {
                id: Some(waiting.id),
                retry_after: settings.approval_retry_after,
            }))),
            RequestStatus::Approved => Ok(Approval::Proceed(waiting.id)),
            RequestStatus::Rejected => Err(EstError::Forbidden(format!(
                "request {} was rejected: {}",
                waiting.id,
                waiting.reason.as_deref().unwrap_or("no reason given")
            ))),
            RequestStatus::Issued => {
                if operation == Operation::ServerKeyGen {
                    return Err(EstError::Forbidden(format!(
                        "request {} was already answered with its key; the server does not keep keys (RFC 7030 §4.4)",
                        waiting.id
                    )));
                }
                // The client asked again after its certificate was issued: the same answer.
                let serial = waiting.serial.unwrap_or_default();
                let cert = self
                    .store
                    .certificate_by_serial(&serial)
                    .await
                    .map_err(store_err)?
                    .ok_or_else(|| {
                        EstError::Internal(format!("issued certificate {serial} not in the store"))
                    })?;
                // A client resending an answered request must not write a row each time.
                if self.denials.admit_authenticated(&identity) {
                    let audit = audit_record(
                        request,
                        Outcome::Repeated,
                        StatusCode::OK,
                        Some(&serial),
                        Some(format!("request {} answered again", waiting.id)),
                    );
                    self.store.record_audit(audit).await.map_err(store_err)?;
                }
                Ok(Approval::Answer(Box::new(Enrollment::Repeated {
                    certificate: cert.der,
                    serial,
                })))
            }
        }
    }

    /// Signs, then records durably; only then is the certificate released. A serial collision
    /// (astronomically rare with 126 random bits) is retried with a new serial.
    async fn issue_and_record(
        &self,
        request: &EnrollRequest<'_>,
        checked: &CheckedRequest<'static>,
        completes_request: Option<i64>,
    ) -> Result<IssuedCertificate, EstError> {
        let settings = self.settings.load_full();
        let metrics = &self.metrics;
        for _ in 0..3 {
            let started = Instant::now();
            let issued = if self.ca.signer().may_block() {
                // A slow signature (RSA CA key, a PKCS#11 token) must not hold an async worker
                // thread.
                let (ca, checked) = (self.ca.clone(), checked.clone());
                let settings = settings.clone();
                in_blocking_slot(&self.signing_slots, SIGNING_TIMEOUT, move || {
                    ca.issue(&checked, settings.validity, &settings.extra_extensions)
                })
                .await
                .map_err(|e| blocking_work_error(BlockingWork::Signature, e))?
            } else {
                self.ca
                    .issue(checked, settings.validity, &settings.extra_extensions)
            }
            .map_err(issuing_error)?;
            metrics.issuance_seconds.observe(started.elapsed());
            let origin = request
                .origin_label
                .as_deref()
                .unwrap_or(request.label_name);
            let record = certificate_record(
                &issued,
                request.label_name,
                origin,
                &request.requester.identity(),
            );
            let audit = audit_record(
                request,
                Outcome::Issued,
                StatusCode::OK,
                Some(&issued.serial_hex),
                request
                    .on_behalf_of
                    .as_ref()
                    .map(|who| format!("on behalf of {who}")),
            );
            let stored = Instant::now();
            let result = self
                .store
                .record_issued(record, audit, completes_request)
                .await;
            metrics.store_seconds.observe(stored.elapsed());
            match result {
                Ok(()) => {
                    metrics.issued(&checked.profile().name, request.label_name);
                    return Ok(issued);
                }
                Err(StoreError::DuplicateSerial(s)) => {
                    tracing::warn!(serial = s, "serial collision, issuing again");
                }
                Err(StoreError::RequestNotApproved(_)) => return Err(EstError::Conflict),
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(EstError::Internal(
            "could not find a free serial number".into(),
        ))
    }
}

#[async_trait::async_trait]
impl Authority for LocalAuthority {
    fn cacerts(&self) -> Bytes {
        self.cacerts.clone()
    }

    fn chain_der(&self) -> Vec<Vec<u8>> {
        self.ca.chain_der().to_vec()
    }

    async fn enroll(&self, request: EnrollRequest<'_>) -> Result<Enrollment, EstError> {
        let csr = &request.csr;
        let operation = request.operation;
        let profile = request.label.profile.select(csr);
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
        let basic_user = match request.requester {
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
                with_server_key_type.as_ref().unwrap_or(csr),
                PolicyContext { basic_user },
            )
            .map_err(|refusal| EstError::Forbidden(refusal.0))?
            .into_owned();

        // The certificate a registration authority says is being renewed: refused once revoked
        // here, even where the RA's CRL does not say so yet. (A client certificate's own
        // standing, revocation included, was read when it authenticated: no second read.)
        let renewed = match (&request.requester, &request.renewing_serial) {
            (Requester::RegistrationAuthority { .. }, Some(serial)) => self
                .store
                .certificate_by_serial(serial)
                .await
                .map_err(store_err)?,
            _ => None,
        };
        if renewed.as_ref().is_some_and(|c| c.revoked_at.is_some()) {
            return Err(EstError::Forbidden(
                "the certificate being renewed is revoked".into(),
            ));
        }
        // `manual-first`: the holder of a certificate renewing it (the same subject and
        // subjectAltName; for a registration authority, the certificate it names) needs no
        // new decision.
        let renewal = match request.requester {
            Requester::ClientCert(_) => request.origin_label.is_some(),
            // Only a certificate this same RA got under this label, still valid, with exactly
            // the CSR's subject and subjectAltName: an RA cannot skip the approval of a new key
            // for a name approved elsewhere.
            Requester::RegistrationAuthority { .. } => renewed.as_ref().is_some_and(|c| {
                c.requester == request.requester.identity()
                    && c.label == request.label_name
                    && c.not_after > unix_now()
                    && same_subject_and_san(&c.der, csr)
            }),
            _ => false,
        };
        let needs_approval =
            request.label.manual_approval && !(request.label.renewals_skip_approval && renewal);
        let completes_request = if needs_approval {
            match self.approval(&request).await? {
                Approval::Proceed(id) => Some(id),
                Approval::Answer(answer) => return Ok(*answer),
            }
        } else {
            None
        };
        // Key generation (RSA takes up to seconds) runs off the async worker threads, in the
        // same slots as signatures.
        let server_key = match server_key_type {
            Some(choice) => Some(
                in_blocking_slot(&self.signing_slots, SIGNING_TIMEOUT, move || {
                    generate_key(choice)
                })
                .await
                .map_err(|e| blocking_work_error(BlockingWork::KeyGeneration, e))??,
            ),
            None => None,
        };
        let checked = match &server_key {
            Some(key) => checked
                .with_public_key(with_public_key(csr, key)?.public_key)
                .map_err(|e| EstError::Internal(e.to_string()))?,
            None => checked,
        };
        match self
            .issue_and_record(&request, &checked, completes_request)
            .await
        {
            Ok(issued) => Ok(Enrollment::Issued {
                certificate: issued.der,
                serial: issued.serial_hex,
                server_key: server_key.map(Box::new),
            }),
            // A concurrent retry of the same approved request issued first: answer as for a
            // repeated request.
            Err(EstError::Conflict) => match self.approval(&request).await? {
                Approval::Answer(answer) => Ok(*answer),
                Approval::Proceed(_) => {
                    Err(EstError::Internal("approved request issued twice".into()))
                }
            },
            Err(e) => Err(e),
        }
    }

    async fn standing(&self, serial_hex: &str) -> Result<Standing, EstError> {
        match self.store.certificate_status(serial_hex).await {
            Ok(Some(status)) if status.revoked => Ok(Standing::Revoked),
            Ok(Some(status)) => Ok(Standing::Good(Some(status))),
            Ok(None) => Ok(Standing::Unknown),
            Err(e) => Err(store_err(e)),
        }
    }

    fn crl(&self) -> Option<Bytes> {
        self.crl.current()
    }

    fn crl_is_fresh(&self) -> bool {
        self.crl.is_fresh()
    }

    fn describe(&self) -> String {
        "issues certificates with its own CA".into()
    }

    fn reconfigure(&self, settings: &Settings) -> Result<(), ServerError> {
        self.settings
            .store(Arc::new(IssuanceSettings::from_settings(settings)?));
        Ok(())
    }

    async fn start(&self) -> Result<(), EstError> {
        self.crl
            .refresh()
            .await
            .map(|_| ())
            .map_err(|e| EstError::Internal(format!("signing the first CRL: {e}")))
    }

    fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let name = "estuary_ca_key_available";
        let _ = writeln!(
            out,
            "# HELP {name} Whether the CA key can sign (0: its hardware token failed its last signature, has not answered for 10 s, or refused the PIN).\n# TYPE {name} gauge\n{name} {}",
            u8::from(self.ca.signer().unavailable().is_none())
        );
    }

    /// A CA key that cannot sign (its token stopped answering, or refused the PIN) makes the
    /// server not ready: a load balancer sends enrollments to a node whose key signs.
    fn readiness_problems(&self) -> Vec<String> {
        self.ca
            .signer()
            .unavailable()
            .map(|why| format!("the CA key cannot sign ({why})"))
            .into_iter()
            .collect()
    }

    async fn run(self: Arc<Self>) {
        tokio::join!(self.crl.clone().run(), self.recheck_key_while_unavailable());
    }
}

/// How soon a CA key that could not sign is tried again; the wait doubles while the tries
/// keep failing, up to [`KEY_RECHECK_LONGEST`] (a login error a token does not report as a
/// refused PIN is then tried a few times an hour, not six times a minute).
const KEY_RECHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest wait between two tries of an unavailable CA key.
const KEY_RECHECK_LONGEST: std::time::Duration = std::time::Duration::from_secs(300);

/// Clears a flag when dropped: however a try ends (returns, panics), the next may start.
struct ClearOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl LocalAuthority {
    /// Tries a CA key that could not sign again (after [`KEY_RECHECK_INTERVAL`], then longer
    /// while it keeps failing), so that `/readyz` turns ready once its token is back, without
    /// waiting for an enrollment (which a load balancer would not send to a node that is not
    /// ready). One try at a time, in one of the signing slots. Never returns.
    async fn recheck_key_while_unavailable(&self) {
        let trying = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut wait = KEY_RECHECK_INTERVAL;
        loop {
            tokio::time::sleep(wait).await;
            if self.ca.signer().unavailable().is_none() {
                wait = KEY_RECHECK_INTERVAL;
                continue;
            }
            if trying.swap(true, std::sync::atomic::Ordering::AcqRel) {
                // The last try has not returned (a hung token): it reports when it does.
                continue;
            }
            let signer = self.ca.signer().clone();
            let clear = ClearOnDrop(Arc::clone(&trying));
            // If no slot is free the closure is dropped unrun, and clears the flag too.
            let _ = in_blocking_slot(&self.signing_slots, SIGNING_TIMEOUT, move || {
                let _clear = clear;
                signer.recheck();
            })
            .await;
            if self.ca.signer().unavailable().is_none() {
                tracing::info!("the CA key signs again");
                wait = KEY_RECHECK_INTERVAL;
            } else {
                wait = (wait * 2).min(KEY_RECHECK_LONGEST);
            }
        }
    }
}

/// What the approval step decided.
enum Approval {
    /// Issue now, completing this request.
    Proceed(i64),
    /// Answer with this (pending, or the certificate issued before).
    Answer(Box<Enrollment>),
}

/// Whether the certificate `der` has exactly the CSR's subject and subjectAltName (DER).
fn same_subject_and_san(der: &[u8], csr: &VerifiedCsr) -> bool {
    use der::Decode;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return false;
    };
    let tbs = &cert.tbs_certificate;
    let san = tbs
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME);
    tbs.subject == csr.subject
        && san.map(|e| e.extn_value.as_bytes()) == csr.requested.subject_alt_name.as_deref()
}

/// How long a client is asked to wait when the CA's token does not answer.
const TOKEN_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// The longest an issuance may wait for a signature made off the async threads (an RSA key
/// takes milliseconds, an HSM about as long; only a token that stopped answering takes this).
const SIGNING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How many signatures may be in blocking threads at once: two per core (an RSA key keeps
/// every core busy), and at least 8 (a network HSM's signatures wait on the network, and one
/// PKCS#11 session serializes them anyway).
fn signing_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (2 * cores).max(8)
}

/// Why work sent to a blocking thread by [`in_blocking_slot`] gave no answer.
#[derive(Debug)]
enum BlockingWorkError {
    /// Every slot stayed taken until the deadline.
    NoSlot,
    /// The work did not return before the deadline (it goes on in its thread, holding its slot).
    TimedOut,
    /// The thread panicked or the runtime is shutting down.
    Failed(String),
}

/// Runs `work` in a blocking thread once one of `slots` is free, and gives up at `timeout`
/// (the wait for a slot included). The slot is held until `work` returns, even after the
/// timeout: a token that stops answering holds as many blocking threads as there are slots,
/// not one per request (tokio's blocking pool, which the store also uses, would fill). What a
/// signature made after the timeout produces is never released.
async fn in_blocking_slot<R: Send + 'static>(
    slots: &Arc<tokio::sync::Semaphore>,
    timeout: std::time::Duration,
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, BlockingWorkError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let slot = match tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        Ok(Err(e)) => return Err(BlockingWorkError::Failed(e.to_string())),
        Err(_) => return Err(BlockingWorkError::NoSlot),
    };
    let running = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        work()
    });
    match tokio::time::timeout_at(deadline, running).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(BlockingWorkError::Failed(e.to_string())),
        Err(_) => Err(BlockingWorkError::TimedOut),
    }
}

/// How a client is answered when [`in_blocking_slot`] gave up on `work`.
fn blocking_work_error(work: BlockingWork, e: BlockingWorkError) -> EstError {
    let what = work.name();
    match e {
        BlockingWorkError::NoSlot => {
            tracing::warn!(
                slots = signing_slots(),
                "every blocking slot stayed busy for {} s ({what} queued): the CA key is slow or its token does not answer",
                SIGNING_TIMEOUT.as_secs()
            );
            EstError::Unavailable(BUSY_RETRY_AFTER, format!("the CA is busy ({what} queued)"))
        }
        // A signature that does not come is the CA key's token not answering.
        BlockingWorkError::TimedOut if work == BlockingWork::Signature => {
            issuing_error(estuary_ca::CaError::KeyUnavailable(format!(
                "no {what} within {} s",
                SIGNING_TIMEOUT.as_secs()
            )))
        }
        // Key generation uses no token: this machine is overloaded.
        BlockingWorkError::TimedOut => EstError::Unavailable(
            BUSY_RETRY_AFTER,
            format!(
                "the CA is busy (no {what} within {} s)",
                SIGNING_TIMEOUT.as_secs()
            ),
        ),
        BlockingWorkError::Failed(detail) => EstError::Internal(format!("{what}: {detail}")),
    }
}

/// What [`in_blocking_slot`] runs, for [`blocking_work_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockingWork {
    /// A signature with the CA key (a slow key, or a PKCS#11 token).
    Signature,
    /// A server-side key generation (serverkeygen).
    KeyGeneration,
}

impl BlockingWork {
    fn name(self) -> &'static str {
        match self {
            BlockingWork::Signature => "signature",
            BlockingWork::KeyGeneration => "key generation",
        }
    }
}

/// How long a client is asked to wait when every blocking slot is busy.
const BUSY_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// An issuance failure as the client sees it: a PKCS#11 token that does not answer (after one
/// reopened session and retry) is 503 with `Retry-After`, the rest 500.
fn issuing_error(e: estuary_ca::CaError) -> EstError {
    match e {
        estuary_ca::CaError::KeyUnavailable(detail) => {
            tracing::error!(error = %detail, "the CA key's PKCS#11 token is unavailable");
            EstError::Unavailable(
                TOKEN_RETRY_AFTER,
                "the CA's signing key (hardware token) is unavailable".into(),
            )
        }
        other => EstError::Internal(format!("issuing: {other}")),
    }
}

fn store_err(e: StoreError) -> EstError {
    if e.is_unavailable() {
        // Nothing was issued; a device that retries after a database failover succeeds.
        tracing::error!(error = %e, "certificate database unavailable");
        return EstError::Unavailable(
            std::time::Duration::from_secs(5),
            "the certificate database is unavailable".into(),
        );
    }
    EstError::Internal(format!("store: {e}"))
}

/// The audit event of an enrollment.
pub(crate) fn audit_record(
    request: &EnrollRequest<'_>,
    outcome: Outcome,
    status: StatusCode,
    serial: Option<&str>,
    reason: Option<String>,
) -> AuditRecord {
    AuditRecord {
        time: unix_now(),
        request_id: request.context.request_id.to_string(),
        peer: request.context.peer.to_string(),
        requester: request.requester.identity(),
        auth_method: request.context.auth_method.to_string(),
        label: request.label_name.to_string(),
        operation: request.operation.as_str().to_string(),
        outcome,
        status: status.as_u16(),
        serial: serial.map(str::to_string),
        reason,
    }
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

/// The store's row for an issued certificate.
pub(crate) fn certificate_record(
    issued: &IssuedCertificate,
    label: &str,
    origin_label: &str,
    requester: &str,
) -> CertificateRecord {
    CertificateRecord {
        serial: issued.serial_hex.clone(),
        subject: issued.subject.clone(),
        sans: issued.sans.clone(),
        not_before: crate::est::unix(issued.not_before),
        not_after: crate::est::unix(issued.not_after),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_token_that_stops_answering_holds_only_the_signing_slots() {
        let slots = Arc::new(tokio::sync::Semaphore::new(2));
        let started = Arc::new(AtomicUsize::new(0));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(std::sync::Mutex::new(released));
        let mut requests = Vec::new();
        for _ in 0..6 {
            let (slots, started, released) = (slots.clone(), started.clone(), released.clone());
            requests.push(tokio::spawn(async move {
                in_blocking_slot(&slots, Duration::from_millis(300), move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    // The token does not answer until the test says so.
                    let _ = released.lock().map(|r| r.recv());
                })
                .await
            }));
        }
        let mut outcomes = Vec::new();
        for request in requests {
            outcomes.push(request.await.unwrap());
        }
        // Two gave up waiting for the token, four waiting for a slot; only two threads are
        // stuck in the "library".
        let timed_out = outcomes
            .iter()
            .filter(|o| matches!(o, Err(BlockingWorkError::TimedOut)))
            .count();
        let no_slot = outcomes
            .iter()
            .filter(|o| matches!(o, Err(BlockingWorkError::NoSlot)))
            .count();
        assert_eq!((timed_out, no_slot), (2, 4), "{outcomes:?}");
        assert_eq!(started.load(Ordering::SeqCst), 2);
        assert_eq!(slots.available_permits(), 0);
        // A slot shortage is "busy" (503, Retry-After 5), not a failed token.
        let busy = blocking_work_error(BlockingWork::Signature, BlockingWorkError::NoSlot);
        assert!(matches!(busy, EstError::Unavailable(wait, _) if wait == BUSY_RETRY_AFTER));
        let token = blocking_work_error(BlockingWork::Signature, BlockingWorkError::TimedOut);
        assert!(matches!(token, EstError::Unavailable(wait, _) if wait == TOKEN_RETRY_AFTER));
        // A slow key generation is not blamed on the token.
        let keygen = blocking_work_error(BlockingWork::KeyGeneration, BlockingWorkError::TimedOut);
        assert!(
            matches!(&keygen, EstError::Unavailable(wait, why) if *wait == BUSY_RETRY_AFTER && !why.contains("token")),
            "{keygen:?}"
        );
        // When the token answers again, the slots come back and signing works.
        drop(release);
        let answer = in_blocking_slot(&slots, Duration::from_secs(5), || 7).await;
        assert!(matches!(answer, Ok(7)), "{answer:?}");
    }
}
