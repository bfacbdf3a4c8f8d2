//! `litefs-py.yml`: parsing (strict: an unknown key is an error naming it) and validation.
//!
//! Key names are fixed (docs/architecture.md, "Fixed interfaces"). Every error names the key it
//! is about, e.g. `cluster.peers: node.id 4 is not one of the peers (1, 2, 3)`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

mod identity;
mod litefs_proxy;
mod proxy;
mod raft_timing;
mod run;
mod security;
mod tls;
mod validate;
pub use identity::{Bootstrap, FROM_HOSTNAME, id_from_hostname, system_hostname};
pub use litefs_proxy::LiteFsProxyConfig;
pub use proxy::{Durability, ProxyConfig};
pub use raft_timing::RaftTiming;
pub use run::RunConfig;
pub use security::{
    CONSUL_TOKEN_ENV, LeaseToken, MIN_SECRET_LEN, check_hostname, check_private, write_private,
};
pub use tls::{Tls, TlsConfig, client_builder};
use validate::check_host_port;

/// Where `--config` is looked for when not given, in order.
pub const DEFAULT_PATHS: [&str; 2] = ["./litefs-py.yml", "/etc/litefs-py.yml"];
/// The environment variable that can hold the cluster secret instead of `cluster.secret-file`.
pub const SECRET_ENV: &str = "LITEFS_PY_SECRET";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("no config file: looked for {}", DEFAULT_PATHS.join(" and "))]
    NotFound,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataPathMode {
    /// `symlink` over LiteFS's own mount, `passthrough` over any other lower dir.
    #[default]
    Auto,
    Passthrough,
    Symlink,
}

impl DataPathMode {
    /// The shim's setting for this mode.
    pub fn for_shim(&self) -> litefs_py_fuse::DataPath {
        match self {
            DataPathMode::Auto => litefs_py_fuse::DataPath::Auto,
            DataPathMode::Passthrough => litefs_py_fuse::DataPath::Passthrough,
            DataPathMode::Symlink => litefs_py_fuse::DataPath::Symlink,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub mount: MountConfig,
    #[serde(default)]
    pub lease: LeaseConfig,
    #[serde(default)]
    pub litefs: LiteFsConfig,
    /// Raft timing knobs (optional; the defaults suit a LAN).
    #[serde(default)]
    pub raft: RaftTiming,
    /// How `litefs-py run` supervises LiteFS and the app (optional).
    #[serde(default)]
    pub run: RunConfig,
    /// litefs-py's own HTTP proxy in `litefs-py run` (optional; docs/proxy.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    /// Unique in the cluster, > 0; `from-hostname` derives it from the host name's ordinal
    /// (`app-2` → 3).
    #[serde(deserialize_with = "identity::node_id")]
    pub id: u64,
    /// What `.primary` shows on the other nodes [default: this machine's host name].
    #[serde(default = "identity::system_hostname")]
    pub hostname: String,
    /// `host:port` where peers reach this node's raft RPC [default: this node's entry in
    /// `cluster.peers`].
    #[serde(default)]
    pub raft_addr: String,
    /// `host:port` for status JSON and /metrics.
    pub http_addr: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
    /// Who creates the cluster on its first start: `true` on exactly one node, or `auto` on
    /// every node (the lowest-id data node creates it, and only once a majority of the peers
    /// said they belong to no cluster yet).
    #[serde(default)]
    pub bootstrap: Bootstrap,
    /// Voters, this node included: id -> raft address.
    #[serde(default, deserialize_with = "unique_peers")]
    pub peers: BTreeMap<u64, String>,
    /// File holding the shared secret peers authenticate with (or env LITEFS_PY_SECRET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    #[serde(default = "default_raft_dir")]
    pub data_dir: PathBuf,
    /// Mutual TLS for `node.raft-addr` and `node.http-addr` (unset: plain HTTP, for loopback
    /// clusters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            bootstrap: Bootstrap::Never,
            peers: BTreeMap::new(),
            secret_file: None,
            data_dir: default_raft_dir(),
            tls: None,
        }
    }
}

fn default_raft_dir() -> PathBuf {
    PathBuf::from("/var/lib/litefs-py/raft")
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MountConfig {
    #[serde(default = "default_mount_dir")]
    pub dir: PathBuf,
    #[serde(default = "default_lower")]
    pub lower: PathBuf,
    #[serde(default)]
    pub data_path: DataPathMode,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            dir: default_mount_dir(),
            lower: default_lower(),
            data_path: DataPathMode::default(),
        }
    }
}

