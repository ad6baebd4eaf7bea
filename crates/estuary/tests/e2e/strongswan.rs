//! strongSwan's `pki --estca` and `pki --est` (enroll with Basic, re-enroll with --cert/--key).

use crate::harness::*;

#[test]
fn strongswan_pki_gets_cacerts_enrolls_and_reenrolls() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);
    let url = server.base();
    let ca = server.ca_file();
    let ca = ca.to_str().unwrap();

    let estca = run(
        "pki",
        &["--estca", "--url", &url, "--cacert", ca, "--outform", "pem"],
        dir,
    );
    let estca = String::from_utf8(estca).unwrap();
    assert_eq!(
        pem::parse(estca.as_bytes()).unwrap().contents(),
        pem::parse(std::fs::read(ca).unwrap()).unwrap().contents()
    );

    sh(
        "pki --gen --type ecdsa --size 256 --outform pem > key.pem",
        dir,
    );
    sh(
        "pki --req --in key.pem --type priv --dn 'CN=dev1' --outform der > req.der",
        dir,
    );
    let cert = run(
        "pki",
        &[
            "--est",
            "--url",
            &url,
            "--in",
            "req.der",
            "--cacert",
            ca,
            "--userpass",
            "estuser:estpwd",
            "--outform",
            "pem",
        ],
        dir,
    );
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    assert!(x509(dir, "cert.pem", &["-subject"]).contains("CN = dev1"));

    // Re-enroll (simplereenroll) with a new key, authenticated by the old certificate.
    sh(
        "pki --gen --type ecdsa --size 256 --outform pem > key2.pem",
        dir,
    );
    sh(
        "pki --req --in key2.pem --type priv --dn 'CN=dev1' --outform der > req2.der",
        dir,
    );
    let renewed = run(
        "pki",
        &[
            "--est",
            "--url",
            &url,
            "--in",
            "req2.der",
            "--cacert",
            ca,
            "--cert",
            "cert.pem",
            "--key",
            "key.pem",
            "--outform",
            "pem",
        ],
        dir,
    );
    std::fs::write(dir.join("renewed.pem"), &renewed).unwrap();
    assert!(x509(dir, "renewed.pem", &["-subject"]).contains("CN = dev1"));
    assert_ne!(cert, renewed);
    assert!(server.log_text().contains("simplereenroll"));
    assert!(sh(&format!("openssl verify -CAfile {ca} renewed.pem"), dir).contains("OK"));
}
