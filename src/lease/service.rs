//! The lease rules ([`LeaseState`]) over a [`RaftFacts`] source: what each Consul call does,
//! the raft writes behind it, and the background task that keeps the replicated holder record
//! right.
//!
//! Before a term's first grant the leader also makes sure no reachable LiteFS is fresher than
//! its own ([`super::freshest`], where that part of the service is); if one is, it hands raft
//! leadership there instead.
//!
//! Answers must come quickly: LiteFS's Consul client has no request timeout, so a renewal we
//! never answered would keep a LiteFS primary forever. Renewals, releases and reads therefore
//! never wait for raft; only acquire (bounded: one short hold plus one raft write with a
//! timeout) and the cluster id write do.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::consul::{self, KvPair, SessionEntry};
use super::freshest::{Freshness, WAIT_FOR_SILENT_PEERS};
use super::records::{HANDOFF_KEY, HandoffRecord, waives};
use super::state::{
    AcquireCheck, HolderRecord, LeaseParams, LeaseState, LeaseStatus, Lost, RaftNow, Refusal,
    record_is_current,
};
use super::{LEASE_KEY, LeaseError, RaftFacts, WRITE_TIMEOUT, WriteError};
use crate::litefs::state::LiteFsState;
use crate::raft::{Request, Response};

/// How often sessions are swept and the holder record checked even when nothing happened:
/// an expired holder is forgotten (and the other nodes told) within this much of its expiry.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// The longest cluster id accepted (LiteFS's are 20 characters: `LFSC` + 16 hex digits).
const MAX_CLUSTER_ID: usize = 128;

pub struct LeaseService<F> {
    pub(super) facts: F,
    pub(super) state: Mutex<LeaseState>,
    /// Serialises writes of the holder record, so that the record ends as the last decision.
    record: tokio::sync::Mutex<()>,
    /// Wakes the background task after the holder changed.
    wake: Notify,
    write_timeout: Duration,
    /// Under `run`: told after every decision whether the local LiteFS holds the lease.
    litefs: Option<LiteFsState>,
    /// The current term's freshness check (see [`LeaseService::freshest_here`]).
    pub(super) freshness: Mutex<Option<Freshness>>,
    pub(super) silent_peer_wait: Duration,
    /// This node's LiteFS's advertise URL (litefs.yml's): the only one an acquire may name,
    /// since raft hands it to every replica as the primary to stream from.
    advertise_url: String,
}

impl<F: RaftFacts> LeaseService<F> {
    pub fn new(facts: F, params: LeaseParams, advertise_url: String) -> LeaseService<F> {
        LeaseService {
            facts,
            state: Mutex::new(LeaseState::new(params)),
            record: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            write_timeout: WRITE_TIMEOUT,
            litefs: None,
            freshness: Mutex::new(None),
            silent_peer_wait: WAIT_FOR_SILENT_PEERS,
            advertise_url,
        }
    }

    /// A shorter wait for silent peers, for tests.
    #[cfg(test)]
    pub fn with_silent_peer_wait(mut self, wait: Duration) -> LeaseService<F> {
        self.silent_peer_wait = wait;
        self
    }

    /// Reports the local LiteFS's hold into `litefs` (`litefs-py run`).
    pub fn with_litefs_state(mut self, litefs: Option<LiteFsState>) -> LeaseService<F> {
        self.litefs = litefs;
        self
    }

    /// Tells the view whether the local LiteFS holds the lease now. Called after every
    /// operation that may change it; the background task's sweep catches expiries.
    pub(super) fn report_hold(&self) {
        if let Some(litefs) = &self.litefs {
            litefs.set_hold(self.state.lock().local_hold());
        }
    }

    pub fn params(&self) -> LeaseParams {
        *self.state.lock().params()
    }

    pub(super) async fn write(&self, request: Request) -> Result<Response, WriteError> {
        match tokio::time::timeout(self.write_timeout, self.facts.write(request)).await {
            Ok(result) => result,
            Err(_) => Err(WriteError(format!(
                "not committed within {:?}",
                self.write_timeout
            ))),
        }
    }

