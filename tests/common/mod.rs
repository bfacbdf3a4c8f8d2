//! Harness for the cluster tests: real `litefs-py` processes on loopback, each `mount` over its
//! own temp lower dir, raft data in a temp dir.
//!
//! Cleanup is by `Drop`, so it also happens when a test fails: every process we started is
//! killed by its own PID (never by name), its mount unmounted (its watchdog does it; we detach
//! anything left), and the temp dir removed. Every wait has a deadline. Needs root and
//! /dev/fuse, like the other real-mount tests.

#![allow(dead_code)] // each test binary uses part of the harness

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod run;
pub mod run_cluster;

pub const BIN: &str = env!("CARGO_BIN_EXE_litefs-py");
pub const SECRET: &str = "integration-test-secret";

/// Cluster tests run one at a time: they measure timing (lease bounds, failover) on a 2-core
/// machine, where two clusters at once would measure each other.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A block of 60 loopback ports for one test: raft at base+id, http at base+20+id, the lease API
/// at base+40+id (every node its own: nodes on one host cannot share `lease.addr`).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    base: u16,
}

impl Ports {
    /// Each test has its own slot (so its ports differ from every other test's); if the block
    /// is taken by something else on this machine, the next range up is tried.
    pub fn for_slot(slot: u16) -> Ports {
        for shift in 0..6u16 {
            let base = 29000 + shift * 2000 + slot * 60;
            if (base..base + 60).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
                return Ports { base };
            }
        }
        panic!("no free block of 60 ports for test slot {slot}");
    }

    pub fn raft(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base + id as u16)
    }

    pub fn http(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base + 20 + id as u16)
    }

    pub fn lease(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base + 40 + id as u16)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mount,
    Witness,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub id: u64,
    pub kind: Kind,
    pub bootstrap: bool,
    /// `cluster.peers` (ids; addresses come from the ports).
    pub peers: Vec<u64>,
    pub secret: String,
}

impl Spec {
    pub fn mount(id: u64, peers: &[u64]) -> Spec {
        Spec {
            id,
            kind: Kind::Mount,
            bootstrap: id == 1,
            peers: peers.to_vec(),
            secret: SECRET.to_string(),
        }
    }

    pub fn witness(id: u64, peers: &[u64]) -> Spec {
        Spec {
            kind: Kind::Witness,
            bootstrap: false,
            ..Spec::mount(id, peers)
        }
    }
}

pub fn hostname(id: u64) -> String {
    format!("host-{id}")
}

/// A process we started. Killed (by its PID) and reaped when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct NodeState {
    spec: Spec,
    proc: Option<Proc>,
}

pub struct Cluster {
    pub ports: Ports,
    nodes: BTreeMap<u64, NodeState>,
    dir: tempfile::TempDir,
}

pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == p))
}

