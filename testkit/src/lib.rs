//! The one test kit of litefs-py, shared by the integration tests (`tests/`) and the benchmark
//! (`bench/`): free loopback ports, a litefs-py.yml builder, guards for the processes and mounts
//! a test starts, mount queries, an HTTP client, LiteFS probes, and clusters of `litefs-py mount`
//! and of `litefs-py run` nodes built from those.
//!
//! Every process the kit starts is stopped by its own PID (never by name), every mount it sees
//! made is detached if its daemon left it, and every wait has a deadline, also when a test
//! panics half-way (the guards' `Drop`). Starting real nodes needs root and /dev/fuse.

pub mod cluster;
pub mod config;
pub mod error;
pub mod fuzz_checks;
pub mod http;
pub mod litefs;
pub mod mount;
pub mod ports;
pub mod prereq;
pub mod process;
pub mod proxy_app;
pub mod stall;
pub mod wait;

pub use error::{Error, Result};
