//! Authentication: every identity a request proves, from its TLS client certificate (a
//! certificate of this CA, or a bootstrap certificate from a manufacturer's CA) and its HTTP
//! Basic credentials (RFC 7030 §3.2.3, §3.3.2). Which of them a label accepts is
//! [`crate::admission`]'s business.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use estuary_auth::{
    parse_basic_authorization, AuthFailure, BasicUsers, BootstrapCrl, ClientCertVerifier, Requester,
};
use http::{header, HeaderMap};

use crate::admission::Candidate;
use crate::authority::{Authority, Standing};
use crate::bootstrap_crl::CrlFeed;
use crate::est::{truncate, ConnectionInfo};
use crate::password_gate::PasswordGate;
use crate::ratelimit::address_key;

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

/// The authenticators of one configuration: Basic users, the verifier of certificates of this
/// CA and of bootstrap CAs, and the bootstrap CRLs.
#[derive(Debug)]
pub struct Authenticators {
    users: Arc<BasicUsers>,
    verifier: ClientCertVerifier,
    /// Bounds concurrent argon2 verifications (each costs ~19 MiB and a core for ~15 ms), so a
    /// flood of wrong passwords cannot exhaust memory or starve issuance, and shares them
    /// fairly between addresses and user names.
    password_gate: PasswordGate,
    /// The bootstrap CAs' CRLs in force, and where they come from.
    bootstrap_crls: ArcSwap<Vec<LoadedCrl>>,
    crl_feeds: Vec<CrlFeed>,
    /// Distinguishes these authenticators from those of another configuration, for the
    /// per-connection verification a connection keeps.
    generation: u64,
}

