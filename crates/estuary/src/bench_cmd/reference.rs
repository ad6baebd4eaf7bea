//! The in-process cost of the work one request asks of a server, measured by the bench itself
//! on this machine, in the same run, just before the load starts.
//!
//! A server's CPU time per request means little on its own on a shared or noisy machine; beside
//! the cost of the same cryptographic work done in one thread with no I/O (decode and verify the
//! CSR, issue with a CA key of the same type, PKCS#7, and for a new connection per request the
//! server's side of the TLS handshake), the ratio tells how much the server adds around that
//! work, and it survives a noisy machine because both are measured under the same noise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use der::Encode as _;
use estuary_ca::{CertificateAuthority, FileKeySigner, KeyChoice, PolicyContext, Profile};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How long each measurement runs (after a short warm-up).
const MEASURE_FOR: Duration = Duration::from_millis(400);

/// What one request asks of the server, as far as the bench can reproduce it.
pub struct Work {
    /// Enrollment: the CSRs' key type and the CA's key type.
    pub issuance: Option<Issuance>,
    /// A new connection per request: the server's side of a TLS handshake.
    pub handshake: Option<Handshake>,
}

pub struct Issuance {
    pub csr_key: KeyChoice,
    pub ca_key: KeyChoice,
}

pub struct Handshake {
    /// The key type of the server's TLS certificate.
    pub server_key: KeyChoice,
    /// The client presents a certificate (reenroll, or enroll with --cert).
    pub client_certificate: bool,
    /// The client resumes its last session (the bench's default), or every handshake is full.
    pub resumption: bool,
}

/// The measured reference.
#[derive(Debug, serde::Serialize)]
pub struct Reference {
    /// What was measured, in words.
    pub work: String,
    /// Its cost per request in one thread, in milliseconds.
    pub ms_per_request: f64,
}

/// Measures `work`; `None` when there is nothing to measure (cacerts, csrattrs on keep-alive
/// connections: no cryptography per request).
pub fn measure(work: &Work) -> anyhow::Result<Option<Reference>> {
    let mut parts = Vec::new();
    let mut total = Duration::ZERO;
    if let Some(issuance) = &work.issuance {
        let (what, cost) = measure_issuance(issuance)?;
        parts.push(what);
        total += cost;
    }
    if let Some(handshake) = &work.handshake {
        let (what, cost) = measure_handshake(handshake)?;
        parts.push(what);
        total += cost;
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(Reference {
        work: parts.join(" + "),
        ms_per_request: total.as_secs_f64() * 1e3,
    }))
}

