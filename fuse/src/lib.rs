//! The litefs-py FUSE shim.
//!
//! Mounted over LiteFS's FUSE dir (or any directory), it passes everything through — file data
//! with kernel FUSE passthrough, POSIX locks one lower owner per client owner — and answers a
//! few virtual files (`.primary`, `.role`, `.health`) itself from in-memory cluster state.
//!
//! Layout: [`fs::ShimFs`] is the filesystem as plain methods (testable without a mount);
//! `adapter` is the thin `fuser::Filesystem` over it; [`mount`] mounts and unmounts;
//! [`virtual_files`] holds the published state and its renderings.

mod adapter;
mod dir;
pub mod error;
pub mod fs;
mod fs_io;
mod handles;
mod inode;
mod locks;
pub mod mount;
pub mod mountinfo;
mod rangeset;
pub mod sys;
pub mod virtual_files;
mod waiters;

pub use error::{FsError, FsResult};
pub use fs::{DataPath, PassthroughState, ShimFs};
pub use mount::{MountError, MountOptions, MountedShim, mount};
pub use virtual_files::{ClusterView, LiteFsStatus, Primary, Role, StateHandle, VirtualFile};
