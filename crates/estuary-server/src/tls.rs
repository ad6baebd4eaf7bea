//! The TLS server configuration: TLS 1.2 and 1.3, the chain `[server, CA...]`, and a client
//! certificate requested but never required.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use estuary_ca::bootstrap::ServerIdentity;

use crate::error::ServerError;

/// Builds the rustls server config for `identity`.
pub fn server_config(identity: &ServerIdentity) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let certificate = ReloadableCertificate::new(&identity.chain_der, &identity.key_pkcs8_der)?;
    server_config_with(Arc::new(certificate))
}

/// Builds the rustls server config that serves whatever `certificate` holds now (a
/// registration authority renews its server certificate without a restart).
pub fn server_config_with(
    certificate: Arc<ReloadableCertificate>,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(AnyClientCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| ServerError::Tls {
            what: "TLS versions",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    // Session resumption for devices that reconnect (RFC 8446 §2.2, RFC 5077): stateless
    // tickets, encrypted with keys that rotate every 6 hours, so that no memory grows with the
    // fleet; TLS 1.2 session ids keep rustls's bounded cache. A resumed session keeps its
    // client certificate, which is checked again (validity, revocation) on every request.
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|source| ServerError::Tls {
            what: "TLS session tickets",
            source,
        })?;
    Ok(Arc::new(config))
}

/// The TLS server certificate in force; [`ReloadableCertificate::replace`] swaps it for new
/// handshakes (connections already open keep theirs).
#[derive(Debug)]
pub struct ReloadableCertificate {
    current: arc_swap::ArcSwap<rustls::sign::CertifiedKey>,
}

impl ReloadableCertificate {
    /// `chain` (DER, server certificate first) with its PKCS#8 key.
    pub fn new(chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<Self, ServerError> {
        Ok(ReloadableCertificate {
            current: arc_swap::ArcSwap::from_pointee(certified_key(chain, key_pkcs8)?),
        })
    }

    /// Serves `chain` and its key from the next handshake on.
    pub fn replace(&self, chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<(), ServerError> {
        self.current
            .store(Arc::new(certified_key(chain, key_pkcs8)?));
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCertificate {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(
    chain: &[Vec<u8>],
    key_pkcs8: &[u8],
) -> Result<rustls::sign::CertifiedKey, ServerError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let chain: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| ServerError::Tls {
            what: "TLS server key",
            source,
        })?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|source| ServerError::Tls {
        what: "TLS server certificate",
        source,
    })?;
    Ok(certified)
}

/// Requests a client certificate, accepts none or any, and leaves the decision to the auth
/// layer (which checks issuer, validity and revocation). The handshake signature is still
/// verified, so a presented certificate proves possession of its key.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // An empty list: clients send whatever certificate they are configured with.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
