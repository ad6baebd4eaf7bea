//! Bounded mutation tests of every parser of network input: each byte of valid inputs flipped
//! three ways, and every truncation. Nothing may panic; valid inputs must still parse.
//! (Coverage-guided fuzzing with cargo-fuzz is the next step; these run in every test run.)

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

const CSR_B64: &str = "MIIBIzCBygIBADAnMQ0wCwYDVQQDDARmdXp6MQowCAYDVQQLDAFBMQowCAYDVQQLDAFCMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6GZjVQ9ogKW6XNqyjH0K5x9s2QPFSQ7xHfDIOIpCragzcd8eaiPq3ab+pvm1iu8SZ3en/1JFVWemUyj+1I0Q7aBBMD8GCSqGSIb3DQEJDjEyMDAwGgYDVR0RBBMwEYIJYS5leGFtcGxlhwQKAAABMBIGA1UdEwEB/wQIMAYBAf8CAQAwCgYIKoZIzj0EAwIDSAAwRQIhAO02Qarwt94oymetbRqKIdJL4y0f3VX6B8ZMnUBkbYd8AiBENQVCIBePj/ZlN+JObpa2OE/ihrDrFNyFitCiZfvMmg==";
const PKCS7_B64: &str = "MIICxwYJKoZIhvcNAQcCoIICuDCCArQCAQExADALBgkqhkiG9w0BBwGgggKcMIICmDCCAj6gAwIBAgIQY5bwkvO1lEYX/M1S2s2t+zAKBggqhkjOPQQDAjAzMRAwDgYDVQQKDAdFc3R1YXJ5MR8wHQYDVQQDDBZFc3R1YXJ5IFJvb3QgQ0EgZmMwNzExMB4XDTI2MTEyODIwMjEzNFoXDTI2MTEyOTIwMjEzNFowJzENMAsGA1UEAwwEdGVzdDEKMAgGA1UECwwBQTEKMAgGA1UECwwBQjCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBALpvAhrLJyqG73lJ+GikIP8UaUFCF1R2hXttJKj7NigMm1MrgmYp+C3hWQVWxWSJIVVpThBH2Qy+490CWrI6YQmaKK2yITH0L1RKcfrDxPmxAfBayW+UoMqr6NXRmWZPWM5RLrRdrJz5fFm5LVXGjrf6KxwkuaPYZegg4mvC8rXw1sEo/YJ8b6reTPLNE9Qaa8K6rQ/hF9BwWwuDV6IZhY8b/lnkQHVLNfFTA7YHvub7ahhWKvSF195P2fC87nuqUQik8ysaK9PUSm/1atrPX4iemt7auQ9s60HBmvqpcWrApz5jVImIfb/QZc/BPxpiDFwllWIYm98h6fErrlztiZkCAwEAAaN1MHMwDAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwIwHQYDVR0OBBYEFM7PS47lokafMpcMumyXVMzak4D4MB8GA1UdIwQYMBaAFMmCyFRUNoSWDF1Hjsfqnp/TGOVHMAoGCCqGSM49BAMCA0gAMEUCIHutuzyRwlhvl1dd+5CWO/t6a0XHDHUTOfYF5/xiBDXsAiEAmGKaJumtfkj+BORSBJco3QO/QGfy1LH1MLZ+BYHcD2wxAA==";

fn mutations(input: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let flips = (0..input.len()).flat_map(move |i| {
        [0x01u8, 0x80, 0xff].into_iter().map(move |m| {
            let mut v = input.to_vec();
            v[i] ^= m;
            v
        })
    });
    let cuts = (0..input.len()).map(move |n| input[..n].to_vec());
    flips.chain(cuts)
}

#[test]
fn csr_parser_survives_mutations() {
    let der = STANDARD.decode(CSR_B64).unwrap();
    let parsed = crate::csr::parse_and_verify(der.clone()).unwrap();
    assert!(parsed.requested.asks_for_ca());
    let mut accepted = 0;
    for m in mutations(&der) {
        if crate::csr::parse_and_verify(m.clone()).is_ok() {
            accepted += 1;
        }
        let _ = crate::csr::decode_request_body(&m);
        let _ = crate::csr::decode_request_body(crate::body::encode_base64_lines(&m).as_bytes());
    }
    // A flipped bit in the signed part or the signature must not verify.
    assert!(accepted < 10, "{accepted} mutated CSRs verified");
}

#[test]
fn pkcs7_parser_survives_mutations() {
    let der = STANDARD.decode(PKCS7_B64).unwrap();
    assert_eq!(crate::pkcs7::certificates_from_der(&der).unwrap().len(), 1);
    for m in mutations(&der) {
        let _ = crate::pkcs7::certificates_from_der(&m);
        let _ = crate::pkcs7::certificates_from_body(&m);
    }
}

#[test]
fn text_parsers_survive_garbage() {
    let samples: [&[u8]; 6] = [
        b"",
        b"-----BEGIN CERTIFICATE REQUEST-----\n@@@\n-----END CERTIFICATE REQUEST-----\n",
        b"-----BEGIN ",
        b"\x30\x84\xff\xff\xff\xff",
        b"====",
        b"\xff\xfe\x00",
    ];
    for s in samples {
        let _ = crate::body::decode_der_body(s, crate::csr::PEM_LABELS);
        let _ = crate::body::decode_base64_body(s);
        let _ = crate::multipart::parse("multipart/mixed; boundary=x", s);
        let _ = crate::csrattrs::describe(s);
        let _ = crate::duration::parse_duration(&String::from_utf8_lossy(s));
        let _ = crate::media::is_pkcs10(&String::from_utf8_lossy(s));
    }
    for m in mutations(b"--x\r\nContent-Type: a/b\r\n\r\nbody\r\n--x--\r\n") {
        let _ = crate::multipart::parse("multipart/mixed; boundary=x", &m);
    }
}

#[test]
fn proxy_protocol_parsers_survive_mutations() {
    use crate::proxy_protocol::{parse_v1, parse_v2, v2_length};
    let v1 = b"PROXY TCP6 2001:db8::7 ::1 40000 8085\r\n".to_vec();
    for m in mutations(&v1) {
        let _ = parse_v1(&m);
    }
    let mut v2 = crate::proxy_protocol::V2_SIGNATURE.to_vec();
    v2.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
    v2.extend_from_slice(&[7u8; 36]);
    for m in mutations(&v2) {
        if let Some(first16) = m.get(..16).and_then(|d| <&[u8; 16]>::try_from(d).ok()) {
            let _ = v2_length(first16);
        }
        let _ = parse_v2(&m);
    }
}
