//! `estuary bench`: a load generator for any RFC 7030 server.
//!
//! Each connection is a thread with a blocking rustls stream; the request bytes (one per CSR,
//! CSRs made before the clock starts) are built ahead of time, so the hot loop is a write and
//! a read. Closed loop by default (each connection sends its next request when the answer to
//! the last one came); `--rate` is an open loop: request `i` is due at `start + i/rate`, and
//! its latency is measured from then, so time spent waiting for a free connection counts (no
//! coordinated omission).

mod fleet;
mod http;
mod idle;
mod prefill;
mod reference;
mod stats;
mod synthetic;

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::net::ToSocketAddrs as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use estuary_ca::{FileKeySigner, KeyChoice};
use estuary_client::csr::{build_csr, renewal_csr, subject_with_common_name};
use estuary_client::{files, EstUrl};
use estuary_wire::operation::Operation;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::StoreArgs;
use http::{Stream, Target};
use stats::{Classes, Latency, Tally};

/// `estuary bench`: a run, or `estuary bench prefill`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Add COUNT synthetic certificate records (and their audit events) to a server's store
    /// through its own write path, to measure a server with a large store. Stop the server first.
    Prefill {
        #[command(flatten)]
        data: StoreArgs,
        /// How many records.
        #[arg(long)]
        count: u64,
    },
    /// Simulate a fleet's renewals on a compressed clock (no server: nothing is sent).
    ///
    /// Shows the renewal load a fleet of agents puts on a server and whether it comes in
    /// storms: N devices enrolled over --enrolled-over, each renewing at the time `estuary
    /// agent` computes (threshold, retry, renewal jitter: the agent's own code), every request
    /// answered at once, for --duration. Reports renewals per bucket, the busiest second, the
    /// mean rate and peak/mean.
    Fleet(fleet::FleetArgs),
}

/// The EST operation to load the server with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// POST /simpleenroll with a CSR made ahead of time (Basic or --cert authentication).
    Enroll,
    /// POST /simplereenroll with a client certificate: one per connection, enrolled first.
    Reenroll,
    /// GET /cacerts.
    Cacerts,
    /// GET /csrattrs.
    Csrattrs,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Enroll => "enroll",
            Op::Reenroll => "reenroll",
            Op::Cacerts => "cacerts",
            Op::Csrattrs => "csrattrs",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// EST server URL, e.g. https://host:8085/.well-known/est.
    #[arg(long)]
    url: Option<String>,
    /// PEM file of the CA(s) the server's TLS certificate must chain to.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// HTTP Basic credentials.
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "ESTUARY_BENCH_USER",
        hide_env_values = true
    )]
    user: Option<String>,
    /// TLS client certificate (PEM) for enroll, or to enroll reenroll's pool.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Operation.
    #[arg(long, value_enum, default_value = "enroll")]
    op: Op,
    /// EST label (/.well-known/est/<label>/...).
    #[arg(long)]
    label: Option<String>,
    /// Key type of the CSRs.
    #[arg(long, value_name = "TYPE", default_value = "p256")]
    key_type: KeyChoice,
    /// Concurrent connections (one thread each).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// A new TCP connection and TLS handshake for every request (default: keep-alive).
    #[arg(long)]
    new_connection_per_request: bool,
    /// Never resume a TLS session (by default a new connection resumes the last one when the
    /// server offers tickets or session ids, as devices that reconnect do).
    #[arg(long)]
    no_resumption: bool,
    /// Run this long (e.g. 30s); conflicts with --requests.
    #[arg(long, value_name = "DURATION", conflicts_with = "requests")]
    duration: Option<String>,
    /// Send this many requests in all (default 1000 without --duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: send at this fixed arrival rate (e.g. 2000/s, 600/min) whatever the answers.
    #[arg(long, value_name = "N/s")]
    rate: Option<String>,
    /// Also measure this server process (same machine): CPU time per request and peak RSS.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Before the load, open N more TLS connections that send nothing and hold them until the
    /// end: the server's memory with N idle clients (the server drops idle connections after
    /// its `limits.header_timeout`, 30 s by default).
    #[arg(long, value_name = "N", default_value_t = 0)]
    idle_connections: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Connect, read and write timeout.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    timeout: String,
    /// Skip the warm-up enrollment that enroll with --user sends before the clock starts
    /// (it puts the credentials in the server's password cache; it is reported, not counted).
    #[arg(long)]
    no_warmup: bool,
    /// Distinct CSRs made ahead of time (per connection for reenroll) and sent in turn
    /// (default: up to 256, 16 for RSA keys).
    #[arg(long, value_name = "N")]
    csrs: Option<usize>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(BenchCommand::Prefill { data, count }) => prefill::run(&data, count),
        Some(BenchCommand::Fleet(fleet)) => fleet::run(&fleet),
        None => run_bench(args.run),
    }
}

