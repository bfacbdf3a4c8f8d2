//! `proxy:` in litefs-py.yml: litefs-py's own HTTP proxy in `litefs-py run`, on every node.
//! Safe requests go to the local app; unsafe ones go to the primary's app, forwarded through
//! the primary's proxy from a replica (docs/proxy.md).
//!
//! How it relates to `litefs.proxy` (LiteFS's own proxy, copied into the generated litefs.yml):
//! they are two proxies for one job, and only one may sit in front of the app. LiteFS's answers
//! a write on a replica with an empty response and `fly-replay`, which only Fly.io's edge acts
//! on; this one forwards it. So a config with both is refused, naming both keys.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, check_host_port, invalid};

/// What an unsafe request's answer waits for before it goes back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Answered as soon as the primary's app answered (LiteFS replicates afterwards).
    #[default]
    Async,
    /// Held until `min-replicas` replicas' LiteFS confirmed what the primary had committed once
    /// its app answered; a 504 saying so if they do not within `replica-wait`.
    Replicated,
}

/// The longest `proxy.primary-wait` and `proxy.replica-wait` accepted: a client or load
/// balancer gives up long before.
const MAX_PRIMARY_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProxyConfig {
    /// Where clients and the load balancer connect, `host:port` or `:port` (every interface).
    pub addr: String,
    /// The app on this node, `host:port` (gunicorn, ...).
    pub target: String,
    /// How the other nodes' proxies reach this one [default: `http://<node.hostname>:<port of
    /// addr>`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    #[serde(default)]
    pub durability: Durability,
    /// With `durability: replicated`: how many replicas must confirm a write [default: enough
    /// that every quorum of the survivors of a primary crash includes one of them: `n - (n/2 +
    /// 1)` for `n` peers, at least 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<usize>,
    /// With `durability: replicated`: how long a write's answer waits for them before it is
    /// answered 504 (committed on the primary, not confirmed replicated).
    #[serde(default = "default_primary_wait", with = "humantime_serde")]
    pub replica_wait: Duration,
    /// How long an unsafe request waits for a primary while none is known (a failover), before
    /// it is answered 503 with `Retry-After`.
    #[serde(default = "default_primary_wait", with = "humantime_serde")]
    pub primary_wait: Duration,
    /// After an unsafe request, a cookie with the primary's committed positions; a replica
    /// serves a request carrying it once caught up (else the primary does). `false` turns the
    /// cookie off for everyone; a client opts out by not sending it back.
    #[serde(default = "default_true")]
    pub read_your_writes: bool,
}

fn default_true() -> bool {
    true
}

/// LiteFS's proxy waits 5 s for a replica to catch up; the same bound here for a primary.
fn default_primary_wait() -> Duration {
    Duration::from_secs(5)
}

/// `:port` means every interface, as LiteFS's own proxy config writes it.
pub(super) fn listen_addr(addr: &str) -> String {
    addr.strip_prefix(':')
        .map_or_else(|| addr.to_string(), |port| format!("0.0.0.0:{port}"))
}

impl ProxyConfig {
    /// `proxy.addr` as a socket address to bind (`:port` becomes `0.0.0.0:port`).
    pub fn listen_addr(&self) -> String {
        listen_addr(&self.addr)
    }

    /// `proxy.advertise-url`, else `http://<hostname>:<port of addr>`; no trailing `/`.
    pub fn advertise_url(&self, hostname: &str) -> String {
        if let Some(u) = &self.advertise_url {
            return u.trim_end_matches('/').to_string();
        }
        let port = self.addr.rsplit_once(':').map_or("80", |(_, p)| p);
        format!("http://{hostname}:{port}")
    }

