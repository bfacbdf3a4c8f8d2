//! Talking to the local daemon over `node.http-addr`: what `status` and `cluster` use.
//!
//! redb locks the raft data file for the daemon's process, so these commands never open it
//! themselves: they ask the running node.

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::handoff::{FORWARD_TIMEOUT, HandoffOutcome, HandoffRequest};
use crate::node::StatusReport;
use crate::node::paths;
use crate::raft::membership::{AddRequest, MembershipOutcome, RemoveRequest};

const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// A membership change waits for a learner to catch up (30 s at most) and two commits.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one daemon.
pub struct DaemonClient {
    base: String,
    secret: Option<String>,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl DaemonClient {
    /// `http_addr` is the node's `node.http-addr`; with `tls` (`cluster.tls`), HTTPS with the
    /// node's own certificate as client certificate and the cluster CA as the only roots.
    pub fn new(
        http_addr: &str,
        secret: Option<String>,
        tls: Option<crate::config::Tls>,
    ) -> anyhow::Result<DaemonClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut builder = crate::config::client_builder().no_proxy();
        let scheme = match tls {
            Some(tls) => {
                builder =
                    builder.tls_backend_preconfigured(rustls::ClientConfig::clone(&tls.client));
                "https"
            }
            None => "http",
        };
        let http = builder.build()?;
        Ok(DaemonClient {
            base: format!("{scheme}://{http_addr}"),
            secret,
            rt,
            http,
        })
    }

    fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let response = request.send().await.map_err(|e| {
                // Connected but no answer in time: the daemon may still be at it.
                let waited = (e.is_timeout() && !e.is_connect()).then_some(timeout);
                anyhow::anyhow!(send_error(&url, waited, &e.source_chain_last()))
            })?;
            let status = response.status();
            let text = response
                .text()
                .await
                .with_context(|| format!("reading {url}"))?;
            if !status.is_success() {
                let msg = text.trim();
                if status == reqwest::StatusCode::UNAUTHORIZED {
                    bail!("{url}: the daemon rejected our cluster secret (401): {msg}");
                }
                bail!("{msg} ({status} from {url})");
            }
            serde_json::from_str(&text).with_context(|| format!("{url}: unexpected answer"))
        })
    }

    fn post<Req: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let secret = self.secret.as_deref().context(
            "no cluster secret: set cluster.secret-file or $LITEFS_PY_SECRET (membership changes and handoffs require it)",
        )?;
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(secret)
            .json(body)
            .timeout(timeout);
        self.send(req, path, timeout)
    }

    /// `GET /status`; with `litefs`, every member's LiteFS positions and lag too (the daemon
    /// asks each member within 1 s, so this stays within [`STATUS_TIMEOUT`]).
    pub fn status(&self, litefs: bool) -> anyhow::Result<StatusReport> {
        let query = if litefs { "?litefs=true" } else { "" };
        let req = self
            .http
            .get(format!("{}{}{query}", self.base, paths::STATUS))
            .timeout(STATUS_TIMEOUT);
        self.send(req, paths::STATUS, STATUS_TIMEOUT)
    }

    pub fn add(&self, id: u64, raft_addr: &str) -> anyhow::Result<MembershipOutcome> {
        let body = AddRequest {
            id,
            raft_addr: raft_addr.to_string(),
        };
        self.post(paths::CLUSTER_ADD, &body, CHANGE_TIMEOUT)
    }

    pub fn remove(&self, id: u64) -> anyhow::Result<MembershipOutcome> {
        self.post(paths::CLUSTER_REMOVE, &RemoveRequest { id }, CHANGE_TIMEOUT)
    }

    /// `handoff [--to ID]`: bounded by the leader's own steps (each has a timeout).
    pub fn handoff(&self, to: Option<u64>) -> anyhow::Result<HandoffOutcome> {
        let body = HandoffRequest { to };
        self.post(
            paths::CLUSTER_HANDOFF,
            &body,
            FORWARD_TIMEOUT + Duration::from_secs(5),
        )
    }
}

/// Why a request got no answer. `waited`: the daemon was reached but did not answer within it.
fn send_error(url: &str, waited: Option<Duration>, why: &str) -> String {
    match waited {
        Some(timeout) => format!(
            "no answer from the litefs-py daemon at {url} within {timeout:?}; the request may still complete (a handoff or membership change goes on without this client): check `litefs-py status`"
        ),
        None => format!(
            "cannot reach the litefs-py daemon at {url} (node.http-addr): {why}; is `litefs-py run`, `litefs-py mount` or `litefs-py witness` running with this config?"
        ),
    }
}

trait SourceChainLast {
    fn source_chain_last(&self) -> String;
}

impl SourceChainLast for reqwest::Error {
    /// reqwest says "error sending request"; the innermost cause says why (refused, reset).
    fn source_chain_last(&self) -> String {
        let mut last: &dyn std::error::Error = self;
        while let Some(s) = last.source() {
            last = s;
        }
        last.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_answer_in_time_is_not_unreachable() {
        let url = "http://127.0.0.1:7070/cluster/handoff";
        let late = send_error(url, Some(Duration::from_secs(95)), "operation timed out");
        assert!(late.contains("within 95s"), "{late}");
        assert!(late.contains("may still complete"), "{late}");
        assert!(late.contains("`litefs-py status`"), "{late}");
        assert!(!late.contains("cannot reach"), "{late}");
        let down = send_error(url, None, "Connection refused");
        assert!(down.contains("cannot reach"), "{down}");
        assert!(down.contains("Connection refused"), "{down}");
        assert!(down.contains("`litefs-py run`"), "{down}");
    }
}
