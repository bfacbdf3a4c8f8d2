//! LiteFS's `GET /info`: whether it is primary and which primary it follows. The one client
//! of it, used by the handoff, the readiness probe and the test kit.

use std::time::Duration;

use serde::Deserialize;

/// What LiteFS v0.5.14's `GET /info` says (`{"clusterID", "isPrimary", "candidate",
/// "primary": {"hostname", ...}, ...}`); `primary` is absent while none is known. Fields this
/// crate does not read are left out; unknown ones are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    #[serde(rename = "clusterID", default)]
    pub cluster_id: Option<String>,
    pub is_primary: bool,
    /// Whether this LiteFS may become primary (`lease.candidate`).
    #[serde(default)]
    pub candidate: bool,
    #[serde(default)]
    pub primary: Option<PrimaryInfo>,
}

/// The primary LiteFS follows (or itself), as `/info` names it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrimaryInfo {
    #[serde(default)]
    pub hostname: String,
}

impl Info {
    /// The primary's hostname, if `/info` names one.
    pub fn primary_hostname(&self) -> Option<&str> {
        self.primary
            .as_ref()
            .map(|p| p.hostname.as_str())
            .filter(|h| !h.is_empty())
    }

    /// LiteFS is primary or knows a primary.
    pub fn primary_known(&self) -> bool {
        self.is_primary || self.primary_hostname().is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("GET {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("GET /info: {0}")]
    Runtime(std::io::Error),
}

fn url(http_addr: &str) -> String {
    format!("http://{http_addr}/info")
}

/// `GET /info` on LiteFS's API at `http_addr` (`host:port`). Timeouts are the client's (or the
/// caller's).
pub async fn get(client: &reqwest::Client, http_addr: &str) -> Result<Info, InfoError> {
    let url = url(http_addr);
    let http = |source| InfoError::Http {
        url: url.clone(),
        source,
    };
    client
        .get(&url)
        .send()
        .await
        .map_err(http)?
        .error_for_status()
        .map_err(http)?
        .json()
        .await
        .map_err(http)
}

/// A client for LiteFS's loopback API: no proxy (an `http_proxy` in the environment must not
/// catch loopback calls), every request bounded by `timeout`.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    crate::config::client_builder()
        .no_proxy()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
}

/// [`get`] for callers without a runtime (threads, tests): a current-thread runtime over it,
/// the request bounded by `timeout`. Not from inside a tokio runtime (tokio refuses to block
/// there); use [`get`] with [`client`] instead.
pub fn get_blocking(http_addr: &str, timeout: Duration) -> Result<Info, InfoError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(InfoError::Runtime)?;
    let client = client(timeout).map_err(|source| InfoError::Http {
        url: url(http_addr),
        source,
    })?;
    rt.block_on(get(&client, http_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Option<Info> {
        serde_json::from_str(body).ok()
    }

    #[test]
    fn what_info_says() {
        let replica = r#"{"clusterID": "LFSC1", "isPrimary": false, "candidate": true,
            "primary": {"hostname": "node-a", "advertiseURL": "http://node-a:20202"}}"#;
        let i = parse(replica).unwrap();
        assert!(!i.is_primary && i.candidate && i.primary_known());
        assert_eq!(i.primary_hostname(), Some("node-a"));
        assert_eq!(i.cluster_id.as_deref(), Some("LFSC1"));
        let alone = replica.replace("node-a", "");
        let i = parse(&alone).unwrap();
        assert_eq!(i.primary_hostname(), None);
        assert!(!i.primary_known());
        let primary = parse(r#"{"isPrimary": true}"#).unwrap();
        assert!(primary.primary_known());
        assert_eq!(primary.primary_hostname(), None);
        // Not LiteFS's answer: no isPrimary, not an object, or "} {".
        for body in ["{}", "} {", "}{", "}", "{", "x } y { z"] {
            assert!(parse(body).is_none(), "{body:?}");
        }
    }

    #[test]
    fn nobody_answering_is_an_error_naming_the_url() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let e = get_blocking(&addr, Duration::from_millis(500)).unwrap_err();
        assert!(
            e.to_string().contains(&format!("http://{addr}/info")),
            "{e}"
        );
    }
}
