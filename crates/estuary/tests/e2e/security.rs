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
        add_user(dir, &data, user, "s3cret-s3cret");
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
    // A pattern constrains the CN; a subjectAltName may only be the client certificate's.
    let with_san = openssl_csr(
        dir,
        "sanca",
        P256,
        "/CN=aziot-edge CA dev1",
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "subjectAltName=DNS:est.example.com",
        ],
    );
    let r = enroll(
        &server,
        &with_san,
        "/.well-known/est/edge-ca/simpleenroll",
        Some(&est_id),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("subjectAltName"), "{}", r.text());
    // Nor another subject attribute, nor a CN the pattern cannot read (a BMPString).
    let with_org = openssl_csr(
        dir,
        "orgca",
        P256,
        "/O=Victim Corp/CN=aziot-edge CA dev1",
        &["-addext", "basicConstraints=critical,CA:TRUE,pathlen:0"],
    );
    let r = enroll(
        &server,
        &with_org,
        "/.well-known/est/edge-ca/simpleenroll",
        Some(&est_id),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("no subject attribute but the CN"),
        "{}",
        r.text()
    );
    std::fs::write(
        dir.join("bmp.cnf"),
        "[req]\ndistinguished_name=dn\nstring_mask=MASK:0x800\n[dn]\n",
    )
    .unwrap();
    run(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            "edgeca.key",
            "-config",
            "bmp.cnf",
            "-subj",
            "/CN=victim/CN=aziot-edge CA dev1",
            "-outform",
            "DER",
            "-out",
            "bmp.der",
        ],
        dir,
    );
    let bmp = std::fs::read(dir.join("bmp.der")).unwrap();
    let r = enroll(
        &server,
        &bmp,
        "/.well-known/est/edge-ca/simpleenroll",
        Some(&est_id),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("string type"), "{}", r.text());
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

    // One identity looping on a refusal, with a huge subject: at most ten audit events a
    // minute for it, each message cut short; the rest are summed.
    let huge: String = (0..300)
        .map(|i| format!("/OU={}{i:03}", "x".repeat(57)))
        .chain(std::iter::once("/CN=dev9".to_string()))
        .collect();
    let big = openssl_csr(dir, "big", P256, &huge, &[]);
    for _ in 0..15 {
        let r = enroll(&server, &big, enroll_path, Some(&dev1), None);
        assert_eq!(r.status, 403);
        assert!(r.body.len() < 1000, "{} bytes", r.body.len());
    }
    let data_arg = data.to_str().unwrap().to_string();
    let audit = || {
        let out = estuary(
            &["audit", "list", "--data-dir", &data_arg, "--json"],
            dir,
            None,
        );
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    let denied_dev1 = audit()
        .iter()
        .filter(|e| e["outcome"] == "denied" && e["requester"] == "cert:CN=dev1")
        .count();
    // (Written asynchronously: the last may still be on its way.)
    assert!((8..=10).contains(&denied_dev1), "{denied_dev1}");
    assert!(server.stop().success());
    assert!(audit().iter().any(|e| e["reason"]
        .as_str()
        .is_some_and(|r| r.contains("more refusals of authenticated identities"))));
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
        .replace(
            "[default]\nprofile = \"device\"\n",
            "[default]\nprofile = \"device\"\nauth = [\"bootstrap:mfg\"]\nsubject = \"{client_cn}\"\n",
        )
    });
    let server = Server::start(&data, &[]);
    let attempt = |server: &Server, name: &str| bootstrap_attempt(server, dir, name);
    assert_eq!(attempt(&server, "good").status, 200);
    // A label without `auth` does not take bootstrap certificates: adding a bootstrap CA
    // opens only the labels that name it.
    let csr = openssl_csr(dir, "good-device", P256, "/CN=good", &[]);
    let good = ClientIdentity {
        cert_pem: &dir.join("good.pem"),
        key_pem: &dir.join("good.key"),
    };
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/device/simpleenroll",
        Some(&good),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("does not accept bootstrap:"),
        "{}",
        r.text()
    );
    for (name, why) in [
        ("revoked", "revoked"),
        ("server", "not for client authentication"),
        ("ca", "not for client authentication"),
    ] {
        let r = attempt(&server, name);
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
    let r = attempt(&server, "good");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        server.refusal(&r).contains("out of date"),
        "{}",
        server.refusal(&r)
    );
    // The operator is told: a warning in the log, /readyz's body, a metric, `config check`.
    assert!(server
        .log_text()
        .contains("bootstrap CRL is past its nextUpdate"));
    let (status, body) = http_get(server.admin_port, "/readyz");
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("bootstrap CRL mfg is past its nextUpdate"),
        "{body}"
    );
    let (_, metrics) = http_get(server.admin_port, "/metrics");
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(
        metrics.contains("estuary_bootstrap_crl_next_update_seconds{ca=\"mfg\"} -"),
        "{metrics}"
    );
    let out = estuary(
        &["config", "check", "--data-dir", data.to_str().unwrap()],
        dir,
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("✘ bootstrap CRL mfg") && stdout.contains("past its nextUpdate"),
        "{stdout}"
    );

    // A CRL URL that does not answer does not stop the server from starting: that CA's
    // certificates are refused until the CRL arrives, fetched again every few minutes.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/mfg.crl", closed.local_addr().unwrap());
    drop(closed);
    edit_config(&data, |c| {
        c.replace(
            &format!("mfg = {:?}", crl.display()),
            &format!("mfg = {dead_url:?}"),
        )
    });
    drop(server);
    let server = Server::start(&data, &[]);
    let r = attempt(&server, "good");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        server.refusal(&r).contains("has not been loaded yet"),
        "{}",
        server.refusal(&r)
    );
    let (_, metrics) = http_get(server.admin_port, "/metrics");
    assert!(
        String::from_utf8_lossy(&metrics).contains("estuary_bootstrap_crl_loaded{ca=\"mfg\"} 0")
    );
    // Served over http, it is fetched and checked like a file.
    write_crl_numbered(dir, "served.crl", &[2], 5);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mfg.crl", listener.local_addr().unwrap());
    let served = dir.join("served.crl");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            // Read the whole request first: closing with unread bytes resets the connection.
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                request.push(byte[0]);
            }
            let crl_der = std::fs::read(&served).unwrap_or_default();
            let _ = stream.write_all(
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                    crl_der.len()
                )
                .as_bytes(),
            );
            let _ = stream.write_all(&crl_der);
        }
    });
    edit_config(&data, |c| c.replace(&dead_url, &url));
    server.sighup();
    server.wait_for_log("configuration reloaded", 2);
    let r = attempt(&server, "good");
    assert_eq!(r.status, 200, "{}", server.refusal(&r));
    assert_eq!(attempt(&server, "revoked").status, 401);
    // An older CRL (a lower cRLNumber, as a replay on the http path would be) does not
    // replace the newer one: the revoked certificate stays refused.
    write_crl_numbered(dir, "served.crl", &[], 4);
    server.sighup();
    server.wait_for_log("configuration reloaded", 3);
    assert_eq!(attempt(&server, "revoked").status, 401);
    assert!(server.log_text().contains("older than the one in force"));
}

