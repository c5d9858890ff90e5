//! A cluster of real `fuddle-node` processes with a fault-injecting proxy
//! in front of every node.
//!
//! Node `i` binds its own loopback IP, `127.0.<c>.<10+i>` (`c` differs per
//! cluster, so clusters of concurrent tests never share an IP), on a port
//! chosen before it starts. It advertises its proxy (`--advertise`), so
//! the other nodes' Raft, forwarding and read-index calls pass through the
//! proxy, and its real address for gossip (`--advertise-gossip`), which
//! only discovers nodes. Test clients talk to the real addresses, except
//! the clients a scenario partitions, which get proxies of their own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use fuddle_tests::{NodeProcess, wait_for_membership};
use nix::sys::signal::Signal;
use tokio::runtime::Handle;

use super::proxy::{Proxy, ProxyRuntime, Rule};

/// Arguments every node of a fault scenario gets (on top of the harness's
/// fast timings): partitions must never remove a node from the
/// membership.
pub const FAULT_ARGS: &[&str] = &["--dead-node-timeout", "10m"];

/// The third octet of the next cluster's IPs.
static NEXT_NET: AtomicU8 = AtomicU8::new(1);

/// The proxies in front of the nodes, and the faults between nodes.
pub struct Net {
    /// The IP each node connects from.
    ips: Vec<IpAddr>,
    /// The proxy in front of each node.
    proxies: Vec<Proxy>,
    runtime: ProxyRuntime,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("ips", &self.ips).finish()
    }
}

impl Net {
    /// The runtime the proxies run on.
    pub fn handle(&self) -> Handle {
        self.runtime.handle()
    }

    /// The IP node `i` connects from.
    pub fn ip(&self, i: usize) -> IpAddr {
        self.ips[i]
    }

    /// The proxy in front of node `i`.
    pub fn proxy(&self, i: usize) -> &Proxy {
        &self.proxies[i]
    }

    /// Changes the rule for connections that node `from` makes to node `to`.
    pub fn update(&self, from: usize, to: usize, change: impl FnOnce(&mut Rule)) {
        self.proxies[to].update(self.ips[from], change);
    }

    /// Splits the nodes into `groups`; a node in no group is alone.
    /// Nodes of different groups can no longer connect to each other, and
    /// their existing connections are cut.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        let n = self.ips.len();
        let group_of = |i: usize| groups.iter().position(|g| g.contains(&i));
        for from in 0..n {
            for to in 0..n {
                if from == to {
                    continue;
                }
                let apart = match (group_of(from), group_of(to)) {
                    (Some(a), Some(b)) => a != b,
                    _ => true,
                };
                if apart {
                    self.update(from, to, |r| r.blocked = true);
                }
            }
        }
    }

    /// Cuts node `i` off from every other node.
    pub fn isolate(&self, i: usize) {
        let others: Vec<usize> = (0..self.ips.len()).filter(|&j| j != i).collect();
        self.partition(&[vec![i], others]);
    }

    /// One-way loss: node `from`'s requests to node `to` arrive, but the
    /// answers are lost (or, with `requests`, the requests are lost).
    pub fn lose(&self, from: usize, to: usize, requests: bool) {
        self.update(from, to, |r| {
            if requests {
                r.drop_to_target = true;
            } else {
                r.drop_from_target = true;
            }
        });
    }

    /// Holds every chunk between `from` and `to` (both ways on the
    /// connections `from` makes) for `delay`.
    pub fn delay(&self, from: usize, to: usize, delay: Duration) {
        self.update(from, to, |r| r.delay = delay);
    }

    /// Lifts every fault between nodes.
    pub fn heal(&self) {
        for proxy in &self.proxies {
            proxy.heal();
        }
    }
}