/// How long the run goes.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Requests(u64),
    Duration(Duration),
}

/// The closed loop's pause after a connection error.
const CLOSED_LOOP_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What one connection slot sends: its TLS config and the requests it takes turns with.
struct Slot {
    config: Arc<rustls::ClientConfig>,
    requests: Arc<Vec<Vec<u8>>>,
}

/// The shared plan of a run.
struct Plan {
    target: Target,
    limit: Limit,
    /// Requests per second for the open loop.
    rate: Option<f64>,
    new_connection_per_request: bool,
}

fn run_bench(args: RunArgs) -> anyhow::Result<ExitCode> {
    let Some(url_text) = &args.url else {
        bail!("--url is required (e.g. --url https://host:8085/.well-known/est)");
    };
    let Some(ca) = &args.ca else {
        bail!("--ca is required: the PEM file the server's TLS certificate chains to");
    };
    let url = EstUrl::parse(url_text)?;
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let timeout = estuary_wire::duration::parse_duration(&args.timeout)
        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    if timeout.is_zero() {
        bail!("--timeout must be above 0");
    }
    let limit = match (&args.duration, args.requests) {
        (Some(d), _) => {
            let d = estuary_wire::duration::parse_duration(d)
                .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
            if d.is_zero() {
                bail!("--duration must be above 0");
            }
            Limit::Duration(d)
        }
        (None, Some(0)) => bail!("--requests must be at least 1"),
        (None, n) => Limit::Requests(n.unwrap_or(1000)),
    };
    let rate = args
        .rate
        .as_deref()
        .map(stats::parse_rate)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--rate: {e}"))?;
    let basic = match &args.user {
        Some(u) => {
            if !u.contains(':') {
                bail!("--user: write USER:PASSWORD");
            }
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(u)
            ))
        }
        None => None,
    };
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = files::read_certificates(cert)?;
            let key = files::read_key(key)?;
            Some((chain, key.key_pair().serialize_der()))
        }
        _ => None,
    };
    if matches!(args.op, Op::Enroll | Op::Reenroll) && basic.is_none() && identity.is_none() {
        bail!(
            "--op {} needs --user USER:PASSWORD or --cert/--key",
            args.op.as_str()
        );
    }
    let anchors = files::read_certificates(ca).context("--ca")?;
    let base_config = Arc::new(tls_config(
        &anchors,
        identity.as_ref(),
        !args.no_resumption,
    )?);
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", url.authority()))?
        .next()
        .with_context(|| format!("{} has no address", url.host))?;
    let name =
        ServerName::try_from(url.host.clone()).map_err(|e| anyhow::anyhow!("{}: {e}", url.host))?;
    let target = Target {
        addr,
        name,
        timeout,
    };
    // A server that cannot be reached at all is a setup error, not a result.
    let first = http::connect(&target, &base_config)
        .with_context(|| format!("cannot connect to {url} ({addr})"))?;
    let server_key = server_key_type(&first);
    drop(first);

    let per_slot = match limit {
        Limit::Requests(n) => n.div_ceil(args.connections as u64),
        Limit::Duration(_) => u64::MAX,
    };
    let csrs = args.csrs.unwrap_or_else(|| {
        let cap = match args.key_type {
            KeyChoice::Rsa2048 | KeyChoice::Rsa3072 | KeyChoice::Rsa4096 => 16,
            _ => 256,
        };
        let wanted = match (args.op, limit) {
            (Op::Reenroll, _) => per_slot,
            (_, Limit::Requests(n)) => n,
            (_, Limit::Duration(_)) => u64::MAX,
        };
        wanted.min(cap) as usize
    });
    let csrs = csrs.max(1);
    let label = args.label.as_deref();
    let authority = url.authority();
    let path = |op| url.operation_path(label, op);
    let mut warmup = None;
    let slots: Vec<Slot> = match args.op {
        Op::Cacerts | Op::Csrattrs => {
            let op = if args.op == Op::Cacerts {
                Operation::CaCerts
            } else {
                Operation::CsrAttrs
            };
            let request = Arc::new(vec![http::request_bytes(
                "GET",
                &path(op),
                &authority,
                basic.as_deref(),
                None,
            )]);
            (0..args.connections)
                .map(|_| Slot {
                    config: base_config.clone(),
                    requests: request.clone(),
                })
                .collect()
        }
        Op::Enroll => {
            let enroll_path = path(Operation::SimpleEnroll);
            let mut requests = Vec::with_capacity(csrs);
            for i in 0..csrs {
                let key = FileKeySigner::new(args.key_type.generate()?)?;
                let der = build_csr(
                    &key,
                    subject_with_common_name(&format!("bench-{i}"))?,
                    vec![],
                )?;
                requests.push(enroll_request(
                    &enroll_path,
                    &authority,
                    basic.as_deref(),
                    &der,
                ));
            }
            if basic.is_some() && !args.no_warmup {
                warmup = Some(warm_up(&target, &base_config, &requests[0])?);
            }
            let requests = Arc::new(requests);
            (0..args.connections)
                .map(|_| Slot {
                    config: base_config.clone(),
                    requests: requests.clone(),
                })
                .collect()
        }
        Op::Reenroll => reenroll_pool(
            &args,
            &target,
            &base_config,
            &anchors,
            &url,
            basic.as_deref(),
            csrs,
        )?,
    };

    let plan = Arc::new(Plan {
        target,
        limit,
        rate,
        new_connection_per_request: args.new_connection_per_request,
    });
    let server_pid = args.server_pid.map(|p| p.to_string());
    if let Some(pid) = &server_pid {
        if stats::cpu_time(pid).is_none() {
            bail!(
                "--server-pid {pid}: cannot read /proc/{pid}/stat (no such process, or not Linux)"
            );
        }
    }
    // The same work in one thread of this machine, measured now (the server is idle), so that
    // the server's CPU per request can be read against it (see reference.rs).
    let reference = match &server_pid {
        Some(_) => reference::measure(&reference::Work {
            issuance: matches!(args.op, Op::Enroll | Op::Reenroll).then(|| reference::Issuance {
                csr_key: args.key_type,
                ca_key: anchor_key_type(&anchors).unwrap_or(KeyChoice::P256),
            }),
            handshake: args
                .new_connection_per_request
                .then(|| reference::Handshake {
                    server_key: server_key.unwrap_or(KeyChoice::P256),
                    client_certificate: args.op == Op::Reenroll || identity.is_some(),
                    resumption: !args.no_resumption,
                }),
        })
        .context("measuring the in-process reference")?,
        None => None,
    };
    let idle = match args.idle_connections {
        0 => None,
        n if n > idle::MAX_IDLE_CONNECTIONS => bail!(
            "--idle-connections: at most {} (each is a file descriptor here and at the server)",
            idle::MAX_IDLE_CONNECTIONS
        ),
        n => Some(idle::open(
            &plan.target,
            &base_config,
            n,
            server_pid.as_deref(),
        )?),
    };
    let outcome = execute(&plan, slots, server_pid.as_deref())?;
    let mut report = Report::new(&args, &url, &plan, outcome);
    report.warmup_status = warmup;
    if let Some(idle) = idle {
        report.idle = Some(idle.finish());
    }
    if let Some(reference) = reference {
        report.server_to_reference = report
            .server
            .as_ref()
            .map(|s| s.cpu_ms_per_request / reference.ms_per_request.max(1e-9));
        report.reference = Some(reference);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    for hint in report.hints() {
        eprintln!("hint: {hint}");
    }
    Ok(ExitCode::SUCCESS)
}

