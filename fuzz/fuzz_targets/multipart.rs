//! The serverkeygen response (RFC 7030 §4.4.2): multipart/mixed with its boundary taken from
//! the first line of the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let content_type = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();
    let _ = estuary_wire::multipart::parse(&content_type, body);
    let _ = estuary_wire::multipart::parse("multipart/mixed; boundary=b", data);
});
