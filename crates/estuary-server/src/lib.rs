//! Estuary's EST server.
//!
//! A request's path through this crate (in full: `docs/architecture.md`):
//!
//! ```text
//! serve::serve                  TLS accept (timeout), peer certificate chain captured once
//!                               (tls_socket: session tickets sent with the first answer)
//!   -> est::EstService::handle  request id, per-address rate limit, log line, metrics, audit of refusals
//!     -> est::route             /.well-known/est[/<label>]/<operation> (or /crl); label, method
//!     -> authenticate::Authenticators::authenticate
//!                               Basic / client cert / bootstrap cert / RA cert -> candidates
//!     -> admission::accepted_identities   the label's auth rules (403)
//!     -> Content-Type (415), body, estuary_wire::csr decode and verify, empty subject (400)
//!     -> admission::admit       subject rule, [registration_authorities] rule, RFC 7030 §4.2.2
//!     -> authority::Authority::enroll
//!          LocalAuthority       profile, approval, CertificateAuthority::issue, Store::record_issued
//!          UpstreamAuthority    forwarded with the RA certificate, recorded in the inventory
//!     -> encode                 certs-only PKCS#7, base64 (multipart for serverkeygen, 202 pending)
//! error::EstError       the one place errors become HTTP statuses
//! crl::CrlPublisher     the CA's signed CRL, re-signed on revocation and before nextUpdate
//! admin                 /metrics, /healthz, /readyz (and /crl over plain HTTP)
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod authenticate;
pub mod authority;
pub mod bootstrap_crl;
pub mod config;
pub mod crl;
pub mod denials;
pub mod error;
pub mod est;
pub mod header_case;
pub mod metrics;
pub mod password_checkers;
pub mod password_gate;
pub mod ra;
pub mod ratelimit;
pub mod serve;
pub mod tls;
pub mod tls_socket;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use estuary_auth::{BasicUsers, ClientCertVerifier};
use estuary_ca::bootstrap::{
    default_server_sans, load_or_create_ca, load_or_create_server_identity, read_pem_certificates,
};

use crate::authenticate::AuthSetup;
use crate::authority::{LocalAuthority, UpstreamAuthority};
use crate::bootstrap_crl::CrlFeed;
use crate::config::Settings;
use crate::denials::DenialTally;
use crate::error::ServerError;
use crate::est::{EstService, Shared};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "estuary.db";
/// The config file inside the data directory.
pub const CONFIG_FILE: &str = "estuary.toml";

/// The service in force; a reload swaps it without touching connections.
pub type ServiceHandle = Arc<ArcSwap<EstService>>;

/// A server ready to serve: CA loaded or created, TLS identity, store open.
#[derive(Debug)]
pub struct PreparedServer {
    /// The EST service (swapped on reload).
    pub service: ServiceHandle,
    /// What survives reloads.
    pub shared: Shared,
    /// TLS configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// Settings in force at start.
    pub settings: Settings,
    /// This server's CA (`None` for a registration authority).
    pub ca: Option<estuary_ca::CertificateAuthority>,
    /// Whether the CA was created by this start.
    pub created_ca: bool,
    data_dir: PathBuf,
}

