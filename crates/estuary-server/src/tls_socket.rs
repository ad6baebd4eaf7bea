//! The socket under a served TLS connection, and the TLS connection over it, each saving one
//! send per connection:
//!
//! - [`TlsSocket`] holds a TLS 1.3 server's session tickets (RFC 8446 §4.6.1), which rustls
//!   writes as soon as the handshake completes, and sends them in one send with the first
//!   answer. Sent alone they cost a send of their own, and on loopback or a fast LAN a send
//!   costs the sender the receiver's network stack too.
//! - [`ServedConnection`] does not answer a client that has already closed its side of the
//!   connection with a close_notify alert: the client reads nothing more, and the alert costs a
//!   send to a closed socket (which the client's kernel answers with a reset) and a failed
//!   `shutdown`. Every answer is complete before that point (HTTP framing), so nothing is
//!   truncated; a client still reading gets a TCP FIN without the alert, as from servers that
//!   shut down "quietly" after the peer has gone (nginx).
//!
//! Nothing else changes: the handshake's flights, alerts and every answer go out as before. A
//! client that completes a TLS 1.3 handshake and sends no request gets no session ticket
//! (`openssl s_client -reconnect`, or a TLS scanner's resumption check, sees none); every EST
//! client sends its request first and gets the tickets just ahead of the answer.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The TLS record type application_data (RFC 8446 §5.1). Once the handshake keys are in
/// place, a TLS 1.3 server sends every record as this type; a flight that begins with one after
/// the client's Finished is the session tickets. A TLS 1.2 handshake sends none before it
/// completes (its records are handshake, change_cipher_spec and alert).
const APPLICATION_DATA: u8 = 23;

/// The largest flight held: two session tickets, each carrying the client's certificate chain
/// (rustls's stateless tickets), fit for any ordinary chain; a larger flight goes out at once, so
/// that what an idle connection holds stays small.
const HOLD_LIMIT: usize = 8 * 1024;

/// Whether `bufs` are whole TLS records (5-byte header, RFC 8446 §5.1), all application_data:
/// what a TLS 1.3 server writes after the handshake. The server's handshake flights begin with
/// a handshake record, and a partial record is never taken for a flight.
fn whole_application_data_records(bufs: &[IoSlice<'_>]) -> bool {
    let bytes: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let [kind, _, _, high, low, ..] = *rest else {
            return false;
        };
        let end = 5 + usize::from(u16::from_be_bytes([high, low]));
        if kind != APPLICATION_DATA || rest.len() < end {
            return false;
        }
        rest = &rest[end..];
    }
    true
}

/// A TCP socket under a server-side TLS connection. During the handshake, a flight that begins
/// with an application_data record and is whole records of that type, at most [`HOLD_LIMIT`]
/// bytes (TLS 1.3's post-handshake session tickets, or an encrypted alert when the handshake
/// fails), is held instead of sent, and goes out with the first write
/// after [`TlsSocket::handshake_finished`] (a flush alone does not send it).
#[derive(Debug)]
pub struct TlsSocket {
    tcp: TcpStream,
    /// Bytes the TLS layer wrote that are not sent yet: the held flight, or the rest of a
    /// write the socket took only part of.
    unsent: Vec<u8>,
    /// Until [`TlsSocket::handshake_finished`].
    handshaking: bool,
    /// A read since the last write: the next write begins the server's next flight.
    read_since_write: bool,
    /// The flight being written is held (see [`APPLICATION_DATA`]), until the first write
    /// after the handshake.
    holding_flight: bool,
    /// A read returned end of file: the client has closed its side.
    peer_closed: bool,
}

impl TlsSocket {
    /// Wraps an accepted connection, before the TLS handshake.
    pub fn new(tcp: TcpStream) -> Self {
        TlsSocket {
            tcp,
            unsent: Vec::new(),
            handshaking: true,
            read_since_write: false,
            holding_flight: false,
            peer_closed: false,
        }
    }

    /// The handshake is over: what was held goes out with the next write (the first answer).
    pub fn handshake_finished(&mut self) {
        self.handshaking = false;
    }

