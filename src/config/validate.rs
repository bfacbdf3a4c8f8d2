//! Checking a parsed config: the rules across keys (ids, peers, addresses, paths that must not
//! nest, the proxies), each error naming its key; and the warnings about what is allowed but
//! risky.

use std::time::Duration;

use super::{Config, ConfigError, invalid, security};

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.id == 0 {
            return Err(invalid("node.id", "must be > 0"));
        }
        if self.node.hostname.trim().is_empty() {
            return Err(invalid("node.hostname", "must not be empty"));
        }
        security::check_hostname("node.hostname", &self.node.hostname)?;
        if let Some(url) = &self.litefs.advertise_url
            && url.contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "litefs.advertise-url",
                format!("{url:?} contains a space or a control character"),
            ));
        }
        check_host_port("node.raft-addr", &self.node.raft_addr)?;
        check_host_port("node.http-addr", &self.node.http_addr)?;
        if let Some(id) = self.cluster.peers.keys().find(|id| **id == 0) {
            return Err(invalid(
                "cluster.peers",
                format!("peer id {id} must be > 0"),
            ));
        }
        for addr in self.cluster.peers.values() {
            check_host_port("cluster.peers", addr)?;
        }
        if !self.cluster.peers.is_empty() {
            match self.cluster.peers.get(&self.node.id) {
                None => {
                    let ids: Vec<String> = self.cluster.peers.keys().map(u64::to_string).collect();
                    return Err(invalid(
                        "cluster.peers",
                        format!(
                            "node.id {} is not one of the peers ({})",
                            self.node.id,
                            ids.join(", ")
                        ),
                    ));
                }
                Some(addr) if *addr != self.node.raft_addr => {
                    return Err(invalid(
                        "cluster.peers",
                        format!(
                            "peer {} is {addr:?} but node.raft-addr is {:?}: they must match",
                            self.node.id, self.node.raft_addr
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if !self.lease.addr.ip().is_loopback() {
            return Err(invalid(
                "lease.addr",
                format!(
                    "{} is not a loopback address: the lease API must not be reachable from other hosts",
                    self.lease.addr
                ),
            ));
        }
        if self.lease.ttl < Duration::from_millis(500) || self.lease.ttl > Duration::from_secs(60) {
            return Err(invalid(
                "lease.ttl",
                format!("{:?} is outside 500ms..=60s", self.lease.ttl),
            ));
        }
        if self.mount.dir.starts_with(&self.mount.lower) {
            return Err(invalid("mount.dir", "must not be inside mount.lower"));
        }
        // LiteFS mounts its FUSE file system at mount.lower and keeps its own files in
        // litefs.data-dir: one inside the other would hide the data behind the mount.
        if self.litefs.data_dir.starts_with(&self.mount.lower)
            || self.mount.lower.starts_with(&self.litefs.data_dir)
        {
            return Err(invalid(
                "litefs.data-dir",
                format!(
                    "{} and mount.lower {} must not be the same directory or inside each other",
                    self.litefs.data_dir.display(),
                    self.mount.lower.display()
                ),
            ));
        }
        if let Some(proxy) = &self.litefs.proxy {
            proxy.validate()?;
        }
        if let Some(proxy) = &self.proxy {
            proxy.validate(self.cluster.peers.len())?;
            if self.litefs.proxy.is_some() {
                return Err(invalid(
                    "proxy",
                    "set either proxy (litefs-py's proxy, which forwards writes) or litefs.proxy \
                     (LiteFS's, for Fly.io), not both: only one can sit in front of the app",
                ));
            }
        }
        self.raft.validate()?;
        self.run.validate()?;
        Ok(())
    }

    /// Things that are allowed but that the operator should know.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.voters() == 2 {
            out.push(
                "cluster.peers: two voters cannot fail over (losing either loses the quorum); \
                 add a third voter running `litefs-py witness`"
                    .to_string(),
            );
        }
        let plain = self.cluster.tls.is_none();
        if plain && self.cluster.peers.values().any(|a| !is_loopback_addr(a)) {
            out.push(
                "cluster.peers: peers on other hosts without cluster.tls: the cluster secret \
                 and raft traffic travel in clear; set cluster.tls (docs/operations.md, \
                 \"Security\")"
                    .to_string(),
            );
        }
        if plain && !is_loopback_addr(&self.node.http_addr) {
            out.push(format!(
                "node.http-addr {} is not a loopback address: /status and /metrics answer \
                 anyone who can reach it, without the cluster secret (roles, addresses, lag); \
                 firewall the port or set cluster.tls (docs/operations.md, \"Security\")",
                self.node.http_addr
            ));
        }
        out
    }
}

/// Whether a `host:port` names a loopback address (`localhost`, 127.0.0.0/8, `[::1]`).
pub(super) fn is_loopback_addr(addr: &str) -> bool {
    let Some((host, _)) = addr.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks a `host:port` address: a port in 1..=65535, and a host that is an IP address (IPv6 in
/// brackets, with a numeric zone if any) or a DNS name (letters, digits, `-`, `.`, `_`). A URL
/// or a path in its place is refused here, naming the key, rather than failing later at a
/// connect.
pub(super) fn check_host_port(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| invalid(key, format!("{value:?} is not host:port")))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            invalid(
                key,
                format!("{value:?}: port {port:?} is not a number in 1..=65535"),
            )
        })?;
    if host.is_empty() {
        return Err(invalid(key, format!("{value:?}: missing host")));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // A link-local address may carry a numeric zone (`[fe80::1%2]`), as Rust's socket
        // addresses read it.
        let (ip, zone) = inner.split_once('%').unwrap_or((inner, "0"));
        if ip.parse::<std::net::Ipv6Addr>().is_err() || zone.parse::<u32>().is_err() {
            return Err(invalid(
                key,
                format!("{value:?}: {host} is not an IPv6 address"),
            ));
        }
        return Ok(());
    }
    if host.contains(':') {
        return Err(invalid(
            key,
            format!(
                "{value:?}: a host with ':' (an IPv6 address goes in brackets, [::1]:PORT; a \
                 URL's scheme does not belong here)"
            ),
        ));
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(invalid(
            key,
            format!(
                "{value:?}: the host has {bad:?}, which no host name or IP address has (give \
                 host:port, not a URL or a path)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_host_port;

    #[test]
    fn hosts_are_ip_addresses_or_dns_names() {
        for ok in [
            "127.0.0.1:1",
            "node-a:20202",
            "node_a.svc.cluster.local:8080",
            "[::1]:65535",
            "[fe80::1]:1",
            "[fe80::1%2]:1",
        ] {
            check_host_port("k", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            ("node-a", "is not host:port"),
            ("node-a:0", "port \"0\""),
            ("node-a:http", "port \"http\""),
            (":8080", "missing host"),
            ("http://node-a:8080", "a host with ':'"),
            ("::1:8080", "a host with ':'"),
            ("[node-a]:1", "not an IPv6 address"),
            ("[fe80::1%eth0]:1", "not an IPv6 address"),
            ("node a:1", "the host has ' '"),
            ("node/a:1", "the host has '/'"),
            ("node-a\n:1", "the host has '\\n'"),
        ] {
            let e = check_host_port("k", bad).unwrap_err().to_string();
            assert!(e.starts_with("k: ") && e.contains(says), "{bad}: {e}");
        }
    }
}