/// A new certificate for `name` requested with the bootstrap certificate `name.pem`.
fn bootstrap_attempt(server: &Server, dir: &Path, name: &str) -> HttpResponse {
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
        server,
        &csr,
        "/.well-known/est/simpleenroll",
        Some(&identity),
        None,
    )
}

/// A CRL for the test's manufacturer CA (made with rcgen from the openssl-made CA).
fn write_crl(dir: &Path, name: &str, revoked: &[u8], expired: bool) {
    write_crl_for(dir, "mfg", name, revoked, expired)
}

fn write_crl_numbered(dir: &Path, name: &str, revoked: &[u8], number: u8) {
    write_crl_with(dir, "mfg", name, revoked, false, number)
}

fn write_crl_for(dir: &Path, ca: &str, name: &str, revoked: &[u8], expired: bool) {
    write_crl_with(dir, ca, name, revoked, expired, 1)
}

fn write_crl_with(dir: &Path, ca: &str, name: &str, revoked: &[u8], expired: bool, number: u8) {
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
        crl_number: rcgen::SerialNumber::from_slice(&[number]),
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
    // Names compare as RFC 5280 compares them: case and extra spaces make no difference.
    let shouted = subject.to_uppercase().replace(' ', "  ");
    let csr = openssl_csr(
        dir,
        "fakeroot2",
        P256,
        &shouted,
        &["-addext", "basicConstraints=critical,CA:TRUE,pathlen:0"],
    );
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&estuser()),
    );
    assert_eq!(r.status, 403, "{shouted}: {}", r.text());
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
    // `estuary check` requests as IoT Edge would: est-id with the manufacturer certificate,
    // then device-id and the Edge CA with that est-id certificate.
    let out = estuary(&["check", "--config", config.to_str().unwrap()], dir, None);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("EST identity certificate (est-id) obtained above"));
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

