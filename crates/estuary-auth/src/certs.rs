//! Client certificate verification: certificates issued by this CA, and certificates
//! chaining to a bootstrap trust anchor (a manufacturer's CA, RFC 7030 §3.3.2).
//!
//! The TLS layer accepts any client certificate (after checking the handshake signature, so
//! the peer holds the key); the decision is made here, so that a device whose certificate has
//! expired can still authenticate with Basic on the same connection.
//!
//! Path validation is `rustls-webpki`'s (RFC 5280 §6: signatures, validity, basicConstraints
//! and pathLen, name constraints, unknown critical extensions, EKU), plus a keyCertSign check
//! on intermediates, which webpki does not make (RFC 5280 §4.2.1.3). Revocation of our own
//! certificates is checked by the caller against the store, on every request; bootstrap
//! certificates are checked against the CRLs configured for their CAs.

use std::time::SystemTime;

use der::Decode;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_cert::crl::CertificateList;
use x509_cert::name::Name;
use x509_cert::Certificate;

use estuary_wire::signature::{split_signed, verify};

use crate::AuthError;

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
    /// Whether its extendedKeyUsage includes id-kp-cmcRA (RFC 6402 §2.10): a registration
    /// authority's certificate.
    pub registration_authority: bool,
    /// Its notAfter (a verification kept for a connection ends with it).
    pub not_after: SystemTime,
}

impl VerifiedClientCert {
    /// The subject's common names in order, or `None` if one of them is not a UTF8, Printable,
    /// IA5 or Teletex string (a check must not skip a CN it cannot read).
    pub fn common_names(&self) -> Option<Vec<String>> {
        common_names(&self.subject_name)
    }
}

pub use estuary_wire::name::common_names;

/// Why a presented client certificate was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertAuthFailure {
    /// Not issued by a trusted CA.
    #[error("client certificate is not issued by a trusted CA")]
    UnknownIssuer,
    /// Outside its validity period (or a certificate on its path is).
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
    /// Revoked by its CA's CRL.
    #[error("client certificate is revoked by its CA's CRL")]
    Revoked,
    /// Its CA's CRL is out of date (past nextUpdate) or does not verify: revocation cannot be
    /// checked, so the certificate is refused.
    #[error("the CRL of the client certificate's CA is out of date or invalid: {0}")]
    CrlUnusable(String),
    /// The path breaks a rule of RFC 5280 (pathLen, name constraints, an unknown critical
    /// extension, an intermediate without keyCertSign).
    #[error("client certificate path is not valid: {0}")]
    InvalidPath(String),
}

impl CertAuthFailure {
    /// A stable code for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            CertAuthFailure::UnknownIssuer => "certificate_unknown_issuer",
            CertAuthFailure::Expired => "certificate_expired",
            CertAuthFailure::Malformed => "certificate_malformed",
            CertAuthFailure::NotForClientAuth => "certificate_not_client_auth",
            CertAuthFailure::Revoked => "certificate_revoked",
            CertAuthFailure::CrlUnusable(_) => "certificate_crl_unusable",
            CertAuthFailure::InvalidPath(_) => "certificate_invalid_path",
        }
    }

    fn from_webpki(e: webpki::Error) -> Self {
        use webpki::Error as E;
        match e {
            // Same issuer name, another key: not issued by this anchor.
            E::UnknownIssuer | E::InvalidSignatureForPublicKey => CertAuthFailure::UnknownIssuer,
            E::CertExpired { .. } | E::CertNotValidYet { .. } => CertAuthFailure::Expired,
            E::CaUsedAsEndEntity | E::RequiredEkuNotFoundContext(_) => {
                CertAuthFailure::NotForClientAuth
            }
            E::CertRevoked => CertAuthFailure::Revoked,
            E::CrlExpired { time, next_update } => CertAuthFailure::CrlUnusable(format!(
                "it is past its nextUpdate (by {} s); a fresh CRL must be loaded",
                time.as_secs().saturating_sub(next_update.as_secs())
            )),
            E::UnknownRevocationStatus
            | E::InvalidCrlSignatureForPublicKey
            | E::IssuerNotCrlSigner
            | E::UnsupportedCrlSignatureAlgorithmContext(_)
            | E::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_) => {
                CertAuthFailure::CrlUnusable(format!("{e:?}"))
            }
            E::BadDer | E::BadDerTime | E::TrailingData(_) | E::UnsupportedCertVersion => {
                CertAuthFailure::Malformed
            }
            other => CertAuthFailure::InvalidPath(format!("{other:?}")),
        }
    }
}

