//! The holes a security review found, each tried as an attacker would against the real
//! server: a device certificate asking for a CA certificate or another device's name, bootstrap
//! certificates that are revoked or not for client authentication, password guessing that
//! crowds out real logins, a CA certificate named like the server's CA, and a device filling
//! the approval queue.

use std::path::{Path, PathBuf};

use crate::harness::*;

/// A production data directory (not --dev) with Basic users `fleet` and `edgeadmin`.
fn production_data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    drop(Server::start(&data, &[]));
    for user in ["fleet", "edgeadmin"] {
        let out = estuary(
            &[
                "user",
                "add",
                user,
                "--data-dir",
                data.to_str().unwrap(),
                "--password-stdin",
            ],
            dir,
            Some(b"s3cret-s3cret\n"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    data
}

fn edit_config(data: &Path, edit: impl Fn(String) -> String) {
    let path = data.join("estuary.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let edited = edit(config.clone());
    assert_ne!(edited, config, "the edit changed nothing");
    std::fs::write(&path, edited).unwrap();
}

const EDGE_CA_CLOSED: &str = "[labels.edge-ca]\nprofile = \"edge-ca\"\nauth = []";

fn save(dir: &Path, name: &str, r: &HttpResponse) -> PathBuf {
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::write(dir.join(name), pem_certs(&r.certificates()[..1])).unwrap();
    dir.join(name)
}

#[test]
fn a_device_certificate_cannot_obtain_a_ca_certificate() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = production_data(dir);

    // The configuration the production guide used to recommend: every device that enrolled
    // anywhere could present its certificate on /edge-ca and get a CA certificate. It is
    // refused by `config check` and at start, naming the rule.
    edit_config(&data, |c| {
        c.replace(
            EDGE_CA_CLOSED,
            "[labels.edge-ca]\nprofile = \"edge-ca\"\nauth = [\"basic:edgeadmin\", \"client-cert\"]",
        )
    });
    for args in [
        vec!["config", "check", "--data-dir", data.to_str().unwrap()],
        vec![
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    ] {
        let out = estuary(&args, dir, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted it: {stderr}");
        assert!(
            stderr.contains("labels.edge-ca.auth") && stderr.contains("client-cert"),
            "{stderr}"
        );
    }

    // Scoped: only certificates issued under the est-id label (the IoT Edge EST identity),
    // and only for the Edge CA name of that identity.
    edit_config(&data, |c| {
        c.replace(
            "auth = [\"basic:edgeadmin\", \"client-cert\"]",
            "auth = [\"basic:edgeadmin\", \"client-cert:label:est-id\"]\nsubject = \"aziot-edge CA {client_cn}\"",
        )
        .replace(
            "[limits]",
            "[labels.est-id]\nprofile = \"device\"\nauth = [\"basic:fleet\"]\n\n[limits]",
        )
    });
    let server = Server::start(&data, &[]);
    let fleet = basic("fleet", "s3cret-s3cret");

    // A device certificate from the default label.
    let device_csr = openssl_csr(dir, "device", P256, "/CN=dev1", &[]);
    let r = enroll(
        &server,
        &device_csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&fleet),
    );
    save(dir, "device.pem", &r);
    let device = ClientIdentity {
        cert_pem: &dir.join("device.pem"),
        key_pem: &dir.join("device.key"),
    };
    let ca_csr = openssl_csr(
        dir,
        "edgeca",
        P256,
        "/CN=aziot-edge CA dev1",
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,digitalSignature,keyCertSign",
        ],
    );
    let r = enroll(
        &server,
        &ca_csr,
        "/.well-known/est/edge-ca/simpleenroll",
        Some(&device),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("does not accept"), "{}", r.text());
    assert!(
        r.text().contains("issued under label default"),
        "{}",
        r.text()
    );

    // The EST identity certificate of dev1 gets dev1's Edge CA, and no other name.
    let est_id_csr = openssl_csr(dir, "estid", P256, "/CN=dev1", &[]);
    let r = enroll(
        &server,
        &est_id_csr,
        "/.well-known/est/est-id/simpleenroll",
        None,
        Some(&fleet),
    );
    save(dir, "estid.pem", &r);
    let est_id = ClientIdentity {
        cert_pem: &dir.join("estid.pem"),
        key_pem: &dir.join("estid.key"),
    };
    let r = enroll(
        &server,
        &ca_csr,
        "/.well-known/est/edge-ca/simpleenroll",
        Some(&est_id),
        None,
    );
    let edge_ca = save(dir, "edge-ca.pem", &r);
    assert!(x509(dir, edge_ca.to_str().unwrap(), &["-text"]).contains("CA:TRUE"));
    let other_ca_csr = openssl_csr(
        dir,
        "otherca",
        P256,
        "/CN=aziot-edge CA dev2",
        &["-addext", "basicConstraints=critical,CA:TRUE,pathlen:0"],
    );
    let r = enroll(
        &server,
        &other_ca_csr,
        "/.well-known/est/edge-ca/simpleenroll",
        Some(&est_id),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("aziot-edge CA {client_cn}"),
        "{}",
        r.text()
    );
}

#[test]
fn a_certificate_authenticated_enrollment_keeps_the_subject_outside_dev() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = production_data(dir);
    let server = Server::start(&data, &[]);
    let fleet = basic("fleet", "s3cret-s3cret");
    let enroll_path = "/.well-known/est/simpleenroll";

    let csr = openssl_csr(dir, "dev1", P256, "/CN=dev1", &[]);
    let r = enroll(&server, &csr, enroll_path, None, Some(&fleet));
    save(dir, "dev1.pem", &r);
    let dev1 = ClientIdentity {
        cert_pem: &dir.join("dev1.pem"),
        key_pem: &dir.join("dev1.key"),
    };
    // A stolen device key cannot mint certificates for other devices (or SANs).
    let other = openssl_csr(dir, "dev2", P256, "/CN=dev2", &[]);
    let r = enroll(&server, &other, enroll_path, Some(&dev1), None);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("same-as-client-cert"), "{}", r.text());
    let with_san = openssl_csr(
        dir,
        "dev1san",
        P256,
        "/CN=dev1",
        &["-addext", "subjectAltName=DNS:est.example.com"],
    );
    let r = enroll(&server, &with_san, enroll_path, Some(&dev1), None);
    assert_eq!(r.status, 403, "{}", r.text());
    // IoT Edge's renewal: same subject, new key, certificate-authenticated simpleenroll.
    let renewal = openssl_csr(dir, "dev1b", P256, "/CN=dev1", &[]);
    let r = enroll(&server, &renewal, enroll_path, Some(&dev1), None);
    assert_eq!(r.status, 200, "{}", r.text());
    // IoT Edge sends Basic beside the certificate: the password may ask for what the
    // profile allows, so that flow keeps working.
    let r = enroll(&server, &other, enroll_path, Some(&dev1), Some(&fleet));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(server.log_text().contains("auth=\"basic\""));
}

