#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Unit tests of the mapping pieces, and end-to-end tests against a small fake upstream
//! (rustls + hyper, certificates issued with rcgen).

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, IsCa, Issuer, KeyPair, RevokedCertParams, SerialNumber,
};
use tokio::net::TcpListener;

use super::*;
use crate::agent::policy::Threshold;

fn raw(status: u16, content_type: Option<&str>, retry: Option<u64>, body: &[u8]) -> RawResponse {
    RawResponse {
        status: StatusCode::from_u16(status).unwrap(),
        content_type: content_type.map(str::to_string),
        retry_after: retry.map(Duration::from_secs),
        approval_request: None,
        body: Bytes::copy_from_slice(body),
    }
}

const D: Duration = Duration::from_secs(30);
const P: Duration = Duration::from_secs(60);

#[test]
fn upstream_answers_map_to_outcomes() {
    assert_eq!(
        outcome_of(&raw(202, None, Some(7), b""), D, P),
        ForwardOutcome::Pending {
            retry_after: Duration::from_secs(7),
            request_id: None,
        }
    );
    assert_eq!(
        outcome_of(&raw(202, None, None, b""), D, P),
        ForwardOutcome::Pending {
            retry_after: P,
            request_id: None
        }
    );
    assert_eq!(
        outcome_of(
            &raw(
                403,
                Some("text/plain"),
                None,
                b"profile refuses CN=x (request id 0123-ab)\n"
            ),
            D,
            P
        ),
        ForwardOutcome::Refused {
            status: 403,
            message: "profile refuses CN=x".into()
        }
    );
    // 401 keeps its status: the RA's credential, not the device's.
    assert_eq!(
        outcome_of(&raw(401, None, None, b""), D, P),
        ForwardOutcome::Refused {
            status: 401,
            message: "Unauthorized".into()
        }
    );
    match outcome_of(&raw(503, None, Some(9), b"down for maintenance"), D, P) {
        ForwardOutcome::Unavailable {
            retry_after,
            reason,
        } => {
            assert_eq!(retry_after, Duration::from_secs(9));
            assert!(
                reason.contains("503") && reason.contains("maintenance"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        outcome_of(&raw(500, None, None, b""), D, P),
        ForwardOutcome::Unavailable { retry_after, .. } if retry_after == D
    ));
    assert!(matches!(
        outcome_of(&raw(429, None, Some(3), b"too many"), D, P),
        ForwardOutcome::Unavailable { retry_after, .. } if retry_after == Duration::from_secs(3)
    ));
    // 200 that is not a certificate: never Issued.
    assert!(matches!(
        outcome_of(&raw(200, Some("text/plain"), None, b"hello"), D, P),
        ForwardOutcome::Unavailable { .. }
    ));
    assert!(matches!(
        outcome_of(
            &raw(200, Some("application/pkcs7-mime"), None, b"!!!"),
            D,
            P
        ),
        ForwardOutcome::Unavailable { .. }
    ));
    let empty = pkcs7::certs_only_from_der(&[]).unwrap();
    let body = body::encode_base64_lines(&empty);
    assert!(matches!(
        outcome_of(
            &raw(200, Some("application/pkcs7-mime"), None, body.as_bytes()),
            D,
            P
        ),
        ForwardOutcome::Unavailable { .. }
    ));
    assert!(matches!(
        outcome_of(&raw(302, None, None, b""), D, P),
        ForwardOutcome::Unavailable { .. }
    ));
}

#[test]
fn refusal_messages_are_bounded_and_clean() {
    let long = "x".repeat(5000);
    assert_eq!(
        refusal_message(StatusCode::BAD_REQUEST, long.as_bytes())
            .chars()
            .count(),
        MAX_MESSAGE_CHARS
    );
    assert_eq!(
        refusal_message(StatusCode::FORBIDDEN, b"a\x1b[31mb\r\nc"),
        "a [31mb  c"
    );
    assert_eq!(refusal_message(StatusCode::NOT_FOUND, b"  \n"), "Not Found");
    assert_eq!(
        refusal_message(StatusCode::FORBIDDEN, b"no (request id x) here"),
        "no (request id x) here"
    );
    assert_eq!(
        refusal_message(StatusCode::FORBIDDEN, &[0xff, 0xfe]),
        "\u{fffd}\u{fffd}"
    );
}

#[test]
fn on_behalf_of_is_a_valid_header() {
    assert_eq!(on_behalf_of_value("CN=dev1").to_str().unwrap(), "CN=dev1");
    assert_eq!(
        on_behalf_of_value("CN=Gerät\r\n%").to_str().unwrap(),
        "CN=Ger%C3%A4t%0D%0A%25"
    );
    assert!(on_behalf_of_value(&"é".repeat(1000)).len() <= MAX_ON_BEHALF_OF);
    assert_eq!(on_behalf_of_value("").to_str().unwrap(), "");
}

#[test]
fn labels_are_path_segments() {
    assert!(check_label("edge-ca").is_ok() && check_label("a_b.c").is_ok());
    for bad in ["a/b", "..", "a b", "a?x", "%2e", &"a".repeat(65)] {
        assert!(check_label(bad).is_err(), "{bad}");
    }
}

#[test]
fn renewal_is_due_at_the_threshold() {
    let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let na = nb + Duration::from_secs(1000);
    assert_eq!(
        ra::renewal_due(Threshold::Percent(80), nb, na),
        nb + Duration::from_secs(800)
    );
    assert_eq!(
        ra::renewal_due(Threshold::Time(Duration::from_secs(100)), nb, na),
        nb + Duration::from_secs(900)
    );
    // Never before notBefore, even for a certificate whose dates are reversed.
    assert_eq!(ra::renewal_due(Threshold::Percent(80), na, nb), na);
}

#[test]
fn trust_anchors_from_pem() {
    let (ca, _) = test_ca();
    let text = pem::encode(&pem::Pem::new("CERTIFICATE", ca.clone()));
    assert_eq!(parse_trust_anchors_pem(text.as_bytes()).unwrap(), vec![ca]);
    assert!(parse_trust_anchors_pem(b"nothing").is_err());
    assert!(parse_trust_anchors_pem(&[0xff]).is_err());
}

// ---------------------------------------------------------------------------------------
// A fake upstream.

fn test_ca() -> (Vec<u8>, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Upstream CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.der().to_vec(), Issuer::new(params, key))
}

/// What the fake upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    on_behalf_of: Option<String>,
    authorization: Option<String>,
    client_cert: Option<Vec<u8>>,
    body: Vec<u8>,
}