    /// `PUT /v1/session/create`.
    pub fn create_session(&self, body: &[u8]) -> Result<SessionEntry, LeaseError> {
        let max_ttl = self.state.lock().params().ttl;
        let req = consul::parse_session_create(body, max_ttl)?;
        let id = consul::new_session_id()?;
        let r = self.facts.now();
        self.state.lock().create_session(id, req, &r)
    }

    /// `PUT /v1/kv/<key>?acquire=<id>`: `Ok(true)` when session `id` now holds the lock.
    ///
    /// A new leader that is still waiting out the previous lease holds the request until the
    /// wait ends if that is at most half a TTL away (the session stays alive meanwhile), so the
    /// LiteFS that asks becomes primary at the first safe instant instead of a retry later.
    pub async fn acquire(&self, id: &str, body: &[u8]) -> Result<bool, LeaseError> {
        let result = self.try_acquire(id, body).await;
        self.report_hold();
        result
    }

    async fn try_acquire(&self, id: &str, body: &[u8]) -> Result<bool, LeaseError> {
        consul::check_session_id(id)?;
        let (info, raw) = consul::parse_primary_info(body)?;
        if info.advertise_url != self.advertise_url {
            tracing::warn!(
                advertise_url = %info.advertise_url,
                "acquire refused: not this node's LiteFS advertise URL ({})",
                self.advertise_url
            );
            return Err(LeaseError::Forbidden(format!(
                "advertise-url {:?} is not this node's ({:?}, litefs.advertise-url): regenerate litefs.yml with `litefs-py config litefs`",
                info.advertise_url, self.advertise_url
            )));
        }
        let max_hold = self.state.lock().params().ttl / 2;
        let mut held = false;
        loop {
            let r = self.facts.now();
            self.apply_waiver(&r);
            let check = self.state.lock().check_acquire(id, &r);
            match check {
                AcquireCheck::Grant { .. } => break,
                AcquireCheck::Refuse(why) => {
                    tracing::debug!(session = id, "acquire refused: {}", why.as_str());
                    return Ok(false);
                }
                AcquireCheck::WaitUntil(t) => {
                    let left = t.saturating_duration_since(r.now);
                    if held || left > max_hold {
                        tracing::debug!(
                            session = id,
                            ?left,
                            "acquire refused: waiting out the previous lease"
                        );
                        return Ok(false);
                    }
                    held = true;
                    tokio::time::sleep(left).await;
                }
            }
        }
        let _record = self.record.lock().await;
        if !self.freshest_here().await {
            return Ok(false);
        }
        let r = self.facts.now();
        let check = self.state.lock().check_acquire(id, &r);
        let AcquireCheck::Grant { term } = check else {
            return Ok(false);
        };
        if !self.freshness_passed(term) {
            // The term changed while the survey ran: the next attempt surveys again.
            return Ok(false);
        }
        let record = HolderRecord {
            node_id: self.facts.node_id(),
            term,
            session: id.to_string(),
            value: raw.clone(),
        };
        let value = serde_json::to_string(&record).expect("plain struct");
        // Committed before we answer: every node can name the primary as soon as it exists,
        // and the commit is one more proof of a live quorum.
        if let Err(e) = self
            .write(Request::Set {
                key: LEASE_KEY.into(),
                value,
            })
            .await
        {
            tracing::warn!(session = id, "acquire refused: recording the holder: {e}");
            self.wake.notify_one();
            return Ok(false);
        }
        let r = self.facts.now();
        let granted = self.state.lock().finish_acquire(id, raw, term, &r);
        match granted {
            Ok(()) => {
                tracing::info!(
                    session = id,
                    term,
                    hostname = %info.hostname,
                    advertise_url = %info.advertise_url,
                    "primary lease granted"
                );
                Ok(true)
            }
            Err(why) => {
                tracing::info!(
                    session = id,
                    "acquire refused after the write: {}",
                    why.as_str()
                );
                // The record names a holder that is not: the background task deletes it.
                self.wake.notify_one();
                Ok(false)
            }
        }
    }

