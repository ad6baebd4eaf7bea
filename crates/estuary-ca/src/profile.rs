//! Certificate profiles: what a certificate issued under a label may contain.
//!
//! The profile decides every extension; a CSR only proposes a subject, a key and SANs.
//! Asking for something the profile forbids (CA powers, a key type, a SAN type, a subject that
//! breaks the rules) is refused with a message that says so, so a device never silently
//! receives less than it asked for. Two profiles are built in (`device` and `edge-ca`); the
//! config can redefine them and add others.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use const_oid::db::rfc5912::{ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH};
use const_oid::ObjectIdentifier;
use der::Decode;
use estuary_wire::csr::{key_usage_signs_certs, VerifiedCsr};
use estuary_wire::KeyType;
use flagset::FlagSet;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{KeyUsages, SubjectAltName};

use crate::{CaError, KeyChoice};

/// id-kp-cmcRA (RFC 6402 §2.10): the certificate of a registration authority.
pub const ID_KP_CMC_RA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.28");

/// Which key types a profile certifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTypes(pub Vec<KeyType>);

impl KeyTypes {
    /// P-256, P-384, Ed25519, RSA 2048/3072/4096.
    pub fn all() -> Self {
        KeyTypes(vec![
            KeyType::P256,
            KeyType::P384,
            KeyType::Ed25519,
            KeyType::Rsa { bits: 2048 },
            KeyType::Rsa { bits: 3072 },
            KeyType::Rsa { bits: 4096 },
        ])
    }

    fn allows(&self, k: KeyType) -> bool {
        self.0.contains(&k)
    }

    fn names(&self) -> String {
        self.0
            .iter()
            .map(KeyType::config_name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// subjectAltName entry types a profile copies from the CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SanTypes {
    /// dNSName.
    pub dns: bool,
    /// iPAddress.
    pub ip: bool,
    /// rfc822Name.
    pub email: bool,
    /// uniformResourceIdentifier.
    pub uri: bool,
}

impl SanTypes {
    /// All four.
    pub fn all() -> Self {
        SanTypes {
            dns: true,
            ip: true,
            email: true,
            uri: true,
        }
    }

    /// Parses `dns`, `ip`, `email`, `uri`.
    pub fn parse(names: &[String]) -> Result<Self, CaError> {
        let mut t = SanTypes::default();
        for n in names {
            match n.as_str() {
                "dns" => t.dns = true,
                "ip" => t.ip = true,
                "email" => t.email = true,
                "uri" => t.uri = true,
                other => {
                    return Err(CaError::UnknownName {
                        what: "SAN type",
                        name: other.to_string(),
                        accepted: "dns, ip, email, uri",
                    })
                }
            }
        }
        Ok(t)
    }

    fn names(&self) -> String {
        let mut v = Vec::new();
        for (on, n) in [
            (self.dns, "dns"),
            (self.ip, "ip"),
            (self.email, "email"),
            (self.uri, "uri"),
        ] {
            if on {
                v.push(n);
            }
        }
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }
}

/// A certificate profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Name (config, store, logs).
    pub name: String,
    /// Lifetime of certificates; `None` = the server's `validity`.
    pub validity: Option<Duration>,
    /// Key types certified.
    pub key_types: KeyTypes,
    /// keyUsage granted (critical); empty = no keyUsage extension.
    pub key_usage: Vec<KeyUsages>,
    /// extendedKeyUsage granted; empty = none.
    pub extended_key_usage: Vec<ObjectIdentifier>,
    /// `None`: end entity (CA:FALSE). `Some(pathlen)`: a CA (CA:TRUE, with pathlen if given).
    pub ca: Option<Option<u8>>,
    /// The CN must match this pattern (whole CN).
    pub cn_pattern: Option<regex_lite::Regex>,
    /// The CN must equal the Basic user name.
    pub cn_equals_username: bool,
    /// SAN types copied; a CSR with another type is refused.
    pub san_types: SanTypes,
    /// Key type made by `serverkeygen`; `None` = the CSR's key type.
    pub serverkeygen_key_type: Option<KeyChoice>,
}

/// What the policy check needs to know about the requester.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyContext<'a> {
    /// The Basic user name, when Basic authenticated the request.
    pub basic_user: Option<&'a str>,
}

