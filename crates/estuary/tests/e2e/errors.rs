//! Every error with its status code and a text/plain message; the server keeps serving; idle
//! connections do not starve other clients.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

fn post(server: &Server, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    https(
        server.port,
        "localhost",
        &server.ca_file(),
        None,
        "POST",
        path,
        headers,
        body,
    )
}

fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    https(
        server.port,
        "localhost",
        &server.ca_file(),
        None,
        "GET",
        path,
        headers,
        b"",
    )
}

fn assert_error(r: &HttpResponse, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    assert!(
        r.text().contains(needle),
        "expected {needle:?} in {:?}",
        r.text()
    );
    assert!(r.text().contains("request id"), "{}", r.text());
}

#[test]
fn every_error_has_its_status_and_a_clear_message() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);
    let auth = estuser();
    let pkcs10 = ("Content-Type", "application/pkcs10");
    let good_csr = openssl_csr(dir, "good", P256, "/CN=good", &[]);
    let enroll = "/.well-known/est/simpleenroll";

    // 400: bad base64, not a CSR, bad CSR signature.
    let r = post(
        &server,
        enroll,
        &[("Authorization", &auth), pkcs10],
        b"@@@not base64@@@",
    );
    assert_error(&r, 400, "base64");
    let r = post(
        &server,
        enroll,
        &[("Authorization", &auth), pkcs10],
        b64(b"hello world").as_bytes(),
    );
    assert_error(&r, 400, "PKCS#10");
    let mut tampered = good_csr.clone();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x55;
    let r = post(
        &server,
        enroll,
        &[("Authorization", &auth), pkcs10],
        b64(&tampered).as_bytes(),
    );
    assert_error(&r, 400, "signature");

    // 400: an empty subject without a subjectAltName.
    let empty = openssl_csr(dir, "empty", P256, "/", &[]);
    let r = post(
        &server,
        enroll,
        &[("Authorization", &auth), pkcs10],
        b64(&empty).as_bytes(),
    );
    assert_error(&r, 400, "empty subject");

    // 401: none, wrong password, not Basic; always with the Basic challenge.
    for headers in [
        vec![pkcs10],
        vec![
            ("Authorization", basic("estuser", "wrong").leak() as &str),
            pkcs10,
        ],
        vec![("Authorization", "Bearer abc"), pkcs10],
    ] {
        let r = post(&server, enroll, &headers, b64(&good_csr).as_bytes());
        // An empty body (Bouncy Castle's client closes a 401 without reading it); the reason
        // is in the server's log line.
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(r.body.is_empty(), "{:?}", r.text());
        assert_eq!(r.header("content-length"), Some("0"));
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"estuary\"")
        );
        // The log line names who the request claimed to be, as the audit trail does.
        let line = server.refusal(&r);
        if headers.len() == 2 && headers[0].1.starts_with("Basic") {
            assert!(
                line.contains("auth=\"none\"") && line.contains("identity=\"basic:estuser\""),
                "{line}"
            );
        }
    }

    // 403: simplereenroll without the certificate being renewed; a profile refusal.
    let r = post(
        &server,
        "/.well-known/est/simplereenroll",
        &[("Authorization", &auth), pkcs10],
        b64(&good_csr).as_bytes(),
    );
    assert_error(&r, 403, "simplereenroll requires");
    let ca_csr = openssl_csr(
        dir,
        "ca",
        P256,
        "/CN=wants-ca",
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    let r = post(
        &server,
        "/.well-known/est/device/simpleenroll",
        &[("Authorization", &auth), pkcs10],
        b64(&ca_csr).as_bytes(),
    );
    assert_error(&r, 403, "profile \"device\"");

    // 404: unknown path, unknown label.
    assert_error(&get(&server, "/nothing", &[]), 404, "no such EST endpoint");
    assert_error(
        &get(&server, "/.well-known/est/nosuchlabel/cacerts", &[]),
        404,
        "unknown EST label",
    );

    // 405: wrong method, with Allow.
    let r = get(&server, enroll, &[("Authorization", &auth)]);
    assert_error(&r, 405, "method not allowed");
    assert_eq!(r.header("allow"), Some("POST"));

    // 413: body over the limit.
    let big = vec![b'A'; 70 * 1024];
    assert_error(
        &post(&server, enroll, &[("Authorization", &auth), pkcs10], &big),
        413,
        "larger than",
    );

    // 415: wrong content type.
    let r = post(
        &server,
        enroll,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b64(&good_csr).as_bytes(),
    );
    assert_error(&r, 415, "application/pkcs10");

    // 501: fullcmc, serverkeygen.
    assert_error(
        &post(
            &server,
            "/.well-known/est/fullcmc",
            &[("Authorization", &auth)],
            b"x",
        ),
        501,
        "fullcmc",
    );
    assert_error(
        &post(
            &server,
            "/.well-known/est/serverkeygen",
            &[("Authorization", &auth), pkcs10],
            b"x",
        ),
        501,
        "serverkeygen",
    );

    // csrattrs: 204 when none are configured.
    assert_eq!(get(&server, "/.well-known/est/csrattrs", &[]).status, 204);

    // cacerts ignores a wrong Authorization header (IoT Edge sends Basic on every request).
    let r = get(
        &server,
        "/.well-known/est/cacerts",
        &[("Authorization", &basic("x", "y"))],
    );
    assert_eq!(r.status, 200);

    // Still serving: a good enrollment, in any accepted input layout.
    for body in [b64(&good_csr), b64_lines(&good_csr), pem_csr(&good_csr)] {
        let r = post(
            &server,
            enroll,
            &[("Authorization", &auth), pkcs10],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Raw DER and a content type with parameters and different case are accepted too.
    let r = post(
        &server,
        enroll,
        &[
            ("Authorization", &auth),
            ("Content-Type", "Application/PKCS10; charset=binary"),
        ],
        &good_csr,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Denials of an authenticated identity are in the audit trail with their reasons, one
    // by one; refusals of requests that proved no identity (the 401s above) are not: anyone
    // can send those, so they are summed into one event a minute (and at shutdown).
    let data_dir = server.data_dir.clone();
    let audit_json = || {
        let out = estuary(
            &[
                "audit",
                "list",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--json",
            ],
            dir,
            None,
        );
        let audit = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{audit}");
        audit
    };
    let audit = audit_json();
    assert!(
        audit.contains("\"denied\"") && audit.contains("simplereenroll requires"),
        "{audit}"
    );
    assert!(
        !audit.contains("wrong user name or password"),
        "401s are not written one by one: {audit}"
    );
    assert!(audit.contains("\"issued\""), "{audit}");
    assert!(!audit.contains("estpwd"), "no password in the audit trail");
    assert!(
        !server.log_text().contains("estpwd"),
        "no password in the log"
    );
    let log = server.log_text();
    assert!(server.stop().success());
    assert!(!log.contains("estpwd"));
    let audit = audit_json();
    assert!(
        audit.contains("\"denied-unauthenticated\"")
            && audit.contains("requests without a valid identity refused")
            && audit.contains("401: "),
        "{audit}"
    );
}

fn pem_csr(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.to_vec()))
}

#[test]
fn idle_and_slow_connections_do_not_starve_other_clients() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Short timeouts so that the test can watch them work.
    let server = Server::start(&data, &["--dev"]);
    let port = server.port;
    drop(server);
    let config = std::fs::read_to_string(data.join("estuary.toml"))
        .unwrap()
        .replace("handshake_timeout = \"10s\"", "handshake_timeout = \"2s\"")
        .replace("header_timeout = \"30s\"", "header_timeout = \"2s\"")
        .replace(
            "max_connection_age = \"10m\"",
            "max_connection_age = \"5s\"",
        );
    std::fs::write(data.join("estuary.toml"), config).unwrap();
    let server = Server::start(&data, &["--dev"]);
    let _ = port;

    // 50 idle TCP connections that never start TLS, and 10 that send half a request line.
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    for _ in 0..10 {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.write_all(b"\x16\x03\x01").unwrap(); // the first bytes of a ClientHello, then nothing
        idle.push(s);
    }
    // Meanwhile other clients enroll normally.
    let csr = openssl_csr(dir, "busy", P256, "/CN=busy", &[]);
    let started = Instant::now();
    for _ in 0..10 {
        let r = enroll(
            &server,
            &csr,
            "/.well-known/est/simpleenroll",
            None,
            Some(&estuser()),
        );
        assert_eq!(r.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(60));

    // The server closes the idle connections after the handshake timeout.
    std::thread::sleep(Duration::from_secs(3));
    let mut closed = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        match std::io::Read::read(s, &mut buf) {
            Ok(0) | Err(_) => closed += 1,
            Ok(_) => closed += 1, // a TLS alert, then close
        }
    }
    assert_eq!(closed, idle.len());

    // A TLS connection that goes idle after one request is closed after the header timeout.
    let mut tls = server.tls_stream();
    tls.write_all(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let waited = Instant::now();
    let mut all = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tls, &mut all);
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    assert!(
        waited.elapsed() < Duration::from_secs(9),
        "idle keep-alive connection was not closed"
    );
}

