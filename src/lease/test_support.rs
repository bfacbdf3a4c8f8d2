//! What the lease API tests share: a fake raft the tests steer (who leads, in which term, since
//! when, with a fresh ack or not, what the LiteFS survey says) and the API over real HTTP (axum
//! on a random loopback port, reqwest as the client).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use super::consul::KvPair;
use super::freshest::Survey;
use super::server::{self, LeaseServer};
use super::state::HolderRecord;
use super::{LEASE_KEY, LeaseParams, LeaseService, RaftFacts, RaftNow, WriteError};
use crate::raft::{NodeId, Request, Response};

#[derive(Debug)]
pub struct FakeRaft {
    pub is_leader: bool,
    pub fresh: bool,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub since: Option<Instant>,
    pub kv: BTreeMap<String, String>,
    pub cluster_id: Option<String>,
    pub fail_writes: bool,
    pub applied_term: Option<u64>,
    /// The facts read, in order (`get <key>`, `applied_term`).
    pub reads: Vec<String>,
    /// What `survey_litefs` answers (`Ok(None)`: no LiteFS of its own), and how often it was
    /// asked.
    pub survey: Result<Option<Survey>, String>,
    pub surveys: usize,
    /// Every `transfer_leadership(to, term)`.
    pub transfers: Vec<(NodeId, u64)>,
}

#[derive(Clone)]
pub struct Fake(pub Arc<Mutex<FakeRaft>>);

impl Fake {
    /// Node 1, leader of term 1 for long enough that no wait applies.
    pub fn leader() -> Fake {
        Fake(Arc::new(Mutex::new(FakeRaft {
            is_leader: true,
            fresh: true,
            term: 1,
            leader: Some(1),
            since: Instant::now().checked_sub(Duration::from_secs(60)),
            kv: BTreeMap::new(),
            cluster_id: None,
            fail_writes: false,
            applied_term: None,
            reads: Vec::new(),
            survey: Ok(None),
            surveys: 0,
            transfers: Vec::new(),
        })))
    }

    pub fn set(&self, f: impl FnOnce(&mut FakeRaft)) {
        f(&mut self.0.lock());
    }

    pub fn follow(&self, leader: NodeId, term: u64) {
        self.set(|r| {
            r.is_leader = false;
            r.fresh = false;
            r.leader = Some(leader);
            r.term = term;
            r.since = None;
        });
    }

    pub fn lead(&self, term: u64, since: Instant) {
        self.set(|r| {
            r.is_leader = true;
            r.fresh = true;
            r.leader = Some(1);
            r.term = term;
            r.since = Some(since);
        });
    }

    pub fn record(&self) -> Option<HolderRecord> {
        serde_json::from_str(self.0.lock().kv.get(LEASE_KEY)?).ok()
    }
}

impl RaftFacts for Fake {
    fn node_id(&self) -> NodeId {
        1
    }
    fn now(&self) -> RaftNow {
        let r = self.0.lock();
        RaftNow {
            now: Instant::now(),
            term: r.term,
            leader: r.leader,
            is_leader: r.is_leader,
            fresh: r.fresh,
            leader_since: r.since,
        }
    }
    fn get(&self, key: &str) -> Option<String> {
        let mut r = self.0.lock();
        r.reads.push(format!("get {key}"));
        r.kv.get(key).cloned()
    }
    fn applied_term(&self) -> Option<u64> {
        let mut r = self.0.lock();
        r.reads.push("applied_term".into());
        r.applied_term
    }
    fn cluster_id(&self) -> Option<String> {
        self.0.lock().cluster_id.clone()
    }
    async fn write(&self, request: Request) -> Result<Response, WriteError> {
        let mut r = self.0.lock();
        if !r.is_leader || r.fail_writes {
            return Err(WriteError("not the leader".into()));
        }
        let value = match request {
            Request::SetClusterId { cluster_id } => {
                Some(r.cluster_id.get_or_insert(cluster_id).clone())
            }
            Request::Set { key, value } => r.kv.insert(key, value),
            Request::Delete { key } => r.kv.remove(&key),
        };
        Ok(Response { value })
    }
    async fn changed(&self) {
        std::future::pending::<()>().await
    }
    async fn survey_litefs(&self) -> Result<Option<Survey>, String> {
        let mut r = self.0.lock();
        r.surveys += 1;
        r.survey.clone()
    }
    fn transfer_leadership(&self, to: NodeId, term: u64) {
        self.0.lock().transfers.push((to, term));
    }
}

pub const BODY: &str = r#"{"hostname":"node-a","advertise-url":"http://node-a:20202"}"#;
/// The advertise URL in [`BODY`]: the test node's own.
pub const ADVERTISE: &str = "http://node-a:20202";
pub const TOKEN: &str = "test-lease-token-0123456789";

pub fn token() -> crate::config::LeaseToken {
    crate::config::LeaseToken::new(TOKEN)
}
pub const SESSION: &str =
    r#"{"Behavior":"delete","LockDelay":"1000ms","Name":"litefs","NodeChecks":[],"TTL":"2s"}"#;

/// A new-leader wait of about 2.3 s (LiteFS's 3 s hold for a 2 s TTL - a 0.8 s vote gap +
/// 0.1 s, plus 7 ms of drift): long enough to tell "refused" from "held" (half a TTL).
pub fn params() -> LeaseParams {
    LeaseParams {
        ttl: Duration::from_secs(2),
        lock_delay: Duration::from_millis(200),
        margin: Duration::from_millis(100),
        claim: Duration::from_millis(200),
        vote_lease: Duration::from_millis(1000),
        max_sessions: 8,
    }
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub fake: Fake,
    server: Option<LeaseServer>,
    _service: Arc<LeaseService<Fake>>,
}

impl Api {
    pub async fn start(fake: Fake) -> Api {
        let addr = "127.0.0.1:0".parse().unwrap();
        let (server, service) = server::start(fake.clone(), params(), addr, ADVERTISE, &token())
            .await
            .unwrap();
        Api {
            base: format!("http://{}", server.addr),
            http: crate::config::client_builder().build().unwrap(),
            fake,
            server: Some(server),
            _service: service,
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(server::TOKEN_HEADER, TOKEN)
            .body(body.to_string())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    pub async fn session(&self) -> String {
        let (status, body) = self.call("PUT", "/v1/session/create", SESSION).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["ID"].as_str().unwrap().to_string()
    }

    pub async fn acquire(&self, id: &str) -> (u16, String) {
        self.call("PUT", &format!("/v1/kv/{LEASE_KEY}?acquire={id}"), BODY)
            .await
    }

    pub async fn primary(&self) -> Option<KvPair> {
        let (status, body) = self.call("GET", &format!("/v1/kv/{LEASE_KEY}"), "").await;
        match status {
            404 => None,
            200 => {
                let mut pairs: Vec<KvPair> = serde_json::from_str(&body).unwrap();
                assert_eq!(pairs.len(), 1);
                pairs.pop()
            }
            other => panic!("GET {LEASE_KEY}: {other} {body}"),
        }
    }

    pub async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await;
    }
}

pub async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
