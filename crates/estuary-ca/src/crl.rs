//! Certificate revocation lists (RFC 5280 §5) and the CRL distribution point extension
//! (RFC 5280 §4.2.1.13) for issued certificates.
//!
//! The CRL is assembled from `x509-cert` types and signed through [`CaSigner`](crate::CaSigner),
//! so a PKCS#11 key signs CRLs exactly as it signs certificates.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use const_oid::db::rfc5280;
use der::asn1::{BitString, Ia5String, OctetString, Uint};
use der::Encode;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::crl::{CrlDistributionPoints, CrlNumber, CrlReason};
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::AuthorityKeyIdentifier;
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::Version;

use crate::issue::{extension, x509_time};
use crate::{CaError, CertificateAuthority};

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// The certificate's serial number, hex (upper or lower case, optional `:` separators).
    pub serial_hex: String,
    /// When it was revoked (the CRL entry's revocationDate).
    pub revoked_at: SystemTime,
    /// Why, if known. `None` and `Some(Unspecified)` both leave out the reasonCode extension
    /// (RFC 5280 §5.3.1: "the reason code CRL entry extension SHOULD be absent instead of
    /// using the unspecified (0) reasonCode value"); so does `Some(RemoveFromCrl)`, which is
    /// not a reason to revoke (see [`RevocationReason::reason_code`]).
    pub reason: Option<RevocationReason>,
}

/// CRLReason (RFC 5280 §5.3.1). Parsed from and shown with the RFC's names
/// (`keyCompromise`); kebab-case (`key-compromise`) is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// unspecified (0).
    Unspecified,
    /// keyCompromise (1).
    KeyCompromise,
    /// cACompromise (2).
    CaCompromise,
    /// affiliationChanged (3).
    AffiliationChanged,
    /// superseded (4).
    Superseded,
    /// cessationOfOperation (5).
    CessationOfOperation,
    /// certificateHold (6).
    CertificateHold,
    /// removeFromCRL (8): only meaningful in delta CRLs (RFC 5280 §5.3.1). Never a reason to
    /// revoke: [`RevocationReason::for_revocation`] refuses it, and [`build_crl`] publishes an
    /// entry that carries it (written by an older version) without a reasonCode.
    RemoveFromCrl,
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn,
    /// aACompromise (10).
    AaCompromise,
}

