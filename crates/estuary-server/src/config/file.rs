//! The file format: what `estuary.toml` may contain (unknown keys rejected), and how each part
//! is checked into its runtime form ([`super::policy`]).

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
use estuary_wire::duration::parse_duration;
use serde::{Deserialize, Serialize};

use super::policy::{
    is_operation, AuthRules, CrlSettings, CrlSource, KnownNames, LabelPolicy, Limits, RaRule,
    Settings, SubjectRule, UpstreamCredential, UpstreamSettings, CLIENT_CN, DEFAULT_LABEL,
};
use super::ConfigError;

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
    /// The CA key in a PKCS#11 token (RFC 7512 URI) instead of `ca-key.pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key_uri: Option<KeyUriText>,
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
    /// RA mode: the parent EST server this one forwards enrollments to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamConfig>,
    /// Registration authorities allowed to forward to this server, by their certificate's CN.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registration_authorities: BTreeMap<String, RegistrationAuthorityConfig>,
    /// Where certificates, requests and the audit trail are stored.
    #[serde(default, skip_serializing_if = "DatabaseConfig::is_default")]
    pub database: DatabaseConfig,
}

/// `[database]`: the certificate store.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:PATH` or `postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=verify-full&sslrootcert=FILE`;
    /// empty = `sqlite:DATA_DIR/estuary.db`. `--database` and `ESTUARY_DATABASE` override it.
    pub url: String,
}

impl DatabaseConfig {
    fn is_default(&self) -> bool {
        self.url.is_empty()
    }

    /// The database named, or `None` for the default (`DATA_DIR/estuary.db`).
    pub fn resolve(&self) -> Result<Option<estuary_store::DatabaseUrl>, ConfigError> {
        if self.url.trim().is_empty() {
            return Ok(None);
        }
        self.url
            .parse()
            .map(Some)
            .map_err(|e: estuary_store::StoreError| ConfigError::Invalid {
                key: "database.url".into(),
                message: e.to_string(),
            })
    }
}

/// A PKCS#11 URI as written in the file; `Debug` hides a `pin-value` in it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct KeyUriText(pub String);

impl std::fmt::Debug for KeyUriText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&estuary_ca::pkcs11::redact(&self.0))
    }
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
    /// RA mode: the upstream label this label forwards to (`default`: the parent's unlabeled
    /// path). Absent = the same name (the
    /// default label forwards to the upstream's default label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_label: Option<String>,
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
            upstream_label: None,
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
    /// Most concurrent connections from one address (an IPv6 /64); more are closed at once.
    pub max_connections_per_address: usize,
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
    /// Addresses of load balancers that begin each connection with a PROXY protocol header
    /// (HAProxy `send-proxy-v2`), naming the client's address.
    pub proxy_protocol_from: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            max_body_bytes: 64 * 1024,
            handshake_timeout: "10s".into(),
            header_timeout: "30s".into(),
            body_timeout: "30s".into(),
            max_connection_age: "10m".into(),
            proxy_protocol_from: vec![],
        }
    }
}

/// `[upstream]`: the parent EST server of an RA.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The parent's `https://HOST[:PORT]/.well-known/est`.
    pub url: String,
    /// PEM trust anchor for the parent's TLS certificate (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Basic user at the parent (with `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Basic password at the parent (with `user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Client certificate (PEM) for the parent (with `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Upstream label for the RA's own TLS server certificate.
    #[serde(default = "default_server_label")]
    pub server_label: String,
    /// Upstream label for the RA's client certificate (EKU id-kp-cmcRA).
    #[serde(default = "default_ra_label")]
    pub ra_label: String,
    /// Deadline for one upstream request (at most 60s).
    #[serde(default = "default_upstream_timeout")]
    pub timeout: String,
    /// How often the upstream CRL is fetched.
    #[serde(default = "default_crl_refresh")]
    pub crl_refresh: String,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("url", &self.url)
            .field("ca", &self.ca)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("server_label", &self.server_label)
            .field("ra_label", &self.ra_label)
            .field("timeout", &self.timeout)
            .field("crl_refresh", &self.crl_refresh)
            .finish()
    }
}

