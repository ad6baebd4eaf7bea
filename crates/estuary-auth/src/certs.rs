//! Client certificate verification: certificates issued by this CA, and certificates
//! chaining to a bootstrap trust anchor (a manufacturer's CA).
//!
//! The TLS layer accepts any client certificate (after checking the handshake signature, so
//! the peer holds the key); the decision is made here, so that a device whose certificate has
//! expired can still authenticate with Basic on the same connection.

use std::time::SystemTime;

use der::Decode;
use estuary_wire::signature::{split_signed, verify};
use x509_cert::name::Name;
use x509_cert::Certificate;

/// A client certificate that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClientCert {
    /// Subject, RFC 4514.
    pub subject: String,
    /// Subject as a name (for re-enrollment comparisons).
    pub subject_name: Name,
    /// Serial, lower-case hex.
    pub serial_hex: String,
    /// subjectAltName extension value, if any (DER GeneralNames).
    pub subject_alt_name: Option<Vec<u8>>,
    /// Which trust anchor accepted it: the CA's subject, or the bootstrap CA's name (its file stem).
    pub anchor: String,
}

/// Why a presented client certificate was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertAuthFailure {
    /// Not issued by a trusted CA.
    #[error("client certificate is not issued by a trusted CA")]
    UnknownIssuer,
    /// Outside its validity period.
    #[error("client certificate has expired or is not yet valid")]
    Expired,
    /// Did not parse, or too long a chain.
    #[error("client certificate is malformed")]
    Malformed,
    /// A CA certificate, or one without EKU clientAuth.
    #[error(
        "client certificate is not for client authentication (it is a CA, or lacks EKU clientAuth)"
    )]
    NotForClientAuth,
}

impl CertAuthFailure {
    /// A stable code for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            CertAuthFailure::UnknownIssuer => "certificate_unknown_issuer",
            CertAuthFailure::Expired => "certificate_expired",
            CertAuthFailure::Malformed => "certificate_malformed",
            CertAuthFailure::NotForClientAuth => "certificate_not_client_auth",
        }
    }
}

/// Most certificates looked at in a presented chain.
const MAX_CHAIN: usize = 8;

struct Anchor {
    certificate: Certificate,
    name: String,
}

/// Verifies client certificates against this CA and the bootstrap anchors.
pub struct ClientCertVerifier {
    ca: Anchor,
    bootstrap: Vec<Anchor>,
}

