//! A replica's LiteFS stays attached to a primary that went silent (its host crashed, froze or
//! was cut off): LiteFS reads its replication stream with no deadline, so it never asks the
//! lease API for the new primary, and no node becomes primary until TCP gives up, minutes later.
//! This module cuts such a stream (docs/architecture.md, "A silent primary").
//!
//! Under `litefs-py run`, every [`EVERY`] during a failover (every [`SETTLED_EVERY`] otherwise),
//! [`Unsticker`] compares the local LiteFS's
//! connections to primaries (its established TCP connections to an address where a LiteFS that
//! held the lease advertised itself) with what this node's view says: a connection to any
//! LiteFS but the one the view names as primary's, seen for [`GRACE`] in a row, is shut down
//! (`pidfd_getfd(2)` of LiteFS's socket, then `shutdown(2)`). LiteFS then reads end-of-stream
//! and asks the lease API again. Cutting a healthy stream would only cost a reconnect: LiteFS
//! resumes from its position.
//!
//! Plain logic ([`Staleness`], the `/proc` parsing) is separate from the thread and the system
//! calls, for the unit tests.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the connections are looked at while this node's view names no primary (a
/// failover).
pub const EVERY: Duration = Duration::from_millis(250);
/// How often while it names one (this node or the holder): a stream to an older primary is
/// then rare (the failover before has cut it), and reading the kernel's TCP tables costs CPU on a node with many connections (a
/// busy proxy leaves thousands in TIME_WAIT, and the tables list them all).
pub const SETTLED_EVERY: Duration = Duration::from_secs(5);
/// How long a connection must be stale before it is cut: longer than a moment of `electing` in
/// a healthy cluster, shorter than a new leader's wait before its first grant (≈1.5 s), so that
/// cutting adds nothing to a failover.
pub const GRACE: Duration = Duration::from_millis(1000);
/// How long a resolved advertise URL is trusted.
const RESOLVE_TTL: Duration = Duration::from_secs(10);

/// What this node knows about the primary, for the unsticker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Primaryship {
    /// The advertise URL of the LiteFS the replicated holder record names (the last one that
    /// held the lease), whether or not it holds it now.
    pub holder_url: Option<String>,
    /// This node's view names that holder as the primary now (another node, whose LiteFS
    /// holds the lease): a stream to it is right. Otherwise no stream is.
    pub holder_is_primary: bool,
    /// This node's view says this node is primary (its LiteFS holds the lease, so it streams
    /// from nobody).
    pub this_node_primary: bool,
}

impl Primaryship {
    /// A primary is known: the cluster is not in a failover, and the watch can look seldom.
    fn settled(&self) -> bool {
        self.holder_is_primary || self.this_node_primary
    }
}

/// One established TCP connection of the LiteFS process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub fd: i32,
    pub inode: u64,
    pub remote: SocketAddr,
}

/// Which of LiteFS's streams have been stale for [`GRACE`].
#[derive(Debug, Default)]
pub struct Staleness {
    since: HashMap<u64, Instant>,
}

impl Staleness {
    /// `streams`: LiteFS's connections to a primary; `right`: the addresses of the primary it
    /// should stream from (empty: none). Returns the connections to cut now.
    pub fn due(
        &mut self,
        now: Instant,
        streams: &[Conn],
        right: &BTreeSet<SocketAddr>,
    ) -> Vec<Conn> {
        let stale: Vec<&Conn> = streams
            .iter()
            .filter(|c| !right.contains(&c.remote))
            .collect();
        // Forget connections that ended or became right.
        self.since
            .retain(|inode, _| stale.iter().any(|c| c.inode == *inode));
        stale
            .into_iter()
            .filter(|c| now.duration_since(*self.since.entry(c.inode).or_insert(now)) >= GRACE)
            .copied()
            .collect()
    }
}

