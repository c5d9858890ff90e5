//! One port, two kinds of connection: peers' internal traffic (Raft,
//! forwarded writes) and everything else (clients, subscriptions).
//!
//! Both are gRPC on the node's one TCP port, but they must not share a
//! scheduler. With thousands of subscription streams, every committed entry
//! wakes thousands of tasks on the node's main runtime; an AppendEntries
//! request queued behind them waited for all of them, and a write that
//! crosses several such queues took 60 ms instead of 2 (measured with 10 000
//! subscribers on 3 nodes). So a peer opens its connections with a fixed
//! 24-byte preamble, [`INTERNAL_PREAMBLE`], before HTTP/2's own. The
//! accept loop reads the first 24 bytes of every connection: the preamble
//! sends the connection to the internal server (on the Raft runtime, see
//! `server.rs`); anything else (HTTP/2's preface, from any gRPC client) is
//! put back in front of the stream and goes to the public server. Both
//! servers offer every service, so only the scheduling differs.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use fuddle_transport::Coalescing;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Uri;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// What a peer writes first on an internal connection. As long as
/// HTTP/2's client preface ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), so that
/// telling the two apart takes one fixed-size read.
pub const INTERNAL_PREAMBLE: &[u8; 24] = b"FUDDLE-INTERNAL-CONN\r\n\r\n";

/// How long a new connection may take to send its first 24 bytes.
const PREAMBLE_WAIT: Duration = Duration::from_secs(10);

/// Connections waiting for a server, per kind. Small: the servers take
/// them at once.
const QUEUE: usize = 64;

/// An accepted connection, with the bytes read to classify it put back.
pub struct Conn {
    /// Read before the stream itself; empty for internal connections.
    prefix: Bytes,
    /// The connection. Public connections hold h2's writes until a flush
    /// that yields first (see the `fuddle-transport` crate); peers'
    /// connections, whose few messages each are on the write path, write
    /// at once.
    stream: Coalescing<TcpStream>,
}

impl Conn {
    fn new(prefix: Bytes, stream: TcpStream, coalesce: bool) -> Conn {
        Conn {
            prefix,
            stream: Coalescing::new(stream, coalesce),
        }
    }

    /// The connection, with its socket moved to the I/O driver of the
    /// runtime this runs on. A socket is driven by the runtime that
    /// registered it, and every connection is accepted on the main
    /// runtime; a peer's connection served on the Raft runtime but left
    /// there had each request's bytes wake a main runtime thread, which
    /// then woke the Raft runtime's: about 2.7 context switches per
    /// registration on each follower, with one writer.
    pub fn on_current_runtime(self) -> io::Result<Conn> {
        let Conn { prefix, stream } = self;
        let coalesce = stream.coalesces();
        let stream = stream
            .into_inner()
            .map_err(|_| io::Error::other("a connection moved after it was written to"))?;
        let stream = TcpStream::from_std(stream.into_std()?)?;
        Ok(Conn::new(prefix, stream, coalesce))
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.get_ref().connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The receiving ends of the two kinds of connection.
pub struct Routed {
    /// Clients' connections.
    pub public: mpsc::Receiver<io::Result<Conn>>,
    /// Peers' connections.
    pub internal: mpsc::Receiver<io::Result<Conn>>,
}

/// Accepts connections until `shutdown` and sorts them by their first
/// bytes. Returns the two queues; the accept loop runs as a task on the
/// current runtime.
pub fn route(listener: TcpListener, shutdown: CancellationToken) -> Routed {
    let (public_tx, public) = mpsc::channel(QUEUE);
    let (internal_tx, internal) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: a pause, not
                    // an end (as tonic's own accept loop treats it).
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Nagle's algorithm with delayed ACKs adds ~40 ms to replies
            // written in several pieces.
            let _ = stream.set_nodelay(true);
            let (public_tx, internal_tx) = (public_tx.clone(), internal_tx.clone());
            // Classified in its own task: a connection slow to speak must
            // not hold up the others.
            tokio::spawn(async move {
                match tokio::time::timeout(PREAMBLE_WAIT, classify(stream)).await {
                    Ok(Ok((conn, true))) => {
                        let _ = internal_tx.send(Ok(conn)).await;
                    }
                    Ok(Ok((conn, false))) => {
                        let _ = public_tx.send(Ok(conn)).await;
                    }
                    // Closed or silent before saying anything gRPC could
                    // answer: nothing to serve.
                    Ok(Err(_)) | Err(_) => {}
                }
            });
        }
    });
    Routed { public, internal }
}

