//! What every integration test binary shares: the binary under test, and one lock. Clusters,
//! configs, processes, mounts and LiteFS probes come from the test kit (`litefs-py-testkit`).

#![allow(dead_code)] // each test binary uses part of it

pub mod proxy_calls;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use litefs_py_testkit::cluster::Options;

pub const BIN: &str = env!("CARGO_BIN_EXE_litefs-py");

/// Cluster tests run one at a time: they measure timing (lease bounds, failover) on a 2-core
/// machine, where two clusters at once would measure each other.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The kit's options for `litefs-py mount` nodes of this build.
pub fn mount_options() -> Options {
    Options::mount(Path::new(BIN))
}

/// The kit's options for `litefs-py run` nodes of this build.
pub fn run_options() -> Options {
    Options::run(Path::new(BIN))
}