/// Picks a port that is free for both TCP and UDP on `ip`.
fn free_port(ip: IpAddr) -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind(SocketAddr::new(ip, 0)).expect("a TCP port on the node's IP");
        let port = tcp.local_addr().expect("the port").port();
        if UdpSocket::bind(SocketAddr::new(ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP on {ip}");
}

/// A cluster of nodes behind proxies.
pub struct FaultCluster {
    /// The nodes, in start order (`n1` bootstraps).
    pub nodes: Vec<NodeProcess>,
    /// The proxies and the faults between nodes.
    pub net: Net,
    /// Whether each node is stopped by SIGSTOP.
    paused: Vec<bool>,
}

impl std::fmt::Debug for FaultCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultCluster")
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl FaultCluster {
    /// Starts `n` nodes behind proxies (the first bootstraps, the others
    /// join it) with [`FAULT_ARGS`] and `extra` arguments, and waits for
    /// the full membership with a leader.
    pub fn start(n: usize, extra: &[&str]) -> FaultCluster {
        FaultCluster::start_with(n, extra, &[])
    }

    /// [`FaultCluster::start`] with `per_node[i]` added to node `i`'s
    /// arguments (after `extra`, so they win).
    pub fn start_with(n: usize, extra: &[&str], per_node: &[Vec<String>]) -> FaultCluster {
        let net_octet = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        let runtime = ProxyRuntime::new();
        let mut ips = Vec::new();
        let mut proxies = Vec::new();
        let mut binds = Vec::new();
        for i in 0..n {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, net_octet, 10 + i as u8));
            let bind = SocketAddr::new(ip, free_port(ip));
            proxies.push(Proxy::start(&runtime.handle(), bind));
            ips.push(ip);
            binds.push(bind);
        }
        let mut nodes: Vec<NodeProcess> = Vec::new();
        let seed = binds[0].to_string();
        for i in 0..n {
            let advertise = proxies[i].addr().to_string();
            let gossip = binds[i].to_string();
            let mut args: Vec<&str> =
                vec!["--advertise", &advertise, "--advertise-gossip", &gossip];
            args.extend_from_slice(FAULT_ARGS);
            args.extend_from_slice(extra);
            if let Some(own) = per_node.get(i) {
                args.extend(own.iter().map(String::as_str));
            }
            let join: Vec<&str> = if i == 0 { Vec::new() } else { vec![&seed] };
            let node = NodeProcess::start_bound(
                &format!("n{}", i + 1),
                &binds[i].to_string(),
                &join,
                &args,
            );
            assert_eq!(
                node.addr(),
                binds[i].to_string(),
                "the node bound elsewhere"
            );
            nodes.push(node);
        }
        let voters = match n.min(5) {
            v if v % 2 == 0 => v - 1,
            v => v,
        };
        wait_for_membership(&nodes, voters, n - voters);
        FaultCluster {
            paused: vec![false; n],
            nodes,
            net: Net {
                ips,
                proxies,
                runtime,
            },
        }
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The real address of every node, for clients.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr().to_owned()).collect()
    }

    /// The position of the node with id `id`.
    pub fn position(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id() == id)
    }

    /// Whether node `i` runs and is not paused.
    pub fn is_up(&mut self, i: usize) -> bool {
        !self.paused[i] && self.nodes[i].is_running()
    }

    /// Whether node `i` is paused.
    pub fn is_paused(&self, i: usize) -> bool {
        self.paused[i]
    }

    /// SIGKILL node `i` (a paused node too).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
        self.paused[i] = false;
        // Other nodes must see a refused connection, as they would without
        // the proxy, not one accepted and closed.
        self.net.proxies[i].set_refusing(true);
    }

    /// Restarts killed node `i` on its data dir and address.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart_same_addr();
        self.net.proxies[i].set_refusing(false);
    }

    /// SIGSTOP node `i`.
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].signal(Signal::SIGSTOP);
        self.paused[i] = true;
    }

    /// SIGCONT node `i`.
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal(Signal::SIGCONT);
        self.paused[i] = false;
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL, but wake it so that its
        // drop-time log is complete and nothing waits on it.
        for i in 0..self.nodes.len() {
            if self.paused[i] && self.nodes[i].is_running() {
                self.nodes[i].signal(Signal::SIGCONT);
            }
        }
    }
}
