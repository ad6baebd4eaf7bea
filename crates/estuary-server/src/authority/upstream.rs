//! A registration authority (RFC 7030 §3.7, `estuary serve --upstream URL`): no CA of its own.
//!
//! Devices authenticate to the RA under the RA's own policy (its users, bootstrap CAs, and
//! certificates of the top CA, checked against the upstream's CRL). The RA forwards each
//! admitted CSR to the EST server above it over TLS with its RA certificate (EKU
//! id-kp-cmcRA), naming the original requester in `X-Estuary-On-Behalf-Of` for the upstream's
//! audit trail. What comes back is recorded in the RA's own store (an inventory: `estuary
//! certs list` works on an RA) before it is released.
//!
//! `/cacerts` and `/crl` are the upstream's, cached in memory and in the data directory, so
//! they are served while the upstream is down; a layer below fetches them from here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use der::Decode;
use estuary_auth::Requester;
use estuary_client::upstream::{
    ForwardOutcome, Forwarded, RaIdentity, UpstreamClient, UpstreamCrl, UpstreamCrlCache,
    UpstreamError,
};
use estuary_store::{CertificateRecord, Outcome, Store, StoreError};
use http::StatusCode;

use super::local::audit_record;
use super::{Authority, EnrollRequest, Enrollment, Standing};
use crate::config::Settings;
use crate::denials::DenialTally;
use crate::error::{EstError, ServerError};
use crate::est::{unix, unix_now, Operation};
use crate::metrics::Metrics;
use crate::tls::ReloadableCertificate;

/// The upstream's CA certificates, kept in the data directory.
pub const UPSTREAM_CACERTS_FILE: &str = "upstream-cacerts.pem";
/// The upstream's CRL, kept in the data directory.
pub const UPSTREAM_CRL_FILE: &str = "upstream.crl";

/// Most enrollments forwarded at once: a slow upstream must not pile up connections (each held
/// for up to `[upstream] timeout`); more wait up to [`FORWARD_QUEUE_WAIT`], then get 503.
const MAX_FORWARDED_IN_FLIGHT: usize = 64;
/// How long a request waits for a forwarding slot.
const FORWARD_QUEUE_WAIT: Duration = Duration::from_secs(2);
/// Longest `Retry-After` passed to a device when the upstream is down.
const MAX_UNAVAILABLE_RETRY: Duration = Duration::from_secs(60);
/// How soon a failed renewal of the RA's own certificates is tried again, at most.
const MAX_RENEWAL_RETRY: Duration = Duration::from_secs(3600);

/// The upstream's CA chain as served at `/cacerts`.
#[derive(Debug)]
struct CaChain {
    /// DER, in the upstream's order (issuing CA first).
    der: Vec<Vec<u8>>,
    /// The certs-only PKCS#7 (DER) of `der`.
    pkcs7: Bytes,
}

impl CaChain {
    fn new(der: Vec<Vec<u8>>) -> Result<Self, EstError> {
        if der.is_empty() {
            return Err(EstError::Internal(
                "the upstream's /cacerts has no certificate".into(),
            ));
        }
        let pkcs7 = estuary_wire::pkcs7::certs_only_from_der(&der)
            .map_err(|e| EstError::Internal(format!("encoding /cacerts: {e}")))?;
        Ok(CaChain {
            der,
            pkcs7: Bytes::from(pkcs7),
        })
    }
}

/// How a registration authority reaches the server above it.
#[derive(Debug)]
pub struct UpstreamSetup {
    /// The client towards the upstream.
    pub client: Arc<UpstreamClient>,
    /// `[upstream] ca` (DER): the upstream's `/cacerts` must lead to one of these.
    pub pinned: Vec<Vec<u8>>,
    /// The RA's own certificates.
    pub identity: RaIdentity,
}

