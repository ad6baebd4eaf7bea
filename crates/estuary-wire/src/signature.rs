//! X.509 signature verification (CSR self-signatures, certificate chains) over aws-lc-rs.

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use const_oid::db::{rfc5912, rfc8410};
use const_oid::ObjectIdentifier;
use der::asn1::{AnyRef, BitStringRef};
use der::{Decode, Reader, SliceReader, Tagged};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::WireError;

/// The three parts of any signed X.509 structure (certificate, CSR, CRL):
/// `SEQUENCE { tbs, signatureAlgorithm, signature BIT STRING }`.
#[derive(Debug)]
pub struct SignedParts<'a> {
    /// The signed bytes exactly as received (the whole TLV of the "to be signed" part).
    pub tbs: &'a [u8],
    /// The signature algorithm.
    pub algorithm: AlgorithmIdentifierOwned,
    /// The signature value.
    pub signature: &'a [u8],
}

/// Splits a signed structure without re-encoding anything, so that the signature is checked
/// over the bytes the signer produced.
pub fn split_signed<'a>(der: &'a [u8], what: &'static str) -> Result<SignedParts<'a>, WireError> {
    let outer = AnyRef::from_der(der).map_err(|e| WireError::malformed(what, e))?;
    if outer.tag() != der::Tag::Sequence {
        return Err(WireError::malformed(what, "not a SEQUENCE"));
    }
    let mut reader = SliceReader::new(outer.value()).map_err(|e| WireError::malformed(what, e))?;
    let parts = (|| -> der::Result<SignedParts<'a>> {
        let tbs = reader.tlv_bytes()?;
        let algorithm: AlgorithmIdentifierOwned = reader.decode()?;
        let signature: BitStringRef<'a> = reader.decode()?;
        let signature = signature.raw_bytes();
        reader.finish(SignedParts {
            tbs,
            algorithm,
            signature,
        })
    })()
    .map_err(|e| WireError::malformed(what, e))?;
    Ok(parts)
}

/// Verifies `signature` over `message` with the key in `spki`, using the X.509 signature
/// `algorithm`. Accepts ECDSA (P-256, P-384) with SHA-256/384/512, RSA PKCS#1 v1.5 with
/// SHA-256/384/512 (2048-8192 bits) and Ed25519. SHA-1 and RSA-PSS are refused.
pub fn verify(
    spki: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), WireError> {
    let verifier = verification_algorithm(spki, algorithm)?;
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| WireError::malformed("public key", "BIT STRING with unused bits"))?;
    UnparsedPublicKey::new(verifier, key)
        .verify(message, signature)
        .map_err(|_| WireError::BadSignature)
}

