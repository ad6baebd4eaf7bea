//! Operational hardening end to end: revocation reasons that cannot freeze the CRL, connection
//! caps on the plain-HTTP listeners, file modes of the data directory, and the client's
//! tolerance of libest's response bodies.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

fn serial_of(dir: &Path, pem: &str) -> String {
    x509(dir, pem, &["-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_string()
}

/// Regression: `certs revoke --reason removeFromCRL` was accepted, and from then on every CRL
/// build failed, so no later revocation was published.
#[test]
fn a_bad_stored_revocation_reason_does_not_freeze_the_crl() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let server = Server::start(&data, &["--dev", "--crl-listen", "127.0.0.1:0"]);
    let auth = estuser();
    let mut serials = Vec::new();
    for name in ["old", "new"] {
        let csr = openssl_csr(dir, name, P256, &format!("/CN={name}"), &[]);
        let r = enroll(
            &server,
            &csr,
            "/.well-known/est/simpleenroll",
            None,
            Some(&auth),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        std::fs::write(
            dir.join(format!("{name}.pem")),
            pem_certs(&r.certificates()[..1]),
        )
        .unwrap();
        serials.push(serial_of(dir, &format!("{name}.pem")));
    }
    let data_arg = data.to_str().unwrap();

    // The CLI refuses removeFromCRL and says which names it takes.
    let out = estuary(
        &[
            "certs",
            "revoke",
            &serials[0],
            "--reason",
            "removeFromCRL",
            "--data-dir",
            data_arg,
        ],
        dir,
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("delta CRLs") && err.contains("keyCompromise") && err.contains("superseded"),
        "{err}"
    );

    // As an older binary did: the bad reason goes straight into the store.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use estuary_store::Store as _;
        let store = estuary_store::SqliteStore::open_existing(&data.join("estuary.db")).unwrap();
        let audit = estuary_store::AuditRecord {
            time: 1,
            request_id: "old-binary".into(),
            peer: "-".into(),
            requester: "cli:test".into(),
            auth_method: "cli".into(),
            label: String::new(),
            operation: "revoke".into(),
            outcome: estuary_store::Outcome::Revoked,
            status: 0,
            serial: None,
            reason: None,
        };
        store
            .revoke(&serials[0], Some("removeFromCRL".into()), audit)
            .await
            .unwrap();
    });
    server.wait_for_log("removeFromCRL", 1);

    // A later revocation is still published, in a CRL openssl verifies.
    let out = estuary(
        &[
            "certs",
            "revoke",
            &serials[1],
            "--reason",
            "superseded",
            "--data-dir",
            data_arg,
        ],
        dir,
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = server.ca_file();
    let ca = ca.to_str().unwrap();
    let started = Instant::now();
    let text = loop {
        let (status, body) = http_get(server.crl_port.unwrap(), "/crl");
        assert_eq!(status, 200);
        std::fs::write(dir.join("crl.der"), body).unwrap();
        let text = sh(
            &format!("openssl crl -inform DER -in crl.der -CAfile {ca} -verify -noout -text 2>&1"),
            dir,
        );
        if text.to_ascii_uppercase().contains(&serials[1]) {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the later revocation never reached the CRL:\n{text}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.contains("verify OK"), "{text}");
    assert!(text.to_ascii_uppercase().contains(&serials[0]), "{text}");
    assert!(text.contains("Superseded"), "{text}");
    assert!(!text.contains("Remove From CRL"), "{text}");
    assert!(server.log_text().contains("listed without a reasonCode"));
}

/// Whether the server closed `tcp` (EOF or reset) within `wait`, rather than holding it open.
fn closed_by_server(tcp: &mut std::net::TcpStream, wait: Duration) -> bool {
    use std::io::Read;
    tcp.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match tcp.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Regression: 1,100 idle TCP connections to the plain-HTTP CRL port used up the server's file
/// descriptors and EST enrollments timed out. Each plain listener now holds at most 256
/// connections and closes the rest at once.
#[test]
fn idle_connections_to_the_plain_listeners_are_capped_and_est_keeps_working() {
    const CAP: usize = 256;
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let server = Server::start(&data, &["--dev", "--crl-listen", "127.0.0.1:0"]);
    let csr = openssl_csr(dir, "d", P256, "/CN=during-flood", &[]);
    for port in [server.crl_port.unwrap(), server.admin_port] {
        let idle: Vec<std::net::TcpStream> = (0..CAP + 20)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        // One more, once the server has taken the others: closed at once, not held.
        std::thread::sleep(Duration::from_millis(300));
        let mut extra = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(
            closed_by_server(&mut extra, Duration::from_secs(3)),
            "port {port}: a connection over the cap was held open"
        );
        // EST still serves while the plain listener is full.
        enroll_with_estuser(&server, &csr);
        // Once the idle clients go, the listener serves again.
        drop(idle);
        let started = Instant::now();
        loop {
            use std::io::{Read, Write};
            let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // A connection still over the cap is closed: read errors and EOF mean "not yet".
            let _ = tcp.write_all(b"GET /crl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer);
            if answer.starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(server
        .log_text()
        .contains("plain-HTTP connection limit reached"));
}

/// A one-shot HTTPS server on 127.0.0.1 (certificate for `localhost` under a CA written to
/// `dir/fake-ca.pem`) that answers every request with `response` as is, as libest would.
fn fake_est_server(dir: &Path, response: Vec<u8>) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fake libest CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("fake-ca.pem"), ca_cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut chunk).unwrap();
            assert!(n > 0, "client closed before its request head");
            request.extend_from_slice(&chunk[..n]);
        }
        tls.write_all(&response).unwrap();
        tls.conn.send_close_notify();
        let _ = tls.flush();
    });
    (port, thread)
}

/// Regression: against libest, `estuary client csrattrs` failed with "body is not valid
/// base64: Invalid symbol 0": libest ends the body with a NUL counted in Content-Length.
#[test]
fn client_reads_csrattrs_that_end_with_a_nul_as_libest_sends_them() {
    let tmp = tempdir();
    let dir = tmp.path();
    let oids = [
        der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7"),
        der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
    ];
    let der = estuary_wire::csrattrs::encode_oids(&oids).unwrap();
    let mut body = estuary_wire::body::encode_base64_lines(&der).into_bytes();
    body.push(0);
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/csrattrs\r\nContent-Transfer-Encoding: base64\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    let (port, server) = fake_est_server(dir, response);
    let url = format!("https://localhost:{port}/.well-known/est");
    let out = estuary(
        &["client", "csrattrs", "--url", &url, "--ca", "fake-ca.pem"],
        dir,
        None,
    );
    server.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1.2.840.113549.1.9.7") && stdout.contains("ecdsa-with-SHA256"),
        "{stdout}"
    );
}