/// The generation of the next [`Authenticators`].
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Authenticators {
    /// The authenticators of `setup`.
    pub fn new(setup: AuthSetup) -> Self {
        let now = Instant::now();
        let loaded = setup
            .bootstrap_crls
            .into_iter()
            .map(|crl| LoadedCrl {
                crl,
                loaded_at: now,
            })
            .collect();
        Authenticators {
            users: Arc::new(setup.users),
            verifier: setup.verifier,
            password_gate: PasswordGate::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            bootstrap_crls: ArcSwap::from_pointee(loaded),
            crl_feeds: setup.crl_feeds,
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
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

    /// Every identity the request proves, best first: a certificate from this CA (valid,
    /// recorded, not revoked), a bootstrap certificate, a Basic user. A credential that fails
    /// is reported but does not hide one that works (an expired device certificate plus a good
    /// password authenticates by password).
    pub async fn authenticate(
        &self,
        conn: &ConnectionInfo,
        headers: &HeaderMap,
        authority: &dyn Authority,
    ) -> AuthOutcome {
        let mut outcome = AuthOutcome::default();
        if let Some(chain) = &conn.client_chain {
            let now = SystemTime::now();
            match self.verify_ours_once(conn, chain, now) {
                Ok(cert) => {
                    self.certificate_of_this_ca(cert, authority, &mut outcome)
                        .await
                }
                Err(ours) => self.bootstrap_certificate(chain, now, ours, &mut outcome),
            }
        }
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            self.basic(conn, value, &mut outcome).await;
        }
        outcome
    }

    /// The connection's chain checked against this CA: once per connection (path validation
    /// does not change while the connection lasts, except by time: a kept result is used only
    /// before the certificate's notAfter).
    fn verify_ours_once(
        &self,
        conn: &ConnectionInfo,
        chain: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<estuary_auth::VerifiedClientCert, estuary_auth::CertAuthFailure> {
        if let Some((generation, kept)) = conn.verified_ours.get() {
            if *generation == self.generation && kept.as_ref().is_ok_and(|c| now < c.not_after) {
                return kept.clone();
            }
        }
        let result = self.verifier.verify_ours(chain, now);
        let _ = conn.verified_ours.set((self.generation, result.clone()));
        result
    }

    /// A certificate this CA (or, for a registration authority, the CA above it) issued: good
    /// if the authority knows it and has not revoked it. Its candidates carry where it was
    /// issued (label, profile, origin); a registration authority's certificate (EKU
    /// id-kp-cmcRA) is also an RA candidate, first.
    async fn certificate_of_this_ca(
        &self,
        cert: estuary_auth::VerifiedClientCert,
        authority: &dyn Authority,
        outcome: &mut AuthOutcome,
    ) {
        match authority.standing(&cert.serial_hex).await {
            Ok(Standing::Revoked) => outcome.fail(
                AuthFailure::CertificateRevoked,
                "client certificate is revoked",
            ),
            Ok(Standing::Good(status)) => {
                let ra_name = cert
                    .registration_authority
                    .then(|| cert.common_names().and_then(|cns| cns.into_iter().next()))
                    .flatten();
                if let Some(name) = ra_name {
                    outcome.candidates.push(Candidate {
                        requester: Requester::RegistrationAuthority {
                            name,
                            certificate: cert.clone(),
                        },
                        issued_under: status.clone(),
                    });
                }
                outcome.candidates.push(Candidate {
                    requester: Requester::ClientCert(cert),
                    issued_under: status,
                });
            }
            Ok(Standing::Unknown) => outcome.fail(
                AuthFailure::CertificateUnknown,
                "client certificate is not in this server's certificate store",
            ),
            Err(e) => {
                tracing::error!(error = %e, "revocation check failed");
                outcome.fail(
                    AuthFailure::StoreError,
                    "client certificate could not be checked",
                );
            }
        }
    }

    /// A certificate from a manufacturer's bootstrap CA (path validation, its CRL). When it
    /// fails too, the failure of the check that came closest is reported (`ours`: why it is
    /// not a certificate of this CA).
    fn bootstrap_certificate(
        &self,
        chain: &[Vec<u8>],
        now: SystemTime,
        ours: estuary_auth::CertAuthFailure,
        outcome: &mut AuthOutcome,
    ) {
        let crls: Vec<Arc<BootstrapCrl>> = self
            .bootstrap_crls
            .load()
            .iter()
            .map(|c| c.crl.clone())
            .collect();
        match self.verifier.verify_bootstrap(chain, now, &crls) {
            // A CRL is configured for its CA but not loaded (its URL has not answered yet):
            // revocation cannot be checked, so it is refused.
            Ok(cert)
                if self.crl_feeds.iter().any(|f| f.name == cert.anchor)
                    && !crls.iter().any(|c| c.name == cert.anchor) =>
            {
                outcome.fail(
                    AuthFailure::CertificateCrlUnusable,
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
            Err(bootstrap) => {
                let e = if ours == estuary_auth::CertAuthFailure::UnknownIssuer {
                    bootstrap
                } else {
                    ours
                };
                let message = e.to_string();
                outcome.fail(e.into(), &message)
            }
        }
    }

    /// HTTP Basic (RFC 7617): the argon2 check runs on the password-check threads
    /// (`password_checkers`), behind the password gate, unless the credential is cached.
    async fn basic(
        &self,
        conn: &ConnectionInfo,
        value: &http::HeaderValue,
        outcome: &mut AuthOutcome,
    ) {
        let Some((user, password)) = value.to_str().ok().and_then(parse_basic_authorization) else {
            outcome.fail(
                AuthFailure::BadAuthorizationHeader,
                "Authorization header is not HTTP Basic (RFC 7617)",
            );
            return;
        };
        outcome.claimed = format!("basic:{}", truncate(&user, 128));
        let ok = match self.users.check_cached(&user, &password) {
            Some(ok) => ok,
            None => {
                let Some(pass) = self.password_gate.enter(&address_key(conn.peer.ip())) else {
                    outcome.password_busy = true;
                    return;
                };
                let users = self.users.clone();
                let (u, p) = (user.clone(), password);
                // Every unknown name queues as one name: guesses with random user names take
                // one running slot between them, not all of them.
                let queue = if self.users.knows(&user) {
                    truncate(&user, 128).into_owned()
                } else {
                    crate::password_gate::UNKNOWN_USERS.to_string()
                };
                let checkers = crate::password_checkers::PasswordCheckers::get();
                match (self.password_gate.slot(&pass, &queue).await, checkers) {
                    (Some(slot), Some(checkers)) => checkers
                        .run(move || {
                            let _slot = slot;
                            let _pass = pass;
                            users.verify(&u, &p)
                        })
                        .await
                        .unwrap_or(false),
                    _ => false,
                }
            }
        };
        if ok {
            outcome.candidates.push(Candidate {
                requester: Requester::BasicUser { name: user },
                issued_under: None,
            });
        } else {
            outcome.fail(AuthFailure::WrongPassword, "wrong user name or password");
        }
    }
}

/// The result of [`Authenticators::authenticate`].
#[derive(Debug, Default)]
pub struct AuthOutcome {
    /// Every identity the request proved, best first.
    pub candidates: Vec<Candidate>,
    /// The password could not be checked now: this address or user name is over its share
    /// of password checks.
    pub password_busy: bool,
    /// What a failed credential claimed to be (`basic:NAME`), for the audit trail.
    pub claimed: String,
    /// Credentials that failed: why (its code is the metrics label) and the message.
    pub failures: Vec<(AuthFailure, String)>,
}

impl AuthOutcome {
    fn fail(&mut self, failure: AuthFailure, message: &str) {
        self.failures.push((failure, message.to_string()));
    }

    /// Why the first credential failed ([`AuthFailure::NoCredentials`] when none was sent).
    pub fn failure(&self) -> AuthFailure {
        self.failures
            .first()
            .map_or(AuthFailure::NoCredentials, |(f, _)| f.clone())
    }

    /// What the client is told.
    pub fn failure_message(&self) -> String {
        if self.failures.is_empty() {
            "authentication required: send HTTP Basic credentials or a TLS client certificate issued by this CA"
                .into()
        } else {
            let messages: Vec<&str> = self.failures.iter().map(|(_, m)| m.as_str()).collect();
            format!("authentication failed: {}", messages.join("; "))
        }
    }
}
