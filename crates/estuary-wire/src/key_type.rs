use std::fmt;

use const_oid::db::{rfc5912, rfc8410};
use der::asn1::{AnyRef, UintRef};
use der::{Decode, Reader, SliceReader};
use spki::SubjectPublicKeyInfoOwned;

use crate::signature::{ec_curve, oid_name};
use crate::WireError;

/// The public key types Estuary recognizes in requests and certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA on NIST P-256.
    P256,
    /// ECDSA on NIST P-384.
    P384,
    /// RSA with the modulus size in bits.
    Rsa {
        /// Modulus length in bits.
        bits: u32,
    },
    /// Ed25519 (RFC 8410).
    Ed25519,
}

impl KeyType {
    /// Reads the key type (and RSA size) from a SubjectPublicKeyInfo.
    pub fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, WireError> {
        let alg = spki.algorithm.oid;
        if alg == rfc5912::ID_EC_PUBLIC_KEY {
            let curve = ec_curve(spki)?;
            return match curve {
                c if c == rfc5912::SECP_256_R_1 => Ok(KeyType::P256),
                c if c == rfc5912::SECP_384_R_1 => Ok(KeyType::P384),
                other => Err(WireError::UnsupportedAlgorithm(format!(
                    "EC curve {}",
                    oid_name(&other)
                ))),
            };
        }
        if alg == rfc5912::RSA_ENCRYPTION {
            let key = spki
                .subject_public_key
                .as_bytes()
                .ok_or_else(|| WireError::malformed("RSA public key", "unused bits"))?;
            return Ok(KeyType::Rsa {
                bits: rsa_modulus_bits(key)?,
            });
        }
        if alg == rfc8410::ID_ED_25519 {
            return Ok(KeyType::Ed25519);
        }
        Err(WireError::UnsupportedAlgorithm(format!(
            "public key algorithm {}",
            oid_name(&alg)
        )))
    }

    /// The key types that have a configuration name (see [`KeyType::config_name`] and the
    /// [`FromStr`](std::str::FromStr) implementation, which parses those names).
    pub const NAMED: [KeyType; 6] = [
        KeyType::P256,
        KeyType::P384,
        KeyType::Rsa { bits: 2048 },
        KeyType::Rsa { bits: 3072 },
        KeyType::Rsa { bits: 4096 },
        KeyType::Ed25519,
    ];

    /// The names used in configuration and on the command line: `p256`, `p384`, `rsa2048`,
    /// `ed25519`. The inverse of the [`FromStr`](std::str::FromStr) implementation.
    pub fn config_name(&self) -> String {
        match self {
            KeyType::P256 => "p256".into(),
            KeyType::P384 => "p384".into(),
            KeyType::Rsa { bits } => format!("rsa{bits}"),
            KeyType::Ed25519 => "ed25519".into(),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::P256 => f.write_str("EC P-256"),
            KeyType::P384 => f.write_str("EC P-384"),
            KeyType::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyType::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// Parses the configuration names `p256`, `p384`, `rsa2048`, `rsa3072`, `rsa4096`, `ed25519`
/// (any case).
impl std::str::FromStr for KeyType {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::NAMED
            .into_iter()
            .find(|k| k.config_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| WireError::UnknownKeyType(s.to_string()))
    }
}

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } (RFC 8017 A.1.1).
fn rsa_modulus_bits(rsa_public_key: &[u8]) -> Result<u32, WireError> {
    let seq =
        AnyRef::from_der(rsa_public_key).map_err(|e| WireError::malformed("RSA public key", e))?;
    let mut reader =
        SliceReader::new(seq.value()).map_err(|e| WireError::malformed("RSA public key", e))?;
    let modulus: UintRef<'_> = reader
        .decode()
        .map_err(|e| WireError::malformed("RSA public key", e))?;
    let bytes = modulus.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(WireError::malformed("RSA public key", "empty modulus"));
    };
    let bits = (bytes.len() as u32) * 8 - first.leading_zeros();
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_round_trip() {
        for k in KeyType::NAMED {
            assert_eq!(k.config_name().parse::<KeyType>().ok(), Some(k));
        }
        assert_eq!(
            "RSA2048".parse::<KeyType>().ok(),
            Some(KeyType::Rsa { bits: 2048 })
        );
        let err = "rsa1024".parse::<KeyType>().map(|_| ()).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown key type "rsa1024"; accepted: p256, p384, rsa2048, rsa3072, rsa4096, ed25519"#
        );
    }
}
