//! A replica's LiteFS stays attached to a primary that went silent (its host crashed, froze or
//! was cut off): LiteFS reads its replication stream with no deadline, so it never asks the
//! lease API for the new primary, and no node becomes primary until TCP gives up, minutes later.
//! This module cuts such a stream (docs/architecture.md, "A silent primary").
//!
//! Under `litefs-py run`, every [`EVERY`], [`Unsticker`] compares the local LiteFS's connections
//! to primaries (its established TCP connections to an address where a LiteFS that held the
//! lease advertised itself) with what this node's view says: a connection to any LiteFS but the
//! one the view names as primary's, seen for [`GRACE`] in a row, is shut down. LiteFS's sockets
//! are found through `/proc/<pid>/fd` and asked for their peer and state through a duplicate
//! (`pidfd_getfd(2)`), so a look costs a few system calls per LiteFS socket, whatever the number
//! of connections on the host; the cut is `shutdown(2)` of such a duplicate. LiteFS then reads
//! end-of-stream and asks the lease API again. Cutting a healthy stream would only cost a
//! reconnect: LiteFS resumes from its position.
//!
//! Plain logic ([`Staleness`], the URL parsing) is separate from the thread and the system calls,
//! for the unit tests.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often LiteFS's connections are looked at.
pub const EVERY: Duration = Duration::from_millis(250);
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
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(EVERY);
        let p = primaryship();
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
            // LiteFS exited (the supervisor sees to that).
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                if !warned {
                    warned = true;
                    tracing::warn!(
                        "cannot look at LiteFS's connections ({e}): a stream from a silent \
                         primary stays attached until TCP gives up, and failover waits for that"
                    );
                }
                continue;
            }
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

/// The established TCP connections of process `pid`, each with the peer's address.
pub fn connections(pid: i32) -> std::io::Result<Vec<Conn>> {
    let pidfd = pidfd_open(pid)?;
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
        // Only sockets: never a duplicate of LiteFS's database files or its FUSE device.
        let Some(inode) = std::fs::read_link(entry.path())
            .ok()
            .and_then(|t| socket_inode(&t.to_string_lossy()))
        else {
            continue;
        };
        let dup = match duplicate(&pidfd, fd, inode) {
            Ok(Some(d)) => d,
            // Closed or reused since the listing.
            Ok(None) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => continue,
            Err(e) => return Err(e),
        };
        if let Some(remote) = established_peer(&dup) {
            out.push(Conn { fd, inode, remote });
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

fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain system call; the descriptor it returns is owned right away.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::os::fd::OwnedFd::from_raw_fd(pidfd as i32))
    }
}

/// A duplicate of the process's descriptor `fd` (`pidfd_getfd`, which needs ptrace rights over
/// it), if it still is the socket `inode` (the number may have been reused since it was listed).
fn duplicate(
    pidfd: &std::os::fd::OwnedFd,
    fd: i32,
    inode: u64,
) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let last = std::io::Error::last_os_error;
    // SAFETY: plain system calls; the descriptor returned is owned right away, and `st` is a
    // plain struct the kernel fills.
    unsafe {
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if dup < 0 {
            return Err(last());
        }
        let dup = OwnedFd::from_raw_fd(dup as i32);
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(dup.as_raw_fd(), &mut st) != 0 {
            return Err(last());
        }
        Ok((st.st_ino == inode).then_some(dup))
    }
}

/// The peer of a TCP socket in state ESTABLISHED; `None` for any other socket or state.
fn established_peer(fd: &std::os::fd::OwnedFd) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    // SAFETY: `info` is a plain struct the kernel fills, `len` its size; a socket that is not
    // TCP answers an error, and so does anything that is not a socket.
    let state = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        if libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        ) != 0
        {
            return None;
        }
        info.tcpi_state
    };
    // TCP_ESTABLISHED in the kernel's numbering (include/net/tcp_states.h).
    if state != 1 {
        return None;
    }
    let peer = socket2::SockRef::from(fd).peer_addr().ok()?.as_socket()?;
    // A v4 peer on a dual-stack socket: compare it as v4.
    Some(match peer {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(peer, |v4| SocketAddr::new(IpAddr::V4(v4), v6.port())),
        v4 => v4,
    })
}

/// Shuts down LiteFS's socket `c` (a duplicate of it: the socket is shared, so LiteFS's own read
/// ends).
fn cut(pid: i32, c: Conn) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let Some(fd) = duplicate(&pidfd_open(pid)?, c.fd, c.inode)? else {
        // Closed or reused since the look: nothing of that stream is left to cut.
        return Ok(());
    };
    // SAFETY: a plain system call on a descriptor we own.
    if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_give_their_inode() {
        assert_eq!(socket_inode("socket:[2222]"), Some(2222));
        assert_eq!(socket_inode("pipe:[2222]"), None);
        assert_eq!(socket_inode("/dev/fuse"), None);
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
        // Beside it: a UDP socket "connected" to the same address, and the listener itself.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect(addr).unwrap();
        let all = connections(pid).unwrap();
        let found: Vec<Conn> = all.iter().filter(|c| c.remote == addr).copied().collect();
        assert_eq!(found.len(), 1, "only the TCP client's connection: {all:?}");
        let client_port = client.local_addr().unwrap().port();
        assert!(
            all.iter().any(|c| c.remote.port() == client_port),
            "the accepted side is established too: {all:?}"
        );
        cut(pid, found[0]).unwrap();
        // The client's blocked read ends: what LiteFS's stream read sees.
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }
}
