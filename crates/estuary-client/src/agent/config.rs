//! The IoT Edge config file (`/etc/aziot/config.toml`), read as IoT Edge writes it.
//!
//! Used: `[provisioning.attestation]` (`registration_id`, `identity_cert` with `method = "est"`),
//! `[cert_issuance.est]` (`trusted_certs`, `auth`, `identity_auto_renew`, `urls`), `[edge_ca]`
//! with `method = "est"`, and Estuary's own `[agent]` section. Every other section is ignored.
//! A bad value in a used section is an error that names the key and says what is accepted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::policy::{Jitter, RenewPolicy, Threshold};
use crate::{ClientError, EstUrl};

/// The certificates the agent manages, by IoT Edge's cert ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertId {
    /// `est-id`: the EST identity certificate (bootstrap flow).
    EstId,
    /// `device-id`: the device identity certificate.
    DeviceId,
    /// `aziot-edged-ca`: the Edge CA certificate.
    EdgeCa,
}

impl CertId {
    /// IoT Edge's name for it (also the file names in the state directory).
    pub fn as_str(self) -> &'static str {
        match self {
            CertId::EstId => "est-id",
            CertId::DeviceId => "device-id",
            CertId::EdgeCa => "aziot-edged-ca",
        }
    }
}

impl std::fmt::Display for CertId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate and key given as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertAndKey {
    /// Certificate (PEM, leaf first).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// How requests for one certificate authenticate.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EstAuth {
    /// HTTP Basic user and password.
    pub basic: Option<(String, String)>,
    /// A long-lived bootstrap certificate that gets the EST identity certificate.
    pub bootstrap: Option<CertAndKey>,
    /// A fixed identity certificate used instead of the bootstrap flow.
    pub identity: Option<CertAndKey>,
}

impl std::fmt::Debug for EstAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EstAuth")
            .field("basic_user", &self.basic.as_ref().map(|(u, _)| u))
            .field("bootstrap", &self.bootstrap)
            .field("identity", &self.identity)
            .finish()
    }
}

/// One certificate the agent keeps valid.
#[derive(Debug, Clone)]
pub struct ManagedCert {
    /// Which one.
    pub id: CertId,
    /// Subject CN of the CSR.
    pub common_name: String,
    /// EST server URL.
    pub url: EstUrl,
    /// Renewal policy.
    pub policy: RenewPolicy,
    /// Authentication.
    pub auth: EstAuth,
}

/// Everything the agent needs from the config file.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Trust anchors for the EST server (PEM files).
    pub trusted_certs: Vec<PathBuf>,
    /// Managed certificates, in the order they must be obtained (est-id first).
    pub certs: Vec<ManagedCert>,
    /// `[agent] on_renew`: a shell command run after each renewal.
    pub on_renew: Option<String>,
    /// `[agent] state_dir`.
    pub state_dir: Option<PathBuf>,
    /// Settings IoT Edge itself would reject (Estuary accepts them): `(key, message)`.
    pub iot_edge_incompatibilities: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
struct RawFile {
    provisioning: Option<RawProvisioning>,
    cert_issuance: Option<RawCertIssuance>,
    edge_ca: Option<toml::Value>,
    agent: Option<RawAgent>,
}

#[derive(Debug, Deserialize)]
struct RawProvisioning {
    attestation: Option<RawAttestation>,
}

