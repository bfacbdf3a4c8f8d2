//! `proxy.durability: replicated` (docs/proxy.md, "Replicated durability"): on the primary, the
//! answer to an unsafe request is held until `proxy.min-replicas` replicas' LiteFS confirmed
//! the positions the primary had once its app answered.
//!
//! - Every node follows its own LiteFS's event stream ([`crate::litefs::events`]): its
//!   positions, pushed as transactions happen, and its history (the [`ledger`]).
//! - A replica reports its positions to the primary's proxy (`POST` [`POSITIONS_PATH`], with
//!   the cluster secret) whenever they change, and every [`RESEND`] anyway (a restarted primary
//!   has no reports). The primary never polls.
//! - The primary's waiters look again at every report and every transaction of its own.
//! - The app on the primary can wait the same way for what it committed outside the proxy
//!   (`GET` [`WAIT_PATH`], from loopback only): `litefs.django.wait_replicated()`.

pub mod ledger;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::ledger::Ledger;
use super::route::{self, Target};
use super::{Body, Shared, directory};
use crate::litefs::events::{self, Update};
use crate::litefs::positions::Positions;
use crate::raft::NodeId;

/// Where a replica's proxy reports its positions, on the primary's proxy (secret required).
pub const POSITIONS_PATH: &str = "/.litefs-py/positions";
/// Where the app waits for what it committed (loopback clients only; no secret).
pub const WAIT_PATH: &str = "/.litefs-py/replicated";
/// A replica reports again after this long even when nothing changed: a primary that
/// restarted, or a report that was lost, is caught up within it.
pub const RESEND: Duration = Duration::from_millis(500);
/// How often a replica looks for a new primary while its positions do not change.
const TICK: Duration = Duration::from_millis(50);
/// After a failed report, the wait before the next try.
const RETRY: Duration = Duration::from_millis(50);
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait the app may ask for.
const MAX_APP_WAIT: Duration = Duration::from_secs(60);

/// A replica's report.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub id: NodeId,
    pub positions: Positions,
}

/// The state one proxy keeps for replicated durability.
pub struct Replication {
    ledger: Mutex<Ledger>,
    /// Bumped on every change of the ledger: waiters look again.
    changed: watch::Sender<u64>,
    /// This node's LiteFS positions, once its event stream is followed.
    local: watch::Sender<Option<Positions>>,
    /// `proxy.min-replicas`, resolved.
    pub need: usize,
    /// `proxy.replica-wait`.
    pub wait: Duration,
}

