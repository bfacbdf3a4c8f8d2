//! Clusters of real litefs-py nodes on loopback, each node in its own directory under one temp
//! dir: [`MountCluster`] (`litefs-py mount` and `witness` nodes over plain lower dirs) and
//! [`RunCluster`] (`litefs-py run` nodes, each with its real LiteFS; one of them alone is a
//! [`RunNode`]). What both share is here: the options, the shim's `.role`/`.primary` files and
//! the agreement rule over them, `config check`, and the removal of the temp dir.

mod mount_cluster;
mod proxy_cluster;
mod run_cluster;
mod run_node;
mod sampler;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use mount_cluster::{Kind, MountCluster, Spec, Sweep};
pub use proxy_cluster::{Front, ProxyCluster};
pub use run_cluster::RunCluster;
pub use run_node::{RunNode, SLEEPING_APP};
pub use sampler::Sampler;

use crate::error::{Error, IoContext, Result};
use crate::{config, mount, process};

/// The shared secret of the tests' clusters (the benchmark draws a random one).
pub const SECRET: &str = "integration-test-secret";

/// How a cluster's nodes are set up and started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The litefs-py binary.
    pub binary: PathBuf,
    /// Where the cluster's temp dir goes [default: $TMPDIR, else /tmp].
    pub parent: Option<PathBuf>,
    /// Node `id`'s hostname is this followed by the id.
    pub hostname_prefix: String,
    pub secret: String,
    /// `LITEFS_PY_TEST_FAULTS=1`: the test fault layer (`PUT /test/faults`).
    pub test_faults: bool,
    /// `LITEFS_PY_LOG` for the nodes; `None` removes it (litefs-py's default).
    pub log_level: Option<String>,
    pub raft: config::Raft,
    /// `lease.ttl`; `None`: litefs-py's default (what users get).
    pub lease_ttl: Option<String>,
    /// `mount.data-path` of `run` nodes; `None`: litefs-py's default (what users get).
    pub data_path: Option<String>,
    /// How the node processes are spawned (the benchmark's own process group and parent-death
    /// signal); their logs always append across restarts.
    pub spawn: process::Options,
    /// How long a started node may take to serve.
    pub start_timeout: Duration,
    /// Node id -> the network namespace it runs in and its address there (`run` nodes only;
    /// the caller creates and removes the namespaces). A node not named here stays on the
    /// host's loopback.
    pub nets: BTreeMap<u64, NodeNet>,
}

/// Where a `run` node's processes live on the network: joined to the namespace at `netns` (a
/// file such as `/run/netns/<name>`) before `litefs-py run` starts, so LiteFS and the app are in
/// it too; raft, http and LiteFS listen on `ip` there, the lease API on that namespace's loopback.
#[derive(Debug, Clone)]
pub struct NodeNet {
    pub netns: PathBuf,
    pub ip: String,
}

impl Options {
    /// The tests' defaults for `mount` nodes: `host-<id>`, the test secret, the fault layer on.
    pub fn mount(binary: &Path) -> Options {
        Options {
            binary: binary.to_path_buf(),
            parent: None,
            hostname_prefix: "host-".into(),
            secret: SECRET.into(),
            test_faults: true,
            log_level: None,
            raft: config::Raft::default(),
            lease_ttl: None,
            data_path: None,
            // SIGTERM to a node whose test process dies without running the guards (a test
            // binary killed from outside): it unmounts itself instead of running on as an
            // orphan. Nodes are started on the test's own thread, which outlives them.
            spawn: process::Options {
                parent_death_signal: true,
                ..process::Options::default()
            },
            start_timeout: Duration::from_secs(15),
            nets: BTreeMap::new(),
        }
    }

    /// The tests' defaults for `run` nodes: `node-<id>`, logs at `info` (the tests read them).
    pub fn run(binary: &Path) -> Options {
        Options {
            hostname_prefix: "node-".into(),
            log_level: Some("info".into()),
            // `run` waits up to 30 s for LiteFS; the shim is mounted right after.
            start_timeout: Duration::from_secs(40),
            ..Options::mount(binary)
        }
    }

    pub fn hostname(&self, id: u64) -> String {
        format!("{}{id}", self.hostname_prefix)
    }

    fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let parent = self.parent.clone().unwrap_or_else(std::env::temp_dir);
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&parent)
            .context(|| format!("creating a temp dir in {}", parent.display()))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env_remove("LITEFS_PY_SECRET");
        match &self.log_level {
            Some(l) => cmd.env("LITEFS_PY_LOG", l),
            None => cmd.env_remove("LITEFS_PY_LOG"),
        };
        if self.test_faults {
            cmd.env("LITEFS_PY_TEST_FAULTS", "1");
        } else {
            cmd.env_remove("LITEFS_PY_TEST_FAULTS");
        }
        cmd
    }

    fn spawn_options(&self) -> process::Options {
        process::Options {
            append: true,
            ..self.spawn
        }
    }
}

