//! Helpers for the `litefs-py run` tests with the real LiteFS: one `litefs-py run` process and
//! what it starts ([`Run`]), cleaned up on drop.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{BIN, http, is_mounted, wait_for};

pub fn litefs_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LITEFS") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("litefs"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join("go/bin/litefs");
        p.is_file().then_some(p)
    })
}

/// The LiteFS binary, or None (and a line saying why) when these tests cannot run here. On CI
/// (`CI=true`) a missing prerequisite fails the test instead: a skipped real-LiteFS test there
/// would hide that nothing was tested.
pub fn prerequisites() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        skip_or_fail("needs root and /dev/fuse");
        return None;
    }
    let bin = litefs_binary();
    if bin.is_none() {
        skip_or_fail("no litefs binary (set $LITEFS or install LiteFS v0.5.14)");
    }
    bin
}

/// Skips the test with a line saying why, or fails it when `CI=true`.
pub fn skip_or_fail(why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(!ci, "CI=true and this test cannot run: {why}");
    eprintln!("SKIPPED: {why}");
}

/// A loopback port free right now and never handed out before in this test process. The
/// listener is dropped at once, so the kernel may offer the same port to the next call; a node
/// binds its ports only when it starts, so without the record two of one cluster's addresses
/// (say node 1's raft and node 2's LiteFS) could be the same port.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// The app the tests run: records its environment, writes a row through $LITEFS_DIR with
/// Python's sqlite3, then waits; on SIGTERM it records whether the shim was still there and
/// exits 42. `$1` is a directory for its records.
pub const APP: &str = r#"
echo "$LITEFS_DIR" > "$1/litefs_dir"
python3 - "$LITEFS_DIR/app.db" <<'PY' > "$1/write" 2>&1
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=10)
c.execute("pragma journal_mode=wal")
c.execute("create table if not exists t(x)")
c.execute("insert into t values (7)")
c.commit()
print("ok", c.execute("select count(*) from t").fetchone()[0])
PY
trap 'cat "$LITEFS_DIR/.role" > "$1/role_at_term" 2>&1; echo term > "$1/term"; exit 42' TERM
touch "$1/ready"
while :; do sleep 0.05; done
"#;

/// One `litefs-py run` and everything it started, in a directory of its own (`root`): its
/// config, `raft/`, `lower/`, `mnt/`, `litefs-data/`, `app/` (the app's records), `run.log`.
pub struct Run {
    root: PathBuf,
    child: Option<Child>,
    pub litefs_http: String,
    pub lease: String,
    /// `node.http-addr`: status, metrics, the test fault layer.
    pub http_addr: String,
    /// Extra environment for `litefs-py run` (e.g. the test fault layer).
    pub env: Vec<(String, String)>,
    /// Removed after everything stopped (fields drop after `Drop::drop`).
    _tmp: Option<tempfile::TempDir>,
}

impl Run {
    /// A one-node cluster's config on free loopback ports, in a temp dir. `edit` may change the
    /// YAML.
    pub fn config(litefs: &Path, edit: impl FnOnce(String) -> String) -> Run {
        let tmp = tempfile::tempdir().unwrap();
        let raft = format!("127.0.0.1:{}", free_port());
        let mut r = Run::node(
            tmp.path().to_path_buf(),
            litefs,
            1,
            &[(1, raft)].into(),
            None,
            edit,
        );
        r._tmp = Some(tmp);
        r
    }

