//! What litefs-py knows about its own LiteFS under `litefs-py run`, shared between the pieces
//! that learn it and the view publisher that shows it in `.role` and `.health`:
//! - the lease API records whether it granted the local LiteFS a lease that is still valid
//!   ([`LocalHold`]): under `run`, this node says `primary` only while that is so
//!   (docs/architecture.md, "The lease invariant": raft leader with a fresh quorum ack and,
//!   under `run`, its LiteFS holds the lease);
//! - the supervisor's probe ([`super::probe`]) records whether LiteFS's mount and HTTP API answer, and its lag
//!   ([`LiteFsProbe`]).
//!
//! Both are `watch` channels: the writers never wait, and the view publisher wakes on every
//! change. Under `litefs-py mount` there is no such state (LiteFS, if any, is not ours) and the
//! view is what raft alone says.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

/// The local LiteFS holds the primary lease: granted (or last renewed) in raft term `term`,
/// valid until `until` (that grant or renewal + the session's TTL; LiteFS renews every TTL/2,
/// so a live holder keeps pushing it forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalHold {
    pub term: u64,
    pub until: Instant,
}

impl LocalHold {
    /// Whether it still counts at `now` in raft term `term`.
    pub fn valid(&self, term: u64, now: Instant) -> bool {
        self.term == term && now < self.until
    }
}

/// One look at LiteFS, by the supervisor's probe (every ~500 ms, each check with a timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiteFsProbe {
    /// Its FUSE mount at `mount.lower` answered a `stat` in time (and is a mount).
    pub mounted: bool,
    /// Its HTTP API (`GET /info`) answered in time.
    pub serving: bool,
    /// `/info` said `isPrimary: true`.
    pub is_primary: bool,
    /// `/info` named a primary (itself or another node).
    pub primary_known: bool,
    /// `/info` gave a cluster id: LiteFS has been primary or reached one since its data dir was
    /// created (without one it will not become primary once the cluster has an id).
    pub has_cluster_id: bool,
    /// LiteFS's `.lag` in milliseconds (0 on the primary), if it could be read in time and
    /// LiteFS knows it (`None` while LiteFS says "unknown": `i32::MAX` in its file, until a
    /// replica has heard from a primary).
    pub lag_ms: Option<i64>,
}

impl LiteFsProbe {
    /// LiteFS is primary, or a replica that has caught up with a primary: what LiteFS itself
    /// waits for before it starts an `exec` command.
    pub fn ready(&self) -> bool {
        self.is_primary || (self.primary_known && self.lag_ms.is_some())
    }
}

/// Told every new [`LocalHold`] synchronously, before the lease API answers LiteFS (the
/// fencer's feed under `run`).
pub type HoldObserver = Box<dyn Fn(Option<LocalHold>) + Send + Sync>;

#[derive(Default)]
struct Observer(parking_lot::Mutex<Option<HoldObserver>>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.lock().is_some() {
            "Observer(set)"
        } else {
            "Observer(none)"
        })
    }
}

#[derive(Debug)]
struct Inner {
    hold: watch::Sender<Option<LocalHold>>,
    probe: watch::Sender<Option<LiteFsProbe>>,
    observer: Observer,
}

/// The shared state; cloning shares it.
#[derive(Debug, Clone)]
pub struct LiteFsState {
    inner: Arc<Inner>,
}

impl Default for LiteFsState {
    fn default() -> Self {
        LiteFsState::new()
    }
}

impl LiteFsState {
    pub fn new() -> LiteFsState {
        LiteFsState {
            inner: Arc::new(Inner {
                hold: watch::Sender::new(None),
                probe: watch::Sender::new(None),
                observer: Observer::default(),
            }),
        }
    }

    /// Set by the lease API after every decision (`None`: the local LiteFS holds nothing),
    /// before it answers LiteFS. A change reaches the observer before this returns.
    pub fn set_hold(&self, hold: Option<LocalHold>) {
        // Held across both, so that the observer sees the changes in the order they were made.
        let observer = self.inner.observer.0.lock();
        let changed = self.inner.hold.send_if_modified(|h| {
            let changed = *h != hold;
            *h = hold;
            changed
        });
        if changed && let Some(observe) = observer.as_ref() {
            observe(hold);
        }
    }

    /// Sets the one observer of [`Self::set_hold`]'s changes (replacing any earlier one).
    pub fn set_hold_observer(&self, observer: HoldObserver) {
        *self.inner.observer.0.lock() = Some(observer);
    }

    pub fn hold(&self) -> Option<LocalHold> {
        *self.inner.hold.borrow()
    }

    /// Set by the supervisor's probe.
    pub fn set_probe(&self, probe: LiteFsProbe) {
        self.inner.probe.send_if_modified(|p| {
            let changed = *p != Some(probe);
            *p = Some(probe);
            changed
        });
    }

    /// The last probe; `None` before the first one.
    pub fn probe(&self) -> Option<LiteFsProbe> {
        *self.inner.probe.borrow()
    }

    /// Resolves when either value changed since the receiver last looked.
    pub fn subscribe(&self) -> Changes {
        Changes {
            hold: self.inner.hold.subscribe(),
            probe: self.inner.probe.subscribe(),
        }
    }
}

/// A receiver of [`LiteFsState`] changes.
pub struct Changes {
    hold: watch::Receiver<Option<LocalHold>>,
    probe: watch::Receiver<Option<LiteFsProbe>>,
}

impl Changes {
    /// Waits for the next change of either value. The senders live as long as the state, which
    /// the node keeps, so this never ends in an error loop.
    pub async fn changed(&mut self) {
        tokio::select! {
            r = self.hold.changed() => {
                if r.is_err() {
                    std::future::pending::<()>().await
                }
            }
            r = self.probe.changed() => {
                if r.is_err() {
                    std::future::pending::<()>().await
                }
            }
        }
        self.hold.borrow_and_update();
        self.probe.borrow_and_update();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn hold_validity_and_readiness() {
        let now = Instant::now();
        let h = LocalHold {
            term: 3,
            until: now + Duration::from_secs(1),
        };
        assert!(h.valid(3, now));
        assert!(!h.valid(4, now), "a hold belongs to its term");
        assert!(!h.valid(3, now + Duration::from_secs(1)));
        let mut p = LiteFsProbe {
            mounted: true,
            serving: true,
            ..Default::default()
        };
        assert!(!p.ready());
        p.primary_known = true;
        p.lag_ms = None;
        assert!(!p.ready(), "a replica still in its initial replication");
        p.lag_ms = Some(40);
        assert!(p.ready());
        p = LiteFsProbe {
            is_primary: true,
            ..Default::default()
        };
        assert!(p.ready());
    }

    #[tokio::test]
    async fn changes_wake_the_subscriber() {
        let s = LiteFsState::new();
        let mut c = s.subscribe();
        s.set_probe(LiteFsProbe::default());
        tokio::time::timeout(Duration::from_secs(1), c.changed())
            .await
            .unwrap();
        // The same value again is not a change.
        s.set_probe(LiteFsProbe::default());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), c.changed())
                .await
                .is_err()
        );
        s.set_hold(Some(LocalHold {
            term: 1,
            until: Instant::now(),
        }));
        tokio::time::timeout(Duration::from_secs(1), c.changed())
            .await
            .unwrap();
        assert!(s.hold().is_some());
    }
}