/// Most certificates looked at in a presented chain.
const MAX_CHAIN: usize = 8;

struct Anchor {
    certificate: Certificate,
    trust_anchor: TrustAnchor<'static>,
    name: String,
}

impl Anchor {
    fn new(der: &[u8], name: Option<&str>) -> Result<Self, AuthError> {
        let certificate = Certificate::from_der(der).map_err(AuthError::AnchorDer)?;
        let owned = CertificateDer::from(der.to_vec());
        let trust_anchor = webpki::anchor_from_trusted_cert(&owned)
            .map_err(AuthError::AnchorUnusable)?
            .to_owned();
        let name = name.map_or_else(
            || certificate.tbs_certificate.subject.to_string(),
            str::to_string,
        );
        Ok(Anchor {
            certificate,
            trust_anchor,
            name,
        })
    }
}

/// A bootstrap CA's CRL (RFC 5280 §5), checked against the CA at load.
#[derive(Debug)]
pub struct BootstrapCrl {
    /// The bootstrap CA's name.
    pub name: String,
    /// thisUpdate.
    pub this_update: SystemTime,
    /// nextUpdate, if the CRL has one.
    pub next_update: Option<SystemTime>,
    /// How many certificates it lists.
    pub entries: usize,
    /// cRLNumber (RFC 5280 §5.2.3), big-endian without leading zeros, if present.
    pub number: Option<Vec<u8>>,
    crl: CertRevocationList<'static>,
}

impl BootstrapCrl {
    /// Parses a CRL (DER, or PEM `X509 CRL`) for the bootstrap CA `ca_der` named `name`,
    /// checking that the CA issued and signed it.
    pub fn parse(name: &str, bytes: &[u8], ca_der: &[u8]) -> Result<Self, AuthError> {
        let der = match std::str::from_utf8(bytes)
            .ok()
            .filter(|t| t.contains("-----BEGIN"))
        {
            Some(text) => pem::parse(text)
                .map_err(|source| AuthError::CrlPem {
                    name: name.to_string(),
                    source,
                })?
                .into_contents(),
            None => bytes.to_vec(),
        };
        let list = CertificateList::from_der(&der).map_err(|source| AuthError::CrlDer {
            name: name.to_string(),
            source,
        })?;
        let ca = Certificate::from_der(ca_der).map_err(|source| AuthError::BootstrapCaDer {
            name: name.to_string(),
            source,
        })?;
        if list.tbs_cert_list.issuer != ca.tbs_certificate.subject {
            return Err(AuthError::CrlWrongIssuer {
                name: name.to_string(),
                issuer: list.tbs_cert_list.issuer.to_string(),
                ca: ca.tbs_certificate.subject.to_string(),
            });
        }
        let parts = split_signed(&der, "CRL").map_err(|source| AuthError::CrlMalformed {
            name: name.to_string(),
            source,
        })?;
        verify(
            &ca.tbs_certificate.subject_public_key_info,
            &parts.algorithm,
            parts.tbs,
            parts.signature,
        )
        .map_err(|source| AuthError::CrlSignature {
            name: name.to_string(),
            source,
        })?;
        let owned =
            OwnedCertRevocationList::from_der(&der).map_err(|error| AuthError::CrlUnusable {
                name: name.to_string(),
                error,
            })?;
        let number = list
            .tbs_cert_list
            .crl_extensions
            .as_ref()
            .and_then(|exts| {
                exts.iter()
                    .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_NUMBER)
            })
            .and_then(|e| der::asn1::UintRef::from_der(e.extn_value.as_bytes()).ok())
            .map(|n| {
                let bytes = n.as_bytes();
                let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
                bytes[first..].to_vec()
            });
        Ok(BootstrapCrl {
            name: name.to_string(),
            this_update: list.tbs_cert_list.this_update.to_system_time(),
            next_update: list.tbs_cert_list.next_update.map(|t| t.to_system_time()),
            entries: list
                .tbs_cert_list
                .revoked_certificates
                .as_ref()
                .map_or(0, Vec::len),
            number,
            crl: CertRevocationList::Owned(owned),
        })
    }

    /// Whether the CRL lists the certificate whose serial number is `serial` (the value bytes
    /// of its DER INTEGER, as in the certificate). A CRL whose entries cannot be read counts
    /// as listing it (fail closed).
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        !matches!(self.crl.find_serial(serial), Ok(None))
    }

    /// Whether this CRL was issued before `other` (a replayed old CRL): by cRLNumber when
    /// both have one (RFC 5280 §5.2.3: it increases monotonically), else by thisUpdate.
    pub fn is_older_than(&self, other: &BootstrapCrl) -> bool {
        match (&self.number, &other.number) {
            (Some(a), Some(b)) => (a.len(), a) < (b.len(), b),
            _ => self.this_update < other.this_update,
        }
    }
}

