//! libest compatibility on the wire. Cisco's `estclient` (libest, `est_client_http.c`) matches
//! response header names byte for byte in canonical spelling and checks `Content-Type` by prefix,
//! so these tests read the raw response head of every status an EST client sees: 200 (cacerts,
//! simpleenroll), 401, 202 (manual approval) and 429 (rate limit).

use std::io::{Read, Write};

use crate::harness::*;

/// The header names libest looks up with a case-sensitive compare.
const CANONICAL: [&str; 5] = [
    "Content-Type",
    "Content-Length",
    "Content-Transfer-Encoding",
    "WWW-Authenticate",
    "Retry-After",
];

const CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";

/// Records every byte read, so that the response head can be checked as sent.
struct Recorder<R> {
    inner: R,
    bytes: Vec<u8>,
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// A response and its head exactly as it came off the wire (status line and header lines).
struct Raw {
    response: HttpResponse,
    head: String,
}

impl Raw {
    /// The value of the header spelled exactly `name` (case-sensitive, `Name: value`).
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
    }

    /// Every header libest reads is spelled canonically; none is sent in another case.
    fn assert_canonical_names(&self) {
        for line in self.head.split("\r\n").skip(1) {
            let name = line.split(':').next().unwrap_or_default();
            for canonical in CANONICAL {
                assert!(
                    !name.eq_ignore_ascii_case(canonical) || name == canonical,
                    "header {name:?} is not spelled {canonical:?}:\n{}",
                    self.head
                );
            }
        }
        assert_eq!(
            self.header("Content-Length"),
            Some(self.response.body.len().to_string().as_str()),
            "Content-Length must equal the body:\n{}",
            self.head
        );
    }

    fn assert_certs_only(&self) {
        assert_eq!(self.response.status, 200, "{}", self.response.text());
        assert_eq!(
            self.header("Content-Type"),
            Some(CERTS_ONLY),
            "{}",
            self.head
        );
        assert_eq!(
            self.header("Content-Transfer-Encoding"),
            Some("base64"),
            "{}",
            self.head
        );
        assert!(!self.response.certificates().is_empty());
    }
}

/// One request on a fresh TLS connection (verified as `localhost`).
fn exchange(server: &Server, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> Raw {
    let mut tls = server.tls_stream();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\n",
        server.port
    );
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    if method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/pkcs10\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(body).unwrap();
    tls.flush().unwrap();
    let mut recorder = Recorder {
        inner: tls,
        bytes: Vec::new(),
    };
    let response = read_response(&mut recorder);
    let end = recorder
        .bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap();
    let head = String::from_utf8(recorder.bytes[..end].to_vec()).unwrap();
    Raw { response, head }
}

#[test]
fn libest_compatibility_response_header_names_are_canonical_byte_for_byte() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    drop(Server::start(&data, &["--dev"]));
    // A label that waits for manual approval (202), and a per-address rate limit (429).
    let config_path = data.join("estuary.toml");
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace(
            "per_address_per_minute = 600",
            "per_address_per_minute = 30",
        )
        .replace("failed_auth_cost = 60", "failed_auth_cost = 1");
    assert!(config.contains("per_address_per_minute = 30"));
    std::fs::write(
        &config_path,
        format!("{config}\n[labels.manual]\nprofile = \"device\"\napproval = \"manual\"\n"),
    )
    .unwrap();
    let server = Server::start(&data, &["--dev"]);
    let auth = estuser();
    let csr = b64_lines(&openssl_csr(dir, "dev", P256, "/CN=libest-dev", &[]));

    // 200 cacerts.
    let r = exchange(&server, "GET", "/.well-known/est/cacerts", None, b"");
    r.assert_canonical_names();
    r.assert_certs_only();

    // libest sends the first enrollment without credentials: 401 with a Basic challenge and an
    // empty body.
    let r = exchange(
        &server,
        "POST",
        "/.well-known/est/simpleenroll",
        None,
        csr.as_bytes(),
    );
    assert_eq!(r.response.status, 401, "{}", r.response.text());
    r.assert_canonical_names();
    assert!(
        r.header("WWW-Authenticate")
            .is_some_and(|v| v.starts_with("Basic realm=")),
        "{}",
        r.head
    );
    assert_eq!(r.header("Content-Length"), Some("0"), "{}", r.head);
    assert!(r.response.body.is_empty());

    // 200 simpleenroll after the challenge.
    let r = exchange(
        &server,
        "POST",
        "/.well-known/est/simpleenroll",
        Some(&auth),
        csr.as_bytes(),
    );
    r.assert_canonical_names();
    r.assert_certs_only();

    // 202 while the request waits for an operator, with Retry-After (RFC 7030 §4.2.3).
    let r = exchange(
        &server,
        "POST",
        "/.well-known/est/manual/simpleenroll",
        Some(&auth),
        csr.as_bytes(),
    );
    assert_eq!(r.response.status, 202, "{}", r.response.text());
    r.assert_canonical_names();
    assert_eq!(r.header("Retry-After"), Some("60"), "{}", r.head);

    // 429 once the address has used its budget, with Retry-After.
    let limited = (0..40)
        .map(|_| exchange(&server, "GET", "/.well-known/est/cacerts", None, b""))
        .find(|r| r.response.status == 429)
        .expect("the address is rate limited within 40 requests");
    limited.assert_canonical_names();
    let wait: u64 = limited.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{}", limited.head);
}
