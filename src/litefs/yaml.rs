//! The litefs.yml that makes LiteFS follow litefs-py: generated from litefs-py.yml.
//!
//! LiteFS runs with `lease.type: consul` pointed at this node's lease API (`lease.addr`,
//! loopback), which answers from raft (see `crate::lease`, and docs/architecture.md, "LiteFS's Consul client"). Everything LiteFS needs to know is
//! derived here, so the two configs cannot disagree: the FUSE dir is `mount.lower` (the shim is
//! mounted over it), the TTL is `lease.ttl` (the lease API's arithmetic assumes it), the key and
//! lock delay are litefs-py constants. `exec` stays unset: litefs-py runs the app itself, after
//! both mounts are up.

use std::time::Duration;

use serde::Serialize;

use crate::config::Config;

/// The Consul key LiteFS locks (`lease.consul.key` in the generated litefs.yml). The lease API
/// (`crate::lease`) answers for it, and keeps the raft key/value entry of the same name that
/// tells every node who holds it.
pub const LEASE_KEY: &str = "litefs/primary";

/// The lock delay written into litefs.yml and applied by the lease API: how long after a
/// holder's session is invalidated (expired, destroyed) the lock stays unavailable, as in
/// Consul. One second is LiteFS's fixed renew timeout: a primary whose renewals fail keeps
/// believing it is primary for up to that long past its last attempt (it sleeps 1 s before
/// demoting itself). A new leader's wait does not use it: it follows LiteFS's whole renewal
/// rule (`crate::lease::state::litefs_hold`).
pub const LOCK_DELAY: Duration = Duration::from_secs(1);

/// LiteFS's `lease.reconnect-delay`: its pause between attempts to acquire the lease or reach
/// the primary (LiteFS's default is 1 s). Half a second keeps an attempt inside the window in
/// which a new leader holds an early acquire (lease.ttl / 2, at least 250 ms with ttl >= 500 ms
/// ... so with the default 1 s ttl always), and lets replicas reconnect to a new primary
/// sooner; each attempt is a few loopback calls to the lease API.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum LiteFsConfigError {
    /// LiteFS expands `$VAR` and `${VAR}` in its config file (unless run with
    /// `-no-expand-env`), so a `$` would silently change the value.
    #[error("{key}: {value:?} contains '$', which LiteFS would expand as an environment variable")]
    Dollar { key: &'static str, value: String },
}