impl Profile {
    /// The built-in `device` profile: CA:FALSE, keyUsage digitalSignature, EKU clientAuth.
    pub fn device() -> Self {
        Profile {
            name: "device".into(),
            validity: None,
            key_types: KeyTypes::all(),
            key_usage: vec![KeyUsages::DigitalSignature],
            extended_key_usage: vec![ID_KP_CLIENT_AUTH],
            ca: None,
            cn_pattern: None,
            cn_equals_username: false,
            san_types: SanTypes::all(),
            serverkeygen_key_type: None,
        }
    }

    /// The built-in `edge-ca` profile: CA:TRUE pathlen:0, keyCertSign+cRLSign+digitalSignature.
    pub fn edge_ca() -> Self {
        Profile {
            name: "edge-ca".into(),
            key_usage: vec![
                KeyUsages::KeyCertSign,
                KeyUsages::CRLSign,
                KeyUsages::DigitalSignature,
            ],
            extended_key_usage: vec![],
            ca: Some(Some(0)),
            ..Profile::device()
        }
    }

    /// The built-in `est-ra` profile, for an EST registration authority's client certificate
    /// (RFC 7030 §3.2.3, RFC 6402 §2.10): CA:FALSE, keyUsage digitalSignature, EKU clientAuth
    /// and id-kp-cmcRA.
    pub fn est_ra() -> Self {
        Profile {
            name: "est-ra".into(),
            extended_key_usage: vec![ID_KP_CLIENT_AUTH, ID_KP_CMC_RA],
            ..Profile::device()
        }
    }

    /// The built-in `tls-server` profile, for an EST server's (an RA's) TLS certificate:
    /// CA:FALSE, keyUsage digitalSignature, EKU serverAuth and clientAuth, DNS and IP SANs.
    /// (Profiles grant a fixed keyUsage; an RSA key exchange would need keyEncipherment,
    /// which TLS 1.3 and ECDHE suites do not use.)
    pub fn tls_server() -> Self {
        Profile {
            name: "tls-server".into(),
            extended_key_usage: vec![ID_KP_SERVER_AUTH, ID_KP_CLIENT_AUTH],
            san_types: SanTypes {
                dns: true,
                ip: true,
                email: false,
                uri: false,
            },
            ..Profile::device()
        }
    }

    /// The keyUsage flags.
    pub fn key_usage_flags(&self) -> FlagSet<KeyUsages> {
        self.key_usage
            .iter()
            .fold(FlagSet::default(), |acc, u| acc | *u)
    }

