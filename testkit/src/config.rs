//! litefs-py.yml, built and rendered in one place (typed sections, serde_yaml) for every test
//! and benchmark; and the static-lease litefs.yml of the benchmark's LiteFS baseline.
//!
//! A test that needs a config litefs-py must refuse (an unknown key, a value out of range) sets
//! it with [`Config::set`]: a dotted key and any YAML value, applied over the rendering.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_yaml::Value;

use crate::error::{IoContext, Result};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Node {
    pub id: u64,
    pub hostname: String,
    pub raft_addr: String,
    pub http_addr: String,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    pub bootstrap: bool,
    /// Voters: id -> raft address.
    pub peers: BTreeMap<u64, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Mount {
    pub dir: PathBuf,
    pub lower: PathBuf,
    /// `mount.data-path`; `None`: litefs-py's default (`auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_path: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Lease {
    pub addr: String,
    /// `None`: litefs-py's default TTL (what users get).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LiteFs {
    /// `None`: litefs-py's default (`litefs` on PATH).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub http_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Run {
    pub grace: String,
    /// `run.migrate`: the shell command the primary runs before the app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrate: Option<String>,
}

/// The `raft:` timing knobs; `None` leaves litefs-py's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Raft {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_timeout_min: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_timeout_max: Option<String>,
}

impl Raft {
    /// From milliseconds (the benchmark's flags).
    pub fn from_ms(heartbeat: Option<u64>, min: Option<u64>, max: Option<u64>) -> Raft {
        let ms = |v: Option<u64>| v.map(|ms| format!("{ms}ms"));
        Raft {
            heartbeat_interval: ms(heartbeat),
            election_timeout_min: ms(min),
            election_timeout_max: ms(max),
        }
    }

    fn is_empty(&self) -> bool {
        *self == Raft::default()
    }
}

/// One node's litefs-py.yml.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    pub node: Node,
    pub cluster: Cluster,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount: Option<Mount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub litefs: Option<LiteFs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
    #[serde(skip_serializing_if = "Raft::is_empty")]
    pub raft: Raft,
    /// Set over the rendering, in order: (dotted key, value).
    #[serde(skip)]
    overrides: Vec<(String, Value)>,
}

impl Config {
    /// A node with its addresses and raft data dir; no peers, no mount, no lease.
    pub fn node(
        id: u64,
        hostname: &str,
        raft_addr: &str,
        http_addr: &str,
        data_dir: &Path,
    ) -> Config {
        Config {
            node: Node {
                id,
                hostname: hostname.to_string(),
                raft_addr: raft_addr.to_string(),
                http_addr: http_addr.to_string(),
            },
            cluster: Cluster {
                data_dir: data_dir.to_path_buf(),
                ..Cluster::default()
            },
            mount: None,
            lease: None,
            litefs: None,
            run: None,
            raft: Raft::default(),
            overrides: Vec::new(),
        }
    }

    pub fn bootstrap(mut self, yes: bool) -> Config {
        self.cluster.bootstrap = yes;
        self
    }

    pub fn peers(mut self, peers: BTreeMap<u64, String>) -> Config {
        self.cluster.peers = peers;
        self
    }

    pub fn secret_file(mut self, path: Option<&Path>) -> Config {
        self.cluster.secret_file = path.map(Path::to_path_buf);
        self
    }

    pub fn mount(mut self, dir: &Path, lower: &Path) -> Config {
        self.mount = Some(Mount {
            dir: dir.to_path_buf(),
            lower: lower.to_path_buf(),
            data_path: None,
        });
        self
    }

    /// `mount.data-path` (after [`Config::mount`]); `None` leaves litefs-py's default.
    pub fn data_path(mut self, mode: Option<&str>) -> Config {
        if let Some(m) = &mut self.mount {
            m.data_path = mode.map(str::to_string);
        }
        self
    }

    pub fn lease(mut self, addr: &str, ttl: Option<&str>) -> Config {
        self.lease = Some(Lease {
            addr: addr.to_string(),
            ttl: ttl.map(str::to_string),
        });
        self
    }

    /// The `litefs:` section `run` starts LiteFS with; other nodes reach it at its HTTP address.
    pub fn litefs(mut self, binary: &Path, data_dir: &Path, http_addr: &str) -> Config {
        self.litefs = Some(LiteFs {
            binary: Some(binary.to_path_buf()),
            data_dir: data_dir.to_path_buf(),
            http_addr: http_addr.to_string(),
            advertise_url: Some(format!("http://{http_addr}")),
        });
        self
    }

    pub fn run_grace(mut self, grace: &str) -> Config {
        let migrate = self.run.take().and_then(|r| r.migrate);
        self.run = Some(Run {
            grace: grace.to_string(),
            migrate,
        });
        self
    }