impl RevocationReason {
    /// Every reason, in code order.
    pub const ALL: [RevocationReason; 10] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::RemoveFromCrl,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise,
    ];

    /// The reasons an operator may give for a revocation: every RFC 5280 §5.3.1 reason but
    /// removeFromCRL (delta CRLs only). Value 7 is unused by the RFC and has no name here.
    pub const FOR_REVOCATION: [RevocationReason; 9] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise,
    ];

    /// Parses a reason an operator gives for revoking a certificate: one of
    /// [`FOR_REVOCATION`](Self::FOR_REVOCATION). `removeFromCRL` is refused with its own
    /// message (RFC 5280 §5.3.1: it only appears in delta CRLs, to un-list a certificate on
    /// hold). `unspecified` is accepted; the CRL entry then has no reasonCode (§5.3.1 "SHOULD
    /// be absent instead of using the unspecified (0) reasonCode value").
    pub fn for_revocation(text: &str) -> Result<Self, UnknownReason> {
        match text.parse::<RevocationReason>() {
            Ok(RevocationReason::RemoveFromCrl) => Err(UnknownReason {
                given: text.to_string(),
                why: "removeFromCRL is only used in delta CRLs to take a certificate off hold \
                      (RFC 5280 §5.3.1), it is not a reason to revoke"
                    .into(),
            }),
            other => other,
        }
    }

    /// The reasonCode CRL entry extension value for this reason, or `None` when the entry
    /// must have none: unspecified (RFC 5280 §5.3.1: SHOULD be absent) and removeFromCRL
    /// (§5.3.1: delta CRLs only; in a full CRL it would tell relying parties to drop the entry).
    pub fn reason_code(self) -> Option<CrlReason> {
        match self {
            RevocationReason::Unspecified | RevocationReason::RemoveFromCrl => None,
            other => Some(other.to_crl_reason()),
        }
    }

    /// The RFC 5280 name (`keyCompromise`).
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::CaCompromise => "cACompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::CertificateHold => "certificateHold",
            RevocationReason::RemoveFromCrl => "removeFromCRL",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
            RevocationReason::AaCompromise => "aACompromise",
        }
    }

    fn to_crl_reason(self) -> CrlReason {
        match self {
            RevocationReason::Unspecified => CrlReason::Unspecified,
            RevocationReason::KeyCompromise => CrlReason::KeyCompromise,
            RevocationReason::CaCompromise => CrlReason::CaCompromise,
            RevocationReason::AffiliationChanged => CrlReason::AffiliationChanged,
            RevocationReason::Superseded => CrlReason::Superseded,
            RevocationReason::CessationOfOperation => CrlReason::CessationOfOperation,
            RevocationReason::CertificateHold => CrlReason::CertificateHold,
            RevocationReason::RemoveFromCrl => CrlReason::RemoveFromCRL,
            RevocationReason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
            RevocationReason::AaCompromise => CrlReason::AaCompromise,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A revocation reason that is not one of RFC 5280 §5.3.1's, or not one to revoke with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}: {given:?}; accepted: {}", accepted_names())]
pub struct UnknownReason {
    /// What was given.
    pub given: String,
    /// Why it was refused.
    pub why: String,
}

/// The names [`RevocationReason::for_revocation`] accepts, for messages.
pub fn accepted_names() -> String {
    let names: Vec<&str> = RevocationReason::FOR_REVOCATION
        .iter()
        .map(|r| r.as_str())
        .collect();
    format!(
        "{} (or kebab-case, e.g. key-compromise; unspecified is published without a reasonCode)",
        names.join(", ")
    )
}

impl FromStr for RevocationReason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `keyCompromise`, `key-compromise`, `KEY_COMPROMISE` and `ca-compromise` all match.
        let squash = |t: &str| {
            t.chars()
                .filter(|c| !matches!(c, '-' | '_'))
                .collect::<String>()
                .to_ascii_lowercase()
        };
        let wanted = squash(s.trim());
        RevocationReason::ALL
            .into_iter()
            .find(|r| squash(r.as_str()) == wanted)
            .ok_or_else(|| UnknownReason {
                given: s.to_string(),
                why: "unknown revocation reason".into(),
            })
    }
}

/// Builds and signs a v2 CRL (RFC 5280 §5.1) for `ca`: issuer = the CA certificate's subject,
/// crlExtensions cRLNumber (§5.2.3) and authorityKeyIdentifier (§5.2.1, = the CA's SKI), one
/// entry per revoked certificate with a reasonCode (§5.3.1) when the reason has one (see
/// [`RevocationReason::reason_code`]). With no entries, revokedCertificates is left out
/// (§5.1.2.6). Returns the DER. Entries are expected to have passed [`publishable`]; a bad
/// serial or a duplicate is an error here.
pub fn build_crl(
    ca: &CertificateAuthority,
    entries: &[RevokedEntry],
    crl_number: u64,
    this_update: SystemTime,
    next_update: SystemTime,
) -> Result<Vec<u8>, CaError> {
    if next_update <= this_update {
        return Err(CaError::Signing(
            "the CRL's nextUpdate must be later than its thisUpdate".into(),
        ));
    }
    let mut seen = HashSet::new();
    let mut revoked = Vec::with_capacity(entries.len());
    for entry in entries {
        let serial_bytes = parse_serial_hex(&entry.serial_hex)?;
        let serial = SerialNumber::new(&serial_bytes).map_err(|source| CaError::BadValue {
            what: format!("serial {:?} is not valid", entry.serial_hex),
            source,
        })?;
        if !seen.insert(serial.as_bytes().to_vec()) {
            return Err(CaError::Signing(format!(
                "serial {} is listed twice",
                entry.serial_hex
            )));
        }
        let crl_entry_extensions = match entry.reason.and_then(RevocationReason::reason_code) {
            None => None,
            // RFC 5280 §5.3.1: reasonCode is non-critical.
            Some(code) => Some(vec![extension(rfc5280::ID_CE_CRL_REASONS, false, &code)?]),
        };
        revoked.push(RevokedCert {
            serial_number: serial,
            revocation_date: x509_time(entry.revoked_at)?,
            crl_entry_extensions,
        });
    }

    // RFC 5280 §5.2.3: cRLNumber is a non-negative INTEGER, non-critical.
    let number = Uint::new(&crl_number.to_be_bytes())?;
    let crl_extensions = vec![
        extension(
            rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(ca.subject_key_id().to_vec())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?,
        extension(rfc5280::ID_CE_CRL_NUMBER, false, &CrlNumber(number))?,
    ];

    let algorithm = ca.signer().signature_algorithm();
    let tbs = TbsCertList {
        // RFC 5280 §5.1.2.1: v2 because extensions are present.
        version: Version::V2,
        signature: algorithm.clone(),
        issuer: ca.certificate().tbs_certificate.subject.clone(),
        this_update: x509_time(this_update)?,
        next_update: Some(x509_time(next_update)?),
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: Some(crl_extensions),
    };
    let tbs_der = tbs.to_der()?;
    let signature = ca.signer().sign(&tbs_der)?;
    let crl = CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature)?,
    };
    Ok(crl.to_der()?)
}

