//! Estuary's EST server.
//!
//! A request's path through this crate:
//!
//! ```text
//! serve::serve          TLS accept (timeout), peer certificate chain captured once
//!   -> est::EstService::handle      request id, rate limit, log line, metrics, audit of denials
//!     -> est::route                 /.well-known/est[/<label>]/<operation>  (or /crl)
//!     -> EstService::authenticate   Basic / client cert / bootstrap cert -> Requesters
//!     -> the label's auth rules     who may use this label
//!     -> estuary_wire::csr          base64 / PEM -> verified PKCS#10
//!     -> estuary_ca::Profile::check what this label's profile allows
//!     -> approval                   manual labels: 202 until an operator decides
//!     -> estuary_ca::CertificateAuthority::issue  (signing behind CaSigner)
//!     -> estuary_store::Store::record_issued      durable before release
//!     -> estuary_wire::pkcs7        certs-only, base64 in 64 columns (multipart for serverkeygen)
//! error::EstError       the one place errors become HTTP statuses
//! crl::CrlPublisher     the signed CRL, refreshed on revocation and before nextUpdate
//! admin                 /metrics, /healthz, /readyz (and /crl over plain HTTP)
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod crl;
pub mod error;
pub mod est;
pub mod metrics;
pub mod ratelimit;
pub mod serve;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use estuary_auth::{BasicUsers, ClientCertVerifier};
use estuary_ca::bootstrap::{
    default_server_sans, load_or_create_ca, load_or_create_server_identity, read_pem_certificates,
    ServerIdentity,
};
use estuary_store::SqliteStore;

use crate::config::Settings;
use crate::crl::CrlPublisher;
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
    /// The TLS identity.
    pub identity: ServerIdentity,
    /// Settings in force at start.
    pub settings: Settings,
    /// Whether the CA was created by this start.
    pub created_ca: bool,
    data_dir: PathBuf,
}

/// Loads or creates everything in `data_dir` for `settings`.
pub fn prepare(settings: Settings, data_dir: &Path) -> Result<PreparedServer, String> {
    // Mode 0700: it holds the CA key, the server key and the database.
    estuary_ca::bootstrap::create_private_dir(data_dir).map_err(|e| e.to_string())?;
    let (ca, created_ca) =
        load_or_create_ca(data_dir, settings.ca_key).map_err(|e| e.to_string())?;
    let mut sans = default_server_sans();
    sans.extend(settings.server_sans.iter().cloned());
    let (identity, _) = load_or_create_server_identity(data_dir, &ca, settings.ca_key, &sans)
        .map_err(|e| e.to_string())?;
    let tls = tls::server_config(&identity)?;
    let store: Arc<dyn estuary_store::Store> =
        Arc::new(SqliteStore::open(&data_dir.join(DATABASE_FILE)).map_err(|e| e.to_string())?);
    let shared = Shared {
        crl: Arc::new(CrlPublisher::new(
            ca.clone(),
            store.clone(),
            settings.crl.validity,
        )),
        ca,
        store,
        metrics: Arc::new(Metrics::default()),
    };
    let service = build_service(&settings, data_dir, &shared, None)?;
    Ok(PreparedServer {
        service: Arc::new(ArcSwap::from_pointee(service)),
        shared,
        tls,
        identity,
        settings,
        created_ca,
        data_dir: data_dir.to_path_buf(),
    })
}

impl PreparedServer {
    /// Applies new settings (users, labels, profiles, rate limits, bootstrap CAs, CRL URL)
    /// without dropping connections: requests in flight finish on the old service.
    pub fn reload(&self, settings: &Settings) -> Result<(), String> {
        let current = self.service.load_full().limiters();
        let result = build_service(settings, &self.data_dir, &self.shared, Some(current));
        self.shared.metrics.reload(result.is_ok());
        self.service.store(Arc::new(result?));
        Ok(())
    }
}

fn build_service(
    settings: &Settings,
    data_dir: &Path,
    shared: &Shared,
    previous: Option<(Arc<RateLimiter>, Arc<RateLimiter>)>,
) -> Result<EstService, String> {
    let mut bootstrap = Vec::new();
    for (name, path) in &settings.bootstrap_ca {
        let certs = read_pem_certificates(&resolve(data_dir, path))
            .map_err(|e| format!("bootstrap_ca: {e}"))?;
        bootstrap.extend(certs.into_iter().map(|c| (name.clone(), c)));
    }
    let ca_der = shared
        .ca
        .chain_der()
        .first()
        .cloned()
        .ok_or_else(|| "CA chain is empty".to_string())?;
    let verifier = ClientCertVerifier::new(&ca_der, &bootstrap)?;
    let users = BasicUsers::new(settings.users.iter().cloned())?;
    let extra =
        match &settings.crl.url {
            Some(url) => vec![estuary_ca::crl::crl_distribution_points(url)
                .map_err(|e| format!("crl.url: {e}"))?],
            None => vec![],
        };
    let r = &settings.rate_limits;
    let keep = |old: Option<Arc<RateLimiter>>, per_minute: u32| {
        old.filter(|l| l.per_minute() == per_minute)
            .unwrap_or_else(|| Arc::new(RateLimiter::new(per_minute)))
    };
    let (old_address, old_identity) = previous.map_or((None, None), |(a, i)| (Some(a), Some(i)));
    let limiters = (
        keep(old_address, r.per_address_per_minute),
        keep(old_identity, r.per_identity_per_minute),
    );
    EstService::new(settings, shared.clone(), users, verifier, extra, limiters)
}

/// Relative paths in the config are relative to the data directory.
fn resolve(data_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        data_dir.join(p)
    }
}