/// The running unsticker; stopped (and its thread joined, within one round) on drop.
pub struct Unsticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Unsticker {
    /// Watches the LiteFS process `pid`; `primaryship` reads this node's view and the holder
    /// record (it must not block).
    pub fn start(pid: i32, primaryship: impl Fn() -> Primaryship + Send + 'static) -> Unsticker {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("litefs-unstick".into())
            .spawn(move || run(pid, &primaryship, &s))
            .map_err(|e| tracing::error!("cannot start the LiteFS stream watch: {e}"))
            .ok();
        Unsticker { stop, handle }
    }
}

impl Drop for Unsticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(pid: i32, primaryship: &dyn Fn() -> Primaryship, stop: &AtomicBool) {
    let mut staleness = Staleness::default();
    let mut resolver = Resolver::default();
    // Every address a holder advertised while this ran: where LiteFS's streams can go.
    let mut primaries: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut warned = false;
    let mut last_scan: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(EVERY);
        let p = primaryship();
        let every = if p.settled() { SETTLED_EVERY } else { EVERY };
        if last_scan.is_some_and(|t| t.elapsed() < every) {
            continue;
        }
        last_scan = Some(Instant::now());
        let holder = p
            .holder_url
            .as_deref()
            .map(|u| resolver.resolve(u))
            .unwrap_or_default();
        primaries.extend(holder.iter().copied());
        if primaries.is_empty() {
            // No LiteFS ever held the lease: nothing to stream from yet.
            continue;
        }
        let right = if p.holder_is_primary {
            holder
        } else {
            BTreeSet::new()
        };
        let conns = match connections(pid) {
            Ok(c) => c,
            // LiteFS exited (the supervisor sees to that) or /proc is not readable.
            Err(_) => continue,
        };
        let streams: Vec<Conn> = conns
            .into_iter()
            .filter(|c| primaries.contains(&c.remote))
            .collect();
        for c in staleness.due(Instant::now(), &streams, &right) {
            match cut(pid, c) {
                Ok(()) => tracing::warn!(
                    remote = %c.remote,
                    "LiteFS was still attached to a primary that is not the primary any more \
                     (silent for {GRACE:?}): its stream is cut, so that it follows the new one"
                ),
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(
                        remote = %c.remote,
                        "cannot cut LiteFS's stream from a former primary ({e}): it stays \
                         attached until TCP gives up, and failover waits for that"
                    );
                }
                Err(_) => {}
            }
        }
    }
}

#[derive(Default)]
struct Resolver {
    cache: HashMap<String, (Instant, BTreeSet<SocketAddr>)>,
}

impl Resolver {
    fn resolve(&mut self, url: &str) -> BTreeSet<SocketAddr> {
        if let Some((at, addrs)) = self.cache.get(url)
            && at.elapsed() < RESOLVE_TTL
        {
            return addrs.clone();
        }
        let addrs = host_port(url)
            .and_then(|hp| hp.to_socket_addrs().ok())
            .map(|a| a.collect())
            .unwrap_or_default();
        self.cache
            .insert(url.to_string(), (Instant::now(), BTreeSet::clone(&addrs)));
        addrs
    }
}

/// `host:port` of an `http://host[:port][/...]` URL (port 80 if absent).
fn host_port(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    })
}

