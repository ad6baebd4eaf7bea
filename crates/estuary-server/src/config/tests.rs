//! Tests of the config module: the file format, the policy it resolves to, the template and
//! the reference in docs/configuration.md.
#![allow(clippy::unwrap_used)]

use super::template::{reference_table, update_reference, KEYS};
use super::*;
use std::path::Path;
use std::time::Duration;

#[test]
fn written_file_parses_back_to_the_same_settings() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = ConfigFile::new_default(true);
    cfg.users.push(UserConfig {
        name: "estuser".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
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
            upstream_label: None,
        },
    );
    cfg.audit.retention = "30d".into();
    let text = cfg.to_commented_toml();
    let back: ConfigFile = toml::from_str(&text)?;
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
fn the_annotated_example_in_the_repository_parses() -> Result<(), Box<dyn std::error::Error>> {
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
        cfg.resolve().map(|_| ()).map_err(|e| e.to_string())
    };
    // The hole: every device certificate could get a CA certificate.
    let err = with_edge_ca_auth(Some(vec!["basic:edgeadmin", "client-cert"]), false)
        .unwrap_err()
        .to_string();
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
    assert!(cfg
        .resolve()
        .unwrap_err()
        .to_string()
        .starts_with("default.auth"));
}

#[test]
fn scoped_client_cert_rules_and_subject_rules_are_checked() {
    let resolve = |auth: &str, subject: Option<&str>| {
        let mut cfg = ConfigFile::new_default(false);
        cfg.default.auth = Some(vec![auth.to_string()]);
        cfg.default.subject = subject.map(String::from);
        cfg.resolve()
            .map(|s| s.default_label)
            .map_err(|e| e.to_string())
    };
    assert!(resolve("client-cert:label:device", None).is_ok());
    assert!(resolve("client-cert:label:default", None).is_ok());
    assert!(resolve("client-cert:label:nowhere", None)
        .unwrap_err()
        .to_string()
        .contains("no label"));
    assert!(resolve("client-cert:profile:nothing", None)
        .unwrap_err()
        .to_string()
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
        .to_string()
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
    assert!(cfg
        .resolve()
        .unwrap_err()
        .to_string()
        .starts_with("labels.default"));
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
        .to_string()
        .starts_with("bootstrap_crl.other"));
    cfg.bootstrap_crl.clear();
    cfg.audit.retention = String::new();
    assert_eq!(cfg.resolve().unwrap().audit_retention, None);
    cfg.audit.retention = "soon".into();
    assert!(cfg
        .resolve()
        .unwrap_err()
        .to_string()
        .starts_with("audit.retention"));
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
        .unwrap_err()
        .to_string();
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
        let err = cfg.resolve().unwrap_err().to_string();
        assert!(err.starts_with(key), "{key}: {err}");
    }
}

/// A config with every optional key set, so that serializing it shows every key.
fn every_key_set() -> ConfigFile {
    let mut cfg = ConfigFile::new_default(false);
    cfg.users.push(UserConfig {
        name: "u".into(),
        password_hash: "h".into(),
    });
    cfg.default.auth = Some(vec![]);
    cfg.default.subject = Some("any".into());
    cfg.default.upstream_label = Some("up".into());
    cfg.ca_key_uri = Some(KeyUriText("pkcs11:object=ca".into()));
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
    let mut upstream = UpstreamConfig::new("https://parent.example/.well-known/est");
    upstream.ca = Some("parent-ca.pem".into());
    upstream.user = Some("ra".into());
    upstream.password = Some("secret".into());
    upstream.cert = Some("ra.pem".into());
    upstream.key = Some("ra-key.pem".into());
    cfg.upstream = Some(upstream);
    cfg.database.url = "postgres://estuary:secret@db.example/estuary".into();
    cfg.limits.proxy_protocol_from = vec!["10.0.0.5".into()];
    cfg.registration_authorities.insert(
        "ra.example.com".into(),
        RegistrationAuthorityConfig {
            subject: Some("sensor-[0-9]+".into()),
            sans: Some("DNS:sensor-[0-9]+".into()),
        },
    );
    cfg.bootstrap_ca.push("mfg.pem".into());
    cfg.bootstrap_crl.insert("mfg".into(), "mfg.crl".into());
    cfg
}