#[derive(Debug, Deserialize)]
struct RawAttestation {
    registration_id: Option<String>,
    identity_cert: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
struct RawCertIssuance {
    est: Option<RawEst>,
}

#[derive(Debug, Deserialize)]
struct RawEst {
    #[serde(default)]
    trusted_certs: Vec<String>,
    auth: Option<toml::Value>,
    identity_auto_renew: Option<toml::Value>,
    #[serde(default)]
    urls: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    on_renew: Option<String>,
    state_dir: Option<PathBuf>,
    renewal_jitter: Option<String>,
}

/// A `file://` URI (or a plain path) as a path.
fn file_uri(key: &str, value: &str) -> Result<PathBuf, ClientError> {
    if let Some(path) = value.strip_prefix("file://") {
        if path.starts_with('/') {
            return Ok(PathBuf::from(path));
        }
        return Err(ClientError::Config(format!(
            "{key}: {value:?} must be an absolute file:/// URI"
        )));
    }
    if value.contains("://") || value.starts_with("pkcs11:") {
        return Err(ClientError::Config(format!(
            "{key}: {value:?} is not supported; use a file:/// URI (keys in a PKCS#11 token or the IoT Edge key service are not supported by the agent)"
        )));
    }
    Ok(PathBuf::from(value))
}

fn get_str(
    table: &toml::value::Table,
    prefix: &str,
    key: &str,
) -> Result<Option<String>, ClientError> {
    match table.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ClientError::Config(format!(
            "{prefix}.{key}: expected a string, found {}",
            other.type_str()
        ))),
    }
}

/// The auth keys of `[cert_issuance.est.auth]`, also accepted in a certificate's own section.
const AUTH_KEYS: [&str; 6] = [
    "username",
    "password",
    "bootstrap_identity_cert",
    "bootstrap_identity_pk",
    "identity_cert",
    "identity_pk",
];

/// The keys of `[provisioning.attestation.identity_cert]` and `[edge_ca]` with
/// `method = "est"`, as IoT Edge reads them (`expiry_days` and `subject` are IoT Edge's; the
/// agent ignores them).
const CERT_KEYS: [&str; 6] = [
    "method",
    "common_name",
    "url",
    "auto_renew",
    "expiry_days",
    "subject",
];

/// A key not in `accepted` is an error that names it (a typo such as `usename` would otherwise
/// be ignored, and the request sent without the credential).
fn reject_unknown_keys(
    table: &toml::value::Table,
    prefix: &str,
    accepted: &[&str],
) -> Result<(), ClientError> {
    match table.keys().find(|k| !accepted.contains(&k.as_str())) {
        Some(k) => Err(ClientError::Config(format!(
            "{prefix}.{k}: unknown key; accepted here: {}",
            accepted.join(", ")
        ))),
        None => Ok(()),
    }
}

fn parse_auth(value: Option<&toml::value::Table>, prefix: &str) -> Result<EstAuth, ClientError> {
    let Some(t) = value else {
        return Ok(EstAuth::default());
    };
    let s = |k: &str| get_str(t, prefix, k);
    let basic = match (s("username")?, s("password")?) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        _ => {
            return Err(ClientError::Config(format!(
                "{prefix}: username and password go together"
            )))
        }
    };
    let pair = |cert_key: &str, key_key: &str| -> Result<Option<CertAndKey>, ClientError> {
        match (s(cert_key)?, s(key_key)?) {
            (Some(c), Some(k)) => Ok(Some(CertAndKey {
                cert: file_uri(&format!("{prefix}.{cert_key}"), &c)?,
                key: file_uri(&format!("{prefix}.{key_key}"), &k)?,
            })),
            (None, None) => Ok(None),
            _ => Err(ClientError::Config(format!(
                "{prefix}: {cert_key} and {key_key} go together"
            ))),
        }
    };
    let bootstrap = pair("bootstrap_identity_cert", "bootstrap_identity_pk")?;
    let identity = pair("identity_cert", "identity_pk")?;
    if bootstrap.is_some() && identity.is_some() {
        return Err(ClientError::Config(format!(
            "{prefix}: give bootstrap_identity_cert/_pk or identity_cert/_pk, not both"
        )));
    }
    Ok(EstAuth {
        basic,
        bootstrap,
        identity,
    })
}

fn merge_auth(own: EstAuth, global: &EstAuth) -> EstAuth {
    if own == EstAuth::default() {
        global.clone()
    } else {
        own
    }
}

