//! Certificates and keys on disk: PEM, written atomically (temporary file, fsync, rename),
//! keys with mode 0600, so that a crash never leaves half a file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use der::Decode;
use estuary_ca::FileKeySigner;
use x509_cert::Certificate;

use crate::ClientError;

/// Reads every certificate of a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, ClientError> {
    estuary_ca::bootstrap::read_pem_certificates(path)
        .map_err(|e| ClientError::Config(e.to_string()))
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1 PEM).
pub fn read_key(path: &Path) -> Result<FileKeySigner, ClientError> {
    let text =
        estuary_ca::bootstrap::read_secret(path).map_err(|e| ClientError::Config(e.to_string()))?;
    FileKeySigner::from_pem(&text)
        .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))
}

/// Writes certificates as PEM (mode 0644), atomically.
pub fn write_certificates(path: &Path, ders: &[Vec<u8>]) -> Result<(), ClientError> {
    let text = estuary_ca::bootstrap::pem_certificates(ders);
    estuary_ca::bootstrap::write_atomic(path, text.as_bytes(), 0o644)
        .map_err(|e| ClientError::Config(e.to_string()))
}

/// Writes a private key as PKCS#8 PEM (mode 0600), atomically.
pub fn write_key(path: &Path, key: &FileKeySigner) -> Result<(), ClientError> {
    estuary_ca::bootstrap::write_atomic(path, key.to_pem().as_bytes(), 0o600)
        .map_err(|e| ClientError::Config(e.to_string()))
}

/// Writes raw PKCS#8 DER as PEM (mode 0600), atomically.
pub fn write_key_der(path: &Path, pkcs8: &[u8]) -> Result<(), ClientError> {
    let block = pem::Pem::new("PRIVATE KEY", pkcs8.to_vec());
    let text = zeroize::Zeroizing::new(estuary_ca::bootstrap::pem_encode(&block));
    zeroize::Zeroize::zeroize(&mut block.into_contents());
    estuary_ca::bootstrap::write_atomic(path, text.as_bytes(), 0o600)
        .map_err(|e| ClientError::Config(e.to_string()))
}

/// Writes a DER CSR as PEM (`CERTIFICATE REQUEST`, mode 0644), atomically.
pub fn write_csr(path: &Path, der: &[u8]) -> Result<(), ClientError> {
    let text =
        estuary_ca::bootstrap::pem_encode(&pem::Pem::new("CERTIFICATE REQUEST", der.to_vec()));
    estuary_ca::bootstrap::write_atomic(path, text.as_bytes(), 0o644)
        .map_err(|e| ClientError::Config(e.to_string()))
}

/// Reads a PEM CSR written by [`write_csr`]: the DER bytes exactly as they were sent.
pub fn read_csr(path: &Path) -> Result<Vec<u8>, ClientError> {
    let text =
        std::fs::read(path).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
    let block =
        pem::parse(&text).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
    if block.tag() != "CERTIFICATE REQUEST" {
        return Err(ClientError::Config(format!(
            "{}: expected a CERTIFICATE REQUEST, found {}",
            path.display(),
            block.tag()
        )));
    }
    Ok(block.into_contents())
}

/// `path` with `suffix` appended to the file name (`key.pem` -> `key.pem.new`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// What a person wants to see about a certificate.
#[derive(Debug, Clone)]
pub struct CertificateSummary {
    /// Subject.
    pub subject: String,
    /// Issuer.
    pub issuer: String,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
    /// SHA-256 fingerprint, upper-case hex with colons.
    pub sha256: String,
    /// Whether basicConstraints says CA.
    pub is_ca: bool,
}

/// Summarizes a DER certificate.
pub fn summarize(der: &[u8]) -> Result<CertificateSummary, ClientError> {
    let cert = Certificate::from_der(der)
        .map_err(|e| ClientError::Protocol(format!("certificate: {e}")))?;
    let tbs = &cert.tbs_certificate;
    let digest = estuary_ca::issue::thumbprint_sha256(der);
    let sha256 = digest
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let is_ca = tbs.extensions.iter().flatten().any(|e| {
        e.extn_id == const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS
            && x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes())
                .is_ok_and(|b| b.ca)
    });
    Ok(CertificateSummary {
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        not_before: tbs.validity.not_before.to_system_time(),
        not_after: tbs.validity.not_after.to_system_time(),
        sha256,
        is_ca,
    })
}

/// Whether the certificate's public key is the key's.
pub fn key_matches(certificate: &[u8], key: &FileKeySigner) -> bool {
    use der::Encode;
    use estuary_ca::CaSigner;
    Certificate::from_der(certificate)
        .ok()
        .and_then(|c| c.tbs_certificate.subject_public_key_info.to_der().ok())
        .is_some_and(|spki| spki == key.public_key_der())
}

/// `YYYY-MM-DD HH:MM:SSZ`.
pub fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| secs.to_string())
}
