//! Bouncy Castle's EST client (`org.bouncycastle.est`, Java): cacerts, enroll with Basic after
//! the 401 challenge (P-256 and RSA-2048), re-enroll with only the TLS client certificate, and
//! csrattrs (204 and 200), against `--dev` and a production config. The driver is
//! `java/EstDriver.java`, compiled by the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::harness::*;

/// Debian's `libbcpkix-java libbcprov-java libbcutil-java`.
const BC_JARS: [&str; 3] = [
    "/usr/share/java/bcpkix.jar",
    "/usr/share/java/bcprov.jar",
    "/usr/share/java/bcutil.jar",
];

/// Compiles the driver into `dir/classes`; returns the class path to run it with.
fn compile_driver(dir: &Path) -> String {
    require_tool("javac");
    require_tool("java");
    for jar in BC_JARS {
        assert!(
            Path::new(jar).is_file(),
            "{jar} is missing; `.ci/run` installs it (apt-get install libbcpkix-java libbcprov-java libbcutil-java)"
        );
    }
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/java/EstDriver.java");
    let classes = dir.join("classes");
    let jars = BC_JARS.join(":");
    run(
        "javac",
        &["-cp", &jars, "-d", classes.to_str().unwrap(), source],
        dir,
    );
    format!("{}:{jars}", classes.display())
}

/// A Bouncy Castle client for one server: `localhost:PORT`, trusting the server's root CA.
struct Bc<'a> {
    classpath: String,
    server: &'a Server,
    dir: &'a Path,
    label: Option<&'a str>,
}

impl Bc<'_> {
    fn run(&self, command: &str, args: &[&str]) -> String {
        let out = self.output(command, args);
        assert!(
            out.status.success(),
            "EstDriver {command} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn output(&self, command: &str, args: &[&str]) -> Output {
        self.spawn(command, args).wait_with_output().unwrap()
    }

    fn spawn(&self, command: &str, args: &[&str]) -> Child {
        let mut java = Command::new("java");
        java.arg("-cp").arg(&self.classpath);
        if let Some(label) = self.label {
            java.arg(format!("-Dlabel={label}"));
        }
        java.args([
            "EstDriver",
            command,
            &format!("localhost:{}", self.server.port),
        ])
        .arg(self.server.ca_file())
        .args(args)
        .current_dir(self.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run java")
    }

    /// Enrolls `cn` with a new key of `key_type` (`ec` or `rsa`); writes OUT.pem and OUT.key.
    fn enroll(&self, key_type: &str, cn: &str, user: &str, password: &str, out: &str) {
        self.run("enroll", &[key_type, cn, user, password, out]);
    }

    /// Re-enrolls with CERT.pem/KEY.pem as the TLS client identity (no password).
    fn reenroll(&self, old: &str, out: &str) {
        self.run(
            "reenroll",
            &[&format!("{old}.pem"), &format!("{old}.key"), out],
        );
    }
}

/// Checks OUT.pem: issued by the server's CA (openssl verify), for `subject`, holding OUT.key's
/// public key, and only the issued certificate.
fn check_issued(dir: &Path, ca: &Path, out: &str, subject: &str, key_algorithm: &str) {
    let pem = format!("{out}.pem");
    let verify = sh(
        &format!("openssl verify -CAfile {} {pem}", ca.display()),
        dir,
    );
    assert!(verify.contains(": OK"), "{verify}");
    assert_eq!(
        x509(dir, &pem, &["-subject"]).trim(),
        format!("subject={subject}")
    );
    assert!(x509(dir, &pem, &["-text"]).contains(key_algorithm));
    let cert_key = x509(dir, &pem, &["-pubkey"]);
    let key = sh(&format!("openssl pkey -in {out}.key -pubout"), dir);
    assert_eq!(cert_key, key, "{pem} does not certify {out}.key");
    assert_eq!(
        std::fs::read_to_string(dir.join(&pem))
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        1
    );
}

fn serial(dir: &Path, pem: &str) -> String {
    x509(dir, pem, &["-serial"])
}

/// The full round: cacerts, enroll P-256 and RSA-2048 with Basic, re-enroll both with the TLS
/// client certificate; returns nothing, asserts everything (including the 401-then-Basic
/// exchange in the server log).
fn enroll_and_reenroll(bc: &Bc<'_>, user: &str, password: &str) {
    let dir = bc.dir;
    let ca = bc.server.ca_file();

    bc.run("cacerts", &["cacerts.pem"]);
    assert_eq!(
        pem::parse(std::fs::read(dir.join("cacerts.pem")).unwrap())
            .unwrap()
            .contents(),
        pem::parse(std::fs::read(&ca).unwrap()).unwrap().contents()
    );

    bc.enroll("ec", "bc-p256", user, password, "p256");
    check_issued(dir, &ca, "p256", "CN = bc-p256", "id-ecPublicKey");
    bc.enroll("rsa", "bc-rsa", user, password, "rsa");
    check_issued(dir, &ca, "rsa", "CN = bc-rsa", "rsaEncryption");
    // Bouncy Castle sends no credentials first and answers the challenge with Basic.
    let log = bc.server.log_text();
    let enrolls: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("simpleenroll\""))
        .collect();
    assert_eq!(enrolls.len(), 4, "{log}");
    for pair in enrolls.chunks(2) {
        assert!(
            pair[0].contains("auth=\"none\"") && pair[0].contains("status=401"),
            "{}",
            pair[0]
        );
        assert!(
            pair[1].contains("auth=\"basic\"") && pair[1].contains("status=200"),
            "{}",
            pair[1]
        );
    }

    // Re-enroll (simplereenroll) with a new key, authenticated only by the TLS client certificate.
    bc.reenroll("p256", "p256-renewed");
    check_issued(dir, &ca, "p256-renewed", "CN = bc-p256", "id-ecPublicKey");
    assert_ne!(serial(dir, "p256.pem"), serial(dir, "p256-renewed.pem"));
    bc.reenroll("rsa", "rsa-renewed");
    check_issued(dir, &ca, "rsa-renewed", "CN = bc-rsa", "rsaEncryption");
    let log = bc.server.log_text();
    let renewals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("simplereenroll\""))
        .collect();
    assert_eq!(renewals.len(), 2, "{log}");
    for line in renewals {
        assert!(
            line.contains("auth=\"client-cert\"") && line.contains("status=200"),
            "{line}"
        );
    }
}

