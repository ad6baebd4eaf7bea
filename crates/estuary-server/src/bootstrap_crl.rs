//! Bootstrap CAs' CRLs: read from a file or fetched over http, checked against their CA, and
//! refreshed in the background. The verifier (estuary_auth) refuses a certificate a CRL lists,
//! and every certificate of a CA whose CRL is past its nextUpdate.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use estuary_auth::BootstrapCrl;

use crate::config::CrlSource;
use crate::error::ServerError;

/// Largest CRL accepted.
const MAX_CRL_BYTES: u64 = 32 * 1024 * 1024;
/// Time for the name lookup, for connecting, and for each read from a CRL server.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a whole fetch: a server that trickles its answer cannot hold a start, a reload or
/// the refresh loop longer than this.
const FETCH_DEADLINE: Duration = Duration::from_secs(30);

/// Where one bootstrap CA's CRL comes from.
#[derive(Debug, Clone)]
pub struct CrlFeed {
    /// The bootstrap CA's name.
    pub name: String,
    /// File or URL.
    pub source: CrlSource,
    /// The CA certificate (DER) that must have signed it.
    pub ca_der: Vec<u8>,
}

impl CrlFeed {
    /// Reads or fetches the CRL and checks it against the CA. Blocking.
    pub fn load(&self, data_dir: &Path) -> Result<BootstrapCrl, ServerError> {
        let bytes = match &self.source {
            CrlSource::File(p) => {
                let path = if p.is_absolute() {
                    p.clone()
                } else {
                    data_dir.join(p)
                };
                // A regular file: a FIFO would hold the start, and the refresh, for ever.
                estuary_ca::bootstrap::read_regular_file(&path, MAX_CRL_FILE_BYTES).map_err(
                    |source| ServerError::BootstrapCrlRead {
                        name: self.name.clone(),
                        path,
                        source,
                    },
                )?
            }
            CrlSource::Url(url) => {
                fetch_http(url).map_err(|source| ServerError::BootstrapCrlFetch {
                    name: self.name.clone(),
                    url: url.clone(),
                    source,
                })?
            }
        };
        BootstrapCrl::parse(&self.name, &bytes, &self.ca_der).map_err(|source| {
            ServerError::BootstrapCrl {
                name: self.name.clone(),
                source,
            }
        })
    }
}

/// Loads every feed at start or reload. A file that cannot be read or is not the CA's CRL is a
/// configuration error. A URL that cannot be fetched now is not (the network may come back,
/// and a restart loop would help nobody): it is logged, its CA's certificates are refused
/// until its CRL arrives (fail closed), and it is tried again every few minutes. On reload,
/// `previous` are the CRLs in force: one that is newer than what was just read stays (an old
/// CRL replayed by whoever sits on the http path must not un-revoke anything).
pub fn load_at_start(
    feeds: &[CrlFeed],
    data_dir: &Path,
    previous: &[Arc<BootstrapCrl>],
) -> Result<Vec<Arc<BootstrapCrl>>, ServerError> {
    let mut loaded = Vec::new();
    for feed in feeds {
        let old = previous.iter().find(|c| c.name == feed.name);
        match (feed.load(data_dir), &feed.source) {
            (Ok(crl), _) => loaded.push(newer_of(Arc::new(crl), old)),
            (Err(e), CrlSource::Url(_)) => {
                tracing::warn!(
                    error = %e,
                    "bootstrap CRL not fetched: certificates of bootstrap CA {} are refused until it is (retried every 5 minutes)",
                    feed.name
                );
                loaded.extend(old.cloned());
            }
            (Err(e), CrlSource::File(_)) => return Err(e),
        }
    }
    Ok(loaded)
}

/// `new` unless `old` (the CRL in force) was issued after it; warns about what it keeps.
pub fn newer_of(new: Arc<BootstrapCrl>, old: Option<&Arc<BootstrapCrl>>) -> Arc<BootstrapCrl> {
    match old {
        Some(old) if new.is_older_than(old) => {
            tracing::warn!(
                ca = new.name,
                "the bootstrap CRL just read is older than the one in force (a lower cRLNumber or an earlier thisUpdate): ignored, the newer one stays"
            );
            warn_if_stale(old);
            old.clone()
        }
        _ => {
            warn_if_stale(&new);
            new
        }
    }
}

/// Warns when a CRL is past its nextUpdate (its CA's certificates are refused) or close to it.
pub fn warn_if_stale(crl: &BootstrapCrl) {
    let Some(next_update) = crl.next_update else {
        return;
    };
    let now = std::time::SystemTime::now();
    if next_update <= now {
        tracing::warn!(
            ca = crl.name,
            next_update = %rfc3339(next_update),
            "bootstrap CRL is past its nextUpdate: certificates of this bootstrap CA are refused until a fresh CRL is loaded"
        );
    } else if next_update <= now + Duration::from_secs(3600) {
        tracing::warn!(
            ca = crl.name,
            next_update = %rfc3339(next_update),
            "bootstrap CRL reaches its nextUpdate within the hour; then certificates of this bootstrap CA are refused"
        );
    }
}

