//! Socket plumbing shared by the node and the SDK: [`Coalescing`], a socket
//! whose writes wait for a flush, and whose flush first lets every other
//! ready task run once. It sees bytes and flushes, and knows nothing of
//! h2, tonic or Fuddle.
//!
//! h2 writes when it has no more frames ready. On a busy runtime that is
//! after the few streams that ran since its last write: with 10 000
//! subscribers over 16 connections, about five events left per `send`
//! (`strace -c`), and the sends were a third of a node's time. Holding
//! what h2 writes until it flushes, and answering that flush once with
//! "pending" after waking the connection's own task, puts the task behind
//! every task already woken (tokio requeues a task that woke itself at the
//! back), so the other streams woken by the same entry queue their frames
//! first and leave in the same send (about thirty events each).
//!
//! The same holds for one request: hyper queues a request's headers, body
//! and end of stream from different polls, and h2 wrote each in a `writev`
//! of its own; held for one yield they leave in one send.
//!
//! A yield only pays when something else writes meanwhile. A connection
//! whose yields gather nothing (one subscription per connection, say)
//! writes at once for a while before it tries again ([`YieldBackoff`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The host (without an IPv6 address's brackets) and port a connector
/// should dial for `uri`, or why it cannot: the node's connector to its
/// peers and the SDK's to nodes both start here.
pub fn host_and_port(uri: &http::Uri) -> io::Result<(&str, u16)> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let host = uri
        .host()
        .ok_or_else(|| invalid("an address without a host"))?;
    let port = uri
        .port_u16()
        .ok_or_else(|| invalid("an address without a port"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// At most this many unsent bytes; past it a write goes out at once.
const UNSENT_MAX: usize = 64 * 1024;

/// The longest run of flushes that write at once after fruitless yields.
const MAX_SKIP: u32 = 64;

/// A socket (or any byte stream) whose writes may be held for a yield.
/// Held bytes leave only on a flush or a shutdown, so its user must flush
/// after writing, as h2 does after every batch of frames.
pub struct Coalescing<S> {
    /// The socket.
    stream: S,
    /// Bytes written that are not yet on the socket.
    unsent: BytesMut,
    /// Whether a flush of `unsent` has already let every other ready task
    /// run once; the next flush writes.
    yielded: bool,
    /// Whether more was written while the connection yielded.
    gained: bool,
    /// When yielding is worth it, from what the last yields gathered.
    backoff: YieldBackoff,
    /// Whether writes are ever held; when not, this is the socket itself.
    enabled: bool,
}

impl<S> Coalescing<S> {
    /// Wraps `stream`; `enabled: false` passes every write straight on.
    pub fn new(stream: S, enabled: bool) -> Coalescing<S> {
        Coalescing {
            stream,
            unsent: BytesMut::new(),
            yielded: false,
            gained: false,
            backoff: YieldBackoff::default(),
            enabled,
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Whether writes may be held.
    pub fn coalesces(&self) -> bool {
        self.enabled
    }

    /// The socket back, if no written bytes are held (they would be lost);
    /// else the wrapper itself.
    pub fn into_inner(self) -> Result<S, Self> {
        if self.unsent.is_empty() {
            Ok(self.stream)
        } else {
            Err(self)
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalescing<S> {
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

impl<S: AsyncRead + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.enabled || (this.unsent.is_empty() && !this.backoff.yields()) {
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

    /// Always false, although a socket could. h2 decides from this how
    /// to buffer: with vectored writes it keeps every DATA payload over 256
    /// bytes out of its write buffer and must write it out before the next
    /// frame, so each subscription event (a few hundred bytes) cost one
    /// `writev` (41% of a node's samples under fan-out to 10 000
    /// subscribers). Without, it copies payloads up to 1 KiB into its
    /// 16 KiB buffer, and the events of many streams leave in one write.
    fn is_write_vectored(&self) -> bool {
        false
    }

    /// Yields once before writing what is held, unless the backoff says
    /// yields gather nothing here.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.unsent.is_empty() && !this.yielded {
            if this.enabled {
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

/// Whether a connection's next writes wait for a yield. A yield pays when
/// other streams of the same connection queue frames meanwhile. With one
/// subscription per connection it gathers nothing and costs an extra poll
/// of the connection per event (node CPU per delivery 19.6–20.5 µs without
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    /// Writes wait in `unsent` until a flush (which yields once first);
    /// everything arrives, in order, including writes past `UNSENT_MAX`
    /// that go out at once and what a shutdown flushes.
    #[tokio::test]
    async fn writes_wait_for_a_flush_and_keep_their_order() {
        let (mut peer, socket) = pair().await;
        let mut conn = Coalescing::new(socket, true);

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
        conn.write_all(b"before the big one").await.unwrap();
        sent.extend_from_slice(b"before the big one");
        assert!(
            conn.unsent.is_empty(),
            "written at once after a fruitless yield"
        );
        let big = vec![7u8; UNSENT_MAX + 1000];
        conn.write_all(&big).await.unwrap();
        sent.extend_from_slice(&big);
        conn.write_all(b"tail").await.unwrap();
        sent.extend_from_slice(b"tail");
        conn.shutdown().await.unwrap();

        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes arrive whole and in order");
    }

    #[tokio::test]
    async fn a_disabled_one_writes_at_once() {
        let (mut peer, socket) = pair().await;
        let mut conn = Coalescing::new(socket, false);
        conn.write_all(b"now").await.unwrap();
        assert!(conn.unsent.is_empty());
        let mut got = [0u8; 3];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"now");
    }

    #[test]
    fn host_and_port_come_from_the_uri_without_brackets() {
        let uri: http::Uri = "http://[::1]:8220".parse().unwrap();
        assert_eq!(host_and_port(&uri).unwrap(), ("::1", 8220));
        let uri: http::Uri = "http://node-a:7000".parse().unwrap();
        assert_eq!(host_and_port(&uri).unwrap(), ("node-a", 7000));
        let uri: http::Uri = "http://node-a".parse().unwrap();
        let err = host_and_port(&uri).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("without a port"), "{err}");
    }

    /// Fruitless yields space themselves out 1, 2, 4 ... 64 flushes apart;
    /// one that gathers something makes every flush yield again.
    #[test]
    fn yields_that_gather_nothing_back_off_and_one_that_gathers_resets() {
        let mut b = YieldBackoff::default();
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
