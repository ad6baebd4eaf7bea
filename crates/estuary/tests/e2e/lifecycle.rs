//! Restarts keep the CA and the store; SIGTERM shuts down cleanly; the store commands read it.

use crate::harness::*;
use der::Decode;

#[test]
fn a_restart_keeps_ca_config_and_store_and_sigterm_exits_cleanly() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let server = Server::start(
        &data,
        &["--dev", "--san", "est.example.com", "--san", "10.9.8.7"],
    );
    let root_before = std::fs::read(server.ca_file()).unwrap();
    let csr = openssl_csr(dir, "keep", P256, "/CN=keep-me", &[]);
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&estuser()),
    );
    assert_eq!(r.status, 200);
    let serial = {
        let cert = x509_cert::Certificate::from_der(&r.certificates()[0]).unwrap();
        cert.tbs_certificate
            .serial_number
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let status = server.stop();
    assert!(status.success(), "SIGTERM must shut down cleanly: {status}");

    // Keys are private; the config records every setting.
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca-key.pem", "server-key.pem"] {
        let mode = std::fs::metadata(data.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let config = std::fs::read_to_string(data.join("estuary.toml")).unwrap();
    for key in [
        "listen",
        "validity",
        "ca_key",
        "server_sans",
        "bootstrap_ca",
        "profile",
        "[limits]",
        "[rate_limits]",
        "[crl]",
    ] {
        assert!(config.contains(key), "config lacks {key}:\n{config}");
    }
    // --dev is a mode of one run, not written to the file: no test user, not in dev mode.
    assert!(
        config.contains("dev = false") && !config.contains("estuser"),
        "{config}"
    );
    assert!(config.contains("est.example.com") && config.contains("10.9.8.7"));

    let server = Server::start(&data, &["--dev"]);
    assert_eq!(
        std::fs::read(server.ca_file()).unwrap(),
        root_before,
        "the CA is reused"
    );
    // The extra SANs are in the server certificate.
    let san = sh(&format!("openssl s_client -connect 127.0.0.1:{} < /dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName", server.port), dir);
    assert!(
        san.contains("DNS:est.example.com") && san.contains("IP Address:10.9.8.7"),
        "{san}"
    );

    let data_arg = data.to_str().unwrap();
    let out = estuary(
        &["certs", "list", "--data-dir", data_arg, "--json"],
        dir,
        None,
    );
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && list.contains(&serial) && list.contains("CN=keep-me"),
        "{list}"
    );
    let out = estuary(
        &[
            "certs",
            "list",
            "--data-dir",
            data_arg,
            "--subject",
            "keep",
            "--expiring-within",
            "2d",
        ],
        dir,
        None,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&serial));
    let out = estuary(
        &[
            "certs",
            "list",
            "--data-dir",
            data_arg,
            "--expiring-within",
            "1h",
        ],
        dir,
        None,
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&serial));
    let out = estuary(
        &["certs", "show", &serial, "--data-dir", data_arg],
        dir,
        None,
    );
    let show = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        show.contains("SHA-256 thumbprint")
            && show.contains("BEGIN CERTIFICATE")
            && show.contains("basic:estuser"),
        "{show}"
    );
    // Thumbprints as IoT Hub shows them find the certificate too.
    let sha1 = show
        .lines()
        .find(|l| l.starts_with("SHA-1 thumbprint"))
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let out = estuary(&["certs", "show", &sha1, "--data-dir", data_arg], dir, None);
    assert!(out.status.success());
    let out = estuary(
        &["certs", "show", "00ff", "--data-dir", data_arg],
        dir,
        None,
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no certificate")
    );
    assert!(server.stop().success());

    // Without --dev, the same data directory is a normal server: the tutorial user is gone.
    let dev_warnings = std::fs::read_to_string(data.with_extension("log"))
        .unwrap()
        .matches("DEV MODE")
        .count();
    let server = Server::start(&data, &[]);
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&estuser()),
    );
    assert_eq!(r.status, 401);
    assert_eq!(server.log_text().matches("DEV MODE").count(), dev_warnings);
}

#[test]
fn bad_config_and_flags_are_reported_clearly() {
    let tmp = tempdir();
    let dir = tmp.path();
    let out = estuary(
        &[
            "serve",
            "--data-dir",
            "d",
            "--validity",
            "10",
            "--listen",
            "127.0.0.1:0",
        ],
        dir,
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("validity"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(dir.join("d2")).unwrap();
    std::fs::write(dir.join("d2/estuary.toml"), "colour = \"blue\"\n").unwrap();
    let out = estuary(&["serve", "--data-dir", "d2"], dir, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour"));
    let out = estuary(&["--help"], dir, None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("serve"));
    for sub in [
        &["serve", "--help"][..],
        &["certs", "list", "--help"],
        &["user", "add", "--help"],
    ] {
        assert!(estuary(sub, dir, None).status.success());
    }
}
