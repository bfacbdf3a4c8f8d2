//! The proxy benchmark's cluster: the test kit's [`ProxyCluster`] (3 `litefs-py run` nodes with
//! real LiteFS on loopback, the kit's app behind each proxy) with `proxy.durability` set, ready
//! to be measured: one primary agreed on, the app's table created through every proxy, and a
//! first look that each proxy routes as the benchmark assumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Serialize;

use litefs_py_testkit::cluster::{Front, Options, ProxyCluster, random_secret};

use super::load::{self, Conn, Request};

/// Nodes of the cluster.
pub const NODES: u64 = 3;
/// Bootstrap, first lease, the proxies' addresses in raft.
const START: Duration = Duration::from_secs(90);

/// `proxy.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A write is answered when the primary's app answered.
    Async,
    /// A write is answered once replicas confirmed it.
    Replicated,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Async => "async",
            Durability::Replicated => "replicated",
        }
    }
}

/// How the clusters are made.
pub struct Setup {
    pub binary: PathBuf,
    pub litefs: PathBuf,
    pub dir: Option<PathBuf>,
    /// More `proxy:` keys for every cluster (`--proxy-set KEY=VALUE`).
    pub proxy_extra: Vec<(String, String)>,
    /// More `proxy:` keys for the `replicated` cluster only (`--replicated-set`), e.g.
    /// `min-replicas`, which litefs-py refuses with `async`.
    pub replicated_extra: Vec<(String, String)>,
}

/// A cluster ready to measure.
pub struct Ready {
    pub c: ProxyCluster,
    pub primary: u64,
    /// The replica whose proxy the benchmark uses (forwarded writes, reads).
    pub replica: u64,
    /// The effective `proxy:` section of node 1 (`litefs-py config check`).
    pub proxy_config: BTreeMap<String, String>,
}

impl Ready {
    pub fn proxy(&self, id: u64) -> String {
        self.c.proxy(id).to_string()
    }

    pub fn app(&self, id: u64) -> String {
        self.c.app_addrs[&id].clone()
    }

    /// Rows in the primary's database, asked of its app directly.
    pub fn rows_on_primary(&self) -> Result<u64> {
        let agent = load::agent(Conn::KeepAlive);
        let mut r = agent
            .get(format!("http://{}/rows", self.app(self.primary)))
            .call()
            .map_err(|e| anyhow!("GET /rows: {e}"))?;
        let body = r.body_mut().read_to_string()?;
        ensure!(r.status().as_u16() == 200, "GET /rows answered {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        v["rows"]
            .as_u64()
            .ok_or_else(|| anyhow!("GET /rows answered {body}"))
    }

    /// Stops the apps and the cluster, checked (nothing left mounted).
    pub fn shutdown(self) -> Result<()> {
        Ok(self.c.shutdown()?)
    }
}

/// The reads' second baseline: 3 nodes with LiteFS's own proxy (`litefs.proxy`) in front of
/// the same app instead of litefs-py's (litefs-py refuses both at once), its table and check row
/// written straight to the primary's app (LiteFS's proxy does not forward writes).
pub struct LiteFsFront {
    pub c: ProxyCluster,
    pub replica: u64,
}

impl LiteFsFront {
    pub fn app(&self) -> String {
        self.c.app_addrs[&self.replica].clone()
    }

    /// LiteFS's proxy on the replica.
    pub fn proxy(&self) -> String {
        self.c.proxy(self.replica).to_string()
    }
}

/// Starts [`LiteFsFront`]; on an error everything started is stopped.
pub fn start_litefs_front(setup: &Setup) -> Result<LiteFsFront> {
    let mut c =
        ProxyCluster::start_with_front(options(setup)?, &setup.litefs, NODES, &[], Front::LiteFs)
            .context("starting 3 nodes with LiteFS's proxy")?;
    let checked = (|| -> Result<u64> {
        let primary = c.wait_ready(START)?;
        let replica = (1..=NODES).find(|id| *id != primary).expect("3 nodes");
        let agent = load::agent(Conn::KeepAlive);
        let app = c.app_addrs[&primary].clone();
        let r = agent
            .post(format!("http://{app}/init"))
            .send(&[][..])
            .map_err(|e| anyhow!("POST /init to node {primary}'s app: {e}"))?;
        ensure!(
            r.status() == 200,
            "POST /init to node {primary}'s app: {}",
            r.status()
        );
        let write = Request::Write {
            prefix: "check".into(),
            body: 1,
        };
        let (status, _) = load::send(&agent, &app, &write, Conn::KeepAlive, "1")?;
        ensure!(
            status == 200,
            "POST /write to node {primary}'s app: {status}"
        );
        // LiteFS's proxy names no node in a header: the app's answer does (`{"node":N}`).
        let url = format!("http://{}/whoami", c.proxy(replica));
        let body = agent
            .get(&url)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .map_err(|e| anyhow!("GET {url}: {e}"))?;
        let node = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["node"].as_u64());
        ensure!(
            node == Some(replica),
            "GET {url} (node {replica}'s LiteFS proxy) answered {body:?}, not node {replica}'s app"
        );
        Ok(replica)
    })();
    match checked {
        Ok(replica) => Ok(LiteFsFront { c, replica }),
        Err(e) => Err(stopped(c.shutdown().map_err(Into::into), e)),
    }
}

/// How the benchmark's clusters run: quiet logs, as users get them, and no test faults.
fn options(setup: &Setup) -> Result<Options> {
    Ok(Options {
        parent: setup.dir.clone(),
        secret: random_secret()?,
        test_faults: false,
        // What users get; the kit's tests log at info.
        log_level: None,
        spawn: crate::mounts::spawn_options(),
        ..Options::run(&setup.binary)
    })
}

