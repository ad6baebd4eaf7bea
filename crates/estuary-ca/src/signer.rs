//! The CA key interface and the file-key implementation.

use std::fmt;
use std::str::FromStr;

use const_oid::db::{rfc5912, rfc8410};
use der::asn1::Null;
use der::Decode;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::CaError;

/// A CA signing key: its public key and a signing operation. This is the whole interface
/// issuance needs, so a PKCS#11/HSM key can replace the file key without touching issuance.
pub trait CaSigner: Send + Sync + fmt::Debug {
    /// The public key as a DER SubjectPublicKeyInfo.
    fn public_key_der(&self) -> &[u8];
    /// The X.509 signature algorithm this key signs with.
    fn signature_algorithm(&self) -> AlgorithmIdentifierOwned;
    /// Signs `message` (a DER TBSCertificate or TBSCertList) and returns the X.509 signature
    /// value (DER `Ecdsa-Sig-Value` for ECDSA).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError>;

    /// Whether one signature can take long enough (an RSA key: milliseconds; a network HSM)
    /// that an async server should make it off its async worker threads.
    fn may_block(&self) -> bool {
        false
    }

    /// Why the key cannot sign now, as far as the signer knows: its last signature found a
    /// hardware token unavailable, or the token refused the PIN. `None` while it signs (a key
    /// in a file always does).
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// Tries an unavailable key again (a blocking call into its token), so that a server finds
    /// out that the token is back without waiting for a request to refuse. Nothing to do for
    /// a key that signs, or one whose PIN was refused (no login is tried again before a
    /// restart, so as not to lock the PIN).
    fn recheck(&self) {}
}

/// Key types for the CA and for server-generated keys (`--ca-key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyChoice {
    /// ECDSA P-256 with SHA-256 (the default).
    P256,
    /// ECDSA P-384 with SHA-384.
    P384,
    /// RSA 2048 with SHA-256.
    Rsa2048,
    /// RSA 3072 with SHA-256.
    Rsa3072,
    /// RSA 4096 with SHA-256.
    Rsa4096,
    /// Ed25519.
    Ed25519,
}

impl KeyChoice {
    /// Every choice, for help texts.
    pub const ALL: [KeyChoice; 6] = [
        KeyChoice::P256,
        KeyChoice::P384,
        KeyChoice::Rsa2048,
        KeyChoice::Rsa3072,
        KeyChoice::Rsa4096,
        KeyChoice::Ed25519,
    ];

    /// Generates a new key pair of this type.
    pub fn generate(self) -> Result<rcgen::KeyPair, CaError> {
        let generated = match self {
            KeyChoice::P256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyChoice::P384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyChoice::Rsa2048 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            KeyChoice::Rsa3072 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
            }
            KeyChoice::Rsa4096 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
            }
            KeyChoice::Ed25519 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519),
        };
        generated.map_err(CaError::KeyPair)
    }

    /// The key type to generate for a public key of type `key_type` (serverkeygen).
    pub fn for_key_type(key_type: estuary_wire::KeyType) -> Self {
        use estuary_wire::KeyType;
        match key_type {
            KeyType::P256 => KeyChoice::P256,
            KeyType::P384 => KeyChoice::P384,
            KeyType::Ed25519 => KeyChoice::Ed25519,
            KeyType::Rsa { bits } if bits >= 4096 => KeyChoice::Rsa4096,
            KeyType::Rsa { bits } if bits >= 3072 => KeyChoice::Rsa3072,
            KeyType::Rsa { .. } => KeyChoice::Rsa2048,
        }
    }

    /// The public key type of keys of this choice.
    pub fn key_type(self) -> estuary_wire::KeyType {
        use estuary_wire::KeyType;
        match self {
            KeyChoice::P256 => KeyType::P256,
            KeyChoice::P384 => KeyType::P384,
            KeyChoice::Ed25519 => KeyType::Ed25519,
            KeyChoice::Rsa2048 => KeyType::Rsa { bits: 2048 },
            KeyChoice::Rsa3072 => KeyType::Rsa { bits: 3072 },
            KeyChoice::Rsa4096 => KeyType::Rsa { bits: 4096 },
        }
    }

    /// The name used in config files and on the command line (the key type's
    /// [`config_name`](estuary_wire::KeyType::config_name)).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyChoice::P256 => "p256",
            KeyChoice::P384 => "p384",
            KeyChoice::Rsa2048 => "rsa2048",
            KeyChoice::Rsa3072 => "rsa3072",
            KeyChoice::Rsa4096 => "rsa4096",
            KeyChoice::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for KeyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Parses the names [`estuary_wire::KeyType`] parses; every one of them is a [`KeyChoice`].
