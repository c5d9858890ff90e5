//! The list of node addresses a client may talk to, one lazily made
//! connection per node, and which node is current.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fuddle_transport::Coalescing;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, transport_reason};
use crate::options::ClientOptions;

/// HTTP/2 pings keep idle streams (sessions, subscriptions) honest: a node
/// that vanished without closing the connection is noticed within seconds.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The nodes of the cluster as the client was told about them.
pub(crate) struct Nodes {
    nodes: Vec<Node>,
    /// The node calls go to first: the last one that answered.
    current: AtomicUsize,
}

/// One node: its address and, once made, a connection to it.
pub(crate) struct Node {
    /// The address as the user gave it (`host:port`), for messages.
    pub(crate) addr: String,
    endpoint: Endpoint,
    /// The connection, made on first use and dropped after a transport
    /// failure so that the next use connects afresh and a failure to do so
    /// is recognised as such (the request was surely not sent).
    channel: Mutex<Option<Channel>>,
}

impl Nodes {
    /// Checks and stores the addresses; connects to none of them yet.
    pub(crate) fn new(addrs: Vec<String>, options: &ClientOptions) -> Result<Self, Error> {
        if addrs.is_empty() {
            return Err(Error::InvalidAddress {
                addr: String::new(),
                reason: "no address given".into(),
            });
        }
        let nodes = addrs
            .into_iter()
            .map(|addr| Node::new(addr, options))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            nodes,
            current: AtomicUsize::new(0),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The index of the node to try first.
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.nodes.len()
    }

    pub(crate) fn get(&self, index: usize) -> &Node {
        &self.nodes[index % self.nodes.len()]
    }

    /// Remembers the node that just answered.
    pub(crate) fn settle(&self, index: usize) {
        self.current.store(index, Ordering::Relaxed);
    }

    /// Moves on from a node that failed. Only the first of several
    /// concurrent callers that saw the same node fail moves the pointer, so
    /// a burst of failures does not skip healthy nodes.
    pub(crate) fn advance_from(&self, index: usize) {
        let next = (index + 1) % self.nodes.len();
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl Node {
    fn new(addr: String, options: &ClientOptions) -> Result<Self, Error> {
        let addr = addr.trim().to_owned();
        let invalid = |reason: &str| Error::InvalidAddress {
            addr: addr.clone(),
            reason: reason.into(),
        };
        if addr.is_empty() {
            return Err(invalid("empty address"));
        }
        // Users write `host:port`; a full URL is accepted as well so that a
        // copied `http://…` address also works.
        let uri = if addr.contains("://") {
            addr.clone()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|_| invalid("expected HOST:PORT"))?;
        if endpoint.uri().host().is_none_or(str::is_empty) {
            return Err(invalid("expected HOST:PORT"));
        }
        if endpoint.uri().port().is_none() {
            return Err(invalid("missing port (expected HOST:PORT)"));
        }
        let endpoint = endpoint
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        Ok(Self {
            addr,
            endpoint,
            channel: Mutex::new(None),
        })
    }

    /// The connection to this node, made now if there is none.
    pub(crate) async fn channel(&self, connect_timeout: Duration) -> Result<Channel, Error> {
        if let Some(channel) = self.channel.lock().expect("channel lock").clone() {
            return Ok(channel);
        }
        // The endpoint's own connect timeout covers the TCP connect; this
        // one also bounds name resolution and the HTTP/2 handshake.
        let connected = tokio::time::timeout(
            connect_timeout,
            self.endpoint
                .connect_with_connector(tower::service_fn(connect_coalescing)),
        )
        .await;
        let channel = match connected {
            Ok(Ok(channel)) => channel,
            Ok(Err(err)) => {
                return Err(Error::Unreachable {
                    addr: self.addr.clone(),
                    reason: transport_reason(&err),
                });
            }
            Err(_) => {
                return Err(Error::Unreachable {
                    addr: self.addr.clone(),
                    reason: format!("no connection within {}", humanize(connect_timeout)),
                });
            }
        };
        *self.channel.lock().expect("channel lock") = Some(channel.clone());
        Ok(channel)
    }

    /// Drops the connection after a transport failure.
    pub(crate) fn forget(&self) {
        *self.channel.lock().expect("channel lock") = None;
    }
}

/// A short human form of a duration: `3s`, `500ms`.
pub(crate) fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 && duration.as_secs() > 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Connects to a node over TCP, with writes that wait for one yield
/// before they leave ([`Coalescing`]): hyper queues a call's headers,
/// message and end of stream from different polls, and h2 wrote each in a
/// `writev` of its own, so every call cost the node three reads. With 256
/// concurrent writers (`fuddle-bench write --clients 256`), the nodes spent
/// 123-171 us of CPU per registration against 135-180 us, and wrote
/// 8 139-11 495 against 7 692-10 325 registrations/s (four interleaved
/// pairs). The endpoint's connect timeout still applies (tonic wraps any
/// connector in it).
async fn connect_coalescing(uri: Uri) -> std::io::Result<TokioIo<Coalescing<TcpStream>>> {
    let stream = TcpStream::connect(fuddle_transport::host_and_port(&uri)?).await?;
    stream.set_nodelay(true)?;
    Ok(TokioIo::new(Coalescing::new(stream, true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(addrs: &[&str]) -> Result<Nodes, Error> {
        Nodes::new(
            addrs.iter().map(|a| a.to_string()).collect(),
            &ClientOptions::default(),
        )
    }

    #[test]
    fn addresses_need_host_and_port() {
        assert!(nodes(&["127.0.0.1:8220", "http://node-2:8220"]).is_ok());
        assert!(matches!(nodes(&[]), Err(Error::InvalidAddress { .. })));
        assert!(matches!(
            nodes(&["127.0.0.1"]),
            Err(Error::InvalidAddress { .. })
        ));
        assert!(matches!(nodes(&[" "]), Err(Error::InvalidAddress { .. })));
        assert!(matches!(
            nodes(&["a b:1"]),
            Err(Error::InvalidAddress { .. })
        ));
    }

    #[test]
    fn advancing_wraps_and_ignores_stale_failures() {
        let nodes = nodes(&["a:1", "b:1", "c:1"]).unwrap();
        assert_eq!(nodes.current(), 0);
        nodes.advance_from(0);
        assert_eq!(nodes.current(), 1);
        // A second caller that also saw node 0 fail does not skip node 1.
        nodes.advance_from(0);
        assert_eq!(nodes.current(), 1);
        nodes.advance_from(1);
        nodes.advance_from(2);
        assert_eq!(nodes.current(), 0);
        nodes.settle(2);
        assert_eq!(nodes.current(), 2);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(humanize(Duration::from_secs(3)), "3s");
        assert_eq!(humanize(Duration::from_millis(1500)), "1500ms");
    }
}
