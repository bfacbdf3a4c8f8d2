//! A cluster of `litefs-py run` processes with the real LiteFS, on loopback: every node its own
//! directory (raft data, LiteFS data, LiteFS's mount at `lower/`, the shim at `mnt/`), its own
//! ports, its own lease API and LiteFS HTTP address, and an app that only sleeps.
//!
//! Every process is ours and is only ever signalled by its PID: each node's `litefs-py run`
//! (a child of the test), and the LiteFS it started (its PID from the run's log, checked against
//! its command line before every signal). The guards ([`RunCluster`], and each node's
//! [`Run`]) stop them and detach any mount left, also when a test panics.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::run::Run;
use super::{SECRET, Sampler, http, is_mounted, read_opt, wait_for};

/// The app every node runs: nothing but a long sleep (the tests use SQLite themselves).
pub const SLEEPING_APP: &str = "exec sleep 100000";

/// What LiteFS's `GET /info` says (v0.5.14: `{"clusterID", "isPrimary", "candidate",
/// "primary": {"hostname"}, ...}`; `primary` is absent when none is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub is_primary: bool,
    /// The primary's hostname as this LiteFS knows it (a replica's, connected or connecting).
    pub primary: Option<String>,
}

/// `GET /info` with short timeouts: `None` if LiteFS does not answer.
pub fn litefs_info(addr: &str) -> Option<Info> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(1000))).ok()?;
    s.set_write_timeout(Some(Duration::from_millis(300))).ok()?;
    let req = format!("GET /info HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if head.split(' ').nth(1)? != "200" {
        return None;
    }
    // Take the JSON object whatever the framing (Content-Length or chunked).
    let body = &body[body.find('{')?..=body.rfind('}')?];
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(Info {
        is_primary: v["isPrimary"].as_bool()?,
        primary: v["primary"]["hostname"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_string),
    })
}

pub fn hostname(id: u64) -> String {
    format!("node-{id}")
}

/// Nodes 1..=n of one cluster (node 1 bootstraps), each a `litefs-py run` with the test fault
/// layer enabled.
pub struct RunCluster {
    pub nodes: BTreeMap<u64, Run>,
    /// Removed last (fields drop in order, after `Drop::drop`).
    _tmp: tempfile::TempDir,
}

