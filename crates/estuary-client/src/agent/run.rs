//! Enrolling and renewing, as IoT Edge's certificate service does.
//!
//! Each pass looks at every managed certificate (the EST identity first): a missing or expired
//! one is enrolled, one past its renewal threshold is renewed, a failure is retried after the
//! retry period, indefinitely. Renewal is a `simpleenroll` authenticated by the current
//! certificate (plus Basic when configured), exactly as IoT Edge does it. The schedule is
//! derived from the certificates' dates and the wall clock on every pass, and the agent never
//! sleeps longer than [`MAX_SLEEP`], so a clock jump or a suspended machine is noticed.

use std::time::{Duration, SystemTime};

use estuary_ca::{FileKeySigner, KeyChoice};

use super::config::{AgentConfig, CertId, ManagedCert};
use super::state::{CertStatus, Current, StateDir, StatusFile};
use crate::csr::{build_csr, client_auth_extension, edge_ca_extensions, subject_with_common_name};
use crate::files;
use crate::{ClientError, EnrollOutcome, EstClient};

/// Longest sleep between passes.
pub const MAX_SLEEP: Duration = Duration::from_secs(30);

/// `t + d`, never panicking: a time beyond what the clock can hold becomes ~100 years ahead.
fn later(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(t)
}

/// How long to wait after a failed attempt. The server's `Retry-After` (already at most
/// [`crate::http::MAX_RETRY_AFTER`]) is believed up to the policy's retry period; and a valid
/// certificate is retried before it expires, whatever either says. At least one second.
fn wait_after_failure(
    server: Option<Duration>,
    policy_period: Duration,
    current: Option<&Current>,
    now: SystemTime,
) -> Duration {
    let cap = policy_period.min(crate::http::MAX_RETRY_AFTER);
    let mut wait = server.map_or(policy_period, |s| s.min(cap));
    if let Some(left) = current
        .filter(|c| c.valid_at(now))
        .and_then(|c| c.not_after.duration_since(now).ok())
    {
        wait = wait.min(left);
    }
    wait.max(Duration::from_secs(1))
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Certificates obtained in this pass.
    pub issued: Vec<CertId>,
    /// Failures, with the error.
    pub failed: Vec<(CertId, String)>,
    /// Certificates that are missing or expired after the pass.
    pub missing_or_expired: Vec<CertId>,
    /// Failures that are requests waiting for manual approval (202).
    pub pending: Vec<CertId>,
    /// The earliest time something is due.
    pub next_due: Option<SystemTime>,
}

impl PassReport {
    fn due(&mut self, at: SystemTime) {
        self.next_due = Some(self.next_due.map_or(at, |d| d.min(at)));
    }
}

/// The server's answer to one enrollment request.
enum Answer {
    /// 200: the certificate (checked) and whether the bootstrap certificate authenticated.
    Issued(Vec<Vec<u8>>, bool),
    /// 202: waiting for manual approval.
    Pending {
        retry_after: Option<Duration>,
        request_id: Option<String>,
    },
}

/// A request that failed; `rejected` for a 403 (the server will not issue for this request).
#[derive(Debug)]
struct RequestError {
    message: String,
    rejected: bool,
}

impl From<String> for RequestError {
    fn from(message: String) -> Self {
        RequestError {
            message,
            rejected: false,
        }
    }
}

/// Why no certificate was obtained, and when to try again if the server said.
#[derive(Debug)]
struct Failure {
    message: String,
    retry_after: Option<Duration>,
    /// The server holds the request for approval (202), with its id when it names it.
    pending: bool,
    pending_request: Option<String>,
}

impl From<ClientError> for RequestError {
    fn from(e: ClientError) -> Self {
        RequestError::from(e.to_string())
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::from(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            message,
            retry_after: None,
            pending: false,
            pending_request: None,
        }
    }
}

