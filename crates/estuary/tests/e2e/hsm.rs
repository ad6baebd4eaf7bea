//! The CA key in a PKCS#11 token (SoftHSM2, Debian `softhsm2`; `pkcs11-tool` from `opensc`):
//! `ca init --key-uri`, `ca import --key-uri`, `serve` with `ca_key_uri`, issued certificates
//! and CRLs verified by openssl against the CA certificate, whose public key is the token's.
//! Each test has its own token directory (SOFTHSM2_CONF is set for the child processes only).
//! A missing SoftHSM2 fails these tests; it never skips them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// A PIN distinctive enough to search the logs for.
const PIN: &str = "73915824";

/// A SoftHSM2 token directory inside a test's temp dir, with a token labelled `estuary`.
pub(crate) struct Token {
    conf: PathBuf,
    pin_file: PathBuf,
}

impl Token {
    pub(crate) fn new(dir: &Path) -> Token {
        require_tool("softhsm2-util");
        require_tool("pkcs11-tool");
        assert!(
            Path::new(MODULE).is_file(),
            "{MODULE} is missing: apt-get install softhsm2 opensc"
        );
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                "estuary",
                "--pin",
                PIN,
                "--so-pin",
                "5678",
            ])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.join("hsm-pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Token { conf, pin_file }
    }

    /// The URI of the key labelled `object` in this token.
    pub(crate) fn uri(&self, object: &str) -> String {
        format!(
            "pkcs11:token=estuary;object={object}?module-path={MODULE}&pin-source=file:{}",
            self.pin_file.display()
        )
    }

    pub(crate) fn env(&self) -> [(&'static str, &OsStr); 1] {
        [("SOFTHSM2_CONF", self.conf.as_os_str())]
    }

    /// `estuary ARGS` with this token's SOFTHSM2_CONF.
    fn estuary(&self, args: &[&str], dir: &Path) -> Output {
        Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap()
    }

    pub(crate) fn estuary_ok(&self, args: &[&str], dir: &Path) -> String {
        let out = self.estuary(args, dir);
        assert!(
            out.status.success(),
            "estuary {}:\nstdout: {}\nstderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `estuary ARGS`, which must fail cleanly (exit 1, not a panic); its stderr.
    fn estuary_fails(&self, args: &[&str], dir: &Path) -> String {
        self.estuary_exits(1, args, dir)
    }

    /// `estuary ARGS`, which must fail cleanly with exit status `code`; its stderr.
    fn estuary_exits(&self, code: i32, args: &[&str], dir: &Path) -> String {
        let out = self.estuary(args, dir);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "estuary {}: expected a clean failure; stderr: {stderr}",
            args.join(" ")
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }

    fn serve(&self, data: &Path, args: &[&str]) -> Server {
        Server::start_with_env(data, args, &["--listen", "127.0.0.1:0"], &self.env())
    }

    /// The public key of the token object labelled `object`, DER SubjectPublicKeyInfo, as
    /// pkcs11-tool (OpenSC) reads it.
    fn public_key(&self, object: &str, dir: &Path) -> Vec<u8> {
        let out_file = dir.join(format!("{object}.token-pub.der"));
        let out = Command::new("pkcs11-tool")
            .args(["--module", MODULE, "--read-object", "--type", "pubkey"])
            .args(["--label", object, "-o"])
            .arg(&out_file)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(out_file).unwrap()
    }

    /// The EC point (uncompressed, `04 || x || y`) of the token's public key labelled
    /// `object`, from `pkcs11-tool --list-objects` (its `--read-object` cannot make a P-384 key).
    fn ec_point(&self, object: &str, dir: &Path) -> Vec<u8> {
        let out = Command::new("pkcs11-tool")
            .args(["--module", MODULE, "--list-objects", "--type", "pubkey"])
            .env("SOFTHSM2_CONF", &self.conf)
            .current_dir(dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut point = None;
        for line in text.lines() {
            let line = line.trim();
            if let Some(hex) = line.strip_prefix("EC_POINT:") {
                point = Some(hex.trim().to_string());
            } else if line.strip_prefix("label:").map(str::trim) == Some(object) {
                break;
            }
        }
        // CKA_EC_POINT is a DER OCTET STRING: 04, length (< 128 here), the point.
        let hex = point.expect("no EC_POINT for the object");
        let der: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(der[0], 0x04);
        der[2..].to_vec()
    }
}

/// The public key of the first certificate of a PEM file, DER SubjectPublicKeyInfo (openssl).
fn certificate_public_key(pem_file: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("cert-pub.der");
    sh(
        &format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform DER -out '{}'",
            pem_file.display(),
            out.display()
        ),
        dir,
    );
    std::fs::read(out).unwrap()
}

/// Enrolls `cn` with the --dev user, writes the certificate to `cn.pem` and checks it with
/// `openssl verify` against `trust` (plus `untrusted` intermediates). Returns its serial (hex).
fn enroll_and_verify(
    server: &Server,
    dir: &Path,
    cn: &str,
    trust: &Path,
    untrusted: Option<&Path>,
) -> String {
    let csr = openssl_csr(dir, cn, P256, &format!("/CN={cn}"), &[]);
    let r = enroll_with_estuser(server, &csr);
    let certs = r.certificates();
    assert_eq!(certs.len(), 1);
    let file = dir.join(format!("{cn}.pem"));
    std::fs::write(&file, pem_certs(&certs)).unwrap();
    let mut verify = format!("openssl verify -CAfile '{}'", trust.display());
    if let Some(chain) = untrusted {
        verify.push_str(&format!(" -untrusted '{}'", chain.display()));
    }
    let out = sh(&format!("{verify} '{}'", file.display()), dir);
    assert!(out.contains(": OK"), "{out}");
    x509(dir, &format!("{cn}.pem"), &["-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

/// The CRL from the admin listener, checked with `openssl crl -verify` against `ca_pem`;
/// returns its text.
fn verified_crl(server: &Server, dir: &Path, ca_pem: &Path) -> String {
    let (status, der) = http_get(server.admin_port, "/crl");
    assert_eq!(status, 200);
    let file = dir.join("ca.crl");
    std::fs::write(&file, der).unwrap();
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(&file)
        .arg("-CAfile")
        .arg(ca_pem)
        .args(["-noout", "-verify", "-text"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("verify OK"), "{text}");
    text
}

fn no_key_file(data: &Path) {
    assert!(
        !data.join("ca-key.pem").exists(),
        "a CA key file was written"
    );
}

#[test]
fn a_root_ca_in_softhsm_issues_and_signs_crls_through_the_token_across_restarts() {
    let tmp = tempdir();
    let dir = tmp.path();
    let token = Token::new(dir);
    let data = dir.join("data");
    let d = data.to_str().unwrap();
    let uri = token.uri("estuary-ca");

    let out = token.estuary_ok(&["ca", "init", "--data-dir", d, "--key-uri", &uri], dir);
    assert!(out.contains("no key file was written"), "{out}");
    no_key_file(&data);
    let config = std::fs::read_to_string(data.join("estuary.toml")).unwrap();
    assert!(
        config.contains(&format!("ca_key_uri = \"{uri}\"")),
        "{config}"
    );
    // The CA certificate certifies the token's key.
    let ca_pem = data.join("ca-cert.pem");
    assert_eq!(
        certificate_public_key(&ca_pem, dir),
        token.public_key("estuary-ca", dir)
    );
    // config check reaches the token.
    let out = token.estuary_ok(&["config", "check", "--data-dir", d], dir);
    assert!(out.contains("✔ CA key in the PKCS#11 token"), "{out}");
    // A label with serverkeygen (RFC 7030 §4.4): that issuance goes through the token too.
    let mut config = config;
    config.push_str("\n[labels.keygen]\nprofile = \"device\"\nserverkeygen = true\n");
    std::fs::write(data.join("estuary.toml"), config).unwrap();

    let server = token.serve(&data, &["--dev"]);
    no_key_file(&data);
    let serial = enroll_and_verify(&server, dir, "hsm-device-1", &ca_pem, None);
    // The TLS server certificate was issued through the token too.
    let out = sh(
        &format!(
            "openssl verify -CAfile '{}' '{}'",
            ca_pem.display(),
            data.join("server-cert.pem").display()
        ),
        dir,
    );
    assert!(out.contains(": OK"), "{out}");
    let url = format!("https://localhost:{}/.well-known/est/keygen", server.port);
    token.estuary_ok(
        &[
            "client",
            "serverkeygen",
            "--url",
            &url,
            "--ca",
            ca_pem.to_str().unwrap(),
            "--cn",
            "hsm-keyless",
            "--user",
            "estuser",
            "--password",
            "estpwd",
            "--out-cert",
            "skg.pem",
            "--out-key",
            "skg.key",
        ],
        dir,
    );
    let out = sh(
        &format!("openssl verify -CAfile '{}' skg.pem", ca_pem.display()),
        dir,
    );
    assert!(out.contains(": OK"), "{out}");

    // The CRL is signed in the token; a revocation re-signs it.
    verified_crl(&server, dir, &ca_pem);
    token.estuary_ok(&["certs", "revoke", &serial, "--data-dir", d], dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = verified_crl(&server, dir, &ca_pem);
        if text.to_ascii_lowercase().contains(&serial) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the CRL never listed {serial}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Nothing shows the PIN: not the log, not the command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(PIN));
    let log = server.log_text();
    assert!(log.contains("CA key opened in the PKCS#11 token"), "{log}");
    assert!(!log.contains(PIN), "the PIN is in the log:\n{log}");
    server.stop();

    // A restart opens the same key and goes on issuing.
    let server = token.serve(&data, &["--dev"]);
    enroll_and_verify(&server, dir, "hsm-device-2", &ca_pem, None);
    verified_crl(&server, dir, &ca_pem);
    assert!(!server.log_text().contains(PIN));
    server.stop();
    no_key_file(&data);
}

#[test]
fn two_servers_share_one_token_key_through_ca_import_key_uri() {
    let tmp = tempdir();
    let dir = tmp.path();
    let token = Token::new(dir);
    let (one, two) = (dir.join("one"), dir.join("two"));
    let uri = token.uri("shared-ca");
    token.estuary_ok(
        &[
            "ca",
            "init",
            "--data-dir",
            one.to_str().unwrap(),
            "--key-uri",
            &uri,
        ],
        dir,
    );
    let ca_pem = one.join("ca-cert.pem");
    let out = token.estuary_ok(
        &[
            "ca",
            "import",
            "--cert",
            ca_pem.to_str().unwrap(),
            "--key-uri",
            &uri,
            "--data-dir",
            two.to_str().unwrap(),
        ],
        dir,
    );
    assert!(out.contains("no key file"), "{out}");
    no_key_file(&two);
    assert_eq!(
        std::fs::read(two.join("ca-cert.pem")).unwrap(),
        std::fs::read(&ca_pem).unwrap()
    );

    let first = token.serve(&one, &["--dev"]);
    let second = token.serve(&two, &["--dev"]);
    for round in 0..3 {
        enroll_and_verify(&first, dir, &format!("node1-{round}"), &ca_pem, None);
        enroll_and_verify(&second, dir, &format!("node2-{round}"), &ca_pem, None);
    }
    verified_crl(&first, dir, &ca_pem);
    verified_crl(&second, dir, &ca_pem);
    first.stop();
    second.stop();

    // A certificate whose key is not the token's is refused, and nothing is written.
    let other = dir.join("other");
    token.estuary_ok(
        &[
            "ca",
            "init",
            "--data-dir",
            other.to_str().unwrap(),
            "--ca-key",
            "p256",
        ],
        dir,
    );
    let three = dir.join("three");
    let err = token.estuary_fails(
        &[
            "ca",
            "import",
            "--cert",
            other.join("ca-cert.pem").to_str().unwrap(),
            "--key-uri",
            &uri,
            "--data-dir",
            three.to_str().unwrap(),
        ],
        dir,
    );
    assert!(err.contains("their public keys differ"), "{err}");
    assert!(!three.join("ca-cert.pem").exists());
}

#[test]
fn p384_issuing_ca_under_an_offline_root_and_an_rsa2048_root_sign_in_the_token() {
    let tmp = tempdir();
    let dir = tmp.path();
    let token = Token::new(dir);

    // P-384 issuing CA in the token, under a new offline root whose key is a file.
    let data = dir.join("p384");
    let roots = dir.join("offline-root");
    token.estuary_ok(
        &[
            "ca",
            "init",
            "--intermediate",
            "--ca-key",
            "p384",
            "--root-dir",
            roots.to_str().unwrap(),
            "--key-uri",
            &token.uri("issuing-p384"),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir,
    );
    no_key_file(&data);
    assert!(roots.join("root-key.pem").exists());
    let issuing = dir.join("issuing.pem");
    let chain = pem::parse_many(std::fs::read(data.join("ca-cert.pem")).unwrap()).unwrap();
    assert_eq!(chain.len(), 2);
    std::fs::write(&issuing, pem::encode(&chain[0])).unwrap();
    // The SubjectPublicKeyInfo ends with the point (RFC 5480 §2.2).
    let point = token.ec_point("issuing-p384", dir);
    assert_eq!(point.len(), 97);
    assert!(certificate_public_key(&issuing, dir).ends_with(&point));
    assert!(x509(dir, "issuing.pem", &["-text"]).contains("NIST CURVE: P-384"));
    let server = token.serve(&data, &["--dev"]);
    let root = roots.join("root-cert.pem");
    enroll_and_verify(&server, dir, "p384-device", &root, Some(&issuing));
    let crl = verified_crl(&server, dir, &issuing);
    assert!(crl.contains("ecdsa-with-SHA384"), "{crl}");
    server.stop();

    // RSA-2048 root in the token.
    let data = dir.join("rsa");
    token.estuary_ok(
        &[
            "ca",
            "init",
            "--ca-key",
            "rsa2048",
            "--key-uri",
            &token.uri("root-rsa"),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir,
    );
    no_key_file(&data);
    let ca_pem = data.join("ca-cert.pem");
    assert_eq!(
        certificate_public_key(&ca_pem, dir),
        token.public_key("root-rsa", dir)
    );
    let server = token.serve(&data, &["--dev"]);
    enroll_and_verify(&server, dir, "rsa-device", &ca_pem, None);
    let crl = verified_crl(&server, dir, &ca_pem);
    assert!(crl.contains("sha256WithRSAEncryption"), "{crl}");
    server.stop();
}

#[test]
fn token_mistakes_are_clear_errors_not_panics() {
    let tmp = tempdir();
    let dir = tmp.path();
    let token = Token::new(dir);
    let data = dir.join("data");
    let d = data.to_str().unwrap();

    // A wrong PIN.
    let wrong = dir.join("wrong-pin");
    std::fs::write(&wrong, "11112222\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let uri = format!(
        "pkcs11:token=estuary;object=k?module-path={MODULE}&pin-source=file:{}",
        wrong.display()
    );
    // Exit status 78: the systemd unit does not restart on it (RestartPreventExitStatus), so a
    // wrong PIN is not tried again and again until an HSM locks it.
    let err = token.estuary_exits(78, &["ca", "init", "--data-dir", d, "--key-uri", &uri], dir);
    assert!(err.contains("refused the PIN"), "{err}");
    assert!(!err.contains("11112222"), "{err}");
    assert!(!data.join("ca-cert.pem").exists());

    // No such token.
    let uri = token.uri("k").replace("token=estuary", "token=elsewhere");
    let err = token.estuary_fails(&["ca", "init", "--data-dir", d, "--key-uri", &uri], dir);
    assert!(
        err.contains("no such token") && err.contains("\"estuary\""),
        "{err}"
    );

    // The PIN on the command line.
    let uri = format!("pkcs11:token=estuary;object=k?module-path={MODULE}&pin-value={PIN}");
    let err = token.estuary_fails(&["ca", "init", "--data-dir", d, "--key-uri", &uri], dir);
    assert!(err.contains("pin-source=file:"), "{err}");
    assert!(!err.contains(PIN), "{err}");

    // A library that is not there.
    let uri = token.uri("k").replace(MODULE, "/nonexistent/libpkcs11.so");
    let err = token.estuary_fails(&["ca", "init", "--data-dir", d, "--key-uri", &uri], dir);
    assert!(
        err.contains("/nonexistent/libpkcs11.so does not exist"),
        "{err}"
    );

    // A label that is taken is never overwritten.
    token.estuary_ok(
        &["ca", "init", "--data-dir", d, "--key-uri", &token.uri("k")],
        dir,
    );
    let again = dir.join("again");
    let err = token.estuary_fails(
        &[
            "ca",
            "init",
            "--data-dir",
            again.to_str().unwrap(),
            "--key-uri",
            &token.uri("k"),
        ],
        dir,
    );
    assert!(
        err.contains("already has an object labelled \"k\""),
        "{err}"
    );

    // A ca-key.pem beside ca_key_uri: serve refuses (which key is the CA's?).
    std::fs::write(data.join("ca-key.pem"), "not used").unwrap();
    let err = token.estuary_fails(&["serve", "--data-dir", d, "--listen", "127.0.0.1:0"], dir);
    assert!(err.contains("ambiguous"), "{err}");
    std::fs::remove_file(data.join("ca-key.pem")).unwrap();

    // The token's PIN file changed to a wrong one: serve does not start, and says why.
    std::fs::write(&token.pin_file, "99990000\n").unwrap();
    let err = token.estuary_exits(
        78,
        &["serve", "--data-dir", d, "--listen", "127.0.0.1:0"],
        dir,
    );
    assert!(err.contains("refused the PIN"), "{err}");
    assert!(!err.contains("99990000"), "{err}");
    let out = token.estuary(&["config", "check", "--data-dir", d], dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("✘ ca_key_uri"),
        "{text}"
    );
}

/// The token's files vanish under a running server (as a removed HSM would): the next
/// enrollment gets, after one reopened session and retry, 503 with Retry-After and a clear
/// reason; nothing panics, and the server keeps serving what needs no signature. When the
/// files come back, the server is ready and signs again without a restart.
#[test]
fn an_unavailable_token_is_503_with_retry_after() {
    let tmp = tempdir();
    let dir = tmp.path();
    let token = Token::new(dir);
    let data = dir.join("data");
    token.estuary_ok(
        &[
            "ca",
            "init",
            "--data-dir",
            data.to_str().unwrap(),
            "--key-uri",
            &token.uri("ca"),
        ],
        dir,
    );
    let ca_pem = data.join("ca-cert.pem");
    let server = token.serve(&data, &["--dev"]);
    enroll_and_verify(&server, dir, "before", &ca_pem, None);

    std::fs::rename(dir.join("tokens"), dir.join("tokens.away")).unwrap();
    std::fs::create_dir(dir.join("tokens")).unwrap();
    let csr = openssl_csr(dir, "during", P256, "/CN=during", &[]);
    for _ in 0..2 {
        let r = enroll(
            &server,
            &csr,
            "/.well-known/est/simpleenroll",
            None,
            Some(&estuser()),
        );
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("30"));
        assert!(
            r.text()
                .contains("signing key (hardware token) is unavailable"),
            "{}",
            r.text()
        );
    }
    let r = https(
        server.port,
        "localhost",
        &ca_pem,
        None,
        "GET",
        "/.well-known/est/cacerts",
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    let log = server.log_text();
    assert!(
        log.contains("PKCS#11 session lost; opening a new one and signing once more"),
        "{log}"
    );
    assert!(!log.contains("panicked") && !log.contains(PIN), "{log}");
    // Not ready while the key cannot sign: a load balancer sends enrollments elsewhere.
    let (status, body) = http_get(server.admin_port, "/readyz");
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the CA key cannot sign"), "{body}");
    let metrics = String::from_utf8_lossy(&http_get(server.admin_port, "/metrics").1).to_string();
    assert!(
        metrics.contains("\nestuary_ca_key_available 0\n"),
        "{metrics}"
    );

    // The token comes back: the server's recheck (every 10 s at first) finds the key again
    // without a restart. SoftHSM's library never re-reads a token directory that vanished
    // under it, so this also shows the library being initialized again.
    std::fs::remove_dir(dir.join("tokens")).unwrap();
    std::fs::rename(dir.join("tokens.away"), dir.join("tokens")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(server.admin_port, "/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready 60 s after the token came back: {}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    server.wait_for_log(
        "the CA key is available again after the PKCS#11 library was initialized again",
        1,
    );
    enroll_and_verify(&server, dir, "after", &ca_pem, None);
    let metrics = String::from_utf8_lossy(&http_get(server.admin_port, "/metrics").1).to_string();
    assert!(
        metrics.contains("\nestuary_ca_key_available 1\n"),
        "{metrics}"
    );
    server.stop();
}