fn enroll_request(path: &str, authority: &str, basic: Option<&str>, der: &[u8]) -> Vec<u8> {
    let body = estuary_wire::body::encode_base64_lines(der);
    http::request_bytes(
        "POST",
        path,
        authority,
        basic,
        Some((estuary_wire::media::PKCS10, body.as_bytes())),
    )
}

/// One enrollment before the clock starts, so that the server's cache of verified passwords
/// holds the credentials: otherwise the first requests of every connection queue behind one
/// argon2 check (and the server refuses concurrent checks from one address with 429).
fn warm_up(
    target: &Target,
    config: &Arc<rustls::ClientConfig>,
    request: &[u8],
) -> anyhow::Result<u16> {
    let mut s = http::connect(target, config).context("warm-up request")?;
    let answer = http::exchange(&mut s, request).context("warm-up request")?;
    Ok(answer.status)
}

/// The key type of the certificate a TLS connection's server presented.
fn server_key_type(stream: &Stream) -> Option<KeyChoice> {
    let der = stream.conn.peer_certificates()?.first()?;
    certificate_key_type(der)
}

/// The key type of the first certificate of `--ca` (taken as the CA's key type).
fn anchor_key_type(anchors: &[Vec<u8>]) -> Option<KeyChoice> {
    certificate_key_type(anchors.first()?)
}

