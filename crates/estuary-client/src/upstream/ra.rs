//! The RA's own certificates, in its data directory, enrolled and renewed through the upstream:
//!
//! - the RA certificate (`ra-cert.pem`, `ra-key.pem`): its TLS client certificate towards the
//!   upstream. Enrolled by `simpleenroll` with the configured credential (Basic and/or a
//!   bootstrap certificate), renewed by `simplereenroll` with itself as client certificate.
//! - the RA server certificate (`ra-server-cert.pem`, `ra-server-key.pem`): the TLS server
//!   certificate the RA presents to its own clients, with the configured DNS names and IPs.
//!   Enrolled and renewed by `simpleenroll` with the configured credential plus the RA
//!   certificate as client certificate.
//!
//! Keys are P-256, new on each renewal, written with mode 0600; every file is written
//! atomically. A request the upstream holds for approval (202) is kept on disk
//! (`<key file>.new`, `<key file>.csr.new`) and sent again byte for byte, so that the
//! upstream's operator approves one request, not one per attempt.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use estuary_ca::issue::SanEntry;
use estuary_ca::{FileKeySigner, KeyChoice};

use super::{outcome_of, ForwardOutcome, Forwarded, UpstreamClient, UpstreamError};
use crate::agent::policy::Threshold;
use crate::{csr, files, ClientError};

/// The RA server certificate file (leaf first, then the upstream's CA chain).
pub const RA_SERVER_CERT_FILE: &str = "ra-server-cert.pem";
/// The RA server certificate's key.
pub const RA_SERVER_KEY_FILE: &str = "ra-server-key.pem";
/// The RA (client) certificate file.
pub const RA_CERT_FILE: &str = "ra-cert.pem";
/// The RA certificate's key.
pub const RA_KEY_FILE: &str = "ra-key.pem";

/// The RA's certificates and how to get them.
#[derive(Debug, Clone)]
pub struct RaIdentity {
    /// The directory of the four files (the RA's data directory).
    pub dir: PathBuf,
    /// The server certificate's subjectAltName: DNS names and IPs.
    pub sans: Vec<SanEntry>,
    /// The upstream label to enroll the server certificate at.
    pub server_label: Option<String>,
    /// The upstream label to enroll the RA certificate at.
    pub ra_label: Option<String>,
    /// The CN of both certificates (e.g. the first SAN, or the host name).
    pub common_name: String,
    /// When to renew: 80% of the lifetime by default, as IoT Edge does.
    pub threshold: Threshold,
    /// How long to wait after a failed renewal: 4% of the lifetime by default.
    pub retry: Threshold,
}

/// One certificate in force.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProvisionedCert {
    /// The certificate file.
    pub cert_path: PathBuf,
    /// The key file.
    pub key_path: PathBuf,
    /// The certificates of the file (DER, leaf first).
    pub chain: Vec<Vec<u8>>,
    /// The leaf's notBefore.
    pub not_before: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
    /// When to try to renew it next (its threshold, or a retry after a failure).
    pub renew_at: SystemTime,
    /// Whether it was enrolled or renewed by this call.
    pub changed: bool,
}

/// The result of [`RaIdentity::ensure`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Provisioned {
    /// Whether either certificate was enrolled or renewed (reload the TLS configuration).
    pub changed: bool,
    /// The RA server certificate.
    pub server: ProvisionedCert,
    /// The RA certificate.
    pub ra: ProvisionedCert,
    /// What went wrong but did not stop the RA (a failed renewal of a certificate still
    /// valid, an upstream out of reach): also logged.
    pub warnings: Vec<String>,
}

impl Provisioned {
    /// When to call [`RaIdentity::ensure`] again: the earlier renewal time of the two.
    pub fn next_renewal(&self) -> SystemTime {
        self.server.renew_at.min(self.ra.renew_at)
    }
}

/// Which certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Ra,
    Server,
}

impl Which {
    fn what(self) -> &'static str {
        match self {
            Which::Ra => "the RA certificate",
            Which::Server => "the RA server certificate",
        }
    }
}

