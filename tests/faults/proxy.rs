//! A fault-injecting TCP proxy.
//!
//! One [`Proxy`] stands in front of one node: it listens on `127.0.0.1:0`
//! and forwards every accepted connection to the node's real address. The
//! node advertises the proxy's address, so every Raft, forwarding and
//! read-index call another node makes to it passes through here. Nodes
//! connect from their own loopback IP (`--bind 127.0.x.y`), so the peer IP
//! of an accepted connection names the calling node, and faults are set
//! per source IP:
//!
//! - **blocked**: new connections from that source are closed at once and
//!   existing ones are cut (a partition);
//! - **drop to target** / **drop from target**: the bytes of one direction
//!   are read and thrown away (one-way loss: requests vanish, or requests
//!   arrive and the answers vanish). A connection that lost bytes is cut
//!   when the loss ends, since its byte stream is no longer whole;
//! - **delay**: every chunk is held this long before it is passed on.
//!
//! The proxies run on a runtime of their own ([`ProxyRuntime`]), so that a
//! test thread blocked on a child process never stalls them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long the proxy waits for the node to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The faults applied to the connections of one source IP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rule {
    /// Refuse new connections and cut existing ones.
    pub blocked: bool,
    /// Throw away the bytes the source sends (requests).
    pub drop_to_target: bool,
    /// Throw away the bytes the target sends back (answers).
    pub drop_from_target: bool,
    /// Hold every chunk this long before passing it on.
    pub delay: Duration,
}

impl Rule {
    fn drops(&self, direction: Direction) -> bool {
        match direction {
            Direction::ToTarget => self.drop_to_target,
            Direction::FromTarget => self.drop_from_target,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToTarget,
    FromTarget,
}

/// A runtime for proxies, separate from whatever the test runs on.
pub struct ProxyRuntime {
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for ProxyRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyRuntime")
    }
}

impl ProxyRuntime {
    /// A two-thread runtime.
    pub fn new() -> ProxyRuntime {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("a runtime for the proxies");
        ProxyRuntime {
            runtime: Some(runtime),
        }
    }

    /// The runtime's handle.
    pub fn handle(&self) -> Handle {
        self.runtime
            .as_ref()
            .expect("a live runtime")
            .handle()
            .clone()
    }
}

impl Default for ProxyRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        // May be dropped from inside another runtime: never block here.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Counters, for a test to see that a fault was in effect.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections refused (closed at once) because their source was blocked.
    pub refused: AtomicU64,
    /// Connections cut by a rule change.
    pub cut: AtomicU64,
    /// Bytes thrown away by one-way loss.
    pub dropped_bytes: AtomicU64,
    /// Bytes passed on.
    pub forwarded_bytes: AtomicU64,
}

struct Shared {
    target: SocketAddr,
    rules: Mutex<HashMap<IpAddr, Rule>>,
    /// Bumped on every rule change; connections re-read their rule.
    generation: watch::Sender<u64>,
    closed: AtomicBool,
    /// The target is down (killed): connections are refused, as by a port
    /// nobody listens on, rather than accepted and closed.
    refusing: AtomicBool,
    stats: Stats,
}

impl Shared {
    fn rule(&self, ip: IpAddr) -> Rule {
        self.rules
            .lock()
            .expect("rules lock")
            .get(&ip)
            .copied()
            .unwrap_or_default()
    }
}

