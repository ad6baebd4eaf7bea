//! The base64 transfer encoding of EST bodies.
//!
//! RFC 7030 §4 sends every DER body base64-encoded; RFC 8951 §3 settles that the encoding is
//! used regardless of any `Content-Transfer-Encoding` header. Receivers here accept any
//! whitespace and any line length (strongSwan sends one long line, IoT Edge 64-column lines,
//! curl users send PEM files); senders wrap at 64 columns, because `openssl base64 -d`
//! prints nothing for one long line.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::WireError;

/// Line length of encoded bodies (as PEM, and as libest and IoT Edge write them).
pub const LINE_LEN: usize = 64;

/// Encodes DER as base64 in 64-column lines, each ending with `\n` (the last one too).
pub fn encode_base64_lines(der: &[u8]) -> String {
    // 48 bytes make one full line of 64 characters (only the last line can have padding).
    const BYTES_PER_LINE: usize = LINE_LEN / 4 * 3;
    let lines = der.len().div_ceil(BYTES_PER_LINE);
    let mut out = Vec::with_capacity(der.len().div_ceil(3) * 4 + lines);
    let mut line = [0u8; LINE_LEN];
    for chunk in der.chunks(BYTES_PER_LINE) {
        // A chunk of at most 48 bytes always fits 64 characters.
        let written = STANDARD.encode_slice(chunk, &mut line).unwrap_or(0);
        out.extend_from_slice(&line[..written]);
        out.push(b'\n');
    }
    // Base64 and newlines are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// How a base64 body is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 64-column lines, each ending with `\n` (what `openssl base64 -d` needs).
    Lines64,
    /// One line without a line break (for clients whose decoder does not skip whitespace,
    /// such as strongSwan `pki` 5.9).
    SingleLine,
}

/// Encodes DER as base64 in the given layout.
pub fn encode_base64(der: &[u8], layout: Layout) -> String {
    match layout {
        Layout::Lines64 => encode_base64_lines(der),
        Layout::SingleLine => STANDARD.encode(der),
    }
}

/// Decodes a base64 body, ignoring all ASCII whitespace (RFC 8951 §3).
pub fn decode_base64_body(body: &[u8]) -> Result<Vec<u8>, WireError> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err(WireError::Empty);
    }
    STANDARD.decode(&compact).map_err(WireError::Base64)
}

/// Decodes a base64 EST *response* body: like [`decode_base64_body`], and also ignores NUL
/// bytes at the end. libest ends its `/csrattrs` body with a NUL that it counts in
/// `Content-Length`; RFC 8951 §3 asks receivers to be liberal in what the base64 layout may
/// be, and a client should be as tolerant of servers as our server is of clients.
pub fn decode_base64_response(body: &[u8]) -> Result<Vec<u8>, WireError> {
    decode_base64_body(trim_response_end(body))
}

/// Finds the DER inside an EST *response* body: like [`decode_der_body`], and also ignores
/// NUL bytes (and whitespace) at the end of a base64 or PEM body. Raw DER is still taken whole,
/// untrimmed (its last byte may be 0x00).
pub fn decode_der_response(body: &[u8], pem_labels: &[&str]) -> Result<Vec<u8>, WireError> {
    if looks_like_der_sequence(body) {
        return Ok(body.to_vec());
    }
    decode_der_body(trim_response_end(body), pem_labels)
}