/// A certificate and key read from the directory.
struct Current {
    chain: Vec<Vec<u8>>,
    key: FileKeySigner,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Current {
    fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

fn local(context: String) -> impl FnOnce(ClientError) -> UpstreamError {
    move |source| UpstreamError::Local { context, source }
}

impl RaIdentity {
    /// The RA's certificates in `dir`, renewed at 80% of their lifetime (retry after 4%).
    pub fn new(
        dir: impl Into<PathBuf>,
        sans: Vec<SanEntry>,
        server_label: Option<String>,
        ra_label: Option<String>,
        common_name: impl Into<String>,
    ) -> Self {
        RaIdentity {
            dir: dir.into(),
            sans,
            server_label: server_label.filter(|l| !l.is_empty()),
            ra_label: ra_label.filter(|l| !l.is_empty()),
            common_name: common_name.into(),
            threshold: Threshold::Percent(80),
            retry: Threshold::Percent(4),
        }
    }

    fn paths(&self, which: Which) -> (PathBuf, PathBuf) {
        let (c, k) = match which {
            Which::Ra => (RA_CERT_FILE, RA_KEY_FILE),
            Which::Server => (RA_SERVER_CERT_FILE, RA_SERVER_KEY_FILE),
        };
        (self.dir.join(c), self.dir.join(k))
    }

    /// Makes sure both certificates exist and are not due for renewal: enrolls what is
    /// missing (or unusable, or expired), renews what is due, and puts the RA certificate in
    /// `client` as its client identity. With certificates still valid, a failed renewal (an
    /// upstream out of reach, a refusal, a 202) is a warning and they stay in use; without
    /// them it is an error ([`UpstreamError::Pending`] for a 202: ask again after its
    /// `retry_after`). One call at a time per directory. A request held for approval is sent
    /// again as it was: a change of SANs or CN applies to the request after it.
    pub async fn ensure(&self, client: &UpstreamClient) -> Result<Provisioned, UpstreamError> {
        ensure_dir(&self.dir)?;
        let mut warnings = Vec::new();
        let mut cacerts = None;
        let ra = self
            .ensure_one(client, Which::Ra, &mut warnings, &mut cacerts)
            .await?;
        let (ra_prov, ra_key) = ra;
        if client.current_leaf().as_deref() != ra_prov.chain.first().map(Vec::as_slice) {
            let pkcs8 = zeroize::Zeroizing::new(ra_key.key_pair().serialize_der());
            client.set_identity(ra_prov.chain.clone(), pkcs8.to_vec())?;
        }
        let (server_prov, _) = self
            .ensure_one(client, Which::Server, &mut warnings, &mut cacerts)
            .await?;
        for w in &warnings {
            tracing::warn!(upstream = %client.url(), "{w}");
        }
        Ok(Provisioned {
            changed: ra_prov.changed || server_prov.changed,
            server: server_prov,
            ra: ra_prov,
            warnings,
        })
    }

    fn load(&self, which: Which, warnings: &mut Vec<String>) -> Option<Current> {
        let (cert_path, key_path) = self.paths(which);
        if !files::is_present(&cert_path) && !files::is_present(&key_path) {
            return None;
        }
        let loaded = (|| -> Result<Current, String> {
            let chain = files::read_certificates(&cert_path).map_err(|e| e.to_string())?;
            let leaf = chain.first().ok_or("no certificate")?;
            let key = files::read_own_key(&key_path).map_err(|e| e.to_string())?;
            if !files::key_matches(leaf, &key) {
                return Err(format!(
                    "{} is not the key of {}",
                    key_path.display(),
                    cert_path.display()
                ));
            }
            let summary = files::summarize(leaf).map_err(|e| e.to_string())?;
            if summary.not_after <= SystemTime::now() {
                return Err(format!(
                    "{} expired at {}",
                    cert_path.display(),
                    files::format_time(summary.not_after)
                ));
            }
            Ok(Current {
                chain,
                key,
                not_before: summary.not_before,
                not_after: summary.not_after,
            })
        })();
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                warnings.push(format!(
                    "{} is not usable ({e}): enrolling a new one",
                    which.what()
                ));
                None
            }
        }
    }

    /// The key and CSR of a request the upstream holds (202), if they are on disk and belong
    /// together.
    fn load_pending(&self, which: Which) -> Option<(FileKeySigner, Vec<u8>)> {
        let (_, key_path) = self.paths(which);
        let (pk, pc) = pending_paths(&key_path);
        if !files::is_present(&pk) || !files::is_present(&pc) {
            return None;
        }
        let key = files::read_own_key(&pk).ok()?;
        let csr = files::read_own_csr(&pc).ok()?;
        csr::csr_is_for_key(&csr, &key).then_some((key, csr))
    }