/// A revocation as the store keeps it: the reason is text written by this or an older version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRevocation {
    /// The serial, hex.
    pub serial_hex: String,
    /// When it was revoked.
    pub revoked_at: SystemTime,
    /// The stored reason name, if any.
    pub reason: Option<String>,
}

/// Turns stored revocations into CRL entries so that no single bad row can stop the CRL from
/// being published: a reason that is unknown (e.g. `7`, unused by RFC 5280 §5.3.1) or not a
/// revocation reason (removeFromCRL) is published without a reasonCode, which still revokes
/// the certificate; a serial that is not hex cannot be listed and is left out; a serial listed
/// twice is listed once. Returns the entries and one message per entry changed or left out,
/// for the log.
pub fn publishable(stored: Vec<StoredRevocation>) -> (Vec<RevokedEntry>, Vec<String>) {
    let mut seen = HashSet::new();
    let mut entries = Vec::with_capacity(stored.len());
    let mut problems = Vec::new();
    for s in stored {
        let bytes = match parse_serial_hex(&s.serial_hex)
            .ok()
            .filter(|b| SerialNumber::<x509_cert::certificate::Rfc5280>::new(b).is_ok())
        {
            Some(b) => b,
            None => {
                problems.push(format!(
                    "serial {:?} is not a valid serial number; left out of the CRL",
                    s.serial_hex
                ));
                continue;
            }
        };
        // Leading zero octets do not change the number: compare without them.
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        if !seen.insert(bytes[start..].to_vec()) {
            problems.push(format!(
                "serial {} is revoked twice in the store; listed once",
                s.serial_hex
            ));
            continue;
        }
        let reason = match s.reason.as_deref().map(str::parse::<RevocationReason>) {
            None => None,
            Some(Ok(RevocationReason::RemoveFromCrl)) => {
                problems.push(format!(
                    "serial {}: stored reason removeFromCRL is for delta CRLs only (RFC 5280 §5.3.1); listed without a reasonCode",
                    s.serial_hex
                ));
                None
            }
            Some(Ok(r)) => Some(r),
            Some(Err(_)) => {
                problems.push(format!(
                    "serial {}: stored reason {:?} is not an RFC 5280 §5.3.1 reason; listed without a reasonCode",
                    s.serial_hex,
                    s.reason.as_deref().unwrap_or_default()
                ));
                None
            }
        };
        entries.push(RevokedEntry {
            serial_hex: s.serial_hex,
            revoked_at: s.revoked_at,
            reason,
        });
    }
    (entries, problems)
}

/// A non-critical cRLDistributionPoints extension (RFC 5280 §4.2.1.13) with one distribution
/// point whose fullName is `url` (a uniformResourceIdentifier), for certificates the CA issues.
pub fn crl_distribution_points(url: &str) -> Result<Extension, CaError> {
    // RFC 5280 §4.2.1.13: the URI names a DER CRL fetched over HTTP (or LDAP).
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://")
        || lower.starts_with("https://")
        || lower.starts_with("ldap://"))
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(CaError::Signing(format!(
            "CRL distribution point {url:?} must be an http://, https:// or ldap:// URI"
        )));
    }
    let uri = Ia5String::new(url).map_err(|source| CaError::BadValue {
        what: format!("CRL distribution point {url:?}"),
        source,
    })?;
    let points = CrlDistributionPoints(vec![DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(uri),
        ])),
        reasons: None,
        crl_issuer: None,
    }]);
    extension(rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS, false, &points)
}