/// Loads or creates everything in `data_dir` for `settings`.
pub async fn prepare(settings: Settings, data_dir: &Path) -> Result<PreparedServer, ServerError> {
    // Mode 0700: it holds the CA key, the server key and the database.
    estuary_ca::bootstrap::create_private_dir(data_dir)?;
    if data_dir
        .join(estuary_client::upstream::RA_CERT_FILE)
        .exists()
        && !data_dir.join(estuary_ca::bootstrap::CA_KEY_FILE).exists()
        && settings.ca_key_uri.is_none()
    {
        return Err(ServerError::RegistrationAuthorityDataDir(
            data_dir.to_path_buf(),
        ));
    }
    let (ca, created_ca) = match &settings.ca_key_uri {
        // The key stays in the token; the CA is made by `estuary ca init --key-uri`.
        Some(uri) => (
            estuary_ca::bootstrap::load_ca_from_token(data_dir, uri)?,
            false,
        ),
        None => load_or_create_ca(data_dir, settings.ca_key)?,
    };
    let mut sans = default_server_sans();
    sans.extend(settings.server_sans.iter().cloned());
    let cert_path = data_dir.join(estuary_ca::bootstrap::SERVER_CERT_FILE);
    let had_certificate = cert_path.exists();
    let (identity, issued) = load_or_create_server_identity(data_dir, &ca, settings.ca_key, &sans)?;
    if issued {
        let names = sans
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if had_certificate {
            // Clients that pinned the old certificate (rather than the CA) must learn the new one.
            tracing::info!(
                path = %cert_path.display(),
                sans = %names,
                "TLS server certificate re-issued (same key): the old one lacked one of these names \
                 (server_sans, --san), had expired, or was not issued by this CA"
            );
        } else {
            tracing::info!(path = %cert_path.display(), sans = %names, "TLS server certificate issued");
        }
    }
    let tls = tls::server_config(&identity)?;
    let store = open_store(&settings, data_dir).await?;
    bind_store_to_ca(
        store.as_ref(),
        &ca,
        &database_url(&settings, data_dir),
        created_ca.then_some(data_dir),
    )
    .await?;
    let metrics = Arc::new(Metrics::default());
    let denials: Arc<DenialTally> = Arc::default();
    let authority = Arc::new(LocalAuthority::new(
        ca.clone(),
        store.clone(),
        metrics.clone(),
        denials.clone(),
        &settings,
    )?);
    let shared = Shared {
        authority: authority.clone(),
        store,
        metrics,
        denials,
    };
    PreparedServer::assemble(settings, data_dir, shared, tls, Some(ca), created_ca)
}

/// The database `[database] url` (or `--database`) names, else `DATA_DIR/estuary.db`;
/// created or upgraded (the server is the only command that changes the schema).
pub fn database_url(settings: &Settings, data_dir: &Path) -> estuary_store::DatabaseUrl {
    settings
        .database
        .clone()
        .unwrap_or_else(|| estuary_store::DatabaseUrl::Sqlite(data_dir.join(DATABASE_FILE)))
}

async fn open_store(
    settings: &Settings,
    data_dir: &Path,
) -> Result<Arc<dyn estuary_store::Store>, ServerError> {
    let url = database_url(settings, data_dir);
    if let estuary_store::DatabaseUrl::Postgres(postgres) = &url {
        if let Some(warning) = postgres.unauthenticated_server_warning() {
            tracing::warn!("{warning}");
        }
    }
    if let estuary_store::DatabaseUrl::Sqlite(path) = &url {
        refuse_a_store_copied_away(path)?;
    }
    let store = estuary_store::open(&url, estuary_store::OpenMode::CreateOrUpgrade).await?;
    tracing::info!(database = %url, "certificate store open");
    if matches!(url, estuary_store::DatabaseUrl::Postgres(_)) {
        warn_of_a_sqlite_store_left_behind(store.as_ref(), data_dir).await;
    }
    Ok(store)
}

/// The id of a CA key in the store (`Store::bind_ca_key`): the first 8 bytes of the SHA-256 of
/// its public key (SubjectPublicKeyInfo DER).
pub fn ca_key_id(ca: &estuary_ca::CertificateAuthority) -> i64 {
    ca_key_id_of_spki(ca.signer().public_key_der())
}

/// A CA key id as it is shown, and as `ESTUARY_ACCEPT_NEW_CA_KEY` takes it: 16 hex digits.
pub fn ca_key_id_hex(id: i64) -> String {
    format!("{:016x}", id as u64)
}

/// Whether `ESTUARY_ACCEPT_NEW_CA_KEY` names the CA key `id`: a store of another CA key is then
/// bound to it on purpose ([`bind_store_to_ca`]).
pub fn accepts_new_ca_key(id: i64) -> bool {
    std::env::var("ESTUARY_ACCEPT_NEW_CA_KEY")
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case(&ca_key_id_hex(id)))
}

/// [`ca_key_id`] of a DER SubjectPublicKeyInfo (the CA certificate's, for `config check`).
pub fn ca_key_id_of_spki(spki_der: &[u8]) -> i64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(head)
}

