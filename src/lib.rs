//! The litefs-py daemon as a library. The `litefs-py` binary (`main.rs`) and the Python
//! package's `litefs-py` script are [`cli_main`]; pybridge also reads litefs-py.yml
//! ([`config`]) and generates litefs.yml ([`litefs::yaml`]); the test kit reads LiteFS's
//! `/info` ([`litefs::info`]).
//!
//! The layers, each importing only those before it (docs/architecture.md, "Layers and the
//! dependency rule"; checked by `tests/layers.rs`):
//! [`config`] and `poll` < `raft` < [`litefs`] < `role` < `lease` < `handoff` < `node` < `run` <
//! `cli`.

pub mod config;
mod die_with_parent;
mod poll;
mod task_set;

mod raft;

pub mod litefs;
// The fencer: kills LiteFS when its lease runs out unrenewed (under `run`).
mod fence;

mod role;

mod lease;

mod handoff;

mod node;

mod proxy;

mod run;

mod cli;

pub use cli::cli_main;

/// The parsers of outside input that are private to their layer, re-exported for the fuzz
/// targets (`fuzz/`) and the corpus replay test (`tests/fuzz_corpus.rs`) only: not an API.
/// (`config`, `litefs::info` and `litefs::yaml` are public already.)
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::lease::LeaseError;
    pub use crate::lease::consul::{
        check_session_id, parse_go_duration, parse_primary_info, parse_session_create,
    };
    pub use crate::litefs::positions::Pos;
    pub use crate::raft::timing_check::TimingStamp;
}