/// LiteFS v0.5.14's config (`cmd/litefs/config.go`), the parts we set. Key names are LiteFS's;
/// LiteFS parses strictly, so nothing else may appear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiteFsYaml {
    pub fuse: Fuse,
    pub data: Data,
    pub http: Http,
    pub lease: Lease,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fuse {
    pub dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Data {
    pub dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Http {
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Lease {
    #[serde(rename = "type")]
    pub kind: String,
    pub hostname: String,
    pub advertise_url: String,
    /// Every data node may become primary; raft decides which one does.
    pub candidate: bool,
    /// How long LiteFS sleeps after a failed acquire or a lost primary before trying again
    /// (Go duration syntax); see [`RECONNECT_DELAY`].
    pub reconnect_delay: String,
    pub consul: Consul,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Consul {
    pub url: String,
    pub key: String,
    /// Go duration syntax (`3s`, `1500ms`): LiteFS decodes it with `time.ParseDuration`.
    pub ttl: String,
    pub lock_delay: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proxy {
    pub addr: String,
    pub target: String,
    pub db: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub passthrough: Vec<String>,
}

/// A duration as Go's `time.ParseDuration` reads it, exactly (no rounding).
pub fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

fn no_dollar(key: &'static str, value: String) -> Result<String, LiteFsConfigError> {
    if value.contains('$') {
        return Err(LiteFsConfigError::Dollar { key, value });
    }
    Ok(value)
}

/// The LiteFS config for this node, as a structure.
pub fn litefs_yaml(config: &Config) -> Result<LiteFsYaml, LiteFsConfigError> {
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let proxy = match &config.litefs.proxy {
        None => None,
        Some(p) => Some(Proxy {
            addr: no_dollar("litefs.proxy.addr", p.addr.clone())?,
            target: no_dollar("litefs.proxy.target", p.target.clone())?,
            db: no_dollar("litefs.proxy.db", p.db.clone())?,
            passthrough: p
                .passthrough
                .iter()
                .map(|s| no_dollar("litefs.proxy.passthrough", s.clone()))
                .collect::<Result<_, _>>()?,
        }),
    };
    Ok(LiteFsYaml {
        fuse: Fuse {
            dir: no_dollar("mount.lower", path(&config.mount.lower))?,
        },
        data: Data {
            dir: no_dollar("litefs.data-dir", path(&config.litefs.data_dir))?,
        },
        http: Http {
            addr: no_dollar("litefs.http-addr", config.litefs.http_addr.clone())?,
        },
        lease: Lease {
            kind: "consul".into(),
            hostname: no_dollar("node.hostname", config.node.hostname.clone())?,
            advertise_url: no_dollar("litefs.advertise-url", config.litefs_advertise_url())?,
            candidate: true,
            reconnect_delay: go_duration(RECONNECT_DELAY),
            consul: Consul {
                // A SocketAddr displays IPv6 in brackets, as a URL needs. No path: with a path
                // LiteFS would prefix its keys and register a catalog node.
                url: format!("http://{}", config.lease.addr),
                key: LEASE_KEY.into(),
                ttl: go_duration(config.lease.ttl),
                lock_delay: go_duration(LOCK_DELAY),
            },
        },
        proxy,
    })
}

/// The LiteFS config for this node, as the YAML text `litefs mount -config` reads.
pub fn generate(config: &Config) -> Result<String, LiteFsConfigError> {
    let yaml = serde_yaml::to_string(&litefs_yaml(config)?).expect("plain structs serialise");
    Ok(format!(
        "# Generated by `litefs-py config litefs` from litefs-py.yml. Do not edit: regenerate.\n\
         # LiteFS follows litefs-py's raft cluster through the lease API at {}.\n{yaml}",
        config.lease.addr
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "
node:
  id: 1
  hostname: node-a
  raft-addr: 127.0.0.1:20301
  http-addr: 127.0.0.1:20311
mount:
  lower: /var/lib/litefs-py/lower
lease:
  addr: 127.0.0.1:20321
  ttl: 3s
litefs:
  data-dir: /var/lib/litefs
  http-addr: \":20202\"
";

    #[test]
    fn derives_everything_from_litefs_py_yml() {
        let c = Config::parse(BASE).unwrap();
        let y = litefs_yaml(&c).unwrap();
        assert_eq!(y.fuse.dir, "/var/lib/litefs-py/lower");
        assert_eq!(y.data.dir, "/var/lib/litefs");
        assert_eq!(y.http.addr, ":20202");
        assert_eq!(y.lease.kind, "consul");
        assert_eq!(y.lease.hostname, "node-a");
        assert_eq!(y.lease.advertise_url, "http://node-a:20202");
        assert!(y.lease.candidate);
        assert_eq!(y.lease.consul.url, "http://127.0.0.1:20321");
        assert_eq!(y.lease.consul.key, "litefs/primary");
        assert_eq!(y.lease.consul.ttl, "3s");
        assert_eq!(y.lease.consul.lock_delay, "1s");
        assert_eq!(y.lease.reconnect_delay, "500ms");
        assert_eq!(y.proxy, None);
        let text = generate(&c).unwrap();
        assert!(text.starts_with("# Generated by `litefs-py config litefs`"));
        // No exec section: litefs-py starts the app itself.
        assert!(!text.contains("exec"));
        // The text is YAML with LiteFS's key names.
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(v["lease"]["consul"]["lock-delay"].as_str(), Some("1s"));
        assert_eq!(v["lease"]["reconnect-delay"].as_str(), Some("500ms"));
        assert_eq!(
            v["lease"]["advertise-url"].as_str(),
            Some("http://node-a:20202")
        );
        assert_eq!(v["http"]["addr"].as_str(), Some(":20202"));
    }

    #[test]
    fn proxy_ipv6_and_durations() {
        let text = BASE
            .replace("127.0.0.1:20321", "\"[::1]:20321\"")
            .replace("3s", "1500ms")
            + "  proxy:\n    addr: \":8080\"\n    target: localhost:8081\n    db: app.db\n    passthrough: [\"*.css\"]\n";
        let c = Config::parse(&text).unwrap();
        let y = litefs_yaml(&c).unwrap();
        assert_eq!(y.lease.consul.url, "http://[::1]:20321");
        assert_eq!(y.lease.consul.ttl, "1500ms");
        let p = y.proxy.unwrap();
        assert_eq!(
            (p.addr.as_str(), p.target.as_str(), p.db.as_str()),
            (":8080", "localhost:8081", "app.db")
        );
        assert_eq!(p.passthrough, ["*.css"]);
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1500ns");
    }

    #[test]
    fn a_dollar_is_refused_with_its_key() {
        let c = Config::parse(&BASE.replace("hostname: node-a", "hostname: node-$$HOST")).unwrap();
        let e = litefs_yaml(&c).unwrap_err().to_string();
        assert!(e.starts_with("node.hostname:"), "{e}");
    }
}