#[test]
fn bootstrap_certificates_must_be_client_certificates_and_not_revoked() {
    require_tool("openssl");
    let tmp = tempdir();
    let dir = tmp.path();
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout mfg.key -out mfg.pem \
           -subj '/CN=Manufacturer CA' -days 30 \
           -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null && \
         for name in good revoked server ca; do \
           openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $name.key -out $name.csr -subj /CN=$name 2>/dev/null; \
         done && \
         printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=clientAuth\\n' > client.ext && \
         printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > server.ext && \
         printf 'basicConstraints=critical,CA:TRUE\\n' > ca.ext && \
         openssl x509 -req -in good.csr -CA mfg.pem -CAkey mfg.key -set_serial 1 -days 30 -extfile client.ext -out good.pem 2>/dev/null && \
         openssl x509 -req -in revoked.csr -CA mfg.pem -CAkey mfg.key -set_serial 2 -days 30 -extfile client.ext -out revoked.pem 2>/dev/null && \
         openssl x509 -req -in server.csr -CA mfg.pem -CAkey mfg.key -set_serial 3 -days 30 -extfile server.ext -out server.pem 2>/dev/null && \
         openssl x509 -req -in ca.csr -CA mfg.pem -CAkey mfg.key -set_serial 4 -days 30 -extfile ca.ext -out ca.pem 2>/dev/null",
        dir,
    );
    write_crl(dir, "mfg.crl", &[2], false);
    let data = production_data(dir);
    let mfg = dir.join("mfg.pem");
    let crl = dir.join("mfg.crl");
    edit_config(&data, |c| {
        c.replace(
            "bootstrap_ca = []",
            &format!("bootstrap_ca = [{:?}]", mfg.display()),
        )
        .replace(
            "bootstrap_crl = {  }",
            &format!("bootstrap_crl = {{ mfg = {:?} }}", crl.display()),
        )
    });
    let server = Server::start(&data, &[]);
    let attempt = |name: &str| {
        let csr = openssl_csr(
            dir,
            &format!("{name}-new"),
            P256,
            &format!("/CN={name}"),
            &[],
        );
        let identity = ClientIdentity {
            cert_pem: &dir.join(format!("{name}.pem")),
            key_pem: &dir.join(format!("{name}.key")),
        };
        enroll(
            &server,
            &csr,
            "/.well-known/est/simpleenroll",
            Some(&identity),
            None,
        )
    };
    assert_eq!(attempt("good").status, 200);
    for (name, why) in [
        ("revoked", "revoked"),
        ("server", "not for client authentication"),
        ("ca", "not for client authentication"),
    ] {
        let r = attempt(name);
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        assert!(
            server.refusal(&r).contains(why),
            "{name}: {}",
            server.refusal(&r)
        );
    }
    // A CRL past its nextUpdate: revocation cannot be checked, so the CA's certificates are
    // refused until a fresh one is loaded.
    write_crl(dir, "mfg.crl", &[2], true);
    server.sighup();
    server.wait_for_log("configuration reloaded", 1);
    let r = attempt("good");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        server.refusal(&r).contains("out of date"),
        "{}",
        server.refusal(&r)
    );
}

