//! Certificate profiles: what a certificate issued under a label may contain.
//!
//! The profile decides every extension; a CSR only proposes a subject, a key and SANs.
//! Asking for CA powers under a profile that does not grant them is refused, so a device
//! never silently receives less than it asked for.

use std::fmt;
use std::str::FromStr;

use estuary_wire::csr::{key_usage_signs_certs, VerifiedCsr};
use estuary_wire::KeyType;

/// A built-in certificate profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// End-entity device certificate: CA:FALSE, keyUsage digitalSignature, EKU clientAuth, SKI, AKI.
    Device,
    /// IoT Edge "Edge CA": basicConstraints CA:TRUE pathlen:0 and keyUsage
    /// keyCertSign+cRLSign+digitalSignature (both critical), SKI, AKI.
    EdgeCa,
}

impl Profile {
    /// The profile's name in config files, the store and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Device => "device",
            Profile::EdgeCa => "edge-ca",
        }
    }

    /// Checks that the CSR asks for nothing this profile forbids.
    pub fn check(self, csr: &VerifiedCsr) -> Result<(), PolicyRefusal> {
        check_key_type(csr.key_type)?;
        let requested = &csr.requested;
        match self {
            Profile::Device => {
                if requested.asks_for_ca() {
                    return Err(PolicyRefusal(
                        "profile \"device\" issues end-entity certificates only, but the CSR asks for \
                         basicConstraints CA:TRUE; enroll under a label whose profile is \"edge-ca\""
                            .into(),
                    ));
                }
                if requested
                    .key_usage
                    .as_ref()
                    .is_some_and(key_usage_signs_certs)
                {
                    return Err(PolicyRefusal(
                        "profile \"device\" does not grant keyUsage keyCertSign or cRLSign, but the CSR asks for it"
                            .into(),
                    ));
                }
            }
            Profile::EdgeCa => {
                if let Some(bc) = &requested.basic_constraints {
                    if let Some(len) = bc.path_len_constraint.filter(|&l| l > 0) {
                        return Err(PolicyRefusal(format!(
                            "profile \"edge-ca\" issues CA certificates with pathlen:0, but the CSR asks for pathlen:{len}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Key types Estuary certifies: P-256, P-384, RSA 2048-4096, Ed25519.
pub fn check_key_type(key_type: KeyType) -> Result<(), PolicyRefusal> {
    match key_type {
        KeyType::P256 | KeyType::P384 | KeyType::Ed25519 => Ok(()),
        KeyType::Rsa { bits } if (2048..=4096).contains(&bits) => Ok(()),
        KeyType::Rsa { bits } => Err(PolicyRefusal(format!(
            "RSA keys must be 2048 to 4096 bits; the CSR's key has {bits}"
        ))),
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "device" => Ok(Profile::Device),
            "edge-ca" => Ok(Profile::EdgeCa),
            other => Err(format!(
                "unknown profile {other:?}; accepted: device, edge-ca"
            )),
        }
    }
}

/// How a label picks its profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileSelection {
    /// Always this profile.
    Fixed(Profile),
    /// The IoT Edge tutorial's behaviour (`--dev`): a CSR asking for CA:TRUE gets `edge-ca`,
    /// any other gets `device`, so IoT Edge's Edge CA certificate works from `urls.default`.
    Auto,
}

impl ProfileSelection {
    /// The profile for this CSR.
    pub fn select(self, csr: &VerifiedCsr) -> Profile {
        match self {
            ProfileSelection::Fixed(p) => p,
            ProfileSelection::Auto if csr.requested.asks_for_ca() => Profile::EdgeCa,
            ProfileSelection::Auto => Profile::Device,
        }
    }
}

impl fmt::Display for ProfileSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileSelection::Fixed(p) => p.fmt(f),
            ProfileSelection::Auto => f.write_str("auto"),
        }
    }
}

impl FromStr for ProfileSelection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ProfileSelection::Auto),
            other => other
                .parse()
                .map(ProfileSelection::Fixed)
                .map_err(|_| format!("unknown profile {other:?}; accepted: device, edge-ca, auto")),
        }
    }
}

/// A request refused by policy. The message says what was asked and what the profile allows;
/// it is sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyRefusal(pub String);