#[test]
fn bouncycastle_client_against_dev_server() {
    let tmp = tempdir();
    let dir = tmp.path();
    let classpath = compile_driver(dir);
    let server = Server::start(&dir.join("data"), &["--dev"]);
    let bc = Bc {
        classpath,
        server: &server,
        dir,
        label: None,
    };
    enroll_and_reenroll(&bc, "estuser", "estpwd");
    // No CSR attributes configured: 204, which Bouncy Castle reports as none.
    assert_eq!(bc.run("csrattrs", &[]).trim(), "none");
    assert!(server
        .log_text()
        .lines()
        .any(|l| l.contains("/csrattrs\"") && l.contains("status=204")));
}

#[test]
fn bouncycastle_client_against_production_config() {
    let tmp = tempdir();
    let dir = tmp.path();
    let classpath = compile_driver(dir);
    let data: PathBuf = dir.join("data");
    add_user(dir, &data, "fleet", "s3cret-s3cret");
    let config_path = data.join("estuary.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(config.contains("dev = false"), "{config}");
    let config = config.replace(
        "csrattrs = []",
        "csrattrs = [\"1.2.840.113549.1.9.7\", \"1.2.840.10045.4.3.2\"]",
    );
    std::fs::write(&config_path, config).unwrap();
    let server = Server::start(&data, &[]);
    // Through the `device` label: /.well-known/est/device/...
    let bc = Bc {
        classpath,
        server: &server,
        dir,
        label: Some("device"),
    };
    enroll_and_reenroll(&bc, "fleet", "s3cret-s3cret");
    assert!(server.log_text().contains("label=\"device\""));
    // A wrong password: Bouncy Castle reports the server's second 401.
    let out = bc.output("enroll", &["ec", "bc-bad", "fleet", "guess", "bad"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("401"), "{stderr}");
    assert!(!dir.join("bad.pem").exists());
    // Configured CSR attributes: 200 with the OIDs (RFC 7030 §4.5.2).
    let attrs = bc.run("csrattrs", &[]);
    assert_eq!(
        attrs.lines().collect::<Vec<_>>(),
        ["1.2.840.113549.1.9.7", "1.2.840.10045.4.3.2"],
        "{attrs}"
    );
}

/// Bouncy Castle polls a 202 after its `Retry-After` (`simpleEnroll(EnrollmentResponse)`)
/// until an operator approves the request.
#[test]
fn bouncycastle_client_polls_a_manual_approval() {
    let tmp = tempdir();
    let dir = tmp.path();
    let classpath = compile_driver(dir);
    let data = dir.join("data");
    drop(Server::start(&data, &["--dev"]));
    let config_path = data.join("estuary.toml");
    let config = std::fs::read_to_string(&config_path).unwrap().replace(
        "approval_retry_after = \"60s\"",
        "approval_retry_after = \"1s\"",
    );
    assert!(config.contains("approval_retry_after = \"1s\""));
    std::fs::write(
        &config_path,
        format!("{config}\n[labels.manual]\nprofile = \"device\"\napproval = \"manual\"\n"),
    )
    .unwrap();
    let server = Server::start(&data, &["--dev"]);
    let bc = Bc {
        classpath,
        server: &server,
        dir,
        label: Some("manual"),
    };
    let client = bc.spawn(
        "enroll",
        &["ec", "bc-manual", "estuser", "estpwd", "manual"],
    );
    server.wait_for_log("status=202", 2);
    let data_arg = data.to_str().unwrap();
    let out = estuary(
        &["requests", "list", "--data-dir", data_arg, "--json"],
        dir,
        None,
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = list[0]["id"]
        .as_i64()
        .expect("one pending request")
        .to_string();
    estuary_ok(&["requests", "approve", &id, "--data-dir", data_arg], dir);
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pending"));
    check_issued(
        dir,
        &server.ca_file(),
        "manual",
        "CN = bc-manual",
        "id-ecPublicKey",
    );
}