/// Regression: the data directory was 0755 and estuary.db, -wal, -shm 0644 after the first
/// start, so any local user could read the certificate store and audit trail.
#[test]
fn first_start_makes_the_data_directory_and_database_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    // The harness creates the directory the usual way (0755): Estuary tightens it.
    let server = Server::start(&data, &["--dev"]);
    let csr = openssl_csr(dir, "p", P256, "/CN=private", &[]);
    enroll_with_estuser(&server, &csr);
    assert_eq!(mode(&data), 0o700);
    for file in [
        "estuary.db",
        "estuary.db-wal",
        "estuary.db-shm",
        "ca-key.pem",
        "server-key.pem",
        "estuary.toml",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&data.join("ca-cert.pem")), 0o644);
}

/// Regression: a server's `Retry-After: 18446744073709551615` on a 202 crashed the agent
/// ("overflow when adding duration to instant"), and `Retry-After: 1000000000` stored a retry
/// time 31 years ahead in state.json, which held across restarts. A Retry-After is now believed
/// up to a day (and the policy's retry period: 4% of a day before the first certificate).
#[test]
fn a_huge_retry_after_neither_crashes_nor_parks_the_agent() {
    let tmp = tempdir();
    let dir = tmp.path();
    let config = dir.join("config.toml");
    for retry_after in ["18446744073709551615", "1000000000"] {
        let response = format!(
            "HTTP/1.1 202 Accepted\r\nRetry-After: {retry_after}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (port, server) = fake_est_server(dir, response.into_bytes());
        std::fs::write(
            &config,
            format!(
                r#"[provisioning.attestation]
method = "x509"
registration_id = "patient-device"
[provisioning.attestation.identity_cert]
method = "est"
common_name = "patient-device"
[cert_issuance.est]
trusted_certs = ["file://{ca}"]
[cert_issuance.est.auth]
username = "estuser"
password = "estpwd"
[cert_issuance.est.urls]
default = "https://localhost:{port}/.well-known/est"
[agent]
state_dir = "{state}"
"#,
                ca = dir.join("fake-ca.pem").display(),
                state = dir.join("state").display(),
            ),
        )
        .unwrap();
        let out = estuary(
            &["agent", "--config", config.to_str().unwrap(), "--once"],
            dir,
            None,
        );
        server.join().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !err.contains("panicked"),
            "Retry-After {retry_after}: {err}"
        );
        assert!(
            err.contains("manual approval"),
            "Retry-After {retry_after}: {err}"
        );
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("state/state.json")).unwrap()).unwrap();
        let next_retry = state["certs"]["device-id"]["next_retry"].as_i64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // 4% of a day: the policy's retry period before the first certificate.
        assert!(
            next_retry <= now + 3456 + 5,
            "Retry-After {retry_after}: next retry {} s ahead",
            next_retry - now
        );
        assert!(next_retry > now, "Retry-After {retry_after}");
    }
}