#[test]
fn a_busy_connection_is_closed_at_max_connection_age() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let server = start_with_a_3s_connection_age(&data);
    let mut tls = server.tls_stream();
    let started = Instant::now();
    let (served, last_answer) = ask_until_closed(
        &mut tls,
        b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(served >= 3, "served {served} requests before closing");
    assert!(started.elapsed() >= Duration::from_secs(2));
    // The last answer said the connection would close: no request was cut off unanswered.
    assert!(
        last_answer.contains("\r\nConnection: close\r\n"),
        "{last_answer}"
    );
}

/// A dev server whose connections live 3 s (`max_connection_age`), on `data`.
fn start_with_a_3s_connection_age(data: &Path) -> Server {
    drop(Server::start(data, &["--dev"]));
    let config = std::fs::read_to_string(data.join("estuary.toml"))
        .unwrap()
        .replace(
            "max_connection_age = \"10m\"",
            "max_connection_age = \"3s\"",
        );
    std::fs::write(data.join("estuary.toml"), config).unwrap();
    Server::start(data, &["--dev"])
}

/// Sends `request` on `stream` every half second (which keeps the header timeout from firing)
/// until the server closes the connection, within 20 s; how many were answered, and the last
/// answer.
fn ask_until_closed(stream: &mut (impl std::io::Read + Write), request: &[u8]) -> (u32, String) {
    let started = Instant::now();
    let mut served = 0;
    let mut last_answer = String::new();
    loop {
        let mut buf = [0u8; 4096];
        let read = stream
            .write_all(request)
            .and_then(|()| stream.read(&mut buf));
        match read {
            Ok(n) if n > 0 => {
                served += 1;
                last_answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            _ => return (served, last_answer),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the connection was never closed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The admin (plain HTTP) listener ends a connection at its age with an answer that says
/// so, not in the middle of one.
#[test]
fn a_busy_plain_connection_is_closed_after_an_answer_at_its_age() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let server = start_with_a_3s_connection_age(&data);
    let mut tcp = TcpStream::connect(("127.0.0.1", server.admin_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (served, last_answer) = ask_until_closed(
        &mut tcp,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    );
    assert!(served >= 3, "served {served} requests before closing");
    assert!(
        last_answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{last_answer}"
    );
}

/// One address cannot hold every connection: past `limits.max_connections_per_address` its new
/// connections are closed, while another address (127.0.0.2, also loopback) is served, and
/// the address gets its places back as its connections close.
#[test]
fn one_address_cannot_take_every_connection() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("estuary.toml"),
        "[limits]\nmax_connections_per_address = 5\n",
    )
    .unwrap();
    let server = Server::start(&data, &["--dev"]);
    let port = server.port;
    let cacerts = |source: &str| {
        sh(
            &format!(
                "curl -sk --interface {source} -o /dev/null -w '%{{http_code}}' --max-time 5 \
                 https://127.0.0.1:{port}/.well-known/est/cacerts || true"
            ),
            dir,
        )
    };
    // Five idle TCP connections from 127.0.0.1 (counted from accept, before any TLS).
    let idle: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(
        cacerts("127.0.0.1").trim(),
        "200",
        "a sixth connection from 127.0.0.1"
    );
    assert_eq!(cacerts("127.0.0.2").trim(), "200", "another address");
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if cacerts("127.0.0.1").trim() == "200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "127.0.0.1 did not get its places back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.stop();
}