    /// Node `id` of a cluster whose raft addresses are `peers` (node 1 bootstraps), in `root`,
    /// with its own free ports for everything else. `secret`: the cluster's secret file.
    pub fn node(
        root: PathBuf,
        litefs: &Path,
        id: u64,
        peers: &std::collections::BTreeMap<u64, String>,
        secret: Option<&Path>,
        edit: impl FnOnce(String) -> String,
    ) -> Run {
        let d = root.display().to_string();
        let lease = format!("127.0.0.1:{}", free_port());
        let litefs_http = format!("127.0.0.1:{}", free_port());
        let http_addr = format!("127.0.0.1:{}", free_port());
        let peer_lines: String = peers
            .iter()
            .map(|(p, addr)| format!("    {p}: {addr}\n"))
            .collect();
        let secret = secret
            .map(|s| format!("  secret-file: {}\n", s.display()))
            .unwrap_or_default();
        let yaml = format!(
            "node:\n  id: {id}\n  hostname: node-{id}\n  raft-addr: {raft}\n  http-addr: {http_addr}\n\
             cluster:\n  bootstrap: {bootstrap}\n  peers:\n{peer_lines}{secret}  data-dir: {d}/raft\n\
             mount:\n  dir: {d}/mnt\n  lower: {d}/lower\n\
             lease:\n  addr: {lease}\n  ttl: 3s\n\
             litefs:\n  binary: {bin}\n  data-dir: {d}/litefs-data\n  http-addr: {litefs_http}\n\
             \x20 advertise-url: http://{litefs_http}\n\
             run:\n  grace: 5s\n",
            raft = peers[&id],
            bootstrap = id == 1,
            bin = litefs.display(),
        );
        fs::create_dir_all(root.join("app")).unwrap();
        fs::write(root.join("litefs-py.yml"), edit(yaml)).unwrap();
        Run {
            root,
            child: None,
            litefs_http,
            lease,
            http_addr,
            env: Vec::new(),
            _tmp: None,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path("run.log")).unwrap_or_default()
    }

    /// `litefs-py run --config ... -- sh -c SCRIPT sh <app dir>`.
    pub fn start(&mut self, script: &str) {
        let log = fs::File::create(self.path("run.log")).unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(self.path("litefs-py.yml"))
            .args(["--", "sh", "-c", script, "sh"])
            .arg(self.path("app"))
            .env_remove("LITEFS_PY_SECRET")
            .env("LITEFS_PY_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn litefs-py run");
        self.child = Some(child);
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_for(timeout, "litefs-py run to exit", || self.exited())
    }

    /// The PID of `litefs-py run` while it is ours and not reaped.
    pub fn pid(&mut self) -> Option<i32> {
        self.exited()
            .is_none()
            .then(|| self.child.as_ref().map(|c| c.id() as i32))?
    }

    /// kill -9 of `litefs-py run` (by its PID), reaped. What it started keeps running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn sigterm(&self) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: our own child, not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }

    pub fn app_file(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.path("app").join(name)).ok()
    }

    /// LiteFS's PID, from litefs-py's log, if that process still runs LiteFS with our config.
    pub fn litefs_pid(&self) -> Option<i32> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("LiteFS started"))?;
        let pid: i32 = line.split("pid=").nth(1)?.split(' ').next()?.parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = self.path("litefs.yml");
        String::from_utf8_lossy(&cmdline)
            .contains(ours.to_str()?)
            .then_some(pid)
    }

    /// Position of the first log line containing `needle`.
    pub fn log_pos(&self, needle: &str) -> usize {
        let log = self.log();
        log.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"))
    }

    pub fn assert_nothing_left(&self) {
        for d in ["mnt", "lower"] {
            assert!(
                !is_mounted(&self.path(d)),
                "{d} is still mounted:\n{}",
                self.log()
            );
        }
        assert_eq!(self.litefs_pid(), None, "LiteFS still runs");
        assert!(
            http(&self.litefs_http, "GET", "/info", None, "").is_none(),
            "LiteFS's API still answers"
        );
        assert!(
            http(&self.lease, "GET", "/litefs-py/lease", None, "").is_none(),
            "the lease API still answers"
        );
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && child.try_wait().ok().flatten().is_none()
        {
            // SAFETY: our own child, not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.litefs_pid() {
            // SAFETY: LiteFS as our run started it (checked by its command line).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(200));
        }
        for d in ["mnt", "lower"] {
            let path = self.path(d);
            if is_mounted(&path) {
                let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).unwrap();
                // SAFETY: a NUL-terminated path we own.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if std::thread::panicking() {
            // The tail: with several nodes, whole logs would bury the failure.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(150)..].join("\n");
            eprintln!(
                "---- litefs-py run log ({}), last 150 lines ----\n{tail}",
                self.root.display()
            );
        }
    }
}