/// Whose a store is, seen from one CA key ([`store_owner`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOwner {
    /// The store records this key.
    ThisKey,
    /// The store records another key (its id).
    OtherKey(i64),
    /// No key recorded and no certificates: the first start binds the store to its key.
    Nobody,
    /// No key recorded (a store of an earlier version), and its newest certificate or one of
    /// its CRLs was signed by this key: the start records it.
    ThisKeyUnrecorded,
    /// No key recorded, certificates, and neither the newest of them nor a CRL signed by this
    /// key: another CA's store.
    AnotherKeyUnrecorded,
}

impl StoreOwner {
    /// Whether a server with this key may start on the store (without
    /// `ESTUARY_ACCEPT_NEW_CA_KEY`).
    pub fn admits(&self) -> bool {
        matches!(
            self,
            StoreOwner::ThisKey | StoreOwner::Nobody | StoreOwner::ThisKeyUnrecorded
        )
    }

    /// What the store holds instead of this key, for a refusal.
    pub fn describe_other(&self) -> String {
        match self {
            StoreOwner::OtherKey(id) => format!("id {}", ca_key_id_hex(*id)),
            _ => "no key recorded, and certificates not signed by this key".to_string(),
        }
    }
}

/// Whose `store` is, for the CA key whose public key (SubjectPublicKeyInfo DER) is `spki_der`:
/// the key the store recorded ([`estuary_store::Store::bind_ca_key`]); for a store of an
/// earlier version that recorded none, its newest certificate's signature (and its CRLs,
/// which every start of a CA publishes). `estuary serve` and `estuary config check` decide
/// with this one function.
pub async fn store_owner(
    store: &dyn estuary_store::Store,
    spki_der: &[u8],
) -> Result<StoreOwner, estuary_store::StoreError> {
    let ours = ca_key_id_of_spki(spki_der);
    match store.recorded_ca_key().await? {
        Some(recorded) if recorded == ours => return Ok(StoreOwner::ThisKey),
        Some(recorded) => return Ok(StoreOwner::OtherKey(recorded)),
        None => {}
    }
    let newest = estuary_store::CertificateFilter {
        limit: Some(1),
        ..Default::default()
    };
    let Some(newest) = store.list_certificates(&newest).await?.into_iter().next() else {
        return Ok(StoreOwner::Nobody);
    };
    let issuer = crl::issuer_id_of_spki(spki_der);
    if signed_by(&newest.der, spki_der) || store.newest_crl(&issuer, 0).await?.is_some() {
        Ok(StoreOwner::ThisKeyUnrecorded)
    } else {
        Ok(StoreOwner::AnotherKeyUnrecorded)
    }
}

/// Whether the certificate `der` carries a valid signature of the key `spki_der`.
fn signed_by(der: &[u8], spki_der: &[u8]) -> bool {
    use der::{Decode as _, Encode as _};
    let (Ok(cert), Ok(spki)) = (
        x509_cert::Certificate::from_der(der),
        x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(spki_der),
    ) else {
        return false;
    };
    let Ok(tbs) = cert.tbs_certificate.to_der() else {
        return false;
    };
    let Some(signature) = cert.signature.as_bytes() else {
        return false;
    };
    estuary_wire::signature::verify(&spki, &cert.signature_algorithm, &tbs, signature).is_ok()
}

