//! What gets issued: key types, subjects byte for byte, SANs, profiles, re-enrollment rules,
//! and the auth paths (expired client certificate plus Basic, bootstrap CA, new users).

use std::path::Path;

use der::{Decode, Encode};
use x509_cert::request::CertReq;
use x509_cert::Certificate;

use crate::harness::*;

fn issued(r: &HttpResponse) -> Certificate {
    assert_eq!(r.status, 200, "{}", r.text());
    let certs = r.certificates();
    assert_eq!(certs.len(), 1);
    Certificate::from_der(&certs[0]).unwrap()
}

fn save(dir: &Path, name: &str, cert: &Certificate) {
    std::fs::write(dir.join(name), pem_certs(&[cert.to_der().unwrap()])).unwrap();
}

#[test]
fn every_key_type_is_certified_and_the_subject_is_kept_byte_for_byte() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);
    let auth = estuser();
    let cases: [(&str, &[&str], &str); 5] = [
        ("p256", P256, "id-ecPublicKey"),
        (
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            "secp384r1",
        ),
        ("rsa2048", RSA2048, "(2048 bit)"),
        (
            "rsa4096",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
            "(4096 bit)",
        ),
        ("ed25519", &["-algorithm", "ED25519"], "ED25519"),
    ];
    for (name, key_args, expect) in cases {
        // Repeated RDNs (OU=A, OU=B) and a UTF-8 value must survive as sent.
        let subj = format!("/C=DE/O=Estuary Test/OU=A/OU=B/CN={name}-device-ü");
        let csr = openssl_csr(
            dir,
            name,
            key_args,
            &subj,
            &[
                "-utf8",
                "-addext",
                "subjectAltName=DNS:dev.example,IP:10.1.2.3",
            ],
        );
        let cert = issued(&enroll(
            &server,
            &csr,
            "/.well-known/est/simpleenroll",
            None,
            Some(&auth),
        ));
        let request = CertReq::from_der(&csr).unwrap();
        assert_eq!(
            cert.tbs_certificate.subject.to_der().unwrap(),
            request.info.subject.to_der().unwrap(),
            "{name}: subject must be copied byte for byte"
        );
        assert_eq!(
            cert.tbs_certificate.subject_public_key_info, request.info.public_key,
            "{name}"
        );
        let file = format!("{name}.pem");
        save(dir, &file, &cert);
        let text = x509(dir, &file, &["-text"]);
        assert!(text.contains(expect), "{name}: {text}");
        assert!(
            text.contains("OU = A, OU = B") || text.contains("OU=A, OU=B"),
            "{name}: {text}"
        );
        assert!(
            text.contains("DNS:dev.example, IP Address:10.1.2.3"),
            "{name}: {text}"
        );
        assert!(sh(
            &format!(
                "openssl verify -CAfile {} {file}",
                server.ca_file().display()
            ),
            dir
        )
        .contains("OK"));
    }

    // An RSA key below 2048 bits is refused by policy with a message that says so.
    let dsa = openssl_csr(
        dir,
        "dsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        "/CN=weak",
        &[],
    );
    let r = enroll(
        &server,
        &dsa,
        "/.well-known/est/simpleenroll",
        None,
        Some(&auth),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("at least 2048 bits"), "{}", r.text());
}

