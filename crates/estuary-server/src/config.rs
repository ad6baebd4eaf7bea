//! The server's configuration file (`DATA_DIR/estuary.toml`): read, checked into types at load
//! (unknown keys rejected, every error naming its key), and written (commented) on first start
//! with every effective setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use estuary_ca::issue::SanEntry;
use estuary_ca::profile::{
    cn_pattern, eku_from_name, key_type_from_name, key_usage_from_name, KeyTypes, SanTypes,
};
use estuary_ca::{KeyChoice, Profile, ProfileSelection};
use estuary_wire::duration::{format_duration, parse_duration};
use serde::{Deserialize, Serialize};

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

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
    /// Lifetime of issued certificates (unless the profile says otherwise).
    #[serde(default = "default_validity")]
    pub validity: String,
    /// CA key type, used when the CA is created.
    #[serde(default = "default_ca_key")]
    pub ca_key: String,
    /// Extra server certificate SANs.
    #[serde(default)]
    pub server_sans: Vec<String>,
    /// Bootstrap CA PEM files; each is named by its file stem (`mfg.pem` -> `mfg`).
    #[serde(default)]
    pub bootstrap_ca: Vec<PathBuf>,
    /// A CRL per bootstrap CA, by name: a file (DER or PEM) or an `http://` URL.
    #[serde(default)]
    pub bootstrap_crl: BTreeMap<String, String>,
    /// CSR attributes (OIDs) returned by `/csrattrs`.
    #[serde(default)]
    pub csrattrs: Vec<String>,
    /// `Retry-After` for requests waiting for manual approval.
    #[serde(default = "default_retry_after")]
    pub approval_retry_after: String,
    /// Plain-HTTP admin listener (/metrics, /healthz, /readyz); empty = off.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Requests without a label (`/.well-known/est/<operation>`).
    #[serde(default = "default_label")]
    pub default: LabelConfig,
    /// Labels (`/.well-known/est/<label>/<operation>`).
    #[serde(default)]
    pub labels: BTreeMap<String, LabelConfig>,
    /// Profiles (the built-in `device` and `edge-ca` may be redefined).
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// CRL publication.
    #[serde(default)]
    pub crl: CrlConfig,
    /// Rate limits.
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    /// The audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Basic users.
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

/// One EST label, or the unlabeled default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    /// A profile name, or `auto`.
    pub profile: String,
    /// Who may use the label: `basic`, `basic:NAME`, `client-cert`, `client-cert:label:NAME`,
    /// `client-cert:profile:NAME`, `bootstrap`, `bootstrap:NAME`. Absent = `basic` and
    /// `client-cert` (bootstrap certificates only where named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Vec<String>>,
    /// `auto` (issue at once) or `manual` (202 until approved, RFC 7030 §4.2.3).
    #[serde(default = "default_approval")]
    pub approval: String,
    /// Whether `/serverkeygen` is offered (RFC 7030 §4.4).
    #[serde(default)]
    pub serverkeygen: bool,
    /// What subject a certificate-authenticated request may ask for: `same-as-client-cert`,
    /// `any`, or a pattern for the CN (`{client_cn}` stands for the client certificate's CN).
    /// Absent = `same-as-client-cert` (`any` in `--dev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl LabelConfig {
    /// A label with this profile and the defaults.
    pub fn with_profile(profile: &str) -> Self {
        LabelConfig {
            profile: profile.into(),
            auth: None,
            approval: default_approval(),
            serverkeygen: false,
            subject: None,
        }
    }
}

/// Audit trail settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events older than this are deleted (hourly, and by `estuary audit prune`); empty = keep.
    pub retention: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: "90d".into(),
        }
    }
}

/// A certificate profile in the config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Lifetime; absent = the server's `validity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity: Option<String>,
    /// Key types: p256, p384, ed25519, rsa2048, rsa3072, rsa4096. Absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_types: Option<Vec<String>>,
    /// keyUsage names. Absent = digitalSignature (plus keyCertSign and cRLSign for a CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usage: Option<Vec<String>>,
    /// extendedKeyUsage names or OIDs. Absent = clientAuth (none for a CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_key_usage: Option<Vec<String>>,
    /// Issue CA certificates.
    #[serde(default)]
    pub ca: bool,
    /// pathlen of a CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathlen: Option<u8>,
    /// The CN must match this regular expression (the whole CN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cn_pattern: Option<String>,
    /// The CN must equal the Basic user name.
    #[serde(default)]
    pub cn_equals_username: bool,
    /// SAN types copied from the CSR: dns, ip, email, uri. Absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san_types: Option<Vec<String>>,
    /// Key type `serverkeygen` makes (p256, p384, rsa2048, rsa3072, rsa4096, ed25519); absent = the CSR's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serverkeygen_key_type: Option<String>,
}

/// CRL settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CrlConfig {
    /// nextUpdate - thisUpdate; the CRL is re-signed when half of it has passed.
    pub validity: String,
    /// URL put in issued certificates as CRL distribution point; empty = none.
    pub url: String,
    /// Plain-HTTP listener serving `/crl`; empty = none (the EST listener serves `/crl` too).
    pub listen: String,
}

impl Default for CrlConfig {
    fn default() -> Self {
        CrlConfig {
            validity: "1d".into(),
            url: String::new(),
            listen: String::new(),
        }
    }
}

/// The default per-address budget (requests per minute).
pub const DEFAULT_PER_ADDRESS_PER_MINUTE: u32 = 600;
/// What a failed authentication costs by default, in requests.
pub const DEFAULT_FAILED_AUTH_COST: u32 = 60;

