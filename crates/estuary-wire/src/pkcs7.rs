//! The "certs-only" CMS SignedData (RFC 5652 §5, RFC 7030 §4.1.3 and §4.2.3): a SignedData
//! with no signers whose certificates field carries the certificates.

use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
use const_oid::db::rfc5911::{ID_DATA, ID_SIGNED_DATA};
use der::asn1::{AnyRef, SetOfVec};
use der::{Any, Decode, Encode, Reader, SliceReader, Tag, TagNumber, Tagged};
use x509_cert::Certificate;

use crate::{body, WireError};

/// PEM label of a PKCS#7 structure (what `openssl pkcs7 -outform PEM` writes).
pub const PEM_LABELS: &[&str] = &["PKCS7", "CMS"];

/// Builds a certs-only SignedData (DER). Its certificate SET is DER-sorted, so the order of
/// `certificates` is not kept: an enrollment response must carry the issued certificate only
/// (IoT Edge takes the first certificate as its own).
pub fn certs_only(certificates: &[Certificate]) -> Result<Vec<u8>, WireError> {
    let choices: Vec<CertificateChoices> = certificates
        .iter()
        .cloned()
        .map(CertificateChoices::Certificate)
        .collect();
    let set =
        SetOfVec::try_from(choices).map_err(|e| WireError::malformed("certificate set", e))?;
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(set)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let content =
        Any::encode_from(&signed_data).map_err(|e| WireError::malformed("SignedData", e))?;
    ContentInfo {
        content_type: ID_SIGNED_DATA,
        content,
    }
    .to_der()
    .map_err(|e| WireError::malformed("ContentInfo", e))
}

/// Same as [`certs_only`], from DER certificates.
pub fn certs_only_from_der(certificates: &[Vec<u8>]) -> Result<Vec<u8>, WireError> {
    let parsed = certificates
        .iter()
        .map(|d| Certificate::from_der(d).map_err(|e| WireError::malformed("certificate", e)))
        .collect::<Result<Vec<_>, _>>()?;
    certs_only(&parsed)
}

/// Reads the certificates of a certs-only response body (base64, PEM or DER) in the order
/// they appear on the wire. Lenient on purpose: other servers' SETs are not always sorted,
/// and trailing NULs after base64 are ignored ([`body::decode_der_response`]).
pub fn certificates_from_body(body_bytes: &[u8]) -> Result<Vec<Vec<u8>>, WireError> {
    let der = body::decode_der_response(body_bytes, PEM_LABELS)?;
    certificates_from_der(&der)
}

/// Reads the certificates of a DER certs-only ContentInfo, in wire order.
pub fn certificates_from_der(der: &[u8]) -> Result<Vec<Vec<u8>>, WireError> {
    let bad = |e: der::Error| WireError::malformed("PKCS#7 certs-only", e);
    let content_info = AnyRef::from_der(der).map_err(bad)?;
    let mut ci = SliceReader::new(content_info.value()).map_err(bad)?;
    let content_type: const_oid::ObjectIdentifier = ci.decode().map_err(bad)?;
    if content_type != ID_SIGNED_DATA {
        return Err(WireError::malformed(
            "PKCS#7 certs-only",
            format!("content type {content_type} is not signedData"),
        ));
    }
    let explicit: AnyRef<'_> = ci.decode().map_err(bad)?;
    let signed_data = AnyRef::from_der(explicit.value()).map_err(bad)?;
    let mut sd = SliceReader::new(signed_data.value()).map_err(bad)?;
    let _version: AnyRef<'_> = sd.decode().map_err(bad)?;
    let _digest_algorithms: AnyRef<'_> = sd.decode().map_err(bad)?;
    let _encap: AnyRef<'_> = sd.decode().map_err(bad)?;
    let mut out = Vec::new();
    while !sd.is_finished() {
        let field: AnyRef<'_> = sd.decode().map_err(bad)?;
        let certificates_tag = Tag::ContextSpecific {
            constructed: true,
            number: TagNumber::N0,
        };
        if field.tag() != certificates_tag {
            continue;
        }
        let mut certs = SliceReader::new(field.value()).map_err(bad)?;
        while !certs.is_finished() {
            let cert = certs.tlv_bytes().map_err(bad)?;
            // Only plain certificates (a SEQUENCE); skip other CertificateChoices.
            if cert.first() == Some(&0x30) {
                out.push(cert.to_vec());
            }
        }
    }
    if out.is_empty() {
        return Err(WireError::malformed("PKCS#7 certs-only", "no certificates"));
    }
    Ok(out)
}

/// The response body for a certs-only message: base64 in 64-column lines.
pub fn certs_only_body(certificates: &[Certificate]) -> Result<String, WireError> {
    Ok(body::encode_base64_lines(&certs_only(certificates)?))
}