/// The established TCP connections of process `pid` (its network namespace's tables, its fds).
pub fn connections(pid: i32) -> std::io::Result<Vec<Conn>> {
    let mut by_inode: HashMap<u64, SocketAddr> = HashMap::new();
    for table in ["tcp", "tcp6"] {
        match std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            Ok(text) => by_inode.extend(established(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let Some(inode) = socket_inode(&target.to_string_lossy()) else {
            continue;
        };
        if let Some(remote) = by_inode.get(&inode) {
            out.push(Conn {
                fd,
                inode,
                remote: *remote,
            });
        }
    }
    Ok(out)
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Inode -> remote address of the ESTABLISHED entries of a `/proc/net/tcp{,6}` table.
fn established(table: &str) -> impl Iterator<Item = (u64, SocketAddr)> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        if f.len() < 10 || f[3] != "01" {
            return None;
        }
        let remote = hex_addr(f[2])?;
        let inode = f[9].parse().ok()?;
        Some((inode, remote))
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6): the kernel prints each 32-bit word of
/// the address as a host-order number, and the port as a number.
fn hex_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            // A v4 peer on a dual-stack socket: compare it as v4.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Shuts down LiteFS's socket `c` (a duplicate of it, taken with `pidfd_getfd`: the socket is
/// shared, so LiteFS's own read ends).
fn cut(pid: i32, c: Conn) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let last = std::io::Error::last_os_error;
    // SAFETY: plain system calls; every descriptor they return is owned right away.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(last());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), c.fd, 0);
        if fd < 0 {
            return Err(last());
        }
        let fd = OwnedFd::from_raw_fd(fd as i32);
        // The fd number may have been reused since the scan: only that very socket is cut.
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return Err(last());
        }
        if st.st_ino != c.inode {
            return Ok(());
        }
        if libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) != 0 {
            return Err(last());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4E22 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A1B2 0100007F:4E22 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000200007F:4E22 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1
   1: 00000000000000000000000001000000:9C41 00000000000000000000000001000000:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn the_tables_give_established_connections_by_inode() {
        let v4: Vec<_> = established(TCP).collect();
        assert_eq!(v4, vec![(2222, "127.0.0.1:20002".parse().unwrap())]);
        let v6: Vec<_> = established(TCP6).collect();
        assert_eq!(
            v6,
            vec![
                (3333, "127.0.0.2:20002".parse().unwrap()),
                (4444, "[::1]:8080".parse().unwrap()),
            ]
        );
        assert_eq!(socket_inode("socket:[2222]"), Some(2222));
        assert_eq!(socket_inode("pipe:[2222]"), None);
        assert_eq!(hex_addr("0100007F"), None);
    }

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(
            host_port("http://node-a:20202").as_deref(),
            Some("node-a:20202")
        );
        assert_eq!(host_port("http://node-a/x").as_deref(), Some("node-a:80"));
        assert_eq!(host_port("http://[::1]:5/").as_deref(), Some("[::1]:5"));
        assert_eq!(host_port("http://[::1]").as_deref(), Some("[::1]:80"));
        assert_eq!(host_port("https://a:1"), None);
        assert_eq!(host_port("http:///"), None);
    }

    fn conn(inode: u64, remote: &str) -> Conn {
        Conn {
            fd: inode as i32,
            inode,
            remote: remote.parse().unwrap(),
        }
    }

    #[test]
    fn a_stream_is_cut_only_after_being_stale_for_the_grace() {
        let mut s = Staleness::default();
        let t0 = Instant::now();
        let old = conn(1, "127.0.0.1:20001");
        let new = conn(2, "127.0.0.1:20002");
        let right: BTreeSet<SocketAddr> = [new.remote].into();
        let none = BTreeSet::new();
        // The stream to the primary is never due.
        assert!(s.due(t0, &[new], &right).is_empty());
        assert!(s.due(t0 + GRACE * 5, &[new], &right).is_empty());
        // No primary known: stale from now, due after the grace.
        assert!(s.due(t0, &[old], &none).is_empty());
        assert!(s.due(t0 + GRACE / 2, &[old], &none).is_empty());
        assert_eq!(s.due(t0 + GRACE, &[old], &none), vec![old]);
        // Right again in between: the clock starts over.
        let mut s = Staleness::default();
        let right_old: BTreeSet<SocketAddr> = [old.remote].into();
        assert!(s.due(t0, &[old], &none).is_empty());
        assert!(s.due(t0 + GRACE / 2, &[old], &right_old).is_empty());
        assert!(s.due(t0 + GRACE, &[old], &none).is_empty());
        assert_eq!(s.due(t0 + GRACE * 2, &[old, new], &right), vec![old]);
    }

    #[test]
    fn this_process_connections_are_found_and_a_cut_ends_the_peer_read() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let pid = std::process::id() as i32;
        let found: Vec<Conn> = connections(pid)
            .unwrap()
            .into_iter()
            .filter(|c| c.remote == addr)
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        cut(pid, found[0]).unwrap();
        // The client's blocked read ends: what LiteFS's stream read sees.
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }
}