    /// The proxy's URL from this host: `proxy.addr` with a wildcard host made loopback.
    pub fn local_url(&self) -> String {
        let addr = self.listen_addr();
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "80"));
        let host = match host {
            "0.0.0.0" | "" => "127.0.0.1",
            "[::]" => "[::1]",
            h => h,
        };
        format!("http://{host}:{port}")
    }

    /// `min-replicas`, or its default for a cluster of `peers` voters (0: not listed).
    pub fn replicas_needed(&self, peers: usize) -> usize {
        self.min_replicas
            .unwrap_or_else(|| peers.saturating_sub(peers / 2 + 1).max(1))
    }

    /// `peers`: how many voters `cluster.peers` lists (0: not listed).
    pub(super) fn validate(&self, peers: usize) -> Result<(), ConfigError> {
        check_host_port("proxy.addr", &self.listen_addr())?;
        check_host_port("proxy.target", &self.target)?;
        if listen_addr(&self.target) == self.listen_addr() || self.target == self.addr {
            return Err(invalid(
                "proxy.target",
                format!(
                    "{} is proxy.addr itself: the target is the app's own address",
                    self.target
                ),
            ));
        }
        if let Some(url) = &self.advertise_url {
            check_url("proxy.advertise-url", url)?;
        }
        if let Some(n) = self.min_replicas {
            if self.durability != Durability::Replicated {
                return Err(invalid(
                    "proxy.min-replicas",
                    "only means something with proxy.durability: replicated",
                ));
            }
            // Up to a majority of the voters: more would stop every write while any one
            // replica is down, for no gain in what survives a primary crash.
            let majority = peers / 2 + 1;
            if n == 0 || (peers > 0 && (n > majority || n >= peers)) {
                return Err(invalid(
                    "proxy.min-replicas",
                    if peers > 0 {
                        format!(
                            "{n}: must be 1 to {} for the {peers} voters of cluster.peers",
                            majority.min(peers - 1)
                        )
                    } else {
                        format!("{n}: must be at least 1")
                    },
                ));
            }
        }
        if self.durability == Durability::Replicated && peers == 1 {
            return Err(invalid(
                "proxy.durability",
                "replicated needs replicas, and cluster.peers lists one node: use async",
            ));
        }
        for (key, wait) in [
            ("proxy.primary-wait", self.primary_wait),
            ("proxy.replica-wait", self.replica_wait),
        ] {
            if wait > MAX_PRIMARY_WAIT {
                return Err(invalid(
                    key,
                    format!("{wait:?} is longer than {MAX_PRIMARY_WAIT:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// `http://host:port[/]`: plain HTTP (proxies talk to each other without TLS, like raft's
/// transport), a host, an explicit or default port, no path.
fn check_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        invalid(
            key,
            format!("{url:?} must start with http:// (the proxies talk plain HTTP to each other)"),
        )
    })?;
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') || authority.contains('?') || authority.contains('#') {
        return Err(invalid(
            key,
            format!("{url:?}: no path allowed, only http://host:port"),
        ));
    }
    // A port after the host (after the `]` of an IPv6 literal), else HTTP's default.
    let host_end = authority.rfind(']').unwrap_or(0);
    let with_port = if authority[host_end..].contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    check_host_port(key, &with_port)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Durability;
    use crate::config::Config;

    const BASE: &str = "
node:
  id: 1
  hostname: node-a
  raft-addr: 127.0.0.1:20301
  http-addr: 127.0.0.1:20311
proxy:
  addr: \":8080\"
  target: 127.0.0.1:8081
";

    fn err(from: &str, to: &str) -> String {
        Config::parse(&BASE.replace(from, to))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_and_the_advertise_url() {
        let c = Config::parse(BASE).unwrap();
        let p = c.proxy.as_ref().unwrap();
        assert_eq!(p.listen_addr(), "0.0.0.0:8080");
        assert_eq!(p.durability, Durability::Async);
        assert_eq!(p.replica_wait, Duration::from_secs(5));
        assert_eq!(p.primary_wait, Duration::from_secs(5));
        assert!(p.read_your_writes);
        assert_eq!(p.advertise_url("node-a"), "http://node-a:8080");
        assert_eq!(p.local_url(), "http://127.0.0.1:8080");
        let c = Config::parse(&BASE.replace(
            "  target: 127.0.0.1:8081\n",
            "  target: 127.0.0.1:8081\n  advertise-url: http://10.0.0.1:9000/\n  primary-wait: 2s\n",
        ))
        .unwrap();
        let p = c.proxy.as_ref().unwrap();
        assert_eq!(p.advertise_url("node-a"), "http://10.0.0.1:9000");
        assert_eq!(p.primary_wait, Duration::from_secs(2));
        // The effective config round-trips.
        assert!(Config::parse(&c.to_yaml()).unwrap().proxy.is_some());
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("\":8080\"", "\":0\"").starts_with("proxy.addr:"));
        assert!(err("127.0.0.1:8081", "localhost").starts_with("proxy.target:"));
        assert!(err("127.0.0.1:8081", "\":8080\"").starts_with("proxy.target:"));
        let with = |line: &str| {
            err(
                "  target: 127.0.0.1:8081\n",
                &format!("  target: 127.0.0.1:8081\n  {line}\n"),
            )
        };
        assert!(with("advertise-url: https://a:1").starts_with("proxy.advertise-url:"));
        assert!(with("advertise-url: http://a:1/x").starts_with("proxy.advertise-url:"));
        assert!(with("advertise-url: http://:1").starts_with("proxy.advertise-url:"));
        assert!(with("min-replicas: 1").starts_with("proxy.min-replicas:"));
        assert!(
            with("durability: replicated\n  min-replicas: 0").starts_with("proxy.min-replicas:")
        );
        assert!(
            with("durability: replicated\n  replica-wait: 2m").starts_with("proxy.replica-wait:")
        );
        assert!(with("durability: sync").contains("unknown variant `sync`"));
        assert!(with("primary-wait: 2m").starts_with("proxy.primary-wait:"));
        assert!(with("tagret: x").contains("unknown field `tagret`"));
        assert!(err("  target: 127.0.0.1:8081\n", "").contains("missing field `target`"));
        // Two proxies in front of one app: refused, naming both.
        let both = BASE.to_string()
            + "litefs:\n  proxy:\n    addr: \":9090\"\n    target: 127.0.0.1:8081\n    db: app.db\n";
        let e = Config::parse(&both).unwrap_err().to_string();
        assert!(e.starts_with("proxy:") && e.contains("litefs.proxy"), "{e}");
    }

    #[test]
    fn replicated_durability_and_how_many_replicas() {
        let peers = |n: u64| {
            let mut s = String::from("cluster:\n  peers:\n");
            for id in 1..=n {
                s += &format!("    {id}: 127.0.0.1:{}\n", 20300 + id);
            }
            s
        };
        let with = |n: u64, lines: &str| {
            Config::parse(&format!(
                "{}{}",
                BASE.replace(
                    "  target: 127.0.0.1:8081\n",
                    &format!("  target: 127.0.0.1:8081\n  durability: replicated\n{lines}")
                ),
                peers(n)
            ))
        };
        let need = |n: u64, lines: &str| {
            let c = with(n, lines).unwrap();
            c.proxy
                .as_ref()
                .unwrap()
                .replicas_needed(c.cluster.peers.len())
        };
        // The default: every quorum of the survivors of a primary crash holds a confirmed copy.
        assert_eq!(need(3, ""), 1);
        assert_eq!(need(5, ""), 2);
        assert_eq!(need(7, ""), 3);
        assert_eq!(need(5, "  min-replicas: 3\n"), 3);
        let e = with(3, "  min-replicas: 3\n").unwrap_err().to_string();
        assert!(
            e.starts_with("proxy.min-replicas: 3: must be 1 to 2"),
            "{e}"
        );
        let e = with(1, "").unwrap_err().to_string();
        assert!(e.starts_with("proxy.durability:"), "{e}");
    }
}
