//! The bench's wire: one HTTP/1.1 request at a time over a blocking rustls stream, with the
//! request bytes built ahead of time. Just enough HTTP for EST answers: Content-Length,
//! chunked, or a body that ends with the connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// Largest response head or body read (a CA chain or a certificate is a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub name: ServerName<'static>,
    pub timeout: Duration,
}

pub type Stream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TCP connection and TLS handshake (done here, so a handshake failure is a connection
/// error and not a late read error).
pub fn connect(target: &Target, config: &Arc<rustls::ClientConfig>) -> std::io::Result<Stream> {
    let tcp = TcpStream::connect_timeout(&target.addr, target.timeout)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(target.timeout))?;
    tcp.set_write_timeout(Some(target.timeout))?;
    let conn = rustls::ClientConnection::new(config.clone(), target.name.clone())
        .map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A request's bytes: head and body.
pub fn request_bytes(
    method: &str,
    path: &str,
    authority: &str,
    authorization: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(a) = authorization {
        head.push_str("Authorization: ");
        head.push_str(a);
        head.push_str("\r\n");
    }
    let mut out = match body {
        Some((content_type, bytes)) => {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\nContent-Length: {}\r\n\r\n",
                bytes.len()
            ));
            let mut out = head.into_bytes();
            out.extend_from_slice(bytes);
            out
        }
        None => {
            head.push_str("\r\n");
            head.into_bytes()
        }
    };
    out.shrink_to_fit();
    out
}

/// An answer: its status, body, and whether the connection may carry another request.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub keep_alive: bool,
}

/// Sends `request` and reads the whole answer.
pub fn exchange(stream: &mut Stream, request: &[u8]) -> std::io::Result<Response> {
    stream.write_all(request)?;
    stream.flush()?;
    read_response(stream)
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

fn fill(s: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = s.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    if buf.len() > MAX_RESPONSE {
        return Err(bad("response larger than 1 MiB"));
    }
    Ok(n)
}

/// Reads one HTTP/1.1 response (1xx interim answers skipped).
pub fn read_response(s: &mut impl Read) -> std::io::Result<Response> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if fill(s, &mut buf)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("not an HTTP status line"))?;
        let http10 = status_line.starts_with("http/1.0");
        let mut content_length = None;
        let mut chunked = false;
        let mut close = http10;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim() {
                "content-length" => {
                    content_length = Some(
                        value
                            .parse::<usize>()
                            .map_err(|_| bad("bad Content-Length"))?,
                    )
                }
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value.contains("close"),
                _ => {}
            }
        }
        buf.drain(..end + 4);
        if (100..200).contains(&status) {
            continue;
        }
        let body = if chunked {
            read_chunked(s, buf)?
        } else if let Some(len) = content_length {
            if len > MAX_RESPONSE {
                return Err(bad("response larger than 1 MiB"));
            }
            while buf.len() < len {
                if fill(s, &mut buf)? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed within a response body",
                    ));
                }
            }
            buf.truncate(len);
            buf
        } else if status == 204 || status == 304 {
            Vec::new()
        } else {
            close = true;
            while fill(s, &mut buf)? > 0 {}
            buf
        };
        return Ok(Response {
            status,
            body,
            keep_alive: !close,
        });
    }
}

fn read_chunked(s: &mut impl Read, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            if fill(s, &mut buf)? == 0 {
                return Err(bad("connection closed within a chunked body"));
            }
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers (if any) end with an empty line.
            while !buf.windows(2).any(|w| w == b"\r\n") {
                if fill(s, &mut buf)? == 0 {
                    break;
                }
            }
            return Ok(body);
        }
        if body.len() + size > MAX_RESPONSE {
            return Err(bad("response larger than 1 MiB"));
        }
        while buf.len() < size + 2 {
            if fill(s, &mut buf)? == 0 {
                return Err(bad("connection closed within a chunked body"));
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_length_chunked_and_close_delimited_bodies() {
        let r = read_response(
            &mut &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcXYZ"[..],
        )
        .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.keep_alive),
            (200, &b"abc"[..], true)
        );
        let r = read_response(
            &mut &b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1;x\r\nc\r\n0\r\n\r\n"[..],
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (202, &b"abc"[..]));
        let r =
            read_response(&mut &b"HTTP/1.1 401 No\r\nConnection: close\r\n\r\nbye"[..]).unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.keep_alive),
            (401, &b"bye"[..], false)
        );
        assert!(
            read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab"[..]).is_err()
        );
        assert!(read_response(&mut &b"garbage\r\n\r\n"[..]).is_err());
        assert!(read_response(&mut &b""[..]).is_err());
    }

    #[test]
    fn requests_carry_their_body_and_length() {
        let r = request_bytes(
            "POST",
            "/p",
            "h:1",
            Some("Basic eA=="),
            Some(("application/pkcs10", b"QUJD")),
        );
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("POST /p HTTP/1.1\r\nHost: h:1\r\nAuthorization: Basic eA==\r\n"));
        assert!(text.ends_with("Content-Length: 4\r\n\r\nQUJD"));
        let g = request_bytes("GET", "/c", "h:1", None, None);
        assert_eq!(g, b"GET /c HTTP/1.1\r\nHost: h:1\r\n\r\n");
    }
}