/// The keys of a serialized config, as (section, key) in the sections of [`KEYS`].
fn keys_by_section(cfg: &ConfigFile) -> std::collections::BTreeSet<(String, String)> {
    let value = toml::Value::try_from(cfg).unwrap();
    let mut out = std::collections::BTreeSet::new();
    let toml::Value::Table(top) = value else {
        panic!("not a table")
    };
    let mut top_keys: Vec<String> = Vec::new();
    let mut add = |section: &str, v: &toml::Value| {
        if let toml::Value::Table(t) = v {
            for k in t.keys() {
                out.insert((section.to_string(), k.clone()));
            }
        }
    };
    for (k, v) in &top {
        match (k.as_str(), v) {
            ("default", v) => add("label", v),
            ("labels" | "profiles" | "registration_authorities", toml::Value::Table(named)) => {
                let section = if k == "labels" { "label" } else { k };
                named.values().for_each(|v| add(section, v));
            }
            ("users", toml::Value::Array(users)) => users.iter().for_each(|v| add("users", v)),
            ("crl" | "rate_limits" | "audit" | "limits" | "upstream" | "database", v) => add(k, v),
            (key, _) => top_keys.push(key.to_string()),
        }
    }
    out.extend(top_keys.into_iter().map(|k| ("top".to_string(), k)));
    out
}

#[test]
fn the_file_format_and_the_key_reference_list_the_same_keys() {
    let in_file = keys_by_section(&every_key_set());
    let in_reference: std::collections::BTreeSet<(String, String)> = KEYS
        .iter()
        .map(|k| (k.section.to_string(), k.key.to_string()))
        .collect();
    assert!(in_file.len() > 40, "{in_file:?}");
    let undocumented: Vec<_> = in_file.difference(&in_reference).collect();
    let unknown: Vec<_> = in_reference.difference(&in_file).collect();
    assert!(
        undocumented.is_empty(),
        "keys the file accepts but template::KEYS does not document: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "keys template::KEYS documents but the file does not accept: {unknown:?}"
    );
}

#[test]
fn the_reference_in_docs_configuration_md_is_generated_from_keys() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let generated = update_reference(&doc).unwrap();
    if std::env::var_os("ESTUARY_BLESS_DOCS").is_some() {
        std::fs::write(path, &generated).unwrap();
        return;
    }
    assert!(
        generated == doc,
        "docs/configuration.md's key tables differ from config::template::KEYS; regenerate them with \
         ESTUARY_BLESS_DOCS=1 cargo test -p estuary-server the_reference_in_docs"
    );
    // Every section has its table in the document.
    for k in KEYS {
        assert!(
            doc.contains(&format!("<!-- keys:{} -->\n", k.section)),
            "docs/configuration.md has no <!-- keys:{} --> block",
            k.section
        );
        assert!(reference_table(k.section).contains(&format!("| `{}` |", k.key)));
    }
}

#[test]
fn the_template_mentions_every_key() {
    let text = ConfigFile::new_default(false).to_commented_toml();
    for k in KEYS {
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let found = text.match_indices(k.key).any(|(i, _)| {
            !word(text[..i].chars().next_back()) && !word(text[i + k.key.len()..].chars().next())
        });
        assert!(
            found,
            "the template does not mention {}.{}",
            k.section, k.key
        );
    }
    // And the template of a config with every key set parses back to it.
    let cfg = every_key_set();
    let back: ConfigFile = toml::from_str(&cfg.to_commented_toml()).unwrap();
    assert_eq!(back, cfg);
}

fn with_upstream(change: impl Fn(&mut UpstreamConfig)) -> Result<UpstreamSettings, String> {
    let mut u = UpstreamConfig::new("https://parent.example:8443/.well-known/est");
    u.ca = Some("parent-root.pem".into());
    u.user = Some("ra".into());
    u.password = Some("pw:with:colons".into());
    change(&mut u);
    let mut cfg = ConfigFile::new_default(false);
    cfg.upstream = Some(u);
    cfg.resolve()
        .map_err(|e| e.to_string())
        .map(|s| s.upstream.unwrap())
}

