//! Estuary's EST server.
//!
//! A request's path through this crate:
//!
//! ```text
//! serve::serve          TLS accept (timeout), peer certificate chain captured once
//!   -> est::EstService::handle      request id, log line, audit of denials
//!     -> est::route                 /.well-known/est[/<label>]/<operation>
//!     -> EstService::authenticate   Basic / client cert / bootstrap cert -> Requester
//!     -> estuary_wire::csr          base64 / PEM -> verified PKCS#10
//!     -> estuary_ca::Profile::check what this label's profile allows
//!     -> estuary_ca::CertificateAuthority::issue  (signing behind CaSigner)
//!     -> estuary_store::Store::record_issued      durable before release
//!     -> estuary_wire::pkcs7        certs-only, base64 in 64 columns
//! error::EstError       the one place errors become HTTP statuses
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod est;
pub mod serve;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use estuary_auth::{BasicUsers, ClientCertVerifier};
use estuary_ca::bootstrap::{
    default_server_sans, load_or_create_ca, load_or_create_server_identity, read_pem_certificates,
    ServerIdentity,
};
use estuary_ca::CertificateAuthority;
use estuary_store::SqliteStore;

use crate::config::Settings;
use crate::est::{EstService, EstServiceParts};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "estuary.db";
/// The config file inside the data directory.
pub const CONFIG_FILE: &str = "estuary.toml";

/// A server ready to serve: CA loaded or created, TLS identity, store open.
#[derive(Debug)]
pub struct PreparedServer {
    /// The EST service.
    pub service: Arc<EstService>,
    /// TLS configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// The CA.
    pub ca: CertificateAuthority,
    /// The TLS identity.
    pub identity: ServerIdentity,
    /// Settings in force.
    pub settings: Settings,
    /// Whether the CA was created by this start.
    pub created_ca: bool,
}

/// Loads or creates everything in `data_dir` for `settings`.
pub fn prepare(settings: Settings, data_dir: &Path) -> Result<PreparedServer, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let (ca, created_ca) =
        load_or_create_ca(data_dir, settings.ca_key).map_err(|e| e.to_string())?;
    let mut sans = default_server_sans();
    sans.extend(settings.server_sans.iter().cloned());
    let (identity, _) = load_or_create_server_identity(data_dir, &ca, settings.ca_key, &sans)
        .map_err(|e| e.to_string())?;
    let tls = tls::server_config(&identity)?;

    let bootstrap: Vec<Vec<u8>> = settings
        .bootstrap_ca
        .iter()
        .map(|p| resolve(data_dir, p))
        .map(|p| read_pem_certificates(&p).map_err(|e| format!("bootstrap_ca: {e}")))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let ca_der = ca
        .chain_der()
        .first()
        .cloned()
        .ok_or_else(|| "CA chain is empty".to_string())?;
    let verifier = ClientCertVerifier::new(&ca_der, &bootstrap)?;
    let users = BasicUsers::new(settings.users.iter().cloned())?;
    let store = SqliteStore::open(&data_dir.join(DATABASE_FILE)).map_err(|e| e.to_string())?;
    let service = EstService::new(EstServiceParts {
        ca: ca.clone(),
        store: Arc::new(store),
        users: Arc::new(users),
        verifier,
        validity: settings.validity,
        default_profile: settings.default_profile,
        labels: settings.labels.clone(),
        csrattrs: settings.csrattrs.clone(),
        limits: settings.limits.clone(),
    })?;
    Ok(PreparedServer {
        service: Arc::new(service),
        tls,
        ca,
        identity,
        settings,
        created_ca,
    })
}

/// Relative paths in the config are relative to the data directory.
fn resolve(data_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        data_dir.join(p)
    }
}
