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
    /// using the unspecified (0) reasonCode value").
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
    /// removeFromCRL (8): only meaningful in delta CRLs, so [`build_crl`] refuses it.
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

/// A revocation reason that is not one of RFC 5280 §5.3.1's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown revocation reason {0:?}; accepted: unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, certificateHold, removeFromCRL, privilegeWithdrawn, aACompromise (or kebab-case, e.g. key-compromise)")]
pub struct UnknownReason(pub String);

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
            .ok_or_else(|| UnknownReason(s.to_string()))
    }
}

/// Builds and signs a v2 CRL (RFC 5280 §5.1) for `ca`: issuer = the CA certificate's subject,
/// crlExtensions cRLNumber (§5.2.3) and authorityKeyIdentifier (§5.2.1, = the CA's SKI), one
/// entry per revoked certificate with a reasonCode (§5.3.1) when a reason other than
/// unspecified is given. With no entries, revokedCertificates is left out (§5.1.2.6).
/// Returns the DER.
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
        let serial = SerialNumber::new(&serial_bytes).map_err(|e| {
            CaError::Signing(format!("serial {:?} is not valid: {e}", entry.serial_hex))
        })?;
        if !seen.insert(serial.as_bytes().to_vec()) {
            return Err(CaError::Signing(format!(
                "serial {} is listed twice",
                entry.serial_hex
            )));
        }
        let crl_entry_extensions = match entry.reason {
            None | Some(RevocationReason::Unspecified) => None,
            // RFC 5280 §5.3.1: removeFromCRL is only used in delta CRLs.
            Some(RevocationReason::RemoveFromCrl) => {
                return Err(CaError::Signing(format!(
                    "serial {}: removeFromCRL is only for delta CRLs (RFC 5280 §5.3.1)",
                    entry.serial_hex
                )))
            }
            Some(reason) => Some(vec![extension(
                rfc5280::ID_CE_CRL_REASONS,
                false,
                &reason.to_crl_reason(),
            )?]),
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
    let uri = Ia5String::new(url)
        .map_err(|e| CaError::Signing(format!("CRL distribution point {url:?}: {e}")))?;
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
        ca.issue(
            &verified,
            &Profile::device(),
            Duration::from_secs(3600),
            &[],
        )
        .unwrap()
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
        let err = build_crl(
            &ca,
            &[entry("0a", Some(RevocationReason::RemoveFromCrl))],
            1,
            now,
            later,
        )
        .unwrap_err();
        assert!(err.to_string().contains("delta"), "{err}");
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
        let cert = crate::issue::sign_certificate(
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
        write_pem(dir, "cdp.pem", "CERTIFICATE", &cert.to_der().unwrap());
        let (ok, text) = openssl(dir, &["x509", "-in", "cdp.pem", "-noout", "-text"]);
        assert!(ok, "{text}");
        assert!(text.contains("X509v3 CRL Distribution Points"), "{text}");
        assert!(
            text.contains("URI:http://pki.example.com/estuary.crl"),
            "{text}"
        );
    }
}