#[test]
fn tls_sessions_resume_for_devices_that_reconnect() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);
    let ca = server.ca_file();
    let ca = ca.to_str().unwrap();
    let port = server.port;
    // TLS 1.2: session tickets (RFC 5077) or ids, five reconnections resume.
    let out = sh(
        &format!(
            "openssl s_client -connect 127.0.0.1:{port} -tls1_2 -reconnect -CAfile {ca} < /dev/null 2>/dev/null | grep -c '^Reused' || true"
        ),
        dir,
    );
    assert!(
        out.trim().parse::<u32>().unwrap_or(0) >= 5,
        "TLS 1.2 resumptions: {out}"
    );
    // TLS 1.3: the ticket of one connection resumes the next (RFC 8446 §2.2).
    let request = "printf 'GET /.well-known/est/cacerts HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n'";
    sh(
        &format!(
            "{request} | openssl s_client -connect 127.0.0.1:{port} -tls1_3 -CAfile {ca} -sess_out sess.pem -ign_eof > /dev/null 2>&1"
        ),
        dir,
    );
    let out = sh(
        &format!(
            "{request} | openssl s_client -connect 127.0.0.1:{port} -tls1_3 -CAfile {ca} -sess_in sess.pem -ign_eof 2>/dev/null | grep -E '^(New|Reused)'"
        ),
        dir,
    );
    assert!(out.starts_with("Reused, TLSv1.3"), "{out}");
    // The server's cipher-suite order decides: openssl lists AES-256 first, and gets the
    // SHA-256 suites (a cheaper key schedule per handshake), in TLS 1.3 and in TLS 1.2.
    for (version, expected) in [
        ("-tls1_3", "TLS_AES_128_GCM_SHA256"),
        ("-tls1_2", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ] {
        let out = sh(
            &format!(
                "openssl s_client -connect 127.0.0.1:{port} {version} -CAfile {ca} < /dev/null 2>/dev/null | grep -m1 'Cipher is'"
            ),
            dir,
        );
        assert!(out.trim().ends_with(expected), "{version}: {out}");
    }
}