/// Verifies client certificates against this CA and the bootstrap anchors.
pub struct ClientCertVerifier {
    ca: Anchor,
    bootstrap: Vec<Anchor>,
    recently_verified: RecentlyVerified,
}

/// How many of this CA's certificates each of [`RecentlyVerified`]'s two generations holds.
const RECENTLY_VERIFIED_GENERATION: usize = 512;

/// The largest certificate [`RecentlyVerified`] keeps (DER bytes): a device certificate is
/// well under 2 KiB; a larger one (thousands of subjectAltNames) is verified every time, so
/// that a full cache holds at most a few MiB.
const RECENTLY_VERIFIED_MAX_DER: usize = 2048;

/// This CA's certificates that passed [`ClientCertVerifier::verify_ours`] lately, by SHA-256
/// of their DER: a device that opens several connections with the same certificate (Azure IoT
/// Edge sends the requests of one issuance on connections of their own, concurrently, and
/// renews several certificates with the same one; a resumed TLS session carries the
/// certificate of the session it resumes) pays for the CA signature's check once, not once
/// per connection.
///
/// What is kept is exactly what a new verification of the same bytes against the same CA
/// would give, except for time: a kept result is used only within the certificate's validity
/// period, and outside it the certificate is verified again (and refused as webpki refuses
/// it). Revocation is not part of it: the caller checks the store on every request. Only
/// certificates that verified are kept (one signed by this CA, since verifying needs its
/// signature), and a new CA (a reload) comes with a new, empty verifier.
///
/// Two generations bound it and keep what is in use: entries go into the current one; when
/// it is full it becomes the previous one (the one before is dropped), and an entry found in
/// the previous one moves back into the current one. So a certificate used again within the
/// last 512 to 1,024 verifications stays, and certificates no longer presented (renewed,
/// expired) age out.
#[derive(Default)]
struct RecentlyVerified {
    generations: std::sync::Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: std::collections::HashMap<[u8; 32], KeptVerification>,
    previous: std::collections::HashMap<[u8; 32], KeptVerification>,
}

/// A verification kept by [`RecentlyVerified`], with the start of the certificate's validity
/// (its end is in the result).
#[derive(Clone)]
struct KeptVerification {
    not_before: SystemTime,
    verified: VerifiedClientCert,
}

impl Generations {
    fn insert(&mut self, key: [u8; 32], kept: KeptVerification) {
        if self.current.len() >= RECENTLY_VERIFIED_GENERATION && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, kept);
    }
}

impl RecentlyVerified {
    fn key(der: &[u8]) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    /// The kept result for these bytes, if there is one and `now` is within its validity.
    fn get(&self, key: &[u8; 32], now: SystemTime) -> Option<VerifiedClientCert> {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let kept = match generations.current.get(key) {
            Some(kept) => kept.clone(),
            None => {
                let kept = generations.previous.remove(key)?;
                generations.insert(*key, kept.clone());
                kept
            }
        };
        (kept.not_before <= now && now < kept.verified.not_after).then_some(kept.verified)
    }

    /// Keeps a verification of a certificate of `der_len` bytes (a large one is not kept).
    fn keep(&self, key: [u8; 32], der_len: usize, kept: KeptVerification) {
        if der_len > RECENTLY_VERIFIED_MAX_DER {
            return;
        }
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.insert(key, kept);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.current.len() + generations.previous.len()
    }
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
    pub fn new(ca_der: &[u8], bootstrap: &[(String, Vec<u8>)]) -> Result<Self, AuthError> {
        let bootstrap: Vec<Anchor> = bootstrap
            .iter()
            .map(|(name, d)| Anchor::new(d, Some(name)))
            .collect::<Result<_, _>>()?;
        // A bootstrap anchor is a CA: a device certificate listed by mistake would let whoever
        // holds that device's key mint bootstrap certificates for any name.
        if let Some(leaf) = bootstrap
            .iter()
            .find(|a| !is_ca(&a.certificate) || !may_sign_certificates(&a.certificate))
        {
            return Err(AuthError::AnchorNotACa {
                name: leaf.name.clone(),
                subject: leaf.certificate.tbs_certificate.subject.to_string(),
            });
        }
        Ok(ClientCertVerifier {
            ca: Anchor::new(ca_der, None)?,
            bootstrap,
            recently_verified: RecentlyVerified::default(),
        })
    }