    /// `PUT /v1/session/renew/<id>`: the session, or why the lease is lost (404).
    pub fn renew(&self, id: &str) -> Result<Result<SessionEntry, Lost>, LeaseError> {
        consul::check_session_id(id)?;
        let r = self.facts.now();
        let result = self.state.lock().renew(id, &r);
        self.report_hold();
        if result.is_ok() {
            tracing::trace!(session = id, "lease renewed");
        }
        if let Err(lost) = &result {
            if *lost != Lost::UnknownSession {
                tracing::warn!(session = id, "lease renewal refused: {}", lost.as_str());
            }
            self.wake.notify_one();
        }
        Ok(result)
    }

    /// `PUT /v1/kv/<key>?release=<id>`: always `true` once `id` does not hold the lock.
    pub fn release(&self, id: &str) -> Result<bool, LeaseError> {
        consul::check_session_id(id)?;
        let r = self.facts.now();
        let released = self.state.lock().release(id, &r);
        self.report_hold();
        if released {
            tracing::info!(session = id, "primary lease released");
            self.wake.notify_one();
        }
        Ok(true)
    }

    /// `PUT /v1/session/destroy/<id>`.
    pub fn destroy(&self, id: &str) -> Result<bool, LeaseError> {
        consul::check_session_id(id)?;
        let r = self.facts.now();
        self.state.lock().destroy(id, &r);
        self.report_hold();
        self.wake.notify_one();
        Ok(true)
    }

    /// `GET /v1/kv/<key>`: who is primary. The leader answers from its sessions; any other
    /// node from the replicated record, if the leader it follows wrote it in this term.
    pub fn primary(&self) -> Option<KvPair> {
        let r = self.facts.now();
        if r.is_leader {
            let h = self.state.lock().holder(&r)?;
            return Some(KvPair::new(
                LEASE_KEY,
                h.value.as_bytes(),
                Some(h.session),
                h.index,
            ));
        }
        let record: HolderRecord = serde_json::from_str(&self.facts.get(LEASE_KEY)?).ok()?;
        record_is_current(&record, &r).then(|| {
            KvPair::new(
                LEASE_KEY,
                record.value.as_bytes(),
                Some(record.session),
                record.term,
            )
        })
    }

    /// `GET /v1/kv/<key>/clusterid`.
    pub fn cluster_id(&self) -> Option<String> {
        self.facts.cluster_id()
    }