fn verification_algorithm(
    spki: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
) -> Result<&'static dyn VerificationAlgorithm, WireError> {
    let key_alg = spki.algorithm.oid;
    let sig_alg = algorithm.oid;
    let unsupported = || {
        WireError::UnsupportedAlgorithm(format!(
            "signature algorithm {} with key algorithm {}",
            oid_name(&sig_alg),
            oid_name(&key_alg)
        ))
    };
    if key_alg == rfc5912::ID_EC_PUBLIC_KEY {
        let curve = ec_curve(spki)?;
        return Ok(match (curve, sig_alg) {
            (c, a) if c == rfc5912::SECP_256_R_1 && a == rfc5912::ECDSA_WITH_SHA_256 => {
                &sig::ECDSA_P256_SHA256_ASN1
            }
            (c, a) if c == rfc5912::SECP_256_R_1 && a == rfc5912::ECDSA_WITH_SHA_384 => {
                &sig::ECDSA_P256_SHA384_ASN1
            }
            (c, a) if c == rfc5912::SECP_256_R_1 && a == rfc5912::ECDSA_WITH_SHA_512 => {
                &sig::ECDSA_P256_SHA512_ASN1
            }
            (c, a) if c == rfc5912::SECP_384_R_1 && a == rfc5912::ECDSA_WITH_SHA_256 => {
                &sig::ECDSA_P384_SHA256_ASN1
            }
            (c, a) if c == rfc5912::SECP_384_R_1 && a == rfc5912::ECDSA_WITH_SHA_384 => {
                &sig::ECDSA_P384_SHA384_ASN1
            }
            (c, a) if c == rfc5912::SECP_384_R_1 && a == rfc5912::ECDSA_WITH_SHA_512 => {
                &sig::ECDSA_P384_SHA512_ASN1
            }
            _ => return Err(unsupported()),
        });
    }
    if key_alg == rfc5912::RSA_ENCRYPTION {
        if let crate::KeyType::Rsa { bits } = crate::KeyType::from_spki(spki)? {
            if bits < 2048 {
                return Err(WireError::UnsupportedAlgorithm(format!(
                    "RSA key of {bits} bits; at least 2048 bits are needed"
                )));
            }
        }
        return Ok(match sig_alg {
            a if a == rfc5912::SHA_256_WITH_RSA_ENCRYPTION => &sig::RSA_PKCS1_2048_8192_SHA256,
            a if a == rfc5912::SHA_384_WITH_RSA_ENCRYPTION => &sig::RSA_PKCS1_2048_8192_SHA384,
            a if a == rfc5912::SHA_512_WITH_RSA_ENCRYPTION => &sig::RSA_PKCS1_2048_8192_SHA512,
            _ => return Err(unsupported()),
        });
    }
    if key_alg == rfc8410::ID_ED_25519 && sig_alg == rfc8410::ID_ED_25519 {
        return Ok(&sig::ED25519);
    }
    Err(unsupported())
}

/// The named curve of an EC public key.
pub(crate) fn ec_curve(spki: &SubjectPublicKeyInfoOwned) -> Result<ObjectIdentifier, WireError> {
    spki.algorithm
        .parameters
        .as_ref()
        .ok_or_else(|| WireError::malformed("EC public key", "no curve parameters"))?
        .decode_as::<ObjectIdentifier>()
        .map_err(|e| WireError::malformed("EC public key curve", e))
}

/// A readable name for the OIDs we meet, the dotted form otherwise.
pub fn oid_name(oid: &ObjectIdentifier) -> String {
    const NAMES: &[(ObjectIdentifier, &str)] = &[
        (rfc5912::ID_EC_PUBLIC_KEY, "id-ecPublicKey"),
        (rfc5912::RSA_ENCRYPTION, "rsaEncryption"),
        (rfc8410::ID_ED_25519, "Ed25519"),
        (rfc8410::ID_ED_448, "Ed448"),
        (rfc5912::ECDSA_WITH_SHA_256, "ecdsa-with-SHA256"),
        (rfc5912::ECDSA_WITH_SHA_384, "ecdsa-with-SHA384"),
        (rfc5912::ECDSA_WITH_SHA_512, "ecdsa-with-SHA512"),
        (rfc5912::SHA_1_WITH_RSA_ENCRYPTION, "sha1WithRSAEncryption"),
        (
            rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            "sha256WithRSAEncryption",
        ),
        (
            rfc5912::SHA_384_WITH_RSA_ENCRYPTION,
            "sha384WithRSAEncryption",
        ),
        (
            rfc5912::SHA_512_WITH_RSA_ENCRYPTION,
            "sha512WithRSAEncryption",
        ),
        (rfc5912::ID_RSASSA_PSS, "RSASSA-PSS"),
        (rfc5912::SECP_256_R_1, "P-256"),
        (rfc5912::SECP_384_R_1, "P-384"),
        (rfc5912::SECP_521_R_1, "P-521"),
    ];
    NAMES
        .iter()
        .find(|(o, _)| o == oid)
        .map_or_else(|| oid.to_string(), |(_, n)| (*n).to_string())
}
