//! Every node's proxy URL, known to the whole cluster through raft (docs/proxy.md, "Proxy
//! addresses"): key `litefs-py/proxy/<node id>` in raft's key/value map, value
//! [`ProxyRecord`] as JSON, as the lease holder record is kept (`lease::records`).
//!
//! Only the raft leader can write. So each node's proxy keeps its own record right: the leader
//! writes its own at once (before its LiteFS can even be granted the lease, so a new primary's
//! address is there by the time replicas forward to it); a follower asks the leader's proxy to
//! write it (`POST` [`ANNOUNCE_PATH`], with the cluster secret), once it knows that address.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Shared;
use crate::raft::{NodeId, RaftNode, Request as RaftRequest};

/// Prefix of the raft keys.
pub const KEY_PREFIX: &str = "litefs-py/proxy/";
/// On a proxy's port, for the other nodes' proxies only (the cluster secret is required).
pub const ANNOUNCE_PATH: &str = "/.litefs-py/proxy/announce";
/// How often a proxy checks that its record is right (and retries when it is not).
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long an announcement to the leader may take.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn key(id: NodeId) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// What raft keeps about a node's proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ProxyRecord {
    /// `proxy.advertise-url`: how the other proxies reach it.
    pub url: String,
}

/// A follower's request to the leader: record `url` for node `id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announce {
    pub id: NodeId,
    pub url: String,
}

/// Node `id`'s proxy URL, as this node's state machine has it.
pub fn lookup(raft: &RaftNode, id: NodeId) -> Option<String> {
    let stored = raft.state_machine.get(&key(id))?;
    serde_json::from_str::<ProxyRecord>(&stored)
        .ok()
        .map(|r| r.url)
}

/// Writes node `id`'s record on the leader.
pub async fn record_here(raft: &RaftNode, id: NodeId, url: &str) -> Result<(), String> {
    if raft.metrics().state != ServerState::Leader {
        return Err("this node is not the raft leader".into());
    }
    let value = serde_json::to_string(&ProxyRecord { url: url.into() }).expect("serialises");
    raft.raft
        .client_write(RaftRequest::Set {
            key: key(id),
            value,
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Keeps this node's record right, until `stop`.
pub async fn keep_published(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut last_error = String::new();
    loop {
        if lookup(&shared.raft, shared.me).as_deref() != Some(shared.url.as_str()) {
            match publish_once(&shared).await {
                Ok(()) => {
                    tracing::info!(url = %shared.url, "recorded this node's proxy address in raft");
                    last_error.clear();
                }
                Err(e) if e != last_error => {
                    tracing::debug!("recording this node's proxy address: {e}; retrying");
                    last_error = e;
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            () = super::server::stopped(stop.clone()) => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

async fn publish_once(shared: &Shared) -> Result<(), String> {
    let m = shared.raft.metrics();
    if m.state == ServerState::Leader {
        return record_here(&shared.raft, shared.me, &shared.url).await;
    }
    let leader = m.current_leader.ok_or("no leader known")?;
    let leader_url = lookup(&shared.raft, leader)
        .ok_or_else(|| format!("the leader (node {leader}) has not recorded its proxy yet"))?;
    let announce = Announce {
        id: shared.me,
        url: shared.url.clone(),
    };
    let resp = shared
        .post_to_peer(&leader_url, ANNOUNCE_PATH, &announce, ANNOUNCE_TIMEOUT)
        .await
        .map_err(|e| format!("the leader's proxy: {e}"))?;
    if resp.status() == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("the leader's proxy answered {}", resp.status()))
    }
}
