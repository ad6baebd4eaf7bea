//! The simpleenroll/simplereenroll body: base64 (any whitespace), PEM or DER PKCS#10,
//! parsed and its signature verified (RFC 7030 §4.2, RFC 2986).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = estuary_wire::csr::decode_request_body(data) {
        let _ = estuary_wire::KeyType::from_spki(&csr.public_key);
        if let Some(san) = &csr.requested.subject_alt_name {
            let _ = estuary_wire::csr::san_strings(san);
        }
        let _ = csr.subject.to_string();
    }
});