fn certificate_key_type(der: &[u8]) -> Option<KeyChoice> {
    use der::Decode as _;
    let certificate = x509_cert::Certificate::from_der(der).ok()?;
    let key_type =
        estuary_wire::KeyType::from_spki(&certificate.tbs_certificate.subject_public_key_info)
            .ok()?;
    Some(KeyChoice::for_key_type(key_type))
}

fn tls_config(
    anchors: &[Vec<u8>],
    identity: Option<&(Vec<Vec<u8>>, Vec<u8>)>,
    resumption: bool,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in anchors {
        roots
            .add(CertificateDer::from(der.clone()))
            .context("--ca: a certificate rustls does not accept")?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain = chain
                .iter()
                .map(|d| CertificateDer::from(d.clone()))
                .collect();
            let key = PrivateKeyDer::try_from(key.clone())
                .map_err(|e| anyhow::anyhow!("client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate")?
        }
    };
    if !resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(config)
}

/// `reenroll`: enrolls one certificate per connection (with --user or --cert), then makes
/// renewal CSRs for it (its subject, its key) that the connection sends with it as the TLS
/// client certificate.
fn reenroll_pool(
    args: &RunArgs,
    target: &Target,
    base_config: &Arc<rustls::ClientConfig>,
    anchors: &[Vec<u8>],
    url: &EstUrl,
    basic: Option<&str>,
    csrs: usize,
) -> anyhow::Result<Vec<Slot>> {
    let authority = url.authority();
    let label = args.label.as_deref();
    let enroll_path = url.operation_path(label, Operation::SimpleEnroll);
    let reenroll_path = url.operation_path(label, Operation::SimpleReenroll);
    let mut stream: Option<Stream> = None;
    let mut slots = Vec::with_capacity(args.connections);
    for k in 0..args.connections {
        let key = FileKeySigner::new(args.key_type.generate()?)?;
        let der = build_csr(
            &key,
            subject_with_common_name(&format!("bench-renew-{k}"))?,
            vec![],
        )?;
        let request = enroll_request(&enroll_path, &authority, basic, &der);
        let mut s = match stream.take() {
            Some(s) => s,
            None => http::connect(target, base_config)
                .with_context(|| format!("enrolling the reenroll pool at {url}"))?,
        };
        let answer = http::exchange(&mut s, &request)
            .with_context(|| format!("enrolling the reenroll pool at {url}"))?;
        if answer.status != 200 {
            bail!(
                "enrolling the reenroll pool: {enroll_path} answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body).trim()
            );
        }
        if answer.keep_alive {
            stream = Some(s);
        }
        let chain = estuary_wire::pkcs7::certificates_from_body(&answer.body)
            .context("enrolling the reenroll pool: the answer")?;
        let Some(leaf) = chain.first() else {
            bail!("enrolling the reenroll pool: the answer holds no certificate");
        };
        let identity = (vec![leaf.clone()], key.key_pair().serialize_der());
        // A session cache of its own: a session resumed under another connection's
        // certificate would present that certificate.
        let config = Arc::new(tls_config(anchors, Some(&identity), !args.no_resumption)?);
        let mut requests = Vec::with_capacity(csrs);
        for _ in 0..csrs {
            let der = renewal_csr(&key, leaf)?;
            requests.push(enroll_request(&reenroll_path, &authority, None, &der));
        }
        slots.push(Slot {
            config,
            requests: Arc::new(requests),
        });
    }
    Ok(slots)
}

