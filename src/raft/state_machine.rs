//! openraft's state machine: the cluster id and a small key/value map, kept in memory.
//!
//! Only snapshots are written to disk (into the raft data file, as JSON). That is enough because
//! the log store persists the log and the committed log id: at start the state machine is loaded
//! from the latest snapshot (`StateMachineStore::load`) and openraft re-applies the committed
//! entries after it. The state is tiny, so a snapshot is cheap to build, store and send.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, LogIdOptionExt, OptionalSend, RaftSnapshotBuilder};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::store::{KEY_SNAPSHOT, RaftDb, SNAPSHOT, StoreError, blocking, encode, get_json};
use super::{LogId, Request, Response, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// The replicated data. Also the snapshot payload: it is small enough to copy whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
// Fields added later must still decode older snapshots.
#[serde(default, rename_all = "kebab-case")]
pub struct StateMachineData {
    /// LiteFS's cluster id (its `clusterid` lease key); set once, never changed.
    pub cluster_id: Option<String>,
    /// Small replicated settings, e.g. the primary's hostname and advertise URL.
    pub kv: BTreeMap<String, String>,
}

impl StateMachineData {
    /// Applies one request. Deterministic: every node computes the same result from the same log.
    fn apply(&mut self, request: &Request) -> Response {
        let value = match request {
            Request::SetClusterId { cluster_id } => Some(
                self.cluster_id
                    .get_or_insert_with(|| cluster_id.clone())
                    .clone(),
            ),
            Request::Set { key, value } => self.kv.insert(key.clone(), value.clone()),
            Request::Delete { key } => self.kv.remove(key),
        };
        Response { value }
    }
}

/// The snapshot record in the data file.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: StateMachineData,
}

#[derive(Debug, Default)]
struct Inner {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    data: StateMachineData,
}

/// The state machine. Cheap to clone: clones share the state, so the daemon keeps one to read
/// from (lease API, status) while openraft owns another.
#[derive(Clone, Debug)]
pub struct StateMachineStore {
    db: Arc<RaftDb>,
    // A plain lock, never held across an await: every access is a few field copies.
    inner: Arc<RwLock<Inner>>,
}

impl StateMachineStore {
    /// Loads the latest stored snapshot, if any, as the starting state.
    pub(crate) fn load(db: Arc<RaftDb>) -> Result<StateMachineStore, StoreError> {
        let mut inner = Inner::default();
        if let Some(snapshot) = read_snapshot(&db)? {
            inner.last_applied = snapshot.meta.last_log_id;
            inner.last_membership = snapshot.meta.last_membership;
            inner.data = snapshot.data;
        }
        Ok(StateMachineStore {
            db,
            inner: Arc::new(RwLock::new(inner)),
        })
    }

    /// A copy of the replicated data as of the last applied entry.
    #[cfg(test)]
    pub fn data(&self) -> StateMachineData {
        self.inner.read().data.clone()
    }

    #[cfg(test)]
    pub fn last_applied(&self) -> Option<LogId> {
        self.inner.read().last_applied
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.inner.read().data.cluster_id.clone()
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.inner.read().data.kv.get(key).cloned()
    }

    fn current_meta(&self) -> (SnapshotMeta, StateMachineData) {
        let inner = self.inner.read();
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.last_membership.clone(),
        };
        (meta, inner.data.clone())
    }
}

fn read_snapshot(db: &RaftDb) -> Result<Option<StoredSnapshot>, StoreError> {
    let txn = db.read()?;
    let table = txn.open_table(SNAPSHOT).map_err(|e| db.db_err(e))?;
    get_json(db, &table, KEY_SNAPSHOT)
}

/// Durably replaces the stored snapshot by `snapshot`, unless `only_if_newer` and the stored one
/// covers more of the log (a snapshot build that raced with an install must not undo it).
async fn store_snapshot(
    db: Arc<RaftDb>,
    snapshot: &StoredSnapshot,
    only_if_newer: bool,
) -> Result<(), io::Error> {
    let bytes = encode(snapshot, "snapshot")?;
    let last = snapshot.meta.last_log_id.index();
    blocking(move || {
        db.write(|txn| {
            let mut table = txn.open_table(SNAPSHOT).map_err(|e| db.db_err(e))?;
            if only_if_newer {
                let stored: Option<StoredSnapshot> = get_json(&db, &table, KEY_SNAPSHOT)?;
                if stored.is_some_and(|s| s.meta.last_log_id.index() > last) {
                    return Ok(());
                }
            }
            table
                .insert(KEY_SNAPSHOT, bytes.as_slice())
                .map_err(|e| db.db_err(e))?;
            Ok(())
        })
    })
    .await
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = StateMachineData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, data) = self.current_meta();
        let stored = StoredSnapshot { meta, data };
        // Stored before returning: openraft purges the log up to the snapshot once it has it, so
        // the snapshot must already be durable by then or a crash would lose the purged entries.
        store_snapshot(self.db.clone(), &stored, true).await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: stored.data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = StateMachineData;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = self.inner.read();
        Ok((inner.last_applied, inner.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut inner = self.inner.write();
                inner.last_applied = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => Response::default(),
                    EntryPayload::Normal(request) => inner.data.apply(request),
                    EntryPayload::Membership(membership) => {
                        inner.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                        Response::default()
                    }
                }
            };
            // Answered at once: client_write waits for this.
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: StateMachineData,
    ) -> Result<(), io::Error> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot,
        };
        // Durable first, then visible: after a crash the state is the installed snapshot or the
        // one before, never a mix.
        store_snapshot(self.db.clone(), &stored, false).await?;
        let mut inner = self.inner.write();
        inner.last_applied = stored.meta.last_log_id;
        inner.last_membership = stored.meta.last_membership;
        inner.data = stored.data;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let db = self.db.clone();
        let stored = blocking(move || read_snapshot(&db)).await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: s.data,
        }))
    }
}
