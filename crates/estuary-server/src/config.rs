//! The server's configuration file (`DATA_DIR/estuary.toml`): read, checked into types, and
//! written (commented) on first start with every effective setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use estuary_ca::issue::SanEntry;
use estuary_ca::{KeyChoice, ProfileSelection};
use estuary_wire::duration::{format_duration, parse_duration};
use serde::{Deserialize, Serialize};

/// The file as written on disk. Unknown keys are rejected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Test mode (the IoT Edge tutorial's settings); prints a warning at start.
    #[serde(default)]
    pub dev: bool,
    /// TLS listen addresses.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Lifetime of issued certificates.
    #[serde(default = "default_validity")]
    pub validity: String,
    /// CA key type, used when the CA is created.
    #[serde(default = "default_ca_key")]
    pub ca_key: String,
    /// Extra server certificate SANs.
    #[serde(default)]
    pub server_sans: Vec<String>,
    /// Bootstrap CA PEM files.
    #[serde(default)]
    pub bootstrap_ca: Vec<PathBuf>,
    /// Profile for requests without a label.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, LabelConfig>,
    /// CSR attributes (OIDs) returned by `/csrattrs`.
    #[serde(default)]
    pub csrattrs: Vec<String>,
    /// Basic users.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// One EST label (`/.well-known/est/<label>/...`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    /// `device`, `edge-ca` or `auto`.
    pub profile: String,
}

/// A Basic user.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name.
    pub name: String,
    /// argon2 PHC hash (`estuary user add NAME` writes it).
    pub password_hash: String,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

/// Limits and timeouts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most concurrent connections; more are closed at once.
    pub max_connections: usize,
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Time for the TLS handshake.
    pub handshake_timeout: String,
    /// Time to send a request's headers, and the idle time between keep-alive requests.
    pub header_timeout: String,
    /// Time to send a request's body.
    pub body_timeout: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_body_bytes: 64 * 1024,
            handshake_timeout: "10s".into(),
            header_timeout: "30s".into(),
            body_timeout: "30s".into(),
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8085".into(), "[::]:8085".into()]
}
fn default_validity() -> String {
    "90d".into()
}
fn default_ca_key() -> String {
    "p256".into()
}
fn default_profile() -> String {
    "device".into()
}

impl ConfigFile {
    /// The defaults of a new installation (before command-line flags are applied).
    pub fn new_default(dev: bool) -> Self {
        let mut labels = BTreeMap::new();
        labels.insert(
            "device".into(),
            LabelConfig {
                profile: "device".into(),
            },
        );
        labels.insert(
            "edge-ca".into(),
            LabelConfig {
                profile: "edge-ca".into(),
            },
        );
        ConfigFile {
            dev,
            listen: default_listen(),
            validity: if dev { "1d".into() } else { default_validity() },
            ca_key: default_ca_key(),
            server_sans: vec![],
            bootstrap_ca: vec![],
            profile: if dev {
                "auto".into()
            } else {
                default_profile()
            },
            labels,
            csrattrs: vec![],
            users: vec![],
            limits: LimitsConfig::default(),
        }
    }