/// A proxy in front of one target address.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Listens on `127.0.0.1:0` (on `runtime`) and forwards to `target`.
    /// The listener exists when this returns, so its address can be
    /// advertised before the target starts.
    pub fn start(runtime: &Handle, target: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the proxy's address");
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            target,
            rules: Mutex::default(),
            generation,
            closed: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            stats: Stats::default(),
        });
        let accept_shared = shared.clone();
        let handle = runtime.clone();
        runtime.spawn(async move {
            let listener = {
                let _guard = handle.enter();
                TcpListener::from_std(listener).expect("a tokio listener")
            };
            accept_loop(listener, addr, accept_shared).await;
        });
        Proxy { addr, shared }
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Changes the rule of `source`'s connections.
    pub fn update(&self, source: IpAddr, change: impl FnOnce(&mut Rule)) {
        {
            let mut rules = self.shared.rules.lock().expect("rules lock");
            let rule = rules.entry(source).or_default();
            change(rule);
            if *rule == Rule::default() {
                rules.remove(&source);
            }
        }
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// The rule of `source`.
    pub fn rule(&self, source: IpAddr) -> Rule {
        self.shared.rule(source)
    }

    /// Whether to refuse connections (the target was killed) or accept
    /// them again (it restarts). Refusing closes the listening socket, so
    /// that callers see a refused connection as they would without the
    /// proxy, and cuts the connections in progress.
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Lifts every fault.
    pub fn heal(&self) {
        self.shared.rules.lock().expect("rules lock").clear();
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

/// Listens on `addr` again (after a refusal) with `SO_REUSEADDR`.
fn listen_again(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut generation = shared.generation.subscribe();
    let mut listener = Some(listener);
    loop {
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let refusing = shared.refusing.load(Ordering::SeqCst);
        if refusing {
            listener = None;
        } else if listener.is_none() {
            match listen_again(addr) {
                Ok(l) => listener = Some(l),
                Err(err) => {
                    eprintln!("proxy {addr}: cannot listen again yet: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(active) = &listener else {
            if generation.changed().await.is_err() {
                return;
            }
            continue;
        };
        let accepted = tokio::select! {
            accepted = active.accept() => accepted,
            changed = generation.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let Ok((inbound, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if shared.rule(peer.ip()).blocked || shared.refusing.load(Ordering::SeqCst) {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(inbound);
            continue;
        }
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(inbound, peer.ip(), shared.clone()));
    }
}

/// Why a connection ended.
enum End {
    /// Both directions finished.
    Done,
    /// A rule change (or the proxy's end) requires cutting it.
    Cut,
}

async fn connection(inbound: TcpStream, source: IpAddr, shared: Arc<Shared>) {
    let mut generation = shared.generation.subscribe();
    let outbound =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(shared.target)).await {
            Ok(Ok(stream)) => stream,
            // The target is down: the caller sees its connection closed, as it
            // would see a refused one.
            _ => return,
        };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (from_source, to_source) = inbound.into_split();
    let (from_target, to_target) = outbound.into_split();
    let tainted = Arc::new(AtomicBool::new(false));
    let up = pump(
        from_source,
        to_target,
        Direction::ToTarget,
        source,
        shared.clone(),
        tainted.clone(),
    );
    let down = pump(
        from_target,
        to_source,
        Direction::FromTarget,
        source,
        shared.clone(),
        tainted.clone(),
    );
    let pumps = async {
        let _ = tokio::join!(up, down);
        End::Done
    };
    let watcher = async {
        loop {
            if generation.changed().await.is_err()
                || shared.closed.load(Ordering::SeqCst)
                || shared.refusing.load(Ordering::SeqCst)
            {
                return End::Cut;
            }
            let rule = shared.rule(source);
            let lossy = rule.drop_to_target || rule.drop_from_target;
            if rule.blocked || (tainted.load(Ordering::SeqCst) && !lossy) {
                return End::Cut;
            }
        }
    };
    let end = tokio::select! {
        end = pumps => end,
        end = watcher => end,
    };
    if matches!(end, End::Cut) {
        shared.stats.cut.fetch_add(1, Ordering::Relaxed);
    }
    // Dropping the halves closes both sockets.
}

/// Copies one direction, applying the source's rule to every chunk. Chunks
/// go through a queue to a writer that holds each until its due time, so
/// a delay keeps the byte order.
async fn pump(
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    direction: Direction,
    source: IpAddr,
    shared: Arc<Shared>,
    tainted: Arc<AtomicBool>,
) {
    let (queue, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let write_shared = shared.clone();
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
            write_shared
                .stats
                .forwarded_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = writer.shutdown().await;
    };
    let read = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let rule = shared.rule(source);
            if rule.blocked {
                break;
            }
            if rule.drops(direction) {
                tainted.store(true, Ordering::SeqCst);
                shared
                    .stats
                    .dropped_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            if queue
                .send((Instant::now() + rule.delay, buffer[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
        // Dropping the queue lets the writer finish and half-close.
    };
    tokio::join!(read, write);
}