impl FromStr for KeyChoice {
    type Err = estuary_wire::WireError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key_type: estuary_wire::KeyType = s.parse()?;
        KeyChoice::ALL
            .into_iter()
            .find(|k| k.key_type() == key_type)
            .ok_or_else(|| estuary_wire::WireError::UnknownKeyType(s.to_string()))
    }
}

/// A CA key held in a PKCS#8 PEM file (mode 0600).
pub struct FileKeySigner {
    key: rcgen::KeyPair,
    spki_der: Vec<u8>,
    algorithm: AlgorithmIdentifierOwned,
}

impl fmt::Debug for FileKeySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKeySigner")
            .field("algorithm", &self.algorithm.oid)
            .finish_non_exhaustive()
    }
}

impl FileKeySigner {
    /// Wraps a key pair, working out the X.509 signature algorithm from its public key.
    pub fn new(key: rcgen::KeyPair) -> Result<Self, CaError> {
        use rcgen::PublicKeyData as _;
        let spki_der = key.subject_public_key_info();
        let spki = SubjectPublicKeyInfoOwned::from_der(&spki_der).map_err(CaError::PublicKey)?;
        let algorithm = signature_algorithm_for(&spki)?;
        Ok(FileKeySigner {
            key,
            spki_der,
            algorithm,
        })
    }

    /// Loads a PEM private key (PKCS#8, or PKCS#1/SEC1).
    pub fn from_pem(pem_text: &str) -> Result<Self, CaError> {
        let key = rcgen::KeyPair::from_pem(pem_text).map_err(CaError::KeyPair)?;
        Self::new(key)
    }

    /// The key as PKCS#8 PEM, wiped from memory when dropped.
    pub fn to_pem(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(self.key.serialize_pem())
    }

    /// The underlying key pair (for rcgen-built self-signed test fixtures).
    pub fn key_pair(&self) -> &rcgen::KeyPair {
        &self.key
    }
}

impl CaSigner for FileKeySigner {
    fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    fn signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        self.algorithm.clone()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError> {
        use rcgen::SigningKey as _;
        self.key.sign(message).map_err(CaError::SignatureFailed)
    }

    fn may_block(&self) -> bool {
        // RSA signing costs 0.2-2 ms (2048-4096 bits); ECDSA and Ed25519 about 10 µs.
        self.algorithm.oid == const_oid::db::rfc5912::SHA_256_WITH_RSA_ENCRYPTION
    }
}

/// The X.509 signature algorithm for a CA public key: ECDSA with the curve's hash, RSA
/// PKCS#1 v1.5 with SHA-256 (parameters NULL, RFC 4055 §5), Ed25519 without parameters
/// (RFC 8410 §3).
pub fn signature_algorithm_for(
    spki: &SubjectPublicKeyInfoOwned,
) -> Result<AlgorithmIdentifierOwned, CaError> {
    use estuary_wire::KeyType;
    let key_type = KeyType::from_spki(spki)?;
    Ok(match key_type {
        KeyType::P256 => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        },
        KeyType::P384 => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_384,
            parameters: None,
        },
        KeyType::Rsa { .. } => AlgorithmIdentifierOwned {
            oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(der::Any::from(Null)),
        },
        KeyType::Ed25519 => AlgorithmIdentifierOwned {
            oid: rfc8410::ID_ED_25519,
            parameters: None,
        },
    })
}

#[cfg(test)]
mod key_name_tests {
    use super::*;

    /// KeyChoice's names are KeyType's config names: one table, parsed and printed alike.
    #[test]
    fn key_choice_names_are_the_key_type_names() {
        for choice in KeyChoice::ALL {
            assert_eq!(choice.to_string(), choice.key_type().config_name());
            assert_eq!(choice.to_string().parse::<KeyChoice>().ok(), Some(choice));
        }
        assert_eq!("P384".parse::<KeyChoice>().ok(), Some(KeyChoice::P384));
        assert!("rsa1024".parse::<KeyChoice>().is_err());
    }
}
