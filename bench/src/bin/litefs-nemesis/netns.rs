//! The nemesis's own network: one namespace per node and a hub namespace, all created here and
//! removed on drop, so partitions never touch the host's network (docs/testing.md, "The
//! nemesis"). The hub holds a bridge with the harness's address; every node's namespace has a
//! veth into it with the node's address (raft, http and LiteFS listen there; the lease API on
//! the namespace's own loopback). The harness's main thread joins the hub before it starts any
//! thread, so everything it starts (samplers, `litefs-py handoff`) reaches every node.
//!
//! A partition cuts one node off from the other nodes, both ways, with an nftables table in
//! that node's namespace (packets dropped silently, as on a real cut); the harness's address
//! stays reachable, so the samplers keep seeing what the cut-off node says about itself.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use litefs_py_testkit::cluster::NodeNet;
use litefs_py_testkit::process;

/// Private addresses: they exist only inside our namespaces, so no host network can clash.
const SUBNET: &str = "10.213.0";
const HUB_ADDR: &str = "10.213.0.254";
/// The table a partition adds in the cut-off node's namespace.
const TABLE: &str = "litefs_nemesis";

pub struct Network {
    prefix: String,
    ids: Vec<u64>,
    /// Namespaces created so far (removed on drop, hub last).
    created: Vec<String>,
    cut: Vec<u64>,
}

/// Runs `ip` (or another tool) and fails with what it said.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {program} (scripts/setup installs it)"))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes())?;
    }
    let mut out = child.wait_with_output()?;
    if !out.status.success() {
        out.stderr.extend_from_slice(&out.stdout);
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Network {
    /// Creates the hub and one namespace per node in `ids` (named `lfnem<pid>-hub`,
    /// `lfnem<pid>-n<id>`), wired and up. Checks for `nft` first when partitions will be drawn.
    pub fn new(ids: &[u64], partitions: bool) -> Result<Network> {
        if partitions {
            let mut v = Command::new("nft");
            v.arg("--version");
            process::output_within(v, Duration::from_secs(10))
                .map_err(|e| anyhow::anyhow!("nft: {e}: install nftables (scripts/setup does)"))?;
        }
        let mut net = Network {
            prefix: format!("lfnem{}", std::process::id()),
            ids: ids.to_vec(),
            created: Vec::new(),
            cut: Vec::new(),
        };
        let hub = net.hub();
        run("ip", &["netns", "add", &hub], None)?;
        net.created.push(hub.clone());
        run("ip", &["-n", &hub, "link", "set", "lo", "up"], None)?;
        run(
            "ip",
            &["-n", &hub, "link", "add", "br0", "type", "bridge"],
            None,
        )?;
        let hub_cidr = format!("{HUB_ADDR}/24");
        run(
            "ip",
            &["-n", &hub, "addr", "add", &hub_cidr, "dev", "br0"],
            None,
        )?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"], None)?;
        for &id in ids {
            let ns = net.node_ns(id);
            run("ip", &["netns", "add", &ns], None)?;
            net.created.push(ns.clone());
            let port = format!("p{id}");
            run(
                "ip",
                &[
                    "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
                None,
            )?;
            run(
                "ip",
                &["-n", &hub, "link", "set", &port, "master", "br0", "up"],
                None,
            )?;
            let cidr = format!("{}/24", net.ip(id));
            run(
                "ip",
                &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"],
                None,
            )?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"], None)?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
        }
        Ok(net)
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    fn node_ns(&self, id: u64) -> String {
        format!("{}-n{id}", self.prefix)
    }

    pub fn ip(&self, id: u64) -> String {
        format!("{SUBNET}.{id}")
    }

    /// What the testkit needs to start node `id` in its namespace.
    pub fn node_net(&self, id: u64) -> NodeNet {
        NodeNet {
            netns: PathBuf::from("/run/netns").join(self.node_ns(id)),
            ip: self.ip(id),
        }
    }

    /// Moves the calling thread into the hub. Call it before starting any thread: threads and
    /// processes started afterwards inherit it.
    pub fn enter_hub(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        let path = PathBuf::from("/run/netns").join(self.hub());
        let f =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: setns on our own thread with an fd we hold open.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("joining the hub namespace");
        }
        Ok(())
    }

    /// Cuts node `id` off from every other node (both ways); the hub still reaches it.
    pub fn partition(&mut self, id: u64) -> Result<()> {
        let others: Vec<String> = self
            .ids
            .iter()
            .filter(|o| **o != id)
            .map(|o| self.ip(*o))
            .collect();
        let set = others.join(", ");
        let rules = format!(
            "table inet {TABLE} {{\n\
             chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
             chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
             }}\n"
        );
        let ns = self.node_ns(id);
        run(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&rules),
        )?;
        self.cut.push(id);
        Ok(())
    }

    /// Undoes [`Self::partition`] of node `id`.
    pub fn heal(&mut self, id: u64) -> Result<()> {
        if let Some(i) = self.cut.iter().position(|c| *c == id) {
            self.cut.remove(i);
            let ns = self.node_ns(id);
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "nft", "delete", "table", "inet", TABLE,
                ],
                None,
            )?;
        }
        Ok(())
    }
}

impl Drop for Network {
    /// Removing a namespace removes its veth ends (and so their peers) and its nftables table;
    /// a namespace a process still runs in lives on without its name until that process exits.
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "delete", &ns], None) {
                eprintln!("nemesis: removing network namespace {ns}: {e:#}");
            }
        }
    }
}
