//! The PROXY protocol header a load balancer sends before the TLS handshake (versions 1 and 2),
//! read as the server reads it: the first 16 bytes give a version 2 header's length.
#![no_main]
use estuary_wire::proxy_protocol::{parse_v1, parse_v2, v2_length, V1_MAX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"PROXY ") {
        if let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
            if end + 2 <= V1_MAX_LEN {
                let _ = parse_v1(&data[..end + 2]);
            }
        }
        let _ = parse_v1(data);
    } else if let Some(first16) = data.get(..16).and_then(|d| <&[u8; 16]>::try_from(d).ok()) {
        if let Ok(length) = v2_length(first16) {
            if let Some(header) = data.get(..length) {
                let _ = parse_v2(header);
            }
        }
        let _ = parse_v2(data);
    }
});
