//! Several nodes on one PostgreSQL database (docs/cluster.md): three real `estuary serve`
//! processes sharing the CA and a database, behind a real HAProxy in TCP mode, one of them
//! killed with SIGKILL and restarted under load; and the operator's commands run on one node
//! acting on requests and certificates of another.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use der::Decode;
use estuary_store::test_support::TestDatabase;

use crate::harness::*;
use crate::hsm::Token;

/// A fresh database on the test PostgreSQL server (see `estuary_store::test_support`).
fn database(tag: &str) -> TestDatabase {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(TestDatabase::create(tag))
}

/// A port free now, for a node or HAProxy to bind later (loopback only). It is taken from
/// below the kernel's ephemeral range (`ip_local_port_range`), from which every other test's
/// server (bound to port 0) and every outgoing connection get theirs: a node killed and
/// restarted later finds its port still free, instead of taken by another test's server (which
/// HAProxy would then send this test's clients to).
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    // Start somewhere different in each test process: several runs may share the machine.
    let low = 10_000u16;
    let span = ephemeral_low.saturating_sub(low).max(1);
    let _ = NEXT.compare_exchange(
        0,
        low + (std::process::id() % u32::from(span)) as u16,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let candidate = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + candidate.wrapping_sub(low) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range ({ephemeral_low})");
}

/// Three data directories with one CA, as docs/cluster.md sets them up: created by the first
/// node, and either its key file copied by the operator to the others, or its key made in one
/// HSM token that every node imports. Each node has a fixed port so it can be restarted behind
/// the load balancer.
struct Cluster<'t> {
    dirs: Vec<PathBuf>,
    ports: Vec<u16>,
    token: Option<&'t Token>,
}

impl<'t> Cluster<'t> {
    fn new(
        root: &Path,
        database: &str,
        nodes: usize,
        extra_config: &str,
        token: Option<&'t Token>,
    ) -> Cluster<'t> {
        let dirs: Vec<PathBuf> = (0..nodes).map(|i| root.join(format!("node{i}"))).collect();
        let first = dirs[0].to_str().unwrap();
        match token {
            None => {
                estuary_ok(&["ca", "init", "--data-dir", first], root);
                for dir in &dirs[1..] {
                    std::fs::create_dir_all(dir).unwrap();
                    for file in ["ca-cert.pem", "ca-key.pem"] {
                        std::fs::copy(dirs[0].join(file), dir.join(file)).unwrap();
                    }
                }
            }
            Some(token) => {
                let uri = token.uri("estuary-ca");
                token.estuary_ok(
                    &["ca", "init", "--data-dir", first, "--key-uri", &uri],
                    root,
                );
                let ca = dirs[0].join("ca-cert.pem");
                for dir in &dirs[1..] {
                    token.estuary_ok(
                        &[
                            "ca",
                            "import",
                            "--data-dir",
                            dir.to_str().unwrap(),
                            "--cert",
                            ca.to_str().unwrap(),
                            "--key-uri",
                            &uri,
                        ],
                        root,
                    );
                }
                for dir in &dirs {
                    assert!(
                        !dir.join("ca-key.pem").exists(),
                        "a CA key file in {}",
                        dir.display()
                    );
                }
            }
        }
        let cluster = Cluster {
            ports: (0..nodes).map(|_| free_port()).collect(),
            dirs,
            token,
        };
        // Each node's first start (with --database) writes its config; then the shared
        // settings go in, the database URL among them, so that later starts and the operator's
        // commands on that node use it without a flag.
        for i in 0..nodes {
            drop(cluster.start_with(i, &["--database", database]));
            let path = cluster.dirs[i].join("estuary.toml");
            let config = std::fs::read_to_string(&path).unwrap().replace(
                "approval_retry_after = \"60s\"",
                "approval_retry_after = \"1s\"",
            );
            std::fs::write(
                &path,
                format!("{config}\n{extra_config}\n[database]\nurl = \"{database}\"\n"),
            )
            .unwrap();
        }
        cluster
    }

    fn start(&self, i: usize) -> Server {
        self.start_with(i, &[])
    }

    fn start_with(&self, i: usize, extra: &[&str]) -> Server {
        let listen = format!("127.0.0.1:{}", self.ports[i]);
        let mut args = vec!["--dev", "--crl-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let env = self.token.map(Token::env);
        Server::start_with_env(
            &self.dirs[i],
            &args,
            &["--listen", &listen],
            env.as_ref().map_or(&[][..], |e| &e[..]),
        )
    }

    fn ca_file(&self) -> PathBuf {
        self.dirs[0].join("ca-cert.pem")
    }
}

