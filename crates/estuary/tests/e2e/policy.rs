//! Production policy end to end: profiles and their rules, auth per label, serverkeygen,
//! manual approval (with strongSwan polling), revocation and the CRL, rate limits, metrics and
//! health, SIGHUP reload, `estuary config check`.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A data directory with users `fleet`/`s3cret-s3cret` and `other`/`s3cret-s3cret` and `extra` appended to
/// the generated config.
fn data_dir_with(dir: &Path, extra: &str, dev: bool) -> PathBuf {
    let data = dir.join("data");
    if dev {
        drop(Server::start(&data, &["--dev"]));
    }
    for user in ["fleet", "other"] {
        add_user(dir, &data, user, "s3cret-s3cret");
    }
    let path = data.join("estuary.toml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str(extra);
    std::fs::write(&path, config).unwrap();
    data
}

fn enroll_at(
    server: &Server,
    path: &str,
    csr: &[u8],
    auth: Option<&str>,
    client: Option<&ClientIdentity<'_>>,
) -> HttpResponse {
    enroll(server, csr, path, client, auth)
}

fn save_cert(dir: &Path, name: &str, r: &HttpResponse) {
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::write(dir.join(name), pem_certs(&r.certificates()[..1])).unwrap();
}

fn refused(r: &HttpResponse, needle: &str) {
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains(needle),
        "expected {needle:?} in {}",
        r.text()
    );
}

const PROFILES: &str = r#"
[profiles.strict]
validity = "2h"
key_types = ["p256"]
key_usage = ["digitalSignature", "keyEncipherment"]
extended_key_usage = ["clientAuth", "serverAuth"]
cn_pattern = "sensor-[0-9]{4}"
san_types = ["dns"]

[profiles.own-name]
cn_equals_username = true

[profiles.sub-ca]
ca = true
pathlen = 1

[labels.strict]
profile = "strict"
auth = ["basic:fleet"]

[labels.own-name]
profile = "own-name"

[labels.sub-ca]
profile = "sub-ca"
auth = ["basic:fleet"]

[labels.certs-only]
profile = "device"
auth = ["client-cert"]
"#;