fn parse_policy(
    value: Option<&toml::Value>,
    prefix: &str,
    default: RenewPolicy,
    all_required: bool,
    incompatible: &mut Vec<(String, String)>,
) -> Result<RenewPolicy, ClientError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let t = value.as_table().ok_or_else(|| {
        ClientError::Config(format!(
            "{prefix}: expected a table with rotate_key, threshold and retry"
        ))
    })?;
    for k in t.keys() {
        if !matches!(k.as_str(), "rotate_key" | "threshold" | "retry") {
            return Err(ClientError::Config(format!(
                "{prefix}.{k}: unknown key; accepted: rotate_key, threshold, retry"
            )));
        }
    }
    let threshold = |key: &str,
                     default: Threshold,
                     incompatible: &mut Vec<(String, String)>|
     -> Result<Threshold, ClientError> {
        match get_str(t, prefix, key)? {
            None if all_required => Err(ClientError::Config(format!(
                "{prefix}.{key}: missing (rotate_key, threshold and retry are all required here)"
            ))),
            None => Ok(default),
            Some(v) => {
                let parsed = if key == "retry" {
                    Threshold::parse_retry(&v)
                } else {
                    Threshold::parse(&v)
                };
                let (th, iot_ok) = parsed.map_err(|e| e.context(format!("{prefix}.{key}")))?;
                if !iot_ok {
                    incompatible.push((
                        format!("{prefix}.{key}"),
                        format!(
                            "{v:?}: IoT Edge rejects this unit (\"bad units for policy\"); it accepts only N%, Nmin and Nday, e.g. {:?}",
                            iot_edge_spelling(th)
                        ),
                    ));
                }
                Ok(th)
            }
        }
    };
    let rotate_key = match t.get("rotate_key") {
        None if all_required => {
            return Err(ClientError::Config(format!(
            "{prefix}.rotate_key: missing (rotate_key, threshold and retry are all required here)"
        )))
        }
        None => default.rotate_key,
        Some(toml::Value::Boolean(b)) => *b,
        Some(other) => {
            return Err(ClientError::Config(format!(
                "{prefix}.rotate_key: expected true or false, found {}",
                other.type_str()
            )))
        }
    };
    Ok(RenewPolicy {
        threshold: threshold("threshold", default.threshold, incompatible)?,
        retry: threshold("retry", default.retry, incompatible)?,
        rotate_key,
        jitter: default.jitter,
    })
}

fn iot_edge_spelling(t: Threshold) -> String {
    match t {
        Threshold::Percent(p) => format!("{p}%"),
        Threshold::Time(d) if d.as_secs() % 86_400 == 0 => format!("{}day", d.as_secs() / 86_400),
        Threshold::Time(d) => format!("{}min", d.as_secs().div_ceil(60)),
    }
}

fn url_for(
    own: Option<String>,
    urls: &BTreeMap<String, String>,
    id: CertId,
    key: &str,
) -> Result<EstUrl, ClientError> {
    // The cert's own url, else urls.<cert-id>, else urls.default.
    let (source, text) = match own {
        Some(u) => (key.to_string(), u),
        None => match urls.get(id.as_str()) {
            Some(u) => (format!("cert_issuance.est.urls.{}", id.as_str()), u.clone()),
            None => match urls.get("default") {
                Some(u) => ("cert_issuance.est.urls.default".to_string(), u.clone()),
                None => {
                    return Err(ClientError::Config(format!(
                        "{key}: no EST URL for {id}; set it, or cert_issuance.est.urls.{id}, or cert_issuance.est.urls.default"
                    )))
                }
            },
        },
    };
    EstUrl::parse(&text).map_err(|e| e.context(source))
}