    /// Verifies that `chain[0]` was issued directly by this CA, is valid at `now` and is an
    /// end-entity certificate for client authentication (EKU clientAuth or no EKU; not a CA,
    /// so neither the TLS server certificate nor an Edge CA certificate). Revocation is the
    /// caller's check, against the store. A certificate verified lately is not verified
    /// again while it is valid (see [`RecentlyVerified`]).
    pub fn verify_ours(
        &self,
        chain: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<VerifiedClientCert, CertAuthFailure> {
        let leaf_der = chain.first().ok_or(CertAuthFailure::Malformed)?;
        let key = RecentlyVerified::key(leaf_der);
        if let Some(kept) = self.recently_verified.get(&key, now) {
            return Ok(kept);
        }
        let leaf = Certificate::from_der(leaf_der).map_err(|_| CertAuthFailure::Malformed)?;
        // Cheap pre-check: a certificate from elsewhere goes on to the bootstrap anchors.
        if leaf.tbs_certificate.issuer != self.ca.certificate.tbs_certificate.subject {
            return Err(CertAuthFailure::UnknownIssuer);
        }
        let leaf_cert = CertificateDer::from(leaf_der.as_slice());
        let end_entity =
            EndEntityCert::try_from(&leaf_cert).map_err(CertAuthFailure::from_webpki)?;
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&self.ca.trust_anchor),
                &[],
                unix_time(now),
                KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(CertAuthFailure::from_webpki)?;
        let result = verified(&leaf, &self.ca.name);
        self.recently_verified.keep(
            key,
            leaf_der.len(),
            KeptVerification {
                not_before: leaf.tbs_certificate.validity.not_before.to_system_time(),
                verified: result.clone(),
            },
        );
        Ok(result)
    }

    /// Verifies that `chain[0]` chains, through the other presented certificates if needed,
    /// to a bootstrap anchor: RFC 5280 path validation at `now`, EKU clientAuth (or none), not
    /// a CA, the anchor itself valid, and not revoked by any CRL in `crls` (a CRL past its
    /// nextUpdate refuses the certificates of its CA).
    pub fn verify_bootstrap(
        &self,
        chain: &[Vec<u8>],
        now: SystemTime,
        crls: &[std::sync::Arc<BootstrapCrl>],
    ) -> Result<VerifiedClientCert, CertAuthFailure> {
        if chain.len() > MAX_CHAIN {
            return Err(CertAuthFailure::Malformed);
        }
        if self.bootstrap.is_empty() {
            return Err(CertAuthFailure::UnknownIssuer);
        }
        let leaf_der = chain.first().ok_or(CertAuthFailure::Malformed)?;
        let leaf = Certificate::from_der(leaf_der).map_err(|_| CertAuthFailure::Malformed)?;
        // Cheap pre-check (and the clearer error): the leaf names a bootstrap CA, or a
        // presented certificate, as its issuer.
        let issuer = &leaf.tbs_certificate.issuer;
        let named = self
            .bootstrap
            .iter()
            .any(|a| &a.certificate.tbs_certificate.subject == issuer)
            || chain[1..].iter().any(|d| {
                Certificate::from_der(d).is_ok_and(|c| &c.tbs_certificate.subject == issuer)
            });
        if !named {
            return Err(CertAuthFailure::UnknownIssuer);
        }
        let leaf_cert = CertificateDer::from(leaf_der.as_slice());
        let intermediates: Vec<CertificateDer<'_>> = chain[1..]
            .iter()
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        let anchors: Vec<TrustAnchor<'static>> = self
            .bootstrap
            .iter()
            .map(|a| a.trust_anchor.clone())
            .collect();
        let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().map(|c| &c.crl).collect();
        let revocation = match RevocationOptionsBuilder::new(&crl_refs) {
            Ok(builder) => Some(
                builder
                    .with_depth(RevocationCheckDepth::Chain)
                    // A CA without a configured CRL: its certificates are not revocation-checked.
                    .with_status_policy(UnknownStatusPolicy::Allow)
                    .with_expiration_policy(ExpirationPolicy::Enforce)
                    .build(),
            ),
            Err(_) => None, // no CRLs configured
        };
        let end_entity =
            EndEntityCert::try_from(&leaf_cert).map_err(CertAuthFailure::from_webpki)?;
        let path = end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &intermediates,
                unix_time(now),
                KeyUsage::client_auth(),
                revocation,
                None,
            )
            .map_err(CertAuthFailure::from_webpki)?;
        // RFC 5280 §4.2.1.3: a certificate that signs certificates has keyCertSign when it
        // has a keyUsage extension at all (webpki does not check this).
        let mut intermediates_on_path = 0usize;
        for intermediate in path.intermediate_certificates() {
            intermediates_on_path += 1;
            let cert = Certificate::from_der(intermediate.der().as_ref())
                .map_err(|_| CertAuthFailure::Malformed)?;
            if !may_sign_certificates(&cert) {
                return Err(CertAuthFailure::InvalidPath(format!(
                    "intermediate {} has a keyUsage without keyCertSign",
                    cert.tbs_certificate.subject
                )));
            }
        }
        let anchor_subject = path.anchor().subject.as_ref();
        let anchor = self
            .bootstrap
            .iter()
            .find(|a| a.trust_anchor.subject.as_ref() == anchor_subject)
            .ok_or(CertAuthFailure::UnknownIssuer)?;
        // webpki takes anchors as timeless and unconstrained; a bootstrap CA certificate that
        // has expired no longer vouches for anything, and its own pathLenConstraint holds
        // (RFC 5280 §4.2.1.9).
        check_validity(&anchor.certificate, now)?;
        if let Some(max) = path_len_constraint(&anchor.certificate) {
            if intermediates_on_path > usize::from(max) {
                return Err(CertAuthFailure::InvalidPath(format!(
                    "{intermediates_on_path} intermediate(s) under bootstrap CA {} whose pathLenConstraint is {max}",
                    anchor.name
                )));
            }
        }
        Ok(verified(&leaf, &anchor.name))
    }
}