#[test]
fn profiles_enforce_every_rule_and_labels_their_auth() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = data_dir_with(dir, PROFILES, false);
    let server = Server::start(&data, &[]);
    let fleet = basic("fleet", "s3cret-s3cret");
    let other = basic("other", "s3cret-s3cret");
    let strict = "/.well-known/est/strict/simpleenroll";

    // key_types: P-256 accepted, RSA refused.
    let good = openssl_csr(
        dir,
        "good",
        P256,
        "/CN=sensor-1234",
        &["-addext", "subjectAltName=DNS:s1234.local"],
    );
    let r = enroll_at(&server, strict, &good, Some(&fleet), None);
    save_cert(dir, "strict.pem", &r);
    let rsa = openssl_csr(dir, "rsa", RSA2048, "/CN=sensor-1234", &[]);
    refused(
        &enroll_at(&server, strict, &rsa, Some(&fleet), None),
        "does not certify RSA-2048",
    );
    // key_usage, extended_key_usage and validity come from the profile.
    let text = x509(dir, "strict.pem", &["-text"]);
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Client Authentication, TLS Web Server Authentication"),
        "{text}"
    );
    let dates = x509(
        dir,
        "strict.pem",
        &["-startdate", "-enddate", "-dateopt", "iso_8601"],
    );
    assert_eq!(crate::tutorial::validity_seconds(&dates), 7200);
    // cn_pattern: must match the whole CN.
    let bad_cn = openssl_csr(dir, "badcn", P256, "/CN=sensor-12", &[]);
    refused(
        &enroll_at(&server, strict, &bad_cn, Some(&fleet), None),
        "does not match the required pattern",
    );
    let two = openssl_csr(dir, "two", P256, "/CN=sensor-1234/CN=admin", &[]);
    refused(
        &enroll_at(&server, strict, &two, Some(&fleet), None),
        "exactly one subject CN",
    );
    // Outside --dev nobody may use the edge-ca label until the operator names who may.
    refused(
        &enroll_at(
            &server,
            "/.well-known/est/edge-ca/simpleenroll",
            &two,
            Some(&fleet),
            None,
        ),
        "it accepts: nobody",
    );
    let longer = openssl_csr(dir, "longer", P256, "/CN=sensor-12345", &[]);
    refused(
        &enroll_at(&server, strict, &longer, Some(&fleet), None),
        "does not match",
    );
    // san_types: DNS copied, IP refused.
    let ip = openssl_csr(
        dir,
        "ip",
        P256,
        "/CN=sensor-1234",
        &["-addext", "subjectAltName=IP:10.0.0.1"],
    );
    refused(
        &enroll_at(&server, strict, &ip, Some(&fleet), None),
        "type ip",
    );
    // auth rules: only fleet may use the strict label.
    refused(
        &enroll_at(&server, strict, &good, Some(&other), None),
        "does not accept basic:other",
    );

    // cn_equals_username.
    let own = openssl_csr(dir, "own", P256, "/CN=fleet", &[]);
    save_cert(
        dir,
        "own.pem",
        &enroll_at(
            &server,
            "/.well-known/est/own-name/simpleenroll",
            &own,
            Some(&fleet),
            None,
        ),
    );
    refused(
        &enroll_at(
            &server,
            "/.well-known/est/own-name/simpleenroll",
            &own,
            Some(&other),
            None,
        ),
        "must equal the Basic user name",
    );

    // CA constraint with pathlen: granted as configured, a deeper request refused.
    let ca = openssl_csr(
        dir,
        "ca",
        P256,
        "/CN=Sub CA",
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    save_cert(
        dir,
        "subca.pem",
        &enroll_at(
            &server,
            "/.well-known/est/sub-ca/simpleenroll",
            &ca,
            Some(&fleet),
            None,
        ),
    );
    assert!(x509(dir, "subca.pem", &["-text"]).contains("CA:TRUE, pathlen:1"));
    let deep = openssl_csr(
        dir,
        "deep",
        P256,
        "/CN=Deep",
        &["-addext", "basicConstraints=critical,CA:TRUE,pathlen:2"],
    );
    refused(
        &enroll_at(
            &server,
            "/.well-known/est/sub-ca/simpleenroll",
            &deep,
            Some(&fleet),
            None,
        ),
        "pathlen:2",
    );
    // The device profile refuses CA requests.
    refused(
        &enroll_at(
            &server,
            "/.well-known/est/simpleenroll",
            &ca,
            Some(&fleet),
            None,
        ),
        "end-entity certificates only",
    );

    // A label that accepts only client certificates: Basic is refused, our certificate works.
    let device = openssl_csr(dir, "device", P256, "/CN=device-1", &[]);
    refused(
        &enroll_at(
            &server,
            "/.well-known/est/certs-only/simpleenroll",
            &device,
            Some(&fleet),
            None,
        ),
        "any client certificate from this CA",
    );
    save_cert(
        dir,
        "device.pem",
        &enroll_at(
            &server,
            "/.well-known/est/simpleenroll",
            &device,
            Some(&fleet),
            None,
        ),
    );
    let identity = ClientIdentity {
        cert_pem: &dir.join("device.pem"),
        key_pem: &dir.join("device.key"),
    };
    let r = enroll_at(
        &server,
        "/.well-known/est/certs-only/simpleenroll",
        &device,
        None,
        Some(&identity),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // `estuary config check` shows what each label allows.
    let out = estuary(
        &["config", "check", "--data-dir", data.to_str().unwrap()],
        dir,
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("/.well-known/est/strict")
            && text.contains("CN must match")
            && text.contains("Basic user fleet"),
        "{text}"
    );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[labels.x]\nprofile = \"nope\"\n").unwrap();
    let out = estuary(&["config", "check", bad.to_str().unwrap()], dir, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("labels.x.profile"));
    let out = estuary(
        &[
            "config",
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/estuary.toml"),
        ],
        dir,
        None,
    );
    assert!(
        out.status.success(),
        "the annotated example must pass: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serverkeygen_returns_a_key_that_matches_its_certificate() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = data_dir_with(
        dir,
        "\n[labels.keygen]\nprofile = \"keygen\"\nserverkeygen = true\n\n[profiles.keygen]\nserverkeygen_key_type = \"p384\"\n",
        false,
    );
    let server = Server::start(&data, &[]);
    let url = format!("https://localhost:{}/.well-known/est/keygen", server.port);
    let ca = server.ca_file();
    let out = estuary(
        &[
            "client",
            "serverkeygen",
            "--url",
            &url,
            "--ca",
            ca.to_str().unwrap(),
            "--cn",
            "keyless-1",
            "--user",
            "fleet",
            "--password",
            "s3cret-s3cret",
            "--out-cert",
            "skg.pem",
            "--out-key",
            "skg.key",
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
        x509(dir, "skg.pem", &["-pubkey"]),
        sh("openssl pkey -in skg.key -pubout", dir),
        "key matches certificate"
    );
    assert!(
        x509(dir, "skg.pem", &["-text"]).contains("secp384r1"),
        "the profile's key type"
    );
    assert!(sh(
        &format!("openssl verify -CAfile {} skg.pem", ca.display()),
        dir
    )
    .contains("OK"));
    // The raw response: multipart/mixed, the application/pkcs8 part first (RFC 7030 §4.4.2).
    let csr = openssl_csr(dir, "any", P256, "/CN=keyless-2", &[]);
    let r = enroll_at(
        &server,
        "/.well-known/est/keygen/serverkeygen",
        &csr,
        Some(&basic("fleet", "s3cret-s3cret")),
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("multipart/mixed; boundary="));
    let body = r.text();
    let pkcs8 = body.find("application/pkcs8").unwrap();
    let pkcs7 = body.find("application/pkcs7-mime").unwrap();
    assert!(pkcs8 < pkcs7, "{body}");
    // Off by default: other labels answer 501; the key is never in the log.
    let r = enroll_at(
        &server,
        "/.well-known/est/serverkeygen",
        &csr,
        Some(&basic("fleet", "s3cret-s3cret")),
        None,
    );
    assert_eq!(r.status, 501);
    assert!(!server.log_text().contains("PRIVATE KEY"));
}

#[test]
fn manual_approval_answers_202_until_approved_survives_restart_and_serves_strongswan() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = data_dir_with(dir, "", false);
    let config = std::fs::read_to_string(data.join("estuary.toml"))
        .unwrap()
        .replace(
            "[default]\nprofile = \"device\"\napproval = \"auto\"",
            "[default]\nprofile = \"device\"\napproval = \"manual\"",
        );
    assert!(config.contains("approval = \"manual\""));
    std::fs::write(
        data.join("estuary.toml"),
        config.replace(
            "approval_retry_after = \"60s\"",
            "approval_retry_after = \"1s\"",
        ),
    )
    .unwrap();
    let server = Server::start(&data, &[]);
    let fleet = basic("fleet", "s3cret-s3cret");
    let enroll = "/.well-known/est/simpleenroll";
    let data_arg = data.to_str().unwrap();

    let csr = openssl_csr(dir, "wait", P256, "/CN=waiting-device", &[]);
    let r = enroll_at(&server, enroll, &csr, Some(&fleet), None);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    let ids = pending_ids(dir, &data);
    assert_eq!(ids.len(), 1);
    // Still pending after a restart.
    drop(server);
    let server = Server::start(&data, &[]);
    assert_eq!(
        enroll_at(&server, enroll, &csr, Some(&fleet), None).status,
        202
    );
    estuary_ok(
        &[
            "requests",
            "approve",
            &ids[0].to_string(),
            "--data-dir",
            data_arg,
        ],
        dir,
    );
    let r = enroll_at(&server, enroll, &csr, Some(&fleet), None);
    save_cert(dir, "approved.pem", &r);
    // Asking again returns the same certificate.
    let again = enroll_at(&server, enroll, &csr, Some(&fleet), None);
    assert_eq!(again.certificates(), r.certificates());

    // A request belongs to whoever made it: another identity sending the same CSR does not
    // share it (requests are keyed by identity), and cannot queue a second one for that key.
    let mine = openssl_csr(dir, "mine", P256, "/CN=mine", &[]);
    assert_eq!(
        enroll_at(&server, enroll, &mine, Some(&fleet), None).status,
        202
    );
    let r = enroll_at(
        &server,
        enroll,
        &mine,
        Some(&basic("other", "s3cret-s3cret")),
        None,
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        r.text().contains("already waiting for approval"),
        "{}",
        r.text()
    );
    let mine_id = *pending_ids(dir, &data).first().unwrap();
    assert!(estuary(
        &[
            "requests",
            "reject",
            &mine_id.to_string(),
            "--data-dir",
            data_arg
        ],
        dir,
        None
    )
    .status
    .success());

    // Rejected: 403 with the reason.
    let csr2 = openssl_csr(dir, "reject", P256, "/CN=unknown-device", &[]);
    assert_eq!(
        enroll_at(&server, enroll, &csr2, Some(&fleet), None).status,
        202
    );
    let id = *pending_ids(dir, &data).first().unwrap();
    let out = estuary(
        &[
            "requests",
            "reject",
            &id.to_string(),
            "--reason",
            "not in the asset register",
            "--data-dir",
            data_arg,
        ],
        dir,
        None,
    );
    assert!(out.status.success());
    refused(
        &enroll_at(&server, enroll, &csr2, Some(&fleet), None),
        "not in the asset register",
    );
    let audit = String::from_utf8_lossy(
        &estuary(
            &["audit", "list", "--data-dir", data_arg, "--json"],
            dir,
            None,
        )
        .stdout,
    )
    .into_owned();
    assert!(
        audit.contains("\"approved\"")
            && audit.contains("\"rejected\"")
            && audit.contains("\"pending\""),
        "{audit}"
    );

    // strongSwan polls (--interval/--maxpolltime) while an operator approves.
    sh("pki --gen --type ecdsa --size 256 --outform pem > sw.key && pki --req --in sw.key --type priv --dn 'CN=sw-device' --outform der > sw.der", dir);
    let url = server.base();
    let ca = server.ca_file();
    let poller = {
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            run_output(
                "pki",
                &[
                    "--est",
                    "--url",
                    &url,
                    "--in",
                    "sw.der",
                    "--cacert",
                    ca.to_str().unwrap(),
                    "--userpass",
                    "fleet:s3cret-s3cret",
                    "--interval",
                    "1",
                    "--maxpolltime",
                    "60",
                    "--outform",
                    "pem",
                ],
                &dir,
                None,
            )
        })
    };
    let started = Instant::now();
    let id = loop {
        if let Some(id) = pending_ids(dir, &data).first() {
            break *id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "strongSwan's request never arrived"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(estuary(
        &[
            "requests",
            "approve",
            &id.to_string(),
            "--data-dir",
            data_arg
        ],
        dir,
        None
    )
    .status
    .success());
    let out = poller.join().unwrap();
    assert!(
        out.status.success(),
        "pki --est: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("sw.pem"), &out.stdout).unwrap();
    assert!(x509(dir, "sw.pem", &["-subject"]).contains("CN = sw-device"));
}

#[test]
fn revocation_is_enforced_at_once_and_published_in_a_verifiable_crl() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    drop(Server::start(&data, &["--dev"]));
    let config = std::fs::read_to_string(data.join("estuary.toml"))
        .unwrap()
        .replace("url = \"\"", "url = \"http://crl.example.test/crl\"");
    std::fs::write(data.join("estuary.toml"), config).unwrap();
    let server = Server::start(&data, &["--dev", "--crl-listen", "127.0.0.1:0"]);
    let auth = estuser();
    let enroll = "/.well-known/est/simpleenroll";

    let a = openssl_csr(dir, "a", P256, "/CN=to-be-revoked", &[]);
    save_cert(
        dir,
        "a.pem",
        &enroll_at(&server, enroll, &a, Some(&auth), None),
    );
    let b = openssl_csr(dir, "b", P256, "/CN=stays-good", &[]);
    save_cert(
        dir,
        "b.pem",
        &enroll_at(&server, enroll, &b, Some(&auth), None),
    );
    let text = x509(dir, "a.pem", &["-text"]);
    assert!(
        text.contains("CRL Distribution Points")
            && text.contains("URI:http://crl.example.test/crl"),
        "{text}"
    );
    let a_id = ClientIdentity {
        cert_pem: &dir.join("a.pem"),
        key_pem: &dir.join("a.key"),
    };
    assert_eq!(
        enroll_at(&server, enroll, &a, None, Some(&a_id)).status,
        200,
        "A authenticates before revocation"
    );

    let serial = x509(dir, "a.pem", &["-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_string();
    let data_arg = data.to_str().unwrap();
    let out = estuary(
        &[
            "certs",
            "revoke",
            &serial,
            "--reason",
            "keyCompromise",
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
    assert!(!estuary(
        &["certs", "revoke", "00", "--data-dir", data_arg],
        dir,
        None
    )
    .status
    .success());
    assert!(!estuary(
        &[
            "certs",
            "revoke",
            &serial,
            "--reason",
            "bored",
            "--data-dir",
            data_arg
        ],
        dir,
        None
    )
    .status
    .success());

    // At once: no caching past a revocation.
    let r = enroll_at(&server, enroll, &a, None, Some(&a_id));
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(server.refusal(&r).contains("revoked"));
    let r = enroll_at(
        &server,
        "/.well-known/est/simplereenroll",
        &a,
        None,
        Some(&a_id),
    );
    assert_eq!(r.status, 401);

    // The CRL lists it within a couple of seconds, on the EST listener and the CRL listener.
    let started = Instant::now();
    loop {
        let r = server.get("/crl");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/pkix-crl"));
        std::fs::write(dir.join("crl.der"), &r.body).unwrap();
        if sh("openssl crl -inform DER -in crl.der -noout -text", dir).contains(&serial) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the CRL never listed the revoked certificate"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, plain) = http_get(server.crl_port.unwrap(), "/crl");
    assert_eq!(status, 200);
    std::fs::write(dir.join("plain.der"), plain).unwrap();
    assert!(sh("openssl crl -inform DER -in plain.der -noout -text", dir).contains(&serial));
    let ca = server.ca_file();
    let ca = ca.to_str().unwrap();
    let crl_text = sh(
        &format!("openssl crl -inform DER -in crl.der -CAfile {ca} -verify -noout -text 2>&1"),
        dir,
    );
    assert!(
        crl_text.contains("verify OK")
            && crl_text.contains("Key Compromise")
            && crl_text.contains("X509v3 CRL Number"),
        "{crl_text}"
    );
    sh("openssl crl -inform DER -in crl.der -out crl.pem", dir);
    assert!(sh(
        &format!("openssl verify -crl_check -CAfile {ca} -CRLfile crl.pem b.pem"),
        dir
    )
    .contains("b.pem: OK"));
    let out = run_output(
        "openssl",
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            ca,
            "-CRLfile",
            "crl.pem",
            "a.pem",
        ],
        dir,
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("certificate revoked")
            || String::from_utf8_lossy(&out.stderr).contains("certificate revoked")
    );

    let show = String::from_utf8_lossy(
        &estuary(
            &["certs", "show", &serial, "--data-dir", data_arg],
            dir,
            None,
        )
        .stdout,
    )
    .into_owned();
    assert!(show.contains("revoked"), "{show}");
    let audit = String::from_utf8_lossy(
        &estuary(
            &["audit", "list", "--data-dir", data_arg, "--json"],
            dir,
            None,
        )
        .stdout,
    )
    .into_owned();
    assert!(audit.contains("\"revoked\""), "{audit}");
}

#[test]
fn rate_limits_answer_429_and_recover_and_failed_logins_cost_more() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = data_dir_with(dir, "", true);
    let config = std::fs::read_to_string(data.join("estuary.toml"))
        .unwrap()
        .replace(
            "per_address_per_minute = 600",
            "per_address_per_minute = 30",
        )
        .replace("failed_auth_cost = 60", "failed_auth_cost = 14");
    std::fs::write(data.join("estuary.toml"), config).unwrap();
    let server = Server::start(&data, &["--dev"]);
    let get = || server.get("/.well-known/est/cacerts");
    let mut limited = None;
    for _ in 0..40 {
        let r = get();
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let r = limited.expect("the 31st request within a minute is limited");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&wait), "Retry-After {wait}");
    assert!(r.text().contains("too many requests"));
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(get().status, 200, "recovers after Retry-After");
    drop(server);

    // Failed logins cost 14 requests each: three wrong passwords overdraw a budget of 30 by 12
    // (26 s to refill, however slowly the checks run on a loaded machine).
    let server = Server::start(&data, &["--dev"]);
    let csr = openssl_csr(dir, "rl", P256, "/CN=rl", &[]);
    for _ in 0..3 {
        let r = enroll_at(
            &server,
            "/.well-known/est/simpleenroll",
            &csr,
            Some(&basic("estuser", "guess")),
            None,
        );
        assert_eq!(r.status, 401);
    }
    let r = server.get("/.well-known/est/cacerts");
    assert_eq!(
        r.status, 429,
        "after three failed logins the address is limited"
    );
    let (_, metrics) = http_get(server.admin_port, "/metrics");
    assert!(String::from_utf8_lossy(&metrics).contains("estuary_rate_limited_total 1"));
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn metrics_move_and_health_endpoints_answer() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);
    assert_eq!(
        http_get(server.admin_port, "/healthz"),
        (200, b"ok\n".to_vec())
    );
    let (status, body) = http_get(server.admin_port, "/readyz");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(http_get(server.admin_port, "/nothing").0, 404);
    let before = String::from_utf8(http_get(server.admin_port, "/metrics").1).unwrap();
    let ok = "estuary_requests_total{endpoint=\"simpleenroll\",label=\"\",status=\"200\"}";
    assert_eq!(metric(&before, ok), 0.0);

    let csr = openssl_csr(dir, "m", P256, "/CN=metrics", &[]);
    for _ in 0..2 {
        assert_eq!(
            enroll_at(
                &server,
                "/.well-known/est/simpleenroll",
                &csr,
                Some(&estuser()),
                None
            )
            .status,
            200
        );
    }
    assert_eq!(
        enroll_at(
            &server,
            "/.well-known/est/simpleenroll",
            &csr,
            Some(&basic("estuser", "nope")),
            None
        )
        .status,
        401
    );
    // An open connection shows in the gauge.
    let _idle = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let after = String::from_utf8(http_get(server.admin_port, "/metrics").1).unwrap();
    assert_eq!(metric(&after, ok), 2.0, "{after}");
    assert_eq!(
        metric(
            &after,
            "estuary_requests_total{endpoint=\"simpleenroll\",label=\"\",status=\"401\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "estuary_certificates_issued_total{profile=\"device\",label=\"\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &after,
            "estuary_auth_failures_total{reason=\"wrong_password\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&after, "estuary_issuance_duration_seconds_count"),
        2.0
    );
    assert_eq!(metric(&after, "estuary_store_duration_seconds_count"), 2.0);
    assert!(metric(&after, "estuary_open_connections") >= 1.0, "{after}");
    assert!(after.contains("# TYPE estuary_issuance_duration_seconds histogram"));
}

#[test]
fn sighup_reloads_the_config_without_dropping_connections() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let server = Server::start(&data, &["--dev"]);
    // A keep-alive connection opened before the reload.
    let mut tls = server.tls_stream();
    let cacerts = b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n\r\n";
    tls.write_all(cacerts).unwrap();
    assert_eq!(read_one(&mut tls), 200);

    let csr = openssl_csr(dir, "new", P256, "/CN=newbie", &[]);
    let newbie = basic("newbie", "fresh-passphrase");
    assert_eq!(
        enroll_at(
            &server,
            "/.well-known/est/simpleenroll",
            &csr,
            Some(&newbie),
            None
        )
        .status,
        401
    );
    let out = estuary(
        &[
            "user",
            "add",
            "newbie",
            "--data-dir",
            data.to_str().unwrap(),
            "--password-stdin",
        ],
        dir,
        Some(b"fresh-passphrase\n"),
    );
    assert!(out.status.success());
    server.sighup();
    server.wait_for_log("configuration reloaded", 1);
    assert_eq!(
        enroll_at(
            &server,
            "/.well-known/est/simpleenroll",
            &csr,
            Some(&newbie),
            None
        )
        .status,
        200
    );
    // The old connection still works.
    tls.write_all(cacerts).unwrap();
    assert_eq!(read_one(&mut tls), 200);

    // A broken file is refused; the server keeps the previous settings.
    let path = data.join("estuary.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\nnonsense = 1\n")).unwrap();
    server.sighup();
    server.wait_for_log("NOT reloaded", 1);
    assert_eq!(
        enroll_at(
            &server,
            "/.well-known/est/simpleenroll",
            &csr,
            Some(&newbie),
            None
        )
        .status,
        200
    );
    let (_, metrics) = http_get(server.admin_port, "/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("estuary_config_reloads_total{result=\"ok\"} 1")
            && metrics.contains("estuary_config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
}

/// Reads one HTTP response with a Content-Length from a keep-alive stream; returns the status.
fn read_one(stream: &mut impl std::io::Read) -> u16 {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "connection closed");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}
