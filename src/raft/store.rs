//! The raft data file: one redb database shared by the log store and the state machine.
//!
//! Why redb: every write transaction commits atomically and, at redb's default
//! `Durability::Immediate`, is on disk (fsync'd, checksummed) when `commit()` returns; after a
//! crash redb reopens at the last committed transaction. So "durable" here always means "its
//! write transaction committed", and the code never has to reason about torn or half-written
//! records the way a hand-written WAL would.
//!
//! Tables:
//! - `meta`: `format`, `node-id`, `vote`, `committed`, `last-purged` (JSON values).
//! - `log`: log index -> JSON of the openraft entry.
//! - `snapshot`: `current` -> JSON of the latest state-machine snapshot (meta + data).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::type_config::TypeConfigExt;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{NodeId, TypeConfig};

/// The file name inside `cluster.data-dir`.
pub const DATA_FILE: &str = "raft.redb";

/// Bumped when the meaning of a table or value changes; an older litefs-py refuses a newer file
/// instead of misreading it.
const FORMAT: u64 = 1;

/// redb caches pages in memory up to this size (its default is 1 GiB). Our file is a short log
/// plus one small snapshot; a few MiB keep all of it cached without letting the daemon grow.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) const KEY_FORMAT: &str = "format";
pub(crate) const KEY_NODE_ID: &str = "node-id";
pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last-purged";
pub(crate) const KEY_SNAPSHOT: &str = "current";

/// Errors of the raft data file. Each names the file, so an operator knows which one to look at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: cannot create or sync the raft data directory: {source}", path.display())]
    DataDir { path: PathBuf, source: io::Error },
    #[error(
        "{}: the raft data file is in use by another process (is another litefs-py running with this cluster.data-dir?)",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error(
        "{}: the raft data file is damaged ({detail}); restore it from a backup, or remove this node from the cluster and add it back under a new node.id with an empty cluster.data-dir",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("{}: not a litefs-py raft data file ({detail})", path.display())]
    Foreign { path: PathBuf, detail: String },
    #[error(
        "{}: raft data file format {found} is not the one this litefs-py reads ({FORMAT}); it was written by another version",
        path.display()
    )]
    Format { path: PathBuf, found: u64 },
    #[error(
        "{}: this raft data belongs to node {stored}, but node.id is {configured}; a node id must never move to other data (give the node its own cluster.data-dir)",
        path.display()
    )]
    NodeId {
        path: PathBuf,
        stored: NodeId,
        configured: NodeId,
    },
    #[error("{}: {source}", path.display())]
    Db { path: PathBuf, source: redb::Error },
    #[error("{}: cannot decode {what}: {source}", path.display())]
    Decode {
        path: PathBuf,
        what: String,
        source: serde_json::Error,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl StoreError {
    /// openraft's storage traits speak `io::Error`; damaged data is `InvalidData` so that it can
    /// be told apart from a failing disk.
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            StoreError::Corrupt { .. } | StoreError::Decode { .. } => io::ErrorKind::InvalidData,
            StoreError::InUse { .. } => io::ErrorKind::ResourceBusy,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }

    /// For APIs that take openraft's own error type (e.g. the test-suite builder).
    pub fn into_storage_error(self) -> openraft::StorageError<TypeConfig> {
        openraft::StorageError::read(TypeConfig::err_from_error(&self.into_io()))
    }
}

impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> io::Error {
        e.into_io()
    }
}

/// The open data file. Shared (`Arc`) by the log store, its readers and the state machine; redb
/// serialises write transactions itself and gives every read transaction a consistent snapshot.
pub struct RaftDb {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RaftDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftDb").field("path", &self.path).finish()
    }
}

