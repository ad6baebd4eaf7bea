//! The certificate agent: what IoT Edge's certificate service does with EST, driven by the same
//! config file (`/etc/aziot/config.toml`).
//!
//! - [`config`]: the IoT Edge config file, parsed into the certificates to manage.
//! - [`policy`]: renewal thresholds and retry periods (`80%`, `60min`, `60m`, `1d`, ...).
//! - [`state`]: the state directory (certificates, keys, `state.json`).
//! - [`run`]: enrolling, renewing, rotating keys, falling back to the bootstrap certificate.

pub mod config;
pub mod policy;
pub mod run;
pub mod state;

pub use config::{AgentConfig, CertId, ManagedCert};
pub use run::{Agent, PassReport};