    fn build_csr(
        &self,
        which: Which,
        key: &FileKeySigner,
        current: Option<&Current>,
    ) -> Result<Vec<u8>, UpstreamError> {
        let context = || format!("building the CSR of {}", which.what());
        match (which, current) {
            // simplereenroll: the subject and SAN of the certificate renewed, exactly.
            (Which::Ra, Some(c)) => {
                let leaf = c.chain.first().map(Vec::as_slice).unwrap_or_default();
                csr::renewal_csr(key, leaf).map_err(local(context()))
            }
            // The RA certificate carries the server's names too, so that the parent can bind
            // the server certificate to it (`subject = "same-as-client-cert"` on its label).
            (Which::Ra, None) => {
                let subject =
                    csr::subject_with_common_name(&self.common_name).map_err(local(context()))?;
                let mut extensions = vec![csr::client_auth_extension().map_err(local(context()))?];
                if !self.sans.is_empty() {
                    extensions.push(csr::san_extension(&self.sans).map_err(local(context()))?);
                }
                csr::build_csr(key, subject, extensions).map_err(local(context()))
            }
            // A new request each time: the configured names take effect at the next renewal.
            (Which::Server, _) => {
                let subject =
                    csr::subject_with_common_name(&self.common_name).map_err(local(context()))?;
                let mut extensions = Vec::new();
                if !self.sans.is_empty() {
                    extensions.push(csr::san_extension(&self.sans).map_err(local(context()))?);
                }
                csr::build_csr(key, subject, extensions).map_err(local(context()))
            }
        }
    }

    async fn ensure_one(
        &self,
        client: &UpstreamClient,
        which: Which,
        warnings: &mut Vec<String>,
        cacerts: &mut Option<Vec<Vec<u8>>>,
    ) -> Result<(ProvisionedCert, FileKeySigner), UpstreamError> {
        let (cert_path, key_path) = self.paths(which);
        let now = SystemTime::now();
        let current = self.load(which, warnings);
        if let Some(c) = &current {
            let renew_at = renewal_due(self.threshold, c.not_before, c.not_after);
            if now < renew_at {
                return Ok((
                    provisioned(&cert_path, &key_path, c, renew_at, false),
                    clone_key(&c.key)?,
                ));
            }
        }
        let what = which.what();
        let (key, csr_der) = match self.load_pending(which) {
            Some(pending) => pending,
            None => {
                let pair = KeyChoice::P256.generate().map_err(UpstreamError::Key)?;
                let key = FileKeySigner::new(pair).map_err(UpstreamError::Key)?;
                let csr_der = self.build_csr(which, &key, current.as_ref())?;
                (key, csr_der)
            }
        };
        // The RA certificate renews itself; the rest is enrolled with the client as it is.
        let (label, operation, answer) = match (which, &current) {
            (Which::Ra, Some(c)) => {
                let pkcs8 = zeroize::Zeroizing::new(c.key.key_pair().serialize_der());
                let channel = client.channel_with(c.chain.clone(), pkcs8.to_vec())?;
                let answer = client
                    .enroll_on(
                        &channel,
                        self.ra_label.as_deref(),
                        Forwarded::SimpleReenroll,
                        &csr_der,
                        None,
                        None,
                    )
                    .await;
                (self.ra_label.as_deref(), Forwarded::SimpleReenroll, answer)
            }
            (Which::Ra, None) => {
                let channel = client.configured_channel();
                let answer = client
                    .enroll_on(
                        &channel,
                        self.ra_label.as_deref(),
                        Forwarded::SimpleEnroll,
                        &csr_der,
                        None,
                        None,
                    )
                    .await;
                (self.ra_label.as_deref(), Forwarded::SimpleEnroll, answer)
            }
            (Which::Server, _) => {
                let channel = client.current_channel();
                let answer = client
                    .enroll_on(
                        &channel,
                        self.server_label.as_deref(),
                        Forwarded::SimpleEnroll,
                        &csr_der,
                        None,
                        None,
                    )
                    .await;
                (
                    self.server_label.as_deref(),
                    Forwarded::SimpleEnroll,
                    answer,
                )
            }
        };
        let outcome = match &answer {
            Ok(r) => outcome_of(r, client.default_retry, client.default_pending_retry),
            Err(e) => ForwardOutcome::Unavailable {
                retry_after: client.default_retry,
                reason: e.to_string(),
            },
        };
        let request_id = answer
            .as_ref()
            .ok()
            .and_then(|r| r.approval_request.clone());
        let at = format!(
            "{} at {}",
            operation.as_str(),
            label.map_or("the upstream's default label".to_string(), |l| format!(
                "upstream label {l}"
            ))
        );
        let (pending_key, pending_csr) = pending_paths(&key_path);
        let failure = match outcome {
            ForwardOutcome::Issued { mut chain } => {
                let leaf = chain.first().cloned().unwrap_or_default();
                if !files::key_matches(&leaf, &key) {
                    return Err(UpstreamError::BadIssued {
                        what: what.into(),
                        detail:
                            "the first certificate of the response is not for the requested key"
                                .into(),
                    });
                }
                let summary = files::summarize(&leaf).map_err(|e| UpstreamError::BadIssued {
                    what: what.into(),
                    detail: e.to_string(),
                })?;
                if summary.not_after <= now {
                    return Err(UpstreamError::BadIssued {
                        what: what.into(),
                        detail: "it has already expired".into(),
                    });
                }
                if chain.len() == 1 {
                    // The upstream answers with the leaf only (RFC 7030 §4.2.3 allows either):
                    // the chain a TLS peer needs is its /cacerts.
                    if cacerts.is_none() {
                        match client.cacerts().await {
                            Ok(c) => *cacerts = Some(c),
                            Err(e) => warnings
                                .push(format!("{what} is written without its CA chain: {e}")),
                        }
                    }
                    chain.extend(cacerts.iter().flatten().cloned());
                }
                // The key first: a crash in between leaves a certificate without its key,
                // which the next call sees and enrolls anew.
                files::write_key(&key_path, &key)
                    .map_err(local(format!("writing {}", key_path.display())))?;
                files::write_certificates(&cert_path, &chain)
                    .map_err(local(format!("writing {}", cert_path.display())))?;
                let _ = std::fs::remove_file(&pending_key);
                let _ = std::fs::remove_file(&pending_csr);
                tracing::info!(
                    upstream = %client.url(),
                    not_after = %files::format_time(summary.not_after),
                    "{what} {}",
                    if current.is_some() { "renewed" } else { "enrolled" }
                );
                let fresh = Current {
                    chain,
                    key,
                    not_before: summary.not_before,
                    not_after: summary.not_after,
                };
                let mut renew_at = renewal_due(self.threshold, fresh.not_before, fresh.not_after);
                if renew_at <= now {
                    // A certificate due at once (a very short life, or clocks apart): not
                    // again before a retry period.
                    renew_at = now + self.retry.retry_period(Some(fresh.lifetime()));
                }
                let prov = provisioned(&cert_path, &key_path, &fresh, renew_at, true);
                return Ok((prov, fresh.key));
            }
            ForwardOutcome::Pending { retry_after, .. } => {
                files::write_key(&pending_key, &key)
                    .map_err(local(format!("writing {}", pending_key.display())))?;
                files::write_csr(&pending_csr, &csr_der)
                    .map_err(local(format!("writing {}", pending_csr.display())))?;
                let error = UpstreamError::Pending {
                    what: what.into(),
                    retry_after,
                    request_id,
                };
                (error, Some(retry_after))
            }
            ForwardOutcome::Refused { status, message } => {
                // Refused: the next attempt is a new request.
                let _ = std::fs::remove_file(&pending_key);
                let _ = std::fs::remove_file(&pending_csr);
                let error = UpstreamError::Refused {
                    what: format!("{what} ({at})"),
                    status,
                    message,
                };
                (error, None)
            }
            ForwardOutcome::Unavailable {
                retry_after,
                reason,
            } => {
                let error = match answer {
                    Err(e) => e,
                    Ok(_) => UpstreamError::Protocol {
                        url: client.url().to_string(),
                        detail: reason,
                    },
                };
                (error, Some(retry_after))
            }
        };
        let (error, hint) = failure;
        let Some(c) = current else {
            return Err(error);
        };
        let retry = self.retry.retry_period(Some(c.lifetime()));
        let renew_at = (now + hint.map_or(retry, |h| h.max(Duration::from_secs(1))))
            .min(c.not_after.max(now + Duration::from_secs(1)));
        warnings.push(format!(
            "renewing {what} failed, the current one (valid until {}) stays in use; next attempt at {}: {error}",
            files::format_time(c.not_after),
            files::format_time(renew_at),
        ));
        Ok((
            provisioned(&cert_path, &key_path, &c, renew_at, false),
            c.key,
        ))
    }
}