    /// Checks that the CSR asks for nothing this profile forbids. The [`CheckedRequest`] it
    /// returns is what [`CertificateAuthority::issue`](crate::CertificateAuthority::issue)
    /// takes: a request that was not checked cannot be issued.
    pub fn check<'a>(
        &'a self,
        csr: &'a VerifiedCsr,
        ctx: PolicyContext<'_>,
    ) -> Result<CheckedRequest<'a>, PolicyRefusal> {
        let name = &self.name;
        if !self.key_types.allows(csr.key_type) {
            return Err(PolicyRefusal(format!(
                "profile {name:?} does not certify {} keys; it accepts: {}",
                csr.key_type,
                self.key_types.names()
            )));
        }
        let requested = &csr.requested;
        match self.ca {
            None => {
                if requested.asks_for_ca() {
                    return Err(PolicyRefusal(format!(
                        "profile {name:?} issues end-entity certificates only, but the CSR asks for \
                         basicConstraints CA:TRUE; enroll under a label whose profile issues CA certificates (e.g. \"edge-ca\")"
                    )));
                }
                if requested
                    .key_usage
                    .as_ref()
                    .is_some_and(key_usage_signs_certs)
                {
                    return Err(PolicyRefusal(format!(
                        "profile {name:?} does not grant keyUsage keyCertSign or cRLSign, but the CSR asks for it"
                    )));
                }
            }
            Some(granted) => {
                let asked = requested
                    .basic_constraints
                    .as_ref()
                    .and_then(|bc| bc.path_len_constraint);
                if let (Some(asked), Some(granted)) = (asked, granted) {
                    if asked > granted {
                        return Err(PolicyRefusal(format!(
                            "profile {name:?} issues CA certificates with pathlen:{granted}, but the CSR asks for pathlen:{asked}"
                        )));
                    }
                }
            }
        }
        if self.cn_pattern.is_some() || self.cn_equals_username {
            let cns = common_names(&csr.subject).ok_or_else(|| {
                PolicyRefusal(format!(
                    "profile {name:?}: the subject has a CN that is not a text string"
                ))
            })?;
            let cn = match cns.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(PolicyRefusal(format!(
                        "profile {name:?} requires a subject CN, and the CSR has none"
                    )))
                }
                _ => {
                    return Err(PolicyRefusal(format!(
                        "profile {name:?} requires exactly one subject CN, and the CSR has {}",
                        cns.len()
                    )))
                }
            };
            if let Some(re) = &self.cn_pattern {
                if !re.is_match(&cn) {
                    return Err(PolicyRefusal(format!(
                        "profile {name:?}: the CN {cn:?} does not match the required pattern {:?}",
                        pattern_text(re)
                    )));
                }
            }
            if self.cn_equals_username {
                match ctx.basic_user {
                    Some(user) if user == cn => {}
                    Some(user) => {
                        return Err(PolicyRefusal(format!(
                            "profile {name:?}: the CN must equal the Basic user name {user:?}, but it is {cn:?}"
                        )))
                    }
                    None => {
                        return Err(PolicyRefusal(format!(
                            "profile {name:?}: the CN must equal the Basic user name, and this request was not authenticated with Basic"
                        )))
                    }
                }
            }
        }
        if estuary_wire::name::has_control_character(&csr.subject) {
            return Err(PolicyRefusal(
                "the CSR's subject holds a control character (a NUL or a line end, say) in a name"
                    .into(),
            ));
        }
        if let Some(san) = &requested.subject_alt_name {
            let names = SubjectAltName::from_der(san)
                .map_err(|_| PolicyRefusal("the CSR's subjectAltName is malformed".into()))?;
            for gn in &names.0 {
                // IA5String admits control characters, no name has one: a NUL in a DNS name is
                // the old trick of a name that one parser reads up to the NUL and another whole.
                let text = match gn {
                    GeneralName::DnsName(t)
                    | GeneralName::Rfc822Name(t)
                    | GeneralName::UniformResourceIdentifier(t) => Some(t.as_str()),
                    _ => None,
                };
                if let Some(c) = text.and_then(|t| t.chars().find(|c| c.is_ascii_control())) {
                    return Err(PolicyRefusal(format!(
                        "the CSR's subjectAltName holds a control character (U+{:04X}) in a name",
                        u32::from(c)
                    )));
                }
                let (allowed, kind) = match gn {
                    GeneralName::DnsName(_) => (self.san_types.dns, "dns"),
                    GeneralName::IpAddress(_) => (self.san_types.ip, "ip"),
                    GeneralName::Rfc822Name(_) => (self.san_types.email, "email"),
                    GeneralName::UniformResourceIdentifier(_) => (self.san_types.uri, "uri"),
                    _ => (false, "other"),
                };
                if !allowed {
                    return Err(PolicyRefusal(format!(
                        "profile {name:?} does not allow subjectAltName entries of type {kind}; it allows: {}",
                        self.san_types.names()
                    )));
                }
            }
        }
        Ok(CheckedRequest {
            csr: Cow::Borrowed(csr),
            profile: Cow::Borrowed(self),
        })
    }

    /// One line per rule, for `estuary config check`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "certificate: {}",
                match self.ca {
                    None => "end entity (CA:FALSE)".to_string(),
                    Some(None) => "CA (CA:TRUE)".to_string(),
                    Some(Some(p)) => format!("CA (CA:TRUE, pathlen:{p})"),
                }
            ),
            format!("key types: {}", self.key_types.names()),
            format!(
                "keyUsage: {}",
                if self.key_usage.is_empty() {
                    "none".into()
                } else {
                    self.key_usage
                        .iter()
                        .map(|u| key_usage_name(*u))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            format!(
                "extendedKeyUsage: {}",
                if self.extended_key_usage.is_empty() {
                    "none".into()
                } else {
                    self.extended_key_usage
                        .iter()
                        .map(eku_name)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            format!("subjectAltName types copied: {}", self.san_types.names()),
        ];
        if let Some(v) = self.validity {
            lines.push(format!(
                "validity: {}",
                estuary_wire::duration::format_duration(v)
            ));
        }
        if let Some(re) = &self.cn_pattern {
            lines.push(format!("CN must match: {}", re.as_str()));
        }
        if self.cn_equals_username {
            lines.push("CN must equal the Basic user name".into());
        }
        lines
    }
}

/// Names for the EKUs config files use.
pub fn eku_from_name(name: &str) -> Result<ObjectIdentifier, CaError> {
    use const_oid::db::rfc5912::*;
    Ok(match name {
        "clientAuth" => ID_KP_CLIENT_AUTH,
        "serverAuth" => ID_KP_SERVER_AUTH,
        "codeSigning" => ID_KP_CODE_SIGNING,
        "emailProtection" => ID_KP_EMAIL_PROTECTION,
        "timeStamping" => ID_KP_TIME_STAMPING,
        "OCSPSigning" => ID_KP_OCSP_SIGNING,
        "cmcRA" => ID_KP_CMC_RA,
        other => other.parse().map_err(|_| CaError::UnknownName {
            what: "extended key usage",
            name: other.to_string(),
            accepted: "clientAuth, serverAuth, codeSigning, emailProtection, timeStamping, OCSPSigning, cmcRA, or a dotted OID",
        })?,
    })
}

fn eku_name(oid: &ObjectIdentifier) -> String {
    if *oid == ID_KP_CLIENT_AUTH {
        "clientAuth".into()
    } else if *oid == ID_KP_SERVER_AUTH {
        "serverAuth".into()
    } else if *oid == ID_KP_CMC_RA {
        "cmcRA".into()
    } else {
        oid.to_string()
    }
}

fn key_usage_name(u: KeyUsages) -> &'static str {
    match u {
        KeyUsages::DigitalSignature => "digitalSignature",
        KeyUsages::NonRepudiation => "nonRepudiation",
        KeyUsages::KeyEncipherment => "keyEncipherment",
        KeyUsages::DataEncipherment => "dataEncipherment",
        KeyUsages::KeyAgreement => "keyAgreement",
        KeyUsages::KeyCertSign => "keyCertSign",
        KeyUsages::CRLSign => "cRLSign",
        KeyUsages::EncipherOnly => "encipherOnly",
        KeyUsages::DecipherOnly => "decipherOnly",
    }
}