    /// The handshake failed: send what was held (the alert that says why) if the socket takes
    /// it at once, since the connection is about to be closed.
    pub fn handshake_failed(&mut self) {
        if !self.unsent.is_empty() {
            let _ = self.tcp.try_write(&self.unsent);
            self.unsent.clear();
        }
    }

    /// Whether the client has closed its side of the connection (a read returned end of file).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Sends what is unsent, until the socket would block.
    fn poll_send_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unsent.is_empty() {
            let sent = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.unsent))?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unsent.drain(..sent);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.read_since_write = true;
        } else if buf.remaining() > 0 {
            self.peer_closed = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if this.handshaking && this.read_since_write {
            // The first write of a new flight decides whether the flight is held.
            this.read_since_write = false;
            this.holding_flight = total <= HOLD_LIMIT && whole_application_data_records(bufs);
        }
        if this.holding_flight {
            if this.handshaking && this.unsent.len() + total <= HOLD_LIMIT {
                for b in bufs {
                    this.unsent.extend_from_slice(b);
                }
                return Poll::Ready(Ok(total));
            }
            // The first write after the handshake (or more than a small flight): what was held
            // goes with it.
            this.holding_flight = false;
        }
        if this.unsent.is_empty() {
            return Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        }
        // Held bytes first, then this write, in one send.
        let held = this.unsent.len();
        let sent = {
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(IoSlice::new(&this.unsent));
            slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
            ready!(Pin::new(&mut this.tcp).poll_write_vectored(cx, &slices))?
        };
        if sent > held {
            this.unsent.clear();
            return Poll::Ready(Ok(sent - held));
        }
        // The socket took only (part of) the held bytes. This write waits until they are all
        // sent: nothing beyond the held flight is ever kept here, so a client that reads slowly
        // meets the socket's back-pressure as before.
        this.unsent.drain(..sent);
        ready!(this.poll_send_unsent(cx))?;
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.holding_flight {
            ready!(this.poll_send_unsent(cx))?;
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.peer_closed {
            // Nobody reads any more; the socket is closed when dropped.
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_unsent(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// A served TLS connection that closes quietly when the client has already closed its side
/// (see the module documentation).
#[derive(Debug)]
pub struct ServedConnection {
    tls: tokio_rustls::server::TlsStream<TlsSocket>,
}

impl ServedConnection {
    /// A connection whose handshake has completed.
    pub fn new(mut tls: tokio_rustls::server::TlsStream<TlsSocket>) -> Self {
        tls.get_mut().0.handshake_finished();
        ServedConnection { tls }
    }
}

impl AsyncRead for ServedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.tls.get_ref().0.peer_closed() {
            // RFC 8446 §6.1 asks for a close_notify before closing the write side; the client
            // has closed already and reads no more, so what is still buffered is flushed and
            // the alert is not sent (see the module documentation).
            return Pin::new(&mut self.tls).poll_flush(cx);
        }
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Whether `stream` has bytes to read within 200 ms.
    async fn has_bytes(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        let peek = stream.peek(&mut byte);
        matches!(
            tokio::time::timeout(Duration::from_millis(200), peek).await,
            Ok(Ok(n)) if n > 0
        )
    }

    /// One application_data record with one byte of content.
    fn record(content: u8) -> [u8; 6] {
        [23, 3, 3, 0, 1, content]
    }

    /// A pair on which the server has read the client's first byte (its hello): the server's
    /// next write begins a flight.
    async fn after_client_hello() -> (TlsSocket, TcpStream) {
        let (mut server, mut client) = pair().await;
        client.write_all(&[22]).await.unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.unwrap();
        (server, client)
    }

    async fn pair() -> (TlsSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (TlsSocket::new(server), client)
    }

    #[tokio::test]
    async fn a_flight_of_application_data_after_a_read_waits_for_the_first_answer() {
        let (mut server, mut client) = pair().await;
        // The ClientHello, and the server's flight (a handshake record): sent at once.
        client.write_all(&[22, 3, 1]).await.unwrap();
        let mut hello = [0u8; 3];
        server.read_exact(&mut hello).await.unwrap();
        server.write_all(&[22, 3, 3, 0]).await.unwrap();
        server.flush().await.unwrap();
        let mut flight = [0u8; 4];
        client.read_exact(&mut flight).await.unwrap();
        // The client's Finished; then application data (the tickets): held, even by a flush.
        client.write_all(&[23, 3, 3]).await.unwrap();
        server.read_exact(&mut hello).await.unwrap();
        server.write_all(&record(0xAA)).await.unwrap();
        server.write_all(&record(0xBB)).await.unwrap();
        server.flush().await.unwrap();
        server.handshake_finished();
        server.flush().await.unwrap();
        assert!(!has_bytes(&mut client).await, "the tickets went out alone");
        // The first answer carries them, in order.
        server.write_all(&record(0xCC)).await.unwrap();
        server.flush().await.unwrap();
        let mut answer = [0u8; 18];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(
            answer,
            [record(0xAA), record(0xBB), record(0xCC)].concat()[..]
        );
        // After that, every write goes straight out.
        server.write_all(&record(0xDD)).await.unwrap();
        let mut next = [0u8; 6];
        client.read_exact(&mut next).await.unwrap();
        assert_eq!(next, record(0xDD));
    }

    #[tokio::test]
    async fn a_held_alert_is_sent_when_the_handshake_fails() {
        let (mut server, mut client) = after_client_hello().await;
        // An encrypted alert is an application_data record too.
        server.write_all(&record(0x15)).await.unwrap();
        server.flush().await.unwrap();
        assert!(!has_bytes(&mut client).await);
        server.handshake_failed();
        let mut alert = [0u8; 6];
        client.read_exact(&mut alert).await.unwrap();
        assert_eq!(alert, record(0x15));
    }

    #[tokio::test]
    async fn a_handshake_record_after_a_read_is_not_held() {
        // TLS 1.2's last flight (ticket, ChangeCipherSpec, Finished) begins with a handshake
        // record: the client waits for it, so it must go out.
        let (mut server, mut client) = after_client_hello().await;
        server.write_all(&[22, 1, 20, 1]).await.unwrap();
        server.flush().await.unwrap();
        let mut flight = [0u8; 4];
        client.read_exact(&mut flight).await.unwrap();
        assert_eq!(flight, [22, 1, 20, 1]);
    }

    #[tokio::test]
    async fn partial_records_and_large_flights_are_not_held() {
        for flight in [
            // Not whole records: a record cut short, a record followed by a stray byte.
            vec![23, 3, 3, 0, 9, 1, 2],
            [record(1).as_slice(), &[23]].concat(),
            // Whole records, but more than HOLD_LIMIT.
            [23, 3, 3, 0x24, 0x00]
                .into_iter()
                .chain(std::iter::repeat_n(0, 0x2400))
                .collect(),
        ] {
            let (mut server, mut client) = after_client_hello().await;
            server.write_all(&flight).await.unwrap();
            server.flush().await.unwrap();
            let mut got = vec![0u8; flight.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, flight);
        }
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_meets_back_pressure() {
        // The held tickets and then an endless answer: the socket fills, the writes stop being
        // accepted, and nothing beyond the held flight was ever kept in memory here.
        let (mut server, client) = after_client_hello().await;
        server.write_all(&record(0xAA)).await.unwrap();
        server.handshake_finished();
        let chunk = vec![0u8; 64 * 1024];
        let mut accepted = 0usize;
        loop {
            let write = tokio::time::timeout(Duration::from_millis(200), server.write(&chunk));
            match write.await {
                Ok(Ok(n)) => accepted += n,
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => break,
            }
            assert!(
                server.unsent.len() <= HOLD_LIMIT,
                "{} bytes kept",
                server.unsent.len()
            );
            assert!(accepted < 1 << 30, "the writes never stopped");
        }
        assert!(server.unsent.len() <= HOLD_LIMIT);
        drop(client);
    }

    #[tokio::test]
    async fn a_closed_peer_is_seen_and_shutdown_does_not_fail() {
        let (mut server, mut client) = pair().await;
        server.handshake_finished();
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(server.peer_closed());
        drop(client);
        server.shutdown().await.unwrap();
    }

    /// A real TLS server over [`TlsSocket`] and [`ServedConnection`], answering each line it
    /// reads with `answer` until the client closes.
    async fn tls_server() -> (std::net::SocketAddr, Vec<u8>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = estuary_ca::bootstrap::load_or_create_ca(
            dir.path(),
            estuary_ca::signer::KeyChoice::P256,
        )
        .unwrap();
        let (identity, _) = estuary_ca::bootstrap::load_or_create_server_identity(
            dir.path(),
            &ca,
            estuary_ca::signer::KeyChoice::P256,
            &estuary_ca::bootstrap::default_server_sans(),
        )
        .unwrap();
        let config = crate::tls::server_config(&identity).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(TlsSocket::new(tcp)).await else {
                        return;
                    };
                    let mut conn = ServedConnection::new(tls);
                    let mut request = [0u8; 5];
                    while conn.read_exact(&mut request).await.is_ok() {
                        conn.write_all(b"answer").await.unwrap();
                        conn.flush().await.unwrap();
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        let root = ca.chain_der().last().unwrap().clone();
        (address, root, dir)
    }

    fn client_config(
        root: Vec<u8>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.into()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::crypto_provider()))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// One request and its answer on `tls`.
    async fn ask(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) {
        tls.write_all(b"hello").await.unwrap();
        let mut answer = [0u8; 6];
        tls.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
    }

    async fn connect(
        address: std::net::SocketAddr,
        config: &Arc<rustls::ClientConfig>,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn tls13_tickets_come_with_the_first_answer_and_resume_the_next_connection() {
        let (address, root, _dir) = tls_server().await;
        let config = client_config(root, &rustls::version::TLS13);
        let mut tls = connect(address, &config).await;
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        // The handshake is complete and nothing more is sent until the first answer.
        let mut byte = [0u8; 1];
        let peek = tls.get_ref().0.peek(&mut byte);
        assert!(tokio::time::timeout(Duration::from_millis(200), peek)
            .await
            .is_err());
        ask(&mut tls).await;
        tls.shutdown().await.unwrap();
        drop(tls);
        // The tickets arrived: the next connection resumes.
        let mut again = connect(address, &config).await;
        assert_eq!(
            again.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        ask(&mut again).await;
    }

    #[tokio::test]
    async fn tls12_handshakes_complete_and_resume() {
        let (address, root, _dir) = tls_server().await;
        let config = client_config(root, &rustls::version::TLS12);
        for kind in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
            let mut tls = connect(address, &config).await;
            assert_eq!(
                tls.get_ref().1.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_2)
            );
            assert_eq!(tls.get_ref().1.handshake_kind(), Some(kind));
            ask(&mut tls).await;
        }
    }

    #[tokio::test]
    async fn a_client_that_closed_gets_no_close_notify() {
        let (address, root, _dir) = tls_server().await;
        let config = client_config(root, &rustls::version::TLS13);
        let mut tls = connect(address, &config).await;
        ask(&mut tls).await;
        // The client closes its side of the TCP connection (no close_notify of its own).
        let (mut tcp, _) = tls.into_inner();
        tcp.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(
            rest.is_empty(),
            "{} bytes after the client closed",
            rest.len()
        );
    }

    #[tokio::test]
    async fn a_client_still_open_gets_close_notify() {
        // The server closes first (here: after the client's close_notify, with the client's
        // TCP side still open): the alert is sent as before.
        let (address, root, _dir) = tls_server().await;
        let config = client_config(root, &rustls::version::TLS13);
        let mut tls = connect(address, &config).await;
        ask(&mut tls).await;
        tls.get_mut().1.send_close_notify();
        tls.flush().await.unwrap();
        // Without the server's close_notify, the client would read an unexpected end of file.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(read.is_ok(), "{read:?}");
    }
}