fn parse_serial_hex(text: &str) -> Result<Vec<u8>, CaError> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || CaError::Signing(format!("serial {text:?} is not a hexadecimal number"));
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;
    use std::process::Command;
    use std::time::Duration;

    use x509_cert::time::Time;

    use der::Decode;
    use x509_cert::crl::CertificateList;

    use super::*;
    use crate::bootstrap::{load_or_create_ca, pem_certificates};
    use crate::{KeyChoice, Profile};

    fn issue(ca: &CertificateAuthority, cn: &str) -> crate::IssuedCertificate {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let csr = params.serialize_request(&key).unwrap();
        let verified = estuary_wire::csr::parse_and_verify(csr.der().to_vec()).unwrap();
        let profile = Profile::device();
        let checked = profile
            .check(&verified, crate::PolicyContext { basic_user: None })
            .unwrap();
        let issued = ca.issue(&checked, Duration::from_secs(3600), &[]).unwrap();
        assert_eq!(
            issued.der,
            der::Encode::to_der(&issued.certificate).unwrap()
        );
        issued
    }

    /// Runs openssl (failing, never skipping, when it is missing).
    fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is required for the CRL tests (apt-get install openssl)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn write_pem(dir: &Path, name: &str, tag: &str, der: &[u8]) {
        std::fs::write(
            dir.join(name),
            pem::encode(&pem::Pem::new(tag, der.to_vec())),
        )
        .unwrap();
    }

    #[test]
    fn openssl_verifies_the_crl_and_sees_the_revoked_certificate() {
        for key in [KeyChoice::P256, KeyChoice::Rsa2048] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let (ca, created) = load_or_create_ca(&dir.join("data"), key).unwrap();
            assert!(created);
            let revoked = issue(&ca, "revoked-device");
            let good = issue(&ca, "good-device");
            let now = SystemTime::now();
            let crl = build_crl(
                &ca,
                &[RevokedEntry {
                    serial_hex: revoked.serial_hex.clone(),
                    revoked_at: now - Duration::from_secs(10),
                    reason: Some(RevocationReason::KeyCompromise),
                }],
                7,
                now - Duration::from_secs(60),
                now + Duration::from_secs(7 * 24 * 3600),
            )
            .unwrap();
            std::fs::write(dir.join("ca.pem"), pem_certificates(ca.chain_der())).unwrap();
            write_pem(dir, "crl.pem", "X509 CRL", &crl);
            write_pem(dir, "revoked.pem", "CERTIFICATE", &revoked.der);
            write_pem(dir, "good.pem", "CERTIFICATE", &good.der);

            let (ok, text) = openssl(
                dir,
                &[
                    "crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-verify", "-noout",
                ],
            );
            assert!(ok && text.contains("verify OK"), "{key}: {text}");

            let (ok, text) = openssl(dir, &["crl", "-in", "crl.pem", "-noout", "-text"]);
            assert!(ok, "{text}");
            assert!(text.contains("Version 2"), "{text}");
            assert!(text.contains("X509v3 CRL Number"), "{text}");
            assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
            assert!(text.contains("Key Compromise"), "{text}");
            assert!(
                text.to_ascii_lowercase().contains(&revoked.serial_hex),
                "{text}"
            );

            let (ok, text) = openssl(
                dir,
                &[
                    "verify",
                    "-crl_check",
                    "-CAfile",
                    "ca.pem",
                    "-CRLfile",
                    "crl.pem",
                    "revoked.pem",
                ],
            );
            assert!(!ok && text.contains("certificate revoked"), "{key}: {text}");

            let (ok, text) = openssl(
                dir,
                &[
                    "verify",
                    "-crl_check",
                    "-CAfile",
                    "ca.pem",
                    "-CRLfile",
                    "crl.pem",
                    "good.pem",
                ],
            );
            assert!(ok && text.contains("good.pem: OK"), "{key}: {text}");
        }
    }

    #[test]
    fn empty_crl_has_no_revoked_certificates_field_and_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (ca, _) = load_or_create_ca(&dir.join("data"), KeyChoice::P256).unwrap();
        let now = SystemTime::now();
        let crl = build_crl(&ca, &[], 1, now, now + Duration::from_secs(3600)).unwrap();
        let parsed = CertificateList::from_der(&crl).unwrap();
        assert!(parsed.tbs_cert_list.revoked_certificates.is_none());
        assert_eq!(parsed.tbs_cert_list.version, Version::V2);
        assert_eq!(
            parsed.tbs_cert_list.issuer,
            ca.certificate().tbs_certificate.subject
        );
        std::fs::write(dir.join("ca.pem"), pem_certificates(ca.chain_der())).unwrap();
        write_pem(dir, "crl.pem", "X509 CRL", &crl);
        let (ok, text) = openssl(
            dir,
            &[
                "crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-verify", "-noout",
            ],
        );
        assert!(ok && text.contains("verify OK"), "{text}");
        let (_, text) = openssl(dir, &["crl", "-in", "crl.pem", "-noout", "-text"]);
        assert!(text.contains("No Revoked Certificates"), "{text}");
    }

    #[test]
    fn unspecified_reason_leaves_out_the_reason_code_and_dates_follow_the_2050_rule() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, _) = load_or_create_ca(tmp.path(), KeyChoice::P256).unwrap();
        let now = SystemTime::now();
        let after_2050 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_600_000_000);
        let crl = build_crl(
            &ca,
            &[
                RevokedEntry {
                    serial_hex: "01:AB".into(),
                    revoked_at: now,
                    reason: Some(RevocationReason::Unspecified),
                },
                RevokedEntry {
                    serial_hex: "0fff".into(),
                    revoked_at: now,
                    reason: None,
                },
            ],
            u64::MAX,
            now,
            after_2050,
        )
        .unwrap();
        let parsed = CertificateList::from_der(&crl).unwrap();
        let tbs = parsed.tbs_cert_list;
        let revoked = tbs.revoked_certificates.unwrap();
        assert_eq!(revoked.len(), 2);
        assert!(revoked.iter().all(|r| r.crl_entry_extensions.is_none()));
        assert_eq!(revoked[0].serial_number.as_bytes(), &[0x01, 0xab]);
        assert!(matches!(tbs.this_update, Time::UtcTime(_)));
        assert!(matches!(tbs.next_update, Some(Time::GeneralTime(_))));
    }

    #[test]
    fn bad_input_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, _) = load_or_create_ca(tmp.path(), KeyChoice::P256).unwrap();
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60);
        let entry = |serial: &str, reason| RevokedEntry {
            serial_hex: serial.into(),
            revoked_at: now,
            reason,
        };
        assert!(build_crl(&ca, &[], 1, later, now).is_err());
        assert!(build_crl(&ca, &[entry("xyz", None)], 1, now, later).is_err());
        assert!(build_crl(&ca, &[entry("", None)], 1, now, later).is_err());
        assert!(build_crl(&ca, &[entry("0a", None), entry("0A", None)], 1, now, later).is_err());
    }

    /// Regression: one stored `removeFromCRL` made every later CRL build fail, so no later
    /// revocation was ever published.
    #[test]
    fn remove_from_crl_entry_is_published_without_a_reason_code() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, _) = load_or_create_ca(tmp.path(), KeyChoice::P256).unwrap();
        let now = SystemTime::now();
        let crl = build_crl(
            &ca,
            &[RevokedEntry {
                serial_hex: "0a".into(),
                revoked_at: now,
                reason: Some(RevocationReason::RemoveFromCrl),
            }],
            1,
            now,
            now + Duration::from_secs(60),
        )
        .unwrap();
        let parsed = CertificateList::from_der(&crl).unwrap();
        let revoked = parsed.tbs_cert_list.revoked_certificates.unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(revoked[0].crl_entry_extensions.is_none());
    }

    #[test]
    fn publishable_keeps_every_listable_entry_and_reports_the_rest() {
        let now = SystemTime::now();
        let stored = |serial: &str, reason: Option<&str>| StoredRevocation {
            serial_hex: serial.into(),
            revoked_at: now,
            reason: reason.map(String::from),
        };
        let (entries, problems) = publishable(vec![
            stored("01", Some("removeFromCRL")),
            stored("02", Some("7")),
            stored("03", Some("keyCompromise")),
            stored("not-hex", Some("keyCompromise")),
            stored("0003", None),
            stored("04", Some("unspecified")),
            stored("05", None),
        ]);
        let listed: Vec<(&str, Option<RevocationReason>)> = entries
            .iter()
            .map(|e| (e.serial_hex.as_str(), e.reason))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("01", None),
                ("02", None),
                ("03", Some(RevocationReason::KeyCompromise)),
                ("04", Some(RevocationReason::Unspecified)),
                ("05", None),
            ]
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("removeFromCRL"), "{problems:?}");
        assert!(problems[1].contains("\"7\""), "{problems:?}");
        assert!(problems[2].contains("not-hex"), "{problems:?}");
        assert!(problems[3].contains("twice"), "{problems:?}");

        // And what it keeps signs and verifies.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (ca, _) = load_or_create_ca(&dir.join("data"), KeyChoice::P256).unwrap();
        let crl = build_crl(&ca, &entries, 2, now, now + Duration::from_secs(60)).unwrap();
        std::fs::write(dir.join("ca.pem"), pem_certificates(ca.chain_der())).unwrap();
        write_pem(dir, "crl.pem", "X509 CRL", &crl);
        let (ok, text) = openssl(
            dir,
            &[
                "crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-verify", "-noout", "-text",
            ],
        );
        assert!(ok && text.contains("verify OK"), "{text}");
        assert_eq!(text.matches("Serial Number").count(), 5, "{text}");
        assert_eq!(text.matches("CRL Reason Code").count(), 1, "{text}");
    }

    #[test]
    fn for_revocation_refuses_remove_from_crl_and_lists_the_accepted_names() {
        for r in RevocationReason::FOR_REVOCATION {
            assert_eq!(RevocationReason::for_revocation(r.as_str()).unwrap(), r);
        }
        for bad in ["removeFromCRL", "remove-from-crl"] {
            let err = RevocationReason::for_revocation(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("delta CRLs"), "{err}");
            assert!(err.contains("keyCompromise"), "{err}");
            assert!(!err.contains("accepted: removeFromCRL"), "{err}");
            assert!(!accepted_names().contains("removeFromCRL"), "{err}");
        }
        let err = RevocationReason::for_revocation("7")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown") && err.contains("superseded"),
            "{err}"
        );
    }

    #[test]
    fn reasons_parse_from_rfc_names_and_kebab_case() {
        for r in RevocationReason::ALL {
            assert_eq!(r.as_str().parse::<RevocationReason>().unwrap(), r);
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(
            "key-compromise".parse::<RevocationReason>().unwrap(),
            RevocationReason::KeyCompromise
        );
        assert_eq!(
            "ca-compromise".parse::<RevocationReason>().unwrap(),
            RevocationReason::CaCompromise
        );
        assert_eq!(
            "cessation-of-operation"
                .parse::<RevocationReason>()
                .unwrap(),
            RevocationReason::CessationOfOperation
        );
        assert_eq!(
            "remove-from-crl".parse::<RevocationReason>().unwrap(),
            RevocationReason::RemoveFromCrl
        );
        let err = "stolen"
            .parse::<RevocationReason>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"stolen\""), "{err}");
        assert!(
            err.contains("keyCompromise") && err.contains("aACompromise"),
            "{err}"
        );
    }

    #[test]
    fn distribution_point_extension_is_read_by_openssl() {
        let ext = crl_distribution_points("http://pki.example.com/estuary.crl").unwrap();
        assert!(!ext.critical);
        assert_eq!(ext.extn_id, rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS);
        let decoded = CrlDistributionPoints::from_der(ext.extn_value.as_bytes()).unwrap();
        assert_eq!(decoded.0.len(), 1);
        assert!(crl_distribution_points("not a url").is_err());
        assert!(crl_distribution_points("file:///etc/passwd").is_err());

        // In a certificate, openssl shows it as a Full Name URI.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (ca, _) = load_or_create_ca(&dir.join("data"), KeyChoice::P256).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        use rcgen::PublicKeyData as _;
        let spki =
            spki::SubjectPublicKeyInfoOwned::from_der(&key.subject_public_key_info()).unwrap();
        let (_cert, der) = crate::issue::sign_certificate(
            ca.signer().as_ref(),
            &ca.certificate().tbs_certificate.subject,
            "CN=with-cdp".parse().unwrap(),
            spki,
            crate::issue::random_serial().unwrap(),
            SystemTime::now(),
            SystemTime::now() + Duration::from_secs(3600),
            vec![ext],
        )
        .unwrap();
        write_pem(dir, "cdp.pem", "CERTIFICATE", &der);
        let (ok, text) = openssl(dir, &["x509", "-in", "cdp.pem", "-noout", "-text"]);
        assert!(ok, "{text}");
        assert!(text.contains("X509v3 CRL Distribution Points"), "{text}");
        assert!(
            text.contains("URI:http://pki.example.com/estuary.crl"),
            "{text}"
        );
    }
}