/// Rate limits (token buckets refilled per minute); 0 = off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Requests per minute from one source address.
    pub per_address_per_minute: u32,
    /// Enrollments per minute by one authenticated identity.
    pub per_identity_per_minute: u32,
    /// What a failed authentication costs, in requests (password guessing pays more).
    pub failed_auth_cost: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            // Ten requests a second on average, with bursts of a minute's worth; a wrong
            // password costs 60, so after a burst of ten, one guess every six seconds.
            per_address_per_minute: DEFAULT_PER_ADDRESS_PER_MINUTE,
            per_identity_per_minute: 0,
            failed_auth_cost: DEFAULT_FAILED_AUTH_COST,
        }
    }
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
    /// Longest life of one connection.
    pub max_connection_age: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_body_bytes: 64 * 1024,
            handshake_timeout: "10s".into(),
            header_timeout: "30s".into(),
            body_timeout: "30s".into(),
            max_connection_age: "10m".into(),
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
fn default_label() -> LabelConfig {
    LabelConfig::with_profile("device")
}
fn default_approval() -> String {
    "auto".into()
}
fn default_retry_after() -> String {
    "60s".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
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
    pub listen: Vec<SocketAddr>,
    /// Default lifetime of issued certificates.
    pub validity: Duration,
    /// CA key type for a new CA.
    pub ca_key: KeyChoice,
    /// Extra server SANs.
    pub server_sans: Vec<SanEntry>,
    /// Bootstrap CA files, by name.
    pub bootstrap_ca: Vec<(String, PathBuf)>,
    /// Where each bootstrap CA's CRL comes from, by name.
    pub bootstrap_crl: Vec<(String, CrlSource)>,
    /// How long audit events are kept; `None` = for ever.
    pub audit_retention: Option<Duration>,
    /// `/csrattrs` OIDs.
    pub csrattrs: Vec<const_oid::ObjectIdentifier>,
    /// `Retry-After` while a request waits for approval.
    pub approval_retry_after: Duration,
    /// Admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// Unlabeled requests.
    pub default_label: LabelPolicy,
    /// Labels.
    pub labels: BTreeMap<String, LabelPolicy>,
    /// All profiles, built-in and configured.
    pub profiles: BTreeMap<String, Arc<Profile>>,
    /// CRL.
    pub crl: CrlSettings,
    /// Rate limits.
    pub rate_limits: RateLimitConfig,
    /// Basic users (name, PHC hash).
    pub users: Vec<(String, String)>,
    /// Limits.
    pub limits: Limits,
}

/// What one label allows.
#[derive(Debug, Clone)]
pub struct LabelPolicy {
    /// How the profile is chosen.
    pub profile: ProfileSelection,
    /// Who may use it.
    pub auth: AuthRules,
    /// Requests wait for an operator's approval.
    pub manual_approval: bool,
    /// `/serverkeygen` is offered.
    pub serverkeygen: bool,
    /// What subject a certificate-authenticated request may ask for.
    pub subject: SubjectRule,
}

/// Where a bootstrap CA's CRL is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrlSource {
    /// A file (DER or PEM), re-read when it changes.
    File(PathBuf),
    /// An `http://` URL (RFC 5280 §4.2.1.13: CRLs are fetched over http), fetched again
    /// hourly and when the CRL reaches its nextUpdate.
    Url(String),
}

impl std::fmt::Display for CrlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrlSource::File(p) => write!(f, "{}", p.display()),
            CrlSource::Url(u) => f.write_str(u),
        }
    }
}

/// What subject a request authenticated by a certificate (ours or a bootstrap CA's) may ask
/// for. RFC 7030 §4.2.2 makes `simplereenroll` keep subject and SAN whatever this says;
/// this rule is for `simpleenroll` and `serverkeygen`, where without it one stolen device key
/// could obtain certificates for every other device. Basic-authenticated requests are bound
/// by the profile's `cn_pattern` / `cn_equals_username` instead.
#[derive(Debug, Clone)]
pub enum SubjectRule {
    /// Anything the profile allows.
    Any,
    /// The CSR's subject is the client certificate's, byte for byte, and its subjectAltName
    /// is absent or the client certificate's.
    SameAsClientCert,
    /// Every CN of the CSR matches this regular expression (whole CN), in which
    /// `{client_cn}` stands for the client certificate's CN.
    Pattern(String),
}

impl SubjectRule {
    fn parse(key: &str, value: Option<&str>, dev: bool) -> Result<Self, String> {
        match value {
            None if dev => Ok(SubjectRule::Any),
            None | Some("same-as-client-cert") => Ok(SubjectRule::SameAsClientCert),
            Some("any") => Ok(SubjectRule::Any),
            Some(pattern) => {
                regex_lite::Regex::new(&format!("^(?:{})$", pattern.replace(CLIENT_CN, "x")))
                    .map_err(|e| {
                        format!(
                            "{key}: {pattern:?} is neither \"any\", \"same-as-client-cert\" nor a valid pattern: {e}"
                        )
                    })?;
                Ok(SubjectRule::Pattern(pattern.to_string()))
            }
        }
    }

    /// For `estuary config check`.
    pub fn describe(&self) -> String {
        match self {
            SubjectRule::Any => "any the profile allows".into(),
            SubjectRule::SameAsClientCert => {
                "the client certificate's (for certificate-authenticated requests)".into()
            }
            SubjectRule::Pattern(p) => format!(
                "CN matching {p:?} (for certificate-authenticated requests; {CLIENT_CN} = the client certificate's CN)"
            ),
        }
    }
}

/// The placeholder for the client certificate's CN in a subject pattern.
pub const CLIENT_CN: &str = "{client_cn}";

/// Which authentication methods a label accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRules {
    /// Any Basic user.
    pub basic_any: bool,
    /// These Basic users.
    pub basic_users: Vec<String>,
    /// Any client certificate issued by this CA.
    pub client_cert: bool,
    /// Client certificates this CA issued under these labels (`default` = no label).
    pub client_cert_labels: Vec<String>,
    /// Client certificates this CA issued under these profiles.
    pub client_cert_profiles: Vec<String>,
    /// Any bootstrap CA.
    pub bootstrap_any: bool,
    /// These bootstrap CAs (by name).
    pub bootstrap_named: Vec<String>,
}

impl AuthRules {
    /// A label without `auth`: any Basic user and any certificate of this CA. Bootstrap
    /// certificates (another trust domain: a manufacturer's) only where a label names them, so
    /// that adding a bootstrap CA does not open every label to it.
    pub fn unlisted() -> Self {
        AuthRules {
            basic_any: true,
            basic_users: vec![],
            client_cert: true,
            client_cert_labels: vec![],
            client_cert_profiles: vec![],
            bootstrap_any: false,
            bootstrap_named: vec![],
        }
    }

    /// Whether a rule accepts more than named identities: any Basic user, any certificate
    /// of this CA, or any bootstrap CA's.
    pub fn unscoped(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.basic_any {
            v.push("basic");
        }
        if self.client_cert {
            v.push("client-cert");
        }
        if self.bootstrap_any {
            v.push("bootstrap");
        }
        v
    }

