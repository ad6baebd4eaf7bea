//! Building PKCS#10 requests (RFC 2986) with the subject and extensions given, signed with the
//! device key. Re-enrollment copies the subject and subjectAltName of the certificate being
//! renewed byte for byte (RFC 7030 §4.2.2).

use const_oid::db::rfc5280;
use const_oid::db::rfc5912::ID_KP_CLIENT_AUTH;
use const_oid::ObjectIdentifier;
use der::asn1::{Any, OctetString, SetOfVec};
use der::{Decode, Encode, Tag};
use estuary_ca::issue::{san_extension_value, SanEntry};
use estuary_ca::{CaSigner, FileKeySigner};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::attr::{Attribute, AttributeTypeAndValue};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::request::{CertReq, CertReqInfo, Version};
use x509_cert::Certificate;

use crate::ClientError;

/// PKCS#9 extensionRequest (RFC 2985 §5.4.2).
const EXTENSION_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");

/// A subject with one CN (UTF8String), as IoT Edge sends it.
pub fn subject_with_common_name(common_name: &str) -> Result<Name, ClientError> {
    let value = Any::new(Tag::Utf8String, common_name.as_bytes())
        .map_err(ClientError::der("common name"))?;
    let atv = AttributeTypeAndValue {
        oid: const_oid::db::rfc4519::COMMON_NAME,
        value,
    };
    let rdn = RelativeDistinguishedName(
        SetOfVec::try_from(vec![atv]).map_err(ClientError::der("subject"))?,
    );
    Ok(RdnSequence(vec![rdn]))
}

/// The subjectAltName extension for DNS names and IPs.
pub fn san_extension(sans: &[SanEntry]) -> Result<Extension, ClientError> {
    let value = san_extension_value(sans)?;
    raw_extension(rfc5280::ID_CE_SUBJECT_ALT_NAME, false, value)
}

/// An extension with a value given as DER (e.g. a SAN copied from a certificate).
pub fn raw_extension(
    id: ObjectIdentifier,
    critical: bool,
    value: Vec<u8>,
) -> Result<Extension, ClientError> {
    Ok(Extension {
        extn_id: id,
        critical,
        extn_value: OctetString::new(value).map_err(ClientError::der("extension"))?,
    })
}

/// What IoT Edge asks for its Edge CA: basicConstraints CA:TRUE pathlen:0 and keyUsage
/// digitalSignature+keyCertSign, both critical.
pub fn edge_ca_extensions() -> Result<Vec<Extension>, ClientError> {
    let enc = ClientError::der("Edge CA extensions");
    Ok(vec![
        raw_extension(
            rfc5280::ID_CE_BASIC_CONSTRAINTS,
            true,
            BasicConstraints {
                ca: true,
                path_len_constraint: Some(0),
            }
            .to_der()
            .map_err(enc)?,
        )?,
        raw_extension(
            rfc5280::ID_CE_KEY_USAGE,
            true,
            KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyCertSign)
                .to_der()
                .map_err(enc)?,
        )?,
    ])
}

/// EKU clientAuth (what IoT Edge asks for its EST identity certificate).
pub fn client_auth_extension() -> Result<Extension, ClientError> {
    let value = ExtendedKeyUsage(vec![ID_KP_CLIENT_AUTH])
        .to_der()
        .map_err(ClientError::der("extendedKeyUsage"))?;
    raw_extension(rfc5280::ID_CE_EXT_KEY_USAGE, false, value)
}

/// Builds and signs a CSR for `key` with `subject` and `extensions` (DER).
pub fn build_csr(
    key: &FileKeySigner,
    subject: Name,
    extensions: Vec<Extension>,
) -> Result<Vec<u8>, ClientError> {
    let enc = ClientError::der("building the CSR");
    let public_key = SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).map_err(enc)?;
    let mut attributes = SetOfVec::new();
    if !extensions.is_empty() {
        let value = Any::encode_from(&extensions).map_err(enc)?;
        attributes
            .insert(Attribute {
                oid: EXTENSION_REQUEST,
                values: SetOfVec::try_from(vec![value]).map_err(enc)?,
            })
            .map_err(enc)?;
    }
    let info = CertReqInfo {
        version: Version::V1,
        subject,
        public_key,
        attributes,
    };
    let tbs = info.to_der().map_err(enc)?;
    let signature = key
        .sign(&tbs)
        .map_err(|e| ClientError::from(e).context("signing the CSR"))?;
    CertReq {
        info,
        algorithm: key.signature_algorithm(),
        signature: der::asn1::BitString::from_bytes(&signature).map_err(enc)?,
    }
    .to_der()
    .map_err(enc)
}

