//! Listening sockets and the connection loop: TLS accept (with a timeout), peer certificate
//! captured once, HTTP/1.1 served with header and idle timeouts, a cap on connections, and
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::error::ServerError;
use crate::est::ConnectionInfo;
use crate::tls_socket::{ServedConnection, TlsSocket};
use crate::ServiceHandle;

/// How long in-flight requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Binds every address. `[::]` is bound IPv6-only so that it can sit beside `0.0.0.0` on the
/// same port; an IPv6 address that cannot be bound (no IPv6 on the host) is skipped with a
/// warning as long as another address was bound.
pub fn bind_listeners(addresses: &[SocketAddr]) -> Result<Vec<TcpListener>, ServerError> {
    let mut listeners = Vec::new();
    let mut skipped = Vec::new();
    for addr in addresses {
        match bind_one(*addr) {
            Ok(l) => listeners.push(l),
            Err(e) if addr.is_ipv6() && addresses.len() > 1 => skipped.push((*addr, e)),
            Err(source) => {
                return Err(ServerError::Listen {
                    address: *addr,
                    source,
                })
            }
        }
    }
    if listeners.is_empty() {
        return Err(ServerError::NoListener);
    }
    for (addr, e) in skipped {
        tracing::warn!(%addr, error = %e, "IPv6 listen address skipped");
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Serves EST on `listeners` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listeners: Vec<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    service: ServiceHandle,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(ConnectionsPerAddress::new(
        limits.max_connections_per_address,
    ));
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let mut loops = Vec::new();
    for listener in listeners {
        let ctx = AcceptContext {
            acceptor: acceptor.clone(),
            connections: connections.clone(),
            per_address: per_address.clone(),
            service: service.clone(),
            limits: limits.clone(),
            graceful: graceful.clone(),
        };
        let mut stop = stop_rx.clone();
        loops.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, peer)) => ctx.spawn_connection(tcp, peer),
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                }
            }
        }));
    }

    shutdown.await;
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        // Connection tasks still hold clones while they run; wait by time instead.
        tokio::time::sleep(Duration::from_millis(200)).await;
        return;
    };
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("connections still open after the grace period"),
    }
}

struct AcceptContext {
    acceptor: TlsAcceptor,
    connections: Arc<Semaphore>,
    per_address: Arc<ConnectionsPerAddress>,
    service: ServiceHandle,
    limits: Limits,
    graceful: Arc<GracefulShutdown>,
}

impl AcceptContext {
    fn spawn_connection(&self, mut tcp: tokio::net::TcpStream, peer: SocketAddr) {
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            return;
        };
        // A load balancer's connection is counted against the device it names (below).
        let from_load_balancer = self.limits.proxy_protocol_from.contains(&peer.ip());
        let address_permit = if from_load_balancer {
            None
        } else {
            let Some(address_permit) = ConnectionsPerAddress::enter(&self.per_address, peer.ip())
            else {
                tracing::debug!(%peer, "connection limit of this address reached; closing new connection");
                return;
            };
            Some(address_permit)
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = self.acceptor.clone();
        let service = self.service.clone();
        let limits = self.limits.clone();
        let watcher = self.graceful.watcher();
        let per_address = self.per_address.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (peer, _address_permit) = if from_load_balancer {
                let read = read_proxy_header(&mut tcp, peer);
                let device = match tokio::time::timeout(limits.handshake_timeout, read).await {
                    Ok(Ok(device)) => device,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "no valid PROXY protocol header from the load balancer; closing");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "no PROXY protocol header in time; closing");
                        return;
                    }
                };
                let Some(address_permit) = ConnectionsPerAddress::enter(&per_address, device.ip())
                else {
                    tracing::debug!(peer = %device, "connection limit of this address reached; closing new connection");
                    return;
                };
                (device, Some(address_permit))
            } else {
                (peer, address_permit)
            };
            let metrics = service.load().shared().metrics.clone();
            metrics
                .open_connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _open = OpenConnection(metrics);
            let accept = acceptor.accept(TlsSocket::new(tcp)).into_fallible();
            let tls = match tokio::time::timeout(limits.handshake_timeout, accept).await {
                Ok(Ok(tls)) => tls,
                Ok(Err((e, mut socket))) => {
                    socket.handshake_failed();
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let client_chain = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect());
            let conn = Arc::new(ConnectionInfo::new(peer, client_chain));
            let opened = tokio::time::Instant::now();
            let max_age = limits.max_connection_age;
            let svc = service_fn(move |request| {
                // The service in force now (a reload swaps it; this connection keeps going).
                let service = service.load_full();
                let conn = conn.clone();
                async move {
                    let mut response = service.handle(conn, request).await;
                    close_after_if_aged(&mut response, opened, max_age);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            // HTTP/1.1 only (what EST clients speak). header_read_timeout also runs while a
            // keep-alive connection is idle, so an idle client is dropped after it.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                // Canonical header-name spelling (`Content-Type`): libest's client compares
                // names byte for byte (see header_case).
                .title_case_headers(true)
                .max_buf_size(64 * 1024)
                .keep_alive(true)
                .serve_connection(TokioIo::new(ServedConnection::new(tls)), svc);
            // A cap on a connection's life: a client that stops reading responses (so that
            // writes block and no header timeout runs) cannot hold a slot for ever. Past
            // max_connection_age the next answer closes the connection (above); this hard cap,
            // one header timeout later, only cuts a client that is not taking its answers.
            let hard_cap = limits.max_connection_age + limits.header_timeout;
            match tokio::time::timeout(hard_cap, watcher.watch(connection)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
                Err(_) => tracing::debug!(%peer, "connection closed at max_connection_age"),
            }
        });
    }
}