    /// `run.migrate` (keeps `run.grace`, else 10s).
    pub fn run_migrate(mut self, command: &str) -> Config {
        let grace = self
            .run
            .take()
            .map_or_else(|| "10s".to_string(), |r| r.grace);
        self.run = Some(Run {
            grace,
            migrate: Some(command.to_string()),
        });
        self
    }

    pub fn raft(mut self, raft: Raft) -> Config {
        self.raft = raft;
        self
    }

    /// Sets `dotted` (e.g. `raft.heartbeat`, `node.id`) to `value` over the rendering, whatever
    /// the typed sections say: for configs litefs-py must refuse.
    pub fn set(mut self, dotted: &str, value: impl Into<Value>) -> Config {
        self.overrides.push((dotted.to_string(), value.into()));
        self
    }

    pub fn to_yaml(&self) -> String {
        let mut doc = serde_yaml::to_value(self).expect("a config always renders");
        for (key, value) in &self.overrides {
            let mut at = &mut doc;
            for part in key.split('.') {
                if !at.is_mapping() {
                    *at = Value::Mapping(Default::default());
                }
                let map = at.as_mapping_mut().expect("a mapping, made just above");
                at = map
                    .entry(Value::String(part.to_string()))
                    .or_insert(Value::Null);
            }
            *at = value.clone();
        }
        serde_yaml::to_string(&doc).expect("a YAML value always renders")
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_yaml()).context(|| format!("writing {}", path.display()))
    }
}

/// The LiteFS config of the benchmark's baseline: one node, a static lease (always primary), no
/// `exec`, no backup, no proxy; LiteFS serves until stopped.
pub fn litefs_static(fuse_dir: &Path, data_dir: &Path, http_addr: &str, hostname: &str) -> String {
    let doc = serde_json::json!({
        "fuse": { "dir": fuse_dir },
        "data": { "dir": data_dir },
        "http": { "addr": http_addr },
        "lease": {
            "type": "static",
            "candidate": true,
            "hostname": hostname,
            "advertise-url": format!("http://{http_addr}"),
        },
    });
    serde_yaml::to_string(&doc).expect("a YAML value always renders")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config::node(
            1,
            "host-1",
            "127.0.0.1:1",
            "127.0.0.1:2",
            Path::new("/t/raft"),
        )
        .bootstrap(true)
        .peers(
            [
                (1, "127.0.0.1:1".to_string()),
                (2, "127.0.0.1:5".to_string()),
            ]
            .into(),
        )
        .mount(Path::new("/t/mnt"), Path::new("/t/lower"))
        .lease("127.0.0.1:3", Some("3s"))
    }

    #[test]
    fn renders_litefs_py_keys() {
        let y: Value = serde_yaml::from_str(&sample().to_yaml()).unwrap();
        assert_eq!(y["node"]["raft-addr"], "127.0.0.1:1");
        assert_eq!(y["cluster"]["bootstrap"], true);
        assert_eq!(y["cluster"]["peers"][2], "127.0.0.1:5");
        assert_eq!(y["cluster"]["data-dir"], "/t/raft");
        assert_eq!(y["mount"]["lower"], "/t/lower");
        assert_eq!(y["lease"]["ttl"], "3s");
        // Sections not asked for are absent (litefs-py's defaults apply).
        assert!(y.get("litefs").is_none() && y.get("raft").is_none() && y.get("run").is_none());
        assert!(y["cluster"].get("secret-file").is_none());
    }

    #[test]
    fn optional_sections_and_overrides() {
        let c = sample()
            .litefs(Path::new("/bin/litefs"), Path::new("/t/d"), "127.0.0.1:9")
            .run_grace("5s")
            .raft(Raft::from_ms(Some(100), None, Some(900)))
            .set("node.id", 0)
            .set("run.bogus", 1)
            .set("raft.heartbeat", "1s");
        let y: Value = serde_yaml::from_str(&c.to_yaml()).unwrap();
        assert_eq!(y["litefs"]["advertise-url"], "http://127.0.0.1:9");
        assert_eq!(y["run"]["grace"], "5s");
        assert_eq!(y["raft"]["heartbeat-interval"], "100ms");
        assert_eq!(y["raft"]["election-timeout-max"], "900ms");
        assert!(y["raft"].get("election-timeout-min").is_none());
        assert_eq!(y["node"]["id"], 0);
        assert_eq!(y["run"]["bogus"], 1);
        assert_eq!(y["raft"]["heartbeat"], "1s");
    }

    #[test]
    fn static_litefs_is_a_primary_on_loopback() {
        let c = litefs_static(
            Path::new("/t/fuse"),
            Path::new("/t/data"),
            "127.0.0.1:4321",
            "b",
        );
        let y: Value = serde_yaml::from_str(&c).unwrap();
        assert_eq!(y["lease"]["type"], "static");
        assert_eq!(y["lease"]["candidate"], true);
        assert_eq!(y["http"]["addr"], "127.0.0.1:4321");
        assert!(y.get("exec").is_none());
    }
}
