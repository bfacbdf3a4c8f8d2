//! Inodes: the lower files the kernel currently knows, each held by an `O_PATH` descriptor.
//!
//! Node ids are stable for the life of the mount. A lower file on the lower root's device keeps
//! its own inode number as its node id (so `stat` through the mount shows the lower `st_ino`);
//! while the shim holds the `O_PATH` fd the lower inode cannot be freed, so its number cannot be
//! reused under us. Files on other devices (submounts), the rare lower file whose number collides
//! with the FUSE root id, and the symlink views of `--data-path symlink` get ids from a table
//! that is never pruned, so they too keep their id for the life of the mount.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

use crate::error::{FsError, FsResult};
use crate::handles::OpenState;
use crate::locks::InodeLocks;

pub const ROOT_ID: u64 = 1;
/// Lower inode numbers below this are used as node ids directly.
const DIRECT_LIMIT: u64 = 1 << 62;
/// Set on a real file's node id to name its symlink view (symlink data-path mode).
const SYMLINK_VIEW_BIT: u64 = 1 << 62;
/// Allocated ids start here (and stay far below the virtual files at the top of the space).
const ALLOC_BASE: u64 = 1 << 63;

/// How a lower file is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// As itself.
    Real,
    /// As a symlink to its path in the lower dir (`--data-path symlink`).
    Symlink,
}

/// Identity of a lower file (plus how it is presented).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LowerKey {
    pub dev: u64,
    pub ino: u64,
    pub view: View,
}

impl LowerKey {
    pub fn of(st: &libc::stat, view: View) -> Self {
        LowerKey {
            dev: st.st_dev,
            ino: st.st_ino,
            view,
        }
    }
}

#[derive(Debug)]
pub struct Inode {
    pub id: u64,
    pub key: LowerKey,
    /// `st_mode & S_IFMT` of the lower file.
    pub fmt: u32,
    fd: OwnedFd,
    nlookup: AtomicU64,
    pub open: Mutex<OpenState>,
    pub locks: InodeLocks,
}

impl Inode {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn is_dir(&self) -> bool {
        self.fmt == libc::S_IFDIR
    }

    pub fn is_symlink_view(&self) -> bool {
        self.key.view == View::Symlink
    }
}

#[derive(Debug)]
pub struct InodeTable {
    map: RwLock<FxHashMap<u64, Arc<Inode>>>,
    allocated: Mutex<FxHashMap<LowerKey, u64>>,
    next_alloc: AtomicU64,
    root_key: LowerKey,
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, root_st: &libc::stat) -> Self {
        let root_key = LowerKey::of(root_st, View::Real);
        let root = Arc::new(Inode {
            id: ROOT_ID,
            key: root_key,
            fmt: root_st.st_mode & libc::S_IFMT,
            fd: root_fd,
            nlookup: AtomicU64::new(1),
            open: Mutex::new(OpenState::default()),
            locks: InodeLocks::default(),
        });
        let mut map = FxHashMap::default();
        map.insert(ROOT_ID, root);
        InodeTable {
            map: RwLock::new(map),
            allocated: Mutex::new(FxHashMap::default()),
            next_alloc: AtomicU64::new(ALLOC_BASE),
            root_key,
        }
    }

    pub fn root(&self) -> Arc<Inode> {
        self.get(ROOT_ID).expect("the root inode is never removed")
    }

    /// The node id for a lower file: a pure function of its key for the life of the mount.
    pub fn id_for(&self, key: LowerKey) -> u64 {
        if key.dev == self.root_key.dev && key.ino == self.root_key.ino {
            return match key.view {
                View::Real => ROOT_ID,
                View::Symlink => self.allocate(key),
            };
        }
        if key.dev == self.root_key.dev && key.ino > ROOT_ID && key.ino < DIRECT_LIMIT {
            return match key.view {
                View::Real => key.ino,
                View::Symlink => key.ino | SYMLINK_VIEW_BIT,
            };
        }
        self.allocate(key)
    }

    fn allocate(&self, key: LowerKey) -> u64 {
        *self
            .allocated
            .lock()
            .entry(key)
            .or_insert_with(|| self.next_alloc.fetch_add(1, Ordering::Relaxed))
    }

    pub fn get(&self, id: u64) -> FsResult<Arc<Inode>> {
        self.map
            .read()
            .get(&id)
            .cloned()
            .ok_or(FsError::UnknownInode(id))
    }

    /// Counts one more kernel reference to the inode for `key`, creating it if needed.
    /// `open_fd` is only called when the inode is not known yet; it must return an `O_PATH`
    /// fd for the same lower file together with its current `stat` (which wins on a race).
    pub fn reference(
        &self,
        key: LowerKey,
        open_fd: impl FnOnce() -> std::io::Result<(OwnedFd, libc::stat)>,
    ) -> FsResult<Arc<Inode>> {
        let id = self.id_for(key);
        if let Some(inode) = self.map.read().get(&id)
            && inode.key == key
        {
            inode.nlookup.fetch_add(1, Ordering::Relaxed);
            return Ok(inode.clone());
        }
        let (fd, st) = open_fd()?;
        // The name may have been replaced between the caller's stat and our open.
        let key = LowerKey::of(&st, key.view);
        let id = self.id_for(key);
        let mut map = self.map.write();
        if let Some(inode) = map.get(&id)
            && inode.key == key
        {
            inode.nlookup.fetch_add(1, Ordering::Relaxed);
            return Ok(inode.clone());
        }
        let inode = Arc::new(Inode {
            id,
            key,
            fmt: st.st_mode & libc::S_IFMT,
            fd,
            nlookup: AtomicU64::new(1),
            open: Mutex::new(OpenState::default()),
            locks: InodeLocks::default(),
        });
        map.insert(id, inode.clone());
        Ok(inode)
    }

    /// The kernel dropped `n` references. Returns the inode if this was the last one; it is
    /// out of the table then, and closes its descriptors when the last `Arc` goes.
    pub fn forget(&self, id: u64, n: u64) -> Option<Arc<Inode>> {
        if id == ROOT_ID {
            return None;
        }
        let mut map = self.map.write();
        let inode = map.get(&id)?;
        let prev = inode.nlookup.fetch_sub(
            n.min(inode.nlookup.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        if prev <= n {
            return map.remove(&id);
        }
        None
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }
}