/// Why a bootstrap CRL could not be fetched from its URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlFetchError {
    /// Not an `http://` URL.
    #[error("only http:// URLs are supported")]
    NotHttpUrl,
    /// The host name has no address.
    #[error("cannot resolve {authority}")]
    NoAddress {
        /// `host:port`, as in the URL.
        authority: String,
    },
    /// The name lookup failed.
    #[error("cannot resolve {authority}: {source}")]
    Resolve {
        /// `host:port`, as in the URL.
        authority: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The name lookup did not finish in time.
    #[error("resolving {authority} took longer than {limit:?}")]
    ResolveTimeout {
        /// `host:port`, as in the URL.
        authority: String,
        /// The time allowed.
        limit: Duration,
    },
    /// The TCP connection failed.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The socket's timeouts could not be set.
    #[error("{0}")]
    Socket(#[source] std::io::Error),
    /// The request could not be sent.
    #[error("cannot send the request: {0}")]
    Send(#[source] std::io::Error),
    /// The response could not be read.
    #[error("cannot read the response: {0}")]
    Receive(#[source] std::io::Error),
    /// The whole answer did not arrive in time.
    #[error("the answer took longer than {0:?}")]
    Deadline(Duration),
    /// The answer is larger than the limit.
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    /// The answer is not HTTP.
    #[error("not an HTTP response")]
    NotHttp,
    /// The server answered, but not `200`: its status line.
    #[error("the server answered {0:?}")]
    Status(String),
}

/// A plain HTTP/1.0 GET (CRLs are signed; RFC 5280 §4.2.1.13 serves them over http), with
/// timeouts and a size limit. Redirects are not followed.
fn fetch_http(url: &str) -> Result<Vec<u8>, CrlFetchError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or(CrlFetchError::NotHttpUrl)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let started = std::time::Instant::now();
    // The name lookup blocks without a timeout of its own: bound it from a thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let lookup = with_port.clone();
    std::thread::spawn(move || {
        let _ = tx.send(lookup.to_socket_addrs().map(|mut a| a.next()));
    });
    let address = match rx.recv_timeout(FETCH_TIMEOUT) {
        Ok(Ok(Some(a))) => a,
        Ok(Ok(None)) => {
            return Err(CrlFetchError::NoAddress {
                authority: authority.to_string(),
            })
        }
        Ok(Err(source)) => {
            return Err(CrlFetchError::Resolve {
                authority: authority.to_string(),
                source,
            })
        }
        Err(_) => {
            return Err(CrlFetchError::ResolveTimeout {
                authority: authority.to_string(),
                limit: FETCH_TIMEOUT,
            })
        }
    };
    let mut stream =
        TcpStream::connect_timeout(&address, FETCH_TIMEOUT).map_err(CrlFetchError::Connect)?;
    stream
        .set_read_timeout(Some(FETCH_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(FETCH_TIMEOUT)))
        .map_err(CrlFetchError::Socket)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: estuary\r\nAccept: application/pkix-crl\r\n\r\n"
    )
    .map_err(CrlFetchError::Send)?;
    let mut response = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = FETCH_DEADLINE.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(CrlFetchError::Deadline(FETCH_DEADLINE));
        }
        stream
            .set_read_timeout(Some(left.min(FETCH_TIMEOUT)))
            .map_err(CrlFetchError::Socket)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&chunk[..n]);
                if response.len() as u64 > MAX_CRL_BYTES + 64 * 1024 {
                    return Err(CrlFetchError::TooLarge(MAX_CRL_BYTES));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CrlFetchError::Receive(e)),
        }
    }
    crl_http_body(response)
}

/// The body of a CRL server's HTTP/1.x answer: `200`, or an error that quotes the status line.
/// (Network input: fuzzed by the `http_fields` target.)
pub fn crl_http_body(mut response: Vec<u8>) -> Result<Vec<u8>, CrlFetchError> {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(CrlFetchError::NotHttp)?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    if status != "200" {
        return Err(CrlFetchError::Status(
            head.lines().next().unwrap_or("").to_string(),
        ));
    }
    let body = response.split_off(head_end + 4);
    if body.len() as u64 > MAX_CRL_BYTES {
        return Err(CrlFetchError::TooLarge(MAX_CRL_BYTES));
    }
    Ok(body)
}

/// A time for log lines and messages (RFC 3339, UTC).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}

/// The largest CRL file read (a CRL of a million serials is about 40 MB).
const MAX_CRL_FILE_BYTES: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_answer_gives_a_body() {
        assert_eq!(
            crl_http_body(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec()).ok(),
            Some(b"abc".to_vec())
        );
        let redirect = crl_http_body(b"HTTP/1.1 301 Moved\r\nLocation: x\r\n\r\n".to_vec());
        assert!(redirect.is_err_and(|e| e.to_string()
            == "the server answered \"HTTP/1.1 301 Moved\""
            && matches!(e, CrlFetchError::Status(_))));
        assert!(matches!(
            crl_http_body(b"no head".to_vec()),
            Err(CrlFetchError::NotHttp)
        ));
        assert!(matches!(crl_http_body(vec![]), Err(CrlFetchError::NotHttp)));
    }
}
