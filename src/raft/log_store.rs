//! openraft's log storage on redb: the log, the vote, the committed and last purged log ids.
//!
//! Durability contract (openraft's, met by committing a redb write transaction at the default
//! `Durability::Immediate` before reporting success):
//! - `save_vote` returns only after the vote is on disk: a node must never vote twice in a term,
//!   even across kill -9.
//! - `append` calls its `IOFlushed` callback only after the entries' transaction committed;
//!   openraft counts an entry towards a quorum only once that callback ran.
//! - `truncate_after` and `purge` are single transactions: no hole in the log, ever.
//! - `save_committed` is durable too, so a restart re-applies every committed entry and the
//!   state machine never goes back in time (the cost is one more fsync per commit advance; the
//!   write rate here — membership changes and lease bookkeeping — is low).
//!
//! Writes run on tokio's blocking pool (`store::blocking`); reads run inline: they hit redb's page
//! cache, take microseconds, and each sees one consistent snapshot of the file.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{LogIdOptionExt, OptionalSend, RaftLogReader};
use redb::ReadableTable;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::store::{
    KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG, META, RaftDb, StoreError, blocking, encode,
    get_json,
};
use super::{Entry, LogId, TypeConfig, Vote};

/// The raft log store. Cheap to clone: clones share the open file, and a clone is also the
/// log reader openraft hands to its replication tasks.
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<RaftDb>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<RaftDb>) -> LogStore {
        LogStore { db }
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.read()?;
        let meta = txn.open_table(META).map_err(|e| self.db.db_err(e))?;
        get_json(&self.db, &meta, key)
    }

    /// Durably sets (`Some`) or removes (`None`) one meta key.
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: Option<&T>,
        what: &'static str,
    ) -> Result<(), io::Error> {
        let bytes = value.map(|v| encode(v, what)).transpose()?;
        let db = self.db.clone();
        blocking(move || {
            db.write(|txn| {
                let mut meta = txn.open_table(META).map_err(|e| db.db_err(e))?;
                match &bytes {
                    Some(b) => meta.insert(key, b.as_slice()).map(drop),
                    None => meta.remove(key).map(drop),
                }
                .map_err(|e| db.db_err(e))
            })
        })
        .await
    }

    /// Every stored entry whose index is in `range`, checked to be consecutive: a hole would mean
    /// a damaged file, and openraft must hear about it rather than get a short answer.
    fn read_entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.read()?;
        let log = txn.open_table(LOG).map_err(|e| self.db.db_err(e))?;
        let mut out: Vec<Entry> = Vec::new();
        for item in log.range(range).map_err(|e| self.db.db_err(e))? {
            let (key, value) = item.map_err(|e| self.db.db_err(e))?;
            let index = key.value();
            let entry: Entry = self
                .db
                .decode(value.value(), || format!("log entry {index}"))?;
            let expected = out.last().map(|prev| prev.log_id.index + 1);
            if entry.log_id.index != index || expected.is_some_and(|want| want != index) {
                return Err(StoreError::Corrupt {
                    path: self.db.path().to_path_buf(),
                    detail: format!(
                        "log entry stored at index {index} has log id {} (expected index {})",
                        entry.log_id,
                        expected.unwrap_or(index)
                    ),
                });
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let txn = self.db.read()?;
        let meta = txn.open_table(META).map_err(|e| self.db.db_err(e))?;
        let last_purged_log_id: Option<LogId> = get_json(&self.db, &meta, KEY_LAST_PURGED)?;
        let log = txn.open_table(LOG).map_err(|e| self.db.db_err(e))?;
        let last = match log.last().map_err(|e| self.db.db_err(e))? {
            Some((key, value)) => {
                let index = key.value();
                let entry: Entry = self
                    .db
                    .decode(value.value(), || format!("log entry {index}"))?;
                Some(entry.log_id)
            }
            None => None,
        };
        Ok(LogState {
            // With every entry purged, the last log id is the last purged one (openraft's rule).
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        Ok(self.read_entries(bounds)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.read_meta(KEY_VOTE)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(self.log_state()?)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // Returns only once committed: openraft acts on the vote (grants it, campaigns) as soon
        // as this returns.
        self.write_meta(KEY_VOTE, Some(vote), "vote").await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.write_meta(KEY_COMMITTED, committed.as_ref(), "committed log id")
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.read_meta(KEY_COMMITTED)?)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows: Vec<(u64, Vec<u8>)> = Vec::new();
        for entry in entries {
            rows.push((entry.log_id.index, encode(&entry, "log entry")?));
        }
        let db = self.db.clone();
        let result = blocking(move || {
            db.write(|txn| {
                let mut log = txn.open_table(LOG).map_err(|e| db.db_err(e))?;
                for (index, bytes) in &rows {
                    log.insert(*index, bytes.as_slice())
                        .map_err(|e| db.db_err(e))?;
                }
                Ok(())
            })
        })
        .await;
        // Only now, with the transaction committed (durable) or failed, is openraft told. The
        // entries are readable as soon as this returns, as openraft requires.
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        // Removes every entry after `last_log_id` (all of them for `None`) in one transaction.
        let from = last_log_id.next_index();
        let db = self.db.clone();
        blocking(move || {
            db.write(|txn| {
                let mut log = txn.open_table(LOG).map_err(|e| db.db_err(e))?;
                log.retain_in(from.., |_, _| false)
                    .map_err(|e| db.db_err(e))
            })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The new last-purged id and the removal of the entries up to it commit together, so the
        // file never claims entries it no longer has, nor keeps entries it says are gone.
        let purged = encode(&log_id, "last purged log id")?;
        let upto = log_id.index;
        let db = self.db.clone();
        blocking(move || {
            db.write(|txn| {
                let mut meta = txn.open_table(META).map_err(|e| db.db_err(e))?;
                let previous: Option<LogId> = get_json(&db, &meta, KEY_LAST_PURGED)?;
                if previous.is_some_and(|p| p.index >= upto) {
                    // Already purged this far; never move the mark backwards.
                    return Ok(());
                }
                meta.insert(KEY_LAST_PURGED, purged.as_slice())
                    .map_err(|e| db.db_err(e))?;
                let mut log = txn.open_table(LOG).map_err(|e| db.db_err(e))?;
                log.retain_in(..=upto, |_, _| false)
                    .map_err(|e| db.db_err(e))
            })
        })
        .await
    }
}

#[cfg(test)]
impl LogStore {
    /// The number of entries physically in the file.
    pub fn stored_entry_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.read()?;
        let log = txn.open_table(LOG).map_err(|e| self.db.db_err(e))?;
        redb::ReadableTableMetadata::len(&log).map_err(|e| self.db.db_err(e))
    }
}
