//! The lease API with the real LiteFS (v0.5.14): LiteFS accepts the litefs.yml that
//! `litefs-py config litefs` generates, and on a one-node cluster it becomes primary through
//! `litefs-py mount`'s lease API, with the shim mounted over LiteFS's FUSE dir. LiteFS is
//! started by hand, as docs/operations.md tells a `mount` user to: with `$CONSUL_HTTP_TOKEN`
//! from `lease.token-file`, without which the lease API refuses every call.
//!
//! Needs root, /dev/fuse and a `litefs` binary (`$LITEFS`, else `litefs` on PATH, else
//! `~/go/bin/litefs`; without one the test says so and passes, unless `CI=true`: then it fails).
//! Every process is ours and stopped by its PID (SIGTERM, then SIGKILL); every mount is checked
//! gone (lazy unmount as the fallback), also when a test fails (the `Rig` guard). Every wait is
//! bounded.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::BIN;
use litefs_py_testkit::config::Config;
use litefs_py_testkit::mount::{MountGuard, is_mounted};
use litefs_py_testkit::ports::Block;
use litefs_py_testkit::process::{self, Options, Proc};
use litefs_py_testkit::wait::wait_for;
use litefs_py_testkit::{http, litefs, prereq};

/// The lease API's token, in `lease.token-file` (written here, mode 0600, before the shim
/// starts and reads it).
const TOKEN: &str = "lease-token-of-the-lease-litefs-test";