/// HAProxy in TCP mode (TLS and client certificates pass through to the nodes unchanged),
/// with health checks and redispatch of a refused connection to another node.
struct Haproxy {
    child: Child,
    port: u16,
}

impl Haproxy {
    /// `server_options`: added to each `server` line (`send-proxy-v2`).
    fn start(dir: &Path, node_ports: &[u16], server_options: &str) -> Haproxy {
        require_tool("haproxy");
        let port = free_port();
        let servers: String = node_ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!("    server node{i} 127.0.0.1:{p} check inter 200ms fall 1 rise 1 {server_options}\n")
            })
            .collect();
        let config = format!(
            "global\n    maxconn 512\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    retries 3\n    option redispatch\n\
             frontend est\n    bind 127.0.0.1:{port}\n    default_backend nodes\n\
             backend nodes\n    balance roundrobin\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Haproxy { child, port }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sigkill(server: Server) {
    let status = Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Drop reaps the process.
    drop(server);
}

fn serial_hex(der: &[u8]) -> String {
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    cert.tbs_certificate
        .serial_number
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .trim_start_matches("00")
        .to_string()
}

/// One enrollment through the load balancer. A connection the killed node dropped is retried
/// once, as every EST client does; the number of retries is counted.
fn enroll_through(port: u16, ca: &Path, csr: &[u8], retries: &mut u32) -> Vec<u8> {
    for attempt in 0..2 {
        let result = std::panic::catch_unwind(|| {
            https(
                port,
                "localhost",
                ca,
                None,
                "POST",
                "/.well-known/est/simpleenroll",
                &[
                    ("Content-Type", "application/pkcs10"),
                    ("Authorization", &estuser()),
                ],
                b64(csr).as_bytes(),
            )
        });
        match result {
            Ok(r) if r.status == 200 => return r.certificates().remove(0),
            Ok(r) => panic!(
                "enrollment through HAProxy answered {}: {}",
                r.status,
                r.text()
            ),
            Err(_) if attempt == 0 => *retries += 1,
            Err(_) => panic!("enrollment failed twice through HAProxy"),
        }
    }
    unreachable!()
}

/// The issue's end-to-end test: three nodes, one database, the CA key in one HSM token
/// (SoftHSM2), HAProxy; a node is killed with SIGKILL under load and restarted. No
/// client-visible failure beyond a retried connection, no duplicate serial, and every
/// certificate a client received is in the database and signed by the token's key.
#[test]
fn three_nodes_behind_haproxy_survive_a_killed_node() {
    let tmp = tempdir();
    let dir = tmp.path();
    let db = database("cluster");
    let token = Token::new(dir);
    let cluster = Cluster::new(dir, db.url(), 3, "", Some(&token));
    let mut nodes: Vec<Option<Server>> = (0..3).map(|i| Some(cluster.start(i))).collect();
    let haproxy = Haproxy::start(dir, &cluster.ports, "");
    let csrs: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            openssl_csr(
                dir,
                &format!("k{i}"),
                P256,
                &format!("/CN=cluster-{i}"),
                &[],
            )
        })
        .collect();

    let mut received = Vec::new();
    let mut retries = 0;
    for round in 0..120 {
        if round == 40 {
            sigkill(nodes[1].take().unwrap());
        }
        if round == 80 {
            nodes[1] = Some(cluster.start(1));
        }
        let der = enroll_through(
            haproxy.port,
            &cluster.ca_file(),
            &csrs[round % csrs.len()],
            &mut retries,
        );
        received.push(der);
    }
    assert!(
        retries <= 3,
        "{retries} retried connections for one killed node"
    );

    let serials: Vec<String> = received.iter().map(|der| serial_hex(der)).collect();
    let mut unique = serials.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), serials.len(), "duplicate serial");

    // Every certificate a client received is in the database, byte for byte.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = estuary_store::open(&db.database_url(), estuary_store::OpenMode::Existing)
            .await
            .unwrap();
        for (der, serial) in received.iter().zip(&serials) {
            let record = store.certificate_by_serial(serial).await.unwrap();
            assert_eq!(
                record.map(|r| r.der).as_ref(),
                Some(der),
                "certificate {serial} not in the database"
            );
        }
    });
    // Signed by the token's key, whichever node issued them.
    for (i, der) in received.iter().enumerate().step_by(17) {
        let file = dir.join(format!("received-{i}.pem"));
        std::fs::write(&file, pem_certs(std::slice::from_ref(der))).unwrap();
        let ca = cluster.ca_file();
        run(
            "openssl",
            &[
                "verify",
                "-CAfile",
                ca.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
            dir,
        );
    }
    // All three nodes issued (round robin), the restarted one too after its restart.
    for (i, node) in nodes.iter().enumerate() {
        let log = node.as_ref().unwrap().log_text();
        assert!(
            log.contains("status=200"),
            "node {i} issued nothing:\n{log}"
        );
    }
}

