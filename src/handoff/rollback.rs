//! What a handoff has taken on this node so far (HALT locks, the lease fence), and the one
//! place that gives it back when the handoff stops before the point of no return.

use crate::lease::LeaseService;
use crate::lease::raft_facts::NodeFacts;
use crate::litefs::api::LiteFsApi;

/// Records each step's effect as it is taken; [`Rollback::rollback`] undoes exactly those.
/// From the handoff record on ([`Rollback::keep_fence`]) the fence is no longer this guard's
/// to lift (see the module doc of `crate::handoff`).
pub(super) struct Rollback<'a> {
    litefs: &'a LiteFsApi,
    lease: &'a LeaseService<NodeFacts>,
    /// The HALT lock id of this handoff.
    lock_id: i64,
    /// Databases halted with `lock_id`.
    halted: Vec<String>,
    /// The lease is fenced by this handoff, and lifting the fence is still safe.
    fenced: bool,
}

impl<'a> Rollback<'a> {
    pub(super) fn new(litefs: &'a LiteFsApi, lease: &'a LeaseService<NodeFacts>) -> Rollback<'a> {
        Rollback {
            litefs,
            lease,
            lock_id: lock_id(),
            halted: Vec::new(),
            fenced: false,
        }
    }

    pub(super) fn lock_id(&self) -> i64 {
        self.lock_id
    }

    pub(super) fn halted(&mut self, db: String) {
        self.halted.push(db);
    }

    pub(super) fn fenced(&mut self) {
        self.fenced = true;
    }

    /// Step 5: the record write was attempted (it may have committed), so the fence stays
    /// whatever happens next; LiteFS must apply what the new primary sends, so the halts go.
    pub(super) async fn keep_fence(mut self) {
        self.fenced = false;
        self.release_halts().await;
    }

    /// Undoes what was taken: the fence first (the local LiteFS may acquire again), then the
    /// halts (writes resume).
    pub(super) async fn rollback(mut self) {
        if std::mem::take(&mut self.fenced) {
            self.lease.unfence();
        }
        self.release_halts().await;
    }

    async fn release_halts(&mut self) {
        for db in self.halted.drain(..) {
            if let Err(e) = self.litefs.unhalt(&db, self.lock_id).await {
                // LiteFS drops a HALT lock 30 s after it was taken anyway.
                tracing::warn!(db, "handoff: releasing the HALT lock: {e}");
            }
        }
    }
}

/// A HALT lock id of our own (non-zero; LiteFS's own ids are its nodes').
fn lock_id() -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as i64);
    ((nanos ^ (i64::from(std::process::id()) << 40)) & i64::MAX).max(1)
}
