//! `litefs.proxy` in litefs-py.yml: LiteFS's HTTP proxy, copied into the generated litefs.yml.

use serde::{Deserialize, Serialize};

use super::{ConfigError, check_host_port, invalid};

/// `litefs.proxy`: copied into LiteFS's `proxy:` section. LiteFS requires all three of addr,
/// target and db once a proxy is configured, so they are required here too.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LiteFsProxyConfig {
    /// Where the proxy listens, `host:port` or `:port`.
    pub addr: String,
    /// The app's HTTP server, `host:port`.
    pub target: String,
    /// The database whose TXID the proxy tracks (a file name in the mount).
    pub db: String,
    /// Path patterns the proxy passes through untouched (LiteFS's glob syntax, e.g. `*.css`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passthrough: Vec<String>,
}

impl LiteFsProxyConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // `:port` (all interfaces) is how LiteFS's own examples bind the proxy.
        let addr = self
            .addr
            .strip_prefix(':')
            .map_or_else(|| self.addr.clone(), |port| format!("0.0.0.0:{port}"));
        check_host_port("litefs.proxy.addr", &addr)?;
        check_host_port("litefs.proxy.target", &self.target)?;
        if self.db.is_empty() || self.db.contains('/') || self.db == "." || self.db == ".." {
            return Err(invalid(
                "litefs.proxy.db",
                format!("{:?} must be a database file name (no '/')", self.db),
            ));
        }
        if let Some(p) = self.passthrough.iter().find(|p| p.trim().is_empty()) {
            return Err(invalid(
                "litefs.proxy.passthrough",
                format!("{p:?}: empty pattern"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "
node:
  id: 1
  hostname: node-a
  raft-addr: 127.0.0.1:20301
  http-addr: 127.0.0.1:20311
litefs:
  proxy:
    addr: \":8080\"
    target: localhost:8081
    db: app.db
    passthrough: [\"*.css\"]
";

    fn err(from: &str, to: &str) -> String {
        Config::parse(&BASE.replace(from, to))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parsed_strictly_and_validated() {
        let c = Config::parse(BASE).unwrap();
        let p = c.litefs.proxy.as_ref().unwrap();
        assert_eq!((p.addr.as_str(), p.db.as_str()), (":8080", "app.db"));
        assert_eq!(p.passthrough, ["*.css"]);
        assert!(Config::parse(&c.to_yaml()).unwrap().litefs.proxy.is_some());
        assert!(err("db: app.db", "db: a/b.db").starts_with("litefs.proxy.db:"));
        assert!(err("localhost:8081", "localhost").starts_with("litefs.proxy.target:"));
        assert!(err("\":8080\"", "\":0\"").starts_with("litefs.proxy.addr:"));
        assert!(err("\"*.css\"", "\" \"").starts_with("litefs.proxy.passthrough:"));
        assert!(err("    db: app.db\n", "").contains("missing field `db`"));
        assert!(err("db: app.db", "db: app.db\n    dbs: x").contains("unknown field `dbs`"));
    }
}