#[test]
fn profiles_decide_every_extension() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);
    let auth = estuser();
    // A device CSR that asks for odd things gets the device profile's extensions only.
    let csr = openssl_csr(
        dir,
        "odd",
        P256,
        "/CN=odd",
        &[
            "-addext",
            "extendedKeyUsage=serverAuth,codeSigning",
            "-addext",
            "keyUsage=nonRepudiation",
        ],
    );
    let cert = issued(&enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&auth),
    ));
    save(dir, "odd.pem", &cert);
    let text = x509(dir, "odd.pem", &["-text"]);
    assert!(
        text.contains("TLS Web Client Authentication") && !text.contains("Code Signing"),
        "{text}"
    );
    assert!(
        text.contains("Digital Signature") && !text.contains("Non Repudiation"),
        "{text}"
    );
    assert!(
        text.contains("CA:FALSE")
            && text.contains("Subject Key Identifier")
            && text.contains("Authority Key Identifier"),
        "{text}"
    );

    // The edge-ca label issues a CA even when the CSR does not ask (the label decides).
    let csr = openssl_csr(dir, "edge", P256, "/CN=edge", &[]);
    let cert = issued(&enroll(
        &server,
        &csr,
        "/.well-known/est/edge-ca/simpleenroll",
        None,
        Some(&auth),
    ));
    save(dir, "edge.pem", &cert);
    let text = x509(dir, "edge.pem", &["-text"]);
    assert!(
        text.contains("CA:TRUE, pathlen:0") && text.contains("Certificate Sign, CRL Sign"),
        "{text}"
    );
    // ... but refuses a deeper path length than it grants.
    let csr = openssl_csr(
        dir,
        "deep",
        P256,
        "/CN=deep",
        &["-addext", "basicConstraints=critical,CA:TRUE,pathlen:3"],
    );
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/edge-ca/simpleenroll",
        None,
        Some(&auth),
    );
    assert_eq!(r.status, 403);
    assert!(r.text().contains("pathlen:3"), "{}", r.text());
    // The device label refuses keyCertSign.
    let csr = openssl_csr(
        dir,
        "ku",
        P256,
        "/CN=ku",
        &["-addext", "keyUsage=critical,keyCertSign"],
    );
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/device/simpleenroll",
        None,
        Some(&auth),
    );
    assert_eq!(r.status, 403);
    assert!(r.text().contains("keyCertSign"), "{}", r.text());
}

#[test]
fn reenrollment_keeps_identity_and_an_expired_certificate_falls_back_to_basic() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev", "--validity", "8s"]);
    let auth = estuser();
    let csr = openssl_csr(
        dir,
        "dev",
        P256,
        "/CN=dev",
        &["-addext", "subjectAltName=DNS:dev.local"],
    );
    let cert = issued(&enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&auth),
    ));
    save(dir, "dev.pem", &cert);
    let dates = x509(
        dir,
        "dev.pem",
        &["-startdate", "-enddate", "-dateopt", "iso_8601"],
    );
    assert_eq!(crate::tutorial::validity_seconds(&dates), 8);
    let identity = ClientIdentity {
        cert_pem: &dir.join("dev.pem"),
        key_pem: &dir.join("dev.key"),
    };

    // simplereenroll: same subject and SAN with a new key works; another subject does not.
    let rekey = openssl_csr(
        dir,
        "rekey",
        P256,
        "/CN=dev",
        &["-addext", "subjectAltName=DNS:dev.local"],
    );
    issued(&enroll(
        &server,
        &rekey,
        "/.well-known/est/simplereenroll",
        Some(&identity),
        None,
    ));
    let other = openssl_csr(
        dir,
        "other",
        P256,
        "/CN=someone-else",
        &["-addext", "subjectAltName=DNS:dev.local"],
    );
    let r = enroll(
        &server,
        &other,
        "/.well-known/est/simplereenroll",
        Some(&identity),
        None,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("subject"), "{}", r.text());
    let nosan = openssl_csr(dir, "nosan", P256, "/CN=dev", &[]);
    let r = enroll(
        &server,
        &nosan,
        "/.well-known/est/simplereenroll",
        Some(&identity),
        None,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("subjectAltName"), "{}", r.text());

    // After expiry the certificate no longer authenticates, but the same TLS handshake with
    // Basic credentials does (the TLS layer does not reject the expired certificate).
    std::thread::sleep(std::time::Duration::from_secs(9));
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        Some(&identity),
        None,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        server.refusal(&r).contains("expired"),
        "{}",
        server.refusal(&r)
    );
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simplereenroll",
        Some(&identity),
        None,
    );
    assert_eq!(r.status, 401);
    issued(&enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        Some(&identity),
        Some(&auth),
    ));
}

