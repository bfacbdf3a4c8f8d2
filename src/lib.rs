//! The litefs-py daemon as a library: configuration today; raft, the lease API and the
//! process supervisor as they land. The `litefs-py` binary (`main.rs`) is a thin CLI over it.

pub mod client;
pub mod config;
pub mod daemon;
pub mod handoff;
pub mod lease;
pub mod litefs_config;
pub mod litefs_state;
pub mod raft;
pub mod supervisor;

// The command line, also reachable from the library (`cli_main`, for the Python package's
// `litefs-py` script). The command modules name this crate `litefs_py`, as the binary does.
extern crate self as litefs_py;
mod cli;
mod cli_entry;
mod cmd_cluster;
mod cmd_handoff;
mod cmd_mount;
mod cmd_run;
mod cmd_status;
mod cmd_witness;
pub use cli_entry::cli_main;