fn default_mount_dir() -> PathBuf {
    PathBuf::from("/litefs")
}

pub fn default_lower() -> PathBuf {
    PathBuf::from("/var/lib/litefs-py/lower")
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LeaseConfig {
    /// The Consul-compatible lease API; loopback only.
    #[serde(default = "default_lease_addr")]
    pub addr: SocketAddr,
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Under `litefs-py mount`: the file holding the lease API's token, created (mode 0600) if
    /// missing; default `<cluster.data-dir>/lease.token`. `run` ignores it: it makes a new
    /// token each run and gives it to the LiteFS it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            addr: default_lease_addr(),
            ttl: default_ttl(),
            token_file: None,
        }
    }
}

fn default_lease_addr() -> SocketAddr {
    "127.0.0.1:20321".parse().expect("valid")
}

/// 1 s: a failover takes the raft failover plus the new leader's wait, which follows LiteFS's
/// demotion rule: 1.5 s after its last renewal with a 1 s TTL (3 s with 2 s), less the 200 ms
/// vote gap, plus margins, so about 1.5 s and a failover under 2.5 s. LiteFS renews every
/// ttl/2 = 500 ms; a session expires only after 2 × ttl without one (decisions.md, "Lease
/// defaults: ttl 1 s").
fn default_ttl() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LiteFsConfig {
    /// The LiteFS to run. Unset: the one bundled with the Python package (when `litefs-py`
    /// runs from a wheel), else `litefs` on `$PATH` ([`crate::litefs::process::litefs_binary`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<PathBuf>,
    #[serde(default = "default_litefs_data")]
    pub data_dir: PathBuf,
    #[serde(default = "default_litefs_http")]
    pub http_addr: String,
    /// How the other nodes' LiteFS reach this one; defaults to `http://<node.hostname>:<port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// LiteFS's HTTP proxy (its `proxy:` section), if wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<LiteFsProxyConfig>,
}

impl Default for LiteFsConfig {
    fn default() -> Self {
        LiteFsConfig {
            binary: None,
            data_dir: default_litefs_data(),
            http_addr: default_litefs_http(),
            advertise_url: None,
            proxy: None,
        }
    }
}

fn default_litefs_data() -> PathBuf {
    PathBuf::from("/var/lib/litefs")
}

fn default_litefs_http() -> String {
    ":20202".to_string()
}

