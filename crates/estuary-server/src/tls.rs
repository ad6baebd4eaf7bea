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
    let provider = Arc::new(crypto_provider());
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
    // The order of `crypto_provider`'s suites decides, not the client's.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// aws-lc-rs with the cipher suites in the server's order of preference: the SHA-256 suites
/// first, AES-128-GCM before AES-256-GCM and ChaCha20. A TLS 1.3 handshake runs its key
/// schedule (HKDF, RFC 8446 §7.1) with the suite's hash, and SHA-384 has no instructions of its
/// own on common x86 servers where SHA-256 has (SHA-NI): preferring TLS_AES_128_GCM_SHA256,
/// which every TLS 1.3 client implements (RFC 8446 §9.1), takes about a tenth off the server's
/// cost of a new connection. The server's order decides (`ignore_client_order`), since most
/// clients list AES-256 first.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as Suite;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            Suite::TLS13_AES_128_GCM_SHA256 => 0,
            Suite::TLS13_AES_256_GCM_SHA384 => 1,
            Suite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
            Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | Suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
            Suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | Suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
            _ => 5,
        });
    provider
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_suites_are_preferred_in_each_version() {
        let names: Vec<String> = crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(names[0], "TLS13_AES_128_GCM_SHA256", "{names:?}");
        let first_tls12 = names
            .iter()
            .find(|n| !n.starts_with("TLS13"))
            .map(String::as_str);
        assert_eq!(
            first_tls12,
            Some("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
            "{names:?}"
        );
        // Nothing dropped: the same suites as the default provider.
        assert_eq!(
            names.len(),
            rustls::crypto::aws_lc_rs::default_provider()
                .cipher_suites
                .len()
        );
    }
}
