//! The settings after checking, as the server uses them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use estuary_ca::issue::SanEntry;
use estuary_ca::{KeyChoice, Profile, ProfileSelection};
use estuary_wire::duration::format_duration;

use super::{ConfigError, RateLimitConfig};

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
    /// The CA key in a PKCS#11 token (`ca_key_uri`); `None` = `ca-key.pem`.
    pub ca_key_uri: Option<estuary_ca::pkcs11::Pkcs11Uri>,
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
    /// RA mode: this server has no CA of its own and forwards enrollments to a parent EST
    /// server (`[upstream]`, or `serve --upstream`).
    pub upstream: Option<UpstreamSettings>,
    /// The certificate store; `None` = SQLite in `DATA_DIR/estuary.db`.
    pub database: Option<estuary_store::DatabaseUrl>,
    /// Registration authorities allowed to forward requests to this server, by the CN of
    /// their certificate (`[registration_authorities.NAME]`).
    pub registration_authorities: BTreeMap<String, RaRule>,
}

/// The parent EST server an RA forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// The parent's `https://HOST[:PORT]/.well-known/est` URL.
    pub url: String,
    /// Trust anchor (PEM) for the parent's TLS certificate; relative paths are relative to
    /// the data directory. Required (checked when the file is read).
    pub ca: Option<PathBuf>,
    /// How this RA authenticates to the parent.
    pub credential: UpstreamCredential,
    /// Upstream label where the RA enrolls its own TLS server certificate.
    pub server_label: String,
    /// Upstream label where the RA enrolls its RA client certificate (EKU id-kp-cmcRA).
    pub ra_label: String,
    /// Deadline for one upstream request.
    pub timeout: Duration,
    /// How often the upstream CRL is fetched.
    pub crl_refresh: Duration,
}

/// How the RA authenticates to the parent EST server.
#[derive(Clone, PartialEq, Eq)]
pub enum UpstreamCredential {
    /// HTTP Basic (RFC 7617).
    Basic {
        /// User name at the parent.
        user: String,
        /// Its password (redacted in `Debug`).
        password: String,
    },
    /// A client certificate and its key (PEM files; relative to the data directory).
    Certificate {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
}

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamCredential::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            UpstreamCredential::Certificate { cert, key } => f
                .debug_struct("Certificate")
                .field("cert", cert)
                .field("key", key)
                .finish(),
        }
    }
}