/// A CRL for the test's manufacturer CA (made with rcgen from the openssl-made CA).
fn write_crl(dir: &Path, name: &str, revoked: &[u8], expired: bool) {
    write_crl_for(dir, "mfg", name, revoked, expired)
}

fn write_crl_for(dir: &Path, ca: &str, name: &str, revoked: &[u8], expired: bool) {
    use std::time::Duration;
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join(format!("{ca}.key"))).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(dir.join(format!("{ca}.pem"))).unwrap(),
        key,
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (this_update, next_update) = if expired {
        (
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
    } else {
        (
            now - Duration::from_secs(60),
            now + Duration::from_secs(86400),
        )
    };
    let crl = rcgen::CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: rcgen::SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&[*s]),
                revocation_time: now - Duration::from_secs(30),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    std::fs::write(dir.join(name), crl.pem().unwrap()).unwrap();
}

#[test]
fn password_guessing_from_one_address_cannot_queue_up_argon2() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = production_data(dir);
    // Rate limits off, so that only the password gate decides.
    edit_config(&data, |c| {
        c.replace("per_address_per_minute = 600", "per_address_per_minute = 0")
    });
    let server = Server::start(&data, &[]);
    let csr = openssl_csr(dir, "guess", P256, "/CN=guess", &[]);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let (server, csr) = (&server, &csr);
                s.spawn(move || {
                    let wrong = basic("fleet", &format!("guess{i}"));
                    enroll(
                        server,
                        csr,
                        "/.well-known/est/simpleenroll",
                        None,
                        Some(&wrong),
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Concurrent guesses from one address: one at a time is checked, the others are refused
    // at once instead of waiting in the queue that real logins use.
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&401), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    // A real login is unaffected.
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&basic("fleet", "s3cret-s3cret")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_ca_certificate_may_not_be_named_like_the_servers_ca() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let server = Server::start(&data, &["--dev"]);
    let subject = x509(
        dir,
        data.join("ca-cert.pem").to_str().unwrap(),
        &["-noout", "-subject", "-nameopt", "compat"],
    );
    let subject = subject.trim().trim_start_matches("subject=").to_string();
    let csr = openssl_csr(
        dir,
        "fakeroot",
        P256,
        &subject,
        &["-addext", "basicConstraints=critical,CA:TRUE,pathlen:0"],
    );
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&estuser()),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("subject of this server's CA"),
        "{}",
        r.text()
    );
}

