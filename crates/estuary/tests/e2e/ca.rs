//! `estuary ca`: importing an enterprise CA made by openssl, an issuing CA under an offline
//! root, and what the server then serves (/cacerts, the TLS chain, issued certificates).

use std::collections::BTreeSet;
use std::path::Path;

use crate::harness::*;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pem_file_ders(path: &Path) -> Vec<Vec<u8>> {
    pem::parse_many(std::fs::read(path).unwrap())
        .unwrap()
        .into_iter()
        .map(pem::Pem::into_contents)
        .collect()
}

fn cacerts(port: u16, ca: &Path) -> Vec<Vec<u8>> {
    let r = https(
        port,
        "localhost",
        ca,
        None,
        "GET",
        "/.well-known/est/cacerts",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.certificates()
}

fn enroll_basic(port: u16, ca: &Path, csr: &[u8], auth: &str) -> Vec<u8> {
    let r = https(
        port,
        "localhost",
        ca,
        None,
        "POST",
        "/.well-known/est/simpleenroll",
        &[
            ("Content-Type", "application/pkcs10"),
            ("Authorization", auth),
        ],
        b64(csr).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let certs = r.certificates();
    assert_eq!(certs.len(), 1);
    certs[0].clone()
}

fn as_set(ders: &[Vec<u8>]) -> BTreeSet<Vec<u8>> {
    ders.iter().cloned().collect()
}

fn no_ca_written(data: &Path) {
    assert!(!data.join("ca-key.pem").exists());
    assert!(!data.join("ca-cert.pem").exists());
}

#[test]
fn an_enterprise_issuing_ca_is_imported_and_issues_under_the_enterprise_root() {
    let tmp = tempdir();
    let dir = tmp.path();
    // An enterprise PKI: a P-384 root and an RSA issuing CA whose key is encrypted PKCS#8.
    sh(
        r#"
        cat > ext.cnf <<'X'
[inter]
basicConstraints=critical,CA:TRUE,pathlen:1
keyUsage=critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
[leaf]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
X
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out enterprise-root.key
        openssl req -x509 -new -key enterprise-root.key -days 3650 \
            -subj "/O=Contoso/CN=Contoso Root CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" -out enterprise-root.pem
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
            -aes-256-cbc -pass pass:secret -out intermediate.key
        grep -q "BEGIN ENCRYPTED PRIVATE KEY" intermediate.key
        openssl req -new -key intermediate.key -passin pass:secret \
            -subj "/O=Contoso/CN=Contoso Devices Issuing CA" -out intermediate.csr
        openssl x509 -req -in intermediate.csr -CA enterprise-root.pem -CAkey enterprise-root.key \
            -CAcreateserial -days 1825 -extfile ext.cnf -extensions inter -out intermediate.pem
        printf 'secret\n' > password.txt
        printf 'not-the-password\n' > wrong.txt
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key
        openssl req -new -key other.key -subj "/CN=just a server" -out other.csr
        openssl x509 -req -in other.csr -CA intermediate.pem -CAkey intermediate.key \
            -passin pass:secret -CAcreateserial -days 30 -extfile ext.cnf -extensions leaf \
            -out not-a-ca.pem
        "#,
        dir,
    );
    let data = dir.join("data");
    let data_s = data.to_str().unwrap();
    let import = |cert: &str, key: &str, pass: Option<&str>| {
        let mut args = vec![
            "ca",
            "import",
            "--cert",
            cert,
            "--chain",
            "enterprise-root.pem",
            "--key",
            key,
            "--data-dir",
            data_s,
        ];
        if let Some(p) = pass {
            args.extend(["--key-password-file", p]);
        }
        estuary(&args, dir, None)
    };

    // Refusals: each says what is wrong with which file, and writes nothing.
    let err = failed(&import(
        "intermediate.pem",
        "intermediate.key",
        Some("wrong.txt"),
    ));
    assert!(
        err.contains("intermediate.key") && err.contains("wrong password"),
        "{err}"
    );
    no_ca_written(&data);
    let err = failed(&import("intermediate.pem", "intermediate.key", None));
    assert!(err.contains("encrypted"), "{err}");
    no_ca_written(&data);
    let err = failed(&import("intermediate.pem", "other.key", None));
    assert!(
        err.contains("other.key") && err.contains("does not belong"),
        "{err}"
    );
    no_ca_written(&data);
    let err = failed(&import("not-a-ca.pem", "other.key", None));
    assert!(
        err.contains("not-a-ca.pem") && err.contains("not a CA certificate"),
        "{err}"
    );
    no_ca_written(&data);
    assert!(!data.exists() || std::fs::read_dir(&data).unwrap().next().is_none());

    // The real import.
    let out = ok(&import(
        "intermediate.pem",
        "intermediate.key",
        Some("password.txt"),
    ));
    assert!(
        out.contains("Contoso Devices Issuing CA") && out.contains("Contoso Root CA"),
        "{out}"
    );
    let key_pem = std::fs::read_to_string(data.join("ca-key.pem")).unwrap();
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let ca_chain = pem_file_ders(&data.join("ca-cert.pem"));
    let intermediate = pem_file_ders(&dir.join("intermediate.pem"));
    let root = pem_file_ders(&dir.join("enterprise-root.pem"));
    assert_eq!(ca_chain, vec![intermediate[0].clone(), root[0].clone()]);

    // A second import is refused.
    let err = failed(&import(
        "intermediate.pem",
        "intermediate.key",
        Some("password.txt"),
    ));
    assert!(err.contains("already exists"), "{err}");

    let show = ok(&estuary(&["ca", "show", "--data-dir", data_s], dir, None));
    assert!(show.contains("Certificate 1 of 2 (issuing CA)"), "{show}");
    assert!(show.contains("Certificate 2 of 2 (root)"), "{show}");
    assert!(show.contains("CA:TRUE, pathlen:1"), "{show}");

    ok(&estuary(
        &[
            "user",
            "add",
            "fleet",
            "--data-dir",
            data_s,
            "--password-stdin",
        ],
        dir,
        Some(b"s3cret-s3cret\n"),
    ));
    let server = Server::start(&data, &[]);
    let root_file = dir.join("enterprise-root.pem");

    // /cacerts: the issuing CA and the root (a certs-only SET has no order), verified over a
    // TLS chain that reaches the enterprise root.
    let served = cacerts(server.port, &root_file);
    assert_eq!(as_set(&served), as_set(&ca_chain));

    let csr = openssl_csr(dir, "device", P256, "/CN=contoso-device-1", &[]);
    let issued = enroll_basic(
        server.port,
        &root_file,
        &csr,
        &basic("fleet", "s3cret-s3cret"),
    );
    std::fs::write(dir.join("issued.pem"), pem_certs(&[issued])).unwrap();
    let verified = sh(
        "openssl verify -CAfile enterprise-root.pem -untrusted intermediate.pem issued.pem",
        dir,
    );
    assert!(verified.contains("issued.pem: OK"), "{verified}");
    let issuer = x509(dir, "issued.pem", &["-issuer"]);
    assert!(issuer.contains("Contoso Devices Issuing CA"), "{issuer}");
    server.stop();
}

#[test]
fn an_issuing_ca_under_an_offline_root_serves_both_and_issues_verifiable_certificates() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let data_s = data.to_str().unwrap();
    let out = ok(&estuary(
        &["ca", "init", "--intermediate", "--data-dir", data_s],
        dir,
        None,
    ));
    assert!(
        out.contains("move") && out.contains("root-key.pem"),
        "{out}"
    );
    assert!(out.contains("root-cert.pem"), "{out}");
    let root_file = data.join("offline-root/root-cert.pem");
    assert!(data.join("offline-root/root-key.pem").exists());

    // A second init is refused.
    let err = failed(&estuary(
        &["ca", "init", "--intermediate", "--data-dir", data_s],
        dir,
        None,
    ));
    assert!(err.contains("already exists"), "{err}");

    let show = ok(&estuary(&["ca", "show", "--data-dir", data_s], dir, None));
    assert!(show.contains("Estuary Issuing CA"), "{show}");
    assert!(show.contains("Estuary Offline Root CA"), "{show}");
    assert!(show.contains("Certificate 2 of 2 (root)"), "{show}");

    let ca_chain = pem_file_ders(&data.join("ca-cert.pem"));
    assert_eq!(ca_chain.len(), 2);
    assert_eq!(ca_chain[1], pem_file_ders(&root_file)[0]);
    std::fs::write(dir.join("intermediate.pem"), pem_certs(&ca_chain[..1])).unwrap();

    let server = Server::start(&data, &["--dev"]);
    // The TLS chain [server, intermediate, root] verifies against the root alone.
    let served = cacerts(server.port, &root_file);
    assert_eq!(served.len(), 2);
    assert_eq!(as_set(&served), as_set(&ca_chain));

    let csr = openssl_csr(dir, "device", P256, "/CN=edge-device-1", &[]);
    let issued = enroll_basic(server.port, &root_file, &csr, &estuser());
    std::fs::write(dir.join("issued.pem"), pem_certs(&[issued])).unwrap();
    let root_s = root_file.display().to_string();
    let verified = sh(
        &format!("openssl verify -CAfile {root_s} -untrusted intermediate.pem issued.pem"),
        dir,
    );
    assert!(verified.contains("issued.pem: OK"), "{verified}");

    // pathlen:1 leaves room for an IoT Edge "Edge CA" (CA:TRUE pathlen:0) and its leaves.
    let csr = openssl_csr(
        dir,
        "edgeca",
        P256,
        "/CN=edge-ca-1",
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    let edge_ca = enroll_basic(server.port, &root_file, &csr, &estuser());
    std::fs::write(dir.join("edge-ca.pem"), pem_certs(&[edge_ca])).unwrap();
    let verified = sh(
        &format!(
            r#"printf 'basicConstraints=CA:FALSE\n' > leaf.ext
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out module.key
            openssl req -new -key module.key -subj /CN=module -out module.csr
            openssl x509 -req -in module.csr -CA edge-ca.pem -CAkey edgeca.key -CAcreateserial \
                -days 1 -extfile leaf.ext -out module.pem 2>/dev/null
            cat intermediate.pem edge-ca.pem > untrusted.pem
            openssl verify -CAfile {root_s} -untrusted untrusted.pem module.pem"#
        ),
        dir,
    );
    assert!(verified.contains("module.pem: OK"), "{verified}");
    server.stop();
}

#[test]
fn ca_init_without_intermediate_is_the_root_direct_ca_of_a_first_start() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let data_s = data.to_str().unwrap();
    let out = ok(&estuary(&["ca", "init", "--data-dir", data_s], dir, None));
    assert!(
        out.contains("Certificate 1 of 1 (issuing CA, root)"),
        "{out}"
    );
    assert_eq!(pem_file_ders(&data.join("ca-cert.pem")).len(), 1);
    let err = failed(&estuary(&["ca", "init", "--data-dir", data_s], dir, None));
    assert!(err.contains("already exists"), "{err}");
    let err = failed(&estuary(
        &[
            "ca",
            "show",
            "--data-dir",
            dir.join("none").to_str().unwrap(),
        ],
        dir,
        None,
    ));
    assert!(err.contains("no CA yet"), "{err}");
}
