//! What the server reads from request lines and headers: the path (RFC 7030 §3.2.2 routing),
//! the Authorization header (RFC 7617), the Content-Type, durations; and a bootstrap CRL
//! server's HTTP answer.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = estuary_server::est::route(&text);
    let _ = estuary_auth::parse_basic_authorization(&text);
    let _ = estuary_wire::media::is_pkcs10(&text);
    let _ = estuary_wire::media::essence(&text);
    let _ = estuary_wire::duration::parse_duration(&text);
    let _ = estuary_client::EstUrl::parse(&text);
    // A bootstrap CRL server's answer (status line, headers, body).
    let _ = estuary_server::bootstrap_crl::crl_http_body(data.to_vec());
});
