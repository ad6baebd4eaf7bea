//! A small EST load generator: N client threads each send M `simpleenroll` requests with Basic
//! auth and report the enrollment rate and latency percentiles. Optionally pre-fills a
//! server's SQLite store so that the rate can be compared at different store sizes.
//!
//! ```sh
//! cargo run --release --example loadgen -- --port 8085 --ca estuary-data/ca-cert.pem \
//!     --connections 4 --requests 2000 [--reuse] [--prefill-db estuary-data/estuary.db --prefill 200000]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

struct Args {
    port: u16,
    host: String,
    ca: String,
    user: String,
    password: String,
    connections: usize,
    requests: usize,
    reuse: bool,
    prefill_db: Option<String>,
    prefill: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        port: 8085,
        host: "localhost".into(),
        ca: "estuary-data/ca-cert.pem".into(),
        user: "estuser".into(),
        password: "estpwd".into(),
        connections: 4,
        requests: 1000,
        reuse: false,
        prefill_db: None,
        prefill: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("flag needs a value");
        match flag.as_str() {
            "--port" => a.port = value().parse().unwrap(),
            "--host" => a.host = value(),
            "--ca" => a.ca = value(),
            "--user" => a.user = value(),
            "--password" => a.password = value(),
            "--connections" => a.connections = value().parse().unwrap(),
            "--requests" => a.requests = value().parse().unwrap(),
            "--reuse" => a.reuse = true,
            "--prefill-db" => a.prefill_db = Some(value()),
            "--prefill" => a.prefill = value().parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn main() {
    let args = parse_args();
    if let Some(db) = &args.prefill_db {
        prefill(db, args.prefill);
        if args.requests == 0 {
            return;
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["loadgen.example".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "loadgen");
    let csr = params.serialize_request(&key).unwrap();
    let body = estuary_wire::body::encode_base64_lines(csr.der());

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&args.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", args.user, args.password));
    let request = format!(
        "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\nContent-Length: {}\r\n\r\n{body}",
        args.host,
        body.len()
    );
    let args = Arc::new(args);
    let request = Arc::new(request);
    let started = Instant::now();
    let threads: Vec<_> = (0..args.connections)
        .map(|_| {
            let (args, request, config) = (args.clone(), request.clone(), config.clone());
            std::thread::spawn(move || worker(&args, &request, config))
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let n = latencies.len();
    let pct = |p: f64| latencies[((n as f64 * p) as usize).min(n - 1)];
    println!(
        "{n} enrollments in {:.2}s over {} {} connections: {:.0}/s; latency p50 {:.2}ms p99 {:.2}ms max {:.2}ms",
        elapsed.as_secs_f64(),
        args.connections,
        if args.reuse { "keep-alive" } else { "new-per-request" },
        n as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies[n - 1].as_secs_f64() * 1e3,
    );
}

fn connect(
    args: &Args,
    config: &Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = ServerName::try_from(args.host.clone()).unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", args.port)).unwrap();
    tcp.set_nodelay(true).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn worker(args: &Args, request: &str, config: Arc<rustls::ClientConfig>) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(args.requests);
    let mut stream = None;
    for _ in 0..args.requests {
        let t = Instant::now();
        if stream.is_none() || !args.reuse {
            stream = Some(connect(args, &config));
        }
        let s = stream.as_mut().unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let status = read_response(s);
        assert_eq!(status, 200, "enrollment failed");
        latencies.push(t.elapsed());
    }
    latencies
}

fn read_response(s: &mut impl Read) -> u16 {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            return head[9..12].parse().unwrap();
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Inserts `count` synthetic certificate records through the store's own write path.
fn prefill(db: &str, count: usize) {
    use estuary_store::{AuditRecord, CertificateRecord, SqliteStore, Store};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(std::path::Path::new(db)).unwrap();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..count {
            let store = store.clone();
            tasks.spawn(async move {
                let serial = format!("7f{i:030x}");
                let record = CertificateRecord {
                    serial: serial.clone(),
                    subject: format!("CN=prefill-{i}"),
                    sans: vec![],
                    not_before: 0,
                    not_after: 4_000_000_000,
                    sha256_thumbprint: format!("{serial}{i:032X}"),
                    sha1_thumbprint: format!("{i:040X}"),
                    profile: "device".into(),
                    label: String::new(),
                    origin_label: String::new(),
                    requester: "loadgen".into(),
                    key_type: "p256".into(),
                    issued_at: 0,
                    revoked_at: None,
                    der: vec![0u8; 600],
                };
                let audit = AuditRecord {
                    time: 0,
                    request_id: format!("prefill-{i}"),
                    peer: "127.0.0.1:0".into(),
                    requester: "loadgen".into(),
                    auth_method: "basic".into(),
                    label: String::new(),
                    operation: "simpleenroll".into(),
                    outcome: estuary_store::Outcome::Issued,
                    status: 200,
                    serial: Some(serial),
                    reason: None,
                };
                store.record_issued(record, audit, None).await.unwrap();
            });
            if tasks.len() >= 2048 {
                tasks.join_next().await;
            }
        }
        while tasks.join_next().await.is_some() {}
        println!(
            "prefilled {count} certificates in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    });
}