/// Checks the first certificate of a response before anything is replaced: it must be for the
/// requested key and not expired, and the Edge CA must be a CA certificate (some servers, e.g.
/// libest, issue CA:FALSE whatever the CSR asks; module certificates signed with it would not
/// verify).
fn check_issued(id: CertId, leaf: &[u8], key: &FileKeySigner) -> Result<(), ClientError> {
    if !files::key_matches(leaf, key) {
        return Err(ClientError::Unusable(
            "the first certificate of the response is not for the requested key".into(),
        ));
    }
    let summary = files::summarize(leaf)?;
    if summary.not_after <= SystemTime::now() {
        return Err(ClientError::Unusable(
            "the server issued a certificate that has already expired".into(),
        ));
    }
    if id == CertId::EdgeCa && !summary.is_ca {
        return Err(ClientError::Unusable(format!(
            "the server issued a certificate that is not a CA (no basicConstraints CA:TRUE) for the Edge CA; not installed: point [edge_ca] url (or cert_issuance.est.urls.{}) at a label whose profile issues CA certificates",
            CertId::EdgeCa
        )));
    }
    Ok(())
}

/// When a valid certificate is renewed: [`super::policy::RenewPolicy::renewal_due`].
fn renewal_due(cert: &ManagedCert, current: &Current, status: &CertStatus) -> SystemTime {
    cert.policy.renewal_due(
        current.not_before,
        current.not_after,
        current.chain.first().map_or(&[][..], Vec::as_slice),
        status.last_success.map(from_unix),
    )
}

/// The agent.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    state: StateDir,
    anchors: Vec<Vec<u8>>,
    status: StatusFile,
    /// Whether the first pass is over (a stored back-off is logged once, at start).
    announced_backoff: bool,
    /// Certificates whose shortened threshold was already reported.
    warned_threshold: std::collections::BTreeSet<CertId>,
    /// `--once`: this process exits after the pass (what to tell about a pending request).
    once: bool,
}