#[test]
fn upstream_parses_with_its_defaults() {
    let u = with_upstream(|_| {}).unwrap();
    assert_eq!(u.url, "https://parent.example:8443/.well-known/est");
    assert_eq!(
        u.credential,
        UpstreamCredential::Basic {
            user: "ra".into(),
            password: "pw:with:colons".into()
        }
    );
    assert!(!format!("{:?}", u.credential).contains("pw:with"));
    assert_eq!(u.server_label, "est-server");
    assert_eq!(u.ra_label, "est-ra");
    assert_eq!(u.timeout, Duration::from_secs(10));
    assert_eq!(u.crl_refresh, Duration::from_secs(300));
    assert_eq!(
        u.ca.as_deref(),
        Some(std::path::Path::new("parent-root.pem"))
    );
    assert_eq!(
        with_upstream(|u| u.ca = None).unwrap_err(),
        "upstream.ca: is required: the PEM file of the root certificate that the parent's TLS certificate chains to (for example the parent's ca-cert.pem)"
    );
    let u = with_upstream(|u| {
        u.user = None;
        u.password = None;
        u.cert = Some("ra.pem".into());
        u.key = Some("/etc/estuary/ra-key.pem".into());
        u.ca = Some("parent.pem".into());
        u.timeout = "60s".into();
        u.url = "https://parent.example/.well-known/est/".into();
    })
    .unwrap();
    assert_eq!(
        u.credential,
        UpstreamCredential::Certificate {
            cert: "ra.pem".into(),
            key: "/etc/estuary/ra-key.pem".into()
        }
    );
    assert_eq!(u.ca, Some("parent.pem".into()));
    assert_eq!(u.url, "https://parent.example/.well-known/est");
    // Parsed from text, with the label's upstream_label.
    let text = r#"
        [default]
        profile = "device"
        upstream_label = "sensors"
        [upstream]
        url = "https://parent.example/.well-known/est"
        ca = "parent-root.pem"
        cert = "ra.pem"
        key = "ra-key.pem"
        crl_refresh = "1h"
    "#;
    let s = ConfigFile::parse(text).unwrap().resolve().unwrap();
    assert_eq!(s.default_label.upstream_label.as_deref(), Some("sensors"));
    assert_eq!(s.upstream.unwrap().crl_refresh, Duration::from_secs(3600));
    assert!(ConfigFile::new_default(false)
        .resolve()
        .unwrap()
        .upstream
        .is_none());
}

#[test]
fn bad_upstream_tables_are_refused_with_the_key() {
    type Change = Box<dyn Fn(&mut UpstreamConfig)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|u| u.url = "http://parent.example/.well-known/est".into()),
            "upstream.url: \"http://parent.example/.well-known/est\" must be an https:// URL (the parent's /.well-known/est)",
        ),
        (
            Box::new(|u| u.url = "https:///.well-known/est".into()),
            "upstream.url: \"https:///.well-known/est\" is not https://HOST[:PORT]/.well-known/est",
        ),
        (
            Box::new(|u| u.cert = Some("c.pem".into())),
            "upstream: both user/password and cert/key are set; give exactly one credential",
        ),
        (
            Box::new(|u| u.password = None),
            "upstream.password: user is set without password",
        ),
        (
            Box::new(|u| u.user = None),
            "upstream.user: password is set without user",
        ),
        (
            Box::new(|u| {
                u.user = None;
                u.password = None;
                u.cert = Some("c.pem".into());
            }),
            "upstream.key: cert is set without key",
        ),
        (
            Box::new(|u| {
                u.user = None;
                u.password = None;
                u.key = Some("k.pem".into());
            }),
            "upstream.cert: key is set without cert",
        ),
        (
            Box::new(|u| {
                u.user = None;
                u.password = None;
            }),
            "upstream: no credential for the parent: set user and password (Basic), or cert and key",
        ),
        (
            Box::new(|u| u.user = Some("a:b".into())),
            "upstream.user: \"a:b\" is not a valid user name (non-empty, no ':')",
        ),
        (
            Box::new(|u| u.timeout = "61s".into()),
            "upstream.timeout: \"61s\" must be more than 0s and at most 60s",
        ),
        (
            Box::new(|u| u.timeout = "0s".into()),
            "upstream.timeout: \"0s\": a duration must be greater than zero",
        ),
        (
            Box::new(|u| u.crl_refresh = "0s".into()),
            "upstream.crl_refresh: \"0s\": a duration must be greater than zero",
        ),
        (
            Box::new(|u| u.ra_label = "simpleenroll".into()),
            "upstream.ra_label: \"simpleenroll\" is not a label (letters, digits, '-', '_' or '.', not an EST operation name)",
        ),
    ];
    for (change, expected) in cases {
        assert_eq!(with_upstream(change).unwrap_err(), expected);
    }
    assert!(with_upstream(|u| u.timeout = "soon".into())
        .unwrap_err()
        .starts_with("upstream.timeout: "));
    let mut cfg = ConfigFile::new_default(false);
    cfg.default.upstream_label = Some("a/b".into());
    assert_eq!(
        cfg.resolve().unwrap_err().to_string(),
        "default.upstream_label: \"a/b\" is not a label (letters, digits, '-', '_' or '.', not an EST operation name)"
    );
    let err =
        ConfigFile::parse("[upstream]\nurl = \"https://p/.well-known/est\"\nuser_name = \"x\"")
            .unwrap_err();
    assert!(err.to_string().contains("user_name"), "{err}");
    let err = ConfigFile::parse("[upstream]\nuser = \"x\"").unwrap_err();
    assert!(err.to_string().contains("url"), "{err}");
}

