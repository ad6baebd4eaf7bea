//! A chain of EST servers for layered (ISA-95) networks: a top CA, and registration
//! authorities (`serve --upstream`) below it, all real processes on loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::iot_edge::iot_edge_issue;

/// Starts a registration authority in `data` forwarding to `upstream` (whose TLS certificate
/// chains to `root`), with the tutorial's credentials and a CRL refresh every second.
fn start_ra(data: &Path, upstream: &Server, root: &Path, extra: &[&str]) -> Server {
    start_ra_at(
        data,
        upstream.port,
        root,
        extra,
        &["--listen", "127.0.0.1:0"],
    )
}

fn start_ra_at(
    data: &Path,
    upstream_port: u16,
    root: &Path,
    extra: &[&str],
    listen: &[&str],
) -> Server {
    if !data.join("estuary.toml").exists() {
        write_ra_config(
            data,
            upstream_port,
            root,
            ("estuser", "estpwd"),
            "crl_refresh = \"1s\"\ntimeout = \"3s\"\n",
        );
    }
    let mut args = vec!["--dev"];
    args.extend_from_slice(extra);
    Server::start_with_listen(data, &args, listen)
}

/// Writes `toml` as the config file of a new data directory `data`.
fn write_config(data: &Path, toml: &str) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(data.join("estuary.toml"), toml).unwrap();
}

/// A registration authority's data directory: `[upstream]` towards the server on
/// `upstream_port` (whose TLS certificate chains to `root`), with Basic `credential`, the
/// `[upstream]` keys in `upstream_extra`, then `rest` (labels and other tables).
fn write_ra_config_with(
    data: &Path,
    upstream_port: u16,
    root: &Path,
    (user, password): (&str, &str),
    upstream_extra: &str,
    rest: &str,
) {
    write_config(
        data,
        &format!(
            "{rest}\n[upstream]\nurl = \"https://localhost:{upstream_port}/.well-known/est\"\n\
             ca = \"upstream-ca.pem\"\nuser = \"{user}\"\npassword = \"{password}\"\n{upstream_extra}"
        ),
    );
    std::fs::copy(root, data.join("upstream-ca.pem")).unwrap();
}

fn write_ra_config(
    data: &Path,
    upstream_port: u16,
    root: &Path,
    credential: (&str, &str),
    upstream_extra: &str,
) {
    write_ra_config_with(data, upstream_port, root, credential, upstream_extra, "");
}