/// Names for the key usages config files use (RFC 5280 §4.2.1.3).
pub fn key_usage_from_name(name: &str) -> Result<KeyUsages, CaError> {
    Ok(match name {
        "digitalSignature" => KeyUsages::DigitalSignature,
        "nonRepudiation" | "contentCommitment" => KeyUsages::NonRepudiation,
        "keyEncipherment" => KeyUsages::KeyEncipherment,
        "dataEncipherment" => KeyUsages::DataEncipherment,
        "keyAgreement" => KeyUsages::KeyAgreement,
        "keyCertSign" => KeyUsages::KeyCertSign,
        "cRLSign" => KeyUsages::CRLSign,
        other => {
            return Err(CaError::UnknownName {
                what: "key usage",
                name: other.to_string(),
                accepted: "digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment, keyAgreement, keyCertSign, cRLSign",
            })
        }
    })
}

/// Parses `p256`, `p384`, `ed25519`, `rsa2048`, `rsa3072`, `rsa4096` (the
/// [`FromStr`](std::str::FromStr) of [`KeyType`]).
pub fn key_type_from_name(name: &str) -> Result<KeyType, estuary_wire::WireError> {
    name.parse()
}

pub use estuary_wire::name::common_names;

/// How a label picks its profile.
#[derive(Debug, Clone)]
pub enum ProfileSelection {
    /// Always this profile.
    Fixed(std::sync::Arc<Profile>),
    /// The IoT Edge tutorial's behaviour (`--dev`): a CSR asking for CA:TRUE gets the CA
    /// profile (`edge-ca`), any other gets the device profile, so IoT Edge's Edge CA certificate
    /// works from `urls.default`.
    Auto {
        /// For CSRs that do not ask for CA:TRUE.
        device: std::sync::Arc<Profile>,
        /// For CSRs that do.
        ca: std::sync::Arc<Profile>,
    },
}