#[test]
fn registration_authorities_and_ra_rules() {
    let resolve = |dev: bool, auth: &[&str], ras: &[(&str, Option<&str>)]| {
        let mut cfg = ConfigFile::new_default(dev);
        cfg.default.auth = Some(auth.iter().map(|s| s.to_string()).collect());
        for (name, subject) in ras {
            cfg.registration_authorities.insert(
                name.to_string(),
                RegistrationAuthorityConfig {
                    subject: subject.map(String::from),
                    sans: None,
                },
            );
        }
        cfg.resolve().map_err(|e| e.to_string())
    };
    let s = resolve(
        false,
        &["ra:ra1.example"],
        &[("ra1.example", Some("sensor-[0-9]+"))],
    )
    .unwrap();
    assert_eq!(
        s.default_label.auth.ra_named,
        vec!["ra1.example".to_string()]
    );
    assert!(!s.default_label.auth.ra_any);
    let rule = &s.registration_authorities["ra1.example"];
    let re = rule.subject.as_ref().unwrap();
    assert!(re.is_match("sensor-12"));
    assert!(!re.is_match("xsensor-12"));
    assert!(s
        .default_label
        .auth
        .describe()
        .contains("registration authority ra1.example"));
    // No subject: any.
    let s = resolve(false, &["ra:r"], &[("r", None)]).unwrap();
    assert!(s.registration_authorities["r"].subject.is_none());
    assert_eq!(
        resolve(false, &["ra:ghost"], &[("r", None)]).unwrap_err(),
        "default.auth: no registration authority \"ghost\": define it as [registration_authorities.ghost] (defined: r)"
    );
    assert_eq!(
        resolve(false, &["ra:ra.example"], &[]).unwrap_err(),
        "default.auth: no registration authority \"ra.example\": define it as [registration_authorities.\"ra.example\"] (defined: none)"
    );
    assert_eq!(
        resolve(false, &["ra"], &[]).unwrap_err(),
        "default.auth: \"ra\" (any registration authority of this CA) is only for --dev; name one: ra:NAME with a [registration_authorities.NAME] table"
    );
    assert!(
        resolve(true, &["ra"], &[])
            .unwrap()
            .default_label
            .auth
            .ra_any
    );
    assert_eq!(
        resolve(false, &["ra:r"], &[("r", Some("{client_cn}-x"))]).unwrap_err(),
        "registration_authorities.r.subject: {client_cn} is for a label's subject; here the pattern is the CN the RA may request"
    );
    assert!(resolve(false, &["ra:r"], &[("r", Some("("))])
        .unwrap_err()
        .starts_with("registration_authorities.r.subject: "));
    // ra:NAME is a named identity: allowed where a label issues CA certificates.
    let mut cfg = ConfigFile::new_default(false);
    cfg.registration_authorities
        .insert("r".into(), RegistrationAuthorityConfig::default());
    if let Some(l) = cfg.labels.get_mut("edge-ca") {
        l.auth = Some(vec!["ra:r".into()]);
    }
    assert!(cfg.resolve().is_ok());
    // From text.
    let text = "[registration_authorities.\"ra.example.com\"]\nsubject = \"dev-.*\"\n[default]\nprofile = \"device\"\nauth = [\"ra:ra.example.com\", \"basic\"]\n";
    let s = ConfigFile::parse(text).unwrap().resolve().unwrap();
    assert!(s.default_label.auth.basic_any);
    assert_eq!(
        s.default_label.auth.ra_named,
        vec!["ra.example.com".to_string()]
    );
    assert!(ConfigFile::parse("[registration_authorities.r]\ncn = \"x\"").is_err());
}