impl Replication {
    pub fn new(need: usize, wait: Duration) -> Replication {
        Replication {
            ledger: Mutex::new(Ledger::default()),
            changed: watch::Sender::new(0),
            local: watch::Sender::new(None),
            need,
            wait,
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding it leaves a consistent ledger (every method is one step).
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn on_local(&self, update: Update) {
        match update {
            Update::Snapshot(now) => {
                self.ledger().restart(&now);
                self.local.send_replace(Some(now));
            }
            Update::Tx { db, pos } => {
                self.ledger().record(&db, pos);
                self.local.send_modify(|p| {
                    if let Some(p) = p {
                        p.insert(db, pos);
                    }
                });
            }
        }
        self.bump();
    }

    /// This node's LiteFS positions as its event stream last said, if it is followed.
    pub fn local(&self) -> Option<Positions> {
        self.local.borrow().clone()
    }

    pub fn report(&self, from: NodeId, positions: Positions) {
        self.ledger().report(from, positions);
        self.bump();
    }

    /// Until [`Self::need`] replicas confirmed `target`, or `within` passed: the replicas that
    /// confirmed it, `Ok` when they are enough.
    pub async fn confirmed(
        &self,
        target: &Positions,
        within: Duration,
    ) -> Result<Vec<NodeId>, Vec<NodeId>> {
        let deadline = tokio::time::Instant::now() + within;
        // Subscribed before the first look, so that no change in between is missed.
        let mut changes = self.changed.subscribe();
        loop {
            let got = self.ledger().confirmations(target);
            if got.len() >= self.need {
                return Ok(got);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(got),
            }
        }
    }
}

/// Follows this node's LiteFS (`litefs.http-addr`) until `stop`.
pub async fn follow_local(
    sh: Arc<Shared>,
    repl: Arc<Replication>,
    http: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let lower = sh.lower.clone();
    let on = |u: Update| {
        repl.on_local(u);
        !*stop.borrow()
    };
    tokio::select! {
        () = events::follow(http, lower, on) => {}
        () = super::server::stopped(stop.clone()) => {}
    }
}

/// On a replica: reports this node's positions to the primary's proxy as they change.
pub async fn keep_reporting(
    sh: Arc<Shared>,
    repl: Arc<Replication>,
    mut stop: watch::Receiver<bool>,
) {
    let mut local = repl.local.subscribe();
    let mut sent: Option<(NodeId, Positions, Instant)> = None;
    let mut last_error = String::new();
    loop {
        let target =
            route::unsafe_target(sh.state.load().view(), |id| directory::lookup(&sh.raft, id));
        let now = local.borrow_and_update().clone();
        let mut pause = TICK;
        if let (Ok(Target::Primary { node, url }), Some(positions)) = (target, now) {
            let fresh = sent
                .as_ref()
                .is_some_and(|(n, p, at)| *n == node && *p == positions && at.elapsed() < RESEND);
            if !fresh {
                match send(&sh, &url, &positions).await {
                    Ok(()) => {
                        sent = Some((node, positions, Instant::now()));
                        last_error.clear();
                    }
                    Err(e) => {
                        if e != last_error {
                            tracing::debug!("reporting positions to node {node}: {e}");
                            last_error = e;
                        }
                        pause = RETRY;
                    }
                }
            }
        }
        tokio::select! {
            () = super::server::stopped(stop.clone()) => return,
            r = local.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn send(sh: &Shared, url: &str, positions: &Positions) -> Result<(), String> {
    let report = Report {
        id: sh.me,
        positions: positions.clone(),
    };
    let resp = sh
        .post_to_peer(url, POSITIONS_PATH, &report, REPORT_TIMEOUT)
        .await?;
    let status = resp.status();
    if status == StatusCode::OK {
        return Ok(());
    }
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Err(format!("{url} answered {status}: {}", text.trim()))
}

/// `POST` [`POSITIONS_PATH`] from node `from` (authenticated): its report.
pub async fn receive(sh: &Shared, req: Request<Body>, from: NodeId) -> (StatusCode, String) {
    let Some(repl) = &sh.replication else {
        return (
            StatusCode::CONFLICT,
            format!(
                "node {} has proxy.durability: async and keeps no replica positions; give \
                 every node the same proxy.durability",
                sh.me
            ),
        );
    };
    // A map of database names and positions: small, but bounded all the same.
    let body = match http_body_util::Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()),
    };
    let report: Report = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not a report: {e}")),
    };
    if report.id != from || report.id == sh.me {
        return (
            StatusCode::BAD_REQUEST,
            format!("a report for node {} from node {from}", report.id),
        );
    }
    repl.report(from, report.positions);
    (StatusCode::OK, "recorded".into())
}

/// What [`WAIT_PATH`] answers, as JSON.
#[derive(Debug, Serialize)]
pub struct WaitAnswer {
    /// Whether enough replicas confirmed `positions`.
    pub replicated: bool,
    /// The replicas that did.
    pub replicas: Vec<NodeId>,
    pub needed: usize,
    /// This node's positions when the call came (what was waited for).
    pub positions: Positions,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET` [`WAIT_PATH`]`?timeout-ms=N` from the app on this node: waits until what this node's
/// LiteFS has committed so far is on enough replicas.
pub async fn app_wait(
    sh: &Shared,
    query: Option<&str>,
    peer: SocketAddr,
) -> (StatusCode, WaitAnswer) {
    let refuse = |status, error: String| {
        (
            status,
            WaitAnswer {
                replicated: false,
                replicas: Vec::new(),
                needed: sh.replication.as_ref().map_or(0, |r| r.need),
                positions: Positions::new(),
                error: Some(error),
            },
        )
    };
    if !peer.ip().is_loopback() {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("{WAIT_PATH} is for the app on this node (loopback) only"),
        );
    }
    let Some(repl) = &sh.replication else {
        return refuse(
            StatusCode::CONFLICT,
            "proxy.durability is async on this node: nothing waits for replicas; set \
             proxy.durability: replicated"
                .into(),
        );
    };
    if sh.state.load().view().role() != litefs_py_fuse::Role::Primary {
        return refuse(
            StatusCode::CONFLICT,
            format!(
                "node {} is not the primary: only the primary's commits are waited for",
                sh.me
            ),
        );
    }
    let within = match timeout_param(query, repl.wait) {
        Ok(w) => w,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let Some(target) = super::handler::positions(sh).await else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node's LiteFS positions could not be read".into(),
        );
    };
    let (replicated, replicas) = match repl.confirmed(&target, within).await {
        Ok(r) => (true, r),
        Err(r) => (false, r),
    };
    let status = if replicated {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    (
        status,
        WaitAnswer {
            replicated,
            error: (!replicated).then(|| {
                format!(
                    "{} of {} replicas confirmed within {within:?}",
                    replicas.len(),
                    repl.need
                )
            }),
            replicas,
            needed: repl.need,
            positions: target,
        },
    )
}

/// `timeout-ms=N` in a query, at most [`MAX_APP_WAIT`]; `default` without it.
fn timeout_param(query: Option<&str>, default: Duration) -> Result<Duration, String> {
    let Some(v) = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "timeout-ms")
        .map(|(_, v)| v)
    else {
        return Ok(default);
    };
    let ms: u64 = v
        .parse()
        .map_err(|_| format!("timeout-ms={v:?}: not a number of milliseconds"))?;
    let d = Duration::from_millis(ms);
    if d > MAX_APP_WAIT {
        return Err(format!(
            "timeout-ms={ms}: at most {}",
            MAX_APP_WAIT.as_millis()
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::litefs::positions::Pos;

    fn at(txid: u64) -> Positions {
        [(
            "app.db".to_string(),
            Pos {
                txid,
                checksum: txid,
            },
        )]
        .into()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_returns_once_enough_replicas_confirmed() {
        let repl = Arc::new(Replication::new(2, Duration::from_secs(5)));
        repl.on_local(Update::Snapshot(at(1)));
        repl.on_local(Update::Tx {
            db: "app.db".into(),
            pos: Pos {
                txid: 2,
                checksum: 2,
            },
        });
        assert_eq!(repl.local(), Some(at(2)));
        let waiter = {
            let repl = repl.clone();
            tokio::spawn(async move { repl.confirmed(&at(2), Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        repl.report(2, at(2));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one replica is not enough");
        repl.report(3, at(2));
        assert_eq!(waiter.await.unwrap(), Ok(vec![2, 3]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_gives_up_at_its_bound_with_what_it_got() {
        let repl = Replication::new(1, Duration::from_secs(5));
        repl.on_local(Update::Snapshot(at(7)));
        repl.report(2, at(6));
        assert_eq!(
            repl.confirmed(&at(7), Duration::from_millis(300)).await,
            Err(vec![])
        );
    }

    #[test]
    fn the_apps_timeout_is_bounded() {
        let d = Duration::from_secs(5);
        assert_eq!(timeout_param(None, d), Ok(d));
        assert_eq!(
            timeout_param(Some("x=1&timeout-ms=250"), d),
            Ok(Duration::from_millis(250))
        );
        assert!(timeout_param(Some("timeout-ms=abc"), d).is_err());
        assert!(timeout_param(Some("timeout-ms=600000"), d).is_err());
    }
}
