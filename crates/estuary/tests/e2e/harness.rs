//! Test harness: the real `estuary` binary on a real TLS socket (127.0.0.1, port 0), a tiny
//! blocking HTTPS client with byte-level control of the request, and helpers for the
//! third-party tools the tests run. A missing tool fails the test (never skips it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub const BIN: &str = env!("CARGO_BIN_EXE_estuary");

/// A running `estuary serve`.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    /// The admin listener's port (/metrics, /healthz, /readyz).
    pub admin_port: u16,
    /// The plain-HTTP CRL listener's port, when one was configured.
    pub crl_port: Option<u16>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts `estuary serve --data-dir DIR --listen 127.0.0.1:0 ARGS...` and waits for its
    /// "listening on" line.
    pub fn start(data_dir: &Path, args: &[&str]) -> Server {
        Self::start_with_listen(data_dir, args, &["--listen", "127.0.0.1:0"])
    }

    pub fn start_with_listen(data_dir: &Path, args: &[&str], listen: &[&str]) -> Server {
        Self::start_with_env(data_dir, args, listen, &[])
    }

    /// [`Server::start_with_listen`] with extra environment variables for the server process
    /// only (e.g. `SOFTHSM2_CONF`).
    pub fn start_with_env(
        data_dir: &Path,
        args: &[&str],
        listen: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(listen)
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start estuary serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("estuary: listening on https://") {
                    let addr = rest.split('/').next().unwrap_or_default().to_string();
                    let _ = tx.send(("est", addr));
                } else if let Some(rest) = line.strip_prefix("estuary: admin on http://") {
                    let _ = tx.send(("admin", rest.trim().to_string()));
                } else if let Some(rest) = line.strip_prefix("estuary: crl on http://") {
                    let _ = tx.send(("crl", rest.trim().to_string()));
                } else if line == "estuary: ready" {
                    let _ = tx.send(("ready", String::new()));
                }
            }
        });
        let mut port = None;
        let mut admin_port = None;
        let mut crl_port = None;
        let mut ready = false;
        while !ready {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(("ready", _)) => ready = true,
                Ok((kind, addr)) => {
                    let p: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
                    match kind {
                        "est" => port = Some(p),
                        "admin" => admin_port = Some(p),
                        _ => crl_port = Some(p),
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "server did not start; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        let port = port.unwrap();
        let admin_port = admin_port.unwrap();
        Server {
            child: Some(child),
            port,
            admin_port,
            crl_port,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    /// `https://localhost:PORT/.well-known/est`, as the tutorial writes it.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/.well-known/est", self.port)
    }

    /// `https://127.0.0.1:PORT` (strongSwan's `--url` form).
    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap()
    }

    /// The root CA file the server wrote.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("ca-cert.pem")
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An unauthenticated GET over TLS (verified as `localhost`).
    pub fn get(&self, path: &str) -> HttpResponse {
        https(
            self.port,
            "localhost",
            &self.ca_file(),
            None,
            "GET",
            path,
            &[],
            b"",
        )
    }

    /// A keep-alive TLS connection to the server (verified as `localhost`), 10 s read timeout.
    pub fn tls_stream(&self) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let config = client_config(&self.ca_file(), None, None);
        let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    }

    /// Sends SIGHUP (reload the config).
    pub fn sighup(&self) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits (bounded) until the log contains `text` `count` times.
    pub fn wait_for_log(&self, text: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log_text_now().matches(text).count() < count {
            assert!(
                Instant::now() < deadline,
                "log never showed {text:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far. Its lines reach the file from a thread of their own (the log
    /// writer, every 5 ms), so this waits until the file has stopped growing for 60 ms (at
    /// most 3 s): a line logged before the call is in what it returns.
    pub fn log_text(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut text = self.log_text_now();
        loop {
            std::thread::sleep(Duration::from_millis(60));
            let again = self.log_text_now();
            if again.len() == text.len() || Instant::now() >= deadline {
                return again;
            }
            text = again;
        }
    }

    /// The log file as it is now (lines still in the server's log buffer are not in it).
    pub fn log_text_now(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Why the server refused `r`: the log line of its request id (a 401 says it only there).
    pub fn refusal(&self, r: &HttpResponse) -> String {
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("no X-Request-Id on {} {}", r.status, r.text()));
        let needle = format!("request_id=\"{id}\"");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.log_text_now().lines().find(|l| l.contains(&needle)) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no log line for request {id}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Fails (does not skip) when a tool the tests need is missing.
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "required test tool `{name}` is not installed; `.ci/run` installs it (apt-get install openssl curl strongswan-pki libstrongswan-standard-plugins libstrongswan-extra-plugins faketime default-jdk-headless libbcpkix-java libbcprov-java libbcutil-java softhsm2 opensc)"
    );
}

/// Runs a command, asserting success; returns stdout.
pub fn run(program: &str, args: &[&str], dir: &Path) -> Vec<u8> {
    let out = run_output(program, args, dir, None);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn run_output(program: &str, args: &[&str], dir: &Path, stdin: Option<&[u8]>) -> Output {
    require_tool(program);
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs a shell pipeline in `dir`, asserting success.
pub fn sh(script: &str, dir: &Path) -> String {
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `estuary ARGS`, returning the output.
pub fn estuary(args: &[&str], dir: &Path, stdin: Option<&[u8]>) -> Output {
    run_output(BIN, args, dir, stdin)
}

/// `estuary ARGS...`, which must succeed; its stdout.
pub fn estuary_ok(args: &[&str], dir: &Path) -> String {
    let out = estuary(args, dir, None);
    assert!(
        out.status.success(),
        "estuary {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ids of the requests in `data`'s store (`estuary requests list --json`).
pub fn pending_ids(dir: &Path, data: &Path) -> Vec<i64> {
    let out = estuary_ok(
        &[
            "requests",
            "list",
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ],
        dir,
    );
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

/// `estuary user add NAME --password-stdin` in `data` (which must succeed).
pub fn add_user(dir: &Path, data: &Path, name: &str, password: &str) {
    let out = estuary(
        &[
            "user",
            "add",
            name,
            "--data-dir",
            data.to_str().unwrap(),
            "--password-stdin",
        ],
        dir,
        Some(format!("{password}\n").as_bytes()),
    );
    assert!(
        out.status.success(),
        "user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key and a DER CSR made by `openssl` (key type as `openssl genpkey` algorithm options).
pub fn openssl_csr(
    dir: &Path,
    name: &str,
    key_args: &[&str],
    subj: &str,
    extra: &[&str],
) -> Vec<u8> {
    let key = format!("{name}.key");
    let mut genpkey = vec!["genpkey", "-out", &key];
    genpkey.extend_from_slice(key_args);
    run("openssl", &genpkey, dir);
    let csr = format!("{name}.csr.der");
    let mut req = vec![
        "req", "-new", "-key", &key, "-subj", subj, "-outform", "DER", "-out", &csr,
    ];
    req.extend_from_slice(extra);
    run("openssl", &req, dir);
    std::fs::read(dir.join(&csr)).unwrap()
}

pub const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
pub const RSA2048: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];

/// Base64 in 64-column lines with a final newline, as IoT Edge sends CSRs.
pub fn b64_lines(der: &[u8]) -> String {
    estuary_wire::body::encode_base64_lines(der)
}

pub fn b64(der: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// A TLS client identity: PEM chain file and PEM key file.
pub struct ClientIdentity<'a> {
    pub cert_pem: &'a Path,
    pub key_pem: &'a Path,
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The certificates of a certs-only body, in wire order.
    pub fn certificates(&self) -> Vec<Vec<u8>> {
        estuary_wire::pkcs7::certificates_from_body(&self.body)
            .unwrap_or_else(|e| panic!("not a certs-only body ({e}): {}", self.text()))
    }
}

/// One HTTPS request with exactly the given request head (the client adds only `Host` and
/// `Content-Length`). Verifies the server against `ca` and the host name `host`.
pub fn https(
    port: u16,
    host: &str,
    ca: &Path,
    client: Option<&ClientIdentity<'_>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let config = client_config(ca, client, None);
    let server_name = ServerName::try_from(host.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" || !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).unwrap();
    // The server may answer (413, 401) and close before it has read a large body: a failed
    // write is then expected, and the response is still there to read.
    let _ = tls.write_all(body).and_then(|()| tls.flush());
    read_response(&mut tls)
}

pub fn client_config(
    ca: &Path,
    client: Option<&ClientIdentity<'_>>,
    versions: Option<&[&'static rustls::SupportedProtocolVersion]>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions.unwrap_or(rustls::ALL_VERSIONS))
        .unwrap()
        .with_root_certificates(roots);
    match client {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(id.cert_pem)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(id.key_pem).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

pub fn read_response(stream: &mut impl Read) -> HttpResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed in the body");
        body.extend_from_slice(&chunk[..n]);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// PEM of DER certificates.
pub fn pem_certs(ders: &[Vec<u8>]) -> String {
    estuary_ca::bootstrap::pem_certificates(ders)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("estuary-e2e")
        .tempdir()
        .unwrap()
}

/// Basic credentials header value.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", b64(format!("{user}:{password}").as_bytes()))
}

/// The tutorial's credentials.
pub fn estuser() -> String {
    basic("estuser", "estpwd")
}

/// `openssl x509 -noout ARGS` on a PEM file.
pub fn x509(dir: &Path, pem: &str, args: &[&str]) -> String {
    let mut a = vec!["x509", "-in", pem, "-noout"];
    a.extend_from_slice(args);
    String::from_utf8(run("openssl", &a, dir)).unwrap()
}

/// A plain HTTP GET on loopback (admin and CRL listeners): (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let r = read_response(&mut tcp);
    (r.status, r.body)
}

/// `simpleenroll` of `csr` on the default label with the dev server's Basic user, which must
/// answer 200 (the failing answer's body is shown).
#[track_caller]
pub fn enroll_with_estuser(server: &Server, csr: &[u8]) -> HttpResponse {
    let r = enroll(
        server,
        csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&estuser()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// A POST of a CSR (base64) to an enrollment endpoint, with Basic and/or a client certificate.
pub fn enroll(
    server: &Server,
    csr: &[u8],
    path: &str,
    client: Option<&ClientIdentity<'_>>,
    auth: Option<&str>,
) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/pkcs10")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    https(
        server.port,
        "localhost",
        &server.ca_file(),
        client,
        "POST",
        path,
        &headers,
        b64(csr).as_bytes(),
    )
}
