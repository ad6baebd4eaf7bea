//! The Azure IoT Edge EST tutorial's commands, run literally against `estuary serve --dev`.

use crate::harness::*;

#[test]
fn tutorial_commands_work_against_serve_dev() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);
    let port = server.port;

    // "Get the CA certificate": the second certificate printed by s_client is the root.
    sh(
        &format!(
            "openssl s_client -showcerts -verify 5 -connect localhost:{port} < /dev/null \
             | awk '/BEGIN/,/END/{{ if(/BEGIN/){{a++}}; out=\"cert\"a\".pem\"; print >out}}' \
             && cp cert2.pem cacert.crt.pem"
        ),
        dir,
    );
    let cert2 = std::fs::read_to_string(dir.join("cert2.pem")).unwrap();
    let served_ca = sh(
        &format!(
            "curl -sS --fail --cacert cert2.pem {}/cacerts | base64 -d \
             | openssl pkcs7 -inform DER -print_certs | openssl x509",
            server.url()
        ),
        dir,
    );
    assert_eq!(
        pem::parse(cert2.as_bytes()).unwrap().contents(),
        pem::parse(served_ca.as_bytes()).unwrap().contents(),
        "cert2.pem must be the root CA that /cacerts returns"
    );
    assert_eq!(
        std::fs::read(dir.join("cacert.crt.pem")).unwrap(),
        cert2.as_bytes()
    );
    // Byte for byte the data directory's ca-cert.pem: Estuary wrote PEM with CRLF line
    // endings, openssl (and so awk) LF.
    sh("cmp cert2.pem data/ca-cert.pem", dir);
    for file in [
        "ca-cert.pem",
        "ca-key.pem",
        "server-cert.pem",
        "server-key.pem",
    ] {
        let text = std::fs::read(dir.join("data").join(file)).unwrap();
        assert!(!text.contains(&b'\r'), "{file} has CR line endings");
    }

    // Enrollment by hand with curl and Basic estuser/estpwd, PEM CSR as openssl writes it.
    sh(
        "openssl req -nodes -newkey rsa:2048 -keyout test.key -out test.csr -subj /CN=test 2>/dev/null",
        dir,
    );
    let headers = sh(
        &format!(
            "curl -sS --fail --cacert cert2.pem -u estuser:estpwd -H 'Content-Type: application/pkcs10' \
             --data-binary @test.csr -o test.p7 -D - {}/simpleenroll",
            server.url()
        ),
        dir,
    );
    assert!(headers
        .to_ascii_lowercase()
        .contains("content-type: application/pkcs7-mime; smime-type=certs-only"));
    // `openssl base64 -d` (without -A) needs line breaks: the body is in 64-column lines.
    sh(
        "openssl base64 -d -in test.p7 | openssl pkcs7 -inform DER -print_certs -out test.pem",
        dir,
    );
    let verified = sh("openssl verify -CAfile cert2.pem test.pem", dir);
    assert!(verified.contains("test.pem: OK"), "{verified}");

    // Issued certificates are valid for exactly one day in --dev.
    let dates = x509(
        dir,
        "test.pem",
        &["-startdate", "-enddate", "-dateopt", "iso_8601"],
    );
    let seconds = validity_seconds(&dates);
    assert_eq!(seconds, 86_400, "{dates}");
    let text = x509(
        dir,
        "test.pem",
        &["-subject", "-ext", "basicConstraints,extendedKeyUsage"],
    );
    assert!(
        text.contains("CN = test")
            && text.contains("CA:FALSE")
            && text.contains("Client Authentication"),
        "{text}"
    );
    drop(server);
}

/// notAfter - notBefore from `openssl x509 -startdate -enddate -dateopt iso_8601`.
pub fn validity_seconds(dates: &str) -> i64 {
    let parse = |prefix: &str| -> i64 {
        let line = dates.lines().find(|l| l.starts_with(prefix)).unwrap();
        let value = line.split_once('=').unwrap().1.trim();
        let format =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
        time::PrimitiveDateTime::parse(value, &format)
            .unwrap()
            .assume_utc()
            .unix_timestamp()
    };
    parse("notAfter") - parse("notBefore")
}