/// Admin commands work from any node: a request made on node B is approved on node A and
/// collected on node C; a certificate revoked on A is refused as a client certificate by B
/// within 2 seconds; every node serves the same newest CRL, from one number sequence.
#[test]
fn operators_act_on_any_node_and_every_node_sees_it() {
    let tmp = tempdir();
    let dir = tmp.path();
    let db = database("cluster_ops");
    let cluster = Cluster::new(
        dir,
        db.url(),
        3,
        "[labels.manual]\nprofile = \"device\"\napproval = \"manual\"\n",
        None,
    );
    let nodes: Vec<Server> = (0..3).map(|i| cluster.start(i)).collect();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let a_dir = cluster.dirs[0].to_str().unwrap();
    let checked = estuary_ok(&["config", "check", "--data-dir", a_dir], dir);
    assert!(
        checked.contains("✔ database postgres://estuary_test:***@127.0.0.1:5432/")
            && checked.contains("✔ database: bound to this CA's key"),
        "{checked}"
    );

    // Approval: requested on B, approved with A's command line, collected on C.
    let csr = openssl_csr(dir, "manual", P256, "/CN=needs-approval", &[]);
    let r = enroll(
        b,
        &csr,
        "/.well-known/est/manual/simpleenroll",
        None,
        Some(&estuser()),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let ids = pending_ids(dir, &cluster.dirs[0]);
    assert_eq!(ids.len(), 1);
    estuary_ok(
        &[
            "requests",
            "approve",
            &ids[0].to_string(),
            "--data-dir",
            a_dir,
            "--database",
            db.url(),
        ],
        dir,
    );
    let r = enroll(
        c,
        &csr,
        "/.well-known/est/manual/simpleenroll",
        None,
        Some(&estuser()),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Revocation: a device certificate works as a client certificate on B, is revoked on A,
    // and B refuses it within 2 seconds.
    let csr = openssl_csr(dir, "device", P256, "/CN=device-7", &[]);
    let r = enroll_with_estuser(a, &csr);
    let der = r.certificates().remove(0);
    std::fs::write(
        dir.join("device.pem"),
        pem_certs(std::slice::from_ref(&der)),
    )
    .unwrap();
    let identity = ClientIdentity {
        cert_pem: &dir.join("device.pem"),
        key_pem: &dir.join("device.key"),
    };
    let renew = || {
        let csr = openssl_csr(dir, "renewal", P256, "/CN=device-7", &[]);
        enroll(
            b,
            &csr,
            "/.well-known/est/simplereenroll",
            Some(&identity),
            None,
        )
    };
    assert_eq!(renew().status, 200);
    let serial = serial_hex(&der);
    estuary_ok(
        &[
            "certs",
            "revoke",
            &serial,
            "--data-dir",
            a_dir,
            "--database",
            db.url(),
        ],
        dir,
    );
    let revoked_at = Instant::now();
    loop {
        let status = renew().status;
        if status != 200 {
            assert!(matches!(status, 401 | 403), "{status}");
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "node B still renews a certificate revoked on A"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // CRL: all three serve the same newest CRL, listing the revoked serial.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let crls: Vec<Vec<u8>> = nodes
            .iter()
            .map(|n| http_get(n.crl_port.unwrap(), "/crl").1)
            .collect();
        let lists: Vec<x509_cert::crl::CertificateList> = crls
            .iter()
            .map(|der| x509_cert::crl::CertificateList::from_der(der).unwrap())
            .collect();
        let lists_serial = |l: &x509_cert::crl::CertificateList| {
            l.tbs_cert_list
                .revoked_certificates
                .iter()
                .flatten()
                .any(|r| {
                    r.serial_number
                        .as_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                        .trim_start_matches("00")
                        == serial
                })
        };
        if crls.iter().all(|c| c == &crls[0]) && lists.iter().all(lists_serial) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes do not serve the same CRL with the revocation"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // One signer per revocation: the CRL numbers in the database are 1 (first start) and 2.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listed = estuary_ok(
        &["certs", "list", "--data-dir", a_dir, "--database", db.url()],
        dir,
    );
    assert_eq!(
        listed.lines().filter(|l| l.contains("revoked")).count(),
        1,
        "{listed}"
    );
    runtime.block_on(async {
        let store = estuary_store::open(&db.database_url(), estuary_store::OpenMode::Existing)
            .await
            .unwrap();
        let ca = std::fs::read_to_string(cluster.ca_file()).unwrap();
        let ca_der = pem::parse(ca).unwrap().into_contents();
        let ca_cert = x509_cert::Certificate::from_der(&ca_der).unwrap();
        let spki = der::Encode::to_der(&ca_cert.tbs_certificate.subject_public_key_info).unwrap();
        let issuer = estuary_ca::issue::thumbprint_sha256(&spki);
        let newest = store.newest_crl(&issuer, 0).await.unwrap().unwrap();
        assert_eq!(newest.der, http_get(c.crl_port.unwrap(), "/crl").1);
        assert_eq!(
            newest.number, 2,
            "one CRL at the first start, one for the revocation, whatever the number of nodes"
        );
    });
}

/// The database goes away (restarted, failed over): requests get 503 with Retry-After (nothing
/// is issued unrecorded) and /readyz says not ready; when it is back, the same node serves again
/// without a restart.
#[test]
fn a_database_outage_is_503_and_the_node_recovers() {
    let tmp = tempdir();
    let dir = tmp.path();
    let db = database("outage");
    let cluster = Cluster::new(dir, db.url(), 1, "", None);
    let node = cluster.start(0);
    let csr = openssl_csr(dir, "d", P256, "/CN=outage", &[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = enroll(
        &node,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&estuser()),
    );
    assert_eq!(r.status, 200);
    std::fs::write(dir.join("d.pem"), pem_certs(&r.certificates()[..1])).unwrap();
    let identity = ClientIdentity {
        cert_pem: &dir.join("d.pem"),
        key_pem: &dir.join("d.key"),
    };

    runtime.block_on(db.admin_execute(
        "ALTER DATABASE $DATABASE ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$DATABASE';",
    ));
    let r = enroll(
        &node,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&estuser()),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("Retry-After").is_some());
    assert!(r.text().contains("database is unavailable"), "{}", r.text());
    assert_eq!(http_get(node.admin_port, "/readyz").0, 503);
    // A renewal whose client certificate cannot be looked up: 503 too, not 401 (the
    // certificate is fine; the device should retry, not fall back to its bootstrap identity).
    let r = enroll(
        &node,
        &csr,
        "/.well-known/est/simplereenroll",
        Some(&identity),
        None,
    );
    assert_eq!(r.status, 503, "{}", r.text());

    runtime.block_on(db.admin_execute("ALTER DATABASE $DATABASE ALLOW_CONNECTIONS true"));
    enroll_with_estuser(&node, &csr);
    assert_eq!(http_get(node.admin_port, "/readyz").0, 200);
}

/// A TCP relay to PostgreSQL that can stop forwarding (a hung database server, a network that
/// drops packets): connections stay open and nothing answers.
struct FreezableRelay {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FreezableRelay {
    fn start(target: u16) -> FreezableRelay {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            let Ok(n) = from.read(&mut buf) else { return };
                            if n == 0 {
                                return;
                            }
                            while flag.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        FreezableRelay { port, frozen }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Regression: a database that stops answering (not refusing: answering nothing) held every
/// request on an open pooled connection for as long as the kernel kept the connection (hours).
/// Now each store operation has a deadline: 503 within seconds, and the node recovers.
#[test]
fn a_database_that_stops_answering_is_503_not_a_hang() {
    let tmp = tempdir();
    let dir = tmp.path();
    let db = database("hung");
    let relay = FreezableRelay::start(5432);
    let through_relay = db.url().replacen(
        "@127.0.0.1:5432/",
        &format!("@127.0.0.1:{}/", relay.port),
        1,
    );
    assert_ne!(
        through_relay,
        db.url(),
        "the test database is not on 127.0.0.1:5432"
    );
    let cluster = Cluster::new(dir, &through_relay, 1, "", None);
    let node = cluster.start(0);
    let csr = openssl_csr(dir, "d", P256, "/CN=hung", &[]);
    let enroll_now = || {
        enroll(
            &node,
            &csr,
            "/.well-known/est/simpleenroll",
            None,
            Some(&estuser()),
        )
    };
    assert_eq!(enroll_now().status, 200);

    relay.freeze(true);
    let started = Instant::now();
    let r = enroll_now();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("Retry-After").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );

    relay.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = enroll_now();
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not recover: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Behind a load balancer every connection comes from its address; with the PROXY protocol
/// (`send-proxy-v2`, `limits.proxy_protocol_from`) each device is itself again: one address
/// guessing passwords is limited alone, and the audit trail names the device.
#[test]
fn the_proxy_protocol_gives_each_device_its_own_address() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("node");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    drop(Server::start_with_listen(
        &data,
        &["--dev"],
        &["--listen", &listen],
    ));
    let path = data.join("estuary.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    assert!(config.contains("proxy_protocol_from = []"), "{config}");
    std::fs::write(
        &path,
        config.replace(
            "proxy_protocol_from = []",
            "proxy_protocol_from = [\"127.0.0.1\"]",
        ),
    )
    .unwrap();
    let node = Server::start_with_listen(&data, &["--dev"], &["--listen", &listen]);
    let haproxy = Haproxy::start(dir, &[port], "send-proxy-v2");
    let csr = openssl_csr(dir, "d", P256, "/CN=proxied", &[]);
    std::fs::write(dir.join("d.b64"), b64(&csr)).unwrap();
    let enroll_from = |source: &str, password: &str| {
        sh(
            &format!(
                "curl -s --interface {source} --cacert {ca} -u estuser:{password} -o /dev/null -w '%{{http_code}}' \
                 --max-time 10 -H 'Content-Type: application/pkcs10' --data-binary @d.b64 \
                 https://localhost:{port}/.well-known/est/simpleenroll || true",
                ca = node.ca_file().display(),
                port = haproxy.port,
            ),
            dir,
        )
        .trim()
        .to_string()
    };
    assert_eq!(enroll_from("127.0.0.2", "estpwd"), "200");
    // One device guesses passwords until it is refused...
    let mut refused = false;
    for _ in 0..30 {
        let status = enroll_from("127.0.0.2", "wrong");
        assert!(matches!(status.as_str(), "401" | "429"), "{status}");
        if status == "429" {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "wrong passwords from one address were never limited"
    );
    // ... and only that device: another one through the same load balancer is served.
    assert_eq!(enroll_from("127.0.0.3", "estpwd"), "200");
    assert_eq!(enroll_from("127.0.0.2", "estpwd"), "429");
    // The audit trail and the log name the devices, not the load balancer.
    let audit = estuary_ok(
        &[
            "audit",
            "list",
            "--json",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir,
    );
    assert!(audit.contains("\"127.0.0.3:"), "{audit}");
    assert!(
        node.log_text().contains("peer=127.0.0.2:"),
        "{}",
        node.log_text()
    );
    // The load balancer's address must send the header: a direct connection from it is closed.
    let direct = sh(
        &format!(
            "curl -s --cacert {} -o /dev/null -w '%{{http_code}}' --max-time 5 \
             https://localhost:{port}/.well-known/est/cacerts || true",
            node.ca_file().display()
        ),
        dir,
    );
    assert_eq!(
        direct.trim(),
        "000",
        "a connection without a PROXY header was served"
    );
}

/// The newest CRL number recorded in a store for the CA in `ca_file`.
fn newest_crl_number(url: &estuary_store::DatabaseUrl, ca_file: &Path) -> u64 {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = estuary_store::open(url, estuary_store::OpenMode::Existing)
                .await
                .unwrap();
            let ca = std::fs::read_to_string(ca_file).unwrap();
            let ca_cert =
                x509_cert::Certificate::from_der(&pem::parse(ca).unwrap().into_contents()).unwrap();
            let spki =
                der::Encode::to_der(&ca_cert.tbs_certificate.subject_public_key_info).unwrap();
            let issuer = estuary_ca::issue::thumbprint_sha256(&spki);
            store.newest_crl(&issuer, 0).await.unwrap().unwrap().number
        })
}

/// `estuary store migrate` (docs/cluster.md, "Moving a SQLite server onto PostgreSQL"): a
/// server's SQLite store copied into PostgreSQL, and the same server started on it. Devices
/// renew with certificates issued before the move, a revocation made before it still holds, a
/// request waiting for approval keeps its id, the CRL numbers go on from the last one, and the
/// operator's lists read the same. A second copy into the now used database is refused.
#[test]
fn a_sqlite_store_moves_to_postgresql_with_everything_it_holds() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("server");
    let data_arg = data.to_str().unwrap();
    let sqlite_url = format!("sqlite:{}", data.join("estuary.db").display());
    let args = ["--dev", "--crl-listen", "127.0.0.1:0"];
    // The first start writes the config; a label with manual approval goes in.
    drop(Server::start(&data, &args));
    let config_path = data.join("estuary.toml");
    let config = std::fs::read_to_string(&config_path).unwrap().replace(
        "approval_retry_after = \"60s\"",
        "approval_retry_after = \"1s\"",
    );
    std::fs::write(
        &config_path,
        format!("{config}\n[labels.manual]\nprofile = \"device\"\napproval = \"manual\"\n"),
    )
    .unwrap();

    // On SQLite: two devices enroll, the second is revoked, a third waits for approval.
    let server = Server::start(&data, &args);
    let mut identities = Vec::new();
    for name in ["kept", "revoked"] {
        let csr = openssl_csr(dir, name, P256, &format!("/CN=device-{name}"), &[]);
        let r = enroll_with_estuser(&server, &csr);
        let der = r.certificates().remove(0);
        std::fs::write(
            dir.join(format!("{name}.pem")),
            pem_certs(std::slice::from_ref(&der)),
        )
        .unwrap();
        identities.push(der);
    }
    estuary_ok(
        &[
            "certs",
            "revoke",
            &serial_hex(&identities[1]),
            "--data-dir",
            data_arg,
        ],
        dir,
    );
    let waiting = openssl_csr(dir, "waiting", P256, "/CN=device-waiting", &[]);
    let r = enroll(
        &server,
        &waiting,
        "/.well-known/est/manual/simpleenroll",
        None,
        Some(&estuser()),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let waiting_id = pending_ids(dir, &data)[0];
    // The revocation's CRL is signed once the server sees it (within a second or two).
    let deadline = Instant::now() + Duration::from_secs(10);
    let crl_number_before = loop {
        let number = newest_crl_number(&sqlite_url.parse().unwrap(), &server.ca_file());
        if number >= 2 {
            break number;
        }
        assert!(Instant::now() < deadline, "no CRL for the revocation");
        std::thread::sleep(Duration::from_millis(200));
    };
    let ca_file = server.ca_file();
    let db = database("store_migrate");
    // Not while the server has the store open.
    let refused = estuary(
        &["store", "migrate", "--data-dir", data_arg, "--to", db.url()],
        dir,
        None,
    );
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("stop the server, then copy"), "{message}");
    server.stop();
    // A server started on another, new database before the copy says what it leaves behind.
    let other = database("store_migrate_other");
    let early = Server::start(&data, &[&args[..], &["--database", other.url()]].concat());
    early.wait_for_log("its data directory has a SQLite store", 1);
    early.stop();

    let copied = estuary_ok(
        &["store", "migrate", "--data-dir", data_arg, "--to", db.url()],
        dir,
    );
    assert!(
        copied.contains("every table's row count checked"),
        "{copied}"
    );
    let listings = |database: &str| {
        ["certs", "audit", "requests"].map(|what| {
            estuary_ok(
                &[what, "list", "--data-dir", data_arg, "--database", database],
                dir,
            )
        })
    };
    assert_eq!(listings(&sqlite_url), listings(db.url()));
    assert_eq!(
        newest_crl_number(&db.database_url(), &ca_file),
        crl_number_before
    );

    // A second copy finds records there and copies nothing.
    let again = estuary(
        &["store", "migrate", "--data-dir", data_arg, "--to", db.url()],
        dir,
        None,
    );
    assert!(!again.status.success());
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(message.contains("already holds records"), "{message}");
    assert_eq!(listings(&sqlite_url), listings(db.url()));

    // The copied SQLite store is marked: the server restarted on it by mistake refuses, unless
    // told otherwise.
    let on_the_file = estuary(
        &[
            "serve",
            "--dev",
            "--data-dir",
            data_arg,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "",
        ],
        dir,
        None,
    );
    assert!(!on_the_file.status.success());
    let message = String::from_utf8_lossy(&on_the_file.stderr);
    assert!(message.contains("was copied into PostgreSQL"), "{message}");
    // `config check` says so before a start.
    let checked = estuary(&["config", "check", "--data-dir", data_arg], dir, None);
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        !checked.status.success() && said.contains("was copied into PostgreSQL"),
        "{said}"
    );
    // Nor does a command that would change it.
    let prune = [
        "audit",
        "prune",
        "--older-than",
        "3650d",
        "--data-dir",
        data_arg,
    ];
    let refused = estuary(&prune, dir, None);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("was copied into PostgreSQL"), "{message}");
    // Served on purpose, it is the store again: the mark goes.
    let told = Server::start_with_env(
        &data,
        &args,
        &["--listen", "127.0.0.1:0"],
        &[("ESTUARY_SERVE_COPIED_STORE", std::ffi::OsStr::new("1"))],
    );
    told.wait_for_log("is served again and no longer marked as copied", 1);
    told.stop();
    estuary_ok(&prune, dir);
    // A copy names the store the server uses, not another file.
    let elsewhere = Command::new(BIN)
        .args(["store", "migrate", "--data-dir", data_arg, "--to", db.url()])
        .args(["--from", dir.join("other.db").to_str().unwrap()])
        .env("ESTUARY_DATABASE", &sqlite_url)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(!elsewhere.status.success());
    let message = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(message.contains("copy the store it uses"), "{message}");

    // The same server on PostgreSQL.
    let server = Server::start(&data, &[&args[..], &["--database", db.url()]].concat());
    let renew = |name: &str| {
        let identity = ClientIdentity {
            cert_pem: &dir.join(format!("{name}.pem")),
            key_pem: &dir.join(format!("{name}.key")),
        };
        let csr = openssl_csr(
            dir,
            &format!("{name}-next"),
            P256,
            &format!("/CN=device-{name}"),
            &[],
        );
        enroll(
            &server,
            &csr,
            "/.well-known/est/simplereenroll",
            Some(&identity),
            None,
        )
    };
    let r = renew("kept");
    assert_eq!(r.status, 200, "{}", r.text());
    // (The log file is the same for every start of this data directory: the one above.)
    let warned = server
        .log_text_now()
        .matches("its data directory has a SQLite store")
        .count();
    assert_eq!(warned, 1, "a warning after the copy");
    let r = renew("revoked");
    assert!(matches!(r.status, 401 | 403), "{}: {}", r.status, r.text());
    estuary_ok(
        &[
            "requests",
            "approve",
            &waiting_id.to_string(),
            "--data-dir",
            data_arg,
            "--database",
            db.url(),
        ],
        dir,
    );
    let r = enroll(
        &server,
        &waiting,
        "/.well-known/est/manual/simpleenroll",
        None,
        Some(&estuser()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A new revocation's CRL is numbered after the copied ones.
    estuary_ok(
        &[
            "certs",
            "revoke",
            &serial_hex(&identities[0]),
            "--data-dir",
            data_arg,
            "--database",
            db.url(),
        ],
        dir,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while newest_crl_number(&db.database_url(), &ca_file) <= crl_number_before {
        assert!(
            Instant::now() < deadline,
            "no CRL after the copied ones for the new revocation"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.stop();
}

/// Nodes of two CAs on one database (a key file not copied to the second node): the second is
/// refused at its start and says why; `ESTUARY_ACCEPT_NEW_CA_KEY=1` binds the store to a CA
/// that replaces the first on purpose, and a node of the first CA is then the one refused.
#[test]
fn a_node_of_another_ca_is_refused_on_a_shared_database() {
    let tmp = tempdir();
    let dir = tmp.path();
    let db = database("two_cas");
    let (one, two) = (dir.join("one"), dir.join("two"));
    let args = ["--dev", "--database", db.url()];
    let serve_fails_with = |data: &Path, env: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .args(["serve", "--data-dir", data.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", ""])
            .args(["--dev", "--database", db.url()])
            .envs(env.iter().copied())
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let serve_fails = |data: &Path| serve_fails_with(data, &[]);
    let first = Server::start(&one, &args);
    let message = serve_fails(&two);
    assert!(
        message.contains("belongs to another CA key")
            && message.contains("ESTUARY_ACCEPT_NEW_CA_KEY="),
        "{message}"
    );
    assert!(!message.contains("estuary_test:estuary_test"), "{message}");
    // `config check` says the same before a start.
    std::fs::write(
        two.join("estuary.toml"),
        format!("[database]\nurl = \"{}\"\n", db.url()),
    )
    .unwrap();
    let checked = estuary(
        &["config", "check", "--data-dir", two.to_str().unwrap()],
        dir,
        None,
    );
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        !checked.status.success() && said.contains("✘ database: belongs to another CA key (id "),
        "{said}"
    );
    std::fs::remove_file(two.join("estuary.toml")).unwrap();
    // The first node still serves.
    let csr = openssl_csr(dir, "device", P256, "/CN=device-1", &[]);
    enroll_with_estuser(&first, &csr);
    first.stop();

    // The override names the new key, as the refusal prints it (a forgotten "=1" in a unit
    // file would not turn the check off for good).
    let new_key = message
        .rsplit("ESTUARY_ACCEPT_NEW_CA_KEY=")
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(new_key.len(), 16, "{message}");
    let message = serve_fails_with(&two, &[("ESTUARY_ACCEPT_NEW_CA_KEY", "1")]);
    assert!(
        message.contains("belongs to another CA key")
            && message.contains(
                "ESTUARY_ACCEPT_NEW_CA_KEY is set, but not to this server's key id: it was ignored"
            ),
        "{message}"
    );
    let replacing = Server::start_with_env(
        &two,
        &args,
        &["--listen", "127.0.0.1:0"],
        &[("ESTUARY_ACCEPT_NEW_CA_KEY", std::ffi::OsStr::new(&new_key))],
    );
    replacing.wait_for_log("the store is now bound to this server's CA key", 1);
    replacing.stop();
    let message = serve_fails(&one);
    assert!(message.contains("belongs to another CA key"), "{message}");

    // A data directory whose CA is gone: the start creates one, is refused, and says so.
    for file in ["ca-cert.pem", "ca-key.pem"] {
        std::fs::remove_file(two.join(file)).unwrap();
    }
    let message = serve_fails(&two);
    assert!(message.contains("This start created that CA"), "{message}");
}