/// A random secret (hex), for a cluster no one else should join.
pub fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context(|| "reading /dev/urandom".into())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn create_dirs(root: &Path, subs: &[&str]) -> Result<()> {
    for sub in subs {
        let d = root.join(sub);
        std::fs::create_dir_all(&d).context(|| format!("creating {}", d.display()))?;
    }
    Ok(())
}

/// A small file read whole: `Ok(None)` if it does not exist.
pub fn read_opt(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The shim's `.role` at mount `mnt`, without the newline.
pub fn role(mnt: &Path) -> Option<String> {
    std::fs::read_to_string(mnt.join(".role"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The shim's `.primary` at mount `mnt`: `Ok(None)` when absent (this node is primary).
pub fn primary_file(mnt: &Path) -> std::io::Result<Option<String>> {
    read_opt(&mnt.join(".primary"))
}

/// What one node's shim says about the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryView {
    /// No `.primary`, and `.role` says `primary`.
    ThisNode,
    /// `.primary` is empty: no primary known here.
    Unknown,
    /// `.role` says `replica` and `.primary` names this hostname.
    Other(String),
    /// Anything else: unreadable, or files that disagree (a mount not up yet, or going down).
    Unreadable(String),
}

/// Reads `.primary` and `.role` at `mnt` into `buf` (reused: the benchmark polls every ms).
pub fn primary_view(mnt: &Path, buf: &mut String) -> PrimaryView {
    fn read(path: &Path, buf: &mut String) -> std::io::Result<()> {
        buf.clear();
        std::fs::File::open(path)?.read_to_string(buf).map(|_| ())
    }
    match read(&mnt.join(".primary"), buf) {
        Ok(()) if buf.is_empty() => PrimaryView::Unknown,
        Ok(()) => {
            let named = buf.trim_end_matches('\n').to_string();
            match read(&mnt.join(".role"), buf) {
                Ok(()) if buf == "replica\n" => PrimaryView::Other(named),
                Ok(()) => PrimaryView::Unreadable(format!(
                    ".primary names {named:?} but .role says {:?}",
                    buf.trim_end()
                )),
                Err(e) => PrimaryView::Unreadable(format!(".primary {named:?}; .role: {e}")),
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => match read(&mnt.join(".role"), buf) {
            Ok(()) if buf == "primary\n" => PrimaryView::ThisNode,
            Ok(()) => {
                PrimaryView::Unreadable(format!("no .primary but .role says {:?}", buf.trim_end()))
            }
            Err(e) => PrimaryView::Unreadable(format!("no .primary; .role: {e}")),
        },
        Err(e) => PrimaryView::Unreadable(e.to_string()),
    }
}

/// `litefs-py config check` of `config`: its `section:` as key -> value.
pub fn effective_section(
    binary: &Path,
    config: &Path,
    section: &str,
) -> Result<BTreeMap<String, String>> {
    let out = Command::new(binary)
        .args(["config", "check", "--config"])
        .arg(config)
        .output()
        .context(|| "running litefs-py config check".into())?;
    if !out.status.success() {
        return Err(Error::failed(format!(
            "litefs-py config check: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let header = format!("{section}:");
    Ok(text
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The end of a cluster's clean-up, once every node is stopped: removes its temp dir `dir` (at
/// `root`) unless something is still mounted under it (never delete through a mount: the dir
/// is kept for a look), and turns the `problems` met on the way into one error.
fn remove_dir(
    dir: Option<tempfile::TempDir>,
    root: &Path,
    mut problems: Vec<String>,
) -> Result<()> {
    let left = mount::mounted_under(root)?;
    if let Some(dir) = dir {
        if left.is_empty() {
            dir.close()
                .context(|| format!("removing {}", root.display()))?;
        } else {
            problems.push(format!(
                "still mounted: {left:?}; {} kept",
                dir.keep().display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::failed(format!("clean-up: {}", problems.join("; "))))
    }
}

/// `PUT /test/faults` on a node started with the fault layer: drop raft RPCs to and from
/// `blocked`; `elect: false` keeps it from running for leader on its own.
fn set_faults(http_addr: &str, secret: &str, id: u64, blocked: &[u64], elect: bool) -> Result<()> {
    let body = format!("{{\"blocked\":{blocked:?},\"elect\":{elect}}}");
    let r = crate::http::request("PUT", http_addr, "/test/faults", Some(secret), Some(&body));
    match r {
        Ok(r) if r.status == 200 => Ok(()),
        other => Err(Error::failed(format!(
            "setting faults on node {id}: {other:?}"
        ))),
    }
}

/// `GET /status` of a node, if it answers 200 with JSON.
fn status(http_addr: &str) -> Option<serde_json::Value> {
    let r = crate::http::get(http_addr, "/status").ok()?;
    (r.status == 200).then(|| serde_json::from_str(&r.body).ok())?
}
