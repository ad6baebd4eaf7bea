//! `multipart/mixed` bodies (RFC 2046 §5.1), as `/serverkeygen` uses them (RFC 7030 §4.4.2):
//! a private-key part and a certs-only part.

use crate::WireError;

/// One body part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part's `Content-Type`.
    pub content_type: String,
    /// Its other headers, as sent.
    pub headers: Vec<(String, String)>,
    /// The part's body (without the CRLF before the next boundary).
    pub body: Vec<u8>,
}

/// Encodes parts with `boundary`; returns the body. The `Content-Type` header is
/// `multipart/mixed; boundary=<boundary>`.
pub fn encode(boundary: &str, parts: &[Part]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: {}\r\n", part.content_type).as_bytes(),
        );
        for (name, value) in &part.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&part.body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// Parses a `multipart/*` body given the response's `Content-Type` (which names the boundary).
pub fn parse(content_type: &str, body: &[u8]) -> Result<Vec<Part>, WireError> {
    let bad = |detail: &str| WireError::malformed("multipart body", detail);
    if !content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("multipart/")
    {
        return Err(bad("Content-Type is not multipart"));
    }
    let boundary = content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| bad("no boundary parameter"))?;
    let delimiter = format!("--{boundary}");
    let text = body;
    let mut parts = Vec::new();
    let mut positions = Vec::new();
    let mut i = 0;
    while let Some(pos) = find(&text[i..], delimiter.as_bytes()) {
        positions.push(i + pos);
        i += pos + delimiter.len();
        if parts.len() > 16 || positions.len() > 17 {
            return Err(bad("too many parts"));
        }
    }
    if positions.len() < 2 {
        return Err(bad("no complete part"));
    }
    for window in positions.windows(2) {
        let start = window[0] + delimiter.len();
        let end = window[1];
        let mut chunk = &text[start..end];
        chunk = chunk
            .strip_prefix(b"\r\n")
            .or_else(|| chunk.strip_prefix(b"\n"))
            .unwrap_or(chunk);
        chunk = chunk
            .strip_suffix(b"\r\n")
            .or_else(|| chunk.strip_suffix(b"\n"))
            .unwrap_or(chunk);
        let (head, body) = match find(chunk, b"\r\n\r\n") {
            Some(p) => (&chunk[..p], &chunk[p + 4..]),
            None => match find(chunk, b"\n\n") {
                Some(p) => (&chunk[..p], &chunk[p + 2..]),
                None => return Err(bad("a part has no header/body separator")),
            },
        };
        let head = String::from_utf8_lossy(head);
        let mut headers = Vec::new();
        let mut content_type = String::from("text/plain");
        for line in head.lines() {
            if let Some((n, v)) = line.split_once(':') {
                if n.trim().eq_ignore_ascii_case("content-type") {
                    content_type = v.trim().to_string();
                } else {
                    headers.push((n.trim().to_string(), v.trim().to_string()));
                }
            }
        }
        parts.push(Part {
            content_type,
            headers,
            body: body.to_vec(),
        });
    }
    Ok(parts)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_survives_garbage() {
        let parts = vec![
            Part {
                content_type: "application/pkcs8".into(),
                headers: vec![("Content-Transfer-Encoding".into(), "base64".into())],
                body: b"AAAA\n".to_vec(),
            },
            Part {
                content_type: "application/pkcs7-mime; smime-type=certs-only".into(),
                headers: vec![],
                body: b"BBBB\n".to_vec(),
            },
        ];
        let body = encode("estuary-b1", &parts);
        let back = parse("multipart/mixed; boundary=estuary-b1", &body).unwrap();
        assert_eq!(back, parts);
        assert!(parse("multipart/mixed", &body).is_err());
        assert!(parse("multipart/mixed; boundary=x", b"--x").is_err());
        for cut in 0..body.len() {
            let _ = parse("multipart/mixed; boundary=estuary-b1", &body[..cut]);
        }
    }
}