/// A YAML mapping silently keeps the last of two equal keys; a duplicated peer id must be an
/// error instead.
fn unique_peers<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, String>, D::Error> {
    struct PeersVisitor;
    impl<'de> Visitor<'de> for PeersVisitor {
        type Value = BTreeMap<u64, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of node id to raft address")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((id, addr)) = map.next_entry::<u64, String>()? {
                if out.insert(id, addr).is_some() {
                    return Err(serde::de::Error::custom(format!("duplicate peer id {id}")));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(PeersVisitor)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.into(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// `--config` if given, else the first of [`DEFAULT_PATHS`] that exists.
    pub fn find(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
        if let Some(p) = explicit {
            return Ok(Some(p.to_path_buf()));
        }
        Ok(DEFAULT_PATHS.iter().map(PathBuf::from).find(|p| p.exists()))
    }

    /// [`Config::find`] then [`Config::load`], for commands that cannot run without a config.
    pub fn find_and_load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = Config::find(explicit)?.ok_or(ConfigError::NotFound)?;
        Config::load(&path)
    }

    /// Parses a config's text: `${VAR}` expanded from the environment first, then defaults
    /// that depend on other keys filled in, then [`Config::validate`].
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let text = identity::expand_env(text)?;
        let mut config: Config = serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        if config.node.raft_addr.is_empty() {
            config.node.raft_addr = config
                .cluster
                .peers
                .get(&config.node.id)
                .cloned()
                .ok_or_else(|| {
                    invalid(
                        "node.raft-addr",
                        format!(
                            "not set, and cluster.peers has no entry for node.id {}: set one of them",
                            config.node.id
                        ),
                    )
                })?;
        }
        config.validate()?;
        Ok(config)
    }

    /// `cluster.tls`, loaded (its files read and checked), if set.
    pub fn tls(&self) -> Result<Option<Tls>, ConfigError> {
        self.cluster.tls.as_ref().map(TlsConfig::load).transpose()
    }

    /// `https` with `cluster.tls`, else `http`: how peers and the CLI reach this node.
    pub fn scheme(&self) -> &'static str {
        if self.cluster.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `lease.token-file`, or its default `<cluster.data-dir>/lease.token`.
    pub fn lease_token_file(&self) -> PathBuf {
        self.lease
            .token_file
            .clone()
            .unwrap_or_else(|| self.cluster.data_dir.join("lease.token"))
    }

    /// Number of voters (this node alone when no peers are listed).
    pub fn voters(&self) -> usize {
        self.cluster.peers.len().max(1)
    }

    /// The shared secret: `cluster.secret-file`, else `$LITEFS_PY_SECRET`. A multi-node cluster
    /// must have one; a one-node cluster does not need it.
    pub fn secret(&self) -> Result<Option<String>, ConfigError> {
        const KEY: &str = "cluster.secret-file";
        let secret = match &self.cluster.secret_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid(KEY, format!("{}: {e}", path.display())))?;
                let s = text.trim().to_string();
                if s.is_empty() {
                    return Err(invalid(KEY, format!("{} is empty", path.display())));
                }
                security::check_private(KEY, path)?;
                security::check_secret(KEY, &path.display().to_string(), &s)?;
                Some(s)
            }
            None => match std::env::var(SECRET_ENV) {
                Ok(s) if !s.trim().is_empty() => {
                    let s = s.trim().to_string();
                    security::check_secret(KEY, &format!("${SECRET_ENV}"), &s)?;
                    Some(s)
                }
                Ok(_) => {
                    return Err(invalid(
                        "cluster.secret-file",
                        format!("${SECRET_ENV} is set but empty"),
                    ));
                }
                Err(_) => None,
            },
        };
        if secret.is_none() && self.voters() > 1 {
            return Err(invalid(
                "cluster.secret-file",
                format!(
                    "a cluster of {} nodes needs a shared secret: set cluster.secret-file or ${SECRET_ENV}",
                    self.voters()
                ),
            ));
        }
        Ok(secret)
    }

    /// The LiteFS advertise URL: explicit, or `http://<hostname>:<litefs http port>`.
    pub fn litefs_advertise_url(&self) -> String {
        if let Some(u) = &self.litefs.advertise_url {
            return u.clone();
        }
        let port = self
            .litefs
            .http_addr
            .rsplit_once(':')
            .map(|(_, p)| p)
            .unwrap_or("20202");
        format!("http://{}:{port}", self.node.hostname)
    }

    /// Resolves `node.raft-addr` (it may name a host).
    pub fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
        addr.to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{addr}: no address")))
    }

    /// The effective config, as YAML (defaults filled in), readable again by [`Config::parse`]:
    /// a `$` in a value is written `$$`, as the file spells a literal one.
    pub fn to_yaml(&self) -> String {
        identity::escape_env(&serde_yaml::to_string(self).expect("a config always serialises"))
    }
}

#[cfg(test)]
mod tests {
    use super::validate::is_loopback_addr;
    use super::*;

