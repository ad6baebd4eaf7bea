//! `estuary client` against a real server, its output checked with openssl.

use crate::harness::*;

#[test]
fn client_fetches_cacerts_enrolls_and_reenrolls() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);
    let url = server.url();

    // Trust on first use: prints the fingerprint to confirm out of band, writes the CA.
    let out = estuary(
        &[
            "client", "cacerts", "--url", &url, "--tofu", "--out", "ca.pem",
        ],
        dir,
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("NOT verified") && stdout.contains("SHA-256:"),
        "{stdout}{stderr}"
    );
    let fingerprint = sh("openssl x509 -in ca.pem -noout -fingerprint -sha256", dir);
    let fingerprint = fingerprint.trim().split('=').nth(1).unwrap();
    assert!(
        stdout.contains(fingerprint),
        "printed fingerprint must match the CA: {stdout}"
    );
    assert_eq!(
        pem::parse(std::fs::read(dir.join("ca.pem")).unwrap())
            .unwrap()
            .contents(),
        pem::parse(std::fs::read(server.ca_file()).unwrap())
            .unwrap()
            .contents()
    );
    // Without --ca or --tofu it refuses; with --ca it verifies.
    assert!(!estuary(&["client", "cacerts", "--url", &url], dir, None)
        .status
        .success());
    let out = estuary(
        &["client", "cacerts", "--url", &url, "--ca", "ca.pem"],
        dir,
        None,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"));

    // Enroll with Basic and a new key.
    let out = estuary(
        &[
            "client",
            "enroll",
            "--url",
            &url,
            "--ca",
            "ca.pem",
            "--cn",
            "dev-7",
            "--san",
            "DNS:dev-7.local",
            "--san",
            "IP:10.0.0.7",
            "--key-type",
            "p384",
            "--user",
            "estuser",
            "--password",
            "estpwd",
            "--out-cert",
            "dev.pem",
            "--out-key",
            "dev.key",
        ],
        dir,
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        x509(dir, "dev.pem", &["-pubkey"]),
        sh("openssl pkey -in dev.key -pubout", dir),
        "certificate matches key"
    );
    assert!(sh("openssl verify -CAfile ca.pem dev.pem", dir).contains("OK"));
    let text = x509(dir, "dev.pem", &["-text"]);
    assert!(
        text.contains("CN = dev-7")
            && text.contains("DNS:dev-7.local, IP Address:10.0.0.7")
            && text.contains("secp384r1"),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.join("dev.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Password from a file; an existing key certified again.
    std::fs::write(dir.join("pw"), "estpwd\n").unwrap();
    let out = estuary(
        &[
            "client",
            "enroll",
            "--url",
            &url,
            "--ca",
            "ca.pem",
            "--cn",
            "dev-7",
            "--key",
            "dev.key",
            "--user",
            "estuser",
            "--password-file",
            "pw",
            "--out-cert",
            "again.pem",
        ],
        dir,
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        x509(dir, "again.pem", &["-pubkey"]),
        sh("openssl pkey -in dev.key -pubout", dir)
    );

    // Wrong password: a clear error, nothing written.
    let out = estuary(
        &[
            "client",
            "enroll",
            "--url",
            &url,
            "--ca",
            "ca.pem",
            "--cn",
            "x",
            "--user",
            "estuser",
            "--password",
            "nope",
            "--out-cert",
            "bad.pem",
            "--out-key",
            "bad.key",
        ],
        dir,
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    assert!(!dir.join("bad.pem").exists() && !dir.join("bad.key").exists());
    // A request refused before it was recorded leaves nothing to resend.
    assert!(!dir.join("bad.key.pending").exists() && !dir.join("bad.pem.csr.pending").exists());

    // Re-enroll with the same key, then with a new one (simplereenroll, cert as TLS client).
    let out = estuary(
        &[
            "client",
            "reenroll",
            "--url",
            &url,
            "--ca",
            "ca.pem",
            "--cert",
            "dev.pem",
            "--key",
            "dev.key",
            "--out-cert",
            "re.pem",
        ],
        dir,
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        x509(dir, "re.pem", &["-pubkey"]),
        sh("openssl pkey -in dev.key -pubout", dir)
    );
    assert_eq!(
        x509(dir, "re.pem", &["-subject"]),
        x509(dir, "dev.pem", &["-subject"])
    );
    let out = estuary(
        &[
            "client",
            "reenroll",
            "--url",
            &url,
            "--ca",
            "ca.pem",
            "--cert",
            "re.pem",
            "--key",
            "dev.key",
            "--rotate-key",
            "--out-cert",
            "rotated.pem",
            "--out-key",
            "rotated.key",
        ],
        dir,
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        x509(dir, "rotated.pem", &["-pubkey"]),
        sh("openssl pkey -in rotated.key -pubout", dir)
    );
    assert_ne!(
        x509(dir, "rotated.pem", &["-pubkey"]),
        x509(dir, "re.pem", &["-pubkey"])
    );
    assert!(x509(dir, "rotated.pem", &["-ext", "subjectAltName"]).contains("dev-7.local"));
    assert!(server.log_text().contains("simplereenroll"));

    // csrattrs (none configured) and serverkeygen (not offered by this server: a clear error).
    let out = estuary(
        &["client", "csrattrs", "--url", &url, "--ca", "ca.pem"],
        dir,
        None,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("204"));
    let out = estuary(
        &[
            "client",
            "serverkeygen",
            "--url",
            &url,
            "--ca",
            "ca.pem",
            "--cn",
            "k",
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
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("501"));
}

/// `estuary client enroll` on the `manual` label of `server` (Basic estuser, outputs `dev.pem`
/// and `dev.key` in `dir`): the exit code and stderr.
fn manual_client_enroll(server: &Server, dir: &std::path::Path, cn: &str) -> (Option<i32>, String) {
    let (url, ca) = (server.url(), server.ca_file());
    let out = estuary(
        &[
            "client",
            "enroll",
            "--url",
            &url,
            "--label",
            "manual",
            "--ca",
            ca.to_str().unwrap(),
            "--cn",
            cn,
            "--user",
            "estuser",
            "--password",
            "estpwd",
            "--out-cert",
            "dev.pem",
            "--out-key",
            "dev.key",
        ],
        dir,
        None,
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// RFC 7030 §4.2.3 for `estuary client enroll`: a 202 keeps the new key and the CSR next to the
/// output paths and says what to run; running the same command again resends the same CSR, and
/// after approval it writes the certificate for that key.
#[test]
fn client_enroll_completes_a_manual_approval_when_run_again() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let server = crate::agent::manual_approval_server(&data);
    let enroll = || manual_client_enroll(&server, dir, "waiting-client");

    let (code, err) = enroll();
    assert_eq!(code, Some(75), "{err}");
    let ids = pending_ids(dir, &data);
    assert_eq!(ids.len(), 1);
    assert!(
        err.contains(&format!("estuary requests approve {}", ids[0]))
            && err.contains("run this same command again"),
        "{err}"
    );
    assert!(dir.join("dev.key.pending").exists() && dir.join("dev.pem.csr.pending").exists());
    assert!(!dir.join("dev.key").exists() && !dir.join("dev.pem").exists());
    let pending_key = sh("openssl pkey -in dev.key.pending -pubout", dir);

    // Again before approval: the same request (no second pending request, no 429).
    let (code, err) = enroll();
    assert_eq!(code, Some(75), "{err}");
    assert_eq!(pending_ids(dir, &data), ids);

    estuary_ok(
        &[
            "requests",
            "approve",
            &ids[0].to_string(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir,
    );
    let (code, err) = enroll();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(x509(dir, "dev.pem", &["-pubkey"]), pending_key);
    assert_eq!(sh("openssl pkey -in dev.key -pubout", dir), pending_key);
    assert!(x509(dir, "dev.pem", &["-subject"]).contains("waiting-client"));
    assert!(!dir.join("dev.key.pending").exists() && !dir.join("dev.pem.csr.pending").exists());
}

/// Regression: `client enroll` adopted whatever `OUT_KEY.pending` / `OUT_CERT.csr.pending` it
/// found, so someone able to write next to the outputs (a shared directory) could plant a key
/// that would be certified and written as the output key. A pending file that is a symlink or
/// writable by others is now refused with a message that says what to remove.
#[test]
fn planted_pending_request_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let server = crate::agent::manual_approval_server(&data);
    let enroll = || manual_client_enroll(&server, dir, "careful-client");
    let (code, err) = enroll();
    assert_eq!(code, Some(75), "{err}");
    let key = dir.join("dev.key.pending");
    let csr = dir.join("dev.pem.csr.pending");

    // The pending key replaced by a symlink (to a key of someone else's choosing).
    std::fs::rename(&key, dir.join("elsewhere.key")).unwrap();
    std::os::unix::fs::symlink(dir.join("elsewhere.key"), &key).unwrap();
    let (code, err) = enroll();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("refusing the pending request file")
            && err.contains("dev.key.pending")
            && err.contains("symbolic link"),
        "{err}"
    );
    std::fs::remove_file(&key).unwrap();
    std::fs::rename(dir.join("elsewhere.key"), &key).unwrap();

    // The pending CSR writable by others.
    std::fs::set_permissions(&csr, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, err) = enroll();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("dev.pem.csr.pending") && err.contains("writable by group or others"),
        "{err}"
    );

    // Private again: the same request is resent.
    std::fs::set_permissions(&csr, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = enroll();
    assert_eq!(code, Some(75), "{err}");
    assert!(err.contains("resending the request"), "{err}");
    assert_eq!(pending_ids(dir, &data).len(), 1);
}

/// Regression: `client enroll` printed what it wrote before removing its pending files; with
/// stdout closed the print failed, the pending key and CSR stayed, and the next run sent the
/// old request again. They are removed as soon as the key and certificate are written.
#[test]
fn a_failed_print_leaves_no_pending_request_behind() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);
    let mut out = std::process::Command::new(BIN)
        .args([
            "client",
            "enroll",
            "--url",
            &server.url(),
            "--ca",
            server.ca_file().to_str().unwrap(),
            "--cn",
            "unprinted",
            "--user",
            "estuser",
            "--password",
            "estpwd",
            "--out-cert",
            "p.pem",
            "--out-key",
            "p.key",
        ])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads stdout: the first print fails (EPIPE), long before the enrollment is done.
    drop(out.stdout.take());
    let out = out.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the print was expected to fail: {err}"
    );
    assert!(
        dir.join("p.pem").exists() && dir.join("p.key").exists(),
        "{err}"
    );
    assert!(
        !dir.join("p.key.pending").exists() && !dir.join("p.pem.csr.pending").exists(),
        "pending files left behind after a failed print: {err}"
    );
}