/// A connection older than `max_age` ends with this answer, which says so (RFC 9112 §9.6:
/// `Connection: close`); hyper closes the connection once it is sent. So a client is never
/// cut off in the middle of a request by the age limit (the EST and the plain listeners).
pub(crate) fn close_after_if_aged<B>(
    response: &mut hyper::Response<B>,
    opened: tokio::time::Instant,
    max_age: Duration,
) {
    if opened.elapsed() >= max_age {
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
}

/// Reads the PROXY protocol header (version 2 or 1) a load balancer sends before the TLS
/// handshake, exactly (the ClientHello after it stays unread), and returns the device's
/// address; the load balancer's own (`load_balancer`) for a health check or an unnamed family.
async fn read_proxy_header(
    tcp: &mut tokio::net::TcpStream,
    load_balancer: SocketAddr,
) -> std::io::Result<SocketAddr> {
    use estuary_wire::proxy_protocol::{self, ProxiedSource};
    use tokio::io::AsyncReadExt;
    let invalid =
        |e: estuary_wire::WireError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut first = [0u8; 6];
    tcp.read_exact(&mut first).await?;
    let source = if first == *proxy_protocol::V1_PREFIX {
        // Version 1: one line; byte by byte, so as not to read into the ClientHello.
        let mut line = first.to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= proxy_protocol::V1_MAX_LEN {
                return Err(invalid(estuary_wire::WireError::Malformed {
                    what: "PROXY protocol header",
                    detail: "version 1 line longer than 107 bytes".into(),
                }));
            }
            line.push(tcp.read_u8().await?);
        }
        proxy_protocol::parse_v1(&line).map_err(invalid)?
    } else {
        let mut header = vec![0u8; 16];
        header[..6].copy_from_slice(&first);
        tcp.read_exact(&mut header[6..]).await?;
        let mut first16 = [0u8; 16];
        first16.copy_from_slice(&header);
        let length = proxy_protocol::v2_length(&first16).map_err(invalid)?;
        header.resize(length, 0);
        tcp.read_exact(&mut header[16..]).await?;
        proxy_protocol::parse_v2(&header).map_err(invalid)?
    };
    Ok(match source {
        ProxiedSource::Client(device) => device,
        ProxiedSource::Unknown => load_balancer,
    })
}

/// Decrements the open-connections gauge when the connection task ends.
struct OpenConnection(Arc<crate::metrics::Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .open_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Open connections per source address (`address_key`: an IPv4 address or an IPv6 /64),
/// capped at `limits.max_connections_per_address`: without it one host could hold every one
/// of `max_connections` (idle TLS connections cost the server almost nothing, so holding
/// them costs the attacker almost nothing either).
struct ConnectionsPerAddress {
    cap: usize,
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One connection's place in its address's count, given back when it closes.
struct AddressPermit {
    table: Arc<ConnectionsPerAddress>,
    key: String,
}

impl ConnectionsPerAddress {
    fn new(cap: usize) -> Self {
        ConnectionsPerAddress {
            cap,
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// A place for one more connection from `ip`, or `None` when its address is at the cap.
    fn enter(table: &Arc<Self>, ip: std::net::IpAddr) -> Option<AddressPermit> {
        let key = crate::ratelimit::address_key(ip);
        let mut open = table.open.lock().ok()?;
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= table.cap {
            return None;
        }
        *count += 1;
        Some(AddressPermit {
            table: table.clone(),
            key,
        })
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        if let Ok(mut open) = self.table.open.lock() {
            if let Some(count) = open.get_mut(&self.key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(&self.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod per_address_tests {
    use super::*;

    #[test]
    fn one_address_is_capped_and_its_places_come_back() {
        let table = Arc::new(ConnectionsPerAddress::new(2));
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let b_same_64: std::net::IpAddr = "2001:db8::ffff".parse().unwrap();
        let first = ConnectionsPerAddress::enter(&table, a);
        let second = ConnectionsPerAddress::enter(&table, a);
        assert!(first.is_some() && second.is_some());
        assert!(
            ConnectionsPerAddress::enter(&table, a).is_none(),
            "third from one address"
        );
        // Another address is not affected; one IPv6 /64 counts as one address.
        let v6 = ConnectionsPerAddress::enter(&table, b);
        let v6_again = ConnectionsPerAddress::enter(&table, b_same_64);
        assert!(v6.is_some() && v6_again.is_some());
        assert!(ConnectionsPerAddress::enter(&table, b).is_none());
        drop(first);
        assert!(
            ConnectionsPerAddress::enter(&table, a).is_some(),
            "a closed connection's place"
        );
        drop((second, v6, v6_again));
        assert!(table.open.lock().unwrap().len() <= 1);
    }
}