/// When a certificate valid from `not_before` to `not_after` is due (never before notBefore).
pub(crate) fn renewal_due(
    threshold: Threshold,
    not_before: SystemTime,
    not_after: SystemTime,
) -> SystemTime {
    threshold
        .renewal_time(not_before, not_after)
        .max(not_before)
}

fn provisioned(
    cert_path: &Path,
    key_path: &Path,
    c: &Current,
    renew_at: SystemTime,
    changed: bool,
) -> ProvisionedCert {
    ProvisionedCert {
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
        chain: c.chain.clone(),
        not_before: c.not_before,
        not_after: c.not_after,
        renew_at,
        changed,
    }
}

fn clone_key(key: &FileKeySigner) -> Result<FileKeySigner, UpstreamError> {
    FileKeySigner::from_pem(&key.to_pem()).map_err(UpstreamError::Key)
}

/// `<key file>.new` and `<key file>.csr.new`: a request the upstream holds.
fn pending_paths(key_path: &Path) -> (PathBuf, PathBuf) {
    (
        files::with_suffix(key_path, ".new"),
        files::with_suffix(key_path, ".csr.new"),
    )
}

/// Creates the directory (mode 0700) if it is missing.
fn ensure_dir(dir: &Path) -> Result<(), UpstreamError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| UpstreamError::Local {
            context: format!("creating {}", dir.display()),
            source: ClientError::Config(e.to_string()),
        })
}