impl RaftDb {
    /// Opens or creates `<data_dir>/raft.redb` and checks that it is ours and this node's.
    pub(crate) fn open(data_dir: &Path, node_id: NodeId) -> Result<Arc<RaftDb>, StoreError> {
        let dir_err = |source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        };
        let created = !data_dir.is_dir();
        std::fs::create_dir_all(data_dir).map_err(dir_err)?;
        let path = data_dir.join(DATA_FILE);
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            // Without it redb trusts a file that was closed cleanly and may panic on one that was
            // damaged since; with it every page checksum is verified. The file is small.
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| open_error(&path, e))?;
        let db = RaftDb { db, path };
        db.check_identity(node_id)?;
        // redb fsyncs the file, not the directory entries that make it reachable: without this a
        // power cut soon after the first start could lose the whole file, vote included.
        sync_dir(data_dir).map_err(dir_err)?;
        if let Some(parent) = data_dir
            .parent()
            .filter(|p| created && !p.as_os_str().is_empty())
        {
            sync_dir(parent).map_err(dir_err)?;
        }
        Ok(Arc::new(db))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks a fresh file as ours, or checks an existing one: format, node id, and that nothing
    /// but our tables is in it. Also creates every table, so readers never meet a missing one.
    fn check_identity(&self, node_id: NodeId) -> Result<(), StoreError> {
        self.write(|txn| {
            let ours = [META.name(), LOG.name(), SNAPSHOT.name()];
            let mut meta = txn.open_table(META).map_err(|e| self.db_err(e))?;
            let format: Option<u64> = get_json(self, &meta, KEY_FORMAT)?;
            match format {
                Some(FORMAT) => {}
                Some(found) => {
                    return Err(StoreError::Format {
                        path: self.path.clone(),
                        found,
                    });
                }
                None => {
                    let foreign: Vec<String> = txn
                        .list_tables()
                        .map_err(|e| self.db_err(e))?
                        .map(|t| t.name().to_string())
                        .filter(|name| !ours.contains(&name.as_str()))
                        .collect();
                    if !foreign.is_empty() {
                        return Err(StoreError::Foreign {
                            path: self.path.clone(),
                            detail: format!("it holds other tables: {}", foreign.join(", ")),
                        });
                    }
                    put_json(self, &mut meta, KEY_FORMAT, &FORMAT, "format")?;
                }
            }
            match get_json::<NodeId>(self, &meta, KEY_NODE_ID)? {
                Some(stored) if stored != node_id => {
                    return Err(StoreError::NodeId {
                        path: self.path.clone(),
                        stored,
                        configured: node_id,
                    });
                }
                Some(_) => {}
                None => put_json(self, &mut meta, KEY_NODE_ID, &node_id, "node id")?,
            }
            drop(meta);
            txn.open_table(LOG).map_err(|e| self.db_err(e))?;
            txn.open_table(SNAPSHOT).map_err(|e| self.db_err(e))?;
            Ok(())
        })
    }

    /// Runs `f` in a write transaction and commits it. At redb's default durability the commit
    /// has reached the disk when this returns `Ok`; on any error nothing of `f` is kept.
    /// Blocking: call it from `spawn_blocking` (see [`blocking`]).
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        // Dropping an uncommitted transaction aborts it.
        let out = f(&txn)?;
        txn.commit().map_err(|e| self.db_err(e))?;
        Ok(out)
    }

    pub(crate) fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(|e| self.db_err(e))
    }

    /// Maps any redb error, telling damage apart from the rest.
    pub(crate) fn db_err(&self, e: impl Into<redb::Error>) -> StoreError {
        match e.into() {
            redb::Error::Corrupted(detail) => StoreError::Corrupt {
                path: self.path.clone(),
                detail,
            },
            source => StoreError::Db {
                path: self.path.clone(),
                source,
            },
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            what: what(),
            source,
        })
    }
}

pub(crate) fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

/// Reads a JSON value from a `&str`-keyed table.
pub(crate) fn get_json<T: DeserializeOwned>(
    db: &RaftDb,
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match table.get(key).map_err(|e| db.db_err(e))? {
        None => Ok(None),
        Some(v) => db.decode(v.value(), || format!("{key:?}")).map(Some),
    }
}

/// Writes a JSON value into a `&str`-keyed table.
pub(crate) fn put_json<T: Serialize>(
    db: &RaftDb,
    table: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    value: &T,
    what: &'static str,
) -> Result<(), StoreError> {
    let bytes = encode(value, what)?;
    table
        .insert(key, bytes.as_slice())
        .map_err(|e| db.db_err(e))?;
    Ok(())
}

/// Runs blocking redb work (a commit waits for fsync) on tokio's blocking pool, so that the
/// async workers — raft's core, the lease API — keep running meanwhile.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, io::Error> {
    TypeConfig::spawn_blocking(f)
        .await?
        .map_err(StoreError::into_io)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    let path = path.to_path_buf();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            StoreError::InUse { path }
        }
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StoreError::Corrupt { path, detail }
        }
        // redb says "Invalid magic number" for a file it did not write.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == io::ErrorKind::InvalidData =>
        {
            StoreError::Foreign {
                path,
                detail: io.to_string(),
            }
        }
        other => StoreError::Db {
            path,
            source: other.into(),
        },
    }
}