#[test]
fn dev_adds_the_ra_labels_and_ra_to_the_default_label_and_nothing_otherwise() {
    let s = ConfigFile::new_default(true).resolve().unwrap();
    assert!(s.default_label.auth.ra_any);
    assert!(s.default_label.auth.basic_any && s.default_label.auth.client_cert);
    for (label, profile, eku) in [
        ("est-ra", "est-ra", "1.3.6.1.5.5.7.3.28"),
        ("est-server", "tls-server", "serverAuth"),
    ] {
        let l = &s.labels[label];
        let estuary_ca::ProfileSelection::Fixed(p) = &l.profile else {
            panic!("{label}: not a fixed profile")
        };
        assert_eq!(p.name, profile);
        // Basic provisions, the RA certificate renews, and an RA below passes provisioning up.
        assert!(
            l.auth.basic_any && l.auth.client_cert && l.auth.ra_any,
            "{label}"
        );
        assert!(matches!(l.subject, SubjectRule::Any));
        assert!(
            p.describe()
                .iter()
                .any(|d| d.contains(eku) || d.contains("cmcRA")),
            "{:?}",
            p.describe()
        );
    }
    let s = ConfigFile::new_default(false).resolve().unwrap();
    assert!(!s.default_label.auth.ra_any);
    assert!(!s.labels.contains_key("est-ra") && !s.labels.contains_key("est-server"));
    // A file's own label of that name wins in --dev.
    let mut cfg = ConfigFile::new_default(true);
    cfg.labels
        .insert("est-ra".into(), LabelConfig::with_profile("device"));
    let s = cfg.resolve().unwrap();
    let estuary_ca::ProfileSelection::Fixed(p) = &s.labels["est-ra"].profile else {
        panic!("not fixed")
    };
    assert_eq!(p.name, "device");
    // The new built-in profiles are selectable by name outside --dev.
    let mut cfg = ConfigFile::new_default(false);
    cfg.labels
        .insert("ra".into(), LabelConfig::with_profile("est-ra"));
    cfg.labels
        .insert("web".into(), LabelConfig::with_profile("tls-server"));
    assert!(cfg.resolve().is_ok());
}

