//! TLS client configuration: the server verified against given trust anchors (and its name or
//! IP against the URL), or, for trust-on-first-use, not verified at all.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::http::ClientError;

/// A client certificate chain (leaf first) and its private key (PKCS#8 DER).
#[derive(Clone)]
pub struct ClientIdentity {
    pub(crate) chain: Vec<Vec<u8>>,
    pub(crate) key_pkcs8: Vec<u8>,
}

impl Drop for ClientIdentity {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key_pkcs8);
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// How the server's certificate is checked.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    /// Verify against these trust anchors (DER).
    Anchors(Vec<Vec<u8>>),
    /// Do not verify; record the chain the server sent (trust on first use, RFC 7030 §4.1.1).
    FirstUse(Arc<Mutex<Vec<Vec<u8>>>>),
}

pub(crate) fn client_config(
    trust: &ServerTrust,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(ClientError::Tls)?;
    let builder = match trust {
        ServerTrust::Anchors(anchors) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in anchors {
                roots
                    .add(CertificateDer::from(der.clone()))
                    .map_err(|e| ClientError::Config(format!("trusted certificate: {e}")))?;
            }
            builder.with_root_certificates(roots)
        }
        ServerTrust::FirstUse(seen) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(RecordingVerifier {
                    seen: seen.clone(),
                    algorithms: provider.signature_verification_algorithms,
                }))
        }
    };
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => {
            let chain = id
                .chain
                .iter()
                .map(|d| CertificateDer::from(d.clone()))
                .collect();
            let key = PrivateKeyDer::try_from(id.key_pkcs8.clone())
                .map_err(|e| ClientError::Config(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Config(format!("client certificate: {e}")))
        }
    }
}

/// Accepts any server certificate and records the chain, for `cacerts --tofu`.
#[derive(Debug)]
struct RecordingVerifier {
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.clear();
            seen.push(end_entity.to_vec());
            seen.extend(intermediates.iter().map(|c| c.to_vec()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