/// A registration authority: forwards to the EST server above it.
#[derive(Debug)]
pub struct UpstreamAuthority {
    client: Arc<UpstreamClient>,
    /// `[upstream] ca`: the upstream's chain must lead to one of these.
    pinned: Vec<Vec<u8>>,
    identity: RaIdentity,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    denials: Arc<DenialTally>,
    chain: ArcSwap<CaChain>,
    crl: UpstreamCrlCache,
    crl_refresh: Duration,
    data_dir: PathBuf,
    tls: Arc<ReloadableCertificate>,
    /// When the RA's own certificates are due for renewal.
    renew_at: ArcSwap<SystemTime>,
    /// Bounds the enrollments forwarded at once.
    forwarding: tokio::sync::Semaphore,
    /// The RA certificate in force (DER): the upstream's issuing CA must have issued it.
    ra_leaf: ArcSwap<Vec<u8>>,
    /// notAfter of the RA certificate and of the RA server certificate.
    own_expiry: ArcSwap<(SystemTime, SystemTime)>,
    /// Forwarded enrollments by outcome: issued, pending, refused, unavailable.
    forwarded: [std::sync::atomic::AtomicU64; 4],
}

/// The outcomes counted in `estuary_upstream_forwarded_total`.
const FORWARD_OUTCOMES: [&str; 4] = ["issued", "pending", "refused", "unavailable"];

impl UpstreamAuthority {
    /// Provisions the RA (its TLS server certificate and RA certificate, enrolled from the
    /// upstream when missing or due), and loads the upstream's CA chain and CRL: from the
    /// upstream, or from the data directory when the upstream does not answer.
    ///
    /// Returns the authority and the TLS certificate resolver it renews.
    pub async fn start_up(
        setup: UpstreamSetup,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        denials: Arc<DenialTally>,
        settings: &Settings,
        data_dir: &Path,
    ) -> Result<Arc<Self>, EstError> {
        let UpstreamSetup {
            client,
            pinned,
            identity,
        } = setup;
        let crl_refresh = settings
            .upstream
            .as_ref()
            .map_or(Duration::from_secs(300), |u| u.crl_refresh);
        let provisioned = provision(&client, &identity).await?;
        let ra_leaf = provisioned.ra.chain.first().cloned().unwrap_or_default();
        for warning in &provisioned.warnings {
            tracing::warn!(warning, "RA certificates");
        }
        let chain = match client.cacerts().await.map(crate::ra::order_chain) {
            Ok(chain) if crate::ra::chain_is_pinned(&chain, &pinned, &ra_leaf) => {
                write_cacerts(data_dir, &chain);
                chain
            }
            Ok(_) => return Err(EstError::Internal(
                "the upstream's /cacerts is not a chain this RA accepts (CA certificates only, \
                     each signed by the next, ending at the root in [upstream] ca, the first the \
                     issuer of this RA's certificate): refusing to serve another CA to devices"
                    .into(),
            )),
            Err(e) => {
                let cached = read_cacerts(data_dir)
                    .map(crate::ra::order_chain)
                    .ok_or_else(|| {
                        EstError::Internal(format!(
                            "the upstream's CA certificates: {e}, and no copy in {}",
                            data_dir.join(UPSTREAM_CACERTS_FILE).display()
                        ))
                    })?;
                if !crate::ra::chain_is_pinned(&cached, &pinned, &ra_leaf) {
                    return Err(EstError::Internal(format!(
                        "{} does not lead to the root in [upstream] ca",
                        data_dir.join(UPSTREAM_CACERTS_FILE).display()
                    )));
                }
                tracing::warn!(error = %e, "upstream /cacerts not reachable; serving the copy from the data directory");
                cached
            }
        };
        let tls = Arc::new(
            ReloadableCertificate::new(
                &server_chain(&provisioned.server.chain, &chain),
                &read_key(&provisioned.server.key_path)?,
            )
            .map_err(|e| EstError::Internal(e.to_string()))?,
        );
        let authority = UpstreamAuthority {
            client,
            pinned,
            identity,
            store,
            metrics,
            denials,
            chain: ArcSwap::from_pointee(CaChain::new(chain)?),
            crl: UpstreamCrlCache::new(),
            crl_refresh,
            data_dir: data_dir.to_path_buf(),
            tls,
            renew_at: ArcSwap::from_pointee(provisioned.next_renewal()),
            forwarding: tokio::sync::Semaphore::new(MAX_FORWARDED_IN_FLIGHT),
            ra_leaf: ArcSwap::from_pointee(ra_leaf),
            own_expiry: ArcSwap::from_pointee((
                provisioned.ra.not_after,
                provisioned.server.not_after,
            )),
            forwarded: Default::default(),
        };
        authority.load_cached_crl();
        authority.refresh_crl().await;
        Ok(Arc::new(authority))
    }