/// Panics with its log if `p` exited.
fn assert_running(p: &mut Proc) {
    if let Some(status) = p.exited() {
        panic!("{} exited with {status}:\n{}", p.name(), p.log());
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL. Returns whether it exited on SIGTERM.
fn stop(p: &mut Proc, grace: Duration) -> bool {
    !p.stop(grace).killed
}

/// Everything one test starts. Dropped (also on a failed assertion): the shim first, then
/// LiteFS (each stopped by its guard), then any mount left is detached, then the temp dir goes.
struct Rig {
    shim: Option<Proc>,
    litefs: Option<Proc>,
    _mounts: [MountGuard; 2],
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        Rig {
            shim: None,
            litefs: None,
            _mounts: [
                MountGuard::new(&dir.path().join("mnt")),
                MountGuard::new(&dir.path().join("lower")),
            ],
            dir,
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
        let ports = Block::for_cluster().unwrap().node(1);
        let mut config = Config::node(1, "node-a", &ports.raft, &ports.http, &self.path("raft"))
            .bootstrap(true)
            .peers([(1, ports.raft.clone())].into())
            .mount(&self.path("mnt"), &self.path("lower"))
            .lease(&ports.lease, Some("3s"))
            .litefs(
                Path::new("litefs"),
                &self.path("litefs-data"),
                &ports.litefs,
            );
        // LiteFS is started by hand here: no binary, and the advertise URL litefs-py derives.
        if let Some(l) = config.litefs.as_mut() {
            l.binary = None;
            l.advertise_url = None;
        }
        let token_file = self.path("raft/lease.token");
        config = config.set("lease.token-file", token_file.to_str().unwrap());
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&token_file)
                .unwrap();
            writeln!(f, "{TOKEN}").unwrap();
        }
        let path = self.path("litefs-py.yml");
        config.write(&path).unwrap();
        (path, ports.lease, ports.litefs)
    }

    /// `litefs-py config litefs` for `config`, written next to it.
    fn generate(&self, config: &Path) -> PathBuf {
        let mut cmd = Command::new(BIN);
        cmd.args(["config", "litefs", "--config", config.to_str().unwrap()])
            .env_remove("LITEFS_PY_SECRET");
        let out = process::output_within(cmd, Duration::from_secs(30)).unwrap();
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
        cmd.arg("mount")
            .arg("-config")
            .arg(config)
            .env("CONSUL_HTTP_TOKEN", TOKEN);
        let log = self.path("litefs.log");
        self.litefs = Some(Proc::spawn("litefs", cmd, &log, Options::default()).unwrap());
        let lower = self.path("lower");
        let p = self.litefs.as_mut().unwrap();
        wait_for(Duration::from_secs(20), "LiteFS's FUSE mount", || {
            assert_running(p);
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
        let log = self.path("shim.log");
        self.shim = Some(Proc::spawn("litefs-py mount", cmd, &log, Options::default()).unwrap());
        let p = self.shim.as_mut().unwrap();
        wait_for(Duration::from_secs(20), "the shim's mount", || {
            assert_running(p);
            (is_mounted(&mnt) && mnt.join(".role").exists()).then_some(())
        });
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for p in [&self.litefs, &self.shim].into_iter().flatten() {
            out += &format!("--- {} ---\n{}\n", p.name(), p.log());
        }
        out
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The shim before LiteFS: it stacks on LiteFS's mount.
        if let Some(mut p) = self.shim.take() {
            stop(&mut p, Duration::from_secs(10));
        }
        if let Some(mut p) = self.litefs.take() {
            stop(&mut p, Duration::from_secs(10));
        }
    }
}

#[test]
fn litefs_accepts_the_generated_config() {
    let Some(litefs) = prereq::litefs() else {
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
    stop(&mut p, Duration::from_secs(3));
    let lower = rig.path("lower");
    drop(rig);
    assert!(!is_mounted(&lower), "LiteFS's mount is still there");
}

#[test]
fn litefs_becomes_primary_through_the_lease_api_on_a_one_node_cluster() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let mut rig = Rig::new();
    let (config, lease_addr, litefs_http) = rig.config();
    let generated = rig.generate(&config);
    // LiteFS first: the shim must stack on LiteFS's mount, not on the directory under it.
    rig.start_litefs(&litefs, &generated);
    rig.start_shim(&config);
    let started = Instant::now();
    // A new leader waits out any previous lease (LiteFS's 3.5 s hold for a 3 s TTL, less the
    // 200 ms vote gap, plus margins), then the LiteFS that asks is granted.
    let info = wait_for(Duration::from_secs(30), "LiteFS primary", || {
        assert_running(rig.litefs.as_mut().unwrap());
        litefs::info(&litefs_http).filter(|i| i.is_primary)
    });
    eprintln!(
        "LiteFS primary {:?} after the shim started",
        started.elapsed()
    );
    // The lease API names the primary, and the cluster id LiteFS chose is in raft.
    // Only with the token; the answer names no session.
    let primary = "/v1/kv/litefs/primary";
    let refused = http::get(&lease_addr, primary).unwrap();
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains("missing lease token"), "{refused:?}");
    let http::Response { status, body } =
        http::request("GET", &lease_addr, primary, Some(TOKEN), None).unwrap();
    assert_eq!(status, 200, "{body}\n{}", rig.logs());
    assert!(!body.contains("Session"), "{body}");
    let http::Response {
        status,
        body: cluster_id,
    } = http::request(
        "GET",
        &lease_addr,
        "/v1/kv/litefs/primary/clusterid?raw",
        Some(TOKEN),
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        info.cluster_id
            .as_deref()
            .is_some_and(|id| id.contains(&cluster_id)),
        "{cluster_id} not in {info:?}"
    );
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
    let info = litefs::info(&litefs_http);
    assert!(
        info.as_ref().is_some_and(|i| i.is_primary),
        "{info:?}\n{}",
        rig.logs()
    );
    // Stop in order: the shim (which takes the lease API with it), then LiteFS, each on
    // SIGTERM; no mount is left.
    let mut shim = rig.shim.take().unwrap();
    assert!(
        stop(&mut shim, Duration::from_secs(10)),
        "the shim needed SIGKILL"
    );
    assert!(!is_mounted(&mnt), "the shim's mount is still there");
    let mut lfs = rig.litefs.take().unwrap();
    let clean = stop(&mut lfs, Duration::from_secs(10));
    let log = lfs.log();
    assert!(clean, "LiteFS needed SIGKILL:\n{log}");
    assert!(log.contains("primary lease acquired"), "{log}");
    let lower = rig.path("lower");
    drop(rig);
    assert!(!is_mounted(&lower), "LiteFS's mount is still there");
}