#[test]
fn one_key_cannot_fill_the_approval_queue_and_audit_events_can_be_pruned() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = production_data(dir);
    edit_config(&data, |c| {
        c.replace(
            "[limits]",
            "[labels.manual]\nprofile = \"device\"\nauth = [\"basic:fleet\"]\napproval = \"manual\"\n\n[limits]",
        )
    });
    let server = Server::start(&data, &[]);
    let fleet = basic("fleet", "s3cret-s3cret");
    let path = "/.well-known/est/manual/simpleenroll";
    let first = openssl_csr(dir, "queued", P256, "/CN=queued", &[]);
    assert_eq!(
        enroll(&server, &first, path, None, Some(&fleet)).status,
        202
    );
    // The same request again is the same pending request (RFC 7030 §4.2.3).
    assert_eq!(
        enroll(&server, &first, path, None, Some(&fleet)).status,
        202
    );
    // A new CSR for the same key (ECDSA signatures differ every time) is refused.
    run(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            "queued.key",
            "-subj",
            "/CN=queued",
            "-outform",
            "DER",
            "-out",
            "again.der",
        ],
        dir,
    );
    let again = std::fs::read(dir.join("again.der")).unwrap();
    assert_ne!(again, first);
    let r = enroll(&server, &again, path, None, Some(&fleet));
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        r.text().contains("already waiting for approval"),
        "{}",
        r.text()
    );

    // Audit retention: prune by hand; an empty retention refuses without --older-than.
    let data_arg = data.to_str().unwrap();
    let out = estuary(&["audit", "prune", "--data-dir", data_arg], dir, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted 0 audit event(s)"));
    drop(server);
    edit_config(&data, |c| {
        c.replace("retention = \"90d\"", "retention = \"\"")
    });
    let out = estuary(&["audit", "prune", "--data-dir", data_arg], dir, None);
    assert_eq!(out.status.code(), Some(2));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = estuary(
        &[
            "audit",
            "prune",
            "--data-dir",
            data_arg,
            "--older-than",
            "1s",
        ],
        dir,
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = estuary(
        &["audit", "list", "--data-dir", data_arg, "--since", "1d"],
        dir,
        None,
    );
    assert!(String::from_utf8_lossy(&listed.stdout).lines().count() <= 2);
}

/// The IoT Edge setup of docs/production.md §4, exactly as written there, with the agent's
/// bootstrap flow: the manufacturer certificate gets the EST identity on `est-id`, which then
/// gets the device identity on the default path and the Edge CA on `edge-ca`.
#[test]
fn the_production_guide_setup_serves_the_iot_edge_bootstrap_flow() {
    let tmp = tempdir();
    let dir = tmp.path();
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout mfg-acme.key -out mfg-acme.pem \
           -subj '/CN=Acme Manufacturing CA' -days 30 -addext basicConstraints=critical,CA:TRUE \
           -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null && \
         openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout boot.key -out boot.csr -subj /CN=myiotedgedevice 2>/dev/null && \
         printf 'basicConstraints=CA:FALSE\\nkeyUsage=critical,digitalSignature\\nextendedKeyUsage=clientAuth\\n' > boot.ext && \
         openssl x509 -req -in boot.csr -CA mfg-acme.pem -CAkey mfg-acme.key -set_serial 7 -days 30 -extfile boot.ext -out boot.pem 2>/dev/null",
        dir,
    );
    write_crl_for(dir, "mfg-acme", "mfg-acme.crl", &[99], false);
    let data = production_data(dir);
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/production.md"
    ))
    .unwrap();
    // The labels block of §4, verbatim.
    let start = guide.find("[default]                                # /.well-known/est: device identities (device-id)").expect("the guide's labels block");
    let end = start + guide[start..].find("```").unwrap();
    let labels = &guide[start..end];
    edit_config(&data, |c| {
        let without_labels = c
            .replace(
                "[default]\nprofile = \"device\"\napproval = \"auto\"\nserverkeygen = false\n",
                "",
            )
            .replace(
                EDGE_CA_CLOSED,
                "[labels.old-edge-ca]\nprofile = \"edge-ca\"\nauth = []",
            );
        without_labels
            .replace(
                "bootstrap_ca = []",
                &format!("bootstrap_ca = [{:?}]", dir.join("mfg-acme.pem").display()),
            )
            .replace(
                "bootstrap_crl = {  }",
                &format!(
                    "bootstrap_crl = {{ mfg-acme = {:?} }}",
                    dir.join("mfg-acme.crl").display()
                ),
            )
            .replace("[limits]", &format!("{labels}\n[limits]"))
    });
    let server = Server::start(&data, &[]);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[provisioning.attestation]
method = "x509"
registration_id = "myiotedgedevice"
[provisioning.attestation.identity_cert]
method = "est"
common_name = "myiotedgedevice"
[cert_issuance.est]
trusted_certs = ["file://{ca}"]
[cert_issuance.est.auth]
bootstrap_identity_cert = "file://{dir}/boot.pem"
bootstrap_identity_pk = "file://{dir}/boot.key"
[cert_issuance.est.urls]
default = "{url}"
est-id = "{url}/est-id"
[edge_ca]
method = "est"
url = "{url}/edge-ca"
[agent]
state_dir = "{dir}/state"
"#,
            ca = server.ca_file().display(),
            dir = dir.display(),
            url = server.url()
        ),
    )
    .unwrap();
    let out = estuary(
        &["agent", "--config", config.to_str().unwrap(), "--once"],
        dir,
        None,
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    let log = server.log_text();
    for (path, auth) in [
        ("/.well-known/est/est-id/simpleenroll", "bootstrap-cert"),
        ("/.well-known/est/simpleenroll", "client-cert"),
        ("/.well-known/est/edge-ca/simpleenroll", "client-cert"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(&format!("path=\"{path}\""))
                && l.contains(&format!("auth=\"{auth}\""))
                && l.contains("status=200")),
            "{path} by {auth}:\n{log}"
        );
    }
    let edge_ca = x509(dir, "state/aziot-edged-ca.cert.pem", &["-text"]);
    assert!(
        edge_ca.contains("CA:TRUE") && edge_ca.contains("aziot-edge CA myiotedgedevice"),
        "{edge_ca}"
    );
}
