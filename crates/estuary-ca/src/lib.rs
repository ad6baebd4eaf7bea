//! Estuary's certificate authority.
//!
//! - [`signer`]: the one small interface a CA key sits behind ([`CaSigner`]: public key + sign),
//!   and its file-key implementation. A PKCS#11 key plugs in at the same seam.
//! - [`profile`]: what a certificate may contain (`device`, `edge-ca`) and the check of a CSR
//!   against it.
//! - [`issue`]: building and signing certificates from a verified CSR and a profile.
//! - [`bootstrap`]: creating or loading the root CA and the TLS server identity in a data directory.
//! - [`crl`]: certificate revocation lists and the CRL distribution point extension.
//! - [`pkcs11`]: a CA key inside a PKCS#11 token (HSM), named by an RFC 7512 URI.
//! - [`import`]: bringing an existing CA into a data directory, or creating an issuing CA
//!   under a new offline root.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bootstrap;
pub mod crl;
pub mod import;
pub mod issue;
pub mod pkcs11;
pub mod profile;
pub mod signer;

mod error;
pub use error::CaError;
pub use issue::{CertificateAuthority, IssuedCertificate};
pub use profile::{CheckedRequest, PolicyContext, PolicyRefusal, Profile, ProfileSelection};
pub use signer::{CaSigner, FileKeySigner, KeyChoice};

/// The exit status of a command that stopped because the PKCS#11 token refused the PIN
/// (78, EX_CONFIG): `RestartPreventExitStatus=78` in the systemd unit keeps it from logging in
/// again and again until the HSM locks the PIN.
pub const PIN_REFUSED_EXIT_CODE: u8 = 78;
