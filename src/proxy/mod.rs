//! litefs-py's HTTP proxy in `litefs-py run` (docs/proxy.md): on every node, in front of the
//! app. Safe requests (GET, HEAD, OPTIONS, TRACE) go to the node's own app; unsafe ones go to
//! the primary's app, forwarded to the primary's proxy from a replica; while no primary is
//! known they wait up to `proxy.primary-wait`, then get 503 with `Retry-After`. A request whose
//! outcome is unknown is never sent twice.
//!
//! - [`route`]: where a request goes, a rule over the node's view;
//! - [`consistency`]: read-your-writes, the positions cookie;
//! - [`headers`]: hop-by-hop headers, `X-Forwarded-*`/`Forwarded`, the proxies' own headers;
//! - [`handler`]: one request, its body streamed, upgrades spliced;
//! - [`directory`]: every node's proxy URL in raft's key/value map;
//! - [`replication`]: `durability: replicated`, the replicas' positions and the waits on them;
//! - [`waits`]: an unsafe request's waits for a primary that takes it;
//! - [`server`]: the listener and its connections (hyper, HTTP/1.1).
//!
//! It sits above [`crate::node`] (docs/architecture.md, "Layers and the dependency rule"): it
//! reads the node's view (the role) and its raft handle, and runs on a tokio runtime of its
//! own, so that a flood of client requests cannot delay raft's heartbeats on the node's.

mod consistency;
mod directory;
mod handler;
mod headers;
mod lent;
mod replication;
mod route;
mod server;
mod waits;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use litefs_py_fuse::StateHandle;
use tokio::sync::watch;

use crate::config::{Durability, ProxyConfig};
use crate::litefs::positions::PositionReader;
use crate::raft::network::Secret;
use crate::raft::{NodeId, RaftNode};
use crate::task_set::TaskSet;

/// Every body the proxy passes on or makes: streamed, never collected. The error type is
/// hyper's (what a streamed body fails with) rather than a boxed error: with a boxed one, the
/// compiler cannot prove the client's request future `Send` (a higher-ranked `From` bound).
type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// How long the proxy waits for the local LiteFS's `/info` (it answers in a millisecond).
const LITEFS_API_TIMEOUT: Duration = Duration::from_millis(500);
/// How long connections get to finish their requests at shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// Pooled connections to the app and to other proxies are closed after this long unused:
/// shorter than common app servers' keep-alive (gunicorn: 2 s), so that the proxy seldom sends
/// a request on a connection the server is closing (an unsafe request could not be re-sent).
const POOL_IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy.addr {addr}: cannot listen: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("the proxy's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("proxy.durability: replicated: {0}")]
    Replication(String),
}

/// What every request handler and task of one proxy shares.
struct Shared {
    me: NodeId,
    /// This proxy's advertise URL.
    url: String,
    /// The app, `host:port`.
    target: String,
    primary_wait: Duration,
    /// `proxy.read-your-writes`.
    read_your_writes: bool,
    /// LiteFS's mount (`mount.lower`): its `<db>-pos` files are the positions.
    lower: PathBuf,
    /// Reads them after every write and while a read waits for this node to catch up.
    positions: Arc<PositionReader>,
    raft: Arc<RaftNode>,
    state: StateHandle,
    client: Client<HttpConnector, Body>,
    secret: Option<Secret>,
    stop: watch::Receiver<bool>,
    /// `durability: replicated`: the replicas' positions; `None` with `async`.
    replication: Option<Arc<replication::Replication>>,
    /// The local LiteFS's API (`host:port`) and a client for it: a write goes to this node's
    /// app only once LiteFS itself says it is primary ([`waits`]).
    litefs_api: Option<(String, reqwest::Client)>,
    /// The raft term in which LiteFS said so (0: none yet).
    writable_term: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// `POST` of `body` as JSON to `path` on another node's proxy at `url`, as this node (its id
    /// and the cluster secret), answered within `timeout`: the proxies' own calls to each other.
    async fn post_to_peer(
        &self,
        url: &str,
        path: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        use http_body_util::{BodyExt, Full};
        let secret = self
            .secret
            .as_ref()
            .ok_or("no cluster secret: the proxies cannot call each other")?;
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let req = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(format!("{url}{path}"))
            .header(headers::FORWARDED_BY, self.me.to_string())
            .header(headers::PROXY_AUTH, secret.bearer())
            .header("content-type", "application/json")
            .body(
                Full::new(Bytes::from(body))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| format!("{url} did not answer in time"))?
            .map_err(|e| format!("{url}: {e}"))
    }
}

