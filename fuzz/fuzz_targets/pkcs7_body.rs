//! A certs-only response body as the client reads it (RFC 7030 §4.1.3), and the certificates
//! in it as the agent and the server's client-certificate check read them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = estuary_wire::pkcs7::certificates_from_body(data) {
        for c in &certs {
            let _ = estuary_client::files::summarize(c);
            let _ = estuary_wire::signature::split_signed(c, "certificate");
        }
    }
    let _ = estuary_client::files::summarize(data);
    let _ = estuary_wire::csrattrs::describe(data);
});