/// A label that takes any certificate of this CA (here `device`) re-issues certificates for
/// their own subject. That must not turn a certificate from one label into one that a
/// `client-cert:label:device` rule accepts: a certificate keeps the label its line began at.
#[test]
fn reissuing_under_another_label_does_not_launder_a_certificate() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = production_data(dir);
    edit_config(&data, |c| {
        c.replace(
            "[labels.device]\nprofile = \"device\"\n",
            "[labels.device]\nprofile = \"device\"\nauth = [\"basic:edgeadmin\", \"client-cert\"]\n",
        )
        .replace(
            EDGE_CA_CLOSED,
            "[labels.edge-ca]\nprofile = \"edge-ca\"\nauth = [\"client-cert:label:device\"]\nsubject = \"aziot-edge CA {client_cn}\"",
        )
        .replace(
            "[limits]",
            "[labels.sensors]\nprofile = \"device\"\nauth = [\"basic:fleet\"]\n\n\
             [labels.any-name]\nprofile = \"device\"\nauth = [\"client-cert:label:device\"]\nsubject = \"any\"\n\n[limits]",
        )
    });
    let server = Server::start(&data, &[]);
    let fleet = basic("fleet", "s3cret-s3cret");
    let edge_csr = |name: &str, cn: &str| {
        openssl_csr(
            dir,
            name,
            P256,
            &format!("/CN=aziot-edge CA {cn}"),
            &["-addext", "basicConstraints=critical,CA:TRUE,pathlen:0"],
        )
    };

    // A sensor certificate, re-issued (same subject) under `device` by presenting it there.
    let csr = openssl_csr(dir, "sensor", P256, "/CN=sensor-17", &[]);
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/sensors/simpleenroll",
        None,
        Some(&fleet),
    );
    save(dir, "sensor.pem", &r);
    let sensor = ClientIdentity {
        cert_pem: &dir.join("sensor.pem"),
        key_pem: &dir.join("sensor.key"),
    };
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/device/simpleenroll",
        Some(&sensor),
        None,
    );
    save(dir, "laundered.pem", &r);
    let laundered = ClientIdentity {
        cert_pem: &dir.join("laundered.pem"),
        key_pem: &dir.join("sensor.key"),
    };
    let r = enroll(
        &server,
        &edge_csr("e1", "sensor-17"),
        "/.well-known/est/edge-ca/simpleenroll",
        Some(&laundered),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("first issued under label sensors"),
        "{}",
        r.text()
    );

    // A certificate whose line began at `device` keeps working through its renewals.
    let admin = basic("edgeadmin", "s3cret-s3cret");
    let csr = openssl_csr(dir, "gw", P256, "/CN=gw-1", &[]);
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/device/simpleenroll",
        None,
        Some(&admin),
    );
    save(dir, "gw.pem", &r);
    let gw = ClientIdentity {
        cert_pem: &dir.join("gw.pem"),
        key_pem: &dir.join("gw.key"),
    };
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/device/simpleenroll",
        Some(&gw),
        None,
    );
    save(dir, "gw2.pem", &r);
    let renewed = ClientIdentity {
        cert_pem: &dir.join("gw2.pem"),
        key_pem: &dir.join("gw.key"),
    };
    let r = enroll(
        &server,
        &edge_csr("e2", "gw-1"),
        "/.well-known/est/edge-ca/simpleenroll",
        Some(&renewed),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // A certificate for another name is a new line that begins where it was issued: a
    // `device` certificate asking `any-name` for CN=victim gets one whose origin is `any-name`,
    // which edge-ca does not accept.
    let victim_csr = openssl_csr(dir, "victim", P256, "/CN=victim", &[]);
    let r = enroll(
        &server,
        &victim_csr,
        "/.well-known/est/any-name/simpleenroll",
        Some(&renewed),
        None,
    );
    save(dir, "victim.pem", &r);
    let victim = ClientIdentity {
        cert_pem: &dir.join("victim.pem"),
        key_pem: &dir.join("victim.key"),
    };
    let r = enroll(
        &server,
        &edge_csr("e3", "victim"),
        "/.well-known/est/edge-ca/simpleenroll",
        Some(&victim),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("issued under label any-name"),
        "{}",
        r.text()
    );
}