impl AgentConfig {
    /// Reads and parses the config file.
    pub fn read(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| e.context(path.display().to_string()))
    }

    /// Parses the text of a config file.
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let raw: RawFile = toml::from_str(text)?;
        let mut incompatible = Vec::new();
        let est = raw.cert_issuance.and_then(|c| c.est);
        if let Some(t) = est
            .as_ref()
            .and_then(|e| e.auth.as_ref())
            .and_then(|v| v.as_table())
        {
            reject_unknown_keys(t, "cert_issuance.est.auth", &AUTH_KEYS)?;
        }
        let (trusted_certs, global_auth, est_id_policy, urls) = match &est {
            Some(est) => (
                est.trusted_certs
                    .iter()
                    .map(|u| file_uri("cert_issuance.est.trusted_certs", u))
                    .collect::<Result<Vec<_>, _>>()?,
                parse_auth(
                    est.auth
                        .as_ref()
                        .map(|v| {
                            v.as_table().ok_or_else(|| {
                                ClientError::Config(
                                    "cert_issuance.est.auth: expected a table".into(),
                                )
                            })
                        })
                        .transpose()?,
                    "cert_issuance.est.auth",
                )?,
                parse_policy(
                    est.identity_auto_renew.as_ref(),
                    "cert_issuance.est.identity_auto_renew",
                    RenewPolicy::iot_edge_default(true),
                    true,
                    &mut incompatible,
                )?,
                est.urls.clone(),
            ),
            None => (
                Vec::new(),
                EstAuth::default(),
                RenewPolicy::iot_edge_default(true),
                BTreeMap::new(),
            ),
        };

        let attestation = raw.provisioning.and_then(|p| p.attestation);
        let registration_id = attestation.as_ref().and_then(|a| a.registration_id.clone());
        let mut certs = Vec::new();

        // device-id
        let identity = attestation.and_then(|a| a.identity_cert);
        if let Some(toml::Value::Table(t)) = &identity {
            let prefix = "provisioning.attestation.identity_cert";
            if get_str(t, prefix, "method")?.as_deref() == Some("est") {
                reject_unknown_keys(t, prefix, &[&CERT_KEYS[..], &AUTH_KEYS[..]].concat())?;
                let common_name = get_str(t, prefix, "common_name")?
                    .or_else(|| registration_id.clone())
                    .ok_or_else(|| ClientError::Config(format!("{prefix}.common_name: missing (and no provisioning.attestation.registration_id to fall back on)")))?;
                let auth = merge_auth(parse_auth(Some(t), prefix)?, &global_auth);
                certs.push(ManagedCert {
                    id: CertId::DeviceId,
                    common_name,
                    url: url_for(
                        get_str(t, prefix, "url")?,
                        &urls,
                        CertId::DeviceId,
                        &format!("{prefix}.url"),
                    )?,
                    policy: parse_policy(
                        t.get("auto_renew"),
                        &format!("{prefix}.auto_renew"),
                        RenewPolicy::iot_edge_default(false),
                        false,
                        &mut incompatible,
                    )?,
                    auth,
                });
            }
        }
        let device_name = certs
            .first()
            .map(|c| c.common_name.clone())
            .or(registration_id)
            .unwrap_or_else(|| "device".into());

        // aziot-edged-ca
        if let Some(toml::Value::Table(t)) = &raw.edge_ca {
            let prefix = "edge_ca";
            if get_str(t, prefix, "method")?.as_deref() == Some("est") {
                reject_unknown_keys(t, prefix, &[&CERT_KEYS[..], &AUTH_KEYS[..]].concat())?;
                let auth = merge_auth(parse_auth(Some(t), prefix)?, &global_auth);
                certs.push(ManagedCert {
                    id: CertId::EdgeCa,
                    common_name: get_str(t, prefix, "common_name")?
                        .unwrap_or_else(|| format!("aziot-edge CA {device_name}")),
                    url: url_for(
                        get_str(t, prefix, "url")?,
                        &urls,
                        CertId::EdgeCa,
                        "edge_ca.url",
                    )?,
                    policy: parse_policy(
                        t.get("auto_renew"),
                        "edge_ca.auto_renew",
                        RenewPolicy::iot_edge_default(true),
                        false,
                        &mut incompatible,
                    )?,
                    auth,
                });
            }
        }

        // est-id, when any managed certificate uses the bootstrap flow.
        if let Some(boot) = certs
            .iter()
            .find(|c| c.auth.bootstrap.is_some())
            .map(|c| c.auth.clone())
        {
            certs.insert(
                0,
                ManagedCert {
                    id: CertId::EstId,
                    common_name: device_name.clone(),
                    url: url_for(None, &urls, CertId::EstId, "cert_issuance.est.urls")?,
                    policy: est_id_policy,
                    auth: boot,
                },
            );
        }
        if certs.is_empty() {
            return Err(ClientError::Config(
                "nothing to manage: neither [provisioning.attestation.identity_cert] nor [edge_ca] has method = \"est\""
                    .into(),
            ));
        }
        if trusted_certs.is_empty() {
            return Err(ClientError::Config("cert_issuance.est.trusted_certs: give at least one file:/// URI of the EST server's CA".into()));
        }
        let agent = raw.agent;
        // Estuary only: one jitter for every managed certificate.
        if let Some(text) = agent.as_ref().and_then(|a| a.renewal_jitter.as_deref()) {
            let jitter = Jitter::parse(text).map_err(|e| e.context("agent.renewal_jitter"))?;
            for c in &mut certs {
                c.policy.jitter = jitter;
            }
        }
        Ok(AgentConfig {
            trusted_certs,
            certs,
            on_renew: agent.as_ref().and_then(|a| a.on_renew.clone()),
            state_dir: agent.and_then(|a| a.state_dir),
            iot_edge_incompatibilities: incompatible,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUTORIAL: &str = r#"
[provisioning]
source = "dps"
global_endpoint = "https://global.azure-devices-provisioning.net"
id_scope = "0ne00000000"
[provisioning.attestation]
method = "x509"
registration_id = "myiotedgedevice"
[provisioning.attestation.identity_cert]
method = "est"
common_name = "myiotedgedevice"
[provisioning.attestation.identity_cert.auto_renew]
rotate_key = false
threshold = "60m"
retry = "4%"
[cert_issuance.est]
    trusted_certs = [
        "file:///var/aziot/certs/cacert.crt.pem",
    ]
[cert_issuance.est.auth]
username = "estuser"
password = "estpwd"
[cert_issuance.est.urls]
default = "https://localhost:8085/.well-known/est"
[edge_ca]
method = "est"
"#;

    #[test]
    fn reads_the_tutorial_config() {
        let c = AgentConfig::parse(TUTORIAL).unwrap();
        assert_eq!(c.certs.len(), 2);
        assert_eq!(c.certs[0].id, CertId::DeviceId);
        assert_eq!(c.certs[0].common_name, "myiotedgedevice");
        assert_eq!(
            c.certs[0].auth.basic,
            Some(("estuser".into(), "estpwd".into()))
        );
        assert!(!c.certs[0].policy.rotate_key);
        assert_eq!(c.certs[1].id, CertId::EdgeCa);
        assert_eq!(c.certs[1].common_name, "aziot-edge CA myiotedgedevice");
        assert_eq!(
            c.trusted_certs,
            vec![PathBuf::from("/var/aziot/certs/cacert.crt.pem")]
        );
        assert_eq!(c.iot_edge_incompatibilities.len(), 1);
        assert!(c.iot_edge_incompatibilities[0].1.contains("60min"));
        // No jitter unless [agent] asks for it: IoT Edge's behaviour.
        assert!(c.certs.iter().all(|c| c.policy.jitter == Jitter::NONE));
    }

    #[test]
    fn renewal_jitter_applies_to_every_certificate() {
        let c = AgentConfig::parse(&format!("{TUTORIAL}\n[agent]\nrenewal_jitter = \"10%\"\n"))
            .unwrap();
        assert_eq!(c.certs.len(), 2);
        assert!(c
            .certs
            .iter()
            .all(|c| c.policy.jitter == Jitter::percent(10).unwrap()));
        // Not an IoT Edge key: the [agent] section is Estuary's own.
        assert_eq!(c.iot_edge_incompatibilities.len(), 1);
        let e = AgentConfig::parse(&format!("{TUTORIAL}\n[agent]\nrenewal_jitter = \"80%\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("agent.renewal_jitter") && e.contains("50%"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let bad = TUTORIAL.replace("retry = \"4%\"", "retry = \"often\"");
        let e = AgentConfig::parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("provisioning.attestation.identity_cert.auto_renew.retry"),
            "{e}"
        );
        let bad = TUTORIAL.replace("https://localhost", "http://localhost");
        let e = AgentConfig::parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("cert_issuance.est.urls.default") && e.contains("https"),
            "{e}"
        );
        let bad = TUTORIAL.replace("password = \"estpwd\"", "");
        assert!(AgentConfig::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("username and password"));
        let bad = TUTORIAL.replace("rotate_key = false", "rotate_key = \"no\"");
        assert!(AgentConfig::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("auto_renew.rotate_key"));
    }

    #[test]
    fn a_misspelt_key_is_named() {
        let bad = TUTORIAL.replace("username = \"estuser\"", "usename = \"estuser\"");
        let e = AgentConfig::parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("cert_issuance.est.auth.usename: unknown key") && e.contains("username"),
            "{e}"
        );
        let bad = TUTORIAL.replace(
            "[edge_ca]\nmethod = \"est\"",
            "[edge_ca]\nmethod = \"est\"\npasword = \"x\"",
        );
        let e = AgentConfig::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("edge_ca.pasword: unknown key"), "{e}");
        let bad = TUTORIAL.replace(
            "common_name = \"myiotedgedevice\"",
            "comon_name = \"myiotedgedevice\"",
        );
        let e = AgentConfig::parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("provisioning.attestation.identity_cert.comon_name"),
            "{e}"
        );
        // IoT Edge's own keys stay accepted.
        let ok = TUTORIAL.replace(
            "[edge_ca]\nmethod = \"est\"",
            "[edge_ca]\nmethod = \"est\"\nexpiry_days = 90",
        );
        assert!(AgentConfig::parse(&ok).is_ok());
    }

    #[test]
    fn a_bad_duration_suggests_only_what_iot_edge_accepts() {
        let bad = TUTORIAL.replace("threshold = \"60m\"", "threshold = \"soon\"");
        let e = AgentConfig::parse(&bad).unwrap_err().to_string();
        // The example must pass `estuary check`: no "60m", which IoT Edge rejects.
        assert!(!e.contains("\"60m\"") && !e.contains("30s"), "{e}");
        assert!(
            e.contains("auto_renew.threshold")
                && e.contains("renewal threshold")
                && e.contains("before expiry")
                && e.contains("60min")
                && e.contains("80%")
                && e.contains("accepted"),
            "{e}"
        );
        // A retry period is the wait after a failure, not a time before expiry.
        let bad = TUTORIAL.replace("retry = \"4%\"", "retry = \"soon\"");
        let e = AgentConfig::parse(&bad).unwrap_err().to_string();
        assert!(!e.contains("\"60m\"") && !e.contains("30s"), "{e}");
        assert!(
            e.contains("auto_renew.retry")
                && e.contains("not a retry period")
                && e.contains("wait after a failed attempt")
                && !e.contains("before expiry")
                && !e.contains("threshold")
                && e.contains("10min")
                && e.contains("accepted"),
            "{e}"
        );
    }

    #[test]
    fn bootstrap_adds_the_est_identity_certificate_first() {
        let boot = TUTORIAL
            .replace("username = \"estuser\"\npassword = \"estpwd\"", "bootstrap_identity_cert = \"file:///b/cert.pem\"\nbootstrap_identity_pk = \"file:///b/key.pem\"");
        let c = AgentConfig::parse(&boot).unwrap();
        assert_eq!(c.certs[0].id, CertId::EstId);
        assert_eq!(c.certs[0].policy, RenewPolicy::iot_edge_default(true));
        assert_eq!(
            c.certs[0].auth.bootstrap.as_ref().unwrap().key,
            PathBuf::from("/b/key.pem")
        );
    }
}
