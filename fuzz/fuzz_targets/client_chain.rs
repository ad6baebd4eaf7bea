//! TLS client certificate chains as the server's auth layer judges them: this CA's own
//! certificates and bootstrap chains (RFC 5280 path validation by rustls-webpki, EKU, CA flag,
//! keyCertSign, anchor pathLen), with a bootstrap CA's CRL as `bootstrap_crl` loads it.
//!
//! Input: one byte N (chain length, at most 9), then N certificates each as a big-endian u16
//! length and that many bytes, then the rest as a CRL. `fuzz/seeds/client_chain` holds valid
//! chains made from the fixtures.
#![no_main]
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use estuary_auth::{BootstrapCrl, ClientCertVerifier};
use libfuzzer_sys::fuzz_target;

const OURS: &[u8] = include_bytes!("../fixtures/ours.der");
const MFG: &[u8] = include_bytes!("../fixtures/mfg.der");

fn verifier() -> &'static ClientCertVerifier {
    static V: OnceLock<ClientCertVerifier> = OnceLock::new();
    V.get_or_init(|| {
        ClientCertVerifier::new(OURS, &[("mfg".to_string(), MFG.to_vec())])
            .unwrap_or_else(|e| panic!("fixtures: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, mut rest)) = data.split_first() else {
        return;
    };
    let mut chain = Vec::new();
    for _ in 0..count.min(9) {
        if rest.len() < 2 {
            return;
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        if rest.len() < len {
            return;
        }
        chain.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    let crls: Vec<Arc<BootstrapCrl>> = BootstrapCrl::parse("mfg", rest, MFG)
        .map(|c| vec![Arc::new(c)])
        .unwrap_or_default();
    // A fixed time inside the fixtures' validity, so runs repeat.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let v = verifier();
    if let Ok(cert) = v.verify_ours(&chain, now) {
        let _ = cert.common_names();
    }
    if let Ok(cert) = v.verify_bootstrap(&chain, now, &crls) {
        let _ = cert.common_names();
    }
});