impl ProfileSelection {
    /// The profile for this CSR.
    pub fn select(&self, csr: &VerifiedCsr) -> &Profile {
        match self {
            ProfileSelection::Fixed(p) => p,
            ProfileSelection::Auto { ca, .. } if csr.requested.asks_for_ca() => ca,
            ProfileSelection::Auto { device, .. } => device,
        }
    }

    /// The built-in device profile, fixed.
    pub fn device() -> Self {
        ProfileSelection::Fixed(std::sync::Arc::new(Profile::device()))
    }

    /// Built-in auto selection.
    pub fn auto() -> Self {
        ProfileSelection::Auto {
            device: std::sync::Arc::new(Profile::device()),
            ca: std::sync::Arc::new(Profile::edge_ca()),
        }
    }
}

impl fmt::Display for ProfileSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileSelection::Fixed(p) => f.write_str(&p.name),
            ProfileSelection::Auto { device, ca } => {
                write!(f, "auto ({} or {})", device.name, ca.name)
            }
        }
    }
}

/// A request refused by policy. The message says what was asked and what the profile allows;
/// it is sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyRefusal(pub String);

/// Compiles a CN pattern so that it must match the whole CN.
pub fn cn_pattern(pattern: &str) -> Result<regex_lite::Regex, CaError> {
    regex_lite::Regex::new(&format!("^(?:{pattern})$")).map_err(|source| CaError::BadPattern {
        pattern: pattern.to_string(),
        source,
    })
}

/// The pattern as the operator wrote it (without the `^(?:...)$` that [`cn_pattern`] adds).
pub fn pattern_text(re: &regex_lite::Regex) -> &str {
    re.as_str()
        .trim_start_matches("^(?:")
        .trim_end_matches(")$")
}

/// A CSR that passed [`Profile::check`], with the profile it passed. Only `check` makes one
/// (the fields are private), and [`CertificateAuthority::issue`](crate::CertificateAuthority::issue)
/// requires one: an unchecked request cannot be issued.
///
/// It borrows the CSR and the profile; [`CheckedRequest::into_owned`] makes a copy that can
/// move to another thread.
#[derive(Debug, Clone)]
pub struct CheckedRequest<'a> {
    csr: Cow<'a, VerifiedCsr>,
    profile: Cow<'a, Profile>,
}