    /// Reads and parses a config file; errors name the file and the key.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks every value and returns the typed settings.
    pub fn resolve(&self) -> Result<Settings, String> {
        let listen = self
            .listen
            .iter()
            .map(|a| {
                a.parse::<std::net::SocketAddr>().map_err(|_| {
                    format!("listen: {a:?} is not ADDRESS:PORT (e.g. 0.0.0.0:8085 or [::]:8085)")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if listen.is_empty() {
            return Err("listen: at least one address is needed".into());
        }
        let validity = parse_duration(&self.validity).map_err(|e| format!("validity: {e}"))?;
        let ca_key: KeyChoice = self.ca_key.parse().map_err(|e| format!("ca_key: {e}"))?;
        let server_sans = self
            .server_sans
            .iter()
            .map(|s| {
                s.parse::<SanEntry>()
                    .map_err(|e| format!("server_sans: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let default_profile: ProfileSelection =
            self.profile.parse().map_err(|e| format!("profile: {e}"))?;
        let mut labels = BTreeMap::new();
        for (name, label) in &self.labels {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                || is_operation(name)
            {
                return Err(format!(
                    "labels.{name}: a label is letters, digits, '-', '_' or '.', and not an EST operation name"
                ));
            }
            let profile: ProfileSelection = label
                .profile
                .parse()
                .map_err(|e| format!("labels.{name}.profile: {e}"))?;
            labels.insert(name.clone(), profile);
        }
        let csrattrs = self
            .csrattrs
            .iter()
            .map(|o| {
                o.parse::<const_oid::ObjectIdentifier>().map_err(|_| {
                    format!("csrattrs: {o:?} is not a dotted OID such as 1.2.840.113549.1.9.7")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = std::collections::HashSet::new();
        for u in &self.users {
            if u.name.is_empty() || u.name.contains(':') {
                return Err(format!(
                    "users: {:?} is not a valid user name (non-empty, no ':')",
                    u.name
                ));
            }
            if !seen.insert(u.name.clone()) {
                return Err(format!("users: {:?} appears twice", u.name));
            }
        }
        let l = &self.limits;
        let dur = |key: &str, v: &str| parse_duration(v).map_err(|e| format!("limits.{key}: {e}"));
        if l.max_connections == 0 {
            return Err("limits.max_connections: must be at least 1".into());
        }
        if l.max_body_bytes < 1024 {
            return Err("limits.max_body_bytes: must be at least 1024".into());
        }
        Ok(Settings {
            dev: self.dev,
            listen,
            validity,
            ca_key,
            server_sans,
            bootstrap_ca: self.bootstrap_ca.clone(),
            default_profile,
            labels,
            csrattrs,
            users: self
                .users
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
            limits: Limits {
                max_connections: l.max_connections,
                max_body_bytes: l.max_body_bytes,
                handshake_timeout: dur("handshake_timeout", &l.handshake_timeout)?,
                header_timeout: dur("header_timeout", &l.header_timeout)?,
                body_timeout: dur("body_timeout", &l.body_timeout)?,
            },
        })
    }

    /// The file's text, with a comment on every setting.
    pub fn to_commented_toml(&self) -> String {
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let list = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|x| s(x)).collect();
            format!("[{}]", items.join(", "))
        };
        let mut out = String::new();
        out.push_str("# Estuary EST server configuration.\n");
        out.push_str("# Written by `estuary serve` on first start with every effective setting.\n");
        out.push_str("# Edit and restart to change; command-line flags override these values.\n\n");
        out.push_str(
            "# Test mode (the Azure IoT Edge tutorial's settings). Never use in production.\n",
        );
        out.push_str(&format!("dev = {}\n\n", self.dev));
        out.push_str("# TLS listen addresses (ADDRESS:PORT). An IPv6 address that cannot be bound is skipped with a warning.\n");
        out.push_str(&format!("listen = {}\n\n", list(&self.listen)));
        out.push_str("# Lifetime of issued certificates: 30s, 60m, 12h, 1d, 90d ...\n");
        out.push_str(&format!("validity = {}\n\n", s(&self.validity)));
        out.push_str(
            "# CA key type, used only when the CA is created: p256, p384, rsa2048, rsa4096.\n",
        );
        out.push_str(&format!("ca_key = {}\n\n", s(&self.ca_key)));
        out.push_str(
            "# Names and IPs in the TLS server certificate beyond localhost, 127.0.0.1 and ::1.\n",
        );
        out.push_str("# Adding one re-issues the server certificate at the next start.\n");
        out.push_str(&format!("server_sans = {}\n\n", list(&self.server_sans)));
        out.push_str(
            "# PEM files of bootstrap CAs (e.g. a manufacturer's) whose certificates may\n",
        );
        out.push_str("# authenticate a first enrollment (RFC 7030 §3.3.2).\n");
        let paths: Vec<String> = self
            .bootstrap_ca
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        out.push_str(&format!("bootstrap_ca = {}\n\n", list(&paths)));
        out.push_str("# Profile for requests without a label (/.well-known/est/simpleenroll):\n");
        out.push_str("#   device  - end-entity: CA:FALSE, digitalSignature, EKU clientAuth\n");
        out.push_str(
            "#   edge-ca - IoT Edge CA: CA:TRUE pathlen:0, keyCertSign+cRLSign+digitalSignature\n",
        );
        out.push_str("#   auto    - edge-ca when the CSR asks for CA:TRUE, device otherwise (the tutorial's behaviour)\n");
        out.push_str(&format!("profile = {}\n\n", s(&self.profile)));
        out.push_str(
            "# Object identifiers returned by /csrattrs (RFC 7030 §4.5); empty = 204 No Content.\n",
        );
        out.push_str(&format!("csrattrs = {}\n\n", list(&self.csrattrs)));
        out.push_str(
            "# EST labels: /.well-known/est/<label>/simpleenroll uses the label's profile.\n",
        );
        for (name, label) in &self.labels {
            out.push_str(&format!(
                "[labels.{}]\nprofile = {}\n\n",
                toml_key(name),
                s(&label.profile)
            ));
        }
        out.push_str("# Connection limits and timeouts.\n[limits]\n");
        let l = &self.limits;
        out.push_str("# Most concurrent connections; more are closed at once.\n");
        out.push_str(&format!("max_connections = {}\n", l.max_connections));
        out.push_str("# Largest request body in bytes (413 above).\n");
        out.push_str(&format!("max_body_bytes = {}\n", l.max_body_bytes));
        out.push_str("# Time allowed for the TLS handshake.\n");
        out.push_str(&format!(
            "handshake_timeout = {}\n",
            s(&l.handshake_timeout)
        ));
        out.push_str("# Time allowed to send request headers; also the idle time between keep-alive requests.\n");
        out.push_str(&format!("header_timeout = {}\n", s(&l.header_timeout)));
        out.push_str("# Time allowed to send a request body.\n");
        out.push_str(&format!("body_timeout = {}\n\n", s(&l.body_timeout)));
        out.push_str("# HTTP Basic users (RFC 7617). Add one with `estuary user add NAME`.\n");
        for u in &self.users {
            out.push_str(&format!(
                "[[users]]\nname = {}\npassword_hash = {}\n\n",
                s(&u.name),
                s(&u.password_hash)
            ));
        }
        out
    }
}

fn toml_key(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

/// EST operation names (RFC 7030 §3.2.2), which cannot be labels.
pub fn is_operation(segment: &str) -> bool {
    matches!(
        segment,
        "cacerts" | "simpleenroll" | "simplereenroll" | "fullcmc" | "serverkeygen" | "csrattrs"
    )
}

/// Settings after checking, as the server uses them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Test mode.
    pub dev: bool,
    /// Listen addresses.
    pub listen: Vec<std::net::SocketAddr>,
    /// Lifetime of issued certificates.
    pub validity: Duration,
    /// CA key type for a new CA.
    pub ca_key: KeyChoice,
    /// Extra server SANs.
    pub server_sans: Vec<SanEntry>,
    /// Bootstrap CA files.
    pub bootstrap_ca: Vec<PathBuf>,
    /// Profile for unlabeled requests.
    pub default_profile: ProfileSelection,
    /// Labels and their profiles.
    pub labels: BTreeMap<String, ProfileSelection>,
    /// `/csrattrs` OIDs.
    pub csrattrs: Vec<const_oid::ObjectIdentifier>,
    /// Basic users (name, PHC hash).
    pub users: Vec<(String, String)>,
    /// Limits.
    pub limits: Limits,
}

/// Connection limits and timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most concurrent connections.
    pub max_connections: usize,
    /// Largest body.
    pub max_body_bytes: usize,
    /// TLS handshake time.
    pub handshake_timeout: Duration,
    /// Header (and keep-alive idle) time.
    pub header_timeout: Duration,
    /// Body time.
    pub body_timeout: Duration,
}

/// For messages: the validity in config syntax.
pub fn describe_validity(d: Duration) -> String {
    format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_parses_back_to_the_same_settings() -> Result<(), String> {
        let mut cfg = ConfigFile::new_default(true);
        cfg.users.push(UserConfig {
            name: "estuser".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
                .into(),
        });
        cfg.server_sans.push("est.example.com".into());
        let text = cfg.to_commented_toml();
        let back: ConfigFile = toml::from_str(&text).map_err(|e| e.to_string())?;
        assert_eq!(back, cfg);
        back.resolve()?;
        Ok(())
    }

    #[test]
    fn the_annotated_example_in_the_repository_parses() -> Result<(), String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/estuary.toml");
        let settings = ConfigFile::read(Path::new(path))?.resolve()?;
        assert_eq!(settings.users.len(), 1);
        assert_eq!(settings.labels.len(), 2);
        Ok(())
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = toml::from_str::<ConfigFile>("colour = 1")
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("colour"));
        let mut cfg = ConfigFile::new_default(false);
        cfg.validity = "10".into();
        assert!(cfg.resolve().unwrap_err().starts_with("validity"));
        let mut cfg = ConfigFile::new_default(false);
        cfg.labels.insert(
            "x".into(),
            LabelConfig {
                profile: "root".into(),
            },
        );
        assert!(cfg.resolve().unwrap_err().starts_with("labels.x.profile"));
        let mut cfg = ConfigFile::new_default(false);
        cfg.labels.insert(
            "cacerts".into(),
            LabelConfig {
                profile: "device".into(),
            },
        );
        assert!(cfg.resolve().is_err());
    }
}