/// Under manual approval, a renewal that repeats the first CSR byte for byte (an RSA key kept
/// across renewals: its signatures are deterministic) is a new request for the operator, not
/// the old answer again (which would be an expired certificate) nor a refusal.
#[test]
fn a_renewal_that_repeats_an_approved_csr_is_a_new_request() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = production_data(dir);
    edit_config(&data, |c| {
        c.replace(
            "[limits]",
            "[labels.manual]\nprofile = \"short\"\nauth = [\"basic:fleet\", \"client-cert:label:manual\"]\napproval = \"manual\"\n\n\
             [profiles.short]\nvalidity = \"6s\"\n\n[limits]",
        )
    });
    let server = Server::start(&data, &[]);
    let fleet = basic("fleet", "s3cret-s3cret");
    let path = "/.well-known/est/manual/simpleenroll";
    let data_arg = data.to_str().unwrap().to_string();
    let approve = |r: &HttpResponse| {
        let id = r
            .header("x-estuary-approval-request")
            .expect("the waiting request's id")
            .to_string();
        estuary_ok(&["requests", "approve", &id, "--data-dir", &data_arg], dir);
        id
    };
    let csr = openssl_csr(dir, "rsa", RSA2048, "/CN=sensor-7", &[]);
    let r = enroll(&server, &csr, path, None, Some(&fleet));
    assert_eq!(r.status, 202, "{}", r.text());
    let first = approve(&r);
    let r = enroll(&server, &csr, path, None, Some(&fleet));
    save(dir, "sensor.pem", &r);
    // A client that missed the answer gets it again.
    assert_eq!(enroll(&server, &csr, path, None, Some(&fleet)).status, 200);

    // The renewal, authenticated by that certificate, with the same CSR: a new request.
    let sensor = ClientIdentity {
        cert_pem: &dir.join("sensor.pem"),
        key_pem: &dir.join("rsa.key"),
    };
    let r = enroll(&server, &csr, path, Some(&sensor), None);
    assert_eq!(r.status, 202, "{}", r.text());
    let second = approve(&r);
    assert_ne!(first, second);
    let r = enroll(&server, &csr, path, Some(&sensor), None);
    assert_eq!(r.status, 200, "{}", r.text());

    // Once the certificate has expired, the same CSR over Basic is a new request too, not the
    // expired certificate again.
    std::thread::sleep(std::time::Duration::from_secs(7));
    let r = enroll(&server, &csr, path, None, Some(&fleet));
    assert_eq!(r.status, 202, "{}", r.text());
    let third = r.header("x-estuary-approval-request").unwrap().to_string();
    assert!(third != first && third != second);
}
