//! Building and signing certificates.
//!
//! The TBSCertificate is assembled from `x509-cert` types: subject and SAN copied from the
//! CSR as sent, every other extension decided by the profile, then signed through
//! [`CaSigner`]. (rcgen's CSR-to-certificate path is not used: it loses repeated RDNs, copies
//! CA flags from the CSR and derives serials from the key.)

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use const_oid::db::rfc5280;
use const_oid::db::rfc5912::ID_KP_SERVER_AUTH;
use der::asn1::{BitString, GeneralizedTime, Ia5String, OctetString, UtcTime};
use der::{Decode, Encode};
use estuary_wire::csr::san_strings;
use estuary_wire::KeyType;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

use crate::{CaError, CaSigner, CheckedRequest, Profile};

/// The issuing CA: its key (behind [`CaSigner`]), its certificate and its chain.
#[derive(Debug, Clone)]
pub struct CertificateAuthority {
    signer: Arc<dyn CaSigner>,
    certificate: Certificate,
    chain_der: Vec<Vec<u8>>,
    subject_key_id: Vec<u8>,
    not_after: SystemTime,
}

/// A freshly issued certificate with the facts the store records.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// DER encoding.
    pub der: Vec<u8>,
    /// Parsed form.
    pub certificate: Certificate,
    /// Serial number, lower-case hex.
    pub serial_hex: String,
    /// Subject, RFC 4514 string.
    pub subject: String,
    /// subjectAltName entries (`DNS:..`, `IP:..`).
    pub sans: Vec<String>,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
    /// Profile it was issued under.
    pub profile: String,
    /// The certified key's type.
    pub key_type: KeyType,
    /// SHA-256 thumbprint, upper-case hex without separators (as IoT Hub shows it).
    pub sha256_thumbprint: String,
    /// SHA-1 thumbprint, upper-case hex without separators (as IoT Hub shows it).
    pub sha1_thumbprint: String,
}

impl CertificateAuthority {
    /// A CA from its signer and its certificate chain (issuing CA first, root last).
    pub fn new(signer: Arc<dyn CaSigner>, chain_der: Vec<Vec<u8>>) -> Result<Self, CaError> {
        let first = chain_der.first().ok_or_else(|| CaError::BadFile {
            path: "ca".into(),
            detail: "empty CA chain".into(),
        })?;
        let certificate = Certificate::from_der(first)?;
        let cert_spki = certificate
            .tbs_certificate
            .subject_public_key_info
            .to_der()?;
        if cert_spki != signer.public_key_der() {
            return Err(CaError::Key(
                "the CA key does not match the CA certificate's public key".into(),
            ));
        }
        // AKI of issued certificates = the CA certificate's own SKI when it has one (an imported
        // CA may use another SKI method), else computed (RFC 5280 §4.2.1.1).
        let subject_key_id = certificate
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
            .and_then(|e| SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).ok())
            .map(|ski| ski.0.as_bytes().to_vec())
            .unwrap_or_else(|| {
                subject_key_identifier(&certificate.tbs_certificate.subject_public_key_info)
            });
        let not_after = certificate
            .tbs_certificate
            .validity
            .not_after
            .to_system_time();
        Ok(CertificateAuthority {
            signer,
            certificate,
            chain_der,
            subject_key_id,
            not_after,
        })
    }

    /// The issuing CA certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The chain served by `/cacerts`: issuing CA first, root last (DER).
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain_der
    }

    /// The signing key.
    pub fn signer(&self) -> &Arc<dyn CaSigner> {
        &self.signer
    }

    /// The CA's key identifier (its SKI), used as authorityKeyIdentifier in what it signs.
    pub fn subject_key_id(&self) -> &[u8] {
        &self.subject_key_id
    }

    /// The CA certificate's notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Issues a certificate for a CSR checked against its profile ([`Profile::check`] makes
    /// the [`CheckedRequest`]), valid for the profile's validity or else `default_validity`,
    /// with `extra_extensions` (e.g. a CRL distribution point) added.
    pub fn issue(
        &self,
        request: &CheckedRequest<'_>,
        default_validity: Duration,
        extra_extensions: &[Extension],
    ) -> Result<IssuedCertificate, CaError> {
        let (csr, profile) = (request.csr(), request.profile());
        let validity = profile.validity.unwrap_or(default_validity);
        let mut extensions = profile_extensions(profile, &csr.public_key, &self.subject_key_id)?;
        extensions.extend(extra_extensions.iter().cloned());
        if let Some(san) = &csr.requested.subject_alt_name {
            // RFC 5280 §4.2.1.6: critical when the subject is empty.
            let critical = csr.subject.0.is_empty();
            extensions.push(Extension {
                extn_id: rfc5280::ID_CE_SUBJECT_ALT_NAME,
                critical,
                extn_value: OctetString::new(san.clone())?,
            });
        }
        let (not_before, not_after) = validity_window(validity, self.not_after);
        if not_after <= not_before {
            return Err(CaError::Signing(
                "the CA certificate has expired: renew or replace the CA".into(),
            ));
        }
        let (certificate, der) = sign_certificate(
            self.signer.as_ref(),
            &self.certificate.tbs_certificate.subject,
            csr.subject.clone(),
            csr.public_key.clone(),
            random_serial()?,
            not_before,
            not_after,
            extensions,
        )?;
        Ok(IssuedCertificate {
            serial_hex: hex_lower(certificate.tbs_certificate.serial_number.as_bytes()),
            subject: estuary_wire::name::rfc4514(&csr.subject),
            sans: csr
                .requested
                .subject_alt_name
                .as_deref()
                .map(san_strings)
                .unwrap_or_default(),
            not_before,
            not_after,
            profile: profile.name.clone(),
            key_type: csr.key_type,
            sha256_thumbprint: thumbprint_sha256(&der),
            sha1_thumbprint: thumbprint_sha1(&der),
            certificate,
            der,
        })
    }
}