fn unix_time(now: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

fn verified(leaf: &Certificate, anchor: &str) -> VerifiedClientCert {
    let tbs = &leaf.tbs_certificate;
    let subject_alt_name = tbs.extensions.as_ref().and_then(|exts| {
        exts.iter()
            .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME)
            .map(|e| e.extn_value.as_bytes().to_vec())
    });
    let registration_authority = tbs.extensions.as_ref().is_some_and(|exts| {
        use der::Decode;
        exts.iter()
            .filter(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_EXT_KEY_USAGE)
            .filter_map(|e| {
                x509_cert::ext::pkix::ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok()
            })
            .any(|eku| eku.0.contains(&ID_KP_CMC_RA))
    });
    VerifiedClientCert {
        subject: estuary_wire::name::rfc4514(&tbs.subject),
        subject_name: tbs.subject.clone(),
        serial_hex: hex::encode(tbs.serial_number.as_bytes()),
        subject_alt_name,
        anchor: anchor.to_string(),
        registration_authority,
        not_after: tbs.validity.not_after.to_system_time(),
    }
}

/// id-kp-cmcRA (RFC 6402 §2.10): the extended key usage of a registration authority.
pub const ID_KP_CMC_RA: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.28");

fn check_validity(cert: &Certificate, now: SystemTime) -> Result<(), CertAuthFailure> {
    let v = &cert.tbs_certificate.validity;
    if now < v.not_before.to_system_time() || now > v.not_after.to_system_time() {
        return Err(CertAuthFailure::Expired);
    }
    Ok(())
}

/// Whether basicConstraints says CA:TRUE.
pub fn is_ca(cert: &Certificate) -> bool {
    use x509_cert::ext::pkix::BasicConstraints;
    cert.tbs_certificate
        .extensions
        .as_ref()
        .and_then(|exts| {
            exts.iter()
                .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS)
        })
        .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|bc| bc.ca)
}

/// The pathLenConstraint of a CA certificate's basicConstraints, if it has one.
fn path_len_constraint(cert: &Certificate) -> Option<u8> {
    use x509_cert::ext::pkix::BasicConstraints;
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS)
        .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
        .and_then(|bc| bc.path_len_constraint)
}

