//! The litefs-py FUSE shim.
//!
//! Mounted over LiteFS's FUSE dir, it shows each name as a link into LiteFS's own mount; over any
//! other directory it passes everything through — file data with kernel FUSE passthrough, POSIX
//! locks one lower owner per client owner. Either way it answers a few virtual files
//! (`.primary`, `.role`, `.health`) itself from in-memory cluster state.
//!
//! Layout: `fs` (+ `fs_io`, `name_links`) is the filesystem as plain methods on [`ShimFs`],
//! testable without a mount, over `inode`, `handles`, `dir`, `attr`, `locks`, `waiters` and the
//! syscalls in `sys`;
//! `adapter` is the thin `fuser::Filesystem` over it, which traces and counts every request
//! ([`FuseMetrics`]); `mount` mounts and unmounts; `virtual_files` holds the published state
//! ([`StateHandle`]) and its renderings. The daemon sees only what is exported here.

mod adapter;
mod attr;
mod dir;
mod error;
mod fs;
mod fs_io;
mod handles;
mod inode;
mod locks;
mod metrics;
mod mount;
pub mod mountinfo;
mod name_links;
mod rangeset;
#[cfg(test)]
mod rangeset_props;
mod repeats;
pub mod state_page;
mod sys;
mod virtual_files;
mod waiters;

pub use error::{FsError, FsResult};
pub use fs::{DataPath, PassthroughState, ShimFs};
pub use metrics::{FuseMetrics, Op, OpStats};
pub use mount::{FSNAME, MountError, MountOptions, MountedShim, mount};
pub use virtual_files::{ClusterView, LiteFsStatus, Primary, Role, StateHandle, boottime_ns};