/// notBefore is backdated a little (at most a minute, at most a tenth of the lifetime) for
/// device clocks running behind; notAfter = notBefore + validity, never past the CA's own notAfter.
fn validity_window(validity: Duration, ca_not_after: SystemTime) -> (SystemTime, SystemTime) {
    let backdate = (validity / 10).min(Duration::from_secs(60));
    let now = truncate_to_second(SystemTime::now());
    let not_before = now - Duration::from_secs(backdate.as_secs());
    let not_after = not_before
        .checked_add(validity)
        .unwrap_or(ca_not_after)
        .min(ca_not_after);
    (not_before, not_after)
}

fn truncate_to_second(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// The extensions a profile grants (everything but SAN): basicConstraints (critical),
/// keyUsage (critical), extendedKeyUsage, SKI and AKI (RFC 5280 §4.2.1).
fn profile_extensions(
    profile: &Profile,
    subject_key: &SubjectPublicKeyInfoOwned,
    issuer_key_id: &[u8],
) -> Result<Vec<Extension>, CaError> {
    let mut exts = Vec::with_capacity(6);
    exts.push(extension(
        rfc5280::ID_CE_BASIC_CONSTRAINTS,
        true,
        &BasicConstraints {
            ca: profile.ca.is_some(),
            path_len_constraint: profile.ca.flatten(),
        },
    )?);
    if !profile.key_usage.is_empty() {
        exts.push(extension(
            rfc5280::ID_CE_KEY_USAGE,
            true,
            &KeyUsage(profile.key_usage_flags()),
        )?);
    }
    if !profile.extended_key_usage.is_empty() {
        exts.push(extension(
            rfc5280::ID_CE_EXT_KEY_USAGE,
            false,
            &ExtendedKeyUsage(profile.extended_key_usage.clone()),
        )?);
    }
    exts.push(extension(
        rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
        false,
        &SubjectKeyIdentifier(OctetString::new(subject_key_identifier(subject_key))?),
    )?);
    exts.push(authority_key_identifier(issuer_key_id)?);
    Ok(exts)
}

/// basicConstraints CA:TRUE (with `pathlen`) and keyUsage keyCertSign+cRLSign+digitalSignature, both critical.
fn ca_extensions(path_len: Option<u8>) -> Result<Vec<Extension>, CaError> {
    Ok(vec![
        extension(
            rfc5280::ID_CE_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: true,
                path_len_constraint: path_len,
            },
        )?,
        extension(
            rfc5280::ID_CE_KEY_USAGE,
            true,
            &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature),
        )?,
    ])
}

