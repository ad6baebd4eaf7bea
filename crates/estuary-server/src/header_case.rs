//! Canonical spelling of response header names on HTTP/1.1.
//!
//! Header names are case-insensitive (RFC 9110 §5.1), but libest's `estclient`, the most
//! deployed EST client, compares them byte for byte in their canonical spelling
//! (`Content-Type`, `Content-Length`, `Content-Transfer-Encoding`, `WWW-Authenticate`,
//! `Retry-After`). hyper writes lowercase names by default; its `title_case_headers` option
//! gives `Content-Type` and friends, but `Www-Authenticate`. hyper spells a name as recorded in
//! a response's header-case map, a type it does not export, which its HTTP/1 client fills
//! from a response it parses with `preserve_header_case`. So we let hyper's client parse one
//! response with the canonical spellings, once, and attach the resulting extensions to the
//! responses that need them.

use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::Empty;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Header names whose canonical spelling title case does not give.
const CANONICAL: &[u8] = b"HTTP/1.1 200 OK\r\nWWW-Authenticate: x\r\nContent-Length: 0\r\n\r\n";

/// Extensions that make hyper write `WWW-Authenticate` (the rest comes from title case).
/// `None` if they could not be made (then the name is written `Www-Authenticate`).
pub fn canonical_extensions() -> Option<&'static http::Extensions> {
    static EXTENSIONS: OnceLock<Option<http::Extensions>> = OnceLock::new();
    EXTENSIONS
        .get_or_init(|| {
            // Its own thread and runtime, so that this works from inside or outside tokio.
            std::thread::spawn(parse_canonical_response)
                .join()
                .ok()
                .flatten()
        })
        .as_ref()
}

/// Sets the header-name spellings of `response` to the canonical ones.
pub fn apply<B>(response: &mut http::Response<B>) {
    if let Some(extensions) = canonical_extensions() {
        response.extensions_mut().extend(extensions.clone());
    }
}

fn parse_canonical_response() -> Option<http::Extensions> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let (client_io, mut server_io) = tokio::io::duplex(4096);
        let responder = tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = server_io.read(&mut request).await;
            let _ = server_io.write_all(CANONICAL).await;
            let _ = server_io.shutdown().await;
        });
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .preserve_header_case(true)
            .handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(client_io))
            .await
            .ok()?;
        let driver = tokio::spawn(connection);
        let request = http::Request::builder().uri("/").body(Empty::new()).ok()?;
        let response = sender.send_request(request).await.ok()?;
        let _ = responder.await;
        driver.abort();
        let (parts, _) = response.into_parts();
        Some(parts.extensions)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_made() {
        assert!(canonical_extensions().is_some());
    }
}
