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

/// The certs-only SignedData (DER) of one certificate given as DER: the enrollment answer,
/// written directly around the certificate's bytes (the same bytes [`certs_only`] gives for
/// it, without parsing and encoding the certificate again; the bytes are passed on as the CA
/// signed them).
pub fn certs_only_of_one(certificate_der: &[u8]) -> Vec<u8> {
    // RFC 5652 §5.1, DER (X.690 §10): a SET OF one element needs no sorting.
    const SIGNED_DATA_OID: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
    ];
    const BEFORE_CERTIFICATES: &[u8] = &[
        0x02, 0x01, 0x01, // version CMSVersion 1 (RFC 5652 §5.1: no attribute certificates)
        0x31, 0x00, // digestAlgorithms, empty
        0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07,
        0x01, // encapContentInfo: id-data, no content
    ];
    const AFTER_CERTIFICATES: &[u8] = &[0x31, 0x00]; // signerInfos, empty
    let certificates_len = tlv_len(certificate_der.len());
    let signed_data_body = BEFORE_CERTIFICATES.len() + certificates_len + AFTER_CERTIFICATES.len();
    let signed_data_len = tlv_len(signed_data_body);
    let content_info_body = SIGNED_DATA_OID.len() + tlv_len(signed_data_len);
    let mut out = Vec::with_capacity(tlv_len(content_info_body));
    push_header(&mut out, 0x30, content_info_body); // ContentInfo SEQUENCE
    out.extend_from_slice(SIGNED_DATA_OID);
    push_header(&mut out, 0xa0, signed_data_len); // content [0] EXPLICIT
    push_header(&mut out, 0x30, signed_data_body); // SignedData SEQUENCE
    out.extend_from_slice(BEFORE_CERTIFICATES);
    push_header(&mut out, 0xa0, certificate_der.len()); // certificates [0] IMPLICIT SET OF
    out.extend_from_slice(certificate_der);
    out.extend_from_slice(AFTER_CERTIFICATES);
    out
}

/// The length of a DER TLV whose value is `value_len` bytes (a one-byte tag).
fn tlv_len(value_len: usize) -> usize {
    1 + length_octets(value_len) + value_len
}

/// How many octets DER's definite length of `len` takes (X.690 §8.1.3, §10.1).
fn length_octets(len: usize) -> usize {
    if len < 0x80 {
        1
    } else {
        1 + (usize::BITS - len.leading_zeros()).div_ceil(8) as usize
    }
}

fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let octets = length_octets(len) - 1;
        out.push(0x80 | octets as u8);
        out.extend_from_slice(&len.to_be_bytes()[std::mem::size_of::<usize>() - octets..]);
    }
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

/// The enrollment answer's body: [`certs_only_of_one`] in base64 lines.
pub fn certs_only_body_of_one(certificate_der: &[u8]) -> String {
    body::encode_base64_lines(&certs_only_of_one(certificate_der))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate whose DER is `value_len` bytes of TBS padding long (an extension of
    /// arbitrary bytes), so that the lengths cross DER's 1-, 2- and 3-octet forms.
    fn certificate_of_about(size: usize) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["dev.example".into()]).unwrap();
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 99999, 1],
                vec![0x04; size],
            ));
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn one_certificate_is_encoded_as_the_general_encoder_does() {
        for size in [0, 10, 200, 70_000] {
            let der = certificate_of_about(size);
            let parsed = Certificate::from_der(&der).unwrap();
            assert_eq!(
                certs_only_of_one(&der),
                certs_only(std::slice::from_ref(&parsed)).unwrap(),
                "a certificate of {} bytes",
                der.len()
            );
            assert_eq!(
                certificates_from_der(&certs_only_of_one(&der)).unwrap(),
                vec![der]
            );
        }
    }

    #[test]
    fn der_lengths_use_the_fewest_octets() {
        for (len, header) in [
            (0usize, vec![0x30, 0x00]),
            (0x7f, vec![0x30, 0x7f]),
            (0x80, vec![0x30, 0x81, 0x80]),
            (0xff, vec![0x30, 0x81, 0xff]),
            (0x100, vec![0x30, 0x82, 0x01, 0x00]),
            (0xffff, vec![0x30, 0x82, 0xff, 0xff]),
            (0x10000, vec![0x30, 0x83, 0x01, 0x00, 0x00]),
        ] {
            let mut out = Vec::new();
            push_header(&mut out, 0x30, len);
            assert_eq!(out, header, "{len}");
            assert_eq!(tlv_len(len), header.len() + len);
        }
    }
}