/// A canned answer: status, headers, body; or `Issue` to sign the CSR.
#[derive(Clone)]
enum Answer {
    Issue { life: Duration, age: Duration },
    Plain(u16, Vec<(&'static str, String)>, Vec<u8>),
}

struct Upstream {
    url: EstUrl,
    ca_der: Vec<u8>,
    seen: Arc<Mutex<Vec<Seen>>>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    fn push(&self, answer: Answer) {
        self.answers.lock().unwrap().push_back(answer);
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn client(&self, timeout: Duration) -> UpstreamClient {
        let mut config = UpstreamConfig::new(self.url.clone(), vec![self.ca_der.clone()]);
        config.basic = Some(("ra".into(), "secret".into()));
        config.timeout = timeout;
        UpstreamClient::new(config).unwrap()
    }
}

fn issue(
    issuer: &Issuer<'static, KeyPair>,
    csr_der: &[u8],
    life: Duration,
    age: Duration,
) -> Vec<u8> {
    let mut csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    csr.params.not_before = now - age;
    csr.params.not_after = now - age + life;
    csr.params.serial_number = Some(SerialNumber::from_slice(&rand_serial()));
    csr.signed_by(issuer).unwrap().der().to_vec()
}

fn rand_serial() -> [u8; 8] {
    static N: AtomicUsize = AtomicUsize::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed) as u64;
    (n | 0x0100_0000_0000_0000).to_be_bytes()
}

async fn start_upstream() -> Upstream {
    start_upstream_with(true).await
}

async fn start_upstream_with(keep_alive: bool) -> Upstream {
    let (ca_der, issuer) = test_ca();
    let issuer = Arc::new(issuer);
    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der.clone().into()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(VecDeque::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let crl_der = {
        let params = CertificateRevocationListParams {
            this_update: time::OffsetDateTime::now_utc() - Duration::from_secs(60),
            next_update: time::OffsetDateTime::now_utc() + Duration::from_secs(3600),
            crl_number: SerialNumber::from_slice(&[5]),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from_slice(&[0x42]),
                revocation_time: time::OffsetDateTime::now_utc() - Duration::from_secs(60),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&issuer).unwrap().der().to_vec()
    };
    let state = (
        seen.clone(),
        answers.clone(),
        connections.clone(),
        issuer.clone(),
        ca_der.clone(),
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let (seen, answers, connections, issuer, ca_der) = state.clone();
            let crl_der = crl_der.clone();
            connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let client_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (seen, answers, issuer, ca_der, crl_der, client_cert) = (
                            seen.clone(),
                            answers.clone(),
                            issuer.clone(),
                            ca_der.clone(),
                            crl_der.clone(),
                            client_cert.clone(),
                        );
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .map(|v| v.to_str().unwrap_or("?").to_string())
                            };
                            let path = req.uri().path().to_string();
                            let on_behalf_of = header(ON_BEHALF_OF_HEADER);
                            let authorization = header("authorization");
                            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                            seen.lock().unwrap().push(Seen {
                                path: path.clone(),
                                on_behalf_of,
                                authorization,
                                client_cert,
                                body: body.clone(),
                            });
                            let mut builder = Response::builder();
                            let response_body: Vec<u8> = if path == "/crl" {
                                builder = builder.header("content-type", "application/pkix-crl");
                                crl_der
                            } else if path.ends_with("/cacerts") {
                                builder = builder.header("content-type", "application/pkcs7-mime");
                                body::encode_base64_lines(
                                    &pkcs7::certs_only_from_der(&[ca_der]).unwrap(),
                                )
                                .into_bytes()
                            } else {
                                let answer =
                                    answers
                                        .lock()
                                        .unwrap()
                                        .pop_front()
                                        .unwrap_or(Answer::Issue {
                                            life: Duration::from_secs(3600),
                                            age: Duration::ZERO,
                                        });
                                match answer {
                                    Answer::Issue { life, age } => {
                                        let csr = body::decode_base64_body(&body).unwrap();
                                        let cert = issue(&issuer, &csr, life, age);
                                        builder = builder
                                            .header("content-type", "application/pkcs7-mime");
                                        body::encode_base64_lines(
                                            &pkcs7::certs_only_from_der(&[cert]).unwrap(),
                                        )
                                        .into_bytes()
                                    }
                                    Answer::Plain(status, headers, b) => {
                                        builder = builder.status(status);
                                        for (k, v) in headers {
                                            builder = builder.header(k, v);
                                        }
                                        b
                                    }
                                }
                            };
                            Ok::<_, std::convert::Infallible>(
                                builder.body(Full::new(Bytes::from(response_body))).unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Upstream {
        url: EstUrl::parse(&format!("https://localhost:{port}/.well-known/est")).unwrap(),
        ca_der,
        seen,
        answers,
        connections,
        task,
    }
}

fn test_csr() -> Vec<u8> {
    let key =
        estuary_ca::FileKeySigner::new(estuary_ca::KeyChoice::P256.generate().unwrap()).unwrap();
    crate::csr::build_csr(
        &key,
        crate::csr::subject_with_common_name("dev1").unwrap(),
        vec![],
    )
    .unwrap()
}

#[tokio::test]
async fn forwards_on_kept_alive_connections_and_maps_answers() {
    let up = start_upstream().await;
    let client = up.client(Duration::from_secs(10));
    assert_eq!(client.cacerts().await.unwrap(), vec![up.ca_der.clone()]);
    let csr = test_csr();
    match client
        .forward(Some("edge"), Forwarded::SimpleEnroll, &csr, "CN=dév1", None)
        .await
    {
        ForwardOutcome::Issued { chain } => assert_eq!(chain.len(), 1),
        other => panic!("{other:?}"),
    }
    up.push(Answer::Plain(
        202,
        vec![("retry-after", "7".into())],
        Vec::new(),
    ));
    assert_eq!(
        client
            .forward(None, Forwarded::SimpleReenroll, &csr, "CN=dev1", None)
            .await,
        ForwardOutcome::Pending {
            retry_after: Duration::from_secs(7),
            request_id: None,
        }
    );
    up.push(Answer::Plain(
        403,
        vec![("content-type", "text/plain".into())],
        b"not allowed (request id 12)\n".to_vec(),
    ));
    assert_eq!(
        client
            .forward(None, Forwarded::SimpleEnroll, &csr, "CN=dev1", None)
            .await,
        ForwardOutcome::Refused {
            status: 403,
            message: "not allowed".into()
        }
    );
    up.push(Answer::Plain(
        503,
        vec![("retry-after", "11".into())],
        b"busy".to_vec(),
    ));
    assert!(matches!(
        client.forward(None, Forwarded::SimpleEnroll, &csr, "CN=dev1", None).await,
        ForwardOutcome::Unavailable { retry_after, .. } if retry_after == Duration::from_secs(11)
    ));
    // More than the cap: unavailable, not a panic, not a hang.
    up.push(Answer::Plain(
        200,
        vec![],
        vec![b'A'; MAX_ENROLL_RESPONSE + 10],
    ));
    assert!(matches!(
        client
            .forward(None, Forwarded::SimpleEnroll, &csr, "CN=dev1", None)
            .await,
        ForwardOutcome::Unavailable { .. }
    ));
    let seen = up.seen();
    assert_eq!(seen[1].path, "/.well-known/est/edge/simpleenroll");
    assert_eq!(seen[2].path, "/.well-known/est/simplereenroll");
    assert_eq!(seen[1].on_behalf_of.as_deref(), Some("CN=d%C3%A9v1"));
    assert_eq!(seen[0].on_behalf_of, None);
    // Basic only where the RA asks for itself (cacerts here); a forwarded request is made as
    // the RA alone.
    assert_eq!(seen[0].authorization.as_deref(), Some("Basic cmE6c2VjcmV0"));
    assert!(seen
        .iter()
        .filter(|s| s.on_behalf_of.is_some())
        .all(|s| s.authorization.is_none()));
    assert!(seen.iter().all(|s| s.client_cert.is_none()));
    // The first five requests shared one connection; the over-long answer's was dropped.
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    assert!(matches!(
        client
            .forward(None, Forwarded::SimpleEnroll, &csr, "CN=dev1", None)
            .await,
        ForwardOutcome::Issued { .. }
    ));
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);

    // The CRL, verified against the CA of /cacerts.
    let crl = client.fetch_crl().await.unwrap();
    assert!(crl.is_revoked("42") && !crl.is_revoked("43"));
    let cache = UpstreamCrlCache::new();
    assert!(cache.update(crl));
    assert!(!cache.update(client.fetch_crl().await.unwrap()));
    // Against another CA: refused.
    let (other, _) = test_ca();
    assert!(matches!(
        client.fetch_crl_with(&[other]).await,
        Err(UpstreamError::Crl(_))
    ));
}

#[tokio::test]
async fn an_unreachable_or_silent_upstream_is_unavailable_within_the_deadline() {
    // Nobody listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let (ca, _) = test_ca();
    let url = EstUrl::parse(&format!("https://127.0.0.1:{port}")).unwrap();
    let mut config = UpstreamConfig::new(url, vec![ca.clone()]);
    config.timeout = Duration::from_millis(500);
    let client = UpstreamClient::new(config).unwrap();
    assert!(matches!(
        client
            .forward(None, Forwarded::SimpleEnroll, &test_csr(), "x", None)
            .await,
        ForwardOutcome::Unavailable { .. }
    ));
    // Accepts TCP, never says a word: the TLS handshake is bounded too.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let url = EstUrl::parse(&format!("https://127.0.0.1:{port}")).unwrap();
    let mut config = UpstreamConfig::new(url, vec![ca]);
    config.timeout = Duration::from_millis(500);
    let client = UpstreamClient::new(config).unwrap();
    let started = std::time::Instant::now();
    match client
        .forward(None, Forwarded::SimpleEnroll, &test_csr(), "x", None)
        .await
    {
        ForwardOutcome::Unavailable { reason, .. } => {
            assert!(reason.contains("within"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        client.cacerts().await,
        Err(UpstreamError::Transport {
            source: ClientError::Timeout(_),
            ..
        })
    ));
    hold.abort();
}

#[tokio::test]
async fn an_untrusted_upstream_is_unavailable() {
    let up = start_upstream().await;
    let (other, _) = test_ca();
    let client = UpstreamClient::new(UpstreamConfig::new(up.url.clone(), vec![other])).unwrap();
    match client
        .forward(None, Forwarded::SimpleEnroll, &test_csr(), "x", None)
        .await
    {
        ForwardOutcome::Unavailable { reason, .. } => {
            assert!(reason.contains("not trusted"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_ra_provisions_renews_and_keeps_its_certificates() {
    let up = start_upstream().await;
    let client = up.client(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ra");
    let identity = RaIdentity::new(
        &data,
        vec!["ra.example".parse().unwrap(), "10.1.2.3".parse().unwrap()],
        Some("servers".into()),
        Some("ras".into()),
        "ra.example",
    );
    let p = identity.ensure(&client).await.unwrap();
    assert!(p.changed && p.ra.changed && p.server.changed, "{p:?}");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join(RA_KEY_FILE)), 0o600);
    assert_eq!(mode(&data.join(RA_SERVER_KEY_FILE)), 0o600);
    assert_eq!(mode(&data.join(RA_CERT_FILE)), 0o644);
    // Leaf, then the upstream's /cacerts.
    assert_eq!(p.server.chain.len(), 2);
    assert_eq!(p.server.chain[1], up.ca_der);
    let seen = up.seen();
    let enrolls: Vec<&Seen> = seen.iter().filter(|s| s.path.contains("enroll")).collect();
    assert_eq!(enrolls[0].path, "/.well-known/est/ras/simpleenroll");
    assert!(enrolls[0].client_cert.is_none());
    assert_eq!(enrolls[1].path, "/.well-known/est/servers/simpleenroll");
    assert_eq!(enrolls[1].client_cert.as_ref(), p.ra.chain.first());
    // The password enrolls the RA certificate; the RA certificate alone does the rest.
    assert!(enrolls[0].authorization.is_some());
    assert!(enrolls[1].authorization.is_none());
    let csr =
        estuary_wire::csr::parse_and_verify(body::decode_base64_body(&enrolls[1].body).unwrap())
            .unwrap();
    assert_eq!(
        estuary_wire::csr::san_strings(csr.requested.subject_alt_name.as_deref().unwrap()),
        vec!["DNS:ra.example", "IP:10.1.2.3"]
    );
    // The client now presents the RA certificate.
    assert_eq!(client.current_leaf().as_ref(), p.ra.chain.first());
    let lifetime = p.ra.not_after.duration_since(p.ra.not_before).unwrap();
    assert_eq!(p.ra.renew_at, p.ra.not_before + lifetime.mul_f64(0.8));
    assert_eq!(p.next_renewal(), p.ra.renew_at.min(p.server.renew_at));

    // Nothing due: nothing asked.
    let before = up.seen().len();
    let again = identity.ensure(&client).await.unwrap();
    assert!(!again.changed);
    assert_eq!(up.seen().len(), before);

    // Certificates past 80% of their life are renewed: the RA certificate by simplereenroll
    // with itself, the server certificate by simpleenroll with the (new) RA certificate.
    std::fs::remove_file(data.join(RA_CERT_FILE)).unwrap();
    std::fs::remove_file(data.join(RA_SERVER_CERT_FILE)).unwrap();
    let old_client = client.current_leaf();
    up.push(Answer::Issue {
        life: Duration::from_secs(300),
        age: Duration::from_secs(250),
    });
    up.push(Answer::Issue {
        life: Duration::from_secs(300),
        age: Duration::from_secs(250),
    });
    let short = identity.ensure(&client).await.unwrap();
    assert!(short.changed);
    // Both just issued already past their threshold: not renewed again at once.
    assert!(short.next_renewal() > SystemTime::now());
    assert_ne!(client.current_leaf(), old_client);
    let short_ra = short.ra.chain[0].clone();
    let mut short_identity = identity.clone();
    short_identity.retry = Threshold::Time(Duration::ZERO);
    // Make them due now by a threshold in time.
    short_identity.threshold = Threshold::Time(Duration::from_secs(3600));
    for _ in 0..2 {
        up.push(Answer::Issue {
            life: Duration::from_secs(300),
            age: Duration::from_secs(250),
        });
    }
    let renewed = short_identity.ensure(&client).await.unwrap();
    assert!(renewed.ra.changed && renewed.server.changed);
    let seen = up.seen();
    let last_two: Vec<&Seen> = seen
        .iter()
        .rev()
        .filter(|s| s.path.contains("enroll"))
        .take(2)
        .collect();
    assert_eq!(last_two[1].path, "/.well-known/est/ras/simplereenroll");
    assert_eq!(last_two[1].client_cert.as_ref(), Some(&short_ra));
    assert_eq!(last_two[0].path, "/.well-known/est/servers/simpleenroll");
    assert_eq!(last_two[0].client_cert.as_ref(), renewed.ra.chain.first());

    // Due, and the upstream is gone: the valid files stay in use, with a warning.
    let url = up.url.clone();
    let ca = up.ca_der.clone();
    drop(up);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut config = UpstreamConfig::new(url, vec![ca]);
    config.timeout = Duration::from_secs(2);
    let offline = UpstreamClient::new(config).unwrap();
    let kept = identity.ensure(&offline).await.unwrap();
    assert!(!kept.changed);
    assert_eq!(kept.warnings.len(), 2, "{:?}", kept.warnings);
    assert_eq!(kept.ra.chain, renewed.ra.chain);
    assert!(kept.next_renewal() > SystemTime::now());
    // The RA certificate is still put in the client.
    assert_eq!(offline.current_leaf().as_ref(), renewed.ra.chain.first());
}

#[tokio::test]
async fn a_pending_enrollment_is_an_error_and_is_sent_again_unchanged() {
    let up = start_upstream().await;
    let client = up.client(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let identity = RaIdentity::new(dir.path(), vec![], None, None, "ra");
    up.push(Answer::Plain(
        202,
        vec![
            ("retry-after", "5".into()),
            ("x-estuary-approval-request", "req-1".into()),
        ],
        Vec::new(),
    ));
    match identity.ensure(&client).await {
        Err(UpstreamError::Pending {
            retry_after,
            request_id,
            ..
        }) => {
            assert_eq!(retry_after, Duration::from_secs(5));
            assert_eq!(request_id.as_deref(), Some("req-1"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(mode(&dir.path().join("ra-key.pem.new")), 0o600);
    // Approved: the same request is sent again and the pending files go.
    let p = identity.ensure(&client).await.unwrap();
    assert!(p.changed);
    let seen = up.seen();
    let enrolls: Vec<&Seen> = seen.iter().filter(|s| s.path.contains("enroll")).collect();
    assert!(crate::csr::same_request(
        &body::decode_base64_body(&enrolls[0].body).unwrap(),
        &body::decode_base64_body(&enrolls[1].body).unwrap()
    ));
    assert!(!dir.path().join("ra-key.pem.new").exists());
    assert!(!dir.path().join("ra-key.pem.csr.new").exists());

    // A refusal without usable files is an error that says so.
    let other = tempfile::tempdir().unwrap();
    let identity = RaIdentity::new(other.path(), vec![], None, None, "ra");
    up.push(Answer::Plain(401, vec![], Vec::new()));
    match identity.ensure(&client).await {
        Err(UpstreamError::Refused { status, .. }) => assert_eq!(status, 401),
        other => panic!("{other:?}"),
    }
    drop(up);
}

#[tokio::test]
async fn connections_closed_by_the_upstream_are_not_a_failure() {
    let up = start_upstream_with(false).await;
    let client = up.client(Duration::from_secs(10));
    for _ in 0..4 {
        assert!(matches!(
            client
                .forward(None, Forwarded::SimpleEnroll, &test_csr(), "x", None)
                .await,
            ForwardOutcome::Issued { .. }
        ));
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 4);
    // Exactly one request per enrollment reached the upstream.
    assert_eq!(up.seen().len(), 4);
}