/// The longest `upstream.timeout`.
pub const MAX_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

impl UpstreamConfig {
    /// An upstream at `url` with the defaults and no credential yet.
    pub fn new(url: &str) -> Self {
        UpstreamConfig {
            url: url.into(),
            ca: None,
            user: None,
            password: None,
            cert: None,
            key: None,
            server_label: default_server_label(),
            ra_label: default_ra_label(),
            timeout: default_upstream_timeout(),
            crl_refresh: default_crl_refresh(),
        }
    }

    /// Checks the table into [`UpstreamSettings`].
    pub fn resolve(&self) -> Result<UpstreamSettings, ConfigError> {
        let url = self.url.trim();
        let rest = url.strip_prefix("https://").ok_or_else(|| {
            ConfigError::invalid(
                "upstream.url",
                format!("{url:?} must be an https:// URL (the parent's /.well-known/est)"),
            )
        })?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || rest.contains(['?', '#']) || url.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                "upstream.url",
                format!("{url:?} is not https://HOST[:PORT]/.well-known/est"),
            ));
        }
        let basic = self.user.is_some() || self.password.is_some();
        let certificate = self.cert.is_some() || self.key.is_some();
        let credential =
            match (&self.user, &self.password, &self.cert, &self.key) {
                _ if basic && certificate => {
                    return Err(ConfigError::invalid(
                        "upstream",
                        "both user/password and cert/key are set; give exactly one credential",
                    ))
                }
                (Some(user), Some(password), _, _) => {
                    if user.is_empty() || user.contains(':') {
                        return Err(ConfigError::invalid(
                            "upstream.user",
                            format!("{user:?} is not a valid user name (non-empty, no ':')"),
                        ));
                    }
                    UpstreamCredential::Basic {
                        user: user.clone(),
                        password: password.clone(),
                    }
                }
                (Some(_), None, _, _) => {
                    return Err(ConfigError::invalid(
                        "upstream.password",
                        "user is set without password",
                    ))
                }
                (None, Some(_), _, _) => {
                    return Err(ConfigError::invalid(
                        "upstream.user",
                        "password is set without user",
                    ))
                }
                (_, _, Some(cert), Some(key)) => UpstreamCredential::Certificate {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                (_, _, Some(_), None) => {
                    return Err(ConfigError::invalid(
                        "upstream.key",
                        "cert is set without key",
                    ))
                }
                (_, _, None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        "upstream.cert",
                        "key is set without cert",
                    ))
                }
                (None, None, None, None) => return Err(ConfigError::invalid(
                    "upstream",
                    "no credential for the parent: set user and password (Basic), or cert and key",
                )),
            };
        for (key, label) in [
            ("upstream.server_label", &self.server_label),
            ("upstream.ra_label", &self.ra_label),
        ] {
            check_upstream_label(key, label)?;
        }
        let timeout = parse_duration(&self.timeout)
            .map_err(|e| ConfigError::invalid("upstream.timeout", e))?;
        if timeout.is_zero() || timeout > MAX_UPSTREAM_TIMEOUT {
            return Err(ConfigError::invalid(
                "upstream.timeout",
                format!("{:?} must be more than 0s and at most 60s", self.timeout),
            ));
        }
        if self.ca.is_none() {
            return Err(ConfigError::invalid(
                "upstream.ca",
                "is required: the PEM file of the root certificate that the parent's TLS \
                 certificate chains to (for example the parent's ca-cert.pem)",
            ));
        }
        let crl_refresh = parse_duration(&self.crl_refresh)
            .map_err(|e| ConfigError::invalid("upstream.crl_refresh", e))?;
        if crl_refresh.is_zero() {
            return Err(ConfigError::invalid(
                "upstream.crl_refresh",
                "must be more than 0s",
            ));
        }
        Ok(UpstreamSettings {
            url: url.trim_end_matches('/').to_string(),
            ca: self.ca.clone(),
            credential,
            server_label: self.server_label.clone(),
            ra_label: self.ra_label.clone(),
            timeout,
            crl_refresh,
        })
    }
}