impl std::fmt::Debug for ClientCertVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertVerifier")
            .field("ca", &self.ca.name)
            .field(
                "bootstrap",
                &self.bootstrap.iter().map(|a| &a.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ClientCertVerifier {
    /// A verifier for the issuing CA certificate and the bootstrap anchors, each given with
    /// the name that label rules use (`bootstrap:NAME`).
    pub fn new(ca_der: &[u8], bootstrap: &[(String, Vec<u8>)]) -> Result<Self, String> {
        let anchor = |der: &[u8], name: Option<&str>| -> Result<Anchor, String> {
            let certificate =
                Certificate::from_der(der).map_err(|e| format!("trust anchor: {e}"))?;
            let name = name.map_or_else(
                || certificate.tbs_certificate.subject.to_string(),
                str::to_string,
            );
            Ok(Anchor { certificate, name })
        };
        Ok(ClientCertVerifier {
            ca: anchor(ca_der, None)?,
            bootstrap: bootstrap
                .iter()
                .map(|(name, d)| anchor(d, Some(name)))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Verifies that `chain[0]` was issued directly by this CA and is valid at `now`.
    /// (Revocation is the caller's check.)
    pub fn verify_ours(
        &self,
        chain: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<VerifiedClientCert, CertAuthFailure> {
        let leaf_der = chain.first().ok_or(CertAuthFailure::Malformed)?;
        let leaf = Certificate::from_der(leaf_der).map_err(|_| CertAuthFailure::Malformed)?;
        if !issued_by(leaf_der, &leaf, &self.ca.certificate) {
            return Err(CertAuthFailure::UnknownIssuer);
        }
        check_validity(&leaf, now)?;
        // Only end-entity client certificates authenticate: not the TLS server certificate
        // (serverAuth only) and not an Edge CA certificate.
        if is_ca(&leaf) || !allows_client_auth(&leaf) {
            return Err(CertAuthFailure::NotForClientAuth);
        }
        Ok(verified(&leaf, &self.ca.name))
    }

    /// Verifies that `chain[0]` chains, through the other presented certificates if needed,
    /// to a bootstrap anchor, every certificate on the path valid at `now`.
    pub fn verify_bootstrap(
        &self,
        chain: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<VerifiedClientCert, CertAuthFailure> {
        const MAX_DEPTH: usize = 5;
        if chain.len() > MAX_CHAIN {
            return Err(CertAuthFailure::Malformed);
        }
        let parsed: Vec<(Vec<u8>, Certificate)> = chain
            .iter()
            .filter_map(|d| Certificate::from_der(d).ok().map(|c| (d.clone(), c)))
            .collect();
        let (leaf_der, leaf) = parsed.first().ok_or(CertAuthFailure::Malformed)?;
        let mut current: (&Vec<u8>, &Certificate) = (leaf_der, leaf);
        let mut expired = false;
        for _ in 0..MAX_DEPTH {
            expired |= check_validity(current.1, now).is_err();
            if let Some(anchor) = self
                .bootstrap
                .iter()
                .find(|a| issued_by(current.0, current.1, &a.certificate))
            {
                if expired || check_validity(&anchor.certificate, now).is_err() {
                    return Err(CertAuthFailure::Expired);
                }
                return Ok(verified(leaf, &anchor.name));
            }
            let Some(next) = parsed
                .iter()
                .skip(1)
                .find(|(_, c)| is_ca(c) && issued_by(current.0, current.1, c))
            else {
                return Err(CertAuthFailure::UnknownIssuer);
            };
            current = (&next.0, &next.1);
        }
        Err(CertAuthFailure::UnknownIssuer)
    }
}

fn verified(leaf: &Certificate, anchor: &str) -> VerifiedClientCert {
    let tbs = &leaf.tbs_certificate;
    let subject_alt_name = tbs.extensions.as_ref().and_then(|exts| {
        exts.iter()
            .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME)
            .map(|e| e.extn_value.as_bytes().to_vec())
    });
    VerifiedClientCert {
        subject: tbs.subject.to_string(),
        subject_name: tbs.subject.clone(),
        serial_hex: tbs
            .serial_number
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        subject_alt_name,
        anchor: anchor.to_string(),
    }
}

/// `cert` names `issuer` as its issuer and carries a signature that verifies with its key.
fn issued_by(cert_der: &[u8], cert: &Certificate, issuer: &Certificate) -> bool {
    if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return false;
    }
    let Ok(parts) = split_signed(cert_der, "certificate") else {
        return false;
    };
    verify(
        &issuer.tbs_certificate.subject_public_key_info,
        &parts.algorithm,
        parts.tbs,
        parts.signature,
    )
    .is_ok()
}

fn check_validity(cert: &Certificate, now: SystemTime) -> Result<(), CertAuthFailure> {
    let v = &cert.tbs_certificate.validity;
    if now < v.not_before.to_system_time() || now > v.not_after.to_system_time() {
        return Err(CertAuthFailure::Expired);
    }
    Ok(())
}

/// EKU absent (any use) or containing clientAuth.
fn allows_client_auth(cert: &Certificate) -> bool {
    use x509_cert::ext::pkix::ExtendedKeyUsage;
    let Some(exts) = &cert.tbs_certificate.extensions else {
        return true;
    };
    match exts
        .iter()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_EXT_KEY_USAGE)
    {
        None => true,
        Some(e) => ExtendedKeyUsage::from_der(e.extn_value.as_bytes())
            .is_ok_and(|eku| eku.0.contains(&const_oid::db::rfc5912::ID_KP_CLIENT_AUTH)),
    }
}

fn is_ca(cert: &Certificate) -> bool {
    use x509_cert::ext::pkix::BasicConstraints;
    cert.tbs_certificate
        .extensions
        .as_ref()
        .is_some_and(|exts| {
            exts.iter().any(|e| {
                e.extn_id == const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS
                    && BasicConstraints::from_der(e.extn_value.as_bytes()).is_ok_and(|bc| bc.ca)
            })
        })
}
