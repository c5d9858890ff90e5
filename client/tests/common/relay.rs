//! A TCP relay in front of one node. Clients given the relay's address talk
//! to the real node through it; the test decides what the link does:
//! carry bytes both ways, hold back the node's answers (the requests still
//! arrive and are carried out), or cut every connection and refuse new ones
//! (the node keeps running, the client cannot reach it).
//!
//! The relay forwards bytes unchanged and never parses them: it is a faulty
//! network link, not a stand-in for the node.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Carries bytes both ways.
    Pass,
    /// Carries requests to the node; holds the node's bytes back until the
    /// mode changes.
    HoldAnswers,
    /// Closes every connection and accepts none (each new one is closed at
    /// once).
    Cut,
}

pub struct Relay {
    /// `host:port` to give a client.
    pub addr: String,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on a free local port and relays to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (mode, _) = watch::channel(Mode::Pass);
        let task = tokio::spawn(accept(listener, target, mode.subscribe()));
        Relay { addr, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.set(Mode::Cut);
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, mode: watch::Receiver<Mode>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if *mode.borrow() == Mode::Cut {
            drop(inbound);
            continue;
        }
        let mode = mode.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (from_client, to_client) = inbound.into_split();
            let (from_node, to_node) = outbound.into_split();
            // When either direction stops, both sockets are dropped and
            // closed.
            tokio::select! {
                _ = pump(from_client, to_node, mode.clone(), false) => {}
                _ = pump(from_node, to_client, mode, true) => {}
            }
        });
    }
}

/// Copies one direction of a connection while the mode lets it.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    answers: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.wait_for(|m| *m == Mode::Cut) => return,
        };
        // Bytes read while answers are held wait here, not in the socket:
        // checked after the read, so an answer already on its way is held
        // too.
        let cut = match mode
            .wait_for(|m| *m == Mode::Cut || !(answers && *m == Mode::HoldAnswers))
            .await
        {
            Ok(m) => *m == Mode::Cut,
            Err(_) => true,
        };
        if cut || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
