//! A [`RunCluster`] with litefs-py's proxy on every node (`proxy:` in each litefs-py.yml) and
//! the kit's [`App`] behind each proxy, served from the test process. Ports for the proxies and
//! the apps come from a block of their own. The benchmark's baseline puts LiteFS's own proxy
//! (`litefs.proxy`) there instead ([`Front::LiteFs`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{Options, RunCluster, SLEEPING_APP};
use crate::error::{Error, Result};
use crate::ports::Block;
use crate::proxy_app::App;

/// Which proxy sits in front of each node's app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// litefs-py's (`proxy:`).
    LitefsPy,
    /// LiteFS's own (`litefs.proxy`, tracking the app's database): it serves reads and answers
    /// a write on a replica with `fly-replay` only. litefs-py refuses both at once.
    LiteFs,
}

pub struct ProxyCluster {
    /// Dropped after the apps (fields drop in order): the apps hold no file of the mounts
    /// open between requests.
    pub apps: BTreeMap<u64, App>,
    pub cluster: RunCluster,
    pub front: Front,
    /// Node id -> `host:port` of its proxy (the [`Front`]'s).
    pub proxies: BTreeMap<u64, String>,
    /// Node id -> `host:port` of its app.
    pub app_addrs: BTreeMap<u64, String>,
}

impl ProxyCluster {
    /// Nodes 1..=n with a proxy each (`extra`: more `proxy:` keys and their values as written in
    /// a litefs-py.yml, e.g. `("primary-wait", "2s")` or `("read-your-writes", "false")`, a
    /// boolean), started; the apps serving. Returns at once: see
    /// [`RunCluster::wait_one_primary`].
    pub fn start(
        opts: Options,
        litefs: &Path,
        n: u64,
        extra: &[(&str, &str)],
    ) -> Result<ProxyCluster> {
        Self::start_with_front(opts, litefs, n, extra, Front::LitefsPy)
    }

    /// [`ProxyCluster::start`] with `front` in front of the apps (`extra`: more keys of its
    /// section, `proxy:` or `litefs.proxy:`).
    pub fn start_with_front(
        opts: Options,
        litefs: &Path,
        n: u64,
        extra: &[(&str, &str)],
        front: Front,
    ) -> Result<ProxyCluster> {
        let block = Block::reserve(2 * n as u16).map_err(Error::io("reserving ports"))?;
        let proxies: BTreeMap<u64, String> = (1..=n)
            .map(|id| (id, block.addr(2 * (id as u16 - 1))))
            .collect();
        let app_addrs: BTreeMap<u64, String> = (1..=n)
            .map(|id| (id, block.addr(2 * (id as u16 - 1) + 1)))
            .collect();
        let mut cluster = RunCluster::create_with(opts, litefs, n, |id, c| {
            let mut c = match front {
                Front::LitefsPy => c
                    .set("proxy.addr", proxies[&id].clone())
                    .set("proxy.target", app_addrs[&id].clone())
                    .set("proxy.advertise-url", format!("http://{}", proxies[&id])),
                Front::LiteFs => c
                    .set("litefs.proxy.addr", proxies[&id].clone())
                    .set("litefs.proxy.target", app_addrs[&id].clone())
                    .set("litefs.proxy.db", crate::proxy_app::DB),
            };
            let section = match front {
                Front::LitefsPy => "proxy",
                Front::LiteFs => "litefs.proxy",
            };
            for (k, v) in extra {
                c = c.set(&format!("{section}.{k}"), yaml_scalar(v));
            }
            c
        })?;
        let mut apps = BTreeMap::new();
        for id in 1..=n {
            apps.insert(id, App::start(&app_addrs[&id], id, cluster.mnt(id))?);
        }
        for node in cluster.nodes.values_mut() {
            node.start(SLEEPING_APP)?;
        }
        Ok(ProxyCluster {
            front,
            apps,
            cluster,
            proxies,
            app_addrs,
        })
    }

    pub fn proxy(&self, id: u64) -> &str {
        &self.proxies[&id]
    }

    /// Waits until one primary is agreed on and every proxy knows where every node's proxy is
    /// (a replica can forward); returns the primary.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<u64> {
        let primary = self
            .cluster
            .wait_one_primary(&self.cluster.ids(), timeout)?;
        Ok(primary)
    }

    /// kill -9 of node `id` ([`RunCluster::kill9`]) while its app makes no SQLite call
    /// ([`App::while_frozen`]).
    pub fn kill9(&mut self, id: u64) -> Result<()> {
        let ProxyCluster { apps, cluster, .. } = self;
        apps[&id].while_frozen(|| cluster.kill9(id))
    }

    /// Stops the apps, then the cluster (checked).
    pub fn shutdown(mut self) -> Result<()> {
        self.apps.clear();
        let ProxyCluster { cluster, .. } = self;
        cluster.shutdown()
    }
}

/// `v` typed as litefs-py reads it from its file (`false` a boolean, `2s` a string).
fn yaml_scalar(v: &str) -> serde_yaml::Value {
    serde_yaml::from_str(v).unwrap_or_else(|_| serde_yaml::Value::String(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::yaml_scalar;
    use serde_yaml::Value;

    #[test]
    fn extra_values_are_typed_as_in_a_file() {
        assert_eq!(yaml_scalar("false"), Value::Bool(false));
        assert_eq!(yaml_scalar("2s"), Value::String("2s".into()));
        assert_eq!(
            yaml_scalar("replicated"),
            Value::String("replicated".into())
        );
        assert_eq!(yaml_scalar("2"), Value::Number(2.into()));
    }
}
