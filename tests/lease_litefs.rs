//! The lease API with the real LiteFS (v0.5.14): LiteFS accepts the litefs.yml that
//! `litefs-py config litefs` generates, and on a one-node cluster it becomes primary through
//! `litefs-py mount`'s lease API, with the shim mounted over LiteFS's FUSE dir.
//!
//! Needs root, /dev/fuse and a `litefs` binary (`$LITEFS`, else `litefs` on PATH, else
//! `~/go/bin/litefs`; without one the test says so and passes, unless `CI=true`: then it fails).
//! Every process is ours and stopped by its PID (SIGTERM, then SIGKILL); every mount is checked
//! gone (lazy unmount as the fallback), also when a test fails (the `Rig` guard). Every wait is
//! bounded.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::run::{free_port, prerequisites};
use common::{BIN, is_mounted, wait_for};

/// A plain HTTP/1.1 exchange (the test does not rely on the code under test to talk HTTP).
fn http(addr: &str, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("LITEFS_PY_SECRET")
        .output()
        .expect("run litefs-py")
}

/// A process we started, with its output in a log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { name, child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}:\n{}", self.name, self.log());
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Returns whether it exited on SIGTERM.
    fn stop(&mut self, grace: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        // SAFETY: signalling our own child by its PID; it is not reaped yet, so the PID is ours.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

/// Everything one test starts. Dropped (also on a failed assertion): the shim first, then
/// LiteFS, then any mount left is detached, then the temp dir goes.
struct Rig {
    dir: tempfile::TempDir,
    shim: Option<Proc>,
    litefs: Option<Proc>,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            dir: tempfile::tempdir().unwrap(),
            shim: None,
            litefs: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A one-node cluster's litefs-py.yml on free loopback ports: its path, the lease API's
    /// address and LiteFS's HTTP address.
    fn config(&self) -> (PathBuf, String, String) {
        for d in ["raft", "lower", "mnt", "litefs-data"] {
            fs::create_dir_all(self.path(d)).unwrap();
        }
        let raft = format!("127.0.0.1:{}", free_port());
        let lease = format!("127.0.0.1:{}", free_port());
        let litefs = format!("127.0.0.1:{}", free_port());
        let yaml = format!(
            "node:\n  id: 1\n  hostname: node-a\n  raft-addr: {raft}\n  http-addr: 127.0.0.1:{http}\n\
             cluster:\n  bootstrap: true\n  peers:\n    1: {raft}\n  data-dir: {dir}/raft\n\
             mount:\n  dir: {dir}/mnt\n  lower: {dir}/lower\n\
             lease:\n  addr: {lease}\n  ttl: 3s\n\
             litefs:\n  data-dir: {dir}/litefs-data\n  http-addr: {litefs}\n",
            http = free_port(),
            dir = self.dir.path().display(),
        );
        let path = self.path("litefs-py.yml");
        fs::write(&path, yaml).unwrap();
        (path, lease, litefs)
    }

    /// `litefs-py config litefs` for `config`, written next to it.
    fn generate(&self, config: &Path) -> PathBuf {
        let out = run(&["config", "litefs", "--config", config.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "config litefs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.path("litefs.yml");
        fs::write(&path, &out.stdout).unwrap();
        path
    }

    fn start_litefs(&mut self, litefs: &Path, config: &Path) {
        let mut cmd = Command::new(litefs);
        cmd.arg("mount").arg("-config").arg(config);
        self.litefs = Some(Proc::spawn("litefs", cmd, self.path("litefs.log")));
        let lower = self.path("lower");
        let p = self.litefs.as_mut().unwrap();
        wait_for(Duration::from_secs(20), "LiteFS's FUSE mount", || {
            p.assert_running();
            is_mounted(&lower).then_some(())
        });
    }

    fn start_shim(&mut self, config: &Path) {
        let mnt = self.path("mnt");
        let mut cmd = Command::new(BIN);
        cmd.arg("mount")
            .arg("--config")
            .arg(config)
            .arg(&mnt)
            .env_remove("LITEFS_PY_SECRET")
            .env("LITEFS_PY_LOG", "info");
        self.shim = Some(Proc::spawn("litefs-py mount", cmd, self.path("shim.log")));
        let p = self.shim.as_mut().unwrap();
        wait_for(Duration::from_secs(20), "the shim's mount", || {
            p.assert_running();
            (is_mounted(&mnt) && mnt.join(".role").exists()).then_some(())
        });
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for p in [&self.litefs, &self.shim].into_iter().flatten() {
            out += &format!("--- {} ---\n{}\n", p.name, p.log());
        }
        out
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut p) = self.shim.take() {
            p.stop(Duration::from_secs(10));
        }
        if let Some(mut p) = self.litefs.take() {
            p.stop(Duration::from_secs(10));
        }
        for d in ["mnt", "lower"] {
            let path = self.path(d);
            if is_mounted(&path) {
                let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).unwrap();
                // SAFETY: a NUL-terminated path we own; MNT_DETACH needs nothing else.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

#[test]
fn litefs_accepts_the_generated_config() {
    let Some(litefs) = prerequisites() else {
        return;
    };
    let mut rig = Rig::new();
    let (config, _, _) = rig.config();
    let generated = rig.generate(&config);
    let text = fs::read_to_string(&generated).unwrap();
    assert!(text.contains("type: consul"), "{text}");
    rig.start_litefs(&litefs, &generated);
    // No lease API is up: LiteFS mounts anyway and keeps asking for one.
    let log = wait_for(
        Duration::from_secs(10),
        "LiteFS asking for the lease",
        || {
            let log = rig.litefs.as_ref().unwrap().log();
            log.contains("initializing consul: key=litefs/primary")
                .then_some(log)
        },
    );
    assert!(!log.contains("ERROR"), "{log}");
    // LiteFS ignores SIGTERM until it has joined a cluster, so this ends with SIGKILL and
    // leaves its FUSE mount behind for the fallback to detach.
    let mut p = rig.litefs.take().unwrap();
    p.stop(Duration::from_secs(3));
    let lower = rig.path("lower");
    drop(rig);
    assert!(!is_mounted(&lower), "LiteFS's mount is still there");
}

#[test]
fn litefs_becomes_primary_through_the_lease_api_on_a_one_node_cluster() {
    let Some(litefs) = prerequisites() else {
        return;
    };
    let mut rig = Rig::new();
    let (config, lease_addr, litefs_http) = rig.config();
    let generated = rig.generate(&config);
    // LiteFS first: the shim must stack on LiteFS's mount, not on the directory under it.
    rig.start_litefs(&litefs, &generated);
    rig.start_shim(&config);
    let started = Instant::now();
    // A new leader waits out any previous lease (3 s TTL + 1 s lock delay + 0.5 s), then the
    // LiteFS that asks is granted.
    let info = wait_for(Duration::from_secs(30), "LiteFS primary", || {
        rig.litefs.as_mut().unwrap().assert_running();
        let (status, body) = http(&litefs_http, "GET", "/info")?;
        (status == 200 && body.contains("\"isPrimary\": true")).then_some(body)
    });
    eprintln!(
        "LiteFS primary {:?} after the shim started",
        started.elapsed()
    );
    // The lease API names the primary, and the cluster id LiteFS chose is in raft.
    let (status, body) = http(&lease_addr, "GET", "/v1/kv/litefs/primary").unwrap();
    assert_eq!(status, 200, "{body}\n{}", rig.logs());
    assert!(body.contains("\"Session\""), "{body}");
    let (status, cluster_id) =
        http(&lease_addr, "GET", "/v1/kv/litefs/primary/clusterid?raw").unwrap();
    assert_eq!(status, 200);
    assert!(info.contains(&cluster_id), "{cluster_id} not in {info}");
    // Writes through the shim reach LiteFS, which takes them only as primary.
    let mnt = rig.path("mnt");
    let c = rusqlite::Connection::open(mnt.join("app.db")).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (42);")
        .unwrap_or_else(|e| panic!("write through the shim: {e}\n{}", rig.logs()));
    let x: i64 = c.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(x, 42);
    drop(c);
    assert!(rig.path("lower").join("app.db").exists());
    assert_eq!(fs::read_to_string(mnt.join(".role")).unwrap(), "primary\n");
    // LiteFS renews every TTL/2: still primary a few renewals later.
    std::thread::sleep(Duration::from_secs(4));
    let (_, body) = http(&litefs_http, "GET", "/info").unwrap();
    assert!(
        body.contains("\"isPrimary\": true"),
        "{body}\n{}",
        rig.logs()
    );
    // Stop in order: the shim (which takes the lease API with it), then LiteFS, each on
    // SIGTERM; no mount is left.
    let mut shim = rig.shim.take().unwrap();
    assert!(
        shim.stop(Duration::from_secs(10)),
        "the shim needed SIGKILL"
    );
    assert!(!is_mounted(&mnt), "the shim's mount is still there");
    let mut lfs = rig.litefs.take().unwrap();
    let clean = lfs.stop(Duration::from_secs(10));
    let log = lfs.log();
    assert!(clean, "LiteFS needed SIGKILL:\n{log}");
    assert!(log.contains("primary lease acquired"), "{log}");
    let lower = rig.path("lower");
    drop(rig);
    assert!(!is_mounted(&lower), "LiteFS's mount is still there");
}