#[test]
fn bootstrap_certificates_authenticate_a_first_enrollment_and_users_can_be_added() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    // A manufacturer CA and a device certificate it issued; and one from an unknown CA.
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout mfg.key -out mfg.pem \
           -subj '/CN=Manufacturer CA' -days 30 \
           -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null && \
         openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout boot.key -out boot.csr -subj /CN=serial-0001 2>/dev/null && \
         printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > boot.ext && \
         openssl x509 -req -in boot.csr -CA mfg.pem -CAkey mfg.key -CAcreateserial -days 30 -extfile boot.ext -out boot.pem 2>/dev/null && \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout rogue.key -out rogue.pem -subj /CN=rogue -days 30 2>/dev/null",
        dir,
    );
    // First start writes the config; add the bootstrap CA and a user, then restart.
    let server = Server::start(&data, &[]);
    drop(server);
    let config_path = data.join("estuary.toml");
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace(
            "bootstrap_ca = []",
            &format!("bootstrap_ca = [\"{}\"]", dir.join("mfg.pem").display()),
        )
        // Bootstrap certificates only where a label names them.
        .replace(
            "[default]\nprofile = \"device\"\n",
            "[default]\nprofile = \"device\"\nauth = [\"basic\", \"client-cert\", \"bootstrap\"]\n",
        )
        .replace("[limits]", "[labels.factory]\nprofile = \"device\"\nauth = [\"bootstrap:mfg\"]\n\n[labels.staff]\nprofile = \"device\"\nauth = [\"basic\"]\n\n[limits]")
        .replace(
            "csrattrs = []",
            "csrattrs = [\"1.2.840.113549.1.9.7\", \"1.2.840.10045.4.3.2\"]",
        );
    std::fs::write(&config_path, config).unwrap();
    add_user(dir, &data, "fleet", "s3cret-s3cret");
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(
        config.contains("name = \"fleet\"")
            && config.contains("$argon2id$")
            && !config.contains("s3cret-s3cret")
    );
    let server = Server::start(&data, &[]);

    let csr = openssl_csr(
        dir,
        "est-id",
        P256,
        "/CN=serial-0001",
        &["-addext", "extendedKeyUsage=clientAuth"],
    );
    let boot = ClientIdentity {
        cert_pem: &dir.join("boot.pem"),
        key_pem: &dir.join("boot.key"),
    };
    let cert = issued(&enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        Some(&boot),
        None,
    ));
    assert!(cert
        .tbs_certificate
        .subject
        .to_string()
        .contains("serial-0001"));
    server.wait_for_log("bootstrap-cert", 1);
    // A bootstrap certificate cannot re-enroll: that needs a certificate from this CA.
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simplereenroll",
        Some(&boot),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());

    // The TLS server certificate (issued by this CA, serverAuth only) is no client credential.
    let server_identity = ClientIdentity {
        cert_pem: &data.join("server-cert.pem"),
        key_pem: &data.join("server-key.pem"),
    };
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        Some(&server_identity),
        None,
    );
    assert_eq!(r.status, 401);
    assert!(
        server.refusal(&r).contains("not for client authentication"),
        "{}",
        server.refusal(&r)
    );

    let rogue = ClientIdentity {
        cert_pem: &dir.join("rogue.pem"),
        key_pem: &dir.join("rogue.key"),
    };
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        Some(&rogue),
        None,
    );
    assert_eq!(r.status, 401);
    assert!(
        server.refusal(&r).contains("not issued by a trusted CA"),
        "{}",
        server.refusal(&r)
    );

    // csrattrs: the configured OIDs as a base64 DER SEQUENCE (RFC 7030 §4.5.2).
    let r = server.get("/.well-known/est/csrattrs");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/csrattrs"));
    std::fs::write(dir.join("attrs.b64"), &r.body).unwrap();
    let parsed = sh("base64 -d attrs.b64 | openssl asn1parse -inform DER", dir);
    assert!(
        parsed.contains("challengePassword") && parsed.contains("ecdsa-with-SHA256"),
        "{parsed}"
    );

    // Label auth rules name bootstrap CAs by file stem: mfg.pem is "mfg".
    issued(&enroll(
        &server,
        &csr,
        "/.well-known/est/factory/simpleenroll",
        Some(&boot),
        None,
    ));
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/staff/simpleenroll",
        Some(&boot),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("does not accept bootstrap:"),
        "{}",
        r.text()
    );
    assert_eq!(
        enroll(
            &server,
            &csr,
            "/.well-known/est/factory/simpleenroll",
            None,
            Some(&basic("fleet", "s3cret-s3cret"))
        )
        .status,
        403
    );

    // The new user works; the dev user does not exist outside --dev.
    issued(&enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&basic("fleet", "s3cret-s3cret")),
    ));
    assert_eq!(
        enroll(
            &server,
            &csr,
            "/.well-known/est/simpleenroll",
            None,
            Some(&estuser())
        )
        .status,
        401
    );
    // Outside --dev the default profile is "device": a CA request is refused there.
    let ca_csr = openssl_csr(
        dir,
        "ca",
        P256,
        "/CN=ca",
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    assert_eq!(
        enroll(
            &server,
            &ca_csr,
            "/.well-known/est/simpleenroll",
            None,
            Some(&basic("fleet", "s3cret-s3cret"))
        )
        .status,
        403
    );
}