/// No keyUsage extension, or one with keyCertSign.
fn may_sign_certificates(cert: &Certificate) -> bool {
    use x509_cert::ext::pkix::{KeyUsage as Ku, KeyUsages};
    let Some(exts) = &cert.tbs_certificate.extensions else {
        return true;
    };
    match exts
        .iter()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_KEY_USAGE)
    {
        None => true,
        Some(e) => Ku::from_der(e.extn_value.as_bytes())
            .is_ok_and(|ku| ku.0.contains(KeyUsages::KeyCertSign)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair, KeyUsagePurpose as Ku,
        RevokedCertParams, SerialNumber,
    };
    use std::time::Duration;
    use time::OffsetDateTime;

    fn ca(
        name: &str,
        constraints: BasicConstraints,
        usages: Vec<Ku>,
    ) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(constraints);
        p.key_usages = usages;
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    fn intermediate(
        name: &str,
        constraints: BasicConstraints,
        usages: Vec<Ku>,
        issuer: &Issuer<'_, KeyPair>,
    ) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(constraints);
        p.key_usages = usages;
        CertifiedIssuer::signed_by(p, KeyPair::generate().unwrap(), issuer).unwrap()
    }

    fn leaf(serial: u8, ekus: Vec<Eku>, is_ca: bool, issuer: &Issuer<'_, KeyPair>) -> Vec<u8> {
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "dev1");
        p.serial_number = Some(SerialNumber::from_slice(&[serial]));
        p.extended_key_usages = ekus;
        if is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        p.signed_by(&KeyPair::generate().unwrap(), issuer)
            .unwrap()
            .der()
            .to_vec()
    }

    fn crl(issuer: &Issuer<'_, KeyPair>, revoked: &[u8], next_update: OffsetDateTime) -> Vec<u8> {
        CertificateRevocationListParams {
            this_update: OffsetDateTime::now_utc() - Duration::from_secs(3600),
            next_update,
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&[*s]),
                    revocation_time: OffsetDateTime::now_utc() - Duration::from_secs(60),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    fn verifier(mfg: &CertifiedIssuer<'_, KeyPair>) -> ClientCertVerifier {
        let ours = ca("Estuary CA", BasicConstraints::Unconstrained, vec![]);
        ClientCertVerifier::new(ours.der(), &[("mfg".into(), mfg.der().to_vec())]).unwrap()
    }

    #[test]
    fn bootstrap_leaf_must_be_a_client_end_entity() {
        let mfg = ca("Mfg CA", BasicConstraints::Unconstrained, vec![]);
        let v = verifier(&mfg);
        let now = SystemTime::now();
        let ok = |ekus: Vec<Eku>, is_ca: bool| {
            v.verify_bootstrap(&[leaf(1, ekus, is_ca, &mfg)], now, &[])
        };
        assert_eq!(ok(vec![Eku::ClientAuth], false).unwrap().anchor, "mfg");
        assert!(ok(vec![], false).is_ok(), "no EKU means any use");
        assert_eq!(
            ok(vec![Eku::ServerAuth], false).unwrap_err(),
            CertAuthFailure::NotForClientAuth
        );
        assert_eq!(
            ok(vec![Eku::CodeSigning], false).unwrap_err(),
            CertAuthFailure::NotForClientAuth
        );
        assert_eq!(
            ok(vec![Eku::ClientAuth], true).unwrap_err(),
            CertAuthFailure::NotForClientAuth
        );
    }

    #[test]
    fn bootstrap_crl_revokes_and_an_expired_crl_refuses() {
        let mfg = ca("Mfg CA", BasicConstraints::Unconstrained, vec![]);
        let v = verifier(&mfg);
        let now = SystemTime::now();
        let fresh = crl(
            &mfg,
            &[2],
            OffsetDateTime::now_utc() + Duration::from_secs(3600),
        );
        let crls = [std::sync::Arc::new(
            BootstrapCrl::parse("mfg", &fresh, mfg.der()).unwrap(),
        )];
        assert_eq!(crls[0].entries, 1);
        assert!(crls[0].is_revoked(&[2]) && !crls[0].is_revoked(&[1]));
        let good = leaf(1, vec![Eku::ClientAuth], false, &mfg);
        let revoked = leaf(2, vec![Eku::ClientAuth], false, &mfg);
        assert!(v
            .verify_bootstrap(std::slice::from_ref(&good), now, &crls)
            .is_ok());
        assert_eq!(
            v.verify_bootstrap(&[revoked], now, &crls).unwrap_err(),
            CertAuthFailure::Revoked
        );
        let stale = crl(
            &mfg,
            &[],
            OffsetDateTime::now_utc() - Duration::from_secs(60),
        );
        let crls = [std::sync::Arc::new(
            BootstrapCrl::parse("mfg", &stale, mfg.der()).unwrap(),
        )];
        assert!(matches!(
            v.verify_bootstrap(&[good], now, &crls).unwrap_err(),
            CertAuthFailure::CrlUnusable(_)
        ));
        // A CRL from another CA is refused at load.
        let other = ca("Other CA", BasicConstraints::Unconstrained, vec![]);
        let foreign = crl(
            &other,
            &[],
            OffsetDateTime::now_utc() + Duration::from_secs(60),
        );
        assert!(BootstrapCrl::parse("mfg", &foreign, mfg.der()).is_err());
    }

    #[test]
    fn bootstrap_paths_respect_path_length_and_key_cert_sign() {
        let now = SystemTime::now();
        // pathlen:0 on the root: an intermediate below it may not issue.
        let root = ca("Mfg Root", BasicConstraints::Constrained(0), vec![]);
        let sub = intermediate("Mfg Sub", BasicConstraints::Unconstrained, vec![], &root);
        let v = verifier(&root);
        let chain = [
            leaf(1, vec![Eku::ClientAuth], false, &sub),
            sub.der().to_vec(),
        ];
        assert!(matches!(
            v.verify_bootstrap(&chain, now, &[]).unwrap_err(),
            CertAuthFailure::InvalidPath(_)
        ));
        // An intermediate whose keyUsage lacks keyCertSign.
        let root = ca("Mfg Root", BasicConstraints::Unconstrained, vec![]);
        let sub = intermediate(
            "Mfg Sub",
            BasicConstraints::Unconstrained,
            vec![Ku::DigitalSignature],
            &root,
        );
        let v = verifier(&root);
        let chain = [
            leaf(1, vec![Eku::ClientAuth], false, &sub),
            sub.der().to_vec(),
        ];
        assert!(matches!(
            v.verify_bootstrap(&chain, now, &[]).unwrap_err(),
            CertAuthFailure::InvalidPath(_)
        ));
        // And a proper one works.
        let sub = intermediate(
            "Mfg Sub",
            BasicConstraints::Unconstrained,
            vec![Ku::KeyCertSign, Ku::CrlSign],
            &root,
        );
        let chain = [
            leaf(1, vec![Eku::ClientAuth], false, &sub),
            sub.der().to_vec(),
        ];
        assert_eq!(v.verify_bootstrap(&chain, now, &[]).unwrap().anchor, "mfg");
    }

    #[test]
    fn a_bootstrap_anchor_must_be_a_ca() {
        let mfg = ca("Mfg CA", BasicConstraints::Unconstrained, vec![]);
        let device = leaf(1, vec![Eku::ClientAuth], false, &mfg);
        let ours = ca("Estuary CA", BasicConstraints::Unconstrained, vec![]);
        let err = ClientCertVerifier::new(ours.der(), &[("oops".into(), device)]).unwrap_err();
        assert!(err.to_string().contains("not a CA certificate"), "{err}");
    }

    #[test]
    fn our_certificates_must_be_client_end_entities() {
        let ours = ca("Estuary CA", BasicConstraints::Unconstrained, vec![]);
        let v = ClientCertVerifier::new(ours.der(), &[]).unwrap();
        let now = SystemTime::now();
        assert!(v
            .verify_ours(&[leaf(1, vec![Eku::ClientAuth], false, &ours)], now)
            .is_ok());
        assert_eq!(
            v.verify_ours(&[leaf(1, vec![Eku::ServerAuth], false, &ours)], now)
                .unwrap_err(),
            CertAuthFailure::NotForClientAuth
        );
        assert_eq!(
            v.verify_ours(&[leaf(1, vec![], true, &ours)], now)
                .unwrap_err(),
            CertAuthFailure::NotForClientAuth
        );
        let other = ca("Estuary CA", BasicConstraints::Unconstrained, vec![]);
        assert_eq!(
            v.verify_ours(&[leaf(1, vec![Eku::ClientAuth], false, &other)], now)
                .unwrap_err(),
            CertAuthFailure::UnknownIssuer
        );
        assert_eq!(
            v.verify_ours(&[vec![0x30, 0x03]], now).unwrap_err(),
            CertAuthFailure::Malformed
        );
        assert!(v.verify_bootstrap(&[vec![1, 2, 3]], now, &[]).is_err());
    }

    #[test]
    fn a_kept_verification_gives_what_a_new_one_would() {
        let ours = ca("Estuary CA", BasicConstraints::Unconstrained, vec![]);
        let v = ClientCertVerifier::new(ours.der(), &[]).unwrap();
        let now = SystemTime::now();
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "dev1");
        p.not_before = OffsetDateTime::now_utc() - Duration::from_secs(60);
        p.not_after = OffsetDateTime::now_utc() + Duration::from_secs(3600);
        let device = p
            .signed_by(&KeyPair::generate().unwrap(), &ours)
            .unwrap()
            .der()
            .to_vec();
        let first = v.verify_ours(std::slice::from_ref(&device), now).unwrap();
        assert_eq!(v.recently_verified.len(), 1);
        assert_eq!(
            v.verify_ours(std::slice::from_ref(&device), now).unwrap(),
            first
        );
        // Outside the validity period the certificate is verified again, and refused.
        for outside in [
            now + Duration::from_secs(7200),
            now - Duration::from_secs(7200),
        ] {
            assert_eq!(
                v.verify_ours(std::slice::from_ref(&device), outside)
                    .unwrap_err(),
                CertAuthFailure::Expired
            );
        }
        // A refusal is not kept: a certificate of another CA with our CA's name, and one
        // whose bytes were changed after signing, fail every time.
        let impostor = ca("Estuary CA", BasicConstraints::Unconstrained, vec![]);
        let forged = leaf(2, vec![Eku::ClientAuth], false, &impostor);
        let mut tampered = device.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        for _ in 0..2 {
            assert_eq!(
                v.verify_ours(std::slice::from_ref(&forged), now)
                    .unwrap_err(),
                CertAuthFailure::UnknownIssuer
            );
            assert!(v.verify_ours(std::slice::from_ref(&tampered), now).is_err());
        }
        assert_eq!(v.recently_verified.len(), 1);
        // A new verifier (a new CA after a reload) keeps nothing of the old one's.
        let reloaded = ClientCertVerifier::new(impostor.der(), &[]).unwrap();
        assert_eq!(
            reloaded.verify_ours(&[device], now).unwrap_err(),
            CertAuthFailure::UnknownIssuer
        );
    }

    #[test]
    fn recently_verified_is_bounded_and_keeps_what_is_in_use() {
        let kept = RecentlyVerified::default();
        let ours = ca("Estuary CA", BasicConstraints::Unconstrained, vec![]);
        let v = ClientCertVerifier::new(ours.der(), &[]).unwrap();
        let now = SystemTime::now();
        let verified = v
            .verify_ours(&[leaf(1, vec![Eku::ClientAuth], false, &ours)], now)
            .unwrap();
        let entry = || KeptVerification {
            not_before: now,
            verified: verified.clone(),
        };
        let key = |n: usize| RecentlyVerified::key(&n.to_be_bytes());
        // One certificate presented again and again while 10,000 others pass once each.
        kept.keep(key(0), 600, entry());
        for n in 1..10_000 {
            kept.keep(key(n), 600, entry());
            if n % 100 == 0 {
                assert!(kept.get(&key(0), now).is_some(), "evicted after {n}");
            }
            assert!(kept.len() <= 2 * RECENTLY_VERIFIED_GENERATION);
        }
        assert!(kept.get(&key(9_999), now).is_some());
        assert!(
            kept.get(&key(1), now).is_none(),
            "a certificate not seen again ages out"
        );
        // A large certificate is verified every time, not kept.
        let large = key(20_000);
        kept.keep(large, RECENTLY_VERIFIED_MAX_DER + 1, entry());
        assert!(kept.get(&large, now).is_none());
    }

    /// The fuzz target `client_chain` starts from these fixtures: they must verify, or the
    /// fuzzer would explore only failures.
    #[test]
    fn fuzz_fixtures_form_valid_chains() {
        let fixture = |name: &str| {
            std::fs::read(format!(
                "{}/../../fuzz/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let (ours, mfg) = (fixture("ours.der"), fixture("mfg.der"));
        let v = ClientCertVerifier::new(&ours, &[("mfg".into(), mfg.clone())]).unwrap();
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000);
        assert!(v.verify_ours(&[fixture("own.der")], now).is_ok());
        let crl =
            std::sync::Arc::new(BootstrapCrl::parse("mfg", &fixture("mfg.crl.der"), &mfg).unwrap());
        let chain = [fixture("dev.der"), fixture("sub.der")];
        assert_eq!(
            v.verify_bootstrap(&chain, now, &[crl]).unwrap().anchor,
            "mfg"
        );
    }
}
