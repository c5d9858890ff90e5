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
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
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
    /// The connection.
    stream: TcpStream,
    /// Bytes h2 wrote that are not yet on the socket (public connections
    /// only; see [`Conn::poll_flush`]).
    unsent: BytesMut,
    /// Whether a flush of `unsent` has already let every other ready task
    /// run once; the next flush writes.
    yielded: bool,
    /// Whether h2 wrote more while the connection yielded.
    gained: bool,
    /// When yielding is worth it, from what the last yields gathered.
    backoff: YieldBackoff,
    /// Whether writes wait for a flush that first yields (public
    /// connections) or go straight to the socket (peers' connections,
    /// whose few messages are on the write path and gain nothing from
    /// waiting).
    coalesce: bool,
}

/// At most this many unsent bytes; past it a write goes out at once.
const UNSENT_MAX: usize = 64 * 1024;

/// The longest run of flushes that write at once after fruitless yields.
const MAX_SKIP: u32 = 64;

/// Whether a public connection's next writes wait for a yield (see
/// [`Conn::poll_flush`]). A yield pays when other streams of the same
/// connection queue frames meanwhile: with many subscriptions on one
/// connection it gathers about thirty events per send. With one
/// subscription per connection it gathers nothing and costs an extra poll
/// of the connection per event (node CPU per delivery 19.7 µs without
/// yielding, 22.5–29.8 µs with, 10 000 subscribers on 10 000 connections).
/// So after a yield that gathered nothing, the connection writes at once
/// for the next 1, 2, 4 ... up to `MAX_SKIP` flushes before it tries a yield
/// again; one that gathered something makes it yield every time again.
#[derive(Debug, Default, Clone, PartialEq)]
struct YieldBackoff {
    /// Flushes left that write at once.
    skip: u32,
    /// How many flushes the next fruitless yield skips, less one.
    next: u32,
}

impl YieldBackoff {
    /// Whether writes should wait for a yield now.
    fn yields(&self) -> bool {
        self.skip == 0
    }

    /// A flush with nothing held back.
    fn flushed_at_once(&mut self) {
        self.skip = self.skip.saturating_sub(1);
    }

    /// A yield ended, having gathered more writes or not.
    fn yield_ended(&mut self, gained: bool) {
        if gained {
            *self = YieldBackoff::default();
        } else {
            let skip = (self.next + 1).min(MAX_SKIP);
            self.skip = skip;
            self.next = (skip * 2 - 1).min(MAX_SKIP);
        }
    }
}

impl Conn {
    fn new(prefix: Bytes, stream: TcpStream, coalesce: bool) -> Conn {
        Conn {
            prefix,
            stream,
            unsent: BytesMut::new(),
            yielded: false,
            gained: false,
            backoff: YieldBackoff::default(),
            coalesce,
        }
    }