    /// `PUT /v1/kv/<key>/clusterid`: set once through raft; a different id later is a
    /// conflict (LiteFS must not save an id the cluster does not have).
    pub async fn set_cluster_id(&self, body: &[u8]) -> Result<(), LeaseError> {
        let id = std::str::from_utf8(body)
            .ok()
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_CLUSTER_ID
                    && s.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| {
                LeaseError::BadRequest(format!(
                    "a cluster id is 1 to {MAX_CLUSTER_ID} printable ASCII characters"
                ))
            })?;
        let conflict = |current: &str| {
            LeaseError::Conflict(format!(
                "the cluster id is already {current:?}; it never changes"
            ))
        };
        match self.facts.cluster_id() {
            Some(current) if current == id => return Ok(()),
            Some(current) => return Err(conflict(&current)),
            None => {}
        }
        if !self.facts.now().is_leader {
            return Err(LeaseError::Unavailable(
                "this node is not the raft leader".into(),
            ));
        }
        let response = self
            .write(Request::SetClusterId {
                cluster_id: id.to_string(),
            })
            .await
            .map_err(|e| LeaseError::Unavailable(e.to_string()))?;
        match response.value {
            // LiteFS sets the cluster id between its acquire and becoming primary, so this
            // answer starts a primary period like a grant does: given only while this node
            // is a fresh leader, or the new-leader wait of a successor would not cover it.
            Some(v) if v == id && !self.facts.now().fresh => {
                tracing::warn!(
                    cluster_id = id,
                    "LiteFS cluster id recorded, but answered as failed: no fresh quorum any more"
                );
                Err(LeaseError::Unavailable(
                    "the cluster id is recorded, but this node is no longer a leader with a fresh quorum".into(),
                ))
            }
            Some(v) if v == id => {
                tracing::info!(cluster_id = id, "LiteFS cluster id recorded");
                Ok(())
            }
            Some(v) => Err(conflict(&v)),
            None => Err(LeaseError::Internal(
                "the cluster id was not applied".into(),
            )),
        }
    }

    pub fn status(&self) -> LeaseStatus {
        let r = self.facts.now();
        self.apply_waiver(&r);
        self.state.lock().status(&r)
    }

    /// A leader whose previous term ended in a handoff may grant at once (see
    /// [`super::records`]).
    fn apply_waiver(&self, r: &RaftNow) {
        if !r.is_leader {
            return;
        }
        // The applied term first, then the record: once an entry of this term is applied, a
        // record read afterwards is at least that recent. (Read the other way round, the record
        // could predate a deletion applied just before the term's first entry.)
        let applied_term = self.facts.applied_term();
        let Some(record) = self
            .facts
            .get(HANDOFF_KEY)
            .and_then(|v| serde_json::from_str::<HandoffRecord>(&v).ok())
        else {
            return;
        };
        if waives(&record, r.term, applied_term) {
            self.state.lock().waive_wait(r.term);
        }
    }

    /// Handoff, step 1: fences this leadership (no grant, no renewal for the rest of its term),
    /// so the local LiteFS demotes at its next renewal. Returns the fenced term.
    pub fn fence(&self) -> Result<u64, Refusal> {
        let r = self.facts.now();
        let result = self.state.lock().fence(&r);
        self.report_hold();
        if let Ok(term) = result {
            tracing::info!(term, "handoff: the primary lease is fenced");
        }
        result
    }

    /// Whether the fenced leadership `term` has no holder any more (the renewal that demoted
    /// the local LiteFS was answered) and this node still leads it with a fresh quorum.
    pub fn fenced_and_released(&self, term: u64) -> bool {
        let r = self.facts.now();
        let released = self.state.lock().fenced_without_holder(term, &r);
        self.report_hold();
        released && r.is_leader && r.fresh && r.term == term
    }

    /// Lifts the fence after a handoff that did not happen (no record left that could waive a
    /// wait): the local LiteFS may acquire again.
    pub fn unfence(&self) {
        self.state.lock().unfence();
        tracing::info!("handoff abandoned: the primary lease is no longer fenced");
    }

    /// Writes through raft (for the handoff's record), bounded like the lease's own writes.
    pub async fn write_record(&self, request: Request) -> Result<Response, WriteError> {
        self.write(request).await
    }

    /// Makes the replicated record match this node's decision: the holder while we lead and
    /// one holds the lock, else nothing (a new leader deletes its predecessor's record).
    pub async fn sync_record(&self) {
        let _record = self.record.lock().await;
        let r = self.facts.now();
        let desired = {
            let mut state = self.state.lock();
            state.sync(&r);
            state.desired_record(self.facts.node_id())
        };
        // Sessions expire and leaderships end here too.
        self.report_hold();
        if !r.is_leader {
            return;
        }
        let stored = self.facts.get(LEASE_KEY);
        let current: Option<HolderRecord> =
            stored.as_deref().and_then(|v| serde_json::from_str(v).ok());
        let request = match desired {
            Some(d) if current.as_ref() != Some(&d) => Request::Set {
                key: LEASE_KEY.into(),
                value: serde_json::to_string(&d).expect("plain struct"),
            },
            None if stored.is_some() => Request::Delete {
                key: LEASE_KEY.into(),
            },
            _ => return,
        };
        let started = Instant::now();
        match self.write(request.clone()).await {
            Ok(_) => tracing::debug!("lease record: {request} ({:?})", started.elapsed()),
            Err(e) => tracing::debug!("lease record: {request}: {e}"),
        }
    }

    /// The background task: sweeps expired sessions, notices leadership changes, syncs the
    /// record. Runs until `stop`.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = self.wake.notified() => {}
                _ = self.facts.changed() => {}
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            self.sync_record().await;
        }
    }
}