/// Reads up to 24 bytes; internal when they are the preamble.
async fn classify(mut stream: TcpStream) -> io::Result<(Conn, bool)> {
    let mut first = [0u8; INTERNAL_PREAMBLE.len()];
    let mut filled = 0;
    while filled < first.len() {
        let n = stream.read(&mut first[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
        // Stop as soon as the bytes cannot be the preamble: a client that
        // sent fewer than 24 bytes and waits for an answer is served.
        if first[..filled] != INTERNAL_PREAMBLE[..filled] {
            break;
        }
    }
    if filled == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let internal = &first[..filled] == INTERNAL_PREAMBLE;
    let prefix = if internal {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&first[..filled])
    };
    Ok((Conn::new(prefix, stream, !internal), internal))
}

/// Connects to a peer for internal traffic: from `local_ip` when set (so
/// that a peer, or a fault-injecting proxy in tests, sees which node calls),
/// with Nagle off, starting with the preamble.
pub async fn connect_internal(
    uri: Uri,
    local_ip: Option<IpAddr>,
) -> io::Result<TokioIo<Coalescing<TcpStream>>> {
    let (host, port) = fuddle_transport::host_and_port(&uri)?;
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            socket.bind((ip, 0).into())?;
        }
        match socket.connect(addr).await {
            Ok(mut stream) => {
                stream.set_nodelay(true)?;
                stream.write_all(INTERNAL_PREAMBLE).await?;
                // Coalescing: hyper queues a request's headers, body and
                // end of stream from different polls, and h2 wrote each in
                // a `writev` of its own, three per AppendEntries; held for
                // one yield they leave in one send.
                return Ok(TokioIo::new(Coalescing::new(stream, true)));
            }
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    #[tokio::test]
    async fn the_preamble_marks_an_internal_connection_and_is_consumed() {
        let (mut client, server) = pair().await;
        client.write_all(INTERNAL_PREAMBLE).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let (mut conn, internal) = classify(server).await.unwrap();
        assert!(internal);
        let mut rest = [0u8; 5];
        conn.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
    }

    #[tokio::test]
    async fn anything_else_is_public_and_read_back_whole() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nand more";
        let (mut client, server) = pair().await;
        client.write_all(preface).await.unwrap();
        let (mut conn, internal) = classify(server).await.unwrap();
        assert!(!internal);
        let mut all = vec![0u8; preface.len()];
        conn.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, preface);
    }

    #[tokio::test]
    async fn a_short_greeting_is_served_without_waiting_for_more() {
        // A client that sends 3 bytes and waits must not be held until the
        // 24th byte: the first byte that differs decides.
        let (mut client, server) = pair().await;
        client.write_all(b"GET").await.unwrap();
        let (mut conn, internal) = classify(server).await.unwrap();
        assert!(!internal);
        let mut got = [0u8; 3];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET");
    }

    #[tokio::test]
    async fn a_connection_closed_at_once_is_dropped() {
        let (client, server) = pair().await;
        drop(client);
        assert!(classify(server).await.is_err());
    }

    #[tokio::test]
    async fn public_connections_coalesce_and_internal_ones_do_not() {
        let (mut client, server) = pair().await;
        client.write_all(b"PRI").await.unwrap();
        let (conn, internal) = classify(server).await.unwrap();
        assert!(!internal && conn.stream.coalesces());

        let (mut client, server) = pair().await;
        client.write_all(INTERNAL_PREAMBLE).await.unwrap();
        let (conn, internal) = classify(server).await.unwrap();
        assert!(internal && !conn.stream.coalesces());
    }

    #[test]
    fn a_connection_moved_to_another_runtime_is_driven_by_it() {
        use std::io::{Read, Write};
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let accepting = runtime();
        let mut client = None;
        let conn = accepting.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            peer.write_all(INTERNAL_PREAMBLE).unwrap();
            client = Some(peer);
            let (server, _) = listener.accept().await.unwrap();
            classify(server).await.unwrap().0
        });
        let mut client = client.unwrap();
        // The runtime that accepted it is gone, with its I/O driver: a
        // socket still registered there could not be read any more.
        drop(accepting);
        runtime().block_on(async {
            let mut conn = conn.on_current_runtime().unwrap();
            client.write_all(b"hello").unwrap();
            let mut got = [0u8; 5];
            conn.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            conn.write_all(b"back").await.unwrap();
            conn.flush().await.unwrap();
        });
        let mut back = [0u8; 4];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"back");
    }
}