    /// The TLS certificate resolver (renewed with the RA's server certificate).
    pub fn tls_certificate(&self) -> Arc<ReloadableCertificate> {
        self.tls.clone()
    }

    /// The upstream URL.
    pub fn upstream(&self) -> String {
        self.client.url().to_string()
    }

    fn load_cached_crl(&self) {
        let path = self.data_dir.join(UPSTREAM_CRL_FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        match UpstreamCrl::parse(&bytes, issuing_ca(&self.chain.load().der)) {
            Ok(crl) => {
                self.crl.update(crl);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cached upstream CRL ignored")
            }
        }
    }

    /// Fetches the upstream's CA chain and CRL; a failure keeps the copies in force.
    async fn refresh_crl(&self) {
        match self.client.cacerts().await.map(crate::ra::order_chain) {
            Ok(chain)
                if chain != self.chain.load().der
                    && !crate::ra::chain_is_pinned(&chain, &self.pinned, &self.ra_leaf.load()) =>
            {
                tracing::error!(
                    "the upstream's /cacerts changed to a chain this RA does not accept (CA \
                     certificates only, each signed by the next, ending at the root in [upstream] \
                     ca, the first the issuer of this RA's certificate); the chain in force is kept"
                );
            }
            Ok(chain) if chain != self.chain.load().der => match CaChain::new(chain.clone()) {
                Ok(new) => {
                    tracing::warn!("the upstream's CA certificates changed; send SIGHUP to check client certificates against the new chain");
                    write_cacerts(&self.data_dir, &chain);
                    self.chain.store(Arc::new(new));
                }
                Err(e) => tracing::warn!(error = %e, "upstream /cacerts unusable"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "upstream /cacerts not refreshed"),
        }
        let chain = self.chain.load_full();
        match self.client.fetch_crl_with(issuing_ca(&chain.der)).await {
            Ok(crl) => {
                let der = crl.der().to_vec();
                if self.crl.update(crl) {
                    write_cache(&self.data_dir.join(UPSTREAM_CRL_FILE), &der);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "upstream CRL not refreshed; the previous one stays in force")
            }
        }
    }

    /// Renews the RA's own certificates when due, and swaps the TLS certificate.
    async fn renew_if_due(&self) {
        if SystemTime::now() < **self.renew_at.load() {
            return;
        }
        match self.identity.ensure(&self.client).await {
            Ok(provisioned) => {
                for warning in &provisioned.warnings {
                    tracing::warn!(warning, "RA certificates");
                }
                if provisioned.server.changed {
                    let chain = server_chain(&provisioned.server.chain, &self.chain.load().der);
                    match read_key(&provisioned.server.key_path)
                        .map_err(ServerError::from)
                        .and_then(|key| self.tls.replace(&chain, &key))
                    {
                        Ok(()) => tracing::info!("RA server certificate renewed"),
                        Err(e) => {
                            tracing::error!(error = %e, "renewed RA server certificate not usable")
                        }
                    }
                }
                self.renew_at.store(Arc::new(provisioned.next_renewal()));
                self.own_expiry.store(Arc::new((
                    provisioned.ra.not_after,
                    provisioned.server.not_after,
                )));
                if let Some(leaf) = provisioned.ra.chain.first() {
                    self.ra_leaf.store(Arc::new(leaf.clone()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "RA certificates not renewed; trying again later");
                self.renew_at.store(Arc::new(
                    SystemTime::now()
                        + self
                            .crl_refresh
                            .clamp(Duration::from_secs(5), MAX_RENEWAL_RETRY),
                ));
            }
        }
    }

    /// Records what the upstream issued, before it is released.
    async fn record(
        &self,
        request: &EnrollRequest<'_>,
        certificate: &x509_cert::Certificate,
        der: &[u8],
    ) -> Result<String, EstError> {
        let record = inventory_record(request, certificate, der)?;
        let serial = record.serial.clone();
        let audit = audit_record(
            request,
            Outcome::Issued,
            StatusCode::OK,
            Some(&serial),
            Some(format!("forwarded to {}", self.client.url())),
        );
        match self.store.record_issued(record, audit, None).await {
            Ok(()) | Err(StoreError::DuplicateSerial(_)) => Ok(serial),
            Err(e) => Err(EstError::Internal(format!("store: {e}"))),
        }
    }
}

#[async_trait::async_trait]
impl Authority for UpstreamAuthority {
    fn cacerts(&self) -> Bytes {
        self.chain.load().pkcs7.clone()
    }

    fn chain_der(&self) -> Vec<Vec<u8>> {
        self.chain.load().der.clone()
    }

    async fn enroll(&self, request: EnrollRequest<'_>) -> Result<Enrollment, EstError> {
        let operation = match request.operation {
            Operation::SimpleEnroll => Forwarded::SimpleEnroll,
            // The re-enrollment identity check (RFC 7030 §4.2.2) was made here, where the
            // device's certificate is seen; the upstream sees the RA.
            Operation::SimpleReenroll => Forwarded::SimpleReenroll,
            _ => {
                return Err(EstError::NotImplemented(
                    "serverkeygen through a registration authority",
                ))
            }
        };
        // `upstream_label = "default"` (or the default label here) is the unlabeled path above.
        let upstream_label = request
            .label
            .upstream_label
            .as_deref()
            .unwrap_or(request.label_name);
        let upstream_label =
            Some(upstream_label).filter(|l| !l.is_empty() && *l != crate::config::DEFAULT_LABEL);
        // The chain of requesters, nearest device first: `basic:dev1 via ra:bottom`.
        let on_behalf_of = match &request.on_behalf_of {
            Some(earlier) => format!("{earlier} via {}", request.requester.identity()),
            None => request.requester.identity(),
        };
        let Ok(Ok(_slot)) =
            tokio::time::timeout(FORWARD_QUEUE_WAIT, self.forwarding.acquire()).await
        else {
            return Err(EstError::Unavailable(
                Duration::from_secs(1),
                "too many requests are being forwarded to the upstream EST server".into(),
            ));
        };
        let outcome = self
            .client
            .forward(
                upstream_label,
                operation,
                &request.csr.der,
                &on_behalf_of,
                request.renewing_serial.as_deref(),
            )
            .await;
        let counted = match &outcome {
            ForwardOutcome::Issued { .. } => 0,
            ForwardOutcome::Pending { .. } => 1,
            ForwardOutcome::Refused { .. } => 2,
            ForwardOutcome::Unavailable { .. } => 3,
        };
        self.forwarded[counted].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match outcome {
            ForwardOutcome::Issued { chain } => {
                let der = chain.into_iter().next().ok_or_else(|| {
                    EstError::Unavailable(
                        Duration::from_secs(5),
                        "the upstream EST server answered without a certificate".into(),
                    )
                })?;
                let certificate = x509_cert::Certificate::from_der(&der)
                    .map_err(|e| EstError::Internal(format!("the upstream's certificate: {e}")))?;
                // What comes back must be for the device's key, from the CA this RA serves.
                let chain = self.chain.load_full();
                let for_this_key =
                    certificate.tbs_certificate.subject_public_key_info == request.csr.public_key;
                let from_our_ca = issuing_ca(&chain.der)
                    .first()
                    .is_some_and(|ca| crate::ra::signed_by(&der, ca));
                if !for_this_key || !from_our_ca {
                    tracing::error!(
                        for_this_key,
                        from_our_ca,
                        "the upstream answered with a certificate this RA will not pass on"
                    );
                    return Err(EstError::Unavailable(
                        Duration::from_secs(60),
                        "the upstream EST server answered with an unusable certificate".into(),
                    ));
                }
                let serial = self.record(&request, &certificate, &der).await?;
                self.metrics.issued("upstream", request.label_name);
                Ok(Enrollment::Issued {
                    // The bytes the upstream's CA signed, passed on as they came.
                    certificate: der,
                    serial,
                    server_key: None,
                })
            }
            ForwardOutcome::Pending {
                retry_after,
                request_id,
            } => {
                if self
                    .denials
                    .admit_authenticated(&request.requester.identity())
                {
                    let audit = audit_record(
                        &request,
                        Outcome::Pending,
                        StatusCode::ACCEPTED,
                        None,
                        Some(format!(
                            "waits for approval at {} (its request {})",
                            self.client.url(),
                            request_id.as_deref().unwrap_or("-")
                        )),
                    );
                    if let Err(e) = self.store.record_audit(audit).await {
                        tracing::error!(error = %e, "could not record audit event");
                    }
                }
                // The top's id of the waiting request, what its operator approves.
                Ok(Enrollment::Pending {
                    id: request_id.and_then(|id| id.parse().ok()),
                    retry_after,
                })
            }
            ForwardOutcome::Refused { status, message } => {
                if status == 401 {
                    // The upstream did not accept this RA's own credential: the operator's
                    // business, not the device's.
                    tracing::error!(status, message, "the upstream refused this RA's credential");
                    return Err(EstError::Unavailable(
                        Duration::from_secs(60),
                        "the upstream EST server did not accept this registration authority".into(),
                    ));
                }
                tracing::info!(status, message, "the upstream refused the request");
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                Err(EstError::Upstream(status, format!("upstream: {message}")))
            }
            ForwardOutcome::Unavailable {
                retry_after,
                reason,
            } => {
                tracing::warn!(reason, "upstream unavailable");
                Err(EstError::Unavailable(
                    retry_after.clamp(Duration::from_secs(1), MAX_UNAVAILABLE_RETRY),
                    "the upstream EST server is not available".into(),
                ))
            }
        }
    }

    async fn standing(&self, serial_hex: &str) -> Result<Standing, EstError> {
        // Revocation is the upstream CA's: its CRL, fetched and cached. Without a usable one,
        // no certificate can be checked, so none is accepted.
        if self.crl.current().is_none() {
            return Err(EstError::Unavailable(
                Duration::from_secs(30),
                "the upstream's CRL has not been loaded yet".into(),
            ));
        }
        if self.crl.is_stale(SystemTime::now()) {
            return Err(EstError::Unavailable(
                Duration::from_secs(30),
                "the upstream's CRL is past its nextUpdate".into(),
            ));
        }
        if self.crl.is_revoked(serial_hex) {
            return Ok(Standing::Revoked);
        }
        // Only certificates that went through this RA: the top CA issues for every plant, and
        // a certificate of another RA's devices (or an RA's own) is no identity here. Revoked
        // here too (`estuary certs revoke` on the RA) is refused at once.
        match self.store.certificate_status(serial_hex).await {
            Ok(Some(status)) if status.revoked => Ok(Standing::Revoked),
            Ok(Some(status)) => Ok(Standing::Good(Some(status))),
            Ok(None) => Ok(Standing::Unknown),
            Err(e) => Err(EstError::Internal(format!("store: {e}"))),
        }
    }

    fn crl(&self) -> Option<Bytes> {
        // The CRL in force, as the upstream signed it (served to the layer below).
        self.crl.current().map(|c| Bytes::copy_from_slice(c.der()))
    }

    fn crl_is_fresh(&self) -> bool {
        self.crl.current().is_some() && !self.crl.is_stale(SystemTime::now())
    }

    fn describe(&self) -> String {
        format!("registration authority: forwards to {}", self.client.url())
    }

    fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let seconds_until = |t: SystemTime| match t.duration_since(SystemTime::now()) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        let name = "estuary_upstream_forwarded_total";
        let _ = writeln!(out, "# HELP {name} Enrollments forwarded to the upstream EST server, by outcome.\n# TYPE {name} counter");
        for (outcome, count) in FORWARD_OUTCOMES.iter().zip(&self.forwarded) {
            let _ = writeln!(
                out,
                "{name}{{outcome=\"{outcome}\"}} {}",
                count.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        let name = "estuary_upstream_crl_next_update_seconds";
        let _ = writeln!(out, "# HELP {name} Seconds until the upstream CRL in force reaches its nextUpdate (negative: past it, client certificates are refused).\n# TYPE {name} gauge");
        if let Some(next) = self.crl.current().and_then(|c| c.next_update()) {
            let _ = writeln!(out, "{name} {}", seconds_until(next));
        }
        let name = "estuary_ra_certificate_expiry_seconds";
        let _ = writeln!(out, "# HELP {name} Seconds until this registration authority's own certificates expire (renewed at 80% of their life).\n# TYPE {name} gauge");
        let (ra, server) = **self.own_expiry.load();
        let _ = writeln!(out, "{name}{{certificate=\"ra\"}} {}", seconds_until(ra));
        let _ = writeln!(
            out,
            "{name}{{certificate=\"server\"}} {}",
            seconds_until(server)
        );
    }

    fn readiness_problems(&self) -> Vec<String> {
        let (ra, server) = **self.own_expiry.load();
        let now = SystemTime::now();
        [
            (ra, "the RA certificate"),
            (server, "the RA server certificate"),
        ]
        .into_iter()
        .filter(|(not_after, _)| *not_after <= now)
        .map(|(_, what)| format!("{what} has expired (the upstream did not renew it)"))
        .collect()
    }

    fn reconfigure(&self, _settings: &Settings) -> Result<(), ServerError> {
        Ok(())
    }

    async fn start(&self) -> Result<(), EstError> {
        Ok(())
    }

    async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.crl_refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            // The RA's own certificates are renewed when due, not at the next CRL refresh
            // (which may come after they have expired).
            let until_renewal = self
                .renew_at
                .load()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                _ = tick.tick() => self.refresh_crl().await,
                () = tokio::time::sleep(until_renewal) => {}
            }
            self.renew_if_due().await;
        }
    }
}

/// Enrolls the RA's certificates, waiting while the upstream holds them for approval or is
/// out of reach (layers of a network come up in any order).
async fn provision(
    client: &UpstreamClient,
    identity: &RaIdentity,
) -> Result<estuary_client::upstream::Provisioned, EstError> {
    let mut delay = Duration::from_secs(1);
    loop {
        match identity.ensure(client).await {
            Ok(p) => return Ok(p),
            Err(UpstreamError::Pending {
                what,
                retry_after,
                request_id,
            }) => {
                tracing::warn!(
                    what,
                    request = request_id.as_deref().unwrap_or("-"),
                    retry_after_s = retry_after.as_secs(),
                    "waiting for the upstream's operator to approve this RA's certificate"
                );
                tokio::time::sleep(
                    retry_after.clamp(Duration::from_secs(1), MAX_UNAVAILABLE_RETRY),
                )
                .await;
            }
            // Out of reach, busy (429), failing (5xx) or answering nonsense: ask again later.
            Err(
                e @ (UpstreamError::Transport { .. }
                | UpstreamError::Status { .. }
                | UpstreamError::Protocol { .. }),
            ) => {
                tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "upstream not reachable; RA certificates not enrolled yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_UNAVAILABLE_RETRY);
            }
            Err(e) => {
                return Err(EstError::Internal(format!(
                    "enrolling this RA's certificates: {e}"
                )))
            }
        }
    }
}

/// The issuing CA of the upstream's chain (its first certificate): the only CA whose CRL
/// speaks for the certificates devices present.
fn issuing_ca(chain: &[Vec<u8>]) -> &[Vec<u8>] {
    &chain[..chain.len().min(1)]
}

/// The TLS chain: the RA's server certificate, then the upstream's CA chain (so that the
/// tutorial's `openssl s_client -showcerts | awk` finds the top root second, as against a CA).
fn server_chain(server: &[Vec<u8>], ca_chain: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut chain: Vec<Vec<u8>> = server.iter().take(1).cloned().collect();
    chain.extend(ca_chain.iter().cloned());
    chain
}

fn read_key(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, EstError> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| EstError::Internal(format!("reading {}: {e}", path.display())))?,
    );
    let block = pem::parse(text.as_bytes())
        .map_err(|e| EstError::Internal(format!("{}: {e}", path.display())))?;
    Ok(zeroize::Zeroizing::new(block.into_contents()))
}

