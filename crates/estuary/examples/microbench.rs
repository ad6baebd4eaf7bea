//! Microbenchmarks of the issuance pipeline's stages, one core, no I/O:
//! CSR decode + signature check, issue (build + sign), PKCS#7 + base64, and argon2 vs the
//! verified-credential cache.
//!
//! `cargo run --release --example microbench`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use estuary_ca::{CertificateAuthority, FileKeySigner, KeyChoice, Profile};

fn measure(name: &str, mut f: impl FnMut()) {
    for _ in 0..50 {
        f();
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_millis(1500) {
        f();
        n += 1;
    }
    let per_sec = n as f64 / started.elapsed().as_secs_f64();
    println!("{name:<58} {per_sec:>10.0}/s  {:>8.1} µs", 1e6 / per_sec);
}

fn main() {
    let profile = Profile::device();
    for ca_key in [KeyChoice::P256, KeyChoice::Rsa2048] {
        let signer = FileKeySigner::new(ca_key.generate().unwrap()).unwrap();
        let root = estuary_ca::issue::self_signed_root(
            &signer,
            "CN=bench root".parse().unwrap(),
            Duration::from_secs(86_400 * 365),
        )
        .unwrap();
        use der::Encode;
        let ca =
            CertificateAuthority::new(std::sync::Arc::new(signer), vec![root.to_der().unwrap()])
                .unwrap();
        for (label, alg) in [
            ("P-256", &rcgen::PKCS_ECDSA_P256_SHA256),
            ("RSA-2048", &rcgen::PKCS_RSA_SHA256),
        ] {
            let key = if label == "RSA-2048" {
                rcgen::KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048).unwrap()
            } else {
                rcgen::KeyPair::generate_for(alg).unwrap()
            };
            let mut params = rcgen::CertificateParams::new(vec!["dev.example".into()]).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "bench");
            let csr = params.serialize_request(&key).unwrap();
            let body = estuary_wire::body::encode_base64_lines(csr.der());
            let parsed = estuary_wire::csr::decode_request_body(body.as_bytes()).unwrap();
            measure(&format!("decode + verify {label} CSR"), || {
                estuary_wire::csr::decode_request_body(body.as_bytes()).unwrap();
            });
            let no_basic = estuary_ca::PolicyContext { basic_user: None };
            let checked = profile.check(&parsed, no_basic).unwrap();
            measure(&format!("issue {label} device cert, {ca_key} CA"), || {
                ca.issue(&checked, Duration::from_secs(86_400), &[])
                    .unwrap();
            });
            let issued = ca
                .issue(&checked, Duration::from_secs(86_400), &[])
                .unwrap();
            measure("PKCS#7 certs-only + base64", || {
                estuary_wire::pkcs7::certs_only_body_of_one(&issued.der);
            });
            measure(
                &format!("whole pipeline: {label} CSR body to response body, {ca_key} CA"),
                || {
                    let csr = estuary_wire::csr::decode_request_body(body.as_bytes()).unwrap();
                    let checked = profile.check(&csr, no_basic).unwrap();
                    let cert = ca
                        .issue(&checked, Duration::from_secs(86_400), &[])
                        .unwrap();
                    estuary_wire::pkcs7::certs_only_body_of_one(&cert.der);
                },
            );
        }
    }
    let users = estuary_auth::BasicUsers::new([(
        "estuser".to_string(),
        estuary_auth::hash_password("estpwd").unwrap(),
    )])
    .unwrap();
    measure(
        "Basic: argon2id verify (first use, or a wrong password)",
        || {
            assert!(!users.verify("estuser", "wrong"));
        },
    );
    users.verify("estuser", "estpwd");
    measure("Basic: verified-credential cache hit", || {
        assert_eq!(users.check_cached("estuser", "estpwd"), Some(true));
    });
}