/// A label name at the parent: what a label here may be called too.
fn check_upstream_label(key: &str, label: &str) -> Result<(), ConfigError> {
    if valid_label_name(label) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{label:?} is not a label (letters, digits, '-', '_' or '.', not an EST operation name)"),
        ))
    }
}

fn valid_label_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !is_operation(name)
}

/// `[registration_authorities.NAME]`: an RA (by the CN of its certificate) that may forward
/// its clients' requests to this server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RegistrationAuthorityConfig {
    /// The subject CNs it may request (a regular expression for the whole CN); absent = any
    /// subject. With a pattern, the subject may hold only CNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The subjectAltName entries it may request, each written `DNS:name`, `IP:address`,
    /// `email:address` or `URI:uri` (a regular expression for the whole entry). Absent: none
    /// when `subject` is a pattern, any when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sans: Option<String>,
}

impl RegistrationAuthorityConfig {
    /// Checks the table into an [`RaRule`].
    pub fn resolve(&self, name: &str) -> Result<RaRule, ConfigError> {
        let key = format!("registration_authorities.{name}.subject");
        let subject = match &self.subject {
            None => None,
            Some(p) if p.contains(CLIENT_CN) => {
                return Err(ConfigError::invalid(
                    key,
                    format!("{CLIENT_CN} is for a label's subject; here the pattern is the CN the RA may request"),
                ))
            }
            Some(p) => Some(cn_pattern(p).map_err(|e| ConfigError::invalid(key, e))?),
        };
        let sans = match &self.sans {
            None => None,
            Some(p) => Some(cn_pattern(p).map_err(|e| {
                ConfigError::invalid(format!("registration_authorities.{name}.sans"), e)
            })?),
        };
        Ok(RaRule { subject, sans })
    }
}

fn default_server_label() -> String {
    "est-server".into()
}
fn default_ra_label() -> String {
    "est-ra".into()
}
fn default_upstream_timeout() -> String {
    "10s".into()
}
fn default_crl_refresh() -> String {
    "5m".into()
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

fn socket_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("{v:?} is not ADDRESS:PORT (e.g. 0.0.0.0:8085 or [::]:8085)"),
        )
    })
}