/// A running proxy. [`Proxy::shutdown`] stops it (dropping it stops its runtime abruptly).
pub struct Proxy {
    rt: tokio::runtime::Runtime,
    stop: watch::Sender<bool>,
    tasks: TaskSet,
}

impl Proxy {
    /// Binds `proxy.addr` and serves; records this proxy's URL in raft in the background.
    /// `hostname` is `node.hostname` (the default advertise URL's host); `lower` is
    /// `mount.lower`; `litefs_http` is where the local LiteFS's API answers (its event stream,
    /// for `durability: replicated`); `peers` is how many voters `cluster.peers` lists (0:
    /// not listed), for the default of `min-replicas`.
    pub fn start(
        config: &ProxyConfig,
        hostname: &str,
        lower: PathBuf,
        litefs_http: Option<SocketAddr>,
        peers: usize,
        raft: Arc<RaftNode>,
        state: StateHandle,
    ) -> Result<Proxy, ProxyError> {
        if config.durability == Durability::Replicated && litefs_http.is_none() {
            return Err(ProxyError::Replication(
                "litefs.http-addr does not resolve to an address: the proxy cannot follow \
                 LiteFS's positions"
                    .into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("litefs-py-proxy")
            .enable_all()
            .build()
            .map_err(ProxyError::Runtime)?;
        let addr = config.listen_addr();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(&addr))
            .map_err(|source| ProxyError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener.local_addr().map_err(ProxyError::Runtime)?;
        let (stop, stop_rx) = watch::channel(false);
        let _guard = rt.enter();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        let shared = Arc::new(Shared {
            me: raft.settings.id,
            url: config.advertise_url(hostname),
            target: config.target.clone(),
            primary_wait: config.primary_wait,
            read_your_writes: config.read_your_writes,
            positions: Arc::new(PositionReader::new(&lower)),
            litefs_api: litefs_http.and_then(|a| {
                let client = crate::litefs::info::client(LITEFS_API_TIMEOUT).ok()?;
                Some((a.to_string(), client))
            }),
            writable_term: std::sync::atomic::AtomicU64::new(0),
            lower,
            secret: raft.transport.secret.clone(),
            raft,
            state,
            client,
            stop: stop_rx.clone(),
            replication: (config.durability == Durability::Replicated).then(|| {
                Arc::new(replication::Replication::new(
                    config.replicas_needed(peers),
                    config.replica_wait,
                ))
            }),
        });
        let tasks = TaskSet::default();
        tasks.spawn(server::serve(listener, shared.clone(), stop_rx.clone()));
        tasks.spawn(directory::keep_published(shared.clone(), stop_rx.clone()));
        if let Some(repl) = &shared.replication {
            let http = litefs_http.expect("checked at the start");
            tasks.spawn(replication::follow_local(
                shared.clone(),
                repl.clone(),
                http,
                stop_rx.clone(),
            ));
            tasks.spawn(replication::keep_reporting(
                shared.clone(),
                repl.clone(),
                stop_rx,
            ));
            tracing::info!(
                min_replicas = repl.need,
                wait = ?repl.wait,
                "durability: replicated: writes are answered once replicas confirmed them"
            );
        }
        tracing::info!(
            addr = %local,
            target = %shared.target,
            url = %shared.url,
            "the proxy is serving"
        );
        drop(_guard);
        Ok(Proxy { rt, stop, tasks })
    }

    /// Stops accepting, lets requests in flight finish (bounded), then stops its runtime.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        self.rt.block_on(
            self.tasks
                .join_within(DRAIN + Duration::from_secs(1), "proxy"),
        );
        self.rt.shutdown_timeout(Duration::from_secs(1));
        tracing::info!("the proxy stopped");
    }
}