/// What one registration authority may request for its clients.
#[derive(Debug, Clone)]
pub struct RaRule {
    /// The subject CNs it may request (whole CN); `None` = any subject. With a pattern, the
    /// subject may hold only CNs.
    pub subject: Option<regex_lite::Regex>,
    /// The subjectAltName entries it may request (`DNS:x`, `IP:x`, `email:x`, `URI:x`, whole
    /// entry); `None` = none when `subject` is a pattern, any when it is not.
    pub sans: Option<regex_lite::Regex>,
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
    /// `approval = "manual-first"`: a renewal authenticated by the certificate it renews (the
    /// same subject and subjectAltName) is issued without waiting.
    pub renewals_skip_approval: bool,
    /// `/serverkeygen` is offered.
    pub serverkeygen: bool,
    /// What subject a certificate-authenticated request may ask for.
    pub subject: SubjectRule,
    /// RA mode: the upstream label this label forwards to; `None` = the same name (the
    /// default label forwards to the upstream's default label).
    pub upstream_label: Option<String>,
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
    pub(crate) fn parse(key: &str, value: Option<&str>, dev: bool) -> Result<Self, ConfigError> {
        match value {
            None if dev => Ok(SubjectRule::Any),
            None | Some("same-as-client-cert") => Ok(SubjectRule::SameAsClientCert),
            Some("any") => Ok(SubjectRule::Any),
            Some(pattern) => {
                regex_lite::Regex::new(&format!("^(?:{})$", pattern.replace(CLIENT_CN, "x")))
                    .map_err(|e| {
                        ConfigError::invalid(key, format!(
                            "{pattern:?} is neither \"any\", \"same-as-client-cert\" nor a valid pattern: {e}"
                        ))
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
    /// Any registration authority (a certificate of this CA with EKU id-kp-cmcRA) forwarding
    /// for its clients (`ra`, `--dev` only).
    pub ra_any: bool,
    /// These registration authorities (`ra:NAME`: the CN of the RA's certificate, each with a
    /// `[registration_authorities.NAME]` rule).
    pub ra_named: Vec<String>,
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
            ra_any: false,
            ra_named: vec![],
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
        if self.ra_any {
            v.push("ra");
        }
        v
    }

    pub(crate) fn parse(
        items: &[String],
        key: &str,
        known: &KnownNames<'_>,
    ) -> Result<Self, ConfigError> {
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
            ra_any: false,
            ra_named: vec![],
        };
        for item in items {
            if let Some(scope) = item.strip_prefix("client-cert:") {
                match scope.split_once(':') {
                    Some(("label", name)) if name == DEFAULT_LABEL || known.labels.iter().any(|l| l == name) => {
                        r.client_cert_labels.push(name.into())
                    }
                    Some(("label", name)) => {
                        return Err(ConfigError::invalid(key, format!(
                            "no label {name:?} (labels: {DEFAULT_LABEL} for unlabeled requests, {})",
                            known.labels.join(", ")
                        )))
                    }
                    Some(("profile", name)) if known.profiles.iter().any(|p| p == name) => {
                        r.client_cert_profiles.push(name.into())
                    }
                    Some(("profile", name)) => {
                        return Err(ConfigError::invalid(key, format!(
                            "no profile {name:?} (profiles: {})",
                            known.profiles.join(", ")
                        )))
                    }
                    _ => {
                        return Err(ConfigError::invalid(key, format!(
                            "{item:?}: a client-cert rule is client-cert, client-cert:label:NAME or client-cert:profile:NAME"
                        )))
                    }
                }
                continue;
            }
            match item.split_once(':') {
                None if item == "basic" => r.basic_any = true,
                None if item == "client-cert" => r.client_cert = true,
                None if item == "bootstrap" => r.bootstrap_any = true,
                Some(("basic", name)) if users.iter().any(|u| u == name) => r.basic_users.push(name.into()),
                Some(("basic", name)) => {
                    return Err(ConfigError::invalid(key, format!("no user {name:?} in [[users]]")))
                }
                None if item == "ra" && known.dev => r.ra_any = true,
                None if item == "ra" => {
                    return Err(ConfigError::invalid(
                        key,
                        "\"ra\" (any registration authority of this CA) is only for --dev; \
                         name one: ra:NAME with a [registration_authorities.NAME] table",
                    ))
                }
                Some(("ra", name)) if known.registration_authorities.iter().any(|n| n == name) => {
                    r.ra_named.push(name.into())
                }
                Some(("ra", name)) => {
                    return Err(ConfigError::invalid(key, format!(
                        "no registration authority {name:?}: define it as [registration_authorities.{}] \
                         (defined: {})",
                        crate::config::template::toml_key(name),
                        if known.registration_authorities.is_empty() {
                            "none".to_string()
                        } else {
                            known.registration_authorities.join(", ")
                        }
                    )))
                }
                Some(("bootstrap", name)) if bootstrap.iter().any(|b| b == name) => {
                    r.bootstrap_named.push(name.into())
                }
                Some(("bootstrap", name)) => {
                    return Err(ConfigError::invalid(key, format!(
                        "no bootstrap CA named {name:?} (bootstrap CAs are named by file stem: {})",
                        if bootstrap.is_empty() { "none configured".to_string() } else { bootstrap.join(", ") }
                    )))
                }
                _ => {
                    return Err(ConfigError::invalid(key, format!(
                        "unknown auth method {item:?}; accepted: basic, basic:NAME, client-cert, \
                         client-cert:label:NAME, client-cert:profile:NAME, bootstrap, bootstrap:NAME, \
                         ra:NAME (ra in --dev)"
                    )))
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
        if self.ra_any {
            v.push("any registration authority certificate from this CA".into());
        }
        for n in &self.ra_named {
            v.push(format!("registration authority {n}"));
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
pub(crate) struct KnownNames<'a> {
    pub(crate) users: &'a [String],
    pub(crate) bootstrap: &'a [String],
    pub(crate) labels: &'a [String],
    pub(crate) profiles: &'a [String],
    pub(crate) registration_authorities: &'a [String],
    /// `--dev`: the bare `ra` rule is allowed.
    pub(crate) dev: bool,
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
    /// Most concurrent connections from one address (an IPv6 /64).
    pub max_connections_per_address: usize,
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
    /// Load balancers whose connections begin with a PROXY protocol header: the client's
    /// address in it counts as the connection's (rate limits, per-address cap, audit, logs).
    pub proxy_protocol_from: Vec<std::net::IpAddr>,
}

/// For messages: the validity in config syntax.
pub fn describe_validity(d: Duration) -> String {
    format_duration(d)
}

impl Settings {
    /// What each label allows, for `estuary config check`.
    pub fn describe_labels(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(upstream) = &self.upstream {
            out.push(format!(
                "registration authority: forwards every enrollment to {} (its profiles and approvals decide; serverkeygen is not forwarded)",
                upstream.url
            ));
        }
        let forwarding = self.upstream.is_some();
        let registration_authorities = &self.registration_authorities;
        let mut one = |name: &str, l: &LabelPolicy| {
            out.push(format!("{name}:"));
            out.push(format!("  auth:         {}", l.auth.describe()));
            for ra in &l.auth.ra_named {
                let rule = registration_authorities.get(ra);
                let shown = |re: Option<&regex_lite::Regex>, absent: &str| {
                    re.map_or(absent.to_string(), |re| {
                        estuary_ca::profile::pattern_text(re).to_string()
                    })
                };
                let subject = rule.and_then(|r| r.subject.as_ref());
                out.push(format!(
                    "    ra:{ra} may ask for: CN {}, subjectAltName {}",
                    shown(subject, "any (any subject)"),
                    shown(
                        rule.and_then(|r| r.sans.as_ref()),
                        if subject.is_some() { "none" } else { "any" }
                    )
                ));
            }
            out.push(format!("  subject:      {}", l.subject.describe()));
            if forwarding {
                out.push(format!(
                    "  upstream:     {}",
                    match l.upstream_label.as_deref() {
                        Some(label) if label != DEFAULT_LABEL =>
                            format!("label {label} at the parent"),
                        Some(_) => "the parent's unlabeled path".to_string(),
                        None if name.ends_with("(no label)") =>
                            "the parent's unlabeled path".to_string(),
                        None => "the label of the same name at the parent".to_string(),
                    }
                ));
                return;
            }
            out.push(format!("  profile:      {}", l.profile));
            out.push(format!(
                "  approval:     {}",
                match (l.manual_approval, l.renewals_skip_approval) {
                    (true, true) => "manual for a first enrollment, renewals automatic",
                    (true, false) => "manual",
                    _ => "automatic",
                }
            ));
            out.push(format!(
                "  serverkeygen: {}",
                if l.serverkeygen { "offered" } else { "no" }
            ));
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