    /// Writes `unsent` to the socket, all of it or pending. The emptied
    /// buffer is freed, not kept: a node may hold 10 000 subscribers'
    /// connections, mostly idle, and each would otherwise keep the
    /// largest burst it ever sent (up to `UNSENT_MAX`).
    fn poll_send_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unsent.is_empty() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.unsent))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unsent.advance(n);
        }
        self.unsent = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
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
        let this = &mut *self;
        if !this.coalesce || (this.unsent.is_empty() && !this.backoff.yields()) {
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        }
        this.gained |= this.yielded;
        if this.unsent.len() + buf.len() > UNSENT_MAX {
            ready!(this.poll_send_unsent(cx))?;
            if buf.len() > UNSENT_MAX {
                return Pin::new(&mut this.stream).poll_write(cx, buf);
            }
        }
        this.unsent.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// Always false, although the socket could. h2 decides from this how
    /// to buffer: with vectored writes it keeps every DATA payload over 256
    /// bytes out of its write buffer and must write it out before the next
    /// frame, so each subscription event (a few hundred bytes) cost one
    /// `writev` (41% of a node's samples under fan-out to 10 000
    /// subscribers). Without, it copies payloads up to 1 KiB into its
    /// 16 KiB buffer, and the events of many streams leave in one write.
    fn is_write_vectored(&self) -> bool {
        false
    }

    /// Yields once before writing what h2 buffered. h2 writes when it
    /// has no more frames ready, and under fan-out that is after the few
    /// streams that ran since its last write: about four events per `send`
    /// with 10 000 subscribers (`strace -c`), and the sends were a third
    /// of a node's time. Waking itself and returning pending puts the
    /// connection's task behind every task already woken (tokio requeues a
    /// task that woke itself at the back), so the other streams of that
    /// entry queue their frames first, and h2 adds them before the flush
    /// that writes.
    ///
    /// A yield that gathers nothing is not repeated at once (see
    /// [`YieldBackoff`]).
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.unsent.is_empty() && !this.yielded {
            if this.coalesce {
                this.backoff.flushed_at_once();
            }
        } else {
            if !this.yielded {
                this.yielded = true;
                this.gained = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(this.poll_send_unsent(cx))?;
            this.yielded = false;
            this.backoff.yield_ended(this.gained);
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_unsent(cx))?;
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
) -> io::Result<TokioIo<TcpStream>> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an address without a host"))?;
    let port = uri
        .port_u16()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an address without a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
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
                return Ok(TokioIo::new(stream));
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

    /// Writes on a public connection wait in `unsent` until a flush (which
    /// yields once first); everything arrives, in order, including writes
    /// past `UNSENT_MAX` that go out at once and what a shutdown flushes.
    #[tokio::test]
    async fn a_public_connection_holds_writes_until_a_flush_and_keeps_their_order() {
        let (mut client, server) = pair().await;
        client.write_all(b"PRI").await.unwrap();
        let (mut conn, internal) = classify(server).await.unwrap();
        assert!(!internal && conn.coalesce);

        let mut sent = Vec::new();
        for i in 0..50u8 {
            let piece = vec![i; 100 + usize::from(i)];
            conn.write_all(&piece).await.unwrap();
            sent.extend_from_slice(&piece);
        }
        assert!(!conn.unsent.is_empty(), "small writes wait for a flush");
        conn.flush().await.unwrap();
        assert!(conn.unsent.is_empty(), "a flush writes them");
        assert_eq!(conn.unsent.capacity(), 0, "and frees the buffer");

        // Nothing else was written while that flush yielded, so the next
        // write goes out at once (see `YieldBackoff`).
        let big = vec![7u8; UNSENT_MAX + 1000];
        conn.write_all(b"before the big one").await.unwrap();
        sent.extend_from_slice(b"before the big one");
        assert!(
            conn.unsent.is_empty(),
            "written at once after a fruitless yield"
        );
        conn.write_all(&big).await.unwrap();
        sent.extend_from_slice(&big);
        conn.write_all(b"tail").await.unwrap();
        sent.extend_from_slice(b"tail");
        conn.shutdown().await.unwrap();

        let mut got = Vec::new();
        let mut prefix = [0u8; 3];
        conn.read_exact(&mut prefix).await.unwrap();
        assert_eq!(&prefix, b"PRI");
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes arrive whole and in order");
    }

    #[tokio::test]
    async fn an_internal_connection_writes_at_once() {
        let (mut client, server) = pair().await;
        client.write_all(INTERNAL_PREAMBLE).await.unwrap();
        let (mut conn, internal) = classify(server).await.unwrap();
        assert!(internal && !conn.coalesce);
        conn.write_all(b"now").await.unwrap();
        assert!(conn.unsent.is_empty());
        let mut got = [0u8; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"now");
    }

    /// Fruitless yields space themselves out 1, 2, 4 ... 64 flushes apart;
    /// one that gathers something makes every flush yield again.
    #[test]
    fn yields_that_gather_nothing_back_off_and_one_that_gathers_resets() {
        let mut b = YieldBackoff::default();
        assert!(b.yields());
        let mut gaps = Vec::new();
        for _ in 0..9 {
            assert!(b.yields());
            b.yield_ended(false);
            let mut gap = 0;
            while !b.yields() {
                b.flushed_at_once();
                gap += 1;
            }
            gaps.push(gap);
        }
        assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        b.yield_ended(true);
        assert_eq!(b, YieldBackoff::default());
        b.yield_ended(false);
        assert_eq!(b.skip, 1, "and starts over from one");
    }
}
