//! FUSE_INIT: which kernel capabilities the shim asks for, and what it does without them.

use std::io;

use fuser::{InitFlags, KernelConfig};

use crate::fs::{PassthroughState, ShimFs};

/// Asks the kernel for the capabilities the shim needs (refusing to run without forwarded
/// POSIX locks) and for the optional ones it offers; records whether passthrough is possible.
pub(super) fn negotiate(fs: &ShimFs, config: &mut KernelConfig) -> io::Result<()> {
    // Without FUSE_POSIX_LOCKS the kernel keeps locks to itself: SQLite would still work
    // through the mount, and LiteFS would never see a lock. Refuse to run like that.
    config
        .add_capabilities(InitFlags::FUSE_POSIX_LOCKS)
        .map_err(|_| {
            io::Error::other(
                "the kernel does not offer FUSE_POSIX_LOCKS: locks could not reach LiteFS",
            )
        })?;
    let caps = config.capabilities();
    for optional in [
        InitFlags::FUSE_FLOCK_LOCKS,
        InitFlags::FUSE_PARALLEL_DIROPS,
        InitFlags::FUSE_DO_READDIRPLUS,
        InitFlags::FUSE_READDIRPLUS_AUTO,
        InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
    ] {
        if caps.contains(optional) {
            let _ = config.add_capabilities(optional);
        }
    }
    // Name links never change (fuse/src/name_links.rs): the kernel may keep their targets.
    if fs.caches_symlinks() && caps.contains(InitFlags::FUSE_CACHE_SYMLINKS) {
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
    }
    if fs.passthrough_state() == PassthroughState::Unavailable {
        // Turned off by the mount options: do not ask the kernel for it either.
    } else if caps.contains(InitFlags::FUSE_PASSTHROUGH) {
        let _ = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH);
        // 2 allows a lower dir that is itself stacked once (LiteFS's FUSE, or overlayfs).
        let _ = config.set_max_stack_depth(2);
    } else {
        fs.set_passthrough_state(
            PassthroughState::Unavailable,
            "the kernel does not offer FUSE_PASSTHROUGH (needs Linux >= 6.9)",
        );
    }
    if !caps.contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
        && !caps.contains(InitFlags::FUSE_PASSTHROUGH)
    {
        tracing::warn!(
            "the kernel offers neither passthrough nor mmap on direct I/O: SQLite WAL mode will fail"
        );
    }
    Ok(())
}