#[test]
fn read_errors_are_typed_and_name_the_file() {
    let dir = std::env::temp_dir().join(format!("estuary-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.toml");
    let err = ConfigFile::read(&missing).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    assert!(err.to_string().starts_with(&missing.display().to_string()));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "colour = 1\n").unwrap();
    let err = ConfigFile::read(&bad).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }));
    assert!(err.to_string().contains("colour"), "{err}");
    assert!(matches!(
        ConfigFile::read(&dir).unwrap_err(),
        ConfigError::NotAFile { .. }
    ));
    let mut cfg = ConfigFile::new_default(false);
    cfg.validity = "10".into();
    let err = cfg.resolve().unwrap_err();
    assert_eq!(err.key(), Some("validity"));
    let err = err.in_file(&bad);
    assert_eq!(err.key(), Some("validity"));
    assert!(err
        .to_string()
        .starts_with(&format!("{}: validity: ", bad.display())));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cmc_ra_is_named_both_ways() {
    use estuary_ca::profile::{eku_from_name, ID_KP_CMC_RA};
    assert_eq!(eku_from_name("cmcRA").unwrap(), ID_KP_CMC_RA);
    assert_eq!(eku_from_name("1.3.6.1.5.5.7.3.28").unwrap(), ID_KP_CMC_RA);
    let described = estuary_ca::Profile::est_ra().describe().join("\n");
    assert!(
        described.contains("cmcRA") && described.contains("clientAuth"),
        "{described}"
    );
    let described = estuary_ca::Profile::tls_server().describe().join("\n");
    assert!(described.contains("serverAuth"), "{described}");
    // A configured profile may grant it by name.
    let mut cfg = ConfigFile::new_default(false);
    cfg.profiles.insert(
        "ra".into(),
        ProfileConfig {
            extended_key_usage: Some(vec!["clientAuth".into(), "cmcRA".into()]),
            ..Default::default()
        },
    );
    let s = cfg.resolve().unwrap();
    assert_eq!(s.profiles["ra"].extended_key_usage[1], ID_KP_CMC_RA);
}

#[test]
fn ca_key_uri_is_parsed_at_load_and_its_pin_value_never_shown() {
    let mut cfg = ConfigFile::new_default(false);
    cfg.ca_key_uri = Some(KeyUriText(
        "pkcs11:token=hsm;object=ca?module-path=/m.so&pin-value=s3cret".into(),
    ));
    // The template writes it, and it reads back to the same file.
    let text = cfg.to_commented_toml();
    let back: ConfigFile = toml::from_str(&text).unwrap();
    assert_eq!(back, cfg);
    let settings = back.resolve().unwrap();
    let uri = settings.ca_key_uri.as_ref().unwrap();
    assert_eq!(uri.object.as_deref(), Some("ca"));
    for shown in [format!("{cfg:?}"), format!("{settings:?}")] {
        assert!(
            shown.contains("pin-value=***") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    cfg.ca_key_uri = Some(KeyUriText("pkcs11:token=hsm?pin-value=s3cret".into()));
    let err = cfg.resolve().unwrap_err().to_string();
    assert!(
        err.contains("ca_key_uri") && err.contains("names no key"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn a_bad_database_url_names_the_key_and_hides_the_password() {
    let mut cfg = ConfigFile::new_default(false);
    cfg.database.url = "postgres://u:topsecret@db.example/estuary?sslmode=maybe".into();
    let e = cfg.resolve().unwrap_err().to_string();
    assert!(e.starts_with("database.url: "), "{e}");
    assert!(e.contains("sslmode=maybe"), "{e}");
    assert!(!e.contains("topsecret"), "{e}");
    cfg.database.url = "sqlite:/var/lib/estuary/estuary.db".into();
    assert!(cfg.resolve().unwrap().database.is_some());
    // The written file keeps the table (and so the URL) across `estuary user add` rewrites.
    assert!(cfg
        .to_commented_toml()
        .contains("[database]\nurl = \"sqlite:/var/lib/estuary/estuary.db\""));
}

/// A config file that does not parse: the parser quotes the line, and a database URL's
/// password in it is not shown.
#[test]
fn a_parse_error_on_the_database_line_does_not_show_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("estuary.toml");
    for line in [
        "[database]\nurl = \"postgres://estuary:S3cr/et@Pw@db:5432/estuary\" x\n",
        "[database]\nurl = \"postgres://estuary@db/estuary?sslmode=require&password=S3cret\" x\n",
        "[database]\nurl = \"host=db password=S3cret dbname=estuary\" x\n",
    ] {
        std::fs::write(&path, line).unwrap();
        let e = ConfigFile::read(&path).unwrap_err().to_string();
        assert!(
            e.contains("TOML parse error") || e.contains("expected"),
            "{e}"
        );
        assert!(!e.contains("S3cr"), "{e}");
    }
    assert_eq!(
        super::redact_passwords("a postgres://u:p@h/x and 'mysql://v:q@i' PASSWORD=z&k=1"),
        "a postgres://u:***@h/x and 'mysql://v:***@i' PASSWORD=***&k=1"
    );
}