impl RunCluster {
    /// Writes the configs and starts every node; returns at once (see [`RunCluster::wait_ready`]).
    pub fn start(litefs: &Path, n: u64) -> RunCluster {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("secret");
        fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let peers: BTreeMap<u64, String> = (1..=n)
            .map(|id| (id, format!("127.0.0.1:{}", super::run::free_port())))
            .collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let root = tmp.path().join(format!("n{id}"));
            // The shipped `lease.ttl` default, not the 3 s the one-node tests pin: failover
            // timings measured here are what users get.
            let mut run = Run::node(root, litefs, id, &peers, Some(&secret), |y| {
                y.replace("  ttl: 3s\n", "")
            });
            run.env
                .push(("LITEFS_PY_TEST_FAULTS".to_string(), "1".to_string()));
            nodes.insert(id, run);
        }
        for run in nodes.values_mut() {
            run.start(SLEEPING_APP);
        }
        RunCluster { nodes, _tmp: tmp }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: u64) -> &Run {
        &self.nodes[&id]
    }

    pub fn mnt(&self, id: u64) -> PathBuf {
        self.node(id).path("mnt")
    }

    pub fn db(&self, id: u64, name: &str) -> PathBuf {
        self.mnt(id).join(name)
    }

    pub fn info(&self, id: u64) -> Option<Info> {
        litefs_info(&self.node(id).litefs_http)
    }

    pub fn role(&self, id: u64) -> Option<String> {
        fs::read_to_string(self.mnt(id).join(".role"))
            .ok()
            .map(|s| s.trim_end().to_string())
    }

    /// The shim's `.primary`: `Ok(None)` when absent (this node's LiteFS is primary).
    pub fn primary_file(&self, id: u64) -> std::io::Result<Option<String>> {
        read_opt(&self.mnt(id).join(".primary"))
    }

    /// Panics with the node's log if its `litefs-py run` exited.
    pub fn assert_running(&mut self, ids: &[u64]) {
        for id in ids {
            let run = self.nodes.get_mut(id).unwrap();
            if let Some(status) = run.exited() {
                panic!("node {id}'s litefs-py run exited with {status}");
            }
        }
    }

    /// Whether node `id`'s shim and its LiteFS say the same: on the primary `.primary` is
    /// absent and `/info` says `isPrimary`; elsewhere `.primary` names the primary `/info`
    /// names. `Err` says how they differ.
    pub fn shim_agrees_with_litefs(&self, id: u64) -> Result<Option<String>, String> {
        let info = self.info(id).ok_or("LiteFS's /info does not answer")?;
        let file = self
            .primary_file(id)
            .map_err(|e| format!("reading .primary: {e}"))?;
        let role = self.role(id);
        match (info.is_primary, &file) {
            (true, None) if role.as_deref() == Some("primary") => Ok(None),
            (false, Some(f)) => {
                let named = f.trim_end();
                if named.is_empty() || info.primary.as_deref() != Some(named) {
                    return Err(format!(".primary {f:?}, /info {info:?}, .role {role:?}"));
                }
                Ok(Some(named.to_string()))
            }
            _ => Err(format!(".primary {file:?}, /info {info:?}, .role {role:?}")),
        }
    }

    /// Waits until exactly one of `ids` is primary, by LiteFS (`/info`) and by the shim
    /// (`.role`, `.primary`), and every other one is a replica of it by both; returns it.
    pub fn wait_one_primary(&mut self, ids: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running(ids);
            if let Some(p) = self.one_primary(ids) {
                return p;
            }
            if Instant::now() > deadline {
                let views: Vec<String> = ids
                    .iter()
                    .map(|id| {
                        format!(
                            "{id}: .role {:?} .primary {:?} /info {:?}",
                            self.role(*id),
                            self.primary_file(*id),
                            self.info(*id)
                        )
                    })
                    .collect();
                panic!("nodes {ids:?}: no single primary within {timeout:?}: {views:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn one_primary(&self, ids: &[u64]) -> Option<u64> {
        let mut primary = None;
        for id in ids {
            match self.shim_agrees_with_litefs(*id).ok()? {
                None if primary.is_none() => primary = Some(*id),
                None => return None,
                Some(_) => {}
            }
        }
        let primary = primary?;
        let name = hostname(primary);
        ids.iter()
            .filter(|id| **id != primary)
            .all(|id| {
                self.role(*id).as_deref() == Some("replica")
                    && self.shim_agrees_with_litefs(*id).ok().flatten().as_deref()
                        == Some(name.as_str())
            })
            .then_some(primary)
    }

    /// kill -9 of node `id`'s `litefs-py run` and of its LiteFS, both by PID (LiteFS's checked
    /// against its command line first); then detaches LiteFS's dead mount. The shim's own
    /// watchdog unmounts `mnt/` (waited for, bounded).
    pub fn kill9(&mut self, id: u64) {
        let run = self.nodes.get_mut(&id).unwrap();
        let litefs = run
            .litefs_pid()
            .expect("LiteFS's PID (from the log, checked)");
        run.kill9();
        // SAFETY: LiteFS as that run started it (its command line names our litefs.yml, read
        // just now: `litefs_pid` checks it).
        unsafe { libc::kill(litefs, libc::SIGKILL) };
        let mnt = run.path("mnt");
        wait_for(
            Duration::from_secs(10),
            "the shim's watchdog to unmount",
            || (!is_mounted(&mnt)).then_some(()),
        );
        wait_for(Duration::from_secs(10), "LiteFS to die", || {
            run.litefs_pid().is_none().then_some(())
        });
        detach(&run.path("lower"));
    }

    /// Test fault layer on node `id`: drop raft RPCs to and from `blocked`.
    /// Cuts node `id` off from `blocked` (both ways); its elections stay on.
    pub fn set_blocked(&self, id: u64, blocked: &[u64]) {
        self.set_faults(id, blocked, true);
    }

    /// The fault layer of node `id`: cut off from `blocked`; `elect: false` keeps it from
    /// running for leader on its own (it still votes, and still takes a leadership transfer).
    pub fn set_faults(&self, id: u64, blocked: &[u64], elect: bool) {
        let body = format!("{{\"blocked\":{blocked:?},\"elect\":{elect}}}");
        let r = http(
            &self.node(id).http_addr,
            "PUT",
            "/test/faults",
            Some(SECRET),
            &body,
        );
        assert!(
            matches!(r, Some((200, _))),
            "setting faults on node {id}: {r:?}"
        );
    }
}

/// Lazily unmounts whatever is mounted at `path` (a dead LiteFS's mount).
pub fn detach(path: &Path) {
    while is_mounted(path) {
        let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path we own; MNT_DETACH works on a dead FUSE mount.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "could not detach {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            return;
        }
    }
}

impl Drop for RunCluster {
    fn drop(&mut self) {
        // SIGTERM to every node at once, so that their shutdowns overlap; each `Run` then waits
        // for its own (bounded) and kills and detaches what is left.
        for run in self.nodes.values_mut() {
            if let Some(pid) = run.pid() {
                // SAFETY: our own child, not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        self.nodes.clear();
    }
}

/// Polls every LiteFS's `/info` every 3 ms for a whole test (a node that does not answer, dead
/// or restarting, is not primary); records every round in which two said `isPrimary` at once.
pub fn info_sampler(addrs: Vec<(u64, String)>) -> Sampler {
    Sampler::every(Duration::from_millis(3), move || {
        addrs
            .iter()
            .filter(|(_, a)| litefs_info(a).is_some_and(|i| i.is_primary))
            .map(|(id, _)| *id)
            .collect()
    })
}