/// One store, one CA key: a node set up with another CA than the store's (a key file not
/// copied, another HSM key, a CA lost and created again) would hand out certificates of two CAs
/// behind one address, and each CA's CRL would list the other's revocations. The first start
/// records the key; a start with another key is refused ([`store_owner`] decides).
/// `ESTUARY_ACCEPT_NEW_CA_KEY=ID`, with the new key's id that the refusal prints, binds the
/// store to a CA that replaces the old one on purpose. `created_in`: the data directory, when
/// this start created the CA (said in the refusal).
async fn bind_store_to_ca(
    store: &dyn estuary_store::Store,
    ca: &estuary_ca::CertificateAuthority,
    url: &estuary_store::DatabaseUrl,
    created_in: Option<&Path>,
) -> Result<(), ServerError> {
    let ours = ca_key_id(ca);
    let ours_hex = ca_key_id_hex(ours);
    let replace = accepts_new_ca_key(ours);
    let mut created = created_in.map_or_else(String::new, |dir| {
        format!(
            " This start created that CA in {} (there was none): replace its ca-cert.pem and ca-key.pem with the store's CA from your backup or from a node of this store.",
            dir.display()
        )
    });
    if std::env::var_os("ESTUARY_ACCEPT_NEW_CA_KEY").is_some() && !replace {
        created.push_str(
            " ESTUARY_ACCEPT_NEW_CA_KEY is set, but not to this server's key id: it was ignored.",
        );
    }
    let refusal = |recorded: String| ServerError::StoreOfAnotherCa {
        database: url.to_string(),
        recorded,
        ours: ours_hex.clone(),
        created: created.clone(),
    };
    let owner = store_owner(store, ca.signer().public_key_der()).await?;
    if !replace && !owner.admits() {
        return Err(refusal(owner.describe_other()));
    }
    let recorded = store.bind_ca_key(ours, replace).await?;
    if recorded != ours {
        // Another node recorded its key since (a race of two first starts).
        return Err(refusal(format!("id {}", ca_key_id_hex(recorded))));
    }
    if replace && owner == StoreOwner::ThisKey {
        tracing::info!(
            ca_key_id = %ours_hex,
            "ESTUARY_ACCEPT_NEW_CA_KEY: the store was already bound to this server's CA key; the variable can be removed"
        );
    } else if replace {
        tracing::warn!(
            ca_key_id = %ours_hex,
            "ESTUARY_ACCEPT_NEW_CA_KEY: the store is now bound to this server's CA key; nodes with the old key are refused at their next start"
        );
    }
    Ok(())
}

/// A SQLite store that `estuary store migrate` copied into PostgreSQL is not served: a server
/// restarted on it by mistake, its config not yet pointing at the database, would issue
/// certificates the cluster never sees. `ESTUARY_SERVE_COPIED_STORE=1` serves it all the same
/// (the PostgreSQL copy abandoned) and removes the mark.
fn refuse_a_store_copied_away(path: &Path) -> Result<(), ServerError> {
    if copied_away(path)?.is_none() {
        return Ok(());
    }
    estuary_store::migrate::forget_copy_to_postgres(path)?;
    tracing::warn!(
        file = %path.display(),
        "ESTUARY_SERVE_COPIED_STORE=1: this SQLite store, copied into PostgreSQL earlier, is served again and no longer marked as copied; what it records now is not in the PostgreSQL copy"
    );
    Ok(())
}

/// Whether the SQLite store at `path` may be changed: `Err` when `estuary store migrate` copied
/// it into PostgreSQL (unless `ESTUARY_SERVE_COPIED_STORE=1`), else when it was copied and the
/// variable says to go ahead, `Some(copy time)`; `None` for a store never copied (or no file).
pub fn copied_away(path: &Path) -> Result<Option<i64>, ServerError> {
    if !path.exists() {
        return Ok(None);
    }
    // A store that cannot be read (busy for 10 s: a copy in progress) is not started on.
    let Some(at) = estuary_store::migrate::copied_to_postgres_at(path)? else {
        return Ok(None);
    };
    if std::env::var_os("ESTUARY_SERVE_COPIED_STORE").is_some_and(|v| v == "1") {
        return Ok(Some(at));
    }
    Err(estuary_store::StoreError::CopiedToPostgres {
        path: path.to_path_buf(),
        copied: time::OffsetDateTime::from_unix_timestamp(at)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| at.to_string()),
    }
    .into())
}

/// A server moved onto PostgreSQL with its SQLite file not copied (`estuary store migrate`)
/// would refuse the renewals of every device it enrolled before: said at start while the
/// database holds no certificate and the file does.
async fn warn_of_a_sqlite_store_left_behind(store: &dyn estuary_store::Store, data_dir: &Path) {
    let file = data_dir.join(DATABASE_FILE);
    if !file.exists() {
        return;
    }
    if matches!(holds_certificates(store).await, Ok(false)) {
        tracing::warn!(
            file = %file.display(),
            "this server uses PostgreSQL, which holds no certificate yet, and its data directory has a SQLite store: the certificates in that file are unknown here. To keep them, stop the server and copy the file with `estuary store migrate` into a database no node has used (docs/cluster.md)"
        );
    }
}