fn authority_key_identifier(issuer_key_id: &[u8]) -> Result<Extension, CaError> {
    extension(
        rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
        false,
        &AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(issuer_key_id.to_vec())?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        },
    )
}

pub(crate) fn extension(
    id: const_oid::ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, CaError> {
    Ok(Extension {
        extn_id: id,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// Assembles and signs a certificate, and gives it with its DER: the TBSCertificate encoded for
/// the signature is reused, not encoded a second time (RFC 5280 §4.1: SEQUENCE {
/// tbsCertificate, signatureAlgorithm, signatureValue }). Shared by the root, the server
/// certificate and issuance.
#[allow(clippy::too_many_arguments)]
pub fn sign_certificate(
    signer: &dyn CaSigner,
    issuer: &Name,
    subject: Name,
    public_key: SubjectPublicKeyInfoOwned,
    serial: SerialNumber,
    not_before: SystemTime,
    not_after: SystemTime,
    extensions: Vec<Extension>,
) -> Result<(Certificate, Vec<u8>), CaError> {
    let algorithm = signer.signature_algorithm();
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: serial,
        signature: algorithm.clone(),
        issuer: issuer.clone(),
        validity: Validity {
            not_before: x509_time(not_before)?,
            not_after: x509_time(not_after)?,
        },
        subject,
        subject_public_key_info: public_key,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der()?;
    let signature = BitString::from_bytes(&signer.sign(&tbs_der)?)?;
    let algorithm_der = algorithm.to_der()?;
    let signature_der = signature.to_der()?;
    let body_len =
        der::Length::try_from(tbs_der.len() + algorithm_der.len() + signature_der.len())?;
    let mut der = der::Header::new(der::Tag::Sequence, body_len)?.to_der()?;
    der.reserve(usize::try_from(body_len)?);
    der.extend_from_slice(&tbs_der);
    der.extend_from_slice(&algorithm_der);
    der.extend_from_slice(&signature_der);
    Ok((
        Certificate {
            tbs_certificate: tbs,
            signature_algorithm: algorithm,
            signature,
        },
        der,
    ))
}

/// RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
pub(crate) fn x509_time(t: SystemTime) -> Result<Time, CaError> {
    const Y2050: u64 = 2_524_608_000;
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let d = Duration::from_secs(secs);
    Ok(if secs < Y2050 {
        Time::UtcTime(UtcTime::from_unix_duration(d)?)
    } else {
        Time::GeneralTime(GeneralizedTime::from_unix_duration(d)?)
    })
}

/// A positive serial of 16 bytes: the issuing time in milliseconds (6 bytes), then 80 random
/// bits (RFC 5280 §4.1.2.2 allows up to 20 octets; the CA/Browser Forum Baseline Requirements
/// §7.1 ask for at least 64 bits of CSPRNG output). The time prefix makes serials issued later
/// sort later, so the store appends to its serial index instead of writing a random page of
/// it for every certificate (the cost that grows with the store).
pub fn random_serial() -> Result<SerialNumber, CaError> {
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&(millis as u64).to_be_bytes()[2..]);
    aws_lc_rs::rand::fill(&mut bytes[6..]).map_err(|_| CaError::Signing("no randomness".into()))?;
    bytes[0] &= 0x3f; // positive, and the time fits 46 bits until the year 4200
    bytes[0] |= 0x40; // no leading zero byte, fixed length
    Ok(SerialNumber::new(&bytes)?)
}

/// RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey BIT STRING contents.
pub fn subject_key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        spki.subject_public_key.raw_bytes(),
    );
    digest.as_ref().to_vec()
}

/// SHA-256 of a DER certificate, upper-case hex (IoT Hub's "thumbprint").
pub fn thumbprint_sha256(der: &[u8]) -> String {
    hex_upper(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// SHA-1 of a DER certificate, upper-case hex (IoT Hub's primary thumbprint).
pub fn thumbprint_sha1(der: &[u8]) -> String {
    hex_upper(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref())
}

fn hex_upper(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

/// Lower-case hex, as serials are shown.
pub fn hex_lower(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Self-signs a root CA certificate (CA:TRUE without pathlen, keyCertSign+cRLSign+digitalSignature, SKI).
pub fn self_signed_root(
    signer: &dyn CaSigner,
    subject: Name,
    validity: Duration,
) -> Result<Certificate, CaError> {
    let spki = SubjectPublicKeyInfoOwned::from_der(signer.public_key_der())?;
    let ski = subject_key_identifier(&spki);
    let mut exts = ca_extensions(None)?;
    exts.push(extension(
        rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
        false,
        &SubjectKeyIdentifier(OctetString::new(ski)?),
    )?);
    let now = truncate_to_second(SystemTime::now());
    let not_before = now - Duration::from_secs(60);
    let (certificate, _der) = sign_certificate(
        signer,
        &subject,
        subject.clone(),
        spki,
        random_serial()?,
        not_before,
        now + validity,
        exts,
    )?;
    Ok(certificate)
}

/// A name in a subjectAltName: DNS name or IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SanEntry {
    /// dNSName.
    Dns(String),
    /// iPAddress.
    Ip(IpAddr),
}

impl std::str::FromStr for SanEntry {
    type Err = String;
    /// `localhost`, `DNS:localhost`, `10.0.0.1`, `IP:10.0.0.1`, `::1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(ip) = s.strip_prefix("IP:") {
            return ip
                .parse()
                .map(SanEntry::Ip)
                .map_err(|_| format!("{ip:?} is not an IP address"));
        }
        let name = s.strip_prefix("DNS:").unwrap_or(s);
        if let Ok(ip) = name.parse() {
            return Ok(SanEntry::Ip(ip));
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | '_'))
        {
            return Err(format!("{name:?} is neither a DNS name nor an IP address"));
        }
        Ok(SanEntry::Dns(name.to_ascii_lowercase()))
    }
}

impl std::fmt::Display for SanEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SanEntry::Dns(d) => write!(f, "DNS:{d}"),
            SanEntry::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// Issues the TLS server certificate (EKU serverAuth, CA:FALSE) for `public_key` with `sans`.
pub fn issue_server_certificate(
    ca: &CertificateAuthority,
    subject: Name,
    public_key: SubjectPublicKeyInfoOwned,
    sans: &[SanEntry],
    validity: Duration,
) -> Result<Certificate, CaError> {
    let rsa = matches!(KeyType::from_spki(&public_key)?, KeyType::Rsa { .. });
    let usages = if rsa {
        KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment
    } else {
        KeyUsages::DigitalSignature.into()
    };
    let ski = subject_key_identifier(&public_key);
    let exts = vec![
        extension(
            rfc5280::ID_CE_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?,
        extension(rfc5280::ID_CE_KEY_USAGE, true, &KeyUsage(usages))?,
        extension(
            rfc5280::ID_CE_EXT_KEY_USAGE,
            false,
            &ExtendedKeyUsage(vec![ID_KP_SERVER_AUTH]),
        )?,
        Extension {
            extn_id: rfc5280::ID_CE_SUBJECT_ALT_NAME,
            critical: false,
            extn_value: OctetString::new(san_extension_value(sans)?)?,
        },
        extension(
            rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
            false,
            &SubjectKeyIdentifier(OctetString::new(ski)?),
        )?,
        authority_key_identifier(&ca.subject_key_id)?,
    ];
    let (not_before, not_after) = validity_window(validity, ca.not_after);
    let (certificate, _der) = sign_certificate(
        ca.signer.as_ref(),
        &ca.certificate.tbs_certificate.subject,
        subject,
        public_key,
        random_serial()?,
        not_before,
        not_after,
        exts,
    )?;
    Ok(certificate)
}

/// The DER of a subjectAltName extension value (GeneralNames) holding `sans`.
pub fn san_extension_value(sans: &[SanEntry]) -> Result<Vec<u8>, CaError> {
    let names = sans
        .iter()
        .map(|s| {
            Ok(match s {
                SanEntry::Dns(d) => GeneralName::DnsName(Ia5String::new(d)?),
                SanEntry::Ip(IpAddr::V4(v4)) => {
                    GeneralName::IpAddress(OctetString::new(v4.octets().to_vec())?)
                }
                SanEntry::Ip(IpAddr::V6(v6)) => {
                    GeneralName::IpAddress(OctetString::new(v6.octets().to_vec())?)
                }
            })
        })
        .collect::<Result<Vec<_>, der::Error>>()?;
    Ok(SubjectAltName(names).to_der()?)
}

/// The SAN entries of a certificate (DNS and IP only).
pub fn certificate_sans(cert: &Certificate) -> Vec<SanEntry> {
    let Some(exts) = &cert.tbs_certificate.extensions else {
        return vec![];
    };
    exts.iter()
        .filter(|e| e.extn_id == rfc5280::ID_CE_SUBJECT_ALT_NAME)
        .filter_map(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).ok())
        .flat_map(|san| san.0)
        .filter_map(|gn| match gn {
            GeneralName::DnsName(d) => Some(SanEntry::Dns(d.as_str().to_ascii_lowercase())),
            GeneralName::IpAddress(o) => match o.as_bytes().len() {
                4 => <[u8; 4]>::try_from(o.as_bytes())
                    .ok()
                    .map(|a| SanEntry::Ip(IpAddr::from(a))),
                16 => <[u8; 16]>::try_from(o.as_bytes())
                    .ok()
                    .map(|a| SanEntry::Ip(IpAddr::from(a))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DER assembled around the signed TBSCertificate is the certificate's own encoding.
    #[test]
    fn the_assembled_der_is_the_certificates_encoding() -> Result<(), Box<dyn std::error::Error>> {
        for choice in [crate::KeyChoice::P256, crate::KeyChoice::Rsa2048] {
            let signer = crate::FileKeySigner::new(choice.generate()?)?;
            let subject: Name = "CN=assembled".parse()?;
            let spki = SubjectPublicKeyInfoOwned::from_der(signer.public_key_der())?;
            let now = truncate_to_second(SystemTime::now());
            let (certificate, der) = sign_certificate(
                &signer,
                &subject,
                subject.clone(),
                spki,
                random_serial()?,
                now,
                now + Duration::from_secs(86_400),
                ca_extensions(None)?,
            )?;
            assert_eq!(der, certificate.to_der()?, "{choice}");
            assert_eq!(Certificate::from_der(&der)?, certificate);
        }
        Ok(())
    }

    #[test]
    fn serials_are_positive_16_bytes_and_sort_by_issuing_time() -> Result<(), CaError> {
        let first = random_serial()?;
        std::thread::sleep(Duration::from_millis(2));
        let later = random_serial()?;
        for serial in [&first, &later] {
            let bytes = serial.as_bytes();
            assert_eq!(bytes.len(), 16);
            assert_eq!(bytes[0] & 0xc0, 0x40, "positive, no leading zero byte");
        }
        // The store keeps serials as lower-case hex: later ones sort later there too.
        assert!(hex_lower(first.as_bytes()) < hex_lower(later.as_bytes()));
        // 80 random bits after the time: two serials of one millisecond still differ.
        assert_ne!(random_serial()?.as_bytes(), random_serial()?.as_bytes());
        Ok(())
    }
}
