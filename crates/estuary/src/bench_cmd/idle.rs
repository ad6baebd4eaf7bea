//! `--idle-connections N`: TLS connections that are opened before the load and send nothing,
//! held until the end, to see what a crowd of silent clients costs the server (libest went
//! offline with five).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::http::{self, Stream, Target};
use super::stats;

/// Most idle connections one run opens.
pub const MAX_IDLE_CONNECTIONS: usize = 100_000;

/// Consecutive failed connections after which no more are tried.
const GIVE_UP_AFTER_FAILURES: usize = 5;

/// The idle connections, open.
pub struct Idle {
    streams: Vec<Stream>,
    requested: usize,
    server_rss_before_kib: Option<u64>,
    server_rss_with_idle_kib: Option<u64>,
}

/// What the report says about them.
#[derive(Debug, serde::Serialize)]
pub struct IdleReport {
    pub requested: usize,
    /// Connections that completed their handshake.
    pub open_at_start: usize,
    /// Of those, the ones the server had not closed when the load ended.
    pub open_at_end: usize,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_with_idle_kib: Option<u64>,
}

/// Opens `n` connections (a TCP connection and a TLS handshake each). A connection the server
/// refuses is counted as not open, not an error: a server with a connection cap does that.
pub fn open(
    target: &Target,
    config: &Arc<rustls::ClientConfig>,
    n: usize,
    server_pid: Option<&str>,
) -> anyhow::Result<Idle> {
    // Each connection is a file descriptor here too.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
    let server_rss_before_kib = server_pid.and_then(stats::rss_kib);
    let mut streams = Vec::new();
    let mut failed_in_a_row = 0;
    for _ in 0..n {
        match http::connect(target, config) {
            Ok(stream) => {
                streams.push(stream);
                failed_in_a_row = 0;
            }
            Err(e) if streams.is_empty() => {
                return Err(e).context("opening the first idle connection");
            }
            Err(e) => {
                // The server's connection cap, or this machine's limits: more attempts would
                // only wait for their timeouts.
                failed_in_a_row += 1;
                if failed_in_a_row == GIVE_UP_AFTER_FAILURES {
                    eprintln!(
                        "warning: stopped opening idle connections after {} were open: {GIVE_UP_AFTER_FAILURES} failed in a row (last: {e})",
                        streams.len()
                    );
                    break;
                }
            }
        }
    }
    // Let the server settle (its buffers for the new connections are allocated by now).
    std::thread::sleep(Duration::from_millis(500));
    Ok(Idle {
        requested: n,
        server_rss_with_idle_kib: server_pid.and_then(stats::rss_kib),
        server_rss_before_kib,
        streams,
    })
}

impl Idle {
    /// Counts the connections still open (the server has not closed them), then closes them.
    pub fn finish(self) -> IdleReport {
        let open_at_start = self.streams.len();
        let open_at_end = self.streams.iter().filter(|s| still_open(&s.sock)).count();
        IdleReport {
            requested: self.requested,
            open_at_start,
            open_at_end,
            server_rss_before_kib: self.server_rss_before_kib,
            server_rss_with_idle_kib: self.server_rss_with_idle_kib,
        }
    }
}

/// Whether the peer has not closed a socket: read what is waiting without blocking (session
/// tickets, or an alert before a close) until the read would block (open) or returns the end
/// of the stream or an error (closed). The connection is closed after this anyway, so reading
/// past rustls does no harm.
fn still_open(socket: &std::net::TcpStream) -> bool {
    use std::io::Read as _;
    if socket.set_nonblocking(true).is_err() {
        return false;
    }
    let mut buffer = [0u8; 4096];
    let mut reader = socket;
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}