fn optional_addr(key: &str, v: &str) -> Result<Option<SocketAddr>, ConfigError> {
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
    fn resolve(&self, name: &str) -> Result<Profile, ConfigError> {
        let key = |k: &str| format!("profiles.{name}.{k}");
        let ca = if self.ca {
            Some(self.pathlen)
        } else if self.pathlen.is_some() {
            return Err(ConfigError::invalid(
                key("pathlen"),
                "pathlen needs ca = true",
            ));
        } else {
            None
        };
        let key_usage = match &self.key_usage {
            Some(names) => names
                .iter()
                .map(|n| {
                    key_usage_from_name(n).map_err(|e| ConfigError::invalid(key("key_usage"), e))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None if ca.is_some() => Profile::edge_ca().key_usage,
            None => Profile::device().key_usage,
        };
        let extended_key_usage = match &self.extended_key_usage {
            Some(names) => names
                .iter()
                .map(|n| {
                    eku_from_name(n).map_err(|e| ConfigError::invalid(key("extended_key_usage"), e))
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
                .map(|v| parse_duration(v).map_err(|e| ConfigError::invalid(key("validity"), e)))
                .transpose()?,
            key_types: match &self.key_types {
                Some(names) => KeyTypes(
                    names
                        .iter()
                        .map(|n| {
                            key_type_from_name(n)
                                .map_err(|e| ConfigError::invalid(key("key_types"), e))
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
                .map(|p| cn_pattern(p).map_err(|e| ConfigError::invalid(key("cn_pattern"), e)))
                .transpose()?,
            cn_equals_username: self.cn_equals_username,
            san_types: match &self.san_types {
                Some(names) => {
                    SanTypes::parse(names).map_err(|e| ConfigError::invalid(key("san_types"), e))?
                }
                None => SanTypes::all(),
            },
            serverkeygen_key_type: self
                .serverkeygen_key_type
                .as_deref()
                .map(|k| {
                    k.parse::<KeyChoice>()
                        .map_err(|e| ConfigError::invalid(key("serverkeygen_key_type"), e))
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
            ca_key_uri: None,
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
            upstream: None,
            registration_authorities: BTreeMap::new(),
            database: DatabaseConfig::default(),
        }
    }

    /// Reads and parses a config file; errors name the file and the key.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        // A regular file of sane size: not a FIFO (a hang) or a device (no end).
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(ConfigError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses a file's text (types and unknown keys; [`ConfigFile::resolve`] checks values).
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    fn resolve_label(
        &self,
        key: &str,
        label: &LabelConfig,
        profiles: &BTreeMap<String, Arc<Profile>>,
        known: &KnownNames<'_>,
    ) -> Result<LabelPolicy, ConfigError> {
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
                ConfigError::invalid(
                    format!("{key}.profile"),
                    format!(
                        "no profile {name:?}; defined: {}, or auto",
                        profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?),
        };
        let (manual_approval, renewals_skip_approval) = match label.approval.as_str() {
            "auto" => (false, false),
            "manual" => (true, false),
            "manual-first" => (true, true),
            other => {
                return Err(ConfigError::invalid(
                    format!("{key}.approval"),
                    format!("{other:?}; accepted: auto, manual, manual-first"),
                ))
            }
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
            return Err(ConfigError::invalid(format!("{key}.auth"), format!(
                "this label issues CA certificates (profile {}), so it must name exactly who may ask: \
                 {} accept(s) every {}. Use basic:NAME, client-cert:label:NAME, client-cert:profile:NAME, \
                 bootstrap:NAME or ra:NAME{}",
                label.profile,
                unscoped.join(", "),
                unscoped
                    .iter()
                    .map(|u| match *u {
                        "basic" => "Basic user",
                        "client-cert" => "certificate this CA issued (every enrolled device)",
                        "ra" => "registration authority of this CA",
                        _ => "bootstrap certificate",
                    })
                    .collect::<Vec<_>>()
                    .join(" / "),
                if label.auth.is_none() {
                    " (no auth = every Basic user and every certificate of this CA)"
                } else {
                    ""
                }
            )));
        }
        if issues_ca && !self.dev && !auth.client_cert_profiles.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.auth"), format!(
                "this label issues CA certificates, and client-cert:profile:{} accepts every certificate \
                 of that profile wherever it was issued: name where its certificates come from with client-cert:label:NAME",
                auth.client_cert_profiles.join(", client-cert:profile:")
            )));
        }
        if let Some(upstream) = &label.upstream_label {
            check_upstream_label(&format!("{key}.upstream_label"), upstream)?;
        }
        Ok(LabelPolicy {
            profile,
            auth,
            manual_approval,
            renewals_skip_approval,
            serverkeygen: label.serverkeygen,
            subject: SubjectRule::parse(
                &format!("{key}.subject"),
                label.subject.as_deref(),
                self.dev,
            )?,
            upstream_label: label.upstream_label.clone(),
        })
    }

    /// Checks every value and returns the typed settings.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let listen = self
            .listen
            .iter()
            .map(|a| socket_addr("listen", a))
            .collect::<Result<Vec<_>, _>>()?;
        if listen.is_empty() {
            return Err(ConfigError::invalid(
                "listen",
                "at least one address is needed",
            ));
        }
        let validity =
            parse_duration(&self.validity).map_err(|e| ConfigError::invalid("validity", e))?;
        let ca_key: KeyChoice = self
            .ca_key
            .parse()
            .map_err(|e| ConfigError::invalid("ca_key", e))?;
        let ca_key_uri = self
            .ca_key_uri
            .as_ref()
            .map(|text| estuary_ca::pkcs11::Pkcs11Uri::parse(&text.0))
            .transpose()
            .map_err(|e| ConfigError::invalid("ca_key_uri", e.problem))?;
        if ca_key_uri.is_some() && self.upstream.is_some() {
            return Err(ConfigError::invalid(
                "ca_key_uri",
                "a registration authority ([upstream]) has no CA key of its own",
            ));
        }
        let server_sans = self
            .server_sans
            .iter()
            .map(|s| {
                s.parse::<SanEntry>()
                    .map_err(|e| ConfigError::invalid("server_sans", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let csrattrs = self
            .csrattrs
            .iter()
            .map(|o| {
                o.parse::<const_oid::ObjectIdentifier>().map_err(|_| {
                    ConfigError::invalid(
                        "csrattrs",
                        format!("{o:?} is not a dotted OID such as 1.2.840.113549.1.9.7"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = std::collections::HashSet::new();
        for u in &self.users {
            if u.name.is_empty() || u.name.contains(':') {
                return Err(ConfigError::invalid(
                    "users",
                    format!("{:?} is not a valid user name (non-empty, no ':')", u.name),
                ));
            }
            if !seen.insert(u.name.clone()) {
                return Err(ConfigError::invalid(
                    "users",
                    format!("{:?} appears twice", u.name),
                ));
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
                return Err(ConfigError::invalid(
                    "bootstrap_ca",
                    format!("two files are named {name:?} (names are file stems); rename one"),
                ));
            }
        }

        let mut profiles: BTreeMap<String, Arc<Profile>> = BTreeMap::new();
        profiles.insert("device".into(), Arc::new(Profile::device()));
        profiles.insert("edge-ca".into(), Arc::new(Profile::edge_ca()));
        profiles.insert("est-ra".into(), Arc::new(Profile::est_ra()));
        profiles.insert("tls-server".into(), Arc::new(Profile::tls_server()));
        for (name, p) in &self.profiles {
            if name == "auto" || name.is_empty() {
                return Err(ConfigError::invalid(
                    format!("profiles.{name}"),
                    "\"auto\" and empty names are reserved",
                ));
            }
            profiles.insert(name.clone(), Arc::new(p.resolve(name)?));
        }

        let mut registration_authorities = BTreeMap::new();
        for (name, ra) in &self.registration_authorities {
            if name.is_empty() {
                return Err(ConfigError::invalid(
                    "registration_authorities",
                    "an RA is named by its certificate's CN, which cannot be empty",
                ));
            }
            registration_authorities.insert(name.clone(), ra.resolve(name)?);
        }

        // --dev: an RA can provision itself against the tutorial's server with the tutorial's
        // credentials, renew with its certificate, and pass the provisioning of an RA below it
        // up the chain (a file's own label of the same name wins).
        let mut file_labels = self.labels.clone();
        if self.dev {
            for (name, profile) in [("est-ra", "est-ra"), ("est-server", "tls-server")] {
                file_labels
                    .entry(name.into())
                    .or_insert_with(|| LabelConfig {
                        auth: Some(vec!["basic".into(), "client-cert".into(), "ra".into()]),
                        subject: Some("any".into()),
                        ..LabelConfig::with_profile(profile)
                    });
            }
        }
        let label_names: Vec<String> = file_labels.keys().cloned().collect();
        let profile_names: Vec<String> = profiles.keys().cloned().collect();
        let ra_names: Vec<String> = registration_authorities.keys().cloned().collect();
        let known = KnownNames {
            users: &user_names,
            bootstrap: &bootstrap_names,
            labels: &label_names,
            profiles: &profile_names,
            registration_authorities: &ra_names,
            dev: self.dev,
        };
        let mut default_label = self.resolve_label("default", &self.default, &profiles, &known)?;
        if self.dev {
            // --dev: any RA of this CA may forward to the unlabeled path.
            default_label.auth.ra_any = true;
        }
        let mut labels = BTreeMap::new();
        for (name, label) in &file_labels {
            if !valid_label_name(name) || name == DEFAULT_LABEL {
                return Err(ConfigError::invalid(
                    format!("labels.{name}"),
                    format!(
                        "a label is letters, digits, '-', '_' or '.', not an EST operation name, \
                     and not \"{DEFAULT_LABEL}\" (auth rules use that name for unlabeled requests)"
                    ),
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
                return Err(ConfigError::invalid(
                    format!("bootstrap_crl.{name}"),
                    format!(
                        "no bootstrap CA named {name:?} (bootstrap CAs are named by file stem: {})",
                        if bootstrap_names.is_empty() {
                            "none configured".to_string()
                        } else {
                            bootstrap_names.join(", ")
                        }
                    ),
                ));
            }
            let source = source.trim();
            let parsed = if source.starts_with("http://") {
                CrlSource::Url(source.to_string())
            } else if source.contains("://") {
                return Err(ConfigError::invalid(
                    format!("bootstrap_crl.{name}"),
                    format!("{source:?}: only http:// URLs (RFC 5280 §4.2.1.13) or file paths"),
                ));
            } else if source.is_empty() {
                return Err(ConfigError::invalid(
                    format!("bootstrap_crl.{name}"),
                    "empty",
                ));
            } else {
                CrlSource::File(PathBuf::from(source))
            };
            bootstrap_crl.push((name.clone(), parsed));
        }
        let audit_retention = match self.audit.retention.trim() {
            "" => None,
            r => Some(parse_duration(r).map_err(|e| ConfigError::invalid("audit.retention", e))?),
        };
        let l = &self.limits;
        let dur = |key: &str, v: &str| parse_duration(v).map_err(|e| ConfigError::invalid(key, e));
        if l.max_connections == 0 {
            return Err(ConfigError::invalid(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if l.max_connections_per_address == 0 {
            return Err(ConfigError::invalid(
                "limits.max_connections_per_address",
                "must be at least 1",
            ));
        }
        if l.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "limits.max_body_bytes",
                "must be at least 1024",
            ));
        }
        let proxy_protocol_from = l
            .proxy_protocol_from
            .iter()
            .map(|a| {
                a.trim().parse::<std::net::IpAddr>().map_err(|_| {
                    ConfigError::invalid(
                        "limits.proxy_protocol_from",
                        format!("{a:?} is not an IP address (one address per load balancer)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let crl_url = self.crl.url.trim();
        if !(crl_url.is_empty()
            || crl_url.starts_with("http://")
            || crl_url.starts_with("https://"))
        {
            return Err(ConfigError::invalid(
                "crl.url",
                format!("{crl_url:?} must be an http:// or https:// URL"),
            ));
        }
        if self.upstream.is_some() {
            // A registration authority decides nothing itself: approvals happen at the CA.
            if let Some(name) = std::iter::once(("default", &default_label))
                .chain(labels.iter().map(|(n, l)| (n.as_str(), l)))
                .find(|(_, l)| l.manual_approval)
                .map(|(n, _)| n)
            {
                return Err(ConfigError::invalid(
                    format!("labels.{name}.approval"),
                    "a registration authority ([upstream]) forwards every request; approval \
                     happens at the CA above it (its label's approval = \"manual\")",
                ));
            }
        }
        Ok(Settings {
            dev: self.dev,
            listen,
            validity,
            ca_key,
            ca_key_uri,
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
                    return Err(ConfigError::invalid(
                        "approval_retry_after",
                        format!(
                            "{:?} is more than a day; clients would wait that long between polls",
                            self.approval_retry_after
                        ),
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
                max_connections_per_address: l.max_connections_per_address,
                max_body_bytes: l.max_body_bytes,
                handshake_timeout: dur("limits.handshake_timeout", &l.handshake_timeout)?,
                header_timeout: dur("limits.header_timeout", &l.header_timeout)?,
                body_timeout: dur("limits.body_timeout", &l.body_timeout)?,
                max_connection_age: dur("limits.max_connection_age", &l.max_connection_age)?,
                proxy_protocol_from,
            },
            upstream: self
                .upstream
                .as_ref()
                .map(UpstreamConfig::resolve)
                .transpose()?,
            registration_authorities,
            database: self.database.resolve()?,
        })
    }
}