    fn parse(items: &[String], key: &str, known: &KnownNames<'_>) -> Result<Self, String> {
        let users = known.users;
        let bootstrap = known.bootstrap;
        let mut r = AuthRules {
            basic_any: false,
            basic_users: vec![],
            client_cert: false,
            client_cert_labels: vec![],
            client_cert_profiles: vec![],
            bootstrap_any: false,
            bootstrap_named: vec![],
        };
        for item in items {
            if let Some(scope) = item.strip_prefix("client-cert:") {
                match scope.split_once(':') {
                    Some(("label", name)) if name == DEFAULT_LABEL || known.labels.iter().any(|l| l == name) => {
                        r.client_cert_labels.push(name.into())
                    }
                    Some(("label", name)) => {
                        return Err(format!(
                            "{key}: no label {name:?} (labels: {DEFAULT_LABEL} for unlabeled requests, {})",
                            known.labels.join(", ")
                        ))
                    }
                    Some(("profile", name)) if known.profiles.iter().any(|p| p == name) => {
                        r.client_cert_profiles.push(name.into())
                    }
                    Some(("profile", name)) => {
                        return Err(format!(
                            "{key}: no profile {name:?} (profiles: {})",
                            known.profiles.join(", ")
                        ))
                    }
                    _ => {
                        return Err(format!(
                            "{key}: {item:?}: a client-cert rule is client-cert, client-cert:label:NAME or client-cert:profile:NAME"
                        ))
                    }
                }
                continue;
            }
            match item.split_once(':') {
                None if item == "basic" => r.basic_any = true,
                None if item == "client-cert" => r.client_cert = true,
                None if item == "bootstrap" => r.bootstrap_any = true,
                Some(("basic", name)) if users.iter().any(|u| u == name) => r.basic_users.push(name.into()),
                Some(("basic", name)) => return Err(format!("{key}: no user {name:?} in [[users]]")),
                Some(("bootstrap", name)) if bootstrap.iter().any(|b| b == name) => {
                    r.bootstrap_named.push(name.into())
                }
                Some(("bootstrap", name)) => {
                    return Err(format!(
                        "{key}: no bootstrap CA named {name:?} (bootstrap CAs are named by file stem: {})",
                        if bootstrap.is_empty() { "none configured".to_string() } else { bootstrap.join(", ") }
                    ))
                }
                _ => {
                    return Err(format!(
                        "{key}: unknown auth method {item:?}; accepted: basic, basic:NAME, client-cert, \
                         client-cert:label:NAME, client-cert:profile:NAME, bootstrap, bootstrap:NAME"
                    ))
                }
            }
        }
        Ok(r)
    }

    /// For `estuary config check`.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if self.basic_any {
            v.push("any Basic user".to_string());
        }
        for u in &self.basic_users {
            v.push(format!("Basic user {u}"));
        }
        if self.client_cert {
            v.push("any client certificate from this CA".into());
        }
        for l in &self.client_cert_labels {
            v.push(format!("client certificates issued under label {l}"));
        }
        for p in &self.client_cert_profiles {
            v.push(format!("client certificates issued under profile {p}"));
        }
        if self.bootstrap_any {
            v.push("any bootstrap CA".into());
        }
        for b in &self.bootstrap_named {
            v.push(format!("bootstrap CA {b}"));
        }
        if v.is_empty() {
            "nobody".into()
        } else {
            v.join(", ")
        }
    }
}

/// How auth rules name the unlabeled path (`client-cert:label:default`); no label may be
/// called this.
pub const DEFAULT_LABEL: &str = "default";

/// Names an auth rule may refer to.
struct KnownNames<'a> {
    users: &'a [String],
    bootstrap: &'a [String],
    labels: &'a [String],
    profiles: &'a [String],
}

/// CRL settings, typed.
#[derive(Debug, Clone)]
pub struct CrlSettings {
    /// nextUpdate - thisUpdate.
    pub validity: Duration,
    /// Distribution point URL for issued certificates.
    pub url: Option<String>,
    /// Plain-HTTP listener.
    pub listen: Option<SocketAddr>,
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
    /// Longest life of a connection.
    pub max_connection_age: Duration,
}

fn socket_addr(key: &str, v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("{key}: {v:?} is not ADDRESS:PORT (e.g. 0.0.0.0:8085 or [::]:8085)"))
}

fn optional_addr(key: &str, v: &str) -> Result<Option<SocketAddr>, String> {
    if v.trim().is_empty() {
        Ok(None)
    } else {
        socket_addr(key, v).map(Some)
    }
}

/// The name of a bootstrap CA: its file stem.
pub fn bootstrap_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

