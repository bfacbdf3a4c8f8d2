//! Open file handles, and the per-inode passthrough backing they share.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use fuser::BackingId;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

use crate::dir::DirEntry;
use crate::error::{FsError, FsResult};
use crate::inode::Inode;

/// The lower file behind every passthrough open of one inode, and the kernel's id for it.
///
/// The kernel refuses two different backing files for one inode while either is open, so all
/// passthrough handles of an inode share this (through `Arc`), and it is dropped — closing the
/// backing id, then the fd — when the last of them is released.
#[derive(Debug)]
pub struct Backing {
    pub file: OwnedFd,
    pub id: BackingId,
    /// Opened read-only because the lower file refused read-write.
    pub read_only: bool,
}

#[derive(Debug, Default)]
pub struct OpenState {
    pub backing: Weak<Backing>,
}

#[derive(Debug)]
pub enum HandleKind {
    /// Data moves in the kernel; the fd serves fsync, fallocate, lseek and copy_file_range.
    Passthrough(Arc<Backing>),
    /// No kernel passthrough: the shim reads and writes this fd itself (direct I/O, no cache).
    Direct(OwnedFd),
    /// A virtual file's contents as of open.
    Virtual(Arc<[u8]>),
    /// A directory listing snapshot; `None` until the first read.
    Dir {
        fd: OwnedFd,
        entries: Mutex<Option<Arc<[DirEntry]>>>,
    },
}

#[derive(Debug)]
pub struct Handle {
    /// `None` for virtual files, which have no lower inode.
    pub inode: Option<Arc<Inode>>,
    pub kind: HandleKind,
}

impl Handle {
    /// The lower fd for data operations, if the handle has one.
    pub fn data_fd(&self) -> FsResult<BorrowedFd<'_>> {
        match &self.kind {
            HandleKind::Passthrough(b) => Ok(b.file.as_fd()),
            HandleKind::Direct(fd) => Ok(fd.as_fd()),
            HandleKind::Dir { fd, .. } => Ok(fd.as_fd()),
            HandleKind::Virtual(_) => Err(FsError::NotSupported),
        }
    }
}

#[derive(Debug)]
pub struct HandleTable {
    map: RwLock<FxHashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable {
            map: RwLock::default(),
            next: AtomicU64::new(1),
        }
    }
}

impl HandleTable {
    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.write().insert(fh, Arc::new(handle));
        fh
    }

    pub fn get(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.map
            .read()
            .get(&fh)
            .cloned()
            .ok_or(FsError::UnknownHandle(fh))
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map.write().remove(&fh)
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }
}