impl CheckedRequest<'_> {
    /// The checked CSR.
    pub fn csr(&self) -> &VerifiedCsr {
        &self.csr
    }

    /// The profile it was checked against.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// An owned copy (for `spawn_blocking`, say).
    pub fn into_owned(self) -> CheckedRequest<'static> {
        CheckedRequest {
            csr: Cow::Owned(self.csr.into_owned()),
            profile: Cow::Owned(self.profile.into_owned()),
        }
    }

    /// For serverkeygen (RFC 7030 §4.4): the request with the server-generated public key in
    /// place of the CSR's. The request was checked for the type of the key to be generated, so
    /// the new key must be of exactly that type ([`CaError::KeyTypeChanged`] otherwise).
    pub fn with_public_key(
        mut self,
        public_key: spki::SubjectPublicKeyInfoOwned,
    ) -> Result<Self, CaError> {
        let key_type = KeyType::from_spki(&public_key)?;
        if key_type != self.csr.key_type {
            return Err(CaError::KeyTypeChanged {
                checked: self.csr.key_type,
                given: key_type,
            });
        }
        self.csr.to_mut().public_key = public_key;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(alg: &'static rcgen::SignatureAlgorithm) -> VerifiedCsr {
        csr_of(alg, "dev1", vec!["dev.example".try_into().unwrap()])
    }

    /// A CSR for CN `cn` with DNS names `dns`.
    fn csr_of(
        alg: &'static rcgen::SignatureAlgorithm,
        cn: &str,
        dns: Vec<rcgen::string::Ia5String>,
    ) -> VerifiedCsr {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = dns.into_iter().map(rcgen::SanType::DnsName).collect();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let der = params.serialize_request(&key).unwrap().der().to_vec();
        estuary_wire::csr::parse_and_verify(der).unwrap()
    }

    /// Why the device profile refuses `csr` (it must).
    fn device_refusal(csr: &VerifiedCsr) -> String {
        Profile::device()
            .check(csr, PolicyContext { basic_user: None })
            .map(|_| ())
            .unwrap_err()
            .0
    }

    #[test]
    fn only_a_checked_request_carries_a_key_of_the_checked_type() {
        let profile = Profile::device();
        let p256 = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let checked = profile
            .check(&p256, PolicyContext { basic_user: None })
            .unwrap()
            .into_owned();
        assert_eq!(checked.profile().name, "device");
        assert_eq!(checked.csr().key_type, KeyType::P256);

        // serverkeygen: another key of the type checked is accepted, one of another type not.
        let other_p256 = csr(&rcgen::PKCS_ECDSA_P256_SHA256).public_key;
        let replaced = checked.clone().with_public_key(other_p256.clone()).unwrap();
        assert_eq!(replaced.csr().public_key, other_p256);
        let p384 = csr(&rcgen::PKCS_ECDSA_P384_SHA384).public_key;
        let err = checked.with_public_key(p384).map(|_| ()).unwrap_err();
        assert!(matches!(err, CaError::KeyTypeChanged { .. }), "{err}");
    }

    #[test]
    fn a_name_with_a_control_character_is_refused() {
        let dns = "bank.example\0.attacker.example".try_into().unwrap();
        let csr = csr_of(&rcgen::PKCS_ECDSA_P256_SHA256, "dev1", vec![dns]);
        let err = device_refusal(&csr);
        assert!(err.contains("control character (U+0000)"), "{err}");
        // Printed or recorded, the name keeps what follows the NUL, written as subjects write it.
        let san = csr.requested.subject_alt_name.as_deref().unwrap();
        assert_eq!(
            estuary_wire::csr::san_strings(san),
            vec!["DNS:bank.example\\00.attacker.example".to_string()]
        );
    }

    #[test]
    fn a_subject_with_a_control_character_is_refused() {
        let csr = csr_of(&rcgen::PKCS_ECDSA_P256_SHA256, "dev1\0.other", vec![]);
        let err = device_refusal(&csr);
        assert!(err.contains("subject holds a control character"), "{err}");
    }

    #[test]
    fn config_names_fail_with_what_is_accepted() {
        let err = SanTypes::parse(&["dns".into(), "x400".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown SAN type "x400"; accepted: dns, ip, email, uri"#
        );
        assert!(key_usage_from_name("keyCertSign").is_ok());
        assert!(eku_from_name("1.2.3.4").is_ok());
        let err = cn_pattern("dev(").unwrap_err();
        assert!(err
            .to_string()
            .starts_with(r#""dev(" is not a valid regular expression: "#));
        assert!(std::error::Error::source(&err).is_some());
    }
}