impl ProfileConfig {
    fn resolve(&self, name: &str) -> Result<Profile, String> {
        let key = |k: &str| format!("profiles.{name}.{k}");
        let ca = if self.ca {
            Some(self.pathlen)
        } else if self.pathlen.is_some() {
            return Err(format!("{}: pathlen needs ca = true", key("pathlen")));
        } else {
            None
        };
        let key_usage = match &self.key_usage {
            Some(names) => names
                .iter()
                .map(|n| key_usage_from_name(n).map_err(|e| format!("{}: {e}", key("key_usage"))))
                .collect::<Result<Vec<_>, _>>()?,
            None if ca.is_some() => Profile::edge_ca().key_usage,
            None => Profile::device().key_usage,
        };
        let extended_key_usage = match &self.extended_key_usage {
            Some(names) => names
                .iter()
                .map(|n| {
                    eku_from_name(n).map_err(|e| format!("{}: {e}", key("extended_key_usage")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None if ca.is_some() => vec![],
            None => Profile::device().extended_key_usage,
        };
        Ok(Profile {
            name: name.to_string(),
            validity: self
                .validity
                .as_deref()
                .map(|v| parse_duration(v).map_err(|e| format!("{}: {e}", key("validity"))))
                .transpose()?,
            key_types: match &self.key_types {
                Some(names) => KeyTypes(
                    names
                        .iter()
                        .map(|n| {
                            key_type_from_name(n).map_err(|e| format!("{}: {e}", key("key_types")))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                None => KeyTypes::all(),
            },
            key_usage,
            extended_key_usage,
            ca,
            cn_pattern: self
                .cn_pattern
                .as_deref()
                .map(|p| cn_pattern(p).map_err(|e| format!("{}: {e}", key("cn_pattern"))))
                .transpose()?,
            cn_equals_username: self.cn_equals_username,
            san_types: match &self.san_types {
                Some(names) => {
                    SanTypes::parse(names).map_err(|e| format!("{}: {e}", key("san_types")))?
                }
                None => SanTypes::all(),
            },
            serverkeygen_key_type: self
                .serverkeygen_key_type
                .as_deref()
                .map(|k| {
                    k.parse::<KeyChoice>()
                        .map_err(|e| format!("{}: {e}", key("serverkeygen_key_type")))
                })
                .transpose()?,
        })
    }
}

impl ConfigFile {
    /// The defaults of a new installation (before command-line flags are applied).
    pub fn new_default(dev: bool) -> Self {
        let mut labels = BTreeMap::new();
        labels.insert("device".into(), LabelConfig::with_profile("device"));
        // An Edge CA certificate can sign anything under this root: outside --dev nobody may
        // get one until the operator names who may (auth = [...]).
        let mut edge_ca = LabelConfig::with_profile("edge-ca");
        if !dev {
            edge_ca.auth = Some(vec![]);
        }
        labels.insert("edge-ca".into(), edge_ca);
        ConfigFile {
            dev,
            listen: default_listen(),
            validity: if dev { "1d".into() } else { default_validity() },
            ca_key: default_ca_key(),
            server_sans: vec![],
            bootstrap_ca: vec![],
            bootstrap_crl: BTreeMap::new(),
            csrattrs: vec![],
            approval_retry_after: default_retry_after(),
            admin_listen: default_admin_listen(),
            default: LabelConfig::with_profile(if dev { "auto" } else { "device" }),
            labels,
            profiles: BTreeMap::new(),
            crl: CrlConfig::default(),
            rate_limits: RateLimitConfig::default(),
            audit: AuditConfig::default(),
            limits: LimitsConfig::default(),
            users: vec![],
        }
    }

    /// Reads and parses a config file; errors name the file and the key.
    pub fn read(path: &Path) -> Result<Self, String> {
        // A regular file of sane size: not a FIFO (a hang) or a device (no end).
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{}: not a regular file", path.display()));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(format!(
                "{}: larger than {MAX_CONFIG_BYTES} bytes",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn resolve_label(
        &self,
        key: &str,
        label: &LabelConfig,
        profiles: &BTreeMap<String, Arc<Profile>>,
        known: &KnownNames<'_>,
    ) -> Result<LabelPolicy, String> {
        let profile = match label.profile.as_str() {
            "auto" => ProfileSelection::Auto {
                device: profiles
                    .get("device")
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Profile::device())),
                ca: profiles
                    .get("edge-ca")
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Profile::edge_ca())),
            },
            name => ProfileSelection::Fixed(profiles.get(name).cloned().ok_or_else(|| {
                format!(
                    "{key}.profile: no profile {name:?}; defined: {}, or auto",
                    profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?),
        };
        let manual_approval = match label.approval.as_str() {
            "auto" => false,
            "manual" => true,
            other => return Err(format!("{key}.approval: {other:?}; accepted: auto, manual")),
        };
        let auth = match &label.auth {
            None => AuthRules::unlisted(),
            Some(items) => AuthRules::parse(items, &format!("{key}.auth"), known)?,
        };
        // A CA certificate signs anything under this root, the EST server's own name
        // included: outside --dev, a label that issues one must name who may ask.
        let issues_ca = match &profile {
            ProfileSelection::Fixed(p) => p.ca.is_some(),
            ProfileSelection::Auto { .. } => true,
        };
        let unscoped = auth.unscoped();
        if issues_ca && !self.dev && !unscoped.is_empty() {
            return Err(format!(
                "{key}.auth: this label issues CA certificates (profile {}), so it must name exactly who may ask: \
                 {} accept(s) every {}. Use basic:NAME, client-cert:label:NAME, client-cert:profile:NAME \
                 or bootstrap:NAME{}",
                label.profile,
                unscoped.join(", "),
                unscoped
                    .iter()
                    .map(|u| match *u {
                        "basic" => "Basic user",
                        "client-cert" => "certificate this CA issued (every enrolled device)",
                        _ => "bootstrap certificate",
                    })
                    .collect::<Vec<_>>()
                    .join(" / "),
                if label.auth.is_none() {
                    " (no auth = every Basic user and every certificate of this CA)"
                } else {
                    ""
                }
            ));
        }
        if issues_ca && !self.dev && !auth.client_cert_profiles.is_empty() {
            return Err(format!(
                "{key}.auth: this label issues CA certificates, and client-cert:profile:{} accepts every certificate \
                 of that profile wherever it was issued: name where its certificates come from with client-cert:label:NAME",
                auth.client_cert_profiles.join(", client-cert:profile:")
            ));
        }
        Ok(LabelPolicy {
            profile,
            auth,
            manual_approval,
            serverkeygen: label.serverkeygen,
            subject: SubjectRule::parse(
                &format!("{key}.subject"),
                label.subject.as_deref(),
                self.dev,
            )?,
        })
    }

    /// Checks every value and returns the typed settings.
    pub fn resolve(&self) -> Result<Settings, String> {
        let listen = self
            .listen
            .iter()
            .map(|a| socket_addr("listen", a))
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
        let user_names: Vec<String> = self.users.iter().map(|u| u.name.clone()).collect();
        let bootstrap_ca: Vec<(String, PathBuf)> = self
            .bootstrap_ca
            .iter()
            .map(|p| (bootstrap_name(p), p.clone()))
            .collect();
        let bootstrap_names: Vec<String> = bootstrap_ca.iter().map(|(n, _)| n.clone()).collect();
        let mut seen_names = std::collections::HashSet::new();
        for name in &bootstrap_names {
            if !seen_names.insert(name) {
                return Err(format!(
                    "bootstrap_ca: two files are named {name:?} (names are file stems); rename one"
                ));
            }
        }

        let mut profiles: BTreeMap<String, Arc<Profile>> = BTreeMap::new();
        profiles.insert("device".into(), Arc::new(Profile::device()));
        profiles.insert("edge-ca".into(), Arc::new(Profile::edge_ca()));
        for (name, p) in &self.profiles {
            if name == "auto" || name.is_empty() {
                return Err(format!(
                    "profiles.{name}: \"auto\" and empty names are reserved"
                ));
            }
            profiles.insert(name.clone(), Arc::new(p.resolve(name)?));
        }

        let label_names: Vec<String> = self.labels.keys().cloned().collect();
        let profile_names: Vec<String> = profiles.keys().cloned().collect();
        let known = KnownNames {
            users: &user_names,
            bootstrap: &bootstrap_names,
            labels: &label_names,
            profiles: &profile_names,
        };
        let default_label = self.resolve_label("default", &self.default, &profiles, &known)?;
        let mut labels = BTreeMap::new();
        for (name, label) in &self.labels {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                || is_operation(name)
                || name == DEFAULT_LABEL
            {
                return Err(format!(
                    "labels.{name}: a label is letters, digits, '-', '_' or '.', not an EST operation name, \
                     and not \"{DEFAULT_LABEL}\" (auth rules use that name for unlabeled requests)"
                ));
            }
            labels.insert(
                name.clone(),
                self.resolve_label(&format!("labels.{name}"), label, &profiles, &known)?,
            );
        }
        let mut bootstrap_crl = Vec::new();
        for (name, source) in &self.bootstrap_crl {
            if !bootstrap_names.contains(name) {
                return Err(format!(
                    "bootstrap_crl.{name}: no bootstrap CA named {name:?} (bootstrap CAs are named by file stem: {})",
                    if bootstrap_names.is_empty() { "none configured".to_string() } else { bootstrap_names.join(", ") }
                ));
            }
            let source = source.trim();
            let parsed = if source.starts_with("http://") {
                CrlSource::Url(source.to_string())
            } else if source.contains("://") {
                return Err(format!(
                    "bootstrap_crl.{name}: {source:?}: only http:// URLs (RFC 5280 §4.2.1.13) or file paths"
                ));
            } else if source.is_empty() {
                return Err(format!("bootstrap_crl.{name}: empty"));
            } else {
                CrlSource::File(PathBuf::from(source))
            };
            bootstrap_crl.push((name.clone(), parsed));
        }
        let audit_retention = match self.audit.retention.trim() {
            "" => None,
            r => Some(parse_duration(r).map_err(|e| format!("audit.retention: {e}"))?),
        };
        let l = &self.limits;
        let dur = |key: &str, v: &str| parse_duration(v).map_err(|e| format!("{key}: {e}"));
        if l.max_connections == 0 {
            return Err("limits.max_connections: must be at least 1".into());
        }
        if l.max_body_bytes < 1024 {
            return Err("limits.max_body_bytes: must be at least 1024".into());
        }
        let crl_url = self.crl.url.trim();
        if !(crl_url.is_empty()
            || crl_url.starts_with("http://")
            || crl_url.starts_with("https://"))
        {
            return Err(format!(
                "crl.url: {crl_url:?} must be an http:// or https:// URL"
            ));
        }
        Ok(Settings {
            dev: self.dev,
            listen,
            validity,
            ca_key,
            server_sans,
            bootstrap_ca,
            bootstrap_crl,
            audit_retention,
            csrattrs,
            approval_retry_after: {
                // Clients wait this long between polls (the agent caps what it honours too):
                // more than a day parks devices for no reason.
                let d = dur("approval_retry_after", &self.approval_retry_after)?;
                if d > Duration::from_secs(86_400) {
                    return Err(format!(
                        "approval_retry_after: {:?} is more than a day; clients would wait that long between polls",
                        self.approval_retry_after
                    ));
                }
                d
            },
            admin_listen: optional_addr("admin_listen", &self.admin_listen)?,
            default_label,
            labels,
            profiles,
            crl: CrlSettings {
                validity: dur("crl.validity", &self.crl.validity)?,
                url: (!crl_url.is_empty()).then(|| crl_url.to_string()),
                listen: optional_addr("crl.listen", &self.crl.listen)?,
            },
            rate_limits: self.rate_limits.clone(),
            users: self
                .users
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
            limits: Limits {
                max_connections: l.max_connections,
                max_body_bytes: l.max_body_bytes,
                handshake_timeout: dur("limits.handshake_timeout", &l.handshake_timeout)?,
                header_timeout: dur("limits.header_timeout", &l.header_timeout)?,
                body_timeout: dur("limits.body_timeout", &l.body_timeout)?,
                max_connection_age: dur("limits.max_connection_age", &l.max_connection_age)?,
            },
        })
    }

    /// The file's text, with a comment on every setting.
    pub fn to_commented_toml(&self) -> String {
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter().map(|x| s(x)).collect::<Vec<_>>().join(", ")
            )
        };
        let mut o = String::new();
        let mut line = |text: &str| {
            o.push_str(text);
            o.push('\n');
        };
        line("# Estuary EST server configuration.");
        line("# Written by `estuary serve` on first start with every effective setting.");
        line("# Edit, then restart or send SIGHUP (users, labels, profiles, rate limits, bootstrap CAs");
        line(
            "# reload on SIGHUP; listen addresses, the CA and the TLS certificate need a restart).",
        );
        line("# Command-line flags override these values. Reference: docs/configuration.md");
        line("");
        line("# Test mode (the Azure IoT Edge tutorial's settings). Never use in production.");
        line(&format!("dev = {}", self.dev));
        line("");
        line("# TLS listen addresses (ADDRESS:PORT). An IPv6 address that cannot be bound is skipped with a warning.");
        line(&format!("listen = {}", list(&self.listen)));
        line("");
        line("# Lifetime of issued certificates unless the profile says otherwise: 30s, 60m, 12h, 1d, 90d ...");
        line(&format!("validity = {}", s(&self.validity)));
        line("");
        line("# CA key type, used only when the CA is created: p256, p384, rsa2048, rsa3072, rsa4096, ed25519.");
        line(&format!("ca_key = {}", s(&self.ca_key)));
        line("");
        line("# Names and IPs in the TLS server certificate beyond localhost, 127.0.0.1 and ::1.");
        line("# Adding one re-issues the server certificate at the next start.");
        line(&format!("server_sans = {}", list(&self.server_sans)));
        line("");
        line("# PEM files of bootstrap CAs (e.g. a manufacturer's) whose certificates may authenticate");
        line("# simpleenroll (RFC 7030 §3.3.2). Each is named by its file stem (mfg.pem -> \"mfg\").");
        let paths: Vec<String> = self
            .bootstrap_ca
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        line(&format!("bootstrap_ca = {}", list(&paths)));
        line("");
        line("# A CRL per bootstrap CA (by name): a file (DER or PEM) or an http:// URL. Certificates it");
        line("# lists are refused; while it is past its nextUpdate, that CA's certificates are refused.");
        line("# Example: bootstrap_crl = { mfg = \"mfg.crl\" }");
        let crls: Vec<String> = self
            .bootstrap_crl
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_key(k), s(v)))
            .collect();
        line(&format!("bootstrap_crl = {{ {} }}", crls.join(", ")));
        line("");
        line("# Object identifiers returned by /csrattrs (RFC 7030 §4.5); empty = 204 No Content.");
        line(&format!("csrattrs = {}", list(&self.csrattrs)));
        line("");
        line("# Retry-After sent while a request waits for manual approval (RFC 7030 §4.2.3).");
        line(&format!(
            "approval_retry_after = {}",
            s(&self.approval_retry_after)
        ));
        line("");
        line("# Plain-HTTP admin listener: /metrics (Prometheus), /healthz, /readyz. Empty = off.");
        line("# Keep it on loopback or a management network.");
        line(&format!("admin_listen = {}", s(&self.admin_listen)));
        line("");
        line("# Requests without a label (/.well-known/est/simpleenroll), and labels");
        line("# (/.well-known/est/<label>/simpleenroll). Each has:");
        line("#   profile      - a profile name (built in: device, edge-ca), or auto: edge-ca when the");
        line(
            "#                  CSR asks for CA:TRUE, device otherwise (the tutorial's behaviour)",
        );
        line("#   auth         - who may use it: basic, basic:NAME, client-cert (any certificate this CA");
        line("#                  issued), client-cert:label:NAME, client-cert:profile:NAME (issued under");
        line("#                  that label - default = unlabeled - or profile), bootstrap, bootstrap:NAME.");
        line("#                  Absent = basic and client-cert (bootstrap certificates only where a");
        line("#                  label names them). A label whose profile issues CA certificates must name");
        line("#                  them (basic:NAME, client-cert:label:NAME, ...) outside --dev.");
        line("#   subject      - for requests authenticated by a certificate: same-as-client-cert (the");
        line("#                  default outside --dev), any, or a pattern for the CN in which {client_cn}");
        line("#                  is the client certificate's CN (e.g. \"aziot-edge CA {client_cn}\")");
        line("#   approval     - auto, or manual: 202 + Retry-After until `estuary requests approve ID`");
        line("#   serverkeygen - offer /serverkeygen (the server makes the key)");
        let label = |o: &mut String, header: &str, l: &LabelConfig| {
            o.push_str(&format!("[{header}]\nprofile = {}\n", s(&l.profile)));
            if let Some(auth) = &l.auth {
                o.push_str(&format!("auth = {}\n", list(auth)));
            }
            if let Some(subject) = &l.subject {
                o.push_str(&format!("subject = {}\n", s(subject)));
            }
            o.push_str(&format!(
                "approval = {}\nserverkeygen = {}\n\n",
                s(&l.approval),
                l.serverkeygen
            ));
        };
        label(&mut o, "default", &self.default);
        for (name, l) in &self.labels {
            label(&mut o, &format!("labels.{}", toml_key(name)), l);
        }
        o.push_str("# Profiles: what certificates contain. Built in: device (CA:FALSE, digitalSignature,\n");
        o.push_str("# clientAuth) and edge-ca (CA:TRUE pathlen:0, keyCertSign+cRLSign+digitalSignature).\n");
        o.push_str("# Keys: validity, key_types, key_usage, extended_key_usage, ca, pathlen, cn_pattern,\n");
        o.push_str(
            "# cn_equals_username, san_types, serverkeygen_key_type (see docs/configuration.md).\n",
        );
        for (name, p) in &self.profiles {
            let body = toml::to_string(p).unwrap_or_default();
            o.push_str(&format!("[profiles.{}]\n{}\n", toml_key(name), body));
        }
        o.push('\n');
        o.push_str(
            "# Certificate revocation list, signed by the CA, served at GET /crl (DER).\n[crl]\n",
        );
        o.push_str("# nextUpdate - thisUpdate; the CRL is re-signed on every revocation and when half of this has passed.\n");
        o.push_str(&format!("validity = {}\n", s(&self.crl.validity)));
        o.push_str(
            "# URL written into issued certificates as CRL distribution point; empty = none.\n",
        );
        o.push_str(&format!("url = {}\n", s(&self.crl.url)));
        o.push_str("# Plain-HTTP listener for /crl (relying parties fetch CRLs over http); empty = none.\n");
        o.push_str(&format!("listen = {}\n\n", s(&self.crl.listen)));
        o.push_str("# Rate limits per minute (token buckets); 0 = off. Over the limit: 429 + Retry-After.\n[rate_limits]\n");
        let r = &self.rate_limits;
        o.push_str("# Requests from one source address.\n");
        o.push_str(&format!(
            "per_address_per_minute = {}\n",
            r.per_address_per_minute
        ));
        o.push_str("# Enrollments by one authenticated identity.\n");
        o.push_str(&format!(
            "per_identity_per_minute = {}\n",
            r.per_identity_per_minute
        ));
        o.push_str("# What a failed authentication costs against the address's budget.\n");
        o.push_str(&format!("failed_auth_cost = {}\n\n", r.failed_auth_cost));
        o.push_str("# The audit trail (issuances and refusals, in the database).\n[audit]\n");
        o.push_str("# Events older than this are deleted, hourly (and by `estuary audit prune`); \"\" = keep for ever.\n");
        o.push_str(&format!("retention = {}\n\n", s(&self.audit.retention)));
        o.push_str("# Connection limits and timeouts.\n[limits]\n");
        let l = &self.limits;
        o.push_str("# Most concurrent connections; more are closed at once.\n");
        o.push_str(&format!("max_connections = {}\n", l.max_connections));
        o.push_str("# Largest request body in bytes (413 above).\n");
        o.push_str(&format!("max_body_bytes = {}\n", l.max_body_bytes));
        o.push_str("# Time allowed for the TLS handshake.\n");
        o.push_str(&format!(
            "handshake_timeout = {}\n",
            s(&l.handshake_timeout)
        ));
        o.push_str("# Time allowed to send request headers; also the idle time between keep-alive requests.\n");
        o.push_str(&format!("header_timeout = {}\n", s(&l.header_timeout)));
        o.push_str("# Time allowed to send a request body.\n");
        o.push_str(&format!("body_timeout = {}\n", s(&l.body_timeout)));
        o.push_str("# Longest life of one connection (a client that stops reading cannot hold a slot for ever).\n");
        o.push_str(&format!(
            "max_connection_age = {}\n\n",
            s(&l.max_connection_age)
        ));
        o.push_str("# HTTP Basic users (RFC 7617). Add one with `estuary user add NAME`.\n");
        for u in &self.users {
            o.push_str(&format!(
                "[[users]]\nname = {}\npassword_hash = {}\n\n",
                s(&u.name),
                s(&u.password_hash)
            ));
        }
        o
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

/// For messages: the validity in config syntax.
pub fn describe_validity(d: Duration) -> String {
    format_duration(d)
}

impl Settings {
    /// What each label allows, for `estuary config check`.
    pub fn describe_labels(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut one = |name: &str, l: &LabelPolicy| {
            out.push(format!("{name}:"));
            out.push(format!("  profile:      {}", l.profile));
            out.push(format!("  auth:         {}", l.auth.describe()));
            out.push(format!(
                "  approval:     {}",
                if l.manual_approval {
                    "manual"
                } else {
                    "automatic"
                }
            ));
            out.push(format!(
                "  serverkeygen: {}",
                if l.serverkeygen { "offered" } else { "no" }
            ));
            out.push(format!("  subject:      {}", l.subject.describe()));
            let profiles: Vec<&Profile> = match &l.profile {
                ProfileSelection::Fixed(p) => vec![p],
                ProfileSelection::Auto { device, ca } => vec![device, ca],
            };
            for p in profiles {
                out.push(format!("  profile {}:", p.name));
                for rule in p.describe() {
                    out.push(format!("    {rule}"));
                }
            }
        };
        one("/.well-known/est (no label)", &self.default_label);
        for (name, l) in &self.labels {
            one(&format!("/.well-known/est/{name}"), l);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
        cfg.profiles.insert(
            "sensor".into(),
            ProfileConfig {
                validity: Some("7d".into()),
                key_types: Some(vec!["p256".into()]),
                cn_pattern: Some("sensor-[0-9]+".into()),
                san_types: Some(vec!["dns".into()]),
                ..Default::default()
            },
        );
        cfg.labels.insert(
            "sensors".into(),
            LabelConfig {
                profile: "sensor".into(),
                auth: Some(vec![
                    "basic:estuser".into(),
                    "client-cert".into(),
                    "client-cert:label:default".into(),
                    "client-cert:profile:device".into(),
                ]),
                approval: "manual".into(),
                serverkeygen: true,
                subject: Some("sensor-{client_cn}".into()),
            },
        );
        cfg.audit.retention = "30d".into();
        let text = cfg.to_commented_toml();
        let back: ConfigFile = toml::from_str(&text).map_err(|e| e.to_string())?;
        assert_eq!(back, cfg);
        let settings = back.resolve()?;
        assert!(settings.labels["sensors"].manual_approval);
        assert!(settings
            .describe_labels()
            .iter()
            .any(|l| l.contains("CN must match")));
        Ok(())
    }

    #[test]
    fn the_reference_documents_every_key() {
        let mut cfg = ConfigFile::new_default(false);
        cfg.users.push(UserConfig {
            name: "u".into(),
            password_hash: "h".into(),
        });
        cfg.default.auth = Some(vec![]);
        cfg.default.subject = Some("any".into());
        cfg.profiles.insert(
            "p".into(),
            ProfileConfig {
                validity: Some("1d".into()),
                key_types: Some(vec![]),
                key_usage: Some(vec![]),
                extended_key_usage: Some(vec![]),
                ca: true,
                pathlen: Some(0),
                cn_pattern: Some("x".into()),
                cn_equals_username: true,
                san_types: Some(vec![]),
                serverkeygen_key_type: Some("p256".into()),
            },
        );
        let value = toml::Value::try_from(&cfg).unwrap();
        let doc = include_str!("../../../docs/configuration.md");
        fn keys(v: &toml::Value, skip_names: bool, out: &mut Vec<String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        // Children of labels/profiles are user-chosen names, not keys.
                        if !skip_names {
                            out.push(k.clone());
                        }
                        keys(v, !skip_names && (k == "labels" || k == "profiles"), out);
                    }
                }
                toml::Value::Array(a) => a.iter().for_each(|v| keys(v, false, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        keys(&value, false, &mut all);
        assert!(all.len() > 30);
        for key in all {
            assert!(
                doc.contains(&format!("`{key}`")) || doc.contains(&format!("[{key}")),
                "docs/configuration.md does not document `{key}`"
            );
        }
    }

    #[test]
    fn the_annotated_example_in_the_repository_parses() -> Result<(), String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/estuary.toml");
        let settings = ConfigFile::read(Path::new(path))?.resolve()?;
        assert!(!settings.users.is_empty());
        assert!(settings.labels.len() >= 2);
        Ok(())
    }

    #[test]
    fn a_label_that_issues_ca_certificates_must_name_who_may_ask() {
        let with_edge_ca_auth = |auth: Option<Vec<&str>>, dev: bool| {
            let mut cfg = ConfigFile::new_default(dev);
            cfg.users.push(UserConfig {
                name: "edgeadmin".into(),
                password_hash: "h".into(),
            });
            if let Some(l) = cfg.labels.get_mut("edge-ca") {
                l.auth = auth.map(|v| v.into_iter().map(String::from).collect());
            }
            cfg.resolve().map(|_| ())
        };
        // The hole: every device certificate could get a CA certificate.
        let err =
            with_edge_ca_auth(Some(vec!["basic:edgeadmin", "client-cert"]), false).unwrap_err();
        assert!(err.starts_with("labels.edge-ca.auth"), "{err}");
        assert!(err.contains("client-cert"), "{err}");
        assert!(with_edge_ca_auth(None, false).is_err());
        assert!(with_edge_ca_auth(Some(vec!["basic"]), false).is_err());
        assert!(with_edge_ca_auth(Some(vec!["bootstrap"]), false).is_err());
        // Scoped rules are fine.
        assert!(with_edge_ca_auth(
            Some(vec!["basic:edgeadmin", "client-cert:label:device"]),
            false
        )
        .is_ok());
        // A profile scope is every certificate of that profile, wherever it was issued.
        assert!(with_edge_ca_auth(Some(vec!["client-cert:profile:device"]), false).is_err());
        // --dev keeps the tutorial's open Edge CA.
        assert!(with_edge_ca_auth(None, true).is_ok());
        // An auto default label outside --dev can issue CA certificates too.
        let mut cfg = ConfigFile::new_default(false);
        cfg.default.profile = "auto".into();
        assert!(cfg.resolve().unwrap_err().starts_with("default.auth"));
    }

    #[test]
    fn scoped_client_cert_rules_and_subject_rules_are_checked() {
        let resolve = |auth: &str, subject: Option<&str>| {
            let mut cfg = ConfigFile::new_default(false);
            cfg.default.auth = Some(vec![auth.to_string()]);
            cfg.default.subject = subject.map(String::from);
            cfg.resolve().map(|s| s.default_label)
        };
        assert!(resolve("client-cert:label:device", None).is_ok());
        assert!(resolve("client-cert:label:default", None).is_ok());
        assert!(resolve("client-cert:label:nowhere", None)
            .unwrap_err()
            .contains("no label"));
        assert!(resolve("client-cert:profile:nothing", None)
            .unwrap_err()
            .contains("no profile"));
        assert!(resolve("client-cert:serial:1", None).is_err());
        let policy = resolve("client-cert", None).unwrap();
        assert!(matches!(policy.subject, SubjectRule::SameAsClientCert));
        let policy = resolve("client-cert", Some("any")).unwrap();
        assert!(matches!(policy.subject, SubjectRule::Any));
        let policy = resolve("client-cert", Some("aziot-edge CA {client_cn}")).unwrap();
        assert!(matches!(policy.subject, SubjectRule::Pattern(_)));
        assert!(resolve("client-cert", Some("("))
            .unwrap_err()
            .starts_with("default.subject"));
        // In --dev, absent means any.
        let mut cfg = ConfigFile::new_default(true);
        cfg.default.subject = None;
        let settings = cfg.resolve().unwrap();
        assert!(matches!(settings.default_label.subject, SubjectRule::Any));
        // No label may be called "default".
        let mut cfg = ConfigFile::new_default(false);
        cfg.labels
            .insert("default".into(), LabelConfig::with_profile("device"));
        assert!(cfg.resolve().unwrap_err().starts_with("labels.default"));
    }

    #[test]
    fn bootstrap_crls_name_a_bootstrap_ca_and_audit_retention_parses() {
        let mut cfg = ConfigFile::new_default(false);
        cfg.bootstrap_ca.push("mfg.pem".into());
        cfg.bootstrap_crl.insert("mfg".into(), "mfg.crl".into());
        let s = cfg.resolve().unwrap();
        assert_eq!(
            s.bootstrap_crl,
            vec![("mfg".to_string(), CrlSource::File("mfg.crl".into()))]
        );
        assert_eq!(s.audit_retention, Some(Duration::from_secs(90 * 86400)));
        cfg.bootstrap_crl
            .insert("mfg".into(), "http://pki.example.com/mfg.crl".into());
        assert!(matches!(
            cfg.resolve().unwrap().bootstrap_crl[0].1,
            CrlSource::Url(_)
        ));
        cfg.bootstrap_crl
            .insert("mfg".into(), "https://pki.example.com/mfg.crl".into());
        assert!(cfg.resolve().is_err());
        cfg.bootstrap_crl.clear();
        cfg.bootstrap_crl.insert("other".into(), "x.crl".into());
        assert!(cfg
            .resolve()
            .unwrap_err()
            .starts_with("bootstrap_crl.other"));
        cfg.bootstrap_crl.clear();
        cfg.audit.retention = String::new();
        assert_eq!(cfg.resolve().unwrap().audit_retention, None);
        cfg.audit.retention = "soon".into();
        assert!(cfg.resolve().unwrap_err().starts_with("audit.retention"));
    }

    #[test]
    fn a_per_address_rate_limit_is_on_by_default_and_makes_guessing_slow() {
        let r = ConfigFile::new_default(false).rate_limits;
        assert!(r.per_address_per_minute > 0);
        // Sustained: one wrong password per this many seconds.
        let seconds_per_guess =
            60.0 * f64::from(r.failed_auth_cost) / f64::from(r.per_address_per_minute);
        assert!(seconds_per_guess >= 5.0, "{seconds_per_guess}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = toml::from_str::<ConfigFile>("colour = 1")
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("colour"));
        type Change = Box<dyn Fn(&mut ConfigFile)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.validity = "10".into()), "validity"),
            (
                Box::new(|c| {
                    c.labels
                        .insert("x".into(), LabelConfig::with_profile("root"));
                }),
                "labels.x.profile",
            ),
            (
                Box::new(|c| {
                    c.labels
                        .insert("cacerts".into(), LabelConfig::with_profile("device"));
                }),
                "labels.cacerts",
            ),
            (
                Box::new(|c| c.default.approval = "later".into()),
                "default.approval",
            ),
            (
                Box::new(|c| c.default.auth = Some(vec!["basic:ghost".into()])),
                "default.auth",
            ),
            (
                Box::new(|c| c.default.auth = Some(vec!["magic".into()])),
                "default.auth",
            ),
            (
                Box::new(|c| {
                    c.profiles.insert(
                        "p".into(),
                        ProfileConfig {
                            key_types: Some(vec!["dsa".into()]),
                            ..Default::default()
                        },
                    );
                }),
                "profiles.p.key_types",
            ),
            (
                Box::new(|c| {
                    c.profiles.insert(
                        "p".into(),
                        ProfileConfig {
                            cn_pattern: Some("(".into()),
                            ..Default::default()
                        },
                    );
                }),
                "profiles.p.cn_pattern",
            ),
            (
                Box::new(|c| {
                    c.profiles.insert(
                        "p".into(),
                        ProfileConfig {
                            pathlen: Some(1),
                            ..Default::default()
                        },
                    );
                }),
                "profiles.p.pathlen",
            ),
            (Box::new(|c| c.crl.url = "ftp://x".into()), "crl.url"),
            (
                Box::new(|c| c.approval_retry_after = "60d".into()),
                "approval_retry_after",
            ),
            (
                Box::new(|c| c.admin_listen = "nowhere".into()),
                "admin_listen",
            ),
        ];
        for (change, key) in cases {
            let mut cfg = ConfigFile::new_default(false);
            change(&mut cfg);
            let err = cfg.resolve().unwrap_err();
            assert!(err.starts_with(key), "{key}: {err}");
        }
    }
}