/// Keeps the upstream's chain (issuing CA first, root last), also as `ca-cert.pem`: the file
/// devices are given to trust is the same at every layer, as on the top CA itself.
fn write_cacerts(data_dir: &Path, chain: &[Vec<u8>]) {
    let text = estuary_ca::bootstrap::pem_certificates(chain);
    write_cache(&data_dir.join(UPSTREAM_CACERTS_FILE), text.as_bytes());
    write_cache(
        &data_dir.join(estuary_ca::bootstrap::CA_CERT_FILE),
        text.as_bytes(),
    );
}

fn read_cacerts(data_dir: &Path) -> Option<Vec<Vec<u8>>> {
    let text = std::fs::read(data_dir.join(UPSTREAM_CACERTS_FILE)).ok()?;
    let chain: Vec<Vec<u8>> = pem::parse_many(&text)
        .ok()?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    (!chain.is_empty()).then_some(chain)
}

/// Writes a cache file (temporary file, then rename); a failure is logged, not fatal.
fn write_cache(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not keep a copy");
    }
}

/// The RA's inventory row for a certificate the upstream issued.
fn inventory_record(
    request: &EnrollRequest<'_>,
    certificate: &x509_cert::Certificate,
    der: &[u8],
) -> Result<CertificateRecord, EstError> {
    let tbs = &certificate.tbs_certificate;
    let sans = tbs
        .extensions
        .iter()
        .flatten()
        .filter(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME)
        .flat_map(|e| estuary_wire::csr::san_strings(e.extn_value.as_bytes()))
        .collect();
    let key_type = estuary_wire::KeyType::from_spki(&tbs.subject_public_key_info)
        .map(|k| k.config_name())
        .unwrap_or_else(|_| "unknown".into());
    Ok(CertificateRecord {
        serial: hex::encode(tbs.serial_number.as_bytes()),
        subject: estuary_wire::name::rfc4514(&tbs.subject),
        sans,
        not_before: unix(tbs.validity.not_before.to_system_time()),
        not_after: unix(tbs.validity.not_after.to_system_time()),
        sha256_thumbprint: estuary_ca::issue::thumbprint_sha256(der),
        sha1_thumbprint: estuary_ca::issue::thumbprint_sha1(der),
        profile: "upstream".into(),
        label: request.label_name.to_string(),
        origin_label: request
            .origin_label
            .clone()
            .unwrap_or_else(|| request.label_name.to_string()),
        requester: match request.requester {
            Requester::RegistrationAuthority { .. } => request.on_behalf_of.as_ref().map_or_else(
                || request.requester.identity(),
                |w| format!("{w} via {}", request.requester.identity()),
            ),
            other => other.identity(),
        },
        key_type,
        issued_at: unix_now(),
        revoked_at: None,
        der: der.to_vec(),
    })
}
