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