/// Whether two DER CSRs ask for the same thing: the same CertificationRequestInfo (subject,
/// public key, attributes). Their signatures may differ (ECDSA signatures are randomized), so
/// a client that must send "the same request" again (RFC 7030 §4.2.3) keeps the bytes it sent.
pub fn same_request(a: &[u8], b: &[u8]) -> bool {
    let info = |der: &[u8]| {
        CertReq::from_der(der)
            .ok()
            .and_then(|r| r.info.to_der().ok())
    };
    matches!((info(a), info(b)), (Some(x), Some(y)) if x == y)
}

/// Whether the DER CSR is for `key` (its subjectPublicKeyInfo is the key's).
pub fn csr_is_for_key(csr: &[u8], key: &FileKeySigner) -> bool {
    CertReq::from_der(csr)
        .ok()
        .and_then(|r| r.info.public_key.to_der().ok())
        .is_some_and(|spki| spki == key.public_key_der())
}

/// A CSR that renews `certificate`: its subject and subjectAltName exactly, the given key.
pub fn renewal_csr(key: &FileKeySigner, certificate: &[u8]) -> Result<Vec<u8>, ClientError> {
    let cert =
        Certificate::from_der(certificate).map_err(ClientError::der("certificate to renew"))?;
    let tbs = cert.tbs_certificate;
    let mut extensions = Vec::new();
    for ext in tbs.extensions.unwrap_or_default() {
        if ext.extn_id == rfc5280::ID_CE_SUBJECT_ALT_NAME {
            extensions.push(ext);
        }
    }
    build_csr(key, tbs.subject, extensions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_request_is_recognised_across_signatures() {
        let key = FileKeySigner::new(estuary_ca::KeyChoice::P256.generate().unwrap()).unwrap();
        let other = FileKeySigner::new(estuary_ca::KeyChoice::P256.generate().unwrap()).unwrap();
        let a = build_csr(&key, subject_with_common_name("d").unwrap(), vec![]).unwrap();
        let b = build_csr(&key, subject_with_common_name("d").unwrap(), vec![]).unwrap();
        // ECDSA: two signatures of the same request differ, the request does not.
        assert_ne!(a, b);
        assert!(same_request(&a, &b));
        assert!(csr_is_for_key(&a, &key) && !csr_is_for_key(&a, &other));
        let c = build_csr(&key, subject_with_common_name("e").unwrap(), vec![]).unwrap();
        assert!(!same_request(&a, &c));
        let d = build_csr(&other, subject_with_common_name("d").unwrap(), vec![]).unwrap();
        assert!(!same_request(&a, &d));
        assert!(!same_request(&a, b"garbage"));
    }

    #[test]
    fn built_requests_verify_and_carry_what_was_asked() {
        for choice in [estuary_ca::KeyChoice::P256, estuary_ca::KeyChoice::Ed25519] {
            let key = FileKeySigner::new(choice.generate().unwrap()).unwrap();
            let mut exts = edge_ca_extensions().unwrap();
            exts.push(
                san_extension(&["dev.example".parse().unwrap(), "10.0.0.1".parse().unwrap()])
                    .unwrap(),
            );
            let der =
                build_csr(&key, subject_with_common_name("dev, \"1\"").unwrap(), exts).unwrap();
            let parsed = estuary_wire::csr::parse_and_verify(der).unwrap();
            assert!(parsed.requested.asks_for_ca());
            assert_eq!(parsed.subject.to_string(), "CN=dev\\, \\\"1\\\"");
            assert_eq!(
                estuary_wire::csr::san_strings(
                    parsed.requested.subject_alt_name.as_deref().unwrap()
                ),
                vec!["DNS:dev.example", "IP:10.0.0.1"]
            );
        }
    }
}