/// What a run measured.
struct Outcome {
    tally: Tally,
    elapsed: Duration,
    connections_served: usize,
    own_cpu: Option<Duration>,
    server_cpu: Option<Duration>,
    server_rss: Option<stats::RssSamples>,
    /// Bytes the server caused to be written to storage during the run.
    server_storage_writes: Option<u64>,
}

/// Stack of a connection thread (a blocking TLS client needs little; the default is 2 MiB).
const WORKER_STACK: usize = 512 * 1024;

/// The counters the connection threads share.
struct Counters<'a> {
    /// The next request number to take.
    next: &'a AtomicU64,
    /// Requests finished (for the progress line).
    done: &'a AtomicU64,
    /// Requests that ended in a connection error (for the progress line).
    failed: &'a AtomicU64,
    /// Set when the run cannot start all its connections.
    abort: &'a std::sync::atomic::AtomicBool,
}

fn execute(
    plan: &Arc<Plan>,
    slots: Vec<Slot>,
    server_pid: Option<&str>,
) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let own_before = stats::cpu_time("self");
    let server_before = server_pid.and_then(stats::cpu_time);
    let server_writes_before = server_pid.and_then(stats::storage_writes);
    let sampler = server_pid.map(|p| stats::RssSampler::start(p.to_string()));
    let start = Instant::now();
    let progress = std::io::stderr().is_terminal().then(|| {
        let done = done.clone();
        let failed = failed.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut last = (Instant::now(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    if last.0.elapsed() < Duration::from_secs(1) {
                        continue;
                    }
                    let n = done.load(Ordering::Relaxed);
                    let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
                    last = (Instant::now(), n);
                    eprint!(
                        "\r\x1b[K{:>6.1}s  {n} requests  {rate:.0}/s  {} errors",
                        start.elapsed().as_secs_f64(),
                        failed.load(Ordering::Relaxed)
                    );
                    let _ = std::io::stderr().flush();
                }
                eprint!("\r\x1b[K");
            })
        };
        (stop, handle)
    });
    let abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::with_capacity(slots.len());
    let mut spawn_error = None;
    for slot in slots {
        let (plan, next, done, failed, abort_flag) = (
            plan.clone(),
            next.clone(),
            done.clone(),
            failed.clone(),
            abort.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("bench".into())
            .stack_size(WORKER_STACK)
            .spawn(move || {
                let counters = Counters {
                    next: &next,
                    done: &done,
                    failed: &failed,
                    abort: &abort_flag,
                };
                worker(&plan, &slot, start, &counters)
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                abort.store(true, Ordering::Relaxed);
                spawn_error = Some(e);
                break;
            }
        }
    }
    let mut tally = Tally::default();
    let mut connections_served = 0;
    let threads_started = threads.len();
    for t in threads {
        match t.join() {
            Ok(t) => {
                connections_served += usize::from(t.served);
                tally.merge(t);
            }
            Err(_) => tally.error("a connection thread panicked".into()),
        }
    }
    let elapsed = start.elapsed();
    if let Some((stop, handle)) = progress {
        stop.store(true, Ordering::Relaxed);
        let _ = handle.join();
    }
    if let Some(e) = spawn_error {
        if let Some(sampler) = sampler {
            sampler.finish();
        }
        return Err(anyhow::Error::new(e).context(format!(
            "starting connection thread {} (lower --connections, or raise the thread limit)",
            threads_started + 1
        )));
    }
    let own_cpu = own_before
        .zip(stats::cpu_time("self"))
        .map(|(a, b)| b.saturating_sub(a));
    let server_cpu = server_before
        .zip(server_pid.and_then(stats::cpu_time))
        .map(|(a, b)| b.saturating_sub(a));
    let server_storage_writes = server_writes_before
        .zip(server_pid.and_then(stats::storage_writes))
        .map(|(a, b)| b.saturating_sub(a));
    Ok(Outcome {
        tally,
        elapsed,
        connections_served,
        own_cpu,
        server_cpu,
        server_rss: sampler.map(stats::RssSampler::finish),
        server_storage_writes,
    })
}