/// Whether the store holds any certificate (one row read).
pub async fn holds_certificates(
    store: &dyn estuary_store::Store,
) -> Result<bool, estuary_store::StoreError> {
    let any = estuary_store::CertificateFilter {
        limit: Some(1),
        ..Default::default()
    };
    Ok(!store.list_certificates(&any).await?.is_empty())
}

/// Prepares a registration authority (`[upstream]`, `--upstream`): no CA of its own. Its TLS
/// server certificate and RA certificate are enrolled from the upstream on first start (and
/// renewed before they expire); the upstream's CA chain and CRL are fetched and cached.
pub async fn prepare_registration_authority(
    settings: Settings,
    data_dir: &Path,
) -> Result<PreparedServer, ServerError> {
    let upstream = settings.upstream.clone().ok_or(ServerError::NoUpstream)?;
    estuary_ca::bootstrap::create_private_dir(data_dir)?;
    let (client, pinned) = ra::upstream_client(&upstream, data_dir)?;
    let client = Arc::new(client);
    let mut sans = default_server_sans();
    sans.extend(settings.server_sans.iter().cloned());
    // The RA is named by its first --san (its certificates' CN; `ra:NAME` upstream).
    let common_name = match settings.server_sans.first() {
        Some(estuary_ca::issue::SanEntry::Dns(name)) => name.clone(),
        Some(estuary_ca::issue::SanEntry::Ip(ip)) => ip.to_string(),
        None => "estuary-ra".to_string(),
    };
    let identity = estuary_client::upstream::RaIdentity::new(
        data_dir,
        sans,
        Some(upstream.server_label.clone()),
        Some(upstream.ra_label.clone()),
        common_name,
    );
    let store = open_store(&settings, data_dir).await?;
    let metrics = Arc::new(Metrics::default());
    let denials: Arc<DenialTally> = Arc::default();
    let authority = UpstreamAuthority::start_up(
        authority::upstream::UpstreamSetup {
            client,
            pinned,
            identity,
        },
        store.clone(),
        metrics.clone(),
        denials.clone(),
        &settings,
        data_dir,
    )
    .await?;
    let tls = tls::server_config_with(authority.tls_certificate())?;
    let shared = Shared {
        authority,
        store,
        metrics,
        denials,
    };
    PreparedServer::assemble(settings, data_dir, shared, tls, None, false)
}

impl PreparedServer {
    /// The first service of `settings` over `shared`.
    fn assemble(
        settings: Settings,
        data_dir: &Path,
        shared: Shared,
        tls: Arc<rustls::ServerConfig>,
        ca: Option<estuary_ca::CertificateAuthority>,
        created_ca: bool,
    ) -> Result<Self, ServerError> {
        let service = build_service(&settings, data_dir, &shared, None)?;
        Ok(PreparedServer {
            service: Arc::new(ArcSwap::from_pointee(service)),
            shared,
            tls,
            settings,
            ca,
            created_ca,
            data_dir: data_dir.to_path_buf(),
        })
    }
}

impl PreparedServer {
    /// Applies new settings (users, labels, profiles, rate limits, bootstrap CAs, CRL URL)
    /// without dropping connections: requests in flight finish on the old service.
    pub fn reload(&self, settings: &Settings) -> Result<(), ServerError> {
        let current = self.service.load_full();
        let result = build_service(settings, &self.data_dir, &self.shared, Some(&current));
        self.shared.metrics.reload(result.is_ok());
        self.service.store(Arc::new(result?));
        Ok(())
    }
}

/// How often refusals without an identity are summed into the audit trail.
const DENIAL_SUMMARY_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);
/// How often old audit events are pruned.
const AUDIT_PRUNE_PERIOD: std::time::Duration = std::time::Duration::from_secs(3600);
/// How often bootstrap CRLs are looked at again.
const BOOTSTRAP_CRL_PERIOD: std::time::Duration = std::time::Duration::from_secs(300);

