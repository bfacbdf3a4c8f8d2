//! The litefs-py daemon as a library: configuration today; raft, the lease API and the
//! process supervisor as they land. The `litefs-py` binary (`main.rs`) is a thin CLI over it.

pub mod client;
pub mod config;
pub mod daemon;
pub mod lease;
pub mod litefs_config;
pub mod raft;