/// The root every layer serves: the top CA's.
fn root_of(top: &Server) -> PathBuf {
    top.ca_file()
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_device_enrolls_and_renews_through_two_registration_authorities() {
    let tmp = tempdir();
    let dir = tmp.path();
    let top = Server::start(&dir.join("top"), &["--dev"]);
    let root = root_of(&top);
    let middle = start_ra(&dir.join("middle"), &top, &root, &[]);
    let bottom = start_ra(&dir.join("bottom"), &middle, &root, &[]);

    // Every layer serves the top root as its ca-cert.pem and at /cacerts.
    for layer in [&middle, &bottom] {
        assert_eq!(
            std::fs::read(layer.ca_file()).unwrap(),
            std::fs::read(&root).unwrap()
        );
    }

    // The tutorial's "get the CA certificate" at the bottom puts the top root in cert2.pem.
    sh(
        &format!(
            "openssl s_client -showcerts -verify 5 -connect localhost:{} < /dev/null \
             | awk '/BEGIN/,/END/{{ if(/BEGIN/){{a++}}; out=\"cert\"a\".pem\"; print >out}}'",
            bottom.port
        ),
        dir,
    );
    assert_eq!(
        pem::parse(std::fs::read(dir.join("cert2.pem")).unwrap())
            .unwrap()
            .contents(),
        pem::parse(std::fs::read(&root).unwrap())
            .unwrap()
            .contents()
    );

    // A device at the bottom enrolls with Basic; its certificate verifies against the top root.
    let csr = openssl_csr(dir, "device", P256, "/CN=plant-device-1", &[]);
    let r = enroll_as_estuser(&bottom, &csr);
    assert_eq!(r.status, 200, "{}", bottom.refusal(&r));
    let leaf = r.certificates().remove(0);
    std::fs::write(
        dir.join("device.pem"),
        pem_certs(std::slice::from_ref(&leaf)),
    )
    .unwrap();
    let verified = sh(
        &format!("openssl verify -CAfile {} device.pem", root.display()),
        dir,
    );
    assert!(verified.contains("device.pem: OK"), "{verified}");
    let serial = x509(dir, "device.pem", &["-serial", "-noout"])
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();

    // Every layer recorded it: the top issued it for the middle RA on behalf of the device.
    let top_audit = estuary_ok(
        &[
            "audit",
            "list",
            "--data-dir",
            top.data_dir.to_str().unwrap(),
        ],
        dir,
    );
    assert!(top_audit.contains("ra:"), "{top_audit}");
    assert!(top_audit.contains("basic:estuser"), "{top_audit}");
    for layer in [&middle, &bottom] {
        let listed = estuary_ok(
            &[
                "certs",
                "list",
                "--data-dir",
                layer.data_dir.to_str().unwrap(),
            ],
            dir,
        );
        assert!(listed.contains("plant-device-1"), "{listed}");
    }

    // The bottom's metrics show what it forwarded and when its own certificates expire.
    let (status, metrics) = http_get(bottom.admin_port, "/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("estuary_upstream_forwarded_total{outcome=\"issued\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("estuary_ra_certificate_expiry_seconds{certificate=\"server\"}"));
    assert!(metrics.contains("estuary_upstream_crl_next_update_seconds "));

    // It renews at the bottom with only its client certificate.
    let identity = ClientIdentity {
        cert_pem: &dir.join("device.pem"),
        key_pem: &dir.join("device.key"),
    };
    let r = enroll(
        &bottom,
        &csr,
        "/.well-known/est/simplereenroll",
        Some(&identity),
        None,
    );
    assert_eq!(r.status, 200, "{}", bottom.refusal(&r));

    // IoT Edge at the bottom: concurrent cacerts + simpleenroll with Basic, then renewal with
    // the issued certificate, and an Edge CA certificate.
    let edge_csr = openssl_csr(dir, "edge", RSA2048, "/CN=edge-device", &[]);
    let (edge_leaf, chain) = iot_edge_issue(&bottom, &edge_csr, None);
    assert_eq!(
        chain.last().unwrap(),
        pem::parse(std::fs::read(&root).unwrap())
            .unwrap()
            .contents()
    );
    std::fs::write(dir.join("edge.pem"), pem_certs(&[edge_leaf])).unwrap();
    let edge_identity = ClientIdentity {
        cert_pem: &dir.join("edge.pem"),
        key_pem: &dir.join("edge.key"),
    };
    iot_edge_issue(&bottom, &edge_csr, Some(&edge_identity));
    let edge_ca_csr = openssl_csr(
        dir,
        "edgeca",
        RSA2048,
        "/CN=aziot-edge CA edge-device",
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,digitalSignature,keyCertSign",
        ],
    );
    let (edge_ca, _) = iot_edge_issue(&bottom, &edge_ca_csr, None);
    std::fs::write(dir.join("edgeca.pem"), pem_certs(&[edge_ca])).unwrap();
    assert!(x509(dir, "edgeca.pem", &["-text"]).contains("CA:TRUE, pathlen:0"));

    // strongSwan's pki through the chain: cacerts, enroll with Basic.
    let ca = bottom.ca_file();
    let ca = ca.to_str().unwrap();
    sh(
        "pki --gen --type ecdsa --size 256 --outform pem > sw.key",
        dir,
    );
    sh(
        "pki --req --in sw.key --type priv --dn 'CN=sw-device' --outform der > sw.der",
        dir,
    );
    let cert = run(
        "pki",
        &[
            "--est",
            "--url",
            &bottom.base(),
            "--in",
            "sw.der",
            "--cacert",
            ca,
            "--userpass",
            "estuser:estpwd",
            "--outform",
            "pem",
        ],
        dir,
    );
    std::fs::write(dir.join("sw.pem"), &cert).unwrap();
    assert!(x509(dir, "sw.pem", &["-subject"]).contains("CN = sw-device"));

    // The top revokes the device: once the CRL has travelled down, the bottom refuses it.
    estuary_ok(
        &[
            "certs",
            "revoke",
            &serial,
            "--data-dir",
            top.data_dir.to_str().unwrap(),
        ],
        dir,
    );
    wait_until(
        "the revocation to reach the bottom",
        Duration::from_secs(30),
        || {
            let r = enroll(
                &bottom,
                &csr,
                "/.well-known/est/simplereenroll",
                Some(&identity),
                None,
            );
            r.status == 401 || r.status == 403
        },
    );

    // The top stops: the bottom still serves cacerts, and answers an enrollment with 503 and
    // Retry-After quickly; once the top is back, the next enrollment succeeds.
    let top_dir = top.data_dir.clone();
    let top_port = top.port;
    top.stop();
    let r = https(
        bottom.port,
        "localhost",
        &bottom.ca_file(),
        None,
        "GET",
        "/.well-known/est/cacerts",
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    let csr2 = openssl_csr(dir, "device2", P256, "/CN=plant-device-2", &[]);
    let started = Instant::now();
    let r = enroll_as_estuser(&bottom, &csr2);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let listen = format!("127.0.0.1:{top_port}");
    let _top = Server::start_with_listen(&top_dir, &["--dev"], &["--listen", &listen]);
    let r = enroll_as_estuser(&bottom, &csr2);
    assert_eq!(r.status, 200, "{}", bottom.refusal(&r));
}

#[test]
fn the_top_decides_which_registration_authority_may_ask_for_what() {
    let tmp = tempdir();
    let dir = tmp.path();
    let top_dir = dir.join("top");
    // The production policy of docs/layered-networks.md: an operator approves a new RA once
    // (its renewals are automatic), its server certificate carries exactly its own names, and
    // it may forward only plant1 devices (CN only, no subjectAltName), only under "devices".
    write_config(
        &top_dir,
        r#"
approval_retry_after = "1s"

[registration_authorities.plant1-ra]
subject = "plant1-.*"

[labels.est-ra]
profile = "est-ra"
approval = "manual-first"
auth = ["basic:ra-bootstrap", "client-cert:label:est-ra"]
subject = "same-as-client-cert"

[labels.est-server]
profile = "tls-server"
auth = ["client-cert:label:est-ra"]
subject = "same-as-client-cert"

[labels.devices]
profile = "device"
auth = ["ra:plant1-ra"]

[labels.operators]
profile = "device"
auth = ["basic:ra-bootstrap"]

[rate_limits]
per_address_per_minute = 40
"#,
    );
    add_user(dir, &top_dir, "ra-bootstrap", "s3cret-s3cret");
    let top = Server::start(&top_dir, &[]);
    let root = top.ca_file();

    let ra_dir = dir.join("ra");
    write_ra_config_with(
        &ra_dir,
        top.port,
        &root,
        ("ra-bootstrap", "s3cret-s3cret"),
        "",
        "[labels.devices]\nprofile = \"device\"\nauth = [\"basic\", \"client-cert\"]\nsubject = \"any\"\n",
    );
    add_user(dir, &ra_dir, "device-user", "s3cret-s3cret");
    // The top's operator approves the new RA while it waits.
    let approver = {
        let (dir, top_dir) = (dir.to_path_buf(), top_dir.clone());
        std::thread::spawn(move || {
            wait_until(
                "the RA's request at the top",
                Duration::from_secs(60),
                || !pending_ids(&dir, &top_dir).is_empty(),
            );
            let id = pending_ids(&dir, &top_dir)[0].to_string();
            estuary_ok(
                &[
                    "requests",
                    "approve",
                    &id,
                    "--data-dir",
                    top_dir.to_str().unwrap(),
                ],
                &dir,
            );
        })
    };
    let ra = Server::start(&ra_dir, &["--san", "plant1-ra"]);
    approver.join().unwrap();
    let device = basic("device-user", "s3cret-s3cret");
    let devices = "/.well-known/est/devices/simpleenroll";

    // Inside the RA's rule: issued. More requests than the top allows one address: the RA
    // carries many devices from one address, and its forwarded requests are not limited there.
    let csr = openssl_csr(dir, "ok", P256, "/CN=plant1-sensor", &[]);
    for _ in 0..45 {
        let r = enroll(&ra, &csr, devices, None, Some(&device));
        assert_eq!(r.status, 200, "{}", ra.refusal(&r));
    }
    std::fs::write(
        dir.join("ok.pem"),
        pem_certs(&enroll(&ra, &csr, devices, None, Some(&device)).certificates()),
    )
    .unwrap();

    // Outside the RA's rule, refused by the top and passed down as a 403: another CN, another
    // subject attribute, a subjectAltName.
    for (name, subject, extra) in [
        ("cn", "/CN=plant2-sensor", vec![]),
        ("org", "/CN=plant1-x/O=Plant2 Corp", vec![]),
        (
            "san",
            "/CN=plant1-x",
            vec!["-addext", "subjectAltName=DNS:ca.example.com"],
        ),
    ] {
        let csr = openssl_csr(dir, name, P256, subject, &extra);
        let r = enroll(&ra, &csr, devices, None, Some(&device));
        assert_eq!(r.status, 403, "{name}: {}", r.text());
    }

    // The RA's own certificates: the server certificate has exactly the RA certificate's
    // names; neither it nor the bootstrap password gets a server certificate for another name.
    let ra_identity = ClientIdentity {
        cert_pem: &ra_dir.join("ra-cert.pem"),
        key_pem: &ra_dir.join("ra-key.pem"),
    };
    let csr = openssl_csr(
        dir,
        "mitm",
        P256,
        "/CN=plant1-ra",
        &["-addext", "subjectAltName=DNS:localhost,DNS:ca.example.com"],
    );
    let server_path = "/.well-known/est/est-server/simpleenroll";
    let r = enroll(&top, &csr, server_path, Some(&ra_identity), None);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = enroll(
        &top,
        &csr,
        server_path,
        None,
        Some(&basic("ra-bootstrap", "s3cret-s3cret")),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // Renewing itself into another name: RFC 7030 §4.2.2 applies to an RA too.
    let csr = openssl_csr(dir, "rename", P256, "/CN=plant2-ra", &[]);
    let r = enroll(
        &top,
        &csr,
        "/.well-known/est/est-ra/simplereenroll",
        Some(&ra_identity),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());

    // The RA certificate at the top without forwarding is a plain client certificate, which
    // "devices" does not accept; a certificate of the top that did not go through this RA is
    // no identity at the RA.
    let csr = openssl_csr(dir, "direct", P256, "/CN=plant1-other", &[]);
    let r = enroll(&top, &csr, devices, Some(&ra_identity), None);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = enroll(&ra, &csr, devices, Some(&ra_identity), None);
    assert_eq!(r.status, 401, "{}", r.text());
    let r = enroll(
        &top,
        &csr,
        "/.well-known/est/operators/simpleenroll",
        Some(&ra_identity),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());

    // A device certificate revoked at the top cannot be renewed through the RA, even before
    // the RA's CRL (refreshed every 5 minutes here) lists it.
    let serial = x509(dir, "ok.pem", &["-serial", "-noout"])
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    estuary_ok(
        &[
            "certs",
            "revoke",
            &serial,
            "--data-dir",
            top_dir.to_str().unwrap(),
        ],
        dir,
    );
    let ok = ClientIdentity {
        cert_pem: &dir.join("ok.pem"),
        key_pem: &dir.join("ok.key"),
    };
    let csr = openssl_csr(dir, "ok2", P256, "/CN=plant1-sensor", &[]);
    let r = enroll(
        &ra,
        &csr,
        "/.well-known/est/devices/simplereenroll",
        Some(&ok),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("revoked"), "{}", r.text());

    // `config check` says what each layer does.
    let check = |data: &std::path::Path| {
        estuary_ok(
            &["config", "check", "--data-dir", data.to_str().unwrap()],
            dir,
        )
    };
    let top_check = check(&top_dir);
    assert!(
        top_check.contains("ra:plant1-ra may ask for: CN plant1-.*, subjectAltName none"),
        "{top_check}"
    );
    let ra_check = check(&ra_dir);
    assert!(
        ra_check.contains("registration authority: forwards every enrollment"),
        "{ra_check}"
    );
    assert!(
        ra_check.contains("the label of the same name at the parent"),
        "{ra_check}"
    );
}

#[test]
fn approval_at_the_top_and_bootstrap_certificates_at_the_bottom_pass_through_the_chain() {
    let tmp = tempdir();
    let dir = tmp.path();
    // The top holds requests under "approved" for its operator; any RA of its own may forward.
    let top_dir = dir.join("top");
    write_config(
        &top_dir,
        "approval_retry_after = \"1s\"\n\n[labels.approved]\nprofile = \"device\"\n\
         approval = \"manual-first\"\nauth = [\"ra\"]\nsubject = \"any\"\n",
    );
    let top = Server::start(&top_dir, &["--dev"]);
    let root = root_of(&top);

    // A manufacturer's bootstrap CA whose certificates the RA accepts (IoT Edge's est-id flow).
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout mfg.key -out mfg.pem \
           -subj '/CN=Acme Manufacturing CA' -days 30 -addext basicConstraints=critical,CA:TRUE \
           -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null && \
         openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout boot.key -out boot.csr -subj /CN=myiotedgedevice 2>/dev/null && \
         printf 'basicConstraints=CA:FALSE\\nkeyUsage=critical,digitalSignature\\nextendedKeyUsage=clientAuth\\n' > boot.ext && \
         openssl x509 -req -in boot.csr -CA mfg.pem -CAkey mfg.key -set_serial 7 -days 30 -extfile boot.ext -out boot.pem 2>/dev/null",
        dir,
    );
    let ra_dir = dir.join("ra");
    write_ra_config_with(
        &ra_dir,
        top.port,
        &root,
        ("estuser", "estpwd"),
        "crl_refresh = \"1s\"\n",
        &format!(
            "bootstrap_ca = [{:?}]\n\n[labels.approved]\nprofile = \"device\"\nauth = [\"basic\", \"client-cert\"]\n\
             subject = \"any\"\n\n[labels.est-id]\nprofile = \"device\"\nupstream_label = \"default\"\n\
             auth = [\"bootstrap\"]\nsubject = \"same-as-client-cert\"\n",
            dir.join("mfg.pem").display()
        ),
    );
    let ra = Server::start(&ra_dir, &["--dev"]);

    // Manual approval at the top: 202 + Retry-After at the RA until the top's operator
    // approves; the device's repeated request then gets its certificate.
    let csr = openssl_csr(dir, "waiting", P256, "/CN=waiting-device", &[]);
    let path = "/.well-known/est/approved/simpleenroll";
    let r = enroll(&ra, &csr, path, None, Some(&estuser()));
    assert_eq!(r.status, 202, "{}", ra.refusal(&r));
    assert!(r.header("retry-after").is_some());
    let r = enroll(&ra, &csr, path, None, Some(&estuser()));
    assert_eq!(r.status, 202, "{}", r.text());
    let ids = pending_ids(dir, &top_dir);
    assert_eq!(
        ids.len(),
        1,
        "one request at the top, however often the device asks"
    );
    // The RA's 202 names the top's request: what the top's operator approves.
    assert_eq!(
        r.header("x-estuary-approval-request"),
        Some(ids[0].to_string().as_str())
    );
    estuary_ok(
        &[
            "requests",
            "approve",
            &ids[0].to_string(),
            "--data-dir",
            top_dir.to_str().unwrap(),
        ],
        dir,
    );
    let r = enroll(&ra, &csr, path, None, Some(&estuser()));
    assert_eq!(r.status, 200, "{}", ra.refusal(&r));

    // manual-first: the device renews with its certificate through the RA at once (the RA
    // names the certificate it renews); a new key for the same name by password waits again.
    std::fs::write(dir.join("waiting.pem"), pem_certs(&r.certificates())).unwrap();
    let waiting = ClientIdentity {
        cert_pem: &dir.join("waiting.pem"),
        key_pem: &dir.join("waiting.key"),
    };
    let renew = openssl_csr(dir, "renew", P256, "/CN=waiting-device", &[]);
    let r = enroll(
        &ra,
        &renew,
        "/.well-known/est/approved/simplereenroll",
        Some(&waiting),
        None,
    );
    assert_eq!(r.status, 200, "{}", ra.refusal(&r));
    let r = enroll(&ra, &renew, path, None, Some(&estuser()));
    assert_eq!(r.status, 202, "{}", ra.refusal(&r));

    // IoT Edge's bootstrap flow at the RA: the bootstrap certificate gets est-id (forwarded to
    // the top's default label); the bootstrap certificate itself is refused by the top.
    let boot = ClientIdentity {
        cert_pem: &dir.join("boot.pem"),
        key_pem: &dir.join("boot.key"),
    };
    let est_id_csr = openssl_csr(dir, "estid", P256, "/CN=myiotedgedevice", &[]);
    let r = enroll(
        &ra,
        &est_id_csr,
        "/.well-known/est/est-id/simpleenroll",
        Some(&boot),
        None,
    );
    assert_eq!(r.status, 200, "{}", ra.refusal(&r));
    std::fs::write(dir.join("estid.pem"), pem_certs(&r.certificates())).unwrap();
    let verified = sh(
        &format!("openssl verify -CAfile {} estid.pem", root.display()),
        dir,
    );
    assert!(verified.contains("estid.pem: OK"), "{verified}");
    let r = enroll(
        &top,
        &est_id_csr,
        "/.well-known/est/simpleenroll",
        Some(&boot),
        None,
    );
    assert_eq!(r.status, 401, "the top does not know the manufacturer's CA");
}

#[test]
fn an_ra_started_with_flags_is_the_same_ra_after_a_restart_without_them() {
    let tmp = tempdir();
    let dir = tmp.path();
    let top = Server::start(&dir.join("top"), &["--dev"]);
    std::fs::copy(top.ca_file(), dir.join("top-root.pem")).unwrap();
    let url = top.url();
    let ra_dir = dir.join("ra");
    let ra = Server::start(
        &ra_dir,
        &[
            "--dev",
            "--upstream",
            &url,
            // Relative to where the command runs (the test's directory is not the data dir).
            "--upstream-ca",
            dir.join("top-root.pem").to_str().unwrap(),
            "--upstream-user",
            "estuser:estpwd",
            "--san",
            "ra1.example",
        ],
    );
    let config = std::fs::read_to_string(ra_dir.join("estuary.toml")).unwrap();
    assert!(
        config.contains("[upstream]") && config.contains(&url),
        "{config}"
    );
    drop(ra);
    let ra = Server::start(&ra_dir, &["--dev"]);
    let csr = openssl_csr(dir, "d", P256, "/CN=after-restart", &[]);
    let r = enroll_as_estuser(&ra, &csr);
    assert_eq!(r.status, 200, "{}", ra.refusal(&r));
    let audit = estuary_ok(
        &[
            "audit",
            "list",
            "--data-dir",
            top.data_dir.to_str().unwrap(),
        ],
        dir,
    );
    assert!(audit.contains("ra:ra1.example"), "{audit}");
}

#[test]
fn an_ra_under_a_top_with_an_issuing_ca_serves_the_whole_chain_and_renews_devices() {
    let tmp = tempdir();
    let dir = tmp.path();
    let top_dir = dir.join("top");
    estuary_ok(
        &[
            "ca",
            "init",
            "--intermediate",
            "--data-dir",
            top_dir.to_str().unwrap(),
        ],
        dir,
    );
    let root = top_dir.join("offline-root/root-cert.pem");
    let top = Server::start(&top_dir, &["--dev"]);
    // The RA pins the offline root alone; /cacerts (a DER-sorted SET) gives it the chain.
    let ra = start_ra(&dir.join("ra"), &top, &root, &[]);
    assert_eq!(
        std::fs::read(ra.ca_file()).unwrap(),
        std::fs::read(top.ca_file()).unwrap(),
        "the RA's ca-cert.pem is the top's chain, issuing CA first"
    );

    let csr = openssl_csr(dir, "device", P256, "/CN=plant-device-9", &[]);
    let r = enroll_as_estuser(&ra, &csr);
    assert_eq!(r.status, 200, "{}", ra.refusal(&r));
    std::fs::write(dir.join("device.pem"), pem_certs(&r.certificates())).unwrap();
    let verified = sh(
        &format!(
            "openssl verify -CAfile {} -untrusted {} device.pem",
            root.display(),
            top.ca_file().display()
        ),
        dir,
    );
    assert!(verified.contains("device.pem: OK"), "{verified}");
    let identity = ClientIdentity {
        cert_pem: &dir.join("device.pem"),
        key_pem: &dir.join("device.key"),
    };
    let r = enroll(
        &ra,
        &csr,
        "/.well-known/est/simplereenroll",
        Some(&identity),
        None,
    );
    assert_eq!(r.status, 200, "{}", ra.refusal(&r));
}

#[test]
fn an_ra_renews_its_own_certificates_before_they_expire_and_serves_the_new_tls_certificate() {
    let tmp = tempdir();
    let dir = tmp.path();
    // Certificates of 20 s: the RA renews at 80% (16 s), on its own timer.
    let top = Server::start(&dir.join("top"), &["--dev", "--validity", "20s"]);
    let root = root_of(&top);
    let ra = start_ra(&dir.join("ra"), &top, &root, &[]);
    let tls_serial = || {
        sh(
            &format!(
                "openssl s_client -connect 127.0.0.1:{} -CAfile {} < /dev/null 2>/dev/null \
                 | openssl x509 -noout -serial",
                ra.port,
                root.display()
            ),
            dir,
        )
    };
    let first_tls = tls_serial();
    let first_ra = std::fs::read(ra.data_dir.join("ra-cert.pem")).unwrap();
    wait_until(
        "the RA's renewed certificates",
        Duration::from_secs(40),
        || {
            tls_serial() != first_tls
                && std::fs::read(ra.data_dir.join("ra-cert.pem")).unwrap() != first_ra
        },
    );
    // Forwarding works with the renewed RA certificate.
    let csr = openssl_csr(dir, "after", P256, "/CN=after-renewal", &[]);
    let r = enroll_as_estuser(&ra, &csr);
    assert_eq!(r.status, 200, "{}", ra.refusal(&r));
}

/// `POST /simpleenroll` of `csr` on the unlabeled path with the tutorial's Basic user.
fn enroll_as_estuser(server: &Server, csr: &[u8]) -> HttpResponse {
    enroll(
        server,
        csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&estuser()),
    )
}