/// Starts a cluster with `durability` and makes it ready. On an error everything started is
/// stopped (the kit's guards) and the error says why, with the config check's verdict or the
/// nodes' logs when a node did not come up.
pub fn start(setup: &Setup, durability: Durability) -> Result<Ready> {
    let opts = options(setup)?;
    let mut extra: Vec<(&str, &str)> = vec![("durability", durability.as_str())];
    let only_replicated = match durability {
        Durability::Replicated => setup.replicated_extra.as_slice(),
        Durability::Async => &[],
    };
    extra.extend(
        setup
            .proxy_extra
            .iter()
            .chain(only_replicated)
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let mut c = ProxyCluster::start(opts, &setup.litefs, NODES, &extra)
        .with_context(|| format!("starting 3 nodes with durability {}", durability.as_str()))?;
    let (primary, proxy_config) = match c
        .wait_ready(START)
        .and_then(|p| Ok((p, c.cluster.effective("proxy")?)))
    {
        Ok(v) => v,
        Err(e) => {
            let why = why_not_up(&c, durability, e);
            return Err(stopped(c.shutdown().map_err(Into::into), why));
        }
    };
    let replica = (1..=NODES)
        .find(|id| *id != primary)
        .expect("3 nodes, one primary");
    let ready = Ready {
        c,
        primary,
        replica,
        proxy_config,
    };
    match init_and_check(&ready) {
        Ok(()) => Ok(ready),
        Err(e) => Err(stopped(ready.shutdown(), e)),
    }
}

/// `error`, with what went wrong stopping the cluster after it, if anything did.
fn stopped(shutdown: Result<()>, error: anyhow::Error) -> anyhow::Error {
    match shutdown {
        Ok(()) => error,
        Err(s) => anyhow!("{error:#}\n(and stopping the cluster: {s:#})"),
    }
}

/// A node that did not come up: `config check`'s error if the config is refused (a durability
/// this build does not have), else the error with the tail of each node's log.
fn why_not_up(c: &ProxyCluster, d: Durability, e: litefs_py_testkit::Error) -> anyhow::Error {
    if let Err(refused) = c.cluster.effective("proxy") {
        return anyhow!(
            "this litefs-py refuses the config (proxy.durability: {}): {refused}",
            d.as_str()
        );
    }
    let logs: Vec<String> = c
        .cluster
        .ids()
        .into_iter()
        .map(|id| format!("--- node {id} ---\n{}", c.cluster.node(id).log_tail(8)))
        .collect();
    anyhow!(
        "the cluster (durability {}) did not come up: {e}\n{}",
        d.as_str(),
        logs.join("\n")
    )
}

/// Creates the app's table through every proxy (which waits until each can forward: the
/// primary's address is in raft), then checks the routing the figures depend on: a read through
/// the replica's proxy is served by the replica's app, a write by the primary's.
fn init_and_check(r: &Ready) -> Result<()> {
    let agent = load::agent(Conn::KeepAlive);
    for id in 1..=NODES {
        let proxy = r.proxy(id);
        litefs_py_testkit::wait::try_poll_until(
            Duration::from_secs(30),
            Duration::from_millis(50),
            &format!("POST /init through node {id}'s proxy"),
            || {
                let url = format!("http://{proxy}/init");
                let ok = agent
                    .post(url)
                    .send(&[][..])
                    .is_ok_and(|r| r.status().as_u16() == 200);
                Ok(ok.then_some(()))
            },
        )?;
    }
    let via = r.proxy(r.replica);
    let (status, node) = load::send(&agent, &via, &Request::Get("/whoami"), Conn::KeepAlive, "")?;
    if (status, node) != (200, Some(r.replica)) {
        bail!(
            "GET /whoami through node {}'s proxy: {status}, served by {node:?} (expected node {})",
            r.replica,
            r.replica
        );
    }
    let write = Request::Write {
        prefix: "check".into(),
        body: 1,
    };
    let (status, node) = load::send(&agent, &via, &write, Conn::KeepAlive, "1")?;
    if (status, node) != (200, Some(r.primary)) {
        bail!(
            "POST /write through node {}'s proxy: {status}, served by {node:?} (expected the primary, node {})",
            r.replica,
            r.primary
        );
    }
    Ok(())
}

/// `KEY=VALUE` of `--proxy-set` and `--replicated-set`.
pub fn parse_proxy_set(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE (e.g. primary-wait=2s)"))?;
    let k = k.trim().trim_start_matches("proxy.");
    if k.is_empty() || v.is_empty() {
        return Err(format!("{s:?}: both KEY and VALUE are needed"));
    }
    if k == "durability" {
        return Err("set the durability with --durability".into());
    }
    Ok((k.to_string(), v.to_string()))
}

/// The binary at `p`, or a clear error saying how to get one.
pub fn require_binary(p: &Path) -> Result<()> {
    ensure!(
        p.is_file(),
        "no litefs-py binary at {} (run `cargo build --release -p litefs-py -p litefs-py-bench`, \
         or pass --litefs-py PATH)",
        p.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_set_takes_key_value() {
        assert_eq!(
            parse_proxy_set("proxy.primary-wait=2s").unwrap(),
            ("primary-wait".to_string(), "2s".to_string())
        );
        assert!(parse_proxy_set("primary-wait").is_err());
        assert!(parse_proxy_set("=2s").is_err());
        assert!(
            parse_proxy_set("durability=replicated")
                .unwrap_err()
                .contains("--durability")
        );
    }
}