impl PreparedServer {
    /// Background work for as long as the server runs: the minute's summary of refused
    /// anonymous requests, hourly audit pruning, and bootstrap CRL refreshes.
    pub async fn run_maintenance(self: Arc<Self>) {
        let mut summary = tokio::time::interval(DENIAL_SUMMARY_PERIOD);
        let mut prune = tokio::time::interval(AUDIT_PRUNE_PERIOD);
        let mut crls = tokio::time::interval(BOOTSTRAP_CRL_PERIOD);
        for timer in [&mut summary, &mut prune, &mut crls] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // The first tick of an interval is immediate; the CRLs were just loaded.
        crls.tick().await;
        let mut refreshing: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                _ = summary.tick() => self.record_denial_summary().await,
                _ = prune.tick() => self.prune_audit().await,
                _ = crls.tick() => {
                    // In its own task: a slow CRL server must not hold up the summaries and
                    // pruning (each fetch is bounded; one refresh runs at a time).
                    if refreshing.as_ref().is_none_or(|t| t.is_finished()) {
                        let service = self.service.load_full();
                        let data_dir = self.data_dir.clone();
                        refreshing = Some(tokio::task::spawn_blocking(move || {
                            service.authenticators().refresh_bootstrap_crls(&data_dir)
                        }));
                    }
                }
            }
        }
    }

    /// Writes the summary of refused anonymous requests since the last one, if any.
    pub async fn record_denial_summary(&self) {
        if let Some(event) = self.shared.denials.take_summary(est::unix_now()) {
            if let Err(e) = self.shared.store.record_audit(event).await {
                tracing::error!(error = %e, "could not record the summary of refused requests");
            }
        }
    }

    async fn prune_audit(&self) {
        let Some(retention) = self.service.load().audit_retention() else {
            return;
        };
        let before = std::time::SystemTime::now()
            .checked_sub(retention)
            .map_or(0, est::unix);
        match self.shared.store.prune_audit(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old audit events pruned"),
            Err(e) => tracing::error!(error = %e, "could not prune the audit trail"),
        }
    }
}

fn build_service(
    settings: &Settings,
    data_dir: &Path,
    shared: &Shared,
    previous: Option<&EstService>,
) -> Result<EstService, ServerError> {
    let mut bootstrap = Vec::new();
    for (name, path) in &settings.bootstrap_ca {
        let certs =
            read_pem_certificates(&resolve(data_dir, path)).map_err(ServerError::BootstrapCa)?;
        bootstrap.extend(certs.into_iter().map(|c| (name.clone(), c)));
    }
    let crl_feeds: Vec<CrlFeed> = settings
        .bootstrap_crl
        .iter()
        .filter_map(|(name, source)| {
            let (_, ca_der) = bootstrap.iter().find(|(n, _)| n == name)?;
            Some(CrlFeed {
                name: name.clone(),
                source: source.clone(),
                ca_der: ca_der.clone(),
            })
        })
        .collect();
    let in_force: Vec<Arc<estuary_auth::BootstrapCrl>> = previous
        .map(|p| {
            p.authenticators()
                .bootstrap_crls()
                .iter()
                .map(|c| c.crl.clone())
                .collect()
        })
        .unwrap_or_default();
    let bootstrap_crls = bootstrap_crl::load_at_start(&crl_feeds, data_dir, &in_force)?;
    let ca_der = shared
        .authority
        .chain_der()
        .first()
        .cloned()
        .ok_or(ServerError::EmptyCaChain)?;
    let verifier = ClientCertVerifier::new(&ca_der, &bootstrap)?;
    let users = BasicUsers::new(settings.users.iter().cloned())?;
    let r = &settings.rate_limits;
    let keep = |old: Option<Arc<RateLimiter>>, per_minute: u32| {
        old.filter(|l| l.per_minute() == per_minute)
            .unwrap_or_else(|| Arc::new(RateLimiter::new(per_minute)))
    };
    let (old_address, old_identity) = previous
        .map(EstService::limiters)
        .map_or((None, None), |(a, i)| (Some(a), Some(i)));
    let limiters = (
        keep(old_address, r.per_address_per_minute),
        keep(old_identity, r.per_identity_per_minute),
    );
    let auth = AuthSetup {
        users,
        verifier,
        bootstrap_crls,
        crl_feeds,
    };
    shared.authority.reconfigure(settings)?;
    EstService::new(settings, shared.clone(), auth, limiters)
}

/// Relative paths in the config are relative to the data directory.
fn resolve(data_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        data_dir.join(p)
    }
}
