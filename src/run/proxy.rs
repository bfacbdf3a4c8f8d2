//! The proxy's place in `litefs-py run` (docs/proxy.md): started right after the node (so that
//! a port in use is a start-up error before LiteFS starts), stopped by the supervisor right
//! before the app, after a stop handoff (the load balancer sees the port close; requests in
//! flight finish, bounded; then the app gets its signal).

use crate::config::Config;
use crate::node::Node;
use crate::proxy::{Proxy, ProxyError};

/// The proxy, if `proxy:` is configured.
pub(super) fn start(config: &Config, node: &Node) -> Result<Option<Proxy>, ProxyError> {
    let Some(proxy) = &config.proxy else {
        return Ok(None);
    };
    Proxy::start(
        proxy,
        &config.node.hostname,
        config.mount.lower.clone(),
        crate::litefs::local_http_addr(&config.litefs.http_addr),
        config.cluster.peers.len(),
        node.raft(),
        node.state().clone(),
    )
    .map(Some)
}

pub(super) fn stop(proxy: Option<Proxy>) {
    if let Some(p) = proxy {
        p.shutdown();
    }
}