/// Polls `f` until it returns `Some`, or panics with `what` and the cluster's state.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a virtual file: `Ok(None)` if it does not exist.
pub fn read_opt(path: &Path) -> std::io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A minimal HTTP/1.1 request (the harness must not depend on the code under test to talk to
/// it). Returns (status, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = auth
        .map(|a| format!("Authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

impl Cluster {
    pub fn new(slot: u16) -> Cluster {
        Cluster {
            ports: Ports::for_slot(slot),
            nodes: BTreeMap::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn node_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }
    pub fn mnt(&self, id: u64) -> PathBuf {
        self.node_dir(id).join("mnt")
    }
    pub fn config(&self, id: u64) -> PathBuf {
        self.node_dir(id).join("litefs-py.yml")
    }
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node_dir(id).join("raft")
    }
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.node_dir(id).join("log")
    }
    pub fn log(&self, id: u64) -> String {
        fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }
    pub fn mount_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.spec.kind == Kind::Mount)
            .map(|n| n.spec.id)
            .collect()
    }

    /// Writes the node's config, secret, lower dir and mountpoint.
    pub fn add(&mut self, spec: Spec) {
        let id = spec.id;
        let dir = self.node_dir(id);
        fs::create_dir_all(dir.join("lower")).unwrap();
        fs::create_dir_all(dir.join("mnt")).unwrap();
        fs::write(dir.join("secret"), format!("{}\n", spec.secret)).unwrap();
        let peers: String = spec
            .peers
            .iter()
            .map(|p| format!("    {p}: {}\n", self.ports.raft(*p)))
            .collect();
        let yaml = format!(
            "node:\n  id: {id}\n  hostname: {}\n  raft-addr: {}\n  http-addr: {}\ncluster:\n  bootstrap: {}\n  peers:\n{peers}  secret-file: {}\n  data-dir: {}\nmount:\n  dir: {}\n  lower: {}\nlease:\n  addr: {}\n",
            hostname(id),
            self.ports.raft(id),
            self.ports.http(id),
            spec.bootstrap,
            dir.join("secret").display(),
            self.data_dir(id).display(),
            self.mnt(id).display(),
            dir.join("lower").display(),
            self.ports.lease(id),
        );
        fs::write(self.config(id), yaml).unwrap();
        self.nodes.insert(id, NodeState { spec, proc: None });
    }

    /// Starts node `id` and waits until it serves (its mount is up, or its status answers).
    pub fn start(&mut self, id: u64) {
        let kind = self.nodes[&id].spec.kind;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .unwrap();
        let mut cmd = Command::new(BIN);
        match kind {
            Kind::Mount => cmd
                .arg("mount")
                .arg("--config")
                .arg(self.config(id))
                .arg(self.mnt(id)),
            Kind::Witness => cmd.arg("witness").arg("--config").arg(self.config(id)),
        };
        cmd.env("LITEFS_PY_TEST_FAULTS", "1")
            .env_remove("LITEFS_PY_SECRET")
            .env_remove("LITEFS_PY_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("spawn litefs-py");
        let node = self.nodes.get_mut(&id).unwrap();
        node.proc = Some(Proc { child });
        let mnt = self.mnt(id);
        let http_addr = self.ports.http(id);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let exited = self
                .nodes
                .get_mut(&id)
                .and_then(|n| n.proc.as_mut())
                .and_then(|p| p.child.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("node {id} exited with {status}:\n{}", self.log(id));
            }
            let up = match kind {
                Kind::Mount => is_mounted(&mnt) && mnt.join(".role").exists(),
                Kind::Witness => http(&http_addr, "GET", "/status", None, "").is_some(),
            };
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not start serving within 15s:\n{}",
                self.log(id)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn start_all(&mut self) {
        for id in self.ids() {
            self.start(id);
        }
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[&id].proc.is_some()
    }

    /// kill -9, then waits until its watchdog has unmounted (so it can be started again).
    pub fn kill9(&mut self, id: u64) {
        if let Some(p) = self.nodes.get_mut(&id).and_then(|n| n.proc.take()) {
            drop(p); // SIGKILL + wait, by PID
        }
        if self.nodes[&id].spec.kind == Kind::Mount {
            let mnt = self.mnt(id);
            wait_for(Duration::from_secs(10), "the watchdog to unmount", || {
                (!is_mounted(&mnt)).then_some(())
            });
        }
    }

    /// SIGTERM and a clean exit.
    pub fn stop(&mut self, id: u64) {
        if let Some(mut p) = self.nodes.get_mut(&id).and_then(|n| n.proc.take()) {
            unsafe { libc::kill(p.pid() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while p.child.try_wait().ok().flatten().is_none() {
                assert!(Instant::now() < deadline, "node {id} ignored SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn role(&self, id: u64) -> Option<String> {
        fs::read_to_string(self.mnt(id).join(".role"))
            .ok()
            .map(|s| s.trim_end().to_string())
    }

    /// `.primary`: `Ok(None)` when absent (this node is primary).
    pub fn primary_file(&self, id: u64) -> std::io::Result<Option<String>> {
        read_opt(&self.mnt(id).join(".primary"))
    }

    pub fn status(&self, id: u64) -> Option<serde_json::Value> {
        let (code, body) = http(&self.ports.http(id), "GET", "/status", None, "")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Test fault layer: drop raft RPCs between `id` and `blocked`, both ways.
    pub fn set_blocked(&self, id: u64, blocked: &[u64]) {
        let body = format!("{{\"blocked\":{blocked:?}}}");
        let r = http(
            &self.ports.http(id),
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

    /// The leader if the files of `ids` agree: exactly one says `primary` with no `.primary`,
    /// every other says `replica` and names it.
    pub fn agreement(&self, ids: &[u64]) -> Option<u64> {
        let mut leader = None;
        for id in ids {
            if self.role(*id)? == "primary" && self.primary_file(*id).ok()?.is_none() {
                if leader.is_some() {
                    return None;
                }
                leader = Some(*id);
            }
        }
        let leader = leader?;
        let name = format!("{}\n", hostname(leader));
        ids.iter()
            .filter(|id| **id != leader)
            .all(|id| {
                self.role(*id).as_deref() == Some("replica")
                    && self.primary_file(*id).ok().flatten().as_deref() == Some(name.as_str())
            })
            .then_some(leader)
    }

    pub fn wait_agreement(&self, ids: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.agreement(ids) {
                return l;
            }
            if Instant::now() > deadline {
                let views: Vec<String> = ids
                    .iter()
                    .map(|id| format!("{id}: {:?} {:?}", self.role(*id), self.primary_file(*id)))
                    .collect();
                panic!("nodes {ids:?} did not agree within {timeout:?}: {views:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs the CLI to completion (bounded).
    pub fn cli(&self, args: &[&str]) -> Output {
        run_cli(args, Duration::from_secs(90))
    }
}

/// Runs `litefs-py ARGS`, killing it if it outlives `timeout`.
pub fn run_cli(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("LITEFS_PY_SECRET")
        .env_remove("LITEFS_PY_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn litefs-py");
    let deadline = Instant::now() + timeout;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("litefs-py {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for node in self.nodes.values_mut() {
            node.proc.take(); // SIGKILL + wait, by PID
        }
        for id in self.mount_ids() {
            let mnt = self.mnt(id);
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_mounted(&mnt) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if is_mounted(&mnt)
                && let Ok(c) = std::ffi::CString::new(mnt.to_string_lossy().as_bytes())
            {
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if failed {
            for id in self.ids() {
                let log = self.log(id);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- node {id} log (last 40 lines) ----");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Asks which nodes say they are primary, every few ms on its own thread, for a whole test, and
/// records every round in which two or more did at once.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u64, Vec<String>)>>,
}

impl Sampler {
    /// Every node's `.role` (a dead or restarting node's file is missing or unreadable: not
    /// primary).
    pub fn start(mounts: Vec<(u64, PathBuf)>) -> Sampler {
        let mut buf = String::new();
        Sampler::every(Duration::from_millis(2), move || {
            mounts
                .iter()
                .filter(|(_, mnt)| {
                    buf.clear();
                    File::open(mnt.join(".role"))
                        .and_then(|mut f| f.read_to_string(&mut buf))
                        .is_ok()
                        && buf == "primary\n"
                })
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// `primaries` (the ids that say primary right now), then a pause of `pause`, until stopped.
    pub fn every(
        pause: Duration,
        mut primaries: impl FnMut() -> Vec<u64> + Send + 'static,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut rounds = 0u64;
            let mut violations = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                let p = primaries();
                if p.len() > 1 && violations.len() < 20 {
                    violations.push(format!(
                        "round {rounds}: {p:?} all said primary (the round took {:?})",
                        started.elapsed()
                    ));
                }
                rounds += 1;
                std::thread::sleep(pause);
            }
            (rounds, violations)
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops it; returns (rounds, violations seen).
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}
