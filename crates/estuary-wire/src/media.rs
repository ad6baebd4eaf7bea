//! EST media types (RFC 7030 §3.2.4, §4) and the checks clients apply to them.

/// `Content-Type` of a PKCS#10 request body (RFC 7030 §4.2.1).
pub const PKCS10: &str = "application/pkcs10";
/// `Content-Type` of `/cacerts` and enrollment responses (RFC 7030 §4.1.3, §4.2.3).
pub const PKCS7_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";
/// `Content-Type` of `/csrattrs` responses (RFC 7030 §4.5.2).
pub const CSRATTRS: &str = "application/csrattrs";
/// `Content-Transfer-Encoding` of every DER body (RFC 7030 §4, RFC 8951 §3).
pub const BASE64: &str = "base64";

/// The media type without parameters, lower-cased: `Application/PKCS10; x=y` -> `application/pkcs10`.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether a request `Content-Type` announces a PKCS#10 body (case-insensitive, parameters allowed).
pub fn is_pkcs10(content_type: &str) -> bool {
    essence(content_type) == PKCS10
}

/// The exact check the Azure IoT Edge client applies to an enrollment response: the header
/// is `application/pkcs7-mime` or starts with `application/pkcs7-mime;` (case-sensitive).
pub fn iot_edge_accepts_pkcs7(content_type: &str) -> bool {
    content_type == "application/pkcs7-mime" || content_type.starts_with("application/pkcs7-mime;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs10_check_ignores_case_and_parameters() {
        assert!(is_pkcs10("application/pkcs10"));
        assert!(is_pkcs10("Application/PKCS10; charset=binary"));
        assert!(!is_pkcs10("application/x-www-form-urlencoded"));
        assert!(!is_pkcs10(""));
    }

    #[test]
    fn our_response_type_passes_the_iot_edge_check() {
        assert!(iot_edge_accepts_pkcs7(PKCS7_CERTS_ONLY));
        assert!(!iot_edge_accepts_pkcs7("application/pkcs7"));
        assert!(!iot_edge_accepts_pkcs7("Application/pkcs7-mime"));
    }
}