    const GOOD: &str = "
node:
  id: 1
  hostname: node-a
  raft-addr: 127.0.0.1:20301
  http-addr: 127.0.0.1:20311
cluster:
  bootstrap: true
  peers:
    1: 127.0.0.1:20301
    2: 127.0.0.1:20302
    3: 127.0.0.1:20303
  data-dir: /tmp/raft
lease:
  ttl: 3s
";

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.node.id, 1);
        assert_eq!(c.cluster.peers.len(), 3);
        assert_eq!(c.lease.ttl, Duration::from_secs(3));
        assert_eq!(c.mount.dir, PathBuf::from("/litefs"));
        assert_eq!(c.mount.data_path, DataPathMode::Auto);
        assert_eq!(c.litefs_advertise_url(), "http://node-a:20202");
        // The effective config round-trips.
        let again = Config::parse(&c.to_yaml()).unwrap();
        assert_eq!(again.cluster.peers, c.cluster.peers);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            err(&GOOD.replace("bootstrap: true", "bootstrap: true\n  bootstap: true"))
                .contains("unknown field `bootstap`")
        );
        assert!(
            err(&GOOD.replace("    3: 127.0.0.1:20303", "    2: 127.0.0.1:20303"))
                .contains("duplicate peer id 2")
        );
        assert!(
            err(&GOOD.replace("id: 1\n", "id: 4\n"))
                .starts_with("cluster.peers: node.id 4 is not one of the peers (1, 2, 3)")
        );
        assert!(err(&GOOD.replace("id: 1\n", "id: 0\n")).starts_with("node.id: must be > 0"));
        assert!(
            err(&GOOD.replace("raft-addr: 127.0.0.1:20301", "raft-addr: 127.0.0.1"))
                .starts_with("node.raft-addr:")
        );
        assert!(
            err(&GOOD.replace("    2: 127.0.0.1:20302", "    2: 127.0.0.1:99999"))
                .starts_with("cluster.peers:")
        );
        assert!(
            err(&GOOD.replace("  ttl: 3s", "  ttl: 3s\n  addr: 0.0.0.0:20321"))
                .starts_with("lease.addr:")
        );
        assert!(err(&GOOD.replace("  ttl: 3s", "  ttl: soon")).contains("ttl"));
        assert!(err("node: {id: 1}").contains("missing field `http-addr`"));
        assert!(
            err("node: {id: 1, http-addr: '127.0.0.1:1'}").starts_with(
                "node.raft-addr: not set, and cluster.peers has no entry for node.id 1"
            )
        );
        assert!(err(&GOOD.replace("id: 1\n", "id: one\n")).contains("\"one\" is not a node id"));
        assert!(
            err(&GOOD.replace("hostname: node-a", "hostname: \"node-a\\e[2J\""))
                .starts_with("node.hostname:")
        );
        assert!(
            err(&GOOD.replace("    2: 127.0.0.1:20302", "    2: \"bad\\nhost:20302\""))
                .starts_with("cluster.peers:")
        );
    }

    #[test]
    fn one_file_for_every_node() {
        // No raft-addr: this node's entry in cluster.peers; no hostname: the machine's.
        let c = Config::parse(
            "node: {id: 2, http-addr: '127.0.0.1:20311'}\n\
             cluster: {bootstrap: auto, peers: {1: 'a:1', 2: 'b:2', 3: 'c:3'}}\n",
        )
        .unwrap();
        assert_eq!(c.node.raft_addr, "b:2");
        assert_eq!(c.node.hostname, system_hostname());
        assert_eq!(c.cluster.bootstrap, Bootstrap::Auto);
        let again = Config::parse(&c.to_yaml()).unwrap();
        assert_eq!(again.cluster.bootstrap, Bootstrap::Auto);
    }

    #[test]
    fn a_status_port_off_loopback_is_warned_about() {
        let c = Config::parse(GOOD).unwrap();
        assert!(c.warnings().iter().all(|w| !w.contains("node.http-addr")));
        let c =
            Config::parse(&GOOD.replace("http-addr: 127.0.0.1:20311", "http-addr: 0.0.0.0:20311"))
                .unwrap();
        assert!(
            c.warnings()
                .iter()
                .any(|w| w.starts_with("node.http-addr 0.0.0.0:20311 is not a loopback")),
            "{:?}",
            c.warnings()
        );
        assert!(is_loopback_addr("localhost:1") && is_loopback_addr("[::1]:1"));
        assert!(!is_loopback_addr("node-a:1"));
        assert_eq!(c.lease_token_file(), PathBuf::from("/tmp/raft/lease.token"));
    }

    #[test]
    fn secrets() {
        let mut c = Config::parse(GOOD).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        security::write_private(&f, b"  s3cret-s3cret-s3cret\n").unwrap();
        c.cluster.secret_file = Some(f.clone());
        assert_eq!(c.secret().unwrap().as_deref(), Some("s3cret-s3cret-s3cret"));
        // Too short, or readable by others: refused, saying what to do.
        security::write_private(&f, b"s3cret\n").unwrap();
        let e = c.secret().unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
        security::write_private(&f, b"s3cret-s3cret-s3cret\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = c.secret().unwrap_err().to_string();
        assert!(e.contains(&format!("chmod 600 {}", f.display())), "{e}");
        std::fs::write(&f, "\n").unwrap();
        assert!(
            c.secret()
                .unwrap_err()
                .to_string()
                .starts_with("cluster.secret-file:")
        );
        c.cluster.secret_file = Some(dir.path().join("missing"));
        assert!(
            c.secret()
                .unwrap_err()
                .to_string()
                .starts_with("cluster.secret-file:")
        );
    }
}