/// The key type IoT Edge uses for each certificate.
fn key_choice(id: CertId) -> KeyChoice {
    match id {
        CertId::EstId => KeyChoice::P256,
        CertId::DeviceId | CertId::EdgeCa => KeyChoice::Rsa2048,
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn from_unix(s: i64) -> SystemTime {
    later(SystemTime::UNIX_EPOCH, Duration::from_secs(s.max(0) as u64))
}

impl Agent {
    /// An agent for `config` keeping its files in `state_dir`.
    pub fn new(config: AgentConfig, state_dir: &std::path::Path) -> Result<Self, ClientError> {
        let state = StateDir::open(state_dir)?;
        let mut anchors = Vec::new();
        for path in &config.trusted_certs {
            anchors.extend(
                files::read_certificates(path)
                    .map_err(|e| e.context("cert_issuance.est.trusted_certs"))?,
            );
        }
        let status = state.read_status();
        Ok(Agent {
            config,
            state,
            anchors,
            status,
            announced_backoff: false,
            warned_threshold: Default::default(),
            once: false,
        })
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// One pass over every managed certificate, respecting the back-off after failures.
    pub async fn pass(&mut self) -> PassReport {
        self.pass_with(false).await
    }

    /// `--once`: "make sure the certificates exist now". Every missing, expired or due
    /// certificate is tried, whatever back-off earlier failures stored.
    pub async fn pass_now(&mut self) -> PassReport {
        self.once = true;
        self.pass_with(true).await
    }

    async fn pass_with(&mut self, ignore_backoff: bool) -> PassReport {
        let mut report = PassReport::default();
        for cert in self.config.certs.clone() {
            self.ensure(&cert, ignore_backoff, &mut report).await;
        }
        self.announced_backoff = true;
        self.save_status();
        report
    }

    fn save_status(&self) {
        if let Err(e) = self.state.write_status(&self.status) {
            tracing::error!(error = %e, "cannot write state.json");
        }
    }

    /// Passes until `shutdown` completes.
    pub async fn run(&mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let report = self.pass().await;
            let now = SystemTime::now();
            let sleep = report
                .next_due
                .and_then(|d| d.duration_since(now).ok())
                .unwrap_or(Duration::from_millis(200))
                .clamp(Duration::from_millis(200), MAX_SLEEP);
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Warns once per certificate when its time threshold is longer than the issued life allows.
    fn warn_if_threshold_shortened(&mut self, cert: &ManagedCert, c: &Current) {
        let threshold = cert.policy.threshold;
        if threshold.shortened_for(c.lifetime()) && self.warned_threshold.insert(cert.id) {
            tracing::warn!(
                cert = %cert.id,
                "renewal threshold {threshold} is longer than the server allows for this certificate (it was issued for {}): renewing when half of its life has passed instead (every ~{}); shorten the threshold or use a percentage such as 80%",
                estuary_wire::duration::format_duration(c.lifetime()),
                estuary_wire::duration::format_duration(c.lifetime().mul_f64(super::policy::MIN_LIFE_BEFORE_RENEWAL)),
            );
        }
    }

    /// A digest of what a request for `cert` depends on: URL, trust anchors, credentials
    /// (certificate files by content) and subject. A stored back-off applies only while it is
    /// unchanged.
    fn config_digest(&self, cert: &ManagedCert) -> String {
        let mut input = Vec::new();
        let mut add = |part: &[u8]| {
            input.extend_from_slice(&(part.len() as u64).to_be_bytes());
            input.extend_from_slice(part);
        };
        add(cert.url.to_string().as_bytes());
        add(cert.common_name.as_bytes());
        for anchor in &self.anchors {
            add(anchor);
        }
        if let Some((user, password)) = &cert.auth.basic {
            add(user.as_bytes());
            add(password.as_bytes());
        }
        for pair in [&cert.auth.bootstrap, &cert.auth.identity]
            .into_iter()
            .flatten()
        {
            for path in [&pair.cert, &pair.key] {
                add(path.as_os_str().as_encoded_bytes());
            }
            add(&std::fs::read(&pair.cert).unwrap_or_default());
        }
        estuary_ca::issue::thumbprint_sha256(&input)
    }

    async fn ensure(&mut self, cert: &ManagedCert, ignore_backoff: bool, report: &mut PassReport) {
        let id = cert.id;
        let loaded = self.state.recover(id).and_then(|()| self.state.load(id));
        let current = match loaded {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(cert = %id, error = %e, "stored certificate unusable; enrolling anew");
                None
            }
        };
        let now = SystemTime::now();
        let status = self
            .status
            .certs
            .entry(id.as_str().to_string())
            .or_default()
            .clone();
        let due = match &current {
            Some(c) if c.valid_at(now) => {
                self.warn_if_threshold_shortened(cert, c);
                renewal_due(cert, c, &status)
            }
            _ => now,
        };
        let digest = self.config_digest(cert);
        let config_changed = status.config_digest.as_deref() != Some(digest.as_str());
        if status.last_error.is_some() && config_changed && !self.announced_backoff {
            tracing::info!(cert = %id, "the configuration changed since the last failure: trying again now");
        }
        // A stored retry time further ahead than any wait this agent chooses (an older version
        // believed any Retry-After, e.g. 31 years) is brought back within it.
        let longest_wait = cert
            .policy
            .retry
            .retry_period(current.as_ref().map(Current::lifetime))
            .max(crate::http::MAX_RETRY_AFTER);
        let retry_at = status
            .next_retry
            .filter(|_| status.last_error.is_some() && !config_changed && !ignore_backoff)
            .map(|r| from_unix(r).min(later(now, longest_wait)));
        // A failure delays the next attempt until its retry time.
        let attempt_at = match retry_at {
            Some(r) if r > due => r,
            _ => due,
        };
        if attempt_at > now {
            if retry_at.is_some_and(|r| r > now) && !self.announced_backoff {
                tracing::warn!(
                    cert = %id,
                    last_error = status.last_error.as_deref().unwrap_or(""),
                    next_retry = files::format_time(attempt_at),
                    "the last attempt failed; waiting until the retry time (`estuary agent --once` tries now)"
                );
            }
            if !current.as_ref().is_some_and(|c| c.valid_at(now)) {
                report.missing_or_expired.push(id);
            }
            report.due(attempt_at);
            return;
        }
        let result = self.obtain(cert, current.as_ref()).await;
        if let Ok((new, _)) = &result {
            self.warn_if_threshold_shortened(cert, new);
        }
        let now = SystemTime::now();
        let entry = self
            .status
            .certs
            .entry(id.as_str().to_string())
            .or_default();
        entry.last_attempt = Some(unix(now));
        entry.config_digest = Some(digest.clone());
        match result {
            Ok((new, used_bootstrap)) => {
                let next = cert.policy.renewal_due(
                    new.not_before,
                    new.not_after,
                    new.chain.first().map_or(&[][..], Vec::as_slice),
                    Some(now),
                );
                tracing::info!(
                    cert = %id,
                    valid_until = files::format_time(new.not_after),
                    next_renewal = files::format_time(next),
                    "certificate {}",
                    if current.is_some() { "renewed" } else { "enrolled" }
                );
                *entry = CertStatus {
                    last_attempt: Some(unix(now)),
                    last_success: Some(unix(now)),
                    last_error: None,
                    next_retry: None,
                    issued_count: entry.issued_count + 1,
                    used_bootstrap,
                    config_digest: Some(digest),
                    ..CertStatus::default()
                };
                report.issued.push(id);
                report.due(next);
                // Recorded before the hook runs: a certificate that is installed is never shown
                // with the error of an earlier attempt, whenever the agent stops.
                self.save_status();
                self.run_on_renew(id).await;
            }
            Err(Failure {
                message: e,
                retry_after,
                pending,
                pending_request,
            }) => {
                let lifetime = current.as_ref().map(Current::lifetime);
                // A 202's Retry-After wins (RFC 7030 §4.2.3), within bounds; else the policy's
                // retry period.
                let retry = wait_after_failure(
                    retry_after,
                    cert.policy.retry.retry_period(lifetime),
                    current.as_ref(),
                    now,
                );
                tracing::warn!(cert = %id, error = %e, retry_in_s = retry.as_secs_f64(), "could not obtain certificate; will retry");
                entry.last_error = Some(e.clone());
                entry.pending_request = pending_request;
                let retry_at = later(now, retry);
                entry.next_retry = Some(unix(retry_at).max(unix(now).saturating_add(1)));
                report.failed.push((id, e));
                if pending {
                    report.pending.push(id);
                }
                report.due(retry_at);
                if !current.as_ref().is_some_and(|c| c.valid_at(now)) {
                    report.missing_or_expired.push(id);
                }
            }
        }
    }

    /// Requests a new certificate for `cert`; returns it and whether the bootstrap certificate
    /// authenticated the request.
    ///
    /// RFC 7030 §4.2.3: after a 202 the client sends the same request again. The key and the
    /// exact CSR bytes of a request the server holds for approval are kept in the state
    /// directory and resent until the server answers 200 (the certificate) or 403 (rejected).
    async fn obtain(
        &self,
        cert: &ManagedCert,
        current: Option<&Current>,
    ) -> Result<(Current, bool), Failure> {
        let id = cert.id;
        let now = SystemTime::now();
        let build = |key: &FileKeySigner| -> Result<Vec<u8>, ClientError> {
            let mut extensions = Vec::new();
            match id {
                CertId::EstId => extensions.push(client_auth_extension()?),
                CertId::EdgeCa => extensions.extend(edge_ca_extensions()?),
                CertId::DeviceId => {}
            }
            let subject = subject_with_common_name(&cert.common_name)?;
            build_csr(key, subject, extensions)
        };
        let pending = match self.state.load_pending(id) {
            Some((key, csr)) if crate::csr::same_request(&csr, &build(&key)?) => {
                tracing::info!(cert = %id, "sending the request that waits for approval again");
                Some((key, csr))
            }
            Some(_) => {
                tracing::warn!(cert = %id, "the request waiting for approval no longer matches the configuration; sending a new one");
                self.state.discard_pending(id);
                None
            }
            None => None,
        };
        let resending = pending.is_some();
        let (key, csr, staged) = match pending {
            Some((key, csr)) => (key, csr, true),
            None if cert.policy.rotate_key || current.is_none() => {
                let key = FileKeySigner::new(key_choice(id).generate().map_err(ClientError::from)?)
                    .map_err(ClientError::from)?;
                let csr = build(&key)?;
                (key, csr, true)
            }
            None => {
                let key = self.state.read_key(id)?;
                let csr = build(&key)?;
                (key, csr, false)
            }
        };
        if staged {
            self.state.stage_key(id, &key)?;
        }
        match self.request(cert, current, &key, &csr, now).await {
            Ok(Answer::Issued(chain, used_bootstrap)) => {
                self.state.discard_pending(id);
                self.state.commit(id, &chain)?;
                let stored = self.state.load(id)?.ok_or_else(|| {
                    Failure::from("the new certificate was not stored".to_string())
                })?;
                Ok((stored, used_bootstrap))
            }
            Ok(Answer::Pending {
                retry_after,
                request_id,
            }) => {
                self.state.discard_staged(id);
                self.state.save_pending(id, &key, &csr)?;
                let retry = wait_after_failure(
                    retry_after,
                    cert.policy
                        .retry
                        .retry_period(current.map(Current::lifetime)),
                    current,
                    SystemTime::now(),
                );
                let then = if self.once {
                    "once it is approved, run `estuary agent --once` again: it sends the same request and installs the certificate (a running agent also does, on its own)".to_string()
                } else {
                    format!(
                        "the agent sends the same request again in {}s (or run `estuary agent --once`)",
                        retry.as_secs()
                    )
                };
                Err(Failure {
                    message: crate::pending_instructions(request_id.as_deref(), retry_after, &then),
                    retry_after: Some(retry),
                    pending: true,
                    pending_request: request_id,
                })
            }
            Err(e) => {
                self.state.discard_staged(id);
                if e.rejected {
                    // 403: rejected (or refused by policy); a later attempt is a new request.
                    self.state.discard_pending(id);
                } else if resending {
                    // Any other failure: a request waiting for approval goes out again next time.
                    tracing::debug!(cert = %id, "keeping the request that waits for approval");
                }
                Err(Failure::from(e.message))
            }
        }
    }

    async fn request(
        &self,
        cert: &ManagedCert,
        current: Option<&Current>,
        key: &FileKeySigner,
        csr: &[u8],
        now: SystemTime,
    ) -> Result<Answer, RequestError> {
        let mut builder = EstClient::builder(cert.url.clone()).trust_anchors(self.anchors.clone());
        if let Some((user, password)) = &cert.auth.basic {
            builder = builder.basic_auth(user, password);
        }
        let (identity, used_bootstrap) = self.client_identity(cert, current, now)?;
        if let Some((chain, key_der)) = identity {
            builder = builder.client_identity(chain, key_der);
        }
        let client = builder.build()?;
        match client.simpleenroll(csr).await {
            Ok(EnrollOutcome::Issued(certs)) => {
                let leaf = certs.first().ok_or_else(|| {
                    RequestError::from("the response holds no certificate".to_string())
                })?;
                check_issued(cert.id, leaf, key)?;
                Ok(Answer::Issued(vec![leaf.clone()], used_bootstrap))
            }
            Ok(EnrollOutcome::Pending {
                retry_after,
                request_id,
            }) => Ok(Answer::Pending {
                retry_after,
                request_id,
            }),
            Err(e @ ClientError::Status { status: 403, .. }) => Err(RequestError {
                message: e.to_string(),
                rejected: true,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The TLS client certificate for a request, as IoT Edge chooses it:
    /// - the EST identity cert renews with itself, and falls back to the bootstrap
    ///   certificate when it is missing or expired;
    /// - in the bootstrap flow every other request uses the EST identity cert;
    /// - with `identity_cert`/`identity_pk`, that fixed identity;
    /// - otherwise (Basic) a renewal presents the certificate being renewed, if still valid.
    #[allow(clippy::type_complexity)]
    fn client_identity(
        &self,
        cert: &ManagedCert,
        current: Option<&Current>,
        now: SystemTime,
    ) -> Result<(Option<(Vec<Vec<u8>>, Vec<u8>)>, bool), ClientError> {
        let own = || -> Result<Option<(Vec<Vec<u8>>, Vec<u8>)>, ClientError> {
            match current {
                Some(c) if c.valid_at(now) => {
                    let key = self.state.read_key(cert.id)?;
                    Ok(Some((c.chain.clone(), key.key_pair().serialize_der())))
                }
                _ => Ok(None),
            }
        };
        let from_files =
            |pair: &super::config::CertAndKey| -> Result<(Vec<Vec<u8>>, Vec<u8>), ClientError> {
                let chain = files::read_certificates(&pair.cert)?;
                let key = files::read_key(&pair.key)?;
                Ok((chain, key.key_pair().serialize_der()))
            };
        match (cert.id, &cert.auth.bootstrap, &cert.auth.identity) {
            (CertId::EstId, Some(bootstrap), _) => match own()? {
                Some(id) => Ok((Some(id), false)),
                None => {
                    tracing::info!("EST identity certificate missing or expired: using the bootstrap certificate");
                    Ok((Some(from_files(bootstrap)?), true))
                }
            },
            (_, Some(_), _) => match self.state.load(CertId::EstId)? {
                Some(est_id) if est_id.valid_at(now) => {
                    let key = self.state.read_key(CertId::EstId)?;
                    Ok((Some((est_id.chain, key.key_pair().serialize_der())), false))
                }
                _ => Err(ClientError::Config(
                    "no valid EST identity certificate (est-id) yet".into(),
                )),
            },
            (_, None, Some(identity)) => Ok((Some(from_files(identity)?), false)),
            (_, None, None) => Ok((own()?, false)),
        }
    }

    async fn run_on_renew(&self, id: CertId) {
        let Some(command) = &self.config.on_renew else {
            return;
        };
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("ESTUARY_CERT_ID", id.as_str())
            .env("ESTUARY_CERT_FILE", self.state.cert_path(id))
            .env("ESTUARY_KEY_FILE", self.state.key_path(id))
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(Duration::from_secs(60), child).await {
            Ok(Ok(s)) if s.success() => {}
            Ok(Ok(s)) => tracing::warn!(cert = %id, status = %s, "on_renew command failed"),
            Ok(Err(e)) => {
                tracing::warn!(cert = %id, error = %e, "on_renew command could not start")
            }
            Err(_) => tracing::warn!(cert = %id, "on_renew command took more than 60s; killed"),
        }
    }

    /// Status lines for `estuary agent status`.
    pub fn status_report(&self) -> Vec<CertReport> {
        self.config
            .certs
            .iter()
            .map(|cert| {
                let status = self
                    .status
                    .certs
                    .get(cert.id.as_str())
                    .cloned()
                    .unwrap_or_default();
                let current = self.state.load(cert.id).ok().flatten();
                let summary = current
                    .as_ref()
                    .and_then(|c| c.chain.first())
                    .and_then(|leaf| files::summarize(leaf).ok());
                let next_renewal = current.as_ref().map(|c| renewal_due(cert, c, &status));
                let next_retry = status
                    .next_retry
                    .filter(|_| status.last_error.is_some())
                    .map(from_unix);
                CertReport {
                    id: cert.id,
                    next_retry,
                    url: cert.url.to_string(),
                    subject: summary.as_ref().map(|s| s.subject.clone()),
                    not_before: summary.as_ref().map(|s| s.not_before),
                    not_after: summary.as_ref().map(|s| s.not_after),
                    next_renewal,
                    status,
                }
            })
            .collect()
    }
}

/// One certificate in `estuary agent status`.
#[derive(Debug, Clone)]
pub struct CertReport {
    /// Which.
    pub id: CertId,
    /// EST URL.
    pub url: String,
    /// Subject of the current certificate.
    pub subject: Option<String>,
    /// Its notBefore.
    pub not_before: Option<SystemTime>,
    /// Its notAfter.
    pub not_after: Option<SystemTime>,
    /// When it will be renewed.
    pub next_renewal: Option<SystemTime>,
    /// After a failure: when the next attempt is made.
    pub next_retry: Option<SystemTime>,
    /// Bookkeeping.
    pub status: CertStatus,
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary_ca::CaSigner;
    use x509_cert::ext::pkix::BasicConstraints;

    fn self_signed(key: &FileKeySigner, ca: bool) -> Vec<u8> {
        use der::{Decode, Encode};
        let name = crate::csr::subject_with_common_name("aziot-edge CA dev").unwrap();
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).unwrap();
        let ext = crate::csr::raw_extension(
            const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS,
            true,
            BasicConstraints {
                ca,
                path_len_constraint: None,
            }
            .to_der()
            .unwrap(),
        )
        .unwrap();
        let now = SystemTime::now();
        estuary_ca::issue::sign_certificate(
            key,
            &name,
            name.clone(),
            spki,
            estuary_ca::issue::random_serial().unwrap(),
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
            vec![ext],
        )
        .unwrap()
        .1
    }

    #[test]
    fn a_servers_retry_after_is_bounded() {
        let now = SystemTime::now();
        let h = Duration::from_secs(3600);
        let day = Duration::from_secs(86_400);
        // No certificate: up to the policy's period.
        assert_eq!(wait_after_failure(Some(day), h, None, now), h);
        assert_eq!(
            wait_after_failure(Some(Duration::from_secs(60)), h, None, now),
            Duration::from_secs(60)
        );
        assert_eq!(wait_after_failure(None, h, None, now), h);
        // A long policy period still believes the server only up to a day.
        assert_eq!(
            wait_after_failure(Some(Duration::MAX), 30 * day, None, now),
            day
        );
        // A renewal never waits past the certificate's expiry.
        let current = Current {
            chain: Vec::new(),
            not_before: now - h,
            not_after: now + Duration::from_secs(600),
        };
        let w = wait_after_failure(Some(day), 30 * day, Some(&current), now);
        assert!(w <= Duration::from_secs(600), "{w:?}");
        assert!(
            wait_after_failure(None, 30 * day, Some(&current), now) <= Duration::from_secs(600)
        );
        assert!(later(now, Duration::MAX) > now);
    }

    #[test]
    fn an_edge_ca_certificate_that_is_not_a_ca_is_refused() {
        let key = FileKeySigner::new(KeyChoice::P256.generate().unwrap()).unwrap();
        let end_entity = self_signed(&key, false);
        let ca = self_signed(&key, true);
        let e = check_issued(CertId::EdgeCa, &end_entity, &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a CA") && e.contains("[edge_ca] url"), "{e}");
        assert!(check_issued(CertId::EdgeCa, &ca, &key).is_ok());
        // A device certificate need not be a CA.
        assert!(check_issued(CertId::DeviceId, &end_entity, &key).is_ok());
        let other = FileKeySigner::new(KeyChoice::P256.generate().unwrap()).unwrap();
        assert!(check_issued(CertId::DeviceId, &end_entity, &other).is_err());
    }
}