/// Runs `f` for [`MEASURE_FOR`]; its mean time per call (`f` returns the part of its own time
/// that counts, or its whole time).
fn per_call(mut f: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<Duration> {
    for _ in 0..20 {
        f()?;
    }
    let started = Instant::now();
    let (mut n, mut counted) = (0u32, Duration::ZERO);
    while started.elapsed() < MEASURE_FOR {
        counted += f()?;
        n += 1;
    }
    Ok(counted / n.max(1))
}

/// Decode and verify a CSR body, check it against the device profile, issue, PKCS#7 + base64:
/// what the server does for every enrollment, without the HTTP, the store or the policy.
fn measure_issuance(issuance: &Issuance) -> anyhow::Result<(String, Duration)> {
    let signer = FileKeySigner::new(issuance.ca_key.generate()?)?;
    let root = estuary_ca::issue::self_signed_root(
        &signer,
        "CN=bench reference CA".parse()?,
        Duration::from_secs(86_400),
    )?;
    let ca = CertificateAuthority::new(Arc::new(signer), vec![root.to_der()?])?;
    let csr_key = FileKeySigner::new(issuance.csr_key.generate()?)?;
    let csr = estuary_client::csr::build_csr(
        &csr_key,
        estuary_client::csr::subject_with_common_name("bench-reference")?,
        vec![],
    )?;
    let body = estuary_wire::body::encode_base64_lines(&csr);
    let profile = Profile::device();
    let context = PolicyContext { basic_user: None };
    let cost = per_call(|| {
        let started = Instant::now();
        let csr = estuary_wire::csr::decode_request_body(body.as_bytes())?;
        let checked = profile.check(&csr, context)?;
        let issued = ca.issue(&checked, Duration::from_secs(86_400), &[])?;
        estuary_wire::pkcs7::certs_only_body_of_one(&issued.der);
        Ok(started.elapsed())
    })?;
    Ok((
        format!(
            "verify a {} CSR, issue with a {} CA, PKCS#7",
            issuance.csr_key, issuance.ca_key
        ),
        cost,
    ))
}

/// The server's side of a TLS handshake over memory buffers (only the server's calls are
/// timed), with a server certificate of the same key type, tickets as Estuary issues them,
/// and a client certificate when the load presents one.
fn measure_handshake(handshake: &Handshake) -> anyhow::Result<(String, Duration)> {
    // The server's own cipher-suite preference (and the client's default one).
    let provider = Arc::new(estuary_server::tls::crypto_provider());
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_der = ca_params.self_signed(&ca_key)?.der().to_vec();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, key: KeyPair| -> anyhow::Result<_> {
        let cert = CertificateParams::new(names)?.signed_by(&key, &issuer)?;
        Ok((
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow::anyhow!("{e}"))?,
        ))
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der))?;
    let roots = Arc::new(roots);

    let (server_chain, server_key) = leaf(
        vec!["bench.invalid".into()],
        handshake.server_key.generate()?,
    )?;
    let server_builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut server_config = if handshake.client_certificate {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()?;
        server_builder.with_client_cert_verifier(verifier)
    } else {
        server_builder.with_no_client_auth()
    }
    .with_single_cert(server_chain, server_key)?;
    server_config.ignore_client_order = true;
    server_config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    let server_config = Arc::new(server_config);

    let client_builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_root_certificates(roots);
    let mut client_config = if handshake.client_certificate {
        let (chain, key) = leaf(vec!["bench-client".into()], KeyChoice::P256.generate()?)?;
        client_builder.with_client_auth_cert(chain, key)?
    } else {
        client_builder.with_no_client_auth()
    };
    if !handshake.resumption {
        client_config.resumption = rustls::client::Resumption::disabled();
    }
    let client_config = Arc::new(client_config);
    let name = ServerName::try_from("bench.invalid")?;

    let cost = per_call(|| one_handshake(&server_config, &client_config, &name))?;
    Ok((
        format!(
            "the server side of a {} TLS handshake ({} server key{})",
            if handshake.resumption {
                "resumed"
            } else {
                "full"
            },
            handshake.server_key,
            if handshake.client_certificate {
                ", client certificate"
            } else {
                ""
            }
        ),
        cost,
    ))
}

/// One handshake between a new client and server connection; the time spent in the server's
/// calls.
fn one_handshake(
    server_config: &Arc<rustls::ServerConfig>,
    client_config: &Arc<rustls::ClientConfig>,
    name: &ServerName<'static>,
) -> anyhow::Result<Duration> {
    let mut client = rustls::ClientConnection::new(client_config.clone(), name.clone())?;
    let started = Instant::now();
    let mut server = rustls::ServerConnection::new(server_config.clone())?;
    let mut server_time = started.elapsed();
    let mut buffer = Vec::with_capacity(16 * 1024);
    for _ in 0..16 {
        buffer.clear();
        while client.wants_write() {
            client.write_tls(&mut buffer)?;
        }
        let started = Instant::now();
        let mut input = &buffer[..];
        while !input.is_empty() {
            server.read_tls(&mut input)?;
            server.process_new_packets()?;
        }
        buffer.clear();
        while server.wants_write() {
            server.write_tls(&mut buffer)?;
        }
        server_time += started.elapsed();
        let mut input = &buffer[..];
        while !input.is_empty() {
            client.read_tls(&mut input)?;
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return Ok(server_time);
        }
    }
    anyhow::bail!("the in-memory reference TLS handshake did not finish")
}
