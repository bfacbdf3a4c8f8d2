//! Loopback ports for the nodes a test starts.
//!
//! A port found free is free only until someone binds it, and our nodes bind theirs only when
//! they start. Two rules follow, both learnt in CI (a cluster's node 1 raft and node 2 LiteFS
//! once got the same port):
//! - a port or block is never handed out twice by one process ([`free_port`], [`Block`]);
//! - a cluster, whose nodes are killed and restarted on the same addresses, takes its ports from
//!   a [`Block`] below the kernel's ephemeral range (32768 and up by default), so that no
//!   outgoing connection's source port can take a stopped node's port meanwhile.

use std::net::TcpListener;
use std::sync::Mutex;

/// Where blocks are looked for: below the default ephemeral range.
const BLOCK_RANGE: std::ops::Range<u16> = 20000..32000;

/// Ports per node in a cluster block: raft, http, lease API, LiteFS's HTTP API.
const PER_NODE: u16 = 4;
/// Node ids 1..=MAX_NODE get ports in a cluster block.
pub const MAX_NODE: u64 = 9;

fn handed_out() -> std::sync::MutexGuard<'static, Vec<(u16, u16)>> {
    static HANDED_OUT: Mutex<Vec<(u16, u16)>> = Mutex::new(Vec::new());
    HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner())
}

fn overlaps(taken: &[(u16, u16)], base: u16, len: u16) -> bool {
    taken.iter().any(|(b, l)| base < b + l && *b < base + len)
}

/// A loopback port free right now (from the kernel's ephemeral range) and never handed out
/// before by this process. For one-off processes; a cluster uses a [`Block`].
pub fn free_port() -> std::io::Result<u16> {
    let mut taken = handed_out();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !overlaps(&taken, port, 1) {
            taken.push((port, 1));
            return Ok(port);
        }
    }
}

/// `127.0.0.1:<a free port>`.
pub fn free_addr() -> std::io::Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

/// `len` consecutive loopback ports, each free when reserved, not handed out to anyone else by
/// this process, below the ephemeral range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    base: u16,
    len: u16,
}

impl Block {
    /// The search starts at a place that depends on the PID, so that two processes (the tests
    /// and a benchmark) try different blocks first.
    pub fn reserve(len: u16) -> std::io::Result<Block> {
        let mut taken = handed_out();
        let slots = (BLOCK_RANGE.end - BLOCK_RANGE.start) / len;
        let first = (std::process::id() % u32::from(slots)) as u16;
        for i in 0..slots {
            let base = BLOCK_RANGE.start + ((first + i) % slots) * len;
            if overlaps(&taken, base, len) {
                continue;
            }
            if (base..base + len).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
                taken.push((base, len));
                return Ok(Block { base, len });
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("no free block of {len} loopback ports in {BLOCK_RANGE:?}"),
        ))
    }

    /// A block for nodes 1..=[`MAX_NODE`] of one cluster.
    pub fn for_cluster() -> std::io::Result<Block> {
        Block::reserve(PER_NODE * MAX_NODE as u16)
    }

    pub fn port(&self, i: u16) -> u16 {
        assert!(i < self.len, "port {i} of a block of {}", self.len);
        self.base + i
    }

    pub fn addr(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.port(i))
    }

    /// Node `id`'s addresses in a block from [`Block::for_cluster`].
    pub fn node(&self, id: u64) -> NodePorts {
        assert!((1..=MAX_NODE).contains(&id), "node id {id} has no ports");
        let first = (id as u16 - 1) * PER_NODE;
        NodePorts {
            raft: self.addr(first),
            http: self.addr(first + 1),
            lease: self.addr(first + 2),
            litefs: self.addr(first + 3),
        }
    }
}

/// One node's addresses (`host:port`): on loopback, or (see [`NodePorts::on_ip`]) on the
/// address of a network namespace of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePorts {
    /// `node.raft-addr`.
    pub raft: String,
    /// `node.http-addr`: status, metrics, management, the test fault layer.
    pub http: String,
    /// `lease.addr`: every node its own (nodes on one host cannot share it).
    pub lease: String,
    /// `litefs.http-addr` (used by `run` nodes only).
    pub litefs: String,
}

impl NodePorts {
    /// The same ports with raft, http and LiteFS on `ip` (a node in a network namespace of its
    /// own, reached by the others there); the lease API stays on loopback, which each namespace
    /// has of its own (litefs-py refuses it anywhere else).
    pub fn on_ip(&self, ip: &str) -> NodePorts {
        let mv = |a: &str| match a.rsplit_once(':') {
            Some((_, port)) => format!("{ip}:{port}"),
            None => a.to_string(),
        };
        NodePorts {
            raft: mv(&self.raft),
            http: mv(&self.http),
            lease: self.lease.clone(),
            litefs: mv(&self.litefs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }

    #[test]
    fn blocks_do_not_overlap_and_give_each_node_its_own_ports() {
        let a = Block::for_cluster().unwrap();
        let b = Block::for_cluster().unwrap();
        assert!(
            a.base + a.len <= b.base || b.base + b.len <= a.base,
            "{a:?} {b:?}"
        );
        assert!(a.base + a.len <= 32768, "{a:?} reaches the ephemeral range");
        let mut all = Vec::new();
        for id in 1..=MAX_NODE {
            let n = a.node(id);
            all.extend([n.raft, n.http, n.lease, n.litefs]);
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        // Every port of the block was free when reserved.
        assert!(TcpListener::bind(a.addr(0)).is_ok());
    }

    #[test]
    fn a_node_on_its_own_address_keeps_its_ports_and_the_lease_api_on_loopback() {
        let n = Block::for_cluster().unwrap().node(2);
        let m = n.on_ip("10.1.2.3");
        assert_eq!(m.raft, n.raft.replace("127.0.0.1", "10.1.2.3"));
        assert_eq!(m.http, n.http.replace("127.0.0.1", "10.1.2.3"));
        assert_eq!(m.litefs, n.litefs.replace("127.0.0.1", "10.1.2.3"));
        assert_eq!(m.lease, n.lease);
    }
}
