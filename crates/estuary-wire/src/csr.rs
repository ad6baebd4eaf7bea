//! PKCS#10 certification requests as EST carries them (RFC 2986, RFC 7030 §4.2.1).

use const_oid::db::rfc5280;
use const_oid::ObjectIdentifier;
use der::Decode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
use x509_cert::ext::Extensions;
use x509_cert::name::Name;
use x509_cert::request::CertReq;

use crate::signature::{self, oid_name};
use crate::{body, KeyType, WireError};

/// PEM labels under which a PKCS#10 request may arrive.
pub const PEM_LABELS: &[&str] = &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];

/// The PKCS#9 extensionRequest attribute (RFC 2985 §5.4.2).
const EXTENSION_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");

/// A request whose self-signature has been verified, with what it asks for.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// The DER of the whole request.
    pub der: Vec<u8>,
    /// The requested subject, as sent.
    pub subject: Name,
    /// The public key, as sent.
    pub public_key: SubjectPublicKeyInfoOwned,
    /// The public key's type.
    pub key_type: KeyType,
    /// The extensions in the extensionRequest attribute, decoded.
    pub requested: RequestedExtensions,
}

/// What a CSR asks for in its extensionRequest. The profile decides what is granted.
#[derive(Debug, Clone, Default)]
pub struct RequestedExtensions {
    /// The subjectAltName extension value (DER of GeneralNames), kept byte for byte.
    pub subject_alt_name: Option<Vec<u8>>,
    /// basicConstraints.
    pub basic_constraints: Option<BasicConstraints>,
    /// keyUsage.
    pub key_usage: Option<KeyUsage>,
    /// extendedKeyUsage.
    pub extended_key_usage: Option<Vec<ObjectIdentifier>>,
    /// Any other requested extension, by OID (never copied into a certificate).
    pub other: Vec<ObjectIdentifier>,
}

impl RequestedExtensions {
    /// Whether the request asks to be a CA (basicConstraints cA TRUE).
    pub fn asks_for_ca(&self) -> bool {
        self.basic_constraints.as_ref().is_some_and(|bc| bc.ca)
    }
}

/// Decodes an EST simpleenroll/simplereenroll body (base64 with any whitespace, PEM, or DER),
/// then parses and verifies the request.
pub fn decode_request_body(body: &[u8]) -> Result<VerifiedCsr, WireError> {
    let der = body::decode_der_body(body, PEM_LABELS)?;
    parse_and_verify(der)
}

/// Parses a DER PKCS#10 request and verifies its self-signature (proof of possession, RFC 7030 §3.4).
pub fn parse_and_verify(der: Vec<u8>) -> Result<VerifiedCsr, WireError> {
    let request = CertReq::from_der(&der).map_err(WireError::NotACsr)?;
    let parts = signature::split_signed(&der, "certification request")?;
    let key_type = KeyType::from_spki(&request.info.public_key)?;
    signature::verify(
        &request.info.public_key,
        &parts.algorithm,
        parts.tbs,
        parts.signature,
    )
    .map_err(|e| match e {
        WireError::BadSignature => WireError::BadCsrSignature,
        other => other,
    })?;
    let requested = requested_extensions(&request)?;
    Ok(VerifiedCsr {
        subject: request.info.subject,
        public_key: request.info.public_key,
        key_type,
        requested,
        der,
    })
}

fn requested_extensions(request: &CertReq) -> Result<RequestedExtensions, WireError> {
    let mut out = RequestedExtensions::default();
    for attribute in request.info.attributes.iter() {
        if attribute.oid != EXTENSION_REQUEST {
            continue;
        }
        for value in attribute.values.iter() {
            let extensions: Extensions = value
                .decode_as()
                .map_err(|e| WireError::malformed("extensionRequest", e))?;
            let mut seen = std::collections::HashSet::new();
            for ext in extensions {
                if !seen.insert(ext.extn_id) {
                    return Err(WireError::malformed(
                        "extensionRequest",
                        format!("{} requested twice", oid_name(&ext.extn_id)),
                    ));
                }
                let bytes = ext.extn_value.as_bytes();
                let bad = |e: der::Error| {
                    WireError::malformed(
                        "requested extension",
                        format!("{}: {e}", oid_name(&ext.extn_id)),
                    )
                };
                match ext.extn_id {
                    id if id == rfc5280::ID_CE_SUBJECT_ALT_NAME => {
                        // Validate now so a broken SAN is a 400, then keep the bytes as sent.
                        SubjectAltName::from_der(bytes).map_err(bad)?;
                        out.subject_alt_name = Some(bytes.to_vec());
                    }
                    id if id == rfc5280::ID_CE_BASIC_CONSTRAINTS => {
                        out.basic_constraints =
                            Some(BasicConstraints::from_der(bytes).map_err(bad)?);
                    }
                    id if id == rfc5280::ID_CE_KEY_USAGE => {
                        out.key_usage = Some(KeyUsage::from_der(bytes).map_err(bad)?);
                    }
                    id if id == rfc5280::ID_CE_EXT_KEY_USAGE => {
                        out.extended_key_usage =
                            Some(ExtendedKeyUsage::from_der(bytes).map_err(bad)?.0);
                    }
                    other => out.other.push(other),
                }
            }
        }
    }
    Ok(out)
}

/// The subjectAltName entries as readable strings (`DNS:x`, `IP:1.2.3.4`, `URI:...`).
pub fn san_strings(san_der: &[u8]) -> Vec<String> {
    use x509_cert::ext::pkix::name::GeneralName;
    let Ok(san) = SubjectAltName::from_der(san_der) else {
        return vec!["<malformed>".into()];
    };
    san.0
        .iter()
        .map(|gn| match gn {
            GeneralName::DnsName(s) => format!("DNS:{}", readable(s.as_str())),
            GeneralName::Rfc822Name(s) => format!("email:{}", readable(s.as_str())),
            GeneralName::UniformResourceIdentifier(s) => format!("URI:{}", readable(s.as_str())),
            GeneralName::IpAddress(o) => ip_string(o.as_bytes()),
            GeneralName::DirectoryName(n) => format!("DirName:{n}"),
            GeneralName::RegisteredId(o) => format!("RID:{o}"),
            GeneralName::OtherName(o) => format!("othername:{}", o.type_id),
            _ => "<other>".into(),
        })
        .collect()
}

/// `text` with its control characters written `\xx` (as subjects write them), so that a name
/// printed or stored is never cut at a NUL or broken by a line end.
fn readable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_ascii_control()) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_ascii_control() {
            out.push_str(&format!("\\{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn ip_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => {
            let a: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
            format!("IP:{}", std::net::Ipv4Addr::from(a))
        }
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            format!("IP:{}", std::net::Ipv6Addr::from(a))
        }
        _ => format!("IP:<{} bytes>", bytes.len()),
    }
}

/// Whether a key usage flag set asks for certificate signing.
pub fn key_usage_signs_certs(ku: &KeyUsage) -> bool {
    ku.key_cert_sign() || ku.crl_sign()
}