/// `body` without the NUL bytes and ASCII whitespace at its end (see
/// [`decode_base64_response`]). Request bodies are never trimmed this way.
fn trim_response_end(body: &[u8]) -> &[u8] {
    let end = body
        .iter()
        .rposition(|b| *b != 0 && !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &body[..end]
}

/// Finds the DER inside an EST request or response body, whichever of the encodings seen in
/// practice it uses: PEM with the given labels, base64 (any whitespace), or raw DER (a
/// SEQUENCE, which can never start a base64 text because 0x30 is '0' only in ASCII and
/// base64 text is never followed by a length byte above 0x7f).
pub fn decode_der_body(body: &[u8], pem_labels: &[&str]) -> Result<Vec<u8>, WireError> {
    // Raw DER first, untrimmed: its last byte may well be 0x20 or 0x0a.
    if looks_like_der_sequence(body) {
        return Ok(body.to_vec());
    }
    let trimmed = trim_ascii(body);
    if trimmed.is_empty() {
        return Err(WireError::Empty);
    }
    if trimmed.starts_with(b"-----BEGIN ") {
        let parsed = pem::parse(trimmed).map_err(|e| WireError::malformed("PEM body", e))?;
        if !pem_labels.contains(&parsed.tag()) {
            return Err(WireError::malformed(
                "PEM body",
                format!("label {:?} is not one of {:?}", parsed.tag(), pem_labels),
            ));
        }
        return Ok(parsed.into_contents());
    }
    if looks_like_der_sequence(trimmed) {
        return Ok(trimmed.to_vec());
    }
    decode_base64_body(trimmed)
}

fn looks_like_der_sequence(bytes: &[u8]) -> bool {
    // SEQUENCE with a long-form length (0x81..0x84): not printable, so never base64 text.
    bytes.len() > 4 && bytes[0] == 0x30 && (0x81..=0x84).contains(&bytes[1])
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_64_column_lines_with_final_newline() {
        let der = vec![0xABu8; 100];
        let text = encode_base64_lines(&der);
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines[0].len(), 64);
        assert!(text.ends_with('\n'));
        assert!(lines.iter().all(|l| l.len() <= 64));
    }

    /// The same text as encoding the whole and cutting it into 64-column lines, at every
    /// length around a line's 48 bytes.
    #[test]
    fn lines_are_the_whole_encoding_cut_every_64_characters() {
        for len in 0..200 {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let flat = STANDARD.encode(&der);
            let expected: String = flat
                .as_bytes()
                .chunks(LINE_LEN)
                .map(|line| format!("{}\n", std::str::from_utf8(line).unwrap()))
                .collect();
            assert_eq!(encode_base64_lines(&der), expected, "{len} bytes");
        }
    }

    #[test]
    fn decodes_any_whitespace_layout() {
        let der = vec![1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let flat = STANDARD.encode(&der);
        let crlf = format!("{}\r\n{}\r\n", &flat[..4], &flat[4..]);
        assert_eq!(decode_base64_body(flat.as_bytes()).ok(), Some(der.clone()));
        assert_eq!(decode_base64_body(crlf.as_bytes()).ok(), Some(der.clone()));
        assert_eq!(
            decode_base64_body(encode_base64_lines(&der).as_bytes()).ok(),
            Some(der)
        );
    }

    #[test]
    fn rejects_empty_and_garbage() {
        assert!(matches!(decode_base64_body(b" \n "), Err(WireError::Empty)));
        assert!(matches!(
            decode_base64_body(b"not base64!"),
            Err(WireError::Base64(_))
        ));
    }

    /// Regression: libest ends its csrattrs body with a NUL (counted in Content-Length), and
    /// the client failed with "Invalid symbol 0".
    #[test]
    fn responses_may_end_with_nuls_and_whitespace() {
        let der = vec![0x30u8, 0x03, 0x06, 0x01, 0x2a];
        let b64 = STANDARD.encode(&der);
        for body in [
            format!("{b64}\0"),
            format!("{b64}\n\0"),
            format!("{b64}\0\0\r\n"),
            format!("{}\n{}\0", &b64[..4], &b64[4..]),
        ] {
            assert_eq!(
                decode_base64_response(body.as_bytes()).ok(),
                Some(der.clone()),
                "{body:?}"
            );
            let labels = ["CERTIFICATE"];
            assert_eq!(
                decode_der_response(body.as_bytes(), &labels).ok(),
                Some(der.clone()),
                "{body:?}"
            );
        }
        // Only at the end: a NUL inside is still an error, and so is nothing but NULs.
        let inside = format!("{}\0{}", &b64[..4], &b64[4..]);
        assert!(decode_base64_response(inside.as_bytes()).is_err());
        assert!(matches!(
            decode_base64_response(b"\0\0"),
            Err(WireError::Empty)
        ));
        // Raw DER ending in 0x00 is kept whole.
        let ends_in_nul = vec![0x30u8, 0x81, 0x03, 0x02, 0x01, 0x00];
        assert_eq!(
            decode_der_response(&ends_in_nul, &["CERTIFICATE"]).ok(),
            Some(ends_in_nul)
        );
        // Request decoding is unchanged: a trailing NUL is not base64.
        assert!(decode_base64_body(format!("{b64}\0").as_bytes()).is_err());
    }

    #[test]
    fn finds_der_in_pem_base64_and_raw() {
        let der = vec![0x30u8, 0x82, 0x00, 0x01, 0x05];
        let pem_text = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.clone()));
        let labels = ["CERTIFICATE REQUEST"];
        assert_eq!(
            decode_der_body(pem_text.as_bytes(), &labels).ok(),
            Some(der.clone())
        );
        assert_eq!(decode_der_body(&der, &labels).ok(), Some(der.clone()));
        let b64 = encode_base64_lines(&der);
        assert_eq!(decode_der_body(b64.as_bytes(), &labels).ok(), Some(der));
        // DER that ends in a byte that looks like whitespace is kept whole.
        let ends_in_space = vec![0x30u8, 0x82, 0x00, 0x01, 0x20];
        assert_eq!(
            decode_der_body(&ends_in_space, &labels).ok(),
            Some(ends_in_space)
        );
        let wrong = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1]));
        assert!(decode_der_body(wrong.as_bytes(), &labels).is_err());
    }
}