/// One connection slot: takes request numbers from `next` until the run is over.
fn worker(plan: &Plan, slot: &Slot, start: Instant, counters: &Counters<'_>) -> Tally {
    let Counters {
        next,
        done,
        failed,
        abort,
    } = *counters;
    let mut tally = Tally::default();
    let mut stream: Option<Stream> = None;
    let total = match (plan.limit, plan.rate) {
        (Limit::Requests(n), _) => n,
        (Limit::Duration(d), Some(rate)) => (d.as_secs_f64() * rate).floor() as u64,
        (Limit::Duration(_), None) => u64::MAX,
    };
    let deadline = match plan.limit {
        Limit::Duration(d) if plan.rate.is_none() => Some(start + d),
        _ => None,
    };
    let mut turn = 0usize;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) || abort.load(Ordering::Relaxed) {
            break;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        // Open loop: due at start + i/rate; late is measured from then.
        let began = match plan.rate {
            Some(rate) => {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                due
            }
            None => Instant::now(),
        };
        let request = &slot.requests[turn % slot.requests.len()];
        turn = turn.wrapping_add(1);
        let result = match stream.take() {
            Some(s) => Ok(s),
            None => {
                tally.connects += 1;
                let connected = http::connect(&plan.target, &slot.config);
                if let Ok(s) = &connected {
                    if s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        tally.resumed += 1;
                    }
                }
                connected.map_err(|e| format!("connect: {e}"))
            }
        }
        .and_then(|mut s| {
            http::exchange(&mut s, request)
                .map(|r| (s, r))
                .map_err(|e| format!("request: {e}"))
        });
        match result {
            Ok((s, answer)) => {
                tally.answer(answer.status, began.elapsed());
                if answer.keep_alive && !plan.new_connection_per_request {
                    stream = Some(s);
                }
            }
            Err(text) => {
                tally.error(text);
                failed.fetch_add(1, Ordering::Relaxed);
                // Closed loop: a server that refuses connections is not hammered in a busy
                // loop (the open loop keeps to its schedule anyway).
                if plan.rate.is_none() {
                    std::thread::sleep(CLOSED_LOOP_ERROR_PAUSE);
                }
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

#[derive(Debug, serde::Serialize)]
struct ServerUsage {
    pid: u32,
    cpu_s: f64,
    cpu_ms_per_request: f64,
    peak_rss_kib: u64,
    /// RSS when the load started and when it ended (a soak: is memory flat?).
    start_rss_kib: u64,
    end_rss_kib: u64,
    /// Bytes written to storage per request (`/proc/PID/io`), if readable: what durability
    /// costs the disk.
    storage_write_bytes_per_request: Option<f64>,
}

/// The report (`--json` prints it as it is).
#[derive(Debug, serde::Serialize)]
struct Report {
    op: &'static str,
    url: String,
    label: Option<String>,
    key_type: String,
    connections: usize,
    new_connection_per_request: bool,
    /// "closed" or "open".
    mode: &'static str,
    rate_per_s: Option<f64>,
    elapsed_s: f64,
    /// Requests sent or attempted: answered + connection_errors.
    requests: u64,
    /// Requests that got an HTTP answer (any status).
    answered: u64,
    /// Answered requests per second.
    requests_per_s: f64,
    /// 2xx answers (202 included) per second.
    ok_per_s: f64,
    latency_ms: Option<Latency>,
    status: Classes,
    status_codes: BTreeMap<String, u64>,
    /// Connections (of `connections`) that got at least one 2xx answer.
    connections_served: usize,
    /// TCP connections with a TLS handshake made during the run.
    tls_handshakes: u64,
    /// Of those, the handshakes that resumed an earlier session (tickets or session ids).
    tls_resumed: u64,
    /// Connection errors by text (at most 10 texts).
    errors: BTreeMap<String, u64>,
    /// The status of the warm-up enrollment sent before the clock started (enroll with
    /// --user), not counted in `requests`: the server issued one more certificate if 200.
    warmup_status: Option<u16>,
    /// The generator's own CPU time per request (user + system; /proc has 10 ms resolution).
    bench_cpu_ms_per_request: Option<f64>,
    server: Option<ServerUsage>,
    /// The same cryptographic work in one thread of this machine, measured before the load
    /// (with --server-pid; see `reference.rs`).
    reference: Option<reference::Reference>,
    /// server.cpu_ms_per_request / reference.ms_per_request.
    server_to_reference: Option<f64>,
    /// --idle-connections: the server's memory with them.
    idle: Option<idle::IdleReport>,
}

impl Report {
    fn new(args: &RunArgs, url: &EstUrl, plan: &Plan, outcome: Outcome) -> Report {
        let Outcome {
            mut tally,
            elapsed,
            connections_served,
            own_cpu,
            server_cpu,
            server_rss,
            server_storage_writes,
        } = outcome;
        tally.latencies_us.sort_unstable();
        let answered = tally.latencies_us.len() as u64;
        let requests = answered + tally.connection_errors;
        let status = stats::classes(&tally.status_codes, tally.connection_errors);
        let secs = elapsed.as_secs_f64().max(1e-9);
        let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e3 / requests.max(1) as f64;
        Report {
            op: args.op.as_str(),
            url: url.to_string(),
            label: args.label.clone(),
            key_type: args.key_type.to_string(),
            connections: args.connections,
            new_connection_per_request: plan.new_connection_per_request,
            mode: if plan.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            rate_per_s: plan.rate,
            elapsed_s: elapsed.as_secs_f64(),
            requests,
            answered,
            requests_per_s: answered as f64 / secs,
            ok_per_s: (status.ok + status.accepted) as f64 / secs,
            latency_ms: stats::latency(&tally.latencies_us),
            status,
            status_codes: tally
                .status_codes
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            connections_served,
            tls_handshakes: tally.connects,
            tls_resumed: tally.resumed,
            errors: tally.errors,
            warmup_status: None,
            bench_cpu_ms_per_request: own_cpu.map(per_request),
            server: args
                .server_pid
                .zip(server_cpu)
                .map(|(pid, cpu)| ServerUsage {
                    pid,
                    cpu_s: cpu.as_secs_f64(),
                    cpu_ms_per_request: per_request(cpu),
                    peak_rss_kib: server_rss.map_or(0, |r| r.peak_kib),
                    start_rss_kib: server_rss.map_or(0, |r| r.start_kib),
                    end_rss_kib: server_rss.map_or(0, |r| r.end_kib),
                    storage_write_bytes_per_request: server_storage_writes
                        .map(|bytes| bytes as f64 / requests.max(1) as f64),
                }),
            reference: None,
            server_to_reference: None,
            idle: None,
        }
    }

    /// What the operator may have got wrong, from the answers (printed on stderr).
    fn hints(&self) -> Vec<String> {
        let mut hints = Vec::new();
        if let Some(status @ (401 | 403 | 404)) = self.warmup_status {
            hints.push(format!(
                "the warm-up enrollment got {status}: check --user/--cert and --label; the run measured refusals"
            ));
        }
        if self.status_codes.contains_key("429") {
            hints.push(
                "429 answers: a per-address limit (for Estuary: [rate_limits] per_address_per_minute = 0 for a benchmark; or its password gate, which answers 429 to an address while one of its password checks runs, e.g. with --no-warmup or a wrong --user)".into(),
            );
        }
        if let Some(s) = &self.server {
            if s.cpu_s == 0.0 && self.answered > 100 {
                hints.push(format!(
                    "--server-pid {} used no CPU during the run: is it the server at {}?",
                    s.pid, self.url
                ));
            }
        }
        if let Some(i) = &self.idle {
            if i.open_at_start < i.requested {
                hints.push(format!(
                    "only {} of {} idle connections could be opened (the server's connection cap, or this machine's limits)",
                    i.open_at_start, i.requested
                ));
            }
        }
        hints
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let loop_kind = match self.rate_per_s {
            Some(r) => format!("open loop at {r:.0}/s"),
            None => "closed loop".into(),
        };
        out.push_str(&format!(
            "{} {} over {} {} connection(s), {loop_kind}: {} requests in {:.2}s\n",
            self.op,
            self.url,
            self.connections,
            if self.new_connection_per_request {
                "new-per-request"
            } else {
                "keep-alive"
            },
            self.requests,
            self.elapsed_s
        ));
        out.push_str(&format!(
            "  throughput   {:.1} answers/s ({:.1} 2xx/s)\n",
            self.requests_per_s, self.ok_per_s
        ));
        if let Some(l) = &self.latency_ms {
            out.push_str(&format!(
                "  latency      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n",
                l.p50, l.p90, l.p99, l.max
            ));
        }
        let s = &self.status;
        out.push_str(&format!(
            "  status       2xx {}  202 {}  3xx {}  4xx {}  5xx {}  other {}  connection errors {}\n",
            s.ok, s.accepted, s.redirect, s.client_error, s.server_error, s.other, s.connection_errors
        ));
        let codes: Vec<String> = self
            .status_codes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        if !codes.is_empty() {
            out.push_str(&format!("  codes        {}\n", codes.join("  ")));
        }
        out.push_str(&format!(
            "  served       {} of {} connections got a 2xx answer; {} TLS handshakes ({} resumed)\n",
            self.connections_served, self.connections, self.tls_handshakes, self.tls_resumed
        ));
        for (text, n) in &self.errors {
            out.push_str(&format!("  error        {n} x {text}\n"));
        }
        if let Some(status) = self.warmup_status {
            out.push_str(&format!(
                "  warm-up      1 enrollment before the clock started (not counted): {status}\n"
            ));
        }
        if let Some(ms) = self.bench_cpu_ms_per_request {
            out.push_str(&format!("  bench CPU    {ms:.3} ms/request\n"));
        }
        if let Some(s) = &self.server {
            out.push_str(&format!(
                "  server       pid {}: CPU {:.3} ms/request ({:.2} s), RSS {:.1} MiB at the start, {:.1} at the end, peak {:.1}\n",
                s.pid,
                s.cpu_ms_per_request,
                s.cpu_s,
                s.start_rss_kib as f64 / 1024.0,
                s.end_rss_kib as f64 / 1024.0,
                s.peak_rss_kib as f64 / 1024.0
            ));
            if let Some(bytes) = s.storage_write_bytes_per_request {
                out.push_str(&format!(
                    "               storage writes {:.1} KiB/request\n",
                    bytes / 1024.0
                ));
            }
        }
        if let Some(r) = &self.reference {
            out.push_str(&format!(
                "  in-process   {:.3} ms/request for the same work in one thread here ({})",
                r.ms_per_request, r.work
            ));
            if let Some(ratio) = self.server_to_reference {
                out.push_str(&format!("; server/in-process {ratio:.1}x"));
            }
            out.push('\n');
        }
        if let Some(i) = &self.idle {
            out.push_str(&format!(
                "  idle         {} of {} idle TLS connections open when the load started, {} at the end",
                i.open_at_start, i.requested, i.open_at_end
            ));
            if let (Some(before), Some(with)) =
                (i.server_rss_before_kib, i.server_rss_with_idle_kib)
            {
                out.push_str(&format!(
                    "; server RSS {:.1} MiB before them, {:.1} MiB with them",
                    before as f64 / 1024.0,
                    with as f64 / 1024.0
                ));
            }
            out.push('\n');
        }
        out
    }
}
