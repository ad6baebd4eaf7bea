//! An emulation of the Azure IoT Edge EST client exactly as `shared/docs/iot-edge-client.md`
//! describes it: Basic sent up front on both requests, `cacerts` and `simpleenroll` run
//! concurrently, the CSR as 64-column base64 with a final newline, the exact content-type
//! check, the issued certificate first; renewal as a second `simpleenroll` authenticated by
//! the issued certificate; an Edge CA certificate that signs a leaf.

use std::path::Path;

use crate::harness::*;

/// What IoT Edge's `aziot-certd` sends and checks for one issuance.
pub(crate) fn iot_edge_issue(
    server: &Server,
    csr_der: &[u8],
    client: Option<&ClientIdentity<'_>>,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let auth = estuser();
    let body = b64_lines(csr_der);
    assert!(body.ends_with('\n') && body.lines().all(|l| l.len() <= 64));
    let ca = server.ca_file();
    let (cacerts, enroll) = std::thread::scope(|s| {
        let cacerts = s.spawn(|| {
            https(
                server.port,
                "localhost",
                &ca,
                client,
                "GET",
                "/.well-known/est/cacerts",
                &[("Authorization", &auth)],
                b"",
            )
        });
        let enroll = s.spawn(|| {
            https(
                server.port,
                "localhost",
                &ca,
                client,
                "POST",
                "/.well-known/est/simpleenroll",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/pkcs10"),
                    ("content-transfer-encoding", "base64"),
                ],
                body.as_bytes(),
            )
        });
        (cacerts.join().unwrap(), enroll.join().unwrap())
    });
    for r in [&cacerts, &enroll] {
        assert_eq!(r.status, 200, "{}", r.text());
        let ct = r.header("content-type").expect("Content-Type present");
        assert!(
            estuary_wire::media::iot_edge_accepts_pkcs7(ct),
            "IoT Edge rejects Content-Type {ct:?}"
        );
    }
    let issued = enroll.certificates();
    assert_eq!(
        issued.len(),
        1,
        "an enrollment response carries the issued certificate only"
    );
    (issued[0].clone(), cacerts.certificates())
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn public_key_of_cert(dir: &Path, cert: &str) -> String {
    x509(dir, cert, &["-pubkey"])
}

fn public_key_of_key(dir: &Path, key: &str) -> String {
    String::from_utf8(run("openssl", &["pkey", "-in", key, "-pubout"], dir)).unwrap()
}

#[test]
fn iot_edge_enrolls_renews_and_gets_an_edge_ca() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);

    // device-id: RSA-2048, CN only, no extensions.
    let csr = openssl_csr(dir, "device", RSA2048, "/CN=myiotedgedevice", &[]);
    let (leaf, ca_chain) = iot_edge_issue(&server, &csr, None);
    write(dir, "device.pem", &pem_certs(std::slice::from_ref(&leaf)));
    write(dir, "root.pem", &pem_certs(&ca_chain));
    assert!(sh("openssl verify -CAfile root.pem device.pem", dir).contains("OK"));
    assert_eq!(
        public_key_of_cert(dir, "device.pem"),
        public_key_of_key(dir, "device.key")
    );
    assert!(x509(dir, "device.pem", &["-subject"]).contains("CN = myiotedgedevice"));

    // Renewal, same key: simpleenroll with the issued certificate as TLS client certificate
    // (plus Basic, as IoT Edge sends it). The CSR's subject is kept.
    let identity = ClientIdentity {
        cert_pem: &dir.join("device.pem"),
        key_pem: &dir.join("device.key"),
    };
    let (renewed, _) = iot_edge_issue(&server, &csr, Some(&identity));
    assert_ne!(renewed, leaf, "a renewal is a new certificate");
    write(dir, "renewed.pem", &pem_certs(&[renewed]));
    assert_eq!(
        public_key_of_cert(dir, "renewed.pem"),
        public_key_of_key(dir, "device.key")
    );
    assert!(x509(dir, "renewed.pem", &["-subject"]).contains("CN = myiotedgedevice"));

    // Renewal with a new key (rotate_key = true).
    let rotated_csr = openssl_csr(dir, "rotated", RSA2048, "/CN=myiotedgedevice", &[]);
    let (rotated, _) = iot_edge_issue(&server, &rotated_csr, Some(&identity));
    write(dir, "rotated.pem", &pem_certs(&[rotated]));
    assert_eq!(
        public_key_of_cert(dir, "rotated.pem"),
        public_key_of_key(dir, "rotated.key")
    );

    // The log shows the renewals were authenticated by the client certificate.
    assert!(server.log_text().contains("client-cert"));

    // Edge CA: CA:TRUE pathlen:0 and keyUsage, both critical, requested in the CSR.
    let edge_csr = openssl_csr(
        dir,
        "edgeca",
        RSA2048,
        "/CN=aziot-edge CA myiotedgedevice",
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,digitalSignature,keyCertSign",
        ],
    );
    let (edge_ca, _) = iot_edge_issue(&server, &edge_csr, None);
    write(dir, "edgeca.pem", &pem_certs(&[edge_ca]));
    let text = x509(dir, "edgeca.pem", &["-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign"), "{text}");
    assert!(text.contains("Subject Key Identifier"), "{text}");
    // The Edge CA signs a module certificate that openssl accepts.
    sh(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout module.key \
           -subj /CN=module -out module.csr 2>/dev/null && \
         openssl x509 -req -in module.csr -CA edgeca.pem -CAkey edgeca.key -CAcreateserial \
           -days 1 -out module.pem 2>/dev/null",
        dir,
    );
    let verified = sh(
        "openssl verify -CAfile root.pem -untrusted edgeca.pem module.pem",
        dir,
    );
    assert!(verified.contains("module.pem: OK"), "{verified}");
}

#[test]
fn tls_12_and_13_both_serve_and_the_chain_is_server_then_root() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);
    for version in ["-tls1_2", "-tls1_3"] {
        let out = sh(
            &format!(
                "openssl s_client {version} -showcerts -connect 127.0.0.1:{} -CAfile {} < /dev/null 2>/dev/null",
                server.port,
                server.ca_file().display()
            ),
            dir,
        );
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "{version}: {out}"
        );
        assert_eq!(
            out.matches("-----BEGIN CERTIFICATE-----").count(),
            2,
            "{version}"
        );
    }
    // The server certificate names localhost, 127.0.0.1 and ::1.
    sh(
        &format!(
            "openssl s_client -connect 127.0.0.1:{} < /dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName > san.txt",
            server.port
        ),
        dir,
    );
    let san = std::fs::read_to_string(dir.join("san.txt")).unwrap();
    assert!(
        san.contains("DNS:localhost")
            && san.contains("IP Address:127.0.0.1")
            && san.contains("IP Address:0:0:0:0:0:0:0:1"),
        "{san}"
    );
}
